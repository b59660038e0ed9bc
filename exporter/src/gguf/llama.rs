//! Text encoders in llama.cpp's GGUF conventions: tensor names (`token_embd`, `blk.N.attn_q`,
//! ...) mapped to the transformers names the text-encoder export reads, llama.cpp's Q/K row
//! permutation undone, and a transformers `config.json` made from the metadata.
//!
//! Which files are permuted: llama.cpp's `convert_hf_to_gguf.py` reorders the rows of every
//! `q_proj` / `k_proj` of `LlamaModel` and its subclasses (`undo_permute = True`), which covers
//! `MistralForCausalLM` and `Mistral3ForConditionalGeneration` (written as architecture
//! `llama`, by newer converters `mistral3`): per head, transformers' half-split rotary rows
//! `(2, head_dim/2)` become interleaved pairs `(head_dim/2, 2)`. Qwen2/Qwen3 conversions are
//! not permuted. Reading undoes it: GGUF row `h·hd + 2i + j` is transformers row
//! `h·hd + j·hd/2 + i`.

use serde_json::{json, Value as Json};

use super::{GgufError, GgufFile, Value};

/// The text-encoder families read from GGUF, by `general.architecture`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum TextArch {
    /// `llama` / `mistral3`: Mistral language models, Q/K permuted.
    Mistral,
    /// `qwen3`: not permuted, per-head q/k norms.
    Qwen3,
}

impl TextArch {
    /// The family of an architecture name; `None` for architectures that are no text encoder
    /// of FLUX.2.
    pub fn from_arch(arch: &str) -> Option<TextArch> {
        match arch {
            "llama" | "mistral" | "mistral3" => Some(TextArch::Mistral),
            "qwen3" => Some(TextArch::Qwen3),
            _ => None,
        }
    }

    /// Whether llama.cpp permuted the Q/K rows of this family.
    pub fn permuted(self) -> bool {
        self == TextArch::Mistral
    }
}

/// Whether tensor names follow llama.cpp's conventions.
pub fn is_llama_names<'a>(mut names: impl Iterator<Item = &'a str>) -> bool {
    names.any(|n| n == "token_embd.weight" || n.starts_with("blk."))
}

