//! A GGUF file as a checkpoint source: what [`crate::Checkpoint`] needs to treat it like a
//! safetensors file.
//!
//! Tensors whose stored bytes are the values as they are (F32/F16/BF16, not permuted) keep
//! their real place in the file, so copy mode reads them and link mode points at them like
//! safetensors data. Every other tensor (a quantised type, or Q/K rows llama.cpp permuted)
//! is given a *virtual* f32 range above [`VIRTUAL_BASE`]: reads of it are served by
//! dequantising (and un-permuting) the rows that cover the range, a chunk at a time, so an
//! export never holds more than one chunk of dequantised values.
//!
//! Text encoders in llama.cpp names are renamed to transformers names here, and their
//! config is made from the metadata ([`super::llama`]); a DiT keeps its names (BFL or
//! diffusers, as ComfyUI-GGUF conversions store them).

use std::collections::BTreeMap;
use std::path::Path;

use flux2_graphs::DType;

use super::llama::{self, TextArch};
use super::{GgufError, GgufFile};
use crate::safetensors::RawTensor;

/// Start of the virtual offsets (far beyond any file).
pub const VIRTUAL_BASE: u64 = 1 << 62;

/// A tensor served dequantised.
#[derive(Clone, Debug)]
struct View {
    /// Index into the file's tensors.
    tensor: usize,
    len: u64,
    /// Heads of a permuted Q/K tensor (rows are un-permuted when read).
    permuted_heads: Option<usize>,
}

/// An opened GGUF checkpoint file.
pub struct GgufSource {
    pub file: GgufFile,
    /// Views by virtual start offset.
    views: BTreeMap<u64, View>,
    /// A transformers config made from the metadata (llama.cpp text encoders).
    pub config: Option<serde_json::Value>,
}

impl GgufSource {
    /// Opens `path`; returns the source and its tensors under their checkpoint names.
    pub fn open(path: &Path) -> Result<(GgufSource, BTreeMap<String, RawTensor>), GgufError> {
        let file = GgufFile::open(path)?;
        let text = llama::is_llama_names(file.tensors.iter().map(|t| t.name.as_str()));
        let (family, arch) = if text {
            let arch = file.architecture().unwrap_or("").to_string();
            let family = TextArch::from_arch(&arch).ok_or_else(|| GgufError::Metadata {
                path: path.to_path_buf(),
                msg: format!(
                    "tensors in llama.cpp names but general.architecture is '{arch}': not a text encoder \
                     FLUX.2 uses (supported: llama and mistral3 for Mistral, qwen3)"
                ),
            })?;
            (Some(family), arch)
        } else {
            (None, String::new())
        };
        let heads = match family {
            Some(f) if f.permuted() => Some(llama::head_counts(&file, &arch)?),
            _ => None,
        };
        let config = family.map(|f| llama::config_from_metadata(&file, &arch, f)).transpose()?;
        let mut src = GgufSource { file, views: BTreeMap::new(), config };
        let tensors = src.index(family.is_some(), heads)?;
        Ok((src, tensors))
    }

    /// Names and places of every tensor; builds the views.
    fn index(
        &mut self,
        rename: bool,
        heads: Option<(usize, usize)>,
    ) -> Result<BTreeMap<String, RawTensor>, GgufError> {
        let mut out = BTreeMap::new();
        let mut next = VIRTUAL_BASE;
        for (i, t) in self.file.tensors.iter().enumerate() {
            let name = if rename {
                llama::hf_name(&t.name).unwrap_or_else(|| t.name.clone())
            } else {
                t.name.clone()
            };
            let permuted_heads = heads.and_then(|(q, kv)| {
                if t.name.ends_with(".attn_q.weight") {
                    Some(q)
                } else if t.name.ends_with(".attn_k.weight") {
                    Some(kv)
                } else {
                    None
                }
            });
            if let Some(h) = permuted_heads {
                let rows = t.shape.first().copied().unwrap_or(0);
                if t.shape.len() != 2 || rows % h != 0 || (rows / h) % 2 != 0 {
                    return Err(GgufError::Tensor {
                        path: self.file.path.clone(),
                        tensor: t.name.clone(),
                        msg: format!("shape {:?} is not {h} heads of an even head size", t.shape),
                    });
                }
            }
            let raw = match (t.ty.plain_dtype(), permuted_heads) {
                (Some(dtype), None) => {
                    RawTensor { dtype, shape: t.shape.clone(), offset: t.offset, len: t.len }
                }
                _ => {
                    let len = t.numel() * 4;
                    self.views.insert(next, View { tensor: i, len, permuted_heads });
                    let raw = RawTensor { dtype: DType::F32, shape: t.shape.clone(), offset: next, len };
                    next += len.div_ceil(64) * 64;
                    raw
                }
            };
            if out.insert(name.clone(), raw).is_some() {
                return Err(GgufError::Tensor {
                    path: self.file.path.clone(),
                    tensor: t.name.clone(),
                    msg: format!("maps to '{name}', which another tensor maps to too"),
                });
            }
        }
        Ok(out)
    }

