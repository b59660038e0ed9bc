//! End-to-end smoke test of the graph builder -> ONNX bytes -> ONNX Runtime chain.

use flux2_graphs::{shape, DType, Graph, Target};
use flux2_runtime::Input;
use flux2_tests::{assert_close, run_model};
use ndarray::{ArrayD, IxDyn};

#[test]
fn linear_runs_on_ort() {
    let g = Graph::new(Target::Ort, DType::F32);
    let x = g.input("x", DType::F32, shape!["B", 3]).unwrap();
    let y = {
        let _s = g.scope("proj");
        g.linear(x, "lin", 3, 2, true).unwrap()
    };
    g.output(y, "y").unwrap();
    let mut m = g.finish("smoke").unwrap();
    let w = [1.0f32, 2.0, 3.0, -1.0, 0.5, 0.25];
    m.inline_weights(|d| match d.name.as_str() {
        "proj.lin.weight" => Some(w.to_vec()),
        "proj.lin.bias" => Some(vec![0.5, -0.5]),
        _ => None,
    })
    .unwrap();
    let xv = ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![1.0, 0.0, -1.0, 2.0, 1.0, 0.0]).unwrap();
    let out = run_model(&m, vec![("x", Input::F32(xv))]).unwrap();
    let want = ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![-1.5, -1.75, 4.5, -2.0]).unwrap();
    assert_close("y", &want, &out["y"], 1e-6);
}
