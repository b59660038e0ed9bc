//! Sensitivity-driven mixed precision: which layers stay in float so that the quantised
//! component's output error stays within a budget.
//!
//! 1. Quantise every candidate layer; if the output NMSE (against the float model, on held-out
//!    samples) is within the budget, keep everything quantised.
//! 2. Otherwise rank *blocks* ([`group_of`]: `model.layers.12`, `decoder.up_blocks.1`, …): quantise
//!    one block at a time and record its NMSE. Find the fewest most-sensitive blocks that, kept in
//!    float, meet the budget ([`smallest_k`]: k = 1, 2, 4, … until it does, then bisection).
//! 3. Refine inside the blocks kept in float: with every other layer quantised, quantise one of
//!    their layers at a time on top (its marginal NMSE), rank them, and find the fewest to keep in
//!    float the same way.
//!
//! A 28-layer text encoder has 196 layers but 28 blocks, so this costs ~45 measurements instead of
//! ~210 for ranking every layer alone. When grouping does not shrink the search (few layers, or
//! no numbered blocks), step 2 ranks single layers and step 3 is skipped. Every configuration
//! returned was measured and seen to meet the budget (all float trivially does).
//!
//! Cost-aware ranking ([`choose_weighted`]): each candidate comes with the time quantising it
//! saves (on ONNX Runtime's CPU: its multiply-accumulates per forward, a FLOP model whose scale
//! one float-vs-quantised latency measurement fixes; for TensorRT the same FLOP model). Units are
//! then ranked by *error per unit of time saved* (their marginal NMSE divided by their summed
//! saving), so the float budget goes to layers that cost much error and save little time,
//! while expensive layers with moderate error (a VAE decoder's full-resolution convolutions)
//! get quantised. With equal savings this is the error-only ranking.
//!
//! The measuring function is supplied by the caller (the runtime runs the graphs), so this
//! module is pure and its choices are deterministic given the measurements.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// One measured configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    /// Number of most-sensitive units (blocks, or layers in the refinement) kept in float.
    pub kept_float: usize,
    pub nmse: f64,
    /// "block" or "layer".
    #[serde(default)]
    pub unit: String,
}

/// The outcome of [`choose`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Selection {
    pub budget_nmse: f64,
    /// NMSE with every candidate quantised.
    pub all_quantized_nmse: f64,
    /// (block, NMSE when only it is quantised), most sensitive first; empty when step 1 passed
    /// or when blocks were single layers.
    #[serde(default)]
    pub per_group: Vec<(String, f64)>,
    /// (layer, NMSE when it is quantised on top of the fixed quantised rest; alone when blocks are
    /// single layers), most sensitive first.
    pub per_layer: Vec<(String, f64)>,
    pub trials: Vec<Trial>,
    /// Layers kept in float, most sensitive first.
    pub kept_float: Vec<String>,
    /// Layers quantised, in the candidates' order.
    pub quantized: Vec<String>,
    /// NMSE of the chosen configuration.
    pub nmse: f64,
    /// Probe graphs measured.
    #[serde(default)]
    pub measurements: usize,
    /// Share of the candidates' total saving each ranked unit (block or layer) carries, when
    /// ranked by error per unit of time saved; empty for the error-only ranking.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub saved_share: BTreeMap<String, f64>,
}

/// Progress of [`choose`]: (measurements done, measurements planned so far).
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize);

/// The block a layer belongs to: its name up to the first all-digit segment
/// (`model.layers.12.mlp.up_proj` → `model.layers.12`), or the whole name when it has none.
pub fn group_of(name: &str) -> &str {
    let mut end = 0;
    for seg in name.split('.') {
        end += seg.len();
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            return &name[..end];
        }
        end += 1;
    }
    name
}

/// Counts measurements for the progress callback.
struct Meter<'a, 'b, E> {
    measure: &'a mut dyn FnMut(&BTreeSet<String>) -> Result<f64, E>,
    progress: Progress<'b>,
    budget: f64,
    done: usize,
    planned: usize,
}

impl<E> Meter<'_, '_, E> {
    fn plan(&mut self, more: usize) {
        self.planned += more;
        (self.progress)(self.done, self.planned);
    }

    fn run(&mut self, set: &BTreeSet<String>) -> Result<f64, E> {
        if self.done >= self.planned {
            self.planned = self.done + 1;
        }
        (self.progress)(self.done, self.planned);
        let e = (self.measure)(set)?;
        self.done += 1;
        Ok(e)
    }
}

