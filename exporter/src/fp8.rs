//! FP8 safetensors as they are distributed: float8_e4m3fn weights with a per-tensor scale
//! beside them (value = fp8 × scale). The scale tensor's name is the weight's module with
//! `weight_scale` (BFL, newer ComfyUI) or `scale_weight` (ComfyUI's older "scaled fp8",
//! which also stores an empty `scaled_fp8` marker tensor), e.g. `…to_q.weight` scaled by
//! `…to_q.weight_scale` or `…to_q.scale_weight`. Activation scales (`input_scale`,
//! `scale_input`) are recorded and not used: the export keeps activations float.
//!
//! [`extract`] takes these tensors out of a checkpoint's tensor index (so they are not
//! "unexpected" to a graph) and records each weight's scale; [`crate::names`] hands it to the
//! pieces of the weight, and every reader applies it when it converts to float.

use std::collections::BTreeMap;
use std::path::PathBuf;

use flux2_graphs::DType;

use crate::checkpoint::TensorInfo;
use crate::{ExportError, Result};

/// Suffixes of a weight's scale tensor (after the module name and a dot).
const WEIGHT_SCALE: &[&str] = &["weight_scale", "scale_weight"];
/// Suffixes of an activation scale tensor.
const INPUT_SCALE: &[&str] = &["input_scale", "scale_input"];
/// ComfyUI's marker of a scaled-fp8 file (an empty tensor).
const MARKER: &str = "scaled_fp8";

/// A weight's per-tensor scale.
#[derive(Clone, Debug, PartialEq)]
pub struct Scale {
    /// The scale tensor's name (for messages).
    pub tensor: String,
    pub value: f32,
}

/// The FP8 scales of a checkpoint.
#[derive(Clone, Debug, Default)]
pub struct Fp8Scales {
    /// Weight name → its scale.
    pub weights: BTreeMap<String, Scale>,
    /// Activation scales found (name → value); not used by the export.
    pub inputs: BTreeMap<String, f32>,
}

impl Fp8Scales {
    /// The scale of weight `name`, if it has one.
    pub fn of(&self, name: &str) -> Option<f32> {
        self.weights.get(name).map(|s| s.value)
    }
}

/// How one tensor name reads: (module, is a weight scale) for scale tensors.
fn scale_of(name: &str) -> Option<(&str, bool)> {
    let (module, last) = name.rsplit_once('.')?;
    if WEIGHT_SCALE.contains(&last) {
        Some((module, true))
    } else if INPUT_SCALE.contains(&last) {
        Some((module, false))
    } else {
        None
    }
}

/// Takes the scale tensors out of `tensors` and returns them. `value(t)` reads a tensor's
/// bytes, `path(t)` names its file. A scale must be one F32/F16/BF16 value, finite and
/// positive, next to a float weight of its module; anything else is an error naming it.
pub fn extract(
    tensors: &mut BTreeMap<String, TensorInfo>,
    bytes: &dyn Fn(&TensorInfo) -> Vec<u8>,
    path: &dyn Fn(&TensorInfo) -> PathBuf,
) -> Result<Fp8Scales> {
    let mut out = Fp8Scales::default();
    let names: Vec<String> = tensors.keys().filter(|n| scale_of(n).is_some()).cloned().collect();
    for name in names {
        let Some((module, is_weight)) = scale_of(&name) else { continue };
        let Some(t) = tensors.get(&name) else { continue };
        let bad = |msg: String| ExportError::Tensor { name: name.clone(), path: path(t), msg };
        let value = read_scale(t, &bytes(t)).map_err(bad)?;
        if !is_weight {
            out.inputs.insert(name.clone(), value);
            tensors.remove(&name);
            continue;
        }
        let weight = format!("{module}.weight");
        match tensors.get(&weight) {
            Some(w) if w.dtype().is_float() => {}
            Some(w) => {
                return Err(bad(format!("scales '{weight}', which is {}, not a float weight", w.dtype())))
            }
            None => return Err(bad(format!("is a weight scale but there is no '{weight}' beside it"))),
        }
        if let Some(prev) = out.weights.get(&weight) {
            return Err(bad(format!("'{weight}' already has the scale '{}'", prev.tensor)));
        }
        out.weights.insert(weight, Scale { tensor: name.clone(), value });
        tensors.remove(&name);
    }
    if tensors.get(MARKER).is_some_and(|t| t.raw.shape.iter().product::<usize>() <= 1) {
        tensors.remove(MARKER);
    }
    Ok(out)
}

/// The one value of a scale tensor, or what is wrong with it.
fn read_scale(t: &TensorInfo, bytes: &[u8]) -> std::result::Result<f32, String> {
    let numel: usize = t.raw.shape.iter().product();
    if numel != 1 {
        return Err(format!(
            "a scale must be one value (per-tensor), this one has shape {:?}; per-channel or block FP8 \
             scales are not supported",
            t.raw.shape
        ));
    }
    if !matches!(t.dtype(), DType::F32 | DType::F16 | DType::BF16) {
        return Err(format!("a scale must be F32, F16 or BF16, this one is {}", t.dtype()));
    }
    let mut v = Vec::new();
    crate::convert::decode(t.dtype(), bytes, &mut v);
    match v.first() {
        Some(&s) if s.is_finite() && s > 0.0 => Ok(s),
        Some(s) => Err(format!("scale {s} is not a finite positive number")),
        None => Err("the scale has no data".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(scale_of("a.to_q.weight_scale"), Some(("a.to_q", true)));
        assert_eq!(scale_of("a.to_q.scale_weight"), Some(("a.to_q", true)));
        assert_eq!(scale_of("a.to_q.input_scale"), Some(("a.to_q", false)));
        assert_eq!(scale_of("a.to_q.weight"), None);
        assert_eq!(scale_of("scaled_fp8"), None);
    }
}
