//! `flux2 build`: TensorRT engines for an export folder, through ONNX Runtime's TensorRT provider.

use std::path::PathBuf;

use anyhow::Context;
use flux2_deploy::trt::engine::Progress;
use flux2_deploy::trt::{build, BuildRequest};
use flux2_runtime::trt::probe::TrtVersion;
use flux2_runtime::trt::profiles::DEFAULT_BUCKETS;
use flux2_runtime::trt::{Bucket, FloatPrecision, GpuTarget, ShapePlan};

/// Build TensorRT engines for an exported (and optionally calibrated) model.
///
/// Needs an NVIDIA GPU of the --gpu family, ONNX Runtime's GPU build (ORT_DYLIB_PATH) and
/// TensorRT 10; `flux2 doctor` shows what is missing. Everything is checked before anything is
/// written: the precision rules of the GPU (FP8 Q/DQ graphs are refused on ampere and orin;
/// DLA only on orin), `flux2 check` for TensorRT, the profiles, then the provider, libraries
/// and GPU. The output folder holds one EPContext model per graph (<graph>_ctx.onnx) pointing
/// at its engine in engines/, the timing cache, the tokenizer and configs, manifest.json and
/// tensorrt.json (GPU, TensorRT version, cache keys). Run it with `--provider tensorrt`.
///
/// Precision comes from the graphs: INT8 or FP8 where `flux2 calibrate` put Q/DQ nodes
/// (strongly typed, never implicit INT8), --float for the rest. Profiles: every dynamic input
/// gets min/opt/max from the buckets (VAE H/W, DiT image tokens + up to 4096 per reference).
///
/// Examples:
///   flux2 build --model ./klein-fp8 --gpu hopper --out ./klein-h100
///   flux2 build --model ./klein-int8 --gpu orin --buckets 768x768,1024x1024 --out ./klein-orin
///   flux2 build --model ./dev-fp8 --gpu thor --max-refs 2 --out ./dev-thor
///   flux2 build --model ./klein --gpu hopper --refittable --out ./klein-h100-refit
///
/// --refittable builds weight-stripped engines (TensorRT provider option
/// trt_weight_stripped_engine_enable): the engines hold no weights and are refitted at load from
/// the ONNX initializers of the export they were built from, or of another export of the same
/// model and graph (`flux2 generate --provider tensorrt --refit-from DIR`, e.g. one made with
/// `flux2 export --lora`), so a new LoRA needs an export (seconds) instead of an engine build.
/// Every weight must be an initializer of its own: export with --weights copy (link exports of
/// BFL files assemble fused weights from pieces and are refused).
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Export folder (flux2 export / flux2 calibrate output).
    #[arg(long)]
    model: PathBuf,
    /// GPU family: hopper (H100, H200), ada (L40S, L4), ampere (A100, A10), orin, thor.
    #[arg(long)]
    gpu: String,
    /// Output resolutions WxH (multiples of 16) the engines must serve
    /// [default: 1024x1024,512x512,768x768,1360x768,768x1360,1152x896,896x1152].
    #[arg(long, value_delimiter = ',')]
    buckets: Option<Vec<String>>,
    /// The bucket TensorRT tunes for [default: 1024x1024 if listed, else the first].
    #[arg(long)]
    opt: Option<String>,
    /// Reference images per request the DiT profile must fit (each up to 1024² px = 4096 tokens).
    #[arg(long, default_value_t = 0)]
    max_refs: u32,
    /// Largest batch (images per prompt).
    #[arg(long, default_value_t = 1)]
    max_batch: i64,
    /// One optimisation profile per bucket (fastest kernels per size, longer build) instead of one
    /// profile spanning all buckets.
    #[arg(long)]
    profile_per_bucket: bool,
    /// Precision of layers without Q/DQ: fp16, bf16 or fp32 (TensorRT 10 builder flag).
    #[arg(long, default_value = "fp16")]
    float: String,
    /// Run on the Jetson Orin DLA core N (FP16/INT8 layers; the rest falls back to the GPU).
    #[arg(long)]
    dla: Option<u32>,
    /// TensorRT builder optimisation level 0-5 (3 is TensorRT's default; lower builds faster).
    #[arg(long)]
    opt_level: Option<u8>,
    /// Builder workspace limit in GiB [default: TensorRT's, all device memory].
    #[arg(long)]
    workspace_gib: Option<f64>,
    /// Shared timing-cache folder, reused across builds on the same GPU [default: OUT/timing].
    #[arg(long)]
    timing_cache: Option<PathBuf>,
    /// Only these graphs (comma-separated manifest names).
    #[arg(long, value_delimiter = ',')]
    graphs: Option<Vec<String>>,
    /// CUDA device index.
    #[arg(long, default_value_t = 0)]
    device: i32,
    /// TensorRT release to check the graphs against (11.x builds strongly typed).
    #[arg(long)]
    trt_version: Option<String>,
    /// Output folder (must be new or empty unless --force).
    #[arg(long)]
    out: PathBuf,
    /// Replace files in a non-empty --out.
    #[arg(long)]
    force: bool,
    /// Weight-stripped engines, refitted at load from an export's ONNX weights (see above).
    #[arg(long)]
    refittable: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let gpu: GpuTarget = args.gpu.parse()?;
    let given: Vec<String> =
        args.buckets.unwrap_or_else(|| DEFAULT_BUCKETS.iter().map(|s| s.to_string()).collect());
    let buckets = given.iter().map(|b| b.parse::<Bucket>()).collect::<Result<Vec<_>, _>>()?;
    let opt = args.opt.as_deref().map(str::parse::<Bucket>).transpose()?;
    let shapes = ShapePlan::new(buckets, opt, args.max_refs, args.max_batch, args.profile_per_bucket)?;
    let float: FloatPrecision = args.float.parse()?;
    let trt_version = match args.trt_version.as_deref() {
        Some(s) => Some(
            TrtVersion::parse(s)
                .with_context(|| format!("--trt-version: '{s}' is not a version like 10.16"))?,
        ),
        None => None,
    };
    let max_workspace_size = match args.workspace_gib {
        Some(g) if g.is_finite() && g > 0.0 => Some((g * (1u64 << 30) as f64) as usize),
        Some(g) => anyhow::bail!("--workspace-gib: {g} must be positive"),
        None => None,
    };
    let req = BuildRequest {
        model: args.model,
        out: args.out,
        gpu,
        shapes,
        float,
        dla_core: args.dla,
        builder_optimization_level: args.opt_level,
        max_workspace_size,
        timing_cache: args.timing_cache,
        graphs: args.graphs,
        device_id: args.device,
        trt_version,
        force: args.force,
        refittable: args.refittable,
    };
    let started = std::time::Instant::now();
    let built = build(&req, &mut |p| match p {
        Progress::Graph { name, index, total } => {
            eprintln!("[{}/{total}] building {name} (TensorRT engine builds take minutes)...", index + 1)
        }
        Progress::Built { name, seconds } => eprintln!("      {name}: {seconds:.1}s"),
    })?;
    println!(
        "built {} engine(s) for {} ({}, sm{}, TensorRT {}) in {:.1}s -> {}",
        built.graphs.len(),
        built.gpu,
        built.device,
        built.sm,
        built.tensorrt,
        started.elapsed().as_secs_f64(),
        req.out.display()
    );
    for (name, g) in &built.graphs {
        println!("  {name}: {} ({}; key {})", g.context_model, g.key_parts.precision, &g.cache_key[..16]);
    }
    println!("run it with: flux2 generate --model {} --provider tensorrt ...", req.out.display());
    Ok(())
}
