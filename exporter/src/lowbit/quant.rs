//! The block-wise symmetric quantiser behind `--weights-precision int8|int4`.
//!
//! A linear weight stored `(out, in)` = `(N, K)` becomes the `(K, N)` integer tensor that a
//! `DequantizeLinear(axis = 0, block_size = B)` feeds straight into `MatMul` as its second
//! input, with one scale per output channel and per block of `B` consecutive input channels:
//! `scale[b, n] = max_{k in block b} |w[n, k]| / qmax` (qmax 127 for INT8, 7 for INT4), stored in
//! the graph's float type, and `q = clamp(round_half_even(w / scale), qmin, qmax)` computed with
//! the *stored* scale so that `DequantizeLinear` reproduces `q · scale` exactly. A block of zeros
//! gets scale 0 and codes 0. The last block may be partial (ONNX allows `K % B != 0`).
//!
//! INT4 codes are packed two per byte in ONNX's order: element `i` of the row-major tensor goes
//! to byte `i / 2`, the low nibble when `i` is even, two's complement; an odd element count
//! leaves the last high nibble 0.

use flux2_graphs::DType;

/// Integer width of the quantised weights.
#[derive(Copy, Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Bits {
    Int8,
    Int4,
}

impl Bits {
    /// Largest code (and the divisor of the absolute maximum).
    pub fn qmax(self) -> i32 {
        match self {
            Bits::Int8 => 127,
            Bits::Int4 => 7,
        }
    }

    /// Smallest code.
    pub fn qmin(self) -> i32 {
        -self.qmax() - 1
    }

    /// The ONNX `TensorProto.DataType` of the stored codes (INT8 = 3, INT4 = 22).
    pub fn onnx(self) -> i32 {
        match self {
            Bits::Int8 => flux2_graphs::onnx_dtype::INT8,
            Bits::Int4 => flux2_graphs::onnx_dtype::INT4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Bits::Int8 => "int8",
            Bits::Int4 => "int4",
        }
    }

    /// Bytes taken by `n` codes.
    pub fn bytes_for(self, n: usize) -> usize {
        match self {
            Bits::Int8 => n,
            Bits::Int4 => n.div_ceil(2),
        }
    }
}

/// A quantised `(K, N)` weight: packed codes plus `(ceil(K / block), N)` scales.
#[derive(Clone, Debug, PartialEq)]
pub struct Quantised {
    /// Codes of the transposed weight, row-major `(K, N)`, packed per [`Bits`].
    pub codes: Vec<u8>,
    /// Scales row-major `(blocks, N)`, as f32 values exactly representable in the scale dtype.
    pub scales: Vec<f32>,
    pub k: usize,
    pub n: usize,
    pub blocks: usize,
}

impl Quantised {
    /// The scales encoded little-endian in `dtype` (exact: they were rounded to it already).
    pub fn scale_bytes(&self, dtype: DType) -> Vec<u8> {
        flux2_graphs::encode_floats(dtype, &self.scales)
    }

    /// Code `(k, n)` as an integer (unpacked).
    pub fn code(&self, bits: Bits, k: usize, n: usize) -> i32 {
        let i = k * self.n + n;
        match bits {
            Bits::Int8 => self.codes[i] as i8 as i32,
            Bits::Int4 => {
                let b = self.codes[i / 2];
                let nib = if i.is_multiple_of(2) { b & 0x0f } else { b >> 4 };
                ((nib << 4) as i8 >> 4) as i32
            }
        }
    }

    /// The dequantised `(K, N)` weight (`code · scale`), for tests and error reports.
    pub fn dequantise(&self, bits: Bits, block: usize) -> Vec<f32> {
        let mut out = vec![0f32; self.k * self.n];
        for k in 0..self.k {
            for n in 0..self.n {
                out[k * self.n + n] = self.code(bits, k, n) as f32 * self.scales[(k / block) * self.n + n];
            }
        }
        out
    }
}

/// Rounds `v` to the nearest value of the scale dtype (f32, f16 or bf16).
pub fn round_to(dtype: DType, v: f32) -> f32 {
    match dtype {
        DType::F16 => half::f16::from_f32(v).to_f32(),
        DType::BF16 => half::bf16::from_f32(v).to_f32(),
        _ => v,
    }
}

