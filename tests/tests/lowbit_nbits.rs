//! `--lowbit-op matmulnbits`: weight-only linears written as ONNX Runtime's `MatMulNBits`
//! directly. On the DiT and text-encoder fixtures: every linear the standard form quantises
//! becomes one `MatMulNBits` (no `DequantizeLinear`, no `Transpose` of a quantised weight left),
//! and the graph computes the same outputs as the standard form with every optimisation off
//! (the dequantised weights in float matmuls), both on the fast path (pre-packed kernels) and in
//! the runtime's mapped mode (no pre-packing, basic optimisations), INT8 and INT4, with a
//! partial last block.

use std::collections::HashMap;
use std::path::Path;

use flux2_calib::onnx_file::OnnxFile;
use flux2_exporter::export::{export, ExportRequest};
use flux2_exporter::lowbit::{Bits, LowbitOptions};
use flux2_exporter::{Kind, ModelSource, WeightMode};
use flux2_graphs::Target;
use flux2_runtime::tensors::run;
use flux2_runtime::{cpu_session, Input, SessionOptions};
use flux2_tests::export::{onnx_check, options};
use flux2_tests::{fixture, load_tensors, nmse};

fn export_with(kind: Kind, out: &Path, lo: LowbitOptions) {
    let ckpt = match kind {
        Kind::Transformer => fixture("dit/klein"),
        _ => fixture("text/qwen3/text_encoder"),
    };
    let source = ModelSource::open(&ckpt).unwrap_or_else(|e| panic!("{e}"));
    let mut opts = options(Target::Ort, None);
    if kind == Kind::TextEncoder {
        opts.text_layers = Some(vec![1, 3, 5]);
    }
    let mut req = ExportRequest::new(Some(vec![kind]), opts, WeightMode::Copy);
    req.lowbit = Some(lo);
    export(&source, out, &req, &mut |_| {}).unwrap_or_else(|e| panic!("exporting {}: {e}", ckpt.display()));
}

fn inputs(kind: Kind) -> Vec<(&'static str, Input)> {
    if kind == Kind::Transformer {
        let io = load_tensors(&fixture("dit/klein/io.safetensors")).unwrap_or_else(|e| panic!("{e}"));
        ["hidden_states", "encoder_hidden_states", "timestep", "img_ids", "txt_ids"]
            .into_iter()
            .filter_map(|n| io.get(n).map(|t| (n, t.clone())))
            .collect()
    } else {
        let io = load_tensors(&fixture("text/qwen3/io.safetensors")).unwrap_or_else(|e| panic!("{e}"));
        vec![("input_ids", io["input_ids"].clone()), ("attention_mask", io["attention_mask"].clone())]
    }
}

fn run_with(path: &Path, inputs: &[(&'static str, Input)], o: &SessionOptions) -> ndarray::ArrayD<f32> {
    let mut s = cpu_session(path, o).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = run(&mut s, inputs.to_vec()).unwrap_or_else(|e| panic!("{e}"));
    let key = out.keys().next().cloned().unwrap_or_default();
    out.remove(&key).unwrap_or_else(|| panic!("no output"))
}

fn ops(path: &Path) -> HashMap<String, usize> {
    let f = OnnxFile::read(path).unwrap_or_else(|e| panic!("{e}"));
    let mut ops = HashMap::new();
    for n in &f.graph().node {
        *ops.entry(n.op_type.clone()).or_insert(0) += 1;
    }
    ops
}

fn check(kind: Kind, bits: Bits, block: usize) {
    let what = format!("{kind:?} {bits:?} block {block}");
    let stem = if kind == Kind::Transformer { "transformer" } else { "text_encoder" };
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (dq_dir, nb_dir) = (tmp.path().join("dq"), tmp.path().join("nbits"));
    let lo = LowbitOptions::fixed(bits, block, false);
    export_with(kind, &dq_dir, lo);
    export_with(kind, &nb_dir, LowbitOptions { nbits_op: true, ..lo });
    let (dq, nb) = (dq_dir.join(format!("{stem}.onnx")), nb_dir.join(format!("{stem}.onnx")));
    onnx_check(&nb);

    // structure: one MatMulNBits per standard-form DQ linear, nothing else changed
    let (dq_ops, nb_ops) = (ops(&dq), ops(&nb));
    let linears = dq_ops.get("DequantizeLinear").copied().unwrap_or(0);
    assert!(linears > 0, "{what}: nothing quantised");
    assert_eq!(nb_ops.get("MatMulNBits").copied(), Some(linears), "{what}: {nb_ops:?}");
    assert_eq!(nb_ops.get("DequantizeLinear"), None, "{what}");
    let matmuls = |o: &HashMap<String, usize>| o.get("MatMul").copied().unwrap_or(0);
    assert_eq!(matmuls(&nb_ops) + linears, matmuls(&dq_ops), "{what}: float MatMuls");
    let transposes = |o: &HashMap<String, usize>| o.get("Transpose").copied().unwrap_or(0);
    assert_eq!(transposes(&nb_ops), transposes(&dq_ops), "{what}: the DQ replaced each Transpose already");
    let f = OnnxFile::read(&nb).unwrap_or_else(|e| panic!("{e}"));
    assert!(f.proto.opset_import.iter().any(|o| o.domain == "com.microsoft"), "{what}: contrib opset");

    // values: the standard form run as written (DQ + float MatMul) is the reference
    let x = inputs(kind);
    let base = SessionOptions { intra_threads: 2, cache: false, ..SessionOptions::default() };
    let reference = run_with(&dq, &x, &SessionOptions { optimization: false, ..base.clone() });
    for (mode, mapped) in [("pre-packed", false), ("mapped", true)] {
        let y = run_with(&nb, &x, &SessionOptions { mapped: Some(mapped), ..base.clone() });
        let e = nmse(&reference, &y);
        eprintln!("{what}: MatMulNBits ({mode}) vs DQ + MatMul nmse {e:.2e}");
        assert!(e < 1e-10, "{what} ({mode}): nmse {e:e}");
    }
    // and the standard form in mapped mode (DQ kept, basic optimisations) computes the same
    let y = run_with(&dq, &x, &SessionOptions { mapped: Some(true), ..base });
    let e = nmse(&reference, &y);
    assert!(e < 1e-10, "{what} (standard form, mapped): nmse {e:e}");
}

#[test]
fn dit_matmulnbits_computes_the_dequantised_weights() {
    flux2_tests::exact_nbits();
    check(Kind::Transformer, Bits::Int4, 32); // K = 48: a partial last block
    check(Kind::Transformer, Bits::Int8, 16);
}

#[test]
fn text_encoder_matmulnbits_computes_the_dequantised_weights() {
    flux2_tests::exact_nbits();
    check(Kind::TextEncoder, Bits::Int4, 16);
}
