//! The DiT parts for step caching (`dit_embed`, `dit_head`, `dit_body`, `dit_tail`), written
//! by the real exporter beside `transformer.onnx`: their structure, that they share the
//! transformer's weight files (copy and link mode), and that head → body → tail gives the
//! monolithic graph's velocity on the diffusers fixtures (guided dev-like and klein-like
//! configs, both targets).

use std::collections::HashMap;
use std::path::Path;

use flux2_exporter::{Kind, WeightMode};
use flux2_graphs::models::dit::{build_dit_part, DitConfig, DitPart};
use flux2_graphs::onnx::ModelProto;
use flux2_graphs::{DType, Target};
use flux2_runtime::Input;
use flux2_tests::export::{export_to, options};
use flux2_tests::{fixture, load_tensors, max_abs_diff, run_file};
use ndarray::ArrayD;

fn case(io: &HashMap<String, Input>, names: &[&'static str]) -> Vec<(&'static str, Input)> {
    names.iter().filter_map(|n| io.get(*n).map(|t| (*n, t.clone()))).collect()
}

fn f32_input(a: &ArrayD<f32>) -> Input {
    Input::F32(a.clone())
}

/// head → body → tail with the residual `img_out − img_in`, against `transformer.onnx`.
fn check_chain(dir: &Path, config: &str, what: &str) {
    let io = load_tensors(&fixture(&format!("dit/{config}/io.safetensors"))).unwrap();
    let all = ["hidden_states", "encoder_hidden_states", "timestep", "guidance", "img_ids", "txt_ids"];
    let mono = run_file(&dir.join("transformer.onnx"), case(&io, &all)).unwrap();
    let head = run_file(&dir.join("dit_head.onnx"), case(&io, &all)).unwrap();
    let mut body_in = case(&io, &["timestep", "guidance", "img_ids", "txt_ids"]);
    body_in.push(("img", f32_input(&head["img"])));
    body_in.push(("txt", f32_input(&head["txt"])));
    let body = run_file(&dir.join("dit_body.onnx"), body_in).unwrap();
    let residual = &body["img_out"] - &head["img_in"];
    let mut tail_in = case(&io, &["hidden_states", "timestep", "guidance"]);
    tail_in.push(("residual", Input::F32(residual)));
    let tail = run_file(&dir.join("dit_tail.onnx"), tail_in).unwrap();
    let d = max_abs_diff(&mono["velocity"], &tail["velocity"]);
    let scale = mono["velocity"].iter().fold(0f32, |m, v| m.max(v.abs()));
    eprintln!("{what}: chained parts vs monolithic max-abs {d:.2e} (|v| ≤ {scale:.2})");
    // the same ops on the same values; only img_in + (img_out − img_in) rounds
    assert!(d <= 2e-6 * scale.max(1.0), "{what}: parts differ from the monolithic graph by {d:e}");
    // the probe equals the head's first-block modulated input path: same embedder output
    let embed =
        run_file(&dir.join("dit_embed.onnx"), case(&io, &["hidden_states", "timestep", "guidance"])).unwrap();
    assert_eq!(embed["modulated"].shape(), head["img_in"].shape(), "{what}: modulated shape");
}

#[test]
fn chained_parts_equal_the_monolithic_graph() {
    for config in ["guided", "klein"] {
        for (target, mode) in [(Target::Ort, WeightMode::Copy), (Target::TensorRt, WeightMode::Link)] {
            let out = tempfile::tempdir().unwrap();
            let m = export_to(
                &fixture(&format!("dit/{config}")),
                out.path(),
                Some(vec![Kind::Transformer]),
                options(target, None),
                mode,
            )
            .unwrap();
            for p in DitPart::ALL {
                let e = &m.graphs[p.stem()];
                assert_eq!(e.component, "transformer");
                assert_eq!(e.target, target.name());
            }
            check_chain(out.path(), config, &format!("{config} {} {mode:?}", target.name()));
            shares_weights(out.path(), mode);
        }
    }
}

/// Every part's initializers are external entries into the transformer's files: no new bytes.
fn shares_weights(dir: &Path, mode: WeightMode) {
    let files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".data"))
        .collect();
    assert!(files.iter().all(|f| f == "transformer.onnx.data"), "{mode:?}: data files {files:?}");
    if mode == WeightMode::Link {
        let links: Vec<_> =
            std::fs::read_dir(dir.join("weights")).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(links, vec![std::ffi::OsString::from("transformer")], "{mode:?}: link folders");
    }
    for p in DitPart::ALL {
        let bytes = std::fs::read(dir.join(format!("{}.onnx", p.stem()))).unwrap();
        let proto: ModelProto = prost::Message::decode(&bytes[..]).unwrap();
        let g = proto.graph.unwrap();
        assert!(g.initializer.iter().any(|t| !t.external_data.is_empty()));
        // the graph's own small constants are inline; every weight is external
        for t in g.initializer.iter().filter(|t| !t.external_data.is_empty()) {
            let loc = t.external_data.iter().find(|kv| kv.key == "location").map(|kv| kv.value.as_str());
            match mode {
                WeightMode::Copy => assert_eq!(loc, Some("transformer.onnx.data"), "{}", t.name),
                WeightMode::Link => {
                    assert!(loc.is_some_and(|l| l.starts_with("weights/transformer/")), "{}", t.name)
                }
            }
        }
    }
}

/// Which ops each part holds for a 2 + 1 block config: the head one joint attention, the body
/// the second double block and the single block, the tail and probe none.
#[test]
fn part_structure() {
    let config = DitConfig {
        num_layers: 2,
        num_single_layers: 1,
        num_attention_heads: 2,
        attention_head_dim: 16,
        joint_attention_dim: 24,
        mlp_hidden_dim: 96,
        axes_dims_rope: vec![4, 4, 4, 4],
        ..DitConfig::dev()
    };
    let count = |part: DitPart, op: &str| {
        let m = build_dit_part(&config, part, Target::Ort, DType::F32).unwrap();
        m.proto.graph.as_ref().unwrap().node.iter().filter(|n| n.op_type == op).count()
    };
    assert_eq!(count(DitPart::Head, "Attention"), 1);
    assert_eq!(count(DitPart::Body, "Attention"), 2);
    assert_eq!(count(DitPart::Tail, "Attention"), 0);
    assert_eq!(count(DitPart::Embed, "Attention"), 0);
    let io = |part: DitPart| {
        let m = build_dit_part(&config, part, Target::Ort, DType::F32).unwrap();
        let g = m.proto.graph.unwrap();
        let names =
            |v: &[flux2_graphs::onnx::ValueInfoProto]| v.iter().map(|i| i.name.clone()).collect::<Vec<_>>();
        (names(&g.input), names(&g.output))
    };
    assert_eq!(io(DitPart::Head).1, ["img_in", "img", "txt"]);
    assert_eq!(io(DitPart::Body).1, ["img_out"]);
    assert_eq!(io(DitPart::Tail).0, ["hidden_states", "residual", "timestep", "guidance"]);
    assert_eq!(io(DitPart::Embed).1, ["modulated"]);
    let no_double = DitConfig { num_layers: 0, ..config };
    let e = build_dit_part(&no_double, DitPart::Head, Target::Ort, DType::F32).unwrap_err().to_string();
    assert!(e.contains("double-stream"), "{e}");
}
