//! Process memory as the pipeline reports it: the peak resident set size (RSS) of each stage.
//!
//! On Linux the kernel keeps the process's high-water mark of RSS (`VmHWM` in
//! `/proc/self/status`), and writing `5` to `/proc/self/clear_refs` resets it to the current
//! RSS. Resetting it before a stage and reading it after gives the peak RSS during that stage
//! alone (what is resident from earlier stages included: the number a memory budget is about).
//! Elsewhere, or where the file cannot be written, every figure is `None`: never a made-up
//! number, and never a cumulative peak passed off as one stage's.

use std::path::Path;

/// Peak RSS per pipeline stage, bytes (`None`: not measured, or not measurable here).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StagePeaks {
    /// Session creation (the largest of the graphs' creations when they are made stage by stage).
    pub load: Option<u64>,
    pub text_encoder: Option<u64>,
    pub vae_encode: Option<u64>,
    pub denoise: Option<u64>,
    pub vae_decode: Option<u64>,
    /// The largest of the above: the generation's peak RSS.
    pub overall: Option<u64>,
}

impl StagePeaks {
    /// The slot of stage `name` (`load`, `text_encoder`, `vae_encode`, `denoise`, `vae_decode`).
    fn slot(&mut self, name: &str) -> Option<&mut Option<u64>> {
        Some(match name {
            "load" => &mut self.load,
            "text_encoder" => &mut self.text_encoder,
            "vae_encode" => &mut self.vae_encode,
            "denoise" => &mut self.denoise,
            "vae_decode" => &mut self.vae_decode,
            _ => return None,
        })
    }

    /// Records a peak for stage `name`, keeping the larger of it and what is there (an unknown
    /// stage name records nothing).
    pub fn record(&mut self, name: &str, bytes: Option<u64>) {
        let Some(b) = bytes else { return };
        if let Some(slot) = self.slot(name) {
            *slot = Some(slot.map_or(b, |v| v.max(b)));
            self.overall = Some(self.overall.map_or(b, |v| v.max(b)));
        }
    }

    /// Drops stage `name`'s figure (a stage that had nothing to do) and recomputes `overall`.
    pub fn forget(&mut self, name: &str) {
        if let Some(slot) = self.slot(name) {
            *slot = None;
        }
        let stages = [self.load, self.text_encoder, self.vae_encode, self.denoise, self.vae_decode];
        self.overall = stages.into_iter().flatten().max();
    }

    /// Stage by stage the larger of `self` and `other` (peaks over several generations).
    pub fn max(&self, other: &StagePeaks) -> StagePeaks {
        let m = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        StagePeaks {
            load: m(self.load, other.load),
            text_encoder: m(self.text_encoder, other.text_encoder),
            vae_encode: m(self.vae_encode, other.vae_encode),
            denoise: m(self.denoise, other.denoise),
            vae_decode: m(self.vae_decode, other.vae_decode),
            overall: m(self.overall, other.overall),
        }
    }

    /// `(stage, bytes)` of the measured stages, in pipeline order.
    pub fn entries(&self) -> Vec<(&'static str, u64)> {
        [
            ("load", self.load),
            ("text_encoder", self.text_encoder),
            ("vae_encode", self.vae_encode),
            ("denoise", self.denoise),
            ("vae_decode", self.vae_decode),
            ("overall", self.overall),
        ]
        .into_iter()
        .filter_map(|(n, v)| Some((n, v?)))
        .collect()
    }
}

impl std::fmt::Display for StagePeaks {
    /// `text_encoder 1234 MiB, denoise ...`, or `unknown` when nothing was measured.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let e = self.entries();
        if e.is_empty() {
            return write!(f, "unknown (no /proc/self/status or clear_refs)");
        }
        let parts: Vec<String> =
            e.iter().map(|(n, b)| format!("{n} {:.0} MiB", *b as f64 / (1u64 << 20) as f64)).collect();
        write!(f, "{}", parts.join(", "))
    }
}

