//! `flux2 demo` end to end, as a new user runs it: it exports the shipped shapes model, draws a
//! caption of its vocabulary at the vocabulary's size and steps, prints where the picture is and
//! what the classifier sees, reuses the export on a second run (same PNG), takes any caption of
//! the vocabulary, and rejects a bad --size or a caption outside the vocabulary before writing.

use std::path::PathBuf;
use std::process::{Command, Output};

fn flux2(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flux2")).args(args).output().expect("running the flux2 binary")
}

/// The shipped model's vocabulary: (size, steps, a caption that is not the default one).
fn vocabulary() -> ((u64, u64), u64, String) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/flux2-shapes/vocabulary.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let size = (v["size"][0].as_u64().unwrap(), v["size"][1].as_u64().unwrap());
    let colors: Vec<&String> = v["colors"].as_object().unwrap().keys().collect();
    let shape = v["shapes"].as_array().unwrap().last().unwrap().as_str().unwrap();
    let caption = v["template"]
        .as_str()
        .unwrap()
        .replace("{color}", colors[colors.len() - 1])
        .replace("{shape}", shape)
        .replace("{background}", colors[0]);
    (size, v["steps"].as_u64().unwrap(), caption)
}

#[test]
fn demo_draws_a_caption_and_reuses_its_export() {
    let ((w, h), steps, caption) = vocabulary();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let d = dir.to_str().unwrap();
    let out = flux2(&["demo", "--out", d]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "flux2 demo failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    let png = dir.join("demo.png");
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    assert!(stdout.contains(&format!("picture: {}", png.display())), "{stdout}");
    assert!(stdout.contains(&format!("{w}×{h}, {steps} steps")), "{stdout}");
    assert!(stdout.contains("the classifier of `flux2 eval` sees: a "), "{stdout}");
    assert!(!stdout.contains("texture, not a picture"), "{stdout}");
    assert!(dir.join("onnx/manifest.json").is_file());

    let again = flux2(&["demo", "--out", d]);
    let stdout2 = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success(), "second run failed: {}", String::from_utf8_lossy(&again.stderr));
    assert!(stdout2.contains("export: reusing"), "{stdout2}");
    assert_eq!(std::fs::read(&png).unwrap(), bytes, "same prompt and seed must give the same PNG");

    let other = flux2(&["demo", "--out", d, "--prompt", &caption, "--seed", "5"]);
    let stdout3 = String::from_utf8_lossy(&other.stdout);
    assert!(other.status.success(), "--prompt {caption}: {}", String::from_utf8_lossy(&other.stderr));
    assert!(stdout3.contains(&format!("prompt \"{caption}\"")), "{stdout3}");
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

#[test]
fn a_caption_outside_the_vocabulary_is_refused_before_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let out = flux2(&["demo", "--out", dir.to_str().unwrap(), "--prompt", "a red fox in the snow"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--prompt") && stderr.contains("a red fox in the snow"), "{stderr}");
    assert!(!dir.exists(), "nothing may be written on bad input");
}
