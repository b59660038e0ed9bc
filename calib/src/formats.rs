//! The two quantised number formats and their exact ONNX `QuantizeLinear` semantics.
//!
//! * **INT8** (symmetric, zero point 0): `q = saturate(round_half_even(x / s))` in [−128, 127];
//!   scale `s = amax / 127` so the calibrated range maps onto ±127.
//! * **FP8 E4M3FN** (`FLOAT8E4M3FN`, ONNX opset ≥ 19): 1 sign, 4 exponent (bias 7), 3 mantissa
//!   bits, no infinities, NaN = `S.1111.111`, largest finite 448, smallest subnormal 2⁻⁹. Casting
//!   rounds to nearest, ties to even; with `saturate=1` (the ONNX default) anything beyond ±448,
//!   infinities included, becomes ±448. Scale `s = amax / 448`.
//!
//! Reference: ONNX operator spec `QuantizeLinear` (opset 21) and "Float stored in 8 bits"
//! (<https://onnx.ai/onnx/technical/float8.html>). The unit tests check every code against a table
//! produced by `onnx.reference.ReferenceEvaluator`.

use serde::{Deserialize, Serialize};

/// A quantised storage format.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Signed 8-bit integers, symmetric (zero point 0).
    Int8,
    /// FLOAT8E4M3FN with saturation.
    Fp8,
}

impl Format {
    /// Largest magnitude the format represents at scale 1: 127 or 448.
    pub fn qmax(self) -> f32 {
        match self {
            Format::Int8 => 127.0,
            Format::Fp8 => 448.0,
        }
    }

    /// The ONNX `TensorProto.DataType` of the quantised tensor (INT8 = 3, FLOAT8E4M3FN = 17).
    pub fn onnx_type(self) -> i32 {
        match self {
            Format::Int8 => 3,
            Format::Fp8 => 17,
        }
    }

    /// `int8` or `fp8`, as on the command line and in the manifest.
    pub fn name(self) -> &'static str {
        match self {
            Format::Int8 => "int8",
            Format::Fp8 => "fp8",
        }
    }

    /// The scale that maps `amax` onto the format's largest value (1 when `amax` is 0 or not finite).
    pub fn scale_for(self, amax: f32) -> f32 {
        let s = amax / self.qmax();
        if s.is_finite() && s > 0.0 {
            s
        } else {
            1.0
        }
    }

    /// The stored byte of `x / scale`, exactly as ONNX `QuantizeLinear` computes it.
    pub fn encode(self, x: f32, scale: f32) -> u8 {
        match self {
            Format::Int8 => int8_quantize(x, scale) as u8,
            Format::Fp8 => f32_to_e4m3fn(x / scale),
        }
    }

    /// The value of a stored byte at `scale` (`DequantizeLinear`).
    pub fn decode(self, q: u8, scale: f32) -> f32 {
        match self {
            Format::Int8 => q as i8 as f32 * scale,
            Format::Fp8 => e4m3fn_to_f32(q) * scale,
        }
    }

    /// Quantise then dequantise: the value the Q/DQ pair passes on.
    pub fn fake_quant(self, x: f32, scale: f32) -> f32 {
        self.decode(self.encode(x, scale), scale)
    }
}

/// `saturate(round_half_even(x / scale))` in [−128, 127]; NaN maps to 0.
///
/// ```
/// use flux2_calib::formats::int8_quantize;
/// assert_eq!(int8_quantize(2.5, 1.0), 2); // ties to even
/// assert_eq!(int8_quantize(3.5, 1.0), 4);
/// assert_eq!(int8_quantize(-1000.0, 1.0), -128);
/// ```
pub fn int8_quantize(x: f32, scale: f32) -> i8 {
    let q = (x / scale).round_ties_even();
    if q.is_nan() {
        0
    } else {
        q.clamp(-128.0, 127.0) as i8
    }
}

