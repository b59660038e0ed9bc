//! Pieces of the pipeline that are plain data handling: request validation, token
//! packing, position ids and DiT input assembly.

use std::collections::HashMap;

use ndarray::{ArrayD, IxDyn};

use super::{Plan, PromptSource, Request};
use crate::images::load_reference;
use crate::model_dir::{Guidance, ModelDir};
use crate::schedule::Schedule;
use crate::tensor_file::Tensor;
use crate::tensors::Input;
use crate::tokenizer::Family;
use crate::RuntimeError;

pub(super) fn shape_err(e: ndarray::ShapeError) -> RuntimeError {
    RuntimeError::Run(format!("tensor shape: {e}"))
}

fn input_err(name: &str, msg: impl Into<String>) -> RuntimeError {
    RuntimeError::Input { name: name.into(), msg: msg.into() }
}

/// Takes a named output as a [`Tensor`].
pub(super) fn take(mut out: HashMap<String, ArrayD<f32>>, name: &str) -> Result<Tensor, RuntimeError> {
    let a = out.remove(name).ok_or_else(|| RuntimeError::Run(format!("graph has no output '{name}'")))?;
    Ok(Tensor { shape: a.shape().to_vec(), data: a.into_iter().collect() })
}

/// [C, h, w] (channels first) -> [h·w, C] tokens, row-major over the grid.
pub(super) fn pack(x: &[f32], c: usize, h: usize, w: usize) -> Vec<f32> {
    let mut out = vec![0f32; c * h * w];
    for ch in 0..c {
        for p in 0..h * w {
            out[p * c + ch] = x[ch * h * w + p];
        }
    }
    out
}

/// Inverse of [`pack`].
pub(super) fn unpack(tokens: &[f32], c: usize, h: usize, w: usize) -> Vec<f32> {
    let mut out = vec![0f32; c * h * w];
    for p in 0..h * w {
        for ch in 0..c {
            out[ch * h * w + p] = tokens[p * c + ch];
        }
    }
    out
}

/// Position ids [1, h·w + refs, 4]: noisy tokens (0, i, j, 0) then the references' ids.
pub(super) fn image_ids(h: usize, w: usize, refs: &[[i64; 4]]) -> ArrayD<i64> {
    let mut ids = Vec::with_capacity((h * w + refs.len()) * 4);
    for i in 0..h {
        for j in 0..w {
            ids.extend([0, i as i64, j as i64, 0]);
        }
    }
    for r in refs {
        ids.extend(r);
    }
    let n = ids.len() / 4;
    ArrayD::from_shape_vec(IxDyn(&[1, n, 4]), ids).unwrap_or_else(|_| ArrayD::zeros(IxDyn(&[1, 0, 4])))
}

/// Inputs of one DiT call.
pub(super) fn dit_inputs<'a>(
    plan: &Plan,
    latents: &[f32],
    refs: &[f32],
    img_ids: &ArrayD<i64>,
    sigma: f32,
    text: &Tensor,
    c: usize,
) -> Result<Vec<(&'a str, Input)>, RuntimeError> {
    let s = (latents.len() + refs.len()) / c;
    let mut x = Vec::with_capacity(latents.len() + refs.len());
    x.extend_from_slice(latents);
    x.extend_from_slice(refs);
    let l = text.shape[1];
    let mut txt_ids = Vec::with_capacity(l * 4);
    for n in 0..l {
        txt_ids.extend([0, 0, 0, n as i64]);
    }
    // diffusers passes (σ·1000 in float32) / 1000
    let timestep = (sigma * 1000.0) / 1000.0;
    let mut inputs = vec![
        ("hidden_states", Input::F32(ArrayD::from_shape_vec(IxDyn(&[1, s, c]), x).map_err(shape_err)?)),
        (
            "encoder_hidden_states",
            Input::F32(ArrayD::from_shape_vec(IxDyn(&text.shape), text.data.clone()).map_err(shape_err)?),
        ),
        ("timestep", Input::F32(ArrayD::from_shape_vec(IxDyn(&[1]), vec![timestep]).map_err(shape_err)?)),
        ("img_ids", Input::I64(img_ids.clone())),
        ("txt_ids", Input::I64(ArrayD::from_shape_vec(IxDyn(&[1, l, 4]), txt_ids).map_err(shape_err)?)),
    ];
    if plan.mode == Guidance::Embedded {
        inputs.push((
            "guidance",
            Input::F32(ArrayD::from_shape_vec(IxDyn(&[1]), vec![plan.guidance]).map_err(shape_err)?),
        ));
    }
    Ok(inputs)
}

