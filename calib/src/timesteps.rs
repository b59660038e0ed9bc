//! Timestep distributions for training-style calibration: which σ ∈ (0, 1) a calibration batch
//! is drawn at. Three families, each with its pdf, cdf, inverse cdf and seeded sampling:
//!
//! * `ts`, shifted uniform: u ~ U(0, 1), t = s(α, u); density α / (α + (1 − α) t)².
//! * `ln`, logit-normal: logit t ~ N(μ + ln α, σ²) (SD3, Esser et al. 2024, §3.1).
//! * `pln`, plateau logit-normal: the `ln` density up to its mode t*, constant at its peak value
//!   after it, renormalised. Weights the noisy end (large t) more than `ln` does.
//!
//! The α-shift is s(α, u) = α u / (1 + (α − 1) u), i.e. logit s = logit u + ln α: the same map
//! FLUX.2 applies to its sampling schedule with α = e^μ (flux2-arch.md §6.3). Shifting a
//! logit-normal by α therefore only moves its location, μ' = μ + ln α.
//!
//! **The `pln` mode under a shift.** t* is the argmax of the *shifted* `ln` density (location μ'),
//! not s(α, ·) of the unshifted argmax: a density picks up a Jacobian under a change of variable,
//! so the two differ. For σ² > 2 the logit-normal can be bimodal; t* is then the global maximum,
//! and an exact tie (μ' = 0 gives two equal peaks) goes to the smaller t, so the plateau covers the
//! whole stretch beyond the first peak.
//!
//! Sampling draws one uniform per sample from a fixed xoshiro256++ stream and maps it through the
//! inverse cdf; all math goes through the pure-Rust `libm`, so a seed gives bit-identical samples
//! on every machine.

mod logit_normal;
mod normal;
mod rng;
#[cfg(test)]
mod tests;

pub use logit_normal::{LogitNormal, PlateauLogitNormal};
pub use normal::{big_phi as normal_cdf, inverse_big_phi as normal_quantile};
pub use rng::Rng;

/// Errors from building a distribution or sampling it; each names the offending parameter.
#[derive(Debug, thiserror::Error)]
pub enum TimestepError {
    #[error("timestep parameter `{name}` must be {requirement}, got {value}")]
    InvalidParameter { name: &'static str, requirement: &'static str, value: f64 },
    #[error("timestep parameter `samples` must be at least 1, got 0")]
    NoSamples,
}

impl TimestepError {
    /// The name of the parameter at fault (`alpha`, `mu`, `sigma`, `samples`).
    pub fn parameter(&self) -> &'static str {
        match self {
            Self::InvalidParameter { name, .. } => name,
            Self::NoSamples => "samples",
        }
    }
}

pub type Result<T> = std::result::Result<T, TimestepError>;

/// A distribution of timesteps on (0, 1).
pub trait Distribution {
    /// Density at t; 0 outside (0, 1).
    fn pdf(&self, t: f64) -> f64;
    /// P(T ≤ t); 0 below 0 and 1 above 1.
    fn cdf(&self, t: f64) -> f64;
    /// Inverse cdf at u ∈ (0, 1).
    fn quantile(&self, u: f64) -> f64;

    /// `n` samples from the seeded stream: sample i is `quantile(u_i)` with u_i the i-th
    /// `Rng::new(seed).open01()` draw. Errors when `n` is 0.
    fn sample(&self, n: usize, seed: u64) -> Result<Vec<f64>> {
        if n == 0 {
            return Err(TimestepError::NoSamples);
        }
        let mut rng = Rng::new(seed);
        Ok((0..n).map(|_| self.quantile(rng.open01())).collect())
    }
}

/// The α-shift s(α, u) = α u / (1 + (α − 1) u); logit s(α, u) = logit u + ln α.
///
/// ```
/// use flux2_calib::timesteps::shift;
/// assert_eq!(shift(3.0, 0.5), 0.75);
/// assert_eq!(shift(1.0, 0.3), 0.3);
/// ```
pub fn shift(alpha: f64, u: f64) -> f64 {
    alpha * u / (1.0 + (alpha - 1.0) * u)
}

/// Which family to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Shifted uniform.
    Ts,
    /// Logit-normal.
    Ln,
    /// Plateau logit-normal.
    Pln,
}

/// Parameters shared by the families; `ts` reads only `alpha`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// Shift α > 0 (1 = no shift).
    pub alpha: f64,
    /// Location μ of logit t before the shift.
    pub mu: f64,
    /// Scale σ > 0 of logit t.
    pub sigma: f64,
}

