//! Attention and rotary embeddings on both targets: opset-23 `Attention` /
//! `RotaryEmbedding` for ONNX Runtime and the MatMul-Softmax / element-wise decompositions
//! for TensorRT, against naive loops (repeat_kv for GQA, flux2-arch.md §2.5 pair rotations).

use flux2_graphs::ops::RopeStyle;
use flux2_graphs::{shape, DType, Dim, Graph, Model, Shape, Target};
use flux2_runtime::Input;
use ndarray::{ArrayD, IxDyn};
use proptest::prelude::*;

use super::common::{
    check_both, config, f32_in, float_input, float_output, stored, tensor, Approximation, OpProblem,
};

/// Shapes an additive mask may take (all broadcast to the scores [B, Hq, S, T]).
#[derive(Copy, Clone, Debug)]
enum MaskKind {
    /// [S, T]
    Rank2,
    /// [Hq, S, T]
    PerHeadRank3,
    /// [1, 1, S, T]
    Shared,
    /// [B, 1, S, T]
    PerBatch,
    /// [1, Hq, S, T]
    PerHead,
    /// [B, Hq, S, T]
    PerBatchHead,
}

/// `softmax(q kᵀ · scale + mask) v`, q [B,Hq,S,Dh], k [B,Hkv,T,Dh], v [B,Hkv,T,Dv].
#[derive(Debug)]
struct AttentionProblem {
    q: ArrayD<f32>,
    k: ArrayD<f32>,
    v: ArrayD<f32>,
    mask: Option<(MaskKind, ArrayD<f32>)>,
    scale: f32,
    /// Graph float dtype: f32 or f16 (inputs cast in the graph, output cast back).
    dtype: DType,
}

impl Arbitrary for AttentionProblem {
    type Parameters = ();
    type Strategy = BoxedStrategy<Self>;
    fn arbitrary_with(_: ()) -> Self::Strategy {
        let kind = prop_oneof![
            Just(None),
            Just(Some(MaskKind::Rank2)),
            Just(Some(MaskKind::PerHeadRank3)),
            Just(Some(MaskKind::Shared)),
            Just(Some(MaskKind::PerBatch)),
            Just(Some(MaskKind::PerHead)),
            Just(Some(MaskKind::PerBatchHead)),
        ];
        let dims = (1usize..=2, 1usize..=2, 1usize..=3, 1usize..=4, 1usize..=5, 1usize..=6, 1usize..=6);
        let dtype = prop_oneof![3 => Just(DType::F32), 1 => Just(DType::F16)];
        (dims, kind, prop_oneof![Just(None), (0.1f32..1.5).prop_map(Some)], dtype)
            .prop_flat_map(|((b, hkv, rep, s, t, dh, dv), kind, scale, dtype)| {
                let hq = hkv * rep;
                let mask = kind.map(|k| {
                    let shape = match k {
                        MaskKind::Rank2 => vec![s, t],
                        MaskKind::PerHeadRank3 => vec![hq, s, t],
                        MaskKind::Shared => vec![1, 1, s, t],
                        MaskKind::PerBatch => vec![b, 1, s, t],
                        MaskKind::PerHead => vec![1, hq, s, t],
                        MaskKind::PerBatchHead => vec![b, hq, s, t],
                    };
                    // -30 masks a key (e^-30) without the f32 absorption a -1e4 would bring to the check
                    let v = prop_oneof![4 => -4.0f32..0.0, 1 => Just(-30.0f32)];
                    let n: usize = shape.iter().product();
                    proptest::collection::vec(v, n)
                        .prop_map(move |v| (k, ArrayD::from_shape_vec(IxDyn(&shape), v).expect("len")))
                });
                let mask = match mask {
                    Some(m) => m.prop_map(Some).boxed(),
                    None => Just(None).boxed(),
                };
                let scale = scale.unwrap_or(1.0 / (dh as f32).sqrt());
                (
                    tensor(vec![b, hq, s, dh]),
                    tensor(vec![b, hkv, t, dh]),
                    tensor(vec![b, hkv, t, dv]),
                    mask,
                    Just((scale, dtype)),
                )
            })
            .prop_map(|(q, k, v, mask, (scale, dtype))| AttentionProblem { q, k, v, mask, scale, dtype })
            .boxed()
    }
}

