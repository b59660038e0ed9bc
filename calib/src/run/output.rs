//! The calibration driver: validate, build data, calibrate each graph, compare full
//! generations, gate, and publish the staged model folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::artifacts::{trt_calibration_cache, ScalesFile};
use crate::formats::Format;
use crate::metrics::psnr_8bit_floor;
use crate::onnx_file::OnnxFile;
use crate::report::{Gate, Report};
use flux2_runtime::manifest::Manifest;

use super::budget::{search, SearchContext};
use super::graph::{check_exclude, prepare_graph, GraphOutcome};
use super::plan;
use super::{opt_err, CalibrateError, CalibrateOptions, Component, Event, Outcome};
use flux2_runtime::model_dir::ModelDir;
use flux2_runtime::SessionOptions;

fn out_err(path: &Path, msg: impl Into<String>) -> CalibrateError {
    CalibrateError::Output { path: path.to_path_buf(), msg: msg.into() }
}

/// Files a failed gate still leaves in `--out`.
const REPORT_FILES: &[&str] = &["report.json", "report.md", "scales.json", "calibration.json"];

/// Removes the staging folder unless disarmed.
struct Staging(Option<PathBuf>);

impl Drop for Staging {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// Checks every option and the model before any work; returns the graphs to calibrate and
/// the trajectory step counts.
fn validate(opts: &CalibrateOptions, model: &ModelDir) -> Result<(Vec<String>, Vec<usize>), CalibrateError> {
    let positive = [
        ("--samples", opts.samples),
        ("--heldout", opts.heldout),
        ("--max-sequence-length", opts.max_sequence_length),
        ("--vae-samples", opts.vae_samples),
        ("--vae-heldout", opts.vae_heldout),
        ("--vae-tile", opts.vae_tile),
        ("--vae-heldout-tile", opts.vae_heldout_tile),
    ];
    for (name, v) in positive {
        if v == 0 {
            return Err(opt_err(name, "must be at least 1"));
        }
    }
    if opts.fp8_attention && opts.format != Format::Fp8 {
        return Err(opt_err("--fp8-attention", "applies to --precision fp8 only"));
    }
    if opts.fp8_attention && opts.float_attention {
        return Err(opt_err("--fp8-attention", "contradicts --float-attention"));
    }
    if !(opts.budget_nmse.is_finite() && opts.budget_nmse > 0.0) {
        return Err(opt_err("--budget-nmse", format!("{} is not a positive number", opts.budget_nmse)));
    }
    if let Some(m) = opts.min_psnr {
        if !(m.is_finite() && m >= 0.0) {
            return Err(opt_err("--min-psnr", format!("{m} is not a number of dB ≥ 0")));
        }
    }
    if let Some(d) = opts.max_psnr_drop {
        if !(d.is_finite() && d >= 0.0) {
            return Err(opt_err("--max-psnr-drop", format!("{d} is not a number ≥ 0")));
        }
        if opts.eval_images == 0 {
            return Err(opt_err("--eval-images", "the --max-psnr-drop gate needs at least one generation"));
        }
        for g in ["transformer", "vae_decoder"] {
            if model.entry(g).is_none() {
                return Err(opt_err(
                    "--max-psnr-drop",
                    format!("full generations need the {g} graph, which the model lacks"),
                ));
            }
        }
    }
    if let Some(a) = opts.smoothquant {
        if !(0.0..=1.0).contains(&a) {
            return Err(opt_err("--smoothquant", format!("alpha {a} is not in [0, 1]")));
        }
    }
    if opts.sizes.is_empty() || opts.references.is_empty() {
        return Err(opt_err("--sizes / --references", "need at least one value each"));
    }
    for &(w, h) in &opts.sizes {
        if w == 0 || h == 0 || w % 16 != 0 || h % 16 != 0 {
            return Err(opt_err("--sizes", format!("{w}x{h}: both sides must be positive multiples of 16")));
        }
    }
    let d = model.default_steps();
    let mut steps = opts.steps.clone().unwrap_or_else(|| vec![d, (d / 2).max(4)]);
    steps.dedup();
    if steps.is_empty() || steps.contains(&0) {
        return Err(opt_err("--steps", format!("{steps:?}: need step counts ≥ 1")));
    }
    let components: Vec<Component> = match &opts.components {
        Some(c) => c.clone(),
        None => vec![Component::TextEncoder, Component::Transformer, Component::Vae],
    };
    let mut graphs = Vec::new();
    for c in components {
        let present: Vec<&str> = c.graphs().iter().copied().filter(|g| model.entry(g).is_some()).collect();
        if present.is_empty() && opts.components.is_some() {
            let have: Vec<&String> = model.manifest.graphs.keys().collect();
            return Err(opt_err(
                "--components",
                format!("the model has no {:?} graph (it has {have:?})", c.graphs()),
            ));
        }
        graphs.extend(present.into_iter().map(String::from));
    }
    if graphs.is_empty() {
        return Err(opt_err("--model", "no graph to calibrate"));
    }
    for g in &graphs {
        let e = model.entry(g).ok_or_else(|| opt_err("--components", format!("no graph {g}")))?;
        if e.dtype != "f32" {
            return Err(opt_err(
                "--model",
                format!(
                    "graph {g} is {}; calibration starts from an f32 export (flux2 export --dtype f32)",
                    e.dtype
                ),
            ));
        }
        if let Some(p) = e.precision.as_deref().filter(|p| *p != "fp32") {
            return Err(opt_err(
                "--model",
                format!("graph {g} is already quantised ({p}); calibrate the float export"),
            ));
        }
        model.graph(g)?;
    }
    Ok((graphs, steps))
}

/// `--out` must be new or empty and must not overlap the model folder.
fn check_out(opts: &CalibrateOptions) -> Result<(), CalibrateError> {
    let out = &opts.out;
    if out.exists() {
        let empty = std::fs::read_dir(out).map(|mut d| d.next().is_none()).unwrap_or(false);
        if !out.is_dir() || !empty {
            return Err(out_err(out, "--out exists and is not an empty folder; choose a new one"));
        }
    }
    let model = opts.model.canonicalize().map_err(|e| out_err(&opts.model, e.to_string()))?;
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| out_err(parent, format!("cannot create: {e}")))?;
    let out_abs = parent
        .canonicalize()
        .map_err(|e| out_err(parent, e.to_string()))?
        .join(out.file_name().unwrap_or_default());
    if out_abs.starts_with(&model) || model.starts_with(&out_abs) {
        return Err(out_err(out, format!("--out must not overlap the model folder {}", model.display())));
    }
    Ok(())
}

