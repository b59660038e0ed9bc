//! TensorRT deployment through ONNX Runtime's TensorRT execution provider.
//!
//! `flux2 build` runs in three steps, and nothing is written before the third:
//! 1. [`build::plan`]: reads the export folder, refuses precisions the GPU cannot run
//!    ([`gpu`]), lints every graph for the TensorRT target ([`crate::lint`]), derives the
//!    optimisation profiles from the resolution buckets ([`profiles`]);
//! 2. [`host::check`]: the loaded ONNX Runtime has the TensorRT provider, every library that
//!    provider needs loads ([`libs`]), and the GPU is the family asked for ([`probe`]);
//! 3. [`engine::execute`]: one session per graph with engine + timing caches and an EPContext
//!    dump ([`options`]), keyed by [`cache_key`], staged and published with a
//!    [`manifest::BuildManifest`] (`tensorrt.json`) the runtime reads for `--provider tensorrt`.
//!
//! No TensorRT engine can be built without an NVIDIA GPU (platform-notes.md §5), so on a CPU
//! machine step 2 fails with an error naming the missing provider or library.

pub mod build;
pub mod cache_key;
pub mod engine;
pub mod gpu;
pub mod host;
pub mod libs;
pub mod manifest;
pub mod options;
pub mod probe;
pub mod profiles;

use std::path::PathBuf;

pub use build::{plan, BuildPlan, BuildRequest};
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

/// Runs all three steps: plan, host check, build. Returns the written build manifest.
pub fn build(
    req: &BuildRequest,
    progress: &mut dyn FnMut(engine::Progress),
) -> Result<BuildManifest, TrtError> {
    let plan = build::plan(req)?;
    let host = host::check(&plan)?;
    engine::execute(&plan, &host, progress)
}
