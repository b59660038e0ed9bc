//! A catalogue of inputs a new user hands the `flux2` binary, bad and real-world, run end to
//! end on the small klein fixture (tests/fixtures/pipeline/klein). Every bad input must end
//! with a non-zero exit, an error naming the culprit (file, tensor, option or value), and
//! nothing half-written (no output file or folder, no temporary left behind); every valid
//! one must work. One test per command family; each lists its cases in a table and reports
//! every failing case at once.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(rel)
}

fn klein() -> PathBuf {
    fixture("pipeline/klein")
}

/// What a case must do.
enum Expect {
    /// Exit non-zero, stderr containing every string, and none of the paths existing after.
    Fails(Vec<String>, Vec<PathBuf>),
    /// Exit 0 and every path existing after.
    Works(Vec<PathBuf>),
}

struct Case {
    name: &'static str,
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
    expect: Expect,
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn fails<A: AsRef<str>>(name: &'static str, args: &[A], mentions: &[&str], absent: &[&Path]) -> Case {
    Case {
        name,
        args: args.iter().map(|a| a.as_ref().to_string()).collect(),
        env: vec![],
        expect: Expect::Fails(
            mentions.iter().map(|m| m.to_string()).collect(),
            absent.iter().map(|p| p.to_path_buf()).collect(),
        ),
    }
}

fn works<A: AsRef<str>>(name: &'static str, args: &[A], creates: &[&Path]) -> Case {
    Case {
        name,
        args: args.iter().map(|a| a.as_ref().to_string()).collect(),
        env: vec![],
        expect: Expect::Works(creates.iter().map(|p| p.to_path_buf()).collect()),
    }
}

/// Temporaries a failed write might leave: `.name.tmp` files and `.flux2-staging-*` folders.
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".tmp") || n.starts_with(".flux2-"))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs every case; returns one line per case that did not behave.
fn run_all(cases: &[Case], scratch: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    for c in cases {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flux2"));
        cmd.args(&c.args).current_dir(scratch);
        for (k, v) in &c.env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("running flux2");
        let err = String::from_utf8_lossy(&out.stderr);
        let code = out.status.code();
        match &c.expect {
            Expect::Fails(mentions, absent) => {
                if out.status.success() || code == Some(101) {
                    problems.push(format!("{}: exit {code:?} (want a clean failure); stderr: {err}", c.name));
                }
                for m in mentions {
                    if !err.contains(m.as_str()) {
                        problems.push(format!("{}: error does not mention '{m}': {err}", c.name));
                    }
                }
                for p in absent {
                    if p.exists() {
                        problems.push(format!("{}: left {} behind", c.name, p.display()));
                    }
                }
                if err.contains("panicked") {
                    problems.push(format!("{}: panicked: {err}", c.name));
                }
            }
            Expect::Works(created) => {
                if !out.status.success() {
                    problems.push(format!("{}: failed (exit {code:?}): {err}", c.name));
                }
                for p in created {
                    if !p.exists() {
                        problems.push(format!("{}: did not create {}", c.name, p.display()));
                    }
                }
            }
        }
        let left = leftovers(scratch);
        if !left.is_empty() {
            problems.push(format!("{}: temporaries left in {}: {left:?}", c.name, scratch.display()));
        }
    }
    problems
}

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

/// Exports the klein fixture (every component, copy mode) into `out`.
fn export_klein(ckpt: &Path, out: &Path, extra: &[&str]) {
    let o = Command::new(env!("CARGO_BIN_EXE_flux2"))
        .args(["export", "--checkpoint", &s(ckpt), "--out", &s(out), "--text-layers", "1,2,3"])
        .args(extra)
        .output()
        .expect("flux2 export");
    assert!(o.status.success(), "export {}: {}", ckpt.display(), String::from_utf8_lossy(&o.stderr));
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).expect("mkdir");
    for e in std::fs::read_dir(src).expect("read_dir").flatten() {
        let to = dst.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).expect("copy");
        }
    }
}

