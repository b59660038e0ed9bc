//! VAE export: config detection (names + shapes, cross-checked with `config.json`), the
//! BFL `ae.safetensors` name map, and the encoder / decoder graphs.
//!
//! GroupNorm's group count cannot be read from weights: it comes from `config.json` or
//! `--config`, else the released model's 32 (which must divide every width).

use flux2_graphs::models::vae::{build_decoder, build_encoder, VaeConfig};

use super::{BuiltGraph, ExportOptions};
use crate::layout::{Component, Layout};
use crate::names::Source;
use crate::{ExportError, Result};

/// Reads the VAE config from the component's tensors, then checks it against any config JSON.
pub fn detect(component: &Component, config_json: Option<&serde_json::Value>) -> Result<VaeConfig> {
    let ck = &component.checkpoint;
    let bfl = component.layout == Layout::Bfl;
    let err = |msg: String| ExportError::Config { path: ck.origin.clone(), msg };
    let shape = |name: &str| ck.get(name).map(|t| t.shape().to_vec());
    let need = |name: &str| {
        shape(name).ok_or_else(|| err(format!("missing tensor '{name}' needed to detect the VAE config")))
    };
    let down = |i: usize, j: usize| {
        if bfl {
            format!("encoder.down.{i}.block.{j}.conv1.weight")
        } else {
            format!("encoder.down_blocks.{i}.resnets.{j}.conv1.weight")
        }
    };
    let mut boc = Vec::new();
    while let Some(s) = shape(&down(boc.len(), 0)) {
        boc.push(s[0]);
    }
    if boc.is_empty() {
        return Err(err(format!("no encoder blocks found (looked for '{}')", down(0, 0))));
    }
    let mut layers = 0;
    while shape(&down(0, layers)).is_some() {
        layers += 1;
    }
    let conv_in = need("encoder.conv_in.weight")?;
    let dec_in = need("decoder.conv_in.weight")?;
    let conv_out = need("decoder.conv_out.weight")?;
    let (qc, pqc) = if bfl {
        ("encoder.quant_conv.weight", "decoder.post_quant_conv.weight")
    } else {
        ("quant_conv.weight", "post_quant_conv.weight")
    };
    let attn = if bfl { "encoder.mid.attn_1.q.weight" } else { "encoder.mid_block.attentions.0.to_q.weight" };
    let mut config = VaeConfig {
        in_channels: conv_in[1],
        out_channels: conv_out[0],
        block_out_channels: boc,
        layers_per_block: layers,
        latent_channels: dec_in[1],
        norm_num_groups: 32,
        mid_block_add_attention: shape(attn).is_some(),
        use_quant_conv: shape(qc).is_some(),
        use_post_quant_conv: shape(pqc).is_some(),
        batch_norm_eps: 1e-4,
    };
    match config_json {
        Some(json) => cross_check(&mut config, json).map_err(err)?,
        None => {
            if config.block_out_channels.iter().any(|c| c % 32 != 0) {
                return Err(err(format!(
                    "no config.json: cannot tell the GroupNorm group count for widths {:?} (the released 32 does \
                     not divide them); pass --config with norm_num_groups",
                    config.block_out_channels
                )));
            }
        }
    }
    Ok(config)
}

fn cross_check(config: &mut VaeConfig, json: &serde_json::Value) -> std::result::Result<(), String> {
    let num = |k: &str| json.get(k).and_then(|v| v.as_u64()).map(|v| v as usize);
    for (key, detected) in [
        ("in_channels", config.in_channels),
        ("out_channels", config.out_channels),
        ("layers_per_block", config.layers_per_block),
        ("latent_channels", config.latent_channels),
    ] {
        if let Some(v) = num(key) {
            if v != detected {
                return Err(format!("config.json says {key} = {v} but the weights say {detected}"));
            }
        }
    }
    if let Some(arr) = json.get("block_out_channels").and_then(|v| v.as_array()) {
        let v: Vec<usize> = arr.iter().filter_map(|x| x.as_u64().map(|x| x as usize)).collect();
        if v != config.block_out_channels {
            return Err(format!(
                "config.json says block_out_channels = {v:?} but the weights say {:?}",
                config.block_out_channels
            ));
        }
    }
    if let Some(g) = num("norm_num_groups") {
        config.norm_num_groups = g;
    }
    if let Some(e) = json.get("batch_norm_eps").and_then(|v| v.as_f64()) {
        config.batch_norm_eps = e as f32;
    }
    if config.block_out_channels.iter().any(|c| c % config.norm_num_groups != 0) {
        return Err(format!(
            "norm_num_groups = {} does not divide block_out_channels {:?}",
            config.norm_num_groups, config.block_out_channels
        ));
    }
    Ok(())
}

