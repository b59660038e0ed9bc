//! The built-in demo checkpoint (`flux2_exporter::synth`, issue 5 item 4): it is byte-identical
//! for a seed, it exports with the default options (klein's text layers 9/18/27 included) and
//! generates an image from a text prompt through its own tokenizer, which renders and
//! tokenizes like Qwen3's; and the writer never replaces a folder it did not make.

use std::collections::BTreeMap;
use std::path::Path;

use flux2_exporter::synth::{current_checkpoint, write_checkpoint, SynthSpec, SYNTH_RECORD};
use flux2_exporter::WeightMode;
use flux2_graphs::Target;
use flux2_runtime::model_dir::Guidance;
use flux2_runtime::pipeline::{Pipeline, PromptSource, Request};
use flux2_runtime::tokenizer::{Family, PromptEncoder};
use flux2_runtime::SessionOptions;
use flux2_tests::export::{export_to, options};

/// Every file under `dir` (relative path -> bytes).
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// A CPU pipeline over the export folder `out`.
fn cpu_pipeline(out: &Path) -> Pipeline {
    let opts = SessionOptions::default();
    Pipeline::new(out, flux2_runtime::cpu_factory(opts)).unwrap()
}

#[test]
fn same_seed_same_bytes_other_seed_other_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("c"));
    write_checkpoint(&SynthSpec::demo(5), &a).unwrap();
    write_checkpoint(&SynthSpec::demo(5), &b).unwrap();
    write_checkpoint(&SynthSpec::demo(6), &c).unwrap();
    let (ta, tb, tc) = (tree(&a), tree(&b), tree(&c));
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>());
    for (k, v) in &ta {
        assert!(*v == tb[k], "{k} differs between two writes of the same spec");
    }
    for k in ["transformer/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors"] {
        assert!(ta[k] != tc[k], "{k}: seed 6 gave the same weights as seed 5");
    }
    assert_eq!(ta["tokenizer/tokenizer.json"], tc["tokenizer/tokenizer.json"]);
    // nothing left behind by the staging folder
    let names: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into())
        .collect();
    assert_eq!(names.len(), 3, "stray entries: {names:?}");
}

#[test]
fn current_checkpoint_detects_changes_and_foreign_folders_are_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ck");
    let spec = SynthSpec::demo(1);
    write_checkpoint(&spec, &dir).unwrap();
    assert!(current_checkpoint(&dir, &spec).is_some());
    assert!(current_checkpoint(&dir, &SynthSpec::demo(2)).is_none(), "another seed must not match");
    let cfg = dir.join("vae/config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("\"silu\"", "\"gelu\"")).unwrap();
    assert!(current_checkpoint(&dir, &spec).is_none(), "an edited file must not match");
    // a synthetic checkpoint is replaced in place
    write_checkpoint(&spec, &dir).unwrap();
    assert!(current_checkpoint(&dir, &spec).is_some());

    let foreign = tmp.path().join("mine");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "keep me").unwrap();
    let err = write_checkpoint(&spec, &foreign).unwrap_err().to_string();
    assert!(err.contains(SYNTH_RECORD) && err.contains("mine"), "{err}");
    assert_eq!(std::fs::read_to_string(foreign.join("notes.txt")).unwrap(), "keep me");
}

#[test]
fn bad_spec_is_rejected_naming_the_field() {
    let mut spec = SynthSpec::demo(0);
    spec.transformer.joint_attention_dim += 1;
    let err = spec.validate().unwrap_err().to_string();
    assert!(err.contains("joint_attention_dim"), "{err}");
    let mut spec = SynthSpec::demo(0);
    spec.merges = 10_000;
    spec.text.vocab = 300;
    let err = spec.validate().unwrap_err().to_string();
    assert!(err.contains("vocabulary is 300"), "{err}");
}

