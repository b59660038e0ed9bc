//! An opened, validated GGUF file (versions 2 and 3, little-endian), memory-mapped.
//!
//! Layout: magic `GGUF`, u32 version, u64 tensor count, u64 metadata count, the metadata
//! key/values, the tensor infos (name, u32 dims count, u64 dims innermost first, u32 type,
//! u64 offset relative to the data), padding to `general.alignment` (default 32), the data.
//! Everything is checked before use: counts against the bytes left, dims against
//! [`MAX_DIMS`] and overflow, the type id, the row length against the type's block, each
//! offset against the alignment and the file end, names for duplicates.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::types::{type_id_name, GgmlType};
use super::value::{Cursor, Value};
use super::GgufError;

/// Most dimensions a GGML tensor has (`GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;
/// Alignment of the data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// One tensor of a GGUF file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GgufTensor {
    pub name: String,
    pub ty: GgmlType,
    /// Row-major shape (the file's dims reversed: outermost first).
    pub shape: Vec<usize>,
    /// Absolute byte offset of the data in the file.
    pub offset: u64,
    /// Bytes of data.
    pub len: u64,
}

impl GgufTensor {
    pub fn numel(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }
}

/// An opened GGUF file.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub size: u64,
    pub alignment: u64,
    /// Absolute offset of the data section (end of the header, aligned).
    pub data_start: u64,
    pub metadata: BTreeMap<String, Value>,
    /// Tensors in file order.
    pub tensors: Vec<GgufTensor>,
    mmap: Mmap,
}

/// Whether a file starts with the GGUF magic (for telling GGUF from safetensors).
pub fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && &magic == b"GGUF"
}

impl Parser<'_> {
    fn format(&self, msg: impl Into<String>) -> GgufError {
        GgufError::Format { path: self.path.to_path_buf(), msg: msg.into() }
    }

    fn parse(&mut self, bytes: &[u8]) -> Result<(), GgufError> {
        let mut c = Cursor { bytes, pos: 0 };
        let magic = c.take(4).map_err(|_| {
            self.format(format!("file is {} bytes, too short for a GGUF header", bytes.len()))
        })?;
        if magic != b"GGUF" {
            return Err(self.format(format!("does not start with the GGUF magic (found {magic:02x?})")));
        }
        self.h.version = c.u32().map_err(|m| self.format(m))?;
        match self.h.version {
            2 | 3 => {}
            v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
                return Err(self.format(format!(
                    "is a big-endian GGUF (version {}); only little-endian files are supported",
                    v.swap_bytes()
                )))
            }
            v => return Err(self.format(format!("GGUF version {v} is not supported (2 and 3 are)"))),
        }
        let n_tensors = c.count("tensor", 24).map_err(|m| self.format(m))?;
        let n_kv = c.count("metadata", 13).map_err(|m| self.format(m))?;
        self.metadata(&mut c, n_kv)?;
        let mut infos = Vec::with_capacity(n_tensors);
        for i in 0..n_tensors {
            infos.push(self.tensor_info(&mut c, i)?);
        }
        let header_end = c.pos as u64;
        self.h.data_start = header_end.div_ceil(self.h.alignment) * self.h.alignment;
        let mut seen = std::collections::BTreeSet::new();
        for (name, dims, ty, rel) in infos {
            if !seen.insert(name.clone()) {
                return Err(self.tensor_err(&name, "appears twice"));
            }
            let t = self.locate(name, dims, ty, rel)?;
            self.h.tensors.push(t);
        }
        Ok(())
    }

    /// The key/values, and `general.alignment` from them.
    fn metadata(&mut self, c: &mut Cursor, n_kv: usize) -> Result<(), GgufError> {
        for i in 0..n_kv {
            let key = c.string().map_err(|m| self.format(format!("metadata entry {i}: key: {m}")))?;
            let ty = c.u32().map_err(|m| self.format(format!("metadata '{key}': {m}")))?;
            let v = c.value(ty, 0).map_err(|m| self.format(format!("metadata '{key}': {m}")))?;
            if self.h.metadata.insert(key.clone(), v).is_some() {
                return Err(self.format(format!("metadata key '{key}' appears twice")));
            }
        }
        if let Some(a) = self.h.metadata.get("general.alignment") {
            match a {
                Value::U32(n) if n.is_power_of_two() => self.h.alignment = u64::from(*n),
                other => {
                    return Err(self.format(format!(
                        "general.alignment must be a u32 power of two, found {} {}",
                        other.type_name(),
                        other.summary()
                    )))
                }
            }
        }
        Ok(())
    }

    fn tensor_err(&self, name: &str, msg: impl Into<String>) -> GgufError {
        GgufError::Tensor { path: self.path.to_path_buf(), tensor: name.to_string(), msg: msg.into() }
    }

    fn tensor_info(&self, c: &mut Cursor, i: usize) -> Result<(String, Vec<u64>, u32, u64), GgufError> {
        let name = c.string().map_err(|m| self.format(format!("tensor info {i}: name: {m}")))?;
        let e = |m: String| self.tensor_err(&name, m);
        let n_dims = c.u32().map_err(e)? as usize;
        if n_dims > MAX_DIMS {
            return Err(e(format!("has {n_dims} dimensions; GGML tensors have at most {MAX_DIMS}")));
        }
        let mut dims = Vec::with_capacity(n_dims);
        for _ in 0..n_dims {
            dims.push(c.u64().map_err(e)?);
        }
        let ty = c.u32().map_err(e)?;
        let rel = c.u64().map_err(e)?;
        Ok((name, dims, ty, rel))
    }

    /// Checks one tensor's type, shape, size and place.
    fn locate(&self, name: String, dims: Vec<u64>, ty_id: u32, rel: u64) -> Result<GgufTensor, GgufError> {
        let ty = GgmlType::from_id(ty_id).ok_or_else(|| GgufError::UnsupportedType {
            path: self.path.to_path_buf(),
            tensor: name.clone(),
            ty: type_id_name(ty_id),
        })?;
        let numel = dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d));
        let numel = numel.filter(|&n| n <= self.size.saturating_mul(256)).ok_or_else(|| {
            self.tensor_err(
                &name,
                format!("dims {dims:?} hold more elements than a file of {} bytes can", self.size),
            )
        })?;
        let row = dims.first().copied().unwrap_or(1);
        if row % ty.block_size() as u64 != 0 {
            return Err(self.tensor_err(
                &name,
                format!("{ty} rows of {row} elements are not whole blocks of {}", ty.block_size()),
            ));
        }
        let len = ty.bytes_for(numel).ok_or_else(|| self.tensor_err(&name, "size overflows"))?;
        if !rel.is_multiple_of(self.h.alignment) {
            return Err(self.tensor_err(
                &name,
                format!("{ty} data offset {rel} is not a multiple of the alignment {}", self.h.alignment),
            ));
        }
        let offset = self.h.data_start.checked_add(rel);
        let end = offset.and_then(|o| o.checked_add(len)).filter(|&e| e <= self.size);
        let (Some(offset), Some(_)) = (offset, end) else {
            return Err(self.tensor_err(
                &name,
                format!(
                    "{ty} {dims:?} needs {len} bytes at data offset {rel}, beyond the end of the file ({} bytes; \
                     data starts at {}): truncated?",
                    self.size, self.h.data_start
                ),
            ));
        };
        let shape = dims.iter().rev().map(|&d| d as usize).collect();
        Ok(GgufTensor { name, ty, shape, offset, len })
    }
}

