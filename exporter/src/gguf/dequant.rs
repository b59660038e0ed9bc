//! Dequantisation of GGML blocks to f32, bit-exact with `gguf.quants.dequantize` of the
//! `gguf` 0.19.0 package: every scale is an f16 widened to f32, every product and sum is one
//! f32 operation in the order numpy evaluates it there (`d * q + m` is two roundings, never a
//! fused multiply-add; the K types first form the sub-block scale `d * sc` and minimum
//! `dmin * m`, then `scale * q - min`).

use half::f16;

use super::types::GgmlType;

fn h(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// Decodes `bytes` (whole blocks of `ty`) into `out` (block_size values per block).
/// Returns false when the lengths do not match whole blocks.
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> bool {
    let (bs, ts) = (ty.block_size(), ty.type_size());
    if !bytes.len().is_multiple_of(ts) || out.len() != bytes.len() / ts * bs {
        return false;
    }
    let block: fn(&[u8], &mut [f32]) = match ty {
        GgmlType::F32 => |b, o| o[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        GgmlType::F16 => |b, o| o[0] = h(b, 0),
        GgmlType::BF16 => |b, o| o[0] = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16),
        GgmlType::Q4_0 => q4_0,
        GgmlType::Q4_1 => q4_1,
        GgmlType::Q5_0 => q5_0,
        GgmlType::Q5_1 => q5_1,
        GgmlType::Q8_0 => q8_0,
        GgmlType::Q2K => q2_k,
        GgmlType::Q3K => q3_k,
        GgmlType::Q4K => q4_k,
        GgmlType::Q5K => q5_k,
        GgmlType::Q6K => q6_k,
    };
    for (b, o) in bytes.chunks_exact(ts).zip(out.chunks_exact_mut(bs)) {
        block(b, o);
    }
    true
}

/// Low and high nibbles of 16 bytes: element `l` is the low nibble of byte `l`, `l + 16` the high.
fn nibbles(qs: &[u8], l: usize) -> u8 {
    if l < 16 {
        qs[l] & 0x0F
    } else {
        qs[l - 16] >> 4
    }
}

fn q4_0(b: &[u8], o: &mut [f32]) {
    let d = h(b, 0);
    for (l, v) in o.iter_mut().enumerate() {
        *v = d * (nibbles(&b[2..], l) as i8 - 8) as f32;
    }
}

fn q4_1(b: &[u8], o: &mut [f32]) {
    let (d, m) = (h(b, 0), h(b, 2));
    for (l, v) in o.iter_mut().enumerate() {
        *v = d * nibbles(&b[4..], l) as f32 + m;
    }
}

/// The 5th bit of element `l` of Q5_0 / Q5_1 (a little-endian u32 bit mask).
fn high_bit(qh: &[u8], l: usize) -> u8 {
    (u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]) >> l) as u8 & 1
}

fn q5_0(b: &[u8], o: &mut [f32]) {
    let d = h(b, 0);
    for (l, v) in o.iter_mut().enumerate() {
        let q = nibbles(&b[6..], l) | (high_bit(&b[2..6], l) << 4);
        *v = d * (q as i8 - 16) as f32;
    }
}

fn q5_1(b: &[u8], o: &mut [f32]) {
    let (d, m) = (h(b, 0), h(b, 2));
    for (l, v) in o.iter_mut().enumerate() {
        let q = nibbles(&b[8..], l) | (high_bit(&b[4..8], l) << 4);
        *v = d * q as f32 + m;
    }
}

fn q8_0(b: &[u8], o: &mut [f32]) {
    let d = h(b, 0);
    for (l, v) in o.iter_mut().enumerate() {
        *v = b[2 + l] as i8 as f32 * d;
    }
}

/// 2-bit codes of a 256-element K block stored as 64 bytes: element `j*128 + s*32 + l` is
/// bits `2s..2s+2` of byte `j*32 + l`.
fn crumb(qs: &[u8], i: usize) -> u8 {
    let (j, s, l) = (i / 128, (i % 128) / 32, i % 32);
    (qs[j * 32 + l] >> (2 * s)) & 3
}

fn q2_k(b: &[u8], o: &mut [f32]) {
    let (scales, qs) = (&b[..16], &b[16..80]);
    let (d, dmin) = (h(b, 80), h(b, 82));
    for (sub, chunk) in o.chunks_exact_mut(16).enumerate() {
        let dl = d * (scales[sub] & 0x0F) as f32;
        let ml = dmin * (scales[sub] >> 4) as f32;
        for (k, v) in chunk.iter_mut().enumerate() {
            *v = dl * crumb(qs, sub * 16 + k) as f32 - ml;
        }
    }
}

/// The 16 signed 6-bit scales of a Q3_K block.
fn q3_k_scales(s: &[u8]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (i, v) in out.iter_mut().enumerate() {
        let low = if i < 8 { s[i] & 0x0F } else { s[i - 8] >> 4 };
        let high = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
        *v = (low | (high << 4)) as i8 - 32;
    }
    out
}