    /// Whether `offset` is a virtual (dequantised) place.
    pub fn is_virtual(offset: u64) -> bool {
        offset >= VIRTUAL_BASE
    }

    /// The GGUF tensor behind a checkpoint tensor, and whether it is served dequantised.
    pub fn stored(&self, raw: &RawTensor) -> Option<(&super::GgufTensor, bool)> {
        if Self::is_virtual(raw.offset) {
            let (_, v) = self.views.range(..=raw.offset).next_back()?;
            Some((&self.file.tensors[v.tensor], true))
        } else {
            self.file.tensors.iter().find(|t| t.offset == raw.offset).map(|t| (t, false))
        }
    }

    /// The GGUF tensor served at virtual `offset`, the element of it `offset` falls on, and
    /// the heads of llama.cpp's Q/K row permutation where its rows are permuted.
    pub fn locate(&self, offset: u64) -> Option<(&super::GgufTensor, u64, Option<usize>)> {
        let (start, v) = self.views.range(..=offset).next_back()?;
        let within = offset - start;
        (within < v.len && within.is_multiple_of(4))
            .then(|| (&self.file.tensors[v.tensor], within / 4, v.permuted_heads))
    }

    /// The stored type of the tensor at virtual `offset` (for messages).
    pub fn stored_type(&self, offset: u64) -> Option<String> {
        let (_, v) = self.views.range(..=offset).next_back()?;
        let t = &self.file.tensors[v.tensor];
        Some(match v.permuted_heads {
            Some(_) => format!("{} with llama.cpp's permuted Q/K rows", t.ty),
            None => t.ty.to_string(),
        })
    }

    /// Fills `buf` with the f32 bytes at virtual `offset` (whole f32 values of one tensor).
    pub fn read_virtual(&self, buf: &mut [u8], offset: u64) -> Result<(), GgufError> {
        let bad = |msg: String| GgufError::Format { path: self.file.path.clone(), msg };
        let (start, view) = self
            .views
            .range(..=offset)
            .next_back()
            .ok_or_else(|| bad(format!("no tensor at virtual offset {offset}")))?;
        let t = &self.file.tensors[view.tensor];
        let within = offset - start;
        if !within.is_multiple_of(4) || !buf.len().is_multiple_of(4) || within + buf.len() as u64 > view.len {
            return Err(bad(format!(
                "read of {} bytes at {within} is not whole f32 values of '{}' ({} bytes)",
                buf.len(),
                t.name,
                view.len
            )));
        }
        let row = t.shape.last().copied().unwrap_or(1).max(1) as u64;
        let rows = t.numel() / row;
        let (e0, n) = (within / 4, buf.len() as u64 / 4);
        let (r0, r1) = (e0 / row, (e0 + n).div_ceil(row));
        let mut vals = vec![0f32; ((r1 - r0) * row) as usize];
        for (k, chunk) in vals.chunks_exact_mut(row as usize).enumerate() {
            let r = r0 + k as u64;
            let src = match view.permuted_heads {
                Some(h) => llama::unpermute_row(r as usize, rows as usize, h) as u64,
                None => r,
            };
            self.file.dequantize_into(t, src * row, chunk)?;
        }
        let skip = (e0 - r0 * row) as usize;
        for (dst, v) in buf.chunks_exact_mut(4).zip(&vals[skip..]) {
            dst.copy_from_slice(&v.to_le_bytes());
        }
        Ok(())
    }

    /// Length of the header (for fingerprints: the data starts after it).
    pub fn header_len(&self) -> u64 {
        self.file.data_start.saturating_sub(8)
    }
}
