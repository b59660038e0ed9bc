//! Q/DQ rules: what TensorRT's explicit quantization accepts (TensorRT developer guide,
//! "Working with Quantized Types": Q/DQ placement, per-tensor activations, per-channel weights,
//! zero point 0) and what ONNX allows (FLOAT8E4M3FN Q/DQ needs opset 19).
//!
//! The calibrator's form (calib/src/qdq.rs) passes: one `QuantizeLinear` per activation (scalar
//! f32 scale, zero point 0 of the quantized type) read only by `DequantizeLinear`s, and weights
//! stored quantized behind a `DequantizeLinear` (INT8 per output channel: MatMul [in, out] axis 1,
//! Conv [out, ...] axis 0; FP8 per tensor) feeding MatMul / Conv directly.

use flux2_graphs::onnx::NodeProto;

use super::model::{attr_int, dtype, node_label, GraphIndex};
use super::{Finding, LintTarget, Severity};
use flux2_runtime::trt::gpu::{GpuTarget, Quant};

/// Q/DQ nodes per quantized type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct QdqCount {
    pub int8: usize,
    pub fp8: usize,
    pub other: usize,
}

impl QdqCount {
    /// The graph's quantization: FP8 wins over INT8 (a mixed graph still needs FP8 hardware).
    pub fn quant(&self) -> Quant {
        if self.fp8 > 0 {
            Quant::Fp8
        } else if self.int8 > 0 {
            Quant::Int8
        } else {
            Quant::None
        }
    }
}

/// Ops with quantized TensorRT kernels (both inputs behind DQ).
const QUANTIZED_OPS: &[&str] = &["MatMul", "Gemm", "Conv", "ConvTranspose"];
/// Ops TensorRT moves Q/DQ across (data movement, pooling, residual adds).
const PROPAGATES: &[&str] = &[
    "Reshape",
    "Transpose",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Concat",
    "Slice",
    "Split",
    "Gather",
    "Identity",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Pad",
    "Resize",
    "Add",
    "Attention",
];

pub struct Ctx<'a> {
    pub file: &'a str,
    pub target: LintTarget,
    pub gpu: Option<GpuTarget>,
    /// The graph's float type from the manifest (`f32`, `f16`, `bf16`).
    pub float_dtype: i32,
}

fn is_qdq(n: &NodeProto) -> bool {
    (n.domain.is_empty() || n.domain == "ai.onnx")
        && matches!(n.op_type.as_str(), "QuantizeLinear" | "DequantizeLinear")
}

/// The quantized element type a Q writes or a DQ reads.
fn quant_type(ix: &GraphIndex, n: &NodeProto) -> i32 {
    let zp = n.input.get(2).filter(|s| !s.is_empty()).and_then(|s| ix.constant(s)).map(|t| t.data_type);
    if n.op_type == "QuantizeLinear" {
        return zp
            .or_else(|| attr_int(n, "output_dtype").filter(|&t| t != 0).map(|t| t as i32))
            .unwrap_or(dtype::UINT8);
    }
    let x = n.input.first().map(String::as_str).unwrap_or("");
    if let Some(t) = ix.constant(x) {
        return t.data_type;
    }
    match ix.producer_of(x) {
        Some(q) if q.op_type == "QuantizeLinear" => quant_type(ix, q),
        _ => zp.unwrap_or(dtype::UINT8),
    }
}

/// How many inputs of `n` are FP8 activations behind a `DequantizeLinear` (not weights).
fn fp8_activation_inputs(ix: &GraphIndex, n: &NodeProto) -> usize {
    n.input
        .iter()
        .filter_map(|s| ix.producer_of(s))
        .filter(|p| p.op_type == "DequantizeLinear" && quant_type(ix, p) == dtype::FLOAT8E4M3FN)
        .filter(|p| p.input.first().is_some_and(|x| ix.constant(x).is_none()))
        .count()
}

