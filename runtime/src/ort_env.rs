//! Finding and loading the ONNX Runtime shared library, and building sessions.
//!
//! ort is built with `load-dynamic`: nothing is linked at build time. The library is
//! looked up, in order, from the path an embedding host chose with [`use_ort_library`] (the
//! Python package passes the `onnxruntime` wheel's copy), `ORT_DYLIB_PATH`, the project's `.venv` (made by
//! `scripts/setup.sh`, searched upward from the working directory and the executable),
//! and finally the system's `libonnxruntime.so`. Errors say which library could not be
//! loaded, which setting chose it, and how to get the right one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;
use std::sync::Arc;

use ort::session::{builder::GraphOptimizationLevel, builder::SessionBuilder, Session};
use ort::value::DynValue;

use crate::cpu::CpuInfo;
use crate::session_cache::{self, Slot};
use crate::RuntimeError;

/// File name of the library shipped in the PyPI wheel `onnxruntime==1.31.1`.
pub const ORT_LIB_NAME: &str = "libonnxruntime.so.1.31.1";

static ENV: OnceLock<std::result::Result<Environment, String>> = OnceLock::new();
static CHOSEN: OnceLock<PathBuf> = OnceLock::new();
static LOADED: OnceLock<PathBuf> = OnceLock::new();

/// Makes the process load ONNX Runtime from `path` (absolute, canonicalised). Must come before
/// the first session; choosing another library afterwards is an error, so one process never
/// holds two ONNX Runtime libraries.
pub fn use_ort_library(path: &Path) -> Result<PathBuf, RuntimeError> {
    let bad =
        |msg: String| RuntimeError::OrtLibrary(format!("ONNX Runtime library {}: {msg}", path.display()));
    let abs = std::fs::canonicalize(path).map_err(|e| bad(e.to_string()))?;
    if !abs.is_file() {
        return Err(bad("not a file".into()));
    }
    if let Some(loaded) = LOADED.get().filter(|l| **l != abs) {
        return Err(bad(format!("this process already loaded ONNX Runtime from {}", loaded.display())));
    }
    let chosen = CHOSEN.get_or_init(|| abs.clone());
    if *chosen != abs {
        return Err(bad(format!("this process already uses {}", chosen.display())));
    }
    Ok(abs)
}

/// Where the ONNX Runtime library would be loaded from, if found.
pub fn find_ort_library() -> Option<PathBuf> {
    locate_ort_library().ok().map(|(p, _)| p)
}

/// The library to load and where that choice came from (for messages), or why none was found.
/// A library chosen with [`use_ort_library`] comes first; a set `ORT_DYLIB_PATH` is final: if it
/// names no file, that is the error (we do not quietly load another library than the one asked for).
pub fn locate_ort_library() -> Result<(PathBuf, String), String> {
    if let Some(p) = CHOSEN.get() {
        return Ok((p.clone(), "use_ort_library".into()));
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok((p, "ORT_DYLIB_PATH".into()));
        }
        return Err(format!(
            "ORT_DYLIB_PATH={} is not a file; it must name the ONNX Runtime library ({ORT_LIB_NAME} from \
             the onnxruntime==1.31.1 wheel). {SETUP_HINT}",
            p.display()
        ));
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
                return Ok((
                    p,
                    format!("the default: the onnxruntime wheel in {}", dir.join(".venv").display()),
                ));
            }
        }
    }
    Err(format!("ONNX Runtime library ({ORT_LIB_NAME}) not found. {SETUP_HINT}"))
}

