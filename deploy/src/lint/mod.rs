//! `flux2 check`: lints every graph of an export folder against what a deployment target
//! accepts, without a GPU: op types and opsets (TensorRT's ONNX parser list for the target
//! release, or ONNX Runtime's CPU ops), Q/DQ placement and types, dynamic-shape ranges and
//! external data. Findings name the graph file and node; any error fails the check.
//!
//! Targets: `tensorrt10` (TensorRT 10.x; default release 10.3 for Jetson Orin/JetPack 6 or no
//! `--gpu`, 10.16 for datacenter GPUs, 10.13 for Thor), `tensorrt11` (strongly typed only:
//! no weak FP16/INT8 builder flags, no implicit INT8; 11.4.1 is the first with JetPack support)
//! and `ort` (ONNX Runtime 1.31 CPU).

pub mod external;
pub mod model;
pub mod ops;
pub mod qdq;
pub mod shapes;

use std::path::{Path, PathBuf};
use std::str::FromStr;

use flux2_graphs::onnx::ModelProto;
use flux2_graphs::DType;
use flux2_runtime::manifest::{GraphEntry, Manifest};
use prost::Message;

use flux2_runtime::trt::gpu::GpuTarget;
use flux2_runtime::trt::probe::TrtVersion;
use model::{attr_int, node_label, opset, GraphIndex};
pub use qdq::QdqCount;

/// Errors that stop the check before any graph is looked at.
#[derive(Debug, thiserror::Error)]
pub enum LintError {
    #[error("{path}: {msg}")]
    Manifest { path: PathBuf, msg: String },
    #[error("{name}: {msg}")]
    Option { name: String, msg: String },
}

/// What the graphs will be deployed on.
#[derive(Copy, Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LintTarget {
    TensorRt10,
    TensorRt11,
    Ort,
}

impl FromStr for LintTarget {
    type Err = LintError;
    fn from_str(s: &str) -> Result<Self, LintError> {
        match s.to_ascii_lowercase().as_str() {
            "tensorrt10" | "trt10" | "tensorrt" => Ok(LintTarget::TensorRt10),
            "tensorrt11" | "trt11" => Ok(LintTarget::TensorRt11),
            "ort" | "onnxruntime" | "cpu" => Ok(LintTarget::Ort),
            other => Err(LintError::Option {
                name: "--target".into(),
                msg: format!("'{other}' is not one of tensorrt10, tensorrt11, ort"),
            }),
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem, located.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// Short rule id, e.g. `op-unsupported`, `qdq-misplaced`, `profile-missing`.
    pub rule: &'static str,
    /// Graph file (`transformer.onnx`), or `-` for target-wide findings.
    pub graph: String,
    /// Node (or initializer) name.
    pub node: Option<String>,
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{sev}[{}] {}", self.rule, self.graph)?;
        if let Some(n) = &self.node {
            write!(f, " node '{n}'")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// How to check.
#[derive(Clone, Debug)]
pub struct LintOptions {
    pub target: LintTarget,
    pub gpu: Option<GpuTarget>,
    /// TensorRT release whose parser to check against (default: see module docs).
    pub trt_version: Option<TrtVersion>,
    /// Only these graphs (manifest names); None: all.
    pub graphs: Option<Vec<String>>,
}

impl LintOptions {
    pub fn new(target: LintTarget) -> LintOptions {
        LintOptions { target, gpu: None, trt_version: None, graphs: None }
    }

    /// The TensorRT release checked against (None for `ort`).
    pub fn trt(&self) -> Result<Option<TrtVersion>, LintError> {
        let v = |major, minor, patch| TrtVersion { major, minor, patch };
        let default = match (self.target, self.gpu) {
            (LintTarget::Ort, _) => return Ok(None),
            (LintTarget::TensorRt10, None | Some(GpuTarget::Orin)) => v(10, 3, 0),
            (LintTarget::TensorRt10, Some(GpuTarget::Thor)) => v(10, 13, 0),
            (LintTarget::TensorRt10, Some(_)) => v(10, 16, 1),
            (LintTarget::TensorRt11, Some(g)) if g.is_jetson() => v(11, 4, 1),
            (LintTarget::TensorRt11, _) => v(11, 0, 0),
        };
        let chosen = self.trt_version.unwrap_or(default);
        let major = if self.target == LintTarget::TensorRt11 { 11 } else { 10 };
        if chosen.major != major {
            return Err(LintError::Option {
                name: "--trt-version".into(),
                msg: format!("{chosen} is not a TensorRT {major} release (target {:?})", self.target),
            });
        }
        Ok(Some(chosen))
    }
}

/// What was found in one graph.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GraphSummary {
    pub name: String,
    pub file: String,
    pub opset: i64,
    pub nodes: usize,
    pub qdq: QdqCount,
}

/// The result of a check.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    pub target: LintTarget,
    pub tensorrt: Option<String>,
    pub graphs: Vec<GraphSummary>,
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn errors(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.severity == Severity::Error)
    }
    pub fn warnings(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.severity == Severity::Warning)
    }
    pub fn has_errors(&self) -> bool {
        self.errors().next().is_some()
    }
}

