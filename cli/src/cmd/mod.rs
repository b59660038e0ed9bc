//! One module per subcommand: an `Args` struct (clap derive) and `run(args) -> anyhow::Result<()>`.
//! Commands that build, convert or calibrate graphs exist only with the `full` feature.
// MODULES-BEGIN
pub mod bench;
pub mod bench_against;
#[cfg(feature = "full")]
pub mod build;
#[cfg(feature = "full")]
pub mod calibrate;
#[cfg(feature = "full")]
pub mod calibrate_cache;
#[cfg(feature = "full")]
pub mod calibrate_vocab;
#[cfg(feature = "full")]
pub mod check;
#[cfg(feature = "full")]
pub mod demo;
pub mod doctor;
pub mod encode;
#[cfg(feature = "full")]
pub mod eval;
#[cfg(feature = "full")]
pub mod export;
pub mod generate;
#[cfg(feature = "full")]
pub mod inspect;
#[cfg(feature = "full")]
pub mod lora;
pub mod schedule;
#[cfg(feature = "full")]
pub mod synth;
#[cfg(feature = "full")]
pub mod timesteps;
#[cfg(feature = "full")]
pub mod triton;
// MODULES-END

/// Writes `bytes` to `path` through a temporary file beside it, renamed on success, so a
/// failed write never leaves a half-written file under the final name.
pub fn write_atomic(path: &std::path::Path, bytes: impl AsRef<[u8]>) -> anyhow::Result<()> {
    use anyhow::Context;
    let tmp = flux2_runtime::images::tmp_path(path);
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}
