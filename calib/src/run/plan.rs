//! Assembling the calibration set of every graph to calibrate (see `calibrate_data.rs` for
//! where each kind of input comes from) and its record for `calibration.json`.

use std::collections::BTreeMap;
use std::sync::Arc;

use ndarray::{ArrayD, IxDyn};

use super::data::{
    derive_seed, embeddings, split_prompts, tokenize, trajectories, CalibrationRecord, GraphData, Sample,
};
use super::{built_in_prompts, opt_err, CalibrateError, CalibrateOptions, Event};
use flux2_runtime::model_dir::{Guidance, ModelDir};
use flux2_runtime::tensors::{run, Input};
use flux2_runtime::{cpu_session, SessionOptions};

fn has(model: &ModelDir, graph: &str) -> bool {
    model.entry(graph).is_some()
}

/// Channels of the VAE decoder's latent input (128 for FLUX.2).
fn decoder_channels(model: &ModelDir) -> usize {
    model
        .entry("vae_decoder")
        .and_then(|e| e.inputs.first())
        .and_then(|i| i.shape.get(1))
        .and_then(|d| d.parse().ok())
        .unwrap_or(128)
}

fn latent_sample(x: Arc<Input>) -> Sample {
    Sample { inputs: vec![("latents".into(), x)] }
}

/// Seeded N(0, 1) latents at the calibration sizes (when the model has no DiT).
fn random_latents(
    model: &ModelDir,
    opts: &CalibrateOptions,
    tag: u64,
    per_size: usize,
) -> Result<Vec<Arc<Input>>, CalibrateError> {
    let c = decoder_channels(model);
    let mut out = Vec::new();
    for k in 0..per_size {
        for (i, &(w, h)) in opts.sizes.iter().enumerate() {
            let shape = [1, c, h / 16, w / 16];
            let seed = derive_seed(opts.seed, tag, (k * opts.sizes.len() + i) as u64);
            let a = ArrayD::from_shape_vec(IxDyn(&shape), flux2_runtime::noise::noise(seed, &shape))
                .map_err(|e| opt_err("calibration data", e.to_string()))?;
            out.push(Arc::new(Input::F32(a)));
        }
    }
    Ok(out)
}

/// Float VAE decodings of `latents`, clamped to [−1, 1], as encoder inputs.
fn decode_all(
    model: &ModelDir,
    latents: &[Arc<Input>],
    sess: &SessionOptions,
) -> Result<Vec<Sample>, CalibrateError> {
    let mut s = cpu_session(&model.graph("vae_decoder")?, sess)?;
    let mut out = Vec::new();
    for l in latents {
        let mut o = run(&mut s, latent_sample(l.clone()).feed())?;
        let img = o.remove("image").ok_or_else(|| CalibrateError::Graph {
            graph: "vae_decoder".into(),
            msg: "no image output".into(),
        })?;
        let img = img.mapv(|v| v.clamp(-1.0, 1.0));
        out.push(Sample { inputs: vec![("image".into(), Arc::new(Input::F32(img)))] });
    }
    Ok(out)
}

/// `n` latents spread evenly over `all` (different sizes, references and prompts), each cropped
/// to at most `tile`×`tile` latent pixels at a seeded position. The VAE is convolutional: the
/// ranges of its activations come from local statistics, and a 256² crop costs a quarter of a
/// 512² decode, which made the VAE most of the calibration time.
fn vae_latents(
    all: &[Arc<Input>],
    n: usize,
    tile: usize,
    seed: u64,
) -> Result<Vec<Arc<Input>>, CalibrateError> {
    let n = n.min(all.len());
    let mut out = Vec::with_capacity(n);
    for k in 0..n {
        let x = &all[k * all.len() / n];
        let Input::F32(a) = &**x else {
            return Err(opt_err("calibration data", "VAE latents must be f32"));
        };
        let (h, w) = (a.shape()[2], a.shape()[3]);
        let (th, tw) = (tile.min(h), tile.min(w));
        let r = derive_seed(seed, k as u64, 0);
        let (y0, x0) = ((r as usize) % (h - th + 1), ((r >> 32) as usize) % (w - tw + 1));
        let crop = a.slice(ndarray::s![.., .., y0..y0 + th, x0..x0 + tw]).to_owned().into_dyn();
        out.push(Arc::new(Input::F32(crop)));
    }
    Ok(out)
}

