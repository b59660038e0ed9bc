//! `flux2 generate --num-images N` and `flux2 bench --batch N` on the demo model: the batch
//! writes one PNG per seed (`out_s{seed}.png`) whose bytes equal the one-image run of that
//! seed, the tensor file holds all N images, bad batch options exit non-zero naming the
//! option, and bench reports images/s and the CPU (text and JSON).

use std::path::Path;
use std::process::{Command, Output};

use flux2_runtime::tensor_file::read_tensor;

fn flux2(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flux2")).args(args).output().expect("running the flux2 binary")
}

fn ok(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{what} failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    stdout
}

fn fails(out: &Output, what: &str) -> String {
    assert!(!out.status.success(), "{what} should fail: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// The demo model's export folder (`flux2 demo` output).
fn demo(root: &Path) -> String {
    let d = root.join("demo");
    ok(&flux2(&["demo", "--out", d.to_str().unwrap(), "--size", "32x32", "--steps", "1"]), "flux2 demo");
    d.join("onnx").to_str().unwrap().to_string()
}

/// `generate` on the demo model at 32×32, 2 steps, with extra arguments.
fn generate(model: &str, extra: &[&str]) -> Output {
    let mut args = vec!["generate", "--model", model, "--prompt", "a red square", "--width", "32"];
    args.extend(["--height", "32", "--steps", "2", "--max-sequence-length", "32"]);
    args.extend(extra);
    flux2(&args)
}

#[test]
fn num_images_matches_single_runs_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let model = demo(tmp.path());
    let p = |name: &str| tmp.path().join(name).to_str().unwrap().to_string();
    let (out, all) = (p("fox.png"), p("all.safetensors"));
    let stdout = ok(
        &generate(&model, &["--seed", "5", "--num-images", "3", "--out", &out, "--save-tensor", &all]),
        "batch",
    );
    assert!(stdout.contains("batch of 3") && stdout.contains("images/s"), "{stdout}");
    let batch = read_tensor(Path::new(&all), "image").unwrap();
    assert_eq!(batch.shape, [3, 3, 32, 32]);
    assert!(!tmp.path().join("fox.png").exists(), "with 3 images --out names the stem only");
    for (k, seed) in ["5", "6", "7"].iter().enumerate() {
        let (one, one_t) = (p(&format!("one{seed}.png")), p(&format!("one{seed}.safetensors")));
        ok(&generate(&model, &["--seed", seed, "--out", &one, "--save-tensor", &one_t]), "single");
        let single = read_tensor(Path::new(&one_t), "image").unwrap();
        assert_eq!(single.shape, [1, 3, 32, 32]);
        let row = &batch.data[k * 3 * 32 * 32..(k + 1) * 3 * 32 * 32];
        let same = row.iter().zip(&single.data).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "image {k} (seed {seed}) differs from its single run");
        let png = std::fs::read(p(&format!("fox_s{seed}.png"))).unwrap();
        assert_eq!(png, std::fs::read(&one).unwrap(), "fox_s{seed}.png: PNG bytes (pixels and metadata)");
    }
    assert_ne!(&batch.data[..3072], &batch.data[3072..6144], "seeds 5 and 6 gave the same image");
}

#[test]
fn bad_batch_options_fail_naming_them() {
    let tmp = tempfile::tempdir().unwrap();
    let model = demo(tmp.path());
    let out = tmp.path().join("x.png");
    let err = fails(&generate(&model, &["--num-images", "0", "--out", out.to_str().unwrap()]), "0 images");
    assert!(err.contains("--num-images"), "{err}");
    // one noise row for two images
    let noise = tmp.path().join("noise.safetensors");
    let t = flux2_runtime::tensor_file::Tensor { shape: vec![1, 128, 2, 2], data: vec![0.5; 512] };
    flux2_runtime::tensor_file::write_tensors(&noise, &[("noise", &t)]).unwrap();
    let args = ["--num-images", "2", "--noise", noise.to_str().unwrap(), "--out", out.to_str().unwrap()];
    let err = fails(&generate(&model, &args), "noise rows");
    assert!(err.contains("--noise") && err.contains("[2, 128, 2, 2]"), "{err}");
    assert!(!out.exists() && !tmp.path().join("x_0.png").exists(), "nothing written on error");
    let err = fails(&flux2(&["bench", "--model", &model, "--batch", "0"]), "bench --batch 0");
    assert!(err.contains("--batch"), "{err}");
}

#[test]
fn bench_batch_reports_images_per_second_and_cpu() {
    let tmp = tempfile::tempdir().unwrap();
    let model = demo(tmp.path());
    let json = tmp.path().join("b.json");
    let args = ["bench", "--model", &model, "--width", "32", "--height", "32", "--steps", "1", "--runs", "2"];
    let mut args = args.to_vec();
    args.extend(["--warmup", "0", "--batch", "2", "--threads", "1", "--max-sequence-length", "16"]);
    args.extend(["--json", json.to_str().unwrap()]);
    let stdout = ok(&flux2(&args), "bench --batch 2");
    let cpu = flux2_runtime::cpu::CpuInfo::detect();
    assert!(stdout.starts_with(&format!("CPU: {}", cpu.summary())), "{stdout}");
    assert!(stdout.contains("batch 2") && stdout.contains("images/s"), "{stdout}");
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(doc["batch"], 2);
    assert_eq!(doc["cpu"]["model"], serde_json::json!(cpu.model));
    assert_eq!(doc["cpu"]["isa"], serde_json::json!(cpu.isa));
    let totals = doc["stages"]["end_to_end"]["samples"].as_array().unwrap();
    let rates = doc["images_per_second"]["samples"].as_array().unwrap();
    assert_eq!(rates.len(), 2);
    for (t, r) in totals.iter().zip(rates) {
        let (t, r) = (t.as_f64().unwrap(), r.as_f64().unwrap());
        assert!((r * t - 2.0).abs() < 1e-9, "images/s {r} is not 2 images over {t} s");
    }
}
