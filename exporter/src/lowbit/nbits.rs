//! `--lowbit-op matmulnbits`: the weight-only linears written as ONNX Runtime's
//! `com.microsoft::MatMulNBits` directly, in the layout that kernel reads, instead of the
//! standard `DequantizeLinear → MatMul` pair ONNX Runtime fuses into it when it creates a session.
//!
//! Why: the fusion re-lays every weight out into a new in-memory initializer, so creating a
//! session holds two copies of the weights. A graph that already holds `MatMulNBits` is run
//! from its mapped weight file as it is; with pre-packing off (the runtime's mapped mode) the
//! kernel dequantises one weight at a time inside the call, so a 17 GB INT4 DiT runs in about
//! 17 GB. The graph is ONNX Runtime-only (CPU, CUDA); TensorRT takes the standard form.
//!
//! Layout (ONNX Runtime's contrib operator spec): `B` is `uint8 (N, ceil(K / block),
//! block · bits / 8)`, each output channel's codes along K, two 4-bit codes per byte low nibble
//! first; `scales` is `(N · ceil(K / block))` in the activations' float type; no zero points,
//! so the kernel subtracts the default `2^(bits − 1)`: the stored code is the signed code plus
//! 8 (INT4) or 128 (INT8), and `(stored − zero point) · scale` is the same value the
//! `DequantizeLinear` form gives. A partial last block is padded with the zero point (value 0).
//! `accuracy_level` is 0 (float compute): it is fixed at export, where the CPU that will run
//! the graph is unknown, and the session cache may then keep pre-packed weights safely.

use flux2_graphs::attr;
use flux2_graphs::onnx::{GraphProto, NodeProto};

use super::{Bits, Quantised, Site};

/// The contrib domain of `MatMulNBits`.
pub const DOMAIN: &str = "com.microsoft";

/// Bits per code.
fn width(bits: Bits) -> usize {
    match bits {
        Bits::Int8 => 8,
        Bits::Int4 => 4,
    }
}

/// The `(B, scales)` of a quantised `(K, N)` weight in `MatMulNBits` layout, blocks of `block`.
pub fn to_nbits(q: &Quantised, bits: Bits, block: usize) -> (Vec<u8>, Vec<f32>) {
    let (k, n) = (q.k, q.n);
    let blocks = k.div_ceil(block.max(1));
    let blob = block * width(bits) / 8;
    let zp: u8 = match bits {
        Bits::Int8 => 128,
        Bits::Int4 => 8,
    };
    let mut b = match bits {
        Bits::Int8 => vec![zp; n * blocks * blob],
        Bits::Int4 => vec![zp | (zp << 4); n * blocks * blob],
    };
    let mut scales = vec![0f32; n * blocks];
    for kb in 0..blocks {
        for nn in 0..n {
            scales[nn * blocks + kb] = q.scales[kb * n + nn];
        }
        for kk in kb * block..((kb + 1) * block).min(k) {
            let i = kk - kb * block;
            for nn in 0..n {
                let stored = (q.code(bits, kk, nn) + i32::from(zp)) as u8;
                let at = (nn * blocks + kb) * blob;
                match bits {
                    Bits::Int8 => b[at + i] = stored,
                    Bits::Int4 => {
                        let byte = &mut b[at + i / 2];
                        let shift = 4 * (i % 2);
                        *byte = (*byte & !(0x0f << shift)) | (stored << shift);
                    }
                }
            }
        }
    }
    (b, scales)
}

/// Quantises the `(N, K)` row-major weight `w` straight into `MatMulNBits` layout: the same
/// scales and codes as [`super::quantise`] (then [`to_nbits`]) gives, computed row by row
/// without the `(K, N)` transpose (which dominated the export of a 32B DiT).
pub fn quantise_nbits(
    w: &[f32],
    n: usize,
    k: usize,
    bits: Bits,
    block: usize,
    scale_dtype: flux2_graphs::DType,
) -> (Vec<u8>, Vec<f32>) {
    let block = block.max(1);
    let blocks = k.div_ceil(block);
    let blob = block * width(bits) / 8;
    let zp = 1i32 << (width(bits) - 1);
    let fill = match bits {
        Bits::Int8 => zp as u8,
        Bits::Int4 => (zp | (zp << 4)) as u8,
    };
    let mut b = vec![fill; n * blocks * blob];
    let mut scales = vec![0f32; n * blocks];
    let (qmin, qmax) = (bits.qmin() as f32, bits.qmax() as f32);
    for (row, wr) in w.chunks_exact(k.max(1)).take(n).enumerate() {
        for (kb, chunk) in wr.chunks(block).enumerate() {
            let amax = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
            let s = super::quant::round_to(scale_dtype, amax / qmax);
            scales[row * blocks + kb] = s;
            let out = &mut b[(row * blocks + kb) * blob..(row * blocks + kb + 1) * blob];
            for (i, v) in chunk.iter().enumerate() {
                let q = if s > 0.0 { (v / s).round_ties_even().clamp(qmin, qmax) as i32 } else { 0 };
                let stored = (q + zp) as u8;
                match bits {
                    Bits::Int8 => out[i] = stored,
                    Bits::Int4 => {
                        let shift = 4 * (i % 2);
                        out[i / 2] = (out[i / 2] & !(0x0f << shift)) | (stored << shift);
                    }
                }
            }
        }
    }
    (b, scales)
}

