//! Weight-only low-bit export (`--weights-precision int8|int4`) on the DiT and text-encoder
//! fixtures: which MatMuls read a blocked `DequantizeLinear` and which stayed float, that ONNX
//! Runtime's CPU provider fuses every one into `MatMulNBits` (read from the graph it actually
//! runs, saved through the optimized-model path), that the fused kernels compute exactly the
//! dequantised weights (against the same graph run with every optimisation off), and that the
//! output stays within an error budget derived from the quantisation step of the weights.

use std::collections::HashMap;
use std::path::Path;

use flux2_calib::onnx_file::OnnxFile;
use flux2_exporter::export::{export, ExportRequest};
use flux2_exporter::lowbit::{keeps_float, quantise, Bits, LowbitOptions};
use flux2_exporter::{Kind, ModelSource, WeightMode};
use flux2_graphs::onnx_dtype as dtype;
use flux2_graphs::{DType, Target};
use flux2_runtime::ort_env::save_optimized;
use flux2_runtime::tensors::run;
use flux2_runtime::{cpu_session, Input, SessionOptions};
use flux2_tests::export::{onnx_check, options};
use flux2_tests::{f32_of, fixture, load_tensors, nmse};

fn export_lowbit(ckpt: &Path, out: &Path, kind: Kind, target: Target, lowbit: Option<LowbitOptions>) {
    let source = ModelSource::open(ckpt).unwrap_or_else(|e| panic!("{e}"));
    let mut opts = options(target, None);
    if kind == Kind::TextEncoder {
        opts.text_layers = Some(vec![1, 3, 5]);
    }
    let mut req = ExportRequest::new(Some(vec![kind]), opts, WeightMode::Copy);
    req.lowbit = lowbit;
    export(&source, out, &req, &mut |_| {}).unwrap_or_else(|e| panic!("exporting {}: {e}", ckpt.display()));
}

fn sess(optimization: bool) -> SessionOptions {
    SessionOptions { intra_threads: 2, optimization, ..SessionOptions::default() }
}

