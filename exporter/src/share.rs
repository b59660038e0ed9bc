//! Graphs that use another graph's written weights: the DiT parts (`dit_head`, `dit_body`,
//! `dit_tail`) point at the transformer's external data instead of a second copy, so step
//! caching costs no extra disk and no extra export time.
//!
//! The transformer is written first (copy, link or merged adapters, whatever was asked). For a
//! sharing graph, every weight it declares is looked up in that written model: its initializer
//! (an external-data entry whose location is relative to the export folder, which both graphs
//! live in) and, in link mode, the prelude nodes that assemble it from linked pieces (Concat,
//! Reshape, Cast), with the initializers those read. Nothing is converted or copied.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use flux2_graphs::onnx::{ModelProto, NodeProto, TensorProto};
use flux2_graphs::Model;

use crate::writer::WriteReport;
use crate::{io_err, ExportError, Result};

/// Writes `<dir>/<stem>.onnx` with its weights taken from the already written
/// `<dir>/<base>.onnx`.
pub fn write_shared(model: &Model, dir: &Path, base: &str, stem: &str) -> Result<WriteReport> {
    let base_path = dir.join(format!("{base}.onnx"));
    let bytes = std::fs::read(&base_path).map_err(io_err(&base_path))?;
    let base_proto: ModelProto = prost::Message::decode(&bytes[..]).map_err(|e| ExportError::Output {
        path: base_path.clone(),
        msg: format!("cannot read back the {base} graph to share its weights: {e}"),
    })?;
    let base_graph = base_proto.graph.unwrap_or_default();
    let wanted: Vec<&str> = model.weights.iter().map(|w| w.name.as_str()).collect();
    let (inits, prelude) =
        closure(&base_graph.initializer, &base_graph.node, &wanted).map_err(|name| ExportError::Output {
            path: base_path.clone(),
            msg: format!("the {stem} graph needs weight '{name}', which the {base} graph does not have"),
        })?;
    let mut proto = model.proto.clone();
    let graph = proto.graph.get_or_insert_with(Default::default);
    graph.initializer.extend(inits);
    let mut nodes = prelude;
    nodes.append(&mut graph.node);
    graph.node = nodes;
    let report = WriteReport { onnx: dir.join(format!("{stem}.onnx")), ..Default::default() };
    std::fs::write(&report.onnx, prost::Message::encode_to_vec(&proto)).map_err(io_err(&report.onnx))?;
    Ok(report)
}

/// The initializers and producing nodes (in the base's order) that yield every name in
/// `wanted`; `Err(name)` for a name neither an initializer nor a node output there.
fn closure(
    inits: &[TensorProto],
    nodes: &[NodeProto],
    wanted: &[&str],
) -> std::result::Result<(Vec<TensorProto>, Vec<NodeProto>), String> {
    let init_of: HashMap<&str, &TensorProto> = inits.iter().map(|t| (t.name.as_str(), t)).collect();
    let producer: HashMap<&str, usize> =
        nodes.iter().enumerate().flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i))).collect();
    let (mut take_inits, mut take_nodes) = (HashSet::new(), HashSet::new());
    let mut stack: Vec<&str> = wanted.to_vec();
    while let Some(name) = stack.pop() {
        if name.is_empty() || take_inits.contains(name) {
            continue;
        }
        if init_of.contains_key(name) {
            take_inits.insert(name);
        } else if let Some(&i) = producer.get(name) {
            if take_nodes.insert(i) {
                stack.extend(nodes[i].input.iter().map(String::as_str));
            }
        } else {
            return Err(name.to_string());
        }
    }
    let out_inits = inits.iter().filter(|t| take_inits.contains(t.name.as_str())).cloned().collect();
    let out_nodes =
        nodes.iter().enumerate().filter(|(i, _)| take_nodes.contains(i)).map(|(_, n)| n.clone()).collect();
    Ok((out_inits, out_nodes))
}