/// How to get the right library.
const SETUP_HINT: &str = "Run `source scripts/setup.sh` (installs the onnxruntime==1.31.1 wheel into \
                          ./.venv and exports ORT_DYLIB_PATH), or set ORT_DYLIB_PATH to its \
                          onnxruntime/capi/libonnxruntime.so.1.31.1";

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
        let (path, from) = locate_ort_library()?;
        let path = std::fs::canonicalize(&path).unwrap_or(path);
        let _ = LOADED.set(path.clone());
        let builder = ort::init_from(&path).map_err(|e| {
            format!(
                "could not load the ONNX Runtime library {} (chosen by {from}): {e}. It must be \
                 {ORT_LIB_NAME}, the library of the onnxruntime==1.31.1 wheel, not another file or \
                 version. {SETUP_HINT}",
                path.display()
            )
        })?;
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
    /// TensorRT weight-stripped engines (`flux2 build --refittable`): the export folder whose
    /// ONNX weights refit them (e.g. one exported with `--lora`); None: the build's own source.
    pub trt_refit_from: Option<PathBuf>,
    /// CPU sessions reuse (and on first use write) the optimised graph in the export folder's
    /// session cache ([`crate::session_cache`]): a second process starts in a fraction of the
    /// time. Off for throw-away graphs (the calibrator's probes); `FLUX2_SESSION_CACHE=off`
    /// turns it off everywhere.
    pub cache: bool,
    /// Run the weights mapped as stored, one copy in memory ([`crate::mapped`]): `None` decides
    /// per graph (when two copies of its weights would not fit in the available memory).
    pub mapped: Option<bool>,
}

impl Default for SessionOptions {
    fn default() -> Self {
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        SessionOptions {
            intra_threads: threads,
            optimization: true,
            qdq_fusion: true,
            trt_refit_from: None,
            cache: true,
            mapped: None,
        }
    }
}

/// A weight handed to ONNX Runtime in place of the graph's initializer of the same name
/// (same shape and dtype) when a session is created: run-time LoRA adapters.
pub type Override = (String, Arc<DynValue>);

/// What a pipeline asks of one session beyond its graph file.
#[derive(Clone, Default)]
pub struct SessionSpec {
    /// Initializers replaced at creation (run-time LoRA); a session with any is never cached.
    pub overrides: Vec<Override>,
    /// Symbolic input dimensions fixed for this session (`("L", 512)`: the text encoder's
    /// padded length). ONNX Runtime then plans its memory for concrete shapes, which makes a
    /// 28-layer text encoder's creation 3-4x faster; inputs of any other size are refused, so
    /// the pipeline re-creates the session when the size changes. Applied where a session is
    /// loaded from the session cache (optimisations off: the same graph and kernels, the
    /// same outputs bit for bit); sessions that optimise their graph ignore them, so fixing
    /// a dimension never changes what ONNX Runtime's optimiser does.
    pub fixed_dims: Vec<(String, i64)>,
}

/// Opens an ONNX model on the CPU provider.
pub fn cpu_session(path: &Path, opts: &SessionOptions) -> Result<Session, RuntimeError> {
    cpu_session_with(path, opts, &[])
}

/// Adds initializer overrides to a session builder.
pub(crate) fn with_overrides(
    mut builder: SessionBuilder,
    overrides: &[Override],
    path: &Path,
) -> Result<SessionBuilder, RuntimeError> {
    for (name, value) in overrides {
        builder =
            builder.with_external_initializer(name, value.clone()).map_err(|e| RuntimeError::Session {
                path: path.to_path_buf(),
                msg: format!("initializer override '{name}': {e}"),
            })?;
    }
    Ok(builder)
}

/// Opens an ONNX model on the CPU provider with initializer overrides. Without overrides and
/// with optimisations on, the session goes through the export folder's session cache.
pub fn cpu_session_with(
    path: &Path,
    opts: &SessionOptions,
    overrides: &[Override],
) -> Result<Session, RuntimeError> {
    cpu_session_spec(path, opts, &SessionSpec { overrides: overrides.to_vec(), fixed_dims: vec![] })
}

