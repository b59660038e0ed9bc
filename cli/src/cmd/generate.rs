//! `flux2 generate`: text-to-image and multi-reference editing with an exported model.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use flux2_runtime::pipeline::{Batch, Event, Pipeline, PromptSource, Request, SessionFactory};
use flux2_runtime::tensor_file::{read_tensor, write_tensors, Tensor};

/// Generate an image with an exported FLUX.2 model (a `flux2 export` folder).
///
/// Sampling follows the model: dev (guidance-distilled) makes one DiT call per step with
/// --guidance as an input (default 4.0, 50 steps); distilled klein makes one call per step
/// without guidance (4 steps); klein base uses true classifier-free guidance with the empty
/// negative prompt (guidance 4.0, 50 steps). Each --ref image is centre-cropped to a
/// multiple of 16 (resized first if above 1024² pixels), encoded, and appended to the
/// sequence at time offsets 10, 20, ...; the output size defaults to the first reference's.
///
/// --num-images N makes N images of the prompt from seeds SEED, SEED+1, ... in one batch (one
/// text-encoder call, one DiT call per step for all images and both CFG branches, one VAE
/// decode); each is bit-identical to a one-image run with its seed on the CPU provider. With
/// N > 1, --out fox.png writes fox_s7.png, fox_s8.png, ... (the seed in the name; with --noise,
/// whose tensor then holds N rows, fox_0.png, fox_1.png, ...) and --save-tensor holds all N.
///
/// Examples:
///   flux2 generate --model klein-onnx --prompt "a red fox in snow" --out fox.png
///   flux2 generate --model klein-onnx --prompt "a red fox in snow" --seed 7 --num-images 4 --out fox.png
///   flux2 generate --model klein-onnx --prompt "make it night" --ref day.png --out night.png
///   flux2 generate --model dev-onnx --prompt-embeds p.safetensors --noise n.safetensors \
///       --width 512 --height 512 --out x.png --save-tensor x.safetensors
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Export folder (with manifest.json).
    #[arg(long)]
    pub model: PathBuf,
    /// The prompt text (needs the exported text encoder and tokenizer).
    #[arg(long, conflicts_with = "prompt_embeds")]
    pub prompt: Option<String>,
    /// Prompt embeddings: safetensors with tensor `prompt_embeds` [1, L, ctx].
    #[arg(long)]
    pub prompt_embeds: Option<PathBuf>,
    /// Negative prompt for true CFG (klein base) [default: ""].
    #[arg(long, conflicts_with = "negative_prompt_embeds")]
    pub negative_prompt: Option<String>,
    /// Negative prompt embeddings (safetensors, tensor `prompt_embeds`).
    #[arg(long)]
    pub negative_prompt_embeds: Option<PathBuf>,
    /// Reference image for editing (repeatable; PNG or JPEG, at least 64 px a side).
    #[arg(long = "ref")]
    pub references: Vec<PathBuf>,
    /// Width in pixels, a multiple of 16 [default: first reference's, else 1024].
    #[arg(long)]
    pub width: Option<usize>,
    /// Height in pixels, a multiple of 16 [default: first reference's, else 1024].
    #[arg(long)]
    pub height: Option<usize>,
    /// Sampling steps [default: 4 for distilled klein, 50 otherwise].
    #[arg(long)]
    pub steps: Option<usize>,
    /// Guidance: embedded (dev) or CFG scale (klein base); ignored by distilled klein [default: 4.0].
    #[arg(long)]
    pub guidance: Option<f32>,
    /// Schedule shift: empirical (FLUX.2's μ), resolution[:BASE_TOKENS] (α = √(tokens/base)), fixed:ALPHA.
    #[arg(long, default_value = "empirical")]
    pub shift: String,
    /// Seed of the built-in noise generator (same image on every machine).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Images to make in one batch, from seeds SEED, SEED+1, ... (names: see above).
    #[arg(long, default_value_t = 1)]
    pub num_images: usize,
    /// Noise instead of the seed: safetensors with tensor `noise` [N, 128, H/16, W/16] (N = --num-images).
    #[arg(long)]
    pub noise: Option<PathBuf>,
    /// Maximum prompt length in tokens (longer prompts are truncated with a warning).
    #[arg(long, default_value_t = 512)]
    pub max_sequence_length: usize,
    /// Output PNG (written with the prompt, seed, steps, guidance, shift and model in its
    /// metadata); with --num-images N > 1, the stem of the N file names.
    #[arg(long)]
    pub out: PathBuf,
    /// Also write the image(s) as safetensors tensor `image` float32 [N, 3, H, W] in [0, 1].
    #[arg(long)]
    pub save_tensor: Option<PathBuf>,
    /// Execution provider: cpu, cuda or tensorrt.
    #[arg(long, default_value = "cpu")]
    pub provider: String,
}

/// Session factory for `--provider`.
pub fn factory(provider: &str) -> anyhow::Result<SessionFactory> {
    flux2_runtime::providers_factory(provider).with_context(|| format!("--provider {provider}"))
}

fn embeds(path: &std::path::Path) -> anyhow::Result<PromptSource> {
    Ok(PromptSource::Embeds(read_tensor(path, "prompt_embeds")?))
}