impl Default for Params {
    fn default() -> Self {
        Self { alpha: 1.0, mu: 0.0, sigma: 1.0 }
    }
}

/// Bounds that keep every intermediate (peak density, 1 − t*) inside f64; far beyond any useful
/// timestep distribution. With them the mode's logit stays within |μ + ln α| + σ² ≤ 615.
pub const ALPHA_RANGE: (f64, f64) = (1e-50, 1e50);
pub const MU_MAX: f64 = 100.0;
pub const SIGMA_MAX: f64 = 20.0;

pub(crate) fn check_alpha(alpha: f64) -> Result<f64> {
    if alpha.is_finite() && (ALPHA_RANGE.0..=ALPHA_RANGE.1).contains(&alpha) {
        Ok(alpha)
    } else {
        Err(TimestepError::InvalidParameter { name: "alpha", requirement: "in [1e-50, 1e50]", value: alpha })
    }
}

pub(crate) fn check_mu(mu: f64) -> Result<f64> {
    if mu.is_finite() && mu.abs() <= MU_MAX {
        Ok(mu)
    } else {
        Err(TimestepError::InvalidParameter { name: "mu", requirement: "in [-100, 100]", value: mu })
    }
}

pub(crate) fn check_sigma(sigma: f64) -> Result<f64> {
    if sigma.is_finite() && sigma > 0.0 && sigma <= SIGMA_MAX {
        Ok(sigma)
    } else {
        Err(TimestepError::InvalidParameter { name: "sigma", requirement: "in (0, 20]", value: sigma })
    }
}

/// Shifted uniform: t = s(α, u), u ~ U(0, 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShiftedUniform {
    alpha: f64,
}

impl ShiftedUniform {
    pub fn new(alpha: f64) -> Result<Self> {
        Ok(Self { alpha: check_alpha(alpha)? })
    }
}

impl Distribution for ShiftedUniform {
    /// α / (α + (1 − α) t)².
    fn pdf(&self, t: f64) -> f64 {
        if !(t > 0.0 && t < 1.0) {
            return if t.is_nan() { f64::NAN } else { 0.0 };
        }
        let d = self.alpha + (1.0 - self.alpha) * t;
        self.alpha / (d * d)
    }

    /// u = s(1/α, t) = t / (α + (1 − α) t).
    fn cdf(&self, t: f64) -> f64 {
        if t.is_nan() {
            return f64::NAN;
        }
        let t = t.clamp(0.0, 1.0);
        t / (self.alpha + (1.0 - self.alpha) * t)
    }

    fn quantile(&self, u: f64) -> f64 {
        shift(self.alpha, u)
    }
}

/// One of the three families, built from a [`Kind`] and [`Params`].
///
/// ```
/// use flux2_calib::timesteps::{Distribution, Kind, Params, TimestepDist};
/// let d = TimestepDist::new(Kind::Pln, Params { alpha: 3.0, mu: 0.0, sigma: 1.0 }).unwrap();
/// let t = d.sample(4, 0).unwrap();
/// assert_eq!(t, d.sample(4, 0).unwrap());
/// assert!(t.iter().all(|&t| t > 0.0 && t < 1.0));
/// assert!(TimestepDist::new(Kind::Ln, Params { sigma: 0.0, ..Params::default() }).is_err());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum TimestepDist {
    Ts(ShiftedUniform),
    Ln(LogitNormal),
    Pln(PlateauLogitNormal),
}

impl TimestepDist {
    /// Validates the parameters the family reads and builds it.
    pub fn new(kind: Kind, p: Params) -> Result<Self> {
        Ok(match kind {
            Kind::Ts => Self::Ts(ShiftedUniform::new(p.alpha)?),
            Kind::Ln => Self::Ln(LogitNormal::new(p.mu, p.sigma, p.alpha)?),
            Kind::Pln => Self::Pln(PlateauLogitNormal::new(p.mu, p.sigma, p.alpha)?),
        })
    }

    fn inner(&self) -> &dyn Distribution {
        match self {
            Self::Ts(d) => d,
            Self::Ln(d) => d,
            Self::Pln(d) => d,
        }
    }
}

impl Distribution for TimestepDist {
    fn pdf(&self, t: f64) -> f64 {
        self.inner().pdf(t)
    }
    fn cdf(&self, t: f64) -> f64 {
        self.inner().cdf(t)
    }
    fn quantile(&self, u: f64) -> f64 {
        self.inner().quantile(u)
    }
}