/// Opens an ONNX model on the CPU provider as `spec` asks (see [`SessionSpec`]).
pub fn cpu_session_spec(
    path: &Path,
    opts: &SessionOptions,
    spec: &SessionSpec,
) -> Result<Session, RuntimeError> {
    if opts.optimization && crate::mapped::runs_mapped(path, opts.mapped) {
        return mapped_session(path, opts, spec);
    }
    if opts.cache && opts.optimization && spec.overrides.is_empty() && session_cache::enabled_by_env() {
        if let Some(slot) = Slot::new(path, cache_settings(path, opts)?) {
            return cached_session(path, opts, &slot, &spec.fixed_dims);
        }
    }
    let builder = cpu_builder(path, opts, opts.optimization)?;
    with_overrides(builder, &spec.overrides, path)?.commit_from_file(path).map_err(|e| session_error(path, e))
}

/// A session whose weights stay mapped as stored ([`crate::mapped`]): basic optimisations
/// only, no pre-packing, no session cache.
fn mapped_session(path: &Path, opts: &SessionOptions, spec: &SessionSpec) -> Result<Session, RuntimeError> {
    let env = environment()?;
    let ctx = |e: ort::Error| session_error(path, e);
    let mut builder = Session::builder(env).map_err(ctx)?;
    builder = builder.with_intra_threads(opts.intra_threads).map_err(|e| ctx(e.into()))?;
    builder = builder.with_optimization_level(GraphOptimizationLevel::Level1).map_err(|e| ctx(e.into()))?;
    // the Q/DQ transforms stay enabled (they run at level 2 only): with them enabled, constant
    // folding leaves each weight's DequantizeLinear alone instead of storing its float output
    builder = builder.with_config_entry("session.disable_prepacking", "1").map_err(|e| ctx(e.into()))?;
    if is_dit_part(path) {
        builder =
            builder.with_config_entry("session.intra_op.allow_spinning", "0").map_err(|e| ctx(e.into()))?;
    }
    for (k, v) in extra_config() {
        builder = builder.with_config_entry(k, v).map_err(|e| ctx(e.into()))?;
    }
    for (name, size) in &spec.fixed_dims {
        builder = builder
            .with_dimension_override(name, *size)
            .map_err(|e| session_error(path, format!("fixing dimension {name} = {size}: {e}")))?;
    }
    with_overrides(builder, &spec.overrides, path)?.commit_from_file(path).map_err(|e| session_error(path, e))
}

/// The CPU provider's session factory for a pipeline.
pub fn cpu_factory(opts: SessionOptions) -> crate::pipeline::SessionFactory {
    Box::new(move |p: &Path, spec: &SessionSpec| cpu_session_spec(p, &opts, spec))
}

fn session_error(path: &Path, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Session { path: path.to_path_buf(), msg: e.to_string() }
}

/// Whether ONNX Runtime's Q/DQ fusions run for `path` (off by option, and for FP8 graphs).
fn qdq_fusion(path: &Path, opts: &SessionOptions) -> bool {
    opts.qdq_fusion && manifest_precision(path).as_deref() != Some("fp8")
}

/// A CPU session builder with the shared settings; `optimize` picks all graph optimisations
/// or none. Weights are pre-packed in parallel on the session's threads.
fn cpu_builder(path: &Path, opts: &SessionOptions, optimize: bool) -> Result<SessionBuilder, RuntimeError> {
    cpu_builder_with(path, opts, optimize, true)
}

/// A CPU session builder for a session cache entry: its weights are saved pre-packed, and
/// ONNX Runtime then maps them from the file; parallel pre-packing would instead make it read
/// every weight into memory first (measured on a klein-4B INT4 DiT: 2.8 GB peak RSS creating
/// the session against 0.49 GB, in the same ~10 s).
fn cache_entry_builder(
    path: &Path,
    opts: &SessionOptions,
    fixed_dims: &[(String, i64)],
) -> Result<SessionBuilder, RuntimeError> {
    let mut builder = cpu_builder_with(path, opts, false, false)?;
    for (name, size) in fixed_dims {
        builder = builder
            .with_dimension_override(name, *size)
            .map_err(|e| session_error(path, format!("fixing dimension {name} = {size}: {e}")))?;
    }
    Ok(builder)
}

