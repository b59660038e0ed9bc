//! `flux2 export --lora` and `flux2 inspect` on adapter files, end to end through the binary:
//! every DiT case of tests/fixtures/lora (each format, a stack of two adapters at different
//! scales) merged at export in copy mode (diffusers folder) and link mode (BFL single file, so
//! merged tensors replace fused-qkv pieces), against diffusers 0.42.1 + peft 0.21.0 (≤ 1e-3
//! max-abs relative to the output RMS); link mode writes only the touched tensors; the
//! manifest records each adapter; `generate --lora` on a plain export gives the diffusers
//! pipeline image; and bad adapters fail naming the culprit with nothing written.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use flux2_runtime::tensor_file::read_tensor;
use flux2_runtime::{cpu_session, run, Input, SessionOptions};
use ndarray::{ArrayD, IxDyn};
use serde_json::Value;

const DIT_REL: f32 = 1e-3;

fn flux2(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flux2")).args(args).output().expect("running the flux2 binary")
}

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(rel)
}

fn ok(out: &Output, what: &str) -> String {
    assert!(out.status.success(), "{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cases(kind: &str) -> Vec<Value> {
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("lora/cases.json")).unwrap()).unwrap();
    v["cases"].as_array().unwrap().iter().filter(|c| c["kind"] == kind).cloned().collect()
}

fn lora_args(case: &Value) -> Vec<String> {
    let mut args = Vec::new();
    for a in case["adapters"].as_array().unwrap() {
        let path = fixture(&format!("lora/{}", a["file"].as_str().unwrap()));
        args.push("--lora".to_string());
        args.push(format!("{}:{}", path.display(), a["scale"]));
    }
    args
}

fn tensor(path: &Path, name: &str) -> ArrayD<f32> {
    let t = read_tensor(path, name).unwrap();
    ArrayD::from_shape_vec(IxDyn(&t.shape), t.data).unwrap()
}

/// The DiT inputs of io.safetensors case a (ids are int64).
fn dit_inputs(io: &Path) -> Vec<(&'static str, Input)> {
    let bytes = std::fs::read(io).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out = Vec::new();
    for name in ["hidden_states", "encoder_hidden_states", "timestep", "guidance", "img_ids", "txt_ids"] {
        let Ok(view) = st.tensor(name) else { continue };
        let shape = view.shape().to_vec();
        let input = if view.dtype() == safetensors::Dtype::I64 {
            let v = view.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect();
            Input::I64(ArrayD::from_shape_vec(IxDyn(&shape), v).unwrap())
        } else {
            Input::F32(tensor(io, name))
        };
        out.push((name, input));
    }
    out
}

fn rel_max_abs(want: &ArrayD<f32>, got: &ArrayD<f32>) -> f32 {
    assert_eq!(want.shape(), got.shape());
    let rms = (want.iter().map(|v| v * v).sum::<f32>() / want.len() as f32).sqrt();
    want.iter().zip(got).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max) / rms
}

#[test]
fn export_merges_match_diffusers_in_copy_and_link_mode() {
    let reference = fixture("lora/dit.safetensors");
    for case in cases("dit") {
        let name = case["name"].as_str().unwrap();
        let model = case["model"].as_str().unwrap();
        let cfg = fixture(&format!("{model}/transformer/config.json"));
        let bfl = fixture(&format!("{model}/bfl.safetensors"));
        let folder = fixture(model);
        let exports: [(&Path, &str, Option<&Path>); 2] =
            [(folder.as_path(), "copy", None), (bfl.as_path(), "link", Some(cfg.as_path()))];
        for (ckpt, mode, config) in exports {
            let tmp = tempfile::tempdir().unwrap();
            let out = tmp.path().join("x");
            let mut args: Vec<String> =
                ["export", "--checkpoint", ckpt.to_str().unwrap(), "--out", out.to_str().unwrap()]
                    .iter()
                    .map(|s| s.to_string())
                    .collect();
            args.extend(["--weights".into(), mode.into()]);
            if let Some(c) = config {
                args.extend(["--config".into(), c.display().to_string()]);
            }
            args.extend(lora_args(&case));
            let argv: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
            ok(&flux2(&argv), &format!("{name} export ({mode})"));
            let mut s = cpu_session(
                &out.join("transformer.onnx"),
                &SessionOptions { intra_threads: 1, ..Default::default() },
            )
            .unwrap();
            let got = run(&mut s, dit_inputs(&fixture(case["io"].as_str().unwrap())))
                .unwrap()
                .remove("velocity")
                .unwrap();
            let want = tensor(&reference, &format!("{name}_velocity"));
            let d = rel_max_abs(&want, &got);
            eprintln!("{name} merged at export ({mode}): max-abs/rms {d:.2e}");
            assert!(d <= DIT_REL, "{name} ({mode}): max-abs/rms {d:e}");

            let manifest: Value =
                serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
            let recorded = manifest["adapters"].as_array().expect("manifest adapters");
            assert_eq!(recorded.len(), case["adapters"].as_array().unwrap().len(), "{name}");
            for (r, a) in recorded.iter().zip(case["adapters"].as_array().unwrap()) {
                assert_eq!(r["scale"].as_f64(), a["scale"].as_f64(), "{name}");
                assert_eq!(r["fingerprint"].as_str().map(|f| f.len()), Some(64));
                assert!(!r["tensors"].as_array().unwrap().is_empty() && r["rank"].as_u64().unwrap() > 0);
            }
            if mode == "link" {
                check_link_writes_only_touched(&out, recorded);
            }
        }
    }
}

