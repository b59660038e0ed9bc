//! Shape ops: reshape (0 / -1 specs), reshape_like, transpose, concat, slice, split,
//! unsqueeze / squeeze and gather. All pure data movement, so all compared exactly.

use flux2_graphs::{DType, Dim, Graph, Model, Shape, Target, T};
use flux2_runtime::Input;
use ndarray::{ArrayD, Axis, Dimension, IxDyn, Slice};
use proptest::prelude::*;

use super::common::{check, config, dims, f32_in, tensor, Approximation, OpProblem};

/// Splits `m` into factors chosen by `picks` (the last factor takes what is left).
fn factorize(mut m: usize, picks: &[usize]) -> Vec<usize> {
    let mut out = Vec::new();
    for p in picks {
        let divisors: Vec<usize> = (1..=m).filter(|&d| m.is_multiple_of(d)).collect();
        let d = divisors[p % divisors.len()];
        out.push(d);
        m /= d;
    }
    out.push(m);
    out
}

/// An axis of a rank-`r` tensor, written negatively when `neg`.
fn axis_arg(axis: usize, r: usize, neg: bool) -> i64 {
    if neg {
        axis as i64 - r as i64
    } else {
        axis as i64
    }
}

/// A graph with one input `x` of the declared `shape` and one output `y0 = f(x)`.
fn one_op(
    target: Target,
    shape: Shape,
    f: impl Fn(&Graph, T) -> flux2_graphs::Result<T>,
) -> anyhow::Result<Model> {
    let g = Graph::new(target, DType::F32);
    let x = g.input("x", DType::F32, shape)?;
    let y = f(&g, x)?;
    g.output(y, "y0")?;
    Ok(g.finish("shape_op")?)
}

/// `reshape(x, [0.., f1, -1, f3..])`: a kept prefix, then a factorisation of the rest with
/// at most one inferred entry. Non-kept dims are symbolic when `sym` is set.
#[derive(Debug)]
struct ReshapeProblem {
    x: ArrayD<f32>,
    spec: Vec<i64>,
    sym: bool,
    like: bool,
}

