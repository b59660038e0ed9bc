//! The Python-backend models of the repository and how they serve:
//! - `flux2`: the whole pipeline, optionally behind Triton's dynamic batcher (requests that
//!   agree on everything but prompt and seed run as one pipeline batch);
//! - `flux2_stream`: the same pipeline as a decoupled model, one progress response per sampling
//!   step and then the image;
//! - `flux2_text_encoder`: the text encoder alone with a prompt-embedding LRU cache, called by
//!   the pipeline models through BLS (`--text-encoder model`), so one encoder serves every DiT
//!   instance and can be scaled or placed apart from them.
//!
//! Every model creates its sessions before it reports ready; with `warmup` a pipeline model also
//! runs one sampling step at its default size first (in `initialize`, not Triton's
//! `model_warmup`: a warm-up request cannot reach the encoder model through BLS while the
//! server is still starting).

use crate::pbtxt::Message;

/// The pipeline model.
pub const PIPELINE_MODEL: &str = "flux2";
/// The decoupled (streaming) pipeline model.
pub const STREAM_MODEL: &str = "flux2_stream";
/// The text-encoder model.
pub const ENCODER_MODEL: &str = "flux2_text_encoder";

/// Triton's dynamic batcher on the `flux2` model.
#[derive(Clone, Debug, PartialEq)]
pub struct Batching {
    /// Requests per execution at most (`max_batch_size`).
    pub max_batch_size: usize,
    /// How long the batcher waits for more requests (`max_queue_delay_microseconds`).
    pub max_queue_delay_us: u64,
    /// Batch sizes the batcher prefers to form (empty: as large as possible).
    pub preferred: Vec<usize>,
}

/// Where the pipeline models get prompt embeddings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum TextEncoder {
    /// Each instance runs its own text encoder.
    #[default]
    Local,
    /// The `flux2_text_encoder` model of this repository, through BLS.
    Model,
    /// A `flux2_text_encoder` model on another server, `grpc://HOST:PORT` (KServe: its own
    /// InferenceService); the pipeline models call it with tritonclient.
    Remote(String),
}

/// The serving options shared by the pipeline models.
#[derive(Clone, Debug, Default)]
pub struct Serving {
    pub batching: Option<Batching>,
    pub text_encoder: TextEncoder,
    /// Instances of `flux2_text_encoder` (with `TextEncoder::Model`).
    pub encoder_instances: usize,
    /// Megabytes of the prompt-embedding LRU cache (0: none).
    pub prompt_cache_mb: usize,
    /// Also Triton's response cache on `flux2_text_encoder` (needs `--cache-config` on the server).
    pub response_cache: bool,
    /// Add the decoupled `flux2_stream` model.
    pub stream: bool,
    /// A warm-up request before the pipeline models report ready.
    pub warmup: bool,
    /// Step caching for requests that do not send a `cache` input (`fbc:0.1`, `mag:…`, …, as
    /// `flux2 generate --cache`); None: off.
    pub step_cache: Option<String>,
}

/// How one pipeline model runs.
#[derive(Clone, Debug)]
pub struct PipelineModel {
    pub name: String,
    /// The export (or build) folder, as the server will see it from the model's directory.
    pub model_dir: String,
    pub provider: String,
    pub threads: Option<usize>,
    pub instances: usize,
    pub serving: Serving,
    /// The streaming variant (decoupled; no dynamic batching).
    pub decoupled: bool,
}

fn tensor(name: &str, dtype: &str, dims: &[i64]) -> Message {
    Message::new().str("name", name).bare("data_type", dtype).ints("dims", dims)
}

fn kind(provider: &str) -> &'static str {
    if provider == "cpu" {
        "KIND_CPU"
    } else {
        "KIND_GPU"
    }
}

/// config.pbtxt of a pipeline model (`flux2` or `flux2_stream`): inputs prompt (required),
/// seed, steps, width, height, guidance, negative_prompt, references, num_images, cache (optional:
/// the model's defaults apply); outputs image uint8 [H, W, 3] and images uint8 [N, H, W, 3];
/// the streaming variant adds step, total (INT32 [1]) and seconds (FP32 [1]) for its progress
/// responses. With batching, every input and output gets Triton's leading batch dimension
/// (one item per request: prompt [1, 1], image [1, H, W, 3]).
pub fn pipeline_config(p: &PipelineModel) -> Message {
    let optional = |m: Message| m.bare("optional", "true");
    let batching = if p.decoupled { None } else { p.serving.batching.as_ref() };
    let mut m = Message::new()
        .str("name", p.name.as_str())
        .str("backend", "python")
        .bare("max_batch_size", batching.map_or(0, |b| b.max_batch_size))
        .msg("input", tensor("prompt", "TYPE_STRING", &[1]))
        .msg("input", optional(tensor("seed", "TYPE_INT64", &[1])))
        .msg("input", optional(tensor("steps", "TYPE_INT32", &[1])))
        .msg("input", optional(tensor("width", "TYPE_INT32", &[1])))
        .msg("input", optional(tensor("height", "TYPE_INT32", &[1])))
        .msg("input", optional(tensor("guidance", "TYPE_FP32", &[1])))
        .msg("input", optional(tensor("negative_prompt", "TYPE_STRING", &[1])))
        .msg("input", optional(tensor("references", "TYPE_STRING", &[-1])))
        .msg("input", optional(tensor("num_images", "TYPE_INT32", &[1])))
        .msg("input", optional(tensor("cache", "TYPE_STRING", &[1])))
        .msg("output", tensor("image", "TYPE_UINT8", &[-1, -1, 3]))
        .msg("output", tensor("images", "TYPE_UINT8", &[-1, -1, -1, 3]));
    if p.decoupled {
        m = m
            .msg("output", tensor("step", "TYPE_INT32", &[1]))
            .msg("output", tensor("total", "TYPE_INT32", &[1]))
            .msg("output", tensor("seconds", "TYPE_FP32", &[1]))
            .msg("model_transaction_policy", Message::new().bare("decoupled", "true"));
    }
    if let Some(b) = batching {
        let mut db = Message::new();
        if !b.preferred.is_empty() {
            db = db.ints("preferred_batch_size", &b.preferred.iter().map(|&n| n as i64).collect::<Vec<_>>());
        }
        m = m.msg("dynamic_batching", db.bare("max_queue_delay_microseconds", b.max_queue_delay_us));
    }
    m = m.msg("instance_group", Message::new().bare("count", p.instances).bare("kind", kind(&p.provider)));
    let encoder = match &p.serving.text_encoder {
        TextEncoder::Local => "local",
        TextEncoder::Model => ENCODER_MODEL,
        TextEncoder::Remote(url) => url.as_str(),
    };
    m = m
        .parameter("model_dir", &p.model_dir)
        .parameter("provider", &p.provider)
        .parameter("text_encoder", encoder)
        .parameter("prompt_cache_mb", &p.serving.prompt_cache_mb.to_string())
        .parameter("warmup", if p.serving.warmup { "true" } else { "false" })
        .parameter("step_cache", p.serving.step_cache.as_deref().unwrap_or("off"));
    if let Some(t) = p.threads {
        m = m.parameter("threads", &t.to_string());
    }
    m
}