/// What the header says (everything but the map).
#[derive(Default)]
struct Header {
    version: u32,
    alignment: u64,
    data_start: u64,
    metadata: BTreeMap<String, Value>,
    tensors: Vec<GgufTensor>,
}

/// Parses a header from the mapped bytes, naming `path` in every error.
struct Parser<'a> {
    path: &'a Path,
    size: u64,
    h: Header,
}

impl GgufFile {
    /// Opens and validates `path`.
    pub fn open(path: &Path) -> Result<GgufFile, GgufError> {
        let io = |e: std::io::Error| GgufError::Io { path: path.to_path_buf(), err: e };
        if path.is_dir() {
            return Err(GgufError::Format {
                path: path.to_path_buf(),
                msg: "is a folder, not a .gguf file".into(),
            });
        }
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: read-only map; a concurrent truncation by another process is outside our contract.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
        let size = mmap.len() as u64;
        let mut p = Parser { path, size, h: Header { alignment: DEFAULT_ALIGNMENT, ..Default::default() } };
        p.parse(&mmap)?;
        let h = p.h;
        Ok(GgufFile {
            path: path.to_path_buf(),
            version: h.version,
            size,
            alignment: h.alignment,
            data_start: h.data_start,
            metadata: h.metadata,
            tensors: h.tensors,
            mmap,
        })
    }

    fn tensor_err(&self, name: &str, msg: impl Into<String>) -> GgufError {
        GgufError::Tensor { path: self.path.clone(), tensor: name.to_string(), msg: msg.into() }
    }

    /// The raw bytes of a tensor.
    pub fn bytes(&self, t: &GgufTensor) -> &[u8] {
        &self.mmap[t.offset as usize..(t.offset + t.len) as usize]
    }

    /// Bytes `offset..offset + len` of the file (empty where out of range).
    pub fn range(&self, offset: u64, len: u64) -> &[u8] {
        let end = offset.checked_add(len).filter(|&e| e <= self.mmap.len() as u64);
        match end {
            Some(e) => &self.mmap[offset as usize..e as usize],
            None => &[],
        }
    }

    /// Looks a tensor up by name.
    pub fn tensor(&self, name: &str) -> Option<&GgufTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// `general.architecture`, if present.
    pub fn architecture(&self) -> Option<&str> {
        self.metadata.get("general.architecture").and_then(Value::as_str)
    }

    /// The whole tensor dequantised to f32, row-major.
    pub fn dequantize(&self, t: &GgufTensor) -> Result<Vec<f32>, GgufError> {
        let mut out = vec![0f32; t.numel() as usize];
        self.dequantize_into(t, 0, &mut out)?;
        Ok(out)
    }

    /// Dequantises `out.len()` elements of `t` starting at element `start`; both must fall on
    /// block boundaries (any row start does).
    pub fn dequantize_into(&self, t: &GgufTensor, start: u64, out: &mut [f32]) -> Result<(), GgufError> {
        let bs = t.ty.block_size() as u64;
        let n = out.len() as u64;
        if !start.is_multiple_of(bs) || !n.is_multiple_of(bs) || start + n > t.numel() {
            return Err(self.tensor_err(
                &t.name,
                format!("elements {start}..{} are not whole {} blocks of the tensor", start + n, t.ty),
            ));
        }
        let ts = t.ty.type_size() as u64;
        let b = (t.offset + start / bs * ts) as usize;
        let bytes = &self.mmap[b..b + (n / bs * ts) as usize];
        if !super::dequant::dequantize(t.ty, bytes, out) {
            return Err(
                self.tensor_err(&t.name, format!("{} bytes are not whole {} blocks", bytes.len(), t.ty))
            );
        }
        Ok(())
    }
}
