//! `tensorrt.json`: what `flux2 build` produced and for which machine. It sits next to the
//! export-style `manifest.json` whose graph files are the EPContext models; the runtime reads it
//! for `--provider tensorrt` to check that the host matches (same GPU family and compute
//! capability, same TensorRT) before loading any engine.

use std::collections::BTreeMap;
use std::path::Path;

use super::cache_key::KeyParts;
use super::gpu::{GpuTarget, Quant};
use super::probe::{GpuDevice, TrtVersion};
use super::profiles::{GraphProfiles, ShapePlan};
use super::TrtError;

/// File name of the build manifest inside a build folder.
pub const BUILD_MANIFEST: &str = "tensorrt.json";

/// One built graph.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BuiltGraph {
    /// The ONNX file it was built from (in the model folder).
    pub source: String,
    /// The EPContext model in this folder.
    pub context_model: String,
    /// Engine files, relative to this folder.
    pub engines: Vec<String>,
    pub cache_key: String,
    pub key_parts: KeyParts,
    pub quant: Quant,
    pub profiles: GraphProfiles,
    /// The TensorRT provider options used for the build.
    pub provider_options: Vec<(String, String)>,
    pub build_seconds: f64,
}

/// The whole build.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BuildManifest {
    pub tool: String,
    pub tool_version: String,
    pub gpu: GpuTarget,
    pub device: String,
    pub sm: u32,
    pub tensorrt: String,
    pub onnxruntime: String,
    pub shapes: ShapePlan,
    pub graphs: BTreeMap<String, BuiltGraph>,
    /// Weight-stripped engines (`flux2 build --refittable`): the export folder whose ONNX
    /// weights refit them at load unless the session names another (a LoRA export).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refit_from: Option<String>,
}

impl BuildManifest {
    pub fn read(dir: &Path) -> Result<BuildManifest, TrtError> {
        let path = dir.join(BUILD_MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|e| TrtError::Model {
            path: path.clone(),
            msg: format!(
                "{e}; not a `flux2 build` folder (build one with `flux2 build --model ... --gpu ...`)"
            ),
        })?;
        serde_json::from_str(&text)
            .map_err(|e| TrtError::Model { path, msg: format!("bad build manifest: {e}") })
    }

    /// Writes `dir/tensorrt.json` through a temporary file.
    pub fn write(&self, dir: &Path) -> Result<(), TrtError> {
        let path = dir.join(BUILD_MANIFEST);
        let tmp = dir.join(format!(".{BUILD_MANIFEST}.tmp"));
        let out = |e: String| TrtError::Output { path: path.clone(), msg: e };
        let text = serde_json::to_string_pretty(self).map_err(|e| out(e.to_string()))?;
        std::fs::write(&tmp, text).map_err(|e| out(e.to_string()))?;
        std::fs::rename(&tmp, &path).map_err(|e| out(e.to_string()))
    }

    /// Refuses to run the engines on a different GPU or TensorRT than they were built for.
    pub fn verify_host(&self, device: &GpuDevice, tensorrt: Option<TrtVersion>) -> Result<(), TrtError> {
        if device.sm() != self.sm {
            return Err(TrtError::Refused {
                gpu: self.gpu.name().into(),
                msg: format!(
                    "the engines were built for {} (sm{}) but this GPU is {} (sm{}); rebuild them here with \
                     `flux2 build`",
                    self.device,
                    self.sm,
                    device.name,
                    device.sm()
                ),
            });
        }
        if let Some(v) = tensorrt {
            if v.to_string() != self.tensorrt {
                return Err(TrtError::Refused {
                    gpu: self.gpu.name().into(),
                    msg: format!(
                        "the engines were built with TensorRT {} but this machine has {v}; TensorRT engines \
                         are not portable across versions, rebuild with `flux2 build`",
                        self.tensorrt
                    ),
                });
            }
        }
        Ok(())
    }
}
