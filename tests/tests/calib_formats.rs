//! The Rust INT8 / FP8 E4M3FN quantisers against ONNX Runtime's own `QuantizeLinear →
//! DequantizeLinear` (opset 23) on a sweep of values: ties, subnormals, saturation, signs.
//! Bit-exact agreement means scales and the simulated error in calibration match what the
//! runtime computes.

use flux2_calib::formats::{e4m3fn_to_f32, Format};
use flux2_graphs::onnx::{
    tensor_shape_proto, type_proto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};
use flux2_runtime::{cpu_session, run, Input, SessionOptions};
use ndarray::{ArrayD, IxDyn};
use prost::Message;

fn vi(name: &str, n: usize) -> ValueInfoProto {
    let dim = vec![tensor_shape_proto::Dimension {
        value: Some(tensor_shape_proto::dimension::Value::DimValue(n as i64)),
        denotation: String::new(),
    }];
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: 1,
                shape: Some(TensorShapeProto { dim }),
            })),
            denotation: String::new(),
        }),
        doc_string: String::new(),
    }
}

/// x → QuantizeLinear(scale, zero point of `format`) → DequantizeLinear → y.
fn qdq_model(format: Format, scale: f32, n: usize) -> ModelProto {
    let t = |name: &str, data_type: i32, raw: Vec<u8>| TensorProto {
        name: name.into(),
        data_type,
        raw_data: raw,
        ..Default::default()
    };
    let node = |op: &str, i: &[&str], o: &str| NodeProto {
        input: i.iter().map(|s| s.to_string()).collect(),
        output: vec![o.into()],
        name: o.into(),
        op_type: op.into(),
        ..Default::default()
    };
    ModelProto {
        ir_version: 10,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 23 }],
        graph: Some(GraphProto {
            node: vec![
                node("QuantizeLinear", &["x", "s", "z"], "q"),
                node("DequantizeLinear", &["q", "s", "z"], "y"),
            ],
            name: "qdq".into(),
            initializer: vec![t("s", 1, scale.to_le_bytes().to_vec()), t("z", format.onnx_type(), vec![0])],
            input: vec![vi("x", n)],
            output: vec![vi("y", n)],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn run_proto(model: &ModelProto, x: ArrayD<f32>) -> ArrayD<f32> {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("qdq.onnx");
    std::fs::write(&path, model.encode_to_vec()).unwrap_or_else(|e| panic!("{e}"));
    let mut s = cpu_session(&path, &SessionOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let mut out = run(&mut s, vec![("x", Input::F32(x))]).unwrap_or_else(|e| panic!("{e}"));
    out.remove("y").unwrap_or_else(|| panic!("no output y"))
}

fn sweep(scale: f32) -> Vec<f32> {
    let mut v: Vec<f32> = (0..0x7fu8).map(|b| e4m3fn_to_f32(b) * scale).collect();
    // midpoints (ties), quarter points, and a dense ramp through the int8 range
    let codes: Vec<f32> = (0..0x7fu8).map(e4m3fn_to_f32).collect();
    for w in codes.windows(2) {
        for k in 1..4 {
            v.push((w[0] + (w[1] - w[0]) * k as f32 / 4.0) * scale);
        }
    }
    v.extend((-3000..=3000).map(|i| i as f32 * 0.0517 * scale));
    v.extend([1e9, -1e9, 500.0 * scale, -449.0 * scale, 127.5 * scale, -128.5 * scale, 1e-30, -1e-30]);
    let neg: Vec<f32> = v.iter().map(|x| -x).collect();
    v.extend(neg);
    v
}

#[test]
fn fake_quant_matches_onnx_runtime_bit_for_bit() {
    for format in [Format::Int8, Format::Fp8] {
        for scale in [1.0f32, 0.0123, 3.7] {
            let xs = sweep(scale);
            let x = ArrayD::from_shape_vec(IxDyn(&[xs.len()]), xs.clone()).unwrap_or_else(|e| panic!("{e}"));
            let y = run_proto(&qdq_model(format, scale, xs.len()), x);
            let mut bad = Vec::new();
            for (x, ort) in xs.iter().zip(y.iter()) {
                let ours = format.fake_quant(*x, scale);
                if ours.to_bits() != ort.to_bits() && !(ours == 0.0 && *ort == 0.0) {
                    bad.push(format!("x={x:e}: ours {ours:e}, ORT {ort:e}"));
                }
            }
            assert!(
                bad.is_empty(),
                "{format:?} scale {scale}: {} mismatches, e.g. {:?}",
                bad.len(),
                &bad[..bad.len().min(5)]
            );
        }
    }
}
