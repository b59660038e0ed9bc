//! Element types of graph values, with their ONNX `TensorProto.DataType` codes.

use serde::{Deserialize, Serialize};

/// Element type of a tensor in a graph.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    /// Used only inside graphs (e.g. RoPE angles computed in double precision).
    F64,
    F16,
    BF16,
    /// FLOAT8E4M3FN (no infinities, max 448).
    F8E4M3,
    I64,
    I32,
    I8,
    U8,
    Bool,
}

impl DType {
    /// The ONNX `TensorProto.DataType` code.
    pub fn onnx(self) -> i32 {
        match self {
            DType::F32 => 1,
            DType::F64 => 11,
            DType::U8 => 2,
            DType::I8 => 3,
            DType::I32 => 6,
            DType::I64 => 7,
            DType::Bool => 9,
            DType::F16 => 10,
            DType::BF16 => 16,
            DType::F8E4M3 => 17,
        }
    }

    /// Inverse of [`DType::onnx`].
    pub fn from_onnx(code: i32) -> Option<DType> {
        Some(match code {
            1 => DType::F32,
            11 => DType::F64,
            2 => DType::U8,
            3 => DType::I8,
            6 => DType::I32,
            7 => DType::I64,
            9 => DType::Bool,
            10 => DType::F16,
            16 => DType::BF16,
            17 => DType::F8E4M3,
            _ => return None,
        })
    }

    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::I64 | DType::F64 => 8,
            DType::F8E4M3 | DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64 | DType::F16 | DType::BF16 | DType::F8E4M3)
    }

    /// Lower-case name as used on the command line and in manifests (`f32`, `bf16`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F8E4M3 => "f8e4m3",
            DType::I64 => "i64",
            DType::I32 => "i32",
            DType::I8 => "i8",
            DType::U8 => "u8",
            DType::Bool => "bool",
        }
    }

    /// Parses [`DType::name`] (also accepts `float32`, `float16`, `bfloat16`).
    pub fn parse(s: &str) -> Option<DType> {
        Some(match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => DType::F32,
            "f16" | "float16" | "fp16" => DType::F16,
            "bf16" | "bfloat16" => DType::BF16,
            "f8e4m3" | "fp8" | "float8e4m3fn" => DType::F8E4M3,
            "i64" | "int64" => DType::I64,
            "i32" | "int32" => DType::I32,
            "i8" | "int8" => DType::I8,
            "u8" | "uint8" => DType::U8,
            "bool" => DType::Bool,
            _ => return None,
        })
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