/// Checks every graph of the export folder `dir`.
pub fn check_dir(dir: &Path, opts: &LintOptions) -> Result<Report, LintError> {
    let trt = opts.trt()?;
    let manifest = Manifest::read(dir)
        .map_err(|e| LintError::Manifest { path: dir.join("manifest.json"), msg: e.to_string() })?;
    if let Some(want) = &opts.graphs {
        if let Some(bad) = want.iter().find(|g| !manifest.graphs.contains_key(*g)) {
            let have: Vec<&str> = manifest.graphs.keys().map(String::as_str).collect();
            return Err(LintError::Option {
                name: "--graphs".into(),
                msg: format!("no graph '{bad}' in {} (has: {})", dir.display(), have.join(", ")),
            });
        }
    }
    let mut report = Report {
        target: opts.target,
        tensorrt: trt.map(|v| v.to_string()),
        graphs: vec![],
        findings: vec![],
    };
    target_rules(opts, trt, &mut report.findings);
    for (name, entry) in &manifest.graphs {
        if opts.graphs.as_ref().is_some_and(|g| !g.contains(name)) {
            continue;
        }
        let path = dir.join(&entry.file);
        let decoded = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| ModelProto::decode(b.as_slice()).map_err(|e| format!("not an ONNX model: {e}")));
        match decoded {
            Ok(model) => {
                let (summary, findings) = check_model(name, entry, &model, dir, opts)?;
                report.graphs.push(summary);
                report.findings.extend(findings);
            }
            Err(msg) => report.findings.push(Finding {
                severity: Severity::Error,
                rule: "graph-unreadable",
                graph: entry.file.clone(),
                node: None,
                message: format!("{}: {msg}", path.display()),
            }),
        }
    }
    Ok(report)
}

/// Findings that depend on the target only.
fn target_rules(opts: &LintOptions, trt: Option<TrtVersion>, out: &mut Vec<Finding>) {
    if let (Some(GpuTarget::Orin | GpuTarget::Thor), Some(v)) = (opts.gpu, trt) {
        if v.major == 11 && v < (TrtVersion { major: 11, minor: 4, patch: 1 }) {
            out.push(Finding {
                severity: Severity::Error,
                rule: "target",
                graph: "-".into(),
                node: None,
                message: format!(
                    "TensorRT {v} does not support JetPack; Jetson needs 11.4.1+ (JetPack 7.2.2+), and Orin on \
                     JetPack 6 stays on TensorRT 10"
                ),
            });
        }
    }
}

