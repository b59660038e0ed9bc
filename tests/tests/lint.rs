//! `flux2 check` (runtime/src/lint): our own exported and calibrated graphs pass every target
//! they are meant for, and planted violations (an unsupported op, FP8 Q/DQ on Orin, a misplaced
//! Q/DQ, a weight quantized on the wrong axis, an input without a profile, external data outside
//! the folder) are each caught with the graph file and the node, input or initializer named.

#[path = "lint_support/mod.rs"]
mod support;

use std::path::Path;

use flux2_calib::formats::Format;
use flux2_deploy::lint::{check_dir, Finding, LintOptions, LintTarget, Report, Severity};
use flux2_exporter::manifest::Manifest;
use flux2_graphs::Target;
use flux2_runtime::trt::probe::TrtVersion;
use flux2_runtime::trt::GpuTarget;
use support::{calibrated, export_pipeline, read_graph, write_graph};

fn lint(dir: &Path, target: LintTarget, gpu: Option<GpuTarget>) -> Report {
    let opts = LintOptions { target, gpu, trt_version: None, graphs: None };
    check_dir(dir, &opts).unwrap()
}

fn errors(r: &Report) -> Vec<&Finding> {
    r.errors().collect()
}

fn assert_clean(r: &Report, what: &str) {
    let e = errors(r);
    assert!(
        e.is_empty(),
        "{what}: unexpected errors:\n{}",
        e.iter().map(|f| f.to_string()).collect::<Vec<_>>().join("\n")
    );
    let parts = r.graphs.iter().filter(|g| g.name.starts_with("dit_")).count();
    assert_eq!(r.graphs.len() - parts, 4, "{what}: all four pipeline graphs checked");
    // float exports carry the four step-caching DiT parts; calibrated folders leave them out
    assert!(parts == 0 || parts == 4, "{what}: {parts} DiT parts checked");
}

/// The error with `rule`, which must exist.
fn find<'a>(r: &'a Report, rule: &str) -> &'a Finding {
    r.findings.iter().find(|f| f.rule == rule && f.severity == Severity::Error).unwrap_or_else(|| {
        panic!(
            "no {rule} error in:\n{}",
            r.findings.iter().map(|f| f.to_string()).collect::<Vec<_>>().join("\n")
        )
    })
}

#[test]
fn exported_graphs_pass_their_targets() {
    let trt = export_pipeline(Target::TensorRt);
    for gpu in [None, Some(GpuTarget::Orin), Some(GpuTarget::Hopper), Some(GpuTarget::Ampere)] {
        assert_clean(
            &lint(trt.path(), LintTarget::TensorRt10, gpu),
            &format!("trt export, tensorrt10 {gpu:?}"),
        );
    }
    for gpu in [Some(GpuTarget::Hopper), Some(GpuTarget::Thor)] {
        let r = lint(trt.path(), LintTarget::TensorRt11, gpu);
        assert_clean(&r, "trt export, tensorrt11");
        // strongly typed TensorRT 11 cannot lower an f32 graph to FP16 by flag: said as a warning
        assert!(r.warnings().any(|f| f.rule == "graph-dtype" && f.graph == "transformer.onnx"));
    }
    let ort = export_pipeline(Target::Ort);
    let r = lint(ort.path(), LintTarget::Ort, None);
    assert_clean(&r, "ort export, ort");
    assert!(r.findings.is_empty(), "{:?}", r.findings);
    assert_clean(&lint(trt.path(), LintTarget::Ort, None), "trt export on ort");
}

