//! Shape inference at wiring time, without running anything: symbolic dims propagate through
//! ops as readable expressions, and mismatched inputs are rejected with an error that names
//! the node (`{scope}.{op}`) and the offending shapes.

use flux2_graphs::ops::RopeStyle;
use flux2_graphs::{shape, show_shape, DType, Dim, Graph, GraphError, Shape, Target, T};

fn graph() -> Graph {
    Graph::new(Target::Ort, DType::F32)
}

fn shown(g: &Graph, t: T) -> String {
    show_shape(&g.shape_of(t))
}

/// Asserts a wiring error that names `node` and mentions every `words`.
fn assert_rejected<V: std::fmt::Debug>(r: flux2_graphs::Result<V>, node: &str, words: &[&str]) {
    let e = match r {
        Err(e @ GraphError::Wiring { .. }) => e.to_string(),
        other => panic!("expected a wiring error naming {node}, got {other:?}"),
    };
    assert!(e.contains(&format!("node '{node}")), "error does not name node {node}: {e}");
    for w in words {
        assert!(e.contains(w), "error does not mention {w:?}: {e}");
    }
}

#[test]
fn batch_and_sequence_symbols_flow_through_a_block() {
    let g = graph();
    let x = g.input("x", DType::F32, shape!["B", "S", 64]).unwrap();
    let _s = g.scope("blk");
    let h = g.linear(x, "to_q", 64, 32, false).unwrap();
    assert_eq!(shown(&g, h), "[B,S,32]");
    let q = g.reshape(h, &[0, 0, 4, -1]).unwrap(); // [B,S,4,8]
    assert_eq!(shown(&g, q), "[B,S,4,8]");
    let q = g.transpose(q, &[0, 2, 1, 3]).unwrap();
    assert_eq!(shown(&g, q), "[B,4,S,8]");
    let q = g.rms_norm(q, "norm_q.weight", 1e-6).unwrap();
    let cos = g.input("cos", DType::F32, shape!["S", 4]).unwrap();
    let sin = g.input("sin", DType::F32, shape!["S", 4]).unwrap();
    let q = g.rope(q, cos, sin, RopeStyle::Interleaved).unwrap();
    let a = g.attention(q, q, q, None, 0.5).unwrap();
    assert_eq!(shown(&g, a), "[B,4,S,8]");
    let back = g.reshape(g.transpose(a, &[0, 2, 1, 3]).unwrap(), &[0, 0, -1]).unwrap();
    assert_eq!(shown(&g, back), "[B,S,32]");
    let m = g.reduce_mean(back, &[-1], false).unwrap();
    assert_eq!(shown(&g, m), "[B,S]");
}

#[test]
fn concat_adds_symbols_and_attention_reads_the_joint_length() {
    let g = graph();
    let txt = g.input("txt", DType::F32, shape!["B", 2, "L", 8]).unwrap();
    let img = g.input("img", DType::F32, shape!["B", 2, "S", 8]).unwrap();
    let kv = g.concat(&[txt, img], 2).unwrap();
    assert_eq!(shown(&g, kv), "[B,2,L+S,8]");
    let o = g.attention(img, kv, kv, None, 0.35).unwrap();
    assert_eq!(shown(&g, o), "[B,2,S,8]");
    let tail = g.slice(kv, 2, 0, i64::MAX).unwrap();
    assert_eq!(g.shape_of(tail), g.shape_of(kv));
    let head = g.slice(kv, -2, 1, 3).unwrap();
    assert_eq!(shown(&g, head), "[B,2,2,8]");
}

#[test]
fn strided_conv_after_asymmetric_pad_halves_the_symbol() {
    let g = graph();
    let x = g.input("x", DType::F32, shape!["B", 3, "H", "W"]).unwrap();
    let p = g.pad2d(x, 0, 1, 0, 1).unwrap();
    assert_eq!(shown(&g, p), "[B,3,H+1,W+1]");
    let y = g.conv2d(p, "down", (3, 8), 3, 2, 0).unwrap();
    assert_eq!(shown(&g, y), "[B,8,H/2,W/2]");
    let same = g.conv2d(y, "conv", (8, 8), 3, 1, 1).unwrap();
    assert_eq!(shown(&g, same), "[B,8,H/2,W/2]");
    let up = g.upsample_nearest2x(same).unwrap();
    assert_eq!(shown(&g, up), "[B,8,H,W]", "2·(H/2) folds back to H");
    let n = g.group_norm(up, "norm", 4, 8, 1e-6).unwrap();
    assert_eq!(shown(&g, n), "[B,8,H,W]");
}

#[test]
fn patchify_round_trip_keeps_symbols() {
    let g = graph();
    let x = g.input("x", DType::F32, shape!["B", 32, "H", "W"]).unwrap();
    let p = g.space_to_depth(x, 2).unwrap();
    assert_eq!(shown(&g, p), "[B,128,H/2,W/2]");
    let u = g.depth_to_space_crd(p, 2).unwrap();
    assert_eq!(g.shape_of(u), g.shape_of(x));
    let tokens = g.reshape(p, &[0, 128, -1]).unwrap();
    assert_eq!(shown(&g, tokens), "[B,128,(H/2)*(W/2)]");
}

