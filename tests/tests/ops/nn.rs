//! Dense layers: batched broadcasting matmul, linear over `(out, in)` weights with and
//! without bias, and 2-D convolution (stride 1 and 2, zero padding).

use flux2_graphs::{shape, DType, Dim, Graph, Model, Target};
use flux2_runtime::Input;
use ndarray::{ArrayD, Dimension, IxDyn};
use proptest::prelude::*;

use super::common::{check, config, dims, f32_in, inline, tensor, Approximation, OpProblem};
use super::elementwise::{broadcastable, declare};

/// `a @ b` with a [.., M, K], b [.., K, N] and numpy-broadcast batch axes.
#[derive(Debug)]
struct MatMulProblem {
    a: ArrayD<f32>,
    b: ArrayD<f32>,
}

impl Arbitrary for MatMulProblem {
    type Parameters = ();
    type Strategy = BoxedStrategy<Self>;
    fn arbitrary_with(_: ()) -> Self::Strategy {
        (dims(0usize..=2, 3), 1usize..=4, 1usize..=6, 1usize..=4)
            .prop_flat_map(|(batch, m, k, n)| {
                (broadcastable(batch.clone()), broadcastable(batch), Just((m, k, n)))
            })
            .prop_flat_map(|(ba, bb, (m, k, n))| {
                let sa: Vec<usize> = ba.iter().copied().chain([m, k]).collect();
                let sb: Vec<usize> = bb.iter().copied().chain([k, n]).collect();
                (tensor(sa), tensor(sb))
            })
            .prop_map(|(a, b)| MatMulProblem { a, b })
            .boxed()
    }
}

impl OpProblem for MatMulProblem {
    fn graph(&self, target: Target) -> anyhow::Result<Model> {
        let g = Graph::new(target, DType::F32);
        let (ra, rb) = (self.a.ndim(), self.b.ndim());
        let br = ra.max(rb) - 2;
        let mut sa = declare(&self.a.shape()[..ra - 2], br);
        sa.extend([Dim::sym("M"), Dim::from(self.a.shape()[ra - 1])]);
        let mut sb = declare(&self.b.shape()[..rb - 2], br);
        sb.extend([Dim::from(self.b.shape()[rb - 2]), Dim::sym("N")]);
        let y = g.matmul(g.input("a", DType::F32, sa)?, g.input("b", DType::F32, sb)?)?;
        g.output(y, "y0")?;
        Ok(g.finish("matmul")?)
    }
    fn inputs(&self) -> Vec<(&'static str, Input)> {
        vec![("a", f32_in(&self.a)), ("b", f32_in(&self.b))]
    }
    fn reference(&self) -> Vec<ArrayD<f32>> {
        let (ra, rb) = (self.a.ndim(), self.b.ndim());
        let (m, k, n) = (self.a.shape()[ra - 2], self.a.shape()[ra - 1], self.b.shape()[rb - 1]);
        let br = ra.max(rb) - 2;
        let bat = |s: &[usize], i: usize| if i + s.len() >= br { s[i + s.len() - br] } else { 1 };
        let (ba, bb) = (&self.a.shape()[..ra - 2], &self.b.shape()[..rb - 2]);
        let mut shape: Vec<usize> = (0..br).map(|i| bat(ba, i).max(bat(bb, i))).collect();
        shape.extend([m, n]);
        let mut y = ArrayD::zeros(IxDyn(&shape));
        for (idx, v) in y.indexed_iter_mut() {
            let idx = idx.slice();
            // batch index into each operand: drop leading axes it lacks, clamp size-1 axes to 0
            let sub = |s: &[usize]| -> Vec<usize> {
                (0..s.len()).map(|j| if s[j] == 1 { 0 } else { idx[br - s.len() + j] }).collect()
            };
            let (mut ia, mut ib) = (sub(ba), sub(bb));
            let (i, j) = (idx[br], idx[br + 1]);
            let mut acc = 0.0f64;
            for t in 0..k {
                ia.extend([i, t]);
                ib.extend([t, j]);
                acc += self.a[IxDyn(&ia)] as f64 * self.b[IxDyn(&ib)] as f64;
                ia.truncate(ia.len() - 2);
                ib.truncate(ib.len() - 2);
            }
            *v = acc as f32;
        }
        vec![y]
    }
    fn approximation(&self) -> Approximation {
        Approximation::Approximate
    }
}

/// `x @ Wᵀ (+ b)` over x [B, S, in] with W stored (out, in) under `blk.proj.weight`.
#[derive(Debug)]
struct LinearProblem {
    x: ArrayD<f32>,
    w: ArrayD<f32>,
    b: Option<ArrayD<f32>>,
}

impl Arbitrary for LinearProblem {
    type Parameters = ();
    type Strategy = BoxedStrategy<Self>;
    fn arbitrary_with(_: ()) -> Self::Strategy {
        (1usize..=2, 1usize..=3, 1usize..=6, 1usize..=6, any::<bool>())
            .prop_flat_map(|(b, s, d_in, d_out, bias)| {
                let bias = if bias { tensor(vec![d_out]).prop_map(Some).boxed() } else { Just(None).boxed() };
                (tensor(vec![b, s, d_in]), tensor(vec![d_out, d_in]), bias)
            })
            .prop_map(|(x, w, b)| LinearProblem { x, w, b })
            .boxed()
    }
}

