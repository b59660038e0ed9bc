//! `flux2 calibrate` end to end on the fixture exports (DiT klein fixture + VAE fixture, merged
//! into one model folder): Q/DQ graphs pass `onnx.checker` and run in ONNX Runtime, carry INT8
//! or FLOAT8E4M3FN Q/DQ pairs, keep INT8 weights per channel; the same seed gives byte-identical
//! scales; a failed quality gate leaves a report but no model; bad options name themselves;
//! INT8 quantises the DiT's attention products, FP8 records why it does not.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use flux2_calib::artifacts::{parse_trt_calibration_cache, ScalesFile};
use flux2_calib::formats::Format;
use flux2_calib::onnx_file::OnnxFile;
use flux2_calib::report::Report;
use flux2_calib::run::{calibrate, CalibrateError, CalibrateOptions, Component};
use flux2_exporter::manifest::Manifest;
use flux2_exporter::{Kind, WeightMode};
use flux2_graphs::Target;
use flux2_runtime::pipeline::{Pipeline, PromptSource, Request};
use flux2_runtime::tensor_file::Tensor;
use flux2_runtime::SessionOptions;
use flux2_tests::export::{export_to, onnx_check, options};
use flux2_tests::fixture;

/// Exports the klein DiT fixture and the VAE fixture into one model folder.
fn model_dir(root: &Path, weights: WeightMode) -> PathBuf {
    let (dit, vae, both) = (root.join("dit"), root.join("vae"), root.join("model"));
    let opts = || options(Target::Ort, None);
    let m_dit = export_to(&fixture("dit/klein"), &dit, Some(vec![Kind::Transformer]), opts(), weights)
        .unwrap_or_else(|e| panic!("{e}"));
    let m_vae = export_to(&fixture("vae/diffusers"), &vae, Some(vec![Kind::Vae]), opts(), WeightMode::Copy)
        .unwrap_or_else(|e| panic!("{e}"));
    copy_tree(&dit, &both);
    copy_tree(&vae, &both);
    let mut m: Manifest = m_dit;
    m.graphs.extend(m_vae.graphs);
    m.configs.extend(m_vae.configs);
    m.sources.extend(m_vae.sources);
    m.write(&both).unwrap_or_else(|e| panic!("{e}"));
    both
}

fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap_or_else(|e| panic!("{e}"));
    for e in std::fs::read_dir(src).unwrap_or_else(|e| panic!("{e}")).flatten() {
        let to = dst.join(e.file_name());
        if e.path().is_dir() {
            copy_tree(&e.path(), &to);
        } else if e.file_name() != "manifest.json" {
            std::fs::copy(e.path(), &to).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}

fn small(model: &Path, out: &Path, format: Format) -> CalibrateOptions {
    let mut o = CalibrateOptions::new(model.to_path_buf(), out.to_path_buf(), format);
    o.sizes = vec![(64, 64), (96, 64)];
    o.samples = 8;
    o.heldout = 2;
    o.latency_runs = 0;
    o.eval_images = 1;
    o.threads = Some(2);
    o
}

fn read_scales(dir: &Path) -> ScalesFile {
    let text = std::fs::read_to_string(dir.join("scales.json")).unwrap_or_else(|e| panic!("{e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"))
}

/// Every Q/DQ zero point of a graph has `want` type (INT8: convolution activations are UINT8
/// with zero point 128, the same levels; see `flux2_calib::qdq`); INT8 weight DQs are per output
/// channel.
fn check_qdq_types(path: &Path, want: i32) {
    let f = OnnxFile::read(path).unwrap_or_else(|e| panic!("{e}"));
    let g = f.graph();
    let init = |n: &str| g.initializer.iter().find(|t| t.name == n);
    let mut pairs = 0;
    for n in g.node.iter().filter(|n| n.op_type == "QuantizeLinear" || n.op_type == "DequantizeLinear") {
        let zp = init(&n.input[2]).unwrap_or_else(|| panic!("{}: zero point is not an initializer", n.name));
        let conv_activation = want == 3 && zp.data_type == 2 && zp.raw_data == [128];
        assert!(zp.data_type == want || conv_activation, "{}: zero point type {}", n.name, zp.data_type);
        if n.op_type == "DequantizeLinear" && n.input[0].ends_with("weight_quantized") {
            let (w, s) = (
                init(&n.input[0]).unwrap_or_else(|| unreachable!()),
                init(&n.input[1]).unwrap_or_else(|| unreachable!()),
            );
            let axis = n.attribute.iter().find(|a| a.name == "axis").map(|a| a.i as usize);
            if want == 3 {
                let axis = axis.unwrap_or_else(|| panic!("{}: INT8 weight DQ without an axis", n.name));
                assert_eq!(s.dims, vec![w.dims[axis]], "{}: one scale per output channel", n.name);
            } else {
                assert!(axis.is_none() && s.dims.is_empty(), "{}: FP8 weights are per-tensor", n.name);
            }
        }
        pairs += 1;
    }
    assert!(pairs > 0, "{}: no Q/DQ nodes", path.display());
}

#[test]
fn int8_and_fp8_model_folders_check_run_and_carry_their_types() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let model = model_dir(tmp.path(), WeightMode::Copy);
    for (format, onnx_type) in [(Format::Int8, 3), (Format::Fp8, 17)] {
        let out = tmp.path().join(format.name());
        let o = calibrate(&small(&model, &out, format), &mut |_| {}).unwrap_or_else(|e| panic!("{e}"));
        assert!(o.passed);
        let manifest = Manifest::read(&out).unwrap_or_else(|e| panic!("{e}"));
        for (name, entry) in &manifest.graphs {
            assert_eq!(entry.precision.as_deref(), Some(format.name()), "{name}");
            let path = out.join(&entry.file);
            if !onnx_check(&path) {
                eprintln!("note: onnx.checker skipped");
            }
            check_qdq_types(&path, onnx_type);
        }
        // the output folder is a model the pipeline runs, and its images stay close to float
        let gen = &o.report.generations;
        assert_eq!(gen.len(), 1);
        assert!(gen[0].psnr_db > 20.0 && gen[0].ssim > 0.5, "{format:?}: {:?}", gen[0]);
        let sess = SessionOptions { intra_threads: 2, ..SessionOptions::default() };
        let mut p = Pipeline::new(&out, flux2_runtime::cpu_factory(sess)).unwrap_or_else(|e| panic!("{e}"));
        let embeds =
            Tensor { shape: vec![1, 8, 40], data: (0..320).map(|i| (i as f32 * 0.37).sin()).collect() };
        let mut req = Request::new(PromptSource::Embeds(embeds));
        (req.width, req.height) = (Some(64), Some(64));
        let img = p.generate(&req, &mut |_| {}).unwrap_or_else(|e| panic!("{e}")).image;
        assert!(img.data.iter().all(|v| v.is_finite()));
        // every component met the budget on held-out samples
        for c in o.report.components.values() {
            assert!(c.nmse <= 1e-2, "{}: {}", c.graph, c.nmse);
            assert!(c.layers_quantized > 0, "{}", c.graph);
        }
        let scales = read_scales(&out);
        assert_eq!(scales.format, format);
        // INT8 quantises the DiT's attention products; FP8 keeps them in float, with the reason
        let dit = &scales.graphs["transformer"];
        let softmax_ranges = dit.activations.keys().filter(|k| k.ends_with("/probs")).count();
        let kept_attention = dit.kept_float.iter().filter(|k| k.layer.ends_with(".attention")).count();
        if format == Format::Int8 {
            assert!(softmax_ranges > 0, "no attention site was quantised");
        } else {
            assert_eq!(softmax_ranges, 0);
            assert!(kept_attention > 0 && dit.kept_float.iter().any(|k| k.reason.contains("FP8 attention")));
        }
        if format == Format::Int8 {
            // each graph's TensorRT cache holds the same activation ranges as its scales.json
            // entry (calibrator max); the merged calibration.cache exists only when no tensor
            // name has two ranges (the VAE encoder and decoder share conv output names)
            for (g, gs) in &scales.graphs {
                let file = out.join(format!("{g}.calibration.cache"));
                let text =
                    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                assert!(text.starts_with("TRT-"), "{text}");
                let cache = parse_trt_calibration_cache(&text).unwrap_or_else(|| panic!("bad cache: {text}"));
                let want: BTreeMap<String, f32> =
                    gs.activations.iter().map(|(t, a)| (t.clone(), a.observed_amax)).collect();
                assert_eq!(cache.len(), want.len(), "{g}");
                for (t, v) in &want {
                    let got = cache[t];
                    assert!((got - v).abs() <= v * 1e-6, "{g} {t}: cache {got} vs scales {v}");
                }
            }
            let report = std::fs::read_to_string(out.join("report.md")).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                out.join("calibration.cache").exists() || report.contains("calibration.cache not written")
            );
        } else {
            assert!(!out.join("calibration.cache").exists());
        }
        assert!(out.join("report.md").is_file() && out.join("calibration.json").is_file());
    }
}

