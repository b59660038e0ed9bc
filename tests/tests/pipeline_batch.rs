//! Batched generation (issue 15 item 3): `Pipeline::generate_batch` with N images gives image
//! k bit for bit the image of a one-image run with seed `seed + k` (or noise row k), for
//! every sampling mode: true CFG with both branches in one DiT call (text prompts, padded to
//! one length) and in two calls (prompt embeddings of different lengths), embedded guidance
//! with reference images, and given noise. Also: the seeds reported, cancelling a batch
//! between sampling steps, and bad batch requests refused naming the option.
//!
//! Models: the pipeline parity fixtures (tests/fixtures/gen_pipeline.py), exported with the
//! real exporter; the images of N = 1 are checked against diffusers in tests/pipeline.rs.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::Path;

use flux2_exporter::WeightMode;
use flux2_graphs::Target;
use flux2_runtime::images::{Chw, Reference};
use flux2_runtime::pipeline::{Event, Pipeline, PromptSource, Request};
use flux2_runtime::tensor_file::Tensor;
use flux2_runtime::{Input, SessionOptions};
use flux2_tests::export::{export_to, options};
use flux2_tests::{f32_of, fixture, load_tensors};

/// Exports `pipeline/<model>` (text layers 1..=3 as the fixture's text encoder uses) and opens it.
fn open(model: &str, out: &Path) -> Pipeline {
    let mut opts = options(Target::Ort, None);
    opts.text_layers = Some(vec![1, 2, 3]);
    let src = fixture(&format!("pipeline/{model}"));
    export_to(&src, out, None, opts, WeightMode::Copy).unwrap_or_else(|e| panic!("exporting {model}: {e}"));
    // one thread per session: cargo runs the tests in parallel
    let so = SessionOptions { intra_threads: 1, ..SessionOptions::default() };
    Pipeline::new(out, flux2_runtime::cpu_factory(so)).unwrap_or_else(|e| panic!("opening {model}: {e}"))
}

fn tensors() -> HashMap<String, Input> {
    load_tensors(&fixture("pipeline/cases.safetensors")).expect("cases.safetensors")
}

fn tensor(io: &HashMap<String, Input>, name: &str) -> Tensor {
    let a = f32_of(io, name);
    Tensor { shape: a.shape().to_vec(), data: a.iter().copied().collect() }
}

/// The event callback that never cancels.
fn go(_: Event) -> ControlFlow<()> {
    ControlFlow::Continue(())
}

fn bits(image: &Chw) -> Vec<u32> {
    image.data.iter().map(|v| v.to_bits()).collect()
}

/// Runs `req` as one batch of `n` and as `n` one-image runs (seed + k, or noise row k) and
/// requires equal bits; returns the batch's images.
fn batch_equals_singles(pipe: &mut Pipeline, req: &Request, n: usize) -> Vec<Chw> {
    let mut batched = req.clone();
    batched.num_images = n;
    let out = pipe.generate_batch(&batched, &mut go).unwrap_or_else(|e| panic!("batch of {n}: {e}"));
    assert_eq!(out.images.len(), n);
    assert_eq!(out.plan.num_images, n);
    for (k, image) in out.images.iter().enumerate() {
        let mut one = req.clone();
        one.num_images = 1;
        one.seed = req.seed.wrapping_add(k as u64);
        if let Some(noise) = &req.noise {
            let per = noise.data.len() / n;
            let mut shape = noise.shape.clone();
            shape[0] = 1;
            one.noise = Some(Tensor { shape, data: noise.data[k * per..(k + 1) * per].to_vec() });
        }
        let single = pipe.generate(&one, &mut |_| {}).unwrap_or_else(|e| panic!("image {k} alone: {e}"));
        assert_eq!((image.width, image.height), (single.image.width, single.image.height));
        let differing = bits(image).iter().zip(bits(&single.image)).filter(|(a, b)| **a != *b).count();
        assert_eq!(differing, 0, "image {k} of {n}: {differing} values differ from its one-image run");
    }
    // different seeds give different images: the rows are not all the same run
    assert_ne!(bits(&out.images[0]), bits(&out.images[n - 1]), "images 0 and {} are equal", n - 1);
    out.images
}

#[test]
fn true_cfg_text_prompt_and_reference_one_call_of_2n_rows() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut pipe = open("klein_base", dir.path());
    let mut req = Request::new(PromptSource::Text("a red cat sitting on a mat".into()));
    req.references = vec![Reference::Path(fixture("pipeline/ref1.png"))];
    (req.width, req.height, req.steps, req.seed, req.max_sequence_length) =
        (Some(48), Some(32), Some(2), 11, 24);
    let plan = pipe.plan(&req).expect("plan");
    assert!(plan.cfg, "klein base samples with true CFG");
    batch_equals_singles(&mut pipe, &req, 3);
}

