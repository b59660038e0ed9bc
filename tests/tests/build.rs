//! `flux2 build` without a GPU: the plan (precision rules per GPU, lint, profiles from buckets
//! and references, provider options per graph) is computed and checked on this CPU machine;
//! the build itself stops at the host check with an error naming the missing provider and
//! writes nothing.

#[path = "lint_support/mod.rs"]
mod support;

use std::path::Path;

use flux2_calib::formats::Format;
use flux2_deploy::trt::build::{plan, BuildPlan, GraphPlan};
use flux2_deploy::trt::engine::graph_options;
use flux2_deploy::trt::{build, BuildRequest};
use flux2_graphs::Target;
use flux2_runtime::trt::probe::TrtVersion;
use flux2_runtime::trt::{Bucket, FloatPrecision, GpuTarget, Quant, ShapePlan, TrtError};
use support::{calibrated, export_pipeline};

fn request(model: &Path, out: &Path, gpu: GpuTarget) -> BuildRequest {
    let buckets: Vec<Bucket> =
        ["1024x1024", "768x1360", "512x512"].iter().map(|b| b.parse().unwrap()).collect();
    BuildRequest {
        model: model.to_path_buf(),
        out: out.to_path_buf(),
        gpu,
        shapes: ShapePlan::new(buckets, None, 0, 1, false).unwrap(),
        float: FloatPrecision::Fp16,
        dla_core: None,
        builder_optimization_level: Some(3),
        max_workspace_size: None,
        timing_cache: None,
        graphs: None,
        device_id: 0,
        trt_version: None,
        force: false,
        refittable: false,
    }
}

fn graph<'a>(p: &'a BuildPlan, name: &str) -> &'a GraphPlan {
    p.graphs.iter().find(|g| g.name == name).unwrap()
}

/// The provider options a graph of the plan would be built with.
fn options(p: &BuildPlan, name: &str) -> Vec<(&'static str, String)> {
    let g = graph(p, name);
    let key = "0123456789abcdef0123";
    graph_options(p, g, key, Path::new("/stage"), Path::new("/stage/timing")).provider_options().unwrap()
}

