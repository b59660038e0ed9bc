//! `flux2 timesteps`: draw timesteps from a calibration distribution (shifted uniform,
//! logit-normal, plateau logit-normal; `flux2_calib::timesteps`), write them as CSV and optionally
//! plot their histogram over the analytic density.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args as ClapArgs, ValueEnum};
use flux2_calib::timesteps::{Distribution, Kind, Params, TimestepDist, TimestepError};

use crate::plot::{self, Figure};

/// The teaching part of `flux2 timesteps --help`.
const ABOUT_TIMESTEPS: &str = "\
Timesteps t in (0, 1) (t = 1 is pure noise), drawn the way a training run would, so that a
calibration set covers the noise levels a model sees. All three families take the alpha-shift

    s(alpha, u) = alpha*u / (1 + (alpha-1)*u),   i.e.  logit(s) = logit(u) + ln(alpha),

the map FLUX.2 applies to its sampling schedule (alpha > 1 moves mass towards noise):

  ts   u ~ U(0,1), t = s(alpha, u); density alpha / (alpha + (1-alpha)*t)^2.
  ln   logit(t) ~ N(mu + ln(alpha), sigma^2)  (SD3's logit-normal).
  pln  the ln density up to its mode t*, then flat at that height up to t = 1, renormalised.
       t* is the mode of the shifted density; when sigma^2 > 2 makes it bimodal, the higher peak
       (the smaller t on an exact tie).

Sampling maps one uniform per sample from a fixed xoshiro256++ stream through the inverse cdf,
so a seed gives bit-identical samples on every machine, and sample i depends only on (seed, i).

Output: CSV with the header `t` and one sample per line, each written with the shortest digits
that read back to the same f64. Files are written atomically (temporary file, then rename).

Examples:
  flux2 timesteps --dist ln --samples 5
  flux2 timesteps --dist ts --alpha 3 --samples 20000 --out ts.csv --plot ts.png
  flux2 timesteps --dist pln --mu -0.5 --sigma 1.2 --alpha 7.5 --seed 3 --out t.csv --plot t.png";

/// Which timestep distribution to draw from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Dist {
    /// Shifted uniform: t = s(alpha, u), u ~ U(0, 1). Reads --alpha only.
    Ts,
    /// Logit-normal: logit t ~ N(mu + ln alpha, sigma^2).
    Ln,
    /// Plateau logit-normal: the ln density up to its mode, flat after it.
    Pln,
}

/// Arguments of `flux2 timesteps`.
#[derive(ClapArgs, Debug)]
#[command(after_help = ABOUT_TIMESTEPS, allow_negative_numbers = true)]
pub struct Args {
    /// Distribution: ts (shifted uniform), ln (logit-normal) or pln (plateau logit-normal).
    #[arg(long, value_enum)]
    pub dist: Dist,
    /// Shift alpha > 0; 1 is no shift, 3 is SD3's, FLUX.2 uses about 7.5 at 1024x1024.
    #[arg(long, default_value_t = 1.0)]
    pub alpha: f64,
    /// Location mu of logit t before the shift (ln, pln).
    #[arg(long, default_value_t = 0.0)]
    pub mu: f64,
    /// Scale sigma > 0 of logit t (ln, pln); above sqrt(2) the logit-normal is bimodal.
    #[arg(long, default_value_t = 1.0)]
    pub sigma: f64,
    /// Number of samples, at least 1.
    #[arg(long, default_value_t = 1000)]
    pub samples: usize,
    /// Seed of the random stream.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write the CSV here instead of standard output.
    #[arg(long, value_name = "FILE.csv")]
    pub out: Option<PathBuf>,
    /// Also write a PNG: the samples' histogram under the analytic density (red).
    #[arg(long, value_name = "FILE.png")]
    pub plot: Option<PathBuf>,
}

/// Maps a library error to the command-line option it came from.
fn option_error(e: TimestepError) -> anyhow::Error {
    anyhow::anyhow!("invalid --{}: {e}", e.parameter())
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let kind = match args.dist {
        Dist::Ts => Kind::Ts,
        Dist::Ln => Kind::Ln,
        Dist::Pln => Kind::Pln,
    };
    if kind == Kind::Ts && (args.mu != 0.0 || args.sigma != 1.0) {
        log::warn!("--mu and --sigma do not apply to --dist ts; ignored");
    }
    let params = Params { alpha: args.alpha, mu: args.mu, sigma: args.sigma };
    let dist = TimestepDist::new(kind, params).map_err(option_error)?;
    let samples = dist.sample(args.samples, args.seed).map_err(option_error)?;
    if let TimestepDist::Pln(p) = &dist {
        log::info!("pln mode t* = {}, normaliser Z = {}", p.mode(), p.normaliser());
    }

    let mut csv = String::with_capacity(samples.len() * 20 + 2);
    csv.push_str("t\n");
    for t in &samples {
        csv.push_str(&format!("{t}\n"));
    }
    // Both outputs or neither: the CSV waits in a temporary file until the plot is written.
    let pending = args.out.as_deref().map(|p| stage(p, csv.as_bytes())).transpose()?;
    if let Some(png) = &args.plot {
        if let Err(e) = density_plot(&dist, &samples).write_png(png) {
            if let Some((tmp, _)) = &pending {
                let _ = std::fs::remove_file(tmp);
            }
            return Err(e);
        }
        eprintln!("wrote plot {}", png.display());
    }
    match pending {
        Some((tmp, path)) => {
            std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {} samples to {}", samples.len(), path.display());
        }
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(csv.as_bytes()).and_then(|()| out.flush()).context("writing to stdout")?;
        }
    }
    Ok(())
}

/// Writes `bytes` to a temporary file beside `path`; returns (temporary, final) paths.
fn stage(path: &Path, bytes: &[u8]) -> anyhow::Result<(PathBuf, PathBuf)> {
    let name = path.file_name().with_context(|| format!("--out {} has no file name", path.display()))?;
    let tmp = path.with_file_name(format!(".{}.tmp{}", name.to_string_lossy(), std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = BufWriter::new(std::fs::File::create(&tmp)?);
        f.write_all(bytes)?;
        f.flush()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow::Error::new(e).context(format!("writing --out {}", path.display()))
    })?;
    Ok((tmp, path.to_path_buf()))
}

/// The histogram of `samples` on [0, 1] with the analytic pdf drawn over it.
fn density_plot(dist: &TimestepDist, samples: &[f64]) -> Figure {
    let bins = ((samples.len() as f64).sqrt().round() as usize).clamp(10, 100);
    let bars = plot::histogram(samples, 0.0, 1.0, bins);
    let mut ts: Vec<f64> = (0..=2000).map(|i| (i as f64 / 2000.0).clamp(1e-9, 1.0 - 1e-9)).collect();
    if let TimestepDist::Pln(p) = dist {
        ts.push(p.mode()); // draw the corner of the plateau exactly
        ts.sort_by(f64::total_cmp);
    }
    let curve: Vec<(f64, f64)> = ts.iter().map(|&t| (t, dist.pdf(t))).collect();
    let top = bars.iter().map(|b| b.height).chain(curve.iter().map(|c| c.1)).fold(0.0, f64::max);
    Figure::new(800, 480)
        .x_range(0.0, 1.0)
        .y_range(0.0, if top > 0.0 { top * 1.05 } else { 1.0 })
        .bars(bars, plot::BLUE)
        .line(curve, plot::RED)
}
