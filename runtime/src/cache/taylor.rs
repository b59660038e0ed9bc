//! TaylorSeer (diffusers 0.42.1 `taylorseer_cache.py`): full evaluations on a fixed schedule,
//! and in between a Taylor expansion of the cached feature from finite differences of the
//! last full evaluations.
//!
//! The schedule is diffusers' exactly: step s is computed when `s < before`, when
//! `(s − before − 1) mod interval == 0`, or when `s ≥ after`. The feature differs: diffusers
//! extrapolates every attention module's output and recomputes everything else on the current
//! inputs; an ONNX graph cannot stop at attention, so here the first block runs on the current
//! inputs and the residual of the remaining blocks (`img_out − img`) is extrapolated. Factors
//! are kept in f32 (diffusers rounds them to bf16).

use super::policies::{Policy, Start};
use super::sub;

pub struct Taylor {
    interval: usize,
    order: usize,
    before: usize,
    after: Option<usize>,
    last_update: Option<usize>,
    /// F0 (the feature), F1, … as stored at the last update.
    factors: Vec<Vec<f32>>,
}

impl Taylor {
    pub fn new(interval: usize, order: usize, before: usize, after: Option<usize>) -> Taylor {
        Taylor { interval: interval.max(1), order, before, after, last_update: None, factors: Vec::new() }
    }

    /// Whether step `s` is a full evaluation.
    pub fn computes(&self, s: usize) -> bool {
        s < self.before
            || (s as i64 - self.before as i64 - 1).rem_euclid(self.interval as i64) == 0
            || self.after.is_some_and(|a| s >= a)
    }

    fn update(&mut self, step: usize, feature: Vec<f32>) {
        let mut new = vec![feature];
        if let Some(last) = self.last_update {
            let gap = step.saturating_sub(last).max(1) as f32;
            for j in 0..self.order {
                let Some(old) = self.factors.get(j).filter(|o| o.len() == new[j].len()) else { break };
                let next: Vec<f32> = new[j].iter().zip(old).map(|(n, o)| (n - o) / gap).collect();
                new.push(next);
            }
        }
        self.factors = new;
        self.last_update = Some(step);
    }

    fn predict(&self, step: usize) -> Option<Vec<f32>> {
        let last = self.last_update?;
        let k = step.saturating_sub(last) as f32;
        let mut out = vec![0f32; self.factors.first()?.len()];
        let mut coef = 1f32; // k^n / n!
        for (n, f) in self.factors.iter().enumerate() {
            if n > 0 {
                coef *= k / n as f32;
            }
            for (o, v) in out.iter_mut().zip(f) {
                *o += v * coef;
            }
        }
        Some(out)
    }
}

impl Policy for Taylor {
    fn start(&mut self, step: usize, _: Option<&[f32]>) -> Start {
        if self.computes(step) || self.factors.is_empty() {
            Start::Full
        } else {
            Start::Head
        }
    }

    fn after_head(&mut self, _: usize, _: &[f32], _: &[f32]) -> bool {
        false
    }

    fn full(&mut self, step: usize, _: &[f32], img: &[f32], img_out: &[f32]) {
        self.update(step, sub(img_out, img));
    }

    fn reuse(&mut self, step: usize, head: Option<(&[f32], &[f32])>) -> Result<Vec<f32>, String> {
        let (Some((img_in, img)), Some(body)) = (head, self.predict(step)) else {
            return Err("taylor: no first block output or nothing to extrapolate".into());
        };
        Ok(img.iter().zip(img_in).zip(&body).map(|((h, x), b)| (h - x) + b).collect())
    }
}
