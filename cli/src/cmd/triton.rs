//! `flux2 triton`: a Triton Inference Server model repository for an export (flux2-serve).

use std::path::PathBuf;

use anyhow::Context;

use flux2_serve::{write_repository, Batching, RepositoryOptions, Serving, TextEncoder};

const AFTER_HELP: &str = "\
The repository holds:
  flux2/         Python-backend model running the whole pipeline through the `flux2` Python
                 package: inputs prompt (BYTES [1]); optional seed (INT64 [1]), steps, width,
                 height (INT32 [1]), guidance (FP32 [1]), negative_prompt (BYTES [1]), references
                 (BYTES [-1], encoded PNG/JPEG); output image (UINT8 [H, W, 3]), the pixels
                 `flux2 generate` writes for the same arguments. --instances stub processes.
                 --dynamic-batching: Triton's dynamic batcher hands it several requests at
                 once; those that agree on everything but prompt and seed run as one pipeline
                 batch (each image bit-identical to the request served alone), the rest in
                 turn. Requests then carry Triton's batch dimension: prompt [1, 1], seed [1, 1],
                 ..., image [1, H, W, 3].
  flux2_stream/  (--stream) the same pipeline as a decoupled model: one response per sampling
                 step (step, total, seconds) and then the image (gRPC streaming); cancelling
                 the stream stops the request at the next step.
  flux2_text_encoder/
                 (--text-encoder model) the text encoder as a model of its own (prompt ->
                 prompt_embeds), called by the pipeline models through BLS, with an LRU cache of
                 --prompt-cache-mb MB of prompt embeddings in front of it: one encoder for every DiT
                 instance, placed and scaled apart (--encoder-instances; docs/serving.md).
                 --response-cache also enables Triton's response cache on it (start the server
                 with --cache-config local,size=BYTES): a repeated prompt then never reaches it.
                 --text-encoder grpc://HOST:PORT calls a flux2_text_encoder served elsewhere
                 (its own server or KServe InferenceService; the backend's Python then needs
                 tritonclient[grpc]).
  text_encoder/, transformer/, vae_encoder/, vae_decoder/
                 the stages for Triton's native backends: onnxruntime_onnx over the export, or
                 tensorrt_plan over the engines of a `flux2 build` folder (--engines), dims and
                 profiles from the manifests, for clients that run the stages themselves.
Nothing is copied: the models point at the export (relative paths and symbolic links), so keep
the export and the repository where they are relative to each other (e.g. one volume).
The server's Python needs the `flux2` package and numpy (`pip install ./python`; see
docs/serving.md for containers and KServe).

--warmup runs one sampling step at load, so the first request finds every session made (the
models always create their sessions before they report ready).

