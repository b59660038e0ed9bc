//! Session creation off the critical path: with [`Residency::All`] the sessions a request
//! needs besides the text encoder's (DiT or its parts, VAE decoder, VAE encoder) are created
//! on background threads while the text encoder is created and runs, instead of one after
//! another before any work. A cold process then waits only for what the first stage needs;
//! the rest has usually been made by the time its stage starts. The sessions are the same
//! objects the sequential path makes (same factory, same options, same overrides), so outputs
//! are unchanged bit for bit.
//!
//! [`Residency::Stage`] never prefetches: it exists to keep one stage's weights resident, and
//! building the next stage's session during the current one would hold both.

use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::Instant;

use ort::session::Session;

use super::{Pipeline, Residency};
use crate::RuntimeError;

/// A session being created on another thread: the session (or the factory's error) and the
/// seconds its creation took.
pub(super) type Pending = JoinHandle<(Result<Session, RuntimeError>, f64)>;

impl Pipeline {
    /// Starts creating the sessions of `names` that are neither resident nor already being
    /// created, each on its own thread (with [`Residency::All`] only; otherwise nothing).
    pub(super) fn prefetch(&mut self, names: &[&str]) -> Result<(), RuntimeError> {
        if self.residency != Residency::All {
            return Ok(());
        }
        for &name in names {
            if self.sessions.contains_key(name) || self.pending.contains_key(name) {
                continue;
            }
            let path: PathBuf = self.model.graph(name)?;
            let spec = self.spec(name);
            let factory = self.factory.clone();
            let handle = std::thread::Builder::new()
                .name(format!("flux2-session-{name}"))
                .spawn(move || {
                    let t = Instant::now();
                    let s = factory(&path, &spec);
                    (s, t.elapsed().as_secs_f64())
                })
                .map_err(|e| RuntimeError::Run(format!("session {name}: cannot start a thread: {e}")))?;
            self.pending.insert(name.to_string(), handle);
        }
        Ok(())
    }

    /// The session of `name` if a prefetch of it was started: waits for it (the wait counts as
    /// load time) and returns its result; None when none was started.
    pub(super) fn take_pending(&mut self, name: &str) -> Option<Result<Session, RuntimeError>> {
        let handle = self.pending.remove(name)?;
        let t = Instant::now();
        let joined = handle.join();
        self.load_time += t.elapsed().as_secs_f64();
        Some(match joined {
            Ok((result, seconds)) => {
                log::debug!("session {name}: created in the background in {seconds:.2} s");
                result
            }
            Err(_) => Err(RuntimeError::Run(format!("session {name}: its creation thread panicked"))),
        })
    }

    /// Waits for every prefetch still running (their sessions become resident; the first
    /// error, if any, is returned). Used before the pipeline's state changes under them.
    pub(super) fn settle_pending(&mut self) -> Result<(), RuntimeError> {
        let names: Vec<String> = self.pending.keys().cloned().collect();
        let mut first_err = None;
        for name in names {
            match self.take_pending(&name) {
                Some(Ok(s)) => {
                    self.sessions.insert(name, s);
                }
                Some(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                None => {}
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}
