//! Re-expressing GGUF blocks in the low-bit forms ONNX carries (`DequantizeLinear` with
//! `block_size` over INT8/UINT8/INT4/UINT4 codes, one scale and optionally one integer zero
//! point per block): `value = scale * (code - zero_point)`.
//!
//! Some GGUF types are such a form already, code for code: Q8_0 is INT8 symmetric with block
//! 32 and an f16 scale, Q4_0 (code − 8) and Q5_0 (code − 16) are INT4 and INT8 symmetric with
//! block 32, Q6_K (code − 32) is INT8 symmetric with block 16 and Q3_K INT4 symmetric with
//! block 16, with f32 scales `d · sc` (the product the decoder forms). Those map with no
//! added error. The others carry a per-block minimum (`d · q − m`), which an integer zero
//! point holds only approximately: they are re-quantised (round to nearest) from their exact
//! f32 values, and [`Reexpressed::added_rms`] says what that costs.

use super::types::GgmlType;
use super::{GgufError, GgufFile, GgufTensor};

/// A target form: bits (4 or 8), symmetric or with zero points, block size.
#[derive(Copy, Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Form {
    pub bits: u8,
    pub symmetric: bool,
    pub block: usize,
}

impl Form {
    pub fn name(&self) -> String {
        format!("{}{} block {}", if self.symmetric { "INT" } else { "UINT" }, self.bits, self.block)
    }
    fn qmax(&self) -> i32 {
        if self.symmetric {
            (1 << (self.bits - 1)) - 1
        } else {
            (1 << self.bits) - 1
        }
    }
}

/// A tensor in a low-bit form, row-major, blocks along the rows (the last axis).
#[derive(Clone, Debug)]
pub struct Reexpressed {
    pub form: Form,
    /// One code per element: signed for symmetric forms, 0..=2^bits−1 otherwise.
    pub codes: Vec<i16>,
    /// One scale per block.
    pub scales: Vec<f32>,
    /// Whether every scale is an f16 value (so an f16 scale tensor loses nothing).
    pub scales_f16: bool,
    /// One zero point per block (asymmetric forms).
    pub zero_points: Option<Vec<u8>>,
    /// The codes are the file's own, with no error.
    pub exact: bool,
    /// RMS of (re-expressed − exact GGUF value) over the tensor.
    pub added_rms: f64,
    /// RMS of the exact values (for a relative figure).
    pub rms: f64,
}

impl Reexpressed {
    /// Value of element `i`.
    pub fn value(&self, i: usize) -> f32 {
        let b = i / self.form.block;
        let z = self.zero_points.as_ref().map_or(0, |z| i16::from(z[b]));
        self.scales[b] * f32::from(self.codes[i] - z)
    }

    /// The added error in dB below the signal (infinite when exact).
    pub fn snr_db(&self) -> f64 {
        if self.added_rms == 0.0 {
            f64::INFINITY
        } else {
            20.0 * (self.rms / self.added_rms).log10()
        }
    }
}

/// The form a type maps to with no error, if there is one.
pub fn exact_form(ty: GgmlType) -> Option<Form> {
    let f = |bits, block| Some(Form { bits, symmetric: true, block });
    match ty {
        GgmlType::Q8_0 | GgmlType::Q5_0 => f(8, 32),
        GgmlType::Q4_0 => f(4, 32),
        GgmlType::Q6K => f(8, 16),
        GgmlType::Q3K => f(4, 16),
        _ => None,
    }
}

