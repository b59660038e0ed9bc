//! `flux2 export`: safetensors checkpoint -> ONNX graphs + manifest.json.

use std::path::PathBuf;

use flux2_exporter::args::ExportArgs;
use flux2_exporter::export::{export, Progress};
use flux2_exporter::{Kind, ModelSource, WeightMode};

/// Export FLUX.2 components from safetensors to ONNX (no PyTorch needed).
///
/// The checkpoint may be a diffusers folder (model_index.json with vae/, transformer/,
/// text_encoder/, tokenizer/), one component folder, a BFL single file such as
/// ae.safetensors or flux2-dev.safetensors, or a folder of such files.
///
/// --transformer FILE / --text-encoder FILE take that component's weights from FILE (a .gguf
/// or .safetensors file, or a folder holding one) instead of DIR's, with its config, and the
/// VAE, tokenizer and scheduler from DIR: how GGUF files are usually held (one component at a
/// time). A GGUF DiT keeps BFL or diffusers names; a GGUF text encoder (Qwen3, Mistral) is in
/// llama.cpp's names, its Q/K permutation undone, its config from DIR or else the file's
/// metadata. Quantised GGUF tensors are dequantised to --dtype (--weights link can use only
/// F32/F16/BF16 tensors; add --link-fallback copy to copy the rest), or, with
/// --weights-precision, kept low-bit (below).
///
/// A Hugging Face cache snapshot (~/.cache/huggingface/hub/models--*/snapshots/<rev>/) works
/// as it is: its symlinks are followed. Copy mode checks every weight for NaN/Inf as it
/// converts; link mode does with --verify.
///
/// Examples:
///   flux2 export --checkpoint ./FLUX.2-klein-4B --out ./klein-onnx
///   flux2 export --checkpoint ae.safetensors --out ./vae --components vae --weights link
///   flux2 export --checkpoint ./FLUX.2-klein-4B --out /mnt/other/klein --weights link \
///       --verify --link-fallback copy
///   flux2 export --checkpoint ./FLUX.2-klein-4B --out ./klein-q8 \
///       --transformer flux2-klein-4b-Q8_0.gguf --text-encoder Qwen3-4B-Q8_0.gguf
///   flux2 export --checkpoint ./FLUX.2-dev --out ./dev-style --weights link \
///       --lora style.safetensors:0.8 --lora detail.safetensors
///
/// FP8 safetensors (float8_e4m3fn weights with per-tensor `<module>.weight_scale` or ComfyUI's
/// `<module>.scale_weight`) are read as fp8 x scale: float exports write those values,
/// --target tensorrt keeps FP8 linears as FLOAT8E4M3FN + per-tensor DequantizeLinear → MatMul,
/// --weights-precision int8|int4 quantises the scaled values. Activation scales (input_scale)
/// are not used. --weights link cannot apply scales (use copy or --link-fallback copy).
///
/// --lora FILE[:SCALE] (repeatable, scale 1 by default) merges LoRA adapters into the exported
/// DiT: W + Σ scale·(alpha/rank)·B·A, the format (diffusers/PEFT, BFL/ai-toolkit, kohya/musubi)
/// detected from the keys. Every adapter is checked against the model before anything is
/// written. With --weights link only the touched tensors are written (merged, in --dtype) to
/// transformer.onnx.data; the rest stay linked. The manifest records each adapter. To try
/// adapters without re-exporting, use `flux2 generate --lora` instead.
///
/// --weights-precision int8|int4 stores the linear weights of the DiT and the text encoder
/// block-wise quantised (symmetric, one scale per output channel and --block-size input
/// channels, scales in --dtype) as standard ONNX: INT8/INT4 initializers + DequantizeLinear
/// (block_size, opset 21+) feeding each MatMul; activations stay float. ONNX Runtime's CPU
/// provider runs these as fused MatMulNBits kernels, TensorRT 10 as weight-only quantisation
/// (--target tensorrt: INT8 with per-channel scales). The DiT's embedders, modulation and final
/// layer stay float unless --quantize-all. LoRA adapters are merged before quantising. The
/// result can still be calibrated (`flux2 calibrate` leaves the low-bit linears as they are).
///
/// From a quantised GGUF file, a linear whose GGUF type is the requested form takes the file's
/// own codes and scales, transposed, with no dequantise/re-quantise round trip (its values are
/// exactly gguf.quants.dequantize's): Q8_0 and Q5_0 with int8 --block-size 32, Q4_0 with int4
/// --block-size 32, Q6_K (int8) and Q3_K (int4) with --block-size 16. Other types are
/// re-quantised from their exact values. --weights-precision gguf picks the form per tensor
/// from its GGUF type: Q8_0/Q5_0 → INT8 block 32, Q4_0 → INT4 block 32, Q6_K → INT8 block 16,
/// Q3_K → INT4 block 16 (all exact); Q5_1/Q5_K → INT8 block 32, Q4_1/Q4_K/Q2_K → INT4 block 32
/// (nearest, re-quantised; `flux2 inspect --verify FILE.gguf` shows the added error); every
/// quantised linear, embedders included, follows the file, and F32/F16/BF16 tensors stay float.
///   flux2 export --checkpoint ./FLUX.2-klein-4B --out ./klein-q4 \
///       --transformer flux2-klein-4b-Q4_0.gguf --weights-precision gguf
///   flux2 export --checkpoint ./FLUX.2-klein-4B --out ./klein-w4 --weights-precision int4
///   flux2 export --checkpoint ./FLUX.2-klein-4B --out ./klein-w8 --weights-precision int8 \
///       --block-size 32
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Checkpoint file or folder.
    #[arg(long)]
    checkpoint: PathBuf,
    /// The DiT's weights from this .gguf/.safetensors file (or folder) instead of the checkpoint's.
    #[arg(long, value_name = "FILE")]
    transformer: Option<PathBuf>,
    /// The text encoder's weights from this .gguf/.safetensors file (or folder) instead of the
    /// checkpoint's.
    #[arg(long, value_name = "FILE")]
    text_encoder: Option<PathBuf>,
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
    /// With --weights link: where a hard link is impossible (output on another filesystem, a
    /// file owned by someone else), `copy` copies that graph's weights instead of failing.
    #[arg(long, value_name = "copy")]
    link_fallback: Option<String>,
    /// Copy mode checks every value it converts and fails on a tensor holding NaN or Inf;
    /// this exports such tensors anyway.
    #[arg(long)]
    allow_nonfinite: bool,
    /// Link mode: read all the weights first and fail on tensors holding NaN or Inf (copy
    /// mode always checks).
    #[arg(long)]
    verify: bool,
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
    /// float, int8, int4 or gguf (each GGUF linear in its type's low-bit form): storage of the
    /// DiT's and text encoder's linear weights.
    #[arg(long, default_value = "float")]
    weights_precision: String,
    /// int8/int4: input channels per scale (16, 32, 64, 128 or 256). 128, the usual INT4 group
    /// size, is the fastest on CPUs with INT8 dot products and the smallest; 32 keeps a Q4_0 /
    /// Q8_0 GGUF file's own blocks with --weights-precision int4|int8 (or use gguf).
    #[arg(long, default_value_t = 128)]
    block_size: usize,
    /// int8/int4: also quantise the DiT's embedders, modulation and final layer.
    #[arg(long)]
    quantize_all: bool,
    /// How low-bit linears are written: dequantize (the standard DequantizeLinear → MatMul,
    /// for every runtime; ONNX Runtime fuses it into its n-bit kernel when it loads the graph,
    /// which briefly holds two copies of the weights), or matmulnbits (ONNX Runtime's
    /// com.microsoft MatMulNBits directly: one copy, for models whose weights take more than
    /// half the memory, such as FLUX.2 [dev] on 24 GB; --target ort only).
    #[arg(long, value_name = "dequantize|matmulnbits", default_value = "dequantize")]
    lowbit_op: String,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut req = ExportArgs {
        components: args.components.clone(),
        dtype: args.dtype.clone(),
        weights: args.weights.clone(),
        target: args.target.clone(),
        text_layers: args.text_layers.clone(),
        config: args.config.clone(),
        allow_nonfinite: args.allow_nonfinite,
        verify: args.verify,
        link_fallback: args.link_fallback.clone(),
        weights_precision: args.weights_precision.clone(),
        block_size: args.block_size,
        quantize_all: args.quantize_all,
        lowbit_op: args.lowbit_op.clone(),
    }
    .into_request()?;
    let replace: Vec<(Kind, PathBuf)> =
        [(Kind::Transformer, &args.transformer), (Kind::TextEncoder, &args.text_encoder)]
            .into_iter()
            .filter_map(|(k, p)| p.clone().map(|p| (k, p)))
            .collect();
    let source = ModelSource::open_with(&args.checkpoint, &replace)?;
    if args.verify && req.weights == WeightMode::Copy {
        eprintln!("note: --verify is implied by --weights copy, which checks every value it converts");
    }
    for c in &source.components {
        let n = c.checkpoint.fp8.inputs.len();
        if n > 0 {
            eprintln!(
                "note: {}: {n} FP8 activation scales (input_scale) are not used: activations stay float",
                c.kind.name()
            );
        }
    }
    let specs = super::lora::parse_specs(&args.lora)?;
    req.merge = flux2_exporter::lora::plan_merge(&source, &req.options, &specs, req.components.as_deref())?;
    let started = std::time::Instant::now();
    let pb = crate::progress::bar(0, "export");
    let manifest = export(&source, &args.out, &req, &mut |p| match p {
        Progress::Verify { total } => {
            pb.set_length(total);
            pb.set_message("verify");
        }
        Progress::Start { total } => {
            pb.set_position(0);
            pb.set_length(total);
        }
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
