//! One decoder layer of the text encoders (transformers v5.23.0 `MistralDecoderLayer`,
//! `Qwen3DecoderLayer`): pre-norm residual blocks with GQA self-attention and a SwiGLU MLP.
//!
//! ```text
//! x = x + o_proj(attn(rope(q), rope(k), v, mask))     q, k, v = projections of RMSNorm(x)
//! x = x + down_proj(silu(gate_proj(h)) · up_proj(h))  h = RMSNorm(x)
//! ```
//! Qwen3 applies a per-head RMSNorm to q and k (`q_norm`, `k_norm`, weight [Dh]) before RoPE.
//! The attention scale is `Dh^-½`; `heads · Dh` need not equal the hidden size (Mistral Small:
//! 32 · 128 = 4096 vs 5120).

use super::mask::Mask;
use super::rope::Rope;
use super::TextConfig;
use crate::ops::RopeStyle;
use crate::{Graph, Result, T};

/// `x + attn(RMSNorm(x))`, then `+ mlp(RMSNorm(·))`.
pub fn decoder_layer(g: &Graph, c: &TextConfig, x: T, rope: &Rope, mask: &Mask) -> Result<T> {
    let h = g.rms_norm(x, "input_layernorm.weight", c.eps as f32)?;
    let attn = {
        let _s = g.scope("self_attn");
        self_attention(g, c, h, rope, mask)?
    };
    let x = g.add(x, attn)?;
    let h = g.rms_norm(x, "post_attention_layernorm.weight", c.eps as f32)?;
    let mlp = {
        let _s = g.scope("mlp");
        swiglu_mlp(g, c, h)?
    };
    g.add(x, mlp)
}

/// `o_proj(softmax(q kᵀ / √Dh + mask) v · keep)` over GQA heads.
fn self_attention(g: &Graph, c: &TextConfig, h: T, rope: &Rope, mask: &Mask) -> Result<T> {
    let (d, dh, b) = (c.hidden, c.head_dim, c.attention_bias);
    let q = heads(g, g.linear(h, "q_proj", d, c.heads * dh, b)?, c.heads, dh)?; // [B, H, L, Dh]
    let k = heads(g, g.linear(h, "k_proj", d, c.kv_heads * dh, b)?, c.kv_heads, dh)?; // [B, Hkv, L, Dh]
    let v = heads(g, g.linear(h, "v_proj", d, c.kv_heads * dh, b)?, c.kv_heads, dh)?;
    let (q, k) = if c.qk_norm {
        (g.rms_norm(q, "q_norm.weight", c.eps as f32)?, g.rms_norm(k, "k_norm.weight", c.eps as f32)?)
    } else {
        (q, k)
    };
    let q = g.rope(q, rope.cos, rope.sin, RopeStyle::Halves)?;
    let k = g.rope(k, rope.cos, rope.sin, RopeStyle::Halves)?;
    let o = g.attention(q, k, v, Some(mask.additive), (dh as f32).powf(-0.5))?; // [B, H, L, Dh]
    let o = g.mul(o, mask.keep)?; // rows with no visible key are 0, as torch SDPA returns
    let o = g.transpose(o, &[0, 2, 1, 3])?; // [B, L, H, Dh]
    let o = g.reshape(o, &[0, 0, (c.heads * dh) as i64])?; // [B, L, H·Dh]
    g.linear(o, "o_proj", c.heads * dh, d, b)
}

/// `down_proj(silu(gate_proj(h)) · up_proj(h))`.
fn swiglu_mlp(g: &Graph, c: &TextConfig, h: T) -> Result<T> {
    let gate = g.linear(h, "gate_proj", c.hidden, c.intermediate, false)?;
    let up = g.linear(h, "up_proj", c.hidden, c.intermediate, false)?;
    g.linear(g.swiglu(gate, up)?, "down_proj", c.intermediate, c.hidden, false)
}

/// [B, L, n·Dh] -> [B, n, L, Dh].
fn heads(g: &Graph, x: T, n: usize, dh: usize) -> Result<T> {
    let x = g.reshape(x, &[0, 0, n as i64, dh as i64])?; // [B, L, n, Dh]
    g.transpose(x, &[0, 2, 1, 3])
}
