//! `flux2 calibrate --precision int8` on a whole pipeline (text encoder, DiT, VAE) with no
//! `--components`: one runnable folder with every graph quantised, and VAE convolutions that
//! ONNX Runtime's CPU provider runs as integer kernels. The fusion is read from the graph ONNX
//! Runtime actually runs (saved through the session's optimized-model path): every quantised
//! Conv must have become a `QLinearConv`, so the test fails when the Q/DQ placement stops
//! matching ONNX Runtime's Q/DQ selector (a Conv left as DQ + float Conv is slower than float).

use std::path::{Path, PathBuf};

use flux2_calib::artifacts::ScalesFile;
use flux2_calib::formats::Format;
use flux2_calib::onnx_file::OnnxFile;
use flux2_calib::run::{calibrate, CalibrateOptions, Component};
use flux2_exporter::manifest::Manifest;
use flux2_exporter::WeightMode;
use flux2_graphs::onnx_dtype as dtype;
use flux2_graphs::Target;
use flux2_runtime::ort_env::save_optimized;
use flux2_runtime::pipeline::{Pipeline, PromptSource, Request};
use flux2_runtime::tensors::{run, Input};
use flux2_runtime::{cpu_session, SessionOptions};
use flux2_tests::export::{export_to, options};
use flux2_tests::fixture;

