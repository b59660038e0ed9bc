//! flux2-serve: Triton Inference Server model repositories for flux2 exports.
//!
//! [`write_repository`] makes, from an export folder (and optionally a `flux2 build` folder):
//! - `flux2/`: a Python-backend model running the whole pipeline through the `flux2` Python
//!   package (the runtime crate), N instances, one stub process each, optionally behind
//!   Triton's dynamic batcher; `flux2_stream/` (optional) its decoupled, progress-streaming
//!   variant; `flux2_text_encoder/` (optional) the text encoder as a model of its own with a
//!   prompt-embedding cache, called by the others through BLS (see [`pipeline_model`]);
//! - `text_encoder/`, `transformer/`, `vae_encoder/`, `vae_decoder/`: the stages for Triton's
//!   native backends, for users who orchestrate the stages themselves: `onnxruntime_onnx` over
//!   the exported graphs, or `tensorrt_plan` over the engines of a build folder.
//!
//! Nothing is copied: the `flux2` model names the export folder in a parameter, and each stage
//! model's version folder `1` is a symbolic link to the folder holding its graph or engine, all
//! relative to the repository, so a repository and its export can move together (one volume in
//! a container). The repository is written beside `out` and renamed into place.

pub mod models;
mod paths;
pub mod pbtxt;
pub mod pipeline_model;

use std::path::{Path, PathBuf};

use flux2_runtime::model_dir::ModelDir;

use models::{onnx_stage_config, plan_stage_config, STAGES};
use paths::{relative_to, Staging};
use pipeline_model::{
    encoder_config, pipeline_config, PipelineModel, ENCODER_MODEL, PIPELINE_MODEL, STREAM_MODEL,
};
pub use pipeline_model::{Batching, Serving, TextEncoder};

/// The Python backend pipeline model: reads requests, batches those that agree, runs
/// `flux2.Pipeline.generate`, streams progress when decoupled, answers errors.
pub const MODEL_PY: &str = include_str!("model.py");
/// The Python backend text-encoder model: prompt -> embeddings, behind an LRU cache.
pub const ENCODER_PY: &str = include_str!("encoder.py");

/// Errors of the repository writer; each names the folder, file or option at fault.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{option}: {msg}")]
    Option { option: String, msg: String },
    #[error("model {path}: {msg}")]
    Model { path: PathBuf, msg: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ServeError + '_ {
    move |source| ServeError::Io { path: path.to_path_buf(), source }
}

/// What to write.
#[derive(Clone, Debug)]
pub struct RepositoryOptions {
    /// Export folder (`flux2 export` output).
    pub model: PathBuf,
    /// The repository folder to create.
    pub out: PathBuf,
    /// Instances (stub processes) of the `flux2` model and of each stage model.
    pub instances: usize,
    /// A `flux2 build` folder: stage models become `tensorrt_plan` and the `flux2` model runs
    /// the build folder on the TensorRT provider.
    pub engines: Option<PathBuf>,
    /// Provider of the `flux2` model without `engines`: cpu or cuda.
    pub provider: String,
    /// Intra-op threads per session of each `flux2` instance (CPU provider).
    pub threads: Option<usize>,
    /// Replace an existing repository.
    pub force: bool,
    /// Batching, text encoder, streaming, warm-up.
    pub serving: Serving,
}

/// What was written.
#[derive(Clone, Debug)]
pub struct Report {
    pub out: PathBuf,
    /// (model name, platform or backend).
    pub models: Vec<(String, String)>,
}

fn opt(option: &str, msg: impl Into<String>) -> ServeError {
    ServeError::Option { option: option.into(), msg: msg.into() }
}

fn check(o: &RepositoryOptions) -> Result<(), ServeError> {
    if o.instances == 0 {
        return Err(opt("--instances", "must be at least 1"));
    }
    if o.threads == Some(0) {
        return Err(opt("--threads", "must be at least 1"));
    }
    check_serving(&o.serving)?;
    match (o.provider.as_str(), &o.engines) {
        ("cpu" | "cuda", None) | ("tensorrt", Some(_)) => Ok(()),
        ("tensorrt", None) => {
            Err(opt("--provider", "tensorrt needs --engines BUILD_DIR (a `flux2 build` folder)"))
        }
        (p, Some(_)) => Err(opt("--provider", format!("'{p}' with --engines: the engines run on tensorrt"))),
        (p, None) => Err(opt("--provider", format!("'{p}' is not one of cpu, cuda, tensorrt"))),
    }
}

