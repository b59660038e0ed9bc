//! `flux2 generate`: text-to-image and multi-reference editing with an exported model.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use flux2_runtime::images::Reference;
use flux2_runtime::lora::AdapterSpec;
use flux2_runtime::pipeline::{Batch, Event, Pipeline, Residency, SessionFactory};
use flux2_runtime::prompt_cache::PromptCache;
use flux2_runtime::request::GenerateArgs;
use flux2_runtime::tensor_file::{write_tensors, Tensor};

/// Generate an image with an exported FLUX.2 model (a `flux2 export` folder).
///
/// Sampling follows the model: dev (guidance-distilled) makes one DiT call per step with
/// --guidance as an input (default 4.0, 50 steps); distilled klein makes one call per step
/// without guidance (4 steps); klein base uses true classifier-free guidance with the empty
/// negative prompt (guidance 4.0, 50 steps). An export of a checkpoint that ships a
/// vocabulary.json (models/flux2-shapes) defaults to the size, steps and guidance it names
/// (manifest.json's pipeline default_*). Each --ref image is centre-cropped to a
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
///   flux2 generate --model klein-onnx --prompt "a fox" --lora style.safetensors:0.8 \
///       --lora detail.safetensors --out fox.png        # LoRA adapters, no re-export
///
/// --cache POLICY skips DiT work on steps whose output barely changes (off by default; the
/// export needs its DiT parts, which `flux2 export` writes): fbc:THRESHOLD (First-Block Cache,
/// e.g. fbc:0.1), mag:THRESHOLD[,MAX_SKIP,RETENTION] (MagCache, e.g. mag:0.06 or mag:0.24,5),
/// taylor:INTERVAL[,ORDER[,BEFORE[,AFTER]]] (TaylorSeer, e.g. taylor:2), tea:THRESHOLD (TeaCache).
/// mag and tea need `flux2 calibrate --model DIR calibrate-cache` on the export once. The
/// CFG branches keep separate caches. --json prints a summary on stdout (seconds per stage,
/// full / first-block-only / skipped DiT evaluations):
///   flux2 generate --model shapes --prompt "a red circle on a blue background" --cache fbc:0.1 --json --out c.png
///
/// Memory: with --residency stage one stage's session is resident at a time (the text encoder
/// is dropped before the DiT is created, the DiT before the VAE decoder); the default, auto,
/// does that for models over 2 GiB of weights and otherwise keeps all (the fastest start).
/// --json reports the peak RSS of each stage (`peak_rss_bytes`: load, text_encoder, denoise,
/// vae_decode, overall; Linux). A prompt found in the prompt-embedding cache (--prompt-cache,
/// on by default) skips the text encoder, whose session is then not created
/// (`"text_encoder": "cached"`; the same image bit for bit).
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
    /// Width in pixels, a multiple of 16, at most 4096 [default: first reference's, else the export's, else 1024].
    #[arg(long, allow_negative_numbers = true)]
    pub width: Option<usize>,
    /// Height in pixels, a multiple of 16, at most 4096 [default: first reference's, else the export's, else 1024].
    #[arg(long, allow_negative_numbers = true)]
    pub height: Option<usize>,
    /// Sampling steps [default: the export's, else 4 for distilled klein, 50 otherwise].
    #[arg(long, allow_negative_numbers = true)]
    pub steps: Option<usize>,
    /// Guidance: embedded (dev) or CFG scale (klein base); ignored by distilled klein [default: the export's, else 4.0].
    #[arg(long, allow_negative_numbers = true)]
    pub guidance: Option<f32>,
    /// Schedule shift: empirical (FLUX.2's μ), resolution[:BASE_TOKENS] (α = √(tokens/base)), fixed:ALPHA
    /// [default: the export's for this size (a multi-resolution model's vocabulary), else empirical].
    #[arg(long)]
    pub shift: Option<String>,
    /// Seed of the built-in noise generator (same image on every machine).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub seed: u64,
    /// Images to make in one batch, from seeds SEED, SEED+1, ... (file names: see above).
    #[arg(long, default_value_t = 1)]
    pub num_images: usize,
    /// Noise instead of the seed: safetensors with tensor `noise` [N, 128, H/16, W/16] (N = --num-images).
    #[arg(long)]
    pub noise: Option<PathBuf>,
    /// Maximum prompt length in tokens (longer prompts are truncated with a warning).
    #[arg(long, default_value_t = 512)]
    pub max_sequence_length: usize,
    /// Output image: .png (with the prompt, seed, steps, guidance, shift and model in its
    /// metadata) or .jpg/.jpeg; other extensions are refused. With --num-images N > 1, the
    /// pattern of the N file names.
    #[arg(long)]
    pub out: PathBuf,
    /// Also write the image(s) as safetensors tensor `image` float32 [N, 3, H, W] in [0, 1].
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
    /// Step caching: fbc:T, mag:T[,MAX_SKIP,RETENTION], taylor:N[,ORDER], tea:T, or off.
    #[arg(long, value_name = "POLICY", default_value = "off")]
    pub cache: String,
    /// Print a JSON summary on stdout (timings and peak RSS per stage, DiT evaluations,
    /// whether the text encoder ran or the prompt cache answered); messages go to stderr.
    #[arg(long)]
    pub json: bool,
    /// Prompt-embedding cache: auto (<model>/.flux2-prompt-cache/ when writable, else the user
    /// cache folder), off, or a folder. A prompt found there skips the text encoder.
    #[arg(long, value_name = "auto|off|DIR", default_value = "auto")]
    pub prompt_cache: String,
    /// Sessions: stage (one stage's session resident at a time: the least memory), all (the
    /// DiT and VAE sessions are created on background threads while the text encoder is made
    /// and runs: the shortest cold start, all stages' weights resident), or auto: all when the
    /// model's weights take at most 2 GiB and an eighth of the available memory, else stage.
    #[arg(long, value_name = "auto|stage|all", default_value = "auto")]
    pub residency: String,
}

