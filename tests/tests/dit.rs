//! DiT export: parity with diffusers 0.42.1 `Flux2Transformer2DModel` (fixture:
//! tests/fixtures/gen_dit.py) through the real exporter API, for the guided (dev-like) and
//! klein-like configs, the diffusers, sharded and BFL single-file layouts, both weight
//! modes and both graph targets, on two cases each (batch 2 with different timesteps and
//! reference tokens at time offset 10; batch 1 with other sizes). Also: error messages for
//! broken checkpoints and configs, variant detection, and the graph's structure.

use std::collections::HashMap;
use std::path::Path;

use flux2_exporter::models::dit::{bfl_source, variant_name};
use flux2_exporter::{Kind, Source, WeightMode};
use flux2_graphs::models::dit::{build_transformer, DitConfig};
use flux2_graphs::{DType, Target};
use flux2_runtime::Input;
use flux2_tests::export::{export_to, onnx_check, options};
use flux2_tests::{assert_close, f32_of, fixture, load_tensors, nmse, run_file};

const TOL: f32 = 1e-4;
const NMSE_F32: f64 = 1e-11;

/// Inputs of case `prefix` ("" or "b_") from an io.safetensors map.
fn case_inputs(io: &HashMap<String, Input>, prefix: &str) -> Vec<(&'static str, Input)> {
    ["hidden_states", "encoder_hidden_states", "timestep", "guidance", "img_ids", "txt_ids"]
        .into_iter()
        .filter_map(|n| io.get(&format!("{prefix}{n}")).map(|t| (n, t.clone())))
        .collect()
}

/// Runs `dir/transformer.onnx` on both fixture cases of `config` and checks the velocity.
fn check_parity(dir: &Path, config: &str, what: &str) {
    let io = load_tensors(&fixture(&format!("dit/{config}/io.safetensors"))).unwrap();
    for prefix in ["", "b_"] {
        let out = run_file(&dir.join("transformer.onnx"), case_inputs(&io, prefix)).unwrap();
        let want = f32_of(&io, &format!("{prefix}velocity"));
        let got = &out["velocity"];
        let d = flux2_tests::max_abs_diff(&want, got);
        eprintln!("{what} case {prefix:<2}: max-abs {d:.2e}, nmse {:.2e}", nmse(&want, got));
        assert_close(&format!("{what} {prefix}velocity"), &want, got, TOL);
        // f32 rounding noise is ~1e-13; a frequency or angle that differs from the reference
        // by one ulp (e.g. the sinusoid table) shows up as ~3e-11.
        assert!(nmse(&want, got) < NMSE_F32, "{what} {prefix}velocity: nmse {:e}", nmse(&want, got));
    }
}

fn export_dit(ckpt: &Path, out: &Path, target: Target, cfg: Option<&Path>, mode: WeightMode) {
    let m = export_to(ckpt, out, Some(vec![Kind::Transformer]), options(target, cfg), mode)
        .unwrap_or_else(|e| panic!("exporting {}: {e}", ckpt.display()));
    assert!(m.graphs.contains_key("transformer"));
}

#[test]
fn diffusers_layout_matches_reference_on_both_targets() {
    for config in ["guided", "klein"] {
        for target in [Target::Ort, Target::TensorRt] {
            let out = tempfile::tempdir().unwrap();
            export_dit(&fixture(&format!("dit/{config}")), out.path(), target, None, WeightMode::Copy);
            check_parity(out.path(), config, &format!("{config} diffusers {}", target.name()));
            onnx_check(&out.path().join("transformer.onnx"));
        }
    }
}

#[test]
fn sharded_diffusers_layout_matches_reference() {
    for (target, mode) in [(Target::Ort, WeightMode::Link), (Target::TensorRt, WeightMode::Copy)] {
        let out = tempfile::tempdir().unwrap();
        export_dit(&fixture("dit/guided_sharded"), out.path(), target, None, mode);
        check_parity(out.path(), "guided", &format!("guided sharded {} {mode:?}", target.name()));
    }
}

#[test]
fn bfl_layout_gives_the_same_outputs() {
    // The BFL file carries no config; klein's non-uniform RoPE axes come from --config.
    for (config, cfg) in [("guided", None), ("klein", Some(fixture("dit/klein/transformer/config.json")))] {
        for (target, mode) in [(Target::Ort, WeightMode::Link), (Target::TensorRt, WeightMode::Copy)] {
            let out = tempfile::tempdir().unwrap();
            let ckpt = fixture(&format!("dit/{config}/bfl.safetensors"));
            export_dit(&ckpt, out.path(), target, cfg.as_deref(), mode);
            check_parity(out.path(), config, &format!("{config} BFL {} {mode:?}", target.name()));
        }
    }
}

