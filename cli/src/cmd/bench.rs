//! `flux2 bench`: per-stage latency of the pipeline on an exported model, with sessions built
//! once and reused, as a serving process would run it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use flux2_runtime::cpu::CpuInfo;
use flux2_runtime::images::{write_png, Chw, Reference};
use flux2_runtime::memory::StagePeaks;
use flux2_runtime::pipeline::{Pipeline, PromptSource, Request, SessionFactory, Timings};
use flux2_runtime::prompt_cache::PromptCache;
use flux2_runtime::session_cache::CacheCounts;
use flux2_runtime::tensor_file::{read_tensor, Tensor};
use flux2_runtime::SessionOptions;
use serde_json::json;

use crate::plot::{self, Bar, Figure};

/// The rest of `--help`, after the options (the one-line about comes from main.rs).
const LONG_HELP: &str = "\
Runs --warmup untimed generations, then --runs timed ones, and reports min / median / p90
of: the text encoder, each DiT step (pooled over runs), the VAE encoder (per generation,
all references), the VAE decoder and the whole generation, plus the share of time spent
outside ONNX Runtime calls (our own overhead), session creation and the peak RSS of each
stage (session creation, text encoder, VAE encode, denoise, VAE decode; Linux). --residency
stage drops each stage's session when it ends (as `flux2 generate` does), so the peaks show
one stage's weights at a time; the default keeps all sessions, as a server would. --refs N
benchmarks editing with N synthetic reference images of the output size. --batch N makes N
images per generation (seeds 0..N, as `flux2 generate --num-images N`): the stages are then
times per batch, and images/s is N over the end-to-end time.

The CPU model and its instruction sets (AVX2, AVX-512, VNNI, AMX, BF16; from /proc/cpuinfo)
head the report and are in the JSON (`cpu`), so figures from different machines can be told
apart.

Without a text encoder in the export (or with --prompt-embeds), random embeddings of the
model's context width and --max-sequence-length tokens stand in for the prompt (and, for a
true-CFG model without a text encoder, for the empty negative prompt too).

Examples:
  flux2 bench --model klein-onnx
  flux2 bench --model klein-onnx --width 512 --height 512 --runs 10 --json bench.json --plot bench.png
  flux2 bench --model klein-onnx --refs 2 --steps 4
  for n in 1 2 4; do flux2 bench --model klein-onnx --batch $n --json bench-b$n.json; done
  flux2 calibrate --model klein-onnx --precision int8 --out klein-int8
  flux2 bench --model klein-onnx --against klein-int8   # f32 and INT8 side by side, image PSNR
  flux2 bench --model shapes-onnx --against shapes-int8 --adherence 96   # + prompt adherence of both
  flux2 bench --model klein-base-onnx --steps 50 --cache fbc:0.1     # step caching: speed and DiT evaluations";