/// In link mode, the data file holds exactly the touched tensors; the rest point at the checkpoint.
fn check_link_writes_only_touched(out: &Path, recorded: &[Value]) {
    let mut touched: Vec<String> = recorded
        .iter()
        .flat_map(|r| r["tensors"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()))
        .collect();
    touched.sort();
    touched.dedup();
    let proto = std::fs::read(out.join("transformer.onnx")).unwrap();
    let model: flux2_graphs::onnx::ModelProto = prost::Message::decode(proto.as_slice()).unwrap();
    let mut written: Vec<String> = Vec::new();
    let mut linked = 0;
    for t in model.graph.unwrap().initializer {
        match t.external_data.iter().find(|e| e.key == "location").map(|e| e.value.clone()) {
            Some(loc) if loc == "transformer.onnx.data" => written.push(t.name),
            Some(loc) if loc.starts_with("weights/") => linked += 1,
            _ => {}
        }
    }
    written.sort();
    assert_eq!(written, touched, "link mode must write exactly the touched tensors");
    assert!(linked > 0, "untouched weights stay linked");
}

#[test]
fn generate_with_runtime_adapters_matches_diffusers_pipeline() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("klein");
    let src = fixture("pipeline/klein");
    ok(
        &flux2(&[
            "export",
            "--checkpoint",
            src.to_str().unwrap(),
            "--out",
            model.to_str().unwrap(),
            "--components",
            "transformer,vae",
        ]),
        "export",
    );
    let images = fixture("lora/pipeline.safetensors");
    for case in cases("pipeline") {
        let name = case["name"].as_str().unwrap();
        let inputs = fixture(case["inputs"].as_str().unwrap());
        let tensor_out = tmp.path().join(format!("{name}.safetensors"));
        let mut args: Vec<String> = vec!["generate".into(), "--model".into(), model.display().to_string()];
        for (flag, file) in [("--prompt-embeds", "prompt_embeds"), ("--noise", "noise")] {
            args.extend([flag.into(), inputs.join(format!("{file}.safetensors")).display().to_string()]);
        }
        for (flag, key) in [("--width", "width"), ("--height", "height"), ("--steps", "steps")] {
            args.extend([flag.into(), case[key].to_string()]);
        }
        args.extend(["--out".into(), tmp.path().join(format!("{name}.png")).display().to_string()]);
        args.extend(["--save-tensor".into(), tensor_out.display().to_string()]);
        args.extend(lora_args(&case));
        let argv: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        ok(&flux2(&argv), &format!("generate {name}"));
        let got = tensor(&tensor_out, "image");
        let want = tensor(&images, &format!("{name}_image"));
        let mse: f64 =
            want.iter().zip(&got).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>() / want.len() as f64;
        let psnr = 10.0 * (1.0 / mse.max(1e-30)).log10();
        eprintln!("generate --lora {name}: {psnr:.1} dB");
        assert!(psnr >= 60.0, "{name}: {psnr:.1} dB");
    }
}

#[test]
fn bad_adapters_fail_naming_the_culprit_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("never");
    let ckpt = fixture("dit/klein");
    let good = fixture("lora/adapters/k_bfl.safetensors");
    let wrong_model = fixture("lora/adapters/g_bfl.safetensors");
    let missing = tmp.path().join("missing.safetensors");
    let cases: HashMap<&str, (String, Vec<&str>)> = HashMap::from([
        ("missing", (missing.display().to_string(), vec!["missing.safetensors", "no such file"])),
        ("scale", (format!("{}:heavy", good.display()), vec!["'heavy' is not a number"])),
        (
            "shape",
            (
                wrong_model.display().to_string(),
                vec!["[64, 64]", "[48, 48]", "double_blocks.0.img_attn.proj"],
            ),
        ),
    ]);
    for (what, (spec, needles)) in cases {
        let o = flux2(&[
            "export",
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--lora",
            &spec,
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{what}: should fail");
        for n in needles {
            assert!(err.contains(n), "{what}: '{n}' not in: {err}");
        }
        assert!(!out.exists(), "{what}: nothing may be written");
    }
    // inspect names the format and the mismatch
    let o = flux2(&["inspect", wrong_model.to_str().unwrap(), "--checkpoint", ckpt.to_str().unwrap()]);
    let text = ok(&o, "inspect");
    assert!(text.contains("BFL/ai-toolkit") && text.contains("does NOT match"), "{text}");
    let o = flux2(&["inspect", good.to_str().unwrap(), "--checkpoint", ckpt.to_str().unwrap(), "--json"]);
    let v: Value = serde_json::from_str(&ok(&o, "inspect --json")).unwrap();
    assert_eq!(v["format"], "BFL/ai-toolkit");
    assert_eq!(v["checkpoint"]["matches"], true);
    assert_eq!(v["rank"], 4);
}
