//! The GGUF forms of the real-size sparse checkpoints ([`super::sparse`]): the DiT and the text
//! encoder as users hold them (`flux2 synth-checkpoint --gguf Q4_K`), one file per component,
//! for memory and timing tests of the GGUF path at real size on any machine.
//!
//! * `transformer-<TYPE>.gguf`: the DiT under its diffusers names (as ComfyUI-GGUF conversions
//!   keep the checkpoint's names), no architecture metadata needed.
//! * `text_encoder-<TYPE>.gguf`: the language model in llama.cpp's conventions: `token_embd`,
//!   `blk.N.attn_q`, ..., `general.architecture` `llama` (Mistral, as llama.cpp's converter
//!   writes Mistral-Small-3.x) or `qwen3`, and the `<arch>.*` hyper-parameters the reader turns
//!   into a config. Its Q/K rows count as permuted, as llama.cpp writes them (the data is zeros,
//!   so only the reader's bookkeeping is exercised).
//!
//! Which tensors get the quantised type: every 2-D tensor whose rows are whole blocks of it,
//! as llama.cpp's and ComfyUI-GGUF's quantisers do; 1-D tensors (norms, biases) are F32 and
//! 2-D tensors the blocks do not divide are F16. Headers are real; the data is a hole (reads
//! as zeros: every quantised block has scale 0), so a 18 GB Q4_K DiT costs a few kilobytes of
//! disk.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::sparse::Variant;
use crate::gguf::GgmlType;
use crate::{io_err, ExportError, Result};

/// A tensor to declare: name, row-major shape.
pub use super::sparse::Decl;

/// GGUF metadata value types used here (the `gguf` package's `GGUFValueType`).
enum Meta {
    U32(u32),
    F32(f32),
    Str(String),
}

/// The type a tensor of `shape` gets when the file's type is `ty`.
pub fn tensor_type(shape: &[usize], ty: GgmlType) -> GgmlType {
    match shape {
        [_, k] if k % ty.block_size() == 0 => ty,
        [_, _] => GgmlType::F16,
        _ => GgmlType::F32,
    }
}

/// Writes the GGUF forms of `variant`'s DiT and text encoder, quantised as `ty`, into the
/// existing folder `dir`; returns each file with its data bytes.
pub fn write_gguf_forms(variant: Variant, ty: GgmlType, dir: &Path) -> Result<Vec<(PathBuf, u64)>> {
    let dit = super::sparse::transformer_decls(variant)?;
    let path = dir.join(format!("transformer-{}.gguf", ty.name()));
    let meta = vec![("general.name".to_string(), Meta::Str(format!("FLUX.2 {variant:?} transformer")))];
    let dit_bytes = write_sparse_gguf(&path, &meta, &dit, ty)?;
    let (arch, text, cfg) = super::sparse::text_decls(variant)?;
    let mut llama = Vec::new();
    for (name, shape) in text {
        let Some(g) = crate::gguf::llama::gguf_name(&name) else { continue };
        llama.push((g, shape));
    }
    let p = |k: &str| format!("{arch}.{k}");
    let meta = vec![
        ("general.architecture".to_string(), Meta::Str(arch.to_string())),
        ("general.name".to_string(), Meta::Str(format!("FLUX.2 {variant:?} text encoder"))),
        (p("block_count"), Meta::U32(cfg.num_layers as u32)),
        (p("embedding_length"), Meta::U32(cfg.hidden as u32)),
        (p("feed_forward_length"), Meta::U32(cfg.intermediate as u32)),
        (p("attention.head_count"), Meta::U32(cfg.heads as u32)),
        (p("attention.head_count_kv"), Meta::U32(cfg.kv_heads as u32)),
        (p("attention.key_length"), Meta::U32(cfg.head_dim as u32)),
        (p("attention.value_length"), Meta::U32(cfg.head_dim as u32)),
        (p("context_length"), Meta::U32(131_072)),
        (p("vocab_size"), Meta::U32(cfg.vocab as u32)),
        (p("attention.layer_norm_rms_epsilon"), Meta::F32(cfg.eps as f32)),
        (p("rope.freq_base"), Meta::F32(cfg.rope_theta as f32)),
    ];
    let text_path = dir.join(format!("text_encoder-{}.gguf", ty.name()));
    let text_bytes = write_sparse_gguf(&text_path, &meta, &llama, ty)?;
    Ok(vec![(path, dit_bytes), (text_path, text_bytes)])
}