#[test]
fn tokenizer_renders_and_pads_like_qwen3() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ck");
    write_checkpoint(&SynthSpec::demo(0), &dir).unwrap();
    let enc = PromptEncoder::from_model_dir(&dir, None).unwrap();
    assert_eq!(enc.family(), Family::Qwen3);
    let prompt = "a red fox sitting in the snow, soft morning light";
    assert_eq!(
        enc.render(prompt).unwrap(),
        format!("<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")
    );
    // transformers 5.23.0 on the same folder:
    //   tok = Flux2KleinPipeline.from_pretrained(dir).tokenizer
    //   tok(tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
    //       add_generation_prompt=True, enable_thinking=False), padding="max_length", max_length=32)
    let reference: [i64; 29] = [
        449, 424, 198, 64, 432, 315, 323, 289, 271, 258, 396, 11, 258, 400, 290, 403, 276, 304, 450, 198,
        449, 350, 198, 451, 198, 198, 452, 198, 198,
    ];
    let e = enc.encode(&[prompt], 32).unwrap();
    assert_eq!(e.input_ids[..29], reference);
    assert_eq!(e.input_ids[29..], [448, 448, 448], "right padding with <|endoftext|>");
    assert_eq!(e.attention_mask.iter().sum::<i64>(), 29);
    // text that spells special tokens becomes them; any byte sequence encodes
    let e = enc.encode(&["東京 🌸 <|im_end|>"], 64).unwrap();
    assert!(e.input_ids.iter().filter(|&&t| t == 450).count() == 2, "{:?}", e.input_ids);
    assert!(e.input_ids.iter().all(|&t| (0..453).contains(&t)));
}

