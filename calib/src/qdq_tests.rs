//! Structural tests of Q/DQ insertion on small synthetic graphs (numerical tests against
//! ONNX Runtime are in `tests/tests/calib_qdq.rs`).

use std::collections::{BTreeMap, BTreeSet};

use flux2_graphs::{shape, DType, Graph, Target};

use super::*;
use crate::layers::find_layers;
use crate::onnx_file::{write_model, DataMode, OnnxFile};

fn weight_values(name: &str, n: usize) -> Vec<f32> {
    let seed = name.bytes().fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
    (0..n).map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0).collect()
}

/// x [B,S,8] → linear a (8→6) → SiLU → linear b (6→4) and linear c (6→4) on the same input;
/// img [B,3,H,W] → conv (3→5, 3×3).
fn model(dir: &std::path::Path) -> OnnxFile {
    let g = Graph::new(Target::Ort, DType::F32);
    let build = || -> flux2_graphs::Result<()> {
        let x = g.input("x", DType::F32, shape!["B", "S", 8])?;
        let h = g.silu(g.linear(x, "a", 8, 6, false)?)?;
        let b = g.linear(h, "b", 6, 4, true)?;
        let c = g.linear(h, "c", 6, 4, false)?;
        g.output(g.add(b, c)?, "y")?;
        let img = g.input("img", DType::F32, shape!["B", 3, "H", "W"])?;
        g.output(g.conv2d(img, "conv", (3, 5), 3, 1, 1)?, "z")
    };
    build().unwrap_or_else(|e| panic!("{e}"));
    let mut m = g.finish("t").unwrap_or_else(|e| panic!("{e}"));
    m.inline_weights(|w| Some(weight_values(&w.name, w.shape.iter().product())))
        .unwrap_or_else(|e| panic!("{e}"));
    let path = dir.join("t.onnx");
    std::fs::write(&path, m.to_bytes()).unwrap_or_else(|e| panic!("{e}"));
    OnnxFile::read(&path).unwrap_or_else(|e| panic!("{e}"))
}

fn plan_all(file: &OnnxFile, format: Format, smooth: bool) -> (Vec<Layer>, QdqModel) {
    let layers = find_layers(file).unwrap_or_else(|e| panic!("{e}"));
    let names: BTreeSet<String> = layers.iter().map(|l| l.name.clone()).collect();
    let acts: BTreeMap<String, ActivationQuant> = layers
        .iter()
        .map(|l| {
            let s = smooth.then(|| (0..l.in_channels()).map(|j| 0.5 + j as f32 * 0.25).collect());
            (l.activation.clone(), ActivationQuant { amax: 2.0, smooth: s })
        })
        .collect();
    let plan = QdqPlan { format, layers: &names, sites: &[], activations: &acts };
    let q = insert_qdq(file, &layers, &plan).unwrap_or_else(|e| panic!("{e}"));
    (layers, q)
}

fn init<'a>(q: &'a QdqModel, name: &str) -> &'a flux2_graphs::onnx::TensorProto {
    let g = q.proto.graph.as_ref().unwrap_or_else(|| unreachable!());
    g.initializer.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no initializer {name}"))
}

#[test]
fn finds_matmul_and_conv_layers_with_folded_shapes() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let layers = find_layers(&model(dir.path())).unwrap_or_else(|e| panic!("{e}"));
    let got: Vec<(&str, LayerOp, Vec<usize>)> =
        layers.iter().map(|l| (l.name.as_str(), l.op, l.weight_shape.clone())).collect();
    assert_eq!(
        got,
        vec![
            ("a", LayerOp::MatMul, vec![8, 6]),
            ("b", LayerOp::MatMul, vec![6, 4]),
            ("c", LayerOp::MatMul, vec![6, 4]),
            ("conv", LayerOp::Conv, vec![5, 3, 3, 3]),
        ]
    );
    assert_eq!(layers[1].activation, layers[2].activation, "b and c share their input");
}

