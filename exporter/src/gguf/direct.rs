//! GGUF blocks taken as they are: the codes and scales of rows of a tensor whose type is a
//! low-bit ONNX form already ([`super::reexpress::exact_form`]: Q8_0 → INT8 block 32, Q4_0 →
//! INT4 block 32, Q5_0 → INT8 block 32, Q6_K → INT8 block 16, Q3_K → INT4 block 16).
//!
//! A GGUF block runs along a row of the `(out, in)` weight, that is along the input channels,
//! which is the axis the weight-only graph blocks its codes along too: rows map onto the
//! graph's `(in, out)` codes by a transpose, with no re-blocking. Every row's codes are
//! checked against the values `gguf.quants.dequantize` gives (the reader's decoding):
//! `scale · code` must equal each of them bit for bit, else the caller falls back to
//! re-quantising from those values.

use super::reexpress::{exact_codes, exact_form, Form};
use super::source::GgufSource;
use super::{llama, GgmlType, GgufError};

/// Rows of a tensor in its exact low-bit form, in the file's `(rows, K)` order.
#[derive(Clone, Debug, PartialEq)]
pub struct RowCodes {
    pub form: Form,
    /// Elements per row (the input channels).
    pub k: usize,
    /// One code per element, row-major `(rows, K)`.
    pub codes: Vec<i8>,
    /// One scale per block, row-major `(rows, K / block)`.
    pub scales: Vec<f32>,
}

/// The form the weight-only graph gives a GGUF type under `--weights-precision gguf`: the
/// exact form where there is one, else the nearest symmetric form (types of 5 or more bits →
/// INT8 block 32, fewer → INT4 block 32). `None` for float types (they stay float).
pub fn gguf_form(ty: GgmlType) -> Option<Form> {
    if ty.is_float() {
        return None;
    }
    exact_form(ty).or(Some(match ty {
        GgmlType::Q5_1 | GgmlType::Q5K => Form { bits: 8, symmetric: true, block: 32 },
        _ => Form { bits: 4, symmetric: true, block: 32 },
    }))
}

/// The GGUF type behind virtual `offset` of `src`, if it is a quantised one.
pub fn quantised_type(src: &GgufSource, offset: u64) -> Option<GgmlType> {
    src.locate(offset).map(|(t, _, _)| t.ty).filter(|ty| !ty.is_float())
}

/// The codes and scales of `rows` rows starting at virtual `offset` of `src`, when the tensor
/// there is a matrix of a type whose exact form is `form` and every row decodes exactly;
/// `None` otherwise (the caller re-quantises). Reads one row at a time.
pub fn exact_rows(
    src: &GgufSource,
    offset: u64,
    rows: usize,
    form: Form,
) -> Result<Option<RowCodes>, GgufError> {
    let Some((t, e0, heads)) = src.locate(offset) else { return Ok(None) };
    if exact_form(t.ty) != Some(form) || t.shape.len() != 2 {
        return Ok(None);
    }
    let (total, k) = (t.shape[0], t.shape[1]);
    let tb = t.ty.block_size();
    if k == 0 || k % tb != 0 || k % form.block != 0 || e0 % k as u64 != 0 {
        return Ok(None);
    }
    let r0 = (e0 / k as u64) as usize;
    if r0 + rows > total {
        return Ok(None);
    }
    let row_bytes = k / tb * t.ty.type_size();
    let bytes = src.file.bytes(t);
    let mut out = RowCodes { form, k, codes: Vec::with_capacity(rows * k), scales: Vec::new() };
    let mut values = vec![0f32; k];
    for r in r0..r0 + rows {
        let s = heads.map_or(r, |h| llama::unpermute_row(r, total, h));
        src.file.dequantize_into(t, (s * k) as u64, &mut values)?;
        let Some(b) = bytes.get(s * row_bytes..(s + 1) * row_bytes) else { return Ok(None) };
        let Some((codes, scales)) = exact_codes(t.ty, b, &values) else { return Ok(None) };
        let exact = codes.iter().enumerate().all(|(i, &c)| {
            let v = scales[i / form.block] * f32::from(c);
            v.to_bits() == values[i].to_bits() && i8::try_from(c).is_ok()
        });
        if !exact || scales.len() != k / form.block {
            return Ok(None);
        }
        out.codes.extend(codes.iter().map(|&c| c as i8));
        out.scales.extend(scales);
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_follow_the_types() {
        let f = |bits, block| Some(Form { bits, symmetric: true, block });
        assert_eq!(gguf_form(GgmlType::Q8_0), f(8, 32));
        assert_eq!(gguf_form(GgmlType::Q4_0), f(4, 32));
        assert_eq!(gguf_form(GgmlType::Q6K), f(8, 16));
        assert_eq!(gguf_form(GgmlType::Q3K), f(4, 16));
        assert_eq!(gguf_form(GgmlType::Q5K), f(8, 32));
        assert_eq!(gguf_form(GgmlType::Q4K), f(4, 32));
        assert_eq!(gguf_form(GgmlType::Q2K), f(4, 32));
        assert_eq!(gguf_form(GgmlType::F16), None);
    }
}
