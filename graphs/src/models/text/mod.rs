//! The FLUX.2 text encoders: a decoder-only LLM (Mistral Small 3.x for [dev], Qwen3 for
//! [klein]) cut after the last hidden state the pipeline uses, returning the selected hidden
//! states stacked per token.
//!
//! Reference: transformers v5.23.0 `models/mistral/modeling_mistral.py` (`MistralModel`, used
//! by `Mistral3ForConditionalGeneration` for its language model) and
//! `models/qwen3/modeling_qwen3.py` (`Qwen3Model`), called by diffusers v0.42.1
//! `Flux2Pipeline._get_mistral_3_small_prompt_embeds` and
//! `Flux2KleinPipeline._get_qwen3_prompt_embeds`:
//!
//! ```text
//! hidden_states[0] = embed_tokens(input_ids)                       (no scaling)
//! hidden_states[k] = layer_{k-1}(hidden_states[k-1])               1 <= k < N
//! hidden_states[N] = norm(layer_{N-1}(hidden_states[N-1]))         (the final norm, N = layers)
//! prompt_embeds    = [hs[l_0] | hs[l_1] | ...]  per token          [B, L, n·D]
//! ```
//!
//! The graph holds embeddings and layers `0..max(l)` only; the final norm is built only when
//! the selection includes `N`. Contract: inputs `input_ids` int64 [B,L] and `attention_mask`
//! int64 [B,L] (1 = real token, any padding side), output `prompt_embeds` [B,L,n·D].
//! Weight names are canonical transformers names under `model.` (`model.embed_tokens.weight`,
//! `model.layers.{i}.self_attn.q_proj.weight`, `model.norm.weight`); the exporter maps them to
//! the checkpoint's prefix.

mod layer;
mod mask;
mod rope;

pub use rope::inv_freq;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{shape, DType, Graph, GraphError, Model, Result, Target, T};

/// Longest prompt the graph is profiled for (`max_sequence_length` of both pipelines).
pub const MAX_LEN: i64 = 512;
/// Largest batch the graph is profiled for.
pub const MAX_BATCH: i64 = 8;

/// Which LLM family: they differ in QK-norm, defaults and sliding-window rules.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// Mistral (the language model of `Mistral3ForConditionalGeneration`): FLUX.2 [dev].
    Mistral,
    /// Qwen3 (`Qwen3ForCausalLM`, per-head q/k RMSNorm): FLUX.2 [klein].
    Qwen3,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Mistral => "mistral",
            Family::Qwen3 => "qwen3",
        }
    }

    /// The pipeline's default `hidden_states_layers` (diffusers v0.42.1 `Flux2Pipeline` /
    /// `Flux2KleinPipeline`).
    pub fn default_layers(self) -> [usize; 3] {
        match self {
            Family::Mistral => [10, 20, 30],
            Family::Qwen3 => [9, 18, 27],
        }
    }
}

/// Everything the text-encoder graph needs (detected by the exporter from names, shapes and
/// `config.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TextConfig {
    pub family: Family,
    pub vocab: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub intermediate: usize,
    /// RMSNorm epsilon (`rms_norm_eps`).
    pub eps: f64,
    /// RoPE base θ (default rope type, rotate-half).
    pub rope_theta: f64,
    /// Decoder layers of the whole model (N): `hidden_states` has N+1 entries.
    pub num_layers: usize,
    /// Per-head RMSNorm of q and k before RoPE (Qwen3).
    pub qk_norm: bool,
    /// Biases on q/k/v/o projections (Qwen3 `attention_bias`).
    pub attention_bias: bool,
    /// Sliding-window size for the layers listed in `sliding_layers`.
    pub sliding_window: Option<usize>,
    /// Indices of the layers that use the sliding window (all of them for Mistral when set).
    pub sliding_layers: Vec<usize>,
    /// Hidden-state indices stacked into the output, in output order (0 = embeddings).
    pub hidden_layers: Vec<usize>,
}

impl TextConfig {
    /// Mistral-Small-3.2-24B text config (FLUX.2 [dev]):
    /// <https://huggingface.co/mistralai/Mistral-Small-3.2-24B-Instruct-2506/blob/main/config.json>.
    pub fn mistral_small_3_2() -> TextConfig {
        TextConfig {
            family: Family::Mistral,
            vocab: 131072,
            hidden: 5120,
            heads: 32,
            kv_heads: 8,
            head_dim: 128,
            intermediate: 32768,
            eps: 1e-5,
            rope_theta: 1e9,
            num_layers: 40,
            qk_norm: false,
            attention_bias: false,
            sliding_window: None,
            sliding_layers: vec![],
            hidden_layers: Family::Mistral.default_layers().to_vec(),
        }
    }

    /// Qwen3-4B (FLUX.2 [klein] 4B): <https://huggingface.co/Qwen/Qwen3-4B/blob/main/config.json>.
    pub fn qwen3_4b() -> TextConfig {
        TextConfig {
            family: Family::Qwen3,
            vocab: 151936,
            hidden: 2560,
            heads: 32,
            kv_heads: 8,
            head_dim: 128,
            intermediate: 9728,
            eps: 1e-6,
            rope_theta: 1e6,
            num_layers: 36,
            qk_norm: true,
            attention_bias: false,
            sliding_window: None,
            sliding_layers: vec![],
            hidden_layers: Family::Qwen3.default_layers().to_vec(),
        }
    }

