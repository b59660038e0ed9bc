//! Text-encoder parity with transformers 5.23.0 / diffusers 0.42.1 (fixtures from
//! `tests/fixtures/gen_text.py`, see `tests/fixtures/text/README.md`).
//!
//! Each case exports `text_encoder.onnx` from a fixture checkpoint through the real exporter
//! path (config detection, name map, weight resolution, external-data writer) for both
//! targets, runs it on ONNX Runtime CPU with the fixture's `input_ids` / `attention_mask`
//! (batch 2, one padded row; plus a 512-token run) and compares `prompt_embeds` with the
//! pipeline's output: f32 max-abs ≤ 1e-4, finite everywhere. The layer selections are read
//! from the fixture (`layers`, `b_layers`: unsorted, including 0 = embeddings and N = after
//! the final norm). Error tests check that messages name the culprit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use flux2_exporter::layout::open_component;
use flux2_exporter::models::{self, text, ExportOptions};
use flux2_exporter::{resolve_weights, write_model, WeightMode, WriteOptions};
use flux2_graphs::{DType, Target};
use flux2_runtime::Input;
use flux2_tests::{assert_close, f32_of, fixture, load_tensors, max_abs_diff, run_file};

/// FP32 parity budget against the PyTorch reference.
const TOL: f32 = 1e-4;

fn options(layers: Option<Vec<usize>>, target: Target) -> ExportOptions {
    ExportOptions { dtype: DType::F32, target, text_layers: layers, config_override: None }
}

/// Exports the text encoder of `model_dir` into `out` (copy mode); returns the ONNX path and
/// the checkpoint tensors the written graph reads.
fn export(model_dir: &Path, opts: &ExportOptions, out: &Path) -> anyhow::Result<(PathBuf, Vec<String>)> {
    let component = open_component(model_dir)?;
    let built = models::build(&component, opts)?;
    anyhow::ensure!(built.len() == 1, "expected one graph, got {}", built.len());
    let g = &built[0];
    let ignore: Vec<&str> = g.ignore.iter().map(String::as_str).collect();
    let resolved = resolve_weights(&component.checkpoint, &g.model.weights, &*g.map, &ignore, &g.stem)?;
    let read: Vec<String> = resolved.iter().flat_map(|w| w.pieces.iter().map(|p| p.tensor.clone())).collect();
    let report = write_model(
        &g.model,
        &resolved,
        &component.checkpoint,
        out,
        &g.stem,
        &WriteOptions::new(WeightMode::Copy),
        &mut |_| {},
    )?;
    Ok((report.onnx, read))
}

fn ints(io: &HashMap<String, Input>, name: &str) -> Vec<usize> {
    match io.get(name) {
        Some(Input::I64(a)) => a.iter().map(|&v| v as usize).collect(),
        _ => panic!("fixture has no int64 tensor '{name}'"),
    }
}

fn run(onnx: &Path, io: &HashMap<String, Input>, prefix: &str) -> ndarray::ArrayD<f32> {
    let inputs = vec![
        ("input_ids", io[&format!("{prefix}input_ids")].clone()),
        ("attention_mask", io[&format!("{prefix}attention_mask")].clone()),
    ];
    let mut out = run_file(onnx, inputs).expect("text encoder runs on ORT");
    out.remove("prompt_embeds").expect("output prompt_embeds")
}

/// Exports `model` with both fixture selections for both targets and compares every case.
fn parity(model: &str, expected: &str, left_padded: bool) {
    let io = load_tensors(&fixture(&format!("text/{expected}/io.safetensors"))).unwrap();
    let dir = fixture(&format!("text/{model}/text_encoder"));
    for target in [Target::Ort, Target::TensorRt] {
        for (sel, key) in [("layers", "prompt_embeds"), ("b_layers", "b_prompt_embeds")] {
            let layers = ints(&io, sel);
            let tmp = tempfile::tempdir().unwrap();
            let (onnx, _) = export(&dir, &options(Some(layers.clone()), target), tmp.path()).unwrap();
            let name = format!("{model} {target:?} {sel} {layers:?}");
            let got = run(&onnx, &io, "");
            let want = f32_of(&io, key);
            eprintln!("{name}: max-abs {:.3e}", max_abs_diff(&want, &got));
            assert_close(&name, &want, &got, TOL);
            if left_padded {
                // Mistral's left-pad rows are exactly 0 (zero pad embedding, SDPA's all-masked rows).
                check_zero_pad_rows(&name, &io, &got, "");
            }
            if sel == "layers" && io.contains_key("full_input_ids") {
                let got = run(&onnx, &io, "full_");
                let want = f32_of(&io, "full_prompt_embeds");
                eprintln!("{name} L=512: max-abs {:.3e}", max_abs_diff(&want, &got));
                assert_close(&format!("{name} L=512"), &want, &got, TOL);
                if left_padded {
                    check_zero_pad_rows(&name, &io, &got, "full_");
                }
            }
        }
    }
}

