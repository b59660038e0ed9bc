//! Element conversion between the float formats a checkpoint may store and the formats a
//! graph may ask for. Conversion goes through f32: exact for f16/bf16/e4m3 -> f32, and
//! round-to-nearest-even for f32 -> f16/bf16.

use flux2_graphs::DType;

/// Decodes one FLOAT8E4M3FN byte.
pub fn e4m3_to_f32(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let exp = ((b >> 3) & 0x0f) as i32;
    let man = (b & 0x07) as f32;
    if exp == 0x0f && (b & 0x07) == 0x07 {
        return f32::NAN;
    }
    if exp == 0 {
        sign * man / 8.0 * 2f32.powi(-6)
    } else {
        sign * (1.0 + man / 8.0) * 2f32.powi(exp - 7)
    }
}

/// Decodes little-endian `src` elements of dtype `from` into f32 (appending to `out`).
pub fn decode(from: DType, src: &[u8], out: &mut Vec<f32>) -> bool {
    match from {
        DType::F32 => out.extend(src.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        DType::F16 => {
            out.extend(src.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()))
        }
        DType::BF16 => {
            out.extend(src.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()))
        }
        DType::F8E4M3 => out.extend(src.iter().map(|&b| e4m3_to_f32(b))),
        _ => return false,
    }
    true
}

/// Converts `src` (dtype `from`) to dtype `to`, appending bytes to `out`. Returns false for
/// conversions that are not float -> float.
pub fn convert(from: DType, to: DType, src: &[u8], out: &mut Vec<u8>) -> bool {
    if from == to {
        out.extend_from_slice(src);
        return true;
    }
    let mut f = Vec::with_capacity(src.len() / from.size());
    if !decode(from, src, &mut f) {
        return false;
    }
    match to {
        DType::F32 => out.extend(f.iter().flat_map(|v| v.to_le_bytes())),
        DType::F16 => out.extend(f.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes())),
        DType::BF16 => out.extend(f.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())),
        _ => return false,
    }
    true
}

/// Whether the `DType` is one [`convert_into`] reads or writes.
pub fn is_float(d: DType) -> bool {
    matches!(d, DType::F32 | DType::F16 | DType::BF16 | DType::F8E4M3)
}

/// Counts the NaN and ±Inf elements of little-endian `src` (dtype `dtype`); 0 for
/// non-float dtypes. Looks only at exponent bits, so it runs at memory speed.
pub fn count_nonfinite(dtype: DType, src: &[u8]) -> usize {
    match dtype {
        DType::F32 => src
            .chunks_exact(4)
            .map(|c| (u32::from_le_bytes([c[0], c[1], c[2], c[3]]) & 0x7f80_0000 == 0x7f80_0000) as usize)
            .sum(),
        DType::F16 => {
            src.chunks_exact(2).map(|c| (u16::from_le_bytes([c[0], c[1]]) & 0x7c00 == 0x7c00) as usize).sum()
        }
        DType::BF16 => {
            src.chunks_exact(2).map(|c| (u16::from_le_bytes([c[0], c[1]]) & 0x7f80 == 0x7f80) as usize).sum()
        }
        DType::F8E4M3 => src.iter().map(|&b| (b & 0x7f == 0x7f) as usize).sum(),
        _ => 0,
    }
}

/// Elements per block of the generic path (a stack buffer of f32).
const BLOCK: usize = 1024;

/// Converts `src` (dtype `from`) into `dst`, which must hold exactly as many elements of
/// dtype `to`, and returns how many source elements were NaN or ±Inf. `None` for
/// conversions that are not float -> float (or a plain copy) or mismatched lengths.
///
/// bf16 -> f32 (the common export: released weights are bf16, ONNX Runtime's CPU provider
/// wants f32) is a 16-bit shift per element, written so the compiler vectorises it; the
/// non-finite count is fused into the same pass.
pub fn convert_into(from: DType, to: DType, src: &[u8], dst: &mut [u8]) -> Option<usize> {
    if from == to && src.len() == dst.len() {
        dst.copy_from_slice(src);
        return Some(count_nonfinite(from, src));
    }
    if !is_float(from) || !matches!(to, DType::F32 | DType::F16 | DType::BF16) {
        return None;
    }
    let n = src.len() / from.size();
    if src.len() != n * from.size() || dst.len() != n * to.size() {
        return None;
    }
    if (from, to) == (DType::BF16, DType::F32) {
        return Some(bf16_to_f32(src, dst));
    }
    let mut bad = 0usize;
    let mut block = [0f32; BLOCK];
    for (s, d) in src.chunks(BLOCK * from.size()).zip(dst.chunks_mut(BLOCK * to.size())) {
        let m = s.len() / from.size();
        decode_block(from, s, &mut block[..m]);
        bad += block[..m].iter().filter(|v| !v.is_finite()).count();
        encode_block(to, &block[..m], d);
    }
    Some(bad)
}

/// [`convert_into`] with every value multiplied by `scale` in f32 first (an FP8 weight with its
/// per-tensor scale, [`crate::fp8`]): `dst = to(from(src) × scale)`.
pub fn convert_scaled_into(from: DType, to: DType, scale: f32, src: &[u8], dst: &mut [u8]) -> Option<usize> {
    if !is_float(from) || !matches!(to, DType::F32 | DType::F16 | DType::BF16) {
        return None;
    }
    let n = src.len() / from.size();
    if src.len() != n * from.size() || dst.len() != n * to.size() {
        return None;
    }
    let mut bad = 0usize;
    let mut block = [0f32; BLOCK];
    for (s, d) in src.chunks(BLOCK * from.size()).zip(dst.chunks_mut(BLOCK * to.size())) {
        let m = s.len() / from.size();
        decode_block(from, s, &mut block[..m]);
        for v in &mut block[..m] {
            *v *= scale;
        }
        bad += block[..m].iter().filter(|v| !v.is_finite()).count();
        encode_block(to, &block[..m], d);
    }
    Some(bad)
}

