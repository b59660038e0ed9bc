//! The α-shifted flow-matching schedule and the Euler step (design doc §6.3, §6.5).
//!
//! A noise level `t` at a higher resolution destroys less of the image (neighbouring tokens are
//! correlated), so samplers move the grid towards more noise by a factor α:
//!
//! ```text
//! σ = α·t / (1 + (α−1)·t)        ⇔        logit(σ) = logit(t) + ln α
//! ```
//!
//! [`Shift`] picks α:
//! * `Empirical` (default) is the FLUX.2 reference: α = e^μ with μ from [`empirical_mu`], which
//!   depends on the image token count and the step count and jumps down above 4300 tokens.
//! * `Resolution { base_tokens }` is the SD3 paper's rule α = √(m/n) for m image tokens against a
//!   base of n tokens at which the grid needs no shift ([`DEFAULT_BASE_TOKENS`]).
//! * `Fixed(α)` uses α as given.
//!
//! The numbers reproduce diffusers 0.42.1 bit for bit: `Flux2Pipeline.__call__` step 6
//! (`np.linspace(1, 1/N, N)`, `compute_empirical_mu`) and
//! `FlowMatchEulerDiscreteScheduler.set_timesteps` (grid cast to float32, exponential time shift
//! `e^μ / (e^μ + (1/t − 1))` evaluated in float32 numpy, a terminal 0 appended).
//! <https://github.com/huggingface/diffusers/blob/v0.42.1/src/diffusers/pipelines/flux2/pipeline_flux2.py>

use std::fmt;
use std::str::FromStr;

/// Errors of the sampler: each names the option or buffer at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScheduleError {
    #[error(
        "invalid shift '{value}': {why}; expected 'empirical', 'resolution', 'resolution:BASE_TOKENS' \
         (integer > 0) or 'fixed:ALPHA' (finite number > 0)"
    )]
    BadShift { value: String, why: String },
    #[error("{option} {value} is not a positive multiple of 16 (the reference pipeline would floor it to {floored})")]
    BadSize { option: &'static str, value: usize, floored: usize },
    #[error("steps must be at least 1, got 0")]
    ZeroSteps,
    #[error("image_seq_len must be at least 1, got 0")]
    ZeroTokens,
    #[error("euler_step: sample has {x} values but velocity has {v}")]
    LengthMismatch { x: usize, v: usize },
}

/// Token count at which `resolution` applies no shift: 64 tokens = 8×8 latent patches = 128×128 px.
///
/// With it α = √(m/64) = side/128 px for square images: α = 8 at 1024², close to the reference's
/// e^μ = 7.6 (50 steps) … 9.9 (4 steps) there, and then α grows like √m at larger sizes without the
/// reference's jump at 4300 tokens. (A base of 4096 = 1024² would give α = 1 there, i.e. no shift at
/// the resolution FLUX.2 is trained and distilled for.)
pub const DEFAULT_BASE_TOKENS: usize = 64;

/// How the base grid t is shifted: σ = α·t / (1 + (α−1)·t).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Shift {
    /// FLUX.2 reference: α = e^μ, μ = [`empirical_mu`]`(image_seq_len, steps)`.
    #[default]
    Empirical,
    /// α = √(image_seq_len / base_tokens).
    Resolution { base_tokens: usize },
    /// A fixed α > 0.
    Fixed(f64),
}

impl Shift {
    /// α and μ = ln α for `image_seq_len` noisy tokens and `steps` steps.
    pub fn alpha_mu(&self, image_seq_len: usize, steps: usize) -> (f64, f64) {
        match *self {
            Shift::Empirical => {
                let mu = empirical_mu(image_seq_len, steps);
                (libm::exp(mu), mu)
            }
            Shift::Resolution { base_tokens } => {
                let alpha = libm::sqrt(image_seq_len as f64 / base_tokens as f64);
                (alpha, libm::log(alpha))
            }
            Shift::Fixed(alpha) => (alpha, libm::log(alpha)),
        }
    }
}

impl FromStr for Shift {
    type Err = ScheduleError;

    /// Parses `empirical`, `resolution`, `resolution:BASE_TOKENS` or `fixed:ALPHA`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| ScheduleError::BadShift { value: s.to_string(), why: why.to_string() };
        let (kind, arg) = match s.split_once(':') {
            Some((k, a)) => (k, Some(a)),
            None => (s, None),
        };
        match (kind, arg) {
            ("empirical", None) => Ok(Shift::Empirical),
            ("empirical", Some(_)) => Err(bad("'empirical' takes no argument")),
            ("resolution", None) => Ok(Shift::Resolution { base_tokens: DEFAULT_BASE_TOKENS }),
            ("resolution", Some(a)) => match a.parse::<usize>() {
                Ok(n) if n > 0 => Ok(Shift::Resolution { base_tokens: n }),
                _ => Err(bad(&format!("base token count '{a}' is not an integer > 0"))),
            },
            ("fixed", Some(a)) => match a.parse::<f64>() {
                Ok(alpha) if alpha.is_finite() && alpha > 0.0 => Ok(Shift::Fixed(alpha)),
                _ => Err(bad(&format!("alpha '{a}' is not a finite number > 0"))),
            },
            ("fixed", None) => Err(bad("'fixed' needs a value, e.g. 'fixed:3.0'")),
            _ => Err(bad(&format!("unknown kind '{kind}'"))),
        }
    }
}

impl fmt::Display for Shift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shift::Empirical => write!(f, "empirical"),
            Shift::Resolution { base_tokens } => write!(f, "resolution:{base_tokens}"),
            Shift::Fixed(alpha) => write!(f, "fixed:{alpha}"),
        }
    }
}

