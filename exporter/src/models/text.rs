//! Text-encoder export: family and config detection (tensor names and shapes, with the fields
//! the weights cannot tell read from `config.json`), the name map for every supported key
//! layout, and the list of stored tensors the graph leaves unread.
//!
//! Supported checkpoints (transformers v5.23.0):
//! * `Mistral3ForConditionalGeneration` (`model_type` "mistral3", FLUX.2 [dev]): the language
//!   model only, from the transformers-5 layout (`model.language_model.*`) or the legacy llava
//!   layout (`language_model.model.*`); the text config sits under `text_config`. The vision
//!   tower, projector and LM head are never read.
//! * `MistralForCausalLM` / `MistralModel` ("mistral") and `Qwen3ForCausalLM` / `Qwen3Model`
//!   ("qwen3", FLUX.2 [klein], with per-head q/k norms): `model.*` or bare names.
//!
//! Sizes (hidden, vocab, heads, KV heads, intermediate, layers, head_dim for Qwen3) come from
//! the shapes and are cross-checked with `config.json`; `rms_norm_eps`, the RoPE θ, `head_dim`
//! (Mistral), the activation and the sliding-window settings come from `config.json`, with
//! the config class's defaults for absent fields, exactly as transformers fills them in.
//! Default hidden-state layers: the pipeline's (dev 10/20/30, klein 9/18/27); a model too
//! shallow for them needs `--text-layers`.

use std::collections::BTreeSet;

use flux2_graphs::models::text::{build_text_encoder_with, Family, TextConfig};
use serde_json::{json, Value};

use super::{BuiltGraph, ExportOptions};
use crate::layout::Component;
use crate::names::Source;
use crate::{ExportError, Result};

/// Key prefixes of the language model, most specific first.
const PREFIXES: [&str; 4] = ["model.language_model.", "language_model.model.", "model.", ""];

/// Stored tensors that are never part of the text encoder graph.
const UNUSED: [&str; 6] = [
    "model.vision_tower.",
    "vision_tower.",
    "model.multi_modal_projector.",
    "multi_modal_projector.",
    "lm_head.",
    "language_model.lm_head.",
];

/// A detected text encoder: its config and the key prefix of its language model.
#[derive(Clone, Debug, PartialEq)]
pub struct Detected {
    pub config: TextConfig,
    /// `model.language_model.`, `language_model.model.`, `model.` or empty.
    pub prefix: String,
    /// Decoder layers stored in the checkpoint.
    pub stored_layers: usize,
}

/// Family and the JSON object holding the text config (`text_config` for Mistral3).
fn family(json: &Value) -> std::result::Result<(Family, &Value), String> {
    let model_type = json.get("model_type").and_then(Value::as_str);
    let arch = json.get("architectures").and_then(|a| a.get(0)).and_then(Value::as_str);
    let known = "supported: mistral3 (Mistral3ForConditionalGeneration), mistral (MistralForCausalLM), \
                 qwen3 (Qwen3ForCausalLM)";
    let (field, value) = match (model_type, arch) {
        (Some(t), _) => ("model_type", t),
        (None, Some(a)) => ("architectures[0]", a),
        (None, None) => {
            return Err(format!("config has neither \"model_type\" nor \"architectures\"; {known}"))
        }
    };
    match value {
        "mistral3" | "Mistral3ForConditionalGeneration" => {
            let tc = json.get("text_config").filter(|v| v.is_object()).ok_or_else(|| {
                "a mistral3 config needs a \"text_config\" object (the language model's config)".to_string()
            })?;
            match tc.get("model_type").and_then(Value::as_str) {
                None | Some("mistral") => Ok((Family::Mistral, tc)),
                Some(other) => Err(format!(
                    "unknown text-encoder architecture text_config.model_type = '{other}'; expected 'mistral'"
                )),
            }
        }
        "mistral" | "MistralForCausalLM" | "MistralModel" => Ok((Family::Mistral, json)),
        "qwen3" | "Qwen3ForCausalLM" | "Qwen3Model" => Ok((Family::Qwen3, json)),
        other => Err(format!("unknown text-encoder architecture {field} = '{other}'; {known}")),
    }
}

/// A config field read the way the config class fills it: absent or null gives `None`.
fn field<'a>(tc: &'a Value, key: &str) -> Option<&'a Value> {
    tc.get(key).filter(|v| !v.is_null())
}

fn int(tc: &Value, key: &str) -> std::result::Result<Option<usize>, String> {
    match field(tc, key) {
        None => Ok(None),
        Some(v) => {
            v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| format!("{key} = {v} is not an integer"))
        }
    }
}

fn float(tc: &Value, key: &str) -> std::result::Result<Option<f64>, String> {
    match field(tc, key) {
        None => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| format!("{key} = {v} is not a number")),
    }
}

