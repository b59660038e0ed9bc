//! Error metrics of a quantised model against its float reference. All sums are f64 in a
//! fixed order.
//!
//! * NMSE = Σ(a − b)² / Σa² (llama.cpp `test-backend-ops`), cosine = a·b / (|a||b|).
//! * PSNR = 10·log10(peak² / MSE) for images with values in [0, peak], capped at [`PSNR_CAP`]
//!   (identical images) so it stays a finite JSON number.
//! * SSIM (Wang, Bovik, Sheikh & Simoncelli 2004, "Image quality assessment: from error
//!   visibility to structural similarity", eq. 13): an 11×11 Gaussian window with σ = 1.5,
//!   K1 = 0.01, K2 = 0.03, population (co)variances, evaluated at every position where the window
//!   fits inside the image, averaged over positions and then over channels. Smaller images use
//!   the largest odd window that fits.

/// PSNR reported for identical images.
pub const PSNR_CAP: f64 = 100.0;

/// PSNR of an image against itself after 8-bit output rounding (uniform error of ±½ level):
/// 10·log10(12·255²) ≈ 58.92 dB. A quantised pipeline whose deviation from FP32 is as small as
/// the 8-bit output rounding reaches it; `--max-psnr-drop` is measured from it.
pub fn psnr_8bit_floor() -> f64 {
    10.0 * (12.0f64 * 255.0 * 255.0).log10()
}

/// mse(reference, x) / mse(reference, 0); 0 when both are all zero.
pub fn nmse(reference: &[f32], x: &[f32]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (&r, &v) in reference.iter().zip(x) {
        let d = r as f64 - v as f64;
        num += d * d;
        den += r as f64 * r as f64;
    }
    if den == 0.0 {
        if num == 0.0 {
            0.0
        } else {
            f64::INFINITY
        }
    } else {
        num / den
    }
}

/// Cosine similarity; 1 when both are all zero.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        ab += x as f64 * y as f64;
        aa += x as f64 * x as f64;
        bb += y as f64 * y as f64;
    }
    if aa == 0.0 && bb == 0.0 {
        1.0
    } else if aa == 0.0 || bb == 0.0 {
        0.0
    } else {
        ab / (aa.sqrt() * bb.sqrt())
    }
}

/// PSNR in dB of `x` against `reference`, values in [0, `peak`], capped at [`PSNR_CAP`].
pub fn psnr(reference: &[f32], x: &[f32], peak: f64) -> f64 {
    let n = reference.len().max(1) as f64;
    let mse: f64 = reference.iter().zip(x).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum::<f64>() / n;
    if mse == 0.0 {
        return PSNR_CAP;
    }
    (10.0 * (peak * peak / mse).log10()).min(PSNR_CAP)
}

/// Normalised 1-D Gaussian taps of odd length `size`.
fn gaussian(size: usize, sigma: f64) -> Vec<f64> {
    let c = (size / 2) as f64;
    let w: Vec<f64> = (0..size).map(|i| (-(i as f64 - c).powi(2) / (2.0 * sigma * sigma)).exp()).collect();
    let s: f64 = w.iter().sum();
    w.into_iter().map(|v| v / s).collect()
}

/// Valid separable filtering of an `h`×`w` plane with taps `k`: ((h−n+1), (w−n+1)).
fn filter_valid(x: &[f64], h: usize, w: usize, k: &[f64]) -> Vec<f64> {
    let n = k.len();
    let (oh, ow) = (h + 1 - n, w + 1 - n);
    let mut rows = vec![0f64; h * ow];
    for i in 0..h {
        for j in 0..ow {
            rows[i * ow + j] = (0..n).map(|t| k[t] * x[i * w + j + t]).sum();
        }
    }
    let mut out = vec![0f64; oh * ow];
    for i in 0..oh {
        for j in 0..ow {
            out[i * ow + j] = (0..n).map(|t| k[t] * rows[(i + t) * ow + j]).sum();
        }
    }
    out
}