impl OpProblem for AttentionProblem {
    fn graph(&self, target: Target) -> anyhow::Result<Model> {
        let g = Graph::new(target, self.dtype);
        let (hq, hkv) = (self.q.shape()[1], self.k.shape()[1]);
        let (dh, dv) = (self.q.shape()[3], self.v.shape()[3]);
        let q = float_input(&g, "q", shape!["B", hq, "S", dh])?;
        let k = float_input(&g, "k", shape!["B", hkv, "T", dh])?;
        let v = float_input(&g, "v", shape!["B", hkv, "T", dv])?;
        let mask = match &self.mask {
            Some((_, m)) => {
                // size-1 axes fixed, the others named like the scores axes they match
                let names = ["B", "Hq", "S", "T"];
                let off = 4 - m.ndim();
                let shape: Shape = m
                    .shape()
                    .iter()
                    .enumerate()
                    .map(|(i, &d)| match (d, off + i) {
                        (1, _) => Dim::Fixed(1),
                        (_, 1) => Dim::from(hq),
                        (_, a) => Dim::sym(names[a]),
                    })
                    .collect();
                Some(float_input(&g, "mask", shape)?)
            }
            None => None,
        };
        float_output(&g, g.attention(q, k, v, mask, self.scale)?)?;
        Ok(g.finish("attention")?)
    }
    fn inputs(&self) -> Vec<(&'static str, Input)> {
        let mut ins = vec![("q", f32_in(&self.q)), ("k", f32_in(&self.k)), ("v", f32_in(&self.v))];
        ins.extend(self.mask.as_ref().map(|(_, m)| ("mask", f32_in(m))));
        ins
    }
    fn reference(&self) -> Vec<ArrayD<f32>> {
        let (b, hq, s, dh) = (self.q.shape()[0], self.q.shape()[1], self.q.shape()[2], self.q.shape()[3]);
        let (hkv, t, dv) = (self.k.shape()[1], self.k.shape()[2], self.v.shape()[3]);
        let rep = hq / hkv;
        let [q, k, v] = [&self.q, &self.k, &self.v].map(|a| stored(a, self.dtype));
        let mask = self.mask.as_ref().map(|(_, m)| stored(m, self.dtype));
        let mask_at = |n: usize, h: usize, i: usize, j: usize| -> f64 {
            let Some(m) = &mask else { return 0.0 };
            let full = [n, h, i, j];
            let off = 4 - m.ndim();
            let idx: Vec<usize> =
                (0..m.ndim()).map(|a| if m.shape()[a] == 1 { 0 } else { full[off + a] }).collect();
            m[IxDyn(&idx)] as f64
        };
        let mut y = ArrayD::zeros(IxDyn(&[b, hq, s, dv]));
        for n in 0..b {
            for h in 0..hq {
                let kh = h / rep; // repeat_kv: query head h reads kv head h / rep
                for i in 0..s {
                    let scores: Vec<f64> = (0..t)
                        .map(|j| {
                            let dot: f64 =
                                (0..dh).map(|d| q[[n, h, i, d]] as f64 * k[[n, kh, j, d]] as f64).sum();
                            dot * self.scale as f64 + mask_at(n, h, i, j)
                        })
                        .collect();
                    let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|x| (x - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for d in 0..dv {
                        let o: f64 = (0..t).map(|j| e[j] / z * v[[n, kh, j, d]] as f64).sum();
                        y[[n, h, i, d]] = o as f32;
                    }
                }
            }
        }
        vec![y]
    }
    fn approximation(&self) -> Approximation {
        Approximation::for_dtype(self.dtype, Approximation::Approximate)
    }
}

/// `rope(x, cos θ, sin θ, style)` with x [B,H,S,Dh] and tables [S, Dh/2].
#[derive(Debug)]
struct RopeProblem {
    style: RopeStyle,
    x: ArrayD<f32>,
    theta: ArrayD<f32>,
    /// Graph float dtype: f32 or f16 (x cast in the graph; the f32 tables cast by `rope`).
    dtype: DType,
}

impl Arbitrary for RopeProblem {
    type Parameters = ();
    type Strategy = BoxedStrategy<Self>;
    fn arbitrary_with(_: ()) -> Self::Strategy {
        let style = prop_oneof![Just(RopeStyle::Interleaved), Just(RopeStyle::Halves)];
        let dtype = prop_oneof![3 => Just(DType::F32), 1 => Just(DType::F16)];
        (style, 1usize..=2, 1usize..=3, 1usize..=5, 1usize..=4, dtype)
            .prop_flat_map(|(style, b, h, s, half, dtype)| {
                (Just((style, dtype)), tensor(vec![b, h, s, 2 * half]), tensor(vec![s, half]))
            })
            .prop_map(|((style, dtype), x, theta)| RopeProblem {
                style,
                x,
                theta: theta.mapv(|t| 1.6 * t),
                dtype,
            })
            .boxed()
    }
}

impl OpProblem for RopeProblem {
    fn graph(&self, target: Target) -> anyhow::Result<Model> {
        let g = Graph::new(target, self.dtype);
        let (h, dh) = (self.x.shape()[1], self.x.shape()[3]);
        let x = float_input(&g, "x", shape!["B", h, "S", dh])?;
        let cos = g.input("cos", DType::F32, shape!["S", dh / 2])?;
        let sin = g.input("sin", DType::F32, shape!["S", dh / 2])?;
        float_output(&g, g.rope(x, cos, sin, self.style)?)?;
        Ok(g.finish("rope")?)
    }
    fn inputs(&self) -> Vec<(&'static str, Input)> {
        let (cos, sin) = (self.theta.mapv(f32::cos), self.theta.mapv(f32::sin));
        vec![("x", f32_in(&self.x)), ("cos", Input::F32(cos)), ("sin", Input::F32(sin))]
    }
    fn reference(&self) -> Vec<ArrayD<f32>> {
        let s = self.x.shape();
        let half = s[3] / 2;
        let xs = stored(&self.x, self.dtype);
        let [cos, sin] = [f32::cos, f32::sin].map(|f| stored(&self.theta.mapv(f), self.dtype));
        let mut y = ArrayD::zeros(IxDyn(s));
        for n in 0..s[0] {
            for h in 0..s[1] {
                for p in 0..s[2] {
                    let x = |d: usize| xs[[n, h, p, d]] as f64;
                    for m in 0..half {
                        let (c, sn) = (cos[[p, m]] as f64, sin[[p, m]] as f64);
                        // the pair (a, b) rotated by θ: (a cos − b sin, a sin + b cos)
                        let (ia, ib) = match self.style {
                            RopeStyle::Interleaved => (2 * m, 2 * m + 1),
                            RopeStyle::Halves => (m, m + half),
                        };
                        y[[n, h, p, ia]] = (x(ia) * c - x(ib) * sn) as f32;
                        y[[n, h, p, ib]] = (x(ia) * sn + x(ib) * c) as f32;
                    }
                }
            }
        }
        vec![y]
    }
    fn approximation(&self) -> Approximation {
        Approximation::for_dtype(self.dtype, Approximation::Close)
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn attention_gqa_masked(p in any::<AttentionProblem>()) {
        check_both(&p)?;
    }

    #[test]
    fn rope_interleaved_and_halves(p in any::<RopeProblem>()) {
        check_both(&p)?;
    }
}