#[test]
fn generate_catalogue() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    let model = d.join("klein-onnx");
    export_klein(&klein(), &model, &[]);
    let m = s(&model);
    let variant = |name: &str, change: &dyn Fn(&Path)| {
        let p = d.join(name);
        copy_dir(&model, &p);
        change(&p);
        p
    };
    let no_tok = variant("no-tokenizer", &|p| std::fs::remove_dir_all(p.join("tokenizer")).expect("rm"));
    let bad_manifest = variant("bad-manifest", &|p| std::fs::write(p.join("manifest.json"), "{").expect("w"));
    let no_graph = variant("no-graph", &|p| std::fs::remove_file(p.join("transformer.onnx")).expect("rm"));
    let escape = variant("escaping-manifest", &|p| {
        let text = std::fs::read_to_string(p.join("manifest.json")).expect("read");
        let text = text.replace("\"transformer.onnx\"", "\"../klein-onnx/transformer.onnx\"");
        std::fs::write(p.join("manifest.json"), text).expect("w");
    });
    let cli = fixture("pipeline/cli/klein_distilled");
    let (embeds, noise) = (s(&cli.join("prompt_embeds.safetensors")), s(&cli.join("noise.safetensors")));
    let not_image = d.join("notes.png");
    std::fs::write(&not_image, "these are notes").expect("w");
    let tiny = d.join("tiny.png");
    image::RgbImage::new(32, 32).save(&tiny).expect("png");
    let o = |n: &str| d.join(n);
    // generate with a prompt at 64×64 unless `more` sets the size
    let g = |out: &Path, more: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["generate", "--model", &m, "--prompt", "a fox", "--out", &s(out)]
            .iter()
            .chain(more)
            .map(|a| a.to_string())
            .collect();
        for side in ["--width", "--height"] {
            if !more.contains(&side) {
                a.extend([side.to_string(), "64".to_string()]);
            }
        }
        a
    };
    let mut cases: Vec<Case> = vec![
        fails(
            "missing model folder",
            &["generate", "--model", &s(&o("nope")), "--prompt", "x", "--out", &s(&o("a.png"))],
            &["nope", "does not exist"],
            &[&o("a.png")],
        ),
        fails(
            "model folder without manifest",
            &["generate", "--model", &s(d), "--prompt", "x", "--out", &s(&o("a.png"))],
            &["manifest.json"],
            &[&o("a.png")],
        ),
        fails(
            "manifest file as model",
            &[
                "generate",
                "--model",
                &s(&model.join("manifest.json")),
                "--prompt",
                "x",
                "--out",
                &s(&o("a.png")),
            ],
            &["manifest.json", "not a model folder"],
            &[&o("a.png")],
        ),
        fails(
            "corrupted manifest",
            &["generate", "--model", &s(&bad_manifest), "--prompt", "x", "--out", &s(&o("a.png"))],
            &["bad-manifest/manifest.json"],
            &[&o("a.png")],
        ),
        fails(
            "graph file missing",
            &["generate", "--model", &s(&no_graph), "--prompt", "x", "--out", &s(&o("a.png"))],
            &["transformer.onnx", "missing"],
            &[&o("a.png")],
        ),
        fails(
            "manifest points outside the folder",
            &["generate", "--model", &s(&escape), "--prompt", "x", "--out", &s(&o("a.png"))],
            &["../klein-onnx/transformer.onnx"],
            &[&o("a.png")],
        ),
        fails(
            "missing tokenizer",
            &[
                "generate",
                "--model",
                &s(&no_tok),
                "--prompt",
                "x",
                "--width",
                "64",
                "--height",
                "64",
                "--out",
                &s(&o("a.png")),
            ],
            &["tokenizer"],
            &[&o("a.png")],
        ),
        fails(
            "no prompt",
            &["generate", "--model", &m, "--out", &s(&o("a.png"))],
            &["--prompt"],
            &[&o("a.png")],
        ),
        fails(
            "unknown image extension",
            &g(&o("picture.xyz"), &[]),
            &["picture.xyz", ".xyz"],
            &[&o("picture.xyz")],
        ),
        fails("webp output", &g(&o("picture.webp"), &[]), &["picture.webp"], &[&o("picture.webp")]),
        fails(
            "output without extension",
            &g(&o("picture"), &[]),
            &["picture", "extension"],
            &[&o("picture")],
        ),
        fails(
            "output folder missing",
            &g(&o("nodir/a.png"), &[]),
            &["nodir", "does not exist"],
            &[&o("nodir")],
        ),
        fails("output is a folder", &g(&model.join("tokenizer"), &[]), &["tokenizer", "folder"], &[]),
        fails(
            "width not a multiple of 16",
            &g(&o("a.png"), &["--width", "100"]),
            &["--width", "100", "96"],
            &[&o("a.png")],
        ),
        fails("zero height", &g(&o("a.png"), &["--height", "0"]), &["--height", "0"], &[&o("a.png")]),
        fails(
            "huge size",
            &g(&o("a.png"), &["--width", "100000", "--height", "100000"]),
            &["--width", "100000", "4096"],
            &[&o("a.png")],
        ),
        fails("negative width", &g(&o("a.png"), &["--width", "-64"]), &["--width", "-64"], &[&o("a.png")]),
        fails("zero steps", &g(&o("a.png"), &["--steps", "0"]), &["--steps"], &[&o("a.png")]),
        fails("negative steps", &g(&o("a.png"), &["--steps", "-1"]), &["--steps", "-1"], &[&o("a.png")]),
        fails("seed not a number", &g(&o("a.png"), &["--seed", "abc"]), &["--seed", "abc"], &[&o("a.png")]),
        fails(
            "NaN guidance",
            &g(&o("a.png"), &["--guidance", "nan"]),
            &["--guidance", "NaN"],
            &[&o("a.png")],
        ),
        fails("bad shift", &g(&o("a.png"), &["--shift", "bogus"]), &["--shift", "bogus"], &[&o("a.png")]),
        fails(
            "bad provider",
            &g(&o("a.png"), &["--provider", "metal"]),
            &["--provider", "metal"],
            &[&o("a.png")],
        ),
        fails(
            "zero max sequence length",
            &g(&o("a.png"), &["--max-sequence-length", "0"]),
            &["sequence length"],
            &[&o("a.png")],
        ),
        fails(
            "missing embeddings file",
            &[
                "generate",
                "--model",
                &m,
                "--prompt-embeds",
                &s(&o("nope.safetensors")),
                "--out",
                &s(&o("a.png")),
            ],
            &["nope.safetensors"],
            &[&o("a.png")],
        ),
        fails(
            "embeddings file of another tensor",
            &["generate", "--model", &m, "--prompt-embeds", &noise, "--out", &s(&o("a.png"))],
            &["noise.safetensors", "prompt_embeds"],
            &[&o("a.png")],
        ),
        fails(
            "embeddings file is not safetensors",
            &["generate", "--model", &m, "--prompt-embeds", &s(&not_image), "--out", &s(&o("a.png"))],
            &["notes.png"],
            &[&o("a.png")],
        ),
        fails(
            "noise of the wrong size",
            &g(&o("a.png"), &["--noise", &noise, "--width", "256", "--height", "256"]),
            &["--noise", "[1, 128, 16, 16]"],
            &[&o("a.png")],
        ),
        fails(
            "noise file without noise",
            &g(&o("a.png"), &["--noise", &embeds]),
            &["prompt_embeds.safetensors", "'noise'"],
            &[&o("a.png")],
        ),
        fails(
            "missing reference",
            &g(&o("a.png"), &["--ref", &s(&o("nope.png"))]),
            &["nope.png"],
            &[&o("a.png")],
        ),
        fails(
            "reference is not an image",
            &g(&o("a.png"), &["--ref", &s(&not_image)]),
            &["notes.png"],
            &[&o("a.png")],
        ),
        fails(
            "reference too small",
            &g(&o("a.png"), &["--ref", &s(&tiny)]),
            &["tiny.png", "64"],
            &[&o("a.png")],
        ),
        fails("reference is a folder", &g(&o("a.png"), &["--ref", &s(d)]), &["folder"], &[&o("a.png")]),
        works(
            "empty prompt",
            &[
                "generate",
                "--model",
                &m,
                "--prompt",
                "",
                "--width",
                "64",
                "--height",
                "64",
                "--out",
                &s(&o("empty.png")),
            ],
            &[&o("empty.png")],
        ),
        works("jpeg output", &g(&o("fox.jpg"), &[]), &[&o("fox.jpg")]),
        works(
            "png output with a reference",
            &g(&o("fox.png"), &["--ref", &s(&o("fox.jpg"))]),
            &[&o("fox.png")],
        ),
    ];
    // ORT_DYLIB_PATH naming something that is not ONNX Runtime, or nothing
    for (name, lib) in
        [("ORT_DYLIB_PATH not a library", s(&not_image)), ("ORT_DYLIB_PATH missing", s(&o("libnope.so")))]
    {
        let mut c = fails(
            name,
            &g(&o("a.png"), &[]),
            &["ONNX Runtime library", "ORT_DYLIB_PATH", "scripts/setup.sh"],
            &[&o("a.png")],
        );
        c.env.push(("ORT_DYLIB_PATH", lib));
        cases.push(c);
    }
    let problems = run_all(&cases, d);
    assert!(
        problems.is_empty(),
        "{} of {} cases misbehaved:\n{}",
        problems.len(),
        cases.len(),
        problems.join("\n")
    );
    let jpeg = std::fs::read(o("fox.jpg")).expect("jpeg");
    assert_eq!(&jpeg[..3], &[0xff, 0xd8, 0xff], "fox.jpg is a JPEG");
    let png = std::fs::read(o("fox.png")).expect("png");
    assert_eq!(&png[1..4], b"PNG", "fox.png is a PNG");
}