/// Hard-links (or copies) every file of the model folder into `dst` except hidden entries, the
/// files in `skip` (the float graphs that were quantised, with their weights) and, at the top,
/// the manifest and earlier calibration outputs.
fn link_tree(src: &Path, dst: &Path, skip: &[PathBuf], top: bool) -> Result<(), CalibrateError> {
    const REPLACED: &[&str] = &[
        "manifest.json",
        "scales.json",
        "calibration.json",
        "calibration.cache",
        "report.json",
        "report.md",
    ];
    for e in std::fs::read_dir(src).map_err(|e| out_err(src, e.to_string()))?.flatten() {
        let (p, name) = (e.path(), e.file_name());
        let n = name.to_string_lossy();
        if n.starts_with('.') || (top && REPLACED.contains(&n.as_ref())) || skip.iter().any(|s| s == &p) {
            continue;
        }
        let to = dst.join(&name);
        if p.is_dir() {
            std::fs::create_dir_all(&to).map_err(|e| out_err(&to, e.to_string()))?;
            link_tree(&p, &to, skip, false)?;
        } else if std::fs::hard_link(&p, &to).is_err() {
            std::fs::copy(&p, &to).map_err(|e| out_err(&to, e.to_string()))?;
        }
    }
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<(), CalibrateError> {
    std::fs::write(path, text).map_err(|e| out_err(path, e.to_string()))
}

fn json<T: serde::Serialize>(v: &T) -> Result<String, CalibrateError> {
    serde_json::to_string_pretty(v).map_err(|e| opt_err("json", e.to_string()))
}

/// Wall time per stage, from the [`Event::Stage`] events passing through.
#[derive(Default)]
struct StageClock {
    current: Option<(String, Instant)>,
    seconds: Vec<(String, f64)>,
}

impl StageClock {
    fn stop(&mut self) {
        if let Some((label, t0)) = self.current.take() {
            let dt = t0.elapsed().as_secs_f64();
            match self.seconds.iter_mut().find(|(l, _)| *l == label) {
                Some((_, s)) => *s += dt,
                None => self.seconds.push((label, dt)),
            }
        }
    }

    fn see(&mut self, e: &Event) {
        if let Event::Stage { label, .. } = e {
            self.stop();
            self.current = Some((label.to_string(), Instant::now()));
        }
    }
}

pub(super) fn run(
    opts: &CalibrateOptions,
    on_event: &mut dyn FnMut(Event),
) -> Result<Outcome, CalibrateError> {
    let mut clock = StageClock::default();
    let mut timed = |e: Event| {
        clock.see(&e);
        on_event(e)
    };
    let mut outcome = run_stages(opts, &mut timed)?;
    clock.stop();
    outcome.report.stage_seconds = clock.seconds;
    let md = outcome.out.join("report.md");
    write(&md, &outcome.report.to_markdown())?;
    write(&outcome.out.join("report.json"), &json(&outcome.report)?)?;
    Ok(outcome)
}

fn run_stages(opts: &CalibrateOptions, on_event: &mut dyn FnMut(Event)) -> Result<Outcome, CalibrateError> {
    let model = ModelDir::open(&opts.model)?;
    let (graphs, steps) = validate(opts, &model)?;
    check_exclude(&model, &graphs, &opts.exclude)?;
    check_out(opts)?;
    let sess = SessionOptions {
        intra_threads: opts.threads.unwrap_or(SessionOptions::default().intra_threads),
        optimization: true,
        // FP8 attention Q/DQ would otherwise be fused into a kernel ONNX Runtime lacks
        qdq_fusion: opts.format != Format::Fp8,
        trt_refit_from: None,
        // probe and staged graphs are rewritten over and over: caching them would cost, not save
        cache: false,
        mapped: None,
    };
    let parent = opts.out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = opts.out.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "out".into());
    let staging_path = parent.join(format!(".{name}.flux2-calib-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging_path);
    std::fs::create_dir_all(&staging_path).map_err(|e| out_err(&staging_path, e.to_string()))?;
    let mut staging = Staging(Some(staging_path.clone()));

    let (data, record) = plan::collect(&model, opts, &graphs, &steps, &sess, on_event)?;
    let mut prepared = Vec::with_capacity(graphs.len());
    for g in &graphs {
        prepared.push(prepare_graph(g, &model, &data[g], opts, &staging_path, &sess, on_event)?);
    }
    let mut notes = publish_tree(&model, &graphs, &staging_path, opts)?;
    if record.text_embeddings.contains("N(0,1)") {
        notes.push(format!("DiT calibration used {}", record.text_embeddings));
    }
    if opts.format == Format::Fp8 {
        notes.push("FP8 Q/DQ is simulated on CPU (ONNX Runtime runs DequantizeLinear + float MatMul); latency is not representative of FP8 hardware".into());
    }
    let can_generate =
        model.entry("transformer").is_some() && model.entry("vae_decoder").is_some() && opts.eval_images > 0;
    if !can_generate {
        notes.push("no full generations: the model needs both a transformer and a vae_decoder graph, and --eval-images ≥ 1; no image budget".into());
    }
    let ctx = SearchContext { model: &model, opts, record: &record, sess: &sess, staging: &staging_path };
    let (outcomes, generations, image_budget) = search(&ctx, &prepared, can_generate, on_event)?;
    drop(prepared);
    let _ = std::fs::remove_dir_all(staging_path.join(".work"));
    let components = write_artifacts(&staging_path, opts, &graphs, outcomes, &record, &mut notes)?;
    let floor = psnr_8bit_floor();
    let worst = generations.iter().map(|g| g.psnr_drop_db).reduce(f64::max);
    let (passed, reason) = match (opts.max_psnr_drop, worst) {
        (Some(max), Some(w)) if w > max => (false, format!("Gate failed: worst PSNR drop {w:.2} dB > --max-psnr-drop {max} dB (PSNR floor {floor:.2} dB)."))
        ,
        (Some(max), Some(w)) => (true, format!("Gate passed: worst PSNR drop {w:.2} dB ≤ --max-psnr-drop {max} dB.")),
        _ => (true, "No --max-psnr-drop gate.".to_string()),
    };
    let report = Report {
        tool_version: env!("CARGO_PKG_VERSION").into(),
        precision: opts.format.name().into(),
        calibrator: opts.calibrator.to_string(),
        smoothquant_alpha: opts.smoothquant,
        seed: opts.seed,
        components,
        generations,
        image_budget,
        gate: Gate {
            max_psnr_drop_db: opts.max_psnr_drop,
            psnr_floor_db: floor,
            worst_psnr_drop_db: worst,
            passed,
            reason,
        },
        model_written: passed,
        notes,
        stage_seconds: vec![],
    };
    if !passed {
        for e in
            std::fs::read_dir(&staging_path).map_err(|e| out_err(&staging_path, e.to_string()))?.flatten()
        {
            if !REPORT_FILES.iter().any(|f| e.file_name() == *f) {
                let p = e.path();
                let _ = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
            }
        }
    }
    write(&staging_path.join("report.json"), &json(&report)?)?;
    write(&staging_path.join("report.md"), &report.to_markdown())?;
    if opts.out.exists() {
        std::fs::remove_dir(&opts.out).map_err(|e| out_err(&opts.out, e.to_string()))?;
    }
    std::fs::rename(&staging_path, &opts.out).map_err(|e| out_err(&opts.out, e.to_string()))?;
    staging.0 = None;
    Ok(Outcome { report, out: opts.out.clone(), passed })
}

/// Links the float model's other files into the staging folder and writes its manifest (the
/// calibrated graphs marked with the precision); returns the notes this adds.
fn publish_tree(
    model: &ModelDir,
    graphs: &[String],
    staging: &Path,
    opts: &CalibrateOptions,
) -> Result<Vec<String>, CalibrateError> {
    let mut notes = Vec::new();
    let mut skip = Vec::new();
    for g in graphs {
        let float = OnnxFile::read(&model.graph(g)?)?;
        skip.push(float.path.clone());
        skip.extend(float.external_locations().iter().map(|l| float.dir().join(l)));
    }
    // The step-caching DiT parts read the float transformer's weights: once the transformer is
    // quantised they would run float (or miss their weight files), so they are left out.
    let parts: Vec<String> = if graphs.iter().any(|g| g == "transformer") {
        model.manifest.graphs.keys().filter(|k| k.starts_with("dit_")).cloned().collect()
    } else {
        Vec::new()
    };
    for part in &parts {
        if let Some(e) = model.manifest.graphs.get(part) {
            skip.push(model.dir.join(&e.file));
        }
    }
    link_tree(&model.dir, staging, &skip, true)?;
    let mut manifest: Manifest = model.manifest.clone();
    for part in &parts {
        manifest.graphs.remove(part);
    }
    if !parts.is_empty() {
        notes.push(
            "step caching (--cache) is not available on this folder: its DiT parts are float-only; use the float export".into(),
        );
    }
    for g in graphs {
        if let Some(e) = manifest.graphs.get_mut(g) {
            e.precision = Some(opts.format.name().into());
            e.weights = "copy".into();
        }
    }
    manifest.write(staging).map_err(|e| out_err(staging, e.to_string()))?;
    Ok(notes)
}

/// Writes `scales.json`, `calibration.json` and (INT8) the TensorRT calibration caches of the
/// final selection; returns the components' reports.
fn write_artifacts(
    staging: &Path,
    opts: &CalibrateOptions,
    graphs: &[String],
    outcomes: Vec<GraphOutcome>,
    record: &super::data::CalibrationRecord,
    notes: &mut Vec<String>,
) -> Result<BTreeMap<String, crate::report::ComponentReport>, CalibrateError> {
    let mut scales = ScalesFile {
        format: opts.format,
        calibrator: opts.calibrator,
        smoothquant_alpha: opts.smoothquant,
        graphs: BTreeMap::new(),
    };
    let mut components = BTreeMap::new();
    let mut caches: BTreeMap<String, BTreeMap<String, f32>> = BTreeMap::new();
    for (g, r) in graphs.iter().zip(outcomes) {
        scales.graphs.insert(g.clone(), r.scales);
        components.insert(g.clone(), r.report);
        caches.insert(g.clone(), r.cache_ranges);
    }
    write(&staging.join("scales.json"), &json(&scales)?)?;
    write(&staging.join("calibration.json"), &json(record)?)?;
    if opts.format == Format::Int8 {
        let mut merged: BTreeMap<String, f32> = BTreeMap::new();
        let mut clash = false;
        for (g, ranges) in &caches {
            write(
                &staging.join(format!("{g}.calibration.cache")),
                &trt_calibration_cache(&opts.trt_cache_version, ranges),
            )?;
            for (t, v) in ranges {
                clash |= merged.insert(t.clone(), *v).is_some_and(|old| old != *v);
            }
        }
        if clash {
            notes.push("calibration.cache not written: a tensor name has different ranges in two graphs; use the per-graph <graph>.calibration.cache files".into());
        } else {
            write(
                &staging.join("calibration.cache"),
                &trt_calibration_cache(&opts.trt_cache_version, &merged),
            )?;
        }
    }
    Ok(components)
}
