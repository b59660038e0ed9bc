//! `flux2 triton`: a Triton Inference Server model repository for an export (flux2-serve).

use std::path::PathBuf;

use flux2_serve::{write_repository, RepositoryOptions};

const AFTER_HELP: &str = "\
The repository holds:
  flux2/         Python-backend model running the whole pipeline through the `flux2` Python
                 package: inputs prompt (BYTES [1]); optional seed (INT64 [1]), steps, width,
                 height (INT32 [1]), guidance (FP32 [1]), negative_prompt (BYTES [1]), references
                 (BYTES [-1], encoded PNG/JPEG); output image (UINT8 [H, W, 3]), the pixels
                 `flux2 generate` writes for the same arguments. --instances stub processes.
  text_encoder/, transformer/, vae_encoder/, vae_decoder/
                 the stages for Triton's native backends: onnxruntime_onnx over the export, or
                 tensorrt_plan over the engines of a `flux2 build` folder (--engines), dims and
                 profiles from the manifests, for clients that run the stages themselves.
Nothing is copied: the models point at the export (relative paths and symbolic links), so keep
the export and the repository where they are relative to each other (e.g. one volume).
The server's Python needs the `flux2` package and numpy (`pip install ./python`; see
docs/serving.md for containers and KServe).

Examples:
  flux2 triton --model ./klein-onnx --out ./repo --instances 2
  tritonserver --model-repository ./repo
  flux2 triton --model ./klein-fp8 --engines ./klein-h100 --out ./repo-trt";

/// Write a Triton Inference Server model repository for an exported model.
#[derive(clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// Export folder (`flux2 export` output).
    #[arg(long)]
    pub model: PathBuf,
    /// Repository folder to create (written beside it, then renamed into place).
    #[arg(long)]
    pub out: PathBuf,
    /// Instances of each model (for `flux2`, one Python stub process each).
    #[arg(long, default_value_t = 1)]
    pub instances: usize,
    /// A `flux2 build` folder: stage models as tensorrt_plan, the pipeline on TensorRT.
    #[arg(long)]
    pub engines: Option<PathBuf>,
    /// Execution provider of the `flux2` model: cpu or cuda [default: tensorrt with --engines, else cpu].
    #[arg(long)]
    pub provider: Option<String>,
    /// Intra-op threads per session in each `flux2` instance (CPU) [default: every core].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Replace an existing repository at --out.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let provider = args
        .provider
        .clone()
        .unwrap_or_else(|| if args.engines.is_some() { "tensorrt" } else { "cpu" }.to_string());
    let report = write_repository(&RepositoryOptions {
        model: args.model,
        out: args.out,
        instances: args.instances,
        engines: args.engines,
        provider,
        threads: args.threads,
        force: args.force,
    })?;
    println!("wrote Triton model repository {}", report.out.display());
    for (name, platform) in &report.models {
        println!("  {name}: {platform}");
    }
    println!("serve it: tritonserver --model-repository {}", report.out.display());
    Ok(())
}
