//! From statistics to a clipping range (amax) per activation tensor; the scale is then
//! `amax / 127` (INT8) or `amax / 448` (FP8).
//!
//! * `max`: the largest |x| seen. No clipping; outliers stretch the grid.
//! * `percentile:P`: the P-th percentile of |x| (default 99.99), read from the histogram as
//!   the upper edge of the bin where the cumulative count reaches P %.
//! * `mse`: the clip c minimising the expected squared error of quantise→dequantise over the
//!   histogram, with each bin's count placed at its centre and quantised by the real format
//!   (so FP8's relative grid and INT8's uniform grid are both honoured). Candidates are the bin
//!   edges from amax/16 up (every 8th edge) plus amax itself.
//!
//! All three are deterministic functions of the statistics.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::CalibError;
use crate::formats::Format;
use crate::stats::{TensorStats, BINS};

/// A clipping-range rule.
#[derive(Copy, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Calibrator {
    Max,
    Percentile { percent: f64 },
    Mse,
}

/// Default percentile of `percentile` without a value.
pub const DEFAULT_PERCENT: f64 = 99.99;

impl Calibrator {
    /// The clipping range for `stats` when quantising to `format`.
    pub fn amax(&self, stats: &TensorStats, format: Format) -> f32 {
        match *self {
            Calibrator::Max => stats.amax,
            Calibrator::Percentile { percent } => percentile(stats, percent),
            Calibrator::Mse => mse_clip(stats, format),
        }
    }
}

fn percentile(stats: &TensorStats, percent: f64) -> f32 {
    let total: u64 = stats.hist.iter().sum();
    if total == 0 {
        return stats.amax;
    }
    let target = (percent / 100.0 * total as f64).ceil().max(1.0) as u64;
    let mut cum = 0u64;
    for (b, &c) in stats.hist.iter().enumerate() {
        cum += c;
        if cum >= target {
            return ((b + 1) as f32 * stats.bin_width()).min(stats.amax);
        }
    }
    stats.amax
}

/// Expected squared error of fake-quantising the histogram with clip `c`.
fn clip_error(stats: &TensorStats, format: Format, c: f32) -> f64 {
    let scale = format.scale_for(c);
    let w = stats.bin_width();
    let mut err = 0f64;
    for (b, &n) in stats.hist.iter().enumerate() {
        if n > 0 {
            let x = (b as f32 + 0.5) * w;
            let d = (format.fake_quant(x, scale) - x) as f64;
            err += n as f64 * d * d;
        }
    }
    err
}

fn mse_clip(stats: &TensorStats, format: Format) -> f32 {
    if stats.amax == 0.0 || stats.range == 0.0 {
        return stats.amax;
    }
    let w = stats.bin_width();
    let mut best = (clip_error(stats, format, stats.amax), stats.amax);
    let first = BINS / 16;
    for b in (first..BINS).step_by(8) {
        let c = (b + 1) as f32 * w;
        if c >= stats.amax || c * 16.0 < stats.amax {
            continue;
        }
        let e = clip_error(stats, format, c);
        if e < best.0 {
            best = (e, c);
        }
    }
    best.1
}

impl FromStr for Calibrator {
    type Err = CalibError;

    /// `max`, `mse`, `percentile` or `percentile:P` with 0 < P ≤ 100.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |msg: String| CalibError::Option { option: format!("--calibrator '{s}'"), msg };
        match s.split_once(':') {
            None if s == "max" => Ok(Calibrator::Max),
            None if s == "mse" => Ok(Calibrator::Mse),
            None if s == "percentile" => Ok(Calibrator::Percentile { percent: DEFAULT_PERCENT }),
            Some(("percentile", p)) => match p.parse::<f64>() {
                Ok(v) if v > 0.0 && v <= 100.0 => Ok(Calibrator::Percentile { percent: v }),
                _ => Err(bad(format!("percent '{p}' is not a number in (0, 100]"))),
            },
            _ => Err(bad("expected max, mse, percentile or percentile:P (e.g. percentile:99.9)".into())),
        }
    }
}

impl fmt::Display for Calibrator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Calibrator::Max => write!(f, "max"),
            Calibrator::Percentile { percent } => write!(f, "percentile:{percent}"),
            Calibrator::Mse => write!(f, "mse"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats_of(data: &[f32]) -> TensorStats {
        let mut s = TensorStats::default();
        s.observe("x", data, &[data.len()], None, None).unwrap_or_else(|e| panic!("{e}"));
        s
    }

    #[test]
    fn max_and_percentile() {
        // 9999 values in [0, 1) and one outlier at 100
        let mut data: Vec<f32> = (0..9999).map(|i| i as f32 / 9999.0).collect();
        data.push(100.0);
        let s = stats_of(&data);
        assert_eq!(Calibrator::Max.amax(&s, Format::Int8), 100.0);
        let p = Calibrator::Percentile { percent: 99.9 }.amax(&s, Format::Int8);
        assert!(p > 0.99 && p < 1.03, "{p}");
        let p100 = Calibrator::Percentile { percent: 100.0 }.amax(&s, Format::Int8);
        assert_eq!(p100, 100.0);
    }

    #[test]
    fn mse_clips_a_lone_outlier_for_int8_but_not_a_uniform_range() {
        // 200k values in [-0.5, 0.5] and one at 4: rounding 200k values on a grid stretched to 4
        // costs more (≈ 200k · (4/127)²/12 ≈ 16.5) than clipping the outlier ((4 − 0.5)² ≈ 12)
        let mut data: Vec<f32> = (0..200_000).map(|i| ((i % 2000) as f32 / 1000.0 - 1.0) * 0.5).collect();
        data.push(4.0);
        let c = Calibrator::Mse.amax(&stats_of(&data), Format::Int8);
        assert!(c < 2.0, "outlier should be clipped, got {c}");
        let uniform: Vec<f32> = (0..20000).map(|i| (i as f32 / 20000.0) * 4.0).collect();
        let c = Calibrator::Mse.amax(&stats_of(&uniform), Format::Int8);
        assert!(c > 3.8, "a uniform range should be kept, got {c}");
    }

    #[test]
    fn parses_and_prints() {
        for s in ["max", "mse", "percentile:99.9"] {
            assert_eq!(s.parse::<Calibrator>().map(|c| c.to_string()).ok().as_deref(), Some(s));
        }
        assert_eq!("percentile".parse::<Calibrator>().ok(), Some(Calibrator::Percentile { percent: 99.99 }));
        let e = "percentile:0".parse::<Calibrator>().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("--calibrator 'percentile:0'"), "{e}");
        assert!("entropy".parse::<Calibrator>().is_err());
    }
}