/// A Hugging Face hub cache entry of `src`: `blobs/<hash>` files (read-only, as the hub
/// leaves them) and `snapshots/<rev>/...` relative symlinks into them.
fn hub_snapshot(src: &Path, cache: &Path) -> PathBuf {
    let repo = cache.join("models--black-forest-labs--FLUX.2-klein-test");
    let snap = repo.join("snapshots/0123456789abcdef");
    fn walk(src: &Path, rel: &Path, repo: &Path, snap: &Path, n: &mut usize) {
        for e in std::fs::read_dir(src.join(rel)).expect("read_dir").flatten() {
            let r = rel.join(e.file_name());
            if e.path().is_dir() {
                walk(src, &r, repo, snap, n);
                continue;
            }
            *n += 1;
            let blob = repo.join("blobs").join(format!("{n:040x}"));
            std::fs::copy(e.path(), &blob).expect("blob");
            let mut perm = std::fs::metadata(&blob).expect("meta").permissions();
            perm.set_readonly(true);
            std::fs::set_permissions(&blob, perm).expect("chmod");
            let link = snap.join(&r);
            std::fs::create_dir_all(link.parent().expect("parent")).expect("mkdir");
            let up = "../".repeat(r.components().count() + 1);
            std::os::unix::fs::symlink(format!("{up}blobs/{n:040x}"), &link).expect("symlink");
        }
    }
    std::fs::create_dir_all(repo.join("blobs")).expect("mkdir");
    walk(src, Path::new(""), &repo, &snap, &mut 0);
    snap
}

