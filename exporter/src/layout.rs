//! Finding the components of a model on disk and their layout.
//!
//! Accepted inputs:
//! * a diffusers folder (`model_index.json` with `vae/`, `transformer/`, `text_encoder/`,
//!   `tokenizer/`, each with `config.json` and safetensors, sharded or not);
//! * one component folder (`config.json` + safetensors, or an index);
//! * a single `.safetensors` file (BFL `ae.safetensors`, `flux2-dev.safetensors`, ...),
//!   classified by its tensor names, with a sibling `config.json` used when present;
//! * a folder of such single files;
//! * a GGUF file (or a component folder holding one `.gguf` file) in place of any of these:
//!   a DiT in BFL or diffusers names, a text encoder in llama.cpp names;
//! * any of these with components replaced by other files ([`ModelSource::open_with`],
//!   `flux2 export --checkpoint DIR --transformer FILE --text-encoder FILE`): the file's weights,
//!   with the config of DIR's component folder.

use std::path::{Path, PathBuf};

use crate::checkpoint::Checkpoint;
use crate::{io_err, ExportError, Result};

/// What a component is.
#[derive(Copy, Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Vae,
    Transformer,
    TextEncoder,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Vae => "vae",
            Kind::Transformer => "transformer",
            Kind::TextEncoder => "text_encoder",
        }
    }
}

/// Naming scheme of a component's tensors.
#[derive(Copy, Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// diffusers / transformers names.
    Diffusers,
    /// Black Forest Labs' original names.
    Bfl,
}

/// One model component and its checkpoint.
pub struct Component {
    pub kind: Kind,
    pub layout: Layout,
    pub checkpoint: Checkpoint,
    /// `config.json` next to the weights, if any.
    pub config: Option<serde_json::Value>,
    pub config_path: Option<PathBuf>,
}

/// A model on disk.
pub struct ModelSource {
    pub root: PathBuf,
    pub model_index: Option<serde_json::Value>,
    pub components: Vec<Component>,
    /// `tokenizer/` folder of a diffusers model.
    pub tokenizer_dir: Option<PathBuf>,
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    serde_json::from_str(&text)
        .map_err(|e| ExportError::Config { path: path.to_path_buf(), msg: format!("not JSON: {e}") })
}

/// Classifies a set of tensor names.
pub fn classify(names: &[&String]) -> Option<(Kind, Layout)> {
    let has = |p: &str| names.iter().any(|n| n.starts_with(p));
    if has("encoder.conv_in.") || has("decoder.conv_in.") {
        let layout = if has("encoder.down.") || has("decoder.up.") { Layout::Bfl } else { Layout::Diffusers };
        return Some((Kind::Vae, layout));
    }
    if has("double_blocks.") || has("single_blocks.") {
        return Some((Kind::Transformer, Layout::Bfl));
    }
    if has("transformer_blocks.") || has("single_transformer_blocks.") {
        return Some((Kind::Transformer, Layout::Diffusers));
    }
    if names.iter().any(|n| n.contains("layers.") && (n.contains("self_attn.") || n.contains("mlp."))) {
        return Some((Kind::TextEncoder, Layout::Diffusers));
    }
    None
}