#[test]
fn manifest_records_config_variant_and_inputs() {
    let out = tempfile::tempdir().unwrap();
    let m = export_to(&fixture("dit/guided"), out.path(), None, options(Target::Ort, None), WeightMode::Link)
        .unwrap();
    assert_eq!(m.variant, "custom");
    let cfg = &m.configs["transformer"];
    assert_eq!(cfg["num_attention_heads"], 2);
    assert_eq!(cfg["num_layers"], 2);
    assert_eq!(cfg["guidance_embeds"], true);
    assert_eq!(cfg["axes_dims_rope"], serde_json::json!([8, 8, 8, 8]));
    let g = &m.graphs["transformer"];
    let names: Vec<&str> = g.inputs.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(
        names,
        ["hidden_states", "encoder_hidden_states", "timestep", "guidance", "img_ids", "txt_ids"]
    );
    assert_eq!(g.inputs[0].shape, ["B", "S", "128"]);
    assert_eq!(g.outputs[0].name, "velocity");
    assert_eq!(g.parameters, cfg["parameters"].as_u64().unwrap());
    assert!(!out.path().join("transformer.onnx.data").exists(), "link mode copies no weights");

    let out = tempfile::tempdir().unwrap();
    let m = export_to(&fixture("dit/klein"), out.path(), None, options(Target::Ort, None), WeightMode::Copy)
        .unwrap();
    let names: Vec<&str> = m.graphs["transformer"].inputs.iter().map(|i| i.name.as_str()).collect();
    assert!(!names.contains(&"guidance"), "klein has no guidance input: {names:?}");
    assert_eq!(m.configs["transformer"]["axes_dims_rope"], serde_json::json!([2, 4, 6, 4]));
}

#[test]
fn released_configs_are_named_and_counted() {
    // Parameter counts from flux2-arch.md §1.1 (counted from the diffusers modules).
    assert_eq!(DitConfig::dev().parameter_count(), 32_223_281_152);
    assert_eq!(DitConfig::klein_4b().parameter_count(), 3_875_544_576);
    assert_eq!(DitConfig::klein_9b().parameter_count(), 9_078_581_248);
    assert_eq!(variant_name(&DitConfig::dev()), "dev");
    assert_eq!(variant_name(&DitConfig::klein_4b()), "klein-4b");
    assert_eq!(variant_name(&DitConfig::klein_9b()), "klein-9b");
    let shallow = DitConfig { num_layers: 1, num_single_layers: 1, ..DitConfig::dev() };
    assert_eq!(variant_name(&shallow), "custom");
}

#[test]
fn bfl_map_splits_fused_qkv_and_swaps_final_modulation() {
    let d = 64;
    let rows = |name: &str, start, end| Source::Rows { name: name.into(), start, end };
    assert_eq!(
        bfl_source("transformer_blocks.1.attn.to_k.weight", d),
        rows("double_blocks.1.img_attn.qkv.weight", 64, 128)
    );
    assert_eq!(
        bfl_source("transformer_blocks.0.attn.add_v_proj.weight", d),
        rows("double_blocks.0.txt_attn.qkv.weight", 128, 192)
    );
    let fl = "final_layer.adaLN_modulation.1.weight";
    assert_eq!(
        bfl_source("norm_out.linear.weight", d),
        Source::Concat(vec![rows(fl, 64, 128), rows(fl, 0, 64)])
    );
    assert_eq!(
        bfl_source("single_transformer_blocks.3.attn.to_qkv_mlp_proj.weight", d),
        Source::tensor("single_blocks.3.linear1.weight")
    );
    assert_eq!(
        bfl_source("transformer_blocks.0.ff_context.linear_out.weight", d),
        Source::tensor("double_blocks.0.txt_mlp.2.weight")
    );
}

