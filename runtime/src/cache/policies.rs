//! The per-branch policy states. A branch evaluation goes: [`Policy::start`] (with the
//! `dit_embed` probe for TeaCache) says what to run; after the first block [`Policy::after_head`]
//! may stop there; [`Policy::full`] stores what a full evaluation computed; [`Policy::reuse`]
//! gives the residual (`img_out − img_in`) for a step whose remaining blocks did not run.

use super::{rel_l1, sub};

/// What a branch evaluation runs first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// No block: the tail on a reused residual.
    Skip,
    /// The first block, then [`Policy::after_head`] decides.
    Head,
    /// Every block.
    Full,
}

/// Recorded statistics of a calibration branch.
#[derive(Clone, Debug, Default)]
pub struct Records {
    /// MagCache ratio per step (1.0 for step 0).
    pub mag_ratios: Vec<f64>,
    /// (relative L1 change of the modulated input, of the velocity) per step after the first.
    pub tea_pairs: Vec<(f64, f64)>,
}

/// One CFG branch's cache state. Slices are the branch's rows, `[N, S, D]` flattened.
pub trait Policy: Send {
    fn start(&mut self, step: usize, probe: Option<&[f32]>) -> Start;
    /// After [`Start::Head`]: whether the remaining blocks run.
    fn after_head(&mut self, _step: usize, _img_in: &[f32], _img: &[f32]) -> bool {
        true
    }
    /// Every block ran: `img_in` (embedded input), `img` (after block 0), `img_out`.
    fn full(&mut self, step: usize, img_in: &[f32], img: &[f32], img_out: &[f32]);
    /// The residual to use when the remaining blocks did not run; `head` = (img_in, img) when
    /// the first block ran. Err: the state has nothing to reuse (a bug in the decision).
    fn reuse(&mut self, step: usize, head: Option<(&[f32], &[f32])>) -> Result<Vec<f32>, String>;
    /// The branch's velocity of this step (calibration records it).
    fn output(&mut self, _v: &[f32]) {}
    fn records(&mut self) -> Option<Records> {
        None
    }
}

/// First-Block Cache (the rule of diffusers' `first_block_cache.py`, applied to FLUX.2's
/// mixed double / single blocks as described in the module docs).
pub struct Fbc {
    threshold: f32,
    /// First block's image residual and the remaining blocks' residual, last full step.
    head_residual: Option<Vec<f32>>,
    body_residual: Option<Vec<f32>>,
    pending: Option<Vec<f32>>,
}

impl Fbc {
    pub fn new(threshold: f32) -> Fbc {
        Fbc { threshold, head_residual: None, body_residual: None, pending: None }
    }
}

impl Policy for Fbc {
    fn start(&mut self, _: usize, _: Option<&[f32]>) -> Start {
        Start::Head
    }

    fn after_head(&mut self, _: usize, img_in: &[f32], img: &[f32]) -> bool {
        let r = sub(img, img_in);
        let compute = match (&self.head_residual, &self.body_residual) {
            (Some(prev), Some(_)) if prev.len() == r.len() => (rel_l1(&r, prev) as f32) > self.threshold,
            _ => true,
        };
        if compute {
            self.pending = Some(r); // stored once the full evaluation finished
        }
        compute
    }

    fn full(&mut self, _: usize, img_in: &[f32], img: &[f32], img_out: &[f32]) {
        self.head_residual = Some(self.pending.take().unwrap_or_else(|| sub(img, img_in)));
        self.body_residual = Some(sub(img_out, img));
    }

    fn reuse(&mut self, _: usize, head: Option<(&[f32], &[f32])>) -> Result<Vec<f32>, String> {
        let (Some((img_in, img)), Some(body)) = (head, &self.body_residual) else {
            return Err("fbc: no first block output or no cached residual".into());
        };
        Ok(img.iter().zip(img_in).zip(body).map(|((h, x), b)| (h - x) + b).collect())
    }
}

/// MagCache (diffusers' `mag_cache.py`): accumulated magnitude-ratio error, skipping whole
/// evaluations.
pub struct Mag {
    threshold: f32,
    max_skip: usize,
    retention_step: usize,
    ratios: Vec<f32>,
    residual: Option<Vec<f32>>,
    acc_ratio: f32,
    acc_err: f32,
    acc_steps: usize,
}

impl Mag {
    pub fn new(threshold: f32, max_skip: usize, retention: f64, steps: usize, ratios: Vec<f32>) -> Mag {
        Mag {
            threshold,
            max_skip,
            retention_step: (retention * steps as f64 + 0.5) as usize,
            ratios,
            residual: None,
            acc_ratio: 1.0,
            acc_err: 0.0,
            acc_steps: 0,
        }
    }
}