fn cpu_builder_with(
    path: &Path,
    opts: &SessionOptions,
    optimize: bool,
    parallel_prepack: bool,
) -> Result<SessionBuilder, RuntimeError> {
    let env = environment()?;
    let ctx = |e: ort::Error| session_error(path, e);
    let level = if optimize { GraphOptimizationLevel::All } else { GraphOptimizationLevel::Disable };
    let mut builder = Session::builder(env).map_err(ctx)?;
    builder = builder.with_intra_threads(opts.intra_threads).map_err(|e| ctx(e.into()))?;
    builder = builder.with_optimization_level(level).map_err(|e| ctx(e.into()))?;
    if parallel_prepack {
        builder =
            builder.with_config_entry("session.prepack.enable_parallel", "1").map_err(|e| ctx(e.into()))?;
    }
    if !qdq_fusion(path, opts) {
        builder = builder.with_config_entry("session.disable_quant_qdq", "1").map_err(|e| ctx(e.into()))?;
    }
    builder = builder
        .with_config_entry("session.qdq_matmulnbits_accuracy_level", nbits_accuracy_level())
        .map_err(|e| ctx(e.into()))?;
    for (k, v) in extra_config() {
        builder = builder.with_config_entry(k, v).map_err(|e| ctx(e.into()))?;
    }
    if is_dit_part(path) {
        // Step caching alternates four DiT part sessions per step; an idle session's threads
        // spinning for work would take the cores from the one that runs.
        builder =
            builder.with_config_entry("session.intra_op.allow_spinning", "0").map_err(|e| ctx(e.into()))?;
    }
    Ok(builder)
}

/// The ONNX Runtime build and library file, read once.
fn ort_identity() -> String {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let lib = LOADED.get().map(|p| {
            let m = std::fs::metadata(p).ok();
            format!(
                "{} {} {}",
                p.display(),
                m.as_ref().map_or(0, |m| m.len()),
                m.and_then(|m| m.modified().ok())
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos())
            )
        });
        format!("{} | {}", ort::info(), lib.unwrap_or_default())
    })
    .clone()
}

/// The CPU as the optimised graph depends on it: model, family and instruction sets.
fn cpu_identity() -> String {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let c = CpuInfo::detect();
        format!("{} | {} | {}", c.model, c.family.unwrap_or_default(), c.isa.join(" "))
    })
    .clone()
}

/// The key fields of a CPU session besides the source graph (see [`crate::session_cache`]).
fn cache_settings(path: &Path, opts: &SessionOptions) -> Result<BTreeMap<String, String>, RuntimeError> {
    environment()?;
    let mut options = format!(
        "intra_threads={} optimization=all qdq_fusion={} prepack=parallel nbits_accuracy={}",
        opts.intra_threads,
        qdq_fusion(path, opts),
        nbits_accuracy_level()
    );
    for (k, v) in extra_config() {
        options.push_str(&format!(" {k}={v}"));
    }
    Ok([
        ("ort".to_string(), ort_identity()),
        ("cpu".to_string(), cpu_identity()),
        ("provider".to_string(), "CPUExecutionProvider".to_string()),
        ("options".to_string(), options),
    ]
    .into_iter()
    .collect())
}

