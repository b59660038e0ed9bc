//! Attention as two quantisable batched matmuls.
//!
//! At long sequences the two attention products `S = q·kᵀ` and `O = P·v` cost as much as all
//! the linear layers of a DiT block together, so an INT8 graph that leaves them in float cannot
//! go much faster than its float twin. An [`AttentionSite`] names those two products and their
//! four activation inputs (q, kᵀ, P = softmax(S), v), which are quantised per tensor like a
//! layer's input:
//!
//! ```text
//! q ─[Mul scale]─ Q/DQ ─┐                                    P ─ Q/DQ ─┐
//! k ─ Transpose ── Q/DQ ─ MatMul (qk) ─ [+ ...] ─ Softmax ─ P          v ─ Q/DQ ─ MatMul (pv) ─ out
//! ```
//!
//! Two forms are recognised:
//! * **fused**: the opset-23 `Attention` node of the ONNX Runtime target (q, k, v only: no
//!   mask, no cache, no soft-cap, an explicit `scale`). [`expand`] rewrites it into the form
//!   above with the softmax scale applied to q (an [B,H,S,D] multiply instead of one on the
//!   [B,H,S,T] scores), so that ONNX Runtime fuses both products into `MatMulIntegerToFloat`
//!   and TensorRT sees the Q/DQ → BMM pattern of its fused int8 attention.
//! * **decomposed**: `MatMul → (Mul | Div | Add)* → Softmax(last axis) → MatMul`, as the
//!   TensorRT target exports it; the four points are the two matmuls' inputs as they are.
//!
//! [`expand`] names what it creates after the `Attention` node (`NODE/q_scaled`, `NODE/qk`,
//! ...), so statistics taken on an expanded float graph and the Q/DQ graph agree on names.

use std::collections::{HashMap, HashSet};

use flux2_graphs::attr;
use flux2_graphs::onnx::{attribute_proto::AttributeType, NodeProto, TensorProto};
use serde::{Deserialize, Serialize};

use crate::consts::Consts;
use crate::error::{CalibError, Result};
use crate::layers::unique_name;
use crate::onnx_file::{dtype, OnnxFile};

/// Which of the four inputs of an attention site a tensor is.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Point {
    /// q (scaled), input 0 of the q·kᵀ product.
    Query,
    /// kᵀ, input 1 of the q·kᵀ product.
    KeyT,
    /// softmax probabilities, input 0 of the P·v product.
    Probs,
    /// v, input 1 of the P·v product.
    Value,
}

impl Point {
    pub const ALL: [Point; 4] = [Point::Query, Point::KeyT, Point::Probs, Point::Value];

    /// Short name, used in Q/DQ node names.
    pub fn label(self) -> &'static str {
        match self {
            Point::Query => "query",
            Point::KeyT => "key_t",
            Point::Probs => "probs",
            Point::Value => "value",
        }
    }
}

/// One attention computation of a graph.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttentionSite {
    /// Layer-style name (`transformer_blocks.0.attention`), unique among sites.
    pub name: String,
    /// The fused `Attention` node it expands from, if it was fused.
    pub fused: Option<String>,
    /// Node names of the q·kᵀ and P·v matmuls (after [`expand`]).
    pub qk: String,
    pub pv: String,
    /// Tensor names of the four inputs (after [`expand`]), in [`Point::ALL`] order.
    pub inputs: [String; 4],
}

impl AttentionSite {
    /// The tensor at `p`.
    pub fn input(&self, p: Point) -> &str {
        &self.inputs[Point::ALL.iter().position(|x| *x == p).unwrap_or(0)]
    }

    /// (point, tensor) pairs.
    pub fn points(&self) -> impl Iterator<Item = (Point, &str)> {
        Point::ALL.into_iter().zip(self.inputs.iter().map(|s| s.as_str()))
    }
}

fn bad(file: &OnnxFile, msg: String) -> CalibError {
    CalibError::BadModel { path: file.path.clone(), msg }
}