impl Policy for Mag {
    fn start(&mut self, step: usize, _: Option<&[f32]>) -> Start {
        if step < self.retention_step {
            return Start::Full;
        }
        let scale = self.ratios.get(step).copied().unwrap_or(1.0);
        self.acc_ratio *= scale;
        self.acc_steps += 1;
        self.acc_err += (1.0 - self.acc_ratio).abs();
        if self.residual.is_some() && self.acc_err <= self.threshold && self.acc_steps <= self.max_skip {
            return Start::Skip;
        }
        (self.acc_ratio, self.acc_err, self.acc_steps) = (1.0, 0.0, 0);
        Start::Full
    }

    fn full(&mut self, _: usize, img_in: &[f32], _: &[f32], img_out: &[f32]) {
        self.residual = Some(sub(img_out, img_in));
    }

    fn reuse(&mut self, _: usize, _: Option<(&[f32], &[f32])>) -> Result<Vec<f32>, String> {
        self.residual.clone().ok_or_else(|| "mag: no cached residual".into())
    }
}

/// TeaCache (TeaCache4FLUX's rule on FLUX.2's first-block modulated input).
pub struct Tea {
    threshold: f64,
    /// Polynomial, highest power first.
    coefficients: Vec<f64>,
    steps: usize,
    accumulated: f64,
    previous: Option<Vec<f32>>,
    residual: Option<Vec<f32>>,
}

impl Tea {
    pub fn new(threshold: f64, coefficients: Vec<f64>, steps: usize) -> Tea {
        Tea { threshold, coefficients, steps, accumulated: 0.0, previous: None, residual: None }
    }
}

/// `np.poly1d(c)(x)`: c highest power first.
pub fn poly(c: &[f64], x: f64) -> f64 {
    c.iter().fold(0.0, |acc, k| acc * x + k)
}

impl Policy for Tea {
    fn start(&mut self, step: usize, probe: Option<&[f32]>) -> Start {
        let cnt = step % self.steps.max(1);
        let start = match (&self.previous, probe) {
            (Some(prev), Some(m)) if cnt != 0 && cnt + 1 != self.steps && self.residual.is_some() => {
                self.accumulated += poly(&self.coefficients, rel_l1(m, prev));
                if self.accumulated < self.threshold {
                    Start::Skip
                } else {
                    Start::Full
                }
            }
            _ => Start::Full,
        };
        if start == Start::Full {
            self.accumulated = 0.0;
        }
        self.previous = probe.map(<[f32]>::to_vec);
        start
    }

    fn full(&mut self, _: usize, img_in: &[f32], _: &[f32], img_out: &[f32]) {
        self.residual = Some(sub(img_out, img_in));
    }

    fn reuse(&mut self, _: usize, _: Option<(&[f32], &[f32])>) -> Result<Vec<f32>, String> {
        self.residual.clone().ok_or_else(|| "tea: no cached residual".into())
    }
}

/// The calibration run: always full; records MagCache's per-step ratio (mean over tokens of
/// `‖r_t‖ / (‖r_{t−1}‖ + 1e-8)`, norms over the hidden dim) and TeaCache's (input change,
/// output change) pairs.
pub struct Record {
    d: usize,
    residual: Option<Vec<f32>>,
    modulated: Option<Vec<f32>>,
    input_change: Option<f64>,
    velocity: Option<Vec<f32>>,
    records: Records,
}

impl Record {
    pub fn with_dim(d: usize) -> Record {
        Record {
            d: d.max(1),
            residual: None,
            modulated: None,
            input_change: None,
            velocity: None,
            records: Records::default(),
        }
    }
}

/// Per-token L2 norms over rows of `d` values.
fn token_norms(x: &[f32], d: usize) -> Vec<f64> {
    x.chunks(d).map(|t| t.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>().sqrt()).collect()
}

impl Policy for Record {
    fn start(&mut self, _: usize, probe: Option<&[f32]>) -> Start {
        if let (Some(prev), Some(m)) = (&self.modulated, probe) {
            self.input_change = Some(rel_l1(m, prev));
        }
        self.modulated = probe.map(<[f32]>::to_vec);
        Start::Full
    }

    fn full(&mut self, _: usize, img_in: &[f32], _: &[f32], img_out: &[f32]) {
        let r = sub(img_out, img_in);
        let d = self.d;
        let ratio = match &self.residual {
            None => 1.0,
            Some(prev) => {
                let (now, before) = (token_norms(&r, d), token_norms(prev, d));
                let n = now.len().max(1) as f64;
                now.iter().zip(&before).map(|(a, b)| a / (b + 1e-8)).sum::<f64>() / n
            }
        };
        self.records.mag_ratios.push(ratio);
        self.residual = Some(r);
    }

    fn reuse(&mut self, _: usize, _: Option<(&[f32], &[f32])>) -> Result<Vec<f32>, String> {
        Err("record: never reuses".into())
    }

    fn output(&mut self, v: &[f32]) {
        if let (Some(prev), Some(x)) = (&self.velocity, self.input_change.take()) {
            self.records.tea_pairs.push((x, rel_l1(v, prev)));
        }
        self.velocity = Some(v.to_vec());
    }

    fn records(&mut self) -> Option<Records> {
        Some(std::mem::take(&mut self.records))
    }
}
