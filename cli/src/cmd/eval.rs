//! `flux2 eval`: prompt adherence of a flux2-shapes export (see the `flux2-eval` crate): N
//! seeded captions of the model's vocabulary, one picture each, judged by a deterministic
//! classifier (shape colour, shape, background); prints the accuracies and writes
//! `report.json` and `contact_sheet.png`.

use std::path::PathBuf;

use anyhow::Context;
use flux2_eval::run::{evaluate, write_outputs, Options};
use flux2_eval::Vocabulary;
use flux2_runtime::pipeline::Pipeline;

const LONG_HELP: &str = "\
MODEL is any export folder of a model trained on the shapes domain (train/), calibrated ones
included. Its vocabulary.json (colours, shapes, caption template, size, steps and guidance) is found in
MODEL, else beside the checkpoint MODEL was exported from (via manifest.json), else give
--vocabulary. Captions and noise seeds follow from --seed, so two runs with the same seed judge
the same prompts and noise: compare a float export with its INT8/FP8 calibration that way.

The classifier snaps every pixel to the nearest palette colour, takes the border's colour as the
background and the largest other region as the shape, and names the shape from how much of its
bounding box it fills (square ~1, circle ~0.79, upright triangle ~0.5).

Examples:
  flux2 export --checkpoint models/flux2-shapes --out /tmp/shapes-onnx
  flux2 eval --model /tmp/shapes-onnx --prompts 100 --seed 1
  flux2 eval --model /tmp/shapes-int8 --prompts 100 --seed 1 --out /tmp/eval-int8";

/// Prompt adherence of a shapes model: accuracy of colour, shape and background on seeded captions.
#[derive(clap::Args)]
#[command(after_long_help = LONG_HELP)]
pub struct Args {
    /// Export folder (from `flux2 export` or `flux2 calibrate`).
    #[arg(long)]
    pub model: PathBuf,
    /// Number of captions to generate and judge.
    #[arg(long, default_value_t = 100)]
    pub prompts: usize,
    /// Seed of the caption list; picture i uses noise seed SEED + i.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// vocabulary.json [default: found from MODEL, see below].
    #[arg(long)]
    pub vocabulary: Option<PathBuf>,
    /// Image size WIDTHxHEIGHT [default: the vocabulary's].
    #[arg(long)]
    pub size: Option<String>,
    /// Sampling steps [default: the vocabulary's].
    #[arg(long)]
    pub steps: Option<usize>,
    /// Sampler shift: empirical, resolution[:BASE_TOKENS] or fixed:ALPHA [default: the export's].
    #[arg(long)]
    pub shift: Option<String>,
    /// Guidance scale (true CFG with the empty negative prompt for this klein-base model)
    /// [default: the vocabulary's, else the export's].
    #[arg(long)]
    pub guidance: Option<f32>,
    /// Folder for report.json and contact_sheet.png [default: MODEL/eval].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Execution provider: cpu, cuda or tensorrt.
    #[arg(long, default_value = "cpu")]
    pub provider: String,
    /// ONNX Runtime intra-op threads for the cpu provider [default: one per core]. A small
    /// model's DiT gains little from a second thread: two `--threads 1` evaluations side by
    /// side finish sooner than one after the other.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Step caching for every picture: fbc:T, mag:T[,MAX_SKIP,RETENTION], taylor:N[,ORDER], tea:T
    /// or off (see `flux2 generate --help`); the report counts the DiT evaluations.
    #[arg(long, value_name = "POLICY", default_value = "off")]
    pub cache: String,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let (vocab, vocab_path) = Vocabulary::locate(&args.model, args.vocabulary.as_deref())?;
    let size = args.size.as_deref().map(super::demo::parse_size).transpose()?;
    let shift = args.shift.as_deref().map(str::parse).transpose().context("--shift")?;
    if let Some(g) = args.guidance.filter(|g| !g.is_finite() || *g < 0.0) {
        anyhow::bail!("--guidance must be a finite number >= 0, got {g}");
    }
    let opts = Options {
        prompts: args.prompts,
        seed: args.seed,
        size,
        steps: args.steps,
        shift,
        guidance: args.guidance,
        cache: match args.cache.trim() {
            "" | "off" | "none" => None,
            c => Some(c.parse()?),
        },
    };
    if opts.prompts == 0 {
        anyhow::bail!("--prompts must be at least 1");
    }
    let out_dir = args.out.clone().unwrap_or_else(|| args.model.join("eval"));
    let mut pipe =
        Pipeline::new(&args.model, flux2_runtime::request::session_factory(&args.provider, args.threads, 0)?)
            .with_context(|| format!("--model {}", args.model.display()))?;
    println!("vocabulary: {}", vocab_path.display());
    let pb = crate::progress::bar(opts.prompts as u64, "generate");
    let (mut report, images) = evaluate(&mut pipe, &vocab, &opts, &mut |i, item| {
        pb.set_position(i as u64 + 1);
        pb.set_message(if item.all { "ok".to_string() } else { format!("miss: {}", item.prompt) });
    })?;
    pb.finish_and_clear();
    report.model = args.model.display().to_string();
    report.vocabulary = vocab_path.display().to_string();
    let (json, png) = write_outputs(&out_dir, &report, &images)?;
    let a = &report.accuracy;
    let guidance = report.guidance.map(|g| format!(", guidance {g}")).unwrap_or_default();
    println!(
        "{} prompts (seed {}), {}x{}, {} steps{guidance}, {:.1}s",
        report.prompts, report.seed, report.width, report.height, report.steps, report.seconds
    );
    println!(
        "accuracy: color {:.1}%  shape {:.1}%  background {:.1}%  all three {:.1}%",
        100.0 * a.color,
        100.0 * a.shape,
        100.0 * a.background,
        100.0 * a.all
    );
    let d = report.dit_evaluations;
    println!(
        "DiT evaluations (cache {}): {} full, {} first block only, {} skipped",
        args.cache, d.full, d.first_block_only, d.skipped
    );
    println!("report: {}\ncontact sheet: {}", json.display(), png.display());
    Ok(())
}