#[test]
fn int8_weights_are_per_channel_pre_transposed_and_feed_the_matmul() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = model(dir.path());
    let (layers, q) = plan_all(&file, Format::Int8, false);
    let g = q.proto.graph.as_ref().unwrap_or_else(|| unreachable!());
    assert!(!g.node.iter().any(|n| n.op_type == "Transpose"), "weight transposes are folded");
    assert!(!g.initializer.iter().any(|t| t.name == "a.weight"), "float weight pruned");
    // a Q/DQ pair per consumer (b and c share their input but not their quantiser), a DQ per weight
    let count = |op: &str| g.node.iter().filter(|n| n.op_type == op).count();
    assert_eq!(count("QuantizeLinear"), 4);
    assert_eq!(count("DequantizeLinear"), 8);
    for n in g.node.iter().filter(|n| n.op_type == "QuantizeLinear") {
        let readers = g.node.iter().filter(|m| m.input.contains(&n.output[0])).count();
        assert_eq!(readers, 1, "{} feeds one DQ", n.name);
    }
    for l in &layers {
        let node = g.node.iter().find(|n| n.name == l.node).unwrap_or_else(|| panic!("{}", l.node));
        for input in &node.input[..2] {
            let producer = g.node.iter().find(|n| n.output.contains(input));
            assert_eq!(
                producer.map(|p| p.op_type.as_str()),
                Some("DequantizeLinear"),
                "{} input {input}",
                l.name
            );
        }
        let wdq = g.node.iter().find(|n| n.output[0] == node.input[1]).unwrap_or_else(|| unreachable!());
        let axis = wdq.attribute.iter().find(|a| a.name == "axis").map(|a| a.i);
        let want_axis = if l.op == LayerOp::MatMul { 1 } else { 0 };
        assert_eq!(axis, Some(want_axis), "{}", l.name);
        let wq = init(&q, &wdq.input[0]);
        assert_eq!(wq.data_type, 3, "int8");
        assert_eq!(wq.dims, l.weight_shape.iter().map(|&d| d as i64).collect::<Vec<_>>());
        let scale = init(&q, &wdq.input[1]);
        let channels = l.weight_shape[want_axis as usize];
        assert_eq!(scale.dims, vec![channels as i64]);
        assert_eq!(init(&q, &wdq.input[2]).dims, vec![channels as i64]);
    }
}

#[test]
fn dequantised_weights_are_within_half_a_step_per_channel() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = model(dir.path());
    let (_, q) = plan_all(&file, Format::Int8, false);
    // layer a: W (6, 8) stored (out, in); the quantised tensor is (8, 6) = Wᵀ
    let w = weight_values("a.weight", 48);
    let (wq, ws) = (init(&q, "a.weight_quantized"), &q.weights["a"]);
    for i in 0..8 {
        for o in 0..6 {
            let v = w[o * 8 + i];
            let deq = (wq.raw_data[i * 6 + o] as i8) as f32 * ws.scales[o];
            assert!((deq - v).abs() <= ws.scales[o] / 2.0 + 1e-7, "W[{o},{i}] = {v}, dequantised {deq}");
        }
    }
    // each column's largest |w| maps to ±127
    for o in 0..6 {
        let amax = (0..8).map(|i| w[o * 8 + i].abs()).fold(0f32, f32::max);
        assert_eq!(ws.scales[o], amax / 127.0);
    }
}

#[test]
fn fp8_uses_per_tensor_scales_and_float8_types() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = model(dir.path());
    let (_, q) = plan_all(&file, Format::Fp8, false);
    let g = q.proto.graph.as_ref().unwrap_or_else(|| unreachable!());
    for n in g.node.iter().filter(|n| n.op_type == "DequantizeLinear" || n.op_type == "QuantizeLinear") {
        assert!(n.attribute.iter().all(|a| a.name != "axis"), "{} has an axis", n.name);
        assert_eq!(init(&q, &n.input[1]).dims, Vec::<i64>::new(), "{} scale is a scalar", n.name);
        assert_eq!(init(&q, &n.input[2]).data_type, 17, "{} zero point is FLOAT8E4M3FN", n.name);
    }
    // FP8 weights pass through a same-shape Reshape (ONNX Runtime fusion workaround)
    for op in g.node.iter().filter(|n| n.op_type == "MatMul" || n.op_type == "Conv") {
        let r = g.node.iter().find(|n| n.output[0] == op.input[1]).unwrap_or_else(|| unreachable!());
        assert_eq!(r.op_type, "Reshape", "{}", op.name);
    }
    let wq = init(&q, "conv.weight_quantized");
    assert_eq!(wq.data_type, 17);
    let w = weight_values("conv.weight", 135);
    let s = q.weights["conv"].scales[0];
    assert_eq!(s, w.iter().fold(0f32, |a, v| a.max(v.abs())) / 448.0);
    for (b, v) in wq.raw_data.iter().zip(&w) {
        assert_eq!(*b, crate::formats::f32_to_e4m3fn(v / s));
    }
}

