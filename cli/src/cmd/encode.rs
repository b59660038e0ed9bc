//! `flux2 encode`: prompt -> chat template -> tokens -> exported `text_encoder.onnx` ->
//! `prompt_embeds` safetensors, the embeddings `flux2 generate --prompt-embeds` takes.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use flux2_runtime::model_dir::ModelDir;
use flux2_runtime::tensor_file::{write_tensors, Tensor};
use flux2_runtime::tokenizer::{Family, PromptEncoder};
use flux2_runtime::Input;
use ndarray::{ArrayD, IxDyn};

/// Encode a prompt with an exported text encoder and save the embeddings.
///
/// The prompt goes through the pipeline's exact steps: the checkpoint's chat template (dev:
/// the FLUX.2 system message and a user turn, "[IMG]" removed; klein: one user turn with
/// thinking disabled), tokenisation, truncation to --max-length (the tail is dropped, with a
/// warning, as transformers does) and padding to --max-length (left for Mistral, right for
/// Qwen3). `text_encoder.onnx` then gives `prompt_embeds` [1, L, n·hidden], written as float32
/// safetensors (atomically) to --out.
///
/// Examples:
///   flux2 encode --model klein-onnx --prompt "a red fox in snow" --out fox.safetensors
///   flux2 encode --model dev-onnx --prompt "" --out empty.safetensors
///   flux2 generate --model dev-onnx --prompt-embeds fox.safetensors --out fox.png
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Export folder (`flux2 export` output with manifest.json and text_encoder.onnx).
    #[arg(long)]
    model: PathBuf,
    /// The prompt text.
    #[arg(long)]
    prompt: String,
    /// Sequence length L: prompts are truncated or padded to it (the pipelines' max_sequence_length).
    #[arg(long, default_value_t = 512)]
    max_length: usize,
    /// Output safetensors file (tensor `prompt_embeds`, float32).
    #[arg(long)]
    out: PathBuf,
    /// Tokenizer folder (tokenizer.json, tokenizer_config.json, chat template) [default: MODEL/tokenizer].
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Execution provider: cpu, cuda or tensorrt.
    #[arg(long, default_value = "cpu")]
    provider: String,
}

/// The prompt format of the exported text encoder: the manifest's `text_family`, else the
/// copied `text_encoder_config.json`.
fn family(model: &ModelDir) -> anyhow::Result<Family> {
    match model.manifest.pipeline.get("text_family").and_then(|v| v.as_str()) {
        Some("mistral") => Ok(Family::Mistral3),
        Some("qwen3") => Ok(Family::Qwen3),
        Some(other) => bail!(
            "{}: unknown text-encoder family text_family = '{other}' (expected mistral or qwen3)",
            model.dir.join("manifest.json").display()
        ),
        None => {
            let cfg = model.dir.join("text_encoder_config.json");
            Family::from_config_file(&cfg)
                .with_context(|| format!("text-encoder family of {}", model.dir.display()))
        }
    }
}

fn tokenizer_dir(args: &Args, model: &ModelDir) -> anyhow::Result<PathBuf> {
    match (&args.tokenizer, model.tokenizer_dir()) {
        (Some(dir), _) if dir.is_dir() => Ok(dir.clone()),
        (Some(dir), _) => bail!("--tokenizer {}: no such folder", dir.display()),
        (None, Some(dir)) => Ok(dir),
        (None, None) => bail!(
            "{} has no tokenizer/ folder (the export copies it only from a diffusers folder): pass --tokenizer DIR",
            model.dir.display()
        ),
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.max_length == 0 {
        bail!("--max-length must be at least 1");
    }
    let model = ModelDir::open(&args.model)?;
    let graph = model.graph("text_encoder")?;
    let family = family(&model)?;
    let tok_dir = tokenizer_dir(&args, &model)?;
    let encoder = PromptEncoder::from_tokenizer_dir(&tok_dir, family)
        .with_context(|| format!("loading the tokenizer from {}", tok_dir.display()))?;
    let enc = encoder.encode(&[args.prompt.as_str()], args.max_length).context("tokenizing --prompt")?;
    let real: i64 = enc.attention_mask.iter().sum();
    let ids = ArrayD::from_shape_vec(IxDyn(&[1, enc.len]), enc.input_ids)?;
    let mask = ArrayD::from_shape_vec(IxDyn(&[1, enc.len]), enc.attention_mask)?;
    let factory = flux2_runtime::providers_factory(&args.provider)
        .with_context(|| format!("--provider {}", args.provider))?;
    let mut session = factory(&graph, &flux2_runtime::SessionSpec::default())?;
    let mut out = flux2_runtime::run(
        &mut session,
        vec![("input_ids", Input::I64(ids)), ("attention_mask", Input::I64(mask))],
    )
    .with_context(|| format!("running {}", graph.display()))?;
    let embeds = out.remove("prompt_embeds").with_context(|| {
        format!(
            "{} gave no float32 prompt_embeds (export the text encoder with --dtype f32)",
            graph.display()
        )
    })?;
    let tensor = Tensor { shape: embeds.shape().to_vec(), data: embeds.iter().copied().collect() };
    write(&args.out, &tensor)?;
    println!(
        "wrote prompt_embeds {:?} to {} ({real} real tokens of {}{})",
        tensor.shape,
        args.out.display(),
        enc.len,
        if enc.truncated[0] > 0 { format!(", {} truncated", enc.truncated[0]) } else { String::new() }
    );
    Ok(())
}

fn write(path: &Path, t: &Tensor) -> anyhow::Result<()> {
    if t.data.iter().any(|v| !v.is_finite()) {
        bail!("the text encoder produced non-finite values; nothing written to {}", path.display());
    }
    write_tensors(path, &[("prompt_embeds", t)]).with_context(|| format!("--out {}", path.display()))
}
