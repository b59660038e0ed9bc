//! FP8 weights kept FP8 for TensorRT (`flux2 export --target tensorrt` without
//! `--weights-precision`, from an FP8 safetensors checkpoint, [`crate::fp8`]).
//!
//! A linear whose weight is stored float8_e4m3fn (with one per-tensor scale, or none: scale 1)
//! becomes a FLOAT8E4M3FN `(in, out)` initializer — the file's bytes, transposed — and a
//! per-tensor `DequantizeLinear(codes, scale)` in place of the weight's `Transpose`, feeding the
//! `MatMul` (opset 19+ has FP8 DQ; TensorRT targets are opset 21). The scale is stored in the
//! graph's float type, which strongly typed TensorRT gives the DQ output. Weights of other
//! types, and weights made of pieces with different scales, are converted to float as usual.

use flux2_graphs::onnx::{GraphProto, NodeProto};
use flux2_graphs::{DType, Model};

use super::{code_name, plan, scale_name, Bits, LowbitOptions, Site};
use crate::checkpoint::Checkpoint;
use crate::names::ResolvedWeight;

/// The per-tensor scale of `w` when every piece is FP8 from the checkpoint's files (not a
/// GGUF view) with one and the same scale (1 where the file has none).
pub fn fp8_scale(w: &ResolvedWeight, ckpt: &Checkpoint) -> Option<f32> {
    let first = w.pieces.first()?;
    let all = w
        .pieces
        .iter()
        .all(|p| p.dtype == DType::F8E4M3 && p.scale == first.scale && !ckpt.is_virtual(p.file, p.offset));
    all.then_some(first.scale.unwrap_or(1.0))
}

/// The linears of `model` whose weights are FP8 in `weights` (any linear: the file decides).
pub fn plan_fp8(model: &Model, stem: &str, weights: &[ResolvedWeight], ckpt: &Checkpoint) -> Vec<Site> {
    let all = LowbitOptions::fixed(Bits::Int8, 32, true);
    plan(model, stem, &all)
        .into_iter()
        .filter(|s| weights.iter().any(|w| w.decl.name == s.weight && fp8_scale(w, ckpt).is_some()))
        .collect()
}

/// `(N, K)` FP8 bytes as the graph's `(K, N)`.
pub fn transpose(bytes: &[u8], n: usize, k: usize) -> Vec<u8> {
    let mut out = vec![0u8; n * k];
    for (nn, row) in bytes.chunks_exact(k.max(1)).take(n).enumerate() {
        for (kk, &b) in row.iter().enumerate() {
            out[kk * n + nn] = b;
        }
    }
    out
}

/// Replaces each site's Transpose by a per-tensor `DequantizeLinear` (same output name).
pub fn rewrite(g: &mut GraphProto, sites: &[Site]) {
    for n in g.node.iter_mut() {
        let Some(site) = sites.iter().find(|s| s.node == n.name) else { continue };
        *n = NodeProto {
            input: vec![code_name(&site.weight), scale_name(&site.weight)],
            output: n.output.clone(),
            name: format!("{}.dequantizelinear", site.weight),
            op_type: "DequantizeLinear".into(),
            ..Default::default()
        };
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn transpose_moves_rows_to_columns() {
        let b: Vec<u8> = (0..6).collect(); // (2, 3)
        assert_eq!(super::transpose(&b, 2, 3), vec![0, 3, 1, 4, 2, 5]);
    }
}
