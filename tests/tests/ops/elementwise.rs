//! Element-wise ops: arithmetic with numpy broadcasting, SiLU / SwiGLU, casts and `where`.

use flux2_graphs::{DType, Dim, Graph, Model, Shape, Target};
use flux2_runtime::Input;
use ndarray::{ArrayD, IxDyn, Zip};
use proptest::prelude::*;

use super::common::{check, config, dims, f32_in, round_to_float, tensor, Approximation, OpProblem};

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
    Pow,
    Max,
}

/// `a ∘ b` with broadcasting; `b` kept away from 0 for division, `a` positive for pow.
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
        let op = prop_oneof![
            Just(Bin::Add),
            Just(Bin::Sub),
            Just(Bin::Mul),
            Just(Bin::Div),
            Just(Bin::Pow),
            Just(Bin::Max)
        ];
        (op, dims(0usize..=4, 3))
            .prop_flat_map(|(op, out)| (Just(op), broadcastable(out.clone()), broadcastable(out)))
            .prop_flat_map(|(op, sa, sb)| (Just(op), tensor(sa), tensor(sb)))
            .prop_map(|(op, a, b)| match op {
                Bin::Div => BinaryProblem { op, a, b: b.mapv(|v| v.signum() * (v.abs() + 0.25)) },
                Bin::Pow => BinaryProblem { op, a: a.mapv(|v| v.abs() + 0.1), b },
                _ => BinaryProblem { op, a, b },
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
            Bin::Pow => g.pow(a, b)?,
            Bin::Max => g.max(a, b)?,
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
            Bin::Pow => (*x as f64).powf(*y as f64) as f32,
            Bin::Max => x.max(*y),
        };
        vec![Zip::from(&a).and(&b).map_collect(f)]
    }
    fn approximation(&self) -> Approximation {
        match self.op {
            Bin::Pow => Approximation::Close,
            _ => Approximation::Exact,
        }
    }
}

#[derive(Copy, Clone, Debug)]
enum Unary {
    Silu,
    /// `silu(a) · b` with `b` broadcast to `a`.
    Swiglu,
    Sqrt,
    Exp,
    Sin,
    Cos,
    Neg,
    Sigmoid,
    Tanh,
    Reciprocal,
    Identity,
}

impl Unary {
    fn eval(self, x: f64) -> f64 {
        match self {
            Unary::Silu | Unary::Swiglu => x / (1.0 + (-x).exp()),
            Unary::Sqrt => x.sqrt(),
            Unary::Exp => x.exp(),
            Unary::Sin => x.sin(),
            Unary::Cos => x.cos(),
            Unary::Neg => -x,
            Unary::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            Unary::Tanh => x.tanh(),
            Unary::Reciprocal => 1.0 / x,
            Unary::Identity => x,
        }
    }
}

/// One activation or math function of `a` (values in [-8, 8], positive for sqrt, away from
/// 0 for the reciprocal); the SwiGLU gate also reads `b`.
#[derive(Debug)]
struct UnaryProblem {
    op: Unary,
    a: ArrayD<f32>,
    b: Option<ArrayD<f32>>,
}

impl Arbitrary for UnaryProblem {
    type Parameters = ();
    type Strategy = BoxedStrategy<Self>;
    fn arbitrary_with(_: ()) -> Self::Strategy {
        use Unary::*;
        let ops = [Silu, Swiglu, Sqrt, Exp, Sin, Cos, Neg, Sigmoid, Tanh, Reciprocal, Identity];
        (proptest::sample::select(ops.to_vec()), dims(1usize..=3, 4))
            .prop_flat_map(|(op, s)| {
                let b = match op {
                    Swiglu => broadcastable(s.clone()).prop_flat_map(tensor).prop_map(Some).boxed(),
                    _ => Just(None).boxed(),
                };
                (Just(op), tensor(s), b)
            })
            .prop_map(|(op, a, b)| {
                let a = match op {
                    Sqrt => a.mapv(|v| 4.0 * v.abs()),
                    Reciprocal => a.mapv(|v| v.signum() * (v.abs() + 0.25)),
                    _ => a.mapv(|v| 4.0 * v),
                };
                UnaryProblem { op, a, b }
            })
            .boxed()
    }
}

