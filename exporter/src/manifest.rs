//! `manifest.json`: what an export folder holds, read back by the runtime and `flux2 check`.
//!
//! It lists each graph file with its inputs and outputs (names, dtypes, symbolic shapes,
//! dynamic-axis ranges), the detected variant and config, the defaults the pipeline uses
//! (steps, guidance, distillation, text layers), and the source files with sizes and
//! fingerprints so a later build or calibration can tell whether its input changed.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use flux2_graphs::{DimRange, Model};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{io_err, ExportError, Result};

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
    pub adapters: Vec<serde_json::Value>,
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
    pub fn read(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        serde_json::from_str(&text)
            .map_err(|e| ExportError::Config { path, msg: format!("bad manifest: {e}") })
    }

    /// Writes `dir/manifest.json` (atomically).
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(MANIFEST);
        let tmp = dir.join(format!(".{MANIFEST}.tmp"));
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| ExportError::Output { path: path.clone(), msg: e.to_string() })?;
        std::fs::write(&tmp, text).map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))
    }
}

/// Inputs and outputs of a finished graph, as manifest entries.
pub fn io_specs(model: &Model) -> (Vec<IoSpec>, Vec<IoSpec>) {
    let spec = |v: &flux2_graphs::onnx::ValueInfoProto| {
        let (dtype, shape) = flux2_graphs::tensor_type_of(v)
            .map(|(d, dims)| (d.map(|d| d.name().to_string()).unwrap_or_default(), dims))
            .unwrap_or_default();
        IoSpec { name: v.name.clone(), dtype, shape }
    };
    let g = model.proto.graph.as_ref();
    (
        g.map(|g| g.input.iter().map(spec).collect()).unwrap_or_default(),
        g.map(|g| g.output.iter().map(spec).collect()).unwrap_or_default(),
    )
}

/// Size and fingerprint of a checkpoint file (reads the header and at most 2 MiB).
pub fn fingerprint(path: &Path, header_len: u64) -> Result<SourceFile> {
    let meta = std::fs::metadata(path).map_err(io_err(path))?;
    let size = meta.len();
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut h = Sha256::new();
    h.update(size.to_le_bytes());
    let head = (8 + header_len + (1 << 20)).min(size);
    let mut buf = vec![0u8; head as usize];
    f.read_exact(&mut buf).map_err(io_err(path))?;
    h.update(&buf);
    if size > head {
        let tail_start = size.saturating_sub(1 << 20).max(head);
        let mut tail = vec![0u8; (size - tail_start) as usize];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut tail, tail_start).map_err(io_err(path))?;
        h.update(&tail);
    }
    let digest = h.finalize();
    Ok(SourceFile {
        path: path.display().to_string(),
        size,
        fingerprint: digest.iter().map(|b| format!("{b:02x}")).collect(),
    })
}
