//! Unit tests of the timestep distributions: normalisation by quadrature, cdf/pdf/quantile
//! consistency, the pln mode and plateau, validation.

use super::normal::{logit, sigmoid};
use super::*;

/// Every family at a spread of parameters, including bimodal (σ² > 2) and shifted cases.
fn cases() -> Vec<(Kind, Params)> {
    let mut out = Vec::new();
    for &alpha in &[0.3, 1.0, 3.0, 7.5] {
        out.push((Kind::Ts, Params { alpha, ..Params::default() }));
        for &mu in &[-1.0, 0.0, 0.8] {
            for &sigma in &[0.5, 1.0, 1.6] {
                out.push((Kind::Ln, Params { alpha, mu, sigma }));
                out.push((Kind::Pln, Params { alpha, mu, sigma }));
            }
        }
    }
    out
}

/// Composite Simpson's rule of `f` on [a, b] with `n` (even) intervals.
fn simpson(f: impl Fn(f64) -> f64, a: f64, b: f64, n: usize) -> f64 {
    let h = (b - a) / n as f64;
    let inner: f64 = (1..n).map(|i| f(a + i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 }).sum();
    (f(a) + f(b) + inner) * h / 3.0
}

/// ∫₀ᵗ pdf, substituting t = σ(x) (dt = t(1 − t) dx) so that the sharp peaks near 0 and 1 become
/// smooth, and splitting at the pln mode where the density has a kink.
fn integral_to(d: &TimestepDist, t: f64) -> f64 {
    let g = |x: f64| {
        let s = sigmoid(x);
        d.pdf(s) * s * (1.0 - s)
    };
    let (lo, hi) = (-60.0, if t >= 1.0 { 60.0 } else { logit(t) });
    let kink = match d {
        TimestepDist::Pln(p) => Some(logit(p.mode())).filter(|&m| m < hi),
        _ => None,
    };
    match kink {
        Some(m) => simpson(g, lo, m, 40_000) + simpson(g, m, hi, 40_000),
        None => simpson(g, lo, hi, 40_000),
    }
}

#[test]
fn pdf_integrates_to_one() {
    for (kind, p) in cases() {
        let d = TimestepDist::new(kind, p).unwrap();
        let total = integral_to(&d, 1.0);
        assert!((total - 1.0).abs() < 1e-9, "{kind:?} {p:?}: ∫pdf = {total}");
    }
}

#[test]
fn cdf_is_the_integral_of_pdf_and_quantile_inverts_it() {
    for (kind, p) in cases() {
        let d = TimestepDist::new(kind, p).unwrap();
        for &t in &[0.01, 0.2, 0.5, 0.77, 0.99] {
            let want = integral_to(&d, t);
            assert!((d.cdf(t) - want).abs() < 1e-9, "{kind:?} {p:?} t={t}: cdf {} vs ∫ {want}", d.cdf(t));
        }
        for &u in &[1e-6, 0.05, 0.3, 0.5, 0.81, 0.999] {
            let t = d.quantile(u);
            assert!((d.cdf(t) - u).abs() < 1e-12, "{kind:?} {p:?} u={u}: cdf(quantile) = {}", d.cdf(t));
        }
        assert_eq!((d.cdf(0.0), d.cdf(1.0), d.pdf(-0.5), d.pdf(1.5)), (0.0, 1.0, 0.0, 0.0));
    }
}

fn plns() -> Vec<PlateauLogitNormal> {
    cases()
        .into_iter()
        .filter(|c| c.0 == Kind::Pln)
        .map(|(_, p)| PlateauLogitNormal::new(p.mu, p.sigma, p.alpha).unwrap())
        .collect()
}

#[test]
fn pln_is_continuous_and_flat_after_the_mode() {
    for d in plns() {
        let m = d.mode();
        let (below, at, above) = (d.pdf(m * (1.0 - 1e-9)), d.pdf(m), d.pdf(m + 1e-9 * (1.0 - m)));
        assert!((below - at).abs() < 1e-7 * at && (above - at).abs() < 1e-12 * at, "{d:?}");
        assert_eq!(d.pdf(0.5 * (m + 1.0)), d.pdf(1.0 - 1e-9), "{d:?}: not flat");
        assert!(d.normaliser() >= 1.0, "{d:?}");
        // Z = F(t*) + f(t*)(1 − t*) with the unshifted-in-meaning ln density f.
        let ln = d.logit_normal();
        let z = ln.cdf(m) + ln.pdf(m) * (1.0 - m);
        assert!((d.normaliser() - z).abs() < 1e-13 * z, "{d:?}: Z {} vs {z}", d.normaliser());
    }
}

