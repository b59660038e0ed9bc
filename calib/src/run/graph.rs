//! Calibrating one graph: statistics, ranges, SmoothQuant, layer selection by sensitivity,
//! the final Q/DQ graph and its entries in `scales.json` and the report.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::artifacts::{ActivationScale, GraphScales, KeptLayer, WeightEntry};
use crate::attention::{expand, find_sites, probs_amax_name, with_probs_amax, AttentionSite, Point};
use crate::calibrators::Calibrator;
use crate::consts::Consts;
use crate::formats::Format;
use crate::layers::{find_layers, Layer, LayerOp};
use crate::onnx_file::{link_external_files, OnnxFile};
use crate::qdq::{ActivationQuant, WeightScales};
use crate::report::ComponentReport;
use crate::smoothquant::{factors, weight_input_amax};
use crate::stats::TensorStats;

use super::data::GraphData;
use super::stats_run::{collect_stats, outputs, Observed};
use super::{CalibrateError, CalibrateOptions, Event};
use flux2_runtime::model_dir::ModelDir;
use flux2_runtime::SessionOptions;

/// The result of calibrating one graph.
pub(super) struct GraphOutcome {
    pub scales: GraphScales,
    pub report: ComponentReport,
    /// Unsmoothed INT8 ranges of the quantised layers' inputs (for `calibration.cache`).
    pub cache_ranges: BTreeMap<String, f32>,
}

fn graph_err(stem: &str, msg: impl Into<String>) -> CalibrateError {
    CalibrateError::Graph { graph: stem.to_string(), msg: msg.into() }
}

/// SmoothQuant factors per activation, pooling the weights of all its consuming layers.
fn smoothing(
    file: &OnnxFile,
    layers: &[Layer],
    stats: &BTreeMap<String, TensorStats>,
    alpha: f32,
) -> Result<BTreeMap<String, Vec<f32>>, CalibrateError> {
    let consts = Consts::new(file);
    let mut pooled: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    for l in layers {
        let w = weight_input_amax(&consts.eval(&l.weight)?, l.op == LayerOp::Conv);
        let p = pooled.entry(l.activation.clone()).or_insert_with(|| vec![0.0; w.len()]);
        p.iter_mut().zip(&w).for_each(|(a, b)| *a = a.max(*b));
    }
    let mut out = BTreeMap::new();
    for (act, w) in pooled {
        let x = &stats
            .get(&act)
            .ok_or_else(|| graph_err(&file.path.display().to_string(), format!("no stats for {act}")))?
            .channel_amax;
        out.insert(act, factors(x, &w, alpha)?);
    }
    Ok(out)
}

/// Files the statistics of each site's softmax maximum under the softmax output's name.
fn rename_probs_stats(stats: &mut BTreeMap<String, TensorStats>, sites: &[AttentionSite]) {
    for s in sites {
        if let Some(st) = stats.remove(&probs_amax_name(s)) {
            stats.insert(s.input(Point::Probs).to_string(), st);
        }
    }
}

/// The attention sites of graph `stem` to offer for quantisation, and those kept in float with
/// the reason. Only the DiT's: its attention is a third of its time at 1024 image tokens, while
/// the VAE's single mid-block attention over every latent pixel would need its full score
/// matrix materialised to take statistics.
fn attention_sites(
    stem: &str,
    file: &OnnxFile,
    opts: &CalibrateOptions,
) -> Result<(Vec<AttentionSite>, Vec<KeptLayer>), CalibrateError> {
    if stem != "transformer" {
        return Ok((vec![], vec![]));
    }
    let sites = find_sites(file)?;
    let reason = if opts.float_attention {
        "attention products kept in float by --float-attention"
    } else if opts.format == Format::Fp8 && !opts.fp8_attention {
        "FP8 attention only with --fp8-attention: stock ONNX Runtime 1.31 turns FP8 Q/DQ on both \
         inputs of a matmul into a MatMulIntegerToFloat it cannot load"
    } else {
        return Ok((sites, vec![]));
    };
    let kept = sites
        .iter()
        .map(|s| KeptLayer { layer: s.name.clone(), reason: reason.into(), nmse_alone: None })
        .collect();
    Ok((vec![], kept))
}

