//! `flux2 calibrate-cache`: the per-model numbers of the MagCache and TeaCache step-caching
//! policies, from uncached runs of the export's DiT parts, written to the export's
//! `cache_calibration.json` (see `flux2_runtime::cache::calibration`).

use std::path::PathBuf;

use anyhow::{bail, Context};
use flux2_eval::prompts::captions;
use flux2_eval::Vocabulary;
use flux2_runtime::cache::calibration::polyfit;
use flux2_runtime::cache::{CacheCalibration, CacheSpec};
use flux2_runtime::pipeline::{Pipeline, PromptSource, Request};

const PROMPTS: [&str; 4] = [
    "a red fox sitting in the snow, soft morning light",
    "a lighthouse on a rocky coast at dusk",
    "a bowl of fruit on a wooden table, studio photo",
    "a city street in the rain at night, neon signs",
];

/// Calibrate the MagCache ratios and TeaCache coefficients of an export (for `--cache mag:…`
/// and `--cache tea:…`).
///
/// Runs --prompts uncached generations through the export's DiT parts and records, per CFG
/// branch and step, MagCache's magnitude ratio of the residual (mean over tokens of
/// ‖r_t‖ / ‖r_{t−1}‖, as diffusers 0.42.1's `MagCacheConfig(calibrate=True)` prints it), and
/// TeaCache's pairs (relative L1 change of the first block's modulated input, of the velocity).
/// The ratios are averaged over the prompts; a degree-4 polynomial is fitted to the pairs. Both
/// go to MODEL/cache_calibration.json (written atomically), recorded at --steps steps; other
/// step counts resample the ratios as diffusers does. A model with a vocabulary.json (the shapes
/// model) uses seeded captions of it, and its size, steps and guidance.
///
/// Examples:
///   flux2 calibrate-cache --model shapes-onnx
///   flux2 calibrate-cache --model klein-base-onnx --steps 50 --prompts 4 --size 512x512
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Export folder (with the DiT parts `flux2 export` writes).
    #[arg(long)]
    pub model: PathBuf,
    /// Uncached generations to average.
    #[arg(long, default_value_t = 4)]
    pub prompts: usize,
    /// Seed of the first generation (and of the captions).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Sampling steps [default: the export's].
    #[arg(long)]
    pub steps: Option<usize>,
    /// WIDTHxHEIGHT [default: the export's].
    #[arg(long)]
    pub size: Option<String>,
    /// Guidance [default: the export's].
    #[arg(long)]
    pub guidance: Option<f32>,
    /// Execution provider: cpu, cuda or tensorrt.
    #[arg(long, default_value = "cpu")]
    pub provider: String,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.prompts == 0 {
        bail!("--prompts must be at least 1");
    }
    let size = args.size.as_deref().map(super::demo::parse_size).transpose()?;
    let mut pipe = Pipeline::new(&args.model, super::generate::factory(&args.provider)?)
        .with_context(|| format!("--model {}", args.model.display()))?;
    let hidden = hidden_size(&pipe)?;
    let prompts: Vec<String> = match Vocabulary::find(&args.model)? {
        Some((v, _)) => captions(&v, args.prompts, args.seed).iter().map(|c| v.caption(c)).collect(),
        None => (0..args.prompts).map(|i| PROMPTS[i % PROMPTS.len()].to_string()).collect(),
    };
    let pb = crate::progress::bar(prompts.len() as u64, "calibrate-cache");
    let mut sums: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    let (mut pairs, mut steps) = (Vec::new(), 0);
    for (i, prompt) in prompts.iter().enumerate() {
        let mut req = Request::new(PromptSource::Text(prompt.clone()));
        (req.steps, req.guidance, req.seed) = (args.steps, args.guidance, args.seed.wrapping_add(i as u64));
        if let Some((w, h)) = size {
            (req.width, req.height) = (Some(w), Some(h));
        }
        req.cache = Some(CacheSpec::Record { hidden });
        let out = pipe.generate(&req, &mut |_| {})?;
        steps = out.plan.schedule.steps();
        for (branch, rec) in std::mem::take(&mut pipe.last_cache_records) {
            let sum = sums.entry(branch.to_string()).or_insert_with(|| vec![0.0; rec.mag_ratios.len()]);
            for (s, r) in sum.iter_mut().zip(&rec.mag_ratios) {
                *s += r / prompts.len() as f64;
            }
            pairs.extend(rec.tea_pairs);
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    let tea_coefficients = match polyfit(&pairs, 4) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("warning: no TeaCache coefficients ({e}); use more --prompts or --steps");
            Vec::new()
        }
    };
    let cal = CacheCalibration {
        steps,
        runs: prompts.len(),
        mag_ratios: sums,
        tea_coefficients,
        tea_pairs: pairs.len(),
    };
    cal.write(&args.model)?;
    for (branch, r) in &cal.mag_ratios {
        let list: Vec<String> = r.iter().map(|v| format!("{v:.5}")).collect();
        println!("MagCache ratios ({branch}, {steps} steps): [{}]", list.join(", "));
    }
    println!(
        "TeaCache coefficients (highest power first): {:?} from {} pairs",
        cal.tea_coefficients, cal.tea_pairs
    );
    println!("wrote {}", args.model.join(flux2_runtime::cache::CALIBRATION_FILE).display());
    Ok(())
}

/// The DiT's hidden size from the manifest's transformer config.
fn hidden_size(pipe: &Pipeline) -> anyhow::Result<usize> {
    let c = pipe.model.manifest.configs.get("transformer").context("the export has no transformer config")?;
    let get =
        |k: &str| c.get(k).and_then(|v| v.as_u64()).with_context(|| format!("transformer config has no {k}"));
    Ok((get("num_attention_heads")? * get("attention_head_dim")?) as usize)
}
