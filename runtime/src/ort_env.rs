//! Finding and loading the ONNX Runtime shared library, and building sessions.
//!
//! ort is built with `load-dynamic`: nothing is linked at build time. The library is
//! looked up, in order, from `ORT_DYLIB_PATH`, the project's `.venv` (made by
//! `scripts/setup.sh`, searched upward from the working directory and the executable),
//! and finally the system's `libonnxruntime.so`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::session::{builder::GraphOptimizationLevel, Session};

use crate::RuntimeError;

/// File name of the library shipped in the PyPI wheel `onnxruntime==1.31.1`.
pub const ORT_LIB_NAME: &str = "libonnxruntime.so.1.31.1";

static ENV: OnceLock<std::result::Result<Environment, String>> = OnceLock::new();

/// Where the ONNX Runtime library would be loaded from, if found.
pub fn find_ort_library() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Some(p);
        }
    }
    let mut starts: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        starts.push(cwd);
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            starts.push(dir.to_path_buf());
        }
    }
    starts.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    for start in starts {
        for dir in start.ancestors() {
            if let Some(p) = venv_lib(&dir.join(".venv")) {
                return Some(p);
            }
        }
    }
    None
}

fn venv_lib(venv: &Path) -> Option<PathBuf> {
    let lib = venv.join("lib");
    for entry in std::fs::read_dir(&lib).ok()?.flatten() {
        let p = entry.path().join("site-packages/onnxruntime/capi").join(ORT_LIB_NAME);
        if p.is_file() {
            return Some(p);
        }
    }
    None
}

/// The process-wide ONNX Runtime environment (loaded once).
pub fn environment() -> Result<&'static Environment, RuntimeError> {
    let env = ENV.get_or_init(|| {
        let path = find_ort_library().ok_or_else(|| {
            format!(
                "ONNX Runtime library ({ORT_LIB_NAME}) not found: run `scripts/setup.sh` (installs the \
                 onnxruntime==1.31.1 wheel into ./.venv) or set ORT_DYLIB_PATH to the library"
            )
        })?;
        let builder = ort::init_from(&path).map_err(|e| format!("loading {}: {e}", path.display()))?;
        builder.with_name("flux2").build().map_err(|e| format!("ONNX Runtime environment: {e}"))
    });
    env.as_ref().map_err(|e| RuntimeError::OrtLibrary(e.clone()))
}

/// Session settings shared by every stage.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    pub intra_threads: usize,
    pub optimization: bool,
    /// ONNX Runtime's CPU Q/DQ fusions (DQ → MatMul into `MatMulIntegerToFloat`, ...). Off, every
    /// Q/DQ pair runs as written (simulated quantisation). Graphs a model folder's manifest marks
    /// `fp8` always run with it off: FP8 has no fused CPU kernels, and ONNX Runtime 1.31 would
    /// fuse FP8 Q/DQ on both inputs of a matmul (FP8 attention) into one it cannot load.
    pub qdq_fusion: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        SessionOptions { intra_threads: threads, optimization: true, qdq_fusion: true }
    }
}

/// Opens an ONNX model on the CPU provider.
pub fn cpu_session(path: &Path, opts: &SessionOptions) -> Result<Session, RuntimeError> {
    let env = environment()?;
    let ctx = |e: ort::Error| RuntimeError::Session { path: path.to_path_buf(), msg: e.to_string() };
    let level = if opts.optimization { GraphOptimizationLevel::All } else { GraphOptimizationLevel::Disable };
    let mut builder = Session::builder(env).map_err(ctx)?;
    builder = builder.with_intra_threads(opts.intra_threads).map_err(|e| ctx(e.into()))?;
    builder = builder.with_optimization_level(level).map_err(|e| ctx(e.into()))?;
    if !opts.qdq_fusion || manifest_precision(path).as_deref() == Some("fp8") {
        builder = builder.with_config_entry("session.disable_quant_qdq", "1").map_err(|e| ctx(e.into()))?;
    }
    builder.commit_from_file(path).map_err(ctx)
}

/// Writes the graph ONNX Runtime's CPU provider actually runs for the model at `path` (after its
/// graph optimisations, Q/DQ fusions included) to `out`: what a structure test inspects to see
/// which quantised kernels (`QLinearConv`, `MatMulIntegerToFloat`, ...) a graph gets.
pub fn save_optimized(path: &Path, out: &Path, opts: &SessionOptions) -> Result<(), RuntimeError> {
    let env = environment()?;
    let ctx = |e: ort::Error| RuntimeError::Session { path: path.to_path_buf(), msg: e.to_string() };
    let mut builder = Session::builder(env).map_err(ctx)?;
    builder = builder.with_intra_threads(opts.intra_threads).map_err(|e| ctx(e.into()))?;
    builder = builder.with_optimization_level(GraphOptimizationLevel::All).map_err(|e| ctx(e.into()))?;
    if !opts.qdq_fusion || manifest_precision(path).as_deref() == Some("fp8") {
        builder = builder.with_config_entry("session.disable_quant_qdq", "1").map_err(|e| ctx(e.into()))?;
    }
    builder = builder.with_optimized_model_path(out).map_err(|e| ctx(e.into()))?;
    builder.commit_from_file(path).map_err(ctx).map(drop)
}

/// The `precision` the `manifest.json` beside `path` gives its graph, if any.
fn manifest_precision(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path.parent()?.join("manifest.json")).ok()?;
    let m: serde_json::Value = serde_json::from_str(&text).ok()?;
    let file = path.file_name()?.to_str()?;
    m.get("graphs")?
        .as_object()?
        .values()
        .find(|g| g.get("file").and_then(|f| f.as_str()) == Some(file))?
        .get("precision")?
        .as_str()
        .map(str::to_string)
}