/// float32 → FLOAT8E4M3FN, round to nearest even, saturating to ±448 (NaN stays NaN).
///
/// ```
/// use flux2_calib::formats::{e4m3fn_to_f32, f32_to_e4m3fn};
/// assert_eq!(f32_to_e4m3fn(1.0), 0x38);
/// assert_eq!(f32_to_e4m3fn(1e9), 0x7e); // saturates at 448
/// assert_eq!(e4m3fn_to_f32(0x7e), 448.0);
/// ```
pub fn f32_to_e4m3fn(x: f32) -> u8 {
    let sign = ((x.to_bits() >> 24) & 0x80) as u8;
    if x.is_nan() {
        return sign | 0x7f;
    }
    let a = x.abs();
    if a < 2f32.powi(-6) {
        // subnormal range: multiples of 2⁻⁹; ×512 is exact, so this rounds once
        let k = (a * 512.0).round_ties_even() as u8; // 0..=8; 8 is the smallest normal's code
        return sign | k;
    }
    if a > 448.0 {
        return sign | 0x7e;
    }
    let bits = a.to_bits();
    let mut exp = ((bits >> 23) & 0xff) as i32 - 127; // -6..=8
    let mant = bits & 0x7f_ffff;
    let (mut q, rem, half) = (mant >> 20, mant & 0xf_ffff, 0x8_0000);
    if rem > half || (rem == half && q & 1 == 1) {
        q += 1;
    }
    if q == 8 {
        q = 0;
        exp += 1;
    }
    if exp > 8 || (exp == 8 && q == 7) {
        return sign | 0x7e;
    }
    sign | (((exp + 7) as u8) << 3) | q as u8
}

