//! The export driver: validate everything first, then write every graph into a staging
//! folder inside the output and move the files into place only when all succeeded, so a
//! failed export leaves no partial output behind.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::layout::{Kind, ModelSource};
use crate::lowbit::LowbitOptions;
use crate::manifest::{dim_ranges, fingerprint, io_specs, GraphEntry, Manifest};
use crate::models::{build, BuiltGraph, ExportOptions};
use crate::names::{resolve_weights, ResolvedWeight};
use crate::share::write_shared;
use crate::writer::{write_model, WeightMerge, WeightMode, WriteOptions};
use crate::{io_err, ExportError, Result};

/// Optional file beside `model_index.json` saying what size, steps and guidance the model is
/// meant to run at (with the caption vocabulary of a shapes model).
const VOCABULARY_FILE: &str = "vocabulary.json";

/// What to export.
#[derive(Clone, Debug)]
pub struct ExportRequest {
    /// Components to export (None: every component found).
    pub components: Option<Vec<Kind>>,
    pub options: ExportOptions,
    pub weights: WeightMode,
    /// Copy mode: export tensors with NaN/Inf instead of failing (`--allow-nonfinite`).
    pub allow_nonfinite: bool,
    /// Link mode: read every weight first and fail on NaN/Inf (`--verify`).
    pub verify: bool,
    /// Link mode: copy a graph's weights where hard links are impossible (`--link-fallback copy`).
    pub link_fallback_copy: bool,
    /// Weights merged on the way out (LoRA adapters, planned by the caller against the graphs).
    pub merge: Option<Arc<dyn WeightMerge>>,
    /// Weight-only low-bit linears of the DiT and text encoder (`--weights-precision`); the
    /// merge above happens first.
    pub lowbit: Option<LowbitOptions>,
}

impl ExportRequest {
    /// A request with the default checks: copy mode fails on NaN/Inf, link mode does not read
    /// the data, and a link that cannot be made is an error.
    pub fn new(components: Option<Vec<Kind>>, options: ExportOptions, weights: WeightMode) -> ExportRequest {
        ExportRequest {
            components,
            options,
            weights,
            allow_nonfinite: false,
            verify: false,
            link_fallback_copy: false,
            merge: None,
            lowbit: None,
        }
    }
}

/// Progress events of [`export`].
pub enum Progress<'a> {
    /// Validation done; `total` bytes of weights will be processed.
    Start { total: u64 },
    /// Starting to write graph `stem`.
    Graph { stem: &'a str },
    /// `n` more bytes processed.
    Bytes(u64),
    /// `--verify`: reading the data of `total` bytes for NaN/Inf.
    Verify { total: u64 },
}

/// Exports `source` into `out` and returns the manifest written there.
pub fn export(
    source: &ModelSource,
    out: &Path,
    req: &ExportRequest,
    progress: &mut dyn FnMut(Progress),
) -> Result<Manifest> {
    let planned = plan(source, req)?;
    if req.verify && !req.allow_nonfinite {
        verify(source, &planned, progress)?;
    }
    let total =
        planned.iter().map(|(_, _, w)| w.iter().flat_map(|w| &w.pieces).map(|p| p.len).sum::<u64>()).sum();
    progress(Progress::Start { total });
    let created = !out.exists();
    std::fs::create_dir_all(out).map_err(|e| ExportError::Output {
        path: out.to_path_buf(),
        msg: format!("cannot create the output folder: {e}"),
    })?;
    let staging = out.join(format!(".flux2-staging-{}", std::process::id()));
    std::fs::create_dir_all(&staging).map_err(|e| ExportError::Output {
        path: out.to_path_buf(),
        msg: format!("output folder is not writable: {e}"),
    })?;
    let result = write_all(source, &planned, &staging, req, progress).and_then(|m| {
        publish(&staging, out)?;
        Ok(m)
    });
    let _ = std::fs::remove_dir_all(&staging);
    if result.is_err() && created {
        let _ = std::fs::remove_dir(out); // only if still empty: a failed export leaves nothing
    }
    result
}

/// `--verify`: every checkpoint that will be exported is read for NaN/Inf before writing.
fn verify(source: &ModelSource, planned: &[Planned], progress: &mut dyn FnMut(Progress)) -> Result<()> {
    let mut done: Vec<usize> = Vec::new();
    for (ci, _, _) in planned {
        if done.contains(ci) {
            continue;
        }
        done.push(*ci);
        let ckpt = &source.components[*ci].checkpoint;
        progress(Progress::Verify { total: ckpt.nbytes() });
        crate::verify::require_finite(ckpt, &mut |n| progress(Progress::Bytes(n)))?;
    }
    Ok(())
}

