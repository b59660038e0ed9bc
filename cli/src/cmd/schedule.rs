//! `flux2 schedule`: print the sampler's noise levels for an image size and step count as JSON.

use anyhow::Context;
use clap::Args as ClapArgs;
use flux2_runtime::schedule::{Schedule, Shift};
use serde::Serialize;

/// The teaching part of `flux2 schedule --help` (the subcommand's one-line about lives in main.rs).
const ABOUT_SCHEDULE: &str = "\
The base grid t_i = 1 - i/N (i = 0..N-1) is shifted towards more noise by a factor alpha,

    sigma = alpha*t / (1 + (alpha-1)*t),   i.e.  logit(sigma) = logit(t) + ln(alpha),

and a final sigma_N = 0 is appended; step i moves x <- x + (sigma_{i+1} - sigma_i)*v. Larger images
need more shift: at a given noise level more of the picture survives in many correlated tokens.
An image has S = (H/16)*(W/16) tokens.

Output (one line): {\"width\", \"height\", \"steps\", \"shift\", \"image_seq_len\" (S), \"mu\" (ln alpha),
\"alpha\", \"sigmas\" (N+1 float32 values from 1 down to 0), \"timesteps\" (sigma_i*1000 for i < N, the
model's time input)}.

Examples:
  flux2 schedule --width 1024 --height 1024 --steps 4
  flux2 schedule --width 1360 --height 768 --steps 50 --shift resolution
  flux2 schedule --width 2048 --height 2048 --steps 28 --shift fixed:3";

/// Arguments of `flux2 schedule`.
#[derive(ClapArgs, Debug)]
#[command(after_help = ABOUT_SCHEDULE)]
pub struct Args {
    /// Image width in pixels, a positive multiple of 16.
    #[arg(long, value_parser = parse_side)]
    pub width: usize,
    /// Image height in pixels, a positive multiple of 16.
    #[arg(long, value_parser = parse_side)]
    pub height: usize,
    /// Number of sampling steps (model calls), at least 1. FLUX.2 [dev] and klein base use 50,
    /// the distilled klein models 4.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub steps: u32,
    /// How alpha is chosen:
    ///   empirical           the FLUX.2 reference (diffusers, BFL): alpha = e^mu with mu fitted to the
    ///                       token count S and the steps N (mu = 0.00016927*S + 0.45666666 above 4300
    ///                       tokens, a line in N below). Matches diffusers to the last bit.
    ///   resolution[:BASE]   alpha = sqrt(S / BASE), the SD3 paper's rule: no shift at BASE tokens, and
    ///                       alpha doubles when both sides double. BASE defaults to 64 tokens (128x128
    ///                       px): alpha = 8 at 1024x1024, where the reference uses 7.6 (50 steps) to
    ///                       9.9 (4 steps), and no jump at 4300 tokens.
    ///   fixed:ALPHA         a constant alpha > 0 (1 = no shift; SD3 used 3).
    #[arg(long, default_value = "empirical", verbatim_doc_comment)]
    pub shift: Shift,
}

/// A side length: a positive multiple of 16 (the latent grid is H/16 × W/16 tokens).
fn parse_side(s: &str) -> Result<usize, String> {
    let v: usize = s.parse().map_err(|_| format!("'{s}' is not a whole number of pixels"))?;
    if v == 0 || !v.is_multiple_of(16) {
        return Err(format!("{v} is not a positive multiple of 16 (try {})", (v / 16).max(1) * 16));
    }
    Ok(v)
}

#[derive(Serialize)]
struct Output {
    width: usize,
    height: usize,
    steps: usize,
    shift: String,
    image_seq_len: usize,
    mu: f64,
    alpha: f64,
    sigmas: Vec<f32>,
    timesteps: Vec<f32>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let steps = args.steps as usize;
    let s = Schedule::new(args.width, args.height, steps, args.shift)
        .with_context(|| format!("schedule for {}x{}, {steps} steps", args.width, args.height))?;
    let out = Output {
        width: args.width,
        height: args.height,
        steps,
        shift: args.shift.to_string(),
        image_seq_len: s.image_seq_len,
        mu: s.mu,
        alpha: s.alpha,
        timesteps: s.timesteps(),
        sigmas: s.sigmas,
    };
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}
