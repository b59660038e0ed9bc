//! Timestep distributions (`flux2_calib::timesteps`) against independent references:
//!
//! * Kolmogorov–Smirnov: 20 000 seeded samples per setting (α ∈ {0.3, 1, 3, 7.5},
//!   μ ∈ {−1, 0, 0.8}, σ ∈ {0.5, 1, 1.6}, each family) against a cdf built *here* from the density
//!   formulas by Simpson's rule, with the pln mode found by a grid search and golden-section
//!   refinement. Nothing but the sampler is taken from the crate. Critical value at level 0.001.
//! * scipy: `fixtures/timesteps_ref.json` from `fixtures/gen_timesteps.py` (pdf, cdf, pln mode and
//!   normaliser, and the sampler's inverse-cdf map) at 1e-8.
//! * Seeded sampling is bit-identical.

use flux2_calib::timesteps::{Distribution, Kind, Params, PlateauLogitNormal, TimestepDist};
use flux2_tests::fixture;

const N: usize = 20_000;

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// ln of the density in t, straight from the formulas (pln before normalising).
fn log_density(kind: Kind, p: Params, mode: Option<f64>, t: f64) -> f64 {
    let loc = p.mu + p.alpha.ln();
    let ln = |t: f64| {
        let z = ((t / (1.0 - t)).ln() - loc) / p.sigma;
        -0.5 * z * z - (p.sigma * (2.0 * std::f64::consts::PI).sqrt() * t * (1.0 - t)).ln()
    };
    match kind {
        Kind::Ts => (p.alpha / (p.alpha + (1.0 - p.alpha) * t).powi(2)).ln(),
        Kind::Ln => ln(t),
        Kind::Pln => ln(t.min(mode.unwrap_or(1.0))),
    }
}

/// The ln mode: the best point of a 1e-3 grid in logit space (ties to the smaller t), refined by
/// golden-section search on the neighbouring cells.
fn ln_mode(p: Params) -> f64 {
    let f = |x: f64| log_density(Kind::Ln, p, None, sigmoid(x));
    let grid: Vec<f64> = (0..=80_000).map(|k| -40.0 + k as f64 * 1e-3).collect();
    let best = grid.iter().map(|&x| f(x)).fold(f64::NEG_INFINITY, f64::max);
    let x0 = grid.iter().copied().find(|&x| best - f(x) <= 1e-9 * (1.0 + best.abs())).unwrap();
    let (mut a, mut b) = (x0 - 1e-3, x0 + 1e-3);
    let r = (5f64.sqrt() - 1.0) / 2.0;
    for _ in 0..60 {
        let (c, d) = (b - r * (b - a), a + r * (b - a));
        if f(c) >= f(d) {
            b = d;
        } else {
            a = c;
        }
    }
    sigmoid(0.5 * (a + b))
}

/// A cdf tabulated by composite Simpson's rule in x = logit t (density · t(1 − t)) on [−40, 40],
/// step 1e-3, normalised by its own total; linear between the 2e-3 Simpson nodes.
struct Tabulated {
    cum: Vec<f64>,
}

const X0: f64 = -40.0;
const H: f64 = 1e-3;

impl Tabulated {
    fn new(kind: Kind, p: Params) -> Self {
        let mode = (kind == Kind::Pln).then(|| ln_mode(p));
        let g = |x: f64| {
            let t = sigmoid(x);
            if t <= 0.0 || t >= 1.0 {
                return 0.0;
            }
            (log_density(kind, p, mode, t) + (t * (1.0 - t)).ln()).exp()
        };
        let mut cum = vec![0.0];
        for k in 0..40_000 {
            let a = X0 + 2.0 * k as f64 * H;
            let piece = (g(a) + 4.0 * g(a + H) + g(a + 2.0 * H)) * H / 3.0;
            cum.push(cum[k] + piece);
        }
        let total = cum[cum.len() - 1];
        assert!((total - 1.0).abs() < 1e-3 || kind == Kind::Pln, "{kind:?} {p:?}: mass {total}");
        Self { cum: cum.into_iter().map(|c| c / total).collect() }
    }

    fn cdf(&self, t: f64) -> f64 {
        if t <= 0.0 {
            return 0.0;
        }
        if t >= 1.0 {
            return 1.0;
        }
        let s = ((t / (1.0 - t)).ln() - X0) / (2.0 * H);
        if s <= 0.0 {
            return 0.0;
        }
        let i = s.floor() as usize;
        if i + 1 >= self.cum.len() {
            return 1.0;
        }
        let w = s - i as f64;
        self.cum[i] * (1.0 - w) + self.cum[i + 1] * w
    }
}

/// The two-sided KS statistic of `samples` against `cdf`.
fn ks_statistic(mut samples: Vec<f64>, cdf: impl Fn(f64) -> f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    let n = samples.len() as f64;
    samples.iter().enumerate().fold(0.0, |d, (i, &t)| {
        let f = cdf(t);
        d.max((i as f64 + 1.0) / n - f).max(f - i as f64 / n)
    })
}

