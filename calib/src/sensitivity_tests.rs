use std::cell::Cell;

use super::*;

/// Additive error model: each quantised layer adds its own cost.
fn additive<'a>(costs: &'a [(&'a str, f64)]) -> impl FnMut(&BTreeSet<String>) -> Result<f64, ()> + 'a {
    move |set| Ok(costs.iter().filter(|(n, _)| set.contains(*n)).map(|(_, c)| c).sum())
}

fn names(costs: &[(&str, f64)]) -> Vec<String> {
    costs.iter().map(|(n, _)| n.to_string()).collect()
}

fn ok<T>(r: Result<T, ()>) -> T {
    r.unwrap_or_else(|_| unreachable!())
}

#[test]
fn groups_are_numbered_blocks() {
    assert_eq!(group_of("model.layers.12.mlp.up_proj"), "model.layers.12");
    assert_eq!(group_of("decoder.up_blocks.1.resnets.0.conv1"), "decoder.up_blocks.1");
    assert_eq!(group_of("single_transformer_blocks.3.attn.to_out"), "single_transformer_blocks.3");
    assert_eq!(group_of("post_quant_conv"), "post_quant_conv");
    assert_eq!(group_of("decoder.conv_in"), "decoder.conv_in");
    assert_eq!(group_of("a..7.b"), "a..7");
}

#[test]
fn keeps_everything_quantised_within_budget() {
    let costs = [("a", 1e-3), ("b", 2e-3)];
    let s = ok(choose(&names(&costs), 1e-2, &mut additive(&costs), &mut |_, _| {}));
    assert!(s.kept_float.is_empty());
    assert_eq!(s.quantized, vec!["a", "b"]);
    assert_eq!(s.trials.len(), 1);
}

#[test]
fn keeps_the_fewest_most_sensitive_layers() {
    let costs = [("a", 1e-3), ("b", 5e-2), ("c", 2e-3), ("d", 8e-3), ("e", 3e-2)];
    let s = ok(choose(&names(&costs), 1e-2, &mut additive(&costs), &mut |_, _| {}));
    // total 9.1e-2; dropping b (5e-2) and e (3e-2) leaves 1.1e-2 > 1e-2; also d -> 3e-3
    assert_eq!(s.kept_float, vec!["b", "e", "d"]);
    assert_eq!(s.quantized, vec!["a", "c"]);
    assert!((s.nmse - 3e-3).abs() < 1e-12);
    assert!(s.nmse <= s.budget_nmse);
    assert_eq!(s.per_layer[0], ("b".to_string(), 5e-2));
    assert!(s.per_group.is_empty(), "single layers are not grouped");
}

/// 12 blocks of 7 layers; two layers in two blocks carry most of the error.
fn encoder_like() -> Vec<(String, f64)> {
    let kinds = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
    let mut v = vec![];
    for b in 0..12 {
        for (i, k) in kinds.iter().enumerate() {
            let cost = match (b, *k) {
                (2, "v_proj") => 4e-3,
                (0, "down_proj") => 3e-3,
                _ => 1e-5 * (1 + (b * 7 + i) % 5) as f64,
            };
            v.push((format!("model.layers.{b}.{k}"), cost));
        }
    }
    v
}

#[test]
fn grouped_search_finds_the_layers_with_few_measurements() {
    let costs = encoder_like();
    let refs: Vec<(&str, f64)> = costs.iter().map(|(n, c)| (n.as_str(), *c)).collect();
    let count = Cell::new(0);
    let mut inner = additive(&refs);
    let mut measure = |s: &BTreeSet<String>| {
        count.set(count.get() + 1);
        inner(s)
    };
    let total: f64 = refs.iter().map(|r| r.1).sum();
    let budget = total - 6e-3; // both heavy layers must stay float
    let s = ok(choose(&names(&refs), budget, &mut measure, &mut |_, _| {}));
    let mut kept = s.kept_float.clone();
    kept.sort();
    assert_eq!(kept, vec!["model.layers.0.down_proj", "model.layers.2.v_proj"]);
    assert!(s.nmse <= budget);
    assert_eq!(s.per_group.len(), 12);
    assert_eq!(s.per_layer.len(), 14, "refinement ranks only the layers of the two kept blocks");
    assert!(count.get() < 40, "{} measurements for 84 layers", count.get());
    assert_eq!(s.measurements, count.get());
    assert_eq!(s.quantized.len(), 82);
}

#[test]
fn the_chosen_configuration_was_measured_and_meets_the_budget() {
    // non-additive: layers interact, so the marginal ranking is only a guide
    let costs = encoder_like();
    let seen = std::cell::RefCell::new(Vec::<(BTreeSet<String>, f64)>::new());
    let mut measure = |s: &BTreeSet<String>| -> Result<f64, ()> {
        let sum: f64 = costs.iter().filter(|(n, _)| s.contains(n)).map(|(_, c)| c).sum();
        let e = sum + 50.0 * sum * sum;
        seen.borrow_mut().push((s.clone(), e));
        Ok(e)
    };
    let s = ok(choose(
        &costs.iter().map(|c| c.0.clone()).collect::<Vec<_>>(),
        2e-3,
        &mut measure,
        &mut |_, _| {},
    ));
    let q: BTreeSet<String> = s.quantized.iter().cloned().collect();
    assert!(s.nmse <= 2e-3);
    if !q.is_empty() {
        assert!(seen.borrow().iter().any(|(set, e)| *set == q && *e == s.nmse), "choice not measured");
    }
}

#[test]
fn progress_ends_complete() {
    let costs = encoder_like();
    let refs: Vec<(&str, f64)> = costs.iter().map(|(n, c)| (n.as_str(), *c)).collect();
    let mut last = (0, 0);
    let _ = ok(choose(&names(&refs), 1e-3, &mut additive(&refs), &mut |d, t| {
        assert!(d <= t, "{d} of {t}");
        last = (d, t);
    }));
    assert_eq!(last.0, last.1);
    assert!(last.0 > 1);
}

#[test]
fn falls_back_to_all_float() {
    let costs = [("a", 1.0), ("b", 1.0)];
    let s = ok(choose(&names(&costs), 1e-2, &mut additive(&costs), &mut |_, _| {}));
    assert_eq!(s.kept_float.len(), 2);
    assert!(s.quantized.is_empty());
    assert_eq!(s.nmse, 0.0);
}

#[test]
fn measurement_errors_propagate() {
    let r = choose(&["a".to_string()], 0.0, &mut |_| Err::<f64, &str>("boom"), &mut |_, _| {});
    assert_eq!(r.err(), Some("boom"));
}

#[test]
fn smallest_k_doubles_then_bisects() {
    let mut trials = vec![];
    let r = smallest_k(10, 0.5, 0.0, &mut |k| Ok::<f64, ()>(if k >= 5 { 0.1 } else { 1.0 }), &mut trials);
    assert_eq!(ok(r), (5, 0.1));
    let ks: Vec<usize> = trials.iter().map(|t| t.0).collect();
    assert_eq!(ks, vec![1, 2, 4, 8, 6, 5]);
}

#[test]
fn score_is_added_error_per_unit_of_time_saved() {
    assert_eq!(score(3e-3, 1e-3, 4.0), 5e-4);
    assert_eq!(score(1e-3, 2e-3, 4.0), 0.0, "no added error, last");
    assert_eq!(score(1e-3, 0.0, 0.0), f64::INFINITY, "error for no saving, first");
    assert_eq!(score(0.0, 0.0, 0.0), 0.0);
}

/// A VAE-decoder-like case: four cheap low-resolution convolutions with high error per MAC and
/// two expensive full-resolution ones with moderate error. By error alone the two expensive ones
/// stay float; by error per time saved the cheap ones do, the budget holds, and far more of the
/// work is quantised.
#[test]
fn cost_aware_ranking_quantises_the_expensive_layers_within_budget() {
    let errors =
        [("lo0", 3e-3), ("lo1", 3e-3), ("lo2", 2.5e-3), ("lo3", 2.5e-3), ("hi0", 4e-3), ("hi1", 4e-3)];
    let saved: BTreeMap<String, f64> =
        [("lo0", 1.0), ("lo1", 1.0), ("lo2", 1.0), ("lo3", 1.0), ("hi0", 16.0), ("hi1", 16.0)]
            .into_iter()
            .map(|(n, c)| (n.to_string(), c))
            .collect();
    let budget = 1.2e-2; // all quantised: 1.9e-2
    let plain = ok(choose(&names(&errors), budget, &mut additive(&errors), &mut |_, _| {}));
    assert_eq!(plain.kept_float, vec!["hi0", "hi1"], "error alone keeps the expensive ones");
    let w = ok(choose_weighted(&names(&errors), budget, &saved, &mut additive(&errors), &mut |_, _| {}));
    assert!(w.nmse <= budget, "{w:?}");
    assert!(!w.kept_float.iter().any(|l| l.starts_with("hi")), "{:?}", w.kept_float);
    let saved_of = |q: &[String]| q.iter().map(|l| saved[l]).sum::<f64>();
    assert!(
        saved_of(&w.quantized) > saved_of(&plain.quantized),
        "{:?} vs {:?}",
        w.quantized,
        plain.quantized
    );
    // the ranking puts the most error per unit of saving first
    assert_eq!(w.per_layer[0].0, "lo0");
    let share: f64 = ["lo0", "lo1", "lo2", "lo3", "hi0", "hi1"].iter().map(|l| w.saved_share[*l]).sum();
    assert!((share - 1.0).abs() < 1e-12);
    assert!((w.saved_share["hi0"] - 16.0 / 36.0).abs() < 1e-12);
}

/// Equal savings give the error-only choice; every returned configuration meets the budget,
/// also with blocks and random-ish errors and costs.
#[test]
fn weighted_search_with_equal_costs_is_the_error_only_search_and_budget_holds() {
    let mut errors: Vec<(String, f64)> = Vec::new();
    for b in 0..6 {
        for l in 0..5 {
            let e = 1e-4 * (((b * 7 + l * 13) % 11) as f64 + 1.0) * if (b, l) == (2, 3) { 40.0 } else { 1.0 };
            errors.push((format!("blocks.{b}.l{l}"), e));
        }
    }
    let refs: Vec<(&str, f64)> = errors.iter().map(|(n, e)| (n.as_str(), *e)).collect();
    let equal: BTreeMap<String, f64> = errors.iter().map(|(n, _)| (n.clone(), 2.5)).collect();
    let a = ok(choose(&names(&refs), 5e-3, &mut additive(&refs), &mut |_, _| {}));
    let b = ok(choose_weighted(&names(&refs), 5e-3, &equal, &mut additive(&refs), &mut |_, _| {}));
    assert_eq!(a.kept_float, b.kept_float);
    for budget in [2e-3, 5e-3, 1e-2] {
        let costs: BTreeMap<String, f64> =
            errors.iter().enumerate().map(|(i, (n, _))| (n.clone(), 1.0 + ((i * 5) % 9) as f64)).collect();
        let s = ok(choose_weighted(&names(&refs), budget, &costs, &mut additive(&refs), &mut |_, _| {}));
        let total: f64 =
            refs.iter().filter(|(n, _)| s.quantized.iter().any(|q| q == n)).map(|(_, e)| e).sum();
        assert!(s.nmse <= budget && (total - s.nmse).abs() < 1e-12, "budget {budget}: {s:?}");
    }
}
