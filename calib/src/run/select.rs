//! Layer selection of one prepared graph for one NMSE budget: the cost-aware sensitivity search
//! ([`crate::sensitivity::choose_weighted`]), the check on every held-out sample, the staged Q/DQ
//! graph, its latency, scales and report entry.
//!
//! Measurements are remembered per quantised set ([`Prepared::measured`]), so when the
//! image-PSNR budget (output.rs) asks for a tighter NMSE budget, the search re-measures only
//! the configurations it has not seen.

use std::collections::BTreeSet;
use std::path::Path;

use crate::artifacts::KeptLayer;
use crate::onnx_file::{write_model, DataMode};
use crate::qdq::{insert_qdq, signed_activations, QdqPlan};
use crate::report::{ComponentReport, Latency};
use crate::sensitivity::choose_weighted;

use super::graph::{scales_of, Chosen, GraphOutcome, Prepared};
use super::stats_run::{describe, fidelity, latency_pair, outputs};
use super::{CalibrateError, CalibrateOptions, Event};
use flux2_runtime::SessionOptions;

/// Why the NMSE budget is what it is, for the report's reasons.
pub(super) fn budget_note(opts: &CalibrateOptions, budget: f64) -> String {
    if budget == opts.budget_nmse {
        format!("--budget-nmse {}", opts.budget_nmse)
    } else {
        format!(
            "the NMSE budget {budget:.3e} (--budget-nmse {} tightened so that the images meet --min-psnr)",
            opts.budget_nmse
        )
    }
}

impl Prepared<'_> {
    /// NMSE of the graph with `set` quantised, on the first `n` held-out samples (remembered).
    fn measure(
        &self,
        set: &BTreeSet<String>,
        n: usize,
        opts: &CalibrateOptions,
        sess: &SessionOptions,
    ) -> Result<f64, CalibrateError> {
        if let Some(&e) = self.measured.borrow().get(set) {
            return Ok(e);
        }
        let plan =
            QdqPlan { format: opts.format, layers: set, sites: &self.sites, activations: &self.activations };
        let q = insert_qdq(&self.file, &self.layers, &plan)?;
        write_model(&q.proto, &self.file, &self.work, "probe", DataMode::KeepExternal)?;
        let probe = self.work.join("probe.onnx");
        let got = outputs(&probe, &self.data.heldout[..n], &self.output_names, sess)?;
        let e = fidelity(&self.reference[..n], &got).nmse_mean;
        self.measured.borrow_mut().insert(set.clone(), e);
        Ok(e)
    }

    /// Picks the layers kept in float under `budget` and writes the graph's Q/DQ form into
    /// `staging` (replacing an earlier selection's).
    pub(super) fn select(
        &self,
        budget: f64,
        opts: &CalibrateOptions,
        staging: &Path,
        sess: &SessionOptions,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<GraphOutcome, CalibrateError> {
        let (stem, data) = (self.stem.as_str(), self.data);
        // sensitivity runs on the first held-out samples only: each candidate costs a pass
        let n_sens = match opts.sensitivity_samples {
            0 => data.heldout.len(),
            n => n.min(data.heldout.len()),
        };
        let label = format!("sensitivity {stem}");
        on_event(Event::Stage { label: &label, total: 1 });
        let mut measure = |set: &BTreeSet<String>| self.measure(set, n_sens, opts, sess);
        let selection =
            choose_weighted(&self.candidates, budget, &self.saved, &mut measure, &mut |done, total| {
                on_event(Event::Advance { done, total })
            })?;
        let why = budget_note(opts, budget);
        let mut kept = self.kept.clone();
        for (name, e) in selection.per_layer.iter().filter(|(n, _)| selection.kept_float.contains(n)) {
            let share = selection.saved_share.get(name).copied();
            kept.push(KeptLayer {
                layer: name.clone(),
                reason: format!(
                    "sensitivity: among the most error per unit of time saved{}; needed to meet {why}",
                    share
                        .map(|s| format!(" ({:.2}% of the graph's quantisable MACs)", 100.0 * s))
                        .unwrap_or_default(),
                ),
                nmse_alone: Some(*e),
            });
        }

        let mut chosen: BTreeSet<String> = selection.quantized.iter().cloned().collect();
        let stage = |chosen: &BTreeSet<String>| -> Result<_, CalibrateError> {
            let plan = QdqPlan {
                format: opts.format,
                layers: chosen,
                sites: &self.sites,
                activations: &self.activations,
            };
            let q = insert_qdq(&self.file, &self.layers, &plan)?;
            let staged = write_model(&q.proto, &self.file, staging, stem, DataMode::SelfContained)?;
            let fid = fidelity(&self.reference, &outputs(&staged, &data.heldout, &self.output_names, sess)?);
            Ok((q, staged, fid))
        };
        let (mut q, mut staged, mut fid) = stage(&chosen)?;
        // the search measured on the first `n_sens` held-out samples; on all of them, keep the
        // next most sensitive ranked layers in float until the budget holds there too
        let ranked: Vec<(String, f64)> =
            selection.per_layer.iter().filter(|(l, _)| chosen.contains(l)).cloned().collect();
        let mut next = ranked.iter();
        while n_sens < data.heldout.len() && fid.nmse_mean > budget {
            let Some((layer, e)) = next.next() else { break };
            chosen.remove(layer.as_str());
            kept.push(KeptLayer {
                layer: layer.clone(),
                reason: format!(
                    "held-out check: NMSE {:.3e} on all {} held-out samples exceeded {why}",
                    fid.nmse_mean,
                    data.heldout.len(),
                ),
                nmse_alone: Some(*e),
            });
            (q, staged, fid) = stage(&chosen)?;
        }
        let lat = if opts.latency_runs > 0 {
            on_event(Event::Stage { label: &format!("latency {stem}"), total: 0 });
            let sample = &data.heldout[0];
            let (float_ms, quantized_ms) =
                latency_pair(&self.float_path, &staged, sample, opts.latency_runs, sess)?;
            Some(Latency { float_ms, quantized_ms, runs: opts.latency_runs, input: describe(sample) })
        } else {
            None
        };
        if opts.signed_activations {
            // measured above in the UINT8 form (the same values): ONNX Runtime 1.31's Q/DQ
            // propagation rejects some INT8-activation conv graphs (output_dtype vs zero-point type)
            signed_activations(&mut q.proto);
            write_model(&q.proto, &self.file, staging, stem, DataMode::SelfContained)?;
        }

        let chosen_set = Chosen { layers: &self.layers, sites: &self.sites, names: &chosen };
        let (scales, cache_ranges) =
            scales_of(&chosen_set, &self.activations, &self.raw, &q.weights, opts, &kept);
        let report = ComponentReport {
            graph: stem.to_string(),
            calibration_samples: data.calibration.len(),
            heldout_samples: data.heldout.len(),
            data: data.source.clone(),
            layers_total: self.layers.len() + self.sites.len(),
            layers_quantized: chosen.len(),
            kept_float: kept,
            nmse: fid.nmse_mean,
            nmse_worst: fid.nmse_worst,
            cosine: fid.cosine_mean,
            cosine_worst: fid.cosine_worst,
            sensitivity: selection,
            latency: lat,
        };
        Ok(GraphOutcome { scales, report, cache_ranges })
    }

    /// Whether every candidate is already kept in float by `outcome` (no tighter budget can
    /// change anything).
    pub(super) fn all_float(&self, outcome: &GraphOutcome) -> bool {
        outcome.report.layers_quantized == 0 || self.candidates.is_empty()
    }
}
