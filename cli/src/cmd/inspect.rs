//! `flux2 inspect`: what a checkpoint is, before exporting it.

use std::path::PathBuf;

use flux2_exporter::models::{build, ExportOptions};
use flux2_exporter::ModelSource;
use flux2_graphs::{DType, Target};

#[path = "inspect_gguf.rs"]
mod gguf;

/// Describe a checkpoint: layout, components, detected variant and config, parameter
/// count, dtypes and size. Reads only the safetensors headers, unless --verify.
///
/// Given a GGUF file, also shows its version, architecture, metadata, tensor types with
/// counts and sizes, and how each type maps onto the low-bit ONNX forms: Q8_0 → INT8 block 32
/// and Q4_0 → INT4 block 32 (also Q5_0, Q6_K, Q3_K) exactly, the others approximately; with
/// --verify, the added error of each form is measured on every block. `flux2 export
/// --weights-precision gguf` gives each tensor that form (the exact ones take the file's codes).
///
/// FP8 safetensors (float8_e4m3fn weights with per-tensor `weight_scale` / `scale_weight`
/// tensors): the count of FP8 weights, how many have scales and their range, and the
/// activation `input_scale`s (which the export does not use).
///
/// Given a LoRA adapter file, describes it instead: format (diffusers/PEFT, BFL/ai-toolkit,
/// kohya/musubi; detected from the keys), rank, alpha, modules, and with --checkpoint whether
/// every module fits that model's DiT (and which tensors it would change).
///
/// Examples:
///   flux2 inspect ./FLUX.2-dev
///   flux2 inspect --verify ~/.cache/huggingface/hub/models--black-forest-labs--FLUX.2-klein-4B/snapshots/<rev>
///   flux2 inspect style-lora.safetensors --checkpoint ./FLUX.2-klein-4B
///   flux2 inspect --verify flux2-dev-Q4_K_M.gguf
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Checkpoint file or folder (same forms as `flux2 export --checkpoint`), or a LoRA file.
    path: PathBuf,
    /// With a LoRA file: the model to check it against.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Also read all the weight data and list tensors holding NaN or Inf (exit status 1 if any).
    #[arg(long)]
    verify: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.path.is_file() && super::lora::is_adapter(&args.path) {
        return super::lora::inspect(&args.path, args.checkpoint.as_deref(), args.json);
    }
    if args.checkpoint.is_some() {
        anyhow::bail!("--checkpoint goes with a LoRA file; {} is not one", args.path.display());
    }
    let gguf = match args.path.is_file() && flux2_exporter::gguf::is_gguf(&args.path) {
        true => Some(gguf::report(&args.path, args.verify)?),
        false => None,
    };
    let source = match (ModelSource::open(&args.path), &gguf) {
        (Ok(s), _) => s,
        (Err(e), Some(g)) => {
            // a GGUF that is no FLUX.2 component: its own report is the answer
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({"gguf": g, "components": []}))?
                );
            } else {
                gguf::print(g);
                println!("  component:    none ({e})");
            }
            return Ok(());
        }
        (Err(e), None) => return Err(e.into()),
    };
    let opts =
        ExportOptions { dtype: DType::F32, target: Target::Ort, text_layers: None, config_override: None };
    let mut report = Vec::new();
    let mut bad_tensors: Vec<String> = Vec::new();
    for c in &source.components {
        let ck = &c.checkpoint;
        let (variant, config, error) = match build(c, &opts) {
            Ok(graphs) => {
                let g = graphs.first();
                (g.and_then(|g| g.variant.clone()), g.map(|g| g.config.clone()), None)
            }
            Err(e) => (None, None, Some(e.to_string())),
        };
        let nonfinite = if args.verify { verify(ck) } else { vec![] };
        bad_tensors.extend(nonfinite.iter().filter_map(|b| b["tensor"].as_str().map(str::to_string)));
        let dtypes: serde_json::Map<String, serde_json::Value> =
            ck.dtypes().iter().map(|(d, n)| (d.name().to_string(), (*n).into())).collect();
        report.push(serde_json::json!({
            "component": c.kind.name(),
            "layout": format!("{:?}", c.layout).to_lowercase(),
            "origin": ck.origin.display().to_string(),
            "files": ck.files.len(),
            "tensors": ck.tensors.len(),
            "parameters": ck.numel(),
            "bytes": ck.nbytes(),
            "dtypes": dtypes,
            "variant": variant,
            "config": config,
            "error": error,
            "nonfinite": if args.verify { Some(nonfinite) } else { None },
            "fp8": fp8_summary(ck),
        }));
    }
    match (&gguf, args.json) {
        (Some(g), true) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({"gguf": g, "components": report}))?
            )
        }
        (None, true) => println!("{}", serde_json::to_string_pretty(&report)?),
        (g, false) => {
            if let Some(g) = g {
                gguf::print(g);
            }
            print_text(&args, &report);
        }
    }
    if let Some(first) = bad_tensors.first() {
        let more = match bad_tensors.len() {
            1 => String::new(),
            n => format!(" and {} more", n - 1),
        };
        anyhow::bail!("{}: tensor '{first}'{more} hold NaN or Inf values", args.path.display());
    }
    Ok(())
}