/// Measure per-stage latency of an exported model (sessions created once, then reused).
#[derive(clap::Args)]
#[command(after_long_help = LONG_HELP)]
pub struct Args {
    /// Export folder (with manifest.json).
    #[arg(long)]
    pub model: PathBuf,
    /// Width in pixels (multiple of 16).
    #[arg(long, default_value_t = 256)]
    pub width: usize,
    /// Height in pixels (multiple of 16).
    #[arg(long, default_value_t = 256)]
    pub height: usize,
    /// Sampling steps [default: 4 for distilled klein, 50 otherwise].
    #[arg(long)]
    pub steps: Option<usize>,
    /// Timed generations.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Untimed generations first (warm caches and allocator).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Images per generation (one batch; seeds 0, 1, ...).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Synthetic reference images (editing), each of the output size (at least 64×64).
    #[arg(long, default_value_t = 0)]
    pub refs: usize,
    /// Prompt text.
    #[arg(long, default_value = "a red fox sitting in the snow, soft morning light")]
    pub prompt: String,
    /// Prompt embeddings (safetensors, tensor `prompt_embeds` [1, L, ctx]) instead of text.
    #[arg(long, conflicts_with = "prompt")]
    pub prompt_embeds: Option<PathBuf>,
    /// Prompt length in tokens (the text encoder pads to it).
    #[arg(long, default_value_t = 512)]
    pub max_sequence_length: usize,
    /// Guidance (dev: embedded; klein base: CFG scale).
    #[arg(long)]
    pub guidance: Option<f32>,
    /// LoRA adapter applied at run time, FILE[:SCALE] (repeatable; scale 1 by default).
    #[arg(long, value_name = "FILE[:SCALE]")]
    pub lora: Vec<String>,
    /// Step caching: fbc:T, mag:T[,MAX_SKIP,RETENTION], taylor:N[,ORDER], tea:T, or off (see
    /// `flux2 generate --help`); the report counts full / first-block-only / skipped DiT evaluations.
    #[arg(long, value_name = "POLICY", default_value = "off")]
    pub cache: String,
    /// Execution provider: cpu, cuda or tensorrt.
    #[arg(long, default_value = "cpu")]
    pub provider: String,
    /// ONNX Runtime intra-op threads for the cpu provider [default: one per core].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Sessions kept between stages: all (created once, reused: a serving process) or stage
    /// (each stage's session created when it starts and dropped when it ends, as `flux2
    /// generate --residency stage` runs: one stage's weights resident at a time, sessions
    /// rebuilt every run) or auto (as `flux2 generate` chooses by the model's size).
    #[arg(long, value_name = "all|stage|auto", default_value = "all")]
    pub residency: String,
    /// Prompt-embedding cache: off (the text encoder runs every time, so it is timed), auto
    /// (<model>/.flux2-prompt-cache/ or the user cache folder) or a folder.
    #[arg(long, value_name = "off|auto|DIR", default_value = "off")]
    pub prompt_cache: String,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also plot median latency per stage (bars) with min–p90 whiskers as a PNG here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// A second export folder (e.g. the INT8 one `flux2 calibrate` made from --model), timed with
    /// the same request and printed side by side, with the PSNR of its image against --model's.
    #[arg(long)]
    pub against: Option<PathBuf>,
    /// With --against on a model that ships a vocabulary.json (the shapes model): also judge this
    /// many seeded captions with both folders and print their prompt adherence (0: skip).
    #[cfg(feature = "full")]
    #[arg(long, default_value_t = 48)]
    pub adherence: usize,
}

/// min / median / p90 of a sample set (nearest-rank percentiles), seconds.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Stats {
    pub n: usize,
    pub min: f64,
    pub median: f64,
    pub p90: f64,
    pub max: f64,
    pub mean: f64,
}

