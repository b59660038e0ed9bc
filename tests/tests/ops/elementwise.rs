//! Element-wise ops: arithmetic with numpy broadcasting, SiLU / SwiGLU, casts and `where`.

use flux2_graphs::{DType, Dim, Graph, Model, Shape, Target};
use flux2_runtime::Input;
use ndarray::{ArrayD, IxDyn, Zip};
use proptest::prelude::*;

use super::common::{check, config, dims, f32_in, tensor, Approximation, OpProblem};

/// A shape that broadcasts to `out`: a suffix of it with some dims set to 1.
pub fn broadcastable(out: Vec<usize>) -> impl Strategy<Value = Vec<usize>> {
    let r = out.len();
    (0..=r, proptest::collection::vec(any::<bool>(), r)).prop_map(move |(k, ones)| {
        out[r - k..].iter().zip(&ones[r - k..]).map(|(&d, &one)| if one { 1 } else { d }).collect()
    })
}

/// Declared shape of an input that broadcasts into rank `out_rank`: size-1 dims stay fixed,
/// the others are symbols named after the output axis (`n0`, `n1`, ..).
pub fn declare(shape: &[usize], out_rank: usize) -> Shape {
    let off = out_rank - shape.len();
    shape
        .iter()
        .enumerate()
        .map(|(i, &d)| if d == 1 { Dim::Fixed(1) } else { Dim::Sym(format!("n{}", off + i)) })
        .collect()
}

fn broadcast_to(a: &ArrayD<f32>, out: &[usize]) -> ArrayD<f32> {
    a.broadcast(IxDyn(out)).expect("shape broadcasts").to_owned()
}

/// Numpy broadcast of two concrete shapes.
fn out_shape(a: &[usize], b: &[usize]) -> Vec<usize> {
    let n = a.len().max(b.len());
    let at = |s: &[usize], i: usize| if i + s.len() >= n { s[i + s.len() - n] } else { 1 };
    (0..n).map(|i| at(a, i).max(at(b, i))).collect()
}

#[derive(Copy, Clone, Debug)]
enum Bin {
    Add,
    Sub,
    Mul,
    Div,
}

/// `a ∘ b` with broadcasting; `b` kept away from 0 for division.
#[derive(Debug)]
struct BinaryProblem {
    op: Bin,
    a: ArrayD<f32>,
    b: ArrayD<f32>,
}

impl Arbitrary for BinaryProblem {
    type Parameters = ();
    type Strategy = BoxedStrategy<Self>;
    fn arbitrary_with(_: ()) -> Self::Strategy {
        let op = prop_oneof![Just(Bin::Add), Just(Bin::Sub), Just(Bin::Mul), Just(Bin::Div)];
        (op, dims(0usize..=4, 3))
            .prop_flat_map(|(op, out)| (Just(op), broadcastable(out.clone()), broadcastable(out)))
            .prop_flat_map(|(op, sa, sb)| (Just(op), tensor(sa), tensor(sb)))
            .prop_map(|(op, a, b)| {
                let b = if matches!(op, Bin::Div) { b.mapv(|v| v.signum() * (v.abs() + 0.25)) } else { b };
                BinaryProblem { op, a, b }
            })
            .boxed()
    }
}

impl OpProblem for BinaryProblem {
    fn graph(&self, target: Target) -> anyhow::Result<Model> {
        let g = Graph::new(target, DType::F32);
        let r = self.a.ndim().max(self.b.ndim());
        let a = g.input("a", DType::F32, declare(self.a.shape(), r))?;
        let b = g.input("b", DType::F32, declare(self.b.shape(), r))?;
        let y = match self.op {
            Bin::Add => g.add(a, b)?,
            Bin::Sub => g.sub(a, b)?,
            Bin::Mul => g.mul(a, b)?,
            Bin::Div => g.div(a, b)?,
        };
        g.output(y, "y0")?;
        Ok(g.finish("binary")?)
    }
    fn inputs(&self) -> Vec<(&'static str, Input)> {
        vec![("a", f32_in(&self.a)), ("b", f32_in(&self.b))]
    }
    fn reference(&self) -> Vec<ArrayD<f32>> {
        let out = out_shape(self.a.shape(), self.b.shape());
        let (a, b) = (broadcast_to(&self.a, &out), broadcast_to(&self.b, &out));
        let f = |x: &f32, y: &f32| match self.op {
            Bin::Add => x + y,
            Bin::Sub => x - y,
            Bin::Mul => x * y,
            Bin::Div => x / y,
        };
        vec![Zip::from(&a).and(&b).map_collect(f)]
    }
    fn approximation(&self) -> Approximation {
        Approximation::Exact
    }
}