#[test]
fn reshape_infers_the_minus_one_dim() {
    let g = graph();
    let x = g.input("x", DType::F32, shape!["B", "S", 4, 16]).unwrap();
    assert_eq!(shown(&g, g.reshape(x, &[0, 0, -1]).unwrap()), "[B,S,64]");
    assert_eq!(shown(&g, g.reshape(x, &[0, -1, 16]).unwrap()), "[B,S*4,16]");
    assert_eq!(shown(&g, g.reshape(x, &[0, 0, 8, -1]).unwrap()), "[B,S,8,8]");
    let y = g.input("y", DType::F32, shape![2, 3, 4]).unwrap();
    assert_eq!(shown(&g, g.reshape(y, &[-1, 6]).unwrap()), "[4,6]");
    let z = g.input("z", DType::F32, shape!["N", 12]).unwrap();
    let like = g.input("like", DType::F32, shape!["N", 3, 4]).unwrap();
    assert_eq!(shown(&g, g.reshape_like(z, like).unwrap()), "[N,3,4]");
}

#[test]
fn broadcasting_and_matmul_shapes() {
    let g = graph();
    let a = g.input("a", DType::F32, shape!["B", 1, "S", 8]).unwrap();
    let b = g.input("b", DType::F32, shape![4, 1, 8]).unwrap();
    assert_eq!(shown(&g, g.add(a, b).unwrap()), "[B,4,S,8]");
    let w = g.input("w", DType::F32, shape![8, 5]).unwrap();
    assert_eq!(shown(&g, g.matmul(a, w).unwrap()), "[B,1,S,5]");
    let bt = g.input("bt", DType::F32, shape![3, 8, "T"]).unwrap();
    assert_eq!(shown(&g, g.matmul(a, bt).unwrap()), "[B,3,S,T]");
    let c = g.less(a, b).unwrap();
    assert_eq!(g.dtype_of(c), DType::Bool);
    assert_eq!(shown(&g, g.where_(c, a, b).unwrap()), "[B,4,S,8]");
}

#[test]
fn axis_ops_shapes() {
    let g = graph();
    let x = g.input("x", DType::F32, shape!["B", "S", 6]).unwrap();
    let u = g.unsqueeze(x, &[1, -1]).unwrap();
    assert_eq!(shown(&g, u), "[B,1,S,6,1]");
    assert_eq!(g.shape_of(g.squeeze(u, &[1, -1]).unwrap()), g.shape_of(x));
    let parts = g.split(x, -1, &[2, 4]).unwrap();
    assert_eq!((shown(&g, parts[0]), shown(&g, parts[1])), ("[B,S,2]".into(), "[B,S,4]".into()));
    let idx = g.input("idx", DType::I64, shape!["N", 2]).unwrap();
    assert_eq!(shown(&g, g.gather(x, idx, 1).unwrap()), "[B,N,2,6]");
    assert_eq!(shown(&g, g.gather(x, g.const_i64(&[], &[0]), 0).unwrap()), "[S,6]");
}

#[test]
fn matmul_inner_dims_mismatch_names_the_node() {
    let g = graph();
    let x = g.input("x", DType::F32, shape!["B", "S", 64]).unwrap();
    let w = g.input("w", DType::F32, shape![32, 16]).unwrap();
    let _s = g.scope("blocks.3");
    assert_rejected(g.matmul(x, w), "blocks.3.matmul", &["[B,S,64]", "[32,16]", "inner dims"]);
    assert_rejected(g.linear(x, "to_q", 32, 8, true), "blocks.3.matmul", &["to_q", "32"]);
}

#[test]
fn concat_off_axis_mismatch_is_rejected() {
    let g = graph();
    let a = g.input("a", DType::F32, shape!["B", 4, 8]).unwrap();
    let b = g.input("b", DType::F32, shape!["B", 5, 8]).unwrap();
    let _s = g.scope("joint");
    assert_rejected(g.concat(&[a, b], -1), "joint.concat", &["[B,4,8]", "[B,5,8]", "off axis 2"]);
    assert!(g.concat(&[a, b], 1).is_ok(), "the mismatched axis itself may differ");
}

#[test]
fn broadcast_failure_is_rejected() {
    let g = graph();
    let a = g.input("a", DType::F32, shape!["B", 3]).unwrap();
    let b = g.input("b", DType::F32, shape![4]).unwrap();
    assert_rejected(g.add(a, b), "add", &["[B,3]", "[4]", "do not broadcast"]);
    let s = g.input("s", DType::F32, shape!["S"]).unwrap();
    let t = g.input("t", DType::F32, shape!["T"]).unwrap();
    assert_rejected(g.mul(s, t), "mul", &["[S]", "[T]"]);
    let i = g.input("i", DType::I64, shape!["B", 3]).unwrap();
    assert_rejected(g.sub(a, i), "sub", &["f32", "i64"]);
}

