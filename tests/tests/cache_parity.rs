//! Step caching against diffusers 0.42.1 on the shipped shapes model (fixture:
//! tests/fixtures/cache/, made by tests/fixtures/gen_cache.py with diffusers' MagCache and
//! TaylorSeer hooks, First-Block Cache's rule ported to FLUX.2, and TeaCache4FLUX's rule): for
//! every caption and setting, full DiT evaluations per image within ±1 of the reference's and
//! the image ≥ 30 dB from the reference's cached image; MagCache ratios recorded by flux2's
//! calibration run within 1 % of those diffusers' `calibrate=True` printed.

use std::path::{Path, PathBuf};

use flux2_exporter::{Kind, WeightMode};
use flux2_graphs::Target;
use flux2_runtime::cache::{CacheCalibration, CacheSpec};
use flux2_runtime::pipeline::{Pipeline, PromptSource, Request};
use flux2_runtime::tensor_file::read_tensor;
use flux2_runtime::SessionOptions;
use flux2_tests::export::{export_to, options};
use flux2_tests::fixture;
use serde_json::Value;

fn shapes_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/flux2-shapes")
}

fn pipeline(dir: &Path) -> Pipeline {
    let opts = SessionOptions::default();
    Pipeline::new(dir, flux2_runtime::cpu_factory(opts)).unwrap()
}

fn request(reference: &Value, cap: usize, cache: Option<CacheSpec>) -> Request {
    let inputs = fixture("cache/inputs");
    let cap_dir = inputs.join(format!("cap{cap}"));
    let mut req = Request::new(PromptSource::Embeds(
        read_tensor(&cap_dir.join("prompt_embeds.safetensors"), "prompt_embeds").unwrap(),
    ));
    req.negative = Some(PromptSource::Embeds(
        read_tensor(&inputs.join("negative_prompt_embeds.safetensors"), "prompt_embeds").unwrap(),
    ));
    req.noise = Some(read_tensor(&cap_dir.join("noise.safetensors"), "noise").unwrap());
    let num = |k: &str| reference[k].as_u64().unwrap() as usize;
    (req.width, req.height, req.steps) = (Some(num("width")), Some(num("height")), Some(num("steps")));
    req.guidance = Some(reference["guidance"].as_f64().unwrap() as f32);
    req.cache = cache;
    req
}

/// 8-bit PSNR of our [0, 1] image against the reference PNG.
fn psnr_png(png: &Path, ours: &[f32]) -> f64 {
    let img = image::open(png).unwrap().to_rgb8();
    let (w, h) = img.dimensions();
    let mut se = 0.0;
    for (i, p) in img.pixels().enumerate() {
        let (y, x) = (i / w as usize, i % w as usize);
        for c in 0..3 {
            let o = (ours[c * (w * h) as usize + y * w as usize + x].clamp(0.0, 1.0) * 255.0).round() as f64;
            se += (o - p[c] as f64).powi(2);
        }
    }
    let mse = se / (3 * w * h) as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}

/// reference.json; Python's json writes PSNRs of identical images as the bare `Infinity`,
/// which is not JSON: read as null (no field this test uses).
fn load_reference(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("reference.json")).unwrap();
    serde_json::from_str(&text.replace("-Infinity", "null").replace("Infinity", "null")).unwrap()
}

fn ratios(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

#[test]
fn decisions_and_images_match_diffusers() {
    let dir = fixture("cache");
    let reference = load_reference(&dir);
    let out = tempfile::tempdir().unwrap();
    let kinds = Some(vec![Kind::Transformer, Kind::Vae]);
    export_to(&shapes_model(), out.path(), kinds, options(Target::Ort, None), WeightMode::Copy).unwrap();
    // the ratios and coefficients every reference setting was given
    let mut cal =
        CacheCalibration { steps: reference["steps"].as_u64().unwrap() as usize, ..Default::default() };
    cal.mag_ratios.insert("cond".into(), ratios(&reference["mag_ratios_used"]["ratios"]));
    cal.tea_coefficients = ratios(&reference["tea"]["coefficients"]);
    cal.write(out.path()).unwrap();

    let mut pipe = pipeline(out.path());
    let settings = reference["settings"].as_object().unwrap();
    let mut failures = Vec::new();
    for cap in 0..reference["captions"].as_array().unwrap().len() {
        for (name, s) in settings {
            let cli = s["cli"].as_str();
            let cache = cli.map(|c| c.parse::<CacheSpec>().unwrap());
            let got = pipe.generate(&request(&reference, cap, cache), &mut |_| {}).unwrap();
            let r = &reference["results"][format!("cap{cap}")][name];
            let want = r["full_count"].as_u64().unwrap() as i64;
            let full = got.timings.dit.full as i64;
            let psnr = psnr_png(&dir.join(r["image"].as_str().unwrap()), &got.image.data);
            eprintln!(
                "cap{cap} {name:<14} full {full:>2} (diffusers {want:>2}), first-block-only {:>2}, \
                 skipped {:>2}; PSNR vs diffusers {psnr:.1} dB",
                got.timings.dit.first_block_only, got.timings.dit.skipped
            );
            if (full - want).abs() > 1 || psnr < 30.0 {
                failures.push(format!("cap{cap} {name}: full {full} vs {want}, {psnr:.1} dB"));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn magcache_ratios_match_diffusers_calibration() {
    let dir = fixture("cache");
    let reference = load_reference(&dir);
    let out = tempfile::tempdir().unwrap();
    let kinds = Some(vec![Kind::Transformer, Kind::Vae]);
    export_to(&shapes_model(), out.path(), kinds, options(Target::Ort, None), WeightMode::Copy).unwrap();
    let mut pipe = pipeline(out.path());
    for cal in reference["mag_calibration"].as_array().unwrap() {
        let cap = cal["caption"].as_u64().unwrap() as usize;
        let c = &pipe.model.manifest.configs["transformer"];
        let hidden =
            (c["num_attention_heads"].as_u64().unwrap() * c["attention_head_dim"].as_u64().unwrap()) as usize;
        let _ = pipe
            .generate(&request(&reference, cap, Some(CacheSpec::Record { hidden })), &mut |_| {})
            .unwrap();
        let recs = std::mem::take(&mut pipe.last_cache_records);
        for (i, branch) in ["cond", "uncond"].iter().enumerate() {
            let want = ratios(&cal["printed"][i]);
            let got = &recs[branch].mag_ratios;
            assert_eq!(got.len(), want.len(), "cap{cap} {branch}");
            let worst = got.iter().zip(&want).map(|(g, w)| ((g - w) / w).abs()).fold(0.0, f64::max);
            eprintln!("cap{cap} {branch}: ratios within {:.3e} relative of diffusers'", worst);
            assert!(worst < 0.01, "cap{cap} {branch}: {got:?} vs {want:?}");
        }
    }
}
