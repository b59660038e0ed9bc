//! flux2-graphs: a typed ONNX graph builder and the FLUX.2 model graphs.
//!
//! Pure math: nothing here reads or writes files. Graphs declare the weights they need
//! by checkpoint name and shape; `flux2-exporter` resolves them against safetensors and
//! writes the ONNX file with its external data.

pub mod onnx {
    //! Prost types for the subset of the ONNX IR we emit (`proto/onnx.proto`).
    #![allow(clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

mod dtype;

/// ONNX `TensorProto.DataType` codes, for code that reads ONNX files directly.
pub mod onnx_dtype {
    pub const FLOAT: i32 = 1;
    pub const UINT8: i32 = 2;
    pub const INT8: i32 = 3;
    pub const INT32: i32 = 6;
    pub const INT64: i32 = 7;
    pub const FLOAT16: i32 = 10;
    pub const DOUBLE: i32 = 11;
    pub const BFLOAT16: i32 = 16;
    pub const FLOAT8E4M3FN: i32 = 17;
    pub const FLOAT8E5M2: i32 = 19;
    pub const INT4: i32 = 22;
}

mod graph;
pub mod models;
pub mod ops;
mod shape;

pub use dtype::DType;
pub use graph::{attr, value_info, DimRange, Graph, Model, ScopeGuard, Target, WeightDecl, T};
pub use shape::{broadcast, show as show_shape, Dim, Shape};

/// ONNX IR version written into every model (ONNX Runtime 1.31 reads up to 13).
pub const IR_VERSION: i64 = 10;

/// Errors raised while wiring a graph.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("node '{node}': {msg}")]
    Wiring { node: String, msg: String },
    #[error("duplicate name '{0}' in graph")]
    Duplicate(String),
    #[error("weight '{name}': {msg}")]
    Weight { name: String, msg: String },
    #[error("config: {0}")]
    Config(String),
}

pub type Result<T> = std::result::Result<T, GraphError>;

/// The little-endian bytes of a tensor stored inside the model (`raw_data` or the typed
/// `*_data` fields; `int32_data` holds narrower types one value per entry), for elements of
/// `elem_size` bytes. `None` when the tensor carries no inline data.
pub fn inline_tensor_bytes(t: &onnx::TensorProto, elem_size: usize) -> Option<Vec<u8>> {
    let numel: i64 = t.dims.iter().product();
    if !t.raw_data.is_empty() || numel == 0 {
        Some(t.raw_data.clone())
    } else if !t.float_data.is_empty() {
        Some(t.float_data.iter().flat_map(|v| v.to_le_bytes()).collect())
    } else if !t.int64_data.is_empty() {
        Some(t.int64_data.iter().flat_map(|v| v.to_le_bytes()).collect())
    } else if !t.int32_data.is_empty() {
        Some(t.int32_data.iter().flat_map(|&v| v.to_le_bytes()[..elem_size.min(4)].to_vec()).collect())
    } else {
        None
    }
}

/// The declared tensor type of a graph input or output: its element type (None when it is not
/// one of ours) and its dims as text (a number, a symbol name, or `?` when unset; empty when no
/// shape is declared). None when the value is not a tensor.
pub fn tensor_type_of(v: &onnx::ValueInfoProto) -> Option<(Option<DType>, Vec<String>)> {
    use onnx::tensor_shape_proto::dimension::Value;
    let Some(onnx::type_proto::Value::TensorType(t)) = v.r#type.as_ref().and_then(|t| t.value.as_ref())
    else {
        return None;
    };
    let dims = t
        .shape
        .as_ref()
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match &d.value {
                    Some(Value::DimValue(n)) => n.to_string(),
                    Some(Value::DimParam(p)) => p.clone(),
                    None => "?".into(),
                })
                .collect()
        })
        .unwrap_or_default();
    Some((DType::from_onnx(t.elem_type), dims))
}

/// Encodes f32 values as little-endian bytes of `dtype` (f32, f16 or bf16).
pub fn encode_floats(dtype: DType, values: &[f32]) -> Vec<u8> {
    match dtype {
        DType::F16 => values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
        DType::BF16 => values.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect(),
        DType::F64 => values.iter().flat_map(|v| (*v as f64).to_le_bytes()).collect(),
        _ => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}
