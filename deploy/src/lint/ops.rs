//! Operator support tables: TensorRT's ONNX parser (per TensorRT version) and ONNX Runtime's
//! CPU provider, and the per-op restrictions the TensorRT parser documents.
//!
//! Sources: onnx-tensorrt `docs/operators.md` at TensorRT 10.0 (opset 9-20) and 10.15 (opset
//! 9-24), its `docs/Changelog.md` for the 10.x minor that added an op (DeformConv 10.1, window
//! functions 10.4, STFT 10.5, opset-21 GroupNormalization 10.9, Attention 10.14,
//! RMSNormalization/RotaryEmbedding/TensorScatter 10.15, dynamic Squeeze/Unsqueeze axes 10.7),
//! and NVIDIA's "ONNX Opset Guide" for TensorRT 11 (ONNX 1.20, opset <= 25). The opset ceilings
//! of 10.6 (22) and 10.11 (23) follow the ONNX submodule updates in the changelog (1.17, 1.18).
//! ONNX Runtime 1.31 CPU: platform-notes.md §3 (opset <= 26, IR <= 13, no bf16 MatMul).

use flux2_graphs::onnx::NodeProto;

use super::model::{attr_int, attr_str, has_attr, GraphIndex};
use flux2_runtime::trt::probe::TrtVersion;

/// Ops of the TensorRT 10.0 parser support list (operators.md, "Supported: Y").
const TRT_10_0: &[&str] = &[
    "Abs",
    "Acos",
    "Acosh",
    "Add",
    "And",
    "ArgMax",
    "ArgMin",
    "Asin",
    "Asinh",
    "Atan",
    "Atanh",
    "AveragePool",
    "BatchNormalization",
    "Cast",
    "CastLike",
    "Ceil",
    "Celu",
    "Clip",
    "Concat",
    "Constant",
    "ConstantOfShape",
    "Conv",
    "ConvTranspose",
    "Cos",
    "Cosh",
    "CumSum",
    "DepthToSpace",
    "DequantizeLinear",
    "Div",
    "Dropout",
    "Einsum",
    "Elu",
    "Equal",
    "Erf",
    "Exp",
    "Expand",
    "EyeLike",
    "Flatten",
    "Floor",
    "Gather",
    "GatherElements",
    "GatherND",
    "Gelu",
    "Gemm",
    "GlobalAveragePool",
    "GlobalLpPool",
    "GlobalMaxPool",
    "Greater",
    "GreaterOrEqual",
    "GridSample",
    "GroupNormalization",
    "GRU",
    "HardSigmoid",
    "HardSwish",
    "Hardmax",
    "Identity",
    "If",
    "ImageScaler",
    "InstanceNormalization",
    "IsInf",
    "IsNaN",
    "LayerNormalization",
    "LeakyRelu",
    "Less",
    "LessOrEqual",
    "Log",
    "LogSoftmax",
    "Loop",
    "LRN",
    "LSTM",
    "LpNormalization",
    "LpPool",
    "MatMul",
    "Max",
    "MaxPool",
    "Mean",
    "MeanVarianceNormalization",
    "Min",
    "Mish",
    "Mod",
    "Mul",
    "Neg",
    "NonMaxSuppression",
    "NonZero",
    "Not",
    "OneHot",
    "Or",
    "Pad",
    "ParametricSoftplus",
    "Pow",
    "PRelu",
    "QuantizeLinear",
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
    "Range",
    "Reciprocal",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceProd",
    "ReduceSum",
    "ReduceSumSquare",
    "Relu",
    "Reshape",
    "Resize",
    "ReverseSequence",
    "RNN",
    "RoiAlign",
    "Round",
    "ScaledTanh",
    "Scan",
    "Scatter",
    "ScatterElements",
    "ScatterND",
    "Selu",
    "Shape",
    "Shrink",
    "Sigmoid",
    "Sign",
    "Sin",
    "Sinh",
    "Size",
    "Slice",
    "Softmax",
    "Softplus",
    "Softsign",
    "SpaceToDepth",
    "Split",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Sum",
    "Tan",
    "Tanh",
    "ThresholdedRelu",
    "Tile",
    "TopK",
    "Transpose",
    "Trilu",
    "Unsqueeze",
    "Upsample",
    "Where",
    "Xor",
];