impl Arbitrary for ReshapeProblem {
    type Parameters = ();
    type Strategy = BoxedStrategy<Self>;
    fn arbitrary_with(_: ()) -> Self::Strategy {
        let picks = proptest::collection::vec(0usize..16, 0..=3);
        (
            dims(1usize..=4, 4),
            picks,
            any::<prop::sample::Index>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_flat_map(|(s, picks, at, infer, sym, like)| {
                (tensor(s.clone()), 0..=s.len(), Just((picks, at, infer, sym, like)))
            })
            .prop_map(|(x, keep, (picks, at, infer, sym, like))| {
                let rest: usize = x.shape()[keep..].iter().product();
                let mut spec: Vec<i64> = vec![0; keep];
                let factors = factorize(rest, &picks);
                spec.extend(factors.iter().map(|&f| f as i64));
                if infer && !like {
                    spec[keep + at.index(factors.len())] = -1;
                }
                ReshapeProblem { x, spec, sym, like }
            })
            .boxed()
    }
}

impl ReshapeProblem {
    fn out_shape(&self) -> Vec<usize> {
        let n = self.x.len();
        let known: usize = self
            .spec
            .iter()
            .enumerate()
            .filter(|(_, &s)| s != -1)
            .map(|(i, &s)| if s == 0 { self.x.shape()[i] } else { s as usize })
            .product();
        self.spec
            .iter()
            .enumerate()
            .map(|(i, &s)| match s {
                0 => self.x.shape()[i],
                -1 => n / known,
                s => s as usize,
            })
            .collect()
    }
}

impl OpProblem for ReshapeProblem {
    fn graph(&self, target: Target) -> anyhow::Result<Model> {
        let g = Graph::new(target, DType::F32);
        let keep = self.spec.iter().take_while(|&&s| s == 0).count();
        let shape = self
            .x
            .shape()
            .iter()
            .enumerate()
            .map(|(i, &d)| if i < keep || self.sym { Dim::Sym(format!("x{i}")) } else { Dim::from(d) })
            .collect();
        let x = g.input("x", DType::F32, shape)?;
        let y = if self.like {
            let out = self.out_shape();
            let l = g.input(
                "like",
                DType::F32,
                out.iter().enumerate().map(|(i, _)| Dim::Sym(format!("l{i}"))).collect(),
            )?;
            g.reshape_like(x, l)?
        } else {
            g.reshape(x, &self.spec)?
        };
        g.output(y, "y0")?;
        Ok(g.finish("reshape")?)
    }
    fn inputs(&self) -> Vec<(&'static str, Input)> {
        let mut v = vec![("x", f32_in(&self.x))];
        if self.like {
            v.push(("like", Input::F32(ArrayD::zeros(IxDyn(&self.out_shape())))));
        }
        v
    }
    fn reference(&self) -> Vec<ArrayD<f32>> {
        let data: Vec<f32> = self.x.iter().copied().collect();
        vec![ArrayD::from_shape_vec(IxDyn(&self.out_shape()), data).expect("same element count")]
    }
    fn approximation(&self) -> Approximation {
        Approximation::Exact
    }
}

/// `transpose(x, perm)` for a random permutation.
#[derive(Debug)]
struct TransposeProblem {
    x: ArrayD<f32>,
    perm: Vec<usize>,
}

impl Arbitrary for TransposeProblem {
    type Parameters = ();
    type Strategy = BoxedStrategy<Self>;
    fn arbitrary_with(_: ()) -> Self::Strategy {
        dims(1usize..=4, 4)
            .prop_flat_map(|s| (Just((0..s.len()).collect::<Vec<_>>()).prop_shuffle(), tensor(s)))
            .prop_map(|(perm, x)| TransposeProblem { x, perm })
            .boxed()
    }
}

impl OpProblem for TransposeProblem {
    fn graph(&self, target: Target) -> anyhow::Result<Model> {
        let shape = (0..self.x.ndim()).map(|i| Dim::Sym(format!("x{i}"))).collect();
        one_op(target, shape, |g, x| g.transpose(x, &self.perm))
    }
    fn inputs(&self) -> Vec<(&'static str, Input)> {
        vec![("x", f32_in(&self.x))]
    }
    fn reference(&self) -> Vec<ArrayD<f32>> {
        let mut out = ArrayD::zeros(IxDyn(&self.perm.iter().map(|&p| self.x.shape()[p]).collect::<Vec<_>>()));
        for (idx, v) in out.indexed_iter_mut() {
            let mut src = vec![0; idx.ndim()];
            for (o, &p) in self.perm.iter().enumerate() {
                src[p] = idx[o]; // y[i_0..] = x[j] with j[perm[o]] = i[o]
            }
            *v = self.x[IxDyn(&src)];
        }
        vec![out]
    }
    fn approximation(&self) -> Approximation {
        Approximation::Exact
    }
}

/// `concat(xs, axis)`: 1-3 inputs whose axis sizes are symbols `c0, c1, ..` (so the output
/// dim is `c0+c1+..`), the other dims shared symbols.
#[derive(Debug)]
struct ConcatProblem {
    xs: Vec<ArrayD<f32>>,
    axis: i64,
}

impl Arbitrary for ConcatProblem {
    type Parameters = ();
    type Strategy = BoxedStrategy<Self>;
    fn arbitrary_with(_: ()) -> Self::Strategy {
        (
            dims(1usize..=3, 3),
            any::<prop::sample::Index>(),
            proptest::collection::vec(1usize..=3, 1..=3),
            any::<bool>(),
        )
            .prop_flat_map(|(s, ax, sizes, neg)| {
                let a = ax.index(s.len());
                let xs: Vec<_> = sizes
                    .iter()
                    .map(|&n| {
                        let mut si = s.clone();
                        si[a] = n;
                        tensor(si)
                    })
                    .collect();
                (xs, Just(axis_arg(a, s.len(), neg)))
            })
            .prop_map(|(xs, axis)| ConcatProblem { xs, axis })
            .boxed()
    }
}

impl OpProblem for ConcatProblem {
    fn graph(&self, target: Target) -> anyhow::Result<Model> {
        let g = Graph::new(target, DType::F32);
        let r = self.xs[0].ndim();
        let a = self.axis.rem_euclid(r as i64) as usize;
        let mut ins = Vec::new();
        for (k, name) in ["x0", "x1", "x2"].iter().take(self.xs.len()).enumerate() {
            let shape = (0..r)
                .map(|i| if i == a { Dim::Sym(format!("c{k}")) } else { Dim::Sym(format!("n{i}")) })
                .collect();
            ins.push(g.input(name, DType::F32, shape)?);
        }
        let y = g.concat(&ins, self.axis)?;
        g.output(y, "y0")?;
        Ok(g.finish("concat")?)
    }
    fn inputs(&self) -> Vec<(&'static str, Input)> {
        ["x0", "x1", "x2"].into_iter().zip(&self.xs).map(|(n, x)| (n, f32_in(x))).collect()
    }
    fn reference(&self) -> Vec<ArrayD<f32>> {
        let r = self.xs[0].ndim();
        let a = self.axis.rem_euclid(r as i64) as usize;
        let mut out_shape = self.xs[0].shape().to_vec();
        out_shape[a] = self.xs.iter().map(|x| x.shape()[a]).sum();
        let mut out = ArrayD::zeros(IxDyn(&out_shape));
        let mut at = 0;
        for x in &self.xs {
            for (idx, &v) in x.indexed_iter() {
                let mut dst = idx.slice().to_vec();
                dst[a] += at;
                out[IxDyn(&dst)] = v;
            }
            at += x.shape()[a];
        }
        vec![out]
    }
    fn approximation(&self) -> Approximation {
        Approximation::Exact
    }
}

/// `x[start:end]` along one axis with ONNX clamping: negative bounds count from the end,
/// `end` may be `i64::MAX`. With `sym` the axis is a symbol and the bounds stay in range.
#[derive(Debug)]
struct SliceProblem {
    x: ArrayD<f32>,
    axis: i64,
    start: i64,
    end: i64,
    sym: bool,
}

impl Arbitrary for SliceProblem {
    type Parameters = ();
    type Strategy = BoxedStrategy<Self>;
    fn arbitrary_with(_: ()) -> Self::Strategy {
        (dims(1usize..=3, 5), any::<prop::sample::Index>(), any::<bool>(), any::<bool>())
            .prop_flat_map(|(s, ax, neg, sym)| {
                let a = ax.index(s.len());
                let n = s[a] as i64;
                let bounds = if sym {
                    (0..=n).prop_flat_map(move |st| (Just(st), prop_oneof![st..=n, Just(i64::MAX)])).boxed()
                } else {
                    (-(n + 2)..=(n + 2), prop_oneof![-(n + 2)..=(n + 2), Just(i64::MAX)]).boxed()
                };
                (tensor(s.clone()), Just(axis_arg(a, s.len(), neg)), bounds, Just(sym))
            })
            .prop_map(|(x, axis, (start, end), sym)| SliceProblem { x, axis, start, end, sym })
            .boxed()
    }
}

/// ONNX `Slice` bounds for one axis of size `n` (step 1).
fn clamp_bounds(start: i64, end: i64, n: i64) -> (usize, usize) {
    let c = |v: i64| if v < 0 { (v + n).max(0) } else { v.min(n) };
    let (s, e) = (c(start), c(end));
    (s as usize, e.max(s) as usize)
}

impl OpProblem for SliceProblem {
    fn graph(&self, target: Target) -> anyhow::Result<Model> {
        let a = self.axis.rem_euclid(self.x.ndim() as i64) as usize;
        let shape = self
            .x
            .shape()
            .iter()
            .enumerate()
            .map(|(i, &d)| if self.sym && i == a { Dim::sym("n") } else { Dim::from(d) })
            .collect();
        one_op(target, shape, |g, x| g.slice(x, self.axis, self.start, self.end))
    }
    fn inputs(&self) -> Vec<(&'static str, Input)> {
        vec![("x", f32_in(&self.x))]
    }
    fn reference(&self) -> Vec<ArrayD<f32>> {
        let a = self.axis.rem_euclid(self.x.ndim() as i64) as usize;
        let (s, e) = clamp_bounds(self.start, self.end, self.x.shape()[a] as i64);
        vec![self.x.slice_axis(Axis(a), Slice::from(s..e)).to_owned()]
    }
    fn approximation(&self) -> Approximation {
        Approximation::Exact
    }
}

/// `split(x, axis, sizes)` into 1-3 pieces, outputs `y0, y1, ..`.
#[derive(Debug)]
struct SplitProblem {
    x: ArrayD<f32>,
    axis: i64,
    sizes: Vec<i64>,
}

impl Arbitrary for SplitProblem {
    type Parameters = ();
    type Strategy = BoxedStrategy<Self>;
    fn arbitrary_with(_: ()) -> Self::Strategy {
        (
            dims(1usize..=3, 3),
            any::<prop::sample::Index>(),
            proptest::collection::vec(1i64..=3, 1..=3),
            any::<bool>(),
        )
            .prop_flat_map(|(mut s, ax, sizes, neg)| {
                let a = ax.index(s.len());
                s[a] = sizes.iter().sum::<i64>() as usize;
                (tensor(s.clone()), Just(axis_arg(a, s.len(), neg)), Just(sizes))
            })
            .prop_map(|(x, axis, sizes)| SplitProblem { x, axis, sizes })
            .boxed()
    }
}

impl OpProblem for SplitProblem {
    fn graph(&self, target: Target) -> anyhow::Result<Model> {
        let g = Graph::new(target, DType::F32);
        let a = self.axis.rem_euclid(self.x.ndim() as i64) as usize;
        let shape = self
            .x
            .shape()
            .iter()
            .enumerate()
            .map(|(i, &d)| if i == a { Dim::from(d) } else { Dim::Sym(format!("n{i}")) })
            .collect();
        let x = g.input("x", DType::F32, shape)?;
        for (i, y) in g.split(x, self.axis, &self.sizes)?.into_iter().enumerate() {
            g.output(y, &format!("y{i}"))?;
        }
        Ok(g.finish("split")?)
    }
    fn inputs(&self) -> Vec<(&'static str, Input)> {
        vec![("x", f32_in(&self.x))]
    }
    fn reference(&self) -> Vec<ArrayD<f32>> {
        let a = self.axis.rem_euclid(self.x.ndim() as i64) as usize;
        let mut at = 0;
        self.sizes
            .iter()
            .map(|&n| {
                let piece = self.x.slice_axis(Axis(a), Slice::from(at..at + n as usize)).to_owned();
                at += n as usize;
                piece
            })
            .collect()
    }
    fn approximation(&self) -> Approximation {
        Approximation::Exact
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn reshape_and_reshape_like(p in any::<ReshapeProblem>()) {
        check(&p, Target::Ort)?;
    }

    #[test]
    fn transpose(p in any::<TransposeProblem>()) {
        check(&p, Target::Ort)?;
    }

    #[test]
    fn concat(p in any::<ConcatProblem>()) {
        check(&p, Target::Ort)?;
    }

    #[test]
    fn slice(p in any::<SliceProblem>()) {
        check(&p, Target::Ort)?;
    }

    #[test]
    fn split(p in any::<SplitProblem>()) {
        check(&p, Target::Ort)?;
    }
}