/// Runs every Q/DQ rule over the graph; returns the Q/DQ counts.
pub fn check(ix: &GraphIndex, cx: &Ctx, out: &mut Vec<Finding>) -> QdqCount {
    let trt = cx.target != LintTarget::Ort;
    let mut count = QdqCount::default();
    for (i, n) in ix.graph.node.iter().enumerate() {
        let label = node_label(n, i);
        let mut find = |severity: Severity, rule: &'static str, message: String| {
            out.push(Finding {
                severity,
                rule,
                graph: cx.file.to_string(),
                node: Some(label.clone()),
                message,
            })
        };
        if !is_qdq(n) {
            if !trt && n.op_type == "MatMul" && fp8_activation_inputs(ix, n) == 2 {
                find(
                    Severity::Warning,
                    "qdq-ort-fp8-matmul",
                    "FP8 Q/DQ on both (activation) inputs: ONNX Runtime 1.31's CPU provider loads this \
                     only with its Q/DQ fusions off (session option session.disable_quant_qdq=1; flux2 \
                     sets it for FP8 graphs)"
                        .into(),
                );
            }
            if trt && QUANTIZED_OPS.contains(&n.op_type.as_str()) {
                let dq = |k: usize| {
                    n.input
                        .get(k)
                        .and_then(|s| ix.producer_of(s))
                        .is_some_and(|p| p.op_type == "DequantizeLinear")
                };
                if dq(0) != dq(1) {
                    find(
                        Severity::Warning,
                        "qdq-half",
                        format!(
                            "{} has Q/DQ on only one of its inputs: TensorRT runs it unquantized",
                            n.op_type
                        ),
                    );
                }
            }
            continue;
        }
        let q = quant_type(ix, n);
        match q {
            dtype::INT8 => count.int8 += 1,
            dtype::FLOAT8E4M3FN => count.fp8 += 1,
            _ => count.other += 1,
        }
        let x = n.input.first().map(String::as_str).unwrap_or("");
        let weight = n.op_type == "DequantizeLinear" && ix.constant(x).is_some();
        // quantized type
        let allowed = matches!(q, dtype::INT8 | dtype::FLOAT8E4M3FN) || (q == dtype::INT4 && weight);
        if trt && !allowed {
            let why = if q == dtype::UINT8 {
                " (no zero point or uint8 zero point: asymmetric UINT8; TensorRT needs signed INT8 with zero point 0)"
            } else {
                ""
            };
            find(
                Severity::Error,
                "qdq-type",
                format!(
                    "{} uses {}{why}; TensorRT quantizes to INT8 or FP8 (E4M3), INT4 for weights only",
                    n.op_type,
                    dtype::name(q)
                ),
            );
        }
        if q == dtype::FLOAT8E4M3FN || q == dtype::FLOAT8E5M2 {
            if ix.opset() < 19 {
                find(
                    Severity::Error,
                    "qdq-opset",
                    format!("FP8 {} needs opset >= 19, the model imports opset {}", n.op_type, ix.opset()),
                );
            }
            if let Some(gpu) = cx.gpu.filter(|g| trt && !g.supports_fp8()) {
                find(Severity::Error, "qdq-fp8-gpu", format!(
                    "FP8 (E4M3) {} on --gpu {gpu}: {} GPUs (sm{}) have no FP8 tensor cores and TensorRT refuses \
                     FP8 Q/DQ there; calibrate for INT8", n.op_type, gpu, gpu.sm()[0]));
            }
            if !trt {
                find(
                    Severity::Warning,
                    "qdq-ort-fp8",
                    format!(
                    "FP8 {} runs unfused on ONNX Runtime's CPU provider (DQ + float kernel), slower than the \
                     float graph; FP8 is for TensorRT on sm89+", n.op_type),
                );
            }
        }
        // scale
        let scale_name = n.input.get(1).map(String::as_str).unwrap_or("");
        let scale = ix.constant(scale_name);
        let mut scale_len = 1usize;
        match scale {
            None => find(
                Severity::Error,
                "qdq-scale",
                format!("scale '{scale_name}' is not a constant; TensorRT needs build-time scales"),
            ),
            Some(t) => match ix.tensor_f32(t) {
                Err(e) => find(Severity::Error, "qdq-scale", format!("scale '{scale_name}': {e}")),
                Ok(v) => {
                    scale_len = v.len();
                    if let Some(bad) = v.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
                        find(
                            Severity::Error,
                            "qdq-scale",
                            format!("scale '{scale_name}' has {bad}; scales must be positive"),
                        );
                    }
                    if trt && t.data_type != cx.float_dtype {
                        let sev = if cx.target == LintTarget::TensorRt11 {
                            Severity::Error
                        } else {
                            Severity::Warning
                        };
                        find(sev, "qdq-scale-dtype", format!(
                            "scale '{scale_name}' is {} but the graph computes in {}: strongly typed TensorRT gives \
                             the DQ output the scale's type", dtype::name(t.data_type), dtype::name(cx.float_dtype)));
                    }
                }
            },
        }
        // zero point
        if let Some(zp_name) = n.input.get(2).filter(|s| !s.is_empty()) {
            match ix.constant(zp_name).map(|t| ix.tensor_bytes(t)) {
                None => find(
                    Severity::Error,
                    "qdq-zero-point",
                    format!("zero point '{zp_name}' is not a constant"),
                ),
                Some(Err(e)) => {
                    find(Severity::Error, "qdq-zero-point", format!("zero point '{zp_name}': {e}"))
                }
                Some(Ok(b))
                    if trt && b.iter().any(|&v| v != 0 && !(q == dtype::FLOAT8E4M3FN && v == 0x80)) =>
                {
                    find(
                        Severity::Error,
                        "qdq-zero-point",
                        format!("zero point '{zp_name}' is not 0: TensorRT quantization is symmetric"),
                    )
                }
                _ => {}
            }
        }
        // per-channel axis
        if scale_len > 1 {
            let x_dims = ix.constant(x).map(|t| t.dims.clone());
            if attr_int(n, "block_size").unwrap_or(0) == 0 {
                check_axis(ix, n, x, x_dims.as_deref(), scale_len, trt, &mut find);
            }
        }
        // placement
        if n.op_type == "QuantizeLinear" {
            let readers = ix.readers(n.output.first().map(String::as_str).unwrap_or(""));
            for r in &readers {
                if r.op_type != "DequantizeLinear" {
                    find(Severity::Error, "qdq-misplaced", format!(
                        "QuantizeLinear output is read by {} '{}' directly; TensorRT needs every Q followed by a \
                         DequantizeLinear", r.op_type, r.name));
                } else if r.input.get(1) != n.input.get(1) && !same_const(ix, r.input.get(1), n.input.get(1))
                {
                    find(
                        Severity::Error,
                        "qdq-pair",
                        format!(
                            "DequantizeLinear '{}' reads this Q with a different scale ('{}' vs '{}')",
                            r.name,
                            r.input.get(1).map(String::as_str).unwrap_or(""),
                            scale_name
                        ),
                    );
                }
            }
            if ix.outputs.iter().any(|o| Some(*o) == n.output.first().map(String::as_str)) {
                find(Severity::Error, "qdq-misplaced", "a quantized tensor is a graph output".into());
            } else if readers.is_empty() {
                find(Severity::Warning, "qdq-dead", "QuantizeLinear output is never read".into());
            }
        } else {
            let src = ix.producer_of(x);
            if !weight && src.is_none_or(|p| p.op_type != "QuantizeLinear") {
                let from = src
                    .map(|p| format!("{} '{}'", p.op_type, p.name))
                    .unwrap_or_else(|| "a graph input".into());
                find(Severity::Error, "qdq-misplaced", format!(
                    "DequantizeLinear reads '{x}' from {from}, not from a QuantizeLinear or a quantized constant"));
            }
            if trt {
                for r in ix.readers(n.output.first().map(String::as_str).unwrap_or("")) {
                    let op = r.op_type.as_str();
                    let ok = QUANTIZED_OPS.contains(&op) || (!weight && PROPAGATES.contains(&op));
                    if !ok {
                        find(Severity::Warning, "qdq-consumer", format!(
                            "{} DequantizeLinear feeds {op} '{}', which has no quantized TensorRT kernel: the Q/DQ \
                             only adds rounding there", if weight { "weight" } else { "activation" }, r.name));
                    }
                }
            }
        }
    }
    count
}

