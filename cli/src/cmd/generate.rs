//! `flux2 generate`: text-to-image and multi-reference editing with an exported model.

use std::path::PathBuf;

use anyhow::{bail, Context};
use flux2_runtime::images::Reference;
use flux2_runtime::lora::AdapterSpec;
use flux2_runtime::pipeline::{Event, Pipeline, SessionFactory};
use flux2_runtime::request::GenerateArgs;
use flux2_runtime::tensor_file::{write_tensors, Tensor};

/// Generate an image with an exported FLUX.2 model (a `flux2 export` folder).
///
/// Sampling follows the model: dev (guidance-distilled) makes one DiT call per step with
/// --guidance as an input (default 4.0, 50 steps); distilled klein makes one call per step
/// without guidance (4 steps); klein base uses true classifier-free guidance with the empty
/// negative prompt (guidance 4.0, 50 steps). Each --ref image is centre-cropped to a
/// multiple of 16 (resized first if above 1024² pixels), encoded, and appended to the
/// sequence at time offsets 10, 20, ...; the output size defaults to the first reference's.
///
/// Examples:
///   flux2 generate --model klein-onnx --prompt "a red fox in snow" --out fox.png
///   flux2 generate --model klein-onnx --prompt "make it night" --ref day.png --out night.png
///   flux2 generate --model dev-onnx --prompt-embeds p.safetensors --noise n.safetensors \
///       --width 512 --height 512 --out x.png --save-tensor x.safetensors
///   flux2 generate --model klein-onnx --prompt "a fox" --lora style.safetensors:0.8 \
///       --lora detail.safetensors --out fox.png        # LoRA adapters, no re-export
///
/// --lora FILE[:SCALE] (repeatable, scale 1 by default) applies adapters at run time: diffusers /
/// PEFT, BFL / ai-toolkit or kohya files, detected from their keys. The touched DiT weights are
/// merged in memory and replace the export's at session creation; nothing is written. Quantised
/// (calibrated) exports refuse run-time adapters: merge with `flux2 export --lora`, then calibrate.
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
    /// Width in pixels, a multiple of 16, at most 4096 [default: first reference's, else 1024].
    #[arg(long, allow_negative_numbers = true)]
    pub width: Option<usize>,
    /// Height in pixels, a multiple of 16, at most 4096 [default: first reference's, else 1024].
    #[arg(long, allow_negative_numbers = true)]
    pub height: Option<usize>,
    /// Sampling steps [default: 4 for distilled klein, 50 otherwise].
    #[arg(long, allow_negative_numbers = true)]
    pub steps: Option<usize>,
    /// Guidance: embedded (dev) or CFG scale (klein base); ignored by distilled klein [default: 4.0].
    #[arg(long, allow_negative_numbers = true)]
    pub guidance: Option<f32>,
    /// Schedule shift: empirical (FLUX.2's μ), resolution[:BASE_TOKENS] (α = √(tokens/base)), fixed:ALPHA.
    #[arg(long, default_value = "empirical")]
    pub shift: String,
    /// Seed of the built-in noise generator (same image on every machine).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub seed: u64,
    /// Noise instead of the seed: safetensors with tensor `noise` [1, 128, H/16, W/16].
    #[arg(long)]
    pub noise: Option<PathBuf>,
    /// Maximum prompt length in tokens (longer prompts are truncated with a warning).
    #[arg(long, default_value_t = 512)]
    pub max_sequence_length: usize,
    /// Output image: .png (with the prompt, seed, steps, guidance, shift and model in its
    /// metadata) or .jpg/.jpeg; other extensions are refused.
    #[arg(long)]
    pub out: PathBuf,
    /// Also write the image as safetensors tensor `image` float32 [1, 3, H, W] in [0, 1].
    #[arg(long)]
    pub save_tensor: Option<PathBuf>,
    /// Execution provider: cpu, cuda or tensorrt.
    #[arg(long, default_value = "cpu")]
    pub provider: String,
    /// LoRA adapter applied at run time, FILE[:SCALE] (repeatable; scale 1 by default).
    #[arg(long, value_name = "FILE[:SCALE]")]
    pub lora: Vec<String>,
    /// With --provider tensorrt and a `flux2 build --refittable` folder: refit the engines from
    /// this export's ONNX weights (e.g. one made with `flux2 export --lora`).
    #[arg(long, value_name = "DIR")]
    pub refit_from: Option<PathBuf>,
}

/// Parses `--lora` arguments and applies them to the pipeline's DiT, reporting what changed.
pub fn apply_adapters(pipe: &mut Pipeline, specs: &[String]) -> anyhow::Result<()> {
    if specs.is_empty() {
        return Ok(());
    }
    let specs: Vec<AdapterSpec> = specs.iter().map(|s| AdapterSpec::parse(s)).collect::<Result<_, _>>()?;
    for r in pipe.set_adapters(&specs)? {
        eprintln!(
            "adapter {} ({}, rank {}, scale {}): {} DiT tensors merged at run time",
            r.file,
            r.format,
            r.rank,
            r.scale,
            r.tensors.len()
        );
    }
    Ok(())
}

