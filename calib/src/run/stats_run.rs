//! Running graphs for calibration: activation statistics through extra graph outputs,
//! outputs over held-out samples, their fidelity against float, and latency.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use crate::layers::with_outputs;
use crate::metrics::{cosine, nmse};
use crate::onnx_file::{write_model, DataMode, OnnxFile};
use crate::stats::TensorStats;

use super::data::Sample;
use super::{CalibrateError, Event};
use flux2_runtime::tensors::{run, Input};
use flux2_runtime::{cpu_session, SessionOptions};

/// An activation to observe: tensor name and channel axis.
/// A tensor to take statistics of, and the axis whose per-channel maxima to track.
pub(super) type Observed = (String, Option<i64>);

/// Fills one [`TensorStats`] per observed tensor from the float graph over `samples`, in
/// sample order. `divide` gives SmoothQuant factors per tensor (the stats then describe the
/// smoothed activation). `work` must hold the model's external files (see `link_external_files`).
/// Without `histogram` only maxima and counts are kept (all the `max` calibrator reads).
#[allow(clippy::too_many_arguments)]
pub(super) fn collect_stats(
    file: &OnnxFile,
    work: &Path,
    observed: &[Observed],
    samples: &[Sample],
    divide: &BTreeMap<String, Vec<f32>>,
    histogram: bool,
    sess: &SessionOptions,
    on_event: &mut dyn FnMut(Event),
) -> Result<BTreeMap<String, TensorStats>, CalibrateError> {
    let names: Vec<String> = observed.iter().map(|(n, _)| n.clone()).collect();
    let proto = with_outputs(&file.proto, &names);
    let path = write_model(&proto, file, work, "stats", DataMode::KeepExternal)?;
    let mut session = cpu_session(&path, sess)?;
    let mut stats: BTreeMap<String, TensorStats> = BTreeMap::new();
    for (i, sample) in samples.iter().enumerate() {
        let outputs = run(&mut session, sample.feed())?;
        for (name, axis) in observed {
            let (data, shape): (Cow<[f32]>, Vec<usize>) = match (outputs.get(name), sample.get(name)) {
                (Some(a), _) => {
                    (contiguous(a.as_slice(), || a.iter().copied().collect()), a.shape().to_vec())
                }
                (None, Some(Input::F32(a))) => {
                    (contiguous(a.as_slice(), || a.iter().copied().collect()), a.shape().to_vec())
                }
                _ => {
                    return Err(CalibrateError::Graph {
                        graph: file.path.display().to_string(),
                        msg: format!("tensor '{name}' was not produced as an f32 output"),
                    })
                }
            };
            let fresh = || if histogram { TensorStats::default() } else { TensorStats::without_histogram() };
            let st = stats.entry(name.clone()).or_insert_with(fresh);
            st.observe(name, &data, &shape, *axis, divide.get(name).map(|v| v.as_slice()))?;
        }
        on_event(Event::Advance { done: i + 1, total: samples.len() });
    }
    Ok(stats)
}

/// The values without a copy when they are contiguous in standard order.
fn contiguous<'a>(slice: Option<&'a [f32]>, copy: impl FnOnce() -> Vec<f32>) -> Cow<'a, [f32]> {
    slice.map_or_else(|| Cow::Owned(copy()), Cow::Borrowed)
}

/// Runs the graph at `path` over `samples`; per sample, the named outputs concatenated.
pub(super) fn outputs(
    path: &Path,
    samples: &[Sample],
    names: &[String],
    sess: &SessionOptions,
) -> Result<Vec<Vec<f32>>, CalibrateError> {
    let mut session = cpu_session(path, sess)?;
    let mut all = Vec::with_capacity(samples.len());
    for s in samples {
        let mut o = run(&mut session, s.feed())?;
        let mut v = Vec::new();
        for n in names {
            let a = o.remove(n).ok_or_else(|| CalibrateError::Graph {
                graph: path.display().to_string(),
                msg: format!("no f32 output '{n}'"),
            })?;
            v.extend(a.iter().copied());
        }
        all.push(v);
    }
    Ok(all)
}

/// Output error of a quantised graph against float over held-out samples.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Fidelity {
    pub nmse_mean: f64,
    pub nmse_worst: f64,
    pub cosine_mean: f64,
    pub cosine_worst: f64,
}

pub(super) fn fidelity(reference: &[Vec<f32>], got: &[Vec<f32>]) -> Fidelity {
    let n = reference.len().max(1) as f64;
    let mut f = Fidelity { nmse_mean: 0.0, nmse_worst: 0.0, cosine_mean: 0.0, cosine_worst: 1.0 };
    for (r, g) in reference.iter().zip(got) {
        let (e, c) = (nmse(r, g), cosine(r, g));
        let e = if e.is_nan() { f64::INFINITY } else { e };
        f.nmse_mean += e / n;
        f.nmse_worst = f.nmse_worst.max(e);
        f.cosine_mean += c / n;
        f.cosine_worst = f.cosine_worst.min(c);
    }
    f
}

/// Median wall times in ms of the float and the quantised graph on `sample`: one warm-up call
/// each, then `runs` calls alternating between the two, so that load changes on a shared
/// machine hit both alike.
pub(super) fn latency_pair(
    float: &Path,
    quantized: &Path,
    sample: &Sample,
    runs: usize,
    sess: &SessionOptions,
) -> Result<(f64, f64), CalibrateError> {
    let mut sessions = [cpu_session(float, sess)?, cpu_session(quantized, sess)?];
    let mut times = [Vec::with_capacity(runs), Vec::with_capacity(runs)];
    for s in sessions.iter_mut() {
        run(s, sample.feed())?;
    }
    for _ in 0..runs {
        for (s, t) in sessions.iter_mut().zip(times.iter_mut()) {
            let feed = sample.feed();
            let start = Instant::now();
            run(s, feed)?;
            t.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let [mut a, mut b] = times;
    Ok((median(&mut a), median(&mut b)))
}

/// Input shapes of a sample, for the report.
pub(super) fn describe(sample: &Sample) -> String {
    sample
        .inputs
        .iter()
        .map(|(n, v)| {
            let shape = match &**v {
                Input::F32(a) => a.shape().to_vec(),
                Input::I64(a) => a.shape().to_vec(),
            };
            format!("{n}{shape:?}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}
