//! 4-axis rotary position tables of the FLUX.2 DiT, computed in the graph from the integer
//! position ids (flux2-arch.md §2.5).
//!
//! Each position id has one coordinate per axis (`(t, h, w, l)` for FLUX.2). The head dim
//! is split into consecutive blocks of `axes_dims_rope[a]` features; inside axis `a`'s block,
//! the pair `m` rotates by `pos_a · theta^(-2m / axes_dims_rope[a])`. The tables are
//! `[L+S, Dh/2]` (one angle per pair), text rows first, matching the `[text; image]` order of
//! the joint attention; they are applied with interleaved pairs.
//!
//! Reference: diffusers 0.42.1 `Flux2PosEmbed` + `get_1d_rotary_pos_embed(freqs_dtype=float64)`.
//! As there, 3-D ids use only batch row 0, the ids go through float32, and the angles and
//! their cos / sin are computed in float64 before the cast to float32 (ONNX Runtime target).
//! TensorRT has no float64: that target computes the angles in float32 with split
//! frequencies and an explicit reduction to [-π, π] (see `reduced_angles`).

use super::DitConfig;
use crate::{DType, Graph, Result, Target, T};

/// cos / sin tables [L+S, Dh/2] (float32) for the joint `[text; image]` sequence.
#[derive(Copy, Clone, Debug)]
pub struct Rope {
    pub cos: T,
    pub sin: T,
}

/// Builds the tables from `txt_ids` [B, L, n_axes] and `img_ids` [B, S, n_axes] (int64).
pub fn rope_tables(g: &Graph, config: &DitConfig, txt_ids: T, img_ids: T) -> Result<Rope> {
    let _s = g.scope("pos_embed");
    let angles = g.concat(&[angles(g, config, txt_ids)?, angles(g, config, img_ids)?], 0)?; // [L+S, Dh/2]
    let cos = g.cast(g.cos(angles), DType::F32);
    let sin = g.cast(g.sin(angles), DType::F32);
    Ok(Rope { cos, sin })
}

/// `pos[:, axis(j)] · freq[j]` for every pair j, from batch row 0 of `ids`.
fn angles(g: &Graph, config: &DitConfig, ids: T) -> Result<T> {
    let ids = g.gather(ids, g.const_i64(&[], &[0]), 0)?; // [N, n_axes]: batch row 0
    let pos = g.cast(ids, DType::F32); // `ids.float()`
    let (axis_of, freqs) = pair_frequencies(config);
    let cols = g.gather(pos, g.ints(&axis_of), 1)?; // [N, Dh/2]: the axis coordinate of each pair
    let n = freqs.len();
    match g.target {
        Target::Ort => {
            let raw = freqs.iter().flat_map(|f| f.to_le_bytes()).collect();
            let f = g.constant(DType::F64, &[n], raw);
            g.mul(g.cast(cols, DType::F64), f)
        }
        Target::TensorRt => reduced_angles(g, cols, &freqs),
    }
}

/// Float32 angles `pos · freq` reduced to about [-π, π], accurate to ~1e-7 rad where a plain
/// f32 product is off by up to 3e-5 rad at position 511 (TensorRT has no float64, and does
/// not document the accuracy of its Sin / Cos for arguments of hundreds of radians).
///
/// Each frequency is split into `f_a + f_b + f_c` with `f_a`, `f_b` of 12 significant bits,
/// so for integer positions below 4096 `pos·f_a` and `pos·f_b` are exact in f32. The turns
/// are counted on `pos·f_a` and removed with 2π split Cody–Waite style (`6.28125` has 8
/// bits, so `k·6.28125` and the subtraction are exact); the small terms are added last.
fn reduced_angles(g: &Graph, pos: T, freqs: &[f64]) -> Result<T> {
    const TWO_PI_HI: f32 = 6.28125;
    let two_pi_lo = (std::f64::consts::TAU - TWO_PI_HI as f64) as f32;
    let n = freqs.len();
    let split: Vec<[f32; 3]> = freqs.iter().map(|&f| split_frequency(f)).collect();
    let part = |i: usize| g.const_float(DType::F32, &[n], &split.iter().map(|p| p[i]).collect::<Vec<_>>());
    let scalar = |v: f32| g.const_float(DType::F32, &[], &[v]);
    let hi = g.mul(pos, part(0))?; // exact
    let k = g.round(g.mul(hi, scalar((0.5 / std::f64::consts::PI) as f32))?);
    let r = g.sub(hi, g.mul(k, scalar(TWO_PI_HI))?)?; // exact
    let r = g.sub(r, g.mul(k, scalar(two_pi_lo))?)?;
    let lo = g.add(g.mul(pos, part(1))?, g.mul(pos, part(2))?)?;
    g.add(r, lo)
}

/// `f = a + b + c` with `a` and `b` rounded to 12 significant bits (`c` the f32 remainder).
fn split_frequency(f: f64) -> [f32; 3] {
    let top12 = |x: f64| {
        if x == 0.0 {
            return 0.0;
        }
        let scale = 2f64.powi(11 - x.abs().log2().floor() as i32);
        (x * scale).round() / scale
    };
    let a = top12(f);
    let b = top12(f - a);
    [a as f32, b as f32, (f - a - b) as f32]
}

/// For every rotary pair of the head dim: the position axis it belongs to, and its frequency
/// `1 / theta^(2m / dim_a)` (float64, as `get_1d_rotary_pos_embed` computes it).
pub fn pair_frequencies(config: &DitConfig) -> (Vec<i64>, Vec<f64>) {
    let mut axis_of = Vec::new();
    let mut freqs = Vec::new();
    for (a, &dim) in config.axes_dims_rope.iter().enumerate() {
        for m in 0..dim / 2 {
            axis_of.push(a as i64);
            freqs.push(1.0 / config.rope_theta.powf((2 * m) as f64 / dim as f64));
        }
    }
    (axis_of, freqs)
}
