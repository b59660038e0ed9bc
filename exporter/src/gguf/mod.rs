//! GGUF files as users hold them (llama.cpp / ComfyUI-GGUF conversions): a validated,
//! memory-mapped reader ([`GgufFile`]) for versions 2 and 3 with every metadata value type,
//! and dequantisation of F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K..Q6_K to f32,
//! bit-exact with the `gguf` 0.19.0 Python package's `gguf.quants.dequantize`.
//!
//! A damaged or hostile file ends in a [`GgufError`] naming the file (and the tensor and
//! type where one is at fault), never in a panic or an allocation larger than the file.

pub mod dequant;
pub mod direct;
pub mod file;
pub mod llama;
pub mod reexpress;
pub mod report;
pub mod source;
pub mod types;
pub mod value;

pub use file::{is_gguf, GgufFile, GgufTensor};
pub use types::GgmlType;
pub use value::Value;

use std::path::PathBuf;

/// Errors of the GGUF reader; each names the file, and the tensor and type at fault.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{path}: not a valid GGUF file: {msg}")]
    Format { path: PathBuf, msg: String },
    #[error("{path}: tensor '{tensor}' has type {ty}, which is not supported (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)")]
    UnsupportedType { path: PathBuf, tensor: String, ty: String },
    #[error("{path}: tensor '{tensor}': {msg}")]
    Tensor { path: PathBuf, tensor: String, msg: String },
    #[error("{path}: {msg}")]
    Metadata { path: PathBuf, msg: String },
}
