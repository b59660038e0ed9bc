//! `flux2 demo`: the whole path on a built-in model, with no download. Builds a small
//! FLUX.2 [klein]-architecture checkpoint with deterministic random weights (diffusers
//! layout, with its own Qwen3 tokenizer), exports it to ONNX and generates an image.
//! A second run reuses the checkpoint and the export when they are still current.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use flux2_exporter::export::{export, ExportRequest};
use flux2_exporter::manifest::{fingerprint, Manifest};
use flux2_exporter::models::ExportOptions;
use flux2_exporter::safetensors::SafeFile;
use flux2_exporter::synth::{current_checkpoint, write_checkpoint, SynthSpec};
use flux2_exporter::{ModelSource, WeightMode};
use flux2_graphs::{DType, Target};
use flux2_runtime::pipeline::{Event, Pipeline, PromptSource, Request};
use sha2::{Digest, Sha256};

/// Seed of the demo model's weights (fixed: every user gets the same model).
pub const DEMO_WEIGHTS_SEED: u64 = 2025;

/// The graphs a complete export of the demo model holds.
const GRAPHS: [&str; 4] = ["text_encoder", "transformer", "vae_decoder", "vae_encoder"];

/// The rest of `--help`, after the options (the one-line about comes from main.rs).
const LONG_HELP: &str = "\
Everything is local: the model is a FLUX.2 [klein]-architecture checkpoint (Qwen3 text
encoder with its own tokenizer, a 2+4-block DiT, the FLUX.2 VAE topology at small widths)
with deterministic random weights, written in the diffusers layout. Random weights give
texture, not a picture: for real images run `flux2 export` on a real FLUX.2 checkpoint
and `flux2 generate` on the result.

Output (under --out): checkpoint/ (safetensors + configs + tokenizer), onnx/ (the export),
demo.png. Re-running reuses checkpoint/ and onnx/ when they are still current.

Examples:
  flux2 demo
  flux2 demo --out /tmp/demo --prompt \"a lighthouse at dusk\" --seed 7 --size 384x256";

/// Build a small built-in FLUX.2 model, export it to ONNX and generate an image.
#[derive(clap::Args)]
#[command(after_long_help = LONG_HELP)]
pub struct Args {
    /// Output folder.
    #[arg(long, default_value = "flux2-demo")]
    pub out: PathBuf,
    /// Prompt (tokenized with the demo model's own Qwen3-style tokenizer).
    #[arg(long, default_value = "a red fox sitting in the snow, soft morning light")]
    pub prompt: String,
    /// Noise seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Image size WIDTHxHEIGHT, multiples of 16.
    #[arg(long, default_value = "256x256")]
    pub size: String,
    /// Sampling steps [default: the model's, 4 (distilled klein)].
    #[arg(long)]
    pub steps: Option<usize>,
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

pub fn run(args: Args) -> anyhow::Result<()> {
    let (width, height) = parse_size(&args.size)?;
    if args.out.exists() && !args.out.is_dir() {
        bail!("--out {}: exists and is not a folder", args.out.display());
    }
    let started = Instant::now();
    let ckpt = args.out.join("checkpoint");
    let onnx = args.out.join("onnx");
    let image_path = args.out.join("demo.png");
    let spec = SynthSpec::demo(DEMO_WEIGHTS_SEED);

    let t = Instant::now();
    match current_checkpoint(&ckpt, &spec) {
        Some(_) => println!("[1/3] checkpoint: reusing {}", ckpt.display()),
        None => {
            let rec = write_checkpoint(&spec, &ckpt)?;
            let p = &rec.parameters;
            println!(
                "[1/3] checkpoint: wrote {} in {:.2}s (transformer {}, vae {}, text encoder {} parameters; random weights, seed {DEMO_WEIGHTS_SEED})",
                ckpt.display(),
                t.elapsed().as_secs_f64(),
                millions(p.get("transformer")),
                millions(p.get("vae")),
                millions(p.get("text_encoder")),
            );
        }
    }

    let t = Instant::now();
    let stamp = args.out.join(EXPORT_STAMP);
    if export_is_current(&onnx, &ckpt, &stamp) {
        println!("[2/3] export: reusing {}", onnx.display());
    } else {
        let source = ModelSource::open(&ckpt)?;
        let options = ExportOptions {
            dtype: DType::F32,
            target: Target::Ort,
            text_layers: None,
            config_override: None,
        };
        let req = ExportRequest::new(None, options, WeightMode::Copy);
        let _ = std::fs::remove_file(&stamp);
        let m = export(&source, &onnx, &req, &mut |_| {})?;
        if let Some(id) = exporter_identity(&onnx) {
            std::fs::write(&stamp, id).with_context(|| format!("writing {}", stamp.display()))?;
        }
        println!(
            "[2/3] export: {} graphs ({}) to {} in {:.2}s",
            m.graphs.len(),
            m.graphs.keys().cloned().collect::<Vec<_>>().join(", "),
            onnx.display(),
            t.elapsed().as_secs_f64()
        );
    }

    let mut req = Request::new(PromptSource::Text(args.prompt.clone()));
    req.width = Some(width);
    req.height = Some(height);
    req.steps = args.steps;
    req.seed = args.seed;
    let mut pipe = Pipeline::new(&onnx, super::generate::factory(&args.provider)?)?;
    let plan = pipe.plan(&req)?;
    let steps = plan.schedule.steps();
    println!(
        "[3/3] generate: {width}×{height}, {steps} steps, seed {}, prompt \"{}\"",
        args.seed, args.prompt
    );
    let pb = crate::progress::bar(steps as u64, "denoise");
    let out = pipe.generate(&req, &mut |e| match e {
        Event::Stage(s) => pb.set_message(s.to_string()),
        Event::Step { index, .. } => pb.set_position(index as u64),
    })?;
    pb.finish_and_clear();
    let meta = vec![
        ("Software".to_string(), format!("flux2-deploy {} demo", env!("CARGO_PKG_VERSION"))),
        ("flux2:prompt".into(), args.prompt.clone()),
        ("flux2:seed".into(), args.seed.to_string()),
        ("flux2:steps".into(), steps.to_string()),
        ("flux2:size".into(), format!("{width}x{height}")),
        ("flux2:model".into(), format!("built-in demo model, random weights (seed {DEMO_WEIGHTS_SEED})")),
    ];
    flux2_runtime::images::write_png(&image_path, &out.image, &meta)?;

    let t = &out.timings;
    let dit: f64 = t.dit_steps.iter().sum();
    println!(
        "        load {:.2}s; text encoder {:.3}s, denoise {:.3}s ({:.3}s/step), vae decode {:.3}s; generate {:.2}s ({:.1}% in ONNX Runtime)",
        t.load,
        t.text_encoder,
        dit,
        dit / t.dit_steps.len().max(1) as f64,
        t.vae_decode,
        t.total,
        100.0 * t.ort / t.total.max(1e-9)
    );
    println!("\nimage: {}  (total {:.1}s)", image_path.display(), started.elapsed().as_secs_f64());
    println!(
        "note: the demo model has random weights, so the image is texture, not a picture of the prompt.\n      \
         For real images: flux2 export --checkpoint <a FLUX.2 checkpoint> --out model && \
         flux2 generate --model model --prompt \"...\" --out image.png"
    );
    Ok(())
}

fn millions(n: Option<&u64>) -> String {
    format!("{:.2}M", n.copied().unwrap_or(0) as f64 / 1e6)
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