impl Stats {
    pub fn of(samples: &[f64]) -> Option<Stats> {
        if samples.is_empty() {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        let rank = |q: f64| s[((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1];
        let median =
            if s.len() % 2 == 1 { s[s.len() / 2] } else { (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0 };
        Some(Stats {
            n: s.len(),
            min: s[0],
            median,
            p90: rank(0.9),
            max: s[s.len() - 1],
            mean: s.iter().sum::<f64>() / s.len() as f64,
        })
    }
}

/// Writes `n` deterministic smooth-gradient PNGs of the output size (at least the pipeline's
/// 64 px a side) into `dir`.
fn synthetic_refs(dir: &Path, n: usize, width: usize, height: usize) -> anyhow::Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for k in 0..n {
        let (w, h) = (width.max(64), height.max(64));
        let mut data = vec![0f32; 3 * w * h];
        for y in 0..h {
            for x in 0..w {
                let (u, v) = (x as f32 / w as f32, y as f32 / h as f32);
                let phase = k as f32 * 1.7;
                data[y * w + x] = 0.5 + 0.5 * (6.0 * u + phase).sin();
                data[w * h + y * w + x] = 0.5 + 0.5 * (5.0 * v - phase).cos();
                data[2 * w * h + y * w + x] = 0.5 + 0.5 * (4.0 * (u + v) + phase).sin();
            }
        }
        let p = dir.join(format!("ref{k}.png"));
        write_png(&p, &Chw { width: w, height: h, data }, &[])?;
        paths.push(p);
    }
    Ok(paths)
}

/// Random prompt embeddings [1, L, ctx] (seeded).
fn random_embeds(pipe: &Pipeline, len: usize, seed: u64) -> anyhow::Result<PromptSource> {
    let ctx = pipe.model.context_dim().context("the transformer has no encoder_hidden_states input")?;
    let shape = vec![1, len, ctx];
    Ok(PromptSource::Embeds(Tensor { data: flux2_runtime::noise::noise(seed, &shape), shape }))
}

/// The timed stages of one generation: name -> samples (seconds).
fn stage_samples(runs: &[Timings], text: bool, refs: bool) -> Vec<(&'static str, Vec<f64>)> {
    let per_run = |f: fn(&Timings) -> f64| runs.iter().map(f).collect::<Vec<f64>>();
    let mut stages = vec![];
    if text {
        stages.push(("text_encoder", per_run(|t| t.text_encoder)));
    }
    stages.push(("dit_step", runs.iter().flat_map(|t| t.dit_steps.iter().copied()).collect()));
    stages.push(("denoise", per_run(|t| t.dit_steps.iter().sum())));
    if refs {
        stages.push(("vae_encode", per_run(|t| t.vae_encode)));
    }
    stages.push(("vae_decode", per_run(|t| t.vae_decode)));
    stages.push(("end_to_end", per_run(|t| t.total)));
    stages.push(("outside_ort", per_run(|t| t.total - t.ort)));
    stages
}

fn make_factory(args: &Args) -> anyhow::Result<SessionFactory> {
    flux2_runtime::request::session_factory(&args.provider, args.threads, 0)
        .with_context(|| format!("--provider {}", args.provider))
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let mut pipe = Pipeline::new(&args.model, make_factory(&args)?)?;
    super::generate::apply_adapters(&mut pipe, &args.lora)?;
    let residency = super::generate::parse_residency(&args.residency, &pipe)?;
    pipe.set_residency(residency);
    pipe.set_measure_memory(true);
    pipe.set_prompt_cache(PromptCache::from_option(&args.prompt_cache, &args.model)?);
    let has_text = pipe.model.entry("text_encoder").is_some();
    let prompt = match (&args.prompt_embeds, has_text) {
        (Some(p), _) => PromptSource::Embeds(read_tensor(p, "prompt_embeds")?),
        (None, true) => PromptSource::Text(args.prompt.clone()),
        (None, false) => random_embeds(&pipe, args.max_sequence_length, 1)?,
    };
    let tmp = std::env::temp_dir().join(format!("flux2-bench-{}", std::process::id()));
    let refs = if args.refs > 0 {
        std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        synthetic_refs(&tmp, args.refs, args.width, args.height)?
    } else {
        vec![]
    };
    let mut req = Request::new(prompt);
    (req.width, req.height, req.steps, req.guidance) =
        (Some(args.width), Some(args.height), args.steps, args.guidance);
    req.max_sequence_length = args.max_sequence_length;
    req.references = refs.into_iter().map(Reference::Path).collect();
    req.num_images = args.batch;
    req.cache = match args.cache.trim() {
        "" | "off" | "none" => None,
        c => Some(c.parse()?),
    };
    let true_cfg = pipe.model.guidance_mode() == flux2_runtime::model_dir::Guidance::TrueCfg;
    if !has_text && true_cfg && req.guidance.is_none_or(|g| g > 1.0) {
        // true CFG without a text encoder: the empty negative prompt's embeddings are random too
        req.negative = Some(random_embeds(&pipe, args.max_sequence_length, 2)?);
    }
    let mut peaks = StagePeaks::default();
    let result = measure(&mut pipe, &req, &args, &mut peaks).and_then(|(runs, load, steps, image)| {
        let against = match &args.against {
            Some(dir) => {
                let counts = (args.warmup, args.runs);
                #[allow(unused_mut)]
                let mut entry =
                    super::bench_against::compare(dir, make_factory(&args)?, &req, counts, (&runs, &image))?;
                #[cfg(feature = "full")]
                if args.adherence > 0 {
                    let make = || make_factory(&args);
                    if let Some(a) = super::bench_against::adherence(&args.model, dir, args.adherence, &make)?
                    {
                        entry["adherence"] = a;
                    }
                }
                Some(entry)
            }
            None => None,
        };
        Ok((runs, load, steps, against))
    });
    if tmp.exists() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    let (runs, load, steps, against) = result?;
    let text = matches!(req.prompt, PromptSource::Text(_));
    report(&args, &pipe, &runs, (load, steps, against, peaks), text)
}

/// Warm-up and timed runs: (timings of the timed runs, session creation seconds, steps, the
/// last batch's images, concatenated). The peak RSS per stage over every generation (warm-up
/// included: the first one creates the sessions) goes into `peaks`.
type Measured = (Vec<Timings>, f64, usize, Vec<f32>);

fn measure(
    pipe: &mut Pipeline,
    req: &Request,
    args: &Args,
    peaks: &mut StagePeaks,
) -> anyhow::Result<Measured> {
    let plan = pipe.plan(req)?;
    if req.cache.is_some() {
        if let Some(note) = pipe.cache_advice(&plan) {
            eprintln!("note: {note}");
        }
    }
    let steps = plan.schedule.steps();
    let total = (args.warmup + args.runs) as u64;
    let pb = crate::progress::bar(total, "bench");
    let mut load = 0.0;
    let mut runs = Vec::new();
    let mut image = Vec::new();
    for i in 0..args.warmup + args.runs {
        pb.set_message(if i < args.warmup { "warm-up" } else { "timed" });
        let out = pipe.generate_batch(req, &mut |_| std::ops::ControlFlow::Continue(()))?;
        *peaks = peaks.max(&out.timings.memory);
        if i == 0 {
            load = out.timings.load;
        }
        if i >= args.warmup {
            runs.push(out.timings);
        }
        image = out.images.into_iter().flat_map(|i| i.data).collect();
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok((runs, load, steps, image))
}

fn print_header(args: &Args, steps: usize, threads: usize, text: bool, cpu: &CpuInfo) {
    println!("CPU: {}", cpu.summary());
    println!(
        "{} — {}×{}, batch {}, {steps} steps, {} ref(s), prompt {}, provider {}, {threads} threads; {} warm-up + {} timed runs",
        args.model.display(),
        args.width,
        args.height,
        args.batch,
        args.refs,
        if text { "text" } else { "embeddings" },
        args.provider,
        args.warmup,
        args.runs
    );
}

fn report(
    args: &Args,
    pipe: &Pipeline,
    runs: &[Timings],
    (load, steps, against, peaks): (f64, usize, Option<serde_json::Value>, StagePeaks),
    text: bool,
) -> anyhow::Result<()> {
    let stages = stage_samples(runs, text, args.refs > 0);
    let threads = args.threads.unwrap_or_else(|| SessionOptions::default().intra_threads);
    let cpu = CpuInfo::detect();
    print_header(args, steps, threads, text, &cpu);
    let json_stages = print_stages(&stages);
    let outside: Vec<f64> = runs.iter().map(|t| (t.total - t.ort) / t.total.max(1e-12)).collect();
    let rate: Vec<f64> = runs.iter().map(|t| args.batch as f64 / t.total.max(1e-12)).collect();
    print_summary(&outside, &rate, args.batch, load, &peaks);
    let encoder = runs.last().map(|t| t.text_encoder_use).unwrap_or_default();
    let cache = cache_counts(pipe);
    println!(
        "session cache: {} graph(s) loaded from it, {} written, {} stale or damaged entries rebuilt",
        cache.hits, cache.writes, cache.rejected
    );
    let dit = runs.last().map(|t| t.dit).unwrap_or_default();
    println!(
        "DiT evaluations per generation (cache {}): {} full, {} first block only, {} skipped",
        args.cache, dit.full, dit.first_block_only, dit.skipped
    );
    if let Some(path) = &args.json {
        let doc = json!({
            "model": args.model.display().to_string(),
            "variant": pipe.model.manifest.variant,
            "cpu": cpu, "cpu_summary": cpu.summary(),
            "width": args.width, "height": args.height, "steps": steps, "refs": args.refs, "batch": args.batch,
            "runs": args.runs, "warmup": args.warmup, "provider": args.provider, "threads": threads,
            "prompt": if text { json!(args.prompt) } else { json!(null) },
            "max_sequence_length": args.max_sequence_length,
            "unit": "seconds",
            "stages": json_stages,
            "outside_ort_fraction": {"stats": Stats::of(&outside), "samples": outside},
            "images_per_second": {"stats": Stats::of(&rate), "samples": rate},
            "session_creation": load,
            "session_cache": {"hits": cache.hits, "writes": cache.writes, "rejected": cache.rejected},
            "peak_rss_bytes": peaks.overall,
            "peak_rss_per_stage": peaks,
            "residency": pipe.residency(),
            "text_encoder": encoder,
            "prompt_cache": pipe.prompt_cache().map(|c| json!({"dir": c.dir(), "counts": c.counts})),
            "against": against,
            "cache": args.cache,
            "dit_evaluations": dit,
        });
        super::write_atomic(path, &(serde_json::to_string_pretty(&doc)? + "\n"))?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &args.plot {
        plot_stages(path, &stages)?;
    }
    Ok(())
}

/// The session cache's counts summed over the model's graphs (`flux2_runtime::session_cache`).
fn cache_counts(pipe: &Pipeline) -> CacheCounts {
    let mut sum = CacheCounts::default();
    for e in pipe.model.manifest.graphs.values() {
        let c = flux2_runtime::session_cache::cache_counts(&pipe.model.dir.join(&e.file));
        (sum.hits, sum.writes, sum.rejected) =
            (sum.hits + c.hits, sum.writes + c.writes, sum.rejected + c.rejected);
    }
    sum
}

/// Prints the share outside ONNX Runtime, images/s, session creation and peak RSS.
fn print_summary(outside: &[f64], rate: &[f64], batch: usize, load: f64, peaks: &StagePeaks) {
    if let Some(f) = Stats::of(outside) {
        println!(
            "time outside ONNX Runtime calls: median {:.2}% (max {:.2}%) of end to end",
            100.0 * f.median,
            100.0 * f.max
        );
    }
    if let Some(r) = Stats::of(rate) {
        println!("images/s: median {:.4} (min {:.4}, max {:.4}; batch {batch})", r.median, r.min, r.max);
    }
    println!("session creation (first generation): {:.1} ms", load * 1e3);
    println!("peak RSS per stage: {peaks}");
}

/// Prints the min / median / p90 table; returns the stages as JSON (stats and samples).
fn print_stages(stages: &[(&str, Vec<f64>)]) -> serde_json::Map<String, serde_json::Value> {
    println!("{:<14} {:>5} {:>11} {:>11} {:>11}", "stage", "n", "min ms", "median ms", "p90 ms");
    let mut json_stages = serde_json::Map::new();
    for (name, samples) in stages {
        if let Some(s) = Stats::of(samples) {
            println!(
                "{name:<14} {:>5} {:>11.2} {:>11.2} {:>11.2}",
                s.n,
                s.min * 1e3,
                s.median * 1e3,
                s.p90 * 1e3
            );
            json_stages.insert(name.to_string(), json!({"stats": s, "samples": samples}));
        }
    }
    json_stages
}

/// Bars of the median (ms) per stage at x = 1, 2, …, with a min–p90 whisker; the stage names
/// are printed since the plot's font has digits only.
fn plot_stages(path: &Path, stages: &[(&str, Vec<f64>)]) -> anyhow::Result<()> {
    let shown: Vec<(&str, Stats)> = stages
        .iter()
        .filter(|(n, _)| *n != "denoise" && *n != "outside_ort")
        .filter_map(|(n, s)| Some((*n, Stats::of(s)?)))
        .collect();
    let mut fig = Figure::new(720, 420).x_range(0.4, shown.len() as f64 + 0.6);
    let bars: Vec<Bar> = (0..shown.len())
        .map(|i| Bar { x0: i as f64 + 0.7, x1: i as f64 + 1.3, height: shown[i].1.median * 1e3 })
        .collect();
    fig = fig.bars(bars, plot::BLUE);
    for (i, (_, s)) in shown.iter().enumerate() {
        let x = i as f64 + 1.0;
        fig = fig.line(vec![(x, s.min * 1e3), (x, s.p90 * 1e3)], plot::RED);
        fig = fig.line(vec![(x - 0.1, s.p90 * 1e3), (x + 0.1, s.p90 * 1e3)], plot::RED);
        fig = fig.line(vec![(x - 0.1, s.min * 1e3), (x + 0.1, s.min * 1e3)], plot::RED);
    }
    fig.write_png(path)?;
    let legend: Vec<String> =
        shown.iter().enumerate().map(|(i, (n, _))| format!("{} = {n}", i + 1)).collect();
    println!("wrote {} (ms; bars: median, whiskers: min–p90; x: {})", path.display(), legend.join(", "));
    Ok(())
}
