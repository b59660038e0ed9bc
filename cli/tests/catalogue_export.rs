//! CLI catalogue, export and inspect: missing, empty, truncated, foreign, NaN-filled and
//! wrongly typed checkpoints, broken shard indexes and configs, bad options and outputs. Each
//! bad one must fail naming the culprit and leave no output; each valid one must work.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::json;

/// A safetensors file from a JSON header and raw data.
fn safetensors(header: serde_json::Value, data: &[u8]) -> Vec<u8> {
    let mut h = serde_json::to_vec(&header).expect("json");
    h.resize(h.len().div_ceil(8) * 8, b' ');
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out
}

/// Header and data offset of a safetensors file.
fn header_of(bytes: &[u8]) -> (serde_json::Value, usize) {
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    (serde_json::from_slice(&bytes[8..8 + n]).expect("header"), 8 + n)
}

/// The klein VAE with NaN and Inf written into `decoder.conv_in.weight`.
fn nan_vae(dir: &Path) -> PathBuf {
    let out = dir.join("nan-vae");
    std::fs::create_dir_all(&out).expect("mkdir");
    std::fs::copy(klein().join("vae/config.json"), out.join("config.json")).expect("config");
    let mut b = std::fs::read(klein().join("vae/diffusion_pytorch_model.safetensors")).expect("vae");
    let (h, start) = header_of(&b);
    let off = start + h["decoder.conv_in.weight"]["data_offsets"][0].as_u64().expect("offset") as usize;
    b[off..off + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    b[off + 8..off + 12].copy_from_slice(&f32::INFINITY.to_le_bytes());
    std::fs::write(out.join("diffusion_pytorch_model.safetensors"), b).expect("write");
    out
}

/// Broken checkpoints made from the klein VAE: truncated, wrong dtype, foreign tensors,
/// a sharded index naming a missing shard, two shards holding the same tensor.
struct Broken {
    truncated: PathBuf,
    wrong_dtype: PathBuf,
    foreign: PathBuf,
    huge_header: PathBuf,
    missing_shard: PathBuf,
    duplicate: PathBuf,
    bad_config: PathBuf,
}

fn broken(dir: &Path) -> Broken {
    let vae = std::fs::read(klein().join("vae/diffusion_pytorch_model.safetensors")).expect("vae");
    let file = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).expect("write");
        p
    };
    let truncated = file("truncated.safetensors", &vae[..vae.len() / 2]);
    let (mut h, start) = header_of(&vae);
    h["decoder.conv_in.weight"]["dtype"] = "I16".into();
    let wrong_dtype = file("wrong-dtype.safetensors", &safetensors(h, &vae[start..]));
    let foreign = file(
        "foreign.safetensors",
        &safetensors(
            json!({"classifier.weight": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}),
            &[0; 8],
        ),
    );
    let mut huge = vae.clone();
    huge[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    let huge_header = file("huge-header.safetensors", &huge);
    let shards = dir.join("sharded");
    std::fs::create_dir_all(&shards).expect("mkdir");
    std::fs::copy(klein().join("vae/config.json"), shards.join("config.json")).expect("config");
    std::fs::write(shards.join("vae-00001-of-00002.safetensors"), &vae).expect("shard");
    let (h, _) = header_of(&vae);
    let map: serde_json::Map<String, serde_json::Value> = h
        .as_object()
        .expect("object")
        .keys()
        .filter(|k| *k != "__metadata__")
        .enumerate()
        .map(|(i, k)| (k.clone(), format!("vae-0000{}-of-00002.safetensors", 1 + i % 2).into()))
        .collect();
    std::fs::write(shards.join("vae.safetensors.index.json"), json!({"weight_map": map}).to_string())
        .expect("index");
    let dup = dir.join("duplicate");
    std::fs::create_dir_all(&dup).expect("mkdir");
    std::fs::copy(klein().join("vae/config.json"), dup.join("config.json")).expect("config");
    std::fs::write(dup.join("a.safetensors"), &vae).expect("a");
    std::fs::write(dup.join("b.safetensors"), &vae).expect("b");
    let bad_config = dir.join("bad-config");
    std::fs::create_dir_all(&bad_config).expect("mkdir");
    std::fs::write(bad_config.join("config.json"), "{ not json").expect("config");
    std::fs::write(bad_config.join("diffusion_pytorch_model.safetensors"), &vae).expect("vae");
    Broken { truncated, wrong_dtype, foreign, huge_header, missing_shard: shards, duplicate: dup, bad_config }
}

