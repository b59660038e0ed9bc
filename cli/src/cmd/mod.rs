//! One module per subcommand: an `Args` struct (clap derive) and `run(args) -> anyhow::Result<()>`.
// MODULES-BEGIN
pub mod bench;
pub mod build;
pub mod calibrate;
pub mod check;
pub mod demo;
pub mod doctor;
pub mod encode;
pub mod export;
pub mod generate;
pub mod inspect;
pub mod lora;
pub mod schedule;
pub mod timesteps;
// MODULES-END
