//! Post-training quantisation of an exported model folder to explicit INT8 or FP8 Q/DQ graphs
//! (`flux2 calibrate`). The math and graph rewriting are this crate's other modules; this one
//! runs the graphs through `flux2-runtime` (the calibrator is a client of the runtime):
//!
//! 1. **Data** (`data.rs`): DiT inputs from real sampling trajectories of the exported
//!    model over several sizes, step counts and with/without a reference, at noise levels drawn
//!    from a training distribution (`ln` by default); text-encoder inputs from prompts; VAE
//!    inputs from the trajectories' latents and their decoded images. All seeded.
//! 2. **Statistics** (`stats_run.rs`): every quantisable layer's input is exposed as a graph
//!    output, the float graph is run over the calibration samples, and histograms are filled in
//!    sample order (a second pass sees the smoothed activations when SmoothQuant is on).
//! 3. **Selection** (`graph.rs` prepares, `select.rs` selects): per-forward vectors stay in
//!    float, then layers are kept in float by error per unit of time saved until the held-out
//!    output NMSE meets the budget; with full generations, the decoded images' worst PSNR
//!    against float must meet `--min-psnr` (30 dB by default), else every graph is selected
//!    again under a 4× tighter NMSE budget (`output.rs`, `search`).
//! 4. **Output** (`output.rs`): Q/DQ graphs, `scales.json`, `calibration.cache`
//!    (INT8), `calibration.json`, `report.json` / `report.md`, full generations compared with
//!    float (PSNR / SSIM) and the `--max-psnr-drop` gate. Everything is written into a staging
//!    folder and renamed into place. When the gate fails, the folder gets only the report,
//!    scales and calibration record: no `manifest.json`, so nothing can load it as a model.

use std::path::PathBuf;

use crate::calibrators::Calibrator;
use crate::formats::Format;
use crate::report::Report;
use crate::timesteps::Kind;
use crate::CalibError;
use serde::Serialize;

use flux2_runtime::RuntimeError;

mod budget;
mod data;
mod eval;
mod graph;
mod output;
mod plan;
mod select;
mod stats_run;

pub use data::{built_in_prompts, CalibrationRecord};

/// Errors of a calibration; each names the option, graph or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum CalibrateError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Calib(#[from] CalibError),
    #[error("invalid {option}: {msg}")]
    Option { option: String, msg: String },
    #[error("{path}: {msg}")]
    Output { path: PathBuf, msg: String },
    #[error("graph {graph}: {msg}")]
    Graph { graph: String, msg: String },
}

pub(crate) fn opt_err(option: &str, msg: impl Into<String>) -> CalibrateError {
    CalibrateError::Option { option: option.to_string(), msg: msg.into() }
}

/// A model component as named on the command line.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Component {
    TextEncoder,
    Transformer,
    /// Both VAE graphs (encoder and decoder).
    Vae,
}

impl Component {
    /// The manifest graphs of the component.
    pub fn graphs(self) -> &'static [&'static str] {
        match self {
            Component::TextEncoder => &["text_encoder"],
            Component::Transformer => &["transformer"],
            Component::Vae => &["vae_encoder", "vae_decoder"],
        }
    }
}

/// `ts`, `ln` or `pln`, as on the command line.
pub fn dist_name(k: Kind) -> &'static str {
    match k {
        Kind::Ts => "ts",
        Kind::Ln => "ln",
        Kind::Pln => "pln",
    }
}

fn kind_name<S: serde::Serializer>(k: &Kind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(dist_name(*k))
}