type Planned<'a> = (usize, BuiltGraph, Vec<ResolvedWeight>);

/// Builds every graph and resolves every weight before anything is written.
fn plan<'a>(source: &'a ModelSource, req: &ExportRequest) -> Result<Vec<Planned<'a>>> {
    if let Some(kinds) = &req.components {
        for k in kinds {
            if source.component(*k).is_none() {
                let found: Vec<&str> = source.components.iter().map(|c| c.kind.name()).collect();
                return Err(ExportError::UnknownLayout {
                    path: source.root.clone(),
                    msg: format!("no {} component here (found: {})", k.name(), found.join(", ")),
                });
            }
        }
    }
    let mut planned = Vec::new();
    let mut mismatches = Vec::new();
    for (i, c) in source.components.iter().enumerate() {
        if req.components.as_ref().is_some_and(|ks| !ks.contains(&c.kind)) {
            continue;
        }
        for g in build(c, &req.options)? {
            if g.shares_weights_of.is_some() {
                if lowbit_graph(req, &c.checkpoint) || keeps_fp8(req, &c.checkpoint) {
                    // the step-caching parts read float weights; a weight-only low-bit (or
                    // FP8 for TensorRT) transformer stores other initializers, so such exports
                    // have no parts
                    continue;
                }
                planned.push((i, g, Vec::new())); // weights: the earlier graph's, as written
                continue;
            }
            let ignore: Vec<&str> = g.ignore.iter().map(|s| s.as_str()).collect();
            match resolve_weights(&c.checkpoint, &g.model.weights, &*g.map, &ignore, &g.stem) {
                Ok(weights) => planned.push((i, g, weights)),
                // keep going: one error lists the problems of every graph
                Err(ExportError::WeightMismatch { checkpoint, model, problems }) => {
                    mismatches.push(format!("{checkpoint} vs the {model} graph:\n{problems}"))
                }
                Err(e) => return Err(e),
            }
        }
    }
    if !mismatches.is_empty() {
        return Err(ExportError::WeightMismatch {
            checkpoint: source.root.display().to_string(),
            model: "exported".into(),
            problems: mismatches.join("\n"),
        });
    }
    Ok(planned)
}

/// Whether the graphs of `ckpt` get low-bit linears: any `--weights-precision` but `gguf`, and
/// `gguf` where the checkpoint holds quantised GGUF tensors.
fn lowbit_graph(req: &ExportRequest, ckpt: &crate::Checkpoint) -> bool {
    match req.lowbit {
        None => false,
        Some(lo) if !lo.from_gguf => true,
        Some(_) => ckpt.tensors.values().any(|t| {
            let src = ckpt.files.get(t.file).and_then(|f| f.gguf());
            src.and_then(|g| crate::gguf::direct::quantised_type(g, t.raw.offset)).is_some()
        }),
    }
}

/// Whether FP8 weights of `ckpt` stay FP8 in the graphs (`--target tensorrt`, float weights).
fn keeps_fp8(req: &ExportRequest, ckpt: &crate::Checkpoint) -> bool {
    req.lowbit.is_none()
        && req.options.target == flux2_graphs::Target::TensorRt
        && ckpt.tensors.values().any(|t| t.dtype() == flux2_graphs::DType::F8E4M3)
}

