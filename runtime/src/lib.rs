//! flux2-runtime: runs export folders and nothing else. ONNX Runtime loading and sessions,
//! execution providers, the flow-matching schedule and sampler, the end-to-end (batched) pipeline, the
//! tokenizer, images, noise, tensor files and the manifest (the export folder's contract).
//!
//! It depends on no other flux2 crate: the exporter, the calibrator and the TensorRT builder
//! are its clients, so a device build links only this crate.

pub mod cache;
pub mod cpu;
pub mod images;
pub mod lora;
pub mod manifest;
pub mod mapped;
pub mod memory;
pub mod model_dir;
pub mod noise;
pub mod ort_env;
pub mod pipeline;
pub mod prompt_cache;
pub mod providers;
pub mod request;
pub mod schedule;
pub mod session_cache;
pub mod tensor_file;
pub mod tensors;
pub mod tokenizer;
pub mod trt;

pub use ort_env::{
    cpu_factory, cpu_session, cpu_session_spec, cpu_session_with, environment, find_ort_library,
    locate_ort_library, use_ort_library, Override, SessionOptions, SessionSpec,
};
pub use tensors::{run, run_borrowed, Input, InputRef};

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
    #[error("cancelled {0}")]
    Cancelled(String),
    #[error(transparent)]
    Lora(#[from] lora::LoraError),
}

/// A session factory for a provider name (`cpu`, `cuda`, `tensorrt`; see [`providers`]): GPU
/// providers fail with what is missing instead of falling back to the CPU, and `tensorrt` needs
/// a `flux2 build` folder made for this GPU and TensorRT.
pub fn providers_factory(provider: &str) -> Result<pipeline::SessionFactory, RuntimeError> {
    providers_factory_with(provider, SessionOptions::default())
}

/// [`providers_factory`] with session settings (threads, the TensorRT refit folder, ...).
pub fn providers_factory_with(
    provider: &str,
    opts: SessionOptions,
) -> Result<pipeline::SessionFactory, RuntimeError> {
    let kind: providers::ExecutionProvider = provider.parse()?;
    if opts.trt_refit_from.is_some() && kind != providers::ExecutionProvider::TensorRt {
        return Err(RuntimeError::Input {
            name: "--refit-from".into(),
            msg: format!("refits TensorRT engines; --provider is {provider}"),
        });
    }
    Ok(providers::session_factory(kind, 0, opts))
}
