//! Reading and writing the tensors users hand the pipeline: `prompt_embeds` [1,L,ctx],
//! `noise` [1,128,H/16,W/16], and `image` [1,3,H,W] (`--save-tensor`), as safetensors.
//!
//! Reading is bounded: files over [`MAX_TENSOR_FILE`] are refused before they are read, and
//! the safetensors crate checks the header against the file before any tensor is decoded,
//! so the f32 copy is at most twice the file. Every error names the file.

use std::collections::HashMap;
use std::path::Path;

use safetensors::{tensor::TensorView, Dtype, SafeTensors};

use crate::images::tmp_path;
use crate::RuntimeError;

/// An f32 tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

fn bad(path: &Path, msg: impl Into<String>) -> RuntimeError {
    RuntimeError::TensorFile { path: path.to_path_buf(), msg: msg.into() }
}

/// Largest tensor file read (a 2048² [dev] prompt of 512 tokens is 31 MB).
pub const MAX_TENSOR_FILE: u64 = 1 << 30;

/// Reads tensor `name` (F32, F16 or BF16) from a safetensors file.
pub fn read_tensor(path: &Path, name: &str) -> Result<Tensor, RuntimeError> {
    let meta = std::fs::metadata(path).map_err(|e| bad(path, format!("cannot read: {e}")))?;
    if meta.is_dir() {
        return Err(bad(path, "is a folder, not a .safetensors file"));
    }
    if meta.len() > MAX_TENSOR_FILE {
        return Err(bad(path, format!("{} bytes is over the {MAX_TENSOR_FILE}-byte limit", meta.len())));
    }
    let bytes = std::fs::read(path).map_err(|e| bad(path, format!("cannot read: {e}")))?;
    let st =
        SafeTensors::deserialize(&bytes).map_err(|e| bad(path, format!("not a safetensors file: {e}")))?;
    let view = st.tensor(name).map_err(|_| {
        let names: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
        bad(path, format!("no tensor '{name}' (found: {})", names.join(", ")))
    })?;
    let d = view.data();
    let data: Vec<f32> = match view.dtype() {
        Dtype::F32 => d.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        Dtype::F16 => d.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::BF16 => d.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        other => {
            return Err(bad(path, format!("tensor '{name}' has dtype {other:?}; expected F32, F16 or BF16")))
        }
    };
    Ok(Tensor { shape: view.shape().to_vec(), data })
}

/// Writes f32 tensors to a safetensors file atomically.
pub fn write_tensors(path: &Path, tensors: &[(&str, &Tensor)]) -> Result<(), RuntimeError> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(n, t)| (n.to_string(), t.data.iter().flat_map(|v| v.to_le_bytes()).collect(), t.shape.clone()))
        .collect();
    let mut views = HashMap::new();
    for (n, b, s) in &bytes {
        let v =
            TensorView::new(Dtype::F32, s.clone(), b).map_err(|e| bad(path, format!("tensor '{n}': {e}")))?;
        views.insert(n.clone(), v);
    }
    let tmp = tmp_path(path);
    safetensors::serialize_to_file(&views, None, &tmp)
        .map_err(|e| bad(path, format!("cannot write: {e}")))?;
    std::fs::rename(&tmp, path).map_err(|e| bad(path, format!("cannot write: {e}")))
}
