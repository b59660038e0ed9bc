//! The typed graph builder.
//!
//! [`Graph`] takes `&self` (a `RefCell` inside) so that op calls nest and a model reads
//! like its equations. Every op infers the dtype and shape of its outputs when it is
//! wired and rejects mismatches right there, naming the node. Weight names are
//! `scope + "." + local`, exactly the checkpoint path; node names are `{scope}.{op}{n}`.
//!
//! Weights are *declared* (name, shape): the graph never holds their data. The exporter
//! resolves each declaration against a checkpoint and writes the initializers.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};

use crate::onnx::{
    self, attribute_proto::AttributeType, tensor_shape_proto, type_proto, AttributeProto, ModelProto,
    NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use crate::{DType, Dim, GraphError, Result, Shape};

/// Handle to a value (tensor) in a [`Graph`]. Cheap to copy.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct T(pub(crate) u32);

/// Which runtime a graph is built for: this picks fused opset-23 ops or their decompositions.
#[derive(Copy, Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// ONNX Runtime (CPU/CUDA): opset 23 with native `Attention`, `RMSNormalization`, `RotaryEmbedding`.
    Ort,
    /// TensorRT 10's ONNX parser: opset 21, attention / norms / RoPE decomposed into basic ops.
    TensorRt,
}

impl Target {
    pub fn opset(self) -> i64 {
        match self {
            Target::Ort => 23,
            Target::TensorRt => 21,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Target::Ort => "ort",
            Target::TensorRt => "tensorrt",
        }
    }
}

/// A weight the graph reads: its full checkpoint-style name and logical shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightDecl {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: DType,
}

/// min/opt/max of a named dynamic axis (these become TensorRT optimisation profiles).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DimRange {
    pub min: i64,
    pub opt: i64,
    pub max: i64,
}

/// A finished graph: the ONNX model without weight data, plus the weights it expects.
#[derive(Clone, Debug)]
pub struct Model {
    pub proto: ModelProto,
    pub weights: Vec<WeightDecl>,
    pub dim_ranges: BTreeMap<String, DimRange>,
}

pub(crate) struct Value {
    pub name: String,
    pub dtype: DType,
    pub shape: Shape,
}

enum Slot {
    Node {
        op: String,
        domain: String,
        name: String,
        inputs: Vec<Option<T>>,
        outputs: Vec<T>,
        attrs: Vec<AttributeProto>,
    },
}

#[derive(Default)]
struct Inner {
    values: Vec<Value>,
    nodes: Vec<Slot>,
    inputs: Vec<T>,
    outputs: Vec<T>,
    taps: Vec<T>,
    consts: Vec<(T, TensorProto)>,
    weights: Vec<(T, WeightDecl)>,
    weight_index: HashMap<String, T>,
    scope: Vec<String>,
    names: HashSet<String>,
    counters: HashMap<String, usize>,
    opsets: BTreeMap<String, i64>,
    dim_ranges: BTreeMap<String, DimRange>,
    metadata: Vec<(String, String)>,
    /// `RotaryEmbedding` position ids per (batch, sequence) dims: one `arange` for every
    /// attention of a model instead of one per call (fewer nodes, faster session creation).
    rope_positions: HashMap<(crate::Dim, crate::Dim), T>,
}

/// The graph builder. See the module docs.
pub struct Graph {
    inner: RefCell<Inner>,
    /// Runtime the graph is built for.
    pub target: Target,
    /// Float dtype of activations and weights.
    pub dtype: DType,
}

/// Guard returned by [`Graph::scope`]; pops the scope on drop.
pub struct ScopeGuard<'a> {
    g: &'a Graph,
}

impl Drop for ScopeGuard<'_> {
    fn drop(&mut self) {
        self.g.inner.borrow_mut().scope.pop();
    }
}

impl Graph {
    /// The memoised value for `key` if any, else `make()`'s, remembered.
    pub(crate) fn rope_positions(
        &self,
        key: (crate::Dim, crate::Dim),
        make: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        if let Some(&t) = self.inner.borrow().rope_positions.get(&key) {
            return Ok(t);
        }
        let t = make()?;
        self.inner.borrow_mut().rope_positions.insert(key, t);
        Ok(t)
    }

