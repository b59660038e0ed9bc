//! An index over one decoded ONNX graph for the lint rules: who produces and who reads each
//! value, which values are constants (initializers or `Constant` outputs), and the bytes of a
//! tensor wherever it is stored (raw, typed fields, or external data read through a path that
//! must stay inside the model folder).

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};

use flux2_graphs::onnx::{tensor_proto::DataLocation, GraphProto, ModelProto, NodeProto, TensorProto};

/// ONNX `TensorProto.DataType` codes used by the rules.
pub mod dtype {
    pub use flux2_graphs::onnx_dtype::*;

    /// Short name for messages.
    pub fn name(code: i32) -> String {
        match code {
            1 => "float32".into(),
            2 => "uint8".into(),
            3 => "int8".into(),
            6 => "int32".into(),
            7 => "int64".into(),
            9 => "bool".into(),
            10 => "float16".into(),
            11 => "float64".into(),
            16 => "bfloat16".into(),
            17 => "float8e4m3fn".into(),
            18 => "float8e4m3fnuz".into(),
            19 => "float8e5m2".into(),
            20 => "float8e5m2fnuz".into(),
            21 => "uint4".into(),
            22 => "int4".into(),
            other => format!("type {other}"),
        }
    }

    /// Bytes per element (None for sub-byte or unknown types).
    pub fn size(code: i32) -> Option<usize> {
        match code {
            1 | 6 => Some(4),
            2 | 3 | 9 | 17..=20 => Some(1),
            7 | 11 => Some(8),
            10 | 16 => Some(2),
            _ => None,
        }
    }
}

/// Lookups over one graph.
pub struct GraphIndex<'a> {
    pub model: &'a ModelProto,
    pub graph: &'a GraphProto,
    /// The folder external data paths are relative to.
    pub dir: &'a Path,
    pub initializers: HashMap<&'a str, &'a TensorProto>,
    /// `Constant` node outputs with a tensor `value`.
    pub constants: HashMap<&'a str, &'a TensorProto>,
    /// Value name -> index of the node that writes it.
    pub producer: HashMap<&'a str, usize>,
    /// Value name -> indices of the nodes that read it.
    pub consumers: HashMap<&'a str, Vec<usize>>,
    /// Graph output names.
    pub outputs: Vec<&'a str>,
}

impl<'a> GraphIndex<'a> {
    pub fn new(model: &'a ModelProto, graph: &'a GraphProto, dir: &'a Path) -> GraphIndex<'a> {
        let mut ix = GraphIndex {
            model,
            graph,
            dir,
            initializers: graph.initializer.iter().map(|t| (t.name.as_str(), t)).collect(),
            constants: HashMap::new(),
            producer: HashMap::new(),
            consumers: HashMap::new(),
            outputs: graph.output.iter().map(|o| o.name.as_str()).collect(),
        };
        for (i, n) in graph.node.iter().enumerate() {
            for o in &n.output {
                ix.producer.insert(o.as_str(), i);
            }
            for input in n.input.iter().filter(|s| !s.is_empty()) {
                ix.consumers.entry(input.as_str()).or_default().push(i);
            }
            if n.op_type == "Constant" && (n.domain.is_empty() || n.domain == "ai.onnx") {
                if let (Some(o), Some(t)) = (
                    n.output.first(),
                    n.attribute.iter().find(|a| a.name == "value").and_then(|a| a.t.as_ref()),
                ) {
                    ix.constants.insert(o.as_str(), t);
                }
            }
        }
        ix
    }

    /// The default-domain opset the model imports (0 if none).
    pub fn opset(&self) -> i64 {
        opset(self.model)
    }

    pub fn node(&self, i: usize) -> &'a NodeProto {
        &self.graph.node[i]
    }