/// Session factory for `--provider`.
pub fn factory(provider: &str) -> anyhow::Result<SessionFactory> {
    flux2_runtime::providers_factory(provider).with_context(|| format!("--provider {provider}"))
}

/// The options as the runtime's request arguments (checked there, shared with the Python package).
fn generate_args(args: &Args) -> GenerateArgs {
    GenerateArgs {
        prompt: args.prompt.clone(),
        prompt_embeds: args.prompt_embeds.clone(),
        negative_prompt: args.negative_prompt.clone(),
        negative_prompt_embeds: args.negative_prompt_embeds.clone(),
        references: args.references.iter().cloned().map(Reference::Path).collect(),
        width: args.width,
        height: args.height,
        steps: args.steps,
        guidance: args.guidance,
        shift: Some(args.shift.clone()),
        seed: args.seed,
        noise: args.noise.clone(),
        max_sequence_length: Some(args.max_sequence_length),
    }
}

/// Session factory for `--provider`, refitting weight-stripped TensorRT engines from `refit_from`.
pub fn factory_refit(provider: &str, refit_from: Option<&std::path::Path>) -> anyhow::Result<SessionFactory> {
    if let Some(dir) = refit_from {
        if !dir.join("manifest.json").is_file() {
            bail!("--refit-from {}: not an export folder (no manifest.json)", dir.display());
        }
    }
    let opts = flux2_runtime::SessionOptions {
        trt_refit_from: refit_from.map(|d| std::fs::canonicalize(d).unwrap_or_else(|_| d.to_path_buf())),
        ..Default::default()
    };
    flux2_runtime::providers_factory_with(provider, opts).with_context(|| format!("--provider {provider}"))
}

pub fn run(args: Args) -> anyhow::Result<()> {
    check_output("--out", &args.out)?;
    flux2_runtime::images::output_format(&args.out).context("--out")?;
    if let Some(p) = &args.save_tensor {
        check_output("--save-tensor", p)?;
    }
    let req = generate_args(&args).into_request()?;
    let mut pipe = Pipeline::new(&args.model, factory_refit(&args.provider, args.refit_from.as_deref())?)?;
    apply_adapters(&mut pipe, &args.lora)?;
    let plan = pipe.plan(&req)?; // validate before any model runs
    let pb = crate::progress::bar(plan.schedule.steps() as u64, "denoise");
    let out = pipe.generate(&req, &mut |e| match e {
        Event::Stage(s) => pb.set_message(s.to_string()),
        Event::Step { index, .. } => pb.set_position(index as u64),
    })?;
    pb.finish_and_clear();

    let meta = provenance(&args, &pipe, &out.plan);
    flux2_runtime::images::write_image(&args.out, &out.image, &meta)?;
    if let Some(p) = &args.save_tensor {
        let t = Tensor { shape: vec![1, 3, out.image.height, out.image.width], data: out.image.data.clone() };
        write_tensors(p, &[("image", &t)])?;
    }
    let t = &out.timings;
    let dit: f64 = t.dit_steps.iter().sum();
    println!(
        "wrote {} ({}×{}, {} steps)",
        args.out.display(),
        out.image.width,
        out.image.height,
        plan.schedule.steps()
    );
    println!(
        "timings: text encoder {:.3}s, vae encode {:.3}s, denoise {:.3}s ({:.3}s/step), vae decode {:.3}s, total {:.3}s ({:.1}% in ONNX Runtime)",
        t.text_encoder,
        t.vae_encode,
        dit,
        dit / t.dit_steps.len().max(1) as f64,
        t.vae_decode,
        t.total,
        100.0 * t.ort / t.total.max(1e-9)
    );
    Ok(())
}

/// Fails before any model runs when `path` cannot be written: its folder is missing, not a
/// folder or not writable, or `path` itself is a folder.
fn check_output(option: &str, path: &std::path::Path) -> anyhow::Result<()> {
    if path.is_dir() {
        bail!("{option} {}: is a folder; give a file name", path.display());
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    if !dir.is_dir() {
        bail!("{option} {}: folder {} does not exist", path.display(), dir.display());
    }
    let probe = dir.join(format!(".flux2-write-test-{}", std::process::id()));
    match std::fs::File::create(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => bail!("{option} {}: cannot write in {}: {e}", path.display(), dir.display()),
    }
}

fn provenance(args: &Args, pipe: &Pipeline, plan: &flux2_runtime::pipeline::Plan) -> Vec<(String, String)> {
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
        (
            "flux2:seed".into(),
            if args.noise.is_some() { "<noise file>".into() } else { args.seed.to_string() },
        ),
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
