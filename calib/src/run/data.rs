//! Calibration inputs for each graph, seeded and recorded.
//!
//! * **Prompts**: `--prompts FILE` or [`built_in_prompts`]; every fifth prompt is held out.
//!   The text encoder sees each tokenised prompt. The DiT gets the float text encoder's
//!   embeddings, or seeded N(0, 1) embeddings when the model has no text encoder (noted).
//! * **DiT**: one sampling trajectory per (size, step count, reference count) with the float
//!   DiT and the sampler's own schedule (flux2-arch.md §6), noise from `runtime::noise`. At σ
//!   values drawn from the chosen timestep distribution, shifted by the trajectory's α, the
//!   input is taken on the Euler path: x_σ = x_i + (σ − σ_i)·v_i for σ_i ≥ σ > σ_{i+1}, exactly
//!   where the sampler's piecewise-linear trajectory passes through σ. References are earlier
//!   trajectories' final latents (same token space as encoded images), with ids (10+10k, i, j, 0).
//!   Held-out trajectories use held-out prompts and their own seeds.
//! * **VAE decoder**: the trajectories' final latents; **VAE encoder**: their float decodings.
//!   Without a DiT, seeded N(0, 1) latents at the calibration sizes stand in.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::timesteps::{Distribution, Params, Rng, TimestepDist};
use ndarray::{ArrayD, IxDyn};
use serde::Serialize;

use super::{opt_err, CalibrateError, CalibrateOptions, Event};
use flux2_runtime::model_dir::{Guidance, ModelDir};
use flux2_runtime::schedule::{euler_step, Schedule, Shift};
use flux2_runtime::tensors::{run, Input};
use flux2_runtime::tokenizer::{Family, PromptEncoder};
use flux2_runtime::{cpu_session, SessionOptions};

/// One set of graph inputs (shared tensors are reference-counted).
#[derive(Clone, Debug)]
pub(super) struct Sample {
    pub inputs: Vec<(String, Arc<Input>)>,
}

impl Sample {
    /// The inputs as ONNX Runtime takes them.
    pub fn feed(&self) -> Vec<(&str, Input)> {
        self.inputs.iter().map(|(n, v)| (n.as_str(), (**v).clone())).collect()
    }

    pub fn get(&self, name: &str) -> Option<&Input> {
        self.inputs.iter().find(|(n, _)| n == name).map(|(_, v)| &**v)
    }
}

/// Calibration and held-out samples of one graph.
#[derive(Default)]
pub(super) struct GraphData {
    pub calibration: Vec<Sample>,
    pub heldout: Vec<Sample>,
    pub source: String,
}

/// One recorded trajectory.
#[derive(Clone, Debug, Serialize)]
pub struct TrajectoryRecord {
    pub split: &'static str,
    pub width: usize,
    pub height: usize,
    pub steps: usize,
    pub prompt: usize,
    pub seed: u64,
    pub alpha: f64,
    /// Indices of the trajectories whose final latents are the references.
    pub references: Vec<usize>,
    /// The drawn noise levels at which DiT inputs were taken.
    pub sigmas: Vec<f32>,
}

/// `calibration.json`: how the calibration set was made (re-running with it and the same
/// model gives the same samples and bit-identical scales).
#[derive(Clone, Debug, Serialize)]
pub struct CalibrationRecord {
    pub options: CalibrateOptions,
    pub prompts: Vec<String>,
    pub heldout_prompts: Vec<usize>,
    pub text_embeddings: String,
    pub trajectories: Vec<TrajectoryRecord>,
    /// Per graph: (calibration, held-out) sample counts and the data source.
    pub graphs: BTreeMap<String, (usize, usize, String)>,
    pub ort_threads: usize,
}

