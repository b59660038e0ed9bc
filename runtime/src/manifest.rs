//! `manifest.json`: the contract between an export folder and everything that runs it.
//!
//! It lists each graph file with its inputs and outputs (names, dtypes, symbolic shapes,
//! dynamic-axis ranges), the detected variant and config, the defaults the pipeline uses
//! (steps, guidance, distillation, text layers), and the source files with sizes and
//! fingerprints so a later build or calibration can tell whether its input changed.
//!
//! The schema lives here, in the runtime, because the runtime is the one reader every
//! deployment has; the exporter (which writes it) and the calibrator depend on the runtime
//! for it, so the runtime itself depends on no other flux2 crate.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::RuntimeError;

/// File name of the manifest inside an export folder.
pub const MANIFEST: &str = "manifest.json";

/// A graph input or output.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct IoSpec {
    pub name: String,
    pub dtype: String,
    /// Dims as written in the graph: numbers or axis names.
    pub shape: Vec<String>,
}

/// The range a dynamic axis was exported for (TensorRT optimisation profiles come from it).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DimRange {
    pub min: i64,
    pub opt: i64,
    pub max: i64,
}

/// One ONNX file of the export.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct GraphEntry {
    pub file: String,
    /// `vae`, `transformer` or `text_encoder`.
    pub component: String,
    pub dtype: String,
    pub weights: String,
    pub target: String,
    pub parameters: u64,
    pub inputs: Vec<IoSpec>,
    pub outputs: Vec<IoSpec>,
    #[serde(default)]
    pub dim_ranges: BTreeMap<String, DimRange>,
    /// Precision of the graph's matmuls after calibration (`fp32`, `int8`, `fp8`...).
    #[serde(default)]
    pub precision: Option<String>,
}

/// A source file of the checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SourceFile {
    pub path: String,
    pub size: u64,
    /// sha256 over the safetensors header, the size, and the first and last MiB of data.
    pub fingerprint: String,
}

/// The whole manifest.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct Manifest {
    pub tool: String,
    pub tool_version: String,
    /// `dev`, `klein-4b`, `klein-9b`, `custom`...
    pub variant: String,
    /// Component configs as detected (serialised config structs).
    pub configs: BTreeMap<String, serde_json::Value>,
    /// Keyed by graph name (`vae_encoder`, `vae_decoder`, `transformer`, `text_encoder`).
    pub graphs: BTreeMap<String, GraphEntry>,
    /// Pipeline defaults (steps, guidance, is_distilled, text layers, max_sequence_length...).
    #[serde(default)]
    pub pipeline: BTreeMap<String, serde_json::Value>,
    pub sources: Vec<SourceFile>,
    /// LoRA adapters merged into the exported DiT weights (file, fingerprint, format, rank,
    /// scale, tensors touched), in the order applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adapters: Vec<crate::lora::AdapterRecord>,
}

fn manifest_err(path: &Path, msg: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Model { path: path.to_path_buf(), msg: msg.to_string() }
}

impl Manifest {
    pub fn new() -> Manifest {
        Manifest {
            tool: "flux2-deploy".into(),
            tool_version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        }
    }

    /// Reads `dir/manifest.json`.
    pub fn read(dir: &Path) -> Result<Manifest, RuntimeError> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|e| manifest_err(&path, e))?;
        serde_json::from_str(&text).map_err(|e| manifest_err(&path, format!("bad manifest: {e}")))
    }

    /// Writes `dir/manifest.json` (atomically: a temporary file renamed into place).
    pub fn write(&self, dir: &Path) -> Result<(), RuntimeError> {
        let path = dir.join(MANIFEST);
        let tmp = dir.join(format!(".{MANIFEST}.tmp"));
        let text = serde_json::to_string_pretty(self).map_err(|e| manifest_err(&path, e))?;
        std::fs::write(&tmp, text).map_err(|e| manifest_err(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| manifest_err(&path, e))
    }
}