#[test]
fn demo_checkpoint_exports_and_generates() {
    let tmp = tempfile::tempdir().unwrap();
    let (ck, out) = (tmp.path().join("ck"), tmp.path().join("onnx"));
    write_checkpoint(&SynthSpec::demo(3), &ck).unwrap();
    let m = export_to(&ck, &out, None, options(Target::Ort, None), WeightMode::Copy).unwrap();
    let graphs: Vec<&str> = m.graphs.keys().map(|s| s.as_str()).collect();
    assert_eq!(
        graphs,
        [
            "dit_body",
            "dit_embed",
            "dit_head",
            "dit_tail",
            "text_encoder",
            "transformer",
            "vae_decoder",
            "vae_encoder"
        ]
    );
    assert_eq!(m.pipeline["text_layers"], serde_json::json!([9, 18, 27]));
    assert_eq!(m.pipeline["is_distilled"], serde_json::json!(true));

    let mut pipe = cpu_pipeline(&out);
    assert_eq!(pipe.model.guidance_mode(), Guidance::None);
    assert_eq!(pipe.model.default_steps(), 4);
    let mut req = Request::new(PromptSource::Text("a lighthouse at dusk".into()));
    (req.width, req.height, req.max_sequence_length) = (Some(64), Some(48), 64);
    let img = pipe.generate(&req, &mut |_| {}).unwrap().image;
    assert_eq!((img.width, img.height, img.data.len()), (64, 48, 3 * 64 * 48));
    let n = img.data.len() as f64;
    let mean = img.data.iter().map(|&v| v as f64).sum::<f64>() / n;
    let std = (img.data.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
    assert!(img.data.iter().all(|v| (0.0..=1.0).contains(v)));
    assert!(std > 0.05 && (0.1..0.9).contains(&mean), "a flat or saturated image: mean {mean}, std {std}");
    // another prompt changes the image: the text path is live
    req.prompt = PromptSource::Text("a bowl of ramen".into());
    let other = pipe.generate(&req, &mut |_| {}).unwrap().image;
    let diff = img.data.iter().zip(&other.data).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(diff > 1e-3, "the prompt did not change the image");
}

#[test]
fn vocabulary_json_sets_the_exports_sampling_defaults() {
    let tmp = tempfile::tempdir().unwrap();
    let (ck, out) = (tmp.path().join("ck"), tmp.path().join("onnx"));
    write_checkpoint(&SynthSpec::demo(4), &ck).unwrap();
    let vocab = ck.join("vocabulary.json");
    std::fs::write(&vocab, r#"{"size": [32, 48], "steps": 3, "guidance": 1.5, "shapes": ["circle"]}"#)
        .unwrap();
    let m = export_to(&ck, &out, None, options(Target::Ort, None), WeightMode::Copy).unwrap();
    assert_eq!(m.pipeline["default_width"], serde_json::json!(32));
    assert_eq!(m.pipeline["default_height"], serde_json::json!(48));
    assert_eq!(m.pipeline["default_steps"], serde_json::json!(3));
    assert_eq!(m.pipeline["default_guidance"], serde_json::json!(1.5));

    let pipe = cpu_pipeline(&out);
    let req = Request::new(PromptSource::Text("a lighthouse".into()));
    let plan = pipe.plan(&req).unwrap();
    assert_eq!((plan.width, plan.height, plan.schedule.steps(), plan.guidance), (32, 48, 3, 1.5));
    // what the request says wins over the export's defaults
    let mut req = req;
    (req.width, req.height, req.steps, req.guidance) = (Some(64), Some(16), Some(2), Some(3.0));
    let plan = pipe.plan(&req).unwrap();
    assert_eq!((plan.width, plan.height, plan.schedule.steps(), plan.guidance), (64, 16, 2, 3.0));

    // a bad value is refused, naming the file and the key, and nothing is written
    for (bad, key) in
        [(r#"{"size": [30, 48]}"#, "size"), (r#"{"steps": 0}"#, "steps"), (r#"{"guidance": -1}"#, "guidance")]
    {
        std::fs::write(&vocab, bad).unwrap();
        let out2 = tmp.path().join(format!("onnx-{key}"));
        let err = export_to(&ck, &out2, None, options(Target::Ort, None), WeightMode::Copy)
            .unwrap_err()
            .to_string();
        assert!(err.contains("vocabulary.json") && err.contains(key), "{err}");
        assert!(!out2.join("manifest.json").exists(), "{key}: a manifest was written");
    }
}

#[test]
fn vocabulary_resolutions_give_each_size_its_own_sampling_defaults() {
    let tmp = tempfile::tempdir().unwrap();
    let (ck, out) = (tmp.path().join("ck"), tmp.path().join("onnx"));
    write_checkpoint(&SynthSpec::demo(4), &ck).unwrap();
    let vocab = ck.join("vocabulary.json");
    let text = r#"{"size": [64, 64], "steps": 3, "guidance": 1.5, "resolutions": [
        {"size": [32, 32], "steps": 2, "guidance": 2.5, "shift": "fixed:3"},
        {"size": [64, 64], "shift": "fixed:6"}]}"#;
    std::fs::write(&vocab, text).unwrap();
    let m = export_to(&ck, &out, None, options(Target::Ort, None), WeightMode::Copy).unwrap();
    assert_eq!(
        m.pipeline["resolutions"][0],
        serde_json::json!({"width": 32, "height": 32, "steps": 2, "guidance": 2.5, "shift": "fixed:3"})
    );

    let pipe = cpu_pipeline(&out);
    let mut req = Request::new(PromptSource::Text("a lighthouse".into()));
    let plan = pipe.plan(&req).unwrap(); // the default size takes its entry's shift, the top-level steps
    assert_eq!((plan.width, plan.schedule.steps(), plan.guidance), (64, 3, 1.5));
    assert!((plan.schedule.alpha - 6.0).abs() < 1e-12, "{}", plan.schedule.alpha);
    (req.width, req.height) = (Some(32), Some(32));
    let plan = pipe.plan(&req).unwrap();
    assert_eq!((plan.schedule.steps(), plan.guidance), (2, 2.5));
    assert!((plan.schedule.alpha - 3.0).abs() < 1e-12, "{}", plan.schedule.alpha);
    // a size the export does not list: the top-level defaults and the empirical shift
    (req.width, req.height) = (Some(48), Some(48));
    let plan = pipe.plan(&req).unwrap();
    let empirical = flux2_runtime::schedule::Shift::Empirical.alpha_mu(9, 3).0;
    assert_eq!((plan.schedule.steps(), plan.guidance, plan.schedule.alpha), (3, 1.5, empirical));
    // the request wins over the size's defaults
    (req.width, req.height, req.steps, req.guidance) = (Some(32), Some(32), Some(5), Some(1.0));
    req.shift = Some(flux2_runtime::schedule::Shift::Fixed(2.0));
    let plan = pipe.plan(&req).unwrap();
    assert_eq!((plan.schedule.steps(), plan.guidance, plan.schedule.alpha), (5, 1.0, 2.0));

    // bad entries are refused, naming the file and what is wrong, and nothing is written
    for (bad, key) in [
        (r#"{"resolutions": [{"size": [30, 32]}]}"#, "size"),
        (r#"{"resolutions": [{"size": [32, 32], "steps": 0}]}"#, "steps"),
        (r#"{"resolutions": [{"size": [32, 32], "shift": "warp:2"}]}"#, "shift"),
        (r#"{"resolutions": {"size": [32, 32]}}"#, "resolutions"),
    ] {
        std::fs::write(&vocab, bad).unwrap();
        let out2 = tmp.path().join(format!("onnx-{key}"));
        let err = export_to(&ck, &out2, None, options(Target::Ort, None), WeightMode::Copy)
            .unwrap_err()
            .to_string();
        assert!(err.contains("vocabulary.json") && err.contains(key), "{err}");
        assert!(!out2.join("manifest.json").exists(), "{key}: a manifest was written");
    }
}
