//! flux2-calib: the math and graph rewriting of post-training quantisation, without a runtime.
//!
//! * [`timesteps`]: training-style timestep distributions (which σ a calibration sample uses).
//! * [`formats`]: INT8 and FP8 E4M3FN encodings exactly as ONNX `QuantizeLinear` defines them.
//! * [`stats`], [`calibrators`]: deterministic activation histograms; max / percentile / MSE ranges.
//! * [`smoothquant`]: per-channel smoothing factors folded into weights.
//! * [`onnx_file`], [`consts`], [`layers`], [`qdq`]: reading exported graphs with external data,
//!   finding quantisable layers, inserting explicit Q/DQ, writing the result.
//! * [`attention`]: attention's two batched products as quantisable sites.
//! * [`sensitivity`]: choosing which layers stay in float to meet an error budget.
//! * [`metrics`], [`report`], [`artifacts`]: NMSE / cosine / PSNR / SSIM, the quality report,
//!   `scales.json` and TensorRT's calibration cache.
//!
//! * [`run`]: the calibration run itself (`flux2 calibrate`): trajectories, statistics graphs,
//!   selection and the calibrated folder, with models run through `flux2-runtime`.

pub mod artifacts;
pub mod attention;
pub mod calibrators;
pub mod consts;
mod error;
pub mod formats;
pub mod layers;
pub mod metrics;
pub mod onnx_file;
pub mod qdq;
pub mod report;
pub mod run;
pub mod sensitivity;
pub mod smoothquant;
pub mod stats;
pub mod timesteps;

pub use error::{CalibError, Result};
