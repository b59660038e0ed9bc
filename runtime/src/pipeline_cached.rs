//! The velocity of a step with step caching: the DiT runs as its export parts (`dit_embed`,
//! `dit_head`, `dit_body`, `dit_tail`), and the [`StepCache`] decides, per CFG branch, which
//! of them run. Rows of branches that run the same part share one call, so a step where both
//! branches compute everything costs the same calls as the monolithic graph plus the small
//! tail.

use super::batch::{Branch, DitCall, Latents};
use super::{steps, Pipeline, Plan};
use crate::cache::{Start, StepCache};
use crate::model_dir::Guidance;
use crate::tensors::InputRef;
use crate::RuntimeError;

/// The graphs a cached generation needs.
pub use crate::cache::PARTS;

fn name(b: Branch) -> &'static str {
    match b {
        Branch::Cond => "cond",
        Branch::Uncond => "uncond",
    }
}

/// The per-step inputs shared by every part call.
struct StepInputs<'a> {
    plan: &'a Plan,
    call: &'a DitCall,
    latents: &'a Latents,
    sigma: f32,
}

/// One block of rows through a DiT part: (hidden size, first output, then `img` and `txt` for
/// the head).
type PartOut = (usize, Vec<f32>, Vec<f32>, Vec<f32>);

impl StepInputs<'_> {
    /// Values of one branch block (N rows) of a `[rows, tokens, width]` tensor.
    fn block(&self, width: usize, tokens: usize) -> usize {
        self.latents.images * tokens * width
    }
}

impl Pipeline {
    /// One DiT call's branches through the cache; returns the velocity of the noisy tokens of
    /// each row, row after row (as the uncached call does).
    pub(super) fn cached_call(
        &mut self,
        plan: &Plan,
        call: &DitCall,
        latents: &Latents,
        sigma: f32,
        step: usize,
        cache: &mut StepCache,
    ) -> Result<Vec<f32>, RuntimeError> {
        let x = StepInputs { plan, call, latents, sigma };
        let probe = match cache.needs_probe() {
            true => Some(self.part(&x, "dit_embed", &[0], None, None)?.remove(0).1),
            false => None,
        };
        let nb = call.branches.len();
        let mut starts = Vec::with_capacity(nb);
        for b in &call.branches {
            starts.push(cache.branch(name(*b))?.start(step, probe.as_deref()));
        }
        let heads: Vec<usize> = (0..nb).filter(|&i| starts[i] != Start::Skip).collect();
        let head_out = match heads.is_empty() {
            true => vec![],
            false => self.part(&x, "dit_head", &heads, None, None)?,
        };
        let (s, d) = (latents.tokens, self.hidden_dim(&head_out)?);
        let blk = x.block(d, s);
        let head_of = |i: usize| heads.iter().position(|&h| h == i).map(|j| &head_out[j]);
        let mut bodies = Vec::new();
        for &i in &heads {
            let h = head_of(i).ok_or_else(|| RuntimeError::Run("head output missing".into()))?;
            let run = match starts[i] {
                Start::Full => true,
                _ => cache.branch(name(call.branches[i]))?.after_head(step, &h.1[..blk], &h.2[..blk]),
            };
            if run {
                bodies.push(i);
            }
        }
        let body_out = match bodies.is_empty() {
            true => vec![],
            false => {
                let img: Vec<f32> =
                    bodies.iter().flat_map(|&i| head_of(i).map(|h| h.2.clone())).flatten().collect();
                let txt: Vec<f32> =
                    bodies.iter().flat_map(|&i| head_of(i).map(|h| h.3.clone())).flatten().collect();
                self.part(&x, "dit_body", &bodies, Some(&img), Some(&txt))?
            }
        };
        let mut residual = Vec::with_capacity(nb * blk);
        for i in 0..nb {
            let policy = cache.branch(name(call.branches[i]))?;
            let head = head_of(i).map(|h| (&h.1[..], &h.2[..]));
            let r = match (bodies.iter().position(|&b| b == i), head) {
                (Some(j), Some((img_in, img))) => {
                    let img_out = &body_out[j].1;
                    policy.full(step, img_in, img, img_out);
                    crate::cache::sub(img_out, img_in)
                }
                (_, head) => policy.reuse(step, head).map_err(RuntimeError::Run)?,
            };
            residual.extend(r);
            let counts = &mut cache.counts;
            match (bodies.contains(&i), head.is_some()) {
                (true, _) => counts.full += 1,
                (false, true) => counts.first_block_only += 1,
                (false, false) => counts.skipped += 1,
            }
        }
        let v = self.tail(&x, &residual)?;
        let per_branch = latents.images * latents.noisy_len();
        for (b, vb) in call.branches.iter().zip(v.chunks(per_branch)) {
            cache.branch(name(*b))?.output(vb);
        }
        Ok(v)
    }

