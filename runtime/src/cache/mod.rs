//! Training-free step caching of the DiT: a step may run only the first block (or no block)
//! and reuse what an earlier step computed for the rest. The sampling loop asks a
//! [`StepCache`] per DiT evaluation what to run; the cache keeps one state per CFG branch
//! ("cond" / "uncond"), as diffusers 0.42.1's cache contexts do, so the branches never see each
//! other's tensors.
//!
//! Every policy speaks in one currency: the image stream after all blocks minus the embedded
//! input (`img_out − img_in`, the *residual*). The export's `dit_tail` turns any residual into
//! a velocity, so a skipped step runs only that small graph. The policies, with the semantics
//! of their diffusers 0.42.1 hooks (see `/work/notes/caching-reference.md` in the project):
//!
//! * `fbc:T` First-Block Cache: the first block always runs; when the relative L1 change of
//!   its image residual against the last fully computed step is ≤ T, the remaining blocks are
//!   replaced by their residual from that step.
//! * `mag:T[,MAX_SKIP[,RETENTION]]` MagCache: per-step magnitude ratios (calibrated per model,
//!   [`calibration`]) accumulate an error estimate; a step is skipped entirely while it stays
//!   ≤ T, at most MAX_SKIP (3) in a row, never in the first RETENTION (0.2) of the steps.
//! * `taylor:N[,ORDER[,BEFORE[,AFTER]]]` TaylorSeer: a full step every N steps (and always
//!   before step BEFORE = 3, from step AFTER on); in between the first block runs and the rest
//!   is predicted by a Taylor expansion (ORDER 1) of the residual of the remaining blocks.
//! * `tea:T` TeaCache: the relative L1 change of the first block's modulated input, rescaled by
//!   a per-model polynomial ([`calibration`]), accumulates; steps are skipped while the sum
//!   stays below T (first and last steps always computed).

pub mod calibration;
pub mod policies;
mod spec;
mod taylor;

pub use calibration::{CacheCalibration, CALIBRATION_FILE};
pub use policies::{Policy, Start};
pub use spec::CacheSpec;

/// The DiT part graphs a cached step runs (the exporter writes them beside `transformer`).
pub const PARTS: [&str; 4] = ["dit_embed", "dit_head", "dit_body", "dit_tail"];

use std::collections::BTreeMap;

/// DiT evaluations of a generation, counted per CFG branch evaluation (a true-CFG step is two).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DitCounts {
    /// Every block ran.
    pub full: usize,
    /// Only the first block ran; the rest was reused or predicted.
    pub first_block_only: usize,
    /// No block ran (the residual of an earlier step was reused).
    pub skipped: usize,
}

/// The step cache of one generation: a policy state per branch, and the counts.
pub struct StepCache {
    spec: CacheSpec,
    steps: usize,
    calibration: Option<CacheCalibration>,
    branches: BTreeMap<&'static str, Box<dyn Policy>>,
    pub counts: DitCounts,
}

impl StepCache {
    /// A fresh cache for a generation of `steps` steps. `calibration`: the export's
    /// [`CALIBRATION_FILE`], needed by `mag` and `tea`.
    pub fn new(
        spec: CacheSpec,
        steps: usize,
        calibration: Option<CacheCalibration>,
    ) -> Result<StepCache, crate::RuntimeError> {
        // build one policy now so a missing calibration fails before any model runs
        spec.policy(steps, calibration.as_ref())?;
        Ok(StepCache { spec, steps, calibration, branches: BTreeMap::new(), counts: DitCounts::default() })
    }

    /// The policy state of `branch` ("cond", "uncond"), created on first use.
    pub fn branch(&mut self, branch: &'static str) -> Result<&mut dyn Policy, crate::RuntimeError> {
        if !self.branches.contains_key(branch) {
            let p = self.spec.policy(self.steps, self.calibration.as_ref())?;
            self.branches.insert(branch, p);
        }
        match self.branches.get_mut(branch) {
            Some(p) => Ok(p.as_mut()),
            None => Err(crate::RuntimeError::Run(format!("cache branch {branch} vanished"))),
        }
    }

    /// Whether any branch policy wants the `dit_embed` probe before deciding.
    pub fn needs_probe(&self) -> bool {
        self.spec.needs_probe()
    }

    pub fn spec(&self) -> &CacheSpec {
        &self.spec
    }

    /// Hands the recorded statistics of a calibration run back (None for other policies).
    pub fn take_records(&mut self) -> BTreeMap<&'static str, policies::Records> {
        self.branches.iter_mut().filter_map(|(k, p)| p.records().map(|r| (*k, r))).collect()
    }
}

/// `a − b` element-wise.
pub(crate) fn sub(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x - y).collect()
}

/// `mean|a − b| / mean|b|` (f64 sums of f32 values).
pub(crate) fn rel_l1(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).abs() as f64).sum();
    let den: f64 = b.iter().map(|y| y.abs() as f64).sum();
    if den == 0.0 {
        f64::INFINITY
    } else {
        num / den
    }
}

#[cfg(test)]
mod tests;