/// The `scale` of a fused `Attention` node that [`expand`] can take apart, or None.
fn fused_scale(n: &NodeProto) -> Option<f32> {
    if n.op_type != "Attention" || !n.domain.is_empty() {
        return None;
    }
    let qkv = n.input.len() >= 3 && n.input[..3].iter().all(|s| !s.is_empty());
    let extra = n.input.iter().skip(3).any(|s| !s.is_empty());
    let outputs = n.output.iter().filter(|s| !s.is_empty()).count();
    if !qkv || extra || outputs != 1 || n.output[0].is_empty() {
        return None;
    }
    let mut scale = None;
    for a in &n.attribute {
        match a.name.as_str() {
            "scale" if a.r#type == AttributeType::Float as i32 => scale = Some(a.f),
            "is_causal" if a.i == 0 => {}
            _ => return None,
        }
    }
    scale.filter(|s| s.is_finite())
}

/// Names [`expand`] gives the pieces of fused node `node`.
fn fused_names(node: &str) -> [String; 6] {
    ["scale", "q_scaled", "k_transposed", "scores", "probs", "qk"].map(|s| format!("{node}/{s}"))
}

/// `Softmax` over the last axis (the default for opset ≥ 13).
fn softmax_last_axis(n: &NodeProto) -> bool {
    n.op_type == "Softmax" && n.domain.is_empty() && n.attribute.iter().all(|a| a.name != "axis" || a.i == -1)
}

/// Site name from a node name: its last dotted component replaced by `attention`.
fn site_name(node: &str, taken: &mut HashSet<String>) -> String {
    let base = match node.rsplit_once('.') {
        Some((prefix, _)) => format!("{prefix}.attention"),
        None => "attention".to_string(),
    };
    unique_name(&base, '#', taken)
}

/// Finds the attention sites of a graph, in graph order.
pub fn find_sites(file: &OnnxFile) -> Result<Vec<AttentionSite>> {
    let g = file.graph();
    let consts = Consts::new(file);
    let mut readers: HashMap<&str, Vec<&NodeProto>> = HashMap::new();
    for n in &g.node {
        for i in n.input.iter().filter(|s| !s.is_empty()) {
            readers.entry(i.as_str()).or_default().push(n);
        }
    }
    let existing: HashSet<&str> = g
        .node
        .iter()
        .flat_map(|n| n.output.iter().chain(std::iter::once(&n.name)))
        .chain(g.initializer.iter().map(|t| &t.name))
        .map(|s| s.as_str())
        .collect();
    let mut taken = HashSet::new();
    let mut sites = Vec::new();
    for n in &g.node {
        if fused_scale(n).is_some() {
            let names = fused_names(&n.name);
            if let Some(clash) = names.iter().find(|s| existing.contains(s.as_str())) {
                return Err(bad(
                    file,
                    format!("cannot expand attention node '{}': '{clash}' exists", n.name),
                ));
            }
            let [_, q, kt, _, probs, qk] = names;
            sites.push(AttentionSite {
                name: site_name(&n.name, &mut taken),
                fused: Some(n.name.clone()),
                qk,
                pv: n.name.clone(),
                inputs: [q, kt, probs, n.input[2].clone()],
            });
        } else if softmax_last_axis(n) {
            if let Some(site) = decomposed_site(n, &consts, &readers, &mut taken) {
                sites.push(site);
            }
        }
    }
    Ok(sites)
}

/// `MatMul → (Mul | Div | Add)* → softmax → MatMul` around softmax node `sm`.
fn decomposed_site(
    sm: &NodeProto,
    consts: &Consts,
    readers: &HashMap<&str, Vec<&NodeProto>>,
    taken: &mut HashSet<String>,
) -> Option<AttentionSite> {
    let act_matmul = |n: &NodeProto| {
        n.op_type == "MatMul"
            && n.domain.is_empty()
            && n.input.len() == 2
            && n.input.iter().all(|i| !i.is_empty() && !consts.is_const(i))
    };
    let mut cur = sm.input.first()?.as_str();
    let mut qk = None;
    for _ in 0..4 {
        let p = consts.producer(cur)?;
        if act_matmul(p) {
            qk = Some(p);
            break;
        }
        if !matches!(p.op_type.as_str(), "Mul" | "Div" | "Add") || readers.get(cur)?.len() != 1 {
            return None;
        }
        cur = p.input.first()?.as_str();
    }
    let qk = qk?;
    let probs = sm.output.first()?;
    let [pv] = readers.get(probs.as_str())?.as_slice() else { return None };
    if !act_matmul(pv) || pv.input[0] != *probs {
        return None;
    }
    Some(AttentionSite {
        name: site_name(&sm.name, taken),
        fused: None,
        qk: qk.name.clone(),
        pv: pv.name.clone(),
        inputs: [qk.input[0].clone(), qk.input[1].clone(), probs.clone(), pv.input[1].clone()],
    })
}

