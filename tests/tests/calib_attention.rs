//! Attention sites of the exported DiT (flux2_calib::attention) on the klein fixture:
//! * the ONNX Runtime target's fused `Attention` nodes and the TensorRT target's decomposed
//!   attention are found as the same sites, one per block;
//! * the expanded float graph (scale·q → q·kᵀ → softmax → P·v) still matches diffusers 0.42.1;
//! * INT8 Q/DQ on the four inputs of every site, with ranges observed on one input, keeps the
//!   velocity close to float and passes onnx.checker;
//! * FP8 Q/DQ on them (`--fp8-attention`) run once ONNX Runtime's Q/DQ fusions are off.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use flux2_calib::attention::{expand, find_sites, AttentionSite, Point};
use flux2_calib::formats::Format;
use flux2_calib::layers::{find_layers, with_outputs, Layer};
use flux2_calib::onnx_file::{write_model, DataMode, OnnxFile};
use flux2_calib::qdq::{insert_qdq, ActivationQuant, QdqPlan};
use flux2_exporter::{Kind, WeightMode};
use flux2_graphs::Target;
use flux2_runtime::{cpu_session, run, Input, SessionOptions};
use flux2_tests::export::{export_to, onnx_check, options};
use flux2_tests::{assert_close, f32_of, fixture, load_tensors, nmse, run_file};