/// FLOAT8E4M3FN → float32 (exact).
pub fn e4m3fn_to_f32(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let (e, m) = ((b >> 3) & 0x0f, b & 0x07);
    if e == 0x0f && m == 0x07 {
        return f32::NAN;
    }
    let mag =
        if e == 0 { m as f32 * 2f32.powi(-9) } else { (1.0 + m as f32 / 8.0) * 2f32.powi(e as i32 - 7) };
    sign * mag
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (float32 bits, FLOAT8E4M3FN code) from the ONNX reference implementation
    /// (`onnx==1.23.2`, `ReferenceEvaluator` on `QuantizeLinear` opset 21, scale 1, zero point
    /// FLOAT8E4M3FN 0): ties, subnormals, f32 subnormals, saturation, infinities.
    const ONNX_REFERENCE: &[(u32, u8)] = &[
        (0x00000000, 0x00), // 0.0
        (0x80000000, 0x80), // -0.0
        (0x3f800000, 0x38), // 1.0
        (0xbf800000, 0xb8), // -1.0
        (0x43e00000, 0x7e), // 448.0
        (0xc3e00000, 0xfe), // -448.0
        (0x43e08000, 0x7e), // 449.0
        (0x43e80000, 0x7e), // 464.0
        (0x43e88000, 0x7e), // 465.0
        (0x43f00000, 0x7e), // 480.0
        (0x49742400, 0x7e), // 1e6
        (0xc9742400, 0xfe), // -1e6
        (0x7f800000, 0x7e), // inf
        (0xff800000, 0xfe), // -inf
        (0x3c800000, 0x08), // 2^-6
        (0x3c000000, 0x04), // 2^-7
        (0x3b000000, 0x01), // 2^-9
        (0x3a800000, 0x00), // 2^-10: tie, to even (0)
        (0x3a800347, 0x01), // just above 2^-10
        (0x3ac00000, 0x01), // 3·2^-11
        (0x3b200000, 0x01), // 5·2^-11: tie, to even (1)
        (0x3f880000, 0x38), // 1.0625: tie, to even (1.0)
        (0x3f980000, 0x3a), // 1.1875: tie, to even (1.25)
        (0x3f87fcb9, 0x38), // 1.0624
        (0x3f880347, 0x39), // 1.0626
        (0x41880000, 0x58), // 17
        (0x41900000, 0x59), // 18
        (0x41980000, 0x5a), // 19: tie, to even (20)
        (0x41a00000, 0x5a), // 20
        (0x3e99999a, 0x2a), // 0.3
        (0xbe99999a, 0xaa), // -0.3
        (0x40490fd0, 0x45), // 3.14159
        (0x43700000, 0x77), // 240
        (0x43680000, 0x76), // 232
        (0x43780000, 0x78), // 248: tie, to even (256)
        (0x3c880000, 0x08), // 0.016601562
        (0x3c700000, 0x08), // 0.0146484375: subnormal rounding up into the first normal
        (0x00000002, 0x00), // 3e-45 (f32 subnormal)
        (0x80000002, 0x80), // -3e-45
        (0x000116c2, 0x00), // 1e-40
        (0x3b400000, 0x02), // 1.5·2^-9: tie, to even (2)
        (0x3ba00000, 0x02), // 2.5·2^-9: tie, to even (2)
        (0x43d00000, 0x7d), // 416
        (0x43d80000, 0x7e), // 432: tie between 416 and 448, to even (448)
        (0x43dc0000, 0x7e), // 440
        (0x43dff333, 0x7e), // 447.9
        (0x42c80000, 0x6c), // 100
        (0xc0f00000, 0xcf), // -7.5
        (0x41440000, 0x54), // 12.25
        (0x3dcccccd, 0x1d), // 0.1
        (0x3e4ccccd, 0x25), // 0.2
        (0x3ba3d70a, 0x03), // 0.005
        (0x427c0000, 0x68), // 63
        (0x42740000, 0x67), // 61
        (0x42780000, 0x68), // 62: tie, to even (64)
    ];

    #[test]
    fn fp8_encoding_matches_onnx_reference() {
        for &(bits, code) in ONNX_REFERENCE {
            let x = f32::from_bits(bits);
            assert_eq!(f32_to_e4m3fn(x), code, "x = {x:e} (0x{bits:08x})");
        }
    }

    #[test]
    fn fp8_every_code_round_trips() {
        for b in 0..=255u8 {
            let x = e4m3fn_to_f32(b);
            if b & 0x7f == 0x7f {
                assert!(x.is_nan(), "code {b:#04x} should be NaN");
                assert_eq!(f32_to_e4m3fn(x) & 0x7f, 0x7f);
            } else {
                assert_eq!(f32_to_e4m3fn(x), b, "code {b:#04x} = {x}");
            }
        }
        assert_eq!(e4m3fn_to_f32(0x7e), 448.0);
        assert_eq!(e4m3fn_to_f32(0x01), 2f32.powi(-9));
        assert_eq!(e4m3fn_to_f32(0x08), 2f32.powi(-6));
    }

    #[test]
    fn fp8_rounding_is_nearest() {
        // every value between two neighbouring codes goes to the nearer one
        let finite: Vec<f32> = (0..0x7fu8).map(e4m3fn_to_f32).collect();
        for w in finite.windows(2) {
            let (lo, hi) = (w[0], w[1]);
            for k in 1..16 {
                let x = lo + (hi - lo) * k as f32 / 16.0;
                let got = e4m3fn_to_f32(f32_to_e4m3fn(x));
                let want = if (x - lo) < (hi - x) { lo } else { hi };
                if (x - lo) != (hi - x) {
                    assert_eq!(got, want, "x = {x} between {lo} and {hi}");
                }
            }
        }
    }

    #[test]
    fn int8_round_half_even_and_saturation() {
        assert_eq!(int8_quantize(0.5, 1.0), 0);
        assert_eq!(int8_quantize(1.5, 1.0), 2);
        assert_eq!(int8_quantize(-2.5, 1.0), -2);
        assert_eq!(int8_quantize(127.4, 1.0), 127);
        assert_eq!(int8_quantize(200.0, 1.0), 127);
        assert_eq!(int8_quantize(-200.0, 1.0), -128);
        assert_eq!(int8_quantize(f32::NAN, 1.0), 0);
        assert_eq!(int8_quantize(0.75, 0.5), 2); // 1.5 -> 2
    }

    #[test]
    fn fake_quant_error_is_bounded() {
        // INT8: |x − q(x)| ≤ s/2 inside the range; FP8: relative error ≤ 2⁻⁴ for normals.
        let s = Format::Int8.scale_for(3.0);
        for i in -3000..=3000 {
            let x = i as f32 * 1e-3;
            assert!((Format::Int8.fake_quant(x, s) - x).abs() <= s / 2.0 + 1e-7, "{x}");
        }
        let s = Format::Fp8.scale_for(3.0);
        for i in 1..=3000 {
            let x = i as f32 * 1e-3;
            let y = Format::Fp8.fake_quant(x, s);
            if x / s >= 2f32.powi(-6) {
                assert!(((y - x) / x).abs() <= 1.0 / 16.0 + 1e-6, "{x} -> {y}");
            }
        }
    }
}