/// config.pbtxt of `flux2_text_encoder`: prompt (BYTES [1]) and optional max_sequence_length
/// (INT32 [1], default 512) -> prompt_embeds (FP32 [1, L, ctx]), the embeddings the pipeline
/// computes for that text; an LRU cache of `prompt_cache_mb` MB in front of the encoder.
pub fn encoder_config(p: &PipelineModel) -> Message {
    let mut m = Message::new()
        .str("name", ENCODER_MODEL)
        .str("backend", "python")
        .bare("max_batch_size", 0)
        .msg("input", tensor("prompt", "TYPE_STRING", &[1]))
        .msg("input", tensor("max_sequence_length", "TYPE_INT32", &[1]).bare("optional", "true"))
        .msg("output", tensor("prompt_embeds", "TYPE_FP32", &[-1, -1, -1]))
        .msg(
            "instance_group",
            Message::new().bare("count", p.serving.encoder_instances).bare("kind", kind(&p.provider)),
        );
    if p.serving.response_cache {
        m = m.msg("response_cache", Message::new().bare("enable", "true"));
    }
    m = m
        .parameter("model_dir", &p.model_dir)
        .parameter("provider", &p.provider)
        .parameter("prompt_cache_mb", &p.serving.prompt_cache_mb.to_string());
    if let Some(t) = p.threads {
        m = m.parameter("threads", &t.to_string());
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(serving: Serving, decoupled: bool) -> PipelineModel {
        PipelineModel {
            name: PIPELINE_MODEL.into(),
            model_dir: "../x".into(),
            provider: "cpu".into(),
            threads: None,
            instances: 2,
            serving,
            decoupled,
        }
    }

    #[test]
    fn batching_sets_the_batcher_and_the_batch_dimension() {
        let b = Batching { max_batch_size: 8, max_queue_delay_us: 2000, preferred: vec![4, 8] };
        let text =
            pipeline_config(&model(Serving { batching: Some(b), ..Serving::default() }, false)).render();
        assert!(text.contains("max_batch_size: 8\n"), "{text}");
        assert!(
            text.contains(
                "dynamic_batching {\n  preferred_batch_size: [4, 8]\n  max_queue_delay_microseconds: 2000\n}"
            ),
            "{text}"
        );
        let off = pipeline_config(&model(Serving::default(), false)).render();
        assert!(off.contains("max_batch_size: 0\n") && !off.contains("dynamic_batching"), "{off}");
    }

    #[test]
    fn the_stream_model_is_decoupled_unbatched_with_progress_outputs() {
        let b = Batching { max_batch_size: 4, max_queue_delay_us: 0, preferred: vec![] };
        let s = Serving { batching: Some(b), warmup: true, ..Serving::default() };
        let text = pipeline_config(&model(s, true)).render();
        assert!(text.contains("model_transaction_policy {\n  decoupled: true\n}"), "{text}");
        assert!(text.contains("max_batch_size: 0\n") && !text.contains("dynamic_batching"), "{text}");
        assert!(text.contains("name: \"step\"") && text.contains("name: \"seconds\""), "{text}");
    }

    #[test]
    fn warmup_and_encoder_are_parameters() {
        let s = Serving { warmup: true, text_encoder: TextEncoder::Model, ..Serving::default() };
        let text = pipeline_config(&model(s, false)).render();
        assert!(text.contains("key: \"warmup\"\n  value {\n    string_value: \"true\""), "{text}");
        assert!(text.contains("string_value: \"flux2_text_encoder\""), "{text}");
        assert!(text.contains("key: \"step_cache\"\n  value {\n    string_value: \"off\""), "{text}");
    }

    #[test]
    fn step_caching_is_a_request_input_and_a_model_default() {
        let s = Serving { step_cache: Some("mag:0.1,3,0.2".into()), ..Serving::default() };
        let text = pipeline_config(&model(s, false)).render();
        assert!(text.contains("name: \"cache\"\n  data_type: TYPE_STRING"), "{text}");
        assert!(
            text.contains("key: \"step_cache\"\n  value {\n    string_value: \"mag:0.1,3,0.2\""),
            "{text}"
        );
    }
}