fn bf16_to_f32(src: &[u8], dst: &mut [u8]) -> usize {
    let mut bad = 0usize;
    // fixed-width groups give the vectoriser straight-line code
    let mut s8 = src.chunks_exact(16);
    let mut d8 = dst.chunks_exact_mut(32);
    for (s, d) in (&mut s8).zip(&mut d8) {
        for k in 0..8 {
            let h = u16::from_le_bytes([s[2 * k], s[2 * k + 1]]);
            bad += (h & 0x7f80 == 0x7f80) as usize;
            d[4 * k..4 * k + 4].copy_from_slice(&((h as u32) << 16).to_le_bytes());
        }
    }
    for (s, d) in s8.remainder().chunks_exact(2).zip(d8.into_remainder().chunks_exact_mut(4)) {
        let h = u16::from_le_bytes([s[0], s[1]]);
        bad += (h & 0x7f80 == 0x7f80) as usize;
        d.copy_from_slice(&((h as u32) << 16).to_le_bytes());
    }
    bad
}

fn decode_block(from: DType, src: &[u8], out: &mut [f32]) {
    let sz = from.size();
    for (o, c) in out.iter_mut().zip(src.chunks_exact(sz)) {
        *o = match from {
            DType::F32 => f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
            DType::F16 => half::f16::from_le_bytes([c[0], c[1]]).to_f32(),
            DType::BF16 => half::bf16::from_le_bytes([c[0], c[1]]).to_f32(),
            _ => e4m3_to_f32(c[0]),
        };
    }
}

fn encode_block(to: DType, vals: &[f32], out: &mut [u8]) {
    match to {
        DType::F32 => {
            for (v, d) in vals.iter().zip(out.chunks_exact_mut(4)) {
                d.copy_from_slice(&v.to_le_bytes());
            }
        }
        DType::F16 => {
            for (v, d) in vals.iter().zip(out.chunks_exact_mut(2)) {
                d.copy_from_slice(&half::f16::from_f32(*v).to_le_bytes());
            }
        }
        _ => {
            for (v, d) in vals.iter().zip(out.chunks_exact_mut(2)) {
                d.copy_from_slice(&half::bf16::from_f32(*v).to_le_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e4m3_known_values() {
        assert_eq!(e4m3_to_f32(0x00), 0.0);
        assert_eq!(e4m3_to_f32(0x38), 1.0); // exp 7, man 0
        assert_eq!(e4m3_to_f32(0x7e), 448.0); // max finite
        assert_eq!(e4m3_to_f32(0xb8), -1.0);
        assert_eq!(e4m3_to_f32(0x01), 2f32.powi(-9)); // smallest subnormal
        assert!(e4m3_to_f32(0x7f).is_nan());
    }

    #[test]
    fn bf16_roundtrip_through_f32() {
        let src: Vec<u8> =
            [1.0f32, -2.5, 0.1].iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect();
        let mut out = Vec::new();
        assert!(convert(DType::BF16, DType::F32, &src, &mut out));
        let mut back = Vec::new();
        assert!(convert(DType::F32, DType::BF16, &out, &mut back));
        assert_eq!(src, back);
    }

    /// Every conversion of the fast and generic paths against the element-wise reference.
    #[test]
    fn convert_into_matches_convert() {
        let vals = [0.0f32, -0.0, 1.0, -2.5, 0.1, 3.0e38, 1.0e-40, 65504.0, 7.0e-6, -448.0, 1234.5678];
        for from in [DType::F32, DType::F16, DType::BF16] {
            let mut src = Vec::new();
            for _ in 0..300 {
                for v in vals {
                    match from {
                        DType::F32 => src.extend(v.to_le_bytes()),
                        DType::F16 => src.extend(half::f16::from_f32(v).to_le_bytes()),
                        _ => src.extend(half::bf16::from_f32(v).to_le_bytes()),
                    }
                }
            }
            for to in [DType::F32, DType::F16, DType::BF16] {
                let mut want = Vec::new();
                assert!(convert(from, to, &src, &mut want));
                let mut got = vec![0u8; want.len()];
                let bad = convert_into(from, to, &src, &mut got).expect("float conversion");
                assert_eq!(got, want, "{from} -> {to}");
                let inf_in_src = if from == DType::F16 { 300 } else { 0 }; // 3e38 overflows f16
                assert_eq!(bad, inf_in_src, "{from} -> {to}");
            }
        }
    }

    #[test]
    fn nonfinite_counts() {
        let bf: Vec<u8> = [1.0f32, f32::NAN, f32::INFINITY, -f32::INFINITY, 2.0]
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect();
        assert_eq!(count_nonfinite(DType::BF16, &bf), 3);
        let mut out = vec![0u8; 20];
        assert_eq!(convert_into(DType::BF16, DType::F32, &bf, &mut out), Some(3));
        let f: Vec<u8> = [f32::NAN, 1.0, f32::MAX].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(count_nonfinite(DType::F32, &f), 1);
        assert_eq!(count_nonfinite(DType::F8E4M3, &[0x7f, 0xff, 0x7e]), 2);
        assert_eq!(convert_into(DType::I64, DType::F32, &[0; 8], &mut [0; 4]), None);
        assert_eq!(convert_into(DType::BF16, DType::F32, &[0; 4], &mut [0; 4]), None);
    }
}
