//! End-to-end pipeline parity (issue 5): folders exported with the real exporter and run by
//! `flux2_runtime::pipeline::Pipeline` reproduce the images of diffusers 0.42.1
//! `Flux2KleinPipeline` / `Flux2Pipeline` (float32, `output_type="pt"`) to PSNR ≥ 60 dB, from the
//! same noise and prompt embeddings: distilled klein, klein base with true CFG, dev with embedded
//! guidance (4.0 and 2.5), one and two reference images (centre-cropped, non-multiple-of-16
//! PNGs; the output size taken from the first reference or given), and text prompts through the
//! exported Qwen3 text encoder (with and without CFG's empty negative prompt).
//!
//! Fixture: tests/fixtures/gen_pipeline.py. `pipeline/cases.json` describes every case; the
//! generator checks that perturbing any input (embeddings, guidance, references, steps) moves
//! the reference image below 50 dB, so a run that drops or misreads an input fails here.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::Path;

use flux2_exporter::WeightMode;
use flux2_graphs::Target;
use flux2_runtime::images::Reference;
use flux2_runtime::pipeline::{Event, Generated, Pipeline, PromptSource, Request};
use flux2_runtime::tensor_file::Tensor;
use flux2_runtime::{Input, SessionOptions};
use flux2_tests::export::{export_to, options};
use flux2_tests::{f32_of, fixture, load_tensors};
use serde_json::Value;

/// Acceptance bar of issue 5 (peak 1.0).
const MIN_PSNR: f64 = 60.0;

fn cases_json() -> Value {
    let path = fixture("pipeline/cases.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn case_json(all: &Value, name: &str) -> Value {
    let cases = all["cases"].as_array().expect("cases.json: no 'cases' list");
    cases
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("cases.json has no case {name}"))
}

fn usize_of(v: &Value, key: &str) -> usize {
    v[key].as_u64().unwrap_or_else(|| panic!("cases.json: '{key}' is not an integer in {v}")) as usize
}

/// PSNR in dB of `got` against `reference`, both in [0, 1]: 10·log10(1 / mse).
fn psnr(reference: &[f32], got: &[f32]) -> f64 {
    assert_eq!(reference.len(), got.len(), "image sizes differ");
    let mse = reference.iter().zip(got).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum::<f64>()
        / reference.len() as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (1.0 / mse).log10()
    }
}

fn tensor(io: &HashMap<String, Input>, name: &str) -> Tensor {
    let a = f32_of(io, name);
    Tensor { shape: a.shape().to_vec(), data: a.iter().copied().collect() }
}

/// Exports `pipeline/<model>` (every component, f32, ORT) with the text layers the fixture used.
fn export_model(all: &Value, model: &str, out: &Path) {
    let mut opts = options(Target::Ort, None);
    opts.text_layers = all["models"][model]["text_layers"]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_u64().expect("text layer") as usize).collect());
    let src = fixture(&format!("pipeline/{model}"));
    let m = export_to(&src, out, None, opts, WeightMode::Copy)
        .unwrap_or_else(|e| panic!("exporting {}: {e}", src.display()));
    for g in ["transformer", "vae_decoder", "vae_encoder"] {
        assert!(m.graphs.contains_key(g), "{model}: export has no {g} graph");
    }
}

fn open_pipeline(dir: &Path) -> Pipeline {
    // one thread per session: cargo runs the cases in parallel
    let opts = SessionOptions { intra_threads: 1, ..SessionOptions::default() };
    Pipeline::new(dir, flux2_runtime::cpu_factory(opts))
        .unwrap_or_else(|e| panic!("opening {}: {e}", dir.display()))
}

/// The request of a case, with the prompt (and negative) as given.
fn request(
    c: &Value,
    io: &HashMap<String, Input>,
    prompt: PromptSource,
    negative: Option<PromptSource>,
) -> Request {
    let name = c["name"].as_str().expect("case name");
    let mut req = Request::new(prompt);
    req.negative = negative;
    req.references = c["references"]
        .as_array()
        .expect("references list")
        .iter()
        .map(|r| Reference::Path(fixture(&format!("pipeline/{}", r.as_str().expect("reference file name")))))
        .collect();
    if c["width_given"].as_bool().expect("width_given") {
        req.width = Some(usize_of(c, "width"));
        req.height = Some(usize_of(c, "height"));
    }
    req.steps = Some(usize_of(c, "steps"));
    req.guidance = Some(c["guidance"].as_f64().expect("guidance") as f32);
    req.noise = Some(tensor(io, &format!("{name}_noise")));
    if let Some(l) = c["max_sequence_length"].as_u64() {
        req.max_sequence_length = l as usize;
    }
    req
}