/// Checks one decoded graph; `dir` is the folder its external data paths are relative to.
pub fn check_model(
    name: &str,
    entry: &GraphEntry,
    model: &ModelProto,
    dir: &Path,
    opts: &LintOptions,
) -> Result<(GraphSummary, Vec<Finding>), LintError> {
    let trt = opts.trt()?;
    let file = entry.file.as_str();
    let empty = Default::default();
    let graph = model.graph.as_ref().unwrap_or(&empty);
    let ix = GraphIndex::new(model, graph, dir);
    let mut out = Vec::new();
    let mut find = |severity, rule, node: Option<String>, message: String| {
        out.push(Finding { severity, rule, graph: file.to_string(), node, message })
    };
    let op_set = opset(model);
    match trt {
        Some(v) => {
            if op_set < 9 {
                find(
                    Severity::Error,
                    "opset",
                    None,
                    format!("opset {op_set}: TensorRT's parser reads opset 9 and later"),
                );
            } else if op_set > ops::trt_max_opset(v) {
                find(Severity::Warning, "opset", None, format!(
                    "opset {op_set} is newer than TensorRT {v}'s parser documents (<= {}); ops changed in newer \
                     opsets may not import", ops::trt_max_opset(v)));
            }
            if entry.target == "ort" {
                find(
                    Severity::Warning,
                    "export-target",
                    None,
                    "exported with --target ort (fused opset-23 ops); re-export with --target tensorrt"
                        .into(),
                );
            }
        }
        None => {
            if op_set > 26 || model.ir_version > 13 {
                find(
                    Severity::Error,
                    "opset",
                    None,
                    format!(
                        "IR {} / opset {op_set}: ONNX Runtime 1.31 reads IR <= 13 and opset <= 26",
                        model.ir_version
                    ),
                );
            }
        }
    }
    for (i, n) in graph.node.iter().enumerate() {
        let label = Some(node_label(n, i));
        let domain = if n.domain == "ai.onnx" { "" } else { n.domain.as_str() };
        match trt {
            Some(v) => {
                if !domain.is_empty() {
                    find(
                        Severity::Error,
                        "op-domain",
                        label,
                        format!("{domain}:{} is a custom op; TensorRT would need a plugin for it", n.op_type),
                    );
                    continue;
                }
                match ops::trt_since(&n.op_type) {
                    None => find(Severity::Error, "op-unsupported", label, format!(
                        "{} is not in TensorRT's ONNX parser support list (onnx-tensorrt operators.md)", n.op_type)),
                    Some(since) if since > v => find(Severity::Error, "op-version", label, format!(
                        "{} needs TensorRT >= {}.{}, the target is {v} (--trt-version to raise it if every device \
                         has it)", n.op_type, since.major, since.minor)),
                    Some(_) => {
                        if let Some(issue) = ops::trt_restriction(&ix, n, v) {
                            find(Severity::Error, issue.rule, label, issue.message);
                        } else if n.op_type == "Cast" && attr_int(n, "to") == Some(11) {
                            find(Severity::Warning, "op-dtype", label,
                                "Cast to float64: TensorRT computes it in float32".into());
                        }
                    }
                }
            }
            None => {
                if !matches!(domain, "" | "com.microsoft") {
                    find(
                        Severity::Error,
                        "op-domain",
                        label,
                        format!("{domain}:{} has no ONNX Runtime kernel", n.op_type),
                    );
                } else if !ops::ort_supports(domain, &n.op_type) {
                    find(
                        Severity::Warning,
                        "op-unverified",
                        label,
                        format!(
                            "{} is not among the ops verified on ONNX Runtime 1.31's CPU provider",
                            n.op_type
                        ),
                    );
                }
            }
        }
    }
    shapes::check(&ix, entry, file, opts.target, &mut out);
    external::check(&ix, &dir.join(&entry.file), file, &mut out);
    let float = DType::parse(&entry.dtype).unwrap_or(DType::F32);
    let cx = qdq::Ctx { file, target: opts.target, gpu: opts.gpu, float_dtype: float.onnx() };
    let count = qdq::check(&ix, &cx, &mut out);
    let said = match entry.precision.as_deref() {
        Some("int8") => Some(flux2_runtime::trt::Quant::Int8),
        Some("fp8") => Some(flux2_runtime::trt::Quant::Fp8),
        _ => None,
    };
    if let Some(said) = said.filter(|q| *q != count.quant()) {
        out.push(Finding {
            severity: Severity::Error,
            rule: "manifest-precision",
            graph: file.to_string(),
            node: None,
            message: format!(
                "manifest.json says precision '{}' but the graph's Q/DQ nodes are {}",
                said.name(),
                count.quant().name()
            ),
        });
    }
    dtype_rules(opts.target, float, &ix, file, &mut out);
    let summary = GraphSummary {
        name: name.to_string(),
        file: file.to_string(),
        opset: op_set,
        nodes: graph.node.len(),
        qdq: count,
    };
    Ok((summary, out))
}

/// Precision rules that follow from the graph's float type.
fn dtype_rules(target: LintTarget, float: DType, ix: &GraphIndex, file: &str, out: &mut Vec<Finding>) {
    let gemm = ix.graph.node.iter().any(|n| matches!(n.op_type.as_str(), "MatMul" | "Gemm" | "Conv"));
    let mut find = |severity, message: String| {
        out.push(Finding { severity, rule: "graph-dtype", graph: file.to_string(), node: None, message })
    };
    match (target, float) {
        (LintTarget::Ort, DType::BF16) if gemm => find(Severity::Error,
            "bf16 graph: ONNX Runtime's CPU provider has no bf16 MatMul kernel; export --dtype f32 for the CPU".into()),
        (LintTarget::Ort, DType::F16) if gemm => find(Severity::Warning,
            "f16 graph: ONNX Runtime's CPU provider casts every MatMul to f32; export --dtype f32 for the CPU".into()),
        (LintTarget::TensorRt11, DType::F32) => find(Severity::Warning,
            "f32 graph: TensorRT 11 is strongly typed (no FP16 builder flag), so every unquantized layer runs in \
             FP32/TF32; export --dtype f16 or bf16 for half precision".into()),
        _ => {}
    }
}