/// What the statistics runs of one graph share.
struct StatsContext<'a> {
    stem: &'a str,
    file: &'a OnnxFile,
    work: &'a Path,
    data: &'a GraphData,
    opts: &'a CalibrateOptions,
    sess: &'a SessionOptions,
}

/// Raw statistics and quantisation ranges, per tensor.
type Ranges = (BTreeMap<String, TensorStats>, BTreeMap<String, ActivationQuant>);

/// Statistics of every layer input and attention-site input over the calibration samples (raw,
/// i.e. before smoothing), and the quantisation range of each (after SmoothQuant, if asked).
fn ranges(
    ctx: &StatsContext,
    layers: &[Layer],
    sites: &[AttentionSite],
    on_event: &mut dyn FnMut(Event),
) -> Result<Ranges, CalibrateError> {
    let StatsContext { stem, file, work, data, opts, sess } = *ctx;
    let mut observed: Vec<Observed> = Vec::new();
    for l in layers {
        if !observed.iter().any(|(n, _)| n == &l.activation) {
            observed.push((l.activation.clone(), Some(l.channel_axis())));
        }
    }
    // INT8 convolutions also quantise their outputs (the Q that lets ONNX Runtime fuse them)
    for l in layers.iter().filter(|l| opts.format == Format::Int8 && l.op == LayerOp::Conv) {
        if !l.output.is_empty() && !observed.iter().any(|(n, _)| n == &l.output) {
            observed.push((l.output.clone(), None));
        }
    }
    // statistics of attention inputs need the fused attention nodes taken apart; of the
    // softmax output only its maximum is observed (see `with_probs_amax`)
    for s in sites {
        for (p, t) in s.points() {
            let name = if p == Point::Probs { probs_amax_name(s) } else { t.to_string() };
            observed.push((name, None));
        }
    }
    let stats_file = with_probs_amax(&expand(file, sites, None), sites);
    let mut stats = |label: String, divide: &BTreeMap<String, Vec<f32>>| {
        on_event(Event::Stage { label: &label, total: data.calibration.len() });
        let histogram = opts.calibrator != Calibrator::Max;
        let mut st = collect_stats(
            &stats_file,
            work,
            &observed,
            &data.calibration,
            divide,
            histogram,
            sess,
            on_event,
        )?;
        rename_probs_stats(&mut st, sites);
        Ok::<_, CalibrateError>(st)
    };
    let raw = stats(format!("statistics {stem}"), &BTreeMap::new())?;
    let smooth = match opts.smoothquant {
        Some(alpha) => smoothing(file, layers, &raw, alpha)?,
        None => BTreeMap::new(),
    };
    let quant_stats =
        if smooth.is_empty() { raw.clone() } else { stats(format!("smoothed statistics {stem}"), &smooth)? };
    let mut activations: BTreeMap<String, ActivationQuant> = BTreeMap::new();
    for (act, st) in &quant_stats {
        if st.nonfinite > 0 {
            log::warn!("{stem}: '{act}' had {} non-finite values during calibration (ignored)", st.nonfinite);
        }
        // softmax outputs: the largest probabilities carry the most weight, so never clip them
        let probs = sites.iter().any(|s| s.input(Point::Probs) == act);
        let amax = if probs { st.amax } else { opts.calibrator.amax(st, opts.format) };
        activations.insert(act.clone(), ActivationQuant { amax, smooth: smooth.get(act).cloned() });
    }
    Ok((raw, activations))
}

/// The time quantising each layer saves, by a FLOP model: its multiply-accumulates per forward
/// (weight size × activation rows in the largest calibration batch). Integer kernels speed up
/// every layer by roughly the same factor on one target, so the ranking needs only these
/// relative costs (the float-vs-quantised latency of the report fixes their scale). Attention
/// products have no weight: they get the median layer cost.
fn savings(
    layers: &[Layer],
    sites: &[AttentionSite],
    raw: &BTreeMap<String, TensorStats>,
) -> BTreeMap<String, f64> {
    let mut out: BTreeMap<String, f64> = layers
        .iter()
        .map(|l| {
            let rows = raw.get(&l.activation).map_or(1, |s| s.rows.max(1));
            (l.name.clone(), l.macs_per_row() as f64 * rows as f64)
        })
        .collect();
    let mut costs: Vec<f64> = out.values().copied().collect();
    costs.sort_by(f64::total_cmp);
    let median = costs.get(costs.len() / 2).copied().unwrap_or(1.0);
    for s in sites {
        out.insert(s.name.clone(), median);
    }
    out
}

