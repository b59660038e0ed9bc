//! An exported model folder (`flux2 export` / `flux2 calibrate` / `flux2 build` output):
//! its manifest, graph files and the pipeline defaults they imply.

use std::path::{Path, PathBuf};

use crate::manifest::{GraphEntry, Manifest};

use crate::RuntimeError;

/// How a model is sampled (flux2-arch.md §1.1, §6.4).
#[derive(Copy, Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Guidance {
    /// dev: one DiT call per step with the guidance value as an input.
    Embedded,
    /// klein base: two calls per step, v = v_u + g·(v_c − v_u).
    TrueCfg,
    /// klein (distilled): one call per step, no guidance.
    None,
}

/// An opened model folder.
pub struct ModelDir {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl ModelDir {
    /// Opens `dir` (must hold `manifest.json`).
    pub fn open(dir: &Path) -> Result<ModelDir, RuntimeError> {
        if !dir.is_dir() {
            let what = if dir.exists() { "is a file, not a model folder" } else { "does not exist" };
            return Err(RuntimeError::Model {
                path: dir.to_path_buf(),
                msg: format!("{what} (give the folder `flux2 export --out` wrote)"),
            });
        }
        if !dir.join("manifest.json").is_file() {
            return Err(RuntimeError::Model {
                path: dir.to_path_buf(),
                msg: "no manifest.json: not an export folder (make one with `flux2 export`)".into(),
            });
        }
        let manifest = Manifest::read(dir)?;
        Ok(ModelDir { dir: dir.to_path_buf(), manifest })
    }

    /// The manifest entry of a graph.
    pub fn entry(&self, name: &str) -> Option<&GraphEntry> {
        self.manifest.graphs.get(name)
    }

    /// Bytes on disk of a graph with its weights ([`graph_weight_files`], following links); 0
    /// for a graph the export lacks.
    pub fn graph_bytes(&self, name: &str) -> u64 {
        let Ok(path) = self.graph(name) else { return 0 };
        graph_file_bytes(&path)
    }

    /// Path of a graph, checked to exist.
    pub fn graph(&self, name: &str) -> Result<PathBuf, RuntimeError> {
        let e = self.entry(name).ok_or_else(|| RuntimeError::Model {
            path: self.dir.clone(),
            msg: format!("the model has no {name} graph (export it with `flux2 export --components ...`)"),
        })?;
        let rel = Path::new(&e.file);
        if rel.is_absolute() || rel.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
            return Err(RuntimeError::Model {
                path: self.dir.join("manifest.json"),
                msg: format!("{name} graph file '{}' must be a plain name inside the model folder", e.file),
            });
        }
        let p = self.dir.join(&e.file);
        if !p.is_file() {
            return Err(RuntimeError::Model { path: p, msg: format!("{name} graph file is missing") });
        }
        Ok(p)
    }

    fn last_dim(&self, graph: &str, input: &str) -> Option<usize> {
        self.entry(graph)?.inputs.iter().find(|i| i.name == input)?.shape.last()?.parse().ok()
    }

    /// Width of the text embeddings the DiT takes (`encoder_hidden_states` last dim).
    pub fn context_dim(&self) -> Option<usize> {
        self.last_dim("transformer", "encoder_hidden_states")
    }

    /// Channels of the latent tokens (128 for FLUX.2).
    pub fn latent_channels(&self) -> usize {
        self.last_dim("transformer", "hidden_states").unwrap_or(128)
    }

    /// Whether the DiT has a guidance input (guidance-distilled dev).
    pub fn has_guidance_input(&self) -> bool {
        self.entry("transformer").is_some_and(|e| e.inputs.iter().any(|i| i.name == "guidance"))
    }

    /// The sampling mode: embedded guidance, true CFG (klein base) or none (distilled klein).
    pub fn guidance_mode(&self) -> Guidance {
        if self.has_guidance_input() {
            return Guidance::Embedded;
        }
        match self.manifest.pipeline.get("is_distilled").and_then(|v| v.as_bool()) {
            Some(false) => Guidance::TrueCfg,
            _ => Guidance::None,
        }
    }

