//! `flux2 demo`: the whole path on the model shipped in the repository, with no download.
//! `models/flux2-shapes` is a small FLUX.2 [klein]-architecture checkpoint (diffusers layout,
//! Qwen3 text encoder with its tokenizer and chat template, FLUX.2 VAE topology) trained here
//! (train/) to draw one solid shape on a solid background from a caption of its vocabulary.
//! The demo exports it to ONNX like any checkpoint, generates the prompt, and lets the
//! flux2-eval classifier say what the picture shows. A second run reuses a current export.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use flux2_eval::{classify, Rgb, Vocabulary};
use flux2_exporter::export::{export, ExportRequest};
use flux2_exporter::manifest::{fingerprint, Manifest};
use flux2_exporter::models::ExportOptions;
use flux2_exporter::safetensors::SafeFile;
use flux2_exporter::{ModelSource, WeightMode};
use flux2_graphs::{DType, Target};
use flux2_runtime::pipeline::{Event, Pipeline, PromptSource, Request};
use sha2::{Digest, Sha256};

/// Where the shipped model lives, relative to the repository root.
pub const SHIPPED_MODEL: &str = "models/flux2-shapes";

/// The graphs a complete export holds.
const GRAPHS: [&str; 4] = ["text_encoder", "transformer", "vae_decoder", "vae_encoder"];

/// The rest of `--help`, after the options (the one-line about comes from main.rs).
const LONG_HELP: &str = "\
The model is models/flux2-shapes: a small FLUX.2 [klein]-architecture checkpoint (Qwen3 text
encoder with its tokenizer and chat template, a 2+2-block DiT, the FLUX.2 VAE topology at small
widths) trained in this repository (train/) on pictures of one solid shape on a solid
background. It draws captions of its vocabulary (models/flux2-shapes/vocabulary.json):

  a {color} {shape} on a {background} background
  color, background: two different of black, blue, green, orange, purple, red, white, yellow
  shape: circle, square, triangle

--prompt accepts any such caption (and says which words it allows otherwise). Size, steps and
guidance default to what the model is meant to run at (its vocabulary.json). After generating,
the demo's classifier (the one of `flux2 eval`) says what the picture shows.

Output (under --out): onnx/ (the export, reused when current) and demo.png.

Examples:
  flux2 demo
  flux2 demo --prompt \"a yellow triangle on a purple background\" --seed 7
  flux2 demo --checkpoint models/flux2-shapes --out /tmp/demo";

/// Export the shipped shapes model to ONNX and draw a caption of its vocabulary.
#[derive(clap::Args)]
#[command(after_long_help = LONG_HELP)]
pub struct Args {
    /// Output folder.
    #[arg(long, default_value = "flux2-demo")]
    pub out: PathBuf,
    /// A caption of the model's vocabulary [default: the vocabulary's first circle caption].
    #[arg(long)]
    pub prompt: Option<String>,
    /// Noise seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Image size WIDTHxHEIGHT, multiples of 16 [default: the vocabulary's].
    #[arg(long)]
    pub size: Option<String>,
    /// Sampling steps [default: the vocabulary's].
    #[arg(long)]
    pub steps: Option<usize>,
    /// Guidance scale (true CFG with the empty negative prompt) [default: the vocabulary's, else 4.0].
    #[arg(long)]
    pub guidance: Option<f32>,
    /// The checkpoint [default: models/flux2-shapes in the current folder or in this repository].
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Execution provider: cpu, cuda or tensorrt.
    #[arg(long, default_value = "cpu")]
    pub provider: String,
}

/// Parses `WxH`.
pub fn parse_size(s: &str) -> anyhow::Result<(usize, usize)> {
    let (w, h) = s.split_once(['x', 'X']).with_context(|| format!("--size '{s}': expected WIDTHxHEIGHT"))?;
    let num =
        |v: &str| v.trim().parse::<usize>().with_context(|| format!("--size '{s}': '{v}' is not a number"));
    let (w, h) = (num(w)?, num(h)?);
    if w == 0 || h == 0 || w % 16 != 0 || h % 16 != 0 {
        let fix = |v: usize| (v / 16).max(1) * 16;
        bail!("--size {s}: width and height must be positive multiples of 16 (try {}x{})", fix(w), fix(h));
    }
    Ok((w, h))
}

