//! The quantisable layers of a graph: every `MatMul` whose second input is a constant weight
//! (possibly behind the exporter's `Transpose` of an (out, in) weight, or a link-mode assembly
//! chain) and every `Conv` with a constant weight. Norms, softmax, RoPE and element-wise ops stay
//! in float; attention's two activation×activation products are quantised as sites of their own
//! ([`crate::attention`]).
//!
//! Also the graph edits the statistics and sensitivity runs need: exposing intermediate tensors
//! as outputs, and dropping nodes and initializers nothing reads any more.

use std::collections::HashSet;

use flux2_graphs::onnx::{type_proto, GraphProto, ModelProto, TypeProto, ValueInfoProto};
use serde::{Deserialize, Serialize};

use crate::consts::Consts;
use crate::error::Result;
use crate::onnx_file::{dtype, OnnxFile};

/// Kind of a quantisable node.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LayerOp {
    MatMul,
    Conv,
}

/// One quantisable node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Layer {
    /// The declared weight name without `.weight` (e.g. `transformer_blocks.0.attn.to_q`).
    pub name: String,
    /// The node's name in the graph.
    pub node: String,
    pub op: LayerOp,
    /// The activation input (input 0).
    pub activation: String,
    /// The weight input as the node sees it (input 1).
    pub weight: String,
    /// Shape of the weight as the node uses it: (in, out) for MatMul, (out, in, kh, kw) for Conv.
    pub weight_shape: Vec<usize>,
    /// The node's output (an INT8 convolution also quantises it: see [`crate::qdq`]).
    #[serde(default)]
    pub output: String,
}

impl Layer {
    /// The activation's channel axis (the axis SmoothQuant scales): last for MatMul, 1 for Conv.
    pub fn channel_axis(&self) -> i64 {
        match self.op {
            LayerOp::MatMul => -1,
            LayerOp::Conv => 1,
        }
    }

    /// Input channels of the weight.
    pub fn in_channels(&self) -> usize {
        match self.op {
            LayerOp::MatMul => self.weight_shape[0],
            LayerOp::Conv => self.weight_shape[1],
        }
    }

    /// Multiply-accumulates per activation row (in·out, or in·out·kh·kw for Conv).
    pub fn macs_per_row(&self) -> u64 {
        self.weight_shape.iter().map(|&d| d as u64).product()
    }
}

/// `base`, or `base{sep}1`, `base{sep}2`, ... : the first one not in `taken` (then added to it).
pub(crate) fn unique_name(base: &str, sep: char, taken: &mut HashSet<String>) -> String {
    let mut name = base.to_string();
    let mut k = 1;
    while !taken.insert(name.clone()) {
        name = format!("{base}{sep}{k}");
        k += 1;
    }
    name
}

/// Finds the quantisable layers, in graph order. Reads each weight once to learn its shape.
pub fn find_layers(file: &OnnxFile) -> Result<Vec<Layer>> {
    let consts = Consts::new(file);
    let mut layers = Vec::new();
    let mut names = HashSet::new();
    for n in &file.graph().node {
        let op = match n.op_type.as_str() {
            "MatMul" if n.domain.is_empty() => LayerOp::MatMul,
            "Conv" if n.domain.is_empty() => LayerOp::Conv,
            _ => continue,
        };
        let (Some(act), Some(w)) = (n.input.first(), n.input.get(1)) else { continue };
        if consts.is_const(act) || !consts.is_const(w) {
            continue;
        }
        let value = consts.eval(w)?;
        let rank_ok = match op {
            LayerOp::MatMul => value.shape.len() == 2,
            LayerOp::Conv => value.shape.len() == 4,
        };
        if !rank_ok {
            continue;
        }
        let declared = consts.declared_name(w);
        let name = unique_name(declared.strip_suffix(".weight").unwrap_or(&declared), '#', &mut names);
        layers.push(Layer {
            name,
            node: n.name.clone(),
            op,
            activation: act.clone(),
            weight: w.clone(),
            weight_shape: value.shape,
            output: n.output.first().cloned().unwrap_or_default(),
        });
    }
    Ok(layers)
}

/// A copy of the model with `names` added as float outputs (graph inputs and existing outputs
/// are left out: their values are known already).
pub fn with_outputs(proto: &ModelProto, names: &[String]) -> ModelProto {
    let mut p = proto.clone();
    let g = p.graph.get_or_insert_with(Default::default);
    let mut known: HashSet<String> = g.output.iter().map(|o| o.name.clone()).collect();
    known.extend(g.input.iter().map(|i| i.name.clone()));
    for n in names {
        if known.insert(n.clone()) {
            g.output.push(float_output(n));
        }
    }
    p
}

fn float_output(name: &str) -> ValueInfoProto {
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: dtype::FLOAT,
                shape: None,
            })),
            denotation: String::new(),
        }),
        doc_string: String::new(),
    }
}

/// Removes nodes whose outputs nothing reads (transitively) and initializers no node reads.
pub fn prune(g: &mut GraphProto) {
    let mut live: HashSet<String> = g.output.iter().map(|o| o.name.clone()).collect();
    let mut keep = vec![false; g.node.len()];
    for (i, n) in g.node.iter().enumerate().rev() {
        if n.output.iter().any(|o| live.contains(o)) {
            keep[i] = true;
            live.extend(n.input.iter().filter(|s| !s.is_empty()).cloned());
        }
    }
    let mut k = keep.iter();
    g.node.retain(|_| *k.next().unwrap_or(&false));
    g.initializer.retain(|t| live.contains(&t.name));
}