    /// Default step count: the export's `default_steps` (a checkpoint's vocabulary.json), else
    /// 4 for distilled klein and 50 otherwise (flux2-arch.md §1.1).
    pub fn default_steps(&self) -> usize {
        if let Some(n) = self.pipeline_u64("default_steps").filter(|&n| n > 0) {
            return n as usize;
        }
        match self.guidance_mode() {
            Guidance::None => 4,
            _ => 50,
        }
    }

    /// Default guidance: the export's `default_guidance`, else 4.0.
    pub fn default_guidance(&self) -> f32 {
        let g = self.manifest.pipeline.get("default_guidance").and_then(|v| v.as_f64());
        g.filter(|g| g.is_finite() && *g >= 0.0).map_or(4.0, |g| g as f32)
    }

    /// Default (width, height): the export's `default_width`/`default_height`, else 1024².
    pub fn default_size(&self) -> (usize, usize) {
        let side = |k: &str| self.pipeline_u64(k).filter(|&n| n > 0 && n % 16 == 0).map(|n| n as usize);
        (side("default_width").unwrap_or(1024), side("default_height").unwrap_or(1024))
    }

    /// Defaults for one size, from the export's `resolutions` (written from a multi-resolution
    /// model's vocabulary.json): steps, guidance and shift the model samples best at there.
    /// Fields the export does not set (or a size it does not list) are None.
    pub fn resolution_defaults(&self, width: usize, height: usize) -> ResolutionDefaults {
        let list = self.manifest.pipeline.get("resolutions").and_then(|v| v.as_array());
        let entry = list.into_iter().flatten().find(|r| {
            let side = |k: &str| r.get(k).and_then(|v| v.as_u64());
            side("width") == Some(width as u64) && side("height") == Some(height as u64)
        });
        let Some(r) = entry else { return ResolutionDefaults::default() };
        ResolutionDefaults {
            steps: r.get("steps").and_then(|v| v.as_u64()).filter(|&n| n > 0).map(|n| n as usize),
            guidance: r
                .get("guidance")
                .and_then(|v| v.as_f64())
                .filter(|g| g.is_finite() && *g >= 0.0)
                .map(|g| g as f32),
            shift: r.get("shift").and_then(|v| v.as_str()).and_then(|s| s.parse().ok()),
        }
    }

    fn pipeline_u64(&self, key: &str) -> Option<u64> {
        self.manifest.pipeline.get(key).and_then(|v| v.as_u64())
    }

    /// Tokenizer folder, when the text encoder was exported with one.
    pub fn tokenizer_dir(&self) -> Option<PathBuf> {
        let p = self.dir.join("tokenizer");
        p.is_dir().then_some(p)
    }
}

/// Sampling defaults of one size ([`ModelDir::resolution_defaults`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ResolutionDefaults {
    pub steps: Option<usize>,
    pub guidance: Option<f32>,
    pub shift: Option<crate::schedule::Shift>,
}

/// Bytes of the graph file at `path` and of its external weight files ([`graph_weight_files`]).
pub fn graph_file_bytes(path: &Path) -> u64 {
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    size(path) + graph_weight_files(path).iter().map(|(_, p)| size(p)).sum::<u64>()
}

/// The external weight files an export keeps beside a graph file: `<file>.data` or
/// `<file>_data` (copy mode) and `weights/<stem>/*` (link mode, sorted), as (name relative to
/// the export folder, path); only those that exist.
pub fn graph_weight_files(source: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let Some(dir) = source.parent() else { return out };
    let Some(name) = source.file_name().and_then(|n| n.to_str()) else { return out };
    for extra in [format!("{name}.data"), format!("{name}_data")] {
        let p = dir.join(&extra);
        if p.is_file() {
            out.push((extra, p));
        }
    }
    if let Some(stem) = source.file_stem().and_then(|s| s.to_str()) {
        if let Ok(rd) = std::fs::read_dir(dir.join("weights").join(stem)) {
            let mut files: Vec<PathBuf> = rd.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
            files.sort();
            for f in files {
                let Some(n) = f.file_name().and_then(|n| n.to_str()).map(|n| format!("weights/{stem}/{n}"))
                else {
                    continue;
                };
                out.push((n, f));
            }
        }
    }
    out
}