fn run_with(path: &Path, inputs: &[(&'static str, Input)], o: &SessionOptions) -> ndarray::ArrayD<f32> {
    let mut s = cpu_session(path, o).unwrap_or_else(|e| panic!("{e}"));
    let mut out = run(&mut s, inputs.to_vec()).unwrap_or_else(|e| panic!("{e}"));
    let key = out.keys().next().cloned().unwrap_or_default();
    out.remove(&key).unwrap_or_else(|| panic!("no output"))
}

/// (DequantizeLinear nodes, float MatMuls reading a Transpose of a weight) in the written graph,
/// with each DQ checked: INT8/INT4 codes, its output read by a MatMul as the weight.
fn structure(path: &Path, bits: Bits) -> (Vec<String>, Vec<String>) {
    let f = OnnxFile::read(path).unwrap_or_else(|e| panic!("{e}"));
    let g = f.graph();
    let inits: HashMap<&str, i32> = g.initializer.iter().map(|t| (t.name.as_str(), t.data_type)).collect();
    let producer: HashMap<&str, &flux2_graphs::onnx::NodeProto> =
        g.node.iter().flat_map(|n| n.output.iter().map(move |o| (o.as_str(), n))).collect();
    let (mut dq, mut float) = (Vec::new(), Vec::new());
    for m in g.node.iter().filter(|n| n.op_type == "MatMul") {
        match producer.get(m.input[1].as_str()) {
            Some(p) if p.op_type == "DequantizeLinear" && p.input[0].ends_with(".weight.q") => {
                let want = if bits == Bits::Int8 { dtype::INT8 } else { dtype::INT4 };
                assert_eq!(inits.get(p.input[0].as_str()), Some(&want), "{}", p.name);
                dq.push(p.input[0].trim_end_matches(".q").to_string());
            }
            Some(p) if p.op_type == "Transpose" && inits.contains_key(p.input[0].as_str()) => {
                float.push(p.input[0].clone())
            }
            _ => {}
        }
    }
    (dq, float)
}

/// Ops of the graph ONNX Runtime's CPU provider runs for `path`.
fn optimised_ops(path: &Path, work: &Path) -> HashMap<String, usize> {
    let out = work.join("optimised.onnx");
    save_optimized(path, &out, &sess(true)).unwrap_or_else(|e| panic!("{e}"));
    let f = OnnxFile::read(&out).unwrap_or_else(|e| panic!("{e}"));
    let mut ops = HashMap::new();
    for n in &f.graph().node {
        *ops.entry(n.op_type.clone()).or_insert(0) += 1;
    }
    ops
}

/// Output NMSE budget from the quantisation step: each quantised weight's error is at most half
/// a step per element, so its relative error energy is at most Σ(s/2)² / Σw² over its elements;
/// errors of successive layers add (residual stream, gain ≈ 1), so the budget is the sum over
/// the quantised weights.
fn step_budget(ckpt_tensors: &HashMap<String, Input>, quantised: &[String], bits: Bits, block: usize) -> f64 {
    let mut budget = 0.0;
    for name in quantised {
        let key =
            ckpt_tensors.keys().find(|k| k.ends_with(name.as_str())).unwrap_or_else(|| panic!("{name}"));
        let Input::F32(w) = &ckpt_tensors[key] else { panic!("{name}: not float") };
        let (n, k) = (w.shape()[0], w.shape()[1]);
        let vals: Vec<f32> = w.iter().copied().collect();
        let q = quantise(&vals, n, k, bits, block, DType::F32);
        let err: f64 = (0..k)
            .map(|kk| (0..n).map(|nn| (q.scales[(kk / block) * n + nn] as f64 / 2.0).powi(2)).sum::<f64>())
            .sum();
        let energy: f64 = vals.iter().map(|v| (*v as f64).powi(2)).sum();
        budget += err / energy.max(1e-30);
    }
    budget
}

fn dit_inputs() -> Vec<(&'static str, Input)> {
    let io = load_tensors(&fixture("dit/klein/io.safetensors")).unwrap_or_else(|e| panic!("{e}"));
    ["hidden_states", "encoder_hidden_states", "timestep", "img_ids", "txt_ids"]
        .into_iter()
        .filter_map(|n| io.get(n).map(|t| (n, t.clone())))
        .collect()
}

fn text_inputs() -> Vec<(&'static str, Input)> {
    let io = load_tensors(&fixture("text/qwen3/io.safetensors")).unwrap_or_else(|e| panic!("{e}"));
    vec![("input_ids", io["input_ids"].clone()), ("attention_mask", io["attention_mask"].clone())]
}

/// Everything for one component, precision and block size.
fn check(kind: Kind, bits: Bits, block: usize) {
    let (ckpt, stem, inputs, weights) = match kind {
        Kind::Transformer => (fixture("dit/klein"), "transformer", dit_inputs(), "dit/klein/transformer"),
        _ => (fixture("text/qwen3/text_encoder"), "text_encoder", text_inputs(), "text/qwen3/text_encoder"),
    };
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (f32_dir, q_dir) = (tmp.path().join("f32"), tmp.path().join("q"));
    let lo = LowbitOptions::fixed(bits, block, false);
    export_lowbit(&ckpt, &f32_dir, kind, Target::Ort, None);
    export_lowbit(&ckpt, &q_dir, kind, Target::Ort, Some(lo));
    let what = format!("{stem} {bits:?} block {block}");
    let onnx = q_dir.join(format!("{stem}.onnx"));
    onnx_check(&onnx);

    // structure: every linear but the policy's float ones reads a DQ
    let (dq, float) = structure(&onnx, bits);
    assert!(!dq.is_empty(), "{what}: nothing quantised");
    for n in &dq {
        assert!(!keeps_float(stem, n, false), "{what}: {n} quantised");
    }
    for n in &float {
        assert!(keeps_float(stem, n, false), "{what}: {n} left float");
    }
    if kind == Kind::Transformer {
        assert!(
            float.iter().any(|n| n == "x_embedder.weight") && float.iter().any(|n| n == "proj_out.weight")
        );
    } else {
        assert!(float.is_empty(), "{what}: {float:?}");
    }

    // ONNX Runtime fuses every DQ → MatMul into MatMulNBits
    let ops = optimised_ops(&onnx, tmp.path());
    let fused = ops.get("MatMulNBits").copied().unwrap_or(0);
    eprintln!("{what}: {} DQ linears, {} float; optimised ops {ops:?}", dq.len(), float.len());
    assert_eq!(fused, dq.len(), "{what}: {fused} MatMulNBits for {} DQ linears", dq.len());
    assert_eq!(ops.get("DequantizeLinear"), None, "{what}: a DQ was left unfused");

    // the fused kernels compute the dequantised weights (vs. every optimisation off: DQ + MatMul)
    let fused_out = run_with(&onnx, &inputs, &sess(true));
    let plain_out = run_with(&onnx, &inputs, &sess(false));
    let e = nmse(&plain_out, &fused_out);
    eprintln!("{what}: fused vs DQ+MatMul nmse {e:.2e}");
    assert!(e < 1e-10, "{what}: fused vs unfused nmse {e:e}");

    // against the f32 export: within the budget of the quantisation step
    let f32_out = run_with(&f32_dir.join(format!("{stem}.onnx")), &inputs, &sess(true));
    let tensors = load_tensors(&fixture(&format!("{weights}/model.safetensors")))
        .or_else(|_| load_tensors(&fixture(&format!("{weights}/diffusion_pytorch_model.safetensors"))))
        .unwrap_or_else(|e| panic!("{e}"));
    let budget = step_budget(&tensors, &dq, bits, block);
    let e = nmse(&f32_out, &fused_out);
    eprintln!("{what}: vs f32 nmse {e:.2e}, budget {budget:.2e}");
    assert!(e > 0.0 && e <= budget, "{what}: nmse {e:e} vs f32 exceeds the step budget {budget:e}");
    let _ = f32_of; // (io helpers shared with the other suites)
}

#[test]
fn dit_int8_and_int4_weights_fuse_and_stay_within_the_step_budget() {
    flux2_tests::exact_nbits();
    check(Kind::Transformer, Bits::Int8, 16);
    check(Kind::Transformer, Bits::Int4, 16);
    check(Kind::Transformer, Bits::Int4, 32); // K = 48: a partial last block
}

#[test]
fn text_encoder_int8_and_int4_weights_fuse_and_stay_within_the_step_budget() {
    flux2_tests::exact_nbits();
    check(Kind::TextEncoder, Bits::Int8, 32);
    check(Kind::TextEncoder, Bits::Int4, 16);
}

/// `flux2 calibrate --precision int8` on a weight-only INT4 DiT: the low-bit linears are left as
/// they are (not constants it can fold), the float ones (embedders, modulation, final layer)
/// get Q/DQ, and the result still fuses into `MatMulNBits` and runs.
#[test]
fn calibrate_on_a_weight_only_export_quantises_the_float_linears_and_keeps_the_low_bit_ones() {
    flux2_tests::exact_nbits();
    use flux2_calib::formats::Format;
    use flux2_calib::run::{calibrate, CalibrateOptions, Component};
    use flux2_exporter::manifest::Manifest;
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let model = tmp.path().join("model");
    let lo = LowbitOptions::fixed(Bits::Int4, 16, false);
    export_lowbit(&fixture("dit/klein"), &model, Kind::Transformer, Target::Ort, Some(lo));
    let vae = tmp.path().join("vae");
    export_lowbit(&fixture("vae/diffusers"), &vae, Kind::Vae, Target::Ort, None);
    let mut m = Manifest::read(&model).unwrap_or_else(|e| panic!("{e}"));
    let mv = Manifest::read(&vae).unwrap_or_else(|e| panic!("{e}"));
    for e in std::fs::read_dir(&vae).unwrap_or_else(|e| panic!("{e}")).flatten() {
        if e.file_name() != "manifest.json" && e.path().is_file() {
            std::fs::copy(e.path(), model.join(e.file_name())).unwrap_or_else(|e| panic!("{e}"));
        }
    }
    m.graphs.extend(mv.graphs);
    m.configs.extend(mv.configs);
    m.write(&model).unwrap_or_else(|e| panic!("{e}"));
    let (dq_before, float_before) = structure(&model.join("transformer.onnx"), Bits::Int4);

    let out = tmp.path().join("q");
    let mut o = CalibrateOptions::new(model.clone(), out.clone(), Format::Int8);
    o.sizes = vec![(64, 64)];
    (o.samples, o.heldout, o.latency_runs, o.eval_images) = (4, 1, 0, 0);
    (o.threads, o.components) = (Some(2), Some(vec![Component::Transformer]));
    let r = calibrate(&o, &mut |_| {}).unwrap_or_else(|e| panic!("calibrate on a weight-only export: {e}"));
    let c = &r.report.components["transformer"];
    eprintln!(
        "calibrated: {} layers quantised, {} kept float, nmse {:.2e}",
        c.layers_quantized,
        c.kept_float.len(),
        c.nmse
    );
    assert!(c.layers_quantized > 0, "{c:?}");
    for k in &c.kept_float {
        assert!(!dq_before.iter().any(|d| d.starts_with(&k.layer)), "{} is a low-bit linear", k.layer);
    }
    assert!(!float_before.is_empty());
    let q = out.join("transformer.onnx");
    let (dq_after, _) = structure(&q, Bits::Int4);
    assert_eq!(dq_after, dq_before, "the low-bit linears survive calibration");
    let ops = optimised_ops(&q, tmp.path());
    assert_eq!(ops.get("MatMulNBits").copied().unwrap_or(0), dq_before.len(), "{ops:?}");
    let y = run_with(&q, &dit_inputs(), &sess(true));
    assert!(y.iter().all(|v| v.is_finite()));
}

/// `--target tensorrt`: the same standard form TensorRT 10 takes as weight-only quantisation,
/// INT4 blocked along K, INT8 one scale per output channel; the graph passes onnx.checker.
#[test]
fn tensorrt_target_gets_standard_weight_only_dequantize() {
    flux2_tests::exact_nbits();
    for (bits, want_attrs) in
        [(Bits::Int4, vec![("axis", 0), ("block_size", 16)]), (Bits::Int8, vec![("axis", 1)])]
    {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let lo = LowbitOptions::fixed(bits, 16, false);
        export_lowbit(&fixture("dit/klein"), tmp.path(), Kind::Transformer, Target::TensorRt, Some(lo));
        let onnx = tmp.path().join("transformer.onnx");
        onnx_check(&onnx);
        let (dq, _) = structure(&onnx, bits);
        assert!(!dq.is_empty());
        let f = OnnxFile::read(&onnx).unwrap_or_else(|e| panic!("{e}"));
        let g = f.graph();
        for n in g.node.iter().filter(|n| n.op_type == "DequantizeLinear") {
            let a: Vec<(&str, i64)> = n.attribute.iter().map(|a| (a.name.as_str(), a.i)).collect();
            assert_eq!(a, want_attrs, "{bits:?} {}", n.name);
            let scale =
                g.initializer.iter().find(|t| t.name == n.input[1]).unwrap_or_else(|| panic!("{}", n.name));
            assert_eq!(scale.data_type, dtype::FLOAT);
            assert_eq!(scale.dims.len(), if bits == Bits::Int8 { 1 } else { 2 });
        }
        // weight-only, and still float graph inputs and outputs: no activation quantisation
        assert!(!g.node.iter().any(|n| n.op_type == "QuantizeLinear"));
    }
}