/// Mean SSIM of two `[C, H, W]` images with values in [0, `peak`].
pub fn ssim(a: &[f32], b: &[f32], channels: usize, h: usize, w: usize, peak: f64) -> f64 {
    let size = {
        let m = h.min(w).min(11);
        if m.is_multiple_of(2) {
            m - 1
        } else {
            m
        }
    }
    .max(1);
    let k = gaussian(size, 1.5);
    let (c1, c2) = ((0.01 * peak).powi(2), (0.03 * peak).powi(2));
    let plane = h * w;
    let mut total = 0f64;
    for c in 0..channels {
        let x: Vec<f64> = a[c * plane..(c + 1) * plane].iter().map(|&v| v as f64).collect();
        let y: Vec<f64> = b[c * plane..(c + 1) * plane].iter().map(|&v| v as f64).collect();
        let prod = |p: &[f64], q: &[f64]| p.iter().zip(q).map(|(u, v)| u * v).collect::<Vec<f64>>();
        let (mx, my) = (filter_valid(&x, h, w, &k), filter_valid(&y, h, w, &k));
        let sxx = filter_valid(&prod(&x, &x), h, w, &k);
        let syy = filter_valid(&prod(&y, &y), h, w, &k);
        let sxy = filter_valid(&prod(&x, &y), h, w, &k);
        let mut sum = 0f64;
        for i in 0..mx.len() {
            let (ux, uy) = (mx[i], my[i]);
            let (vx, vy, cxy) = (sxx[i] - ux * ux, syy[i] - uy * uy, sxy[i] - ux * uy);
            sum += ((2.0 * ux * uy + c1) * (2.0 * cxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2));
        }
        total += sum / mx.len() as f64;
    }
    total / channels.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (s >> 40) as f32 / (1u64 << 24) as f32
            })
            .collect()
    }

    #[test]
    fn nmse_cosine_psnr_known_values() {
        let a = [1.0f32, 2.0, 2.0];
        assert_eq!(nmse(&a, &a), 0.0);
        assert!((nmse(&a, &[1.0, 2.0, 1.0]) - 1.0 / 9.0).abs() < 1e-12);
        assert!((cosine(&a, &[2.0, 4.0, 4.0]) - 1.0).abs() < 1e-12);
        assert!((cosine(&[1.0, 0.0], &[0.0, 1.0])).abs() < 1e-12);
        assert_eq!(psnr(&a, &a, 1.0), PSNR_CAP);
        // mse 0.01 at peak 1 -> 20 dB
        assert!((psnr(&[0.5; 4], &[0.6; 4], 1.0) - 20.0).abs() < 1e-5);
        assert!((psnr_8bit_floor() - 58.9226).abs() < 1e-3);
    }

    #[test]
    fn ssim_of_identical_images_is_one() {
        let x = image(1, 3 * 20 * 24);
        assert!((ssim(&x, &x, 3, 20, 24, 1.0) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn ssim_of_constant_images_is_the_luminance_term() {
        // σ = 0 in both: SSIM = (2ab + C1) / (a² + b² + C1)
        let (a, b) = (0.3f64, 0.7f64);
        let c1 = 0.01f64.powi(2);
        let want = (2.0 * a * b + c1) / (a * a + b * b + c1);
        let got = ssim(&[a as f32; 16 * 16], &[b as f32; 16 * 16], 1, 16, 16, 1.0);
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }

    #[test]
    fn ssim_matches_the_definition_computed_directly() {
        // brute force over every 11×11 window with 2-D Gaussian weights
        let (h, w) = (14, 13);
        let x = image(2, h * w);
        let y: Vec<f32> = image(3, h * w).iter().zip(&x).map(|(n, v)| 0.7 * v + 0.3 * n).collect();
        let k = gaussian(11, 1.5);
        let (c1, c2) = (1e-4, 9e-4);
        let mut sum = 0.0;
        let mut count = 0;
        for i in 0..=h - 11 {
            for j in 0..=w - 11 {
                let (mut mx, mut my, mut sxx, mut syy, mut sxy) = (0.0, 0.0, 0.0, 0.0, 0.0);
                for u in 0..11 {
                    for v in 0..11 {
                        let g = k[u] * k[v];
                        let (p, q) = (x[(i + u) * w + j + v] as f64, y[(i + u) * w + j + v] as f64);
                        mx += g * p;
                        my += g * q;
                        sxx += g * p * p;
                        syy += g * q * q;
                        sxy += g * p * q;
                    }
                }
                let (vx, vy, cxy) = (sxx - mx * mx, syy - my * my, sxy - mx * my);
                sum +=
                    ((2.0 * mx * my + c1) * (2.0 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2));
                count += 1;
            }
        }
        let want = sum / count as f64;
        let got = ssim(&x, &y, 1, h, w, 1.0);
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        assert!(got < 0.99 && got > 0.3, "{got}");
    }

    #[test]
    fn ssim_drops_with_noise_and_is_symmetric() {
        let x = image(4, 32 * 32);
        let n = image(5, 32 * 32);
        let y1: Vec<f32> = x.iter().zip(&n).map(|(a, b)| a + 0.05 * (b - 0.5)).collect();
        let y2: Vec<f32> = x.iter().zip(&n).map(|(a, b)| a + 0.2 * (b - 0.5)).collect();
        let (s1, s2) = (ssim(&x, &y1, 1, 32, 32, 1.0), ssim(&x, &y2, 1, 32, 32, 1.0));
        assert!(s1 > s2, "{s1} {s2}");
        assert!((ssim(&y1, &x, 1, 32, 32, 1.0) - s1).abs() < 1e-12);
    }
}
