//! DiT export: config detection from names and shapes (cross-checked with `config.json` or
//! `--config`), variant naming, the BFL single-file name map, and the transformer graph.
//!
//! What the weights tell: hidden size D (`x_embedder` rows), latent and text widths, head
//! dim (QK-norm length, hence the head count D / head dim), block counts, SwiGLU width,
//! timestep channels and whether there is a guidance embedder. What they cannot tell: the
//! RoPE axes, theta and eps. Those come from the config when there is one, otherwise the
//! released values: axes (32,32,32,32) for head dim 128 (any other head dim gets an even
//! split and a warning), theta 2000, eps 1e-6.
//!
//! BFL layout (`flux2-dev.safetensors`, flux2-arch.md §3): fused `qkv` rows `[q; k; v]` are
//! split with [`Source::Rows`], the final `adaLN_modulation` rows `(shift, scale)` are
//! swapped into diffusers' `(scale, shift)` with a [`Source::Concat`] of two row ranges, and
//! everything else is a rename.

use std::path::PathBuf;

use flux2_graphs::models::dit::{build_dit_part, build_transformer, DitConfig, DitPart};
use serde_json::Value;

use super::{BuiltGraph, ExportOptions};
use crate::layout::{Component, Layout};
use crate::names::Source;
use crate::{ExportError, Result};

#[path = "dit_bfl.rs"]
mod bfl;
pub use bfl::bfl_source;

/// Canonical (diffusers) and BFL names of the tensors that detection reads.
struct Probe {
    x_embedder: &'static str,
    context_embedder: &'static str,
    time_linear_1: &'static str,
    guidance_linear_1: &'static str,
    proj_out: &'static str,
    double: &'static str,
    single: &'static str,
    /// Suffixes inside a block.
    double_norm_q: &'static str,
    double_ff_in: &'static str,
    single_norm_q: &'static str,
    single_proj: &'static str,
}

const DIFFUSERS: Probe = Probe {
    x_embedder: "x_embedder.weight",
    context_embedder: "context_embedder.weight",
    time_linear_1: "time_guidance_embed.timestep_embedder.linear_1.weight",
    guidance_linear_1: "time_guidance_embed.guidance_embedder.linear_1.weight",
    proj_out: "proj_out.weight",
    double: "transformer_blocks",
    single: "single_transformer_blocks",
    double_norm_q: "attn.norm_q.weight",
    double_ff_in: "ff.linear_in.weight",
    single_norm_q: "attn.norm_q.weight",
    single_proj: "attn.to_qkv_mlp_proj.weight",
};

const BFL: Probe = Probe {
    x_embedder: "img_in.weight",
    context_embedder: "txt_in.weight",
    time_linear_1: "time_in.in_layer.weight",
    guidance_linear_1: "guidance_in.in_layer.weight",
    proj_out: "final_layer.linear.weight",
    double: "double_blocks",
    single: "single_blocks",
    double_norm_q: "img_attn.norm.query_norm.scale",
    double_ff_in: "img_mlp.0.weight",
    single_norm_q: "norm.query_norm.scale",
    single_proj: "linear1.weight",
};

