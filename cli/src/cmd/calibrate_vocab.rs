//! `flux2 calibrate` on a model that ships a `vocabulary.json` (the shapes model of `train/`):
//! calibration data drawn the way that model is meant to run (its captions, its size and step
//! count, unless the options say otherwise), and after calibration its prompt adherence, float
//! and quantised side by side, judged by `flux2_eval` on the same seeded captions and noise.
//! Models without a vocabulary are calibrated exactly as before.

use std::path::{Path, PathBuf};

use anyhow::Context;
use flux2_calib::run::CalibrateOptions;
use flux2_eval::prompts::captions;
use flux2_eval::run::{evaluate, write_outputs, Accuracy, Options};
use flux2_eval::Vocabulary;
use flux2_runtime::pipeline::Pipeline;
use serde::Serialize;

/// Captions drawn as calibration prompts (every fifth is held out, as for a prompt file).
const CALIBRATION_CAPTIONS: usize = 40;

/// The vocabulary of `model`, if it has one.
pub fn find(model: &Path) -> anyhow::Result<Option<(Vocabulary, PathBuf)>> {
    Vocabulary::find(model).with_context(|| format!("--model {}", model.display()))
}

/// Fills what the user left to defaults from the vocabulary; returns one line per default taken.
pub fn apply_defaults(
    o: &mut CalibrateOptions,
    vocab: &Vocabulary,
    sizes_given: bool,
    steps_given: bool,
) -> Vec<String> {
    let mut said = Vec::new();
    if o.prompts.is_none() {
        let list = captions(vocab, CALIBRATION_CAPTIONS, o.seed);
        o.prompts = Some(list.iter().map(|c| vocab.caption(c)).collect());
        said.push(format!("prompts: {CALIBRATION_CAPTIONS} seeded captions of the vocabulary"));
    }
    if !sizes_given {
        o.sizes = vec![(vocab.size[0], vocab.size[1])];
        said.push(format!("sizes: {}x{}", vocab.size[0], vocab.size[1]));
    }
    if !steps_given {
        o.steps = Some(vec![vocab.steps]);
        said.push(format!("steps: {}", vocab.steps));
    }
    if o.eval_steps.is_none() {
        o.eval_steps = Some(vocab.steps);
    }
    said
}

/// Float and quantised adherence on the same captions and noise.
#[derive(Serialize)]
pub struct Adherence {
    pub prompts: usize,
    pub seed: u64,
    pub float: Accuracy,
    pub quantized: Accuracy,
}

impl Adherence {
    /// Change of all-three accuracy through quantisation, in percentage points (negative: lost).
    pub fn change_points(&self) -> f64 {
        100.0 * (self.quantized.all - self.float.all)
    }
}

/// Runs `prompts` seeded captions through the float model and the calibrated folder; writes
/// each run's report.json and contact sheet under `out/adherence/{float,quantized}/`,
/// `out/adherence.json`, and appends a table to `out/report.md` (both atomically).
pub fn judge(
    float_dir: &Path,
    out: &Path,
    vocab: &Vocabulary,
    prompts: usize,
    seed: u64,
) -> anyhow::Result<Adherence> {
    let run = |dir: &Path, name: &str| -> anyhow::Result<Accuracy> {
        let sheet = out.join("adherence").join(name);
        adherence_of(dir, super::generate::factory("cpu")?, vocab, (prompts, seed), name, Some(&sheet))
    };
    let float = run(float_dir, "float")?;
    let quantized = run(out, "quantized")?;
    let a = Adherence { prompts, seed, float, quantized };
    let json = serde_json::to_string_pretty(&a)? + "\n";
    super::write_atomic(&out.join("adherence.json"), json.as_bytes())?;
    let md = out.join("report.md");
    let mut text = std::fs::read_to_string(&md).unwrap_or_default();
    text.push_str(&markdown(&a));
    super::write_atomic(&md, text.as_bytes())?;
    Ok(a)
}

/// Accuracy of the export folder `dir` on `prompts` seeded captions (noise seed = seed + index),
/// with a progress bar labelled `name`; the report and contact sheet go to `sheet` if given.
pub fn adherence_of(
    dir: &Path,
    factory: flux2_runtime::pipeline::SessionFactory,
    vocab: &Vocabulary,
    (prompts, seed): (usize, u64),
    name: &str,
    sheet: Option<&Path>,
) -> anyhow::Result<Accuracy> {
    let opts = Options { prompts, seed, size: None, steps: None, shift: None, guidance: None, cache: None };
    let mut pipe =
        Pipeline::new(dir, factory).with_context(|| format!("adherence run on {}", dir.display()))?;
    let pb = crate::progress::bar(prompts as u64, &format!("adherence ({name})"));
    let (mut report, images) = evaluate(&mut pipe, vocab, &opts, &mut |i, _| pb.set_position(i as u64 + 1))?;
    pb.finish_and_clear();
    report.model = dir.display().to_string();
    if let Some(sheet) = sheet {
        write_outputs(sheet, &report, &images)?;
    }
    Ok(report.accuracy)
}

fn markdown(a: &Adherence) -> String {
    let row = |name: &str, x: &Accuracy| {
        format!(
            "| {name} | {:.1} % | {:.1} % | {:.1} % | {:.1} % |\n",
            100.0 * x.color,
            100.0 * x.shape,
            100.0 * x.background,
            100.0 * x.all
        )
    };
    format!(
        "\n## Prompt adherence (flux2 eval, {} captions, seed {})\n\n\
         | model | colour | shape | background | all three |\n|---|---|---|---|---|\n{}{}\n\
         All three: {:+.1} points after quantisation. Contact sheets: adherence/float, adherence/quantized.\n",
        a.prompts,
        a.seed,
        row("float", &a.float),
        row("quantised", &a.quantized),
        a.change_points()
    )
}
