//! flux2-exporter: reads checkpoints (safetensors: single, sharded, diffusers or BFL
//! layout), maps checkpoint names onto the graphs' weight names, detects model configs
//! from names and shapes, and writes ONNX files with external data, either copied
//! (converted to the requested dtype) or linked to byte ranges of the original files.

pub mod args;
pub mod checkpoint;
pub mod convert;
pub mod copy;
pub mod export;
pub mod fp8;
pub mod gguf;
pub mod layout;
pub mod lora;
pub mod lowbit;
pub mod manifest;
pub mod models;
pub mod names;
pub mod safetensors;
pub mod share;
pub mod synth;
pub mod verify;
pub mod writer;

pub use checkpoint::{Checkpoint, TensorInfo};
pub use layout::{Component, Kind, Layout, ModelSource};
pub use names::{resolve_weights, Piece, ResolvedWeight, Source};
pub use writer::{write_model, WeightMode, WriteOptions, WriteReport};

use std::path::PathBuf;

/// Errors of the exporter; each names the file, tensor, shape or option at fault.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{path}: not a valid safetensors file: {msg}")]
    BadSafetensors { path: PathBuf, msg: String },
    #[error("{path}: {msg}")]
    BadIndex { path: PathBuf, msg: String },
    #[error("tensor '{name}' appears in both {first} and {second}")]
    DuplicateTensor { name: String, first: PathBuf, second: PathBuf },
    #[error("{path}: unknown layout: {msg}")]
    UnknownLayout { path: PathBuf, msg: String },
    #[error("{path}: {msg}")]
    Config { path: PathBuf, msg: String },
    #[error("checkpoint {checkpoint} does not match the {model} graph:\n{problems}")]
    WeightMismatch { checkpoint: String, model: String, problems: String },
    #[error("tensor '{name}' ({path}): {msg}")]
    Tensor { name: String, path: PathBuf, msg: String },
    #[error("graph: {0}")]
    Graph(#[from] flux2_graphs::GraphError),
    #[error("output {path}: {msg}")]
    Output { path: PathBuf, msg: String },
    #[error("{name}: {msg}")]
    Option { name: String, msg: String },
    #[error(transparent)]
    Gguf(#[from] gguf::GgufError),
    #[error(transparent)]
    Lora(#[from] flux2_runtime::lora::LoraError),
}

pub type Result<T> = std::result::Result<T, ExportError>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ExportError {
    let path = path.into();
    move |err| ExportError::Io { path, err }
}
