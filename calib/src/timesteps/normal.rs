//! The standard normal density, cdf and inverse cdf, and the logistic pair `sigmoid` / `logit`,
//! all built on the pure-Rust `libm` crate (no hardware fast paths) so that every machine gets
//! bit-identical results.
//!
//! The inverse cdf starts from P. J. Acklam's rational approximation (relative error 1.15e-9,
//! <https://web.archive.org/web/20151030215612/http://home.online.no/~pjacklam/notes/invnorm/>)
//! and polishes it with Halley steps on `Φ(x) − p`, which brings it to a few ulp. The lower half
//! is computed directly and the upper half by symmetry, so tails keep their relative accuracy.

use core::f64::consts::{FRAC_1_SQRT_2, PI};

/// √(2π).
const SQRT_2PI: f64 = 2.506_628_274_631_000_5;

/// Standard normal density φ(z) = exp(−z²/2) / √(2π).
pub fn phi(z: f64) -> f64 {
    libm::exp(-0.5 * z * z) / SQRT_2PI
}

/// Standard normal cdf Φ(z) = erfc(−z/√2) / 2, accurate in relative terms for z ≪ 0.
pub fn big_phi(z: f64) -> f64 {
    0.5 * libm::erfc(-z * FRAC_1_SQRT_2)
}

/// Inverse standard normal cdf Φ⁻¹(p) for p in (0, 1); ±∞ at 0 and 1, NaN outside.
pub fn inverse_big_phi(p: f64) -> f64 {
    if p.is_nan() || !(0.0..=1.0).contains(&p) {
        return f64::NAN;
    }
    if p == 0.0 {
        return f64::NEG_INFINITY;
    }
    if p == 1.0 {
        return f64::INFINITY;
    }
    if p > 0.5 {
        // 1 − p is exact here (Sterbenz), and the lower half keeps full relative precision.
        return -lower_half(1.0 - p);
    }
    lower_half(p)
}

/// Φ⁻¹(p) for p in (0, 0.5]: Acklam's approximation plus two Halley steps.
fn lower_half(p: f64) -> f64 {
    let mut x = acklam(p);
    for _ in 0..2 {
        let e = big_phi(x) - p;
        let u = e * SQRT_2PI * libm::exp(0.5 * x * x); // e / φ(x)
        x -= u / (1.0 + 0.5 * x * u);
    }
    x
}

/// Acklam's rational approximation of Φ⁻¹(p), p in (0, 0.5].
fn acklam(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e+01,
        2.209460984245205e+02,
        -2.759285104469687e+02,
        1.38357751867269e+02,
        -3.066479806614716e+01,
        2.506628277459239e+00,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e+01,
        1.615858368580409e+02,
        -1.556989798598866e+02,
        6.680131188771972e+01,
        -1.328068155288572e+01,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-03,
        -3.223964580411365e-01,
        -2.400758277161838e+00,
        -2.549732539343734e+00,
        4.374664141464968e+00,
        2.938163982698783e+00,
    ];
    const D: [f64; 4] =
        [7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00, 3.754408661907416e+00];
    const P_LOW: f64 = 0.02425;
    if p < P_LOW {
        let q = libm::sqrt(-2.0 * libm::log(p));
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// σ(x) = 1 / (1 + e^(−x)), evaluated without overflow on either side.
pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + libm::exp(-x))
    } else {
        let e = libm::exp(x);
        e / (1.0 + e)
    }
}

/// logit(t) = ln t − ln(1 − t).
pub fn logit(t: f64) -> f64 {
    libm::log(t) - libm::log1p(-t)
}

/// ln(t (1 − t)) at t = σ(x), from x directly: −|x| − 2 ln(1 + e^(−|x|)). Exact where t or 1 − t
/// would underflow or round to 1.
pub fn log_t_one_minus_t(x: f64) -> f64 {
    let a = libm::fabs(x);
    -a - 2.0 * libm::log1p(libm::exp(-a))
}

/// ln φ(z) = −z²/2 − ln √(2π).
pub fn log_phi(z: f64) -> f64 {
    -0.5 * z * z - 0.5 * libm::log(2.0 * PI)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_round_trips_across_the_range() {
        for &p in &[1e-300, 1e-20, 1e-9, 1e-3, 0.02425, 0.1, 0.3, 0.5, 0.7, 0.97575, 0.999, 1.0 - 1e-12] {
            let x = inverse_big_phi(p);
            let back = big_phi(x);
            // Φ's relative condition number is about x², so x itself can only be that good.
            let tol = (4.0 * x * x * f64::EPSILON).max(1e-14);
            assert!(((back - p) / p).abs() < tol, "p={p}: relative error {}", (back - p) / p);
        }
        assert_eq!(inverse_big_phi(0.5), 0.0);
        assert!(inverse_big_phi(-0.1).is_nan() && inverse_big_phi(1.5).is_nan());
    }

    #[test]
    fn known_quantiles() {
        // Φ⁻¹(0.975) = 1.959963984540054 (Abramowitz & Stegun table 26.5 / any statistics text).
        assert!((inverse_big_phi(0.975) - 1.959_963_984_540_054).abs() < 1e-14);
        assert!((inverse_big_phi(0.025) + 1.959_963_984_540_054).abs() < 1e-14);
        assert!((big_phi(1.0) - 0.841_344_746_068_542_9).abs() < 1e-15);
    }

    #[test]
    fn logistic_pair_is_consistent() {
        for &x in &[-800.0, -40.0, -3.0, -1e-9, 0.0, 2.5, 35.0, 800.0] {
            let t = sigmoid(x);
            assert!((0.0..=1.0).contains(&t));
            if x.abs() < 30.0 {
                assert!((logit(t) - x).abs() < 1e-12 * (1.0 + x.abs()), "x={x}");
                assert!((log_t_one_minus_t(x) - (t * (1.0 - t)).ln()).abs() < 1e-12, "x={x}");
            }
        }
    }
}
