//! flux2-runtime: ONNX Runtime sessions and execution providers, the flow-matching
//! sampler, the end-to-end pipeline, the tokenizer and image I/O.

pub mod calibrate;
pub mod images;
pub mod lint;
pub mod model_dir;
pub mod noise;
pub mod ort_env;
pub mod pipeline;
pub mod providers;
pub mod schedule;
pub mod tensor_file;
pub mod tensors;
pub mod tokenizer;
pub mod trt;

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
    #[error("model {path}: {msg}")]
    Model { path: PathBuf, msg: String },
    #[error("image {path}: {msg}")]
    Image { path: PathBuf, msg: String },
    #[error("{path}: {msg}")]
    TensorFile { path: PathBuf, msg: String },
}

/// A session factory for a provider name (`cpu`; `cuda` and `tensorrt` need ONNX
/// Runtime's GPU build and are handled by the providers module when present).
pub fn providers_factory(provider: &str) -> Result<pipeline::SessionFactory, RuntimeError> {
    match provider {
        "cpu" => Ok(Box::new(|p: &std::path::Path| cpu_session(p, &SessionOptions::default()))),
        other => Err(RuntimeError::Input {
            name: "--provider".into(),
            msg: format!("'{other}' is not available in this build (expected cpu, cuda or tensorrt)"),
        }),
    }
}
