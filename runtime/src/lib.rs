//! flux2-runtime: ONNX Runtime sessions and execution providers, the flow-matching
//! sampler, the end-to-end pipeline, the tokenizer and image I/O.

pub mod noise;
pub mod ort_env;
pub mod schedule;
pub mod tensors;
pub mod tokenizer;

pub use ort_env::{cpu_session, environment, find_ort_library, SessionOptions};
pub use tensors::{run, Input};

use std::path::PathBuf;

/// Errors of the runtime crate; each names the file, input or option at fault.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{0}")]
    OrtLibrary(String),
    #[error("opening session {path}: {msg}")]
    Session { path: PathBuf, msg: String },
    #[error("input '{name}': {msg}")]
    Input { name: String, msg: String },
    #[error("inference failed: {0}")]
    Run(String),
}
