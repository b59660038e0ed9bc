//! Normalisations and reductions: group norm (affine), layer norm (no affine), RMS norm
//! (both targets: fused `RMSNormalization` and the f32 decomposition), mean and softmax.

use flux2_graphs::{DType, Dim, Graph, Model, Shape, Target};
use flux2_runtime::Input;
use ndarray::{ArrayD, Axis, IxDyn};
use proptest::prelude::*;

use super::common::{
    check, check_both, config, dims, f32_in, float_input, float_output, inline, stored, tensor,
    Approximation, OpProblem,
};

/// Symbolic leading dims `n0, n1, ..`, the last `keep_last` dims fixed.
fn declare(shape: &[usize], keep_last: usize) -> Shape {
    let r = shape.len();
    shape
        .iter()
        .enumerate()
        .map(|(i, &d)| if i + keep_last >= r { Dim::from(d) } else { Dim::Sym(format!("n{i}")) })
        .collect()
}

/// Mean and biased variance of a set of values, in f64.
fn moments(v: impl Iterator<Item = f32> + Clone) -> (f64, f64) {
    let n = v.clone().count() as f64;
    let mean = v.clone().map(|x| x as f64).sum::<f64>() / n;
    (mean, v.map(|x| (x as f64 - mean).powi(2)).sum::<f64>() / n)
}

/// Values in [-2, 2] shifted by an offset so that centring matters.
fn shifted(shape: Vec<usize>) -> BoxedStrategy<ArrayD<f32>> {
    (tensor(shape), -3.0f32..3.0).prop_map(|(x, o)| x.mapv(|v| v + o)).boxed()
}

#[derive(Copy, Clone, Debug)]
enum Norm {
    /// `group_norm(x, "norm", groups, C, eps)` with weight/bias.
    Group(usize),
    /// `layer_norm(x, eps)` over the last axis, no affine.
    Layer,
    /// `rms_norm(x, "attn.norm_q.weight", eps)` over the last axis.
    Rms,
}

/// A normalisation of x with eps, plus the affine parameters it reads.
#[derive(Debug)]
struct NormProblem {
    norm: Norm,
    x: ArrayD<f32>,
    w: ArrayD<f32>,
    b: ArrayD<f32>,
    eps: f32,
    /// Graph float dtype: f32 or f16 (inputs cast in the graph, output cast back).
    dtype: DType,
}

impl Arbitrary for NormProblem {
    type Parameters = ();
    type Strategy = BoxedStrategy<Self>;
    fn arbitrary_with(_: ()) -> Self::Strategy {
        let norm = prop_oneof![(1usize..=3).prop_map(Norm::Group), Just(Norm::Layer), Just(Norm::Rms)];
        let eps = prop_oneof![Just(1e-6f32), Just(1e-5), Just(1e-2)];
        let dtype = prop_oneof![3 => Just(DType::F32), 1 => Just(DType::F16)];
        (norm, dims(1usize..=4, 5), 1usize..=3, (eps, dtype))
            .prop_flat_map(|(norm, mut s, cpg, eps)| {
                let c = match norm {
                    Norm::Group(g) => {
                        while s.len() < 3 {
                            s.push(2);
                        }
                        s[1] = g * cpg;
                        s[1]
                    }
                    _ => s[s.len() - 1],
                };
                (Just(norm), shifted(s), tensor(vec![c]), tensor(vec![c]), Just(eps))
            })
            .prop_map(|(norm, x, w, b, (eps, dtype))| NormProblem { norm, x, w, b, eps, dtype })
            .boxed()
    }
}

