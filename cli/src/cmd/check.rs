//! `flux2 check`: lint an export folder for a deployment target, no GPU needed.

use std::path::PathBuf;

use anyhow::Context;
use flux2_deploy::lint::{check_dir, LintOptions, LintTarget, Report};
use flux2_runtime::trt::probe::TrtVersion;
use flux2_runtime::trt::GpuTarget;

/// Check every graph of an export folder against what a deployment target accepts.
///
/// Looks at op types and opsets (TensorRT's ONNX parser support list for the target release,
/// or ONNX Runtime's CPU ops), Q/DQ placement and types (Q followed by DQ, symmetric INT8 or
/// FP8 E4M3 with zero point 0, per-tensor activations, weights per output channel, FP8 only
/// on GPUs that have it), dynamic inputs (every named axis needs a min/opt/max range, which
/// becomes the TensorRT profile) and external data (relative paths inside the folder, byte
/// ranges inside the files). Prints one line per finding with the graph file and node name.
/// Exits 1 when there is any error; warnings alone pass.
///
/// TensorRT releases checked by default: 10.3 for tensorrt10 (JetPack 6 on Orin, and when no
/// --gpu is given), 10.16 for datacenter GPUs, 10.13 for Thor; 11.0 for tensorrt11 (11.4.1 on
/// Jetson).
///
/// Examples:
///   flux2 check --model ./klein-trt --target tensorrt10 --gpu orin
///   flux2 check --model ./klein-fp8 --target tensorrt10 --gpu hopper --trt-version 10.16
///   flux2 check --model ./klein-onnx --target ort
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Export folder (has manifest.json).
    #[arg(long)]
    model: PathBuf,
    /// tensorrt10, tensorrt11 or ort.
    #[arg(long, default_value = "tensorrt10")]
    target: String,
    /// Deployment GPU: hopper, ada, ampere, orin or thor (enables FP8 and release checks).
    #[arg(long)]
    gpu: Option<String>,
    /// TensorRT release to check against, e.g. 10.16 [default: see above].
    #[arg(long)]
    trt_version: Option<String>,
    /// Only these graphs (comma-separated manifest names, e.g. transformer,vae_decoder).
    #[arg(long, value_delimiter = ',')]
    graphs: Option<Vec<String>>,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let target: LintTarget = args.target.parse()?;
    let gpu = args.gpu.as_deref().map(str::parse::<GpuTarget>).transpose()?;
    let trt_version = match args.trt_version.as_deref() {
        Some(s) => Some(
            TrtVersion::parse(s)
                .with_context(|| format!("--trt-version: '{s}' is not a version like 10.16"))?,
        ),
        None => None,
    };
    let opts = LintOptions { target, gpu, trt_version, graphs: args.graphs };
    let report = check_dir(&args.model, &opts)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report, &args.model);
    }
    let errors = report.errors().count();
    if errors > 0 {
        anyhow::bail!("{errors} error(s): {} is not ready for {}", args.model.display(), args.target);
    }
    Ok(())
}

fn print_report(report: &Report, dir: &std::path::Path) {
    let target = match (&report.target, &report.tensorrt) {
        (_, Some(v)) => format!("TensorRT {v}"),
        (LintTarget::Ort, None) => "ONNX Runtime 1.31 CPU".to_string(),
        (t, None) => format!("{t:?}"),
    };
    println!("checking {} for {target}", dir.display());
    for g in &report.graphs {
        let q = g.qdq;
        let quant = match (q.int8, q.fp8) {
            (0, 0) => "float".to_string(),
            (i, 0) => format!("int8 Q/DQ x{i}"),
            (0, f) => format!("fp8 Q/DQ x{f}"),
            (i, f) => format!("int8 Q/DQ x{i}, fp8 Q/DQ x{f}"),
        };
        println!("  {}: {} (opset {}, {} nodes, {quant})", g.name, g.file, g.opset, g.nodes);
    }
    for f in &report.findings {
        println!("{f}");
    }
    let (e, w) = (report.errors().count(), report.warnings().count());
    println!("{e} error(s), {w} warning(s): {}", if e == 0 { "ok" } else { "FAILED" });
}