/// The request the options describe (files read, nothing generated yet).
fn request(args: &Args) -> anyhow::Result<Request> {
    let prompt = match (&args.prompt, &args.prompt_embeds) {
        (Some(p), None) => PromptSource::Text(p.clone()),
        (None, Some(f)) => embeds(f)?,
        _ => bail!("give --prompt TEXT or --prompt-embeds FILE"),
    };
    let negative = match (&args.negative_prompt, &args.negative_prompt_embeds) {
        (Some(p), _) => Some(PromptSource::Text(p.clone())),
        (None, Some(f)) => Some(embeds(f)?),
        _ => None,
    };
    let mut req = Request::new(prompt);
    req.negative = negative;
    req.references = args.references.clone();
    (req.width, req.height, req.steps, req.guidance) = (args.width, args.height, args.steps, args.guidance);
    req.shift = args.shift.parse().map_err(|e| anyhow::anyhow!("--shift: {e}"))?;
    req.seed = args.seed;
    req.num_images = args.num_images;
    req.noise = match &args.noise {
        Some(p) => Some(read_tensor(p, "noise")?),
        None => None,
    };
    req.max_sequence_length = args.max_sequence_length;
    Ok(req)
}

/// Where image `k` of the batch goes: `--out` itself for one image, else the stem with the
/// image's seed (`fox_s7.png`) or, for given noise, its index (`fox_0.png`).
pub fn output_path(out: &Path, num_images: usize, k: usize, seed: Option<u64>) -> PathBuf {
    if num_images == 1 {
        return out.to_path_buf();
    }
    let stem = out.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let tag = match seed {
        Some(s) => format!("s{s}"),
        None => k.to_string(),
    };
    let name = match out.extension() {
        Some(ext) => format!("{stem}_{tag}.{}", ext.to_string_lossy()),
        None => format!("{stem}_{tag}"),
    };
    out.with_file_name(name)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.num_images == 0 {
        bail!("--num-images must be at least 1");
    }
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            bail!("--out {}: folder {} does not exist", args.out.display(), dir.display());
        }
    }
    let req = request(&args)?;
    let mut pipe = Pipeline::new(&args.model, factory(&args.provider)?)?;
    let plan = pipe.plan(&req)?; // validate before any model runs
    let pb = crate::progress::bar(plan.schedule.steps() as u64, "denoise");
    let out = pipe.generate_batch(&req, &mut |e| match e {
        Event::Stage(s) => pb.set_message(s.to_string()),
        Event::Step { index, .. } => pb.set_position(index as u64),
    })?;
    pb.finish_and_clear();
    write_outputs(&args, &pipe, &out)?;
    print_timings(&out);
    Ok(())
}

/// Writes the PNG(s) and the optional tensor file.
fn write_outputs(args: &Args, pipe: &Pipeline, out: &Batch) -> anyhow::Result<()> {
    let n = out.images.len();
    for (k, image) in out.images.iter().enumerate() {
        let seed = out.seeds.get(k).copied();
        let path = output_path(&args.out, n, k, seed);
        let meta = provenance(args, pipe, &out.plan, seed);
        flux2_runtime::images::write_png(&path, image, &meta)?;
        println!(
            "wrote {} ({}×{}, {} steps)",
            path.display(),
            image.width,
            image.height,
            out.plan.schedule.steps()
        );
    }
    if let Some(p) = &args.save_tensor {
        let (w, h) = (out.plan.width, out.plan.height);
        let data = out.images.iter().flat_map(|i| i.data.iter().copied()).collect();
        let t = Tensor { shape: vec![n, 3, h, w], data };
        write_tensors(p, &[("image", &t)])?;
    }
    Ok(())
}

fn print_timings(out: &Batch) {
    let t = &out.timings;
    let dit: f64 = t.dit_steps.iter().sum();
    let n = out.images.len();
    let rate = if n > 1 { format!(", {:.3} images/s", n as f64 / t.total.max(1e-9)) } else { String::new() };
    println!(
        "timings{}: text encoder {:.3}s, vae encode {:.3}s, denoise {:.3}s ({:.3}s/step), vae decode {:.3}s, total {:.3}s ({:.1}% in ONNX Runtime){rate}",
        if n > 1 { format!(" (batch of {n})") } else { String::new() },
        t.text_encoder,
        t.vae_encode,
        dit,
        dit / t.dit_steps.len().max(1) as f64,
        t.vae_decode,
        t.total,
        100.0 * t.ort / t.total.max(1e-9)
    );
}

fn provenance(
    args: &Args,
    pipe: &Pipeline,
    plan: &flux2_runtime::pipeline::Plan,
    seed: Option<u64>,
) -> Vec<(String, String)> {
    let m = &pipe.model.manifest;
    let prompt = match (&args.prompt, &args.prompt_embeds) {
        (Some(p), _) => p.clone(),
        (_, Some(f)) => format!("<embeddings {}>", f.display()),
        _ => String::new(),
    };
    let hash: String =
        m.sources.iter().map(|s| &s.fingerprint[..16.min(s.fingerprint.len())]).collect::<Vec<_>>().join(",");
    let precision: Vec<String> = m
        .graphs
        .iter()
        .map(|(k, g)| format!("{k}={}", g.precision.clone().unwrap_or_else(|| g.dtype.clone())))
        .collect();
    vec![
        ("Software".into(), format!("flux2-deploy {}", env!("CARGO_PKG_VERSION"))),
        ("flux2:prompt".into(), prompt),
        ("flux2:seed".into(), seed.map_or_else(|| "<noise file>".into(), |s| s.to_string())),
        ("flux2:steps".into(), plan.schedule.steps().to_string()),
        ("flux2:guidance".into(), format!("{} ({:?})", plan.guidance, plan.mode)),
        ("flux2:shift".into(), format!("{} (alpha {:.4})", args.shift, plan.schedule.alpha)),
        ("flux2:size".into(), format!("{}x{}", plan.width, plan.height)),
        (
            "flux2:references".into(),
            args.references.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(","),
        ),
        ("flux2:model".into(), format!("{} variant={} sources={hash}", args.model.display(), m.variant)),
        ("flux2:precision".into(), precision.join(",")),
        ("flux2:provider".into(), args.provider.clone()),
    ]
}
