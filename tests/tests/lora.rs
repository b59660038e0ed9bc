//! LoRA adapters against diffusers 0.42.1 + peft 0.21.0 (fixture: tests/fixtures/gen_lora.py):
//! every format (diffusers/PEFT with rank/alpha patterns and rsLoRA, BFL under
//! `diffusion_model.` and `base_model.model.`, kohya with alphas, a block-diagonal qkv and a
//! skipped modulation key) and a stack of two adapters at different scales, applied at run time
//! on plain exports (copy and link mode, diffusers and BFL checkpoints, so fused BFL pieces get
//! their overrides too), for the DiT (≤ 1e-3 max-abs relative to the output RMS) and the whole
//! pipeline (≥ 60 dB PSNR); adapter switching on one pipeline; and the errors.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use flux2_exporter::{Kind, WeightMode};
use flux2_graphs::Target;
use flux2_runtime::lora::overrides::graph_overrides;
use flux2_runtime::lora::AdapterSpec;
use flux2_runtime::pipeline::{Pipeline, PromptSource, Request};
use flux2_runtime::tensor_file::read_tensor;
use flux2_runtime::{cpu_session_with, run, Input, SessionOptions};
use flux2_tests::export::{export_to, options};
use flux2_tests::{f32_of, fixture, load_tensors};
use ndarray::ArrayD;
use serde_json::Value;

/// DiT tolerance: max-abs difference relative to the reference output's RMS.
const DIT_REL: f32 = 1e-3;
const PSNR_MIN: f64 = 60.0;

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(fixture("lora/cases.json")).expect("lora/cases.json");
    let v: Value = serde_json::from_str(&text).expect("cases.json is JSON");
    v["cases"].as_array().expect("cases").clone()
}

fn specs(case: &Value) -> Vec<AdapterSpec> {
    case["adapters"]
        .as_array()
        .expect("adapters")
        .iter()
        .map(|a| AdapterSpec {
            path: fixture(&format!("lora/{}", a["file"].as_str().expect("file"))),
            scale: a["scale"].as_f64().expect("scale") as f32,
        })
        .collect()
}

fn rel_max_abs(want: &ArrayD<f32>, got: &ArrayD<f32>) -> f32 {
    assert_eq!(want.shape(), got.shape());
    let rms = (want.iter().map(|v| v * v).sum::<f32>() / want.len() as f32).sqrt();
    want.iter().zip(got).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max) / rms
}

/// The base checkpoints a DiT case is exported from: (checkpoint, config override, mode).
fn exports(model: &str) -> Vec<(PathBuf, Option<PathBuf>, WeightMode)> {
    let m = model.trim_start_matches("dit/");
    vec![
        (fixture(model), None, WeightMode::Copy),
        (fixture(model), None, WeightMode::Link),
        // BFL single file: fused qkv become row pieces, each gets its own override
        (
            fixture(&format!("{model}/bfl.safetensors")),
            Some(fixture(&format!("dit/{m}/transformer/config.json"))),
            WeightMode::Link,
        ),
    ]
}

fn dit_inputs(io: &HashMap<String, Input>) -> Vec<(&'static str, Input)> {
    ["hidden_states", "encoder_hidden_states", "timestep", "guidance", "img_ids", "txt_ids"]
        .into_iter()
        .filter_map(|n| io.get(n).map(|t| (n, t.clone())))
        .collect()
}

#[test]
fn runtime_adapters_match_diffusers_dit() {
    let reference = load_tensors(&fixture("lora/dit.safetensors")).unwrap();
    for case in cases().iter().filter(|c| c["kind"] == "dit") {
        let name = case["name"].as_str().unwrap();
        let model = case["model"].as_str().unwrap();
        let io = load_tensors(&fixture(case["io"].as_str().unwrap())).unwrap();
        let want = f32_of(&reference, &format!("{name}_velocity"));
        for (ckpt, cfg, mode) in exports(model) {
            let out = tempfile::tempdir().unwrap();
            export_to(
                &ckpt,
                out.path(),
                Some(vec![Kind::Transformer]),
                options(Target::Ort, cfg.as_deref()),
                mode,
            )
            .unwrap_or_else(|e| panic!("exporting {}: {e}", ckpt.display()));
            let dit = out.path().join("transformer.onnx");
            let (overrides, plan) =
                graph_overrides(&dit, &specs(case)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!overrides.is_empty() && plan.touched().count() > 0);
            let opts = SessionOptions { intra_threads: 1, ..SessionOptions::default() };
            let mut s = cpu_session_with(&dit, &opts, &overrides).unwrap();
            let got = run(&mut s, dit_inputs(&io)).unwrap().remove("velocity").unwrap();
            let d = rel_max_abs(&want, &got);
            eprintln!("{name} on {} ({mode:?}): max-abs/rms {d:.2e}", ckpt.display());
            assert!(d <= DIT_REL, "{name} on {} ({mode:?}): max-abs/rms {d:e} > {DIT_REL:e}", ckpt.display());
        }
    }
}

fn psnr(a: &[f32], b: &[f32]) -> f64 {
    let mse: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>() / a.len() as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (1.0 / mse).log10()
    }
}