impl ModelSource {
    /// Opens whatever `path` is (see the module docs).
    pub fn open(path: &Path) -> Result<ModelSource> {
        if let (false, Ok(target)) = (path.exists(), std::fs::read_link(path)) {
            return Err(ExportError::UnknownLayout {
                path: path.to_path_buf(),
                msg: format!("is a symlink to {}, which does not exist", target.display()),
            });
        }
        if !path.exists() {
            return Err(ExportError::Io {
                path: path.to_path_buf(),
                err: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
            });
        }
        if path.is_dir() && path.join("model_index.json").is_file() {
            return Self::open_diffusers(path, &[]);
        }
        let mut src = ModelSource {
            root: path.to_path_buf(),
            model_index: None,
            components: vec![],
            tokenizer_dir: None,
        };
        if path.is_file() || path.join("config.json").is_file() || has_index(path) {
            src.components.push(open_component(path)?);
            return Ok(src);
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(io_err(path))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors" || e == "gguf"))
            .collect();
        files.sort();
        for f in files {
            src.components.push(open_component(&f)?);
        }
        if src.components.is_empty() {
            return Err(ExportError::UnknownLayout {
                path: path.to_path_buf(),
                msg: "expected model_index.json, a component folder with config.json, or .safetensors files"
                    .into(),
            });
        }
        Ok(src)
    }

    /// Opens `path` with the weights of some components taken from other files (a `.gguf` or
    /// `.safetensors` file, or a folder holding one): each file must hold that kind of
    /// component; its config comes from the checkpoint's component folder (`DIR/transformer/
    /// config.json`, ...), else from the file's GGUF metadata. The checkpoint's own weights
    /// of a replaced component are not opened (they need not exist).
    pub fn open_with(path: &Path, replace: &[(Kind, PathBuf)]) -> Result<ModelSource> {
        if replace.is_empty() {
            return Self::open(path);
        }
        if path.is_dir() && path.join("model_index.json").is_file() {
            return Self::open_diffusers(path, replace);
        }
        let mut src = Self::open(path)?;
        src.components.retain(|c| !replace.iter().any(|(k, _)| *k == c.kind));
        for (kind, file) in replace {
            src.components.push(open_replacement(*kind, file, None)?);
        }
        Ok(src)
    }

    fn open_diffusers(root: &Path, replace: &[(Kind, PathBuf)]) -> Result<ModelSource> {
        let model_index = read_json(&root.join("model_index.json"))?;
        let mut components = Vec::new();
        for (sub, kind) in
            [("vae", Kind::Vae), ("transformer", Kind::Transformer), ("text_encoder", Kind::TextEncoder)]
        {
            let dir = root.join(sub);
            if let Some((_, file)) = replace.iter().find(|(k, _)| *k == kind) {
                components.push(open_replacement(kind, file, Some(&dir))?);
            } else if dir.is_dir() {
                components.push(open_component(&dir)?);
            }
        }
        let tok = root.join("tokenizer");
        Ok(ModelSource {
            root: root.to_path_buf(),
            model_index: Some(model_index),
            components,
            tokenizer_dir: tok.is_dir().then_some(tok),
        })
    }

    /// The component of a kind, if present.
    pub fn component(&self, kind: Kind) -> Option<&Component> {
        self.components.iter().find(|c| c.kind == kind)
    }
}

fn has_index(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().any(|e| e.file_name().to_string_lossy().ends_with(".safetensors.index.json")))
        .unwrap_or(false)
}

/// Opens the file given for a component of `kind`, with the config of `config_dir` if that
/// has a `config.json`, else the file's GGUF metadata config (if any).
fn open_replacement(kind: Kind, file: &Path, config_dir: Option<&Path>) -> Result<Component> {
    let checkpoint = Checkpoint::open(file)?;
    let names: Vec<&String> = checkpoint.tensors.keys().collect();
    let (found, layout) = classify(&names).ok_or_else(|| ExportError::UnknownLayout {
        path: file.to_path_buf(),
        msg: format!("given as the {}, but its tensors look like no FLUX.2 component", kind.name()),
    })?;
    if found != kind {
        return Err(ExportError::UnknownLayout {
            path: file.to_path_buf(),
            msg: format!("given as the {}, but its tensors are a {}'s", kind.name(), found.name()),
        });
    }
    let cfg_path = config_dir.map(|d| d.join("config.json")).filter(|p| p.is_file());
    let config = match &cfg_path {
        Some(p) => Some(read_json(p)?),
        None => checkpoint.gguf_config.clone(),
    };
    Ok(Component { kind, layout, checkpoint, config, config_path: cfg_path })
}

/// Opens one component (a folder or a single file) and classifies it by tensor names.
pub fn open_component(path: &Path) -> Result<Component> {
    let checkpoint = Checkpoint::open(path)?;
    let names: Vec<&String> = checkpoint.tensors.keys().collect();
    let (kind, layout) = classify(&names).ok_or_else(|| ExportError::UnknownLayout {
        path: path.to_path_buf(),
        msg: format!(
            "its {} tensors look like no FLUX.2 component (first names: {})",
            names.len(),
            names.iter().take(4).map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        ),
    })?;
    let dir = if path.is_dir() {
        path.to_path_buf()
    } else {
        path.parent().unwrap_or(Path::new(".")).to_path_buf()
    };
    let cfg_path = dir.join("config.json");
    // without a config.json, a GGUF text encoder's metadata gives one
    let own_config = cfg_path.is_file();
    let config = if own_config { Some(read_json(&cfg_path)?) } else { checkpoint.gguf_config.clone() };
    let config_path = own_config.then_some(cfg_path);
    Ok(Component { kind, layout, checkpoint, config, config_path })
}
