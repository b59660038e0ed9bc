//! Step 1 of `flux2 build`: everything that can be decided from the export folder and the
//! options alone, with no GPU and without writing anything.
//!
//! Per graph: its quantization (from its Q/DQ nodes, cross-checked with the manifest's
//! `precision`), the GPU's refusal of what it cannot run (FP8 on Ampere/Orin, DLA off Orin),
//! the `flux2 check` lint for the TensorRT target (errors stop the build), the profiles from
//! the buckets, and the provider's precision flags. TensorRT 10 gets `trt_fp16_enable` (or
//! bf16) for unquantized layers and `trt_int8_enable` only when the graph has INT8 Q/DQ;
//! TensorRT 11 removed those weak-typing flags, so there the graph's own types decide.

use std::path::{Path, PathBuf};

use flux2_graphs::onnx::ModelProto;
use flux2_graphs::DType;
use flux2_runtime::manifest::{GraphEntry, Manifest};
use prost::Message;

use super::calibration_hash;
use crate::lint::{self, model::GraphIndex, LintOptions, LintTarget, Report};
use flux2_runtime::trt::cache_key::model_hash;
use flux2_runtime::trt::gpu::{FloatPrecision, GpuTarget, Quant};
use flux2_runtime::trt::probe::TrtVersion;
use flux2_runtime::trt::profiles::{graph_profiles, GraphProfiles, ShapePlan};
use flux2_runtime::trt::TrtError;

/// What to build.
#[derive(Clone, Debug)]
pub struct BuildRequest {
    pub model: PathBuf,
    pub out: PathBuf,
    pub gpu: GpuTarget,
    pub shapes: ShapePlan,
    /// Precision of the unquantized layers (TensorRT 10 builder flag).
    pub float: FloatPrecision,
    pub dla_core: Option<u32>,
    pub builder_optimization_level: Option<u8>,
    pub max_workspace_size: Option<usize>,
    /// Shared timing cache folder (default: `<out>/timing`).
    pub timing_cache: Option<PathBuf>,
    /// Only these graphs (manifest names).
    pub graphs: Option<Vec<String>>,
    pub device_id: i32,
    /// TensorRT release the graphs are checked against (default: the lint default for the GPU).
    pub trt_version: Option<TrtVersion>,
    /// Replace a non-empty `out`.
    pub force: bool,
    /// Weight-stripped engines refitted at load from an export's ONNX weights (LoRA exports of
    /// the same model reuse the engines).
    pub refittable: bool,
}

/// One graph, ready to build.
#[derive(Clone, Debug)]
pub struct GraphPlan {
    pub name: String,
    pub entry: GraphEntry,
    pub quant: Quant,
    pub profiles: GraphProfiles,
    pub fp16: bool,
    pub bf16: bool,
    pub int8: bool,
    /// e.g. `fp16+int8`.
    pub precision: String,
    pub model_hash: String,
    pub calibration_hash: String,
}

/// The validated build.
#[derive(Clone, Debug)]
pub struct BuildPlan {
    pub request: BuildRequest,
    pub manifest: Manifest,
    pub graphs: Vec<GraphPlan>,
    /// The lint report (warnings only; errors stop the plan).
    pub lint: Report,
}

fn model_err(path: &Path, msg: impl Into<String>) -> TrtError {
    TrtError::Model { path: path.to_path_buf(), msg: msg.into() }
}

