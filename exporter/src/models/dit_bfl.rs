//! The BFL single-file layout of the DiT (`flux2-dev.safetensors`, `flux-2-klein-4b.safetensors`)
//! as a map from the graph's diffusers names to [`Source`]s (flux2-arch.md §3; diffusers
//! `convert_flux2_transformer_checkpoint_to_diffusers`): fused `qkv` rows `[q; k; v]` become
//! row ranges, the final `adaLN_modulation` rows `(shift, scale)` are re-ordered into
//! diffusers' `(scale, shift)`, everything else is a rename.

use crate::names::Source;

/// Where the BFL single file keeps the diffusers weight `name` (flux2-arch.md §3); `d` is
/// the hidden size (row count of each part of a fused tensor).
pub fn bfl_source(name: &str, d: usize) -> Source {
    let parts: Vec<&str> = name.split('.').collect();
    let t = |s: String| Source::Tensor(s);
    match parts.as_slice() {
        ["x_embedder", w] => t(format!("img_in.{w}")),
        ["context_embedder", w] => t(format!("txt_in.{w}")),
        ["time_guidance_embed", emb @ ("timestep_embedder" | "guidance_embedder"), lin, w] => {
            let m = if *emb == "timestep_embedder" { "time_in" } else { "guidance_in" };
            let l = if *lin == "linear_1" { "in_layer" } else { "out_layer" };
            t(format!("{m}.{l}.{w}"))
        }
        [m
        @ ("double_stream_modulation_img" | "double_stream_modulation_txt" | "single_stream_modulation"), "linear", w] => {
            t(format!("{m}.lin.{w}"))
        }
        // diffusers chunks norm_out as (scale, shift); BFL's final layer as (shift, scale).
        ["norm_out", "linear", "weight"] => {
            let n = "final_layer.adaLN_modulation.1.weight".to_string();
            Source::Concat(vec![
                Source::Rows { name: n.clone(), start: d, end: 2 * d },
                Source::Rows { name: n, start: 0, end: d },
            ])
        }
        ["proj_out", w] => t(format!("final_layer.linear.{w}")),
        ["transformer_blocks", i, rest @ ..] => double_source(i, rest, d).unwrap_or_else(|| t(name.into())),
        ["single_transformer_blocks", i, "attn", rest @ ..] => {
            let s = match rest {
                ["to_qkv_mlp_proj", w] => format!("linear1.{w}"),
                ["to_out", w] => format!("linear2.{w}"),
                ["norm_q", "weight"] => "norm.query_norm.scale".into(),
                ["norm_k", "weight"] => "norm.key_norm.scale".into(),
                _ => return t(name.into()),
            };
            t(format!("single_blocks.{i}.{s}"))
        }
        _ => t(name.into()),
    }
}

fn double_source(i: &str, rest: &[&str], d: usize) -> Option<Source> {
    let b = format!("double_blocks.{i}");
    let qkv = |stream: &str, k: usize| Source::Rows {
        name: format!("{b}.{stream}_attn.qkv.weight"),
        start: k * d,
        end: (k + 1) * d,
    };
    let s = match rest {
        ["attn", p @ ("to_q" | "to_k" | "to_v"), "weight"] => return Some(qkv("img", qkv_index(p))),
        ["attn", p @ ("add_q_proj" | "add_k_proj" | "add_v_proj"), "weight"] => {
            return Some(qkv("txt", qkv_index(p)))
        }
        ["attn", "norm_q", "weight"] => "img_attn.norm.query_norm.scale".to_string(),
        ["attn", "norm_k", "weight"] => "img_attn.norm.key_norm.scale".into(),
        ["attn", "norm_added_q", "weight"] => "txt_attn.norm.query_norm.scale".into(),
        ["attn", "norm_added_k", "weight"] => "txt_attn.norm.key_norm.scale".into(),
        ["attn", "to_out", "0", w] => format!("img_attn.proj.{w}"),
        ["attn", "to_add_out", w] => format!("txt_attn.proj.{w}"),
        [ff @ ("ff" | "ff_context"), lin @ ("linear_in" | "linear_out"), w] => {
            let stream = if *ff == "ff" { "img" } else { "txt" };
            format!("{stream}_mlp.{}.{w}", if *lin == "linear_in" { 0 } else { 2 })
        }
        _ => return None,
    };
    Some(Source::Tensor(format!("{b}.{s}")))
}

fn qkv_index(p: &str) -> usize {
    match p {
        "to_q" | "add_q_proj" => 0,
        "to_k" | "add_k_proj" => 1,
        _ => 2,
    }
}