#[test]
fn reshape_element_count_mismatch_is_rejected() {
    let g = graph();
    let x = g.input("x", DType::F32, shape![2, 3, 4]).unwrap();
    let _s = g.scope("proj");
    assert_rejected(g.reshape(x, &[4, 5]), "proj.reshape", &["[2,3,4]", "[4, 5]"]);
    assert_rejected(g.reshape(x, &[5, -1]), "proj.reshape", &["[2,3,4]"]);
    let y = g.input("y", DType::F32, shape!["B", "S", 64]).unwrap();
    assert_rejected(g.reshape(y, &[0, 0, 4, 15]), "proj.reshape", &["[B,S,64]"]);
    assert_rejected(g.reshape(y, &[0, 0, 0, 0]), "proj.reshape", &["0 beyond input rank"]);
    assert_rejected(g.reshape(y, &[-1, -1, 64]), "proj.reshape", &["bad spec"]);
}

#[test]
fn layer_and_attention_mismatches_are_rejected() {
    let g = graph();
    let q = g.input("q", DType::F32, shape!["B", 3, "S", 8]).unwrap();
    let k = g.input("k", DType::F32, shape!["B", 2, "T", 8]).unwrap();
    let _s = g.scope("attn");
    assert_rejected(g.attention(q, k, k, None, 1.0), "attn.attention", &["3 query heads vs 2 kv heads"]);
    let k8 = g.input("k8", DType::F32, shape!["B", 3, "T", 4]).unwrap();
    assert_rejected(g.attention(q, k8, k8, None, 1.0), "attn.attention", &["[B,3,S,8]", "[B,3,T,4]"]);
    let mask = g.input("mask", DType::F32, shape!["B", 1, "S", 5]).unwrap();
    let k3 = g.input("k3", DType::F32, shape!["B", 3, 4, 8]).unwrap();
    assert_rejected(g.attention(q, k3, k3, Some(mask), 1.0), "attn.attention", &["mask [B,1,S,5]"]);
    let cos = g.input("cos", DType::F32, shape!["S", 3]).unwrap();
    assert_rejected(g.rope(q, cos, cos, RopeStyle::Halves), "attn.rotaryembedding", &["[S,3]", "[S,4]"]);
    let cos4 = g.input("cos4", DType::F32, shape!["S", 4]).unwrap();
    assert_rejected(g.rope(q, cos4, cos, RopeStyle::Halves), "attn.rotaryembedding", &["sin [S,3]"]);
    let img = g.input("img", DType::F32, shape!["B", 4, "H", "W"]).unwrap();
    assert_rejected(g.conv2d(img, "conv_in", (3, 8), 3, 1, 1), "attn.conv", &["conv_in", "[B,4,H,W]"]);
    assert_rejected(g.group_norm(img, "norm", 3, 4, 1e-6), "attn.groupnorm", &["norm", "3 groups"]);
    let tiny = g.input("tiny", DType::F32, shape![1, 4, 2, 2]).unwrap();
    assert_rejected(g.conv2d(tiny, "conv", (4, 4), 3, 1, 0), "attn.conv", &["kernel 3"]);
    assert_rejected(
        g.space_to_depth(g.input("odd", DType::F32, shape![1, 4, 3, 4]).unwrap(), 2),
        "attn.spacetodepth",
        &["[1,4,3,4]"],
    );
}

#[test]
fn axis_op_mismatches_are_rejected() {
    let g = graph();
    let x = g.input("x", DType::F32, shape!["B", 3, 6]).unwrap();
    assert_rejected(g.split(x, -1, &[2, 2]), "split", &["do not sum to 6"]);
    assert_rejected(g.squeeze(x, &[1]), "squeeze", &["axis 1", "is not 1"]);
    assert_rejected(g.transpose(x, &[0, 0, 1]), "transpose", &["[0, 0, 1]"]);
    assert_rejected(g.slice(x, 3, 0, 1), "slice", &["axis out of range"]);
    assert_rejected(g.where_(x, x, x), "where", &["bool"]);
    assert!(g.weight("w", &[2, 3]).is_ok());
    let e = g.weight("w", &[3, 2]).map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("'w'") && e.contains("[2,3]") && e.contains("[3,2]"), "{e}");
}

#[test]
fn dims_fold_as_expressions() {
    let h = Dim::sym("H");
    assert_eq!(h.div(2).to_string(), "H/2");
    assert_eq!(Dim::Fixed(2).mul(&h.div(2)), h);
    assert_eq!(h.add(&Dim::Fixed(1)).div(2).mul(&Dim::Fixed(2)).to_string(), "H+1");
    assert_eq!(Dim::Fixed(3).mul(&h.div(2)).to_string(), "3*(H/2)");
    assert_eq!(Dim::sym("L").add(&Dim::sym("S")).to_string(), "L+S");
    let (s, t): (Shape, Shape) = (shape!["B", 2], shape![3, 1, 1]);
    assert_eq!(flux2_graphs::broadcast(&s, &t), Some(shape![3, "B", 2]));
}
