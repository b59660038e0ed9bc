//! The adherence run: N seeded captions, one generation each (noise seed = run seed + index),
//! the classifier's verdict per attribute, accuracies, a JSON report and a contact sheet.

use std::path::{Path, PathBuf};
use std::time::Instant;

use flux2_runtime::images::{write_png, Chw};
use flux2_runtime::pipeline::{Pipeline, PromptSource, Request};
use flux2_runtime::schedule::Shift;
use serde::{Deserialize, Serialize};

use crate::classify::{classify, Prediction, Rgb};
use crate::prompts::captions;
use crate::vocabulary::{Caption, Vocabulary};
use crate::{EvalError, Result};

/// What to run; `None` size/steps/guidance take the vocabulary's.
#[derive(Clone, Debug)]
pub struct Options {
    pub prompts: usize,
    pub seed: u64,
    pub size: Option<(usize, usize)>,
    pub steps: Option<usize>,
    /// Sampler shift; `None` takes the export's default.
    pub shift: Option<Shift>,
    /// Guidance scale (true CFG for klein base); `None` takes the vocabulary's, else the
    /// export's default.
    pub guidance: Option<f32>,
    /// Step caching (`--cache`); None: uncached.
    pub cache: Option<flux2_runtime::cache::CacheSpec>,
}

/// One generation and its verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub prompt: String,
    pub seed: u64,
    pub expected: Caption,
    pub predicted: Prediction,
    pub color: bool,
    pub shape: bool,
    pub background: bool,
    pub all: bool,
}

impl Item {
    /// Scores `predicted` against `expected`.
    pub fn score(prompt: String, seed: u64, expected: Caption, predicted: Prediction) -> Item {
        let color = predicted.color.as_deref() == Some(expected.color.as_str());
        let shape = predicted.shape == Some(expected.shape);
        let background = predicted.background.as_deref() == Some(expected.background.as_str());
        Item {
            prompt,
            seed,
            expected,
            predicted,
            color,
            shape,
            background,
            all: color && shape && background,
        }
    }
}

/// Fractions in [0, 1].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    pub color: f64,
    pub shape: f64,
    pub background: f64,
    pub all: f64,
}

impl Accuracy {
    pub fn of(items: &[Item]) -> Accuracy {
        let n = items.len().max(1) as f64;
        let frac = |f: fn(&Item) -> bool| items.iter().filter(|i| f(i)).count() as f64 / n;
        Accuracy {
            color: frac(|i| i.color),
            shape: frac(|i| i.shape),
            background: frac(|i| i.background),
            all: frac(|i| i.all),
        }
    }
}

/// The whole run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub model: String,
    pub vocabulary: String,
    pub prompts: usize,
    pub seed: u64,
    pub width: usize,
    pub height: usize,
    pub steps: usize,
    /// The guidance used (`None`: the export's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance: Option<f32>,
    /// The schedule shift asked for (`None`: the export's default, FLUX.2's empirical shift).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shift: Option<String>,
    pub accuracy: Accuracy,
    pub seconds: f64,
    /// DiT evaluations over all pictures (per CFG branch): full, first block only, skipped.
    #[serde(default)]
    pub dit_evaluations: flux2_runtime::cache::DitCounts,
    pub items: Vec<Item>,
}