/// `--residency auto|stage|all` (generate and bench) for the model of `pipe`.
pub fn parse_residency(value: &str, pipe: &Pipeline) -> anyhow::Result<Residency> {
    match value {
        "auto" => Ok(Residency::for_model(&pipe.model)),
        "stage" => Ok(Residency::Stage),
        "all" => Ok(Residency::All),
        r => bail!("--residency {r}: expected auto, stage or all"),
    }
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

/// Session factory for `--provider` (used by the full build's demo, eval and calibrate).
#[cfg_attr(not(feature = "full"), allow(dead_code))]
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
        shift: args.shift.clone(),
        seed: args.seed,
        num_images: Some(args.num_images),
        noise: args.noise.clone(),
        max_sequence_length: Some(args.max_sequence_length),
        cache: Some(args.cache.clone()),
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
    // one request: large models keep only the running stage's weights resident (auto)
    let residency = parse_residency(&args.residency, &pipe)?;
    pipe.set_residency(residency);
    pipe.set_measure_memory(true);
    pipe.set_prompt_cache(PromptCache::from_option(&args.prompt_cache, &args.model)?);
    let plan = pipe.plan(&req)?; // validate before any model runs
    if req.cache.is_some() {
        if let Some(note) = pipe.cache_advice(&plan) {
            eprintln!("note: {note}");
        }
    }
    let pb = crate::progress::bar(plan.schedule.steps() as u64, "denoise");
    let out = pipe.generate_batch(&req, &mut |e| {
        match e {
            Event::Stage(s) => pb.set_message(s.to_string()),
            Event::Step { index, .. } => pb.set_position(index as u64),
        }
        std::ops::ControlFlow::Continue(())
    })?;
    pb.finish_and_clear();
    let written = write_outputs(&args, &pipe, &out)?;
    if args.json {
        print_json(&args, &pipe, &out, &written)?;
    } else {
        print_timings(&out);
        println!("peak RSS: {}", out.timings.memory);
    }
    Ok(())
}