impl OpProblem for UnaryProblem {
    fn graph(&self, target: Target) -> anyhow::Result<Model> {
        let g = Graph::new(target, DType::F32);
        let r = self.a.ndim();
        let a = g.input("a", DType::F32, declare(self.a.shape(), r))?;
        let y = match self.op {
            Unary::Silu => g.silu(a)?,
            Unary::Swiglu => {
                let b = self.b.as_ref().ok_or_else(|| anyhow::anyhow!("swiglu needs b"))?;
                g.swiglu(a, g.input("b", DType::F32, declare(b.shape(), r))?)?
            }
            Unary::Sqrt => g.sqrt(a),
            Unary::Exp => g.exp(a),
            Unary::Sin => g.sin(a),
            Unary::Cos => g.cos(a),
            Unary::Neg => g.neg(a),
            Unary::Sigmoid => g.sigmoid(a),
            Unary::Tanh => g.tanh(a),
            Unary::Reciprocal => g.reciprocal(a),
            Unary::Identity => g.identity(a),
        };
        g.output(y, "y0")?;
        Ok(g.finish("unary")?)
    }
    fn inputs(&self) -> Vec<(&'static str, Input)> {
        let mut v = vec![("a", f32_in(&self.a))];
        v.extend(self.b.as_ref().map(|b| ("b", f32_in(b))));
        v
    }
    fn reference(&self) -> Vec<ArrayD<f32>> {
        let y = self.a.mapv(|x| self.op.eval(x as f64) as f32);
        match &self.b {
            Some(b) => vec![Zip::from(&y).and(&broadcast_to(b, self.a.shape())).map_collect(|s, b| s * b)],
            None => vec![y],
        }
    }
    fn approximation(&self) -> Approximation {
        match self.op {
            Unary::Neg | Unary::Identity | Unary::Sqrt | Unary::Reciprocal => Approximation::Exact,
            _ => Approximation::Close,
        }
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

/// The condition of a `where`: a comparison, possibly combined with a second one.
#[derive(Copy, Clone, Debug)]
enum Cond {
    Less,
    Greater,
    Equal,
    /// `a < b && x > y`
    And,
    /// `a < b || x == y`
    Or,
    /// `!(a > b)`
    Not,
}

/// `where(cond(a, b, x, y), x, y)` with all four operands broadcasting to one shape; values
/// are multiples of 0.5 so that equality happens.
#[derive(Debug)]
struct WhereProblem {
    cond: Cond,
    a: ArrayD<f32>,
    b: ArrayD<f32>,
    x: ArrayD<f32>,
    y: ArrayD<f32>,
}

impl Arbitrary for WhereProblem {
    type Parameters = ();
    type Strategy = BoxedStrategy<Self>;
    fn arbitrary_with(_: ()) -> Self::Strategy {
        use Cond::*;
        let cond = proptest::sample::select(vec![Less, Greater, Equal, And, Or, Not]);
        (cond, dims(1usize..=3, 3))
            .prop_flat_map(|(cond, s)| {
                let v = || broadcastable(s.clone()).prop_flat_map(tensor);
                (Just(cond), tensor(s.clone()), v(), v(), v())
            })
            .prop_map(|(cond, a, b, x, y)| {
                let [a, b, x, y] = [a, b, x, y].map(|t| t.mapv(|v| (2.0 * v).round() / 2.0));
                WhereProblem { cond, a, b, x, y }
            })
            .boxed()
    }
}

impl OpProblem for WhereProblem {
    fn graph(&self, target: Target) -> anyhow::Result<Model> {
        let g = Graph::new(target, DType::F32);
        let r = self.a.ndim();
        let [a, b, x, y] = [("a", &self.a), ("b", &self.b), ("x", &self.x), ("y", &self.y)]
            .map(|(n, v)| g.input(n, DType::F32, declare(v.shape(), r)));
        let (a, b, x, y) = (a?, b?, x?, y?);
        let c = match self.cond {
            Cond::Less => g.less(a, b)?,
            Cond::Greater => g.greater(a, b)?,
            Cond::Equal => g.equal(a, b)?,
            Cond::And => g.and(g.less(a, b)?, g.greater(x, y)?)?,
            Cond::Or => g.or(g.less(a, b)?, g.equal(x, y)?)?,
            Cond::Not => g.not(g.greater(a, b)?),
        };
        g.output(g.where_(c, x, y)?, "y0")?;
        Ok(g.finish("where")?)
    }
    fn inputs(&self) -> Vec<(&'static str, Input)> {
        vec![("a", f32_in(&self.a)), ("b", f32_in(&self.b)), ("x", f32_in(&self.x)), ("y", f32_in(&self.y))]
    }
    fn reference(&self) -> Vec<ArrayD<f32>> {
        let s = self.a.shape();
        let [b, x, y] = [&self.b, &self.x, &self.y].map(|v| broadcast_to(v, s));
        let pick = |a: &f32, b: &f32, x: &f32, y: &f32| {
            let c = match self.cond {
                Cond::Less => a < b,
                Cond::Greater => a > b,
                Cond::Equal => a == b,
                Cond::And => a < b && x > y,
                Cond::Or => a < b || x == y,
                Cond::Not => a <= b, // !(a > b) without NaNs
            };
            if c {
                *x
            } else {
                *y
            }
        };
        vec![Zip::from(&self.a).and(&b).and(&x).and(&y).map_collect(pick)]
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
    fn activations_and_math(p in any::<UnaryProblem>()) {
        check(&p, Target::Ort)?;
    }

    #[test]
    fn cast_round_trip(p in any::<CastProblem>()) {
        check(&p, Target::Ort)?;
    }

    #[test]
    fn where_comparisons_logic(p in any::<WhereProblem>()) {
        check(&p, Target::Ort)?;
    }
}