fn check_zero_pad_rows(name: &str, io: &HashMap<String, Input>, got: &ndarray::ArrayD<f32>, prefix: &str) {
    let Input::I64(mask) = &io[&format!("{prefix}attention_mask")] else { panic!("mask dtype") };
    let mut pads = 0;
    for ((b, l), &m) in mask.view().into_dimensionality::<ndarray::Ix2>().unwrap().indexed_iter() {
        if m == 0 {
            pads += 1;
            let row = got.slice(ndarray::s![b, l, ..]);
            assert!(row.iter().all(|&v| v == 0.0), "{name}: pad row ({b},{l}) is not exactly 0");
        }
    }
    assert!(pads > 0, "{name}: the fixture should have padded rows");
}

#[test]
fn mistral3_transformers5_layout() {
    parity("mistral", "mistral", true);
}

#[test]
fn mistral3_legacy_sharded_layout() {
    parity("mistral_legacy", "mistral", true);
}

#[test]
fn mistral3_heads_times_head_dim_differs_from_hidden() {
    parity("mistral_wide", "mistral_wide", true);
}

#[test]
fn qwen3_right_padding_and_qk_norm() {
    parity("qwen3", "qwen3", false);
}

/// The graph holds nothing after the last used layer, and reads no unused stored tensor.
#[test]
fn unused_weights_are_neither_declared_nor_read() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture("text/mistral/text_encoder");
    let (_, read) = export(&dir, &options(Some(vec![2, 1]), Target::Ort), tmp.path()).unwrap();
    let p = "model.language_model.";
    assert!(read.iter().any(|n| n == &format!("{p}layers.1.mlp.down_proj.weight")), "{read:?}");
    for n in &read {
        assert!(n.starts_with(p), "reads {n}");
        let rest = &n[p.len()..];
        assert!(
            rest.starts_with("embed_tokens.")
                || rest.starts_with("layers.0.")
                || rest.starts_with("layers.1."),
            "reads {n}"
        );
    }
    let comp = open_component(&dir).unwrap();
    let d = text::detect(&comp, comp.config.as_ref(), Some(&[1, 3, 5])).unwrap();
    assert_eq!(d.config.layers_to_build(), 5);
    assert!(
        !text::unused_prefixes(&d).iter().any(|p| p.ends_with("norm.")),
        "the final norm is needed for 5"
    );
}

/// The ONNX Runtime graph makes RotaryEmbedding's position ids once for all layers (one
/// `Range` + `Expand`, not one per attention): ~30 % fewer nodes, and ONNX Runtime's allocation planner,
/// whose time grows faster than the node count, creates the session faster.
#[test]
fn rope_position_ids_are_shared_by_every_layer() {
    let comp = open_component(&fixture("text/qwen3/text_encoder")).unwrap();
    let select = Some(vec![1, 3, 5]);
    let built = models::build(&comp, &options(select.clone(), Target::Ort)).unwrap();
    let nodes = &built[0].model.proto.graph.as_ref().unwrap().node;
    let count = |op: &str| nodes.iter().filter(|n| n.op_type == op).count();
    let layers =
        text::detect(&comp, comp.config.as_ref(), select.as_deref()).unwrap().config.layers_to_build();
    assert!(layers >= 2, "the fixture needs several layers, has {layers}");
    assert_eq!(count("RotaryEmbedding"), 2 * layers, "q and k of every layer");
    let ropes: std::collections::HashSet<&str> =
        nodes.iter().filter(|n| n.op_type == "RotaryEmbedding").map(|n| n.input[3].as_str()).collect();
    assert_eq!(ropes.len(), 1, "every RotaryEmbedding reads the same position ids: {ropes:?}");
}

/// Config detection reads every field transformers uses, from the right place.
#[test]
fn detects_configs_of_both_families() {
    let m = open_component(&fixture("text/mistral_wide/text_encoder")).unwrap();
    let d = text::detect(&m, m.config.as_ref(), Some(&[1])).unwrap();
    let c = &d.config;
    assert_eq!((c.hidden, c.heads, c.kv_heads, c.head_dim, c.intermediate), (48, 4, 2, 16, 96));
    assert_eq!((c.eps, c.rope_theta, c.num_layers, c.qk_norm), (1e-5, 1e9, 4, false));
    assert_eq!(d.prefix, "language_model.model.");
    let q = open_component(&fixture("text/qwen3/text_encoder")).unwrap();
    let d = text::detect(&q, q.config.as_ref(), Some(&[1])).unwrap();
    assert_eq!((d.config.eps, d.config.rope_theta, d.config.qk_norm), (1e-6, 1e6, true));
    assert_eq!(d.prefix, "model.");
}

