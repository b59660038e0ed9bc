//! Execution providers: CPU, CUDA and TensorRT sessions, registered so that nothing falls back
//! silently (`error_on_failure`): a session asked for TensorRT either runs on TensorRT or fails
//! with the reason (missing provider, missing library, wrong GPU).
//!
//! `--provider tensorrt` runs a `flux2 build` folder: its `manifest.json` lists EPContext models
//! that point at prebuilt engines, and its `tensorrt.json` says which GPU and TensorRT they were
//! built for, which is checked against the host before the first session. CUDA runs any export
//! folder; its libraries are preloaded from pip's NVIDIA wheels next to ONNX Runtime.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::OnceLock;

use ort::ep::ExecutionProvider as _;
use ort::session::{builder::GraphOptimizationLevel, Session};

use crate::ort_env::{cpu_factory, with_overrides, SessionSpec};
use crate::trt::host::{load_provider_libraries, provider_library, ORT_GPU_HINT};
use crate::trt::manifest::{BuildManifest, BUILD_MANIFEST};
use crate::trt::{probe, TrtOptions};
use crate::{cpu_session_with, environment, find_ort_library, Override, RuntimeError, SessionOptions};

/// The provider named on the command line (`--provider cpu|cuda|tensorrt`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionProvider {
    Cpu,
    Cuda,
    TensorRt,
}

impl ExecutionProvider {
    pub fn name(self) -> &'static str {
        match self {
            ExecutionProvider::Cpu => "cpu",
            ExecutionProvider::Cuda => "cuda",
            ExecutionProvider::TensorRt => "tensorrt",
        }
    }

    /// ONNX Runtime's name for the provider.
    pub fn ort_name(self) -> &'static str {
        match self {
            ExecutionProvider::Cpu => "CPUExecutionProvider",
            ExecutionProvider::Cuda => "CUDAExecutionProvider",
            ExecutionProvider::TensorRt => "TensorrtExecutionProvider",
        }
    }

    /// Whether the loaded ONNX Runtime was built with this provider.
    pub fn is_available(self) -> Result<bool, RuntimeError> {
        environment()?;
        let r = match self {
            ExecutionProvider::Cpu => return Ok(true),
            ExecutionProvider::Cuda => ort::ep::CUDA::is_available(),
            ExecutionProvider::TensorRt => ort::ep::TensorRT::is_available(),
        };
        r.map_err(|e| RuntimeError::OrtLibrary(format!("GetAvailableProviders: {e}")))
    }
}

impl fmt::Display for ExecutionProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ExecutionProvider {
    type Err = RuntimeError;
    fn from_str(s: &str) -> Result<Self, RuntimeError> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(ExecutionProvider::Cpu),
            "cuda" => Ok(ExecutionProvider::Cuda),
            "tensorrt" | "trt" => Ok(ExecutionProvider::TensorRt),
            other => Err(RuntimeError::Input {
                name: "--provider".into(),
                msg: format!("'{other}' is not one of cpu, cuda, tensorrt"),
            }),
        }
    }
}

/// A provider with its settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProviderConfig {
    Cpu,
    Cuda { device_id: i32 },
    TensorRt(Box<TrtOptions>),
}

fn session_err(path: &Path, msg: impl Into<String>) -> RuntimeError {
    RuntimeError::Session { path: path.to_path_buf(), msg: msg.into() }
}

/// The ORT library and a provider library of it, or an error naming what to install.
fn provider_ready(kind: ExecutionProvider, path: &Path) -> Result<(), RuntimeError> {
    if !kind.is_available()? {
        let lib =
            find_ort_library().map(|p| p.display().to_string()).unwrap_or_else(|| "libonnxruntime.so".into());
        return Err(session_err(
            path,
            format!(
                "{} is not available: the ONNX Runtime at {lib} was built without it; {ORT_GPU_HINT}",
                kind.ort_name()
            ),
        ));
    }
    let lib = find_ort_library().unwrap_or_else(|| PathBuf::from("libonnxruntime.so"));
    let short = if kind == ExecutionProvider::Cuda { "cuda" } else { "tensorrt" };
    load_provider_libraries(&lib, &provider_library(&lib, short), kind.ort_name())
        .map_err(|e| session_err(path, e.to_string()))
}

/// Opens `path` on one provider; GPU providers fail instead of falling back to the CPU.
pub fn session_with_provider(
    path: &Path,
    provider: &ProviderConfig,
    opts: &SessionOptions,
) -> Result<Session, RuntimeError> {
    session_with_provider_overrides(path, provider, opts, &[])
}