    pub fn new(target: Target, dtype: DType) -> Graph {
        let mut inner = Inner::default();
        // bf16 Conv / InstanceNormalization / Sin / Cos need opset 22 (TensorRT 10.8+ parses it).
        let opset = if target == Target::TensorRt && dtype == DType::BF16 { 22 } else { target.opset() };
        inner.opsets.insert(String::new(), opset);
        Graph { inner: RefCell::new(inner), target, dtype }
    }

    /// Enters a name scope (`double_blocks.0`, `img_attn`, ...) until the guard drops.
    pub fn scope(&self, name: impl Into<String>) -> ScopeGuard<'_> {
        self.inner.borrow_mut().scope.push(name.into());
        ScopeGuard { g: self }
    }

    /// The current scope joined with `.`.
    pub fn scope_path(&self) -> String {
        self.inner.borrow().scope.join(".")
    }

    fn scoped(&self, local: &str) -> String {
        let inner = self.inner.borrow();
        if inner.scope.is_empty() {
            local.to_string()
        } else {
            format!("{}.{}", inner.scope.join("."), local)
        }
    }

    /// dtype of a value.
    pub fn dtype_of(&self, t: T) -> DType {
        self.inner.borrow().values[t.0 as usize].dtype
    }

    /// Shape of a value.
    pub fn shape_of(&self, t: T) -> Shape {
        self.inner.borrow().values[t.0 as usize].shape.clone()
    }

    /// Rank of a value.
    pub fn rank(&self, t: T) -> usize {
        self.inner.borrow().values[t.0 as usize].shape.len()
    }

    /// Name a value will have in the ONNX file.
    pub fn name_of(&self, t: T) -> String {
        self.inner.borrow().values[t.0 as usize].name.clone()
    }

    fn new_value(&self, name: String, dtype: DType, shape: Shape) -> T {
        let mut inner = self.inner.borrow_mut();
        inner.values.push(Value { name, dtype, shape });
        T((inner.values.len() - 1) as u32)
    }

    fn unique(&self, base: &str) -> String {
        let mut inner = self.inner.borrow_mut();
        let n = inner.counters.entry(base.to_string()).or_insert(0);
        let name = if *n == 0 { base.to_string() } else { format!("{base}_{n}") };
        *n += 1;
        inner.names.insert(name.clone());
        name
    }

    /// Declares a graph input with a shape whose symbolic dims are named dynamic axes.
    pub fn input(&self, name: &str, dtype: DType, shape: Shape) -> Result<T> {
        if !self.inner.borrow_mut().names.insert(name.to_string()) {
            return Err(GraphError::Duplicate(name.to_string()));
        }
        let t = self.new_value(name.to_string(), dtype, shape);
        self.inner.borrow_mut().inputs.push(t);
        Ok(t)
    }

    /// Records min/opt/max for a named dynamic axis.
    pub fn dim_range(&self, axis: &str, min: i64, opt: i64, max: i64) {
        self.inner.borrow_mut().dim_ranges.insert(axis.to_string(), DimRange { min, opt, max });
    }

    /// Adds a `metadata_props` entry to the model.
    pub fn metadata(&self, key: &str, value: &str) {
        self.inner.borrow_mut().metadata.push((key.to_string(), value.to_string()));
    }

    /// Marks `t` as a graph output called `name` (the value is renamed).
    pub fn output(&self, t: T, name: &str) -> Result<()> {
        let mut inner = self.inner.borrow_mut();
        if inner.outputs.contains(&t) || inner.inputs.contains(&t) || inner.weights.iter().any(|w| w.0 == t) {
            return Err(GraphError::Wiring {
                node: name.into(),
                msg: "output must be a fresh node result".into(),
            });
        }
        if !inner.names.insert(name.to_string()) && inner.values[t.0 as usize].name != name {
            return Err(GraphError::Duplicate(name.to_string()));
        }
        inner.values[t.0 as usize].name = name.to_string();
        inner.outputs.push(t);
        Ok(())
    }

    /// Renames the symbolic dims of `t` (e.g. `(H/2)/2` -> `h`) after checking that rank and
    /// known sizes agree. Used where a model knows a cleaner name for a derived axis.
    pub fn relabel(&self, t: T, shape: Shape) -> Result<()> {
        let mut inner = self.inner.borrow_mut();
        let v = &mut inner.values[t.0 as usize];
        let ok = v.shape.len() == shape.len()
            && v.shape.iter().zip(&shape).all(|(a, b)| a.fixed().is_none() || b.fixed().is_none() || a == b);
        if !ok {
            return Err(GraphError::Wiring {
                node: v.name.clone(),
                msg: format!(
                    "cannot relabel {} as {}",
                    crate::shape::show(&v.shape),
                    crate::shape::show(&shape)
                ),
            });
        }
        v.shape = shape;
        Ok(())
    }

    /// Marks an intermediate value as a debug tap (exposed as an output by [`Graph::finish_with_taps`]).
    pub fn tap(&self, t: T, _label: &str) {
        self.inner.borrow_mut().taps.push(t);
    }

    /// Declares a weight `scope.local` of the given shape in the graph's dtype.
    pub fn weight(&self, local: &str, shape: &[usize]) -> Result<T> {
        self.weight_typed(local, shape, self.dtype)
    }

    /// Declares a weight with an explicit dtype (e.g. f32 statistics in a bf16 graph).
    pub fn weight_typed(&self, local: &str, shape: &[usize], dtype: DType) -> Result<T> {
        let name = self.scoped(local);
        if let Some(&t) = self.inner.borrow().weight_index.get(&name) {
            let v = &self.inner.borrow().values[t.0 as usize];
            let want: Shape = shape.iter().map(|&d| Dim::Fixed(d as i64)).collect();
            if v.shape != want {
                return Err(GraphError::Weight {
                    name,
                    msg: format!(
                        "declared twice with shapes {} and {}",
                        crate::shape::show(&v.shape),
                        crate::shape::show(&want)
                    ),
                });
            }
            return Ok(t);
        }
        if !self.inner.borrow_mut().names.insert(name.clone()) {
            return Err(GraphError::Duplicate(name));
        }
        let t = self.new_value(name.clone(), dtype, shape.iter().map(|&d| Dim::Fixed(d as i64)).collect());
        let mut inner = self.inner.borrow_mut();
        inner.weights.push((t, WeightDecl { name: name.clone(), shape: shape.to_vec(), dtype }));
        inner.weight_index.insert(name, t);
        Ok(t)
    }

    /// A constant tensor stored inline.
    pub fn constant(&self, dtype: DType, shape: &[usize], raw: Vec<u8>) -> T {
        let name = self.unique(&self.scoped("const"));
        let t = self.new_value(name.clone(), dtype, shape.iter().map(|&d| Dim::Fixed(d as i64)).collect());
        let proto = TensorProto {
            dims: shape.iter().map(|&d| d as i64).collect(),
            data_type: dtype.onnx(),
            name,
            raw_data: raw,
            ..Default::default()
        };
        self.inner.borrow_mut().consts.push((t, proto));
        t
    }

    /// A float constant in dtype `dtype` (converted from f32 values).
    pub fn const_float(&self, dtype: DType, shape: &[usize], values: &[f32]) -> T {
        self.constant(dtype, shape, crate::encode_floats(dtype, values))
    }

    /// An f32-valued constant in the graph's float dtype.
    pub fn const_f(&self, shape: &[usize], values: &[f32]) -> T {
        self.const_float(self.dtype, shape, values)
    }

    /// A float scalar (rank 0) in the graph's float dtype.
    pub fn scalar(&self, v: f32) -> T {
        self.const_f(&[], &[v])
    }

    /// An int64 constant.
    pub fn const_i64(&self, shape: &[usize], values: &[i64]) -> T {
        self.constant(DType::I64, shape, values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    /// A 1-D int64 constant.
    pub fn ints(&self, values: &[i64]) -> T {
        self.const_i64(&[values.len()], values)
    }

    /// Adds a node. `outs` are the inferred (dtype, shape) of its outputs. `None` inputs are
    /// omitted optional inputs. Returns the output handles.
    pub fn node(
        &self,
        op: &str,
        domain: &str,
        inputs: &[Option<T>],
        attrs: Vec<AttributeProto>,
        outs: Vec<(DType, Shape)>,
    ) -> Vec<T> {
        if !domain.is_empty() {
            self.inner.borrow_mut().opsets.entry(domain.to_string()).or_insert(1);
        }
        let name = self.unique(&self.scoped(&op.to_ascii_lowercase()));
        let n = outs.len();
        let outputs: Vec<T> = outs
            .into_iter()
            .enumerate()
            .map(|(i, (dt, sh))| {
                let vname = if n == 1 { name.clone() } else { format!("{name}:{i}") };
                self.new_value(vname, dt, sh)
            })
            .collect();
        self.inner.borrow_mut().nodes.push(Slot::Node {
            op: op.to_string(),
            domain: domain.to_string(),
            name,
            inputs: inputs.to_vec(),
            outputs: outputs.clone(),
            attrs,
        });
        outputs
    }

    /// A node with one output.
    pub fn node1(&self, op: &str, inputs: &[T], attrs: Vec<AttributeProto>, dtype: DType, shape: Shape) -> T {
        let ins: Vec<Option<T>> = inputs.iter().map(|&t| Some(t)).collect();
        self.node(op, "", &ins, attrs, vec![(dtype, shape)])[0]
    }

    /// Error for a node about to be wired in the current scope.
    pub fn err(&self, op: &str, msg: impl Into<String>) -> GraphError {
        GraphError::Wiring { node: self.scoped(&op.to_ascii_lowercase()), msg: msg.into() }
    }

    /// Number of nodes so far.
    pub fn node_count(&self) -> usize {
        self.inner.borrow().nodes.len()
    }

    /// Finishes the graph.
    pub fn finish(&self, name: &str) -> Result<Model> {
        self.finish_impl(name, false)
    }

    /// Finishes the graph, exposing every [`Graph::tap`] as an extra output.
    pub fn finish_with_taps(&self, name: &str) -> Result<Model> {
        self.finish_impl(name, true)
    }

    fn finish_impl(&self, name: &str, taps: bool) -> Result<Model> {
        let inner = self.inner.borrow();
        if inner.outputs.is_empty() {
            return Err(GraphError::Wiring { node: name.into(), msg: "graph has no outputs".into() });
        }
        let vname = |t: &T| inner.values[t.0 as usize].name.clone();
        let vinfo = |t: &T| {
            let v = &inner.values[t.0 as usize];
            value_info(&v.name, v.dtype, &v.shape)
        };
        let nodes = inner
            .nodes
            .iter()
            .map(|s| match s {
                Slot::Node { op, domain, name, inputs, outputs, attrs } => NodeProto {
                    input: inputs.iter().map(|i| i.as_ref().map(vname).unwrap_or_default()).collect(),
                    output: outputs.iter().map(vname).collect(),
                    name: name.clone(),
                    op_type: op.clone(),
                    domain: domain.clone(),
                    attribute: attrs.clone(),
                    doc_string: String::new(),
                },
            })
            .collect();
        let mut outputs: Vec<ValueInfoProto> = inner.outputs.iter().map(vinfo).collect();
        if taps {
            for t in &inner.taps {
                if !inner.outputs.contains(t) {
                    outputs.push(vinfo(t));
                }
            }
        }
        let graph = onnx::GraphProto {
            node: nodes,
            name: name.to_string(),
            initializer: inner.consts.iter().map(|(_, p)| p.clone()).collect(),
            doc_string: String::new(),
            input: inner.inputs.iter().map(vinfo).collect(),
            output: outputs,
            value_info: Vec::new(),
        };
        let mut metadata_props: Vec<onnx::StringStringEntryProto> = inner
            .metadata
            .iter()
            .map(|(k, v)| onnx::StringStringEntryProto { key: k.clone(), value: v.clone() })
            .collect();
        if !inner.dim_ranges.is_empty() {
            let json = serde_json_lite(&inner.dim_ranges);
            metadata_props.push(onnx::StringStringEntryProto { key: "flux2.dim_ranges".into(), value: json });
        }
        let proto = ModelProto {
            ir_version: crate::IR_VERSION,
            opset_import: inner
                .opsets
                .iter()
                .map(|(d, v)| OperatorSetIdProto { domain: d.clone(), version: *v })
                .collect(),
            producer_name: "flux2-deploy".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            domain: String::new(),
            model_version: 1,
            doc_string: String::new(),
            graph: Some(graph),
            metadata_props,
        };
        Ok(Model {
            proto,
            weights: inner.weights.iter().map(|(_, w)| w.clone()).collect(),
            dim_ranges: inner.dim_ranges.clone(),
        })
    }
}

fn serde_json_lite(ranges: &BTreeMap<String, DimRange>) -> String {
    let parts: Vec<String> = ranges
        .iter()
        .map(|(k, r)| format!("\"{k}\":{{\"min\":{},\"opt\":{},\"max\":{}}}", r.min, r.opt, r.max))
        .collect();
    format!("{{{}}}", parts.join(","))
}

/// A `ValueInfoProto` for a tensor.
pub fn value_info(name: &str, dtype: DType, shape: &[Dim]) -> ValueInfoProto {
    let dim = shape
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d {
                Dim::Fixed(n) => tensor_shape_proto::dimension::Value::DimValue(*n),
                Dim::Sym(s) => tensor_shape_proto::dimension::Value::DimParam(s.clone()),
            }),
            denotation: String::new(),
        })
        .collect();
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: dtype.onnx(),
                shape: Some(TensorShapeProto { dim }),
            })),
            denotation: String::new(),
        }),
        doc_string: String::new(),
    }
}

