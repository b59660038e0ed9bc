//! The memory budget end to end on the demo model: `flux2 generate --json` reports the peak RSS
//! of each stage; a repeated prompt is answered by the on-disk prompt-embedding cache without
//! running the text encoder, with a bit-identical image; another prompt or length misses; a
//! damaged cache file is ignored and rewritten; `--prompt-cache off` writes nothing.

use std::path::{Path, PathBuf};
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

/// Exports the shipped demo checkpoint (models/flux2-shapes): VAE, DiT and text encoder.
fn demo_export(root: &Path) -> PathBuf {
    let out = root.join("onnx");
    let ck = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/flux2-shapes");
    let args = ["export", "--checkpoint", ck.to_str().unwrap(), "--out", out.to_str().unwrap()];
    ok(&flux2(&args), "flux2 export");
    out
}

/// Runs `generate --json` (64², 2 steps) and returns its summary and the image tensor's bytes.
fn generate(model: &Path, dir: &Path, prompt: &str, extra: &[&str]) -> (Value, Vec<u8>) {
    let (out, tensor) = (dir.join("g.png"), dir.join("g.safetensors"));
    let mut args = vec![
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        prompt,
        "--width",
        "64",
        "--height",
        "64",
        "--steps",
        "2",
        "--json",
        "--out",
        out.to_str().unwrap(),
        "--save-tensor",
        tensor.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let stdout = ok(&flux2(&args), "flux2 generate");
    let doc: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    (doc, std::fs::read(&tensor).unwrap())
}

fn cache_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(dir).map(|rd| rd.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    v.sort();
    v
}

/// Every stage's peak is a plausible RSS (over 10 MiB, under the machine's memory) and the
/// overall peak is the largest of them.
fn check_peaks(doc: &Value) {
    let p = &doc["peak_rss_bytes"];
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next()?.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(u64::MAX, |kb| kb * 1024);
    let mut largest = 0;
    for stage in ["load", "text_encoder", "denoise", "vae_decode"] {
        let b = p[stage].as_u64().unwrap_or_else(|| panic!("no peak for {stage}: {p}"));
        assert!(b > 10 << 20 && b < total, "{stage}: {b} bytes");
        largest = largest.max(b);
    }
    assert!(p["vae_encode"].is_null(), "no reference image, yet a VAE-encode peak: {p}");
    assert_eq!(p["overall"].as_u64(), Some(largest), "{p}");
}

#[cfg(target_os = "linux")]
#[test]
fn peaks_per_stage_and_the_prompt_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let model = demo_export(tmp.path());
    let cache = model.join(".flux2-prompt-cache");
    let prompt = "a red circle on a blue background";

    let (first, image) = generate(&model, tmp.path(), prompt, &[]);
    assert_eq!(first["text_encoder"], "ran", "{first}");
    assert_eq!(first["residency"], "all", "auto keeps every session of a small model");
    check_peaks(&first);
    let written = cache_files(&cache);
    assert!(!written.is_empty(), "nothing written in {}", cache.display());
    assert!(written.iter().all(|p| p.extension().is_some_and(|e| e == "emb")), "{written:?}");

    let (again, same) = generate(&model, tmp.path(), prompt, &[]);
    assert_eq!(again["text_encoder"], "cached", "{again}");
    assert!(again["prompt_cache"]["counts"]["disk_hits"].as_u64() >= Some(1), "{again}");
    assert!(same == image, "the cached embeddings gave another image");
    assert!(again["peak_rss_bytes"]["text_encoder"].as_u64().is_some());

    let (other, _) = generate(&model, tmp.path(), "a green square", &[]);
    assert_eq!(other["text_encoder"], "ran", "another prompt must miss");
    let (shorter, _) = generate(&model, tmp.path(), prompt, &["--max-sequence-length", "64"]);
    assert_eq!(shorter["text_encoder"], "ran", "another length must miss");

    for f in &written {
        let bytes = std::fs::read(f).unwrap();
        std::fs::write(f, &bytes[..bytes.len() - 7]).unwrap();
    }
    let (damaged, redone) = generate(&model, tmp.path(), prompt, &[]);
    assert_eq!(damaged["text_encoder"], "ran", "a truncated cache file was trusted");
    assert!(damaged["prompt_cache"]["counts"]["rejected"].as_u64() >= Some(1), "{damaged}");
    assert!(redone == image);
    let (rewritten, _) = generate(&model, tmp.path(), prompt, &[]);
    assert_eq!(rewritten["text_encoder"], "cached", "the damaged file was not rewritten");

    let before = cache_files(&cache);
    let (off, _) = generate(&model, tmp.path(), "a yellow triangle", &["--prompt-cache", "off"]);
    assert_eq!(off["text_encoder"], "ran");
    assert_eq!(cache_files(&cache), before, "--prompt-cache off wrote files");

    let elsewhere = tmp.path().join("pc");
    let (own, _) = generate(&model, tmp.path(), prompt, &["--prompt-cache", elsewhere.to_str().unwrap()]);
    assert_eq!(own["text_encoder"], "ran", "a new folder starts empty");
    assert!(!cache_files(&elsewhere).is_empty());
}

/// `--residency all` creates the DiT and VAE sessions on background threads while the text
/// encoder runs: the same image bit for bit as one stage at a time, every stage still
/// measured, with and without step caching (its four DiT parts are prefetched instead).
#[cfg(target_os = "linux")]
#[test]
fn background_session_creation_gives_the_same_image() {
    let tmp = tempfile::tempdir().unwrap();
    let model = demo_export(tmp.path());
    let prompt = "a yellow triangle on a purple background";
    for extra in [&["--prompt-cache", "off"][..], &["--prompt-cache", "off", "--cache", "fbc:0.2"][..]] {
        let (stage, a) =
            generate(&model, tmp.path(), prompt, &[extra, &["--residency", "stage"][..]].concat());
        let (all, b) = generate(&model, tmp.path(), prompt, &[extra, &["--residency", "all"][..]].concat());
        assert_eq!((stage["residency"].as_str(), all["residency"].as_str()), (Some("stage"), Some("all")));
        assert!(a == b, "{extra:?}: --residency all gave another image than stage");
        assert_eq!(stage["dit_evaluations"], all["dit_evaluations"], "{extra:?}");
        check_peaks(&all);
    }
    let png = tmp.path().join("bad.png");
    let args =
        ["generate", "--model", model.to_str().unwrap(), "--prompt", prompt, "--out", png.to_str().unwrap()];
    let bad = flux2(&[&args[..], &["--residency", "some"]].concat());
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("--residency some"));
    assert!(!png.exists(), "a refused run wrote {}", png.display());
}
