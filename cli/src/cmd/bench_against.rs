//! `flux2 bench --against DIR`: a second export folder (typically the INT8 folder `flux2
//! calibrate` wrote from `--model`) timed with the same request, printed beside the first with
//! its speed-up per stage and the PSNR of its image against the first one's (same seed, noise
//! and prompt), so float and quantised figures come from one command on one machine.

use std::path::Path;

use flux2_runtime::pipeline::{Pipeline, Request, SessionFactory, Timings};
use serde_json::json;

use super::bench::Stats;

/// PSNR in dB of two images in [0, 1] (infinite when identical).
pub fn psnr01(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len()).max(1) as f64;
    let mse: f64 = a.iter().zip(b).map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2)).sum::<f64>() / n;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (1.0 / mse).log10()
    }
}

/// Median seconds of the stages both runs have.
fn medians(runs: &[Timings]) -> Vec<(&'static str, f64)> {
    let per =
        |f: &dyn Fn(&Timings) -> f64| Stats::of(&runs.iter().map(f).collect::<Vec<_>>()).map(|s| s.median);
    let steps: Vec<f64> = runs.iter().flat_map(|t| t.dit_steps.iter().copied()).collect();
    [
        ("text_encoder", per(&|t| t.text_encoder)),
        ("dit_step", Stats::of(&steps).map(|s| s.median)),
        ("vae_decode", per(&|t| t.vae_decode)),
        ("end_to_end", per(&|t| t.total)),
    ]
    .into_iter()
    .filter_map(|(n, v)| Some((n, v?)))
    .collect()
}

/// Times `dir` like the main run (the same batch) and prints both side by side; returns the
/// JSON entry. The PSNR is over every image of the batch.
pub fn compare(
    dir: &Path,
    factory: SessionFactory,
    req: &Request,
    (warmup, n_runs): (usize, usize),
    base: (&[Timings], &[f32]),
) -> anyhow::Result<serde_json::Value> {
    let mut pipe = Pipeline::new(dir, factory)?;
    let pb = crate::progress::bar((warmup + n_runs) as u64, "against");
    let mut runs = Vec::new();
    let mut image = Vec::new();
    for i in 0..warmup + n_runs {
        let out = pipe.generate_batch(req, &mut |_| std::ops::ControlFlow::Continue(()))?;
        if i >= warmup {
            runs.push(out.timings);
        }
        image = out.images.into_iter().flat_map(|i| i.data).collect();
        pb.inc(1);
    }
    pb.finish_and_clear();
    let (a, b) = (medians(base.0), medians(&runs));
    let psnr = psnr01(base.1, &image);
    println!("\n--against {} (median ms; speed-up = --model / --against)", dir.display());
    println!("{:<14} {:>11} {:>11} {:>9}", "stage", "--model", "--against", "speed-up");
    let mut rows = serde_json::Map::new();
    for ((name, x), (_, y)) in a.iter().zip(&b).filter(|((n, _), (m, _))| n == m) {
        println!("{name:<14} {:>11.2} {:>11.2} {:>8.2}x", x * 1e3, y * 1e3, x / y);
        rows.insert(name.to_string(), json!({"model": x, "against": y, "speedup": x / y}));
    }
    println!("image PSNR of --against vs --model (same seed): {psnr:.2} dB");
    Ok(json!({"model": dir.display().to_string(), "median_seconds": rows, "image_psnr_db": psnr}))
}

/// When `model` ships a vocabulary.json: judges `prompts` seeded captions (seed 0) with both
/// folders, prints the accuracies side by side and returns them as JSON; `None` otherwise.
#[cfg(feature = "full")]
pub fn adherence(
    model: &Path,
    against: &Path,
    prompts: usize,
    factory: &dyn Fn() -> anyhow::Result<SessionFactory>,
) -> anyhow::Result<Option<serde_json::Value>> {
    let Some((vocab, _)) = super::calibrate_vocab::find(model)? else {
        return Ok(None);
    };
    let judge = |dir: &Path, name: &str| {
        super::calibrate_vocab::adherence_of(dir, factory()?, &vocab, (prompts, 0), name, None)
    };
    let (a, b) = (judge(model, "--model")?, judge(against, "--against")?);
    println!("prompt adherence ({prompts} captions, seed 0; `flux2 eval`'s classifier), all three right:");
    println!(
        "  --model {:.1} %   --against {:.1} %   ({:+.1} points)",
        100.0 * a.all,
        100.0 * b.all,
        100.0 * (b.all - a.all)
    );
    Ok(Some(
        json!({"prompts": prompts, "seed": 0, "model": a, "against": b, "change_points": 100.0 * (b.all - a.all)}),
    ))
}