/// Attribute constructors.
pub mod attr {
    use super::*;

    pub fn int(name: &str, v: i64) -> AttributeProto {
        AttributeProto { name: name.into(), r#type: AttributeType::Int as i32, i: v, ..Default::default() }
    }
    pub fn float(name: &str, v: f32) -> AttributeProto {
        AttributeProto { name: name.into(), r#type: AttributeType::Float as i32, f: v, ..Default::default() }
    }
    pub fn ints(name: &str, v: &[i64]) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            r#type: AttributeType::Ints as i32,
            ints: v.to_vec(),
            ..Default::default()
        }
    }
    pub fn string(name: &str, v: &str) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            r#type: AttributeType::String as i32,
            s: v.as_bytes().to_vec(),
            ..Default::default()
        }
    }
}

impl Model {
    /// Stores weight data inline (as f32 values converted to each weight's dtype). For tests
    /// and small built-in models; real checkpoints go through the exporter's external data.
    pub fn inline_weights(&mut self, mut data: impl FnMut(&WeightDecl) -> Option<Vec<f32>>) -> Result<()> {
        let graph = self.proto.graph.get_or_insert_with(Default::default);
        for w in &self.weights {
            let values =
                data(w).ok_or_else(|| GraphError::Weight { name: w.name.clone(), msg: "no data".into() })?;
            let n: usize = w.shape.iter().product();
            if values.len() != n {
                return Err(GraphError::Weight {
                    name: w.name.clone(),
                    msg: format!("{} values for shape {:?}", values.len(), w.shape),
                });
            }
            graph.initializer.push(TensorProto {
                dims: w.shape.iter().map(|&d| d as i64).collect(),
                data_type: w.dtype.onnx(),
                name: w.name.clone(),
                raw_data: crate::encode_floats(w.dtype, &values),
                ..Default::default()
            });
        }
        Ok(())
    }

