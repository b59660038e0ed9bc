//! Logit-normal (`ln`) and plateau logit-normal (`pln`) timestep distributions.
//!
//! `ln`: logit t ~ N(μ', σ²) with μ' = μ + ln α, density f(t) = φ((logit t − μ')/σ) / (σ t (1 − t)).
//!
//! `pln`: f up to the mode t* of f, then the constant f(t*), divided by
//! Z = F(t*) + f(t*)(1 − t*) (F the `ln` cdf). Its cdf is F(t)/Z up to t* and linear after.
//!
//! The mode: with x = logit t, d/dt ln f = −h(x) / (σ² t (1 − t)) where
//! h(x) = x − μ' − σ² tanh(x/2). Every root lies in [μ' − σ², μ' + σ²]. For σ² ≤ 2, h is
//! increasing and has one root (the mode). For σ² > 2, h' < 0 on (−x_c, x_c),
//! x_c = 2 acosh(σ/√2), so h has up to three roots; those on the increasing branches are maxima
//! of f, the one in between a minimum. Each branch is monotone, so bisection finds its root to the
//! last bit; the maxima are then compared on ln f (ties to the smaller t, see `timesteps`).
//! Everything is computed in x so that t* near 0 or 1 keeps its precision.

use super::normal::{big_phi, inverse_big_phi, log_phi, log_t_one_minus_t, logit, phi, sigmoid};
use super::{check_alpha, check_mu, check_sigma, Distribution, Result};

/// Two maxima whose ln f differ by less than this (relative to 1 + |ln f|) count as a tie.
const TIE_TOLERANCE: f64 = 1e-12;

/// Logit-normal: logit t ~ N(μ + ln α, σ²).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogitNormal {
    /// μ' = μ + ln α.
    loc: f64,
    sigma: f64,
}

impl LogitNormal {
    /// Validates μ, σ, α; errors name the parameter.
    pub fn new(mu: f64, sigma: f64, alpha: f64) -> Result<Self> {
        let (mu, sigma, alpha) = (check_mu(mu)?, check_sigma(sigma)?, check_alpha(alpha)?);
        Ok(Self { loc: mu + libm::log(alpha), sigma })
    }

    /// The location after the shift, μ' = μ + ln α.
    pub fn loc(&self) -> f64 {
        self.loc
    }

    pub fn sigma(&self) -> f64 {
        self.sigma
    }

    /// The argmax t* of the density (see the module docs).
    pub fn mode(&self) -> f64 {
        sigmoid(mode_logit(self.loc, self.sigma))
    }

    /// ln f at t = σ(x), from x.
    fn log_pdf_logit(&self, x: f64) -> f64 {
        log_phi((x - self.loc) / self.sigma) - libm::log(self.sigma) - log_t_one_minus_t(x)
    }
}

impl Distribution for LogitNormal {
    fn pdf(&self, t: f64) -> f64 {
        if !(t > 0.0 && t < 1.0) {
            return if t.is_nan() { f64::NAN } else { 0.0 };
        }
        phi((logit(t) - self.loc) / self.sigma) / (self.sigma * t * (1.0 - t))
    }

    fn cdf(&self, t: f64) -> f64 {
        match t {
            t if t.is_nan() => f64::NAN,
            t if t <= 0.0 => 0.0,
            t if t >= 1.0 => 1.0,
            t => big_phi((logit(t) - self.loc) / self.sigma),
        }
    }

    /// σ(μ' + σ Φ⁻¹(u)).
    fn quantile(&self, u: f64) -> f64 {
        sigmoid(self.loc + self.sigma * inverse_big_phi(u))
    }
}

/// Plateau logit-normal: the logit-normal density up to its mode, flat after it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlateauLogitNormal {
    ln: LogitNormal,
    /// t* = σ(x*).
    mode: f64,
    /// f(t*), the (unnormalised) plateau height.
    peak: f64,
    /// F(t*), the `ln` mass before the mode.
    mass_before: f64,
    /// Z = F(t*) + f(t*)(1 − t*).
    norm: f64,
}