/// Checks that every `--exclude` pattern names at least one layer or attention site of the
/// graphs to calibrate; the error lists the patterns that match none (a typo would otherwise
/// quietly quantise the layer the user meant to keep). Reads only the graphs' structure.
pub(super) fn check_exclude(
    model: &ModelDir,
    graphs: &[String],
    exclude: &[String],
) -> Result<(), CalibrateError> {
    if exclude.is_empty() {
        return Ok(());
    }
    if exclude.iter().any(|p| p.is_empty()) {
        return Err(super::opt_err("--exclude", "an empty pattern would keep every layer in float"));
    }
    let mut names: Vec<String> = Vec::new();
    for g in graphs {
        let file = OnnxFile::read(&model.graph(g)?)?;
        names.extend(find_layers(&file)?.into_iter().map(|l| l.name));
        if g == "transformer" {
            names.extend(find_sites(&file)?.into_iter().map(|s| s.name));
        }
    }
    let unmatched: Vec<&str> = exclude
        .iter()
        .filter(|p| !names.iter().any(|n| n.contains(p.as_str())))
        .map(String::as_str)
        .collect();
    if unmatched.is_empty() {
        return Ok(());
    }
    let example = names.first().map(|n| format!(" (layer names look like '{n}')")).unwrap_or_default();
    Err(super::opt_err(
        "--exclude",
        format!(
            "{} match(es) no layer of the graphs to calibrate ({}){example}",
            unmatched.iter().map(|p| format!("'{p}'")).collect::<Vec<_>>().join(", "),
            graphs.join(", ")
        ),
    ))
}

/// The layers and attention sites that sensitivity may quantise; the others go to `kept` with
/// their reason (`--exclude`, per-forward vector inputs).
fn candidates(
    layers: &[Layer],
    sites: &[AttentionSite],
    raw: &BTreeMap<String, TensorStats>,
    opts: &CalibrateOptions,
    kept: &mut Vec<KeptLayer>,
) -> Vec<String> {
    let mut candidates: Vec<String> = Vec::new();
    let excluded = |name: &str| opts.exclude.iter().find(|p| name.contains(p.as_str())).cloned();
    let exclusion = |name: &str, p: String| KeptLayer {
        layer: name.to_string(),
        reason: format!("excluded by --exclude '{p}'"),
        nmse_alone: None,
    };
    for s in sites {
        match excluded(&s.name) {
            Some(p) => kept.push(exclusion(&s.name, p)),
            None => candidates.push(s.name.clone()),
        }
    }
    for l in layers {
        if let Some(p) = excluded(&l.name) {
            kept.push(exclusion(&l.name, p));
        } else if raw[&l.activation].rows <= 1 && !opts.quantize_vectors {
            let reason =
                "per-forward vector input (one row per sample: no speed to gain, shifts every token)";
            kept.push(KeptLayer { layer: l.name.clone(), reason: reason.into(), nmse_alone: None });
        } else {
            candidates.push(l.name.clone());
        }
    }
    candidates
}

/// What was quantised.
pub(super) struct Chosen<'a> {
    pub layers: &'a [Layer],
    pub sites: &'a [AttentionSite],
    pub names: &'a BTreeSet<String>,
}

