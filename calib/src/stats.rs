//! Running activation statistics per tensor: exact max |x|, a histogram of |x|, per-channel
//! max |x| (for SmoothQuant) and the number of rows (to tell per-token activations from
//! per-forward vectors).
//!
//! The histogram has [`BINS`] equal bins over [0, range]. The range starts at the first
//! non-zero batch's max and doubles whenever a later batch exceeds it, merging bins pairwise,
//! so counts are never re-estimated and the result depends only on the data and its order.
//! Sums are accumulated in f64 in data order. The same batches in the same order therefore
//! give bit-identical statistics, and so bit-identical scales.

use crate::error::{CalibError, Result};

/// Histogram resolution (bins over [0, range]).
pub const BINS: usize = 4096;

/// Statistics of one tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorStats {
    /// Largest finite |x| seen.
    pub amax: f32,
    /// Finite elements seen.
    pub count: u64,
    /// NaN / ±inf elements seen (not in the histogram).
    pub nonfinite: u64,
    /// Σ x² (f64, data order).
    pub sum_sq: f64,
    /// The histogram spans [0, range]; 0 until a non-zero value arrives.
    pub range: f32,
    /// Counts of |x| per bin.
    pub hist: Vec<u64>,
    /// Max |x| per channel along the channel axis (empty if channels are not tracked).
    pub channel_amax: Vec<f32>,
    /// Largest number of rows (elements / channels) in one batch.
    pub rows: usize,
}

impl Default for TensorStats {
    fn default() -> Self {
        TensorStats {
            amax: 0.0,
            count: 0,
            nonfinite: 0,
            sum_sq: 0.0,
            range: 0.0,
            hist: vec![0; BINS],
            channel_amax: Vec::new(),
            rows: 0,
        }
    }
}

impl TensorStats {
    /// Adds one batch of `data` with `shape`. `channel_axis` (if any; negative counts from the
    /// end) selects the axis whose per-channel max is tracked; `divide` (if any) divides channel j by `divide[j]` first
    /// (the activation as SmoothQuant will present it to the quantiser).
    pub fn observe(
        &mut self,
        name: &str,
        data: &[f32],
        shape: &[usize],
        channel_axis: Option<i64>,
        divide: Option<&[f32]>,
    ) -> Result<()> {
        let err = |msg: String| CalibError::Stats { name: name.to_string(), msg };
        if shape.iter().product::<usize>() != data.len() {
            return Err(err(format!("{} values for shape {shape:?}", data.len())));
        }
        let rank = shape.len() as i64;
        let (channels, inner) = match channel_axis.map(|a| if a < 0 { a + rank } else { a }) {
            Some(ax) if (0..rank).contains(&ax) => {
                (shape[ax as usize], shape[ax as usize + 1..].iter().product::<usize>())
            }
            Some(ax) => return Err(err(format!("channel axis {ax} out of range for shape {shape:?}"))),
            None => (1, 1),
        };
        if let Some(d) = divide {
            if d.len() != channels {
                return Err(err(format!("{} smoothing factors for {channels} channels", d.len())));
            }
        }
        if channel_axis.is_some() {
            if self.channel_amax.is_empty() {
                self.channel_amax = vec![0.0; channels];
            } else if self.channel_amax.len() != channels {
                return Err(err(format!(
                    "{channels} channels, earlier batches had {}",
                    self.channel_amax.len()
                )));
            }
        }
        self.rows = self.rows.max(data.len() / channels.max(1));
        // channel-last (inner = 1): rows of `channels` values; otherwise contiguous runs of one
        // channel (`inner` values, channels cycling); no channel axis: one run
        let run = match channel_axis {
            Some(_) if inner > 1 => inner,
            Some(_) => channels.max(1),
            None => data.len().max(1),
        };
        let factor = |k: usize| divide.map(|d| d[k % d.len()]);
        let mut batch_max = 0f32;
        if channel_axis.is_some() && inner <= 1 {
            for row in data.chunks(run) {
                batch_max = batch_max.max(self.row_pass(row, divide));
            }
        } else {
            for (k, chunk) in data.chunks(run).enumerate() {
                let m = self.first_pass(chunk, factor(k));
                batch_max = batch_max.max(m);
                if channel_axis.is_some() {
                    let c = k % channels;
                    self.channel_amax[c] = self.channel_amax[c].max(m);
                }
            }
        }
        if self.hist.is_empty() {
            self.amax = self.amax.max(batch_max);
            return Ok(());
        }
        if self.range == 0.0 && batch_max > 0.0 {
            self.range = batch_max;
        }
        while batch_max > self.range {
            self.double_range();
        }
        self.amax = self.amax.max(batch_max);
        let per_bin = if self.range > 0.0 { BINS as f32 / self.range } else { 0.0 };
        let channel_last = channel_axis.is_some() && inner <= 1;
        for (k, chunk) in data.chunks(run).enumerate() {
            let dk = factor(k);
            for (c, &v) in chunk.iter().enumerate() {
                let d = if channel_last { divide.map(|d| d[c]) } else { dk };
                let x = d.map_or(v, |d| v / d);
                if x.is_finite() {
                    let b = ((x.abs() * per_bin) as usize).min(BINS - 1);
                    self.hist[b] += 1;
                }
            }
        }
        Ok(())
    }

