//! `flux2 demo` end to end, as a new user runs it: it writes the checkpoint, the export and a
//! PNG, prints where the image is with the honest random-weights note, reuses everything on a
//! second run, and rejects a bad --size before writing anything.

use std::process::{Command, Output};

fn flux2(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flux2")).args(args).output().expect("running the flux2 binary")
}

#[test]
fn demo_writes_an_image_and_reuses_its_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let d = dir.to_str().unwrap();
    let out = flux2(&["demo", "--out", d, "--size", "64x48", "--prompt", "a tiny test"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "flux2 demo failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    let png = dir.join("demo.png");
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    assert!(stdout.contains(&format!("image: {}", png.display())), "{stdout}");
    assert!(stdout.contains("random weights") && stdout.contains("texture, not a picture"), "{stdout}");
    assert!(stdout.contains("64×48, 4 steps"), "{stdout}");
    for sub in ["checkpoint/model_index.json", "checkpoint/tokenizer/tokenizer.json", "onnx/manifest.json"] {
        assert!(dir.join(sub).is_file(), "{sub} missing");
    }

    let again = flux2(&["demo", "--out", d, "--size", "64x48", "--prompt", "a tiny test"]);
    let stdout2 = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success(), "second run failed: {}", String::from_utf8_lossy(&again.stderr));
    assert!(stdout2.contains("checkpoint: reusing") && stdout2.contains("export: reusing"), "{stdout2}");
    assert_eq!(std::fs::read(&png).unwrap(), bytes, "same prompt and seed must give the same PNG");
}

#[test]
fn bad_size_fails_before_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let out = flux2(&["demo", "--out", dir.to_str().unwrap(), "--size", "100x64"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--size 100x64") && stderr.contains("96x64"), "{stderr}");
    assert!(!dir.exists(), "nothing may be written on bad input");
}
