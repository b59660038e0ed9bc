//! `flux2 check` end to end: exit 0 with a summary on graphs that fit the target, exit 1 with
//! one line per finding (graph file, node) on graphs that do not.

use std::path::Path;
use std::process::{Command, Output};

fn flux2(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flux2")).args(args).output().expect("running the flux2 binary")
}

fn export_vae(target: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/vae/diffusers");
    let out = dir.path().to_str().unwrap();
    let o = flux2(&["export", "--checkpoint", ckpt.to_str().unwrap(), "--out", out, "--target", target]);
    assert!(o.status.success(), "export: {}", String::from_utf8_lossy(&o.stderr));
    dir
}

#[test]
fn passes_graphs_made_for_the_target() {
    let trt = export_vae("tensorrt");
    let dir = trt.path().to_str().unwrap();
    for args in [
        vec!["--target", "tensorrt10"],
        vec!["--target", "tensorrt10", "--gpu", "orin"],
        vec!["--target", "tensorrt11", "--gpu", "hopper"],
        vec!["--target", "ort"],
    ] {
        let o = flux2(&[&["check", "--model", dir], &args[..]].concat());
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{args:?}: {stdout}{}", String::from_utf8_lossy(&o.stderr));
        assert!(
            stdout.contains("vae_decoder: vae_decoder.onnx") && stdout.contains("0 error(s)"),
            "{stdout}"
        );
    }
    let o = flux2(&["check", "--model", dir, "--target", "ort", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON report");
    assert_eq!(v["graphs"].as_array().map(|g| g.len()), Some(2));
}

#[test]
fn fails_with_node_names_on_graphs_the_target_cannot_take() {
    let ort = export_vae("ort");
    let dir = ort.path().to_str().unwrap();
    let o = flux2(&["check", "--model", dir, "--target", "tensorrt10", "--gpu", "orin"]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("error[op-version] vae_decoder.onnx node 'decoder.mid_block.attentions.0.attention'"),
        "{stdout}"
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("not ready for tensorrt10"));
}

#[test]
fn bad_options_name_themselves() {
    let trt = export_vae("tensorrt");
    let dir = trt.path().to_str().unwrap();
    for (args, want) in [
        (vec!["--target", "tensorrt9"], "--target"),
        (vec!["--gpu", "volta"], "--gpu"),
        (vec!["--trt-version", "ten"], "--trt-version"),
        (vec!["--target", "tensorrt11", "--trt-version", "10.16"], "--trt-version"),
        (vec!["--graphs", "unet"], "unet"),
    ] {
        let o = flux2(&[&["check", "--model", dir], &args[..]].concat());
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && stderr.contains(want), "{args:?}: {stderr}");
    }
    let o = flux2(&["check", "--model", "/nonexistent/model"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("manifest.json"));
}
