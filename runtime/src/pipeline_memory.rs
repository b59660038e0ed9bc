//! The pipeline's memory budget: which sessions stay resident ([`Residency`]), the peak RSS
//! of each stage ([`crate::memory`]), and the prompt-embedding cache
//! ([`crate::prompt_cache`]) that lets a repeated prompt skip the text encoder.
//!
//! A stage runs through [`Pipeline::stage`]: its sessions are created first (their time and
//! peak count as `load`), then the stage is timed and its peak RSS measured, and with
//! [`Residency::Stage`] its sessions are dropped at its end and the freed heap handed back to
//! the system, so the next stage starts without them.

use std::time::Instant;

use super::{Pipeline, Residency};
use crate::memory::Meter;
use crate::model_dir::ModelDir;
use crate::prompt_cache::{PromptCache, PromptCacheCounts};
use crate::RuntimeError;

/// Weights up to this size make [`Residency::for_model`] keep every session.
const SMALL_WEIGHTS: u64 = 2 << 30;

impl Residency {
    /// What a one-shot run of `model` should keep: [`Residency::All`] (the shortest cold
    /// start: the DiT and VAE sessions are made while the text encoder runs) when the graphs'
    /// weights take at most [`SMALL_WEIGHTS`] and an eighth of the memory available now, else
    /// [`Residency::Stage`] (one stage's weights at a time: the lowest peak).
    pub fn for_model(model: &ModelDir) -> Residency {
        let weights: u64 =
            ["text_encoder", "transformer", "vae_decoder"].iter().map(|g| model.graph_bytes(g)).sum();
        Residency::for_sizes(weights, crate::memory::available_memory().unwrap_or(0))
    }

    /// [`Residency::for_model`] from the weights' and the available memory's bytes.
    pub fn for_sizes(weights: u64, available: u64) -> Residency {
        if weights <= SMALL_WEIGHTS && weights.saturating_mul(8) <= available {
            Residency::All
        } else {
            Residency::Stage
        }
    }
}

impl Pipeline {
    /// Which sessions stay resident between stages and requests (default [`Residency::All`]).
    pub fn set_residency(&mut self, residency: Residency) {
        self.residency = residency;
        if residency == Residency::Stage {
            let _ = self.settle_pending();
            self.sessions.clear();
            crate::memory::release_free_memory();
        }
    }

    pub fn residency(&self) -> Residency {
        self.residency
    }

    /// Whether generations measure the peak RSS of each stage (Linux; resets the process's
    /// `VmHWM` before each stage, so a caller's own peak reading counts from the last stage).
    pub fn set_measure_memory(&mut self, on: bool) {
        self.measure_memory = on;
    }

    /// Uses a prompt-embedding cache (None: every prompt text runs the text encoder).
    pub fn set_prompt_cache(&mut self, cache: Option<PromptCache>) {
        self.prompt_cache = cache;
    }

    /// Hits and misses of the prompt cache so far (zeros without one).
    pub fn prompt_cache_counts(&self) -> PromptCacheCounts {
        self.prompt_cache.as_ref().map(|c| c.counts).unwrap_or_default()
    }

    /// The prompt cache in use, if any.
    pub fn prompt_cache(&self) -> Option<&PromptCache> {
        self.prompt_cache.as_ref()
    }

    /// Runs stage `name`: creates the sessions of `create`, then times `f` and measures its
    /// peak RSS (session creations inside `f` are not counted in its seconds); with
    /// [`Residency::Stage`] drops the sessions of `release` afterwards. Returns `f`'s value and
    /// the stage's seconds.
    pub(super) fn stage<R>(
        &mut self,
        name: &str,
        create: &[&str],
        release: &[&str],
        f: impl FnOnce(&mut Pipeline) -> Result<R, RuntimeError>,
    ) -> Result<(R, f64), RuntimeError> {
        self.create_sessions(create)?;
        let mut meter = Meter::new(self.measure_memory);
        meter.start();
        let (t, loaded) = (Instant::now(), self.load_time);
        let out = f(self)?;
        let seconds = t.elapsed().as_secs_f64() - (self.load_time - loaded);
        meter.stop(&mut self.peaks, name);
        if self.residency == Residency::Stage {
            self.release(release);
        }
        Ok((out, seconds))
    }

    /// Drops the sessions of `names` and returns the freed heap to the system.
    fn release(&mut self, names: &[&str]) {
        let mut any = false;
        for n in names {
            any |= self.sessions.remove(*n).is_some();
        }
        if any {
            crate::memory::release_free_memory();
        }
    }

    /// The prompt-cache key of `text` at `max_len` tokens, when a cache is in use.
    pub(super) fn prompt_key(
        &mut self,
        text: &str,
        max_len: usize,
    ) -> Result<Option<[u8; 32]>, RuntimeError> {
        if self.prompt_cache.is_none() {
            return Ok(None);
        }
        if self.text_identity.is_none() {
            let graph = self.model.graph("text_encoder")?;
            self.text_identity = Some(crate::prompt_cache::model_identity(&self.model.dir, &graph));
        }
        let id = self.text_identity.as_deref().unwrap_or_default();
        Ok(Some(crate::prompt_cache::key(id, max_len, text)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_models_keep_every_session_large_ones_one_stage() {
        const GIB: u64 = 1 << 30;
        assert_eq!(Residency::for_sizes(GIB / 2, 16 * GIB), Residency::All);
        assert_eq!(Residency::for_sizes(3 * GIB, 100 * GIB), Residency::Stage, "over 2 GiB of weights");
        assert_eq!(Residency::for_sizes(GIB, 6 * GIB), Residency::Stage, "over an eighth of the memory");
        assert_eq!(Residency::for_sizes(GIB / 2, 0), Residency::Stage, "memory unknown");
    }
}