#[test]
fn same_seed_same_scales_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let model = model_dir(tmp.path(), WeightMode::Copy);
    let run = |name: &str, seed: u64, calibrator: &str| {
        let out = tmp.path().join(name);
        let mut o = small(&model, &out, Format::Int8);
        (o.seed, o.eval_images) = (seed, 0);
        o.components = Some(vec![Component::Transformer]);
        o.calibrator = calibrator.parse().unwrap_or_else(|e| panic!("{e}"));
        o.smoothquant = Some(0.5);
        calibrate(&o, &mut |_| {}).unwrap_or_else(|e| panic!("{e}"));
        let bytes = |f: &str| std::fs::read(out.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        (bytes("scales.json"), bytes("calibration.cache"), bytes("transformer.onnx.data"))
    };
    let a = run("a", 3, "mse");
    let b = run("b", 3, "mse");
    assert!(a == b, "same seed: scales, cache or quantised weights differ");
    let c = run("c", 4, "mse");
    assert_ne!(a.0, c.0, "another seed draws other samples and gives other scales");
}

#[test]
fn fp8_attention_model_folder_runs_in_the_pipeline() {
    // FP8 attention Q/DQ load in ONNX Runtime only with its Q/DQ fusions off: the calibrator's
    // sessions and, through the manifest's `fp8` precision, the pipeline's turn them off
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let model = model_dir(tmp.path(), WeightMode::Copy);
    let out = tmp.path().join("fp8-attention");
    let mut o = small(&model, &out, Format::Fp8);
    o.fp8_attention = true;
    let r = calibrate(&o, &mut |_| {}).unwrap_or_else(|e| panic!("{e}"));
    assert!(r.passed);
    let dit = &read_scales(&out).graphs["transformer"];
    assert!(dit.activations.keys().any(|k| k.ends_with("/probs")), "no FP8 attention site");
    assert!(r.report.components["transformer"].nmse <= 1e-2);
    let gen = &r.report.generations;
    assert!(gen[0].psnr_db > 20.0, "{:?}", gen[0]);
    let sess = SessionOptions { intra_threads: 2, ..SessionOptions::default() };
    assert!(sess.qdq_fusion, "the manifest, not the caller, turns the fusions off");
    let mut p = Pipeline::new(&out, flux2_runtime::cpu_factory(sess)).unwrap_or_else(|e| panic!("{e}"));
    let embeds = Tensor { shape: vec![1, 8, 40], data: (0..320).map(|i| (i as f32 * 0.37).cos()).collect() };
    let mut req = Request::new(PromptSource::Embeds(embeds));
    (req.width, req.height) = (Some(64), Some(64));
    let img = p.generate(&req, &mut |_| {}).unwrap_or_else(|e| panic!("{e}")).image;
    assert!(img.data.iter().all(|v| v.is_finite()));
}

#[test]
fn failed_gate_writes_the_report_but_no_model() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let model = model_dir(tmp.path(), WeightMode::Copy);
    let out = tmp.path().join("gated");
    let mut o = small(&model, &out, Format::Int8);
    o.components = Some(vec![Component::Transformer]);
    o.max_psnr_drop = Some(0.0); // only a generation as exact as 8-bit rounding passes
    let r = calibrate(&o, &mut |_| {}).unwrap_or_else(|e| panic!("{e}"));
    assert!(!r.passed, "{:?}", r.report.gate);
    assert!(!out.join("manifest.json").exists() && !out.join("transformer.onnx").exists());
    let report: Report =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap_or_default())
            .unwrap_or_else(|e| panic!("{e}"));
    assert!(!report.gate.passed && !report.model_written);
    assert!(report.gate.worst_psnr_drop_db.is_some_and(|d| d > 0.0));
    let md = std::fs::read_to_string(out.join("report.md")).unwrap_or_default();
    assert!(md.contains("FAILED"), "{md}");
}

#[test]
fn link_mode_weights_are_folded_through_their_assembly_chain() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let model = model_dir(tmp.path(), WeightMode::Link);
    let out = tmp.path().join("q");
    let mut o = small(&model, &out, Format::Int8);
    (o.components, o.eval_images) = (Some(vec![Component::Transformer]), 0);
    let r = calibrate(&o, &mut |_| {}).unwrap_or_else(|e| panic!("{e}"));
    let c = &r.report.components["transformer"];
    assert!(c.layers_quantized > 10 && c.nmse < 1e-2, "{c:?}");
    // the quantised graph is self-contained: no linked checkpoint files
    let f = OnnxFile::read(&out.join("transformer.onnx")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        f.external_locations().into_iter().collect::<Vec<_>>(),
        vec!["transformer.onnx.data".to_string()]
    );
    assert!(!f.graph().node.iter().any(|n| n.op_type == "Transpose"
        && n.input[0].ends_with(".weight")
        && c.kept_float.iter().all(|k| !n.input[0].starts_with(&k.layer))));
}

