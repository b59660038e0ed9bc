//! `write_repository` on hand-made export and build folders: which models, which platforms,
//! dims and profiles from the manifests, links instead of copies, refusals that leave nothing.
//! (Parsing with Triton's own schema and serving happen in tests/serve/, with a real server.)

use std::path::Path;

use flux2_serve::{write_repository, RepositoryOptions};
use serde_json::json;

fn graph(file: &str, inputs: serde_json::Value, outputs: serde_json::Value) -> serde_json::Value {
    json!({"file": file, "component": "x", "dtype": "f32", "weights": "copy", "target": "ort",
           "parameters": 1, "inputs": inputs, "outputs": outputs})
}

/// An export-style folder with a DiT and a VAE decoder (graph files are placeholders).
fn fake_model(dir: &Path, suffix: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let dit = graph(
        &format!("transformer{suffix}.onnx"),
        json!([{"name": "hidden_states", "dtype": "f32", "shape": ["B", "S", "128"]},
               {"name": "txt_ids", "dtype": "i64", "shape": ["B", "L", "4"]}]),
        json!([{"name": "velocity", "dtype": "f32", "shape": ["B", "S", "128"]}]),
    );
    let dec = graph(
        &format!("vae_decoder{suffix}.onnx"),
        json!([{"name": "latents", "dtype": "f16", "shape": ["1", "128", "h", "w"]}]),
        json!([{"name": "image", "dtype": "f16", "shape": ["1", "3", "16*h", "16*w"]}]),
    );
    let manifest = json!({"tool": "flux2", "tool_version": "0", "variant": "custom", "configs": {},
                          "graphs": {"transformer": dit, "vae_decoder": dec}, "sources": []});
    std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
    for g in ["transformer", "vae_decoder"] {
        std::fs::write(dir.join(format!("{g}{suffix}.onnx")), b"onnx").unwrap();
    }
}