/// A session of `path` through its cache slot: the cached optimised graph when the entry
/// checks out, else one built from the source that also writes the entry.
fn cached_session(
    path: &Path,
    opts: &SessionOptions,
    slot: &Slot,
    fixed_dims: &[(String, i64)],
) -> Result<Session, RuntimeError> {
    let reject = |why: String| {
        log::warn!(
            "session cache: ignoring {} for {}: {why}; rebuilding it",
            slot.dir().display(),
            path.display()
        );
        session_cache::count(path, |c| c.rejected += 1);
        slot.remove();
    };
    match slot.check() {
        Ok(Some(model)) => match cache_entry_builder(path, opts, fixed_dims)?.commit_from_file(&model) {
            Ok(s) => {
                log::info!("session cache: {} loaded from {}", path.display(), slot.dir().display());
                session_cache::count(path, |c| c.hits += 1);
                return Ok(s);
            }
            Err(e) => reject(format!("ONNX Runtime could not load it: {e}")),
        },
        Ok(None) => {}
        Err(why) => reject(why),
    }
    let plain = || cpu_builder(path, opts, true)?.commit_from_file(path).map_err(|e| session_error(path, e));
    let tmp = match slot.temp_dir() {
        Ok(t) => t,
        Err(e) => {
            log::info!("session cache: cannot write {} ({e}); running uncached", slot.root.display());
            return plain();
        }
    };
    let ctx = |e: ort::Error| session_error(path, e);
    let mut builder = cpu_builder(path, opts, true)?;
    builder = builder.with_optimized_model_path(tmp.join("model.onnx")).map_err(|e| ctx(e.into()))?;
    for (k, v) in [
        ("session.optimized_model_external_initializers_file_name", "model.onnx.data"),
        ("session.optimized_model_external_initializers_min_size_in_bytes", "1024"),
    ] {
        builder = builder.with_config_entry(k, v).map_err(|e| ctx(e.into()))?;
    }
    if prepacked_entries() {
        builder = builder
            .with_config_entry("session.save_external_prepacked_constant_initializers", "1")
            .map_err(|e| ctx(e.into()))?;
    }
    match builder.commit_from_file(path) {
        Ok(s) => {
            let published = match slot.publish(&tmp) {
                Ok(()) => {
                    log::info!("session cache: wrote {} for {}", slot.dir().display(), path.display());
                    session_cache::count(path, |c| c.writes += 1);
                    true
                }
                Err(e) => {
                    log::warn!("session cache: could not write {}: {e}", slot.dir().display());
                    false
                }
            };
            let _ = std::fs::remove_dir_all(&tmp);
            match published {
                true => reopen_from_cache(path, opts, slot, s, fixed_dims),
                false => Ok(s),
            }
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            log::warn!(
                "session cache: saving the optimised graph of {} failed ({e}); running uncached",
                path.display()
            );
            plain()
        }
    }
}

/// Whether cache entries hold ONNX Runtime's pre-packed weights (mapped from the file when
/// loaded: one copy of each weight). Not at a `MatMulNBits` accuracy level other than 0:
/// ONNX Runtime 1.31.1 crashes (SIGSEGV, first run after loading) on a DiT whose level-4
/// MatMulNBits weights were saved pre-packed (weight-only INT8 and INT4 exports, AVX-512 VNNI
/// Zen 4); saved unpacked, the reloaded session packs them again when created and gives the
/// same outputs bit for bit.
fn prepacked_entries() -> bool {
    nbits_accuracy_level() == "0"
}

/// The session that wrote a cache entry, swapped for one loaded from the entry: the writer
/// holds its weights in process memory (about twice the pre-packed size was measured on a
/// klein-4B INT4 DiT: 4.1 GB resident while running against 1.6 GB), while a session loaded
/// from the entry maps the saved pre-packed weights from the file, one copy shared with the
/// page cache. The writer is dropped first, so the two never coexist; should the entry then
/// fail to load, the session is built from the source again (as without a cache).
fn reopen_from_cache(
    path: &Path,
    opts: &SessionOptions,
    slot: &Slot,
    writer: Session,
    fixed_dims: &[(String, i64)],
) -> Result<Session, RuntimeError> {
    let Ok(Some(model)) = slot.check() else { return Ok(writer) };
    drop(writer);
    crate::memory::release_free_memory();
    match cache_entry_builder(path, opts, fixed_dims)?.commit_from_file(&model) {
        Ok(s) => Ok(s),
        Err(e) => {
            log::warn!(
                "session cache: reopening {} failed ({e}); rebuilding from the source",
                slot.dir().display()
            );
            cpu_builder(path, opts, true)?.commit_from_file(path).map_err(|e| session_error(path, e))
        }
    }
}