#[test]
fn fused_ort_graphs_need_a_recent_tensorrt() {
    let ort = export_pipeline(Target::Ort);
    let r = lint(ort.path(), LintTarget::TensorRt10, Some(GpuTarget::Orin));
    // TensorRT 10.3 (JetPack 6) has no Attention / RMSNormalization importer
    let f = find(&r, "op-version");
    assert!(
        f.node.as_deref().is_some_and(|n| !n.is_empty()) && f.message.contains("needs TensorRT >="),
        "{f}"
    );
    assert!(
        r.errors()
            .any(|f| f.message.starts_with("Attention")
                && f.node.as_deref().unwrap_or("").contains("attention"))
    );
    assert!(r.warnings().any(|f| f.rule == "export-target"));
    let opts = LintOptions {
        target: LintTarget::TensorRt10,
        gpu: Some(GpuTarget::Hopper),
        trt_version: TrtVersion::parse("10.16"),
        graphs: None,
    };
    let r = check_dir(ort.path(), &opts).unwrap();
    assert!(!r.errors().any(|f| f.rule == "op-version" || f.rule == "op-unsupported"), "{:?}", errors(&r));
}

#[test]
fn calibrated_graphs_pass_and_fp8_is_refused_where_there_is_no_fp8() {
    let trt = export_pipeline(Target::TensorRt);
    let int8 = calibrated(trt.path(), Format::Int8);
    for gpu in GpuTarget::ALL {
        let r = lint(int8.path(), LintTarget::TensorRt10, Some(gpu));
        assert_clean(&r, &format!("int8 on {gpu}"));
        assert!(r.graphs.iter().all(|g| g.qdq.int8 > 0 && g.qdq.fp8 == 0), "{:?}", r.graphs);
    }
    assert_clean(&lint(int8.path(), LintTarget::TensorRt11, Some(GpuTarget::Thor)), "int8 tensorrt11");
    assert_clean(&lint(int8.path(), LintTarget::Ort, None), "int8 on ort");

    let fp8 = calibrated(trt.path(), Format::Fp8);
    for gpu in [GpuTarget::Hopper, GpuTarget::Ada, GpuTarget::Thor] {
        let r = lint(fp8.path(), LintTarget::TensorRt10, Some(gpu));
        assert_clean(&r, &format!("fp8 on {gpu}"));
        assert!(r.graphs.iter().all(|g| g.qdq.fp8 > 0), "{:?}", r.graphs);
    }
    // FP8 attention (Q/DQ on both activation inputs of the DiT's products): a warning for ORT
    let r = lint(fp8.path(), LintTarget::Ort, None);
    let f = r
        .warnings()
        .find(|f| f.rule == "qdq-ort-fp8-matmul")
        .unwrap_or_else(|| panic!("no FP8 matmul warning"));
    assert!(f.graph == "transformer.onnx" && f.message.contains("session.disable_quant_qdq"), "{f}");
    assert!(!r.has_errors(), "{:?}", errors(&r));
    for gpu in [GpuTarget::Orin, GpuTarget::Ampere] {
        let r = lint(fp8.path(), LintTarget::TensorRt10, Some(gpu));
        let f = find(&r, "qdq-fp8-gpu");
        assert!(f.node.as_deref().is_some_and(|n| n.contains("quantize")), "{f}");
        assert!(f.message.contains(gpu.name()) && f.message.contains("INT8"), "{f}");
        for g in ["transformer.onnx", "text_encoder.onnx", "vae_decoder.onnx", "vae_encoder.onnx"] {
            assert!(r.errors().any(|f| f.graph == g), "{gpu}: no error for {g}");
        }
    }
}

#[test]
fn planted_unsupported_op_is_named() {
    let trt = export_pipeline(Target::TensorRt);
    let mut m = read_graph(trt.path(), "vae_decoder.onnx");
    let g = m.graph.as_mut().unwrap();
    let i = g.node.iter().position(|n| n.op_type == "Sigmoid").unwrap();
    g.node[i].op_type = "Unique".into();
    let name = g.node[i].name.clone();
    let j = g.node.iter().position(|n| n.op_type == "Mul").unwrap();
    g.node[j].domain = "com.example".into();
    let custom = g.node[j].name.clone();
    write_graph(trt.path(), "vae_decoder.onnx", &m);
    let r = lint(trt.path(), LintTarget::TensorRt10, None);
    let f = find(&r, "op-unsupported");
    assert_eq!((f.graph.as_str(), f.node.as_deref()), ("vae_decoder.onnx", Some(name.as_str())));
    assert!(f.message.contains("Unique"), "{f}");
    let f = find(&r, "op-domain");
    assert_eq!(f.node.as_deref(), Some(custom.as_str()));
    assert!(f.to_string().contains(&custom));
}