    /// A constant value: initializer or `Constant` output.
    pub fn constant(&self, name: &str) -> Option<&'a TensorProto> {
        self.initializers.get(name).or_else(|| self.constants.get(name)).copied()
    }

    /// The node that writes `name`, if any.
    pub fn producer_of(&self, name: &str) -> Option<&'a NodeProto> {
        self.producer.get(name).map(|&i| &self.graph.node[i])
    }

    /// The nodes that read `name`.
    pub fn readers(&self, name: &str) -> Vec<&'a NodeProto> {
        self.consumers.get(name).map(|v| v.iter().map(|&i| &self.graph.node[i]).collect()).unwrap_or_default()
    }

    /// Little-endian bytes of a tensor, from wherever it is stored.
    pub fn tensor_bytes(&self, t: &TensorProto) -> Result<Vec<u8>, String> {
        let numel: usize = t.dims.iter().map(|&d| d.max(0) as usize).product();
        let size = dtype::size(t.data_type)
            .ok_or_else(|| format!("cannot read {} data", dtype::name(t.data_type)))?;
        let want = numel * size;
        let bytes = if t.data_location == DataLocation::External as i32 {
            let (file, offset, length) = external_ref(self.dir, t)?;
            let length = length.unwrap_or(want as u64);
            if length != want as u64 {
                return Err(format!("external length {length} != {want} bytes for dims {:?}", t.dims));
            }
            let f = std::fs::File::open(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            let mut buf = vec![0u8; want];
            f.read_exact_at(&mut buf, offset).map_err(|e| format!("{}: {e}", file.display()))?;
            buf
        } else {
            flux2_graphs::inline_tensor_bytes(t, size).ok_or("tensor has no data")?
        };
        if bytes.len() != want {
            return Err(format!("{} bytes for dims {:?}, expected {want}", bytes.len(), t.dims));
        }
        Ok(bytes)
    }

    /// A float tensor's values (f32, f16, bf16, f64).
    pub fn tensor_f32(&self, t: &TensorProto) -> Result<Vec<f32>, String> {
        let b = self.tensor_bytes(t)?;
        Ok(match t.data_type {
            dtype::FLOAT => b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            dtype::FLOAT16 => {
                b.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
            }
            dtype::BFLOAT16 => {
                b.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
            }
            dtype::DOUBLE => b
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
                .collect(),
            other => return Err(format!("{} is not a float type", dtype::name(other))),
        })
    }
}

/// The default-domain opset a model imports (0 if none).
pub fn opset(model: &ModelProto) -> i64 {
    model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .unwrap_or(0)
}

/// A node's display name: its name, or `#index` when it has none.
pub fn node_label(n: &NodeProto, index: usize) -> String {
    if n.name.is_empty() {
        format!("#{index}")
    } else {
        n.name.clone()
    }
}

/// Resolves an external-data entry: the file (checked to be a plain relative path that stays
/// inside `dir` after resolving links), its offset and optional length.
pub fn external_ref(dir: &Path, t: &TensorProto) -> Result<(PathBuf, u64, Option<u64>), String> {
    let get = |k: &str| t.external_data.iter().find(|e| e.key == k).map(|e| e.value.as_str());
    let location = get("location").ok_or("external data without a 'location' entry")?;
    let rel = Path::new(location);
    if location.is_empty()
        || rel.is_absolute()
        || rel.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!("external data location '{location}' must be a relative path without '..'"));
    }
    let path = dir.join(rel);
    match (path.canonicalize(), dir.canonicalize()) {
        (Ok(real), Ok(root)) if real.starts_with(&root) => {}
        (Ok(real), Ok(_)) => {
            return Err(format!(
                "external data '{location}' resolves to {} outside the model folder",
                real.display()
            ))
        }
        (Err(e), _) => return Err(format!("external data file {} is missing ({e})", path.display())),
        (_, Err(e)) => return Err(format!("model folder {}: {e}", dir.display())),
    }
    let num = |k: &str| -> Result<Option<u64>, String> {
        get(k)
            .map(|v| v.parse::<u64>().map_err(|_| format!("external data {k} '{v}' is not a number")))
            .transpose()
    };
    Ok((path, num("offset")?.unwrap_or(0), num("length")?))
}

/// The integer attribute `name` of a node.
pub fn attr_int(n: &NodeProto, name: &str) -> Option<i64> {
    n.attribute.iter().find(|a| a.name == name).map(|a| a.i)
}

/// The string attribute `name` of a node.
pub fn attr_str(n: &NodeProto, name: &str) -> Option<String> {
    n.attribute.iter().find(|a| a.name == name).map(|a| String::from_utf8_lossy(&a.s).into_owned())
}

/// Whether attribute `name` is present.
pub fn has_attr(n: &NodeProto, name: &str) -> bool {
    n.attribute.iter().any(|a| a.name == name)
}
