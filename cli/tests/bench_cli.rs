//! `flux2 bench` end to end on the demo model: the table, the JSON (stats consistent with their
//! samples, one DiT sample per step and run, the outside-ORT share, peak RSS) and the PNG plot;
//! random embeddings when the export has no text encoder; bad options exit non-zero.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn flux2(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flux2")).args(args).output().expect("running the flux2 binary")
}

fn ok(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{what} failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    stdout
}

fn stats(doc: &Value, stage: &str) -> (Vec<f64>, Value) {
    let s = &doc["stages"][stage];
    let samples: Vec<f64> = s["samples"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    (samples, s["stats"].clone())
}

/// Exports the shipped demo checkpoint (models/flux2-shapes) with the given components.
fn demo_export(root: &Path, components: &str) -> String {
    let out = root.join(format!("onnx-{}", components.replace(',', "-")));
    let ck = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/flux2-shapes");
    let args = [
        "export",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--components",
        components,
    ];
    ok(&flux2(&args), "flux2 export");
    out.to_str().unwrap().to_string()
}

#[test]
fn bench_reports_stages_json_and_plot() {
    let tmp = tempfile::tempdir().unwrap();
    let model = demo_export(tmp.path(), "vae,transformer,text-encoder");
    let (json, png) = (tmp.path().join("b.json"), tmp.path().join("b.png"));
    let args = [
        "bench",
        "--model",
        &model,
        "--width",
        "48",
        "--height",
        "32",
        "--steps",
        "3",
        "--runs",
        "2",
        "--warmup",
        "1",
        "--refs",
        "1",
        "--threads",
        "1",
        "--max-sequence-length",
        "32",
        "--json",
        json.to_str().unwrap(),
        "--plot",
        png.to_str().unwrap(),
    ];
    let stdout = ok(&flux2(&args), "flux2 bench");
    for word in [
        "text_encoder",
        "dit_step",
        "vae_encode",
        "vae_decode",
        "end_to_end",
        "peak RSS",
        "outside ONNX Runtime",
    ] {
        assert!(stdout.contains(word), "no {word} in:\n{stdout}");
    }
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(
        (doc["steps"].as_u64(), doc["runs"].as_u64(), doc["threads"].as_u64()),
        (Some(3), Some(2), Some(1))
    );
    let (steps, s) = stats(&doc, "dit_step");
    assert_eq!(steps.len(), 3 * 2, "one DiT sample per step and timed run");
    let min = steps.iter().copied().fold(f64::INFINITY, f64::min);
    assert_eq!(s["min"].as_f64(), Some(min));
    assert!(s["min"].as_f64() <= s["median"].as_f64() && s["median"].as_f64() <= s["p90"].as_f64());
    let (e2e, _) = stats(&doc, "end_to_end");
    let (enc, _) = stats(&doc, "vae_encode");
    assert!(enc.iter().all(|&t| t > 0.0), "one reference was encoded in every run");
    for (i, total) in e2e.iter().enumerate() {
        let (te, dec) = (stats(&doc, "text_encoder").0[i], stats(&doc, "vae_decode").0[i]);
        let denoise: f64 = steps[3 * i..3 * i + 3].iter().sum();
        assert!(te + enc[i] + denoise + dec <= total * 1.0001, "stages exceed the total in run {i}");
    }
    let frac = doc["outside_ort_fraction"]["stats"]["median"].as_f64().unwrap();
    assert!((0.0..1.0).contains(&frac), "{frac}");
    assert!(doc["peak_rss_bytes"].as_u64().unwrap_or(0) > 10 << 20);
    assert_eq!(&std::fs::read(&png).unwrap()[..8], b"\x89PNG\r\n\x1a\n");
}

#[test]
fn bench_without_text_encoder_uses_random_embeddings() {
    let tmp = tempfile::tempdir().unwrap();
    let model = demo_export(tmp.path(), "vae,transformer");
    let args =
        ["bench", "--model", &model, "--width", "32", "--height", "32", "--runs", "1", "--warmup", "0"];
    let stdout = ok(&flux2(&args), "flux2 bench");
    assert!(stdout.contains("prompt embeddings"), "{stdout}");
    assert!(!stdout.contains("text_encoder "), "no text-encoder row expected:\n{stdout}");

    let bad = flux2(&["bench", "--model", &model, "--runs", "0"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--runs"));
    let bad = flux2(&["bench", "--model", &model, "--width", "40"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--width"));
}

#[test]
fn bench_against_reports_both_adherences_on_the_shapes_model() {
    let tmp = tempfile::tempdir().unwrap();
    let model = demo_export(tmp.path(), "vae,transformer,text-encoder");
    let json = tmp.path().join("a.json");
    let args = [
        "bench",
        "--model",
        &model,
        "--against",
        &model,
        "--adherence",
        "3",
        "--width",
        "32",
        "--height",
        "32",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--threads",
        "1",
        "--json",
        json.to_str().unwrap(),
    ];
    let stdout = ok(&flux2(&args), "flux2 bench --against");
    assert!(stdout.contains("prompt adherence (3 captions"), "{stdout}");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let a = &doc["against"]["adherence"];
    assert_eq!(a["prompts"].as_u64(), Some(3));
    // the same folder twice: same captions, same noise, same verdicts
    assert_eq!(a["model"], a["against"]);
    assert_eq!(a["change_points"].as_f64(), Some(0.0));
    let all = a["model"]["all"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&all), "{all}");
}