/// A copy of a fixture's text_encoder folder with its config.json replaced (or removed).
fn patched_copy(model: &str, config: Option<serde_json::Value>) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture(&format!("text/{model}/text_encoder"));
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "safetensors") {
            std::fs::copy(&p, tmp.path().join(p.file_name().unwrap())).unwrap();
        }
    }
    if let Some(c) = config {
        std::fs::write(tmp.path().join("config.json"), serde_json::to_string(&c).unwrap()).unwrap();
    }
    tmp
}

fn fixture_config(model: &str) -> serde_json::Value {
    let p = fixture(&format!("text/{model}/text_encoder/config.json"));
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn export_error(dir: &Path, layers: Option<Vec<usize>>) -> String {
    let out = tempfile::tempdir().unwrap();
    match export(dir, &options(layers, Target::Ort), out.path()) {
        Ok(_) => panic!("export of {} should fail", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn unknown_architecture_is_named() {
    let mut c = fixture_config("qwen3");
    c["model_type"] = "llama".into();
    let tmp = patched_copy("qwen3", Some(c));
    let msg = export_error(tmp.path(), Some(vec![1]));
    assert!(msg.contains("model_type = 'llama'"), "{msg}");
    let mut c = fixture_config("mistral");
    c["text_config"]["model_type"] = "ministral3".into();
    let tmp = patched_copy("mistral", Some(c));
    let msg = export_error(tmp.path(), Some(vec![1]));
    assert!(msg.contains("'ministral3'"), "{msg}");
}

#[test]
fn missing_config_names_the_fields() {
    let tmp = patched_copy("mistral", None);
    let msg = export_error(tmp.path(), Some(vec![1]));
    assert!(msg.contains("config.json") && msg.contains("rms_norm_eps"), "{msg}");
}

#[test]
fn unsupported_rope_and_mismatched_config_are_named() {
    let mut c = fixture_config("qwen3");
    c["rope_parameters"]["rope_type"] = "yarn".into();
    let msg = export_error(patched_copy("qwen3", Some(c)).path(), Some(vec![1]));
    assert!(msg.contains("'yarn'"), "{msg}");
    let mut c = fixture_config("qwen3");
    c["hidden_size"] = 128.into();
    let msg = export_error(patched_copy("qwen3", Some(c)).path(), Some(vec![1]));
    assert!(msg.contains("hidden_size = 128") && msg.contains("64"), "{msg}");
}

#[test]
fn layer_selection_errors_name_the_layer() {
    let dir = fixture("text/qwen3/text_encoder");
    let msg = export_error(&dir, None);
    assert!(msg.contains("--text-layers") && msg.contains("[9, 18, 27]"), "{msg}");
    let msg = export_error(&dir, Some(vec![1, 6]));
    assert!(msg.contains("layer 6"), "{msg}");
    let msg = export_error(&dir, Some(vec![]));
    assert!(msg.contains("no hidden-state layers"), "{msg}");
}

/// Through the export driver (`flux2 export`): link mode writes no weight bytes, the manifest
/// records the selection, and the linked graph reproduces the reference.
#[test]
fn driver_link_export_and_manifest() {
    use flux2_exporter::Kind;
    use flux2_tests::export::{export_to, onnx_check};
    let io = load_tensors(&fixture("text/qwen3/io.safetensors")).unwrap();
    let layers = ints(&io, "layers");
    let out = tempfile::tempdir().unwrap();
    let mut opts = flux2_tests::export::options(Target::Ort, None);
    opts.text_layers = Some(layers.clone());
    let manifest = export_to(
        &fixture("text/qwen3/text_encoder"),
        out.path(),
        Some(vec![Kind::TextEncoder]),
        opts,
        WeightMode::Link,
    )
    .unwrap();
    assert!(!out.path().join("text_encoder.onnx.data").exists());
    assert_eq!(manifest.pipeline["text_layers"], serde_json::json!(layers));
    assert_eq!(manifest.pipeline["text_family"], "qwen3");
    let g = &manifest.graphs["text_encoder"];
    let names: Vec<&str> = g.inputs.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["input_ids", "attention_mask"]);
    assert_eq!(g.outputs[0].name, "prompt_embeds");
    assert_eq!(g.outputs[0].shape, ["B", "L", &(layers.len() * 64).to_string()]);
    let got = run(&out.path().join("text_encoder.onnx"), &io, "");
    assert_close("qwen3 link", &f32_of(&io, "prompt_embeds"), &got, TOL);

    let copy = tempfile::tempdir().unwrap();
    for target in [Target::Ort, Target::TensorRt] {
        let (onnx, _) = export(
            &fixture("text/mistral/text_encoder"),
            &options(Some(layers.clone()), target),
            copy.path(),
        )
        .unwrap();
        onnx_check(&onnx);
    }
}