/// The dims of a site's `B` and `scales` initializers.
pub fn dims(site: &Site) -> (Vec<usize>, Vec<usize>) {
    let blocks = site.k.div_ceil(site.block.max(1));
    (vec![site.n, blocks, site.block * width(site.bits) / 8], vec![site.n * blocks])
}

/// Replaces each site's `Transpose → MatMul` by one `MatMulNBits` reading the site's codes
/// and scales (the MatMul's name and output are kept); adds the contrib domain's opset.
pub fn rewrite(g: &mut GraphProto, sites: &[Site]) {
    use std::collections::HashMap;
    let by_node: HashMap<&str, &Site> = sites.iter().map(|s| (s.node.as_str(), s)).collect();
    // transposed-weight value name → site
    let mut by_value: HashMap<String, &Site> = HashMap::new();
    for n in &g.node {
        if let (Some(site), Some(out)) = (by_node.get(n.name.as_str()), n.output.first()) {
            by_value.insert(out.clone(), site);
        }
    }
    g.node.retain(|n| !by_node.contains_key(n.name.as_str()));
    for n in g.node.iter_mut() {
        if n.op_type != "MatMul" || !n.domain.is_empty() || n.input.len() != 2 {
            continue;
        }
        let Some(site) = by_value.get(&n.input[1]) else { continue };
        *n = NodeProto {
            input: vec![n.input[0].clone(), super::code_name(&site.weight), super::scale_name(&site.weight)],
            output: n.output.clone(),
            name: n.name.clone(),
            op_type: "MatMulNBits".into(),
            domain: DOMAIN.into(),
            attribute: vec![
                attr::int("K", site.k as i64),
                attr::int("N", site.n as i64),
                attr::int("bits", width(site.bits) as i64),
                attr::int("block_size", site.block as i64),
                attr::int("accuracy_level", 0),
            ],
            doc_string: String::new(),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lowbit::quantise;
    use flux2_graphs::DType;

    /// `(stored − zero point) · scale` of the nbits layout equals the graph form's values,
    /// partial last blocks included.
    #[test]
    fn nbits_layout_holds_the_same_values() {
        let (n, k) = (5, 40);
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        for (bits, block) in [(Bits::Int4, 16), (Bits::Int4, 32), (Bits::Int8, 16), (Bits::Int8, 32)] {
            let q = quantise(&w, n, k, bits, block, DType::F32);
            let want = q.dequantise(bits, block);
            let (b, scales) = to_nbits(&q, bits, block);
            let blocks = k.div_ceil(block);
            let blob = block * width(bits) / 8;
            assert_eq!(b.len(), n * blocks * blob);
            let direct = quantise_nbits(&w, n, k, bits, block, DType::F32);
            assert_eq!(direct, (b.clone(), scales.clone()), "{bits:?} block {block}: quantise_nbits");
            for nn in 0..n {
                for kk in 0..blocks * block {
                    let (kb, i) = (kk / block, kk % block);
                    let at = (nn * blocks + kb) * blob;
                    let (stored, zp) = match bits {
                        Bits::Int8 => (i32::from(b[at + i]), 128),
                        Bits::Int4 => (i32::from((b[at + i / 2] >> (4 * (i % 2))) & 0x0f), 8),
                    };
                    let v = (stored - zp) as f32 * scales[nn * blocks + kb];
                    let expect = if kk < k { want[kk * n + nn] } else { 0.0 };
                    assert_eq!(v, expect, "{bits:?} block {block} ({nn}, {kk})");
                }
            }
        }
    }
}
