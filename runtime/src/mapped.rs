//! Mapped weights: a CPU session that runs a graph's weights as the export stores them, mapped
//! from its weight files, with one copy of each weight in memory.
//!
//! The fast CPU path makes a second copy of the weights while it creates a session: ONNX
//! Runtime's fusions (blocked `DequantizeLinear → MatMul` into `MatMulNBits`, which re-lays the
//! codes out) write new initializers, and pre-packing writes each weight again in the kernel's
//! layout; writing a session-cache entry reads them once more. For a graph whose weights take
//! more than half the memory available that is the difference between running and swapping or
//! being killed: FLUX.2 [dev]'s DiT is 17 GB at INT4 on a 24 GB machine.
//!
//! A mapped session therefore uses only ONNX Runtime's basic optimisations (constant folding,
//! which leaves `DequantizeLinear` of a weight alone while the Q/DQ transforms are enabled, and
//! redundant-node removal) and no pre-packing, and it never writes or reads the session cache.
//! ONNX Runtime maps external weight files into memory on the CPU provider, so the weights are
//! file pages shared with the page cache, read as the graph reaches them; low-bit weights are
//! dequantised one `DequantizeLinear` at a time into a buffer that lives until its `MatMul` has
//! run. Compute is slower (float matmuls on freshly dequantised weights instead of the fused
//! n-bit kernels) but the peak is one copy of the weights plus one layer's float weight.
//!
//! `auto` (the default) maps a graph when two copies of its weights would not fit in the memory
//! available (`MemAvailable`) when its session is created; `FLUX2_MAPPED_WEIGHTS=on|off|auto` or
//! [`crate::SessionOptions::mapped`] decide it instead.

use std::path::Path;

/// The auto rule: map when two copies of `weights` bytes exceed `available` (unknown memory:
/// never, the fast path is what a machine without `/proc/meminfo` gets).
pub fn auto_maps(weights: u64, available: Option<u64>) -> bool {
    available.is_some_and(|a| weights.saturating_mul(2) > a)
}

/// `FLUX2_MAPPED_WEIGHTS`: `Some(true)` for on, `Some(false)` for off, None for auto or unset.
fn from_env() -> Option<bool> {
    match std::env::var("FLUX2_MAPPED_WEIGHTS").ok()?.to_ascii_lowercase().as_str() {
        "on" | "1" | "true" => Some(true),
        "off" | "0" | "false" => Some(false),
        "auto" | "" => None,
        other => {
            log::warn!("FLUX2_MAPPED_WEIGHTS={other}: expected on, off or auto; using auto");
            None
        }
    }
}

/// Whether the CPU session of `path` runs mapped: the environment, else `choice`, else the
/// auto rule on the graph's weight bytes and the memory available now.
pub fn runs_mapped(path: &Path, choice: Option<bool>) -> bool {
    if let Some(b) = from_env().or(choice) {
        return b;
    }
    let weights = crate::model_dir::graph_file_bytes(path);
    let available = crate::memory::available_memory();
    let mapped = auto_maps(weights, available);
    if mapped {
        log::info!(
            "{}: {:.1} GB of weights, {:.1} GB of memory available: running them mapped as stored \
             (one copy; no pre-packing or fused n-bit kernels, so slower)",
            path.display(),
            weights as f64 / 1e9,
            available.unwrap_or(0) as f64 / 1e9
        );
    }
    mapped
}

#[cfg(test)]
mod tests {
    use super::*;

    const GB: u64 = 1_000_000_000;

    #[test]
    fn auto_maps_when_two_copies_do_not_fit() {
        assert!(!auto_maps(2 * GB, Some(22 * GB)), "klein-4B INT4 DiT on 24 GB: fast path");
        assert!(auto_maps(17 * GB, Some(22 * GB)), "[dev] INT4 DiT on 24 GB");
        assert!(auto_maps(15 * GB, Some(22 * GB)), "klein-4B f32 DiT on 24 GB");
        assert!(!auto_maps(11 * GB, Some(22 * GB)), "exactly two copies fit");
        assert!(!auto_maps(100 * GB, None), "unknown memory: fast path");
    }
}
