//! Per-component export: detect the config from a component's names and shapes (cross-
//! checked with its `config.json`), build its graph(s), and say where each weight comes
//! from. The export driver (`crate::export`) writes whatever these return.

use flux2_graphs::{DType, Model, Target};

use crate::layout::{Component, Kind};
use crate::names::Source;
use crate::Result;

pub mod dit;
pub mod text;
pub mod vae;

/// Options shared by every component export.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    pub dtype: DType,
    pub target: Target,
    /// Text-encoder hidden-state layers to output (None: the variant's default).
    pub text_layers: Option<Vec<usize>>,
    /// A config JSON that overrides the detected one (`--config`).
    pub config_override: Option<serde_json::Value>,
}

/// One graph ready to be written.
pub struct BuiltGraph {
    /// File stem and manifest key: `vae_encoder`, `vae_decoder`, `transformer`, `text_encoder`.
    pub stem: String,
    pub model: Model,
    /// Canonical weight name -> where it is in the checkpoint.
    pub map: Box<dyn Fn(&str) -> Source>,
    /// Name prefixes of stored tensors that this graph may leave unused.
    pub ignore: Vec<String>,
    /// The detected config, as recorded in the manifest.
    pub config: serde_json::Value,
    /// Detected variant name (`dev`, `klein-4b`, ..., `custom`) where meaningful.
    pub variant: Option<String>,
    /// Pipeline defaults this component implies (e.g. text layers), merged into the manifest.
    pub pipeline: Vec<(String, serde_json::Value)>,
    /// Stem of an earlier graph of the same component whose written weights this graph uses
    /// (the DiT parts share the transformer's weight files instead of a second copy).
    pub shares_weights_of: Option<String>,
}

/// Builds the graphs of one component.
pub fn build(component: &Component, opts: &ExportOptions) -> Result<Vec<BuiltGraph>> {
    match component.kind {
        Kind::Vae => vae::build(component, opts),
        // KINDS-BEGIN
        Kind::TextEncoder => text::build(component, opts),
        Kind::Transformer => dit::build(component, opts),
        // KINDS-END
        #[allow(unreachable_patterns)]
        other => Err(crate::ExportError::UnknownLayout {
            path: component.checkpoint.origin.clone(),
            msg: format!("exporting {} is not supported yet", other.name()),
        }),
    }
}