/// Validates the request and plans every graph. Reads only; writes nothing.
pub fn plan(req: &BuildRequest) -> Result<BuildPlan, TrtError> {
    let manifest = Manifest::read(&req.model).map_err(|e| model_err(&req.model, e.to_string()))?;
    check_out(req)?;
    let names: Vec<String> = match &req.graphs {
        Some(g) => g.clone(),
        None => manifest.graphs.keys().cloned().collect(),
    };
    if names.is_empty() {
        return Err(model_err(&req.model, "manifest.json lists no graphs"));
    }
    // refusals first: they are the clearest message
    let mut decoded = Vec::new();
    for name in &names {
        let entry = manifest.graphs.get(name).ok_or_else(|| TrtError::Option {
            name: "--graphs".into(),
            msg: format!("no graph '{name}' in {}", req.model.display()),
        })?;
        let path = req.model.join(&entry.file);
        let bytes = std::fs::read(&path).map_err(|e| model_err(&path, e.to_string()))?;
        let proto =
            ModelProto::decode(bytes.as_slice()).map_err(|e| model_err(&path, format!("not ONNX: {e}")))?;
        let graph = proto.graph.clone().unwrap_or_default();
        let ix = GraphIndex::new(&proto, &graph, &req.model);
        let quant = quant_of(&ix);
        if let Some(p) = entry.precision.as_deref() {
            let said = match p {
                "int8" => Some(Quant::Int8),
                "fp8" => Some(Quant::Fp8),
                _ => None,
            };
            if said.is_some_and(|s| s != quant) {
                return Err(model_err(
                    &path,
                    format!("manifest precision is '{p}' but the graph's Q/DQ nodes are {}", quant.name()),
                ));
            }
        }
        req.gpu.check_quant(quant, &entry.file)?;
        let float = graph_float(req, entry);
        if req.dla_core.is_some() {
            req.gpu.check_dla(float, quant)?;
        }
        if req.refittable {
            check_refittable(&path)?;
        }
        let calib = calibration_hash(&ix).map_err(|e| model_err(&path, e))?;
        decoded.push((name.clone(), entry.clone(), quant, float, model_hash(&bytes, &manifest), calib));
    }
    if let (Some(_), Some(v)) = (req.dla_core, req.trt_version) {
        if v.major == 11 && v < (TrtVersion { major: 11, minor: 4, patch: 1 }) {
            return Err(TrtError::Refused {
                gpu: req.gpu.name().into(),
                msg: format!(
                    "--dla: TensorRT {v} has no DLA support (11.0-11.3 dropped it; 11.4.1 restores it)"
                ),
            });
        }
    }
    let target = match req.trt_version {
        Some(v) if v.major >= 11 => LintTarget::TensorRt11,
        _ => LintTarget::TensorRt10,
    };
    let lint_opts =
        LintOptions { target, gpu: Some(req.gpu), trt_version: req.trt_version, graphs: Some(names.clone()) };
    let lint = lint::check_dir(&req.model, &lint_opts)
        .map_err(|e| TrtError::Option { name: "--model".into(), msg: e.to_string() })?;
    if lint.has_errors() {
        let lines: Vec<String> = lint.errors().take(20).map(|f| format!("  {f}")).collect();
        let more = lint.errors().count().saturating_sub(lines.len());
        let tail =
            if more > 0 { format!("\n  ... and {more} more (run `flux2 check`)") } else { String::new() };
        return Err(TrtError::Lint(format!("{}{tail}", lines.join("\n"))));
    }
    let strongly_typed = target == LintTarget::TensorRt11;
    let mut graphs = Vec::new();
    for (name, entry, quant, float, model_hash, calibration_hash) in decoded {
        let profiles = graph_profiles(&name, &entry, &req.shapes)?;
        let (fp16, bf16) = match (strongly_typed, float) {
            (true, _) | (false, FloatPrecision::Fp32) => (false, false),
            (false, FloatPrecision::Fp16) => (true, false),
            (false, FloatPrecision::Bf16) => (false, true),
        };
        let int8 = !strongly_typed && quant == Quant::Int8;
        let mut precision = float.to_string();
        if quant != Quant::None {
            precision = format!("{precision}+{}", quant.name());
        }
        if strongly_typed {
            precision = format!("{precision} (strongly typed)");
        }
        graphs.push(GraphPlan {
            name,
            entry,
            quant,
            profiles,
            fp16,
            bf16,
            int8,
            precision,
            model_hash,
            calibration_hash,
        });
    }
    Ok(BuildPlan { request: req.clone(), manifest, graphs, lint })
}

/// The graph's quantization from its Q/DQ nodes.
pub fn quant_of(ix: &GraphIndex) -> Quant {
    let mut count = lint::QdqCount::default();
    for n in &ix.graph.node {
        if !matches!(n.op_type.as_str(), "QuantizeLinear" | "DequantizeLinear") {
            continue;
        }
        let zp = n.input.get(2).and_then(|s| ix.constant(s)).map(|t| t.data_type);
        let x = n.input.first().and_then(|s| ix.constant(s)).map(|t| t.data_type);
        match zp.or(x) {
            Some(lint::model::dtype::FLOAT8E4M3FN) | Some(lint::model::dtype::FLOAT8E5M2) => count.fp8 += 1,
            Some(lint::model::dtype::INT8) => count.int8 += 1,
            _ => {}
        }
    }
    count.quant()
}

/// The unquantized layers' precision: the graph's own half type when it has one.
fn graph_float(req: &BuildRequest, entry: &GraphEntry) -> FloatPrecision {
    match DType::parse(&entry.dtype) {
        Some(DType::F16) => FloatPrecision::Fp16,
        Some(DType::BF16) => FloatPrecision::Bf16,
        _ => req.float,
    }
}

/// `out` must not be the model folder and must be empty unless `force`.
fn check_out(req: &BuildRequest) -> Result<(), TrtError> {
    let err = |msg: String| TrtError::Output { path: req.out.clone(), msg };
    let same = match (req.out.canonicalize(), req.model.canonicalize()) {
        (Ok(a), Ok(b)) => a == b || a.starts_with(&b),
        _ => false,
    };
    if same {
        return Err(err("--out must be a new folder, not the model folder or inside it".into()));
    }
    if req.out.is_file() {
        return Err(err("is a file".into()));
    }
    if let Ok(mut entries) = std::fs::read_dir(&req.out) {
        if entries.next().is_some() && !req.force {
            return Err(err("exists and is not empty; pass --force to replace it".into()));
        }
    }
    if let Some(parent) = req.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            return Err(err(format!("parent folder {} does not exist", parent.display())));
        }
    }
    Ok(())
}

/// A weight-stripped engine is refitted by initializer name from the ONNX file, so every weight
/// must be an initializer as such: a link export that assembles weights from pieces or casts
/// (BFL fused qkv, a checkpoint dtype other than --dtype) cannot refit them.
fn check_refittable(path: &Path) -> Result<(), TrtError> {
    let weights = flux2_runtime::lora::overrides::GraphWeights::open(path)
        .map_err(|e| model_err(path, e.to_string()))?;
    let assembled = weights.assembled();
    if assembled.is_empty() {
        return Ok(());
    }
    let shown: Vec<&str> = assembled.iter().take(3).copied().collect();
    Err(model_err(
        path,
        format!(
            "--refittable: {} weights are assembled from linked pieces or casts ({}{}), which a \
             weight-stripped engine cannot refit by name; export with --weights copy (or link a checkpoint \
             in diffusers layout and the export dtype)",
            assembled.len(),
            shown.join(", "),
            if assembled.len() > shown.len() { ", ..." } else { "" }
        ),
    ))
}