fn node(
    op: &str,
    name: &str,
    inputs: &[&str],
    output: &str,
    attrs: Vec<flux2_graphs::onnx::AttributeProto>,
) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        name: name.to_string(),
        op_type: op.into(),
        attribute: attrs,
        ..Default::default()
    }
}

/// A copy of `file` whose fused sites among `sites` (all of them when `only` is None, else
/// those named in it) are rewritten as scale · q → q·kᵀ → softmax → P·v in float.
pub fn expand(file: &OnnxFile, sites: &[AttentionSite], only: Option<&HashSet<String>>) -> OnnxFile {
    let chosen: HashMap<&str, &AttentionSite> = sites
        .iter()
        .filter(|s| only.is_none_or(|o| o.contains(&s.name)))
        .filter_map(|s| s.fused.as_deref().map(|f| (f, s)))
        .collect();
    if chosen.is_empty() {
        return file.clone();
    }
    let mut out = file.clone();
    let g = out.proto.graph.get_or_insert_with(Default::default);
    let mut nodes = Vec::with_capacity(g.node.len() + 5 * chosen.len());
    for n in std::mem::take(&mut g.node) {
        let (Some(site), Some(scale)) = (chosen.get(n.name.as_str()), fused_scale(&n)) else {
            nodes.push(n);
            continue;
        };
        let [scale_name, q_scaled, kt, scores, probs, qk] = fused_names(&n.name);
        g.initializer.push(TensorProto {
            data_type: dtype::FLOAT,
            name: scale_name.clone(),
            raw_data: scale.to_le_bytes().to_vec(),
            ..Default::default()
        });
        let (q, k, v) = (&n.input[0], &n.input[1], &n.input[2]);
        nodes.push(node("Mul", &format!("{q_scaled}_mul"), &[q, &scale_name], &q_scaled, vec![]));
        let perm = attr::ints("perm", &[0, 1, 3, 2]);
        nodes.push(node("Transpose", &format!("{kt}_transpose"), &[k], &kt, vec![perm]));
        nodes.push(node("MatMul", &qk, &[&q_scaled, &kt], &scores, vec![]));
        nodes.push(node(
            "Softmax",
            &format!("{probs}_softmax"),
            &[&scores],
            &probs,
            vec![attr::int("axis", -1)],
        ));
        nodes.push(node("MatMul", &site.pv, &[&probs, v], &n.output[0], vec![]));
    }
    g.node = nodes;
    out
}

/// The name [`with_probs_amax`] gives the maximum of a site's softmax output.
pub fn probs_amax_name(site: &AttentionSite) -> String {
    format!("{}/amax", site.input(Point::Probs))
}