/// FLUX.2's empirical μ (diffusers `compute_empirical_mu`, same operation order, float64).
///
/// Above 4300 tokens μ = a2·S + b2; otherwise μ is the line in `steps` through (10, a1·S + b1) and
/// (200, a2·S + b2), extrapolated outside [10, 200].
pub fn empirical_mu(image_seq_len: usize, steps: usize) -> f64 {
    let (a1, b1) = (8.73809524e-05, 1.89833333);
    let (a2, b2) = (0.00016927, 0.45666666);
    let s = image_seq_len as f64;
    if image_seq_len > 4300 {
        return a2 * s + b2;
    }
    let m_200 = a2 * s + b2;
    let m_10 = a1 * s + b1;
    let a = (m_200 - m_10) / 190.0;
    let b = m_200 - 200.0 * a;
    a * steps as f64 + b
}

/// The latent token grid `[H/16, W/16]` as the pipeline floors it (`2·(H // 16) // 2`).
pub fn latent_grid(width: usize, height: usize) -> [usize; 2] {
    [height / 16, width / 16]
}

/// Number of noisy image tokens for a `width`×`height` image; both must be positive multiples of 16.
pub fn image_seq_len(width: usize, height: usize) -> Result<usize, ScheduleError> {
    for (option, value) in [("width", width), ("height", height)] {
        if value == 0 || !value.is_multiple_of(16) {
            return Err(ScheduleError::BadSize { option, value, floored: value / 16 * 16 });
        }
    }
    let [h, w] = latent_grid(width, height);
    Ok(h * w)
}

/// The unshifted grid t_i, i = 0..N−1: numpy `linspace(1.0, 1/N, N)` in float64, cast to float32.
pub fn base_grid(steps: usize) -> Vec<f32> {
    let (start, stop) = (1.0f64, 1.0 / steps as f64);
    let step = if steps > 1 { (stop - start) / (steps - 1) as f64 } else { 0.0 };
    (0..steps)
        .map(|i| if i + 1 == steps && steps > 1 { stop } else { i as f64 * step + start } as f32)
        .collect()
}

/// σ = α / (α + (1/t − 1)) in float32, as `FlowMatchEulerDiscreteScheduler._time_shift_exponential`
/// evaluates it on a float32 array (α = e^μ rounded to float32 first). Equals α·t / (1 + (α−1)·t).
pub fn shift_sigma(t: f32, alpha: f64) -> f32 {
    let a = alpha as f32;
    a / (a + (1.0 / t - 1.0))
}

/// A sampling schedule: N+1 noise levels from σ_0 = 1 down to σ_N = 0.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// Noisy image tokens the shift was computed for.
    pub image_seq_len: usize,
    /// ln α (for `Empirical`, the reference's μ itself).
    pub mu: f64,
    /// The shift factor α.
    pub alpha: f64,
    /// N+1 float32 noise levels ending in 0.
    pub sigmas: Vec<f32>,
}

impl Schedule {
    /// The schedule for a `width`×`height` image (positive multiples of 16) and `steps` steps.
    ///
    /// ```
    /// use flux2_runtime::schedule::{Schedule, Shift};
    /// let s = Schedule::new(1024, 1024, 4, Shift::Empirical).unwrap();
    /// assert_eq!(s.image_seq_len, 4096);
    /// assert_eq!(s.sigmas.len(), 5);
    /// assert_eq!((s.sigmas[0], s.sigmas[4]), (1.0, 0.0));
    /// assert!((s.sigmas[1] - 0.967384).abs() < 1e-6);
    /// ```
    pub fn new(width: usize, height: usize, steps: usize, shift: Shift) -> Result<Self, ScheduleError> {
        Self::for_tokens(image_seq_len(width, height)?, steps, shift)
    }

    /// The schedule for `image_seq_len` noisy tokens (reference-image tokens not counted).
    pub fn for_tokens(image_seq_len: usize, steps: usize, shift: Shift) -> Result<Self, ScheduleError> {
        if steps == 0 {
            return Err(ScheduleError::ZeroSteps);
        }
        if image_seq_len == 0 {
            return Err(ScheduleError::ZeroTokens);
        }
        let (alpha, mu) = shift.alpha_mu(image_seq_len, steps);
        let mut sigmas: Vec<f32> = base_grid(steps).into_iter().map(|t| shift_sigma(t, alpha)).collect();
        sigmas.push(0.0);
        Ok(Schedule { image_seq_len, mu, alpha, sigmas })
    }

    /// Number of model calls N.
    pub fn steps(&self) -> usize {
        self.sigmas.len() - 1
    }

    /// diffusers `scheduler.timesteps`: σ_i·1000 in float32, i = 0..N−1. A float32 run feeds the
    /// model `timesteps[i] / 1000`.
    pub fn timesteps(&self) -> Vec<f32> {
        self.sigmas[..self.steps()].iter().map(|s| s * 1000.0).collect()
    }
}

/// One Euler step of the rectified flow, x ← x + (σ_next − σ)·v, in float32 like the fp32
/// reference (`dt = sigma_next - sigma` in float32, then `sample + dt * model_output`).
///
/// ```
/// use flux2_runtime::schedule::euler_step;
/// let mut x = vec![1.0f32, -2.0];
/// euler_step(&mut x, &[0.5, 1.0], 1.0, 0.75).unwrap();
/// assert_eq!(x, vec![0.875, -2.25]);
/// ```
pub fn euler_step(x: &mut [f32], v: &[f32], sigma: f32, sigma_next: f32) -> Result<(), ScheduleError> {
    if x.len() != v.len() {
        return Err(ScheduleError::LengthMismatch { x: x.len(), v: v.len() });
    }
    let dt = sigma_next - sigma;
    for (xi, vi) in x.iter_mut().zip(v) {
        *xi += dt * vi;
    }
    Ok(())
}
