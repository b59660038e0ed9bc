//! `flux2 eval` end to end on the shipped shapes model: it exports the model (through
//! `flux2 demo`, as a new user would), judges a few seeded captions, writes report.json and the
//! contact sheet, honours the sampling overrides (--steps, --guidance) and records them (the
//! vocabulary's guidance without --guidance), gives
//! the same verdicts for the same seed, and refuses a bad --guidance before writing anything.

use std::path::Path;
use std::process::{Command, Output};

fn flux2(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flux2")).args(args).output().expect("running the flux2 binary")
}

fn export(dir: &Path) -> String {
    let out = flux2(&["demo", "--out", dir.to_str().unwrap()]);
    assert!(out.status.success(), "flux2 demo failed: {}", String::from_utf8_lossy(&out.stderr));
    dir.join("onnx").to_str().unwrap().to_string()
}

fn report(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap()
}

#[test]
fn eval_writes_a_report_and_records_its_sampling_options() {
    let tmp = tempfile::tempdir().unwrap();
    let model = export(&tmp.path().join("demo"));
    let run = |out: &Path, extra: &[&str]| {
        let mut args =
            vec!["eval", "--model", &model, "--prompts", "3", "--seed", "4", "--out", out.to_str().unwrap()];
        args.extend_from_slice(extra);
        let o = flux2(&args);
        assert!(o.status.success(), "flux2 eval {extra:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let (a, b, c) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("c"));
    let stdout = run(&a, &[]);
    assert!(stdout.contains("all three"), "{stdout}");
    run(&b, &[]);
    run(&c, &["--steps", "6", "--guidance", "7.5"]);
    let (ra, rb, rc) = (report(&a), report(&b), report(&c));
    assert_eq!(ra["prompts"], 3);
    assert_eq!(ra["items"].as_array().unwrap().len(), 3);
    // no --guidance: the vocabulary's, when it names one (else the export's default, not recorded)
    let vocab = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/flux2-shapes/vocabulary.json");
    let vocab: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(vocab).unwrap()).unwrap();
    assert_eq!(ra.get("guidance").and_then(|g| g.as_f64()), vocab.get("guidance").and_then(|g| g.as_f64()));
    for key in ["color", "shape", "background", "all"] {
        let v = ra["accuracy"][key].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "{key} = {v}");
    }
    assert_eq!(ra["items"], rb["items"], "same seed, same captions, noise and verdicts");
    assert_eq!(rc["steps"], 6);
    assert_eq!(rc["guidance"].as_f64(), Some(7.5));
    assert_eq!(
        ra["items"].as_array().unwrap().iter().map(|i| &i["prompt"]).collect::<Vec<_>>(),
        rc["items"].as_array().unwrap().iter().map(|i| &i["prompt"]).collect::<Vec<_>>(),
        "the captions follow from --seed alone"
    );
    assert!(a.join("contact_sheet.png").is_file() && c.join("contact_sheet.png").is_file());
}

#[test]
fn a_bad_guidance_is_refused_before_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let model = export(&tmp.path().join("demo"));
    let out = tmp.path().join("eval");
    let o = flux2(&["eval", "--model", &model, "--guidance=-1", "--out", out.to_str().unwrap()]);
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("--guidance") && stderr.contains("-1"), "{stderr}");
    assert!(!out.exists(), "nothing may be written on bad input");
}
