//! The per-model numbers MagCache and TeaCache need, stored beside the export's manifest as
//! `cache_calibration.json` by `flux2 calibrate calibrate-cache` (uncached runs of the
//! model through its DiT parts).
//!
//! * MagCache ratios per step, recorded like diffusers' `MagCacheConfig(calibrate=True)`
//!   (one list per CFG branch; the policy uses the conditional one, as a user copying
//!   diffusers' first printed list does), averaged over the calibration prompts, and resampled
//!   to another step count with diffusers' `nearest_interp`.
//! * TeaCache coefficients: a degree-4 least-squares polynomial (highest power first, like
//!   `np.polyfit`) from (relative L1 change of the first block's modulated input, relative L1
//!   change of the branch's velocity) over consecutive steps of every calibration run.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::RuntimeError;

/// File name inside an export folder.
pub const CALIBRATION_FILE: &str = "cache_calibration.json";

/// `cache_calibration.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct CacheCalibration {
    /// Steps of the calibration runs (the ratios' length).
    pub steps: usize,
    /// Prompts (runs) averaged.
    pub runs: usize,
    /// MagCache ratio per step, per branch (`cond`, `uncond`).
    pub mag_ratios: BTreeMap<String, Vec<f64>>,
    /// TeaCache polynomial, highest power first.
    pub tea_coefficients: Vec<f64>,
    /// (input change, output change) pairs the polynomial was fitted to.
    #[serde(default)]
    pub tea_pairs: usize,
}

impl CacheCalibration {
    /// Reads `dir/cache_calibration.json`; None when the file does not exist.
    pub fn read(dir: &Path) -> Result<Option<CacheCalibration>, RuntimeError> {
        let path = dir.join(CALIBRATION_FILE);
        if !path.is_file() {
            return Ok(None);
        }
        let err = |msg: String| RuntimeError::Model { path: path.clone(), msg };
        let text = std::fs::read_to_string(&path).map_err(|e| err(e.to_string()))?;
        serde_json::from_str(&text).map(Some).map_err(|e| err(format!("bad cache calibration: {e}")))
    }

    /// Writes it atomically (temporary file renamed into place).
    pub fn write(&self, dir: &Path) -> Result<(), RuntimeError> {
        let path = dir.join(CALIBRATION_FILE);
        let tmp = dir.join(format!(".{CALIBRATION_FILE}.tmp"));
        let err = |p: &Path, e: String| RuntimeError::Model { path: p.to_path_buf(), msg: e };
        let text = serde_json::to_string_pretty(self).map_err(|e| err(&path, e.to_string()))?;
        std::fs::write(&tmp, text).map_err(|e| err(&tmp, e.to_string()))?;
        std::fs::rename(&tmp, &path).map_err(|e| err(&path, e.to_string()))
    }

    /// The conditional branch's ratios (else any branch's) for `steps` steps, as f32.
    pub fn mag_ratios(&self, steps: usize) -> Result<Vec<f32>, String> {
        let src = self
            .mag_ratios
            .get("cond")
            .or_else(|| self.mag_ratios.values().next())
            .filter(|r| !r.is_empty())
            .ok_or("the cache calibration has no MagCache ratios")?;
        let src: Vec<f32> = src.iter().map(|&r| r as f32).collect();
        Ok(nearest_interp(&src, steps))
    }
}

/// diffusers' `nearest_interp`: `src[round_half_even(i · (n−1)/(m−1))]` with the product in
/// f32; a target of one step takes the last ratio.
pub fn nearest_interp(src: &[f32], target: usize) -> Vec<f32> {
    if src.len() == target || src.is_empty() {
        return src.to_vec();
    }
    if target == 1 {
        return vec![src[src.len() - 1]];
    }
    let scale = ((src.len() - 1) as f64 / (target - 1) as f64) as f32;
    (0..target)
        .map(|i| {
            let idx = ((i as f32) * scale).round_ties_even() as usize;
            src[idx.min(src.len() - 1)]
        })
        .collect()
}

/// Least-squares polynomial of `degree` through `(x, y)`, highest power first (`np.polyfit`).
/// Err when there are fewer points than coefficients or the system is singular.
pub fn polyfit(points: &[(f64, f64)], degree: usize) -> Result<Vec<f64>, String> {
    let n = degree + 1;
    if points.len() < n {
        return Err(format!("{} points cannot fit {n} coefficients", points.len()));
    }
    // normal equations on x scaled to [-1, 1]-ish for conditioning, then unscaled
    let s = points.iter().map(|p| p.0.abs()).fold(0.0, f64::max).max(1e-300);
    let mut a = vec![vec![0.0; n + 1]; n];
    for &(x, y) in points {
        let xs = x / s;
        let pw: Vec<f64> = (0..n).map(|k| xs.powi(k as i32)).collect();
        for r in 0..n {
            for c in 0..n {
                a[r][c] += pw[r] * pw[c];
            }
            a[r][n] += pw[r] * y;
        }
    }
    for col in 0..n {
        let piv = (col..n).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs())).unwrap_or(col);
        if a[piv][col].abs() < 1e-300 {
            return Err("the points do not determine the polynomial (singular system)".into());
        }
        a.swap(col, piv);
        let pivot = a[col].clone();
        for (r, row) in a.iter_mut().enumerate() {
            if r != col {
                let f = row[col] / pivot[col];
                for (v, p) in row[col..].iter_mut().zip(&pivot[col..]) {
                    *v -= f * p;
                }
            }
        }
    }
    // ascending coefficients of the scaled variable → of x, then highest power first
    let coef: Vec<f64> = (0..n).map(|k| a[k][n] / a[k][k] / s.powi(k as i32)).collect();
    Ok(coef.into_iter().rev().collect())
}