/// `silu(a)` alone, or the SwiGLU gate `silu(a) · b` with `b` broadcast to `a`.
#[derive(Debug)]
struct GateProblem {
    a: ArrayD<f32>,
    b: Option<ArrayD<f32>>,
}

impl Arbitrary for GateProblem {
    type Parameters = ();
    type Strategy = BoxedStrategy<Self>;
    fn arbitrary_with(_: ()) -> Self::Strategy {
        (dims(1usize..=3, 4), any::<bool>())
            .prop_flat_map(|(s, glu)| {
                let b =
                    if glu { broadcastable(s.clone()).prop_map(Some).boxed() } else { Just(None).boxed() };
                (Just(s), b)
            })
            .prop_flat_map(|(s, sb)| {
                (tensor(s), sb.map_or(Just(None).boxed(), |sb| tensor(sb).prop_map(Some).boxed()))
            })
            .prop_map(|(a, b)| GateProblem { a: a.mapv(|v| 4.0 * v), b })
            .boxed()
    }
}

impl OpProblem for GateProblem {
    fn graph(&self, target: Target) -> anyhow::Result<Model> {
        let g = Graph::new(target, DType::F32);
        let r = self.a.ndim();
        let a = g.input("a", DType::F32, declare(self.a.shape(), r))?;
        let y = match &self.b {
            Some(b) => g.swiglu(a, g.input("b", DType::F32, declare(b.shape(), r))?)?,
            None => g.silu(a)?,
        };
        g.output(y, "y0")?;
        Ok(g.finish("gate")?)
    }
    fn inputs(&self) -> Vec<(&'static str, Input)> {
        let mut v = vec![("a", f32_in(&self.a))];
        v.extend(self.b.as_ref().map(|b| ("b", f32_in(b))));
        v
    }
    fn reference(&self) -> Vec<ArrayD<f32>> {
        let silu = self.a.mapv(|x| x / (1.0 + (-x).exp()));
        match &self.b {
            Some(b) => vec![Zip::from(&silu).and(&broadcast_to(b, self.a.shape())).map_collect(|s, b| s * b)],
            None => vec![silu],
        }
    }
    fn approximation(&self) -> Approximation {
        Approximation::Close
    }
}

/// f32 -> `to` -> f32; the reference rounds the way the target type does.
#[derive(Debug)]
struct CastProblem {
    to: DType,
    x: ArrayD<f32>,
}

impl Arbitrary for CastProblem {
    type Parameters = ();
    type Strategy = BoxedStrategy<Self>;
    fn arbitrary_with(_: ()) -> Self::Strategy {
        let to = prop_oneof![
            Just(DType::I64),
            Just(DType::I32),
            Just(DType::F16),
            Just(DType::BF16),
            Just(DType::Bool)
        ];
        let value = prop_oneof![Just(0.0f32), -300.0f32..300.0, -1e-3f32..1e-3];
        (to, dims(1usize..=3, 4))
            .prop_flat_map(move |(to, s)| {
                let n: usize = s.iter().product();
                (Just(to), Just(s), proptest::collection::vec(value.clone(), n))
            })
            .prop_map(|(to, s, v)| CastProblem { to, x: ArrayD::from_shape_vec(IxDyn(&s), v).expect("len") })
            .boxed()
    }
}