/// The `scales.json` entry of a graph and its INT8 ranges for `calibration.cache` (unsmoothed).
pub(super) fn scales_of(
    chosen: &Chosen,
    activations: &BTreeMap<String, ActivationQuant>,
    raw: &BTreeMap<String, TensorStats>,
    weights: &BTreeMap<String, WeightScales>,
    opts: &CalibrateOptions,
    kept: &[KeptLayer],
) -> (GraphScales, BTreeMap<String, f32>) {
    let mut scales = GraphScales { kept_float: kept.to_vec(), ..Default::default() };
    let mut cache_ranges = BTreeMap::new();
    let entry = |t: &str| {
        let aq = &activations[t];
        ActivationScale {
            amax: aq.amax,
            scale: opts.format.scale_for(aq.amax),
            observed_amax: raw[t].amax,
            smooth: aq.smooth.clone(),
        }
    };
    for l in chosen.layers.iter().filter(|l| chosen.names.contains(&l.name)) {
        scales.activations.entry(l.activation.clone()).or_insert_with(|| entry(&l.activation));
        let out_quantized = opts.format == Format::Int8
            && l.op == LayerOp::Conv
            && activations.get(&l.output).is_some_and(|a| a.smooth.is_none());
        if out_quantized {
            scales.activations.entry(l.output.clone()).or_insert_with(|| entry(&l.output));
            cache_ranges.insert(l.output.clone(), opts.calibrator.amax(&raw[&l.output], Format::Int8));
        }
        if let Some(ws) = weights.get(&l.name) {
            scales
                .weights
                .insert(l.name.clone(), WeightEntry { activation: l.activation.clone(), scales: ws.clone() });
        }
        if opts.format == Format::Int8 {
            cache_ranges
                .insert(l.activation.clone(), opts.calibrator.amax(&raw[&l.activation], Format::Int8));
        }
    }
    for s in chosen.sites.iter().filter(|s| chosen.names.contains(&s.name)) {
        for t in &s.inputs {
            scales.activations.entry(t.clone()).or_insert_with(|| entry(t));
            cache_ranges.insert(t.clone(), activations[t].amax);
        }
    }
    (scales, cache_ranges)
}

/// Everything about one graph that does not depend on the NMSE budget: its layers, the
/// statistics and ranges (the expensive passes over the calibration samples), the candidates
/// and the float outputs on the held-out samples. [`Prepared::select`] (select.rs) then picks
/// the layers kept in float for a budget, as often as the image-PSNR budget asks.
pub(super) struct Prepared<'a> {
    pub stem: String,
    pub float_path: PathBuf,
    pub file: OnnxFile,
    pub layers: Vec<Layer>,
    pub sites: Vec<AttentionSite>,
    /// Layers kept in float whatever the budget (attention products, vectors, `--exclude`).
    pub kept: Vec<KeptLayer>,
    pub raw: BTreeMap<String, TensorStats>,
    pub activations: BTreeMap<String, ActivationQuant>,
    pub candidates: Vec<String>,
    pub saved: BTreeMap<String, f64>,
    pub output_names: Vec<String>,
    pub reference: Vec<Vec<f32>>,
    pub work: PathBuf,
    pub data: &'a GraphData,
    /// Sensitivity measurements by quantised set, shared by every budget tried.
    pub measured: std::cell::RefCell<BTreeMap<BTreeSet<String>, f64>>,
}

pub(super) fn prepare_graph<'a>(
    stem: &str,
    model: &ModelDir,
    data: &'a GraphData,
    opts: &CalibrateOptions,
    staging: &Path,
    sess: &SessionOptions,
    on_event: &mut dyn FnMut(Event),
) -> Result<Prepared<'a>, CalibrateError> {
    let float_path = model.graph(stem)?;
    let file = OnnxFile::read(&float_path)?;
    let layers = find_layers(&file)?;
    if layers.is_empty() {
        return Err(graph_err(stem, "has no MatMul or Conv with a constant weight to quantise"));
    }
    let work: PathBuf = staging.join(".work").join(stem);
    std::fs::create_dir_all(&work)
        .map_err(|e| CalibrateError::Output { path: work.clone(), msg: e.to_string() })?;
    link_external_files(&file, &work)?;

    let (sites, mut kept) = attention_sites(stem, &file, opts)?;
    let ctx = StatsContext { stem, file: &file, work: &work, data, opts, sess };
    let (raw, activations) = ranges(&ctx, &layers, &sites, on_event)?;
    let candidates = candidates(&layers, &sites, &raw, opts, &mut kept);
    let output_names: Vec<String> = file.graph().output.iter().map(|o| o.name.clone()).collect();
    let reference = outputs(&float_path, &data.heldout, &output_names, sess)?;
    let saved = savings(&layers, &sites, &raw);
    Ok(Prepared {
        stem: stem.to_string(),
        float_path,
        file,
        layers,
        sites,
        kept,
        raw,
        activations,
        candidates,
        saved,
        output_names,
        reference,
        work,
        data,
        measured: Default::default(),
    })
}