/// [`session_with_provider`] with initializer overrides (run-time adapters).
pub fn session_with_provider_overrides(
    path: &Path,
    provider: &ProviderConfig,
    opts: &SessionOptions,
    overrides: &[Override],
) -> Result<Session, RuntimeError> {
    let ep = match provider {
        ProviderConfig::Cpu => return cpu_session_with(path, opts, overrides),
        ProviderConfig::Cuda { device_id } => {
            provider_ready(ExecutionProvider::Cuda, path)?;
            ort::ep::CUDA::default().with_device_id(*device_id).build().error_on_failure()
        }
        ProviderConfig::TensorRt(trt) => {
            provider_ready(ExecutionProvider::TensorRt, path)?;
            trt.to_ep().map_err(|e| session_err(path, e.to_string()))?.build().error_on_failure()
        }
    };
    let env = environment()?;
    let ctx = |e: ort::Error| session_err(path, e.to_string());
    // TensorRT optimises the graph itself; ORT's EP-agnostic basic passes are enough
    let level = match (provider, opts.optimization) {
        (_, false) => GraphOptimizationLevel::Disable,
        (ProviderConfig::TensorRt(_), true) => GraphOptimizationLevel::Level1,
        (_, true) => GraphOptimizationLevel::All,
    };
    let mut builder = Session::builder(env).map_err(ctx)?;
    builder = builder.with_intra_threads(opts.intra_threads).map_err(|e| ctx(e.into()))?;
    builder = builder.with_optimization_level(level).map_err(|e| ctx(e.into()))?;
    builder = builder.with_execution_providers([ep]).map_err(|e| ctx(e.into()))?;
    with_overrides(builder, overrides, path)?.commit_from_file(path).map_err(ctx)
}

/// Opens a graph file into a session with initializer overrides (the pipeline's `SessionFactory`).
pub type Factory = crate::pipeline::SessionFactory;

/// A session factory for the pipeline: `provider` over the graphs of one model folder.
///
/// For TensorRT the folder must be a `flux2 build` output; its `tensorrt.json` is read and
/// checked against the host (GPU compute capability, TensorRT version) once, before the first
/// session, so stale engines are refused with a message instead of failing inside ORT.
pub fn session_factory(provider: ExecutionProvider, device_id: i32, opts: SessionOptions) -> Factory {
    match provider {
        ExecutionProvider::Cpu => cpu_factory(opts),
        // GPU sessions get no fixed dimensions: their providers plan shapes themselves
        ExecutionProvider::Cuda => Box::new(move |p: &Path, spec: &SessionSpec| {
            session_with_provider_overrides(p, &ProviderConfig::Cuda { device_id }, &opts, &spec.overrides)
        }),
        ExecutionProvider::TensorRt => {
            let checked: OnceLock<Result<Option<PathBuf>, String>> = OnceLock::new();
            Box::new(move |p: &Path, spec: &SessionSpec| {
                let dir = p.parent().unwrap_or(Path::new("."));
                // weight-stripped engines refit from the session's folder, else the build's source
                let refit = checked
                    .get_or_init(|| {
                        let built = check_build_folder(dir, device_id).map_err(|e| e.to_string())?;
                        Ok(built
                            .refit_from
                            .map(|src| opts.trt_refit_from.clone().unwrap_or_else(|| src.into())))
                    })
                    .clone()
                    .map_err(|msg| session_err(p, msg))?;
                let trt = TrtOptions {
                    device_id,
                    weight_stripped: refit.is_some(),
                    onnx_model_folder: refit,
                    ..Default::default()
                };
                session_with_provider_overrides(
                    p,
                    &ProviderConfig::TensorRt(Box::new(trt)),
                    &opts,
                    &spec.overrides,
                )
            })
        }
    }
}

/// The folder is a `flux2 build` output made for this GPU and TensorRT.
pub fn check_build_folder(dir: &Path, device_id: i32) -> Result<BuildManifest, RuntimeError> {
    let model = |msg: String| RuntimeError::Model { path: dir.join(BUILD_MANIFEST), msg };
    let built = BuildManifest::read(dir).map_err(|e| match e {
        crate::trt::TrtError::Model { msg, .. } => model(msg),
        other => model(other.to_string()),
    })?;
    let driver = probe::cuda_driver().map_err(|e| model(format!("cannot run TensorRT engines: {e}")))?;
    let device = driver
        .devices
        .iter()
        .find(|d| d.index as i32 == device_id)
        .ok_or_else(|| model(format!("no GPU {device_id} ({} found)", driver.devices.len())))?;
    built.verify_host(device, probe::tensorrt_version()).map_err(|e| model(e.to_string()))?;
    Ok(built)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_provider_names() {
        assert_eq!("cpu".parse::<ExecutionProvider>().unwrap(), ExecutionProvider::Cpu);
        assert_eq!("CUDA".parse::<ExecutionProvider>().unwrap(), ExecutionProvider::Cuda);
        assert_eq!("trt".parse::<ExecutionProvider>().unwrap(), ExecutionProvider::TensorRt);
        let e = "rocm".parse::<ExecutionProvider>().unwrap_err().to_string();
        assert!(e.contains("--provider") && e.contains("rocm"), "{e}");
        for p in [ExecutionProvider::Cpu, ExecutionProvider::Cuda, ExecutionProvider::TensorRt] {
            assert_eq!(p.name().parse::<ExecutionProvider>().unwrap(), p);
        }
    }
}
