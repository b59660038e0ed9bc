//! CLI catalogue, generate: missing or damaged model folders, bad sizes, steps, seeds,
//! guidance, shifts and providers, bad embeddings, noise and reference files, unknown image
//! extensions, unwritable outputs, a wrong ORT_DYLIB_PATH, and the valid variants (empty
//! prompt, JPEG output, a reference). Each bad one must fail naming the culprit and write
//! nothing; each valid one must work.

mod common;

use std::path::Path;

use common::*;

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