/// Generates and classifies `opts.prompts` captions; `progress(i, item)` after each image.
/// Returns the report (model/vocabulary fields left for the caller) and the images.
pub fn evaluate(
    pipe: &mut Pipeline,
    vocab: &Vocabulary,
    opts: &Options,
    progress: &mut dyn FnMut(usize, &Item),
) -> Result<(Report, Vec<Rgb>)> {
    if opts.prompts == 0 {
        return Err(EvalError::Option { name: "--prompts".into(), msg: "must be at least 1".into() });
    }
    let started = Instant::now();
    let (width, height) = opts.size.unwrap_or((vocab.size[0], vocab.size[1]));
    let at = vocab.settings_at(width, height);
    let steps = opts.steps.unwrap_or(at.steps);
    let guidance = opts.guidance.or(at.guidance);
    let shift = opts.shift.or_else(|| at.shift.as_deref().and_then(|s| s.parse().ok()));
    let mut items = Vec::with_capacity(opts.prompts);
    let mut images = Vec::with_capacity(opts.prompts);
    let mut dit = flux2_runtime::cache::DitCounts::default();
    for (i, caption) in captions(vocab, opts.prompts, opts.seed).into_iter().enumerate() {
        let prompt = vocab.caption(&caption);
        let seed = opts.seed.wrapping_add(i as u64);
        let mut req = Request::new(PromptSource::Text(prompt.clone()));
        (req.width, req.height, req.steps, req.seed) = (Some(width), Some(height), Some(steps), seed);
        req.guidance = guidance;
        req.cache = opts.cache.clone();
        req.shift = shift;
        let out = pipe.generate(&req, &mut |_| {})?;
        let d = out.timings.dit;
        dit.full += d.full;
        dit.first_block_only += d.first_block_only;
        dit.skipped += d.skipped;
        let img = Rgb::from_chw(&out.image);
        let item = Item::score(prompt, seed, caption, classify(&img, vocab));
        progress(i, &item);
        items.push(item);
        images.push(img);
    }
    let report = Report {
        model: String::new(),
        vocabulary: String::new(),
        prompts: opts.prompts,
        seed: opts.seed,
        width,
        height,
        steps,
        guidance,
        shift: shift.map(|s| s.to_string()),
        accuracy: Accuracy::of(&items),
        seconds: started.elapsed().as_secs_f64(),
        dit_evaluations: dit,
        items,
    };
    Ok((report, images))
}

/// Frame width of the contact sheet: green around a fully right picture, red otherwise.
const FRAME: usize = 2;

/// All pictures in a grid of `columns`, each framed by its verdict.
pub fn contact_sheet(images: &[Rgb], ok: &[bool], columns: usize) -> Rgb {
    let (w, h) = images.first().map_or((0, 0), |i| (i.width, i.height));
    let cols = columns.clamp(1, images.len().max(1));
    let rows = images.len().div_ceil(cols);
    let (cw, ch) = (w + 2 * FRAME, h + 2 * FRAME);
    let mut sheet = Rgb::filled(cols * cw, rows * ch, [255, 255, 255]);
    for (k, img) in images.iter().enumerate() {
        let frame = if ok.get(k).copied().unwrap_or(false) { [30, 200, 60] } else { [230, 30, 30] };
        let (ox, oy) = ((k % cols) * cw, (k / cols) * ch);
        for y in 0..ch {
            for x in 0..cw {
                let inner = (FRAME..FRAME + w).contains(&x) && (FRAME..FRAME + h).contains(&y);
                let px = if inner && img.width == w && img.height == h {
                    img.pixel(x - FRAME, y - FRAME)
                } else {
                    frame
                };
                let i = ((oy + y) * sheet.width + ox + x) * 3;
                sheet.data[i..i + 3].copy_from_slice(&px);
            }
        }
    }
    sheet
}

/// Writes `report.json` and `contact_sheet.png` into `dir` (each atomically); returns their paths.
pub fn write_outputs(dir: &Path, report: &Report, images: &[Rgb]) -> Result<(PathBuf, PathBuf)> {
    let io = |path: &Path, e: String| EvalError::Io { path: path.to_path_buf(), msg: e };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, format!("cannot create folder: {e}")))?;
    let json_path = dir.join("report.json");
    let text = serde_json::to_string_pretty(report).map_err(|e| io(&json_path, e.to_string()))? + "\n";
    let tmp = flux2_runtime::images::tmp_path(&json_path);
    std::fs::write(&tmp, text).map_err(|e| io(&tmp, format!("cannot write: {e}")))?;
    std::fs::rename(&tmp, &json_path).map_err(|e| io(&json_path, format!("cannot write: {e}")))?;
    let ok: Vec<bool> = report.items.iter().map(|i| i.all).collect();
    let columns = (images.len() as f64).sqrt().ceil() as usize;
    let sheet = contact_sheet(images, &ok, columns);
    let png_path = dir.join("contact_sheet.png");
    let meta = [("Software".to_string(), "flux2 eval".to_string())];
    write_png(&png_path, &to_chw(&sheet), &meta)?;
    Ok((json_path, png_path))
}

/// [3, H, W] in [0, 1].
pub fn to_chw(img: &Rgb) -> Chw {
    let n = img.width * img.height;
    let mut data = vec![0f32; 3 * n];
    for (i, px) in img.data.chunks_exact(3).enumerate() {
        for c in 0..3 {
            data[c * n + i] = px[c] as f32 / 255.0;
        }
    }
    Chw { width: img.width, height: img.height, data }
}