fn get<'a>(o: &'a [(&'static str, String)], k: &str) -> Option<&'a str> {
    o.iter().find(|(key, _)| *key == k).map(|(_, v)| v.as_str())
}

#[test]
fn float_graphs_plan_fp16_with_bucket_profiles() {
    let trt = export_pipeline(Target::TensorRt);
    let out = tempfile::tempdir().unwrap();
    let p = plan(&request(trt.path(), &out.path().join("b"), GpuTarget::Hopper)).unwrap();
    // the four pipeline graphs and the four step-caching DiT parts (dit_embed/head/body/tail)
    assert_eq!(p.graphs.len(), 8);
    assert_eq!(p.graphs.iter().filter(|g| g.name.starts_with("dit_")).count(), 4);
    for g in &p.graphs {
        assert_eq!(
            (g.quant, g.fp16, g.int8, g.precision.as_str()),
            (Quant::None, true, false, "fp16"),
            "{}",
            g.name
        );
        assert_eq!(g.calibration_hash, "none");
    }
    let o = options(&p, "transformer");
    // 512² = 1024 tokens, 1024² = 4096, 768x1360 = 48*85 = 4080; L keeps its exported 1..512
    assert_eq!(get(&o, "trt_profile_min_shapes"), Some("hidden_states:1x1024x128,encoder_hidden_states:1x1x120,timestep:1,img_ids:1x1024x4,txt_ids:1x1x4"));
    assert_eq!(get(&o, "trt_profile_opt_shapes"), Some("hidden_states:1x4096x128,encoder_hidden_states:1x512x120,timestep:1,img_ids:1x4096x4,txt_ids:1x512x4"));
    assert_eq!(get(&o, "trt_profile_max_shapes"), Some("hidden_states:1x4096x128,encoder_hidden_states:1x512x120,timestep:1,img_ids:1x4096x4,txt_ids:1x512x4"));
    assert_eq!(get(&o, "trt_fp16_enable"), Some("1"));
    assert_eq!(get(&o, "trt_int8_enable"), Some("0"));
    assert_eq!(get(&o, "trt_engine_cache_enable"), Some("1"));
    assert_eq!(get(&o, "trt_engine_cache_path"), Some("engines"));
    assert_eq!(get(&o, "trt_engine_cache_prefix"), Some("transformer_0123456789abcdef"));
    assert_eq!(get(&o, "trt_timing_cache_path"), Some("/stage/timing"));
    assert_eq!(get(&o, "trt_dump_ep_context_model"), Some("1"));
    assert_eq!(get(&o, "trt_ep_context_file_path"), Some("/stage/transformer_ctx.onnx"));
    assert_eq!(get(&o, "trt_ep_context_embed_mode"), Some("0"));
    assert_eq!(get(&o, "trt_builder_optimization_level"), Some("3"));
    assert_eq!(get(&o, "trt_int8_calibration_table_name"), None);
    let o = options(&p, "vae_decoder");
    assert_eq!(get(&o, "trt_profile_min_shapes"), Some("latents:1x128x32x32"));
    assert_eq!(get(&o, "trt_profile_max_shapes"), Some("latents:1x128x85x64"));
    let o = options(&p, "vae_encoder");
    assert_eq!(get(&o, "trt_profile_opt_shapes"), Some("image:1x3x1024x1024"));
}

#[test]
fn references_widen_the_dit_and_encoder_profiles() {
    let trt = export_pipeline(Target::TensorRt);
    let out = tempfile::tempdir().unwrap();
    let mut req = request(trt.path(), &out.path().join("b"), GpuTarget::Ada);
    req.shapes = ShapePlan::new(vec!["1024x1024".parse().unwrap()], None, 3, 2, false).unwrap();
    let p = plan(&req).unwrap();
    let o = options(&p, "transformer");
    // 4096 output tokens + 3 references of at most 1024² px = 3 * 4096 tokens; batch up to 2
    assert!(get(&o, "trt_profile_max_shapes").unwrap().starts_with("hidden_states:2x16384x128,"), "{o:?}");
    let o = options(&p, "vae_encoder");
    // references keep their aspect ratio: the exported 64..2048 range
    assert_eq!(get(&o, "trt_profile_min_shapes"), Some("image:1x3x64x64"));
    assert_eq!(get(&o, "trt_profile_max_shapes"), Some("image:2x3x2048x2048"));
    req.shapes = ShapePlan::new(vec!["1024x1024".parse().unwrap()], None, 5, 1, false).unwrap();
    let e = plan(&req).unwrap_err().to_string();
    // the first DiT graph checked (the monolithic transformer or a step-caching part) is named
    let dit = e.contains("transformer") || e.contains("dit_");
    assert!(dit && e.contains("5 reference(s)") && e.contains("24576"), "{e}");
}

#[test]
fn quantized_graphs_follow_the_gpu_rules() {
    let trt = export_pipeline(Target::TensorRt);
    let out = tempfile::tempdir().unwrap();
    let int8 = calibrated(trt.path(), Format::Int8);
    let p = plan(&request(int8.path(), &out.path().join("b"), GpuTarget::Orin)).unwrap();
    for g in &p.graphs {
        assert_eq!((g.quant, g.int8, g.precision.as_str()), (Quant::Int8, true, "fp16+int8"), "{}", g.name);
        assert_eq!(g.calibration_hash.len(), 64);
        assert_eq!(get(&options(&p, &g.name), "trt_int8_enable"), Some("1"));
    }
    let fp8 = calibrated(trt.path(), Format::Fp8);
    for gpu in [GpuTarget::Hopper, GpuTarget::Ada, GpuTarget::Thor] {
        let p = plan(&request(fp8.path(), &out.path().join("b"), gpu)).unwrap();
        for g in &p.graphs {
            // FP8 comes from the graph's Q/DQ nodes alone: there is no FP8 flag and no implicit INT8
            assert_eq!(
                (g.quant, g.int8, g.precision.as_str()),
                (Quant::Fp8, false, "fp16+fp8"),
                "{gpu} {}",
                g.name
            );
        }
        assert_ne!(graph(&p, "transformer").calibration_hash, "none");
    }
    for gpu in [GpuTarget::Orin, GpuTarget::Ampere] {
        let e = plan(&request(fp8.path(), &out.path().join("b"), gpu)).unwrap_err();
        assert!(matches!(e, TrtError::Refused { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("--gpu {gpu}")) && msg.contains("FP8") && msg.contains("INT8"),
            "{msg}"
        );
        assert!(msg.contains(".onnx"), "names the graph: {msg}");
    }
    // TensorRT 11 is strongly typed: the weak-typing precision flags are not passed
    let mut req = request(int8.path(), &out.path().join("b"), GpuTarget::Hopper);
    req.trt_version = TrtVersion::parse("11.4");
    let p = plan(&req).unwrap();
    let o = options(&p, "transformer");
    assert_eq!((get(&o, "trt_fp16_enable"), get(&o, "trt_int8_enable")), (Some("0"), Some("0")));
    assert!(graph(&p, "transformer").precision.contains("strongly typed"));
}

#[test]
fn dla_only_on_orin() {
    let trt = export_pipeline(Target::TensorRt);
    let out = tempfile::tempdir().unwrap();
    let mut req = request(trt.path(), &out.path().join("b"), GpuTarget::Orin);
    req.dla_core = Some(1);
    let p = plan(&req).unwrap();
    let o = options(&p, "vae_decoder");
    assert_eq!((get(&o, "trt_dla_enable"), get(&o, "trt_dla_core")), (Some("1"), Some("1")));
    req.gpu = GpuTarget::Thor;
    let e = plan(&req).unwrap_err().to_string();
    assert!(e.contains("--dla") && e.contains("thor"), "{e}");
    req.gpu = GpuTarget::Orin;
    req.trt_version = TrtVersion::parse("11.2");
    assert!(plan(&req).unwrap_err().to_string().contains("no DLA support"));
    req.trt_version = None;
    req.float = FloatPrecision::Bf16;
    assert!(plan(&req).unwrap_err().to_string().contains("FP16 and INT8 only"));
}

#[test]
fn plan_refuses_bad_inputs_with_their_names() {
    let trt = export_pipeline(Target::TensorRt);
    let ort = export_pipeline(Target::Ort);
    let out = tempfile::tempdir().unwrap();
    // a bucket the VAE was not exported for
    let mut req = request(trt.path(), &out.path().join("b"), GpuTarget::Hopper);
    req.shapes = ShapePlan::new(vec!["4096x1024".parse().unwrap()], None, 0, 1, false).unwrap();
    let e = plan(&req).unwrap_err().to_string();
    assert!(e.contains("4096x1024") && e.contains("latents"), "{e}");
    // graphs TensorRT 10.3 cannot parse (fused Attention from --target ort), on Orin
    let e = plan(&request(ort.path(), &out.path().join("b"), GpuTarget::Orin)).unwrap_err().to_string();
    assert!(e.contains("flux2 check") && e.contains("Attention") && e.contains("node '"), "{e}");
    // output folder rules
    let e = plan(&request(trt.path(), trt.path(), GpuTarget::Hopper)).unwrap_err().to_string();
    assert!(e.contains("--out"), "{e}");
    std::fs::write(out.path().join("keep.txt"), "x").unwrap();
    let e = plan(&request(trt.path(), out.path(), GpuTarget::Hopper)).unwrap_err().to_string();
    assert!(e.contains("--force"), "{e}");
    let e =
        plan(&request(&trt.path().join("missing"), &out.path().join("b"), GpuTarget::Hopper)).unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");
    let mut req = request(trt.path(), &out.path().join("b"), GpuTarget::Hopper);
    req.graphs = Some(vec!["unet".into()]);
    assert!(plan(&req).unwrap_err().to_string().contains("unet"));
}

#[test]
fn build_on_a_cpu_machine_names_the_missing_provider_and_writes_nothing() {
    let trt = export_pipeline(Target::TensorRt);
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("engines-h100");
    let mut events = 0;
    let e = build(&request(trt.path(), &target, GpuTarget::Hopper), &mut |_| events += 1).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, TrtError::Unavailable { .. }), "{msg}");
    assert!(msg.contains("TensorrtExecutionProvider") && msg.contains("onnxruntime-gpu"), "{msg}");
    assert_eq!(events, 0, "no graph was started");
    assert!(!target.exists(), "nothing written");
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
}

#[test]
fn refittable_builds_strip_weights_and_need_plain_initializers() {
    let trt = export_pipeline(Target::TensorRt);
    let out = tempfile::tempdir().unwrap();
    let mut req = request(trt.path(), &out.path().join("b"), GpuTarget::Hopper);
    req.refittable = true;
    let p = plan(&req).unwrap();
    for g in &p.graphs {
        let o = options(&p, &g.name);
        assert_eq!(get(&o, "trt_weight_stripped_engine_enable"), Some("1"), "{}", g.name);
    }
    req.refittable = false;
    let o = options(&plan(&req).unwrap(), "transformer");
    assert_eq!(get(&o, "trt_weight_stripped_engine_enable"), None);

    // a link export of a BFL file assembles norm_out from two swapped row pieces: no refit by name
    let link = tempfile::tempdir().unwrap();
    let opts = flux2_exporter::models::ExportOptions {
        dtype: flux2_graphs::DType::F32,
        target: Target::TensorRt,
        text_layers: None,
        config_override: None,
    };
    let bfl = flux2_tests::fixture("dit/guided/bfl.safetensors");
    flux2_tests::export::export_to(&bfl, link.path(), None, opts, flux2_exporter::WeightMode::Link).unwrap();
    let mut req = request(link.path(), &out.path().join("c"), GpuTarget::Hopper);
    req.refittable = true;
    let e = plan(&req).unwrap_err().to_string();
    assert!(
        e.contains("--refittable") && e.contains("norm_out.linear.weight") && e.contains("--weights copy"),
        "{e}"
    );
}