/// `dit_embed.onnx`, `dit_head.onnx`, `dit_body.onnx`, `dit_tail.onnx`: the step-caching parts.
fn is_dit_part(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("dit_") && n.ends_with(".onnx"))
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
    if !qdq_fusion(path, opts) {
        builder = builder.with_config_entry("session.disable_quant_qdq", "1").map_err(|e| ctx(e.into()))?;
    }
    builder = builder
        .with_config_entry("session.qdq_matmulnbits_accuracy_level", nbits_accuracy_level())
        .map_err(|e| ctx(e.into()))?;
    builder = builder.with_optimized_model_path(out).map_err(|e| ctx(e.into()))?;
    builder.commit_from_file(path).map_err(ctx).map(drop)
}

static NBITS_LEVEL: OnceLock<&'static str> = OnceLock::new();

/// Fixes this process's [`nbits_accuracy_level`] before any session reads it (tests that
/// compare the fused kernels with the dequantised weights pin `"0"`). Returns the level in
/// force: `level`, unless a session already fixed another one.
pub fn pin_nbits_accuracy_level(level: &'static str) -> &'static str {
    NBITS_LEVEL.get_or_init(|| level)
}

/// `accuracy_level` of the `MatMulNBits` kernels ONNX Runtime fuses from weight-only blocked
/// `DequantizeLinear → MatMul` (`flux2 export --weights-precision int8|int4`): `0` computes in
/// f32 exactly what the dequantised weights give; `4` quantises the activations to INT8 per
/// block as well and runs integer dot products. The default is `4` on CPUs with INT8 dot
/// products (AVX-512 VNNI, AVX-VNNI, AMX-INT8), else `0`. Measured on an AVX-512 VNNI Zen 4 (2
/// threads): a klein-4B-width Qwen3 text encoder (4 layers, 512 tokens) ran 0.65× (INT8) /
/// 0.99× (INT4) the speed of f32 at level 0 and 1.40× / 1.28× at level 4; on the medium
/// pipeline the level-4 images stayed 56.7 dB (INT8) / 34.5 dB (INT4) from f32, against
/// 59.4 / 34.5 dB at level 0. `FLUX2_NBITS_ACCURACY` (0, 1, 2, 3 or 4) overrides it.
pub fn nbits_accuracy_level() -> &'static str {
    NBITS_LEVEL.get_or_init(|| match std::env::var("FLUX2_NBITS_ACCURACY").as_deref() {
        Ok("0") => "0",
        Ok("1") => "1",
        Ok("2") => "2",
        Ok("3") => "3",
        Ok("4") => "4",
        _ => {
            let cpu = CpuInfo::detect();
            let int8_dot = ["AVX-512 VNNI", "AVX-VNNI", "AMX-INT8"].iter().any(|l| cpu.has(l));
            if int8_dot {
                "4"
            } else {
                "0"
            }
        }
    })
}

/// Extra ONNX Runtime session config entries from `FLUX2_ORT_CONFIG` (`key=value,key=value`),
/// for measuring settings such as `session.disable_prepacking=1` or
/// `session.use_device_allocator_for_initializers=1` without a rebuild (they are part of the
/// session cache's key). Malformed items are skipped with a warning.
pub fn extra_config() -> Vec<(String, String)> {
    let Ok(text) = std::env::var("FLUX2_ORT_CONFIG") else { return Vec::new() };
    text.split(',')
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .filter_map(|item| match item.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Some((k.trim().to_string(), v.trim().to_string())),
            _ => {
                log::warn!("FLUX2_ORT_CONFIG: '{item}' is not key=value; skipped");
                None
            }
        })
        .collect()
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