    /// Serialises the model to protobuf bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        prost::Message::encode_to_vec(&self.proto)
    }
}

impl Model {
    /// A short text dump: inputs, outputs, op histogram, weight count and parameters.
    /// Stable across runs, so tests can compare it as a snapshot.
    pub fn summary(&self) -> String {
        let Some(g) = self.proto.graph.as_ref() else { return String::new() };
        let io = |v: &crate::onnx::ValueInfoProto| {
            let (dt, dims) = match crate::tensor_type_of(v) {
                Some((dtype, dims)) => (dtype.map(|d| d.name()).unwrap_or("?"), dims.join(",")),
                None => ("?", String::new()),
            };
            format!("{}: {dt} [{dims}]", v.name)
        };
        let mut ops: BTreeMap<&str, usize> = BTreeMap::new();
        for n in &g.node {
            *ops.entry(n.op_type.as_str()).or_insert(0) += 1;
        }
        let params: usize = self.weights.iter().map(|w| w.shape.iter().product::<usize>()).sum();
        let mut s = String::new();
        for i in &g.input {
            s.push_str(&format!("in  {}\n", io(i)));
        }
        for o in &g.output {
            s.push_str(&format!("out {}\n", io(o)));
        }
        s.push_str(&format!("weights {} ({} parameters)\n", self.weights.len(), params));
        let ops: Vec<String> = ops.iter().map(|(k, v)| format!("{k}:{v}")).collect();
        s.push_str(&format!("ops {}\n", ops.join(" ")));
        s
    }
}