#[test]
fn smoothing_adds_one_mul_per_activation_and_scales_weight_rows() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = model(dir.path());
    let (_, plain) = plan_all(&file, Format::Int8, false);
    let (_, smooth) = plan_all(&file, Format::Int8, true);
    let g = smooth.proto.graph.as_ref().unwrap_or_else(|| unreachable!());
    let smooth_muls = g.node.iter().filter(|n| n.op_type == "Mul" && n.input[1].ends_with(".smooth_inv"));
    assert_eq!(smooth_muls.count(), 3);
    // the smoothed weight of a, dequantised, equals diag(s)·Wᵀ within half a step
    let w = weight_values("a.weight", 48);
    let (wq, ws) = (init(&smooth, "a.weight_quantized"), &smooth.weights["a"]);
    for i in 0..8 {
        let s = 0.5 + i as f32 * 0.25;
        for o in 0..6 {
            let deq = (wq.raw_data[i * 6 + o] as i8) as f32 * ws.scales[o];
            assert!((deq - s * w[o * 8 + i]).abs() <= ws.scales[o] / 2.0 + 1e-6);
        }
    }
    assert_ne!(plain.weights["a"], smooth.weights["a"]);
}

#[test]
fn partial_selection_keeps_float_layers_and_writes_self_contained() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = model(dir.path());
    let layers = find_layers(&file).unwrap_or_else(|e| panic!("{e}"));
    let names: BTreeSet<String> = ["b".to_string()].into();
    let acts = BTreeMap::from([(layers[1].activation.clone(), ActivationQuant { amax: 1.0, smooth: None })]);
    let q = insert_qdq(
        &file,
        &layers,
        &QdqPlan { format: Format::Int8, layers: &names, sites: &[], activations: &acts },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let g = q.proto.graph.as_ref().unwrap_or_else(|| unreachable!());
    assert_eq!(g.node.iter().filter(|n| n.op_type == "Transpose").count(), 2, "a and c keep theirs");
    assert_eq!(q.weights.keys().collect::<Vec<_>>(), vec!["b"]);
    let out = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = write_model(&q.proto, &file, out.path(), "q", DataMode::SelfContained)
        .unwrap_or_else(|e| panic!("{e}"));
    let back = OnnxFile::read(&path).unwrap_or_else(|e| panic!("{e}"));
    let t = back.initializer("b.weight_quantized").unwrap_or_else(|| unreachable!());
    assert_eq!(back.tensor_bytes(t).ok(), Some(init(&q, "b.weight_quantized").raw_data.clone()));
    // an unknown layer name is an error that names it
    let bad: BTreeSet<String> = ["nope".to_string()].into();
    let e = insert_qdq(
        &file,
        &layers,
        &QdqPlan { format: Format::Int8, layers: &bad, sites: &[], activations: &acts },
    );
    assert!(e.err().map(|e| e.to_string()).unwrap_or_default().contains("'nope'"));
}

