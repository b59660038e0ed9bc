//! The image side of the pipeline: reference images through the VAE encoder, the sampling
//! loop (batched DiT calls, CFG combination, Euler steps) and the batched VAE decode.

use super::batch::{Branch, DitBatch, DitCall, Latents};
use super::{steps, Event, Pipeline, Plan, Timings};
use crate::cache::StepCache;
use crate::images::Chw;
use crate::model_dir::Guidance;
use crate::tensors::InputRef;
use crate::RuntimeError;

impl Pipeline {
    /// Encodes each reference with the VAE encoder: packed tokens and their (t, i, j) ids.
    pub(super) fn encode_references(
        &mut self,
        refs: &[Chw],
    ) -> Result<(Vec<f32>, Vec<[i64; 4]>), RuntimeError> {
        let mut tokens = Vec::new();
        let mut ids = Vec::new();
        for (k, r) in refs.iter().enumerate() {
            let image = InputRef::F32(vec![1, 3, r.height, r.width], &r.data);
            let out = self.call("vae_encoder", &[("image", image)])?;
            let lat = steps::take(out, "latents")?;
            let (c, h, w) = (lat.shape[1], lat.shape[2], lat.shape[3]);
            tokens.extend(steps::pack(&lat.data, c, h, w));
            let t = 10 + 10 * k as i64;
            for i in 0..h {
                for j in 0..w {
                    ids.push([t, i as i64, j as i64, 0]);
                }
            }
        }
        Ok((tokens, ids))
    }

    /// The sampling loop: one velocity (all images, both CFG branches) and one Euler step per
    /// sigma of the schedule.
    pub(super) fn denoise(
        &mut self,
        plan: &Plan,
        dit: &DitBatch,
        latents: &mut Latents,
        timings: &mut Timings,
        mut cache: Option<&mut StepCache>,
        on_event: &mut dyn FnMut(Event) -> std::ops::ControlFlow<()>,
    ) -> Result<(), RuntimeError> {
        let n = plan.schedule.steps();
        for i in 0..n {
            super::emit(on_event, Event::Step { index: i, total: n })?;
            let t = std::time::Instant::now();
            let (sigma, next) = (plan.schedule.sigmas[i], plan.schedule.sigmas[i + 1]);
            let v = self.velocity(plan, dit, latents, sigma, i, cache.as_deref_mut())?;
            if cache.is_none() {
                timings.dit.full += dit.calls.iter().map(|c| c.branches.len()).sum::<usize>();
            }
            latents.euler_step(&v, sigma, next)?;
            timings.dit_steps.push(t.elapsed().as_secs_f64());
        }
        Ok(())
    }

    /// The velocity of every image's noisy tokens, `noisy_len()` values per image (with CFG:
    /// v_u + g·(v_c − v_u)): the monolithic DiT, or its parts as the step cache decides.
    fn velocity(
        &mut self,
        plan: &Plan,
        dit: &DitBatch,
        latents: &Latents,
        sigma: f32,
        step: usize,
        mut cache: Option<&mut StepCache>,
    ) -> Result<Vec<f32>, RuntimeError> {
        let (mut cond, mut uncond) = (None, None);
        for call in &dit.calls {
            let v = match cache.as_deref_mut() {
                Some(c) => self.cached_call(plan, call, latents, sigma, step, c)?,
                None => self.dit_call(plan, call, latents, sigma)?,
            };
            let per_branch = latents.images * latents.noisy_len();
            for (branch, v) in call.branches.iter().zip(v.chunks(per_branch)) {
                match branch {
                    Branch::Cond => cond = Some(v.to_vec()),
                    Branch::Uncond => uncond = Some(v.to_vec()),
                }
            }
        }
        let mut v = cond.ok_or_else(|| RuntimeError::Run("no conditional DiT call".into()))?;
        if let Some(v_u) = uncond {
            let g = plan.guidance;
            for (c, u) in v.iter_mut().zip(&v_u) {
                *c = u + g * (*c - u);
            }
        }
        Ok(v)
    }

    /// One DiT call over `call.branches.len()` copies of the latent rows; returns the velocity
    /// of the noisy tokens of each row, row after row.
    fn dit_call(
        &mut self,
        plan: &Plan,
        call: &DitCall,
        latents: &Latents,
        sigma: f32,
    ) -> Result<Vec<f32>, RuntimeError> {
        let rows = call.rows();
        let hidden = match call.branches.len() {
            1 => std::borrow::Cow::Borrowed(&latents.x[..]),
            k => std::borrow::Cow::Owned(latents.x.repeat(k)),
        };
        // diffusers passes (σ·1000 in float32) / 1000
        let timestep = vec![(sigma * 1000.0) / 1000.0; rows];
        let guidance = vec![plan.guidance; rows];
        let (s, l, c) = (latents.tokens, call.text.shape[1], latents.c);
        let mut inputs = vec![
            ("hidden_states", InputRef::F32(vec![rows, s, c], &hidden)),
            ("encoder_hidden_states", InputRef::F32(call.text.shape.clone(), &call.text.data)),
            ("timestep", InputRef::F32(vec![rows], &timestep)),
            ("img_ids", InputRef::I64(vec![rows, s, 4], &call.img_ids)),
            ("txt_ids", InputRef::I64(vec![rows, l, 4], &call.txt_ids)),
        ];
        if plan.mode == Guidance::Embedded {
            inputs.push(("guidance", InputRef::F32(vec![rows], &guidance)));
        }
        let out = self.call("transformer", &inputs)?;
        let v = steps::take(out, "velocity")?;
        if v.data.len() != rows * latents.row_len() {
            return Err(RuntimeError::Run(format!(
                "velocity has shape {:?}, expected [{rows}, {s}, {c}]",
                v.shape
            )));
        }
        let noisy = latents.noisy_len();
        Ok(v.data.chunks(latents.row_len()).flat_map(|r| &r[..noisy]).copied().collect())
    }

    /// Decodes every image's latents in one VAE-decoder call: [3, H, W] each, in [0, 1].
    pub(super) fn decode(&mut self, latents: &Latents) -> Result<Vec<Chw>, RuntimeError> {
        let (n, c, h, w) = (latents.images, latents.c, latents.h, latents.w);
        let lat = latents.unpacked();
        let out = self.call("vae_decoder", &[("latents", InputRef::F32(vec![n, c, h, w], &lat))])?;
        let img = steps::take(out, "image")?;
        let [b, 3, height, width] = img.shape[..] else {
            return Err(RuntimeError::Run(format!(
                "decoded image has shape {:?}, expected [{n}, 3, H, W]",
                img.shape
            )));
        };
        if b != n {
            return Err(RuntimeError::Run(format!("decoded {b} images from {n} latents")));
        }
        let images = img
            .data
            .chunks(3 * height * width)
            .map(|d| Chw { width, height, data: d.iter().map(|v| (v / 2.0 + 0.5).clamp(0.0, 1.0)).collect() })
            .collect();
        Ok(images)
    }
}