fn write_all(
    source: &ModelSource,
    planned: &[Planned],
    staging: &Path,
    req: &ExportRequest,
    progress: &mut dyn FnMut(Progress),
) -> Result<Manifest> {
    // Exporting more components into an existing export folder extends its manifest.
    let mut manifest = match Manifest::read(staging.parent().unwrap_or(staging)) {
        Ok(m) => m,
        Err(_) => Manifest::new(),
    };
    manifest.tool_version = env!("CARGO_PKG_VERSION").into();
    let opts = WriteOptions {
        mode: req.weights,
        allow_nonfinite: req.allow_nonfinite,
        link_fallback_copy: req.link_fallback_copy,
        merge: req.merge.as_deref(),
        lowbit: req.lowbit.map(|lo| (lo, req.options.target)),
        fp8_dq: req.lowbit.is_none() && req.options.target == flux2_graphs::Target::TensorRt,
    };
    let mut seen_files: Vec<PathBuf> = Vec::new();
    for (ci, g, weights) in planned {
        let c = &source.components[*ci];
        progress(Progress::Graph { stem: &g.stem });
        let written = match &g.shares_weights_of {
            Some(base) => write_shared(&g.model, staging, base, &g.stem)?,
            None => write_model(&g.model, weights, &c.checkpoint, staging, &g.stem, &opts, &mut |n| {
                progress(Progress::Bytes(n))
            })?,
        };
        let mode = match &g.shares_weights_of {
            Some(base) => manifest.graphs.get(base).map(|e| e.weights.clone()),
            None => None,
        };
        let (inputs, outputs) = io_specs(&g.model);
        manifest.graphs.insert(
            g.stem.clone(),
            GraphEntry {
                file: format!("{}.onnx", g.stem),
                component: c.kind.name().into(),
                dtype: req.options.dtype.name().into(),
                weights: mode
                    .unwrap_or_else(|| format!("{:?}", written.mode.unwrap_or(req.weights)).to_lowercase()),
                target: req.options.target.name().into(),
                parameters: g.model.weights.iter().map(|w| w.shape.iter().product::<usize>() as u64).sum(),
                inputs,
                outputs,
                dim_ranges: dim_ranges(&g.model),
                precision: None,
            },
        );
        manifest.configs.insert(c.kind.name().into(), g.config.clone());
        if c.kind == Kind::Transformer {
            manifest.adapters = req.merge.as_ref().map(|m| m.records()).unwrap_or_default();
        }
        if let Some(v) = &g.variant {
            manifest.variant = v.clone();
        }
        for (k, v) in &g.pipeline {
            manifest.pipeline.insert(k.clone(), v.clone());
        }
        for f in &c.checkpoint.files {
            if !seen_files.contains(&f.path) {
                seen_files.push(f.path.clone());
                let fp = fingerprint(&f.path, f.header_len)?;
                manifest.sources.retain(|s| s.path != fp.path);
                manifest.sources.push(fp);
            }
        }
    }
    if manifest.variant.is_empty()
        || manifest.variant == "custom" && planned.iter().any(|(_, g, _)| g.variant.is_some())
    {
        manifest.variant = planned.iter().find_map(|(_, g, _)| g.variant.clone()).unwrap_or_default();
    }
    if manifest.variant.is_empty() {
        manifest.variant = "custom".into();
    }
    pipeline_defaults(source, &mut manifest)?;
    if let Some(tok) = &source.tokenizer_dir {
        if planned.iter().any(|(ci, _, _)| source.components[*ci].kind == Kind::TextEncoder) {
            copy_dir(tok, &staging.join("tokenizer"))?;
        }
    }
    if let Some(c) = source.component(Kind::TextEncoder) {
        if planned.iter().any(|(ci, _, _)| source.components[*ci].kind == Kind::TextEncoder) {
            let dst = staging.join("text_encoder_config.json");
            match (&c.config_path, &c.config) {
                (Some(p), _) => {
                    std::fs::copy(p, &dst).map_err(io_err(&dst))?;
                }
                // made from a GGUF file's metadata
                (None, Some(cfg)) => {
                    let text = serde_json::to_string_pretty(cfg).unwrap_or_default();
                    std::fs::write(&dst, text).map_err(io_err(&dst))?;
                }
                (None, None) => {}
            }
        }
    }
    manifest
        .write(staging)
        .map_err(|e| ExportError::Output { path: staging.to_path_buf(), msg: e.to_string() })?;
    Ok(manifest)
}

/// Defaults from diffusers' `model_index.json` (`is_distilled`) and, when the checkpoint ships
/// a `vocabulary.json` (the shapes model of train/ does), the size, steps and guidance it says
/// the model is meant to run at: `default_width`, `default_height`, `default_steps`,
/// `default_guidance`, which `flux2 generate` takes when not told otherwise.
fn pipeline_defaults(source: &ModelSource, m: &mut Manifest) -> Result<()> {
    if let Some(idx) = &source.model_index {
        if let Some(d) = idx.get("is_distilled").and_then(|v| v.as_bool()) {
            m.pipeline.insert("is_distilled".into(), d.into());
        }
        if let Some(c) = idx.get("_class_name").and_then(|v| v.as_str()) {
            m.pipeline.insert("pipeline_class".into(), c.into());
        }
    }
    let path = source.root.join(VOCABULARY_FILE);
    if !path.is_file() {
        return Ok(());
    }
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    let bad = |msg: String| ExportError::Config { path: path.clone(), msg };
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    if let Some(size) = v.get("size") {
        let wh = size
            .as_array()
            .filter(|a| a.len() == 2)
            .map(|a| a.iter().map(|d| d.as_u64()).collect::<Vec<_>>());
        match wh.as_deref() {
            Some([Some(w), Some(h)]) if w % 16 == 0 && h % 16 == 0 && *w > 0 && *h > 0 => {
                m.pipeline.insert("default_width".into(), (*w).into());
                m.pipeline.insert("default_height".into(), (*h).into());
            }
            _ => {
                return Err(bad(format!(
                    "\"size\": {size} is not [width, height] in positive multiples of 16"
                )))
            }
        }
    }
    if let Some(steps) = v.get("steps") {
        match steps.as_u64().filter(|&n| n > 0) {
            Some(n) => m.pipeline.insert("default_steps".into(), n.into()),
            None => return Err(bad(format!("\"steps\": {steps} is not a positive integer"))),
        };
    }
    if let Some(g) = v.get("guidance") {
        match g.as_f64().filter(|g| g.is_finite() && *g >= 0.0) {
            Some(x) => m.pipeline.insert("default_guidance".into(), x.into()),
            None => return Err(bad(format!("\"guidance\": {g} is not a finite number >= 0"))),
        };
    }
    if let Some(list) = v.get("resolutions") {
        let entries = list.as_array().ok_or_else(|| bad(format!("\"resolutions\": {list} is not a list")))?;
        let out: Vec<serde_json::Value> =
            entries.iter().map(resolution_entry).collect::<std::result::Result<_, String>>().map_err(bad)?;
        m.pipeline.insert("resolutions".into(), out.into());
    }
    Ok(())
}