    /// Hidden size from the head's `img` output, else the manifest's transformer config.
    fn hidden_dim(&self, head: &[PartOut]) -> Result<usize, RuntimeError> {
        let cfg = self.model.manifest.configs.get("transformer");
        let from_cfg = cfg.and_then(|c| {
            Some(c.get("num_attention_heads")?.as_u64()? * c.get("attention_head_dim")?.as_u64()?)
        });
        match (head.first(), from_cfg) {
            (_, Some(d)) => Ok(d as usize),
            (Some(h), None) => Ok(h.0),
            _ => Err(RuntimeError::Run("cannot tell the DiT's hidden size".into())),
        }
    }

    /// Runs `dit_embed`, `dit_head` or `dit_body` on the rows of branch blocks `sel`; returns per
    /// block (hidden size, first output, then `img`, `txt` for the head).
    fn part(
        &mut self,
        x: &StepInputs,
        graph: &str,
        sel: &[usize],
        img: Option<&[f32]>,
        txt: Option<&[f32]>,
    ) -> Result<Vec<PartOut>, RuntimeError> {
        let (n, s, c) = (x.latents.images, x.latents.tokens, x.latents.c);
        let (l, ctx) = (x.call.text.shape[1], x.call.text.shape[2]);
        let rows = sel.len() * n;
        let hidden = x.latents.x.repeat(sel.len());
        let text: Vec<f32> = sel
            .iter()
            .flat_map(|&b| &x.call.text.data[b * n * l * ctx..(b + 1) * n * l * ctx])
            .copied()
            .collect();
        let timestep = vec![(x.sigma * 1000.0) / 1000.0; rows];
        let guidance = vec![x.plan.guidance; rows];
        let (img_ids, txt_ids) = (&x.call.img_ids[..rows * s * 4], &x.call.txt_ids[..rows * l * 4]);
        let mut inputs = vec![("timestep", InputRef::F32(vec![rows], &timestep))];
        if x.plan.mode == Guidance::Embedded {
            inputs.push(("guidance", InputRef::F32(vec![rows], &guidance)));
        }
        let d = img.map(|v| v.len() / (rows * s)).unwrap_or(0);
        match graph {
            "dit_body" => {
                let (img, txt) = (img.unwrap_or(&[]), txt.unwrap_or(&[]));
                inputs.push(("img", InputRef::F32(vec![rows, s, d], img)));
                inputs.push(("txt", InputRef::F32(vec![rows, l, d], txt)));
            }
            _ => inputs.push(("hidden_states", InputRef::F32(vec![rows, s, c], &hidden))),
        }
        if graph != "dit_embed" {
            inputs.push(("img_ids", InputRef::I64(vec![rows, s, 4], img_ids)));
            if graph == "dit_head" {
                inputs.push(("encoder_hidden_states", InputRef::F32(vec![rows, l, ctx], &text)));
            }
            inputs.push(("txt_ids", InputRef::I64(vec![rows, l, 4], txt_ids)));
        }
        let mut out = self.call(graph, &inputs)?;
        let first = match graph {
            "dit_embed" => "modulated",
            "dit_head" => "img_in",
            _ => "img_out",
        };
        let t = steps::take_f32(&mut out, first)?;
        let width = t.shape.last().copied().unwrap_or(0);
        let split = |v: Vec<f32>| -> Vec<Vec<f32>> {
            v.chunks(v.len() / sel.len().max(1)).map(<[f32]>::to_vec).collect()
        };
        let a = split(t.data);
        let (b, cc) = match graph {
            "dit_head" => {
                (split(steps::take_f32(&mut out, "img")?.data), split(steps::take_f32(&mut out, "txt")?.data))
            }
            _ => (vec![vec![]; sel.len()], vec![vec![]; sel.len()]),
        };
        Ok(a.into_iter().zip(b).zip(cc).map(|((a, b), c)| (width, a, b, c)).collect())
    }

    /// `dit_tail` on every row of the call: the velocity of the noisy tokens of each row.
    fn tail(&mut self, x: &StepInputs, residual: &[f32]) -> Result<Vec<f32>, RuntimeError> {
        let (n, s, c) = (x.latents.images, x.latents.tokens, x.latents.c);
        let rows = x.call.branches.len() * n;
        let d = residual.len() / (rows * s).max(1);
        let hidden = x.latents.x.repeat(x.call.branches.len());
        let timestep = vec![(x.sigma * 1000.0) / 1000.0; rows];
        let guidance = vec![x.plan.guidance; rows];
        let mut inputs = vec![
            ("hidden_states", InputRef::F32(vec![rows, s, c], &hidden)),
            ("residual", InputRef::F32(vec![rows, s, d], residual)),
            ("timestep", InputRef::F32(vec![rows], &timestep)),
        ];
        if x.plan.mode == Guidance::Embedded {
            inputs.push(("guidance", InputRef::F32(vec![rows], &guidance)));
        }
        let out = self.call("dit_tail", &inputs)?;
        let v = steps::take(out, "velocity")?;
        if v.data.len() != rows * x.latents.row_len() {
            return Err(RuntimeError::Run(format!("dit_tail velocity has shape {:?}", v.shape)));
        }
        let noisy = x.latents.noisy_len();
        Ok(v.data.chunks(x.latents.row_len()).flat_map(|r| &r[..noisy]).copied().collect())
    }
}