/// Ops added after 10.0, with the TensorRT release that added them.
const TRT_LATER: &[(&str, u32, u32)] = &[
    ("DeformConv", 10, 1),
    ("BlackmanWindow", 10, 4),
    ("HammingWindow", 10, 4),
    ("HannWindow", 10, 4),
    ("STFT", 10, 5),
    ("Attention", 10, 14),
    ("RMSNormalization", 10, 15),
    ("RotaryEmbedding", 10, 15),
    ("TensorScatter", 10, 15),
];

/// ONNX Runtime CPU ops beyond the TensorRT list that our graphs or calibration may use
/// (each measured on ORT 1.31.1 CPU, platform-notes.md §3).
const ORT_EXTRA: &[&str] = &[
    "Attention",
    "RMSNormalization",
    "RotaryEmbedding",
    "DynamicQuantizeLinear",
    "MatMulInteger",
    "QLinearMatMul",
    "QLinearConv",
    "ConvInteger",
    "Unique",
    "Bernoulli",
    "BitShift",
    "Compress",
    "Det",
    "MaxUnpool",
    "MaxRoiPool",
    "Multinomial",
    "StringNormalizer",
    "TfIdfVectorizer",
    "DFT",
    "STFT",
    "TensorScatter",
    "DeformConv",
    "BlackmanWindow",
    "HammingWindow",
    "HannWindow",
    "AffineGrid",
    "Col2Im",
    "CenterCropPad",
    "BitwiseAnd",
    "BitwiseNot",
    "BitwiseOr",
    "BitwiseXor",
    "ImageDecoder",
    "RegexFullMatch",
    "StringConcat",
    "StringSplit",
    "MelWeightMatrix",
    "NegativeLogLikelihoodLoss",
    "SoftmaxCrossEntropyLoss",
];

/// Contrib ops of ONNX Runtime's CPU provider that are fine for `--target ort`.
const ORT_MICROSOFT: &[&str] = &[
    "MultiHeadAttention",
    "GroupQueryAttention",
    "RotaryEmbedding",
    "SkipSimplifiedLayerNormalization",
    "SimplifiedLayerNormalization",
    "MatMulNBits",
    "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul",
    "QuickGelu",
    "FastGelu",
    "BiasGelu",
    "SkipLayerNormalization",
];

/// Highest ONNX opset the TensorRT parser of `v` documents.
pub fn trt_max_opset(v: TrtVersion) -> i64 {
    match (v.major, v.minor) {
        (m, _) if m >= 11 => 25,
        (10, m) if m >= 15 => 24,
        (10, m) if m >= 11 => 23,
        (10, m) if m >= 6 => 22,
        _ => 20,
    }
}

/// Lowest TensorRT release whose ONNX parser imports `op`; None: not imported at all.
pub fn trt_since(op: &str) -> Option<TrtVersion> {
    let v = |major, minor| Some(TrtVersion { major, minor, patch: 0 });
    if TRT_10_0.contains(&op) {
        return v(10, 0);
    }
    TRT_LATER.iter().find(|(o, _, _)| *o == op).and_then(|(_, major, minor)| v(*major, *minor))
}

/// Whether ONNX Runtime's CPU provider has a kernel (or function expansion) for the op.
pub fn ort_supports(domain: &str, op: &str) -> bool {
    match domain {
        "" | "ai.onnx" => TRT_10_0.contains(&op) || ORT_EXTRA.contains(&op),
        "com.microsoft" => ORT_MICROSOFT.contains(&op),
        _ => false,
    }
}

/// A problem with one node's use of an op the TensorRT parser knows.
pub struct OpIssue {
    pub rule: &'static str,
    pub message: String,
}

fn issue(rule: &'static str, message: String) -> Option<OpIssue> {
    Some(OpIssue { rule, message })
}