fn same_const(ix: &GraphIndex, a: Option<&String>, b: Option<&String>) -> bool {
    let val = |s: Option<&String>| s.and_then(|s| ix.constant(s)).and_then(|t| ix.tensor_bytes(t).ok());
    matches!((val(a), val(b)), (Some(x), Some(y)) if x == y)
}

/// Per-channel scales: activations must be per-tensor; a weight's axis must be its output
/// channel for the consumer (MatMul [K, N] -> last; Gemm -> 1, or 0 with transB; Conv -> 0;
/// ConvTranspose -> 1).
fn check_axis(
    ix: &GraphIndex,
    n: &NodeProto,
    x: &str,
    x_dims: Option<&[i64]>,
    scale_len: usize,
    trt: bool,
    find: &mut dyn FnMut(Severity, &'static str, String),
) {
    let Some(dims) = x_dims.filter(|_| n.op_type == "DequantizeLinear") else {
        if trt {
            find(Severity::Error, "qdq-activation-axis", format!(
                "{} on activation '{x}' has {scale_len} scales: TensorRT quantizes activations per tensor only",
                n.op_type));
        }
        return;
    };
    let rank = dims.len() as i64;
    let axis = attr_int(n, "axis").unwrap_or(1);
    let axis = if axis < 0 { axis + rank } else { axis };
    if !(0..rank).contains(&axis) || dims[axis as usize] != scale_len as i64 {
        find(
            Severity::Error,
            "qdq-axis",
            format!("{scale_len} scales on axis {axis} of weight '{x}' with dims {dims:?}"),
        );
        return;
    }
    for r in ix.readers(n.output.first().map(String::as_str).unwrap_or("")) {
        let slot = r.input.iter().position(|s| Some(s) == n.output.first());
        let want = match (r.op_type.as_str(), slot) {
            ("MatMul", Some(1)) => Some(rank - 1),
            ("Gemm", Some(1)) => Some(if attr_int(r, "transB").unwrap_or(0) != 0 { 0 } else { 1 }),
            ("Conv", Some(1)) => Some(0),
            ("ConvTranspose", Some(1)) => Some(1),
            _ => None,
        };
        if let Some(want) = want.filter(|w| *w != axis) {
            find(
                Severity::Error,
                "qdq-axis",
                format!(
                "weight '{x}' {dims:?} is quantized per channel on axis {axis}, but {} '{}' needs its output \
                 channels (axis {want}) quantized", r.op_type, r.name),
            );
        }
    }
}
