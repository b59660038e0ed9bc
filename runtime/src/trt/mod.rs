//! TensorRT through ONNX Runtime's TensorRT execution provider: what the runtime needs to run
//! `flux2 build` folders and to say what a machine lacks.
//!
//! - [`gpu`]: GPU families, their precisions; [`options`]: the provider options;
//! - [`host`], [`libs`], [`probe`]: the provider library, the libraries it needs, the GPU, driver,
//!   CUDA and TensorRT versions (also `flux2 doctor`);
//! - [`manifest`] (`tensorrt.json`), [`profiles`], [`cache_key`]: what a build folder records and
//!   what makes an engine valid.
//!
//! Building engines (planning, linting the graphs, running the builder sessions) is
//! `flux2-deploy`'s job. No TensorRT engine can be built or run without an NVIDIA GPU
//! (platform-notes.md §5): on a CPU machine the checks fail naming the missing provider or library.

pub mod cache_key;
pub mod gpu;
pub mod host;
pub mod libs;
pub mod manifest;
pub mod options;
pub mod probe;
pub mod profiles;

use std::path::PathBuf;

pub use gpu::{FloatPrecision, GpuTarget, Quant};
pub use manifest::{BuildManifest, BUILD_MANIFEST};
pub use options::{EpContext, ProfileShapes, TrtOptions};
pub use profiles::{Bucket, ShapePlan};

/// Errors of the TensorRT path; each names the option, graph, library or GPU at fault.
#[derive(Debug, thiserror::Error)]
pub enum TrtError {
    #[error("{name}: {msg}")]
    Option { name: String, msg: String },
    #[error("bucket '{value}': {msg}")]
    Bucket { value: String, msg: String },
    #[error("{graph} input '{input}': {msg}")]
    Profile { graph: String, input: String, msg: String },
    #[error("--gpu {gpu}: {msg}")]
    Refused { gpu: String, msg: String },
    #[error("{path}: {msg}")]
    Model { path: PathBuf, msg: String },
    #[error("the graphs fail `flux2 check` for TensorRT:\n{0}")]
    Lint(String),
    #[error("{what} is not available: {msg}")]
    Unavailable { what: String, msg: String },
    #[error("building {graph}: {msg}")]
    Build { graph: String, msg: String },
    #[error("output {path}: {msg}")]
    Output { path: PathBuf, msg: String },
}