const BLOCK: [(&str, &str); 11] = [
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("attn_q_norm", "self_attn.q_norm"),
    ("attn_k_norm", "self_attn.k_norm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
];

/// The transformers name of a llama.cpp tensor name (`None` for names with no counterpart,
/// e.g. `rope_freqs.weight`).
pub fn hf_name(name: &str) -> Option<String> {
    match name {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = rest.rsplit_once('.')?;
    let hf = BLOCK.iter().find(|(g, _)| *g == module)?.1;
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// The llama.cpp name of a transformers text-model tensor name (the inverse of [`hf_name`]);
/// `None` for names llama.cpp has no counterpart for.
pub fn gguf_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = rest.rsplit_once('.')?;
    let g = BLOCK.iter().find(|(_, h)| *h == module)?.0;
    Some(format!("blk.{layer}.{g}.{kind}"))
}

/// Rows of a permuted Q (or K) tensor of `heads` heads: output row `r` (transformers order)
/// is GGUF row `source_row(r)`.
pub fn unpermute_row(r: usize, rows: usize, heads: usize) -> usize {
    let hd = rows / heads.max(1);
    let (h, k) = (r / hd, r % hd);
    let half = hd / 2;
    let (j, i) = (k / half.max(1), k % half.max(1));
    h * hd + 2 * i + j
}

fn meta_u64(g: &GgufFile, key: &str) -> Result<Option<u64>, GgufError> {
    match g.metadata.get(key) {
        None => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| GgufError::Metadata {
            path: g.path.clone(),
            msg: format!("{key} = {} is not a non-negative integer", v.summary()),
        }),
    }
}

/// Head counts (query, key/value) of a text GGUF, needed to undo the permutation.
pub fn head_counts(g: &GgufFile, arch: &str) -> Result<(usize, usize), GgufError> {
    let key = format!("{arch}.attention.head_count");
    let heads = meta_u64(g, &key)?.filter(|&h| h > 0).ok_or_else(|| GgufError::Metadata {
        path: g.path.clone(),
        msg: format!("no {key}: the Q/K rows cannot be un-permuted without the head count"),
    })?;
    let kv = meta_u64(g, &format!("{key}_kv"))?.unwrap_or(heads);
    Ok((heads as usize, kv as usize))
}

/// A transformers `config.json` for a text GGUF, from its metadata (what `config.json` would
/// hold; the sizes are cross-checked with the shapes by the export as usual).
pub fn config_from_metadata(g: &GgufFile, arch: &str, family: TextArch) -> Result<Json, GgufError> {
    let m = |k: &str| g.metadata.get(&format!("{arch}.{k}"));
    let int = |k: &str| meta_u64(g, &format!("{arch}.{k}"));
    let float = |k: &str| m(k).and_then(Value::as_f64);
    let mut c = serde_json::Map::new();
    let (model_type, class) = match family {
        TextArch::Mistral => ("mistral", "MistralForCausalLM"),
        TextArch::Qwen3 => ("qwen3", "Qwen3ForCausalLM"),
    };
    c.insert("model_type".into(), json!(model_type));
    c.insert("architectures".into(), json!([class]));
    for (key, field) in [
        ("block_count", "num_hidden_layers"),
        ("embedding_length", "hidden_size"),
        ("feed_forward_length", "intermediate_size"),
        ("attention.head_count", "num_attention_heads"),
        ("attention.head_count_kv", "num_key_value_heads"),
        ("attention.key_length", "head_dim"),
        ("context_length", "max_position_embeddings"),
        ("vocab_size", "vocab_size"),
    ] {
        if let Some(v) = int(key)? {
            c.insert(field.into(), json!(v));
        }
    }
    if let Some(eps) = float("attention.layer_norm_rms_epsilon") {
        c.insert("rms_norm_eps".into(), json!(eps));
    }
    let theta = float("rope.freq_base").unwrap_or(10_000.0);
    c.insert("rope_parameters".into(), json!({"rope_type": "default", "rope_theta": theta}));
    if m("rope.scaling.type").and_then(Value::as_str).is_some_and(|t| t != "none" && t != "linear")
        || m("rope.scaling.factor").and_then(Value::as_f64).is_some_and(|f| f != 1.0)
    {
        return Err(GgufError::Metadata {
            path: g.path.clone(),
            msg: format!("{arch}.rope.scaling.* is set: only the default rotary embedding is supported"),
        });
    }
    // llama.cpp writes a sliding window only where the model has one; FLUX.2's encoders have none
    let window = int("attention.sliding_window")?;
    c.insert("sliding_window".into(), json!(window));
    if family == TextArch::Qwen3 {
        c.insert("use_sliding_window".into(), json!(window.is_some()));
    }
    Ok(Json::Object(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: reshape(heads, 2, hd/2).swapaxes(1, 2): GGUF row h*hd + 2i + j holds HF
        // row h*hd + j*hd/2 + i
        let (heads, hd) = (3, 8);
        let rows = heads * hd;
        let mut gguf_of_hf = vec![0; rows];
        for h in 0..heads {
            for j in 0..2 {
                for i in 0..hd / 2 {
                    gguf_of_hf[h * hd + j * hd / 2 + i] = h * hd + 2 * i + j;
                }
            }
        }
        for (r, &g) in gguf_of_hf.iter().enumerate() {
            assert_eq!(unpermute_row(r, rows, heads), g);
        }
    }

    #[test]
    fn names_map_to_transformers() {
        assert_eq!(
            hf_name("blk.3.attn_k_norm.weight").as_deref(),
            Some("model.layers.3.self_attn.k_norm.weight")
        );
        assert_eq!(hf_name("blk.0.ffn_down.weight").as_deref(), Some("model.layers.0.mlp.down_proj.weight"));
        assert_eq!(hf_name("token_embd.weight").as_deref(), Some("model.embed_tokens.weight"));
        assert_eq!(hf_name("rope_freqs.weight"), None);
        assert_eq!(hf_name("blk.x.attn_q.weight"), None);
        for n in ["model.layers.7.mlp.up_proj.weight", "model.norm.weight", "lm_head.weight"] {
            assert_eq!(gguf_name(n).and_then(|g| hf_name(&g)).as_deref(), Some(n));
        }
        assert_eq!(gguf_name("model.layers.0.mlp.unknown.weight"), None);
    }
}
