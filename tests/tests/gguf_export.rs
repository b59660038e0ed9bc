//! GGUF checkpoints through the export path: a tiny FLUX.2 DiT (diffusers names in F16, BFL
//! names in Q4_0) and tiny Qwen3 (BF16, Q8_0) and Mistral (F16, llama.cpp's permuted Q/K)
//! encoders in llama.cpp names (tests/fixtures/gguf/, written by gen_gguf.py with the `gguf`
//! 0.19.0 package from the safetensors fixtures).
//!
//! Each GGUF is exported with `ModelSource::open_with` (`flux2 export --checkpoint DIR
//! --transformer/--text-encoder FILE`) and compared with the export of the same weights from
//! safetensors: the original fixture tensors rounded the way the GGUF stores them (F16/BF16:
//! round to nearest even, computed here independently of the GGUF reader), or, for the
//! quantised tensors, their values as `gguf.quants.dequantize` gives them (the reader's
//! decoding, bit-exact with it by tests/tests/gguf.rs). The outputs must agree at ≥ 60 dB.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use flux2_exporter::export::{export, ExportRequest};
use flux2_exporter::models::ExportOptions;
use flux2_exporter::{Checkpoint, Kind, ModelSource, WeightMode};
use flux2_graphs::{DType, Target};
use flux2_runtime::Input;
use flux2_tests::{f32_of, fixture, load_tensors, max_abs_diff, run_file};

/// The float values of every tensor of a safetensors file.
fn read_f32(path: &Path) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let ck = Checkpoint::open(path).unwrap();
    ck.tensors
        .iter()
        .map(|(n, t)| {
            let b = ck.bytes(t).unwrap();
            assert_eq!(t.dtype(), DType::F32, "{n}");
            let v = b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            (n.clone(), t.shape().to_vec(), v)
        })
        .collect()
}

fn write_f32(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    let bytes: Vec<Vec<u8>> =
        tensors.iter().map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
    let views: Vec<(&str, safetensors::tensor::TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), b)| {
            (n.as_str(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap())
        })
        .collect();
    std::fs::write(path, safetensors::tensor::serialize(views, None).unwrap()).unwrap();
}

/// `values` as the GGUF stores the tensor `gguf_name` of `ck` (the GGUF checkpoint): rounded
/// to F16/BF16, or the dequantised values of a quantised tensor.
fn as_stored(ck: &Checkpoint, gguf_name: &str, values: &[f32]) -> Vec<f32> {
    let t = ck.get(gguf_name).unwrap_or_else(|| panic!("GGUF has no {gguf_name}"));
    let (stored, _) = ck.files[0].gguf().unwrap().stored(&t.raw).unwrap();
    match stored.ty.name() {
        "F32" => values.to_vec(),
        "F16" => values.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect(),
        "BF16" => values.iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect(),
        _ => {
            let b = ck.bytes(t).unwrap();
            b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
        }
    }
}

/// A diffusers-style DIR holding `sub/config.json` and, as `sub/<weights>`, the original
/// tensors of `src` made equal to what `gguf` stores (`rename`: original -> GGUF checkpoint name).
fn same_weights_dir(
    src: &Path,
    cfg: &Path,
    gguf: &Path,
    sub: &str,
    rename: &dyn Fn(&str) -> String,
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("model_index.json"), "{}").unwrap();
    std::fs::create_dir_all(dir.path().join(sub)).unwrap();
    std::fs::copy(cfg, dir.path().join(sub).join("config.json")).unwrap();
    let g = Checkpoint::open(gguf).unwrap();
    let tensors: Vec<_> = read_f32(src)
        .into_iter()
        .filter(|(n, _, _)| g.get(&rename(n)).is_some())
        .map(|(n, s, v)| {
            let v = as_stored(&g, &rename(&n), &v);
            (n, s, v)
        })
        .collect();
    write_f32(&dir.path().join(sub).join("model.safetensors"), &tensors);
    dir
}

fn export_dir(src: &ModelSource, kind: Kind, layers: Option<Vec<usize>>) -> (tempfile::TempDir, PathBuf) {
    let out = tempfile::tempdir().unwrap();
    let opts =
        ExportOptions { dtype: DType::F32, target: Target::Ort, text_layers: layers, config_override: None };
    let req = ExportRequest::new(Some(vec![kind]), opts, WeightMode::Copy);
    let m = export(src, out.path(), &req, &mut |_| {}).unwrap_or_else(|e| panic!("export: {e}"));
    let stem = if kind == Kind::Transformer { "transformer" } else { "text_encoder" };
    let path = out.path().join(&m.graphs[stem].file);
    (out, path)
}