/// The fixture's first case (batch 2, reference tokens).
fn inputs() -> (Vec<(&'static str, Input)>, ndarray::ArrayD<f32>) {
    let io = load_tensors(&fixture("dit/klein/io.safetensors")).unwrap_or_else(|e| panic!("{e}"));
    let feed = ["hidden_states", "encoder_hidden_states", "timestep", "guidance", "img_ids", "txt_ids"]
        .into_iter()
        .filter_map(|n| io.get(n).map(|t| (n, t.clone())))
        .collect();
    (feed, f32_of(&io, "velocity"))
}

fn export(dir: &Path, target: Target) -> OnnxFile {
    export_to(
        &fixture("dit/klein"),
        dir,
        Some(vec![Kind::Transformer]),
        options(target, None),
        WeightMode::Copy,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    OnnxFile::read(&dir.join("transformer.onnx")).unwrap_or_else(|e| panic!("{e}"))
}

fn blocks(dir: &Path) -> usize {
    let text = std::fs::read_to_string(dir.join("manifest.json")).unwrap_or_else(|e| panic!("{e}"));
    let m: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
    let c = &m["configs"]["transformer"];
    (c["num_layers"].as_u64().unwrap_or(0) + c["num_single_layers"].as_u64().unwrap_or(0)) as usize
}

/// Per-tensor maxima of the site inputs and layer activations on `feed` (the expanded float
/// graph run with them as outputs).
fn observed_ranges(
    file: &OnnxFile,
    sites: &[AttentionSite],
    layers: &[Layer],
    dir: &Path,
    feed: &[(&'static str, Input)],
) -> BTreeMap<String, ActivationQuant> {
    let e = expand(file, sites, None);
    let mut names: Vec<String> = sites.iter().flat_map(|s| s.inputs.iter().cloned()).collect();
    names.extend(layers.iter().map(|l| l.activation.clone()));
    let stats = write_model(&with_outputs(&e.proto, &names), file, dir, "stats", DataMode::KeepExternal)
        .unwrap_or_else(|e| panic!("{e}"));
    let observed = run_file(&stats, feed.to_vec()).unwrap_or_else(|e| panic!("{e}"));
    let given: HashMap<&str, &Input> = feed.iter().map(|(n, t)| (*n, t)).collect();
    let amax = |n: &str| match (observed.get(n), given.get(n)) {
        (Some(a), _) => a.iter().fold(0f32, |m, v| m.max(v.abs())),
        (None, Some(Input::F32(a))) => a.iter().fold(0f32, |m, v| m.max(v.abs())),
        _ => panic!("no values for {n}"),
    };
    names.iter().map(|n| (n.clone(), ActivationQuant { amax: amax(n), smooth: None })).collect()
}

#[test]
fn both_targets_have_one_site_per_block_with_the_same_names() {
    let (ort_dir, trt_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ort = find_sites(&export(ort_dir.path(), Target::Ort)).unwrap_or_else(|e| panic!("{e}"));
    let trt = find_sites(&export(trt_dir.path(), Target::TensorRt)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ort.len(), blocks(ort_dir.path()));
    assert!(ort.iter().all(|s| s.fused.is_some()) && trt.iter().all(|s| s.fused.is_none()));
    let names =
        |s: &[flux2_calib::attention::AttentionSite]| s.iter().map(|x| x.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&ort), names(&trt));
    assert!(ort[0].name.ends_with(".attention"), "{}", ort[0].name);
}

#[test]
fn expanded_float_attention_matches_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let file = export(dir.path(), Target::Ort);
    let sites = find_sites(&file).unwrap_or_else(|e| panic!("{e}"));
    let e = expand(&file, &sites, None);
    assert!(e.graph().node.iter().all(|n| n.op_type != "Attention"));
    let path = write_model(&e.proto, &file, dir.path(), "expanded", DataMode::KeepExternal)
        .unwrap_or_else(|e| panic!("{e}"));
    let (feed, want) = inputs();
    let got = &run_file(&path, feed).unwrap_or_else(|e| panic!("{e}"))["velocity"];
    assert_close("expanded velocity", &want, got, 1e-4);
    assert!(nmse(&want, got) < 1e-11, "nmse {:e}", nmse(&want, got));
}

#[test]
fn int8_attention_qdq_stays_close_to_float() {
    let dir = tempfile::tempdir().unwrap();
    let file = export(dir.path(), Target::Ort);
    let sites = find_sites(&file).unwrap_or_else(|e| panic!("{e}"));
    let layers = find_layers(&file).unwrap_or_else(|e| panic!("{e}"));
    let (feed, want) = inputs();
    let activations = observed_ranges(&file, &sites, &layers, dir.path(), &feed);

    // attention only, then attention and every layer
    let only_sites: BTreeSet<String> = sites.iter().map(|s| s.name.clone()).collect();
    let mut all = only_sites.clone();
    all.extend(layers.iter().map(|l| l.name.clone()));
    for (what, set, budget) in [("attention", &only_sites, 1e-3), ("attention + layers", &all, 1e-2)] {
        let plan = QdqPlan { format: Format::Int8, layers: set, sites: &sites, activations: &activations };
        let q = insert_qdq(&file, &layers, &plan).unwrap_or_else(|e| panic!("{e}"));
        let g = q.proto.graph.as_ref().unwrap_or_else(|| unreachable!());
        // every product reads two dequantised tensors
        let dq: BTreeSet<&str> =
            g.node.iter().filter(|n| n.op_type == "DequantizeLinear").map(|n| n.output[0].as_str()).collect();
        for s in &sites {
            for node in [&s.qk, &s.pv] {
                let n = g.node.iter().find(|n| &n.name == node).unwrap_or_else(|| panic!("no node {node}"));
                assert!(
                    n.input.iter().all(|i| dq.contains(i.as_str())),
                    "{what}: {node} inputs {:?}",
                    n.input
                );
            }
            assert!(q.proto.graph.iter().all(|g| g.node.iter().all(|n| n.op_type != "Attention")));
            let _ = s.input(Point::Probs);
        }
        let path = write_model(&q.proto, &file, dir.path(), "q", DataMode::SelfContained)
            .unwrap_or_else(|e| panic!("{e}"));
        onnx_check(&path);
        let got = &run_file(&path, feed.clone()).unwrap_or_else(|e| panic!("{e}"))["velocity"];
        let err = nmse(&want, got);
        eprintln!("{what}: nmse {err:.2e}");
        assert!(err < budget && err > 0.0, "{what}: nmse {err:e}");
    }
}

#[test]
fn fp8_attention_runs_with_qdq_fusion_off() {
    let dir = tempfile::tempdir().unwrap();
    let file = export(dir.path(), Target::Ort);
    let sites = find_sites(&file).unwrap_or_else(|e| panic!("{e}"));
    let layers = find_layers(&file).unwrap_or_else(|e| panic!("{e}"));
    let (feed, want) = inputs();
    let activations = observed_ranges(&file, &sites, &[], dir.path(), &feed);
    let set: BTreeSet<String> = sites.iter().map(|s| s.name.clone()).collect();
    let plan = QdqPlan { format: Format::Fp8, layers: &set, sites: &sites, activations: &activations };
    let q = insert_qdq(&file, &layers, &plan).unwrap_or_else(|e| panic!("{e}"));
    let g = q.proto.graph.as_ref().unwrap_or_else(|| unreachable!());
    let fp8_zero_points =
        g.initializer.iter().filter(|t| t.name.ends_with("_zero_point") && t.data_type == 17).count();
    assert_eq!(fp8_zero_points, 4 * sites.len());
    let path = write_model(&q.proto, &file, dir.path(), "fp8", DataMode::SelfContained)
        .unwrap_or_else(|e| panic!("{e}"));
    onnx_check(&path);
    let sess = SessionOptions { qdq_fusion: false, ..SessionOptions::default() };
    let mut s = cpu_session(&path, &sess).unwrap_or_else(|e| panic!("{e}"));
    let got = &run(&mut s, feed).unwrap_or_else(|e| panic!("{e}"))["velocity"];
    let err = nmse(&want, got);
    eprintln!("fp8 attention: nmse {err:.2e}");
    assert!(err < 1e-2 && err > 0.0, "nmse {err:e}");
}