#[test]
fn true_cfg_prompt_lengths_differ_one_call_per_branch() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut pipe = open("klein_base", dir.path());
    let io = tensors();
    let (cond, uncond) =
        (tensor(&io, "klein_cfg_prompt_embeds"), tensor(&io, "klein_cfg_negative_prompt_embeds"));
    assert_ne!(cond.shape[1], uncond.shape[1], "the fixture's prompts should differ in length");
    let mut req = Request::new(PromptSource::Embeds(cond));
    req.negative = Some(PromptSource::Embeds(uncond));
    (req.width, req.height, req.steps, req.seed) = (Some(32), Some(48), Some(2), 40);
    batch_equals_singles(&mut pipe, &req, 2);
}

#[test]
fn embedded_guidance_with_two_references() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut pipe = open("dev", dir.path());
    let io = tensors();
    let mut req = Request::new(PromptSource::Embeds(tensor(&io, "dev_ref2_prompt_embeds")));
    req.references =
        vec![Reference::Path(fixture("pipeline/ref2.png")), Reference::Path(fixture("pipeline/ref1.png"))];
    (req.width, req.height, req.steps, req.guidance, req.seed) = (Some(32), Some(32), Some(2), Some(2.5), 7);
    batch_equals_singles(&mut pipe, &req, 2);
}

#[test]
fn given_noise_rows_and_reported_seeds() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut pipe = open("klein", dir.path());
    let io = tensors();
    let mut req = Request::new(PromptSource::Embeds(tensor(&io, "klein_distilled_prompt_embeds")));
    (req.width, req.height, req.steps, req.seed) = (Some(32), Some(32), Some(2), u64::MAX - 1);
    req.num_images = 3;
    let seeded = pipe.generate_batch(&req, &mut go).expect("seeded batch");
    assert_eq!(seeded.seeds, [u64::MAX - 1, u64::MAX, 0], "seeds wrap");
    let noise: Vec<f32> =
        (0..2).flat_map(|k| flux2_runtime::noise::noise(100 + k, &[1, 128, 2, 2])).collect();
    req.noise = Some(Tensor { shape: vec![2, 128, 2, 2], data: noise });
    let images = batch_equals_singles(&mut pipe, &req, 2);
    req.num_images = 2;
    assert!(pipe.generate_batch(&req, &mut go).expect("noise batch").seeds.is_empty());
    // noise row k is seed 100 + k: the same images as a seeded batch from seed 100
    req.noise = None;
    req.seed = 100;
    let from_seeds = pipe.generate_batch(&req, &mut go).expect("seeded batch");
    for (a, b) in images.iter().zip(&from_seeds.images) {
        assert_eq!(bits(a), bits(b));
    }
}

#[test]
fn bad_batch_requests_name_the_option() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut pipe = open("klein", dir.path());
    let io = tensors();
    let mut req = Request::new(PromptSource::Embeds(tensor(&io, "klein_distilled_prompt_embeds")));
    (req.width, req.height, req.steps) = (Some(32), Some(32), Some(1));
    req.num_images = 0;
    let err = pipe.generate_batch(&req, &mut go).err().expect("0 images").to_string();
    assert!(err.contains("--num-images") && err.contains("at least 1"), "{err}");
    req.num_images = 2;
    let err = pipe.generate(&req, &mut |_| {}).err().expect("generate with 2 images").to_string();
    assert!(err.contains("generate_batch"), "{err}");
    req.noise = Some(Tensor { shape: vec![1, 128, 2, 2], data: vec![0.0; 512] });
    let err = pipe.plan(&req).expect_err("one noise row for two images").to_string();
    assert!(err.contains("--noise") && err.contains("[2, 128, 2, 2]"), "{err}");
}

#[test]
fn a_batch_cancels_between_steps_and_the_pipeline_goes_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut pipe = open("klein", dir.path());
    let io = tensors();
    let mut req = Request::new(PromptSource::Embeds(tensor(&io, "klein_distilled_prompt_embeds")));
    (req.width, req.height, req.steps, req.seed, req.num_images) = (Some(32), Some(32), Some(3), 5, 2);
    let mut seen = vec![];
    let err = pipe
        .generate_batch(&req, &mut |ev| {
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
    assert!(err.contains("cancelled before sampling step 2 of 3"), "{err}");
    assert_eq!(seen, ["loading models", "text encoder", "vae encode", "step 0", "step 1"]);
    // the cancelled batch leaves nothing behind: the next one equals its one-image runs
    batch_equals_singles(&mut pipe, &req, 2);
}