/// Signal-to-difference ratio in dB (infinite when equal).
fn snr_db(want: &ndarray::ArrayD<f32>, got: &ndarray::ArrayD<f32>) -> f64 {
    let (mut s, mut e) = (0f64, 0f64);
    for (a, b) in want.iter().zip(got) {
        s += f64::from(*a) * f64::from(*a);
        e += (f64::from(*a) - f64::from(*b)).powi(2);
    }
    if e == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (s / e).log10()
    }
}

fn compare(what: &str, a: &Path, b: &Path, inputs: Vec<(&str, Input)>, output: &str) -> f64 {
    let want = run_file(a, inputs.clone()).unwrap().remove(output).unwrap();
    let got = run_file(b, inputs).unwrap().remove(output).unwrap();
    let db = snr_db(&want, &got);
    eprintln!("{what}: {output} max-abs {:.2e}, {db:.1} dB", max_abs_diff(&want, &got));
    assert!(db >= 60.0, "{what}: {db:.1} dB < 60 dB");
    db
}

fn dit_inputs(io: &HashMap<String, Input>) -> Vec<(&'static str, Input)> {
    ["hidden_states", "encoder_hidden_states", "timestep", "guidance", "img_ids", "txt_ids"]
        .into_iter()
        .filter_map(|n| io.get(n).map(|t| (n, t.clone())))
        .collect()
}

fn dit_case(config: &str, gguf: &str, src: &str) {
    let gguf = fixture(&format!("gguf/{gguf}"));
    let cfg = fixture(&format!("dit/{config}/transformer/config.json"));
    let reference =
        same_weights_dir(&fixture(&format!("dit/{config}/{src}")), &cfg, &gguf, "transformer", &|n| {
            n.to_string()
        });
    let from_gguf =
        ModelSource::open_with(&fixture(&format!("dit/{config}")), &[(Kind::Transformer, gguf.clone())])
            .unwrap();
    let (_a, a) = export_dir(&ModelSource::open(reference.path()).unwrap(), Kind::Transformer, None);
    let (_b, b) = export_dir(&from_gguf, Kind::Transformer, None);
    let io = load_tensors(&fixture(&format!("dit/{config}/io.safetensors"))).unwrap();
    compare(&format!("DiT {}", gguf.display()), &a, &b, dit_inputs(&io), "velocity");
    // and the GGUF DiT against the f32 reference velocity (the type's own error)
    let got = run_file(&b, dit_inputs(&io)).unwrap().remove("velocity").unwrap();
    eprintln!("  vs the f32 model's velocity: {:.1} dB", snr_db(&f32_of(&io, "velocity"), &got));
}

#[test]
fn dit_f16_diffusers_names() {
    dit_case("klein", "dit_klein_f16.gguf", "transformer/diffusion_pytorch_model.safetensors");
}

#[test]
fn dit_q4_0_bfl_names() {
    dit_case("guided", "dit_guided_q4_0.gguf", "bfl.safetensors");
}

fn ints(io: &HashMap<String, Input>, name: &str) -> Vec<usize> {
    match io.get(name) {
        Some(Input::I64(a)) => a.iter().map(|&v| v as usize).collect(),
        _ => panic!("no int64 tensor {name}"),
    }
}

/// The GGUF name (after renaming to transformers names) of an original text-encoder tensor.
fn text_name(n: &str) -> String {
    n.replace("model.language_model.", "model.")
}