#[test]
fn export_and_inspect_catalogue() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    let b = broken(d);
    let nan = nan_vae(d);
    let (k, vae) = (s(&klein()), s(&klein().join("vae")));
    let out = |n: &str| d.join(n);
    let empty = d.join("empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let a_file = d.join("a-file.txt");
    std::fs::write(&a_file, "x").expect("file");
    let exp = |ckpt: &Path, o: &Path| {
        vec!["export".to_string(), "--checkpoint".into(), s(ckpt), "--out".into(), s(o)]
    };
    let args = |v: Vec<String>, more: &[&str]| -> Vec<String> {
        [v, more.iter().map(|m| m.to_string()).collect()].concat()
    };
    let mut cases = vec![
        fails(
            "missing checkpoint",
            &["export", "--checkpoint", &s(&d.join("nope")), "--out", &s(&out("o1"))],
            &["nope", "no such file"],
            &[&out("o1")],
        ),
        fails(
            "empty folder",
            &["export", "--checkpoint", &s(&empty), "--out", &s(&out("o2"))],
            &["empty", "unknown layout"],
            &[&out("o2")],
        ),
        fails(
            "text file as checkpoint",
            &["export", "--checkpoint", &s(&a_file), "--out", &s(&out("o3"))],
            &["a-file.txt"],
            &[&out("o3")],
        ),
        fails(
            "truncated safetensors",
            &["export", "--checkpoint", &s(&b.truncated), "--out", &s(&out("o4"))],
            &["truncated.safetensors", "truncated?"],
            &[&out("o4")],
        ),
        fails(
            "unsupported dtype",
            &["export", "--checkpoint", &s(&b.wrong_dtype), "--out", &s(&out("o5"))],
            &["wrong-dtype.safetensors", "decoder.conv_in.weight", "I16"],
            &[&out("o5")],
        ),
        fails(
            "not a FLUX.2 checkpoint",
            &["export", "--checkpoint", &s(&b.foreign), "--out", &s(&out("o6"))],
            &["foreign.safetensors", "classifier.weight"],
            &[&out("o6")],
        ),
        fails(
            "header length past the file",
            &["export", "--checkpoint", &s(&b.huge_header), "--out", &s(&out("o7"))],
            &["huge-header.safetensors", "header length"],
            &[&out("o7")],
        ),
        fails(
            "index names a missing shard",
            &["export", "--checkpoint", &s(&b.missing_shard), "--out", &s(&out("o8"))],
            &["vae.safetensors.index.json", "vae-00002-of-00002.safetensors"],
            &[&out("o8")],
        ),
        fails(
            "tensor in two shards",
            &["export", "--checkpoint", &s(&b.duplicate), "--out", &s(&out("o9"))],
            &["a.safetensors", "b.safetensors", "appears in both"],
            &[&out("o9")],
        ),
        fails(
            "config.json is not JSON",
            &["export", "--checkpoint", &s(&b.bad_config), "--out", &s(&out("o10"))],
            &["bad-config", "config.json"],
            &[&out("o10")],
        ),
        fails(
            "unknown component",
            &["export", "--checkpoint", &k, "--out", &s(&out("o11")), "--components", "unet"],
            &["--components", "unet"],
            &[&out("o11")],
        ),
        fails(
            "component not in checkpoint",
            &["export", "--checkpoint", &vae, "--out", &s(&out("o12")), "--components", "transformer"],
            &["no transformer component", "found: vae"],
            &[&out("o12")],
        ),
        fails(
            "bad dtype option",
            &["export", "--checkpoint", &vae, "--out", &s(&out("o13")), "--dtype", "f64"],
            &["--dtype", "f64"],
            &[&out("o13")],
        ),
        fails(
            "bad weights option",
            &["export", "--checkpoint", &vae, "--out", &s(&out("o14")), "--weights", "hardlink"],
            &["--weights", "hardlink"],
            &[&out("o14")],
        ),
        fails(
            "bad target option",
            &["export", "--checkpoint", &vae, "--out", &s(&out("o15")), "--target", "coreml"],
            &["--target", "coreml"],
            &[&out("o15")],
        ),
        fails(
            "text layer beyond the model",
            &["export", "--checkpoint", &k, "--out", &s(&out("o16")), "--text-layers", "1,99"],
            &["99", "text encoder"],
            &[&out("o16")],
        ),
        fails(
            "too shallow for default text layers",
            &["export", "--checkpoint", &k, "--out", &s(&out("o17"))],
            &["--text-layers"],
            &[&out("o17")],
        ),
        fails(
            "missing --config file",
            &["export", "--checkpoint", &vae, "--out", &s(&out("o18")), "--config", &s(&d.join("nope.json"))],
            &["--config", "nope.json"],
            &[&out("o18")],
        ),
        fails(
            "--out is a file",
            &["export", "--checkpoint", &vae, "--out", &s(&a_file)],
            &["a-file.txt"],
            &[],
        ),
        fails(
            "--out under a file",
            &["export", "--checkpoint", &vae, "--out", &s(&a_file.join("sub"))],
            &["a-file.txt/sub"],
            &[],
        ),
        fails(
            "NaN weights (copy)",
            &["export", "--checkpoint", &s(&nan), "--out", &s(&out("o19"))],
            &["decoder.conv_in.weight", "NaN", "--allow-nonfinite"],
            &[&out("o19")],
        ),
        fails(
            "NaN weights (link --verify)",
            &["export", "--checkpoint", &s(&nan), "--out", &s(&out("o20")), "--weights", "link", "--verify"],
            &["decoder.conv_in.weight", "NaN"],
            &[&out("o20")],
        ),
        fails(
            "bad --link-fallback",
            &[
                "export",
                "--checkpoint",
                &vae,
                "--out",
                &s(&out("o21")),
                "--weights",
                "link",
                "--link-fallback",
                "symlink",
            ],
            &["--link-fallback", "symlink"],
            &[&out("o21")],
        ),
        fails("inspect missing path", &["inspect", &s(&d.join("nope"))], &["nope"], &[]),
        fails(
            "inspect --verify finds NaN",
            &["inspect", "--verify", &s(&nan)],
            &["decoder.conv_in.weight", "NaN"],
            &[],
        ),
        works(
            "NaN weights exported when allowed",
            &args(exp(&nan, &out("w1")), &["--allow-nonfinite"]),
            &[&out("w1/vae_decoder.onnx.data")],
        ),
        works(
            "NaN weights linked without --verify",
            &args(exp(&nan, &out("w2")), &["--weights", "link"]),
            &[&out("w2/vae_decoder.onnx")],
        ),
        works("inspect --verify on clean weights", &["inspect", "--verify", &vae], &[]),
        works(
            "export into an existing export folder",
            &args(exp(&klein().join("vae"), &out("w1")), &[]),
            &[&out("w1/manifest.json")],
        ),
    ];
    cases.push(works("inspect a diffusers folder", &["inspect", &s(&klein())], &[]));
    let problems = run_all(&cases, d);
    assert!(
        problems.is_empty(),
        "{} of {} cases misbehaved:\n{}",
        problems.len(),
        cases.len(),
        problems.join("\n")
    );
}