#[test]
fn mode_is_the_global_maximum_with_zero_slope() {
    for d in plns() {
        let ln = *d.logit_normal();
        let m = d.mode();
        // d/dt ln f, from the formula: −(logit t − μ')/(σ² t(1 − t)) − 1/t + 1/(1 − t).
        let s2 = ln.sigma() * ln.sigma();
        let slope = -(logit(m) - ln.loc()) / (s2 * m * (1.0 - m)) - 1.0 / m + 1.0 / (1.0 - m);
        let scale = 1.0 / (m * (1.0 - m));
        assert!(slope.abs() < 1e-9 * scale, "{ln:?}: slope {slope} at t* = {m}");
        let peak = ln.pdf(m);
        for i in 1..10_000 {
            let t = i as f64 / 10_000.0;
            assert!(ln.pdf(t) <= peak * (1.0 + 1e-12), "{ln:?}: pdf({t}) > pdf(t* = {m})");
        }
    }
}

#[test]
fn bimodal_tie_takes_the_smaller_mode() {
    // μ' = 0, σ² = 2.56 > 2: two equal peaks at ±x, x = σ² tanh(x/2).
    let d = PlateauLogitNormal::new(0.0, 1.6, 1.0).unwrap();
    assert!(d.mode() < 0.5, "mode {}", d.mode());
    let x = logit(d.mode());
    assert!((x - 2.56 * (0.5 * x).tanh()).abs() < 1e-12);
    // A small positive shift makes the right peak the global one.
    assert!(PlateauLogitNormal::new(0.01, 1.6, 1.0).unwrap().mode() > 0.5);
    // α shifts the mode of the shifted density, not the shifted mode: μ = −ln 3, α = 3 is μ' = 0.
    let shifted = LogitNormal::new(-(3.0f64.ln()), 1.0, 3.0).unwrap();
    assert!((shifted.mode() - 0.5).abs() < 1e-12);
}

#[test]
fn shift_is_a_logit_translation() {
    for &alpha in &[0.3, 1.0, 3.0, 7.5] {
        for &u in &[1e-6, 0.1, 0.5, 0.9] {
            let s = shift(alpha, u);
            assert!((logit(s) - logit(u) - alpha.ln()).abs() < 1e-12, "α={alpha} u={u}");
        }
    }
}

#[test]
fn validation_names_the_parameter() {
    let bad = [
        (Kind::Ln, Params { sigma: 0.0, ..Params::default() }, "sigma"),
        (Kind::Pln, Params { sigma: -1.0, ..Params::default() }, "sigma"),
        (Kind::Ln, Params { sigma: f64::NAN, ..Params::default() }, "sigma"),
        (Kind::Ts, Params { alpha: 0.0, ..Params::default() }, "alpha"),
        (Kind::Pln, Params { alpha: -2.0, ..Params::default() }, "alpha"),
        (Kind::Ln, Params { mu: f64::INFINITY, ..Params::default() }, "mu"),
    ];
    for (kind, p, name) in bad {
        let e = TimestepDist::new(kind, p).unwrap_err();
        assert_eq!(e.parameter(), name);
        assert!(e.to_string().contains(&format!("`{name}`")), "{e}");
    }
    let d = TimestepDist::new(Kind::Ts, Params::default()).unwrap();
    let e = d.sample(0, 0).unwrap_err();
    assert!(e.to_string().contains("samples"), "{e}");
}

#[test]
fn sampling_is_seeded() {
    for (kind, p) in cases() {
        let d = TimestepDist::new(kind, p).unwrap();
        let a = d.sample(257, 42).unwrap();
        let b = d.sample(257, 42).unwrap();
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
        assert_ne!(a, d.sample(257, 43).unwrap());
        assert!(a.iter().all(|&t| (0.0..=1.0).contains(&t)), "{kind:?} {p:?}");
    }
}