    /// Max |x| of one run of values (divided by `d`), adding to the counts and Σ x² in data
    /// order; non-finite values are only counted.
    fn first_pass(&mut self, chunk: &[f32], d: Option<f32>) -> f32 {
        let mut m = 0f32;
        for &v in chunk {
            let x = d.map_or(v, |d| v / d);
            if x.is_finite() {
                m = m.max(x.abs());
                self.count += 1;
                self.sum_sq += (x as f64) * (x as f64);
            } else {
                self.nonfinite += 1;
            }
        }
        m
    }

    /// [`Self::first_pass`] over one row of a channel-last tensor: value c is channel c.
    fn row_pass(&mut self, row: &[f32], divide: Option<&[f32]>) -> f32 {
        let mut m = 0f32;
        for (c, &v) in row.iter().enumerate() {
            let x = divide.map_or(v, |d| v / d[c]);
            if x.is_finite() {
                let a = x.abs();
                m = m.max(a);
                self.channel_amax[c] = self.channel_amax[c].max(a);
                self.count += 1;
                self.sum_sq += (x as f64) * (x as f64);
            } else {
                self.nonfinite += 1;
            }
        }
        m
    }

    /// Statistics without the histogram (max, counts and Σ x² only): all the `max` calibrator
    /// needs, at a fraction of the cost on large activations.
    pub fn without_histogram() -> TensorStats {
        TensorStats { hist: Vec::new(), ..TensorStats::default() }
    }

    fn double_range(&mut self) {
        if self.hist.is_empty() {
            self.range *= 2.0;
            return;
        }
        for i in 0..BINS / 2 {
            self.hist[i] = self.hist[2 * i] + self.hist[2 * i + 1];
        }
        self.hist[BINS / 2..].iter_mut().for_each(|c| *c = 0);
        self.range *= 2.0;
    }

    /// Width of one bin.
    pub fn bin_width(&self) -> f32 {
        self.range / BINS as f32
    }

    /// Folds `other` in: exact max/counts/sums; `other`'s bins are re-binned by their centres.
    /// Merging the same parts in the same order always gives the same result.
    pub fn merge(&mut self, other: &TensorStats) {
        if other.range > self.range {
            if self.range == 0.0 {
                self.range = other.range;
            }
            while other.range > self.range {
                self.double_range();
            }
        }
        let per_bin = if self.range > 0.0 { BINS as f32 / self.range } else { 0.0 };
        if self.hist.is_empty() && !other.hist.is_empty() {
            self.hist = vec![0; BINS];
        }
        for (b, &c) in other.hist.iter().enumerate() {
            if c > 0 {
                let centre = (b as f32 + 0.5) * other.bin_width();
                self.hist[((centre * per_bin) as usize).min(BINS - 1)] += c;
            }
        }
        self.amax = self.amax.max(other.amax);
        self.count += other.count;
        self.nonfinite += other.nonfinite;
        self.sum_sq += other.sum_sq;
        self.rows = self.rows.max(other.rows);
        if self.channel_amax.is_empty() {
            self.channel_amax = other.channel_amax.clone();
        } else {
            for (a, b) in self.channel_amax.iter_mut().zip(&other.channel_amax) {
                *a = a.max(*b);
            }
        }
    }