/// Rounds to a binary float with `mant` explicit mantissa bits and minimum normal exponent
/// `emin`, ties to even (f16: 10, -14; bf16: 7, -126).
fn round_to_float(x: f32, mant: i32, emin: i32) -> f32 {
    if x == 0.0 {
        return x;
    }
    let e = (x.abs().log2().floor() as i32).max(emin);
    let ulp = 2f64.powi(e - mant);
    ((x as f64 / ulp).round_ties_even() * ulp) as f32
}

impl OpProblem for CastProblem {
    fn graph(&self, target: Target) -> anyhow::Result<Model> {
        let g = Graph::new(target, DType::F32);
        let x = g.input("x", DType::F32, declare(self.x.shape(), self.x.ndim()))?;
        let y = g.cast(g.cast(x, self.to), DType::F32);
        g.output(y, "y0")?;
        Ok(g.finish("cast")?)
    }
    fn inputs(&self) -> Vec<(&'static str, Input)> {
        vec![("x", f32_in(&self.x))]
    }
    fn reference(&self) -> Vec<ArrayD<f32>> {
        let f = |v: f32| match self.to {
            DType::I64 | DType::I32 => v.trunc(),
            DType::F16 => round_to_float(v, 10, -14),
            DType::BF16 => round_to_float(v, 7, -126),
            _ => (v != 0.0) as i32 as f32,
        };
        vec![self.x.mapv(f)]
    }
    fn approximation(&self) -> Approximation {
        Approximation::Exact
    }
}

/// `where(a < b, x, y)` with all four operands broadcasting to one shape.
#[derive(Debug)]
struct WhereProblem {
    a: ArrayD<f32>,
    b: ArrayD<f32>,
    x: ArrayD<f32>,
    y: ArrayD<f32>,
}

impl Arbitrary for WhereProblem {
    type Parameters = ();
    type Strategy = BoxedStrategy<Self>;
    fn arbitrary_with(_: ()) -> Self::Strategy {
        dims(1usize..=3, 3)
            .prop_flat_map(|s| {
                let v = || broadcastable(s.clone()).prop_flat_map(tensor);
                (tensor(s.clone()), v(), v(), v())
            })
            .prop_map(|(a, b, x, y)| WhereProblem { a, b, x, y })
            .boxed()
    }
}

impl OpProblem for WhereProblem {
    fn graph(&self, target: Target) -> anyhow::Result<Model> {
        let g = Graph::new(target, DType::F32);
        let r = self.a.ndim();
        let [a, b, x, y] = [("a", &self.a), ("b", &self.b), ("x", &self.x), ("y", &self.y)]
            .map(|(n, v)| g.input(n, DType::F32, declare(v.shape(), r)));
        let out = g.where_(g.less(a?, b?)?, x?, y?)?;
        g.output(out, "y0")?;
        Ok(g.finish("where")?)
    }
    fn inputs(&self) -> Vec<(&'static str, Input)> {
        vec![("a", f32_in(&self.a)), ("b", f32_in(&self.b)), ("x", f32_in(&self.x)), ("y", f32_in(&self.y))]
    }
    fn reference(&self) -> Vec<ArrayD<f32>> {
        let s = self.a.shape();
        let [b, x, y] = [&self.b, &self.x, &self.y].map(|v| broadcast_to(v, s));
        vec![Zip::from(&self.a).and(&b).and(&x).and(&y).map_collect(|a, b, x, y| if a < b { *x } else { *y })]
    }
    fn approximation(&self) -> Approximation {
        Approximation::Exact
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn binary_broadcasting(p in any::<BinaryProblem>()) {
        check(&p, Target::Ort)?;
    }

    #[test]
    fn silu_and_swiglu(p in any::<GateProblem>()) {
        check(&p, Target::Ort)?;
    }

    #[test]
    fn cast_round_trip(p in any::<CastProblem>()) {
        check(&p, Target::Ort)?;
    }

    #[test]
    fn where_broadcasting(p in any::<WhereProblem>()) {
        check(&p, Target::Ort)?;
    }
}