fn generate_ok(model: &Path, out: &Path) {
    let o = Command::new(env!("CARGO_BIN_EXE_flux2"))
        .args([
            "generate",
            "--model",
            &s(model),
            "--prompt",
            "a fox",
            "--width",
            "64",
            "--height",
            "64",
            "--out",
            &s(out),
        ])
        .output()
        .expect("flux2 generate");
    assert!(o.status.success(), "generate with {}: {}", model.display(), String::from_utf8_lossy(&o.stderr));
    assert!(out.is_file());
}

fn manifest_weights(dir: &Path) -> Vec<String> {
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).expect("manifest"))
            .expect("json");
    let graphs = m["graphs"].as_object().expect("graphs");
    graphs.values().map(|g| g["weights"].as_str().unwrap_or("").to_string()).collect()
}

/// A hub-cache snapshot with read-only blobs exports in both modes and runs; link mode links
/// the blobs, not the symlinks.
#[test]
fn hub_cache_snapshot_with_read_only_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let snap = hub_snapshot(&klein(), &tmp.path().join("hub"));
    assert!(snap.join("vae/diffusion_pytorch_model.safetensors").is_symlink());
    for mode in ["copy", "link"] {
        let out = tmp.path().join(mode);
        export_klein(&snap, &out, &["--weights", mode]);
        assert!(manifest_weights(&out).iter().all(|w| w == mode), "{mode}: {:?}", manifest_weights(&out));
        if mode == "link" {
            for e in std::fs::read_dir(out.join("weights/vae_decoder")).expect("links").flatten() {
                let meta = std::fs::symlink_metadata(e.path()).expect("meta");
                assert!(meta.is_file(), "{} is a hard link to the blob, not a symlink", e.path().display());
            }
        }
        generate_ok(&out, &tmp.path().join(format!("{mode}.png")));
        // exporting again over the finished folder works too (read-only tokenizer copies)
        export_klein(&snap, &out, &["--weights", mode]);
    }
}

/// Link mode into another filesystem: refused with the way out, or copied when asked.
#[test]
fn output_on_another_filesystem() {
    use std::os::unix::fs::MetadataExt;
    let shm = Path::new("/dev/shm");
    let here = std::fs::metadata(klein()).expect("fixture").dev();
    if !shm.is_dir() || std::fs::metadata(shm).map(|m| m.dev()).ok() == Some(here) {
        eprintln!("note: no second filesystem at /dev/shm; skipping");
        return;
    }
    let tmp = tempfile::tempdir_in(shm).expect("tempdir in /dev/shm");
    let out = tmp.path().join("linked");
    let o = Command::new(env!("CARGO_BIN_EXE_flux2"))
        .args([
            "export",
            "--checkpoint",
            &s(&klein()),
            "--out",
            &s(&out),
            "--text-layers",
            "1,2,3",
            "--weights",
            "link",
        ])
        .output()
        .expect("flux2 export");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    for want in [
        "another filesystem",
        "--weights copy",
        "--link-fallback copy",
        "diffusion_pytorch_model.safetensors",
    ] {
        assert!(err.contains(want), "missing '{want}': {err}");
    }
    assert!(!out.exists(), "a refused export leaves nothing");
    export_klein(&klein(), &out, &["--weights", "link", "--link-fallback", "copy"]);
    assert!(manifest_weights(&out).iter().all(|w| w == "copy"));
    generate_ok(&out, &tmp.path().join("fox.png"));
    let copied = tmp.path().join("copied");
    export_klein(&klein(), &copied, &[]);
    generate_ok(&copied, &tmp.path().join("fox2.png"));
}
