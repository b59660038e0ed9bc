//! FP8 safetensors as distributed (issue 26, item 3): float8_e4m3fn weights with per-tensor
//! scales beside them (`<module>.weight_scale`, ComfyUI's `<module>.scale_weight` with its
//! `scaled_fp8` marker, activation `input_scale`s), value = fp8 × scale.
//!
//! The FP8 checkpoint is made here from the tiny klein DiT fixture (every matrix encoded to
//! E4M3 by round-to-nearest over the 254 finite codes, with scale amax / 448), together with the
//! same model in f32 holding the dequantised values (decoded by this file's own E4M3 decoder,
//! times the scale, in f32). Checked: the float export of the FP8 file writes exactly the
//! reference's weights; `--target tensorrt` keeps them FP8 behind per-tensor
//! `DequantizeLinear`s that pass the TensorRT 10 lint and compute the same output; int8/int4
//! weight-only exports quantise the scaled values; a bad scale is an error naming it and its
//! file, with nothing written.

use std::path::{Path, PathBuf};

use flux2_calib::onnx_file::OnnxFile;
use flux2_deploy::lint::{check_dir, LintOptions, LintTarget};
use flux2_exporter::export::{export, ExportRequest};
use flux2_exporter::lowbit::{Bits, LowbitOptions};
use flux2_exporter::models::ExportOptions;
use flux2_exporter::{Checkpoint, Kind, ModelSource, WeightMode};
use flux2_graphs::onnx_dtype as dtype;
use flux2_graphs::{DType, Target};
use flux2_runtime::Input;
use flux2_tests::export::onnx_check;
use flux2_tests::{fixture, load_tensors, nmse, run_file};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

/// E4M3FN decoded: (8 + m)·2^(e − 10), subnormals m·2^−9; 0x7f / 0xff are NaN.
fn e4m3(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let (e, m) = (i32::from((b >> 3) & 0x0f), f32::from(b & 0x07));
    if e == 0 {
        sign * m * 2f32.powi(-9)
    } else {
        sign * (8.0 + m) * 2f32.powi(e - 10)
    }
}

/// The nearest finite E4M3 code of `x`.
fn encode(x: f32, table: &[(u8, f32)]) -> u8 {
    table.iter().min_by(|a, b| (a.1 - x).abs().total_cmp(&(b.1 - x).abs())).map_or(0, |c| c.0)
}