Examples:
  flux2 triton --model ./klein-onnx --out ./repo --instances 2
  tritonserver --model-repository ./repo
  flux2 triton --model ./klein-onnx --out ./repo --dynamic-batching --max-batch-size 8 \
      --max-queue-delay-us 20000 --preferred-batch-sizes 4,8 --text-encoder model --stream --warmup
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
    /// Triton's dynamic batcher on the `flux2` model (requests get a batch dimension).
    #[arg(long)]
    pub dynamic_batching: bool,
    /// Requests per execution at most (with --dynamic-batching).
    #[arg(long, default_value_t = 8)]
    pub max_batch_size: usize,
    /// Microseconds the batcher waits for more requests (with --dynamic-batching).
    #[arg(long, default_value_t = 10_000)]
    pub max_queue_delay_us: u64,
    /// Batch sizes the batcher prefers, e.g. 4,8 (with --dynamic-batching).
    #[arg(long, value_delimiter = ',')]
    pub preferred_batch_sizes: Vec<usize>,
    /// Where prompt embeddings come from: local (each instance), model (flux2_text_encoder
    /// here, through BLS) or grpc://HOST:PORT (flux2_text_encoder on another server).
    #[arg(long, default_value = "local")]
    pub text_encoder: String,
    /// Instances of flux2_text_encoder (with --text-encoder model).
    #[arg(long, default_value_t = 1)]
    pub encoder_instances: usize,
    /// Megabytes of prompt embeddings kept in the LRU cache (0: no cache).
    #[arg(long, default_value_t = 512)]
    pub prompt_cache_mb: usize,
    /// Triton's response cache on flux2_text_encoder (server: --cache-config local,size=BYTES).
    #[arg(long)]
    pub response_cache: bool,
    /// Also write flux2_stream, the decoupled model streaming one progress response per step.
    #[arg(long)]
    pub stream: bool,
    /// A warm-up request (one step) at load, before the pipeline models report ready.
    #[arg(long)]
    pub warmup: bool,
    /// Step caching for requests that send no `cache` input: fbc:T, mag:T[,MAX_SKIP,RETENTION],
    /// taylor:N[,ORDER], tea:T (see `flux2 generate --help`); a request's `cache` input ("off"
    /// included) wins. Needs a float export with the DiT parts.
    #[arg(long, value_name = "POLICY", default_value = "off")]
    pub cache: String,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let provider = args
        .provider
        .clone()
        .unwrap_or_else(|| if args.engines.is_some() { "tensorrt" } else { "cpu" }.to_string());
    let batching_only = [
        ("--preferred-batch-sizes", !args.preferred_batch_sizes.is_empty()),
        ("--max-batch-size", args.max_batch_size != 8),
        ("--max-queue-delay-us", args.max_queue_delay_us != 10_000),
    ];
    if let (false, Some((name, _))) = (args.dynamic_batching, batching_only.iter().find(|(_, set)| *set)) {
        anyhow::bail!("{name} configures the dynamic batcher: add --dynamic-batching");
    }
    let step_cache = match args.cache.as_str() {
        "off" => None,
        spec => {
            spec.parse::<flux2_runtime::cache::CacheSpec>().context("--cache")?;
            check_cache_parts(&args.model, spec)?;
            Some(spec.to_string())
        }
    };
    let serving = Serving {
        batching: args.dynamic_batching.then(|| Batching {
            max_batch_size: args.max_batch_size,
            max_queue_delay_us: args.max_queue_delay_us,
            preferred: args.preferred_batch_sizes.clone(),
        }),
        text_encoder: match args.text_encoder.as_str() {
            "local" => TextEncoder::Local,
            "model" => TextEncoder::Model,
            url if url.strip_prefix("grpc://").is_some_and(|a| a.contains(':')) => {
                TextEncoder::Remote(url.into())
            }
            other => anyhow::bail!("--text-encoder '{other}': expected local, model or grpc://HOST:PORT"),
        },
        encoder_instances: args.encoder_instances,
        prompt_cache_mb: args.prompt_cache_mb,
        response_cache: args.response_cache,
        stream: args.stream,
        warmup: args.warmup,
        step_cache,
    };
    let report = write_repository(&RepositoryOptions {
        model: args.model,
        out: args.out,
        instances: args.instances,
        engines: args.engines,
        provider,
        threads: args.threads,
        force: args.force,
        serving,
    })?;
    println!("wrote Triton model repository {}", report.out.display());
    for (name, platform) in &report.models {
        println!("  {name}: {platform}");
    }
    println!("serve it: tritonserver --model-repository {}", report.out.display());
    Ok(())
}

/// A step-caching default needs the DiT parts in the export: checked now rather than at the
/// first request.
fn check_cache_parts(model: &std::path::Path, spec: &str) -> anyhow::Result<()> {
    let manifest = model.join("manifest.json");
    let text = std::fs::read_to_string(&manifest)
        .with_context(|| format!("--cache: reading {}", manifest.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("--cache: {}", manifest.display()))?;
    let graphs = json.get("graphs").and_then(|g| g.as_object());
    let missing: Vec<&str> = flux2_runtime::cache::PARTS
        .iter()
        .copied()
        .filter(|p| !graphs.is_some_and(|g| g.contains_key(*p)))
        .collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "--cache {spec}: {} has no DiT parts ({}); step caching needs a float export (`flux2 export`), not a calibrated or weight-only folder",
            model.display(),
            missing.join(", ")
        );
    }
    Ok(())
}