/// The checkpoint to use: `--checkpoint`, else `models/flux2-shapes` under the current folder,
/// else the one of the repository this binary was built from.
fn checkpoint(arg: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = arg {
        return Ok(p.to_path_buf());
    }
    let here = PathBuf::from(SHIPPED_MODEL);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(SHIPPED_MODEL);
    [here.clone(), repo]
        .into_iter()
        .find(|p| p.join("model_index.json").is_file())
        .with_context(|| format!("no {SHIPPED_MODEL} here or in the repository; pass --checkpoint"))
}

/// The default prompt: the first circle caption (colours in sorted order).
fn default_prompt(vocab: &Vocabulary) -> anyhow::Result<String> {
    let all = vocab.all_captions();
    let c = all.iter().find(|c| c.shape == flux2_eval::Shape::Circle).or(all.first());
    c.map(|c| vocab.caption(c)).context("the vocabulary allows no caption")
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.out.exists() && !args.out.is_dir() {
        bail!("--out {}: exists and is not a folder", args.out.display());
    }
    let started = Instant::now();
    let ckpt = checkpoint(args.checkpoint.as_deref())?;
    let vocab = Vocabulary::load(&ckpt.join(flux2_eval::vocabulary::VOCABULARY_FILE))?;
    let prompt = match &args.prompt {
        Some(p) => vocab.caption(&vocab.parse(p).context("--prompt")?),
        None => default_prompt(&vocab)?,
    };
    let (width, height) = match &args.size {
        Some(s) => parse_size(s)?,
        None => (vocab.size[0], vocab.size[1]),
    };
    let onnx = args.out.join("onnx");
    let image_path = args.out.join("demo.png");
    println!("[1/3] model: {}", ckpt.display());
    export_if_needed(&ckpt, &onnx, &args.out.join(EXPORT_STAMP))?;

    let mut req = Request::new(PromptSource::Text(prompt.clone()));
    (req.width, req.height, req.seed) = (Some(width), Some(height), args.seed);
    let at = vocab.settings_at(width, height);
    req.steps = Some(args.steps.unwrap_or(at.steps));
    req.guidance = args.guidance.or(at.guidance);
    req.shift = at.shift.as_deref().and_then(|s| s.parse().ok());
    let mut pipe = Pipeline::new(&onnx, super::generate::factory(&args.provider)?)?;
    let plan = pipe.plan(&req)?;
    let steps = plan.schedule.steps();
    println!(
        "[3/3] generate: {width}×{height}, {steps} steps, guidance {}, seed {}, prompt \"{prompt}\"",
        plan.guidance, args.seed
    );
    let pb = crate::progress::bar(steps as u64, "denoise");
    let out = pipe.generate(&req, &mut |e| match e {
        Event::Stage(s) => pb.set_message(s.to_string()),
        Event::Step { index, .. } => pb.set_position(index as u64),
    })?;
    pb.finish_and_clear();
    let meta = vec![
        ("Software".to_string(), format!("flux2-deploy {} demo", env!("CARGO_PKG_VERSION"))),
        ("flux2:prompt".into(), prompt.clone()),
        ("flux2:seed".into(), args.seed.to_string()),
        ("flux2:steps".into(), steps.to_string()),
        ("flux2:guidance".into(), plan.guidance.to_string()),
        ("flux2:size".into(), format!("{width}x{height}")),
        ("flux2:model".into(), ckpt.display().to_string()),
    ];
    if let Some(dir) = image_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    flux2_runtime::images::write_png(&image_path, &out.image, &meta)?;
    let t = &out.timings;
    println!(
        "        text encoder {:.3}s, denoise {:.3}s, vae decode {:.3}s; generate {:.2}s",
        t.text_encoder,
        t.dit_steps.iter().sum::<f64>(),
        t.vae_decode,
        t.total
    );
    let seen = classify(&Rgb::from_chw(&out.image), &vocab);
    let name = |v: Option<&str>| v.unwrap_or("?").to_string();
    println!(
        "        the classifier of `flux2 eval` sees: a {} {} on a {} background{}",
        name(seen.color.as_deref()),
        name(seen.shape.map(|s| s.name())),
        name(seen.background.as_deref()),
        if vocab.parse(&prompt).ok().is_some_and(|c| {
            seen.color.as_deref() == Some(&c.color)
                && seen.shape == Some(c.shape)
                && seen.background.as_deref() == Some(&c.background)
        }) {
            " (matches the prompt)"
        } else {
            " (does NOT match the prompt)"
        }
    );
    println!("\npicture: {}  (total {:.1}s)", image_path.display(), started.elapsed().as_secs_f64());
    Ok(())
}