#[test]
fn planted_misplaced_qdq_is_named() {
    let trt = export_pipeline(Target::TensorRt);
    let int8 = calibrated(trt.path(), Format::Int8);
    let mut m = read_graph(int8.path(), "transformer.onnx");
    let g = m.graph.as_mut().unwrap();
    // make a consumer read the QuantizeLinear output directly, skipping its DequantizeLinear
    let q = g.node.iter().find(|n| n.op_type == "QuantizeLinear").unwrap().clone();
    let dq =
        g.node.iter().find(|n| n.op_type == "DequantizeLinear" && n.input[0] == q.output[0]).unwrap().clone();
    let c = g.node.iter().position(|n| n.input.contains(&dq.output[0])).unwrap();
    let k = g.node[c].input.iter().position(|s| *s == dq.output[0]).unwrap();
    g.node[c].input[k] = q.output[0].clone();
    // and a DequantizeLinear that reads a float activation
    let act = g.node.iter().find(|n| n.op_type == "Mul").unwrap().output[0].clone();
    let weight_dq = g
        .node
        .iter()
        .position(|n| n.op_type == "DequantizeLinear" && n.name.contains("weight") && n.input[0] != act)
        .unwrap();
    g.node[weight_dq].input[0] = act.clone();
    let weight_dq_name = g.node[weight_dq].name.clone();
    write_graph(int8.path(), "transformer.onnx", &m);
    let r = lint(int8.path(), LintTarget::TensorRt10, Some(GpuTarget::Orin));
    let misplaced: Vec<&Finding> = r.errors().filter(|f| f.rule == "qdq-misplaced").collect();
    assert!(
        misplaced
            .iter()
            .any(|f| f.node.as_deref() == Some(q.name.as_str()) && f.message.contains("directly")),
        "{misplaced:?}"
    );
    assert!(
        misplaced
            .iter()
            .any(|f| f.node.as_deref() == Some(weight_dq_name.as_str()) && f.message.contains(&act)),
        "{misplaced:?}"
    );
    assert!(misplaced.iter().all(|f| f.graph == "transformer.onnx"));
}

#[test]
fn planted_qdq_type_axis_and_zero_point_errors() {
    let trt = export_pipeline(Target::TensorRt);
    let int8 = calibrated(trt.path(), Format::Int8);
    let mut m = read_graph(int8.path(), "text_encoder.onnx");
    let g = m.graph.as_mut().unwrap();
    // a per-channel MatMul weight quantized along its reduction axis (0) instead of its output axis (1)
    let wdq = g
        .node
        .iter()
        .position(|n| n.op_type == "DequantizeLinear" && n.attribute.iter().any(|a| a.name == "axis"))
        .unwrap();
    let weight = g.node[wdq].input[0].clone();
    let dims = g.initializer.iter().find(|t| t.name == weight).unwrap().dims.clone();
    for a in g.node[wdq].attribute.iter_mut().filter(|a| a.name == "axis") {
        a.i = 0;
    }
    let wdq_name = g.node[wdq].name.clone();
    // an activation quantizer without a zero point: ONNX then means asymmetric UINT8
    let q = g.node.iter().position(|n| n.op_type == "QuantizeLinear").unwrap();
    g.node[q].input.truncate(2);
    let q_name = g.node[q].name.clone();
    write_graph(int8.path(), "text_encoder.onnx", &m);
    let r = lint(int8.path(), LintTarget::TensorRt10, None);
    let axis = r.errors().find(|f| f.rule == "qdq-axis").unwrap_or_else(|| panic!("{:?}", errors(&r)));
    assert_eq!(axis.node.as_deref(), Some(wdq_name.as_str()));
    assert!(axis.message.contains(&weight), "{axis} ({dims:?})");
    let ty = r.errors().find(|f| f.rule == "qdq-type").unwrap_or_else(|| panic!("{:?}", errors(&r)));
    assert_eq!(ty.node.as_deref(), Some(q_name.as_str()));
    assert!(ty.message.contains("uint8"), "{ty}");
}