    /// Number of decoder layers the graph runs: enough for the deepest selected hidden state.
    pub fn layers_to_build(&self) -> usize {
        self.hidden_layers.iter().copied().max().unwrap_or(0)
    }

    /// Width of `prompt_embeds`: one hidden state per selected layer.
    pub fn output_dim(&self) -> usize {
        self.hidden_layers.len() * self.hidden
    }

    /// Rejects configs the graph cannot represent, naming the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(GraphError::Config(format!("text encoder: {msg}")));
        if self.hidden_layers.is_empty() {
            return bad("no hidden-state layers selected".into());
        }
        if let Some(&k) = self.hidden_layers.iter().find(|&&k| k > self.num_layers) {
            return bad(format!(
                "hidden-state layer {k} does not exist: the model has {} layers, so indices go from 0 \
                 (embeddings) to {}",
                self.num_layers, self.num_layers
            ));
        }
        if self.kv_heads == 0 || self.heads == 0 || !self.heads.is_multiple_of(self.kv_heads) {
            return bad(format!(
                "{} attention heads is not a multiple of {} KV heads",
                self.heads, self.kv_heads
            ));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return bad(format!("head_dim {} must be even for rotary embeddings", self.head_dim));
        }
        if self.hidden == 0 || self.vocab == 0 || self.intermediate == 0 {
            return bad(format!(
                "hidden {}, vocab {}, intermediate {} must be positive",
                self.hidden, self.vocab, self.intermediate
            ));
        }
        if self.rope_theta.is_nan() || self.rope_theta <= 0.0 || self.eps.is_nan() || self.eps < 0.0 {
            return bad(format!("rope_theta {} / rms_norm_eps {} out of range", self.rope_theta, self.eps));
        }
        if self.sliding_window == Some(0) {
            return bad("sliding_window 0".into());
        }
        Ok(())
    }

    fn uses_window(&self, layer: usize) -> Option<usize> {
        self.sliding_window.filter(|_| self.sliding_layers.contains(&layer))
    }
}

/// Builds `text_encoder`: `input_ids`, `attention_mask` -> `prompt_embeds` [B, L, n·D].
pub fn build_text_encoder(config: &TextConfig, target: Target, dtype: DType) -> Result<Model> {
    build_text_encoder_with(config, target, dtype, dtype)
}

/// [`build_text_encoder`] with the embedding table declared in `table` (f32/f16/bf16: the
/// checkpoint's storage type). The lookup gathers from the stored table and casts only the
/// gathered rows (exact: the same values as casting first), so a bf16 table of a 131072-token
/// vocabulary is never converted whole at load or run time.
pub fn build_text_encoder_with(
    config: &TextConfig,
    target: Target,
    dtype: DType,
    table: DType,
) -> Result<Model> {
    config.validate()?;
    let g = Graph::new(target, dtype);
    let ids = g.input("input_ids", DType::I64, shape!["B", "L"])?;
    let attention_mask = g.input("attention_mask", DType::I64, shape!["B", "L"])?;
    g.dim_range("B", 1, 1, MAX_BATCH);
    g.dim_range("L", 1, MAX_LEN, MAX_LEN);
    g.metadata("flux2.text_family", config.family.name());
    let layers: Vec<String> = config.hidden_layers.iter().map(|k| k.to_string()).collect();
    g.metadata("flux2.text_layers", &layers.join(","));

    let hidden_states = {
        let _m = g.scope("model");
        hidden_states(&g, config, ids, attention_mask, table)?
    };
    let picked: Vec<T> = config.hidden_layers.iter().map(|&k| hidden_states[k]).collect();
    let out = g.concat(&picked, -1)?; // [B, L, n·D]: [hs[l_0] | hs[l_1] | ...] per token
    g.output(out, "prompt_embeds")?;
    g.finish("text_encoder")
}

/// `hidden_states[0..=max(l)]` as transformers returns them (the last one normed when it is N).
fn hidden_states(g: &Graph, c: &TextConfig, ids: T, attention_mask: T, table: DType) -> Result<Vec<T>> {
    let table = if matches!(table, DType::F32 | DType::F16 | DType::BF16) { table } else { g.dtype };
    let embed = g.weight_typed("embed_tokens.weight", &[c.vocab, c.hidden], table)?;
    let mut x = g.cast(g.gather(embed, ids, 0)?, g.dtype); // [B, L, D]
    let rope = rope::Rope::new(g, c, ids)?;
    // One mask per kind the built layers use: full causal, and the sliding window if any.
    let windows: BTreeSet<Option<usize>> = (0..c.layers_to_build()).map(|i| c.uses_window(i)).collect();
    let mut masks = BTreeMap::new();
    for w in windows {
        masks.insert(w, mask::Mask::new(g, attention_mask, w)?);
    }
    let mut hs = vec![x];
    for i in 0..c.layers_to_build() {
        let _s = g.scope(format!("layers.{i}"));
        let m = masks
            .get(&c.uses_window(i))
            .ok_or_else(|| GraphError::Config(format!("no mask for layer {i}")))?;
        x = layer::decoder_layer(g, c, x, &rope, m)?;
        g.tap(x, &format!("hidden_states.{}", i + 1));
        hs.push(x);
    }
    if c.hidden_layers.contains(&c.num_layers) {
        // transformers replaces the last entry with the final norm's output.
        let last = hs[c.num_layers];
        hs[c.num_layers] = g.rms_norm(last, "norm.weight", c.eps as f32)?;
    }
    Ok(hs)
}
