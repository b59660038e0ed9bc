//! Conditioning of the FLUX.2 DiT: sinusoidal timestep / guidance embeddings, their MLPs
//! (`time_guidance_embed`), and the modulation vectors computed once per forward and shared
//! by every double-stream block and by every single-stream block (flux2-arch.md §2.2–2.3).
//!
//! Reference: diffusers 0.42.1 `Flux2TimestepGuidanceEmbeddings`, `Flux2Modulation`,
//! `embeddings.get_timestep_embedding`.

use super::DitConfig;
use crate::{DType, Graph, Result, T};

/// `(1 + scale) · x + shift`, with `scale1 = 1 + scale` computed once per modulation.
pub fn modulate(g: &Graph, x: T, shift: T, scale1: T) -> Result<T> {
    g.add(g.mul(x, scale1)?, shift)
}

/// One (shift, 1 + scale, gate) triple, each [B, 1, D].
#[derive(Copy, Clone, Debug)]
pub struct Mod {
    pub shift: T,
    pub scale1: T,
    pub gate: T,
}

/// The shared modulations: double-stream image and text streams (attention, MLP), the
/// single-stream blocks, and `SiLU(temb)` for the final layer.
pub struct Modulations {
    pub img: [Mod; 2],
    pub txt: [Mod; 2],
    pub single: Mod,
    pub silu_temb: T,
}

impl Modulations {
    /// `Linear(SiLU(temb))` for `double_stream_modulation_{img,txt}` (6 chunks) and
    /// `single_stream_modulation` (3 chunks), chunked as (shift, scale, gate)….
    pub fn new(g: &Graph, config: &DitConfig, temb: T) -> Result<Modulations> {
        let silu_temb = g.silu(temb)?;
        let img = modulation(g, config, silu_temb, "double_stream_modulation_img", 2)?;
        let txt = modulation(g, config, silu_temb, "double_stream_modulation_txt", 2)?;
        let single = modulation(g, config, silu_temb, "single_stream_modulation", 1)?;
        Ok(Modulations { img: [img[0], img[1]], txt: [txt[0], txt[1]], single: single[0], silu_temb })
    }
}

/// `Flux2Modulation`: `linear(SiLU(temb))` [B, 3·sets·D] split into `sets` triples.
fn modulation(g: &Graph, config: &DitConfig, silu_temb: T, name: &str, sets: usize) -> Result<Vec<Mod>> {
    let d = config.inner_dim();
    let _s = g.scope(name);
    let m = g.linear(silu_temb, "linear", d, 3 * sets * d, false)?; // [B, 3·sets·D]
    let m = g.unsqueeze(m, &[1])?; // [B, 1, 3·sets·D]
    let chunks = g.split(m, -1, &vec![d as i64; 3 * sets])?;
    let one = g.scalar(1.0);
    chunks.chunks(3).map(|c| Ok(Mod { shift: c[0], scale1: g.add(one, c[1])?, gate: c[2] })).collect()
}

/// `temb = MLP_t(proj(1000·t)) [+ MLP_g(proj(1000·guidance))]` → [B, D].
pub fn time_guidance_embed(g: &Graph, config: &DitConfig, timestep: T, guidance: Option<T>) -> Result<T> {
    let _s = g.scope("time_guidance_embed");
    let t = timestep_embedder(g, config, timestep, "timestep_embedder")?;
    match guidance {
        Some(gd) => g.add(t, timestep_embedder(g, config, gd, "guidance_embedder")?),
        None => Ok(t),
    }
}

/// `TimestepEmbedding(Timesteps(1000·x))`: `linear_2(SiLU(linear_1(sinusoid)))`, no biases.
fn timestep_embedder(g: &Graph, config: &DitConfig, x: T, name: &str) -> Result<T> {
    let (ch, d) = (config.timestep_guidance_channels, config.inner_dim());
    let x = g.mul(x, g.scalar(1000.0))?; // `timestep.to(x.dtype) * 1000` in the graph dtype
    let emb = sinusoid(g, x, ch)?; // [B, ch]
    let h = g.linear(emb, &format!("{name}.linear_1"), ch, d, false)?;
    g.linear(g.silu(h)?, &format!("{name}.linear_2"), d, d, false)
}

/// `get_timestep_embedding(x, ch, flip_sin_to_cos=True, downscale_freq_shift=0)`:
/// `[cos(x·f) ; sin(x·f)]` in f32 with `f_i = exp(-ln(10000)·i/(ch/2))`, cast to the graph dtype.
fn sinusoid(g: &Graph, x: T, channels: usize) -> Result<T> {
    let half = channels / 2;
    let x = g.unsqueeze(g.cast(x, DType::F32), &[1])?; // [B, 1]
    let freqs = g.const_float(DType::F32, &[1, half], &timestep_freqs(half));
    let arg = g.mul(x, freqs)?; // [B, half]
    let emb = g.concat(&[g.cos(arg), g.sin(arg)], -1)?; // [B, ch]
    Ok(g.cast(emb, g.dtype))
}

/// `exp(-ln(10000) · i / half)` as diffusers computes it: the exponent in f32 (product and
/// quotient rounded like torch), then exp rounded to f32.
///
/// torch's `exp` (MKL VML on x86) is not correctly rounded everywhere: for the released
/// 256-channel embedding it returns the next f32 up at i = 12 and i = 106, and those two are
/// patched here. It matters because the angle is `1000·guidance·f_i`: one ulp of f_12 moves
/// it by ~1.5e-4 rad at guidance 5, which shows up as ~7e-5 in the velocity.
fn timestep_freqs(half: usize) -> Vec<f32> {
    let c = -(10000f64.ln()) as f32;
    let mut freqs: Vec<f32> = (0..half).map(|i| ((c * i as f32 / half as f32) as f64).exp() as f32).collect();
    if half == 128 {
        for i in [12, 106] {
            freqs[i] = f32::from_bits(freqs[i].to_bits() + 1);
        }
    }
    freqs
}