/// Checks size, mode and PSNR of a generated image against `{name}_image`.
fn check(c: &Value, io: &HashMap<String, Input>, got: &Generated, what: &str) {
    let name = c["name"].as_str().expect("case name");
    let (w, h) = (usize_of(c, "width"), usize_of(c, "height"));
    assert_eq!((got.image.width, got.image.height), (w, h), "{name} ({what}): image size");
    assert_eq!(got.plan.cfg, c["true_cfg"].as_bool().expect("true_cfg"), "{name} ({what}): true CFG on/off");
    assert_eq!(got.plan.schedule.steps(), usize_of(c, "steps"), "{name} ({what}): steps");
    let reference = f32_of(io, &format!("{name}_image"));
    assert_eq!(reference.shape(), [1, 3, h, w], "{name}: reference image shape");
    let p = psnr(reference.as_slice().expect("contiguous reference"), &got.image.data);
    eprintln!("{name} ({what}): {w}x{h}, PSNR {p:.1} dB");
    assert!(p >= MIN_PSNR, "{name} ({what}): PSNR {p:.2} dB against diffusers, need ≥ {MIN_PSNR} dB");
}

fn run_case(name: &str) {
    let all = cases_json();
    let c = case_json(&all, name);
    let model = c["model"].as_str().expect("model");
    let out = tempfile::tempdir().expect("temp dir");
    export_model(&all, model, out.path());
    let io = load_tensors(&fixture("pipeline/cases.safetensors")).expect("cases.safetensors");
    let mut pipeline = open_pipeline(out.path());
    let embeds = |key: &str| PromptSource::Embeds(tensor(&io, &format!("{name}_{key}")));
    let negative_key = format!("{name}_negative_prompt_embeds");

    match c["prompt"].as_str() {
        Some(text) => {
            // Text -> exported tokenizer + text encoder -> image; CFG encodes "" itself.
            let req = request(&c, &io, PromptSource::Text(text.into()), None);
            let got = pipeline.generate(&req, &mut |_| {}).unwrap_or_else(|e| panic!("{name}: {e}"));
            check(&c, &io, &got, "text prompt");
            // The embeddings diffusers' text encoder made: isolates the text-encoder path.
            let negative = io.contains_key(&negative_key).then(|| embeds("negative_prompt_embeds"));
            let req = request(&c, &io, embeds("prompt_embeds"), negative);
            let got = pipeline.generate(&req, &mut |_| {}).unwrap_or_else(|e| panic!("{name}: {e}"));
            check(&c, &io, &got, "diffusers' prompt embeddings");
        }
        None => {
            let negative = io.contains_key(&negative_key).then(|| embeds("negative_prompt_embeds"));
            let req = request(&c, &io, embeds("prompt_embeds"), negative);
            let got = pipeline.generate(&req, &mut |_| {}).unwrap_or_else(|e| panic!("{name}: {e}"));
            check(&c, &io, &got, "prompt embeddings");
        }
    }
}

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run_case(stringify!($name));
            }
        )*
        const CASES: &[&str] = &[$(stringify!($name)),*];
    };
}

cases!(
    klein_distilled,
    klein_cfg,
    dev_guided,
    dev_guided_2_5,
    klein_ref1,
    klein_ref2,
    dev_ref2,
    klein_text,
    klein_text_cfg,
);

#[test]
fn every_fixture_case_has_a_test() {
    let all = cases_json();
    let names: Vec<&str> = all["cases"]
        .as_array()
        .expect("cases list")
        .iter()
        .map(|c| c["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, CASES, "cases.json and the test list differ: add a test per case");
}

#[test]
fn psnr_is_inf_for_equal_and_60_db_at_1e_minus_3_rms() {
    assert_eq!(psnr(&[0.25, 0.5], &[0.25, 0.5]), f64::INFINITY);
    let p = psnr(&[0.5; 4], &[0.501; 4]);
    assert!((p - 60.0).abs() < 1e-3, "{p}");
}

/// References given as encoded bytes give exactly the image of the same file by path, and a
/// callback that answers `Break` stops the run before that sampling step.
#[test]
fn encoded_references_and_cancellation() {
    let all = cases_json();
    let c = case_json(&all, "klein_ref1");
    let out = tempfile::tempdir().expect("temp dir");
    export_model(&all, c["model"].as_str().expect("model"), out.path());
    let io = load_tensors(&fixture("pipeline/cases.safetensors")).expect("cases.safetensors");
    let mut pipeline = open_pipeline(out.path());
    let prompt = PromptSource::Embeds(tensor(&io, "klein_ref1_prompt_embeds"));
    let mut req = request(&c, &io, prompt, None);
    let by_path = pipeline.generate(&req, &mut |_| {}).expect("references by path");
    req.references = req
        .references
        .iter()
        .enumerate()
        .map(|(i, r)| match r {
            Reference::Path(p) => Reference::Encoded {
                name: format!("references[{i}]"),
                bytes: std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
            },
            other => other.clone(),
        })
        .collect();
    let by_bytes = pipeline.generate(&req, &mut |_| {}).expect("references as bytes");
    assert_eq!(by_path.image.data, by_bytes.image.data, "encoded references changed the image");

    let mut seen = vec![];
    let e = pipeline
        .generate_with(&req, &mut |ev| {
            let stop = matches!(ev, Event::Step { index: 1, .. });
            seen.push(match ev {
                Event::Stage(s) => s.to_string(),
                Event::Step { index, .. } => format!("step {index}"),
            });
            if stop {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("cancelled before sampling step 2 of"), "{e}");
    assert_eq!(seen, ["loading models", "text encoder", "vae encode", "step 0", "step 1"]);
}
