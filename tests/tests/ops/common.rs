//! Shared pieces of the op-emitter suite (style.md §6(a), after tract's `suite-unit`):
//! the [`OpProblem`] trait every case implements, named tolerances, random tensors, and a
//! check that runs a one-op graph on ONNX Runtime CPU and compares it with the naive
//! reference, including the output shape the builder inferred when the node was wired.

use std::collections::HashMap;
use std::fmt::Debug;

use flux2_graphs::onnx::{tensor_shape_proto::dimension::Value as DimValue, type_proto, ValueInfoProto};
use flux2_graphs::{DType, Graph, Model, Shape, Target, T};
use flux2_runtime::Input;
use ndarray::{ArrayD, IxDyn};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError};

/// How close ONNX Runtime must come to the naive reference: `|got - ref| <= tol·(1 + |ref|)`.
#[derive(Copy, Clone, Debug, PartialEq)]
pub enum Approximation {
    /// Bit-identical: data movement, single IEEE operations.
    Exact,
    /// 1e-6: one transcendental function or a short f32 accumulation.
    Close,
    /// 1e-4: reductions, normalisations, softmax, attention.
    Approximate,
    /// 1e-2: f16 graphs (10-bit mantissa inputs, weights and intermediates).
    Half,
}

impl Approximation {
    pub fn tolerance(self) -> f32 {
        match self {
            Approximation::Exact => 0.0,
            Approximation::Close => 1e-6,
            Approximation::Approximate => 1e-4,
            Approximation::Half => 1e-2,
        }
    }

    /// `Half` for an f16 graph, else `f32` (what the op reaches in f32).
    pub fn for_dtype(dtype: DType, f32: Approximation) -> Approximation {
        if dtype == DType::F16 {
            Approximation::Half
        } else {
            f32
        }
    }
}

/// One op under test: a random instance, the graph that computes it, and the naive answer.
pub trait OpProblem: Debug {
    /// A graph for `target` with inputs named as in [`OpProblem::inputs`], outputs `y0, y1, ..`
    /// and weights stored inline.
    fn graph(&self, target: Target) -> anyhow::Result<Model>;
    /// Graph inputs by name.
    fn inputs(&self) -> Vec<(&'static str, Input)>;
    /// The expected outputs `y0, y1, ..`, computed naively.
    fn reference(&self) -> Vec<ArrayD<f32>>;
    /// Tolerance of the comparison.
    fn approximation(&self) -> Approximation;
}

/// 16 seeded cases per op (override with `PROPTEST_CASES`), no regression files.
pub fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(16);
    let seed = std::env::var("PROPTEST_RNG_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0xF1_0C52);
    Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        max_shrink_iters: 64,
        ..Config::default()
    }
}

/// Runs `p` on ORT CPU for `target` and compares every output with the reference.
pub fn check(p: &dyn OpProblem, target: Target) -> Result<(), TestCaseError> {
    let fail = |what: &str, e: anyhow::Error| TestCaseError::fail(format!("{target:?}: {what}: {e:#}"));
    let model = p.graph(target).map_err(|e| fail("wiring", e))?;
    let inputs = p.inputs();
    let bindings = bind_symbols(&model, &inputs);
    let out = flux2_tests::run_model(&model, inputs).map_err(|e| fail("running", e))?;
    let outputs = &model.proto.graph.as_ref().map(|g| g.output.clone()).unwrap_or_default();
    let refs = p.reference();
    prop_assert_eq!(outputs.len(), refs.len(), "{:?}: number of outputs", target);
    for (i, want) in refs.iter().enumerate() {
        let name = format!("y{i}");
        let got = out.get(&name).ok_or_else(|| TestCaseError::fail(format!("no output {name}")))?;
        prop_assert_eq!(got.shape(), want.shape(), "{:?}: {} shape", target, name);
        let declared = outputs.iter().find(|o| o.name == name);
        if let Some(mismatch) = declared.and_then(|o| shape_mismatch(o, &bindings, got.shape())) {
            return Err(TestCaseError::fail(format!("{target:?}: {name}: {mismatch}")));
        }
        compare(&format!("{target:?} {name}"), want, got, p.approximation())?;
    }
    Ok(())
}

/// Runs `p` for both targets (ops whose emission differs by target).
pub fn check_both(p: &dyn OpProblem) -> Result<(), TestCaseError> {
    check(p, Target::Ort)?;
    check(p, Target::TensorRt)
}

