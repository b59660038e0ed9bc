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
}