    /// Root mean square of the finite values.
    pub fn rms(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            (self.sum_sq / self.count as f64).sqrt()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_amax_and_range_doubling() {
        let mut s = TensorStats::default();
        s.observe("x", &[0.5, -1.0, 0.25, 0.0], &[2, 2], Some(-1), None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((s.amax, s.range, s.count, s.rows), (1.0, 1.0, 4, 2));
        assert_eq!(s.channel_amax, vec![0.5, 1.0]);
        s.observe("x", &[3.0, f32::NAN], &[1, 2], Some(-1), None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((s.amax, s.range, s.count, s.nonfinite), (3.0, 4.0, 5, 1));
        assert_eq!(s.hist.iter().sum::<u64>(), 5);
        // 1.0 sat in the last bin of [0, 1]; after two doublings it is in bin 1023 of [0, 4]
        assert_eq!(s.hist[BINS / 4 - 1], 1);
        assert_eq!(s.hist[(3.0 / 4.0 * BINS as f32) as usize], 1);
        assert_eq!(s.sum_sq, 0.25 + 1.0 + 0.0625 + 9.0);
    }

    /// The element-by-element definition the fast passes must reproduce.
    fn naive(data: &[f32], shape: &[usize], axis: Option<usize>, divide: Option<&[f32]>) -> TensorStats {
        let (channels, inner) = match axis {
            Some(a) => (shape[a], shape[a + 1..].iter().product::<usize>()),
            None => (1, 1),
        };
        let mut s = TensorStats {
            channel_amax: if axis.is_some() { vec![0.0; channels] } else { vec![] },
            ..Default::default()
        };
        let x = |i: usize| divide.map_or(data[i], |d| data[i] / d[(i / inner) % channels]);
        let mut m = 0f32;
        for i in 0..data.len() {
            let v = x(i);
            if v.is_finite() {
                m = m.max(v.abs());
                if axis.is_some() {
                    let c = (i / inner) % channels;
                    s.channel_amax[c] = s.channel_amax[c].max(v.abs());
                }
                s.count += 1;
                s.sum_sq += (v as f64) * (v as f64);
            } else {
                s.nonfinite += 1;
            }
        }
        (s.amax, s.range, s.rows) = (m, m, data.len() / channels);
        for i in 0..data.len() {
            let v = x(i);
            if v.is_finite() {
                s.hist[((v.abs() * BINS as f32 / m) as usize).min(BINS - 1)] += 1;
            }
        }
        s
    }

    #[test]
    fn fast_passes_match_the_naive_definition() {
        let shape = [2usize, 3, 4, 5];
        let n: usize = shape.iter().product();
        let mut data: Vec<f32> = (0..n).map(|i| (((i * 7919) % 211) as f32 - 105.0) / 17.0).collect();
        data[17] = f32::NAN;
        data[40] = f32::INFINITY;
        for axis in [None, Some(1usize), Some(2), Some(3)] {
            let channels = axis.map_or(1, |a| shape[a]);
            let d: Vec<f32> = (0..channels).map(|c| 0.5 + c as f32).collect();
            for divide in [None, Some(d.as_slice())] {
                let mut got = TensorStats::default();
                let ax = axis.map(|a| a as i64 - 4); // negative axes count from the end
                got.observe("x", &data, &shape, ax, divide).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(
                    got,
                    naive(&data, &shape, axis, divide),
                    "axis {axis:?} divide {}",
                    divide.is_some()
                );
                let mut lean = TensorStats::without_histogram();
                lean.observe("x", &data, &shape, ax, divide).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(
                    (lean.amax, &lean.channel_amax, lean.count),
                    (got.amax, &got.channel_amax, got.count)
                );
                assert!(lean.hist.is_empty());
            }
        }
    }

    #[test]
    fn smoothing_divides_per_channel() {
        let mut s = TensorStats::default();
        let d = [2.0, 0.5];
        s.observe("x", &[2.0, 1.0, -4.0, 0.25], &[2, 2], Some(1), Some(&d)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.channel_amax, vec![2.0, 2.0]);
        assert_eq!(s.amax, 2.0);
        assert!(s.observe("x", &[1.0; 3], &[1, 3], Some(1), Some(&d)).is_err());
    }

    #[test]
    fn same_order_same_bits_and_merge_is_exact_for_extremes() {
        let data: Vec<f32> = (0..10_000).map(|i| ((i * 7919) % 1000) as f32 / 333.0 - 1.5).collect();
        let run = || {
            let mut s = TensorStats::default();
            for c in data.chunks(1000) {
                s.observe("x", c, &[c.len()], None, None).unwrap_or_else(|e| panic!("{e}"));
            }
            s
        };
        assert_eq!(run(), run());
        let (mut a, mut b) = (TensorStats::default(), TensorStats::default());
        a.observe("x", &data[..5000], &[5000], None, None).unwrap_or_else(|e| panic!("{e}"));
        b.observe("x", &data[5000..], &[5000], None, None).unwrap_or_else(|e| panic!("{e}"));
        a.merge(&b);
        let whole = run();
        assert_eq!((a.amax, a.count), (whole.amax, whole.count));
        assert_eq!(a.hist.iter().sum::<u64>(), whole.hist.iter().sum::<u64>());
    }
}