/// Copies a safetensors file with tensors dropped or re-shaped (data truncated or padded).
fn rewrite_safetensors(src: &Path, dst: &Path, edit: impl Fn(&str, &[usize]) -> Option<Vec<usize>>) {
    let bytes = std::fs::read(src).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut kept: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        if let Some(shape) = edit(&name, view.shape()) {
            let n: usize = shape.iter().product::<usize>() * 4;
            let mut data = view.data().to_vec();
            data.resize(n, 0);
            kept.push((name, shape, data));
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = kept
        .iter()
        .map(|(n, s, d)| {
            (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d).unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, None, dst).unwrap();
}

fn export_err(ckpt: &Path, cfg: Option<&Path>) -> String {
    let out = tempfile::tempdir().unwrap();
    let err = export_to(ckpt, out.path(), None, options(Target::Ort, cfg), WeightMode::Copy)
        .unwrap_err()
        .to_string();
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0, "nothing may be written: {err}");
    eprintln!("{err}\n");
    err
}

#[test]
fn missing_block_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("transformer");
    std::fs::create_dir(&dir).unwrap();
    let src = fixture("dit/guided/transformer/diffusion_pytorch_model.safetensors");
    // Drop double block 0: the config still says 2 double blocks, and block 1 remains.
    rewrite_safetensors(&src, &dir.join("diffusion_pytorch_model.safetensors"), |n, s| {
        (!n.starts_with("transformer_blocks.0.")).then(|| s.to_vec())
    });
    std::fs::copy(fixture("dit/guided/transformer/config.json"), dir.join("config.json")).unwrap();
    let err = export_err(&dir, None);
    assert!(err.contains("transformer_blocks.0.attn.to_q.weight"), "{err}");
    assert!(err.contains("transformer_blocks.0.ff_context.linear_out.weight"), "{err}");

    // BFL file without a config: dropping the middle single block is reported by name.
    let bfl = tmp.path().join("bfl.safetensors");
    rewrite_safetensors(&fixture("dit/klein/bfl.safetensors"), &bfl, |n, s| {
        (!n.starts_with("single_blocks.1.")).then(|| s.to_vec())
    });
    let err = export_err(&bfl, Some(&fixture("dit/klein/transformer/config.json")));
    assert!(err.contains("single_blocks.1.linear1.weight"), "{err}");
}

#[test]
fn misshaped_weight_is_named_with_both_shapes() {
    let tmp = tempfile::tempdir().unwrap();
    let bfl = tmp.path().join("bfl.safetensors");
    rewrite_safetensors(&fixture("dit/guided/bfl.safetensors"), &bfl, |n, s| match n {
        "double_blocks.1.txt_mlp.2.weight" => Some(vec![s[0], s[1] - 2]),
        _ => Some(s.to_vec()),
    });
    let err = export_err(&bfl, None);
    assert!(err.contains("double_blocks.1.txt_mlp.2.weight") && err.contains("[64, 190]"), "{err}");
    assert!(err.contains("[64, 192]"), "expected shape missing: {err}");
}

#[test]
fn inconsistent_config_names_field_and_values() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("dit/guided/transformer/config.json")).unwrap(),
    )
    .unwrap();
    cfg["num_single_layers"] = 5.into();
    let path = tmp.path().join("config.json");
    std::fs::write(&path, cfg.to_string()).unwrap();
    let err = export_err(&fixture("dit/guided/bfl.safetensors"), Some(&path));
    assert!(err.contains("num_single_layers") && err.contains('5') && err.contains('2'), "{err}");

    cfg["num_single_layers"] = 2.into();
    cfg["axes_dims_rope"] = serde_json::json!([8, 8, 8, 6]);
    std::fs::write(&path, cfg.to_string()).unwrap();
    let err = export_err(&fixture("dit/guided/bfl.safetensors"), Some(&path));
    assert!(err.contains("axes_dims_rope") && err.contains("32"), "{err}");

    // A FLUX.1 config (or any other class) is refused by name.
    cfg["axes_dims_rope"] = serde_json::json!([8, 8, 8, 8]);
    cfg["_class_name"] = "FluxTransformer2DModel".into();
    std::fs::write(&path, cfg.to_string()).unwrap();
    let err = export_err(&fixture("dit/guided/bfl.safetensors"), Some(&path));
    assert!(err.contains("FluxTransformer2DModel") && err.contains("--config"), "{err}");
}

#[test]
fn hidden_size_not_a_multiple_of_head_dim_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let bfl = tmp.path().join("bfl.safetensors");
    rewrite_safetensors(&fixture("dit/guided/bfl.safetensors"), &bfl, |n, s| match n {
        "img_in.weight" => Some(vec![70, s[1]]),
        _ => Some(s.to_vec()),
    });
    let err = export_err(&bfl, None);
    assert!(err.contains("img_in.weight") && err.contains("70") && err.contains("32"), "{err}");
}

/// Ops per type of the graph for a tiny config: the structure per block and target.
fn op_counts(config: &DitConfig, target: Target) -> String {
    let m = build_transformer(config, target, DType::F32).unwrap();
    let mut counts = std::collections::BTreeMap::new();
    for n in &m.proto.graph.as_ref().unwrap().node {
        *counts.entry(n.op_type.clone()).or_insert(0) += 1;
    }
    counts.iter().map(|(k, v)| format!("{k}:{v}")).collect::<Vec<_>>().join(" ")
}