/// `config.json` must agree with the weights where both say something.
fn agree(key: &str, config: Option<usize>, weights: usize) -> std::result::Result<(), String> {
    match config {
        Some(c) if c != weights => Err(format!("config.json says {key} = {c} but the weights say {weights}")),
        _ => Ok(()),
    }
}

/// RoPE θ with transformers' priority (`rope_parameters` / `rope_scaling`, then `rope_theta`,
/// then 10000); only the default rope type without partial rotation is supported.
fn rope_theta(tc: &Value) -> std::result::Result<f64, String> {
    let params = field(tc, "rope_parameters").or_else(|| field(tc, "rope_scaling"));
    if let Some(p) = params {
        let ty = p.get("rope_type").or_else(|| p.get("type")).and_then(Value::as_str).unwrap_or("default");
        if ty != "default" {
            return Err(format!("rope_type '{ty}' is not supported (only the default rotary embedding)"));
        }
    }
    let partial = params.and_then(|p| float(p, "partial_rotary_factor").transpose()).transpose()?;
    if let Some(f) = partial.or(float(tc, "partial_rotary_factor")?) {
        if f != 1.0 {
            return Err(format!("partial_rotary_factor {f} is not supported"));
        }
    }
    let nested = params.map(|p| float(p, "rope_theta")).transpose()?.flatten();
    Ok(nested.or(float(tc, "rope_theta")?).unwrap_or(10_000.0))
}

/// Sliding window and the layers that use it (`MistralConfig` default window 4096 on every
/// layer; `Qwen3Config` only with `use_sliding_window`, on `layer_types` "sliding_attention").
fn sliding(family: Family, tc: &Value, n: usize) -> std::result::Result<(Option<usize>, Vec<usize>), String> {
    let window = match tc.get("sliding_window") {
        None => Some(4096),
        Some(Value::Null) => None,
        Some(_) => int(tc, "sliding_window")?,
    };
    match family {
        Family::Mistral => Ok((window, if window.is_some() { (0..n).collect() } else { vec![] })),
        Family::Qwen3 => {
            let on = field(tc, "use_sliding_window").and_then(Value::as_bool).unwrap_or(false);
            let window = window.filter(|_| on);
            let Some(w) = window else { return Ok((None, vec![])) };
            let layers = match field(tc, "layer_types").and_then(Value::as_array) {
                Some(types) => types
                    .iter()
                    .enumerate()
                    .filter(|(_, t)| t.as_str() == Some("sliding_attention"))
                    .map(|(i, _)| i)
                    .collect(),
                None => (int(tc, "max_window_layers")?.unwrap_or(28)..n).collect(),
            };
            Ok((Some(w), layers))
        }
    }
}