/// Text-encoder family of an exported model (from the copied text-encoder config).
pub(super) fn text_family(model: &ModelDir) -> Result<Family, RuntimeError> {
    let cfg = model.dir.join("text_encoder_config.json");
    Family::from_config_file(&cfg).map_err(|e| RuntimeError::Model { path: cfg, msg: e.to_string() })
}

fn check_embeds(name: &str, t: &Tensor, ctx: Option<usize>) -> Result<(), RuntimeError> {
    if t.shape.len() != 3 || t.shape[0] != 1 || t.shape[1] == 0 {
        return Err(input_err(
            name,
            format!("expected prompt_embeds of shape [1, L, ctx], got {:?}", t.shape),
        ));
    }
    if let Some(c) = ctx {
        if t.shape[2] != c {
            return Err(input_err(
                name,
                format!("embedding width {} does not match the model's context width {c}", t.shape[2]),
            ));
        }
    }
    Ok(())
}

/// Validates a request and resolves its defaults (see [`super::Pipeline::plan`]).
pub(super) fn plan(model: &ModelDir, req: &Request) -> Result<Plan, RuntimeError> {
    let ctx = model.context_dim();
    let needs_text = |p: &PromptSource| matches!(p, PromptSource::Text(_));
    if let PromptSource::Embeds(t) = &req.prompt {
        check_embeds("--prompt-embeds", t, ctx)?;
    }
    if let Some(PromptSource::Embeds(t)) = &req.negative {
        check_embeds("--negative-prompt-embeds", t, ctx)?;
    }
    let mode = model.guidance_mode();
    let guidance = req.guidance.unwrap_or(4.0);
    if !guidance.is_finite() {
        return Err(input_err("--guidance", format!("{guidance} is not a finite number")));
    }
    let cfg = mode == Guidance::TrueCfg && guidance > 1.0;
    let text_needed = needs_text(&req.prompt) || (cfg && req.negative.as_ref().is_none_or(needs_text));
    if text_needed {
        model.graph("text_encoder").map_err(|e| match e {
            RuntimeError::Model { path, msg } => RuntimeError::Model {
                path,
                msg: format!(
                    "{msg}; a text prompt{} needs it (or pass embeddings)",
                    if cfg { " or true CFG's empty negative prompt" } else { "" }
                ),
            },
            e => e,
        })?;
    }
    let mut references = Vec::new();
    for p in &req.references {
        references.push(load_reference(p)?);
    }
    if !references.is_empty() {
        model.graph("vae_encoder")?;
    }
    let width = req.width.or(references.first().map(|r| r.width)).unwrap_or(1024);
    let height = req.height.or(references.first().map(|r| r.height)).unwrap_or(1024);
    for (name, v) in [("--width", width), ("--height", height)] {
        if v == 0 || v % 16 != 0 {
            return Err(input_err(
                name,
                format!("{v} is not a positive multiple of 16 (try {})", (v / 16).max(1) * 16),
            ));
        }
    }
    let steps = req.steps.unwrap_or_else(|| model.default_steps());
    if steps == 0 {
        return Err(input_err("--steps", "must be at least 1"));
    }
    let (h, w) = (height / 16, width / 16);
    if let Some(n) = &req.noise {
        let c = model.latent_channels();
        if n.shape != [1, c, h, w] {
            return Err(input_err(
                "--noise",
                format!(
                    "tensor 'noise' has shape {:?}; a {width}×{height} image needs [1, {c}, {h}, {w}]",
                    n.shape
                ),
            ));
        }
    }
    let schedule =
        Schedule::for_tokens(h * w, steps, req.shift).map_err(|e| input_err("--shift", e.to_string()))?;
    Ok(Plan { width, height, mode, guidance, cfg, schedule, references })
}