/// Reads the DiT config from the component's tensor names and shapes, then checks it
/// against `config_json` (a diffusers `config.json` or BFL-style `Flux2Params` fields) and
/// takes the RoPE axes, theta and eps from it.
pub fn detect(component: &Component, config_json: Option<&Value>) -> Result<DitConfig> {
    let ck = &component.checkpoint;
    let p = if component.layout == Layout::Bfl { &BFL } else { &DIFFUSERS };
    let err = |msg: String| ExportError::Config { path: ck.origin.clone(), msg };
    let shape = |name: &str| ck.get(name).map(|t| t.shape().to_vec());
    let matrix = |name: &str| match shape(name) {
        Some(s) if s.len() == 2 => Ok(s),
        Some(s) => Err(err(format!("tensor '{name}' has shape {s:?}, expected a matrix (out, in)"))),
        None => Err(err(format!("missing tensor '{name}', needed to detect the transformer config"))),
    };

    let x_emb = matrix(p.x_embedder)?;
    let d = x_emb[0];
    let doubles = block_indices(ck.tensors.keys(), p.double);
    let singles = block_indices(ck.tensors.keys(), p.single);
    // Probes inside the first block present of each kind.
    let first_double = |suffix: &str| doubles.first().map(|i| format!("{}.{i}.{suffix}", p.double));
    let first_single = |suffix: &str| singles.first().map(|i| format!("{}.{i}.{suffix}", p.single));
    let probe = |name: Option<String>| name.and_then(|n| shape(&n).map(|s| (n, s)));

    let norm = probe(first_double(p.double_norm_q)).or_else(|| probe(first_single(p.single_norm_q)));
    let head_dim = head_dim(norm, num(config_json, &["attention_head_dim"]), d, p.x_embedder).map_err(err)?;
    let ff_in = probe(first_double(p.double_ff_in));
    let fused = probe(first_single(p.single_proj));
    let mut config = DitConfig {
        in_channels: x_emb[1],
        out_channels: matrix(p.proj_out)?[0],
        num_layers: doubles.last().map_or(0, |i| i + 1),
        num_single_layers: singles.last().map_or(0, |i| i + 1),
        attention_head_dim: head_dim,
        num_attention_heads: d / head_dim,
        joint_attention_dim: matrix(p.context_embedder)?[1],
        timestep_guidance_channels: matrix(p.time_linear_1)?[1],
        mlp_hidden_dim: mlp_hidden_dim(ff_in, fused, d).map_err(err)?,
        axes_dims_rope: default_axes(head_dim),
        rope_theta: 2000.0,
        eps: 1e-6,
        guidance_embeds: ck.get(p.guidance_linear_1).is_some(),
    };
    let axes_given = match config_json {
        Some(json) => {
            // Name the file when the JSON is the component's own config.json.
            let path = match (&component.config, &component.config_path) {
                (Some(own), Some(path)) if std::ptr::eq(own, json) => path.clone(),
                _ => PathBuf::from("--config"),
            };
            cross_check(&mut config, json).map_err(|msg| ExportError::Config {
                path,
                msg: format!("does not match the weights: {msg}"),
            })?
        }
        None => false,
    };
    if !axes_given && head_dim != 128 {
        log::warn!(
            "{}: no axes_dims_rope in the config; using {:?} for head dim {head_dim} (pass --config with \
             axes_dims_rope if the model was trained otherwise)",
            ck.origin.display(),
            config.axes_dims_rope
        );
    }
    config.validate().map_err(|e| err(e.to_string()))?;
    log::debug!("{}: detected transformer config {config:?}", ck.origin.display());
    Ok(config)
}

/// The head dim: the length of a QK-norm weight, else the config's, else FLUX.2's 128. It
/// must be even and divide the hidden size `d` (the rows of `x_embedder`).
fn head_dim(
    norm: Option<(String, Vec<usize>)>,
    from_config: Option<usize>,
    d: usize,
    x_embedder: &str,
) -> std::result::Result<usize, String> {
    let head_dim = match (&norm, from_config) {
        (Some((_, s)), _) if s.len() == 1 => s[0],
        (Some((n, s)), _) => return Err(format!("tensor '{n}' has shape {s:?}, expected [head_dim]")),
        (None, Some(h)) => h,
        (None, None) => 128,
    };
    if head_dim == 0 || !d.is_multiple_of(head_dim) || !head_dim.is_multiple_of(2) {
        let from = norm.map(|(n, s)| format!(" (from '{n}' {s:?})")).unwrap_or_default();
        return Err(format!(
            "hidden size {d} (rows of '{x_embedder}') is not a multiple of the even head dim {head_dim}{from}"
        ));
    }
    Ok(head_dim)
}