/// Everything `flux2 calibrate` takes.
#[derive(Clone, Debug, Serialize)]
pub struct CalibrateOptions {
    pub model: PathBuf,
    pub out: PathBuf,
    pub format: Format,
    /// None: every component the model has.
    pub components: Option<Vec<Component>>,
    /// Timestep distribution for the DiT's noise levels, and its μ and σ (α comes from each
    /// trajectory's schedule).
    #[serde(serialize_with = "kind_name")]
    pub dist: Kind,
    pub dist_mu: f64,
    pub dist_sigma: f64,
    /// Calibration samples per graph (DiT inputs; prompts and images are capped by what exists).
    pub samples: usize,
    /// Held-out samples per graph for sensitivity and the report.
    pub heldout: usize,
    pub seed: u64,
    pub calibrator: Calibrator,
    pub smoothquant: Option<f32>,
    pub budget_nmse: f64,
    /// The image budget: the worst full generation's PSNR against float, in dB (None or 0:
    /// the NMSE budget alone decides). The primary criterion when generations run; the NMSE
    /// budget is then the guard it may only tighten.
    pub min_psnr: Option<f64>,
    pub max_psnr_drop: Option<f64>,
    /// (width, height) of the calibration trajectories.
    pub sizes: Vec<(usize, usize)>,
    /// Step counts of the trajectories (None: the model's default and half of it, at least 4).
    pub steps: Option<Vec<usize>>,
    /// Reference counts of the trajectories (0 and 1 by default).
    pub references: Vec<usize>,
    /// Prompts (None: [`built_in_prompts`]); every fifth is held out.
    pub prompts: Option<Vec<String>>,
    pub max_sequence_length: usize,
    /// Held-out samples each sensitivity measurement runs over (the first ones; 0: all). The
    /// chosen configuration is then measured on all held-out samples for the report.
    pub sensitivity_samples: usize,
    /// VAE calibration latents (spread over the trajectories' final latents) and their crop size
    /// in latent pixels (16: 256×256 images); the encoder calibrates on their float decodings.
    pub vae_samples: usize,
    pub vae_tile: usize,
    /// Held-out VAE latents and their crop size.
    pub vae_heldout: usize,
    pub vae_heldout_tile: usize,
    /// INT8 convolution activations as INT8 with zero point 0 (TensorRT) instead of UINT8 with
    /// zero point 128 (ONNX Runtime's fast CPU kernels); the same values either way.
    pub signed_activations: bool,
    /// Full generations compared with float in the report.
    pub eval_images: usize,
    pub eval_steps: Option<usize>,
    /// Layers whose name contains any of these stay in float.
    pub exclude: Vec<String>,
    /// Also quantise per-forward vector layers (timestep embedding, modulation), which gain
    /// no speed and shift every token.
    pub quantize_vectors: bool,
    /// Keep the DiT's attention products (q·kᵀ, P·v) in float; by default INT8 quantises them
    /// like layers (see `crate::attention`), subject to the sensitivity budget.
    pub float_attention: bool,
    /// FP8 only: quantise the attention products too (TensorRT's FP8 attention on Hopper, Ada,
    /// Thor). Off by default: ONNX Runtime CPU runs such graphs only with its Q/DQ fusions off
    /// (flux2 does that for FP8 graphs; other ONNX Runtime users must set
    /// `session.disable_quant_qdq=1`).
    pub fp8_attention: bool,
    /// Timed runs per graph for the latency table (0: skip).
    pub latency_runs: usize,
    /// ONNX Runtime intra-op threads (None: all cores).
    pub threads: Option<usize>,
    /// Version tag of `calibration.cache`.
    pub trt_cache_version: String,
}

impl CalibrateOptions {
    /// Defaults for everything but the model, output and format.
    pub fn new(model: PathBuf, out: PathBuf, format: Format) -> CalibrateOptions {
        CalibrateOptions {
            model,
            out,
            format,
            components: None,
            dist: Kind::Ln,
            dist_mu: 0.0,
            dist_sigma: 1.0,
            samples: 32,
            heldout: 8,
            seed: 0,
            calibrator: Calibrator::Max,
            smoothquant: None,
            budget_nmse: 1e-2,
            min_psnr: Some(30.0),
            max_psnr_drop: None,
            sizes: vec![(512, 512), (640, 384), (384, 640)],
            steps: None,
            references: vec![0, 1],
            prompts: None,
            max_sequence_length: 512,
            sensitivity_samples: 2,
            vae_samples: 4,
            vae_tile: 16,
            vae_heldout: 1,
            vae_heldout_tile: 8,
            signed_activations: false,
            eval_images: 2,
            eval_steps: None,
            exclude: vec![],
            quantize_vectors: false,
            float_attention: false,
            fp8_attention: false,
            latency_runs: 3,
            threads: None,
            trt_cache_version: crate::artifacts::TRT_CACHE_VERSION.into(),
        }
    }
}

/// Progress of [`calibrate`].
pub enum Event<'a> {
    /// A new stage starts; `total` units of work follow (0 when unknown).
    Stage { label: &'a str, total: usize },
    /// `done` of the current stage's units are finished.
    Advance { done: usize, total: usize },
}

/// What [`calibrate`] produced.
pub struct Outcome {
    pub report: Report,
    /// Where the output went.
    pub out: PathBuf,
    /// False when the quality gate failed (then `out` holds no usable model).
    pub passed: bool,
}

/// Calibrates `opts.model` into `opts.out`. See the module docs.
pub fn calibrate(
    opts: &CalibrateOptions,
    on_event: &mut dyn FnMut(Event),
) -> Result<Outcome, CalibrateError> {
    output::run(opts, on_event)
}