/// Prompts used when `--prompts` is not given.
pub fn built_in_prompts() -> Vec<String> {
    [
        "a red fox sitting in fresh snow, morning light",
        "an isometric illustration of a tiny floating island with a lighthouse",
        "close-up portrait of an elderly fisherman, weathered skin, film grain",
        "a bowl of ramen on a wooden table, steam rising, shallow depth of field",
        "a neon-lit street in Tokyo at night in the rain",
        "watercolor painting of a mountain lake at sunset",
        "a vintage poster that says \"FLUX\" in bold art-deco letters",
        "macro photo of a dew drop on a green leaf",
        "a cozy reading nook with a cat sleeping on a pile of books",
        "an astronaut riding a horse across a desert, cinematic",
        "a detailed pencil sketch of a steam locomotive",
        "a minimalist logo of a hummingbird, flat vector, white background",
        "aerial view of terraced rice fields in Bali",
        "a glass chess set on a marble floor, studio lighting",
        "children flying kites on a windy beach, 35mm photo",
        "a medieval castle on a cliff during a thunderstorm",
        "a plate of colorful macarons arranged in a spiral",
        "an oil painting of a busy harbor in the 18th century",
        "a robot watering plants in a greenhouse",
        "snow-covered pine forest under the northern lights",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A seed for item `i` of stream `tag`, independent across streams.
pub(super) fn derive_seed(seed: u64, tag: u64, i: u64) -> u64 {
    let mut r =
        Rng::new(seed ^ tag.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i.wrapping_mul(0xD1B5_4A32_D192_ED03));
    r.next_u64()
}

fn f32_input(shape: &[usize], data: Vec<f32>) -> Result<Arc<Input>, CalibrateError> {
    let a =
        ArrayD::from_shape_vec(IxDyn(shape), data).map_err(|e| opt_err("calibration data", e.to_string()))?;
    Ok(Arc::new(Input::F32(a)))
}

fn i64_input(shape: &[usize], data: Vec<i64>) -> Result<Arc<Input>, CalibrateError> {
    let a =
        ArrayD::from_shape_vec(IxDyn(shape), data).map_err(|e| opt_err("calibration data", e.to_string()))?;
    Ok(Arc::new(Input::I64(a)))
}

/// [C, h, w] → [h·w, C] tokens.
pub(super) fn pack(x: &[f32], c: usize, hw: usize) -> Vec<f32> {
    let mut out = vec![0f32; c * hw];
    for ch in 0..c {
        for p in 0..hw {
            out[p * c + ch] = x[ch * hw + p];
        }
    }
    out
}

/// [h·w, C] tokens → [C, h, w].
pub(super) fn unpack(t: &[f32], c: usize, hw: usize) -> Vec<f32> {
    let mut out = vec![0f32; c * hw];
    for p in 0..hw {
        for ch in 0..c {
            out[ch * hw + p] = t[p * c + ch];
        }
    }
    out
}

/// Splits prompts into (calibration, held-out) indices: every fifth is held out (the last one
/// when there are fewer than five).
pub(super) fn split_prompts(n: usize) -> (Vec<usize>, Vec<usize>) {
    let (mut cal, mut held): (Vec<usize>, Vec<usize>) = (0..n).partition(|i| i % 5 != 4);
    if held.is_empty() && n >= 2 {
        held.extend(cal.pop());
    }
    (cal, held)
}

/// Token ids and masks of each prompt (needs the exported tokenizer).
pub(super) fn tokenize(
    model: &ModelDir,
    prompts: &[String],
    max_len: usize,
) -> Result<Vec<Sample>, CalibrateError> {
    let dir = model.tokenizer_dir().ok_or_else(|| {
        opt_err(
            "--components",
            "the text encoder was exported without tokenizer/ (export from a diffusers folder)",
        )
    })?;
    let cfg = model.dir.join("text_encoder_config.json");
    let family = Family::from_config_file(&cfg)
        .map_err(|e| opt_err("text encoder", format!("{}: {e}", cfg.display())))?;
    let enc =
        PromptEncoder::from_tokenizer_dir(&dir, family).map_err(|e| opt_err("tokenizer", e.to_string()))?;
    let mut out = Vec::new();
    for p in prompts {
        let e = enc.encode(&[p.as_str()], max_len).map_err(|e| opt_err("--prompts", e.to_string()))?;
        out.push(Sample {
            inputs: vec![
                ("input_ids".into(), i64_input(&[1, e.len], e.input_ids)?),
                ("attention_mask".into(), i64_input(&[1, e.len], e.attention_mask)?),
            ],
        });
    }
    Ok(out)
}

/// Prompt embeddings [1, L, ctx] for every prompt: from the float text encoder, or seeded
/// N(0, 1) when there is none. Returns them and a description.
pub(super) fn embeddings(
    model: &ModelDir,
    tokens: Option<&[Sample]>,
    n: usize,
    opts: &CalibrateOptions,
    sess: &SessionOptions,
) -> Result<(Vec<Arc<Input>>, String), CalibrateError> {
    let ctx = model
        .context_dim()
        .ok_or_else(|| opt_err("model", "the transformer has no encoder_hidden_states input"))?;
    match tokens {
        Some(tokens) => {
            let mut s = cpu_session(&model.graph("text_encoder")?, sess)?;
            let mut out = Vec::new();
            for t in tokens {
                let mut o = run(&mut s, t.feed())?;
                let e = o.remove("prompt_embeds").ok_or_else(|| CalibrateError::Graph {
                    graph: "text_encoder".into(),
                    msg: "no prompt_embeds output".into(),
                })?;
                if e.shape().last() != Some(&ctx) {
                    return Err(CalibrateError::Graph {
                        graph: "text_encoder".into(),
                        msg: format!(
                            "prompt_embeds {:?} do not match the transformer's context width {ctx}",
                            e.shape()
                        ),
                    });
                }
                out.push(Arc::new(Input::F32(e)));
            }
            Ok((out, "float text encoder on the prompts".into()))
        }
        None => {
            let l = opts.max_sequence_length;
            let out = (0..n)
                .map(|i| {
                    f32_input(
                        &[1, l, ctx],
                        flux2_runtime::noise::noise(derive_seed(opts.seed, 1, i as u64), &[1, l, ctx]),
                    )
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((
                out,
                format!("seeded N(0,1) prompt embeddings [1, {l}, {ctx}] (the model has no text encoder)"),
            ))
        }
    }
}

/// Trajectory plan: (split, width, height, steps, refs, prompt index).
pub(super) fn trajectory_plan(
    opts: &CalibrateOptions,
    steps: &[usize],
    cal_prompts: &[usize],
    held_prompts: &[usize],
) -> Vec<(&'static str, usize, usize, usize, usize, usize)> {
    let mut plan = Vec::new();
    let mut refs = opts.references.clone();
    refs.sort_unstable();
    let mut k = 0;
    for &r in &refs {
        for &(w, h) in &opts.sizes {
            for &s in steps {
                plan.push(("calibration", w, h, s, r, cal_prompts[k % cal_prompts.len()]));
                k += 1;
            }
        }
    }
    for (i, &(w, h)) in opts.sizes.iter().enumerate() {
        let r = refs[i % refs.len()];
        plan.push(("heldout", w, h, steps[0], r, held_prompts[i % held_prompts.len()]));
    }
    plan.sort_by_key(|p| (p.0 != "calibration", p.4));
    plan
}

/// Reference tokens of one trajectory, their position ids, and which trajectories they came from.
struct References {
    tokens: Vec<f32>,
    ids: Vec<i64>,
    from: Vec<usize>,
}

/// `n` references: the latest earlier trajectories' final latents (seeded noise while there are
/// none yet), reference k with ids (10 + 10k, i, j, 0) over its own grid (flux2-arch.md §6.6).
fn references(
    finals: &[(usize, usize, Vec<f32>)],
    n: usize,
    (c, h, w): (usize, usize, usize),
    seed: u64,
) -> References {
    let mut r = References { tokens: vec![], ids: vec![], from: vec![] };
    for k in 0..n {
        let (rh, rw, tokens) = match finals.len().checked_sub(k + 1) {
            Some(j) => {
                r.from.push(j);
                finals[j].clone()
            }
            None => (
                h,
                w,
                pack(&flux2_runtime::noise::noise(seed.wrapping_add(k as u64), &[1, c, h, w]), c, h * w),
            ),
        };
        r.tokens.extend(tokens);
        for i in 0..rh {
            for j in 0..rw {
                r.ids.extend([10 + 10 * k as i64, i as i64, j as i64, 0]);
            }
        }
    }
    r
}

/// What the trajectories produce.
pub(super) struct Trajectories {
    pub dit: GraphData,
    /// Final latents [1, C, h, w] of the calibration / held-out trajectories.
    pub latents: (Vec<Arc<Input>>, Vec<Arc<Input>>),
    pub records: Vec<TrajectoryRecord>,
}

/// Runs every planned trajectory with the float DiT and takes samples along it.
#[allow(clippy::too_many_arguments)]
pub(super) fn trajectories(
    model: &ModelDir,
    opts: &CalibrateOptions,
    steps: &[usize],
    (cal_prompts, held_prompts): (&[usize], &[usize]),
    embeds: &[Arc<Input>],
    uncond: Option<&Arc<Input>>,
    sess: &SessionOptions,
    on_event: &mut dyn FnMut(Event),
) -> Result<Trajectories, CalibrateError> {
    let plan = trajectory_plan(opts, steps, cal_prompts, held_prompts);
    let calls: usize = plan.iter().map(|p| p.3).sum::<usize>() * if uncond.is_some() { 2 } else { 1 };
    on_event(Event::Stage { label: "trajectories", total: calls });
    let mut dit = cpu_session(&model.graph("transformer")?, sess)?;
    let (c, mode) = (model.latent_channels(), model.guidance_mode());
    let n_split = |s: &str| plan.iter().filter(|p| p.0 == s).count();
    let per = |split: &str, i: usize| {
        let (total, n) = if split == "calibration" {
            (opts.samples, n_split(split))
        } else {
            (opts.heldout, n_split(split))
        };
        total / n + usize::from(i < total % n)
    };
    let kind = opts.dist;
    let mut out = Trajectories { dit: GraphData::default(), latents: (vec![], vec![]), records: vec![] };
    let mut finals: Vec<(usize, usize, Vec<f32>)> = Vec::new(); // (h, w, tokens) per trajectory
    let mut done = 0;
    let mut index_in_split: BTreeMap<&str, usize> = BTreeMap::new();
    for (t, &(split, width, height, n_steps, n_refs, prompt)) in plan.iter().enumerate() {
        let (h, w) = (height / 16, width / 16);
        let seed = derive_seed(opts.seed, 2, t as u64);
        let schedule = Schedule::for_tokens(h * w, n_steps, Shift::Empirical)
            .map_err(|e| opt_err("--steps", e.to_string()))?;
        let refs = references(&finals, n_refs, (c, h, w), derive_seed(opts.seed, 3, t as u64));
        let (ref_tokens, ref_ids, ref_from) = (refs.tokens, refs.ids, refs.from);
        let s_total = h * w + ref_ids.len() / 4;
        let mut ids = Vec::with_capacity(s_total * 4);
        for i in 0..h {
            for j in 0..w {
                ids.extend([0, i as i64, j as i64, 0]);
            }
        }
        ids.extend(ref_ids);
        let img_ids = i64_input(&[1, s_total, 4], ids)?;
        let cond = embeds[prompt].clone();
        let l = match &*cond {
            Input::F32(a) => a.shape()[1],
            Input::I64(a) => a.shape()[1],
        };
        let txt_ids = i64_input(&[1, l, 4], (0..l).flat_map(|n| [0, 0, 0, n as i64]).collect())?;
        let dit_inputs = |x: &[f32], sigma: f32, text: &Arc<Input>| -> Result<Sample, CalibrateError> {
            let mut hidden = Vec::with_capacity(s_total * c);
            hidden.extend_from_slice(x);
            hidden.extend_from_slice(&ref_tokens);
            let mut inputs = vec![
                ("hidden_states".to_string(), f32_input(&[1, s_total, c], hidden)?),
                ("encoder_hidden_states".to_string(), text.clone()),
                ("timestep".to_string(), f32_input(&[1], vec![(sigma * 1000.0) / 1000.0])?),
                ("img_ids".to_string(), img_ids.clone()),
                ("txt_ids".to_string(), txt_ids.clone()),
            ];
            if mode == Guidance::Embedded {
                inputs.push(("guidance".to_string(), f32_input(&[1], vec![4.0])?));
            }
            Ok(Sample { inputs })
        };
        let mut velocity = |x: &[f32], sigma: f32| -> Result<Vec<f32>, CalibrateError> {
            let mut call = |text: &Arc<Input>| -> Result<Vec<f32>, CalibrateError> {
                let mut o = run(&mut dit, dit_inputs(x, sigma, text)?.feed())?;
                let v = o.remove("velocity").ok_or_else(|| CalibrateError::Graph {
                    graph: "transformer".into(),
                    msg: "no velocity output".into(),
                })?;
                Ok(v.iter().take(x.len()).copied().collect())
            };
            let vc = call(&cond)?;
            match uncond {
                Some(u) => {
                    let vu = call(u)?;
                    Ok(vu.iter().zip(&vc).map(|(u, c)| u + 4.0 * (c - u)).collect())
                }
                None => Ok(vc),
            }
        };
        let mut x = pack(&flux2_runtime::noise::noise(seed, &[1, c, h, w]), c, h * w);
        let mut path: Vec<(Vec<f32>, Vec<f32>)> = Vec::with_capacity(n_steps);
        for i in 0..n_steps {
            let (s0, s1) = (schedule.sigmas[i], schedule.sigmas[i + 1]);
            let v = velocity(&x, s0)?;
            path.push((x.clone(), v.clone()));
            euler_step(&mut x, &v, s0, s1).map_err(|e| opt_err("trajectory", e.to_string()))?;
            done += if uncond.is_some() { 2 } else { 1 };
            on_event(Event::Advance { done, total: calls });
        }
        let k = index_in_split.entry(split).or_insert(0);
        let count = per(split, *k);
        *k += 1;
        let dist = TimestepDist::new(
            kind,
            Params { alpha: schedule.alpha, mu: opts.dist_mu, sigma: opts.dist_sigma },
        )
        .map_err(|e| opt_err(&format!("--dist-{}", e.parameter()), e.to_string()))?;
        let drawn: Vec<f32> = if count > 0 {
            dist.sample(count, derive_seed(opts.seed, 4, t as u64))
                .map_err(|e| opt_err("--samples", e.to_string()))?
        } else {
            vec![]
        }
        .into_iter()
        .map(|t| t as f32)
        .collect();
        let target = if split == "calibration" { &mut out.dit.calibration } else { &mut out.dit.heldout };
        for &sigma in &drawn {
            // the Euler segment containing σ: σ_i ≥ σ > σ_{i+1}
            let i = (0..n_steps).rfind(|&i| schedule.sigmas[i] >= sigma).unwrap_or(0);
            let (xi, vi) = &path[i];
            let d = sigma - schedule.sigmas[i];
            let xs: Vec<f32> = xi.iter().zip(vi).map(|(x, v)| x + d * v).collect();
            target.push(dit_inputs(&xs, sigma, &cond)?);
            if let Some(u) = uncond {
                target.push(dit_inputs(&xs, sigma, u)?);
            }
        }
        let lat = f32_input(&[1, c, h, w], unpack(&x, c, h * w))?;
        if split == "calibration" {
            out.latents.0.push(lat);
        } else {
            out.latents.1.push(lat);
        }
        finals.push((h, w, x));
        out.records.push(TrajectoryRecord {
            split,
            width,
            height,
            steps: n_steps,
            prompt,
            seed,
            alpha: schedule.alpha,
            references: ref_from,
            sigmas: drawn,
        });
    }
    out.dit.source = format!(
        "{} sampling trajectories (sizes {:?}, steps {steps:?}, references {:?}), σ ~ {}(μ={}, σ={}) shifted by each schedule's α",
        plan.len(),
        opts.sizes,
        opts.references,
        super::dist_name(kind),
        opts.dist_mu,
        opts.dist_sigma
    );
    Ok(out)
}