/// One `resolutions` entry of vocabulary.json (`{"size": [w, h], "steps", "guidance", "shift"}`)
/// as the manifest keeps it (`{"width", "height", ...}`), validated.
fn resolution_entry(r: &serde_json::Value) -> std::result::Result<serde_json::Value, String> {
    let what = || format!("\"resolutions\" entry {r}");
    let size =
        r.get("size").and_then(|s| s.as_array()).map(|a| a.iter().map(|d| d.as_u64()).collect::<Vec<_>>());
    let (w, h) = match size.as_deref() {
        Some([Some(w), Some(h)]) if w % 16 == 0 && h % 16 == 0 && *w > 0 && *h > 0 => (*w, *h),
        _ => return Err(format!("{}: \"size\" is not [width, height] in positive multiples of 16", what())),
    };
    let mut out = serde_json::json!({"width": w, "height": h});
    if let Some(s) = r.get("steps") {
        let n = s
            .as_u64()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("{}: \"steps\" is not a positive integer", what()))?;
        out["steps"] = n.into();
    }
    if let Some(g) = r.get("guidance") {
        let x = g.as_f64().filter(|g| g.is_finite() && *g >= 0.0);
        out["guidance"] =
            x.ok_or_else(|| format!("{}: \"guidance\" is not a finite number >= 0", what()))?.into();
    }
    if let Some(s) = r.get("shift") {
        let text = s.as_str().ok_or_else(|| format!("{}: \"shift\" is not a string", what()))?;
        if !valid_shift(text) {
            return Err(format!(
                "{}: \"shift\" {text:?} is not empirical, resolution[:BASE_TOKENS] or fixed:ALPHA",
                what()
            ));
        }
        out["shift"] = text.into();
    }
    Ok(out)
}

/// The shift spellings the runtime accepts (`flux2 generate --shift`).
fn valid_shift(s: &str) -> bool {
    match s.split_once(':') {
        None => s == "empirical" || s == "resolution",
        Some(("resolution", n)) => n.parse::<usize>().is_ok_and(|n| n > 0),
        Some(("fixed", a)) => a.parse::<f64>().is_ok_and(|a| a.is_finite() && a > 0.0),
        _ => false,
    }
}

fn copy_dir(src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir_all(dst).map_err(io_err(dst))?;
    for e in std::fs::read_dir(src).map_err(io_err(src))?.flatten() {
        let p = e.path();
        if p.is_file() {
            let d = dst.join(e.file_name());
            std::fs::copy(&p, &d).map_err(io_err(&d))?;
        }
    }
    Ok(())
}

/// Moves every staged entry into `out`, replacing older files of the same name.
fn publish(staging: &Path, out: &Path) -> Result<()> {
    for e in std::fs::read_dir(staging).map_err(io_err(staging))?.flatten() {
        let dst = out.join(e.file_name());
        if dst.is_dir() {
            if e.path().is_dir() && e.file_name() == "weights" {
                // merge per-graph link folders
                for sub in std::fs::read_dir(e.path()).map_err(io_err(e.path()))?.flatten() {
                    let d = dst.join(sub.file_name());
                    if d.exists() {
                        std::fs::remove_dir_all(&d).map_err(io_err(&d))?;
                    }
                    std::fs::rename(sub.path(), &d).map_err(io_err(&d))?;
                }
                continue;
            }
            std::fs::remove_dir_all(&dst).map_err(io_err(&dst))?;
        }
        std::fs::rename(e.path(), &dst).map_err(io_err(&dst))?;
    }
    Ok(())
}