/// Exports the klein pipeline fixture (tokenizer, text encoder, DiT, VAE; f32, ONNX Runtime).
fn export_pipeline(out: &Path) {
    let mut opts = options(Target::Ort, None);
    opts.text_layers = Some(vec![1, 2, 3]); // the fixture's text encoder has 4 layers
    export_to(&fixture("pipeline/klein"), out, None, opts, WeightMode::Copy)
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Default options but for the data size a test can afford.
fn small(model: &Path, out: &Path) -> CalibrateOptions {
    let mut o = CalibrateOptions::new(model.to_path_buf(), out.to_path_buf(), Format::Int8);
    o.sizes = vec![(64, 64), (96, 64)];
    (o.samples, o.heldout) = (8, 2);
    (o.latency_runs, o.eval_images) = (0, 1);
    o.max_sequence_length = 32;
    o.prompts = Some((0..6).map(|i| format!("prompt number {i}: a fox in the snow")).collect());
    o.threads = Some(2);
    o
}

fn sess() -> SessionOptions {
    SessionOptions { intra_threads: 2, ..SessionOptions::default() }
}

/// (integer convolutions, float convolutions) in the graph ONNX Runtime runs for `path`.
fn conv_kernels(path: &Path, work: &Path) -> (usize, usize) {
    let optimized =
        work.join(format!("{}.optimized.onnx", path.file_stem().and_then(|s| s.to_str()).unwrap_or("g")));
    save_optimized(path, &optimized, &sess()).unwrap_or_else(|e| panic!("{e}"));
    let f = OnnxFile::read(&optimized).unwrap_or_else(|e| panic!("{e}"));
    let ops = f.graph().node.iter().map(|n| n.op_type.as_str());
    let (mut int, mut float) = (0, 0);
    for op in ops {
        match op {
            "QLinearConv" | "NhwcQLinearConv" => int += 1,
            "Conv" | "FusedConv" => float += 1,
            _ => {}
        }
    }
    (int, float)
}

/// Quantised convolutions of graph `g` in `scales.json` (per-channel weight scales on axis 0).
fn quantised_convs(scales: &ScalesFile, g: &str) -> usize {
    scales.graphs[g].weights.values().filter(|w| w.scales.axis == Some(0)).count()
}

fn read_scales(dir: &Path) -> ScalesFile {
    let text = std::fs::read_to_string(dir.join("scales.json")).unwrap_or_else(|e| panic!("{e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn int8_default_quantises_the_whole_pipeline_with_integer_vae_convolutions() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (model, out) = (tmp.path().join("f32"), tmp.path().join("int8"));
    export_pipeline(&model);
    let o = small(&model, &out);
    assert!(o.components.is_none(), "the default is every component");
    let r = calibrate(&o, &mut |_| {}).unwrap_or_else(|e| panic!("{e}"));
    assert!(r.passed);
    let manifest = Manifest::read(&out).unwrap_or_else(|e| panic!("{e}"));
    for g in ["text_encoder", "transformer", "vae_decoder", "vae_encoder"] {
        let entry = manifest.graphs.get(g).unwrap_or_else(|| panic!("no {g} in the output manifest"));
        assert_eq!(entry.precision.as_deref(), Some("int8"), "{g}");
        let c = &r.report.components[g];
        assert!(c.layers_quantized > 0 && c.nmse <= o.budget_nmse, "{g}: {c:?}");
    }
    // time per stage is in the report
    assert!(r.report.stage_seconds.iter().any(|(l, _)| l.starts_with("statistics vae_decoder")));
    let md = std::fs::read_to_string(out.join("report.md")).unwrap_or_else(|e| panic!("{e}"));
    assert!(md.contains("## Time per stage"), "{md}");

    // every quantised VAE convolution runs as an integer kernel on ONNX Runtime's CPU provider
    let scales = read_scales(&out);
    for g in ["vae_decoder", "vae_encoder"] {
        let want = quantised_convs(&scales, g);
        let (int, float) = conv_kernels(&out.join(format!("{g}.onnx")), tmp.path());
        assert!(want > 0, "{g}: no convolution quantised");
        assert_eq!(int, want, "{g}: {int} QLinearConv for {want} quantised convolutions ({float} float)");
    }

    // the folder runs from a text prompt, and the full generation stays close to float
    let g = &r.report.generations;
    assert!(g.len() == 1 && g[0].psnr_db > 20.0, "{g:?}");
    let s = sess();
    let mut p = Pipeline::new(&out, flux2_runtime::cpu_factory(s)).unwrap_or_else(|e| panic!("{e}"));
    let mut req = Request::new(PromptSource::Text("a fox".into()));
    (req.width, req.height) = (Some(64), Some(64));
    let img = p.generate(&req, &mut |_| {}).unwrap_or_else(|e| panic!("{e}")).image;
    assert!(img.data.iter().all(|v| v.is_finite()));
}

/// Runs graph `path` on one input, as written (no graph optimisations: the Q/DQ semantics, not
/// ONNX Runtime's fused kernels); its first output.
fn run_once(path: &Path, name: &str, x: &Input) -> Vec<f32> {
    let opts = SessionOptions { optimization: false, ..sess() };
    let mut s = cpu_session(path, &opts).unwrap_or_else(|e| panic!("{e}"));
    let o = run(&mut s, vec![(name, x.clone())]).unwrap_or_else(|e| panic!("{e}"));
    o.into_values().next().map(|a| a.iter().copied().collect()).unwrap_or_default()
}

#[test]
fn signed_activations_give_tensorrt_int8_with_the_same_values() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let model = tmp.path().join("f32");
    export_pipeline(&model);
    let mut outs: Vec<PathBuf> = Vec::new();
    for signed in [false, true] {
        let out = tmp.path().join(if signed { "signed" } else { "unsigned" });
        let mut o = small(&model, &out);
        (o.components, o.eval_images, o.signed_activations) = (Some(vec![Component::Vae]), 0, signed);
        calibrate(&o, &mut |_| {}).unwrap_or_else(|e| panic!("{e}"));
        let f = OnnxFile::read(&out.join("vae_decoder.onnx")).unwrap_or_else(|e| panic!("{e}"));
        let g = f.graph();
        let zp_types: Vec<i32> = g
            .node
            .iter()
            .filter(|n| n.op_type == "QuantizeLinear")
            .filter_map(|n| g.initializer.iter().find(|t| Some(&t.name) == n.input.get(2)))
            .map(|t| t.data_type)
            .collect();
        // convolutions: UINT8 (zero point 128) unless signed; matmuls (attention) always INT8
        let uint8 = zp_types.iter().filter(|&&t| t == dtype::UINT8).count();
        assert!(zp_types.iter().all(|&t| t == dtype::UINT8 || t == dtype::INT8), "{zp_types:?}");
        if signed {
            assert_eq!(uint8, 0, "{zp_types:?}");
        } else {
            assert!(uint8 > 0, "{zp_types:?}");
        }
        outs.push(out);
    }
    let m = Manifest::read(&model).unwrap_or_else(|e| panic!("{e}"));
    let channels: usize =
        m.graphs["vae_decoder"].inputs[0].shape[1].parse().unwrap_or_else(|e| panic!("{e}"));
    let shape = [1usize, channels, 4, 4];
    let data: Vec<f32> =
        (0..shape.iter().product::<usize>()).map(|i| ((i * 7919) % 97) as f32 / 48.0 - 1.0).collect();
    let x = Input::F32(
        ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&shape), data).unwrap_or_else(|e| panic!("{e}")),
    );
    let a = run_once(&outs[0].join("vae_decoder.onnx"), "latents", &x);
    let b = run_once(&outs[1].join("vae_decoder.onnx"), "latents", &x);
    let err = a.iter().zip(&b).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
    assert!(a.len() == b.len() && err <= 1e-4, "UINT8 and INT8 activations differ by up to {err}");
}

