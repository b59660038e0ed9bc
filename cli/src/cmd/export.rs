//! `flux2 export`: safetensors checkpoint -> ONNX graphs + manifest.json.

use std::path::PathBuf;

use anyhow::{bail, Context};
use flux2_exporter::export::{export, ExportRequest, Progress};
use flux2_exporter::models::ExportOptions;
use flux2_exporter::{Kind, ModelSource, WeightMode};
use flux2_graphs::{DType, Target};

/// Export FLUX.2 components from safetensors to ONNX (no PyTorch needed).
///
/// The checkpoint may be a diffusers folder (model_index.json with vae/, transformer/,
/// text_encoder/, tokenizer/), one component folder, a BFL single file such as
/// ae.safetensors or flux2-dev.safetensors, or a folder of such files.
///
/// Examples:
///   flux2 export --checkpoint ./FLUX.2-klein-4B --out ./klein-onnx
///   flux2 export --checkpoint ae.safetensors --out ./vae --components vae --weights link
///   flux2 export --checkpoint ./FLUX.2-dev --out ./dev-style --weights link \
///       --lora style.safetensors:0.8 --lora detail.safetensors
///
/// --lora FILE[:SCALE] (repeatable, scale 1 by default) merges LoRA adapters into the exported
/// DiT: W + Σ scale·(alpha/rank)·B·A, the format (diffusers/PEFT, BFL/ai-toolkit, kohya/musubi)
/// detected from the keys. Every adapter is checked against the model before anything is
/// written. With --weights link only the touched tensors are written (merged, in --dtype) to
/// transformer.onnx.data; the rest stay linked. The manifest records each adapter. To try
/// adapters without re-exporting, use `flux2 generate --lora` instead.
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Checkpoint file or folder.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Output folder (created; existing files of the same name are replaced on success).
    #[arg(long)]
    out: PathBuf,
    /// Comma-separated components: vae, transformer, text-encoder [default: all found].
    #[arg(long, value_delimiter = ',')]
    components: Option<Vec<String>>,
    /// Float type of the graphs and weights: f32, f16 or bf16. ONNX Runtime's CPU provider
    /// needs f32 (it has no bf16 MatMul); f16/bf16 are for GPU providers.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// copy: write weights (converted to --dtype) to <graph>.onnx.data; link: point the ONNX
    /// external data at the original .safetensors (hard-linked into DIR/weights/, so DIR must
    /// be on the same filesystem; nothing is copied, export takes seconds at any size).
    #[arg(long, default_value = "copy")]
    weights: String,
    /// Graph flavour: ort (opset 23 fused Attention/RMSNorm/RoPE) or tensorrt (TensorRT 10 parser ops).
    #[arg(long, default_value = "ort")]
    target: String,
    /// Text-encoder hidden-state layers, e.g. 10,20,30 [default: the variant's].
    #[arg(long, value_delimiter = ',')]
    text_layers: Option<Vec<usize>>,
    /// A config.json overriding what is detected (e.g. norm_num_groups for a BFL ae.safetensors of a
    /// non-standard VAE).
    #[arg(long)]
    config: Option<PathBuf>,
    /// LoRA adapter merged into the DiT, FILE[:SCALE] (repeatable; scale 1 by default).
    #[arg(long, value_name = "FILE[:SCALE]")]
    lora: Vec<String>,
}

pub fn parse_kind(s: &str) -> anyhow::Result<Kind> {
    Ok(match s.trim().replace('_', "-").as_str() {
        "vae" => Kind::Vae,
        "transformer" | "dit" => Kind::Transformer,
        "text-encoder" | "te" => Kind::TextEncoder,
        other => bail!("--components: unknown component '{other}' (expected vae, transformer, text-encoder)"),
    })
}

/// Parses the options shared with other commands.
pub fn options(
    dtype: &str,
    target: &str,
    text_layers: Option<Vec<usize>>,
    config: Option<&PathBuf>,
) -> anyhow::Result<ExportOptions> {
    let dtype = match DType::parse(dtype) {
        Some(d @ (DType::F32 | DType::F16 | DType::BF16)) => d,
        _ => bail!("--dtype: '{dtype}' is not one of f32, f16, bf16"),
    };
    let target = match target {
        "ort" | "onnxruntime" => Target::Ort,
        "tensorrt" | "trt" => Target::TensorRt,
        other => bail!("--target: '{other}' is not one of ort, tensorrt"),
    };
    let config_override = match config {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("--config {}", p.display()))?;
            Some(serde_json::from_str(&text).with_context(|| format!("--config {}: not JSON", p.display()))?)
        }
        None => None,
    };
    Ok(ExportOptions { dtype, target, text_layers, config_override })
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let weights = match args.weights.as_str() {
        "copy" => WeightMode::Copy,
        "link" => WeightMode::Link,
        other => bail!("--weights: '{other}' is not one of copy, link"),
    };
    let components = match &args.components {
        Some(list) => Some(list.iter().map(|s| parse_kind(s)).collect::<anyhow::Result<Vec<_>>>()?),
        None => None,
    };
    let options = options(&args.dtype, &args.target, args.text_layers.clone(), args.config.as_ref())?;
    let specs = super::lora::parse_specs(&args.lora)?;
    let source = ModelSource::open(&args.checkpoint)?;
    let merge = flux2_exporter::lora::plan_merge(&source, &options, &specs, components.as_deref())?;
    let req = ExportRequest { components, options, weights, merge };
    let started = std::time::Instant::now();
    let pb = crate::progress::bar(0, "export");
    let manifest = export(&source, &args.out, &req, &mut |p| match p {
        Progress::Start { total } => pb.set_length(total),
        Progress::Graph { stem } => pb.set_message(stem.to_string()),
        Progress::Bytes(n) => pb.inc(n),
    })?;
    pb.finish_and_clear();
    println!(
        "exported {} graph(s) to {} in {:.2}s",
        manifest.graphs.len(),
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    for (name, g) in &manifest.graphs {
        let ins: Vec<String> =
            g.inputs.iter().map(|i| format!("{}[{}]", i.name, i.shape.join(","))).collect();
        let outs: Vec<String> =
            g.outputs.iter().map(|i| format!("{}[{}]", i.name, i.shape.join(","))).collect();
        println!(
            "  {name}: {} ({} params, {}) {} -> {}",
            g.file,
            g.parameters,
            g.dtype,
            ins.join(" "),
            outs.join(" ")
        );
    }
    for a in &manifest.adapters {
        println!(
            "  adapter {} ({}, rank {}, scale {}): merged into {} DiT tensors",
            a.file,
            a.format,
            a.rank,
            a.scale,
            a.tensors.len()
        );
    }
    println!("  variant: {}; manifest: {}", manifest.variant, args.out.join("manifest.json").display());
    Ok(())
}