impl PlateauLogitNormal {
    /// Validates μ, σ, α, then solves for the mode and the normaliser.
    pub fn new(mu: f64, sigma: f64, alpha: f64) -> Result<Self> {
        let ln = LogitNormal::new(mu, sigma, alpha)?;
        let x = mode_logit(ln.loc, ln.sigma);
        let z = (x - ln.loc) / ln.sigma;
        let mass_before = big_phi(z);
        // f(t*) (1 − t*) = φ(z) / (σ t*), with t* = σ(x): no cancellation when t* rounds to 1.
        let peak = libm::exp(ln.log_pdf_logit(x));
        let plateau_mass = phi(z) / (ln.sigma * sigmoid(x));
        Ok(Self { ln, mode: sigmoid(x), peak, mass_before, norm: mass_before + plateau_mass })
    }

    /// t*, where the plateau starts.
    pub fn mode(&self) -> f64 {
        self.mode
    }

    /// Z = F(t*) + f(t*)(1 − t*), the integral of the unnormalised plateau density (≥ 1).
    pub fn normaliser(&self) -> f64 {
        self.norm
    }

    /// The underlying (shifted) logit-normal.
    pub fn logit_normal(&self) -> &LogitNormal {
        &self.ln
    }
}

impl Distribution for PlateauLogitNormal {
    fn pdf(&self, t: f64) -> f64 {
        match t {
            t if t.is_nan() => f64::NAN,
            t if t <= 0.0 || t >= 1.0 => 0.0,
            t if t <= self.mode => self.ln.pdf(t) / self.norm,
            _ => self.peak / self.norm,
        }
    }

    fn cdf(&self, t: f64) -> f64 {
        match t {
            t if t.is_nan() => f64::NAN,
            t if t <= 0.0 => 0.0,
            t if t >= 1.0 => 1.0,
            t if t <= self.mode => self.ln.cdf(t) / self.norm,
            t => ((self.mass_before + self.peak * (t - self.mode)) / self.norm).min(1.0),
        }
    }

    /// Inverse of the piecewise cdf: the `ln` quantile of u·Z below F(t*), linear above.
    fn quantile(&self, u: f64) -> f64 {
        let v = u * self.norm;
        if v <= self.mass_before {
            self.ln.quantile(v).min(self.mode)
        } else {
            (self.mode + (v - self.mass_before) / self.peak).clamp(self.mode, 1.0)
        }
    }
}

/// h(x) = x − μ' − σ² tanh(x/2); the density's stationary points are its roots.
fn stationarity(x: f64, loc: f64, sigma: f64) -> f64 {
    x - loc - sigma * sigma * libm::tanh(0.5 * x)
}

/// The root of an increasing `h` on [lo, hi] with h(lo) ≤ 0 ≤ h(hi), by bisection to the last bit.
fn bisect_increasing(h: impl Fn(f64) -> f64, mut lo: f64, mut hi: f64) -> f64 {
    loop {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            return if h(hi).abs() < h(lo).abs() { hi } else { lo };
        }
        if h(mid) < 0.0 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
}

/// x* = logit t*, the global maximum of the logit-normal density (smaller t on a tie).
fn mode_logit(loc: f64, sigma: f64) -> f64 {
    let s2 = sigma * sigma;
    let h = |x: f64| stationarity(x, loc, sigma);
    let (lo, hi) = (loc - s2, loc + s2);
    if s2 <= 2.0 {
        return bisect_increasing(h, lo, hi);
    }
    // Increasing on (−∞, −x_c] and [x_c, ∞), decreasing in between.
    let xc = 2.0 * libm::acosh(sigma * core::f64::consts::FRAC_1_SQRT_2);
    let left = (lo <= -xc && h(-xc) >= 0.0).then(|| bisect_increasing(h, lo, -xc));
    let right = (hi >= xc && h(xc) <= 0.0).then(|| bisect_increasing(h, xc, hi));
    let log_f = |x: f64| log_phi((x - loc) / sigma) - log_t_one_minus_t(x);
    match (left, right) {
        (Some(l), Some(r)) => {
            let (fl, fr) = (log_f(l), log_f(r));
            if fr - fl > TIE_TOLERANCE * (1.0 + fl.abs().max(fr.abs())) {
                r
            } else {
                l
            }
        }
        (Some(l), None) => l,
        (None, Some(r)) => r,
        // Unreachable in exact arithmetic (h has a root on an increasing branch); bisecting the
        // whole bracket still returns a stationary point.
        (None, None) => bisect_increasing(h, lo, hi),
    }
}