fn check_serving(s: &Serving) -> Result<(), ServeError> {
    if let Some(b) = &s.batching {
        if b.max_batch_size == 0 {
            return Err(opt("--max-batch-size", "must be at least 1"));
        }
        if let Some(p) = b.preferred.iter().find(|&&p| p == 0 || p > b.max_batch_size) {
            return Err(opt(
                "--preferred-batch-sizes",
                format!("{p} is not in 1..={} (--max-batch-size)", b.max_batch_size),
            ));
        }
    }
    if s.text_encoder == TextEncoder::Model && s.encoder_instances == 0 {
        return Err(opt("--encoder-instances", "must be at least 1"));
    }
    if s.response_cache && s.text_encoder != TextEncoder::Model {
        return Err(opt("--response-cache", "caches the flux2_text_encoder model: add --text-encoder model"));
    }
    Ok(())
}

/// Writes the repository (see the crate docs). Fails, leaving nothing behind, if `out` exists
/// and `force` is off, or if any model cannot be described.
pub fn write_repository(o: &RepositoryOptions) -> Result<Report, ServeError> {
    check(o)?;
    let model = ModelDir::open(&o.model)
        .map_err(|e| ServeError::Model { path: o.model.clone(), msg: e.to_string() })?;
    let build = match &o.engines {
        Some(b) => {
            Some(ModelDir::open(b).map_err(|e| ServeError::Model { path: b.clone(), msg: e.to_string() })?)
        }
        None => None,
    };
    let staging = Staging::new(&o.out, o.force)?;
    let mut models = vec![];
    let served = build.as_ref().unwrap_or(&model);
    let model_dir = relative_to(&served.dir, &o.out.join(PIPELINE_MODEL))?;
    let pm = PipelineModel {
        name: PIPELINE_MODEL.to_string(),
        model_dir: model_dir.display().to_string(),
        provider: o.provider.clone(),
        threads: o.threads,
        instances: o.instances,
        serving: o.serving.clone(),
        decoupled: false,
    };
    write_pipeline_model(&staging, &pm)?;
    models.push((PIPELINE_MODEL.to_string(), "python".to_string()));
    if o.serving.stream {
        let stream = PipelineModel { name: STREAM_MODEL.to_string(), decoupled: true, ..pm.clone() };
        write_pipeline_model(&staging, &stream)?;
        models.push((STREAM_MODEL.to_string(), "python (decoupled)".to_string()));
    }
    if o.serving.text_encoder == TextEncoder::Model {
        let dir = staging.path().join(ENCODER_MODEL);
        staging.write(&dir.join("config.pbtxt"), &encoder_config(&pm).render())?;
        staging.write(&dir.join("1").join("model.py"), ENCODER_PY)?;
        models.push((ENCODER_MODEL.to_string(), "python".to_string()));
    }
    for name in STAGES {
        if served.entry(name).is_none() {
            continue;
        }
        let (config, version_target) = match &build {
            Some(b) => plan_stage(b, name, o.instances)?,
            None => (onnx_stage_config(&model, name, o.instances)?, model.dir.clone()),
        };
        let dir = staging.path().join(name);
        staging.write(&dir.join("config.pbtxt"), &config.render())?;
        staging.link_dir(&version_target, &dir.join("1"), &o.out.join(name))?;
        let platform = if build.is_some() { "tensorrt_plan" } else { "onnxruntime_onnx" };
        models.push((name.to_string(), platform.to_string()));
    }
    staging.commit()?;
    Ok(Report { out: o.out.clone(), models })
}

/// config.pbtxt and model.py of a pipeline model (all models sit side by side, so `model_dir`
/// is the same relative path for each).
fn write_pipeline_model(staging: &Staging, pm: &PipelineModel) -> Result<(), ServeError> {
    let dir = staging.path().join(&pm.name);
    staging.write(&dir.join("config.pbtxt"), &pipeline_config(pm).render())?;
    staging.write(&dir.join("1").join("model.py"), MODEL_PY)?;
    Ok(())
}

/// A stage from a build folder: config and the folder holding its engine.
fn plan_stage(
    build: &ModelDir,
    name: &str,
    instances: usize,
) -> Result<(pbtxt::Message, PathBuf), ServeError> {
    let path = build.dir.join("tensorrt.json");
    let bad = |msg: String| ServeError::Model { path: path.clone(), msg };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| bad(format!("{e}; --engines must be a `flux2 build` folder")))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let graph = &json["graphs"][name];
    let engines: Vec<&str> = graph["engines"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e.as_str()).collect())
        .unwrap_or_default();
    let [engine] = engines[..] else {
        return Err(bad(format!(
            "graph {name} lists {} engine files; a tensorrt_plan model needs one",
            engines.len()
        )));
    };
    let engine = build.dir.join(engine);
    if !engine.is_file() {
        return Err(bad(format!("engine {} of {name} is missing", engine.display())));
    }
    let profiles = graph["profiles"]["profiles"].as_array().map_or(0, |p| p.len());
    let (folder, file) = match (engine.parent(), engine.file_name()) {
        (Some(d), Some(f)) => (d.to_path_buf(), f.to_string_lossy().to_string()),
        _ => return Err(bad(format!("engine path {} has no file name", engine.display()))),
    };
    Ok((plan_stage_config(build, name, &file, profiles, instances)?, folder))
}