/// Memory the system can give without swapping (`MemAvailable` of `/proc/meminfo`), bytes.
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let rest = info.lines().find_map(|l| l.strip_prefix("MemAvailable:"))?;
    let kb: u64 = rest.split_whitespace().next()?.parse().ok()?;
    Some(kb * 1024)
}

/// A `kB` field of `/proc/self/status` (`VmHWM`, `VmRSS`), in bytes.
fn status_field(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let rest = status.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?;
    let kb: u64 = rest.split_whitespace().next()?.parse().ok()?;
    Some(kb * 1024)
}

/// Peak RSS of this process since it started or since the last [`reset_peak`], bytes.
pub fn peak_rss() -> Option<u64> {
    status_field("VmHWM")
}

/// Current RSS of this process, bytes.
pub fn current_rss() -> Option<u64> {
    status_field("VmRSS")
}

/// Resets the peak RSS to the current RSS; false where that is not possible (then a later
/// [`peak_rss`] still counts from the process's start).
pub fn reset_peak() -> bool {
    let path = Path::new("/proc/self/clear_refs");
    path.exists() && std::fs::write(path, "5").is_ok()
}

/// Measures the peak RSS of one stage: [`Meter::start`] before it, [`Meter::stop`] after.
/// A disabled meter (or one on a system that cannot reset the peak) measures nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct Meter {
    pub enabled: bool,
    armed: bool,
}

impl Meter {
    pub fn new(enabled: bool) -> Meter {
        Meter { enabled, armed: false }
    }

    /// Resets the peak, when enabled.
    pub fn start(&mut self) {
        self.armed = self.enabled && reset_peak();
    }

    /// The peak RSS since [`Meter::start`], recorded as stage `name` of `peaks`.
    pub fn stop(&mut self, peaks: &mut StagePeaks, name: &str) {
        if std::mem::take(&mut self.armed) {
            peaks.record(name, peak_rss());
        }
    }
}

/// Gives the C allocator's free memory back to the system (after a stage's sessions are
/// dropped), so the next stage's peak does not sit on top of freed but still mapped heap.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::os::raw::c_int;
        }
        // SAFETY: glibc's malloc_trim takes a byte count and only returns unused heap pages to
        // the kernel; it is thread-safe and has no preconditions.
        unsafe {
            malloc_trim(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_keeps_the_largest_and_the_overall() {
        let mut p = StagePeaks::default();
        p.record("denoise", Some(10));
        p.record("denoise", Some(7));
        p.record("text_encoder", Some(12));
        p.record("no such stage", Some(99));
        p.record("vae_decode", None);
        assert_eq!(p.denoise, Some(10));
        assert_eq!(p.text_encoder, Some(12));
        assert_eq!(p.vae_decode, None);
        assert_eq!(p.overall, Some(12));
        let q =
            StagePeaks { vae_decode: Some(3), denoise: Some(11), overall: Some(11), ..Default::default() };
        let m = p.max(&q);
        assert_eq!(
            (m.denoise, m.vae_decode, m.text_encoder, m.overall),
            (Some(11), Some(3), Some(12), Some(12))
        );
        p.forget("text_encoder");
        assert_eq!((p.text_encoder, p.overall), (None, Some(10)));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_stage_peak_sees_an_allocation_and_a_reset_forgets_it() {
        let mut meter = Meter::new(true);
        let mut peaks = StagePeaks::default();
        meter.start();
        let big = vec![1u8; 64 << 20];
        std::hint::black_box(&big);
        let before = current_rss().unwrap_or(0);
        meter.stop(&mut peaks, "denoise");
        drop(big);
        release_free_memory();
        let Some(denoise) = peaks.denoise else { return }; // clear_refs not writable here
        assert!(denoise >= before && denoise >= 64 << 20, "peak {denoise} < RSS {before}");
        meter.start();
        meter.stop(&mut peaks, "vae_decode");
        let decode = peaks.vae_decode.unwrap_or(u64::MAX);
        assert!(decode + (32 << 20) < denoise, "after a reset the peak is {decode}, was {denoise}");
    }
}
