//! Pieces of the pipeline that are plain data handling: request validation, token
//! packing and position ids.

use std::collections::HashMap;

use super::{Plan, PromptSource, Request};
use crate::images::prepare_reference;
use crate::model_dir::{Guidance, ModelDir};
use crate::schedule::{Schedule, Shift};
use crate::tensor_file::Tensor;
use crate::tokenizer::Family;
use crate::RuntimeError;

fn input_err(name: &str, msg: impl Into<String>) -> RuntimeError {
    RuntimeError::Input { name: name.into(), msg: msg.into() }
}

/// Takes a named output.
pub(super) fn take(mut out: HashMap<String, Tensor>, name: &str) -> Result<Tensor, RuntimeError> {
    out.remove(name).ok_or_else(|| RuntimeError::Run(format!("graph has no output '{name}'")))
}

/// Takes a named output, leaving the others.
pub(super) fn take_f32(out: &mut HashMap<String, Tensor>, name: &str) -> Result<Tensor, RuntimeError> {
    out.remove(name).ok_or_else(|| RuntimeError::Run(format!("graph has no output '{name}'")))
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

/// Position ids of one row, [h·w + refs, 4] (flattened): noisy tokens (0, i, j, 0) then the references' ids.
pub(super) fn image_ids(h: usize, w: usize, refs: &[[i64; 4]]) -> Vec<i64> {
    let mut ids = Vec::with_capacity((h * w + refs.len()) * 4);
    for i in 0..h {
        for j in 0..w {
            ids.extend([0, i as i64, j as i64, 0]);
        }
    }
    for r in refs {
        ids.extend(r);
    }
    ids
}

/// Text position ids of one row, [L, 4] (flattened): (0, 0, 0, l).
pub(super) fn text_ids(len: usize) -> Vec<i64> {
    (0..len as i64).flat_map(|l| [0, 0, 0, l]).collect()
}

/// Text-encoder family of an exported model (from the copied text-encoder config).
pub(super) fn text_family(model: &ModelDir) -> Result<Family, RuntimeError> {
    let cfg = model.dir.join("text_encoder_config.json");
    Family::from_config_file(&cfg).map_err(|e| RuntimeError::Model { path: cfg, msg: e.to_string() })
}

/// Embeddings `[1, L, ctx]`, or `[N, L, ctx]` (one row per image) for an N-image batch.
fn check_embeds(name: &str, t: &Tensor, ctx: Option<usize>, images: usize) -> Result<(), RuntimeError> {
    let rows_ok = t.shape.first().is_some_and(|&b| b == 1 || b == images);
    if t.shape.len() != 3 || !rows_ok || t.shape[1] == 0 || t.data.len() != t.shape.iter().product::<usize>()
    {
        let many = if images > 1 { format!(" or [{images}, L, ctx]") } else { String::new() };
        return Err(input_err(
            name,
            format!("expected prompt_embeds of shape [1, L, ctx]{many}, got {:?}", t.shape),
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

/// Largest width or height accepted: 4096 px is 65 536 latent tokens, already far past the
/// ~4 megapixels FLUX.2 was trained for; beyond it memory grows without a useful picture.
pub const MAX_SIDE: usize = 4096;

/// Validates a request and resolves its defaults (see [`super::Pipeline::plan`]): a size the
/// export lists in its per-size defaults (a multi-resolution model) takes that size's steps,
/// guidance and shift unless the request sets them.
pub(super) fn plan(model: &ModelDir, req: &Request) -> Result<Plan, RuntimeError> {
    check_inputs(model, req)?;
    let mut references = Vec::new();
    for p in &req.references {
        references.push(prepare_reference(p)?);
    }
    if !references.is_empty() {
        model.graph("vae_encoder")?;
    }
    let (width, height) = plan_size(model, req, &references)?;
    let at_size = model.resolution_defaults(width, height);
    let mode = model.guidance_mode();
    let guidance = req.guidance.or(at_size.guidance).unwrap_or_else(|| model.default_guidance());
    if !guidance.is_finite() {
        return Err(input_err("--guidance", format!("{guidance} is not a finite number")));
    }
    let cfg = mode == Guidance::TrueCfg && guidance > 1.0;
    check_text_encoder(model, req, cfg)?;
    let steps = req.steps.or(at_size.steps).unwrap_or_else(|| model.default_steps());
    if steps == 0 {
        return Err(input_err("--steps", "must be at least 1"));
    }
    let num_images = req.num_images;
    if num_images == 0 {
        return Err(input_err("--num-images", "must be at least 1"));
    }
    check_noise(model, req, width, height)?;
    let shift = req.shift.or(at_size.shift).unwrap_or(Shift::Empirical);
    let schedule = Schedule::for_tokens((height / 16) * (width / 16), steps, shift)
        .map_err(|e| input_err("--shift", e.to_string()))?;
    if let Some(spec) = &req.cache {
        check_cache(model, spec, steps)?;
    }
    Ok(Plan { width, height, mode, guidance, cfg, schedule, references, num_images })
}

/// Prompt embeddings of the right width and one seed per image, when given.
fn check_inputs(model: &ModelDir, req: &Request) -> Result<(), RuntimeError> {
    let ctx = model.context_dim();
    if let PromptSource::Embeds(t) = &req.prompt {
        check_embeds("--prompt-embeds", t, ctx, req.num_images)?;
    }
    if let Some(PromptSource::Embeds(t)) = &req.negative {
        check_embeds("--negative-prompt-embeds", t, ctx, req.num_images)?;
    }
    if !req.seeds.is_empty() && req.seeds.len() != req.num_images {
        return Err(input_err(
            "seeds",
            format!("{} seeds for {} images: give one per image", req.seeds.len(), req.num_images),
        ));
    }
    Ok(())
}

/// A text prompt (or true CFG's empty negative prompt) needs the exported text encoder.
fn check_text_encoder(model: &ModelDir, req: &Request, cfg: bool) -> Result<(), RuntimeError> {
    let needs_text = |p: &PromptSource| matches!(p, PromptSource::Text(_));
    let text_needed = needs_text(&req.prompt) || (cfg && req.negative.as_ref().is_none_or(needs_text));
    if !text_needed {
        return Ok(());
    }
    model.graph("text_encoder").map(|_| ()).map_err(|e| match e {
        RuntimeError::Model { path, msg } => RuntimeError::Model {
            path,
            msg: format!(
                "{msg}; a text prompt{} needs it (or pass embeddings)",
                if cfg { " or true CFG's empty negative prompt" } else { "" }
            ),
        },
        e => e,
    })
}

/// Width and height: the request's, else the first reference's, else the export's default;
/// positive multiples of 16 up to [`MAX_SIDE`].
fn plan_size(
    model: &ModelDir,
    req: &Request,
    references: &[crate::images::Chw],
) -> Result<(usize, usize), RuntimeError> {
    let (dw, dh) = model.default_size();
    let width = req.width.or(references.first().map(|r| r.width)).unwrap_or(dw);
    let height = req.height.or(references.first().map(|r| r.height)).unwrap_or(dh);
    for (name, v) in [("--width", width), ("--height", height)] {
        if v == 0 || v % 16 != 0 {
            return Err(input_err(
                name,
                format!("{v} is not a positive multiple of 16 (try {})", (v / 16).max(1) * 16),
            ));
        }
        if v > MAX_SIDE {
            return Err(input_err(
                name,
                format!(
                    "{v} px is over the {MAX_SIDE} px limit (FLUX.2 is made for up to about 4 megapixels)"
                ),
            ));
        }
    }
    Ok((width, height))
}

/// `--noise` must be [num_images, C, H/16, W/16].
fn check_noise(model: &ModelDir, req: &Request, width: usize, height: usize) -> Result<(), RuntimeError> {
    let Some(n) = &req.noise else { return Ok(()) };
    let (num_images, c, h, w) = (req.num_images, model.latent_channels(), height / 16, width / 16);
    if n.shape != [num_images, c, h, w] || n.data.len() != num_images * c * h * w {
        let images = if num_images == 1 { "a".to_string() } else { num_images.to_string() };
        return Err(input_err(
            "--noise",
            format!(
                "tensor 'noise' has shape {:?}; {images} {width}×{height} image(s) need [{num_images}, {c}, {h}, {w}]",
                n.shape
            ),
        ));
    }
    Ok(())
}

/// `--cache` needs the DiT parts (exports made before step caching lack them) and, for
/// `mag` / `tea`, the export's cache calibration (checked by building a policy).
fn check_cache(model: &ModelDir, spec: &crate::cache::CacheSpec, steps: usize) -> Result<(), RuntimeError> {
    let missing: Vec<&str> =
        super::cached::PARTS.iter().copied().filter(|p| model.entry(p).is_none()).collect();
    if !missing.is_empty() {
        return Err(input_err(
            "--cache",
            format!(
                "the export {} has no DiT parts ({}) that step caching runs; {}",
                model.dir.display(),
                missing.join(", "),
                if model
                    .entry("transformer")
                    .and_then(|e| e.precision.as_deref())
                    .is_some_and(|p| p != "fp32")
                {
                    "calibrated and weight-only low-bit folders have none (their transformer stores other \
                     weights): use step caching on a float export"
                } else {
                    "re-export the checkpoint with this flux2 (`flux2 export --checkpoint CKPT --out DIR`), \
                     which writes them beside the transformer"
                }
            ),
        ));
    }
    for p in super::cached::PARTS {
        model.graph(p)?;
    }
    let calibration = crate::cache::CacheCalibration::read(&model.dir)?;
    spec.policy(steps, calibration.as_ref())?;
    Ok(())
}

/// Why step caching cannot help this plan (a few-step schedule, as step-distilled models run), if so.
pub fn cache_advice(model: &ModelDir, plan: &Plan) -> Option<String> {
    advice(model.guidance_mode() == Guidance::None, plan.schedule.steps())
}

fn advice(distilled: bool, steps: usize) -> Option<String> {
    (steps <= FEW_STEPS).then(|| {
        format!(
            "step caching cannot help here: {} ({steps} steps) leaves no redundant steps to skip; it \
             pays on many-step models (klein base, dev: 24-50 steps)",
            if distilled { "a step-distilled model" } else { "a few-step schedule" }
        )
    })
}

/// Schedules up to this many steps have no steps to spare (klein distilled runs 4).
const FEW_STEPS: usize = 8;

#[cfg(test)]
mod advice_tests {
    #[test]
    fn only_few_step_schedules_are_told_caching_cannot_help() {
        let distilled4 = super::advice(true, 4).unwrap_or_default();
        assert!(distilled4.contains("step-distilled") && distilled4.contains("4 steps"), "{distilled4}");
        assert!(super::advice(false, 6).is_some_and(|m| m.contains("few-step")));
        assert_eq!(super::advice(true, 28), None, "a distilled model run at 28 steps has steps to skip");
        assert_eq!(super::advice(false, 24), None);
    }
}