#[test]
fn graph_structure_per_target() {
    let config = DitConfig {
        num_layers: 1,
        num_single_layers: 1,
        num_attention_heads: 2,
        attention_head_dim: 16,
        joint_attention_dim: 24,
        mlp_hidden_dim: 96,
        axes_dims_rope: vec![4, 4, 4, 4],
        ..DitConfig::dev()
    };
    let ort = op_counts(&config, Target::Ort);
    // 1 double block (one joint attention, QK norms per stream, 4 LayerNorms) + 1 single
    // block (one attention, 2 QK norms, 1 LayerNorm) + the final LayerNorm.
    assert!(ort.contains("Attention:2 ") && ort.contains("RMSNormalization:6 "), "{ort}");
    assert!(ort.contains("RotaryEmbedding:4 ") && ort.contains("LayerNormalization:6 "), "{ort}");
    let trt = op_counts(&config, Target::TensorRt);
    for fused in ["Attention:", "RMSNormalization:", "RotaryEmbedding:"] {
        assert!(!trt.contains(fused), "TensorRT graph must not use {fused}: {trt}");
    }
    assert!(trt.contains("Softmax:2 "), "{trt}");
    let m = build_transformer(&config, Target::TensorRt, DType::F32).unwrap();
    assert!(m.proto.opset_import.iter().all(|o| o.version <= 21), "TensorRT graph must stay at opset 21");
    // RoPE angles: float64 for ONNX Runtime (as diffusers), never for TensorRT.
    let f64_casts = |m: &flux2_graphs::Model| {
        m.proto
            .graph
            .as_ref()
            .unwrap()
            .node
            .iter()
            .filter(|n| n.op_type == "Cast" && n.attribute[0].i == 11)
            .count()
    };
    assert!(f64_casts(&build_transformer(&config, Target::Ort, DType::F32).unwrap()) > 0);
    assert_eq!(f64_casts(&m), 0);
}

/// The in-graph RoPE tables at real positions (text up to 511, a 64×64 grid, reference time
/// offsets up to 40) against float64 angles: exact to f32 rounding on ONNX Runtime (float64
/// angles, as diffusers), and within a few f32 ulps on the TensorRT target (split
/// frequencies + explicit 2π reduction; a plain f32 product would be off by 3e-5).
#[test]
fn rope_tables_are_accurate_at_real_positions() {
    use flux2_graphs::models::dit::{pair_frequencies, rope_tables};
    use flux2_graphs::{shape, Graph};
    use ndarray::{ArrayD, IxDyn};
    let config = DitConfig::dev();
    let (l, grid) = (512usize, 64usize);
    let mut img = Vec::new();
    for t in [0i64, 10, 40] {
        for i in 0..grid as i64 {
            for j in 0..grid as i64 {
                img.extend([t, i, j, 0]);
            }
        }
    }
    let txt: Vec<i64> = (0..l as i64).flat_map(|n| [0, 0, 0, n]).collect();
    let s = img.len() / 4;
    for (target, tol) in [(Target::Ort, 1e-7f32), (Target::TensorRt, 1e-6)] {
        let g = Graph::new(target, DType::F32);
        let txt_ids = g.input("txt_ids", DType::I64, shape![1, "L", 4]).unwrap();
        let img_ids = g.input("img_ids", DType::I64, shape![1, "S", 4]).unwrap();
        let pe = rope_tables(&g, &config, txt_ids, img_ids).unwrap();
        g.output(pe.cos, "cos").unwrap();
        g.output(pe.sin, "sin").unwrap();
        let model = g.finish("rope").unwrap();
        let out = flux2_tests::run_model(
            &model,
            vec![
                ("txt_ids", Input::I64(ArrayD::from_shape_vec(IxDyn(&[1, l, 4]), txt.clone()).unwrap())),
                ("img_ids", Input::I64(ArrayD::from_shape_vec(IxDyn(&[1, s, 4]), img.clone()).unwrap())),
            ],
        )
        .unwrap();
        let (axis_of, freqs) = pair_frequencies(&config);
        let ids: Vec<&[i64]> = txt.chunks(4).chain(img.chunks(4)).collect();
        let mut worst = 0f32;
        for (row, id) in ids.iter().enumerate() {
            for (j, (&a, &f)) in axis_of.iter().zip(&freqs).enumerate() {
                let theta = id[a as usize] as f64 * f;
                let (c, sn) = (out["cos"][[row, j]], out["sin"][[row, j]]);
                worst = worst.max((c - theta.cos() as f32).abs()).max((sn - theta.sin() as f32).abs());
            }
        }
        eprintln!("{target:?}: worst cos/sin error {worst:.2e}");
        assert!(worst <= tol, "{target:?}: RoPE table error {worst:e} > {tol:e}");
    }
}