/// Builds the samples of every graph in `graphs`.
pub(super) fn collect(
    model: &ModelDir,
    opts: &CalibrateOptions,
    graphs: &[String],
    steps: &[usize],
    sess: &SessionOptions,
    on_event: &mut dyn FnMut(Event),
) -> Result<(BTreeMap<String, GraphData>, CalibrationRecord), CalibrateError> {
    let wants = |g: &str| graphs.iter().any(|x| x == g);
    let prompts = opts.prompts.clone().unwrap_or_else(built_in_prompts);
    let (cal_idx, held_idx) = split_prompts(prompts.len());
    if cal_idx.is_empty() || held_idx.is_empty() {
        return Err(opt_err(
            "--prompts",
            format!("{} prompt(s); need at least 2 (one is held out)", prompts.len()),
        ));
    }
    let needs_traj = has(model, "transformer") && graphs.iter().any(|g| g != "text_encoder");
    let has_te = has(model, "text_encoder");
    let mut out: BTreeMap<String, GraphData> = BTreeMap::new();
    let mut record = CalibrationRecord {
        options: opts.clone(),
        prompts: prompts.clone(),
        heldout_prompts: held_idx.clone(),
        text_embeddings: String::new(),
        trajectories: vec![],
        graphs: BTreeMap::new(),
        ort_threads: sess.intra_threads,
    };
    let tokens = if has_te && (wants("text_encoder") || needs_traj) {
        on_event(Event::Stage { label: "tokenizing prompts", total: 0 });
        Some(tokenize(model, &prompts, opts.max_sequence_length)?)
    } else {
        None
    };
    if let (true, Some(t)) = (wants("text_encoder"), &tokens) {
        out.insert(
            "text_encoder".into(),
            GraphData {
                calibration: cal_idx.iter().map(|&i| t[i].clone()).collect(),
                heldout: held_idx.iter().map(|&i| t[i].clone()).collect(),
                source: format!("{} tokenised prompts, every fifth held out", prompts.len()),
            },
        );
    }

    let mut latents: (Vec<Arc<Input>>, Vec<Arc<Input>>) = (vec![], vec![]);
    let mut latent_source = String::new();
    if needs_traj {
        on_event(Event::Stage { label: "prompt embeddings", total: 0 });
        let (embeds, how) = embeddings(model, tokens.as_deref(), prompts.len(), opts, sess)?;
        // true CFG also calls the DiT with the empty prompt (or, without a text encoder, one more
        // seeded embedding from the same stream)
        let uncond = match (model.guidance_mode(), has_te) {
            (Guidance::TrueCfg, true) => {
                let t = tokenize(model, &[String::new()], opts.max_sequence_length)?;
                embeddings(model, Some(&t), 1, opts, sess)?.0.pop()
            }
            (Guidance::TrueCfg, false) => embeddings(model, None, prompts.len() + 1, opts, sess)?.0.pop(),
            _ => None,
        };
        record.text_embeddings = how;
        let t = trajectories(
            model,
            opts,
            steps,
            (&cal_idx, &held_idx),
            &embeds,
            uncond.as_ref(),
            sess,
            on_event,
        )?;
        record.trajectories = t.records;
        latents = t.latents;
        latent_source = "final latents of the calibration trajectories".into();
        if wants("transformer") {
            out.insert("transformer".into(), t.dit);
        }
    } else if wants("vae_decoder") || wants("vae_encoder") {
        latents = (random_latents(model, opts, 6, 2)?, random_latents(model, opts, 7, 1)?);
        latent_source =
            "seeded N(0,1) latents at the calibration sizes (the model has no transformer)".into();
    }
    let latents = (
        vae_latents(&latents.0, opts.vae_samples, opts.vae_tile, derive_seed(opts.seed, 8, 0))?,
        vae_latents(&latents.1, opts.vae_heldout, opts.vae_heldout_tile, derive_seed(opts.seed, 8, 1))?,
    );
    latent_source = format!(
        "{latent_source}: {} and {} held out, cropped to {} and {} latent pixels",
        latents.0.len(),
        latents.1.len(),
        opts.vae_tile,
        opts.vae_heldout_tile
    );
    if wants("vae_decoder") {
        out.insert(
            "vae_decoder".into(),
            GraphData {
                calibration: latents.0.iter().cloned().map(latent_sample).collect(),
                heldout: latents.1.iter().cloned().map(latent_sample).collect(),
                source: latent_source.clone(),
            },
        );
    }
    if wants("vae_encoder") {
        if !has(model, "vae_decoder") {
            return Err(opt_err(
                "--components vae",
                "calibrating the VAE encoder needs the VAE decoder to make images",
            ));
        }
        on_event(Event::Stage { label: "decoding images", total: 0 });
        out.insert(
            "vae_encoder".into(),
            GraphData {
                calibration: decode_all(model, &latents.0, sess)?,
                heldout: decode_all(model, &latents.1, sess)?,
                source: format!("float VAE decodings of the {latent_source}"),
            },
        );
    }
    for (g, d) in &out {
        if d.calibration.is_empty() || d.heldout.is_empty() {
            return Err(CalibrateError::Graph {
                graph: g.clone(),
                msg: format!(
                    "{} calibration / {} held-out samples; need at least one of each",
                    d.calibration.len(),
                    d.heldout.len()
                ),
            });
        }
        record.graphs.insert(g.clone(), (d.calibration.len(), d.heldout.len(), d.source.clone()));
    }
    Ok((out, record))
}