/// Quantises the `(N, K)` row-major weight `w` block-wise along K (see the module docs).
/// `block` is at least 1; scales are rounded to `scale_dtype`.
pub fn quantise(w: &[f32], n: usize, k: usize, bits: Bits, block: usize, scale_dtype: DType) -> Quantised {
    let block = block.max(1);
    let blocks = k.div_ceil(block);
    let mut scales = vec![0f32; blocks * n];
    for (row, wr) in w.chunks_exact(k.max(1)).take(n).enumerate() {
        for (b, chunk) in wr.chunks(block).enumerate() {
            let amax = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
            scales[b * n + row] = round_to(scale_dtype, amax / bits.qmax() as f32);
        }
    }
    let (qmin, qmax) = (bits.qmin() as f32, bits.qmax() as f32);
    let mut codes = vec![0u8; bits.bytes_for(k * n)];
    for kk in 0..k {
        let srow = &scales[(kk / block) * n..(kk / block + 1) * n];
        for (nn, &s) in srow.iter().enumerate() {
            let q = if s > 0.0 { (w[nn * k + kk] / s).round_ties_even().clamp(qmin, qmax) } else { 0.0 };
            let q = q as i32;
            let i = kk * n + nn;
            match bits {
                Bits::Int8 => codes[i] = q as i8 as u8,
                Bits::Int4 => codes[i / 2] |= ((q as u8) & 0x0f) << (4 * (i % 2)),
            }
        }
    }
    Quantised { codes, scales, k, n, blocks }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random weights with outliers and an all-zero block.
    fn weights(n: usize, k: usize) -> Vec<f32> {
        let mut s = 0x9e3779b9u32;
        let mut w: Vec<f32> = (0..n * k)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32 - 0.5) * 0.2
            })
            .collect();
        w[3] = 1.5; // an outlier in row 0, block 0
        if n > 1 {
            for v in &mut w[k..k + k.min(8)] {
                *v = 0.0; // row 1, first block (block size 8) all zero
            }
        }
        w
    }

    /// The naive reference: per (row, block) scale, divide, round half to even, clamp; codes kept
    /// unpacked as (K, N).
    fn reference(w: &[f32], n: usize, k: usize, qmax: i32, block: usize, dt: DType) -> (Vec<i32>, Vec<f32>) {
        let blocks = k.div_ceil(block);
        let mut scales = vec![0f32; blocks * n];
        let mut codes = vec![0i32; k * n];
        for r in 0..n {
            for b in 0..blocks {
                let ks = b * block..((b + 1) * block).min(k);
                let mut amax = 0f32;
                for kk in ks.clone() {
                    amax = amax.max(w[r * k + kk].abs());
                }
                let s = round_to(dt, amax / qmax as f32);
                scales[b * n + r] = s;
                for kk in ks {
                    let q = if s == 0.0 { 0.0 } else { (w[r * k + kk] / s).round_ties_even() };
                    codes[kk * n + r] = (q as i32).clamp(-qmax - 1, qmax);
                }
            }
        }
        (codes, scales)
    }

    #[test]
    fn matches_the_naive_reference() {
        for (bits, qmax) in [(Bits::Int8, 127), (Bits::Int4, 7)] {
            for (n, k, block) in [(5, 32, 8), (3, 20, 8), (7, 64, 32), (1, 7, 16)] {
                for dt in [DType::F32, DType::F16] {
                    let w = weights(n, k);
                    let q = quantise(&w, n, k, bits, block, dt);
                    let (codes, scales) = reference(&w, n, k, qmax, block, dt);
                    assert_eq!(q.scales, scales, "{bits:?} {n}x{k}/{block} {dt}");
                    assert_eq!(q.blocks, k.div_ceil(block));
                    for kk in 0..k {
                        for nn in 0..n {
                            assert_eq!(q.code(bits, kk, nn), codes[kk * n + nn], "{bits:?} ({kk},{nn})");
                        }
                    }
                    assert_eq!(q.codes.len(), bits.bytes_for(n * k));
                }
            }
        }
    }

    #[test]
    fn int4_nibbles_in_onnx_order() {
        // (N, K) = (2, 3): transposed (K, N) = [[a0, a1], [b0, b1], [c0, c1]], element order
        // a0 a1 b0 b1 c0 c1; scale 1 per (row, whole K block) with codes chosen exactly.
        let w = [7.0, -8.0, 1.0, -1.0, 2.0, -7.0]; // row 0: 7, -8, 1 ; row 1: -1, 2, -7
        let q = quantise(&w, 2, 3, Bits::Int4, 4, DType::F32);
        // row 0 amax 8 -> scale 8/7; row 1 amax 7 -> scale 1
        assert_eq!(q.scales, vec![8.0 / 7.0, 1.0]);
        // codes (K, N): k0: [round(7·7/8)=6, -1], k1: [-7, 2], k2: [round(7/8)=1, -7]
        let elems = [6i32, -1, -7, 2, 1, -7];
        let want: Vec<u8> =
            elems.chunks(2).map(|p| ((p[0] as u8) & 0xf) | (((p[1] as u8) & 0xf) << 4)).collect();
        assert_eq!(q.codes, want);
        assert_eq!(want[0], 0xf6); // first element in the low nibble
    }

    #[test]
    fn ties_round_to_even_and_codes_clamp() {
        // scale = 7 / 7 = 1: 2.5 -> 2, 3.5 -> 4, -0.5 -> -0 ; max 7 stays 7
        let w = [2.5, 3.5, -0.5, 7.0];
        let q = quantise(&w, 1, 4, Bits::Int4, 4, DType::F32);
        let got: Vec<i32> = (0..4).map(|k| q.code(Bits::Int4, k, 0)).collect();
        assert_eq!(got, vec![2, 4, 0, 7]);
        // an f16 scale rounded below amax/qmax would push the extreme past qmax: clamped
        let w = [-1000.1f32, 0.0];
        let q = quantise(&w, 1, 2, Bits::Int8, 2, DType::F16);
        assert!(q.code(Bits::Int8, 0, 0) >= -128);
        let err = (q.dequantise(Bits::Int8, 2)[0] - w[0]).abs();
        assert!(err <= q.scales[0], "{err}");
    }

    #[test]
    fn error_is_within_half_a_step() {
        let (n, k, block) = (6, 96, 32);
        let w = weights(n, k);
        for bits in [Bits::Int8, Bits::Int4] {
            let q = quantise(&w, n, k, bits, block, DType::F32);
            let d = q.dequantise(bits, block);
            for r in 0..n {
                for kk in 0..k {
                    let s = q.scales[(kk / block) * n + r];
                    let e = (d[kk * n + r] - w[r * k + kk]).abs();
                    assert!(e <= 0.5 * s * (1.0 + 1e-6), "{bits:?} ({r},{kk}): {e} > {s}/2");
                }
            }
        }
    }
}
