//! `flux2 calibrate`: an exported float model folder -> an INT8 or FP8 Q/DQ model folder
//! (`flux2_calib::run`), with progress bars and a summary of the report.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::ValueEnum;
use flux2_calib::calibrators::Calibrator;
use flux2_calib::formats::Format;
use flux2_calib::run::{calibrate, CalibrateOptions, Component, Event};
use flux2_calib::timesteps::Kind;

use super::calibrate_vocab;
use crate::progress::bar;

const ABOUT_CALIBRATE: &str = "\
The DiT is calibrated on inputs from real sampling trajectories of the model (several sizes,
step counts, with and without a reference image), taken at noise levels drawn the way the
model was trained (--dist, shifted by each schedule's alpha); the text encoder on tokenised
prompts; the VAE on the trajectories' latents and their decodings. Everything is seeded: the
same --seed gives bit-identical scales.

INT8: symmetric per-channel weights, per-tensor activations (optionally SmoothQuant); in the
DiT also the two attention products q·kᵀ and softmax·v (per-tensor q, kᵀ, v and softmax
ranges; the softmax range is its observed maximum), unless --float-attention.
FP8: E4M3FN with per-tensor scales (Hopper, Ada, Thor; simulated on CPU); attention in float
unless --fp8-attention.
What stays in float is decided by what users see: the full generations' decoded images must
be within --min-psnr (30 dB by default) of the float pipeline's. Within that, layers are ranked
by error per unit of time saved (their multiply-accumulates), so cheap, sensitive layers stay
in float and the expensive ones are quantised: the layers that rank worst stay in float until
the held-out output NMSE of each graph is within --budget-nmse (blocks such as
model.layers.N or up_blocks.N are ranked first, then the layers inside the kept blocks: ~40
probe graphs for a 28-layer text encoder instead of ~200). When the images miss --min-psnr,
the NMSE budget is divided by 4 and the graphs are selected again, up to 6 rounds.
Per-forward vector layers (timestep embedding, modulation) stay in float unless
--quantize-vectors.

Output (a model folder that `flux2 generate`, `bench` and `build` accept): the Q/DQ graphs,
the untouched graphs (hard links), manifest.json with each graph's precision, scales.json,
calibration.json (how the data was made), calibration.cache (TensorRT text format, INT8),
report.json and report.md (per-graph NMSE/cosine and latency; full generations' PSNR/SSIM
against float). With --max-psnr-drop D the command fails when a generation's PSNR against
float is more than D dB below 58.92 dB (the PSNR of 8-bit output rounding); --out then holds
only the report, scales and calibration record, and no manifest.json.

Examples:
  flux2 calibrate --model ./klein-onnx --precision int8 --out ./klein-int8
  flux2 calibrate --model ./klein-onnx --precision fp8 --components transformer \\
      --samples 128 --dist ln --seed 7 --out ./klein-fp8
  flux2 calibrate --model ./m --precision int8 --smoothquant 0.5 --calibrator mse \\
      --budget-nmse 5e-3 --max-psnr-drop 30 --sizes 1024x1024,1360x768 --out ./m-int8";

/// Quantise an exported model to explicit INT8 or FP8 Q/DQ ONNX, calibrated on its own data.
#[derive(clap::Args)]
#[command(after_help = ABOUT_CALIBRATE)]
pub struct Args {
    /// Exported model folder (flux2 export, f32 graphs).
    #[arg(long)]
    model: PathBuf,
    /// int8 or fp8.
    #[arg(long)]
    precision: String,
    /// Output folder; must not exist or be empty. Written via a staging folder, renamed on success.
    #[arg(long)]
    out: PathBuf,
    /// Comma-separated: transformer, text-encoder, vae [default: every one the model has].
    #[arg(long, value_delimiter = ',')]
    components: Option<Vec<String>>,
    /// Noise-level distribution of the DiT samples: ln (logit-normal), ts (shifted uniform) or
    /// pln (plateau logit-normal); see `flux2 timesteps --help`.
    #[arg(long, value_enum, default_value = "ln")]
    dist: Dist,
    /// Location mu of logit t (ln, pln), before each trajectory's alpha shift.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    dist_mu: f64,
    /// Scale sigma of logit t (ln, pln).
    #[arg(long, default_value_t = 1.0)]
    dist_sigma: f64,
    /// Calibration samples per graph (DiT: noise levels drawn; prompts and latents are capped by
    /// how many exist). With true CFG each DiT sample is two inputs.
    #[arg(long, default_value_t = 32)]
    samples: usize,
    /// Held-out samples per graph, for the sensitivity search and the report.
    #[arg(long, default_value_t = 8)]
    heldout: usize,
    /// Held-out samples each sensitivity measurement runs over (0: all); the report still
    /// measures the chosen layers on every held-out sample.
    #[arg(long, default_value_t = 2)]
    sensitivity_samples: usize,
    /// VAE calibration latents, spread over the trajectories' final latents; the VAE encoder
    /// calibrates on their float decodings.
    #[arg(long, default_value_t = 4)]
    vae_samples: usize,
    /// Crop of each VAE calibration latent, in latent pixels (16: 256x256 images).
    #[arg(long, default_value_t = 16)]
    vae_tile: usize,
    /// Held-out VAE latents (sensitivity and report).
    #[arg(long, default_value_t = 1)]
    vae_heldout: usize,
    /// Crop of each held-out VAE latent, in latent pixels (8: 128x128 images).
    #[arg(long, default_value_t = 8)]
    vae_heldout_tile: usize,
    /// INT8 convolutions with INT8 activations (zero point 0) for TensorRT, instead of UINT8
    /// with zero point 128 (ONNX Runtime's fast x86 kernels). Same values either way; the
    /// report's figures are measured in the UINT8 form (ONNX Runtime 1.31 rejects some such
    /// graphs when optimising them: use this for TensorRT builds only).
    #[arg(long)]
    signed_activations: bool,
    /// Seed of everything random (noise, noise levels, embeddings without a text encoder).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Activation range: max, percentile[:P] (default P 99.99) or mse.
    #[arg(long, default_value = "max")]
    calibrator: String,
    /// SmoothQuant alpha in [0, 1] (e.g. 0.5): move activation outliers into the weights.
    #[arg(long)]
    smoothquant: Option<f32>,
    /// Largest held-out output NMSE allowed per graph; the layers with the most error per unit
    /// of time saved stay in float until it is met. The guard under --min-psnr, which may only
    /// tighten it.
    #[arg(long, default_value_t = 1e-2)]
    budget_nmse: f64,
    /// The image budget, the primary criterion: every full generation (--eval-images, held-out
    /// prompts) must be at least this PSNR in dB against the float pipeline's image. While it
    /// is not, every graph is selected again under a 4× tighter NMSE budget (up to 6 rounds;
    /// report.md lists them). 0 turns it off.
    #[arg(long, value_name = "DB", default_value_t = 30.0)]
    min_psnr: f64,
    /// Fail when a full generation's PSNR against float is more than this many dB below 58.92 dB
    /// (the PSNR of 8-bit rounding alone), i.e. require PSNR >= 58.92 - D.
    #[arg(long)]
    max_psnr_drop: Option<f64>,
    /// Trajectory sizes WxH (multiples of 16) [default: 512x512,640x384,384x640, or the size in
    /// the model's vocabulary.json].
    #[arg(long, value_delimiter = ',')]
    sizes: Option<Vec<String>>,
    /// Trajectory step counts [default: the model's default and half of it, at least 4].
    #[arg(long, value_delimiter = ',')]
    steps: Option<Vec<usize>>,
    /// Reference-image counts of the trajectories (references are earlier trajectories' latents).
    #[arg(long, value_delimiter = ',', default_value = "0,1")]
    references: Vec<usize>,
    /// Prompt file, one prompt per line; every fifth is held out [default: 20 built-in prompts,
    /// or 40 seeded captions of the model's vocabulary.json].
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// Text tokens per prompt.
    #[arg(long, default_value_t = 512)]
    max_sequence_length: usize,
    /// Full generations compared with float in the report (0: none).
    #[arg(long, default_value_t = 2)]
    eval_images: usize,
    /// Steps of those generations [default: the model's default].
    #[arg(long)]
    eval_steps: Option<usize>,
    /// Keep layers whose name contains any of these (comma-separated) in float, e.g. proj_out.
    #[arg(long, value_delimiter = ',')]
    exclude: Vec<String>,
    /// Also quantise layers applied once per forward (timestep embedding, modulation).
    #[arg(long)]
    quantize_vectors: bool,
    /// Keep the DiT's attention products (q·kᵀ and softmax·v) in float. By default INT8 puts
    /// Q/DQ on their four inputs too (ONNX Runtime then runs them as int8 matmuls and TensorRT
    /// as fused int8 attention); FP8 keeps them in float unless --fp8-attention.
    #[arg(long, conflicts_with = "fp8_attention")]
    float_attention: bool,
    /// FP8: quantise the DiT's attention products too, for TensorRT's FP8 attention (Hopper, Ada,
    /// Thor). ONNX Runtime's CPU provider loads such graphs only with its Q/DQ fusions off:
    /// flux2 turns them off for FP8 graphs; elsewhere set session.disable_quant_qdq=1.
    #[arg(long)]
    fp8_attention: bool,
    /// Models with a vocabulary.json (the shapes model): after calibrating, judge this many seeded
    /// captions with the float and the quantised model (`flux2 eval`'s classifier) and add the
    /// adherence table to report.md (0: skip).
    #[arg(long, default_value_t = 48)]
    adherence: usize,
    /// Timed runs per graph for the report's CPU latency (median; 0 skips).
    #[arg(long, default_value_t = 3)]
    latency_runs: usize,
    /// ONNX Runtime threads [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// TensorRT version tag in calibration.cache (major*10000 + minor*100 + patch).
    #[arg(long, default_value = flux2_calib::artifacts::TRT_CACHE_VERSION)]
    trt_cache_version: String,
}

/// Noise-level distribution.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Dist {
    Ts,
    Ln,
    Pln,
}