/// `--json`: what was written, the timings per stage and the DiT evaluations.
fn print_json(args: &Args, pipe: &Pipeline, out: &Batch, written: &[PathBuf]) -> anyhow::Result<()> {
    let t = &out.timings;
    let cache = pipe.prompt_cache().map(|c| serde_json::json!({"dir": c.dir(), "counts": c.counts}));
    let summary = serde_json::json!({
        "images": written,
        "seeds": out.seeds,
        "width": out.plan.width,
        "height": out.plan.height,
        "steps": out.plan.schedule.steps(),
        "guidance": out.plan.guidance,
        "cache": args.cache,
        "seconds": {
            "load": t.load,
            "text_encoder": t.text_encoder,
            "vae_encode": t.vae_encode,
            "denoise": t.dit_steps.iter().sum::<f64>(),
            "dit_steps": t.dit_steps,
            "vae_decode": t.vae_decode,
            "total": t.total,
            "onnx_runtime": t.ort,
        },
        "dit_evaluations": t.dit,
        "text_encoder": t.text_encoder_use,
        "prompt_cache": cache,
        "residency": pipe.residency(),
        "peak_rss_bytes": t.memory,
    });
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
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

/// Writes the image file(s) and the optional tensor file; returns the image paths.
fn write_outputs(args: &Args, pipe: &Pipeline, out: &Batch) -> anyhow::Result<Vec<PathBuf>> {
    let n = out.images.len();
    let mut written = Vec::with_capacity(n);
    for (k, image) in out.images.iter().enumerate() {
        let seed = out.seeds.get(k).copied();
        let path = output_path(&args.out, n, k, seed);
        let meta = provenance(args, pipe, &out.plan, seed);
        flux2_runtime::images::write_image(&path, image, &meta)?;
        let line = format!(
            "wrote {} ({}×{}, {} steps)",
            path.display(),
            image.width,
            image.height,
            out.plan.schedule.steps()
        );
        match args.json {
            true => eprintln!("{line}"),
            false => println!("{line}"),
        }
        written.push(path);
    }
    if let Some(p) = &args.save_tensor {
        let (w, h) = (out.plan.width, out.plan.height);
        let data = out.images.iter().flat_map(|i| i.data.iter().copied()).collect();
        let t = Tensor { shape: vec![n, 3, h, w], data };
        write_tensors(p, &[("image", &t)])?;
    }
    Ok(written)
}

fn print_timings(out: &Batch) {
    let t = &out.timings;
    let dit: f64 = t.dit_steps.iter().sum();
    let n = out.images.len();
    let (batch, rate) = match n {
        1 => (String::new(), String::new()),
        _ => (format!(" (batch of {n})"), format!(", {:.3} images/s", n as f64 / t.total.max(1e-9))),
    };
    println!(
        "timings{batch}: text encoder {:.3}s, vae encode {:.3}s, denoise {:.3}s ({:.3}s/step), vae decode {:.3}s, total {:.3}s ({:.1}% in ONNX Runtime){rate}",
        t.text_encoder,
        t.vae_encode,
        dit,
        dit / t.dit_steps.len().max(1) as f64,
        t.vae_decode,
        t.total,
        100.0 * t.ort / t.total.max(1e-9)
    );
    let e = &t.dit;
    if e.first_block_only + e.skipped > 0 {
        println!(
            "DiT evaluations: {} full, {} first block only, {} skipped (of {})",
            e.full,
            e.first_block_only,
            e.skipped,
            e.full + e.first_block_only + e.skipped
        );
    }
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
        (
            "flux2:shift".into(),
            format!("{} (alpha {:.4})", args.shift.as_deref().unwrap_or("default"), plan.schedule.alpha),
        ),
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