/// The file's own codes and scales of a type with an [`exact_form`].
pub(crate) fn exact_codes(ty: GgmlType, bytes: &[u8], values: &[f32]) -> Option<(Vec<i16>, Vec<f32>)> {
    let ts = ty.type_size();
    let h = |b: &[u8], at: usize| half::f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32();
    let mut scales = Vec::new();
    for b in bytes.chunks_exact(ts) {
        match ty {
            GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q5_0 => scales.push(h(b, 0)),
            GgmlType::Q6K => scales.extend(b[192..208].iter().map(|&s| h(b, 208) * f32::from(s as i8))),
            GgmlType::Q3K => {
                let d = h(b, 108);
                let s = &b[96..108];
                scales.extend((0..16).map(|i| {
                    let low = if i < 8 { s[i] & 0x0F } else { s[i - 8] >> 4 };
                    let high = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
                    d * f32::from((low | (high << 4)) as i8 - 32)
                }));
            }
            _ => return None,
        }
    }
    let block = values.len() / scales.len().max(1);
    // codes = value / scale exactly (the decoder formed value = scale * code in one rounding,
    // and |code| ≤ 32 makes the division exact); a zero scale gives code 0
    let codes = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let s = scales[i / block];
            if s == 0.0 {
                0
            } else {
                (v / s).round() as i16
            }
        })
        .collect();
    Some((codes, scales))
}

/// Round-to-nearest quantisation of `values` (rows of `row` elements) into `form`.
pub fn quantize(values: &[f32], form: Form) -> Reexpressed {
    let qmax = form.qmax();
    let mut codes = Vec::with_capacity(values.len());
    let mut scales = Vec::with_capacity(values.len() / form.block.max(1));
    let mut zps = Vec::new();
    for blk in values.chunks(form.block) {
        let (lo, hi) = blk.iter().fold((0f32, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        if form.symmetric {
            let s = lo.abs().max(hi) / qmax as f32;
            scales.push(s);
            codes.extend(blk.iter().map(|&v| {
                if s == 0.0 {
                    0
                } else {
                    (v / s).round().clamp(-(qmax as f32) - 1.0, qmax as f32) as i16
                }
            }));
        } else {
            let s = (hi - lo) / qmax as f32;
            let z = if s == 0.0 { 0.0 } else { (-lo / s).round().clamp(0.0, qmax as f32) };
            scales.push(s);
            zps.push(z as u8);
            codes.extend(blk.iter().map(|&v| {
                if s == 0.0 {
                    z as i16
                } else {
                    ((v / s).round() + z).clamp(0.0, qmax as f32) as i16
                }
            }));
        }
    }
    let scales_f16 = scales.iter().all(|&s| half::f16::from_f32(s).to_f32() == s);
    let mut r = Reexpressed {
        form,
        codes,
        scales,
        scales_f16,
        zero_points: (!form.symmetric).then_some(zps),
        exact: false,
        added_rms: 0.0,
        rms: 0.0,
    };
    measure(&mut r, values);
    r
}

fn measure(r: &mut Reexpressed, values: &[f32]) {
    let (mut e2, mut v2) = (0f64, 0f64);
    for (i, &v) in values.iter().enumerate() {
        let d = f64::from(r.value(i)) - f64::from(v);
        e2 += d * d;
        v2 += f64::from(v) * f64::from(v);
    }
    let n = values.len().max(1) as f64;
    r.added_rms = (e2 / n).sqrt();
    r.rms = (v2 / n).sqrt();
}

/// `t` re-expressed in `form`: the file's own codes when `form` is the type's exact form,
/// else round-to-nearest from the exact values. Rows must be whole blocks of `form.block`.
pub fn reexpress(file: &GgufFile, t: &GgufTensor, form: Form) -> Result<Reexpressed, GgufError> {
    let row = t.shape.last().copied().unwrap_or(1);
    if form.block == 0 || row % form.block != 0 || !(form.bits == 4 || form.bits == 8) {
        return Err(GgufError::Tensor {
            path: file.path.clone(),
            tensor: t.name.clone(),
            msg: format!("rows of {row} cannot be re-expressed as {}", form.name()),
        });
    }
    let values = file.dequantize(t)?;
    if exact_form(t.ty) == Some(form) {
        if let Some((codes, scales)) = exact_codes(t.ty, file.bytes(t), &values) {
            let scales_f16 = matches!(t.ty, GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q5_0);
            let mut r = Reexpressed {
                form,
                codes,
                scales,
                scales_f16,
                zero_points: None,
                exact: true,
                added_rms: 0.0,
                rms: 0.0,
            };
            measure(&mut r, &values);
            r.exact = r.added_rms == 0.0;
            return Ok(r);
        }
    }
    Ok(quantize(&values, form))
}
