//! The two block kinds of the FLUX.2 DiT (flux2-arch.md §2.6–2.7): double-stream blocks,
//! where text and image keep their own weights but attend jointly over `[text; image]`, and
//! single-stream blocks on the concatenated sequence with one fused input projection
//! (`[q | k | v | gate | up]`) and one fused output projection. No Linear has a bias; the
//! LayerNorms have no affine parameters; q and k get an RMSNorm over the head dim, then RoPE.
//!
//! Reference: diffusers 0.42.1 `Flux2TransformerBlock`, `Flux2SingleTransformerBlock`,
//! `Flux2AttnProcessor`, `Flux2ParallelSelfAttnProcessor`, `Flux2FeedForward`.

use super::{modulate, DitConfig, Mod, Modulations, Rope};
use crate::ops::RopeStyle;
use crate::{Dim, Graph, Result, T};

/// One double-stream block (`transformer_blocks.i`), image stream h and text stream e:
/// `[a_e; a_h] = attn([mod₁(LN e); mod₁(LN h)])`, `h += g₁·to_out(a_h)`,
/// `h += g₂·ff(mod₂(LN h))`, and the same for e with `to_add_out` / `ff_context`.
/// Returns `(text, image)`.
pub fn double_block(
    g: &Graph,
    config: &DitConfig,
    img: T,
    txt: T,
    pe: &Rope,
    m: &Modulations,
) -> Result<(T, T)> {
    let (d, eps) = (config.inner_dim(), config.eps as f32);
    let ([img1, img2], [txt1, txt2]) = (m.img, m.txt);
    let img_n = modulate(g, g.layer_norm(img, eps)?, img1.shift, img1.scale1)?;
    let txt_n = modulate(g, g.layer_norm(txt, eps)?, txt1.shift, txt1.scale1)?;

    // [B, H, N, Dh] projections; q and k get the QK RMSNorm of their stream
    let proj = |x: T, name: &str, norm: Option<&str>| heads(g, config, g.linear(x, name, d, d, false)?, norm);
    let q = proj(img_n, "attn.to_q", Some("attn.norm_q.weight"))?;
    let k = proj(img_n, "attn.to_k", Some("attn.norm_k.weight"))?;
    let v = proj(img_n, "attn.to_v", None)?;
    let cq = proj(txt_n, "attn.add_q_proj", Some("attn.norm_added_q.weight"))?;
    let ck = proj(txt_n, "attn.add_k_proj", Some("attn.norm_added_k.weight"))?;
    let cv = proj(txt_n, "attn.add_v_proj", None)?;
    let joint = |a: T, b: T| g.concat(&[a, b], 2); // [B, H, L+S, Dh], text first
    let attn = attend(g, config, joint(cq, q)?, joint(ck, k)?, joint(cv, v)?, pe)?; // [B, L+S, D]

    let text_len = g.gather(g.shape(txt), g.ints(&[1]), 0)?; // [1] = L
    let attn_txt = g.slice_dyn(attn, 1, g.ints(&[0]), text_len, Dim::sym("L"))?; // [B, L, D]
    let attn_img = g.slice_dyn(attn, 1, text_len, g.ints(&[i64::MAX]), Dim::sym("S"))?; // [B, S, D]

    let img = g.add(img, g.mul(img1.gate, g.linear(attn_img, "attn.to_out.0", d, d, false)?)?)?;
    let img_n = modulate(g, g.layer_norm(img, eps)?, img2.shift, img2.scale1)?;
    let img = g.add(img, g.mul(img2.gate, feed_forward(g, config, img_n, "ff")?)?)?;

    let txt = g.add(txt, g.mul(txt1.gate, g.linear(attn_txt, "attn.to_add_out", d, d, false)?)?)?;
    let txt_n = modulate(g, g.layer_norm(txt, eps)?, txt2.shift, txt2.scale1)?;
    let txt = g.add(txt, g.mul(txt2.gate, feed_forward(g, config, txt_n, "ff_context")?)?)?;
    Ok((txt, img))
}

/// One single-stream block (`single_transformer_blocks.i`) on z = [text; image]:
/// `[q | k | v | a | b] = to_qkv_mlp_proj(mod(LN z))`,
/// `z += gate · to_out([attn(q, k, v) ; SiLU(a)·b])`.
pub fn single_block(g: &Graph, config: &DitConfig, z: T, pe: &Rope, m: &Mod) -> Result<T> {
    let (d, f, eps) = (config.inner_dim(), config.mlp_hidden_dim, config.eps as f32);
    let zn = modulate(g, g.layer_norm(z, eps)?, m.shift, m.scale1)?;
    let proj = g.linear(zn, "attn.to_qkv_mlp_proj", d, 3 * d + 2 * f, false)?; // [B, N, 3D+2F]
    let (di, fi) = (d as i64, f as i64);
    let p = g.split(proj, -1, &[di, di, di, fi, fi])?;
    let q = heads(g, config, p[0], Some("attn.norm_q.weight"))?;
    let k = heads(g, config, p[1], Some("attn.norm_k.weight"))?;
    let v = heads(g, config, p[2], None)?;
    let attn = attend(g, config, q, k, v, pe)?; // [B, N, D]
    let mlp = g.swiglu(p[3], p[4])?; // [B, N, F]
    let out = g.linear(g.concat(&[attn, mlp], -1)?, "attn.to_out", d + f, d, false)?;
    g.add(z, g.mul(m.gate, out)?)
}

/// `linear_out(SiLU(a) · b)` with `[a | b] = linear_in(x)` (`Flux2FeedForward`).
fn feed_forward(g: &Graph, config: &DitConfig, x: T, name: &str) -> Result<T> {
    let (d, f) = (config.inner_dim(), config.mlp_hidden_dim);
    let h = g.linear(x, &format!("{name}.linear_in"), d, 2 * f, false)?; // [B, N, 2F]
    let ab = g.split(h, -1, &[f as i64, f as i64])?;
    g.linear(g.swiglu(ab[0], ab[1])?, &format!("{name}.linear_out"), f, d, false)
}

/// [B, N, D] -> [B, H, N, Dh], with the QK RMSNorm over the head dim when `norm` names one.
fn heads(g: &Graph, config: &DitConfig, x: T, norm: Option<&str>) -> Result<T> {
    let (h, dh) = (config.num_attention_heads as i64, config.attention_head_dim as i64);
    let x = g.reshape(x, &[0, 0, h, dh])?; // [B, N, H, Dh]
    let x = match norm {
        Some(w) => g.rms_norm(x, w, config.eps as f32)?,
        None => x,
    };
    g.transpose(x, &[0, 2, 1, 3]) // [B, H, N, Dh]
}

/// `softmax(rope(q)·rope(k)ᵀ / √Dh) · v` over q, k, v [B, H, N, Dh], heads merged: [B, N, D].
fn attend(g: &Graph, config: &DitConfig, q: T, k: T, v: T, pe: &Rope) -> Result<T> {
    let dh = config.attention_head_dim;
    let q = g.rope(q, pe.cos, pe.sin, RopeStyle::Interleaved)?;
    let k = g.rope(k, pe.cos, pe.sin, RopeStyle::Interleaved)?;
    let o = g.attention(q, k, v, None, 1.0 / (dh as f32).sqrt())?; // [B, H, N, Dh]
    let o = g.transpose(o, &[0, 2, 1, 3])?; // [B, N, H, Dh]
    g.reshape(o, &[0, 0, config.inner_dim() as i64]) // [B, N, D]
}