/// A copy of `file` with a `ReduceMax` over every site's softmax output, named
/// [`probs_amax_name`]: the one statistic the softmax range needs, without exposing a
/// [B,H,S,T] tensor per site as a graph output (tens of GB at 1024² for a 25-block DiT).
pub fn with_probs_amax(file: &OnnxFile, sites: &[AttentionSite]) -> OnnxFile {
    let mut out = file.clone();
    let g = out.proto.graph.get_or_insert_with(Default::default);
    for s in sites {
        let amax = probs_amax_name(s);
        let reduce = node("ReduceMax", &format!("{amax}_reduce"), &[s.input(Point::Probs)], &amax, vec![]);
        g.node.push(NodeProto { attribute: vec![attr::int("keepdims", 0)], ..reduce });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use flux2_graphs::onnx::{GraphProto, ModelProto, ValueInfoProto};

    fn file(nodes: Vec<NodeProto>, inits: Vec<TensorProto>) -> OnnxFile {
        let graph = GraphProto {
            node: nodes,
            initializer: inits,
            output: vec![ValueInfoProto { name: "out".into(), ..Default::default() }],
            ..Default::default()
        };
        OnnxFile { path: "t.onnx".into(), proto: ModelProto { graph: Some(graph), ..Default::default() } }
    }

    fn fused(name: &str, attrs: Vec<flux2_graphs::onnx::AttributeProto>, inputs: &[&str]) -> NodeProto {
        NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec!["out".into()],
            name: name.into(),
            op_type: "Attention".into(),
            attribute: attrs,
            ..Default::default()
        }
    }

    #[test]
    fn fused_node_expands_to_two_products() {
        let f =
            file(vec![fused("blk.0.attention", vec![attr::float("scale", 0.25)], &["q", "k", "v"])], vec![]);
        let sites = find_sites(&f).unwrap();
        assert_eq!(sites.len(), 1);
        let s = &sites[0];
        assert_eq!(s.name, "blk.0.attention");
        assert_eq!(s.input(Point::Value), "v");
        let e = expand(&f, &sites, None);
        let ops: Vec<&str> = e.graph().node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, ["Mul", "Transpose", "MatMul", "Softmax", "MatMul"]);
        let g = e.graph();
        let qk = g.node.iter().find(|n| n.name == s.qk).unwrap();
        assert_eq!(qk.input, [s.input(Point::Query), s.input(Point::KeyT)]);
        let pv = g.node.iter().find(|n| n.name == s.pv).unwrap();
        assert_eq!(pv.input, [s.input(Point::Probs), "v"]);
        assert_eq!(pv.output, ["out"]);
        assert_eq!(g.initializer[0].raw_data, 0.25f32.to_le_bytes());
        // the expanded graph's sites are the same computations, now decomposed
        let again = find_sites(&e).unwrap();
        assert_eq!(again[0].inputs, s.inputs);
        assert_eq!(again[0].fused, None);
    }

    #[test]
    fn softmax_maximum_is_reduced_in_graph() {
        let f =
            file(vec![fused("blk.0.attention", vec![attr::float("scale", 0.25)], &["q", "k", "v"])], vec![]);
        let sites = find_sites(&f).unwrap();
        let g = with_probs_amax(&expand(&f, &sites, None), &sites);
        let r = g.graph().node.last().unwrap();
        assert_eq!(
            (r.op_type.as_str(), r.input.as_slice()),
            ("ReduceMax", [sites[0].input(Point::Probs).to_string()].as_slice())
        );
        assert_eq!(r.output, [probs_amax_name(&sites[0])]);
        assert_eq!(r.attribute[0].i, 0, "keepdims 0: one scalar per run");
    }

    #[test]
    fn masked_causal_or_unscaled_attention_is_not_a_site() {
        let scale = || attr::float("scale", 0.5);
        for (attrs, inputs) in [
            (vec![scale()], vec!["q", "k", "v", "mask"]),
            (vec![scale(), attr::int("is_causal", 1)], vec!["q", "k", "v"]),
            (vec![scale(), attr::float("softcap", 30.0)], vec!["q", "k", "v"]),
            (vec![], vec!["q", "k", "v"]),
        ] {
            let f = file(vec![fused("a", attrs, &inputs)], vec![]);
            assert!(find_sites(&f).unwrap().is_empty(), "{inputs:?}");
        }
    }

    #[test]
    fn expand_only_touches_chosen_sites() {
        let a = fused("b.0.attention", vec![attr::float("scale", 1.0)], &["q", "k", "v"]);
        let mut b = fused("b.1.attention", vec![attr::float("scale", 1.0)], &["q", "k", "out"]);
        b.output = vec!["out2".into()];
        let f = file(vec![a, b], vec![]);
        let sites = find_sites(&f).unwrap();
        let only: HashSet<String> = ["b.1.attention".to_string()].into();
        let e = expand(&f, &sites, Some(&only));
        let ops: Vec<&str> = e.graph().node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, ["Attention", "Mul", "Transpose", "MatMul", "Softmax", "MatMul"]);
    }
}