fn text_case(model: &str, gguf: &str) {
    let gguf = fixture(&format!("gguf/{gguf}"));
    let cfg = fixture(&format!("text/{model}/text_encoder/config.json"));
    let src = fixture(&format!("text/{model}/text_encoder/model.safetensors"));
    let reference = same_weights_dir(&src, &cfg, &gguf, "text_encoder", &text_name);
    let io = load_tensors(&fixture(&format!("text/{model}/io.safetensors"))).unwrap();
    let layers = Some(ints(&io, "layers"));
    let inputs =
        vec![("input_ids", io["input_ids"].clone()), ("attention_mask", io["attention_mask"].clone())];
    let (_a, a) =
        export_dir(&ModelSource::open(reference.path()).unwrap(), Kind::TextEncoder, layers.clone());
    // with DIR's config.json
    let from_dir = ModelSource::open_with(reference.path(), &[(Kind::TextEncoder, gguf.clone())]).unwrap();
    let (_b, b) = export_dir(&from_dir, Kind::TextEncoder, layers.clone());
    compare(&format!("{} with config.json", gguf.display()), &a, &b, inputs.clone(), "prompt_embeds");
    // the lone file: config from the GGUF metadata
    let lone = ModelSource::open(&gguf).unwrap();
    assert!(lone.components[0].config_path.is_none());
    let (_c, c) = export_dir(&lone, Kind::TextEncoder, layers);
    compare(&format!("{} config from metadata", gguf.display()), &a, &c, inputs, "prompt_embeds");
    let written = c.parent().unwrap().join("text_encoder_config.json");
    assert!(written.is_file(), "the metadata config is written for the runtime");
}

#[test]
fn qwen3_bf16_and_q8_0() {
    text_case("qwen3", "qwen3_bf16.gguf");
    text_case("qwen3", "qwen3_q8_0.gguf");
}

#[test]
fn mistral_f16_permuted_qk() {
    text_case("mistral", "mistral_f16.gguf");
}

#[test]
fn mistral_rows_are_unpermuted_exactly() {
    // q/k read from the GGUF equal the original (transformers-order) rows rounded to f16
    let g = Checkpoint::open(&fixture("gguf/mistral_f16.gguf")).unwrap();
    let orig = read_f32(&fixture("text/mistral/text_encoder/model.safetensors"));
    let mut checked = 0;
    let qk =
        |n: &str| n.starts_with("model.language_model.") && (n.contains("q_proj") || n.contains("k_proj"));
    for (n, _, v) in orig.iter().filter(|(n, _, _)| qk(n)) {
        let t = g.get(&text_name(n)).unwrap();
        let b = g.bytes(t).unwrap();
        let got: Vec<f32> = b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let want: Vec<f32> = v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect();
        assert!(got == want, "{n} differs after un-permuting");
        checked += 1;
    }
    assert_eq!(checked, 10);
}

#[test]
fn wrong_component_and_link_mode_are_named() {
    // a text encoder given as the transformer
    let e = ModelSource::open_with(
        &fixture("dit/klein"),
        &[(Kind::Transformer, fixture("gguf/qwen3_q8_0.gguf"))],
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(e.contains("qwen3_q8_0.gguf") && e.contains("given as the transformer"), "{e}");
    // quantised tensors cannot be linked
    let src = ModelSource::open_with(
        &fixture("dit/guided"),
        &[(Kind::Transformer, fixture("gguf/dit_guided_q4_0.gguf"))],
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    let opts =
        ExportOptions { dtype: DType::F32, target: Target::Ort, text_layers: None, config_override: None };
    let req = ExportRequest::new(Some(vec![Kind::Transformer]), opts, WeightMode::Link);
    let e = export(&src, &out.path().join("o"), &req, &mut |_| {})
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("Q4_0") && e.contains("--weights copy") && e.contains("dit_guided_q4_0.gguf"), "{e}");
    assert!(!out.path().join("o").exists(), "nothing written");
}

#[test]
fn f16_gguf_links_like_safetensors() {
    // F16/F32 tensors stored as they are: link mode points at the GGUF file's bytes
    let gguf = fixture("gguf/dit_klein_f16.gguf");
    let src = ModelSource::open_with(&fixture("dit/klein"), &[(Kind::Transformer, gguf)]).unwrap();
    let (_a, copied) = export_dir(&src, Kind::Transformer, None);
    let out = tempfile::tempdir().unwrap();
    let opts =
        ExportOptions { dtype: DType::F32, target: Target::Ort, text_layers: None, config_override: None };
    let req = ExportRequest::new(Some(vec![Kind::Transformer]), opts, WeightMode::Link);
    export(&src, out.path(), &req, &mut |_| {}).unwrap();
    assert!(!out.path().join("transformer.onnx.data").exists(), "nothing copied");
    let io = load_tensors(&fixture("dit/klein/io.safetensors")).unwrap();
    let db = compare(
        "F16 GGUF link vs copy",
        &copied,
        &out.path().join("transformer.onnx"),
        dit_inputs(&io),
        "velocity",
    );
    assert!(db.is_infinite(), "the same values either way");
}