/// `|got - want| <= tol·(1 + |want|)` element-wise, with the worst element in the message.
pub fn compare(
    name: &str,
    want: &ArrayD<f32>,
    got: &ArrayD<f32>,
    approx: Approximation,
) -> Result<(), TestCaseError> {
    let tol = approx.tolerance();
    let mut worst: Option<(usize, f32, f32)> = None;
    for (i, (w, g)) in want.iter().zip(got.iter()).enumerate() {
        let bad = !g.is_finite() || (g - w).abs() > tol * (1.0 + w.abs());
        if bad && worst.is_none_or(|(_, ww, gg)| (g - w).abs() > (gg - ww).abs()) {
            worst = Some((i, *w, *g));
        }
    }
    match worst {
        None => Ok(()),
        Some((i, w, g)) => {
            Err(TestCaseError::fail(format!("{name}: element {i}: got {g:e}, want {w:e} ({approx:?})")))
        }
    }
}

/// Random values in [-2, 2] for a tensor of the given shape.
pub fn tensor(shape: Vec<usize>) -> BoxedStrategy<ArrayD<f32>> {
    let n: usize = shape.iter().product();
    proptest::collection::vec(-2.0f32..2.0, n)
        .prop_map(move |v| ArrayD::from_shape_vec(IxDyn(&shape), v).expect("length matches shape"))
        .boxed()
}

/// A shape of `rank` dims in `1..=max`.
pub fn dims(rank: impl Strategy<Value = usize>, max: usize) -> impl Strategy<Value = Vec<usize>> {
    rank.prop_flat_map(move |r| proptest::collection::vec(1..=max, r))
}

/// Rounds to a binary float with `mant` explicit mantissa bits and minimum normal exponent
/// `emin`, ties to even (f16: 10, -14; bf16: 7, -126).
pub fn round_to_float(x: f32, mant: i32, emin: i32) -> f32 {
    if x == 0.0 {
        return x;
    }
    let e = (x.abs().log2().floor() as i32).max(emin);
    let ulp = 2f64.powi(e - mant);
    ((x as f64 / ulp).round_ties_even() * ulp) as f32
}

/// `a` as the graph dtype `dt` stores it (f32 or f16).
pub fn stored(a: &ArrayD<f32>, dt: DType) -> ArrayD<f32> {
    match dt {
        DType::F16 => a.mapv(|v| round_to_float(v, 10, -14)),
        _ => a.clone(),
    }
}

/// A graph input fed as f32 and cast to the graph's float dtype.
pub fn float_input(g: &Graph, name: &str, shape: Shape) -> flux2_graphs::Result<T> {
    Ok(g.cast(g.input(name, DType::F32, shape)?, g.dtype))
}

/// Marks `y` (cast back to f32) as the output `y0`.
pub fn float_output(g: &Graph, y: T) -> flux2_graphs::Result<()> {
    g.output(g.cast(y, DType::F32), "y0")
}

/// An f32 graph input.
pub fn f32_in(a: &ArrayD<f32>) -> Input {
    Input::F32(a.clone())
}

/// Reads back f32 weight data by name for `Model::inline_weights`.
pub fn inline(model: &mut Model, weights: &[(&str, &ArrayD<f32>)]) -> anyhow::Result<()> {
    let map: HashMap<&str, &ArrayD<f32>> = weights.iter().copied().collect();
    model.inline_weights(|w| map.get(w.name.as_str()).map(|a| a.iter().copied().collect()))?;
    Ok(())
}

/// Values of the graph inputs' symbolic dims, read off the concrete inputs.
fn bind_symbols(model: &Model, inputs: &[(&str, Input)]) -> HashMap<String, i64> {
    let mut b = HashMap::new();
    let Some(graph) = &model.proto.graph else { return b };
    for (name, input) in inputs {
        let shape = match input {
            Input::F32(a) => a.shape().to_vec(),
            Input::I64(a) => a.shape().to_vec(),
        };
        let Some(vi) = graph.input.iter().find(|v| v.name == *name) else { continue };
        for (d, n) in declared_dims(vi).iter().zip(shape) {
            if let Some(DimValue::DimParam(s)) = d {
                b.insert(s.clone(), n as i64);
            }
        }
    }
    b
}

fn declared_dims(vi: &ValueInfoProto) -> Vec<Option<DimValue>> {
    match vi.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(t)) => {
            t.shape.as_ref().map(|s| s.dim.iter().map(|d| d.value.clone()).collect()).unwrap_or_default()
        }
        _ => Vec::new(),
    }
}

