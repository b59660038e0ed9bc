//! Rotary position embeddings of the text encoders (default rope type, rotate-half pairing).
//!
//! transformers v5.23.0 `MistralRotaryEmbedding` / `Qwen3RotaryEmbedding`
//! (`compute_default_rope_parameters` and `forward`):
//! `inv_freq = 1 / θ^(arange(0, Dh, 2) / Dh)` in f32, `freqs = position_ids · inv_freq` in f32,
//! `emb = cat(freqs, freqs)`, `cos = emb.cos()`, `sin = emb.sin()`, cast to the activations'
//! dtype. `position_ids = arange(L)`, not shifted for left padding. The graph computes the
//! angles in f32 from the run-time length, so any L up to the model's positions works; the
//! [L, Dh/2] tables feed [`Graph::rope`] with `RopeStyle::Halves`.

use super::mask::arange;
use super::TextConfig;
use crate::{DType, Graph, Result, T};

/// `1 / θ^(2j / Dh)` for j in 0..Dh/2, rounded as torch computes it in f32.
pub fn inv_freq(theta: f64, head_dim: usize) -> Vec<f32> {
    let base = theta as f32;
    (0..head_dim / 2)
        .map(|j| {
            let e = (2 * j) as f32 / head_dim as f32; // arange(0, dim, 2, dtype=float) / dim
            let p = (base as f64).powf(e as f64) as f32; // base ** e, correctly rounded to f32
            1.0f32 / p
        })
        .collect()
}

/// cos/sin tables [L, Dh/2] (f32) for positions `0..L`.
pub struct Rope {
    pub cos: T,
    pub sin: T,
}

impl Rope {
    /// Tables for the run-time length of `ids` [B, L].
    pub fn new(g: &Graph, c: &TextConfig, ids: T) -> Result<Rope> {
        let _s = g.scope("rotary_emb");
        let half = c.head_dim / 2;
        let pos = g.cast(arange(g, ids)?, DType::F32);
        let pos = g.unsqueeze(pos, &[1])?; // [L, 1]
        let inv = g.const_float(DType::F32, &[1, half], &inv_freq(c.rope_theta, c.head_dim));
        let freqs = g.mul(pos, inv)?; // [L, Dh/2]
        Ok(Rope { cos: g.cos(freqs), sin: g.sin(freqs) })
    }
}
