//! The data of a batched generation: the latent token rows of every image ([`Latents`]) and
//! the DiT inputs that stay the same across steps ([`DitBatch`]: text embeddings and position
//! ids repeated per row, grouped into as few calls as the prompt lengths allow).
//!
//! Batch rows are laid out image-major, and with true CFG the conditional rows of all images
//! come first, then the unconditional ones, so a one-image run is the N = 1 case of the same
//! code, not a separate path.

use super::{steps, Plan, Request};
use crate::schedule::euler_step;
use crate::tensor_file::Tensor;
use crate::RuntimeError;

/// The seed of image `k` of a request: `req.seeds[k]` when the request lists one per image,
/// else `req.seed + k` (wrapping).
pub(super) fn image_seed(req: &Request, k: usize) -> u64 {
    req.seeds.get(k).copied().unwrap_or_else(|| req.seed.wrapping_add(k as u64))
}

/// Token rows `[N, S, C]` (row-major): per image, its noisy tokens (`h·w`) then the reference
/// tokens (the same for every image). Sampling updates the noisy part in place.
pub(super) struct Latents {
    pub x: Vec<f32>,
    pub images: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    /// Tokens per row: `h·w` noisy plus the reference tokens.
    pub tokens: usize,
}

impl Latents {
    /// Starting noise of each image (the seeded generator with `seed + k`, or row k of the
    /// request's noise tensor), packed, with `ref_tokens` appended to each row.
    pub fn new(plan: &Plan, req: &Request, c: usize, ref_tokens: &[f32]) -> Result<Latents, RuntimeError> {
        let (h, w) = (plan.height / 16, plan.width / 16);
        let per_image = c * h * w;
        let images = plan.num_images;
        let mut x = Vec::with_capacity(images * (per_image + ref_tokens.len()));
        for k in 0..images {
            let seeded;
            let noise = match &req.noise {
                Some(n) => n.data.get(k * per_image..(k + 1) * per_image).ok_or_else(|| {
                    RuntimeError::Input { name: "noise".into(), msg: format!("has no row {k}") }
                })?,
                None => {
                    seeded = crate::noise::noise(image_seed(req, k), &[1, c, h, w]);
                    &seeded[..]
                }
            };
            x.extend(steps::pack(noise, c, h, w));
            x.extend_from_slice(ref_tokens);
        }
        let tokens = h * w + ref_tokens.len() / c;
        Ok(Latents { x, images, c, h, w, tokens })
    }

    /// Values per row of the noisy part (`h·w·C`).
    pub fn noisy_len(&self) -> usize {
        self.h * self.w * self.c
    }

    /// Values per row (`S·C`).
    pub fn row_len(&self) -> usize {
        self.tokens * self.c
    }

    /// One Euler step of every image's noisy tokens; `v` holds `noisy_len()` values per image.
    pub fn euler_step(&mut self, v: &[f32], sigma: f32, next: f32) -> Result<(), RuntimeError> {
        let (row, noisy) = (self.row_len(), self.noisy_len());
        if v.len() != self.images * noisy {
            return Err(RuntimeError::Run(format!(
                "velocity has {} values for {} images of {noisy}",
                v.len(),
                self.images
            )));
        }
        for (x, v) in self.x.chunks_mut(row).zip(v.chunks(noisy)) {
            euler_step(&mut x[..noisy], v, sigma, next).map_err(|e| RuntimeError::Run(e.to_string()))?;
        }
        Ok(())
    }

    /// The noisy tokens of every image as latents `[N, C, h, w]`.
    pub fn unpacked(&self) -> Vec<f32> {
        let noisy = self.noisy_len();
        self.x
            .chunks(self.row_len())
            .flat_map(|r| steps::unpack(&r[..noisy], self.c, self.h, self.w))
            .collect()
    }
}

/// Which prompt a DiT row is conditioned on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Branch {
    Cond,
    Uncond,
}

/// One DiT call per step: `branches.len()` copies of the image rows, each with its prompt.
pub(super) struct DitCall {
    /// The branch of each block of `N` rows, in row order.
    pub branches: Vec<Branch>,
    /// `prompt_embeds` of every row, `[B, L, ctx]`.
    pub text: Tensor,
    /// `[B, S, 4]` and `[B, L, 4]`, flattened.
    pub img_ids: Vec<i64>,
    pub txt_ids: Vec<i64>,
}

impl DitCall {
    fn new(branches: Vec<Branch>, embeds: &[&Tensor], images: usize, row_ids: &[i64]) -> DitCall {
        let rows = branches.len() * images;
        let (l, ctx) = (embeds[0].shape[1], embeds[0].shape[2]);
        let mut data = Vec::with_capacity(rows * l * ctx);
        for e in embeds {
            if e.shape[0] == images && images > 1 {
                data.extend_from_slice(&e.data); // one row per image already
            } else {
                for _ in 0..images {
                    data.extend_from_slice(&e.data);
                }
            }
        }
        let txt_ids = steps::text_ids(l);
        DitCall {
            branches,
            text: Tensor { shape: vec![rows, l, ctx], data },
            img_ids: row_ids.repeat(rows),
            txt_ids: txt_ids.repeat(rows),
        }
    }

    /// Rows of this call.
    pub fn rows(&self) -> usize {
        self.text.shape[0]
    }
}

/// The DiT calls of every step: one when both CFG branches have the same prompt length (or
/// there is no CFG), else one per branch.
pub(super) struct DitBatch {
    pub calls: Vec<DitCall>,
}

impl DitBatch {
    /// `cond` / `uncond`: prompt embeddings `[1, L, ctx]` (shared by every image) or
    /// `[N, L, ctx]` (one row per image); `ref_ids`: the reference tokens' ids.
    pub fn new(
        latents: &Latents,
        ref_ids: &[[i64; 4]],
        cond: &Tensor,
        uncond: Option<&Tensor>,
    ) -> Result<DitBatch, RuntimeError> {
        let n = latents.images;
        for t in std::iter::once(cond).chain(uncond) {
            if t.shape.len() != 3
                || (t.shape[0] != 1 && t.shape[0] != n)
                || t.data.len() != t.shape.iter().product::<usize>()
            {
                return Err(RuntimeError::Run(format!(
                    "prompt embeddings of shape {:?}, expected [1, L, ctx] or [{n}, L, ctx]",
                    t.shape
                )));
            }
        }
        let ids = steps::image_ids(latents.h, latents.w, ref_ids);
        let calls = match uncond {
            None => vec![DitCall::new(vec![Branch::Cond], &[cond], n, &ids)],
            Some(u) if u.shape[1..] == cond.shape[1..] => {
                vec![DitCall::new(vec![Branch::Cond, Branch::Uncond], &[cond, u], n, &ids)]
            }
            Some(u) => vec![
                DitCall::new(vec![Branch::Cond], &[cond], n, &ids),
                DitCall::new(vec![Branch::Uncond], &[u], n, &ids),
            ],
        };
        Ok(DitBatch { calls })
    }
}

#[cfg(test)]
#[path = "pipeline_batch_tests.rs"]
mod tests;