/// Compares the inferred output shape (symbols evaluated with `bindings`) with the actual one.
fn shape_mismatch(vi: &ValueInfoProto, bindings: &HashMap<String, i64>, got: &[usize]) -> Option<String> {
    let dims = declared_dims(vi);
    if dims.len() != got.len() {
        return Some(format!("inferred rank {} but got shape {got:?}", dims.len()));
    }
    for (i, (d, &n)) in dims.iter().zip(got).enumerate() {
        let want = match d {
            Some(DimValue::DimValue(v)) => Some(*v),
            Some(DimValue::DimParam(s)) => eval_dim(s, bindings),
            None => None,
        };
        if want.is_some_and(|w| w != n as i64) {
            return Some(format!("inferred dim {i} = {d:?} = {want:?} but got shape {got:?}"));
        }
    }
    None
}

/// Evaluates a symbolic dim such as `L+S`, `(H+1)/2` or `2*W`; `None` for opaque ones.
fn eval_dim(s: &str, b: &HashMap<String, i64>) -> Option<i64> {
    let toks: Vec<char> = s.chars().filter(|c| !c.is_whitespace()).collect();
    let mut pos = 0;
    let v = expr(&toks, &mut pos, b)?;
    (pos == toks.len()).then_some(v)
}

fn expr(t: &[char], p: &mut usize, b: &HashMap<String, i64>) -> Option<i64> {
    let mut v = term(t, p, b)?;
    while let Some(&op @ ('+' | '-')) = t.get(*p) {
        *p += 1;
        let r = term(t, p, b)?;
        v = if op == '+' { v + r } else { v - r };
    }
    Some(v)
}

fn term(t: &[char], p: &mut usize, b: &HashMap<String, i64>) -> Option<i64> {
    let mut v = factor(t, p, b)?;
    while let Some(&op @ ('*' | '/')) = t.get(*p) {
        *p += 1;
        let r = factor(t, p, b)?;
        v = if op == '*' { v * r } else { v.checked_div(r)? };
    }
    Some(v)
}

fn factor(t: &[char], p: &mut usize, b: &HashMap<String, i64>) -> Option<i64> {
    match t.get(*p)? {
        '-' => {
            *p += 1;
            Some(-factor(t, p, b)?)
        }
        '(' => {
            *p += 1;
            let v = expr(t, p, b)?;
            (t.get(*p) == Some(&')')).then(|| *p += 1)?;
            Some(v)
        }
        c if c.is_ascii_digit() => {
            let start = *p;
            while t.get(*p).is_some_and(|c| c.is_ascii_digit()) {
                *p += 1;
            }
            t[start..*p].iter().collect::<String>().parse().ok()
        }
        c if c.is_alphanumeric() || *c == '_' => {
            let start = *p;
            while t.get(*p).is_some_and(|c| c.is_alphanumeric() || *c == '_') {
                *p += 1;
            }
            if t.get(*p) == Some(&'(') {
                return None; // an opaque form such as `conv(H)`
            }
            b.get(&t[start..*p].iter().collect::<String>()).copied()
        }
        _ => None,
    }
}

#[test]
fn symbolic_dims_evaluate() {
    let b: HashMap<String, i64> = [("H", 7), ("L", 3), ("S", 5)].map(|(k, v)| (k.to_string(), v)).into();
    assert_eq!(eval_dim("L+S", &b), Some(8));
    assert_eq!(eval_dim("(H+1)/2", &b), Some(4));
    assert_eq!(eval_dim("2*(H/2)", &b), Some(6));
    assert_eq!(eval_dim("S+-2", &b), Some(3));
    assert_eq!(eval_dim("conv(H)", &b), None);
    assert_eq!(eval_dim("Q", &b), None);
}

/// The harness must notice a node whose inferred shape disagrees with what ORT computes.
#[test]
fn a_wrongly_inferred_shape_fails_the_check() {
    #[derive(Debug)]
    struct Wrong(ArrayD<f32>);
    impl OpProblem for Wrong {
        fn graph(&self, target: Target) -> anyhow::Result<Model> {
            let g = flux2_graphs::Graph::new(target, flux2_graphs::DType::F32);
            let x = g.input("x", flux2_graphs::DType::F32, flux2_graphs::shape!["N"])?;
            let y = g.node1("Identity", &[x], vec![], flux2_graphs::DType::F32, flux2_graphs::shape!["N+1"]);
            g.output(y, "y0")?;
            Ok(g.finish("wrong")?)
        }
        fn inputs(&self) -> Vec<(&'static str, Input)> {
            vec![("x", f32_in(&self.0))]
        }
        fn reference(&self) -> Vec<ArrayD<f32>> {
            vec![self.0.clone()]
        }
        fn approximation(&self) -> Approximation {
            Approximation::Exact
        }
    }
    let p = Wrong(ArrayD::zeros(IxDyn(&[3])));
    let e = check(&p, Target::Ort).expect_err("a wrong inferred dim must fail");
    assert!(e.to_string().contains("inferred dim 0"), "{e}");
}