fn res(p: &str) -> &str {
    if p == "conv_shortcut" {
        "nin_shortcut"
    } else {
        p
    }
}

/// The BFL name of a diffusers VAE weight (`ae.safetensors`, flux2-arch.md §4.6).
pub fn bfl_name(name: &str, num_blocks: usize) -> Source {
    let parts: Vec<&str> = name.split('.').collect();
    let join = |v: &[&str]| v.join(".");
    let src = match parts.as_slice() {
        ["quant_conv", rest @ ..] => format!("encoder.quant_conv.{}", join(rest)),
        ["post_quant_conv", rest @ ..] => format!("decoder.post_quant_conv.{}", join(rest)),
        [side, "conv_norm_out", rest @ ..] => format!("{side}.norm_out.{}", join(rest)),
        ["encoder", "down_blocks", i, "resnets", j, p, rest @ ..] => {
            format!("encoder.down.{i}.block.{j}.{}.{}", res(p), join(rest))
        }
        ["encoder", "down_blocks", i, "downsamplers", "0", rest @ ..] => {
            format!("encoder.down.{i}.downsample.{}", join(rest))
        }
        ["decoder", "up_blocks", k, "resnets", j, p, rest @ ..] => {
            let i = num_blocks - 1 - k.parse::<usize>().unwrap_or(0);
            format!("decoder.up.{i}.block.{j}.{}.{}", res(p), join(rest))
        }
        ["decoder", "up_blocks", k, "upsamplers", "0", rest @ ..] => {
            let i = num_blocks - 1 - k.parse::<usize>().unwrap_or(0);
            format!("decoder.up.{i}.upsample.{}", join(rest))
        }
        [side, "mid_block", "resnets", r, rest @ ..] => {
            let b = if *r == "0" { "block_1" } else { "block_2" };
            format!("{side}.mid.{b}.{}", join(rest))
        }
        [side, "mid_block", "attentions", "0", "group_norm", rest @ ..] => {
            format!("{side}.mid.attn_1.norm.{}", join(rest))
        }
        [side, "mid_block", "attentions", "0", proj, kind] => {
            let p = match *proj {
                "to_q" => "q",
                "to_k" => "k",
                "to_v" => "v",
                _ => "proj_out",
            };
            let n = format!("{side}.mid.attn_1.{p}.{kind}");
            return if *kind == "weight" { Source::Reshaped(n) } else { Source::Tensor(n) };
        }
        [side, "mid_block", "attentions", "0", "to_out", "0", kind] => {
            let n = format!("{side}.mid.attn_1.proj_out.{kind}");
            return if *kind == "weight" { Source::Reshaped(n) } else { Source::Tensor(n) };
        }
        _ => name.to_string(),
    };
    Source::Tensor(src)
}

/// Encoder and decoder graphs of a VAE component.
pub fn build(component: &Component, opts: &ExportOptions) -> Result<Vec<BuiltGraph>> {
    let json = opts.config_override.as_ref().or(component.config.as_ref());
    let config = detect(component, json)?;
    let config_json = serde_json::to_value(&config).unwrap_or_default();
    let n = config.block_out_channels.len();
    let bfl = component.layout == Layout::Bfl;
    let map = move |name: &str| if bfl { bfl_name(name, n) } else { Source::Tensor(name.to_string()) };
    let enc = build_encoder(&config, opts.target, opts.dtype)?;
    let dec = build_decoder(&config, opts.target, opts.dtype)?;
    let mk = |stem: &str, model, ignore: &[&str]| BuiltGraph {
        stem: stem.into(),
        model,
        map: Box::new(map),
        ignore: ignore.iter().map(|s| s.to_string()).collect(),
        config: config_json.clone(),
        variant: None,
        pipeline: vec![],
        shares_weights_of: None,
    };
    Ok(vec![
        mk("vae_encoder", enc, &["decoder.", "post_quant_conv.", "bn.num_batches_tracked"]),
        mk("vae_decoder", dec, &["encoder.", "quant_conv.", "bn.num_batches_tracked"]),
    ])
}
