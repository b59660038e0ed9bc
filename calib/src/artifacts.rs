//! Files a calibration leaves in the model folder besides the graphs:
//!
//! * `scales.json` ([`ScalesFile`]): per graph, every activation range and scale (with its
//!   SmoothQuant factors) and every weight's scales, plus the layers kept in float and why.
//! * `calibration.cache`: TensorRT's calibration-table text format, for INT8, read by
//!   TensorRT's `IInt8Calibrator::readCalibrationCache` and by ONNX Runtime's TensorRT EP with
//!   `trt_int8_use_native_calibration_table`: a header `TRT-<version>-EntropyCalibration2`, then
//!   one `tensor_name: <hex>` line per tensor, hex being the IEEE-754 bits of the float32 scale
//!   amax/127 (ORT `tensorrt_execution_provider.cc` `ReadDynamicRange`: range = scale × 127).
//!   It names tensors of the *float* graph, for TensorRT's implicit-INT8 path (TensorRT 10 and
//!   JetPack 6); the Q/DQ graphs need no table.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::calibrators::Calibrator;
use crate::formats::Format;
use crate::qdq::WeightScales;

/// Version tag written into `calibration.cache` (TensorRT 10.16.1, the TensorRT that ONNX Runtime
/// 1.31's TensorRT EP links against). ONNX Runtime ignores it; TensorRT's own reader wants it to
/// match the TensorRT that reads the cache.
pub const TRT_CACHE_VERSION: &str = "101601";

/// An activation's calibrated range.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActivationScale {
    /// Range of the tensor as the quantiser sees it (after smoothing, if any).
    pub amax: f32,
    /// amax / 127 (INT8) or amax / 448 (FP8).
    pub scale: f32,
    /// Largest |x| of the unsmoothed tensor over the calibration set.
    pub observed_amax: f32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smooth: Option<Vec<f32>>,
}

/// A quantised weight.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WeightEntry {
    pub activation: String,
    #[serde(flatten)]
    pub scales: WeightScales,
}

/// A layer left in float and why (`sensitivity`, `per-forward vector`, `excluded`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeptLayer {
    pub layer: String,
    pub reason: String,
    /// NMSE of the component output with only this layer quantised, when measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nmse_alone: Option<f64>,
}

/// Scales of one graph.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct GraphScales {
    pub activations: BTreeMap<String, ActivationScale>,
    pub weights: BTreeMap<String, WeightEntry>,
    pub kept_float: Vec<KeptLayer>,
}

/// `scales.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScalesFile {
    pub format: Format,
    pub calibrator: Calibrator,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smoothquant_alpha: Option<f32>,
    pub graphs: BTreeMap<String, GraphScales>,
}

/// The text of a TensorRT calibration cache for `ranges` (tensor → amax), sorted by name.
///
/// ```
/// use std::collections::BTreeMap;
/// use flux2_calib::artifacts::trt_calibration_cache;
/// let ranges = BTreeMap::from([("x".to_string(), 127.0f32), ("zero".to_string(), 0.0)]);
/// assert_eq!(trt_calibration_cache("8601", &ranges), "TRT-8601-EntropyCalibration2\nx: 3f800000\nzero: 0\n");
/// ```
pub fn trt_calibration_cache(version: &str, ranges: &BTreeMap<String, f32>) -> String {
    let mut s = format!("TRT-{version}-EntropyCalibration2\n");
    for (name, amax) in ranges {
        let scale = amax / Format::Int8.qmax();
        s.push_str(&format!("{name}: {:x}\n", scale.to_bits()));
    }
    s
}

/// Parses a calibration cache back into tensor → amax (for checks and tests).
pub fn parse_trt_calibration_cache(text: &str) -> Option<BTreeMap<String, f32>> {
    let mut lines = text.lines();
    if !lines.next()?.starts_with("TRT-") {
        return None;
    }
    let mut out = BTreeMap::new();
    for l in lines.filter(|l| !l.trim().is_empty()) {
        let (name, hex) = l.rsplit_once(':')?;
        let bits = u32::from_str_radix(hex.trim(), 16).ok()?;
        out.insert(name.to_string(), f32::from_bits(bits) * Format::Int8.qmax());
    }
    Some(out)
}