fn q3_k(b: &[u8], o: &mut [f32]) {
    let (hmask, qs) = (&b[..32], &b[32..96]);
    let scales = q3_k_scales(&b[96..108]);
    let d = h(b, 108);
    for (sub, chunk) in o.chunks_exact_mut(16).enumerate() {
        let dl = d * scales[sub] as f32;
        for (k, v) in chunk.iter_mut().enumerate() {
            let i = sub * 16 + k;
            let hbit = ((hmask[i % 32] >> (i / 32)) & 1) ^ 1;
            let q = crumb(qs, i) as i8 - (hbit << 2) as i8;
            *v = dl * q as f32;
        }
    }
}

/// The eight 6-bit scales and minimums of a Q4_K / Q5_K block (12 packed bytes).
pub fn k_scale_min(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
    for j in 0..4 {
        sc[j] = s[j] & 0x3F;
        mn[j] = s[4 + j] & 0x3F;
        sc[4 + j] = (s[8 + j] & 0x0F) | ((s[j] >> 2) & 0x30);
        mn[4 + j] = (s[8 + j] >> 4) | ((s[4 + j] >> 2) & 0x30);
    }
    (sc, mn)
}

/// 4-bit codes of a 256-element K block stored as 128 bytes: element `j*64 + s*32 + l` is
/// nibble `s` of byte `j*32 + l`.
fn k_nibble(qs: &[u8], i: usize) -> u8 {
    let (j, s, l) = (i / 64, (i % 64) / 32, i % 32);
    (qs[j * 32 + l] >> (4 * s)) & 0x0F
}

fn q4_k(b: &[u8], o: &mut [f32]) {
    let (d, dmin) = (h(b, 0), h(b, 2));
    let (sc, mn) = k_scale_min(&b[4..16]);
    let qs = &b[16..144];
    for (sub, chunk) in o.chunks_exact_mut(32).enumerate() {
        let (ds, dm) = (d * sc[sub] as f32, dmin * mn[sub] as f32);
        for (l, v) in chunk.iter_mut().enumerate() {
            *v = ds * k_nibble(qs, sub * 32 + l) as f32 - dm;
        }
    }
}

fn q5_k(b: &[u8], o: &mut [f32]) {
    let (d, dmin) = (h(b, 0), h(b, 2));
    let (sc, mn) = k_scale_min(&b[4..16]);
    let (qh, qs) = (&b[16..48], &b[48..176]);
    for (sub, chunk) in o.chunks_exact_mut(32).enumerate() {
        let (ds, dm) = (d * sc[sub] as f32, dmin * mn[sub] as f32);
        for (l, v) in chunk.iter_mut().enumerate() {
            let q = k_nibble(qs, sub * 32 + l) | (((qh[l] >> sub) & 1) << 4);
            *v = ds * q as f32 - dm;
        }
    }
}

fn q6_k(b: &[u8], o: &mut [f32]) {
    let (ql, qh, scales) = (&b[..128], &b[128..192], &b[192..208]);
    let d = h(b, 208);
    for (sub, chunk) in o.chunks_exact_mut(16).enumerate() {
        let ds = d * scales[sub] as i8 as f32;
        for (k, v) in chunk.iter_mut().enumerate() {
            let i = sub * 16 + k;
            let (j, r) = (i / 128, i % 128);
            let low = (ql[j * 64 + r % 64] >> (4 * (r / 64))) & 0x0F;
            let high = (qh[j * 32 + r % 32] >> (2 * (r / 32))) & 3;
            *v = ds * ((low | (high << 4)) as i8 - 32) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::types::QK_K;

    #[test]
    fn lengths_must_be_whole_blocks() {
        let mut out = vec![0f32; 32];
        assert!(!dequantize(GgmlType::Q8_0, &[0u8; 33], &mut out));
        assert!(!dequantize(GgmlType::Q8_0, &[0u8; 34], &mut out[..31]));
        assert!(dequantize(GgmlType::Q8_0, &[0u8; 34], &mut out));
        let mut k = vec![0f32; QK_K];
        assert!(dequantize(GgmlType::Q6K, &[0u8; 210], &mut k));
    }

    #[test]
    fn q8_0_is_code_times_scale() {
        let mut b = vec![0u8; 34];
        b[..2].copy_from_slice(&f16::from_f32(0.5).to_bits().to_le_bytes());
        for l in 0..32 {
            b[2 + l] = (l as i8 - 16) as u8;
        }
        let mut out = vec![0f32; 32];
        assert!(dequantize(GgmlType::Q8_0, &b, &mut out));
        for (l, v) in out.iter().enumerate() {
            assert_eq!(*v, (l as f32 - 16.0) * 0.5);
        }
    }
}