fn options(model: &Path, out: &Path) -> RepositoryOptions {
    RepositoryOptions {
        model: model.to_path_buf(),
        out: out.to_path_buf(),
        instances: 2,
        engines: None,
        provider: "cpu".into(),
        threads: Some(3),
        force: false,
        serving: Default::default(),
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn onnx_stages_link_the_export_and_take_dims_from_the_manifest() {
    let d = tempfile::tempdir().unwrap();
    let model = d.path().join("export");
    fake_model(&model, "");
    let out = d.path().join("repo");
    let report = write_repository(&options(&model, &out)).unwrap();
    let names: Vec<&str> = report.models.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["flux2", "transformer", "vae_decoder"]);
    let flux2 = read(&out.join("flux2/config.pbtxt"));
    assert!(flux2.contains("backend: \"python\"") && flux2.contains("count: 2"), "{flux2}");
    assert!(flux2.contains("name: \"num_images\"\n  data_type: TYPE_INT32\n  dims: [1]"), "{flux2}");
    assert!(flux2.contains("name: \"images\"\n  data_type: TYPE_UINT8\n  dims: [-1, -1, -1, 3]"), "{flux2}");
    assert!(
        flux2.contains("string_value: \"../../export\"") && flux2.contains("string_value: \"3\""),
        "{flux2}"
    );
    assert_eq!(read(&out.join("flux2/1/model.py")), flux2_serve::MODEL_PY);
    let dit = read(&out.join("transformer/config.pbtxt"));
    assert!(
        dit.contains("platform: \"onnxruntime_onnx\"")
            && dit.contains("default_model_filename: \"transformer.onnx\"")
    );
    assert!(dit.contains("name: \"txt_ids\"\n  data_type: TYPE_INT64\n  dims: [-1, -1, 4]"), "{dit}");
    let dec = read(&out.join("vae_decoder/config.pbtxt"));
    assert!(dec.contains("data_type: TYPE_FP16\n  dims: [1, 128, -1, -1]"), "{dec}");
    let link = std::fs::read_link(out.join("transformer/1")).unwrap();
    assert_eq!(link, Path::new("../../export"));
    assert!(std::fs::symlink_metadata(out.join("transformer/1")).unwrap().file_type().is_symlink());
    assert_eq!(read(&out.join("transformer/1/transformer.onnx")), "onnx");
}

#[test]
fn engines_become_tensorrt_plans_with_their_profiles() {
    let d = tempfile::tempdir().unwrap();
    let (model, build) = (d.path().join("export"), d.path().join("build"));
    fake_model(&model, "");
    fake_model(&build, "_ctx");
    std::fs::create_dir_all(build.join("engines")).unwrap();
    std::fs::write(build.join("engines/dit_sm90.engine"), b"plan").unwrap();
    std::fs::write(build.join("engines/dec_sm90.engine"), b"plan").unwrap();
    let profile =
        json!([{"name": "hidden_states", "min": [1, 1, 128], "opt": [1, 4096, 128], "max": [1, 8192, 128]}]);
    let trt = json!({"graphs": {
        "transformer": {"engines": ["engines/dit_sm90.engine"], "profiles": {"profiles": [profile, profile]}},
        "vae_decoder": {"engines": ["engines/dec_sm90.engine"], "profiles": {"profiles": []}}}});
    std::fs::write(build.join("tensorrt.json"), trt.to_string()).unwrap();
    let out = d.path().join("repo");
    let o = RepositoryOptions {
        engines: Some(build.clone()),
        provider: "tensorrt".into(),
        ..options(&model, &out)
    };
    write_repository(&o).unwrap();
    let dit = read(&out.join("transformer/config.pbtxt"));
    assert!(
        dit.contains("platform: \"tensorrt_plan\"")
            && dit.contains("default_model_filename: \"dit_sm90.engine\"")
    );
    assert!(dit.contains("kind: KIND_GPU") && dit.contains("profile: [\"0\", \"1\"]"), "{dit}");
    assert!(!read(&out.join("vae_decoder/config.pbtxt")).contains("profile:"));
    assert_eq!(std::fs::read_link(out.join("transformer/1")).unwrap(), Path::new("../../build/engines"));
    let flux2 = read(&out.join("flux2/config.pbtxt"));
    assert!(
        flux2.contains("\"../../build\"") && flux2.contains("\"tensorrt\"") && flux2.contains("KIND_GPU")
    );

    // an engine listed but missing: refused, nothing written
    std::fs::remove_file(build.join("engines/dec_sm90.engine")).unwrap();
    let o = RepositoryOptions { out: d.path().join("repo2"), ..o };
    let e = write_repository(&o).unwrap_err().to_string();
    assert!(e.contains("dec_sm90.engine") && e.contains("missing"), "{e}");
    let mut left: Vec<String> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into())
        .collect();
    left.sort();
    assert_eq!(left, ["build", "export", "repo"]);
}

#[test]
fn options_are_checked_before_anything_is_written() {
    let d = tempfile::tempdir().unwrap();
    let model = d.path().join("export");
    fake_model(&model, "");
    let out = d.path().join("repo");
    for (o, culprit) in [
        (RepositoryOptions { instances: 0, ..options(&model, &out) }, "--instances"),
        (RepositoryOptions { threads: Some(0), ..options(&model, &out) }, "--threads"),
        (RepositoryOptions { provider: "tensorrt".into(), ..options(&model, &out) }, "--engines"),
        (RepositoryOptions { provider: "rocm".into(), ..options(&model, &out) }, "rocm"),
        (options(&d.path().join("nowhere"), &out), "nowhere"),
        (options(&model, &d.path().join("no/such/dir/repo")), "does not exist"),
    ] {
        let e = write_repository(&o).unwrap_err().to_string();
        assert!(e.contains(culprit), "{culprit}: {e}");
    }
    assert!(!out.exists());
}
