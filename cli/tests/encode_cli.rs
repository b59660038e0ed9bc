//! `flux2 encode` end to end: `flux2 export` of a fixture text encoder, then prompt ->
//! template -> tokens -> ONNX -> `prompt_embeds`, compared with the diffusers pipeline output
//! for the same prompt (tests/fixtures/text, transformers 5.23.0); plus truncation warnings
//! and errors that name the missing file or unknown family without writing anything.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use flux2_runtime::tensor_file::read_tensor;
use serde_json::Value;

fn flux2(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flux2")).args(args).output().expect("running the flux2 binary")
}

fn text_fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/text").join(rel)
}

/// The generator's description of an io.safetensors (prompts, max length, layer selections).
fn fixture_meta(model: &str) -> Value {
    let bytes = std::fs::read(text_fixture(&format!("{model}/io.safetensors"))).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    serde_json::from_str(header["__metadata__"]["fixture"].as_str().unwrap()).unwrap()
}

fn ok(out: &Output, what: &str) {
    assert!(out.status.success(), "{what} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Exports the fixture's text encoder with its `layers` selection into `dir`.
fn export(model: &str, dir: &Path) {
    let layers: Vec<String> =
        fixture_meta(model)["layers"].as_array().unwrap().iter().map(|v| v.to_string()).collect();
    let te = text_fixture(&format!("{model}/text_encoder"));
    let out = flux2(&[
        "export",
        "--checkpoint",
        te.to_str().unwrap(),
        "--out",
        dir.to_str().unwrap(),
        "--components",
        "text-encoder",
        "--text-layers",
        &layers.join(","),
    ]);
    ok(&out, "flux2 export");
}

fn encode(model_dir: &Path, tok: &Path, prompt: &str, max_len: Option<usize>, out: &Path) -> Output {
    let ml = max_len.map(|m| m.to_string());
    let mut args =
        vec!["encode", "--model", model_dir.to_str().unwrap(), "--tokenizer", tok.to_str().unwrap()];
    args.extend(["--prompt", prompt, "--out", out.to_str().unwrap()]);
    if let Some(m) = &ml {
        args.extend(["--max-length", m.as_str()]);
    }
    flux2(&args)
}

/// Row 0 of the pipeline's batch (the first prompt) against `flux2 encode` of that prompt.
fn parity(model: &str) {
    let meta = fixture_meta(model);
    let tmp = tempfile::tempdir().unwrap();
    let exported = tmp.path().join("onnx");
    export(model, &exported);
    let tok = text_fixture(&format!("{model}/tokenizer"));
    let io = text_fixture(&format!("{model}/io.safetensors"));
    let cases = [
        (
            meta["prompts"][0].as_str().unwrap(),
            meta["max_sequence_length"].as_u64().map(|v| v as usize),
            "prompt_embeds",
        ),
        (meta["full_prompt"].as_str().unwrap(), None, "full_prompt_embeds"), // default --max-length 512
    ];
    for (prompt, max_len, key) in cases {
        let file = tmp.path().join(format!("{key}.safetensors"));
        ok(&encode(&exported, &tok, prompt, max_len, &file), "flux2 encode");
        let got = read_tensor(&file, "prompt_embeds").unwrap();
        let want = read_tensor(&io, key).unwrap();
        let row = want.shape[1] * want.shape[2];
        assert_eq!(got.shape, vec![1, want.shape[1], want.shape[2]], "{model} {key}");
        let d = got.data.iter().zip(&want.data[..row]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        eprintln!("{model} {key}: max-abs {d:.3e}");
        assert!(d <= 1e-4, "{model} {key}: max-abs {d:e}");
    }
}

#[test]
fn mistral_prompt_matches_the_pipeline() {
    parity("mistral");
}

#[test]
fn qwen3_prompt_matches_the_pipeline() {
    parity("qwen3");
}

#[test]
fn over_long_prompt_is_truncated_with_a_warning_and_bad_inputs_fail_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let exported = tmp.path().join("onnx");
    export("qwen3", &exported);
    let tok = text_fixture("qwen3/tokenizer");
    let file = tmp.path().join("long.safetensors");
    let long = "a red cat on a blue mat ".repeat(20);
    let out = encode(&exported, &tok, &long, Some(16), &file);
    ok(&out, "flux2 encode (long prompt)");
    assert!(String::from_utf8_lossy(&out.stderr).contains("truncated"), "no truncation warning");
    assert_eq!(read_tensor(&file, "prompt_embeds").unwrap().shape, vec![1, 16, 192]);

    // a tokenizer folder without tokenizer.json
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let file = tmp.path().join("none.safetensors");
    let out = encode(&exported, &empty, "a cat", Some(16), &file);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("tokenizer.json"), "{err}");
    assert!(!file.exists(), "nothing may be written on error");

    // no tokenizer at all
    let out = flux2(&[
        "encode",
        "--model",
        exported.to_str().unwrap(),
        "--prompt",
        "x",
        "--out",
        file.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--tokenizer"), "{err}");

    // an unknown text-encoder family in the manifest
    let manifest = exported.join("manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap().replace("\"qwen3\"", "\"llama\"");
    std::fs::write(&manifest, text).unwrap();
    let out = encode(&exported, &tok, "a cat", Some(16), &file);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("'llama'"), "{err}");
    assert!(!file.exists());
}
