//! Full generations with the float and the quantised model folders on a fixed, seeded set of
//! (prompt, size, seed): PSNR and SSIM of the quantised image against the float one, both in
//! [0, 1] as the pipeline returns them (before 8-bit rounding).
//!
//! Prompts are the held-out prompts, sizes cycle through `--sizes`, steps are `--eval-steps`
//! or the model's default, seeds derive from `--seed`. Without a text encoder, both runs get
//! the same seeded N(0, 1) embeddings.

use std::path::Path;

use crate::metrics::{psnr, psnr_8bit_floor, ssim};
use crate::report::GenerationReport;

use super::data::{derive_seed, CalibrationRecord};
use super::{CalibrateError, CalibrateOptions, Event};
use flux2_runtime::images::Chw;
use flux2_runtime::model_dir::ModelDir;
use flux2_runtime::pipeline::{Pipeline, PromptSource, Request};
use flux2_runtime::tensor_file::Tensor;
use flux2_runtime::SessionOptions;

fn pipeline(dir: &Path, sess: &SessionOptions) -> Result<Pipeline, CalibrateError> {
    Ok(Pipeline::new(dir, flux2_runtime::cpu_factory(sess.clone()))?)
}

/// Runs the evaluation set through both folders and compares the images. `float_images`
/// holds the float pipeline's images of earlier calls (the image-PSNR budget compares several
/// selections with the same float images); missing ones are generated and appended.
pub(super) fn generations(
    model: &ModelDir,
    quantized: &Path,
    opts: &CalibrateOptions,
    record: &CalibrationRecord,
    sess: &SessionOptions,
    float_images: &mut Vec<Chw>,
    on_event: &mut dyn FnMut(Event),
) -> Result<Vec<GenerationReport>, CalibrateError> {
    let n = opts.eval_images;
    on_event(Event::Stage { label: "generations", total: 2 * n });
    let mut float = if float_images.len() < n { Some(pipeline(&model.dir, sess)?) } else { None };
    let mut quant = pipeline(quantized, sess)?;
    let has_text = model.entry("text_encoder").is_some() && model.tokenizer_dir().is_some();
    let ctx = model.context_dim().unwrap_or(0);
    let floor = psnr_8bit_floor();
    let mut out = Vec::with_capacity(n);
    for k in 0..n {
        let held = &record.heldout_prompts;
        let prompt_index = held[k % held.len()];
        let text = record.prompts[prompt_index].clone();
        let (width, height) = opts.sizes[k % opts.sizes.len()];
        let steps = opts.eval_steps.unwrap_or_else(|| model.default_steps());
        let seed = derive_seed(opts.seed, 5, k as u64);
        let random_embeds = |tag: u64| {
            let shape = vec![1, opts.max_sequence_length, ctx];
            Tensor { data: flux2_runtime::noise::noise(derive_seed(opts.seed, tag, k as u64), &shape), shape }
        };
        let mut req = Request::new(if has_text {
            PromptSource::Text(text.clone())
        } else {
            PromptSource::Embeds(random_embeds(8))
        });
        if !has_text {
            req.negative = Some(PromptSource::Embeds(random_embeds(9)));
        }
        req.width = Some(width);
        req.height = Some(height);
        req.steps = Some(steps);
        req.seed = seed;
        req.max_sequence_length = opts.max_sequence_length;
        if float_images.len() <= k {
            let f =
                float.as_mut().ok_or_else(|| super::opt_err("--eval-images", "float pipeline missing"))?;
            float_images.push(f.generate(&req, &mut |_| {})?.image);
        }
        let a = &float_images[k];
        on_event(Event::Advance { done: 2 * k + 1, total: 2 * n });
        let b = quant.generate(&req, &mut |_| {})?.image;
        on_event(Event::Advance { done: 2 * k + 2, total: 2 * n });
        let p = psnr(&a.data, &b.data, 1.0);
        out.push(GenerationReport {
            prompt: if has_text {
                text
            } else {
                format!("(random embeddings, held-out prompt {prompt_index})")
            },
            width,
            height,
            steps,
            seed,
            psnr_db: p,
            ssim: ssim(&a.data, &b.data, 3, a.height, a.width, 1.0),
            psnr_drop_db: (floor - p).max(0.0),
        });
    }
    Ok(out)
}