#[test]
fn planted_input_without_profile_escaping_external_data_and_false_precision() {
    let trt = export_pipeline(Target::TensorRt);
    let mut manifest = Manifest::read(trt.path()).unwrap();
    manifest.graphs.get_mut("vae_decoder").unwrap().dim_ranges.remove("w");
    manifest.graphs.get_mut("transformer").unwrap().dim_ranges.remove("S");
    manifest.graphs.get_mut("text_encoder").unwrap().precision = Some("fp8".into());
    manifest.write(trt.path()).unwrap();
    let mut m = read_graph(trt.path(), "vae_encoder.onnx");
    let g = m.graph.as_mut().unwrap();
    let t = g.initializer.iter_mut().find(|t| !t.external_data.is_empty()).unwrap();
    let victim = t.name.clone();
    for e in t.external_data.iter_mut().filter(|e| e.key == "location") {
        e.value = "../outside.data".into();
    }
    write_graph(trt.path(), "vae_encoder.onnx", &m);
    for target in [LintTarget::TensorRt10, LintTarget::TensorRt11, LintTarget::Ort] {
        let r = lint(trt.path(), target, None);
        let missing: Vec<&Finding> = r.errors().filter(|f| f.rule == "profile-missing").collect();
        assert!(
            missing.iter().any(|f| f.graph == "vae_decoder.onnx"
                && f.message.contains("'latents'")
                && f.message.contains("'w'")),
            "{missing:?}"
        );
        assert!(missing
            .iter()
            .any(|f| f.graph == "transformer.onnx" && f.message.contains("'hidden_states'")));
        assert!(missing.iter().any(|f| f.message.contains("'img_ids'")), "every input using S is named");
        let ext =
            r.errors().find(|f| f.rule == "external-data").unwrap_or_else(|| panic!("{:?}", errors(&r)));
        assert_eq!((ext.graph.as_str(), ext.node.as_deref()), ("vae_encoder.onnx", Some(victim.as_str())));
        assert!(ext.message.contains("../outside.data"), "{ext}");
        let p = r.errors().find(|f| f.rule == "manifest-precision").expect("precision mismatch");
        assert!(p.graph == "text_encoder.onnx" && p.message.contains("'fp8'"), "{p}");
    }
}

#[test]
fn bad_options_are_named() {
    let trt = export_pipeline(Target::TensorRt);
    let e = "tensorrt9".parse::<LintTarget>().unwrap_err().to_string();
    assert!(e.contains("--target") && e.contains("tensorrt9"));
    let opts = LintOptions {
        target: LintTarget::TensorRt11,
        gpu: None,
        trt_version: TrtVersion::parse("10.16"),
        graphs: None,
    };
    assert!(check_dir(trt.path(), &opts).unwrap_err().to_string().contains("--trt-version"));
    let opts = LintOptions { graphs: Some(vec!["unet".into()]), ..LintOptions::new(LintTarget::Ort) };
    let e = check_dir(trt.path(), &opts).unwrap_err().to_string();
    assert!(e.contains("unet") && e.contains("transformer"), "{e}");
    let e = check_dir(&trt.path().join("nope"), &LintOptions::new(LintTarget::Ort)).unwrap_err().to_string();
    assert!(e.contains("manifest.json"), "{e}");
}