/// The image budget (`--min-psnr`) is the primary criterion: asked for more than the default
/// NMSE budget gives, the calibrator selects every graph again under 4× tighter NMSE budgets
/// (more layers in float) until the generation meets it, and reports each round.
#[test]
fn image_budget_tightens_the_nmse_budget_until_the_images_meet_it() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let model = tmp.path().join("f32");
    export_pipeline(&model);
    let mut o = small(&model, &tmp.path().join("loose"));
    o.min_psnr = None;
    let loose = calibrate(&o, &mut |_| {}).unwrap_or_else(|e| panic!("{e}")).report;
    assert!(loose.image_budget.is_none(), "no image budget was asked for");
    let p1 = loose.generations[0].psnr_db;
    assert!(p1 < 90.0, "the fixture must lose some PSNR when quantised: {p1}");

    let mut o = small(&model, &tmp.path().join("tight"));
    o.min_psnr = Some(p1 + 3.0);
    let r = calibrate(&o, &mut |_| {}).unwrap_or_else(|e| panic!("{e}"));
    let b = r.report.image_budget.as_ref().unwrap_or_else(|| panic!("no image budget in the report"));
    assert!(b.rounds.len() >= 2, "{b:?}");
    assert!((b.rounds[0].worst_psnr_db - p1).abs() < 1e-9, "round 1 is the loose selection: {b:?}");
    for w in b.rounds.windows(2) {
        assert!((w[1].budget_nmse - w[0].budget_nmse / 4.0).abs() < 1e-15, "{b:?}");
        assert!(w[1].layers_quantized <= w[0].layers_quantized, "{b:?}");
    }
    let last = b.rounds.last().unwrap_or_else(|| panic!("no rounds"));
    let worst = r.report.generations.iter().map(|g| g.psnr_db).fold(f64::INFINITY, f64::min);
    assert_eq!(worst, last.worst_psnr_db, "the written model is the last round's");
    assert_eq!(b.met, worst >= p1 + 3.0, "{b:?}");
    assert!(b.met || b.rounds.len() == 6 || last.layers_quantized == 0, "stopped early: {b:?}");
    for c in r.report.components.values() {
        assert_eq!(c.sensitivity.budget_nmse, last.budget_nmse, "{}", c.graph);
        assert!(c.nmse <= last.budget_nmse, "{}: {} > {}", c.graph, c.nmse, last.budget_nmse);
    }
    let md = std::fs::read_to_string(tmp.path().join("tight/report.md")).unwrap_or_else(|e| panic!("{e}"));
    assert!(md.contains("## Image budget"), "{md}");
}