fn parse_size(s: &str) -> anyhow::Result<(usize, usize)> {
    let (w, h) = s.trim().split_once(['x', 'X']).with_context(|| format!("--sizes: '{s}' is not WxH"))?;
    let n = |v: &str| v.parse::<usize>().with_context(|| format!("--sizes: '{s}' is not WxH"));
    Ok((n(w)?, n(h)?))
}

fn parse_component(s: &str) -> anyhow::Result<Component> {
    Ok(match s.trim().replace('_', "-").as_str() {
        "transformer" | "dit" => Component::Transformer,
        "text-encoder" | "te" => Component::TextEncoder,
        "vae" => Component::Vae,
        other => bail!("--components: unknown component '{other}' (expected transformer, text-encoder, vae)"),
    })
}

fn options(a: &Args) -> anyhow::Result<CalibrateOptions> {
    let format = match a.precision.to_ascii_lowercase().as_str() {
        "int8" => Format::Int8,
        "fp8" | "float8" | "e4m3" => Format::Fp8,
        other => bail!("--precision: '{other}' is not int8 or fp8"),
    };
    let mut o = CalibrateOptions::new(a.model.clone(), a.out.clone(), format);
    o.components =
        a.components.as_ref().map(|c| c.iter().map(|s| parse_component(s)).collect()).transpose()?;
    o.dist = match a.dist {
        Dist::Ts => Kind::Ts,
        Dist::Ln => Kind::Ln,
        Dist::Pln => Kind::Pln,
    };
    (o.dist_mu, o.dist_sigma) = (a.dist_mu, a.dist_sigma);
    (o.samples, o.heldout, o.seed) = (a.samples, a.heldout, a.seed);
    o.sensitivity_samples = a.sensitivity_samples;
    (o.vae_samples, o.vae_tile) = (a.vae_samples, a.vae_tile);
    (o.vae_heldout, o.vae_heldout_tile) = (a.vae_heldout, a.vae_heldout_tile);
    o.signed_activations = a.signed_activations;
    o.calibrator = a.calibrator.parse::<Calibrator>()?;
    o.smoothquant = a.smoothquant;
    (o.budget_nmse, o.max_psnr_drop) = (a.budget_nmse, a.max_psnr_drop);
    o.min_psnr = Some(a.min_psnr).filter(|m| *m > 0.0);
    if let Some(sizes) = &a.sizes {
        o.sizes = sizes.iter().map(|s| parse_size(s)).collect::<anyhow::Result<_>>()?;
    }
    o.steps = a.steps.clone();
    o.references = a.references.clone();
    if let Some(p) = &a.prompts {
        let text = std::fs::read_to_string(p).with_context(|| format!("--prompts {}", p.display()))?;
        o.prompts = Some(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect());
    }
    o.max_sequence_length = a.max_sequence_length;
    (o.eval_images, o.eval_steps) = (a.eval_images, a.eval_steps);
    o.exclude = a.exclude.clone();
    o.quantize_vectors = a.quantize_vectors;
    o.float_attention = a.float_attention;
    o.fp8_attention = a.fp8_attention;
    (o.latency_runs, o.threads) = (a.latency_runs, a.threads);
    o.trt_cache_version = a.trt_cache_version.clone();
    Ok(o)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut opts = options(&args)?;
    let vocab = calibrate_vocab::find(&args.model)?;
    if let Some((v, path)) = &vocab {
        let said = calibrate_vocab::apply_defaults(&mut opts, v, args.sizes.is_some(), args.steps.is_some());
        if !said.is_empty() {
            eprintln!("{} (from {})", said.join("; "), path.display());
        }
    }
    let mut pb: Option<indicatif::ProgressBar> = None;
    let outcome = calibrate(&opts, &mut |e| match e {
        Event::Stage { label, total } => {
            if let Some(p) = pb.take() {
                p.finish_and_clear();
            }
            eprintln!("{label}...");
            pb = Some(bar(total as u64, label));
        }
        Event::Advance { done, total } => {
            if let Some(p) = &pb {
                p.set_length(total as u64);
                p.set_position(done as u64);
            }
        }
    });
    if let Some(p) = pb.take() {
        p.finish_and_clear();
    }
    let outcome = outcome?;
    let r = &outcome.report;
    for c in r.components.values() {
        let lat = c
            .latency
            .as_ref()
            .map(|l| format!(", CPU {:.1} -> {:.1} ms ({:.2}x)", l.float_ms, l.quantized_ms, l.speedup()))
            .unwrap_or_default();
        eprintln!(
            "  {}: {}/{} layers {}, held-out NMSE {:.3e} (worst {:.3e}), cosine {:.6}{lat}",
            c.graph, c.layers_quantized, c.layers_total, r.precision, c.nmse, c.nmse_worst, c.cosine
        );
    }
    for g in &r.generations {
        eprintln!(
            "  generation {}x{} seed {}: PSNR {:.2} dB, SSIM {:.4}",
            g.width, g.height, g.seed, g.psnr_db, g.ssim
        );
    }
    let stages: Vec<String> = r.stage_seconds.iter().map(|(l, t)| format!("{l} {t:.0}s")).collect();
    let total: f64 = r.stage_seconds.iter().map(|(_, t)| t).sum();
    eprintln!("  time {total:.0}s: {}", stages.join(", "));
    eprintln!("  {}", r.gate.reason);
    let md = outcome.out.join("report.md");
    if !outcome.passed {
        bail!("quality gate failed; no model written. Report: {}", md.display());
    }
    if let (Some((v, _)), true) = (&vocab, args.adherence > 0) {
        let a = calibrate_vocab::judge(&args.model, &outcome.out, v, args.adherence, args.seed)?;
        eprintln!(
            "  adherence ({} captions, all three): float {:.1} %, {} {:.1} % ({:+.1} points)",
            a.prompts,
            100.0 * a.float.all,
            r.precision,
            100.0 * a.quantized.all,
            a.change_points()
        );
    }
    eprintln!("wrote {} ({} model; report {})", outcome.out.display(), r.precision, md.display());
    Ok(())
}
