//! SmoothQuant (Xiao et al. 2023, <https://arxiv.org/abs/2211.10438>, eq. 4): move activation
//! outliers into the weights with a per-input-channel factor
//!
//! ```text
//! s_j = max|X_j|^α / max|W_j|^(1−α),     Y = (X · diag(s)⁻¹) · (diag(s) · W)
//! ```
//!
//! so channel j of the activation is divided by s_j (a `Mul` by 1/s in front of the activation's
//! quantiser) and row j of the (in, out) weight is multiplied by s_j before it is quantised. The
//! product is unchanged in exact arithmetic. All consumers of one activation share one s (their
//! weight maxima are pooled), so one quantiser serves them all. α = 0 leaves activations alone;
//! α = 1 moves everything into the weights; 0.5 is the paper's default, 0.8 ModelOpt's for DiTs.

use crate::consts::ConstTensor;
use crate::error::{CalibError, Result};

/// Factors are clamped to this range so that dead channels do not blow up the weights.
pub const FACTOR_RANGE: (f32, f32) = (1e-5, 1e5);

/// Per-input-channel max |W| of a weight: rows of a MatMul weight (in, out), or the input
/// channels (axis 1) of a Conv weight (out, in, kh, kw).
pub fn weight_input_amax(w: &ConstTensor, is_conv: bool) -> Vec<f32> {
    if is_conv {
        let (cout, cin) = (w.shape[0], w.shape[1]);
        let k: usize = w.shape[2..].iter().product();
        let mut m = vec![0f32; cin];
        for o in 0..cout {
            for (j, mj) in m.iter_mut().enumerate() {
                let base = (o * cin + j) * k;
                *mj = w.data[base..base + k].iter().fold(*mj, |a, v| a.max(v.abs()));
            }
        }
        m
    } else {
        let n = w.shape[1];
        w.data.chunks_exact(n).map(|row| row.iter().fold(0f32, |a, v| a.max(v.abs()))).collect()
    }
}

/// s_j = x_j^α / w_j^(1−α) (1 where either maximum is 0), clamped to [`FACTOR_RANGE`].
///
/// ```
/// use flux2_calib::smoothquant::factors;
/// let s = factors(&[16.0, 1.0], &[1.0, 4.0], 0.5).unwrap();
/// assert_eq!(s, vec![4.0, 0.5]);
/// ```
pub fn factors(act_amax: &[f32], weight_amax: &[f32], alpha: f32) -> Result<Vec<f32>> {
    if !(0.0..=1.0).contains(&alpha) {
        return Err(CalibError::Option {
            option: "--smoothquant".into(),
            msg: format!("alpha {alpha} not in [0, 1]"),
        });
    }
    if act_amax.len() != weight_amax.len() {
        return Err(CalibError::Option {
            option: "--smoothquant".into(),
            msg: format!(
                "{} activation channels vs {} weight input channels",
                act_amax.len(),
                weight_amax.len()
            ),
        });
    }
    Ok(act_amax
        .iter()
        .zip(weight_amax)
        .map(|(&x, &w)| {
            if x > 0.0 && w > 0.0 {
                let s = (x as f64).powf(alpha as f64) / (w as f64).powf(1.0 - alpha as f64);
                (s as f32).clamp(FACTOR_RANGE.0, FACTOR_RANGE.1)
            } else {
                1.0
            }
        })
        .collect())
}

/// Multiplies the input channels of a weight by `s` (rows of (in, out); axis 1 of a Conv weight).
pub fn fold_into_weight(w: &mut ConstTensor, s: &[f32], is_conv: bool) {
    if is_conv {
        let (cout, cin) = (w.shape[0], w.shape[1]);
        let k: usize = w.shape[2..].iter().product();
        for o in 0..cout {
            for (j, &sj) in s.iter().enumerate().take(cin) {
                let base = (o * cin + j) * k;
                w.data[base..base + k].iter_mut().for_each(|v| *v *= sj);
            }
        }
    } else {
        let n = w.shape[1];
        for (row, &sj) in w.data.chunks_exact_mut(n).zip(s) {
            row.iter_mut().for_each(|v| *v *= sj);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_preserves_the_product() {
        // X [1, 2] · W [2, 3]
        let x = [3.0f32, -0.5];
        let mut w = ConstTensor { shape: vec![2, 3], data: vec![1., 2., 3., 4., 5., 6.] };
        let y: Vec<f32> = (0..3).map(|c| x[0] * w.data[c] + x[1] * w.data[3 + c]).collect();
        let s = factors(&[3.0, 0.5], &weight_input_amax(&w, false), 0.5).unwrap_or_default();
        fold_into_weight(&mut w, &s, false);
        let xs = [x[0] / s[0], x[1] / s[1]];
        for (c, yc) in y.iter().enumerate() {
            let ys = xs[0] * w.data[c] + xs[1] * w.data[3 + c];
            assert!((ys - yc).abs() < 1e-5, "{ys} vs {yc}");
        }
    }

    #[test]
    fn conv_input_channels() {
        let w = ConstTensor { shape: vec![2, 2, 1, 1], data: vec![1., -5., 3., 2.] };
        assert_eq!(weight_input_amax(&w, true), vec![3.0, 5.0]);
        assert!(factors(&[1.0], &[1.0], 1.5).is_err());
        assert_eq!(factors(&[0.0], &[2.0], 0.5).unwrap_or_default(), vec![1.0]);
    }
}
