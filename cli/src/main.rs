//! `flux2`: export FLUX.2 checkpoints to ONNX, calibrate them to INT8/FP8, build TensorRT
//! engines and generate images. Thin: parses arguments, calls the libraries, prints.

mod cmd;
mod plot;
mod progress;

use clap::{Parser, Subcommand};

/// FLUX.2 deployment toolchain: safetensors -> ONNX -> (INT8/FP8 Q/DQ) -> ONNX Runtime / TensorRT.
#[derive(Parser)]
#[command(name = "flux2", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// More log output (-v info, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    // One line per command; each lives in cmd/<name>.rs with `Args` and `run`. Commands whose
    // Args carry their own doc comment (with examples) take their help from it.
    // COMMANDS-BEGIN
    #[cfg(feature = "full")]
    Calibrate(cmd::calibrate::Args),
    #[cfg(feature = "full")]
    #[command(name = "calibrate-cache")]
    CalibrateCache(cmd::calibrate_cache::Args),
    /// Print the sampler's noise schedule (sigmas) for a size and step count, as JSON.
    Schedule(cmd::schedule::Args),
    #[cfg(feature = "full")]
    Export(cmd::export::Args),
    #[cfg(feature = "full")]
    Inspect(cmd::inspect::Args),
    /// Sample calibration timesteps (ts, ln, pln) as CSV, optionally plotted over the density.
    #[cfg(feature = "full")]
    Timesteps(cmd::timesteps::Args),
    Generate(cmd::generate::Args),
    Encode(cmd::encode::Args),
    /// Export the shipped flux2-shapes model and draw a caption of its vocabulary (default: one).
    #[cfg(feature = "full")]
    Demo(cmd::demo::Args),
    #[cfg(feature = "full")]
    Check(cmd::check::Args),
    #[cfg(feature = "full")]
    Build(cmd::build::Args),
    Doctor(cmd::doctor::Args),
    /// Per-stage latency (min/median/p90), overhead outside ONNX Runtime and peak RSS of an exported model.
    Bench(cmd::bench::Args),
    #[cfg(feature = "full")]
    #[command(name = "synth-checkpoint", hide = true)]
    SynthCheckpoint(cmd::synth::Args),
    #[cfg(feature = "full")]
    Triton(cmd::triton::Args),
    #[cfg(feature = "full")]
    Eval(cmd::eval::Args),
    // COMMANDS-END
}

fn main() {
    // Die quietly on a closed pipe (`flux2 inspect | head`) like other Unix tools, instead
    // of panicking in println!.
    // SAFETY: setting a signal disposition at start-up, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    let result = match cli.command {
        // DISPATCH-BEGIN
        #[cfg(feature = "full")]
        Command::Calibrate(a) => cmd::calibrate::run(a),
        #[cfg(feature = "full")]
        Command::CalibrateCache(a) => cmd::calibrate_cache::run(a),
        Command::Schedule(a) => cmd::schedule::run(a),
        #[cfg(feature = "full")]
        Command::Export(a) => cmd::export::run(a),
        #[cfg(feature = "full")]
        Command::Inspect(a) => cmd::inspect::run(a),
        #[cfg(feature = "full")]
        Command::Timesteps(a) => cmd::timesteps::run(a),
        Command::Generate(a) => cmd::generate::run(a),
        Command::Encode(a) => cmd::encode::run(a),
        #[cfg(feature = "full")]
        Command::Demo(a) => cmd::demo::run(a),
        #[cfg(feature = "full")]
        Command::Check(a) => cmd::check::run(a),
        #[cfg(feature = "full")]
        Command::Build(a) => cmd::build::run(a),
        Command::Doctor(a) => cmd::doctor::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        #[cfg(feature = "full")]
        Command::SynthCheckpoint(a) => cmd::synth::run(a),
        #[cfg(feature = "full")]
        Command::Triton(a) => cmd::triton::run(a),
        #[cfg(feature = "full")]
        Command::Eval(a) => cmd::eval::run(a),
        // DISPATCH-END
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