impl OpProblem for NormProblem {
    fn graph(&self, target: Target) -> anyhow::Result<Model> {
        let g = Graph::new(target, self.dtype);
        let mut model = match self.norm {
            Norm::Group(groups) => {
                let c = self.x.shape()[1];
                let mut shape = declare(self.x.shape(), 0);
                shape[1] = Dim::from(c);
                let x = float_input(&g, "x", shape)?;
                float_output(&g, g.group_norm(x, "norm", groups, c, self.eps)?)?;
                g.finish("group_norm")?
            }
            Norm::Layer => {
                let x = float_input(&g, "x", declare(self.x.shape(), 1))?;
                float_output(&g, g.layer_norm(x, self.eps)?)?;
                g.finish("layer_norm")?
            }
            Norm::Rms => {
                let x = float_input(&g, "x", declare(self.x.shape(), 1))?;
                let y = {
                    let _s = g.scope("attn");
                    g.rms_norm(x, "norm_q.weight", self.eps)?
                };
                float_output(&g, y)?;
                g.finish("rms_norm")?
            }
        };
        inline(
            &mut model,
            &[("norm.weight", &self.w), ("norm.bias", &self.b), ("attn.norm_q.weight", &self.w)],
        )?;
        Ok(model)
    }
    fn inputs(&self) -> Vec<(&'static str, Input)> {
        vec![("x", f32_in(&self.x))]
    }
    fn reference(&self) -> Vec<ArrayD<f32>> {
        let eps = self.eps as f64;
        let [x, w, b] = [&self.x, &self.w, &self.b].map(|a| stored(a, self.dtype));
        let mut y = x.clone();
        match self.norm {
            Norm::Group(groups) => {
                let cpg = x.shape()[1] / groups;
                for (n, mut yn) in y.axis_iter_mut(Axis(0)).enumerate() {
                    let xn = x.index_axis(Axis(0), n);
                    for grp in 0..groups {
                        let chans = grp * cpg..(grp + 1) * cpg;
                        let vals = chans
                            .clone()
                            .flat_map(|c| xn.index_axis(Axis(0), c).into_iter().copied().collect::<Vec<_>>());
                        let (mean, var) = moments(vals.collect::<Vec<_>>().into_iter());
                        for c in chans {
                            let (w, b) = (w[[c]] as f64, b[[c]] as f64);
                            yn.index_axis_mut(Axis(0), c)
                                .mapv_inplace(|v| (((v as f64 - mean) / (var + eps).sqrt()) * w + b) as f32);
                        }
                    }
                }
            }
            Norm::Layer | Norm::Rms => {
                let last = Axis(x.ndim() - 1);
                for mut row in y.lanes_mut(last) {
                    let (mean, var) = moments(row.iter().copied().collect::<Vec<_>>().into_iter());
                    let ms = mean * mean + var; // mean(x²)
                    for (d, v) in row.iter_mut().enumerate() {
                        *v = match self.norm {
                            Norm::Rms => (*v as f64 / (ms + eps).sqrt() * w[[d]] as f64) as f32,
                            _ => ((*v as f64 - mean) / (var + eps).sqrt()) as f32,
                        };
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

/// `reduce_mean(x, axes, keepdims)` (`softmax = None`) or `softmax(x, axis)`.
#[derive(Debug)]
struct ReduceProblem {
    x: ArrayD<f32>,
    axes: Vec<i64>,
    keepdims: bool,
    softmax: bool,
}

impl Arbitrary for ReduceProblem {
    type Parameters = ();
    type Strategy = BoxedStrategy<Self>;
    fn arbitrary_with(_: ()) -> Self::Strategy {
        (dims(1usize..=4, 4), any::<bool>(), any::<bool>())
            .prop_flat_map(|(s, keepdims, softmax)| {
                let r = s.len();
                let picks = if softmax { 1..=1 } else { 1..=r };
                let axes = proptest::sample::subsequence((0..r).collect::<Vec<_>>(), picks);
                let negs = proptest::collection::vec(any::<bool>(), r);
                (shifted(s), axes, negs, Just((keepdims, softmax)))
            })
            .prop_map(|(x, axes, negs, (keepdims, softmax))| {
                let r = x.ndim() as i64;
                let axes = axes.iter().map(|&a| if negs[a] { a as i64 - r } else { a as i64 }).collect();
                ReduceProblem { x: x.mapv(|v| 3.0 * v), axes, keepdims, softmax }
            })
            .boxed()
    }
}

impl OpProblem for ReduceProblem {
    fn graph(&self, target: Target) -> anyhow::Result<Model> {
        let g = Graph::new(target, DType::F32);
        let x = g.input("x", DType::F32, declare(self.x.shape(), 0))?;
        let y = if self.softmax {
            g.softmax(x, self.axes[0])
        } else {
            g.reduce_mean(x, &self.axes, self.keepdims)?
        };
        g.output(y, "y0")?;
        Ok(g.finish("reduce")?)
    }
    fn inputs(&self) -> Vec<(&'static str, Input)> {
        vec![("x", f32_in(&self.x))]
    }
    fn reference(&self) -> Vec<ArrayD<f32>> {
        let r = self.x.ndim() as i64;
        let mut axes: Vec<usize> = self.axes.iter().map(|&a| a.rem_euclid(r) as usize).collect();
        if self.softmax {
            let mut y = self.x.clone();
            for mut lane in y.lanes_mut(Axis(axes[0])) {
                let m = lane.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
                let z: f64 = lane.iter().map(|&v| (v as f64 - m).exp()).sum();
                lane.mapv_inplace(|v| ((v as f64 - m).exp() / z) as f32);
            }
            return vec![y];
        }
        axes.sort();
        let s = self.x.shape();
        let kept: Vec<usize> = (0..s.len()).map(|i| if axes.contains(&i) { 1 } else { s[i] }).collect();
        let count: usize = axes.iter().map(|&a| s[a]).product();
        let mut sum = ArrayD::<f64>::zeros(IxDyn(&kept));
        for (idx, &v) in self.x.indexed_iter() {
            let dst: Vec<usize> = (0..s.len()).map(|i| if axes.contains(&i) { 0 } else { idx[i] }).collect();
            sum[IxDyn(&dst)] += v as f64;
        }
        let y = sum.mapv(|v| (v / count as f64) as f32);
        if self.keepdims {
            return vec![y];
        }
        let out: Vec<usize> = (0..s.len()).filter(|i| !axes.contains(i)).map(|i| s[i]).collect();
        vec![y.into_shape_with_order(IxDyn(&out)).expect("same length")]
    }
    fn approximation(&self) -> Approximation {
        Approximation::Approximate
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn group_layer_rms_norm(p in any::<NormProblem>()) {
        check_both(&p)?;
    }

    #[test]
    fn reduce_mean_and_softmax(p in any::<ReduceProblem>()) {
        check(&p, Target::Ort)?;
    }
}