/// The documented per-op restrictions of the TensorRT parser (operators.md "Restrictions").
pub fn trt_restriction(ix: &GraphIndex, n: &NodeProto, v: TrtVersion) -> Option<OpIssue> {
    let input_const = |i: usize| n.input.get(i).is_none_or(|s| s.is_empty() || ix.constant(s).is_some());
    match n.op_type.as_str() {
        "Resize" => {
            let mode = attr_str(n, "mode").unwrap_or_else(|| "nearest".into());
            let ctm = attr_str(n, "coordinate_transformation_mode").unwrap_or_else(|| "half_pixel".into());
            let nearest = attr_str(n, "nearest_mode").unwrap_or_else(|| "round_prefer_floor".into());
            let policy = attr_str(n, "keep_aspect_ratio_policy").unwrap_or_else(|| "stretch".into());
            if !["nearest", "linear"].contains(&mode.as_str()) {
                return issue("op-attribute", format!("Resize mode '{mode}' (TensorRT: nearest, linear)"));
            }
            if !["half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"]
                .contains(&ctm.as_str())
            {
                return issue("op-attribute", format!("Resize coordinate_transformation_mode '{ctm}'"));
            }
            if !["floor", "ceil", "round_prefer_floor", "round_prefer_ceil"].contains(&nearest.as_str()) {
                return issue("op-attribute", format!("Resize nearest_mode '{nearest}'"));
            }
            if attr_int(n, "antialias").unwrap_or(0) != 0 {
                return issue("op-attribute", "Resize with antialias (TensorRT has none)".into());
            }
            if policy != "stretch" {
                return issue(
                    "op-attribute",
                    format!("Resize keep_aspect_ratio_policy '{policy}' (only stretch)"),
                );
            }
            None
        }
        "Attention" => {
            if n.input.iter().skip(4).any(|s| !s.is_empty()) {
                return issue(
                    "op-attribute",
                    "Attention with past_key/past_value/nonpad_kv_seqlen inputs".into(),
                );
            }
            if n.output.iter().skip(1).any(|s| !s.is_empty()) {
                return issue("op-attribute", "Attention with present_key/present_value/qk outputs".into());
            }
            if has_attr(n, "softcap") && n.attribute.iter().any(|a| a.name == "softcap" && a.f != 0.0) {
                return issue("op-attribute", "Attention softcap is unsupported".into());
            }
            if has_attr(n, "qk_matmul_output_mode") {
                return issue("op-attribute", "Attention qk_matmul_output_mode is unsupported".into());
            }
            None
        }
        "LayerNormalization" if n.output.iter().skip(1).any(|s| !s.is_empty()) => {
            issue("op-attribute", "LayerNormalization: only the first output Y is supported".into())
        }
        "GroupNormalization" if ix.opset() >= 21 && v < (TrtVersion { major: 10, minor: 9, patch: 0 }) => {
            issue(
                "op-version",
                format!(
                    "opset-21 GroupNormalization needs TensorRT >= 10.9 (target {}.{})",
                    v.major, v.minor
                ),
            )
        }
        op if op.starts_with("Reduce") && ix.opset() >= 18 && !input_const(1) => {
            issue("op-attribute", format!("{op}: `axes` must be an initializer or Constant for TensorRT"))
        }
        "Squeeze" | "Unsqueeze" if !input_const(1) && v < (TrtVersion { major: 10, minor: 7, patch: 0 }) => {
            issue("op-attribute", format!("{}: dynamic `axes` need TensorRT >= 10.7", n.op_type))
        }
        "TopK" if attr_int(n, "sorted").unwrap_or(1) != 1 => {
            issue("op-attribute", "TopK needs sorted=1".into())
        }
        "ScatterND" if attr_str(n, "reduction").is_some_and(|r| r != "none") => {
            issue("op-attribute", "ScatterND reduction other than none".into())
        }
        "Dropout" if !input_const(2) => {
            issue("op-attribute", "Dropout: `training_mode` must be a constant False".into())
        }
        "Cast" => match attr_int(n, "to").map(|t| t as i32) {
            Some(3) | Some(17) | Some(19) | Some(22) => issue(
                "op-attribute",
                "Cast to a quantized type: TensorRT only produces INT8/FP8/INT4 through QuantizeLinear"
                    .into(),
            ),
            _ => None,
        },
        _ => None,
    }
}