#[test]
fn runtime_adapters_match_diffusers_pipeline_and_switch() {
    let out = tempfile::tempdir().unwrap();
    let comps = Some(vec![Kind::Transformer, Kind::Vae]);
    export_to(&fixture("pipeline/klein"), out.path(), comps, options(Target::Ort, None), WeightMode::Copy)
        .unwrap();
    let opts = SessionOptions { intra_threads: 1, ..SessionOptions::default() };
    let mut pipe = Pipeline::new(out.path(), flux2_runtime::cpu_factory(opts)).unwrap();
    let images = load_tensors(&fixture("lora/pipeline.safetensors")).unwrap();
    let base = load_tensors(&fixture("pipeline/cases.safetensors")).unwrap();
    let mut checks: Vec<(String, Vec<AdapterSpec>, ArrayD<f32>)> = Vec::new();
    for case in cases().iter().filter(|c| c["kind"] == "pipeline") {
        let name = case["name"].as_str().unwrap().to_string();
        checks.push((name.clone(), specs(case), f32_of(&images, &format!("{name}_image"))));
    }
    // back to no adapter: the base image again (switching starts from the base weights)
    checks.push(("no adapter".into(), vec![], f32_of(&base, "klein_distilled_image")));
    let cli = fixture("pipeline/cli/klein_distilled");
    let mut req = Request::new(PromptSource::Embeds(
        read_tensor(&cli.join("prompt_embeds.safetensors"), "prompt_embeds").unwrap(),
    ));
    req.noise = Some(read_tensor(&cli.join("noise.safetensors"), "noise").unwrap());
    (req.width, req.height, req.steps) = (Some(64), Some(96), Some(4));
    for (name, adapters, want) in checks {
        pipe.set_adapters(&adapters).unwrap_or_else(|e| panic!("{name}: {e}"));
        let got = pipe.generate(&req, &mut |_| {}).unwrap();
        let p = psnr(want.as_slice().unwrap(), &got.image.data);
        eprintln!("pipeline {name}: {p:.1} dB");
        assert!(p >= PSNR_MIN, "pipeline {name}: {p:.1} dB < {PSNR_MIN} dB");
    }
}

/// Writes a small f32 safetensors adapter.
fn write_adapter(path: &Path, tensors: &[(&str, Vec<usize>)]) {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s)| {
            let len: usize = s.iter().product();
            (n.to_string(), s.clone(), (0..len).flat_map(|i| (0.01 * i as f32).to_le_bytes()).collect())
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(n, s, b)| {
            (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

#[test]
fn adapter_errors_name_the_culprit() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("model");
    export_to(
        &fixture("dit/klein"),
        &dir,
        Some(vec![Kind::Transformer]),
        options(Target::Ort, None),
        WeightMode::Copy,
    )
    .unwrap();
    let dit = dir.join("transformer.onnx");
    let err = |files: Vec<AdapterSpec>| match graph_overrides(&dit, &files) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    };
    let spec = |p: &Path| vec![AdapterSpec { path: p.to_path_buf(), scale: 1.0 }];

    let missing = out.path().join("nope.safetensors");
    let e = err(spec(&missing));
    assert!(e.contains("nope.safetensors") && e.contains("no such file"), "{e}");

    let unknown = out.path().join("unknown.safetensors");
    write_adapter(
        &unknown,
        &[
            ("transformer.transformer_blocks.7.attn.to_q.lora_A.weight", vec![2, 48]),
            ("transformer.transformer_blocks.7.attn.to_q.lora_B.weight", vec![48, 2]),
        ],
    );
    let e = err(spec(&unknown));
    assert!(e.contains("'transformer_blocks.7.attn.to_q'") && e.contains("does not have"), "{e}");

    let shape = out.path().join("shape.safetensors");
    write_adapter(
        &shape,
        &[
            ("diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight", vec![2, 40]),
            ("diffusion_model.double_blocks.0.img_attn.qkv.lora_B.weight", vec![144, 2]),
        ],
    );
    let e = err(spec(&shape));
    assert!(
        e.contains("[144, 40]") && e.contains("[48, 48]") && e.contains("double_blocks.0.img_attn.qkv"),
        "{e}"
    );

    for (key, format) in [
        ("diffusion_model.img_in.lokr_w1", "LoKr"),
        ("transformer.x_embedder.lora_magnitude_vector", "DoRA"),
        ("lora_unet_img_in.dora_scale", "DoRA"),
        ("transformer.x_embedder.lora_B.bias", "bias"),
    ] {
        let f = out.path().join("refused.safetensors");
        write_adapter(&f, &[(key, vec![2, 2])]);
        let e = err(spec(&f));
        assert!(e.contains(format) && e.contains(key), "{key}: {e}");
    }

    // a quantised (Q/DQ) graph refuses run-time adapters: the scales belong to the base weights
    let mut proto: flux2_graphs::onnx::ModelProto =
        prost::Message::decode(std::fs::read(&dit).unwrap().as_slice()).unwrap();
    let graph = proto.graph.as_mut().unwrap();
    graph
        .node
        .push(flux2_graphs::onnx::NodeProto { op_type: "DequantizeLinear".into(), ..Default::default() });
    let quantised = dir.join("quantised.onnx");
    std::fs::write(&quantised, prost::Message::encode_to_vec(&proto)).unwrap();
    let good = vec![AdapterSpec { path: fixture("lora/adapters/k_bfl.safetensors"), scale: 1.0 }];
    let e = graph_overrides(&quantised, &good).map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("quantised") && e.contains("flux2 export --lora"), "{e}");

    let e = AdapterSpec::parse("style.safetensors:strong").unwrap_err().to_string();
    assert!(e.contains("'strong' is not a number"), "{e}");
}
