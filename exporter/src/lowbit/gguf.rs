//! Weight-only low-bit linears from GGUF weights, without a dequantise / re-quantise round trip.
//!
//! Where a linear's weight is a quantised GGUF tensor whose type *is* the requested form
//! (Q8_0 with `int8` block 32, Q4_0 with `int4` block 32, Q5_0 with `int8` block 32, Q6_K /
//! Q3_K with block 16), the graph's codes and scales are the file's, transposed from its
//! `(out, in)` rows into the graph's `(in, out)` layout: both block along the input channels,
//! so no block is split or merged, and `DequantizeLinear` reproduces `gguf.quants.dequantize`'s
//! values bit for bit (f32 scales; f16 scales where the type's are f16). Anything else — another
//! type, block size or width, per-channel INT8 for TensorRT, scales the graph's dtype cannot
//! hold, a LoRA merge — goes through the quantiser from the exact f32 values instead.
//!
//! `--weights-precision gguf` ([`LowbitOptions::from_gguf`]) picks each linear's form from its
//! GGUF type ([`gguf_form`]): exact where there is one, else the nearest; float tensors stay float.

use flux2_graphs::{DType, Target};

use super::quant::round_to;
use super::{per_channel, Bits, LowbitOptions, Quantised, Site};
use crate::checkpoint::Checkpoint;
use crate::gguf::direct::{exact_rows, gguf_form, quantised_type};
use crate::gguf::reexpress::Form;
use crate::gguf::GgmlType;
use crate::names::ResolvedWeight;
use crate::Result;

/// The GGUF type of `w` when every piece of it is a quantised GGUF tensor of one type.
pub fn gguf_type(w: &ResolvedWeight, ckpt: &Checkpoint) -> Option<GgmlType> {
    let mut ty = None;
    for p in &w.pieces {
        let src = ckpt.files.get(p.file)?.gguf()?;
        let t = quantised_type(src, p.offset)?;
        if ty.is_some_and(|prev| prev != t) {
            return None;
        }
        ty = Some(t);
    }
    ty
}

/// `sites` with their forms: as planned for fixed options; with [`LowbitOptions::from_gguf`],
/// each the form its GGUF type maps to, and those whose weight is no quantised GGUF tensor
/// dropped (they stay float).
pub fn assign(
    sites: Vec<Site>,
    weights: &[ResolvedWeight],
    ckpt: &Checkpoint,
    opts: &LowbitOptions,
) -> Vec<Site> {
    if !opts.from_gguf {
        return sites;
    }
    sites
        .into_iter()
        .filter_map(|mut s| {
            let w = weights.iter().find(|w| w.decl.name == s.weight)?;
            let form = gguf_form(gguf_type(w, ckpt)?)?;
            s.bits = if form.bits == 4 { Bits::Int4 } else { Bits::Int8 };
            s.block = form.block;
            Some(s)
        })
        .collect()
}

/// The file's own codes and scales for `site`, when every piece of `w` is a GGUF tensor whose
/// exact form is the site's and whose scales `scale_dtype` holds exactly; `None` otherwise.
pub fn direct(
    w: &ResolvedWeight,
    site: &Site,
    ckpt: &Checkpoint,
    target: Target,
    scale_dtype: DType,
) -> Result<Option<Quantised>> {
    if per_channel(target, site.bits) || site.block == 0 || !site.k.is_multiple_of(site.block) {
        return Ok(None);
    }
    let bits = if site.bits == Bits::Int4 { 4 } else { 8 };
    let form = Form { bits, symmetric: true, block: site.block };
    let (mut codes, mut scales) = (Vec::new(), Vec::new());
    for p in &w.pieces {
        let Some(src) = ckpt.files.get(p.file).and_then(|f| f.gguf()) else { return Ok(None) };
        if p.shape.len() != 2 || p.shape[1] != site.k || !ckpt.is_virtual(p.file, p.offset) {
            return Ok(None);
        }
        let Some(rc) = exact_rows(src, p.offset, p.shape[0], form)? else { return Ok(None) };
        codes.extend(rc.codes);
        scales.extend(rc.scales);
    }
    if codes.len() != site.n * site.k || scales.iter().any(|&s| round_to(scale_dtype, s) != s) {
        return Ok(None);
    }
    Ok(Some(to_graph(&codes, &scales, site.n, site.k, site.bits, site.block)))
}

/// `(N, K)` codes and `(N, K / block)` scales as the graph's `(K, N)` packed codes and
/// `(K / block, N)` scales.
pub fn to_graph(codes: &[i8], scales: &[f32], n: usize, k: usize, bits: Bits, block: usize) -> Quantised {
    let blocks = k / block.max(1);
    let mut q =
        Quantised { codes: vec![0u8; bits.bytes_for(k * n)], scales: vec![0f32; blocks * n], k, n, blocks };
    for nn in 0..n {
        for b in 0..blocks {
            q.scales[b * n + nn] = scales[nn * blocks + b];
        }
        for kk in 0..k {
            let (c, i) = (codes[nn * k + kk] as u8, kk * n + nn);
            match bits {
                Bits::Int8 => q.codes[i] = c,
                Bits::Int4 => q.codes[i / 2] |= (c & 0x0f) << (4 * (i % 2)),
            }
        }
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The packed graph codes read back as the file's rows, transposed.
    #[test]
    fn to_graph_transposes_and_packs() {
        let (n, k, block) = (3, 8, 4);
        let codes: Vec<i8> = (0..n * k).map(|i| (i as i8 % 16) - 8).collect();
        let scales: Vec<f32> = (0..n * k / block).map(|i| 0.5 + i as f32).collect();
        for bits in [Bits::Int8, Bits::Int4] {
            let q = to_graph(&codes, &scales, n, k, bits, block);
            let deq = q.dequantise(bits, block);
            for nn in 0..n {
                for kk in 0..k {
                    let want = f32::from(codes[nn * k + kk]) * scales[nn * (k / block) + kk / block];
                    assert_eq!(deq[kk * n + nn], want, "{bits:?} ({nn}, {kk})");
                }
            }
        }
    }
}
