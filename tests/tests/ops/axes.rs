//! Axis ops: unsqueeze / squeeze (positive and negative axes) and gather (negative indices,
//! scalar and multi-dimensional index tensors).

use flux2_graphs::{DType, Dim, Graph, Model, Shape, Target};
use flux2_runtime::Input;
use ndarray::{ArrayD, Axis, Dimension, IxDyn};
use proptest::prelude::*;

use super::common::{check, config, dims, f32_in, tensor, Approximation, OpProblem};

/// Symbolic dims `x0, x1, ..` except size-1 dims, which stay fixed.
fn declare(shape: &[usize]) -> Shape {
    shape
        .iter()
        .enumerate()
        .map(|(i, &d)| if d == 1 { Dim::Fixed(1) } else { Dim::Sym(format!("x{i}")) })
        .collect()
}

/// Distinct axes of a rank-`r` tensor chosen by `mask`, each written negatively when its
/// `neg` bit is set.
fn pick_axes(r: usize, mask: &[bool], neg: &[bool]) -> Vec<i64> {
    (0..r).filter(|&i| mask[i]).map(|i| if neg[i] { i as i64 - r as i64 } else { i as i64 }).collect()
}

/// `unsqueeze(x, axes)` (`squeeze = false`) or `squeeze(x, axes)` over the same placement:
/// `x` is the squeezed tensor and `axes` the size-1 axes of the unsqueezed one.
#[derive(Debug)]
struct AxesProblem {
    x: ArrayD<f32>,
    axes: Vec<i64>,
    squeeze: bool,
}

impl AxesProblem {
    fn expanded_shape(&self) -> Vec<usize> {
        let r = self.x.ndim() + self.axes.len();
        let ax: Vec<usize> = self.axes.iter().map(|&a| a.rem_euclid(r as i64) as usize).collect();
        let mut it = self.x.shape().iter();
        (0..r).map(|i| if ax.contains(&i) { 1 } else { *it.next().unwrap_or(&1) }).collect()
    }
}

impl Arbitrary for AxesProblem {
    type Parameters = ();
    type Strategy = BoxedStrategy<Self>;
    fn arbitrary_with(_: ()) -> Self::Strategy {
        (dims(0usize..=3, 3), 1usize..=2, any::<bool>())
            .prop_flat_map(|(s, k, squeeze)| {
                let r = s.len() + k;
                let mask = Just((0..r).map(|i| i < k).collect::<Vec<_>>()).prop_shuffle();
                (tensor(s), mask, proptest::collection::vec(any::<bool>(), r), Just(squeeze))
            })
            .prop_map(|(x, mask, neg, squeeze)| AxesProblem {
                axes: pick_axes(mask.len(), &mask, &neg),
                x,
                squeeze,
            })
            .boxed()
    }
}

impl OpProblem for AxesProblem {
    fn graph(&self, target: Target) -> anyhow::Result<Model> {
        let g = Graph::new(target, DType::F32);
        let y = if self.squeeze {
            let x = g.input("x", DType::F32, declare(&self.expanded_shape()))?;
            g.squeeze(x, &self.axes)?
        } else {
            let x = g.input("x", DType::F32, declare(self.x.shape()))?;
            g.unsqueeze(x, &self.axes)?
        };
        g.output(y, "y0")?;
        Ok(g.finish("axes")?)
    }
    fn inputs(&self) -> Vec<(&'static str, Input)> {
        if self.squeeze {
            let e = self.x.clone().into_shape_with_order(IxDyn(&self.expanded_shape())).expect("same length");
            vec![("x", Input::F32(e))]
        } else {
            vec![("x", f32_in(&self.x))]
        }
    }
    fn reference(&self) -> Vec<ArrayD<f32>> {
        if self.squeeze {
            return vec![self.x.clone()];
        }
        let r = self.x.ndim() + self.axes.len();
        let mut ax: Vec<usize> = self.axes.iter().map(|&a| a.rem_euclid(r as i64) as usize).collect();
        ax.sort();
        let mut y = self.x.clone();
        for a in ax {
            y.insert_axis_inplace(Axis(a));
        }
        vec![y]
    }
    fn approximation(&self) -> Approximation {
        Approximation::Exact
    }
}

/// `gather(x, indices, axis)` with indices in `[-n, n)` of rank 0-2.
#[derive(Debug)]
struct GatherProblem {
    x: ArrayD<f32>,
    indices: ArrayD<i64>,
    axis: i64,
}

impl Arbitrary for GatherProblem {
    type Parameters = ();
    type Strategy = BoxedStrategy<Self>;
    fn arbitrary_with(_: ()) -> Self::Strategy {
        (dims(1usize..=3, 4), any::<prop::sample::Index>(), dims(0usize..=2, 3), any::<bool>())
            .prop_flat_map(|(s, ax, is, neg)| {
                let a = ax.index(s.len());
                let n = s[a] as i64;
                let count: usize = is.iter().product();
                let idx = proptest::collection::vec(-n..n, count)
                    .prop_map(move |v| ArrayD::from_shape_vec(IxDyn(&is), v).expect("len"));
                let axis = if neg { a as i64 - s.len() as i64 } else { a as i64 };
                (tensor(s), idx, Just(axis))
            })
            .prop_map(|(x, indices, axis)| GatherProblem { x, indices, axis })
            .boxed()
    }
}

impl OpProblem for GatherProblem {
    fn graph(&self, target: Target) -> anyhow::Result<Model> {
        let g = Graph::new(target, DType::F32);
        let x = g.input("x", DType::F32, declare(self.x.shape()))?;
        let is = (0..self.indices.ndim()).map(|i| Dim::Sym(format!("i{i}"))).collect();
        let i = g.input("indices", DType::I64, is)?;
        let y = g.gather(x, i, self.axis)?;
        g.output(y, "y0")?;
        Ok(g.finish("gather")?)
    }
    fn inputs(&self) -> Vec<(&'static str, Input)> {
        vec![("x", f32_in(&self.x)), ("indices", Input::I64(self.indices.clone()))]
    }
    fn reference(&self) -> Vec<ArrayD<f32>> {
        let a = self.axis.rem_euclid(self.x.ndim() as i64) as usize;
        let n = self.x.shape()[a] as i64;
        let s = self.x.shape();
        let mut out_shape = s[..a].to_vec();
        out_shape.extend(self.indices.shape());
        out_shape.extend(&s[a + 1..]);
        let k = self.indices.ndim();
        let mut out = ArrayD::zeros(IxDyn(&out_shape));
        for (idx, v) in out.indexed_iter_mut() {
            let idx = idx.slice();
            let j = self.indices[IxDyn(&idx[a..a + k])].rem_euclid(n) as usize;
            let mut src = idx[..a].to_vec();
            src.push(j);
            src.extend(&idx[a + k..]);
            *v = self.x[IxDyn(&src)];
        }
        vec![out]
    }
    fn approximation(&self) -> Approximation {
        Approximation::Exact
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn unsqueeze_and_squeeze(p in any::<AxesProblem>()) {
        check(&p, Target::Ort)?;
    }

    #[test]
    fn gather(p in any::<GatherProblem>()) {
        check(&p, Target::Ort)?;
    }
}