#[test]
fn fp8_activation_after_unsqueeze_gets_a_unit_mul_and_int8_does_not() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let g = Graph::new(Target::Ort, DType::F32);
    let build = || -> flux2_graphs::Result<()> {
        let x = g.input("x", DType::F32, shape!["B", 8])?;
        let y = g.linear(g.unsqueeze(x, &[1])?, "p", 8, 4, false)?; // [B, 1, 4]
        g.output(y, "y")
    };
    build().unwrap_or_else(|e| panic!("{e}"));
    let mut m = g.finish("u").unwrap_or_else(|e| panic!("{e}"));
    m.inline_weights(|w| Some(weight_values(&w.name, w.shape.iter().product())))
        .unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("u.onnx");
    std::fs::write(&path, m.to_bytes()).unwrap_or_else(|e| panic!("{e}"));
    let file = OnnxFile::read(&path).unwrap_or_else(|e| panic!("{e}"));
    for (format, want) in [(Format::Fp8, true), (Format::Int8, false)] {
        let (_, q) = plan_all(&file, format, false);
        let g = q.proto.graph.as_ref().unwrap_or_else(|| unreachable!());
        let qn = g.node.iter().find(|n| n.op_type == "QuantizeLinear").unwrap_or_else(|| unreachable!());
        let producer = g.node.iter().find(|n| n.output[0] == qn.input[0]).map(|n| n.op_type.as_str());
        assert_eq!(producer == Some("Mul"), want, "{format:?}: Q fed by {producer:?}");
        if want {
            let ones = init(
                &q,
                &g.node.iter().find(|n| n.op_type == "Mul").map(|n| n.input[1].clone()).unwrap_or_default(),
            );
            assert!(ones
                .raw_data
                .chunks_exact(4)
                .all(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) == 1.0));
        }
    }
}

#[test]
fn int8_conv_gets_uint8_input_and_output_pairs_that_keep_the_output_name() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = model(dir.path());
    let layers = find_layers(&file).unwrap_or_else(|e| panic!("{e}"));
    let conv = layers.iter().find(|l| l.op == LayerOp::Conv).unwrap_or_else(|| unreachable!());
    let names: BTreeSet<String> = std::iter::once(conv.name.clone()).collect();
    let mut acts = BTreeMap::new();
    acts.insert(conv.activation.clone(), ActivationQuant { amax: 2.0, smooth: None });
    acts.insert(conv.output.clone(), ActivationQuant { amax: 3.0, smooth: None });
    let plan = QdqPlan { format: Format::Int8, layers: &names, sites: &[], activations: &acts };
    let mut q = insert_qdq(&file, &layers, &plan).unwrap_or_else(|e| panic!("{e}"));
    let g = q.proto.graph.clone().unwrap_or_default();
    let node = g.node.iter().find(|n| n.op_type == "Conv").unwrap_or_else(|| unreachable!());
    // DQ → Conv → Q → DQ, the DQ writing the conv's original output name
    let quant = g.node.iter().find(|n| n.op_type == "QuantizeLinear" && n.input[0] == node.output[0]);
    let quant = quant.unwrap_or_else(|| panic!("no Q on the conv output {}", node.output[0]));
    let dq = g.node.iter().find(|n| n.op_type == "DequantizeLinear" && n.input[0] == quant.output[0]);
    assert_eq!(dq.map(|n| n.output[0].as_str()), Some(conv.output.as_str()));
    let zp = init(&q, &quant.input[2]);
    assert_eq!((zp.data_type, zp.raw_data.clone()), (dtype::UINT8, vec![CONV_ZERO_POINT]));
    let scale = f32::from_le_bytes(init(&q, &quant.input[1]).raw_data[..4].try_into().unwrap_or([0; 4]));
    assert_eq!(scale, 3.0 / 127.0);
    let input_dq = g.node.iter().find(|n| n.output[0] == node.input[0]).unwrap_or_else(|| unreachable!());
    assert_eq!(init(&q, &input_dq.input[2]).data_type, dtype::UINT8);
    // TensorRT's form: the same scales, INT8 with zero point 0
    assert_eq!(signed_activations(&mut q.proto), 2, "one zero point per pair");
    let zp = init(&q, &quant.input[2]);
    assert_eq!((zp.data_type, zp.raw_data.clone()), (dtype::INT8, vec![0]));
    // without an output range the conv keeps its float output (no Q after it)
    acts.remove(&conv.output);
    let plan = QdqPlan { format: Format::Int8, layers: &names, sites: &[], activations: &acts };
    let q = insert_qdq(&file, &layers, &plan).unwrap_or_else(|e| panic!("{e}"));
    let g = q.proto.graph.unwrap_or_default();
    let node = g.node.iter().find(|n| n.op_type == "Conv").unwrap_or_else(|| unreachable!());
    assert_eq!(node.output[0], conv.output);
    assert!(!g.node.iter().any(|n| n.op_type == "QuantizeLinear" && n.input[0] == node.output[0]));
}