/// FP8 weights and their per-tensor scales (null when the checkpoint has none).
fn fp8_summary(ck: &flux2_exporter::Checkpoint) -> serde_json::Value {
    let fp8 = ck.tensors.values().filter(|t| t.dtype() == DType::F8E4M3).count();
    if fp8 == 0 && ck.fp8.weights.is_empty() {
        return serde_json::Value::Null;
    }
    let scales: Vec<f32> = ck.fp8.weights.values().map(|s| s.value).collect();
    let (lo, hi) = scales.iter().fold((f32::INFINITY, 0f32), |(l, h), &s| (l.min(s), h.max(s)));
    serde_json::json!({
        "fp8_tensors": fp8,
        "scaled": ck.fp8.weights.len(),
        "scale_min": (!scales.is_empty()).then_some(lo),
        "scale_max": (!scales.is_empty()).then_some(hi),
        "input_scales": ck.fp8.inputs.len(),
    })
}

/// `--verify`: every tensor of `ck` with NaN/Inf, as JSON records.
fn verify(ck: &flux2_exporter::Checkpoint) -> Vec<serde_json::Value> {
    let pb = crate::progress::bar(ck.nbytes(), "verify");
    let found = flux2_exporter::verify::nonfinite_tensors(ck, &mut |n| pb.inc(n));
    pb.finish_and_clear();
    found
        .iter()
        .map(|b| {
            serde_json::json!({
                "tensor": b.tensor, "file": b.file.display().to_string(), "count": b.count, "numel": b.numel,
            })
        })
        .collect()
}

fn print_text(args: &Args, report: &[serde_json::Value]) {
    println!("{}", args.path.display());
    for r in report {
        println!(
            "  {} ({} layout): {}",
            r["component"].as_str().unwrap_or(""),
            r["layout"].as_str().unwrap_or(""),
            r["origin"].as_str().unwrap_or("")
        );
        if let Some(v) = r["variant"].as_str() {
            println!("    variant:    {v}");
        }
        println!(
            "    parameters: {} ({:.2} GB in {} tensors, {} file(s))",
            r["parameters"],
            r["bytes"].as_f64().unwrap_or(0.0) / 1e9,
            r["tensors"],
            r["files"]
        );
        println!("    dtypes:     {}", r["dtypes"]);
        if !r["config"].is_null() {
            println!("    config:     {}", r["config"]);
        }
        if let Some(f) = r["fp8"].as_object() {
            println!(
                "    fp8:        {} float8_e4m3fn tensors, {} with per-tensor scales (value = fp8 x scale; \
                 scales {} .. {}); {} input (activation) scales, unused: activations stay float",
                f["fp8_tensors"], f["scaled"], f["scale_min"], f["scale_max"], f["input_scales"]
            );
        }
        if let Some(e) = r["error"].as_str() {
            println!("    problem:    {e}");
        }
        if let Some(list) = r["nonfinite"].as_array() {
            if list.is_empty() {
                println!("    verify:     every value is finite");
            }
            for b in list {
                println!(
                    "    NaN/Inf:    {} ({} of {} values, {})",
                    b["tensor"].as_str().unwrap_or(""),
                    b["count"],
                    b["numel"],
                    b["file"].as_str().unwrap_or("")
                );
            }
        }
    }
}
