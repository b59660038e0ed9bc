//! Run-time adapters: the weights of an exported `transformer.onnx` as stored (plain
//! initializers of a copy export, or the `<name>.__src<i>` row pieces of a link export that
//! a Concat / Cast turns into the weight), their values read from the external data, and
//! the merged tensors built as same-name, same-shape, same-dtype initializer overrides for
//! ONNX Runtime's session builder. Only touched weights are read and held.
//!
//! The ONNX file is read with a minimal message subset (prost skips the other fields), so the
//! runtime needs no graph crate.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ort::value::{DynValue, Tensor};

use super::{LoraError, MergePlan, ModuleTable, Result};
use crate::Override;

mod proto {
    //! The fields of onnx.proto this module reads.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelProto {
        #[prost(message, optional, tag = "7")]
        pub graph: Option<GraphProto>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GraphProto {
        #[prost(message, repeated, tag = "1")]
        pub node: Vec<NodeProto>,
        #[prost(message, repeated, tag = "5")]
        pub initializer: Vec<TensorProto>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NodeProto {
        #[prost(string, tag = "4")]
        pub op_type: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorProto {
        #[prost(int64, repeated, tag = "1")]
        pub dims: Vec<i64>,
        #[prost(int32, tag = "2")]
        pub data_type: i32,
        #[prost(string, tag = "8")]
        pub name: String,
        #[prost(bytes = "vec", tag = "9")]
        pub raw_data: Vec<u8>,
        #[prost(message, repeated, tag = "13")]
        pub external_data: Vec<Entry>,
        #[prost(int32, tag = "14")]
        pub data_location: i32,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Entry {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }
}

/// Element types a weight initializer can have.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Elem {
    F32,
    F16,
    Bf16,
}

impl Elem {
    fn from_onnx(code: i32) -> Option<Elem> {
        match code {
            1 => Some(Elem::F32),
            10 => Some(Elem::F16),
            16 => Some(Elem::Bf16),
            _ => None,
        }
    }
    fn size(self) -> usize {
        if self == Elem::F32 {
            4
        } else {
            2
        }
    }
}

/// One stored initializer.
#[derive(Clone, Debug)]
struct Init {
    name: String,
    dims: Vec<usize>,
    elem: Option<Elem>,
    raw: Vec<u8>,
    /// (location relative to the model folder, offset, length) of external data.
    external: Option<(String, u64, u64)>,
}

/// The weights of one exported graph, by graph weight name.
pub struct GraphWeights {
    path: PathBuf,
    /// weight -> its stored initializers, concatenated along axis 0.
    weights: BTreeMap<String, Vec<Init>>,
    quantised: bool,
    ep_context: bool,
}

fn model_err(path: &Path, msg: impl Into<String>) -> LoraError {
    LoraError::Model { path: path.to_path_buf(), msg: msg.into() }
}

impl GraphWeights {
    /// Reads the initializer table of `path` (weights stay on disk).
    pub fn open(path: &Path) -> Result<GraphWeights> {
        let bytes = std::fs::read(path).map_err(|e| model_err(path, format!("cannot read: {e}")))?;
        let model: proto::ModelProto = prost::Message::decode(bytes.as_slice())
            .map_err(|e| model_err(path, format!("not an ONNX model: {e}")))?;
        let graph = model.graph.unwrap_or_default();
        let has = |op: &str| graph.node.iter().any(|n| n.op_type == op);
        let quantised = has("QuantizeLinear") || has("DequantizeLinear");
        let ep_context = has("EPContext");
        let mut weights: BTreeMap<String, Vec<(usize, Init)>> = BTreeMap::new();
        for t in graph.initializer {
            let (weight, index) = match t.name.rsplit_once(".__src") {
                Some((w, i)) if i.parse::<usize>().is_ok() => (w.to_string(), i.parse().unwrap_or(0)),
                _ => (t.name.clone(), 0),
            };
            let external = (t.data_location == 1).then(|| {
                let get = |k: &str| t.external_data.iter().find(|e| e.key == k).map(|e| e.value.clone());
                let num = |k: &str| get(k).and_then(|v| v.parse::<u64>().ok());
                (get("location").unwrap_or_default(), num("offset").unwrap_or(0), num("length").unwrap_or(0))
            });
            let init = Init {
                name: t.name,
                dims: t.dims.iter().map(|&d| d.max(0) as usize).collect(),
                elem: Elem::from_onnx(t.data_type),
                raw: t.raw_data,
                external,
            };
            weights.entry(weight).or_default().push((index, init));
        }
        let weights = weights
            .into_iter()
            .map(|(w, mut parts)| {
                parts.sort_by_key(|(i, _)| *i);
                (w, parts.into_iter().map(|(_, p)| p).collect())
            })
            .collect();
        Ok(GraphWeights { path: path.to_path_buf(), weights, quantised, ep_context })
    }

    /// The adaptable weights (2-D, float) and their shapes.
    pub fn table(&self) -> ModuleTable {
        let shapes: Vec<(String, Vec<usize>)> =
            self.weights.iter().filter_map(|(w, parts)| Some((w.clone(), joined_shape(parts)?))).collect();
        ModuleTable::new(shapes.iter().map(|(n, s)| (n.as_str(), s.as_slice())))
    }

    /// Weights the graph assembles from stored pieces (`<name>.__src<i>`, then Concat / Cast)
    /// rather than holding as initializers of their own.
    pub fn assembled(&self) -> Vec<&str> {
        self.weights
            .iter()
            .filter(|(w, parts)| parts.len() > 1 || parts.iter().any(|p| p.name != **w))
            .map(|(w, _)| w.as_str())
            .collect()
    }

    /// Refuses graphs a run-time adapter cannot be applied to.
    pub fn check_adaptable(&self) -> Result<()> {
        if self.quantised {
            return Err(model_err(
                &self.path,
                "this graph is quantised (Q/DQ): its scales were calibrated for the base weights, so a run-time \
                 adapter would be wrong. Merge the adapter at export (`flux2 export --lora FILE`), then calibrate \
                 the merged export",
            ));
        }
        if self.ep_context {
            return Err(model_err(
                &self.path,
                "this is a compiled engine folder (EPContext): run-time adapters need an export folder; merge the \
                 adapter at export and rebuild (or refit a `flux2 build --refittable` engine)",
            ));
        }
        Ok(())
    }

    /// The f32 values of `weight` ([rows, cols] row-major, pieces concatenated).
    pub fn read_f32(&self, weight: &str) -> Result<Vec<f32>> {
        let parts =
            self.weights.get(weight).ok_or_else(|| model_err(&self.path, format!("no weight '{weight}'")))?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let mut out = Vec::new();
        for p in parts {
            let elem =
                p.elem.ok_or_else(|| model_err(&self.path, format!("'{}' is not a float tensor", p.name)))?;
            let n: usize = p.dims.iter().product();
            let bytes = match &p.external {
                None => p.raw.clone(),
                Some((loc, offset, len)) => {
                    let file = dir.join(loc);
                    let f = std::fs::File::open(&file)
                        .map_err(|e| model_err(&file, format!("cannot open: {e}")))?;
                    let mut buf = vec![0u8; *len as usize];
                    f.read_exact_at(&mut buf, *offset)
                        .map_err(|e| model_err(&file, format!("cannot read: {e}")))?;
                    buf
                }
            };
            if bytes.len() != n * elem.size() {
                return Err(model_err(
                    &self.path,
                    format!("'{}' holds {} bytes, expected {}", p.name, bytes.len(), n * elem.size()),
                ));
            }
            decode(elem, &bytes, &mut out);
        }
        Ok(out)
    }

    /// Initializer overrides carrying `merged` (the f32 values of `weight`), split into the
    /// stored pieces and converted to their dtypes.
    pub fn overrides(&self, weight: &str, merged: &[f32]) -> Result<Vec<Override>> {
        let parts =
            self.weights.get(weight).ok_or_else(|| model_err(&self.path, format!("no weight '{weight}'")))?;
        let mut out = Vec::new();
        let mut at = 0;
        for p in parts {
            let n: usize = p.dims.iter().product();
            let slice = merged
                .get(at..at + n)
                .ok_or_else(|| model_err(&self.path, format!("'{}': merged values too short", p.name)))?;
            at += n;
            let shape: Vec<i64> = p.dims.iter().map(|&d| d as i64).collect();
            let err = |e: ort::Error| model_err(&self.path, format!("override '{}': {e}", p.name));
            let value: DynValue = match p.elem {
                Some(Elem::F32) => Tensor::from_array((shape, slice.to_vec())).map_err(err)?.into_dyn(),
                Some(Elem::F16) => {
                    let v: Vec<half::f16> = slice.iter().map(|&x| half::f16::from_f32(x)).collect();
                    Tensor::from_array((shape, v)).map_err(err)?.into_dyn()
                }
                Some(Elem::Bf16) => {
                    let v: Vec<half::bf16> = slice.iter().map(|&x| half::bf16::from_f32(x)).collect();
                    Tensor::from_array((shape, v)).map_err(err)?.into_dyn()
                }
                None => return Err(model_err(&self.path, format!("'{}' is not a float tensor", p.name))),
            };
            out.push((p.name.clone(), Arc::new(value)));
        }
        Ok(out)
    }
}

/// The shape the pieces make when concatenated on axis 0 (None unless 2-D float).
fn joined_shape(parts: &[Init]) -> Option<Vec<usize>> {
    let first = parts.first()?;
    first.elem?;
    if first.dims.len() != 2
        || parts.iter().any(|p| p.dims.len() != 2 || p.dims[1] != first.dims[1] || p.elem.is_none())
    {
        return None;
    }
    Some(vec![parts.iter().map(|p| p.dims[0]).sum(), first.dims[1]])
}

fn decode(elem: Elem, b: &[u8], out: &mut Vec<f32>) {
    match elem {
        Elem::F32 => out.extend(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        Elem::F16 => out.extend(b.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())),
        Elem::Bf16 => out.extend(b.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())),
    }
}

/// Run-time adapters for one graph: plans `adapters` against `graph`'s weights and returns
/// the initializer overrides of every touched weight, with the plan (for records).
pub fn graph_overrides(graph: &Path, adapters: &[super::AdapterSpec]) -> Result<(Vec<Override>, MergePlan)> {
    let weights = GraphWeights::open(graph)?;
    weights.check_adaptable()?;
    // tensors for ONNX Runtime need its library loaded
    crate::environment().map_err(|e| model_err(graph, e.to_string()))?;
    let files = adapters
        .iter()
        .map(|a| Ok((super::LoraFile::open(&a.path)?, a.scale)))
        .collect::<Result<Vec<_>>>()?;
    let plan = MergePlan::new(files, &weights.table())?;
    let mut out = Vec::new();
    for w in plan.touched() {
        let mut values = weights.read_f32(w)?;
        plan.apply(w, &mut values);
        out.extend(weights.overrides(w, &values)?);
    }
    Ok((out, plan))
}