/// Smallest k in 1..n with `cost(k) <= budget`: doubling, then bisection between the last failure
/// and the first success. k = n is taken to meet the budget with `nmse_at_n` (not measured).
/// Returns (k, its NMSE); every measured k is pushed to `trials`.
pub fn smallest_k<E>(
    n: usize,
    budget: f64,
    nmse_at_n: f64,
    cost: &mut dyn FnMut(usize) -> Result<f64, E>,
    trials: &mut Vec<(usize, f64)>,
) -> Result<(usize, f64), E> {
    let (mut fail, mut ok) = (0usize, n);
    let mut best = (n, nmse_at_n);
    let mut k = 1;
    while k < n {
        let e = cost(k)?;
        trials.push((k, e));
        if e <= budget {
            (ok, best) = (k, (k, e));
            break;
        }
        fail = k;
        k *= 2;
    }
    while ok - fail > 1 {
        let mid = fail + (ok - fail) / 2;
        let e = cost(mid)?;
        trials.push((mid, e));
        if e <= budget {
            (ok, best) = (mid, (mid, e));
        } else {
            fail = mid;
        }
    }
    Ok(best)
}

/// The time each unit saves when quantised: the sum of its layers' savings (1 each when none
/// are given, which makes the ranking error-only).
fn unit_saving(layers: &[String], saved: &BTreeMap<String, f64>) -> f64 {
    if saved.is_empty() {
        return 1.0;
    }
    layers.iter().map(|l| saved.get(l).copied().unwrap_or(0.0)).sum()
}

/// Error per unit of time saved: the NMSE `nmse` adds over `base_nmse`, divided by `saving`.
/// A unit that saves nothing but adds error ranks first; one that adds no error ranks last.
pub fn score(nmse: f64, base_nmse: f64, saving: f64) -> f64 {
    let added = (nmse - base_nmse).max(0.0);
    if saving > 0.0 {
        added / saving
    } else if added > 0.0 {
        f64::INFINITY
    } else {
        0.0
    }
}

/// Ranks `units` (each a set of layers) by [`score`] of `base ∪ unit` against `base_nmse`, the
/// NMSE of `base` alone: most error per unit of time saved first. Returns (unit, NMSE of
/// `base ∪ unit`) in that order.
fn rank<E>(
    units: &[(String, Vec<String>)],
    base: &BTreeSet<String>,
    base_nmse: f64,
    saved: &BTreeMap<String, f64>,
    meter: &mut Meter<'_, '_, E>,
) -> Result<Vec<(String, f64)>, E> {
    meter.plan(units.len());
    let mut ranked = Vec::with_capacity(units.len());
    for (name, layers) in units {
        let mut set = base.clone();
        set.extend(layers.iter().cloned());
        let e = meter.run(&set)?;
        ranked.push((name.clone(), e, score(e, base_nmse, unit_saving(layers, saved))));
    }
    ranked.sort_by(|a, b| b.2.total_cmp(&a.2).then_with(|| b.1.total_cmp(&a.1)).then_with(|| a.0.cmp(&b.0)));
    Ok(ranked.into_iter().map(|(n, e, _)| (n, e)).collect())
}

impl<E> Meter<'_, '_, E> {
    /// Keeps the fewest most-sensitive `ranked` units in float (the rest of them and `base`
    /// quantised); `nmse_all_float` is the known NMSE with all of them in float. Returns (number
    /// kept, NMSE) and records the trials.
    fn keep_fewest(
        &mut self,
        ranked: &[(String, f64)],
        members: &BTreeMap<String, Vec<String>>,
        base: &BTreeSet<String>,
        nmse_all_float: f64,
        unit: &str,
        trials: &mut Vec<Trial>,
    ) -> Result<(usize, f64), E> {
        let mut seen = vec![];
        let budget = self.budget;
        let mut cost = |k: usize| -> Result<f64, E> {
            let mut set = base.clone();
            set.extend(ranked[k..].iter().flat_map(|(u, _)| members[u].iter().cloned()));
            self.run(&set)
        };
        let best = smallest_k(ranked.len(), budget, nmse_all_float, &mut cost, &mut seen)?;
        trials.extend(seen.into_iter().map(|(k, nmse)| Trial { kept_float: k, nmse, unit: unit.into() }));
        Ok(best)
    }
}