fn err_of(o: &CalibrateOptions) -> String {
    match calibrate(o, &mut |_| {}) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_options_fail_early_and_name_the_culprit() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let model = model_dir(tmp.path(), WeightMode::Copy);
    let out = tmp.path().join("o");
    let base = small(&model, &out, Format::Int8);
    let mut o = base.clone();
    o.sizes = vec![(64, 70)];
    assert!(err_of(&o).contains("--sizes"), "{}", err_of(&o));
    let mut o = base.clone();
    o.components = Some(vec![Component::TextEncoder]);
    assert!(err_of(&o).contains("--components"));
    let mut o = base.clone();
    o.smoothquant = Some(1.5);
    assert!(err_of(&o).contains("--smoothquant"));
    let mut o = base.clone();
    o.budget_nmse = 0.0;
    assert!(err_of(&o).contains("--budget-nmse"));
    let mut o = base.clone();
    o.fp8_attention = true; // with --precision int8
    assert!(err_of(&o).contains("--fp8-attention"), "{}", err_of(&o));
    // --exclude patterns that match no layer are named, before any work, with nothing written
    let mut o = base.clone();
    o.exclude = vec!["proj_out".into(), "no_such_layer".into(), "up_blockz".into()];
    let e = err_of(&o);
    assert!(e.contains("--exclude") && e.contains("'no_such_layer'") && e.contains("'up_blockz'"), "{e}");
    assert!(!e.contains("'proj_out'"), "proj_out matches a DiT layer: {e}");
    assert!(!out.exists(), "nothing written for a bad --exclude");
    let staged = std::fs::read_dir(tmp.path()).unwrap_or_else(|e| panic!("{e}")).flatten();
    assert!(staged.into_iter().all(|e| !e.file_name().to_string_lossy().contains("flux2-calib")));
    o.exclude = vec![String::new()];
    assert!(err_of(&o).contains("--exclude"), "{}", err_of(&o));
    let mut o = base.clone();
    o.out = model.clone();
    assert!(err_of(&o).contains("--out"));
    std::fs::create_dir_all(&out).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(out.join("keep.txt"), "x").unwrap_or_else(|e| panic!("{e}"));
    let e = err_of(&base);
    assert!(e.contains("not an empty folder"), "{e}");
    assert_eq!(std::fs::read_to_string(out.join("keep.txt")).ok().as_deref(), Some("x"), "nothing touched");
    let mut o = base.clone();
    o.model = tmp.path().join("missing");
    o.out = tmp.path().join("o2");
    assert!(matches!(calibrate(&o, &mut |_| {}), Err(CalibrateError::Runtime(_))));
    // a quantised folder is not calibrated again
    let q = tmp.path().join("q");
    let mut o = base.clone();
    (o.out, o.components, o.eval_images) = (q.clone(), Some(vec![Component::Vae]), 0);
    calibrate(&o, &mut |_| {}).unwrap_or_else(|e| panic!("{e}"));
    let mut again = base.clone();
    (again.model, again.out, again.components) = (q, tmp.path().join("qq"), Some(vec![Component::Vae]));
    let e = err_of(&again);
    assert!(e.contains("already quantised"), "{e}");
}

#[test]
fn text_encoder_calibrates_on_tokenised_prompts() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let src = tmp.path().join("src");
    copy_tree(&fixture("text/qwen3/text_encoder"), &src.join("text_encoder"));
    copy_tree(&fixture("text/qwen3/tokenizer"), &src.join("tokenizer"));
    let index = r#"{"_class_name": "Flux2KleinPipeline", "text_encoder": ["transformers", "Qwen3ForCausalLM"],
        "tokenizer": ["transformers", "Qwen2TokenizerFast"], "is_distilled": true}"#;
    std::fs::write(src.join("model_index.json"), index).unwrap_or_else(|e| panic!("{e}"));
    let mut opts = options(Target::Ort, None);
    opts.text_layers = Some(vec![1, 3, 5]); // the fixture has 5 layers
    let model = tmp.path().join("te");
    export_to(&src, &model, None, opts, WeightMode::Copy).unwrap_or_else(|e| panic!("{e}"));
    for format in [Format::Int8, Format::Fp8] {
        let out = tmp.path().join(format.name());
        let mut o = small(&model, &out, format);
        o.max_sequence_length = 32;
        o.prompts = Some((0..6).map(|i| format!("prompt number {i} about a cat")).collect());
        let r = calibrate(&o, &mut |_| {}).unwrap_or_else(|e| panic!("{e}"));
        let c = &r.report.components["text_encoder"];
        // 6 prompts: every fifth (index 4) held out
        assert_eq!((c.calibration_samples, c.heldout_samples), (5, 1));
        assert!(c.layers_quantized > 0 && c.nmse <= 1e-2, "{c:?}");
        assert!(r.report.generations.is_empty(), "no DiT, no generations");
        assert!(out.join("tokenizer").is_dir() && out.join("text_encoder_config.json").is_file());
        onnx_check(&out.join("text_encoder.onnx"));
        check_qdq_types(&out.join("text_encoder.onnx"), format.onnx_type());
    }
}