/// The SwiGLU width F: half the rows of a double block's `ff.linear_in` (2F, D), else from a
/// single block's fused projection (3D + 2F, D); 3D when there are no blocks at all.
fn mlp_hidden_dim(
    ff_in: Option<(String, Vec<usize>)>,
    fused: Option<(String, Vec<usize>)>,
    d: usize,
) -> std::result::Result<usize, String> {
    match (ff_in, fused) {
        (Some((_, s)), _) if s.len() == 2 && s[0].is_multiple_of(2) => Ok(s[0] / 2),
        (Some((n, s)), _) => Err(format!("tensor '{n}' has shape {s:?}, expected (2·mlp_hidden, {d})")),
        (None, Some((_, s))) if s.len() == 2 && s[0] > 3 * d && (s[0] - 3 * d).is_multiple_of(2) => {
            Ok((s[0] - 3 * d) / 2)
        }
        (None, Some((n, s))) => {
            Err(format!("tensor '{n}' has shape {s:?}, expected (3·{d} + 2·mlp_hidden, {d})"))
        }
        (None, None) => Ok(3 * d),
    }
}

/// Sorted distinct `i` of tensors named `{prefix}.{i}.…`.
fn block_indices<'a>(names: impl Iterator<Item = &'a String>, prefix: &str) -> Vec<usize> {
    let mut idx: Vec<usize> = names
        .filter_map(|n| n.strip_prefix(prefix)?.strip_prefix('.')?.split('.').next()?.parse().ok())
        .collect();
    idx.sort_unstable();
    idx.dedup();
    idx
}

/// (32,32,32,32) for head dim 128; otherwise the pairs split as evenly as possible over 4 axes.
fn default_axes(head_dim: usize) -> Vec<usize> {
    let pairs = head_dim / 2;
    (0..4).map(|a| 2 * (pairs / 4 + usize::from(a < pairs % 4))).collect()
}

fn num(json: Option<&Value>, keys: &[&str]) -> Option<usize> {
    keys.iter().find_map(|k| json?.get(*k)?.as_u64()).map(|v| v as usize)
}

/// Checks every structural field the config states against the weights (diffusers or BFL
/// field names) and adopts the RoPE axes, theta and eps. Returns whether axes were given.
fn cross_check(config: &mut DitConfig, json: &Value) -> std::result::Result<bool, String> {
    if let Some(class) = json.get("_class_name").and_then(Value::as_str) {
        if class != "Flux2Transformer2DModel" {
            return Err(format!("_class_name = {class}, expected Flux2Transformer2DModel (FLUX.2)"));
        }
    }
    let d = config.inner_dim();
    let checks: [(&[&str], usize, &str); 8] = [
        (&["num_attention_heads", "num_heads"], config.num_attention_heads, "hidden size / QK-norm length"),
        (&["attention_head_dim"], config.attention_head_dim, "QK-norm weight length"),
        (&["num_layers", "depth"], config.num_layers, "double-stream blocks"),
        (&["num_single_layers", "depth_single_blocks"], config.num_single_layers, "single-stream blocks"),
        (&["joint_attention_dim", "context_in_dim"], config.joint_attention_dim, "context_embedder columns"),
        (&["in_channels"], config.in_channels, "x_embedder columns"),
        (&["timestep_guidance_channels"], config.timestep_guidance_channels, "timestep linear_1 columns"),
        (&["hidden_size"], d, "x_embedder rows"),
    ];
    for (keys, detected, what) in checks {
        if let Some(v) = num(Some(json), keys) {
            if v != detected {
                return Err(format!(
                    "{} = {v} in the config, but the weights have {detected} ({what})",
                    keys[0]
                ));
            }
        }
    }
    match json.get("out_channels") {
        Some(Value::Null) | None if config.out_channels != config.in_channels => {
            return Err(format!(
                "out_channels = in_channels = {} in the config, but proj_out has {} rows",
                config.in_channels, config.out_channels
            ))
        }
        Some(v) if v.as_u64().is_some_and(|v| v as usize != config.out_channels) => {
            return Err(format!(
                "out_channels = {v} in the config, but proj_out has {} rows",
                config.out_channels
            ))
        }
        _ => {}
    }
    if let Some(ps) = num(Some(json), &["patch_size"]) {
        if ps != 1 {
            return Err(format!("patch_size = {ps}: only patch size 1 (FLUX.2) is supported"));
        }
    }
    if let Some(r) = json.get("mlp_ratio").and_then(Value::as_f64) {
        // diffusers: mlp_hidden_dim = int(D * mlp_ratio)
        if (d as f64 * r) as usize != config.mlp_hidden_dim {
            return Err(format!(
                "mlp_ratio = {r} in the config gives {} hidden units, but the weights have {}",
                (d as f64 * r) as usize,
                config.mlp_hidden_dim
            ));
        }
    }
    for key in ["guidance_embeds", "guidance_embed"] {
        if let Some(b) = json.get(key).and_then(Value::as_bool) {
            if b != config.guidance_embeds {
                return Err(format!(
                    "{key} = {b} in the config, but the weights {} a guidance embedder",
                    if config.guidance_embeds { "have" } else { "do not have" }
                ));
            }
        }
    }
    if let Some(t) = ["rope_theta", "theta"].iter().find_map(|k| json.get(*k)?.as_f64()) {
        config.rope_theta = t;
    }
    if let Some(e) = json.get("eps").and_then(Value::as_f64) {
        config.eps = e;
    }
    let axes = ["axes_dims_rope", "axes_dim"].iter().find_map(|k| Some((*k, json.get(*k)?)));
    let Some((key, given)) = axes else { return Ok(false) };
    let dims: Option<Vec<usize>> =
        given.as_array().and_then(|a| a.iter().map(|v| v.as_u64().map(|v| v as usize)).collect());
    match dims {
        Some(v) if v.iter().sum::<usize>() == config.attention_head_dim && v.iter().all(|a| a % 2 == 0) => {
            config.axes_dims_rope = v;
            Ok(true)
        }
        _ => Err(format!(
            "{key} = {given} in the config must be even integers summing to the head dim {}",
            config.attention_head_dim
        )),
    }
}