/// Writes a GGUF v3 file declaring `tensors` (quantised as [`tensor_type`] says) with a hole
/// for the data; returns the data bytes. Written beside `path` and renamed into place.
fn write_sparse_gguf(path: &Path, meta: &[(String, Meta)], tensors: &[Decl], ty: GgmlType) -> Result<u64> {
    const ALIGN: u64 = 32;
    let mut h: Vec<u8> = Vec::new();
    h.extend_from_slice(b"GGUF");
    h.extend_from_slice(&3u32.to_le_bytes());
    h.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    h.extend_from_slice(&(meta.len() as u64).to_le_bytes());
    for (k, v) in meta {
        put_str(&mut h, k);
        match v {
            Meta::U32(x) => {
                h.extend_from_slice(&4u32.to_le_bytes());
                h.extend_from_slice(&x.to_le_bytes());
            }
            Meta::F32(x) => {
                h.extend_from_slice(&6u32.to_le_bytes());
                h.extend_from_slice(&x.to_le_bytes());
            }
            Meta::Str(s) => {
                h.extend_from_slice(&8u32.to_le_bytes());
                put_str(&mut h, s);
            }
        }
    }
    let mut off = 0u64;
    for (name, shape) in tensors {
        let t = tensor_type(shape, ty);
        let numel: u64 = shape.iter().map(|&d| d as u64).product();
        let bytes = t.bytes_for(numel).ok_or_else(|| ExportError::Tensor {
            name: name.clone(),
            path: path.to_path_buf(),
            msg: format!("{shape:?} overflows as {t}"),
        })?;
        put_str(&mut h, name);
        h.extend_from_slice(&(shape.len() as u32).to_le_bytes());
        for d in shape.iter().rev() {
            h.extend_from_slice(&(*d as u64).to_le_bytes());
        }
        h.extend_from_slice(&t.id().to_le_bytes());
        h.extend_from_slice(&off.to_le_bytes());
        off = (off + bytes).div_ceil(ALIGN) * ALIGN;
    }
    h.resize((h.len() as u64).div_ceil(ALIGN) as usize * ALIGN as usize, 0);
    let tmp = path.with_extension("gguf.partial");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&h)?;
        f.set_len(h.len() as u64 + off)?;
        f.sync_all()
    };
    write().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    Ok(off)
}

fn put_str(h: &mut Vec<u8>, s: &str) {
    h.extend_from_slice(&(s.len() as u64).to_le_bytes());
    h.extend_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgufFile;

    #[test]
    fn types_follow_the_blocks() {
        assert_eq!(tensor_type(&[3072, 6144], GgmlType::Q4K), GgmlType::Q4K);
        assert_eq!(tensor_type(&[3072, 128], GgmlType::Q4K), GgmlType::F16);
        assert_eq!(tensor_type(&[3072, 128], GgmlType::Q4_0), GgmlType::Q4_0);
        assert_eq!(tensor_type(&[3072], GgmlType::Q4K), GgmlType::F32);
    }

    /// The file parses with the crate's reader: names, shapes, types, offsets, metadata.
    #[test]
    fn written_files_read_back() {
        let dir = std::env::temp_dir().join(format!("flux2-sparse-gguf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.gguf");
        let tensors: Vec<Decl> = vec![
            ("a.weight".into(), vec![512, 256]),
            ("a.bias".into(), vec![512]),
            ("b".into(), vec![4, 100]),
        ];
        let meta = vec![("general.name".to_string(), Meta::Str("x".into()))];
        let bytes = write_sparse_gguf(&path, &meta, &tensors, GgmlType::Q4K).unwrap();
        let g = GgufFile::open(&path).unwrap();
        let got: Vec<_> = g.tensors.iter().map(|t| (t.name.as_str(), t.shape.clone(), t.ty)).collect();
        assert_eq!(
            got,
            vec![
                ("a.weight", vec![512, 256], GgmlType::Q4K),
                ("a.bias", vec![512], GgmlType::F32),
                ("b", vec![4, 100], GgmlType::F16)
            ]
        );
        assert_eq!(g.size, g.data_start + bytes);
        let mut v = vec![1f32; 256];
        g.dequantize_into(&g.tensors[0], 0, &mut v).unwrap();
        assert!(v.iter().all(|&x| x == 0.0));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