struct Tensor {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

fn f32_tensor(name: &str, shape: Vec<usize>, v: &[f32]) -> Tensor {
    Tensor {
        name: name.into(),
        dtype: Dtype::F32,
        shape,
        bytes: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

fn write(path: &Path, tensors: &[Tensor]) {
    let views: Vec<(&str, TensorView)> = tensors
        .iter()
        .map(|t| (t.name.as_str(), TensorView::new(t.dtype, t.shape.clone(), &t.bytes).unwrap()))
        .collect();
    std::fs::write(path, safetensors::tensor::serialize(views, None).unwrap()).unwrap();
}

/// A diffusers DIR holding the klein DiT config and `tensors`.
fn dit_dir(tensors: &[Tensor]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("model_index.json"), "{}").unwrap();
    let t = dir.path().join("transformer");
    std::fs::create_dir_all(&t).unwrap();
    std::fs::copy(fixture("dit/klein/transformer/config.json"), t.join("config.json")).unwrap();
    write(&t.join("diffusion_pytorch_model.safetensors"), tensors);
    dir
}

/// (FP8 checkpoint, the same weights dequantised to f32, FP8 weights, scales written).
fn checkpoints(scale_shape: Vec<usize>) -> (tempfile::TempDir, tempfile::TempDir, usize) {
    let table: Vec<(u8, f32)> = (0..=255u8).filter(|b| b & 0x7f != 0x7f).map(|b| (b, e4m3(b))).collect();
    let src =
        Checkpoint::open(&fixture("dit/klein/transformer/diffusion_pytorch_model.safetensors")).unwrap();
    let (mut fp8, mut reference, mut n) = (
        vec![Tensor { name: "scaled_fp8".into(), dtype: Dtype::F8_E4M3, shape: vec![0], bytes: vec![] }],
        Vec::new(),
        0,
    );
    for (name, t) in &src.tensors {
        let b = src.bytes(t).unwrap();
        let v: Vec<f32> = b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let Some(module) = name.strip_suffix(".weight").filter(|_| t.shape().len() == 2) else {
            fp8.push(f32_tensor(name, t.shape().to_vec(), &v));
            reference.push(f32_tensor(name, t.shape().to_vec(), &v));
            continue;
        };
        let amax = v.iter().fold(0f32, |m, x| m.max(x.abs()));
        let scale = if amax > 0.0 { amax / 448.0 } else { 1.0 };
        let codes: Vec<u8> = v.iter().map(|&x| encode(x / scale, &table)).collect();
        let deq: Vec<f32> = codes.iter().map(|&c| e4m3(c) * scale).collect();
        fp8.push(Tensor {
            name: name.clone(),
            dtype: Dtype::F8_E4M3,
            shape: t.shape().to_vec(),
            bytes: codes,
        });
        // ComfyUI's name in the single blocks, BFL's elsewhere
        let suffix = if name.starts_with("single_") { "scale_weight" } else { "weight_scale" };
        let reps = scale_shape.iter().product::<usize>();
        fp8.push(f32_tensor(&format!("{module}.{suffix}"), scale_shape.clone(), &vec![scale; reps]));
        if name.ends_with("to_q.weight") {
            fp8.push(f32_tensor(&format!("{module}.input_scale"), vec![], &[0.05]));
        }
        reference.push(f32_tensor(name, t.shape().to_vec(), &deq));
        n += 1;
    }
    (dit_dir(&fp8), dit_dir(&reference), n)
}

fn export_dit(
    dir: &Path,
    out: &Path,
    target: Target,
    lowbit: Option<LowbitOptions>,
) -> flux2_exporter::Result<PathBuf> {
    let src = ModelSource::open(dir)?;
    let opts = ExportOptions { dtype: DType::F32, target, text_layers: None, config_override: None };
    let mut req = ExportRequest::new(Some(vec![Kind::Transformer]), opts, WeightMode::Copy);
    req.lowbit = lowbit;
    export(&src, out, &req, &mut |_| {})?;
    Ok(out.join("transformer.onnx"))
}

fn inputs() -> Vec<(&'static str, Input)> {
    let io = load_tensors(&fixture("dit/klein/io.safetensors")).unwrap();
    ["hidden_states", "encoder_hidden_states", "timestep", "img_ids", "txt_ids"]
        .into_iter()
        .filter_map(|n| io.get(n).map(|t| (n, t.clone())))
        .collect()
}

fn data(onnx: &Path) -> Vec<u8> {
    std::fs::read(onnx.with_extension("onnx.data")).unwrap()
}

#[test]
fn float_export_applies_the_scales() {
    flux2_tests::exact_nbits();
    let (fp8, reference, n) = checkpoints(vec![]);
    let ck = Checkpoint::open(&fp8.path().join("transformer")).unwrap();
    assert_eq!(ck.fp8.weights.len(), n, "every FP8 weight has its scale");
    assert!(!ck.fp8.inputs.is_empty() && ck.get("scaled_fp8").is_none());
    let out = tempfile::tempdir().unwrap();
    let a = export_dit(fp8.path(), &out.path().join("fp8"), Target::Ort, None).unwrap();
    let b = export_dit(reference.path(), &out.path().join("ref"), Target::Ort, None).unwrap();
    assert!(data(&a) == data(&b), "the FP8 export's weights are the dequantised values");
    let (x, y) = (run_file(&a, inputs()).unwrap(), run_file(&b, inputs()).unwrap());
    assert_eq!(x["velocity"], y["velocity"]);
}

#[test]
fn tensorrt_target_keeps_fp8_behind_dequantize() {
    flux2_tests::exact_nbits();
    let (fp8, reference, _) = checkpoints(vec![1]);
    let out = tempfile::tempdir().unwrap();
    let a = export_dit(fp8.path(), &out.path().join("fp8"), Target::TensorRt, None).unwrap();
    let b = export_dit(reference.path(), &out.path().join("ref"), Target::TensorRt, None).unwrap();
    onnx_check(&a);
    let f = OnnxFile::read(&a).unwrap();
    let g = f.graph();
    let mut dq = 0;
    for node in g.node.iter().filter(|n| n.op_type == "DequantizeLinear") {
        let codes = f.initializer(&node.input[0]).unwrap();
        let scale = f.initializer(&node.input[1]).unwrap();
        assert_eq!(codes.data_type, dtype::FLOAT8E4M3FN, "{}", node.name);
        assert!(
            scale.dims.is_empty() && scale.data_type == dtype::FLOAT,
            "{}: per-tensor f32 scale",
            node.name
        );
        let reader = g.node.iter().find(|m| m.input.get(1) == node.output.first()).unwrap();
        assert_eq!(reader.op_type, "MatMul");
        dq += 1;
    }
    let linears = flux2_exporter::lowbit::count_linears(
        &flux2_exporter::models::build(
            &ModelSource::open(fp8.path()).unwrap().components[0],
            &ExportOptions {
                dtype: DType::F32,
                target: Target::TensorRt,
                text_layers: None,
                config_override: None,
            },
        )
        .unwrap()[0]
            .model,
        "transformer",
    );
    eprintln!("{dq} FP8 DequantizeLinear linears of {linears}");
    assert_eq!(dq, linears, "every linear of an all-FP8 checkpoint stays FP8");
    let opts = LintOptions { target: LintTarget::TensorRt10, gpu: None, trt_version: None, graphs: None };
    let report = check_dir(&out.path().join("fp8"), &opts).unwrap();
    let mut rules: Vec<&str> = report.warnings().map(|w| w.rule).collect();
    rules.dedup();
    eprintln!("lint tensorrt10: {} warnings ({rules:?})", report.warnings().count());
    let errors: Vec<_> = report.errors().collect();
    assert!(errors.is_empty(), "{errors:?}");
    let (x, y) = (run_file(&a, inputs()).unwrap(), run_file(&b, inputs()).unwrap());
    let e = nmse(&y["velocity"], &x["velocity"]);
    eprintln!("FP8 DQ graph vs float graph of the dequantised weights (ONNX Runtime CPU): nmse {e:.2e}");
    assert!(e < 1e-10, "nmse {e:e}");
}

#[test]
fn lowbit_export_quantises_the_scaled_values() {
    flux2_tests::exact_nbits();
    let (fp8, reference, _) = checkpoints(vec![]);
    for bits in [Bits::Int8, Bits::Int4] {
        let out = tempfile::tempdir().unwrap();
        let lo = Some(LowbitOptions::fixed(bits, 16, false));
        let a = export_dit(fp8.path(), &out.path().join("fp8"), Target::Ort, lo).unwrap();
        let b = export_dit(reference.path(), &out.path().join("ref"), Target::Ort, lo).unwrap();
        assert!(
            data(&a) == data(&b),
            "{bits:?}: the codes of the FP8 export are those of the dequantised values"
        );
    }
}

#[test]
fn a_bad_scale_is_an_error_naming_it() {
    flux2_tests::exact_nbits();
    let (fp8, _, _) = checkpoints(vec![2]);
    let out = tempfile::tempdir().unwrap();
    let dst = out.path().join("never");
    let e = export_dit(fp8.path(), &dst, Target::Ort, None).err().map(|e| e.to_string()).unwrap_or_default();
    eprintln!("{e}");
    assert!(e.contains("weight_scale") || e.contains("scale_weight"), "{e}");
    assert!(e.contains("diffusion_pytorch_model.safetensors") && e.contains("[2]"), "{e}");
    assert!(!dst.exists(), "nothing written");
}

/// `--weights link` cannot apply a scale: an error naming the tensor, unless `--link-fallback
/// copy`, which copies the scaled values.
#[test]
fn link_mode_refuses_scaled_fp8_or_copies() {
    flux2_tests::exact_nbits();
    let (fp8, reference, _) = checkpoints(vec![]);
    let out = tempfile::tempdir().unwrap();
    let src = ModelSource::open(fp8.path()).unwrap();
    let opts =
        ExportOptions { dtype: DType::F32, target: Target::Ort, text_layers: None, config_override: None };
    let mut req = ExportRequest::new(Some(vec![Kind::Transformer]), opts, WeightMode::Link);
    let dst = out.path().join("link");
    let e = export(&src, &dst, &req, &mut |_| {}).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("FP8 with a per-tensor scale") && e.contains(".weight"), "{e}");
    assert!(!dst.exists(), "nothing written");
    req.link_fallback_copy = true;
    export(&src, &dst, &req, &mut |_| {}).unwrap();
    let b = export_dit(reference.path(), &out.path().join("ref"), Target::Ort, None).unwrap();
    let (x, y) =
        (run_file(&dst.join("transformer.onnx"), inputs()).unwrap(), run_file(&b, inputs()).unwrap());
    assert_eq!(x["velocity"], y["velocity"]);
}