/// `dev`, `klein-4b`, `klein-9b` when the config is exactly a released one, else `custom`.
pub fn variant_name(config: &DitConfig) -> &'static str {
    [("dev", DitConfig::dev()), ("klein-4b", DitConfig::klein_4b()), ("klein-9b", DitConfig::klein_9b())]
        .into_iter()
        .find(|(_, c)| c == config)
        .map_or("custom", |(n, _)| n)
}

/// The transformer graph of a DiT component.
pub fn build(component: &Component, opts: &ExportOptions) -> Result<Vec<BuiltGraph>> {
    let json = opts.config_override.as_ref().or(component.config.as_ref());
    let config = detect(component, json)?;
    let variant = variant_name(&config);
    log::info!(
        "{}: FLUX.2 transformer, variant {variant}, {} parameters",
        component.checkpoint.origin.display(),
        config.parameter_count()
    );
    let model = build_transformer(&config, opts.target, opts.dtype)?;
    let d = config.inner_dim();
    let bfl = component.layout == Layout::Bfl;
    let map = move |name: &str| if bfl { bfl_source(name, d) } else { Source::tensor(name) };
    let mut config_json = serde_json::to_value(&config).unwrap_or_default();
    if let Some(obj) = config_json.as_object_mut() {
        obj.insert("parameters".into(), config.parameter_count().into());
    }
    let mut graphs = vec![BuiltGraph {
        stem: "transformer".into(),
        model,
        map: Box::new(map),
        ignore: vec![],
        config: config_json.clone(),
        variant: Some(variant.to_string()),
        pipeline: vec![("guidance_embeds".into(), config.guidance_embeds.into())],
        shares_weights_of: None,
    }];
    // Step caching runs the DiT as head / body / tail; they reuse the transformer's weights.
    if config.num_layers > 0 {
        for part in DitPart::ALL {
            graphs.push(BuiltGraph {
                stem: part.stem().into(),
                model: build_dit_part(&config, part, opts.target, opts.dtype)?,
                map: Box::new(move |name: &str| if bfl { bfl_source(name, d) } else { Source::tensor(name) }),
                ignore: vec![String::new()],
                config: config_json.clone(),
                variant: None,
                pipeline: vec![],
                shares_weights_of: Some("transformer".into()),
            });
        }
    }
    Ok(graphs)
}