/// Exports `ckpt` to `onnx` unless a current export by this very build is there.
fn export_if_needed(ckpt: &Path, onnx: &Path, stamp: &Path) -> anyhow::Result<()> {
    let t = Instant::now();
    if export_is_current(onnx, ckpt, stamp) {
        println!("[2/3] export: reusing {}", onnx.display());
        return Ok(());
    }
    let source = ModelSource::open(ckpt)?;
    let options =
        ExportOptions { dtype: DType::F32, target: Target::Ort, text_layers: None, config_override: None };
    let req = ExportRequest::new(None, options, WeightMode::Copy);
    let _ = std::fs::remove_file(stamp);
    let m = export(&source, onnx, &req, &mut |_| {})?;
    if let Some(id) = exporter_identity(onnx) {
        std::fs::write(stamp, id).with_context(|| format!("writing {}", stamp.display()))?;
    }
    println!(
        "[2/3] export: {} graphs ({}) to {} in {:.2}s",
        m.graphs.len(),
        m.graphs.keys().cloned().collect::<Vec<_>>().join(", "),
        onnx.display(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Records which build of flux2 made the export (beside onnx/, not in it).
const EXPORT_STAMP: &str = "export-stamp.txt";

/// This executable (path, size, modification time) and the export's manifest hash: a rebuilt
/// flux2, whose graphs may differ at the same version number, re-exports.
fn exporter_identity(onnx: &Path) -> Option<String> {
    let exe = std::env::current_exe().ok()?;
    let meta = std::fs::metadata(&exe).ok()?;
    let mtime = meta.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos();
    let manifest = std::fs::read(onnx.join("manifest.json")).ok()?;
    let digest: String = Sha256::digest(&manifest).iter().map(|b| format!("{b:02x}")).collect();
    Some(format!("{}\n{} bytes, mtime {mtime}\nmanifest sha256 {digest}\n", exe.display(), meta.len()))
}

/// Whether `onnx` holds a complete export, made by this very build of flux2, of every
/// safetensors file of `checkpoint`, with unchanged fingerprints.
fn export_is_current(onnx: &Path, checkpoint: &Path, stamp: &Path) -> bool {
    match (std::fs::read_to_string(stamp), exporter_identity(onnx)) {
        (Ok(s), Some(id)) if s == id => {}
        _ => return false,
    }
    let Ok(m) = Manifest::read(onnx) else { return false };
    if m.tool_version != env!("CARGO_PKG_VERSION") {
        return false;
    }
    if !GRAPHS.iter().all(|g| m.graphs.get(*g).is_some_and(|e| onnx.join(&e.file).is_file())) {
        return false;
    }
    let files = [
        "transformer/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
    ];
    files.iter().all(|rel| {
        let path = checkpoint.join(rel);
        let Ok(f) = SafeFile::open(&path) else { return false };
        let Ok(fp) = fingerprint(&path, f.header_len) else { return false };
        m.sources.contains(&fp)
    })
}