/// Chooses the quantised set by error alone. `measure(set)` returns the output NMSE with
/// exactly `set` quantised.
pub fn choose<E>(
    candidates: &[String],
    budget_nmse: f64,
    measure: &mut dyn FnMut(&BTreeSet<String>) -> Result<f64, E>,
    progress: Progress,
) -> Result<Selection, E> {
    choose_weighted(candidates, budget_nmse, &BTreeMap::new(), measure, progress)
}

/// Chooses the quantised set by error per unit of time saved: `saved` gives each candidate's
/// saving when quantised (any unit; missing: none). Empty `saved`: error alone, as [`choose`].
pub fn choose_weighted<E>(
    candidates: &[String],
    budget_nmse: f64,
    saved: &BTreeMap<String, f64>,
    measure: &mut dyn FnMut(&BTreeSet<String>) -> Result<f64, E>,
    progress: Progress,
) -> Result<Selection, E> {
    let mut meter = Meter { measure, progress, budget: budget_nmse, done: 0, planned: 1 };
    let all: BTreeSet<String> = candidates.iter().cloned().collect();
    let all_nmse = meter.run(&all)?;
    let mut sel = Selection {
        budget_nmse,
        all_quantized_nmse: all_nmse,
        per_group: vec![],
        per_layer: vec![],
        trials: vec![Trial { kept_float: 0, nmse: all_nmse, unit: "layer".into() }],
        kept_float: vec![],
        quantized: candidates.to_vec(),
        nmse: all_nmse,
        measurements: 1,
        saved_share: BTreeMap::new(),
    };
    if all_nmse <= budget_nmse || candidates.is_empty() {
        (meter.progress)(meter.done, meter.done);
        return Ok(sel);
    }
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for c in candidates {
        groups.entry(group_of(c).to_string()).or_default().push(c.clone());
    }
    let singles: BTreeMap<String, Vec<String>> =
        candidates.iter().map(|c| (c.clone(), vec![c.clone()])).collect();
    let empty = BTreeSet::new();

    // step 2: blocks (or single layers when grouping would not shrink the search)
    let grouped = groups.len() * 2 <= candidates.len();
    let (units, unit) = if grouped { (&groups, "block") } else { (&singles, "layer") };
    let list: Vec<(String, Vec<String>)> = units.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let ranked = rank(&list, &empty, 0.0, saved, &mut meter)?;
    let (k, mut nmse) = meter.keep_fewest(&ranked, units, &empty, 0.0, unit, &mut sel.trials)?;
    let mut kept: Vec<String> = ranked[..k].iter().flat_map(|(u, _)| units[u].iter().cloned()).collect();
    if grouped {
        sel.per_group = ranked;
        // step 3: single layers inside the kept blocks, on top of everything else quantised
        let base: BTreeSet<String> = all.iter().filter(|c| !kept.contains(c)).cloned().collect();
        let inner: Vec<(String, Vec<String>)> = kept.iter().map(|l| (l.clone(), vec![l.clone()])).collect();
        let layers = rank(&inner, &base, nmse, saved, &mut meter)?;
        let (j, e) = meter.keep_fewest(&layers, &singles, &base, nmse, "layer", &mut sel.trials)?;
        kept = layers[..j].iter().map(|(l, _)| l.clone()).collect();
        nmse = e;
        sel.per_layer = layers;
    } else {
        sel.per_layer = ranked;
    }
    (meter.progress)(meter.done, meter.done);
    if kept.len() == candidates.len() {
        sel.trials.push(Trial { kept_float: candidates.len(), nmse: 0.0, unit: "layer".into() });
    }
    let kept_set: BTreeSet<&String> = kept.iter().collect();
    sel.quantized = candidates.iter().filter(|c| !kept_set.contains(c)).cloned().collect();
    sel.kept_float = kept;
    sel.nmse = nmse;
    sel.measurements = meter.done;
    let total: f64 = candidates.iter().map(|c| saved.get(c).copied().unwrap_or(0.0)).sum();
    if total > 0.0 {
        for (unit, layers) in units.iter().chain(singles.iter()) {
            sel.saved_share.insert(unit.clone(), unit_saving(layers, saved) / total);
        }
    }
    Ok(sel)
}

#[cfg(test)]
#[path = "sensitivity_tests.rs"]
mod tests;