/// Detects the text-encoder config of `component`; `json` is its `config.json` (or `--config`).
pub fn detect(component: &Component, json: Option<&Value>, layers: Option<&[usize]>) -> Result<Detected> {
    let ck = &component.checkpoint;
    let cfg_path = component.config_path.clone().unwrap_or_else(|| ck.origin.clone());
    let err = |msg: String| ExportError::Config { path: cfg_path.clone(), msg };
    let json = json.ok_or_else(|| ExportError::Config {
        path: ck.origin.clone(),
        msg: "no config.json next to the text-encoder weights (and no --config): rms_norm_eps, \
              rope_parameters.rope_theta and the model_type cannot be read from the weights"
            .into(),
    })?;
    let (family, tc) = family(json).map_err(err)?;
    let prefix = PREFIXES
        .iter()
        .find(|p| ck.get(&format!("{p}embed_tokens.weight")).is_some())
        .ok_or_else(|| {
            err(format!(
                "no embed_tokens.weight under any of the prefixes {PREFIXES:?} in {}",
                ck.origin.display()
            ))
        })?
        .to_string();
    let shape = |local: &str| {
        let name = format!("{prefix}{local}");
        match ck.get(&name) {
            Some(t) if t.shape().len() <= 2 => Ok(t.shape().to_vec()),
            Some(t) => {
                Err(err(format!("tensor '{name}' has shape {:?}, expected a matrix or vector", t.shape())))
            }
            None => Err(err(format!("missing tensor '{name}' needed to detect the text-encoder config"))),
        }
    };
    let embed = shape("embed_tokens.weight")?;
    let (q, k, gate) = (
        shape("layers.0.self_attn.q_proj.weight")?,
        shape("layers.0.self_attn.k_proj.weight")?,
        shape("layers.0.mlp.gate_proj.weight")?,
    );
    let (vocab, hidden) = (embed[0], *embed.get(1).unwrap_or(&0));
    let stored: BTreeSet<usize> = ck
        .tensors
        .keys()
        .filter_map(|n| n.strip_prefix(&prefix)?.strip_prefix("layers.")?.split('.').next()?.parse().ok())
        .collect();
    let stored_layers = stored.iter().next_back().map_or(0, |m| m + 1);
    let config = (|| -> std::result::Result<TextConfig, String> {
        let act = field(tc, "hidden_act").and_then(Value::as_str).unwrap_or("silu");
        if act != "silu" {
            return Err(format!("hidden_act '{act}' is not supported (SwiGLU with silu only)"));
        }
        let head_dim = match family {
            Family::Qwen3 => {
                let from_norm = ck.get(&format!("{prefix}layers.0.self_attn.q_norm.weight")).map(|t| t.shape()[0]);
                let hd = from_norm.or(int(tc, "head_dim")?).unwrap_or(128);
                agree("head_dim", int(tc, "head_dim")?, hd)?;
                hd
            }
            Family::Mistral => match int(tc, "head_dim")? {
                Some(hd) => hd,
                None => hidden / int(tc, "num_attention_heads")?.unwrap_or(32).max(1),
            },
        };
        if head_dim == 0 || q[0] % head_dim != 0 || k[0] % head_dim != 0 {
            return Err(format!(
                "q_proj {:?} / k_proj {:?} are not whole heads of head_dim {head_dim}",
                q, k
            ));
        }
        let (heads, kv_heads) = (q[0] / head_dim, k[0] / head_dim);
        agree("hidden_size", int(tc, "hidden_size")?, hidden)?;
        agree("vocab_size", int(tc, "vocab_size")?, vocab)?;
        agree("num_attention_heads", int(tc, "num_attention_heads")?, heads)?;
        agree("num_key_value_heads", int(tc, "num_key_value_heads")?, kv_heads)?;
        agree("intermediate_size", int(tc, "intermediate_size")?, gate[0])?;
        let num_layers = int(tc, "num_hidden_layers")?.unwrap_or(stored_layers);
        let (sliding_window, sliding_layers) = sliding(family, tc, num_layers)?;
        let hidden_layers = match layers {
            Some(l) => l.to_vec(),
            None => {
                let d = family.default_layers();
                if d.iter().any(|&k| k > num_layers) {
                    return Err(format!(
                        "the model has {num_layers} layers, too few for the FLUX.2 {} default text layers {d:?}: \
                         pass --text-layers (indices 0..={num_layers}, 0 = embeddings)",
                        if family == Family::Mistral { "[dev]" } else { "[klein]" }
                    ));
                }
                d.to_vec()
            }
        };
        Ok(TextConfig {
            family,
            vocab,
            hidden,
            heads,
            kv_heads,
            head_dim,
            intermediate: gate[0],
            eps: float(tc, "rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta: rope_theta(tc)?,
            num_layers,
            qk_norm: family == Family::Qwen3,
            attention_bias: family == Family::Qwen3
                && field(tc, "attention_bias").and_then(Value::as_bool).unwrap_or(false),
            sliding_window,
            sliding_layers,
            hidden_layers,
        })
    })()
    .map_err(err)?;
    config.validate().map_err(|e| err(e.to_string()))?;
    log::debug!("text encoder: {config:?}, prefix '{prefix}', {stored_layers} stored layers");
    Ok(Detected { config, prefix, stored_layers })
}

/// Stored-name prefixes the graph leaves unread: vision tower, projector, LM head, the final
/// norm when no output needs it, and every layer after the last one used.
pub fn unused_prefixes(d: &Detected) -> Vec<String> {
    let mut out: Vec<String> = UNUSED.iter().map(|s| s.to_string()).collect();
    if !d.config.hidden_layers.contains(&d.config.num_layers) {
        out.push(format!("{}norm.", d.prefix));
    }
    for i in d.config.layers_to_build()..d.stored_layers {
        out.push(format!("{}layers.{i}.", d.prefix));
    }
    out
}

/// The `text_encoder` graph of a text-encoder component.
pub fn build(component: &Component, opts: &ExportOptions) -> Result<Vec<BuiltGraph>> {
    let json = opts.config_override.as_ref().or(component.config.as_ref());
    let detected = detect(component, json, opts.text_layers.as_deref())?;
    let embed = component.checkpoint.get(&format!("{}embed_tokens.weight", detected.prefix));
    let table = embed.map_or(opts.dtype, |t| t.dtype());
    let model = build_text_encoder_with(&detected.config, opts.target, opts.dtype, table)?;
    let prefix = detected.prefix.clone();
    let map = move |name: &str| match name.strip_prefix("model.") {
        Some(local) => Source::Tensor(format!("{prefix}{local}")),
        None => Source::Tensor(name.to_string()),
    };
    let mut config = serde_json::to_value(&detected.config).unwrap_or_default();
    if let Some(obj) = config.as_object_mut() {
        obj.insert("checkpoint_prefix".into(), json!(detected.prefix));
    }
    Ok(vec![BuiltGraph {
        stem: "text_encoder".into(),
        model,
        map: Box::new(map),
        ignore: unused_prefixes(&detected),
        config,
        variant: None,
        pipeline: vec![
            ("text_layers".into(), json!(detected.config.hidden_layers)),
            ("text_family".into(), json!(detected.config.family.name())),
        ],
        shares_weights_of: None,
    }])
}