fn settings() -> Vec<(Kind, Params)> {
    let mut out = Vec::new();
    for &alpha in &[0.3, 1.0, 3.0, 7.5] {
        out.push((Kind::Ts, Params { alpha, mu: 0.0, sigma: 1.0 }));
        for &mu in &[-1.0, 0.0, 0.8] {
            for &sigma in &[0.5, 1.0, 1.6] {
                out.push((Kind::Ln, Params { alpha, mu, sigma }));
                out.push((Kind::Pln, Params { alpha, mu, sigma }));
            }
        }
    }
    out
}

#[test]
fn samples_pass_kolmogorov_smirnov_against_independent_cdfs() {
    // Asymptotic critical value at level a: sqrt(−ln(a/2)/2)/√n.
    let critical = (-(0.001f64 / 2.0).ln() / 2.0).sqrt() / (N as f64).sqrt();
    let mut worst = (0.0, String::new());
    for (i, (kind, p)) in settings().into_iter().enumerate() {
        let dist = TimestepDist::new(kind, p).unwrap();
        let reference = Tabulated::new(kind, p);
        let d = ks_statistic(dist.sample(N, 1000 + i as u64).unwrap(), |t| reference.cdf(t));
        assert!(d < critical, "{kind:?} {p:?}: KS D = {d:.5} >= {critical:.5}");
        if d > worst.0 {
            worst = (d, format!("{kind:?} {p:?}"));
        }
    }
    eprintln!("largest KS D = {:.5} ({}), critical {critical:.5}", worst.0, worst.1);
}

#[test]
fn ks_detects_the_wrong_distribution() {
    // The same machinery must reject pln samples against the ln cdf and a mis-shifted ts.
    let critical = (-(0.001f64 / 2.0).ln() / 2.0).sqrt() / (N as f64).sqrt();
    let p = Params { alpha: 3.0, mu: 0.0, sigma: 1.0 };
    let pln = TimestepDist::new(Kind::Pln, p).unwrap().sample(N, 5).unwrap();
    let ln = Tabulated::new(Kind::Ln, p);
    assert!(ks_statistic(pln, |t| ln.cdf(t)) > critical);
    let ts = TimestepDist::new(Kind::Ts, Params { alpha: 3.3, ..p }).unwrap().sample(N, 5).unwrap();
    let ts_ref = Tabulated::new(Kind::Ts, p);
    assert!(ks_statistic(ts, |t| ts_ref.cdf(t)) > critical);
}

fn close(what: &str, got: f64, want: f64) {
    let tol = 1e-8 * want.abs() + 1e-13;
    assert!((got - want).abs() <= tol, "{what}: got {got:e}, scipy {want:e} (diff {:e})", got - want);
}

#[test]
fn matches_scipy_reference() {
    let text = std::fs::read_to_string(fixture("timesteps_ref.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 20);
    let num = |v: &serde_json::Value| v.as_f64().unwrap();
    let nums = |v: &serde_json::Value| v.as_array().unwrap().iter().map(num).collect::<Vec<_>>();
    for c in cases {
        let p = Params { alpha: num(&c["alpha"]), mu: num(&c["mu"]), sigma: num(&c["sigma"]) };
        let kind = match c["dist"].as_str().unwrap() {
            "ts" => Kind::Ts,
            "ln" => Kind::Ln,
            _ => Kind::Pln,
        };
        let name = format!("{kind:?} {p:?}");
        let dist = TimestepDist::new(kind, p).unwrap();
        for ((t, pdf), cdf) in nums(&c["t"]).into_iter().zip(nums(&c["pdf"])).zip(nums(&c["cdf"])) {
            close(&format!("{name} pdf({t})"), dist.pdf(t), pdf);
            close(&format!("{name} cdf({t})"), dist.cdf(t), cdf);
        }
        let samples = nums(&c["samples"]);
        let seed = c["seed"].as_u64().unwrap();
        for (i, (got, want)) in dist.sample(samples.len(), seed).unwrap().into_iter().zip(samples).enumerate()
        {
            close(&format!("{name} sample {i} (seed {seed})"), got, want);
        }
        if kind != Kind::Ts {
            let pln = PlateauLogitNormal::new(p.mu, p.sigma, p.alpha).unwrap();
            close(&format!("{name} mode"), pln.mode(), num(&c["mode"]));
            close(&format!("{name} ln mode"), pln.logit_normal().mode(), num(&c["mode"]));
            if kind == Kind::Pln {
                close(&format!("{name} normaliser"), pln.normaliser(), num(&c["normaliser"]));
            }
        }
    }
}

#[test]
fn seeded_sampling_is_bit_identical() {
    for (kind, p) in settings() {
        let a = TimestepDist::new(kind, p).unwrap().sample(4096, 7).unwrap();
        let b = TimestepDist::new(kind, p).unwrap().sample(4096, 7).unwrap();
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a), bits(&b), "{kind:?} {p:?}");
        // A prefix of a longer run is the shorter run: sample i depends only on (seed, i).
        let c = TimestepDist::new(kind, p).unwrap().sample(100, 7).unwrap();
        assert_eq!(bits(&a[..100]), bits(&c));
    }
}
