//! `flux2 build`: TensorRT engines through ONNX Runtime's TensorRT execution provider.
//!
//! It runs in three steps, and nothing is written before the third:
//! 1. [`build::plan`]: reads the export folder, refuses precisions the GPU cannot run
//!    (`flux2_runtime::trt::gpu`), lints every graph for the TensorRT target ([`crate::lint`]),
//!    derives the optimisation profiles from the resolution buckets
//!    (`flux2_runtime::trt::profiles`);
//! 2. [`host::check`]: the loaded ONNX Runtime has the TensorRT provider, every library that
//!    provider needs loads, the GPU is the family asked for, TensorRT matches the lint target;
//! 3. [`engine::execute`]: one session per graph with engine + timing caches and an EPContext
//!    dump, keyed by the cache key, staged and published with a build manifest
//!    (`tensorrt.json`) that the runtime reads for `--provider tensorrt`.
//!
//! No TensorRT engine can be built without an NVIDIA GPU (platform-notes.md §5), so on a CPU
//! machine step 2 fails with an error naming the missing provider or library.

pub mod build;
mod cache;
pub mod engine;
pub mod host;

pub use build::{plan, BuildPlan, BuildRequest};
pub use cache::calibration_hash;
pub use flux2_runtime::trt::{BuildManifest, TrtError};

/// Runs all three steps: plan, host check, build. Returns the written build manifest.
pub fn build(
    req: &BuildRequest,
    progress: &mut dyn FnMut(engine::Progress),
) -> Result<BuildManifest, TrtError> {
    let plan = build::plan(req)?;
    let host = host::check(&plan)?;
    engine::execute(&plan, &host, progress)
}
