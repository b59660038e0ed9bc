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
