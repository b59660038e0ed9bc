//! Sensitivity-driven mixed precision: which layers stay in float so that the quantised
//! component's output error stays within a budget.
//!
//! 1. Quantise every candidate layer; if the output NMSE (against the float model, on held-out
//!    samples) is within the budget, keep everything quantised.
//! 2. Otherwise quantise one layer at a time and record each one's NMSE (its sensitivity).
//! 3. Sort layers by sensitivity (largest first, ties by name) and find the smallest k such that
//!    keeping the k most sensitive in float meets the budget: k = 1, 2, 4, … until it does, then
//!    bisect between the last failure and the first success. Each trial is measured, so the
//!    returned choice is one that was actually seen to meet the budget (k = n, everything in
//!    float, trivially does).
//!
//! The measuring function is supplied by the caller (the runtime runs the graphs), so this
//! module is pure and its choices are deterministic given the measurements.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// One measured configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    /// Number of most-sensitive layers kept in float.
    pub kept_float: usize,
    pub nmse: f64,
}

/// The outcome of [`choose`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Selection {
    pub budget_nmse: f64,
    /// NMSE with every candidate quantised.
    pub all_quantized_nmse: f64,
    /// (layer, NMSE when only it is quantised), most sensitive first; empty when step 1 passed.
    pub per_layer: Vec<(String, f64)>,
    pub trials: Vec<Trial>,
    /// Layers kept in float, most sensitive first.
    pub kept_float: Vec<String>,
    /// Layers quantised, in the candidates' order.
    pub quantized: Vec<String>,
    /// NMSE of the chosen configuration.
    pub nmse: f64,
}

/// Progress of [`choose`]: (measurements done, measurements planned so far).
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize);

/// Chooses the quantised set. `measure(set)` returns the output NMSE with exactly `set` quantised.
pub fn choose<E>(
    candidates: &[String],
    budget_nmse: f64,
    measure: &mut dyn FnMut(&BTreeSet<String>) -> Result<f64, E>,
    progress: Progress,
) -> Result<Selection, E> {
    let n = candidates.len();
    let all: BTreeSet<String> = candidates.iter().cloned().collect();
    let mut planned = 1;
    progress(0, planned);
    let all_nmse = measure(&all)?;
    let mut done = 1;
    let mut sel = Selection {
        budget_nmse,
        all_quantized_nmse: all_nmse,
        per_layer: vec![],
        trials: vec![Trial { kept_float: 0, nmse: all_nmse }],
        kept_float: vec![],
        quantized: candidates.to_vec(),
        nmse: all_nmse,
    };
    if all_nmse <= budget_nmse || n == 0 {
        return Ok(sel);
    }
    planned += n;
    for name in candidates {
        progress(done, planned);
        let one: BTreeSet<String> = std::iter::once(name.clone()).collect();
        sel.per_layer.push((name.clone(), measure(&one)?));
        done += 1;
    }
    sel.per_layer.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let order: Vec<String> = sel.per_layer.iter().map(|(l, _)| l.clone()).collect();
    let quantized_with = |k: usize| -> BTreeSet<String> { order[k..].iter().cloned().collect() };

    // exponential search for a k that meets the budget, then bisection
    let (mut fail, mut ok) = (0usize, n); // nmse(fail) > budget; ok meets it (k = n: all float)
    let mut best = (n, 0.0);
    let mut k = 1;
    while k < n {
        planned += 1;
        progress(done, planned);
        let e = measure(&quantized_with(k))?;
        done += 1;
        sel.trials.push(Trial { kept_float: k, nmse: e });
        if e <= budget_nmse {
            ok = k;
            best = (k, e);
            break;
        }
        fail = k;
        k *= 2;
    }
    while ok - fail > 1 {
        let mid = fail + (ok - fail) / 2;
        planned += 1;
        progress(done, planned);
        let e = measure(&quantized_with(mid))?;
        done += 1;
        sel.trials.push(Trial { kept_float: mid, nmse: e });
        if e <= budget_nmse {
            ok = mid;
            best = (mid, e);
        } else {
            fail = mid;
        }
    }
    progress(done, done);
    if best.0 == n {
        sel.trials.push(Trial { kept_float: n, nmse: 0.0 });
    }
    sel.kept_float = order[..best.0].to_vec();
    let kept: BTreeSet<&String> = sel.kept_float.iter().collect();
    sel.quantized = candidates.iter().filter(|c| !kept.contains(c)).cloned().collect();
    sel.nmse = best.1;
    Ok(sel)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Additive error model: each quantised layer adds its own cost.
    fn additive<'a>(costs: &'a [(&'a str, f64)]) -> impl FnMut(&BTreeSet<String>) -> Result<f64, ()> + 'a {
        move |set| Ok(costs.iter().filter(|(n, _)| set.contains(*n)).map(|(_, c)| c).sum())
    }

    fn names(costs: &[(&str, f64)]) -> Vec<String> {
        costs.iter().map(|(n, _)| n.to_string()).collect()
    }

    #[test]
    fn keeps_everything_quantised_within_budget() {
        let costs = [("a", 1e-3), ("b", 2e-3)];
        let s = choose(&names(&costs), 1e-2, &mut additive(&costs), &mut |_, _| {})
            .unwrap_or_else(|_| unreachable!());
        assert!(s.kept_float.is_empty());
        assert_eq!(s.quantized, vec!["a", "b"]);
        assert_eq!(s.trials.len(), 1);
    }

    #[test]
    fn keeps_the_fewest_most_sensitive_layers() {
        let costs = [("a", 1e-3), ("b", 5e-2), ("c", 2e-3), ("d", 8e-3), ("e", 3e-2)];
        let s = choose(&names(&costs), 1e-2, &mut additive(&costs), &mut |_, _| {})
            .unwrap_or_else(|_| unreachable!());
        // total 9.1e-2; dropping b (5e-2) and e (3e-2) leaves 1.1e-2 > 1e-2; also d -> 3e-3
        assert_eq!(s.kept_float, vec!["b", "e", "d"]);
        assert_eq!(s.quantized, vec!["a", "c"]);
        assert!((s.nmse - 3e-3).abs() < 1e-12);
        assert!(s.nmse <= s.budget_nmse);
        assert_eq!(s.per_layer[0], ("b".to_string(), 5e-2));
    }

    #[test]
    fn falls_back_to_all_float() {
        let costs = [("a", 1.0), ("b", 1.0)];
        let s = choose(&names(&costs), 1e-2, &mut additive(&costs), &mut |_, _| {})
            .unwrap_or_else(|_| unreachable!());
        assert_eq!(s.kept_float.len(), 2);
        assert!(s.quantized.is_empty());
        assert_eq!(s.nmse, 0.0);
    }

    #[test]
    fn measurement_errors_propagate() {
        let r = choose(&["a".to_string()], 0.0, &mut |_| Err::<f64, &str>("boom"), &mut |_, _| {});
        assert_eq!(r.err(), Some("boom"));
    }
}