impl OpProblem for LinearProblem {
    fn graph(&self, target: Target) -> anyhow::Result<Model> {
        let g = Graph::new(target, DType::F32);
        let (d_out, d_in) = (self.w.shape()[0], self.w.shape()[1]);
        let x = g.input("x", DType::F32, shape!["B", "S", d_in])?;
        let y = {
            let _s = g.scope("blk");
            g.linear(x, "proj", d_in, d_out, self.b.is_some())?
        };
        g.output(y, "y0")?;
        let mut model = g.finish("linear")?;
        let mut weights = vec![("blk.proj.weight", &self.w)];
        weights.extend(self.b.as_ref().map(|b| ("blk.proj.bias", b)));
        inline(&mut model, &weights)?;
        Ok(model)
    }
    fn inputs(&self) -> Vec<(&'static str, Input)> {
        vec![("x", f32_in(&self.x))]
    }
    fn reference(&self) -> Vec<ArrayD<f32>> {
        let (d_out, d_in) = (self.w.shape()[0], self.w.shape()[1]);
        let (b, s) = (self.x.shape()[0], self.x.shape()[1]);
        let mut y = ArrayD::zeros(IxDyn(&[b, s, d_out]));
        for (idx, v) in y.indexed_iter_mut() {
            let (n, t, o) = (idx[0], idx[1], idx[2]);
            let mut acc = self.b.as_ref().map_or(0.0, |b| b[[o]] as f64);
            for i in 0..d_in {
                acc += self.x[[n, t, i]] as f64 * self.w[[o, i]] as f64;
            }
            *v = acc as f32;
        }
        vec![y]
    }
    fn approximation(&self) -> Approximation {
        Approximation::Approximate
    }
}

/// NCHW convolution with weight `conv.weight` [cout, cin, k, k] and bias `conv.bias`.
#[derive(Debug)]
struct ConvProblem {
    x: ArrayD<f32>,
    w: ArrayD<f32>,
    b: ArrayD<f32>,
    stride: usize,
    pad: usize,
}

impl Arbitrary for ConvProblem {
    type Parameters = ();
    type Strategy = BoxedStrategy<Self>;
    fn arbitrary_with(_: ()) -> Self::Strategy {
        (1usize..=2, 1usize..=3, 1usize..=3, 1usize..=3, 1usize..=2, 0usize..=1, 0usize..=4, 0usize..=4)
            .prop_flat_map(|(b, cin, cout, k, stride, pad, h, w)| {
                let min = k.saturating_sub(2 * pad).max(1); // at least one output row
                let (h, w) = (min + h, min + w);
                let shapes = (tensor(vec![b, cin, h, w]), tensor(vec![cout, cin, k, k]), tensor(vec![cout]));
                (shapes, Just((stride, pad)))
            })
            .prop_map(|((x, w, b), (stride, pad))| ConvProblem { x, w, b, stride, pad })
            .boxed()
    }
}

impl OpProblem for ConvProblem {
    fn graph(&self, target: Target) -> anyhow::Result<Model> {
        let g = Graph::new(target, DType::F32);
        let (cout, cin, k) = (self.w.shape()[0], self.w.shape()[1], self.w.shape()[2]);
        let x = g.input("x", DType::F32, shape!["B", cin, "H", "W"])?;
        let y = g.conv2d(x, "conv", (cin, cout), k, self.stride as i64, self.pad as i64)?;
        g.output(y, "y0")?;
        let mut model = g.finish("conv")?;
        inline(&mut model, &[("conv.weight", &self.w), ("conv.bias", &self.b)])?;
        Ok(model)
    }
    fn inputs(&self) -> Vec<(&'static str, Input)> {
        vec![("x", f32_in(&self.x))]
    }
    fn reference(&self) -> Vec<ArrayD<f32>> {
        let (cout, cin, k) = (self.w.shape()[0], self.w.shape()[1], self.w.shape()[2]);
        let s = self.x.shape();
        let (st, p) = (self.stride, self.pad);
        let (oh, ow) = ((s[2] + 2 * p - k) / st + 1, (s[3] + 2 * p - k) / st + 1);
        let mut y = ArrayD::zeros(IxDyn(&[s[0], cout, oh, ow]));
        for (idx, v) in y.indexed_iter_mut() {
            let (n, o, i, j) = (idx[0], idx[1], idx[2], idx[3]);
            let mut acc = self.b[[o]] as f64;
            for c in 0..cin {
                for di in 0..k {
                    for dj in 0..k {
                        let (yi, xj) = ((i * st + di) as i64 - p as i64, (j * st + dj) as i64 - p as i64);
                        if (0..s[2] as i64).contains(&yi) && (0..s[3] as i64).contains(&xj) {
                            let xv = self.x[[n, c, yi as usize, xj as usize]] as f64;
                            acc += xv * self.w[[o, c, di, dj]] as f64;
                        }
                    }
                }
            }
            *v = acc as f32;
        }
        vec![y]
    }
    fn approximation(&self) -> Approximation {
        Approximation::Approximate
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn matmul_batched_broadcasting(p in any::<MatMulProblem>()) {
        check(&p, Target::Ort)?;
    }

    #[test]
    fn linear_with_and_without_bias(p in any::<LinearProblem>()) {
        check(&p, Target::Ort)?;
    }

    #[test]
    fn conv2d_strided_padded(p in any::<ConvProblem>()) {
        check(&p, Target::Ort)?;
    }
}
