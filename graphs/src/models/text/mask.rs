//! The decoder's attention mask, built in the graph from `attention_mask` [B, L].
//!
//! transformers v5.23.0 (`masking_utils.sdpa_mask` + `causal_mask_function` +
//! `padding_mask_function`, and `sliding_window_overlay` for windowed layers) gives SDPA the
//! boolean mask `visible[b, q, k] = k <= q  AND  attention_mask[b, k] != 0  (AND k > q - window)`,
//! with `position_ids = arange(L)` whatever the padding. A query row with no visible key (every
//! left-pad row) comes out of torch SDPA as exactly 0, where an ONNX softmax over an all-masked
//! row gives NaN or a uniform average. So rows with no visible key are opened to every key (no
//! NaN, whatever the dtype) and their attention output is multiplied by `keep = 0` afterwards;
//! masked entries use the dtype's most negative finite value, as transformers' float masks do.

use crate::{DType, Dim, Graph, Result, T};

/// The additive mask and the row-keep factor of one mask kind (full or sliding window).
pub struct Mask {
    /// 0 where attention is allowed, the most negative finite value elsewhere: [B, 1, L, L].
    pub additive: T,
    /// 1 for query rows with at least one visible key, else 0: [B, 1, L, 1].
    pub keep: T,
}

impl Mask {
    /// `visible = causal AND key_is_real (AND inside the window)`, as additive mask + row keep.
    pub fn new(g: &Graph, attention_mask: T, window: Option<usize>) -> Result<Mask> {
        let _s = g.scope(if window.is_some() { "sliding_mask" } else { "causal_mask" });
        let idx = arange(g, attention_mask)?; // [L]
        let q = g.unsqueeze(idx, &[1])?; // [L, 1]
        let k = g.unsqueeze(idx, &[0])?; // [1, L]
        let mut allowed = g.not(g.greater(k, q)?); // k <= q: [L, L]
        if let Some(w) = window {
            let k_plus_w = g.add(k, g.const_i64(&[], &[w as i64]))?;
            allowed = g.and(allowed, g.greater(k_plus_w, q)?)?; // k > q - w
        }
        let real = g.not(g.equal(attention_mask, g.const_i64(&[], &[0]))?); // [B, L]
        let real = g.unsqueeze(real, &[1, 2])?; // [B, 1, 1, L]
        let visible = g.and(allowed, real)?; // [B, 1, L, L]
        let frac = g.reduce_mean(g.cast(visible, DType::F32), &[-1], true)?; // [B, 1, L, 1]
        let any = g.greater(frac, g.const_float(DType::F32, &[], &[0.0]))?;
        let open = g.or(visible, g.not(any))?;
        let additive = g.where_(open, g.scalar(0.0), g.scalar(most_negative(g.dtype)))?;
        Ok(Mask { additive, keep: g.cast(any, g.dtype) })
    }
}

/// `arange(L)` (int64) for the sequence axis of a [B, L] tensor.
pub fn arange(g: &Graph, like: T) -> Result<T> {
    let s = g.shape_of(like);
    let len = s.get(1).cloned().unwrap_or(Dim::sym("L"));
    let n = g.gather(g.shape(like), g.const_i64(&[], &[1]), 0)?; // scalar L
    let (zero, one) = (g.const_i64(&[], &[0]), g.const_i64(&[], &[1]));
    Ok(g.node1("Range", &[zero, n, one], vec![], DType::I64, vec![len]))
}

/// The most negative finite value of a float dtype (torch `finfo(dtype).min`).
fn most_negative(dtype: DType) -> f32 {
    match dtype {
        DType::F16 => half::f16::MIN.to_f32(),
        DType::BF16 => half::bf16::MIN.to_f32(),
        _ => f32::MIN,
    }
}
