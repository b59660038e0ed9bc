//! VAE building blocks: ResNet blocks, the single-head mid-block attention, down/up
//! sampling, and the encoder / decoder stacks (diffusers `Encoder` / `Decoder`).

use super::{VaeConfig, GN_EPS};
use crate::{Graph, Result, T};

/// `x + conv2(silu(gn2(conv1(silu(gn1(x))))))`, through a 1×1 `conv_shortcut` when the width changes.
fn resnet(g: &Graph, cfg: &VaeConfig, x: T, cin: usize, cout: usize) -> Result<T> {
    let groups = cfg.norm_num_groups;
    let h = g.silu(g.group_norm(x, "norm1", groups, cin, GN_EPS)?)?;
    let h = g.conv2d(h, "conv1", (cin, cout), 3, 1, 1)?;
    let h = g.silu(g.group_norm(h, "norm2", groups, cout, GN_EPS)?)?;
    let h = g.conv2d(h, "conv2", (cout, cout), 3, 1, 1)?;
    let skip = if cin != cout { g.conv2d(x, "conv_shortcut", (cin, cout), 1, 1, 0)? } else { x };
    g.add(skip, h)
}

/// `x + to_out(softmax(q kᵀ / √C) v)` over all H·W positions, one head of width C.
fn mid_attention(g: &Graph, cfg: &VaeConfig, x: T, c: usize) -> Result<T> {
    let h = g.group_norm(x, "group_norm", cfg.norm_num_groups, c, GN_EPS)?;
    let h = g.reshape(h, &[0, c as i64, -1])?; // [B, C, HW]
    let h = g.transpose(h, &[0, 2, 1])?; // [B, HW, C]
    let heads = |name: &str| -> Result<T> {
        let p = g.linear(h, name, c, c, true)?;
        g.unsqueeze(p, &[1]) // [B, 1, HW, C]
    };
    let (q, k, v) = (heads("to_q")?, heads("to_k")?, heads("to_v")?);
    let a = g.attention(q, k, v, None, 1.0 / (c as f32).sqrt())?;
    let a = g.squeeze(a, &[1])?; // [B, HW, C]
    let o = g.linear(a, "to_out.0", c, c, true)?;
    let o = g.transpose(o, &[0, 2, 1])?; // [B, C, HW]
    let o = g.reshape_like(o, x)?; // [B, C, H, W]
    g.add(o, x)
}

/// ResNet, attention (optional), ResNet at the bottleneck width.
fn mid_block(g: &Graph, cfg: &VaeConfig, x: T, c: usize) -> Result<T> {
    let _m = g.scope("mid_block");
    let x = {
        let _s = g.scope("resnets.0");
        resnet(g, cfg, x, c, c)?
    };
    let x = if cfg.mid_block_add_attention {
        let _s = g.scope("attentions.0");
        mid_attention(g, cfg, x, c)?
    } else {
        x
    };
    let _s = g.scope("resnets.1");
    resnet(g, cfg, x, c, c)
}

/// Zero-pad right/bottom by one, then a stride-2 3×3 conv (halves H and W).
fn downsample(g: &Graph, x: T, c: usize) -> Result<T> {
    let _s = g.scope("downsamplers.0");
    let p = g.pad2d(x, 0, 1, 0, 1)?;
    g.conv2d(p, "conv", (c, c), 3, 2, 0)
}

/// Nearest ×2, then a 3×3 conv.
fn upsample(g: &Graph, x: T, c: usize) -> Result<T> {
    let _s = g.scope("upsamplers.0");
    let u = g.upsample_nearest2x(x)?;
    g.conv2d(u, "conv", (c, c), 3, 1, 1)
}

/// Image [B,3,H,W] -> moments [B, 2·latent, H/8, W/8] (after `quant_conv` when present).
pub(super) fn encoder(g: &Graph, cfg: &VaeConfig, image: T) -> Result<T> {
    let boc = &cfg.block_out_channels;
    let moments = {
        let _e = g.scope("encoder");
        let mut x = g.conv2d(image, "conv_in", (cfg.in_channels, boc[0]), 3, 1, 1)?;
        let mut cin = boc[0];
        for (i, &cout) in boc.iter().enumerate() {
            let _b = g.scope(format!("down_blocks.{i}"));
            for j in 0..cfg.layers_per_block {
                let _r = g.scope(format!("resnets.{j}"));
                x = resnet(g, cfg, x, cin, cout)?;
                cin = cout;
            }
            if i + 1 < boc.len() {
                x = downsample(g, x, cout)?;
            }
        }
        let c = cin;
        x = mid_block(g, cfg, x, c)?;
        let x = g.silu(g.group_norm(x, "conv_norm_out", cfg.norm_num_groups, c, GN_EPS)?)?;
        g.conv2d(x, "conv_out", (c, 2 * cfg.latent_channels), 3, 1, 1)?
    };
    if cfg.use_quant_conv {
        let n = 2 * cfg.latent_channels;
        g.conv2d(moments, "quant_conv", (n, n), 1, 1, 0)
    } else {
        Ok(moments)
    }
}

/// Latent [B, latent, h, w] -> image [B, 3, 8h, 8w].
pub(super) fn decoder(g: &Graph, cfg: &VaeConfig, z: T) -> Result<T> {
    let lc = cfg.latent_channels;
    let z = if cfg.use_post_quant_conv { g.conv2d(z, "post_quant_conv", (lc, lc), 1, 1, 0)? } else { z };
    let _d = g.scope("decoder");
    let rev: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
    let mut x = g.conv2d(z, "conv_in", (lc, rev[0]), 3, 1, 1)?;
    x = mid_block(g, cfg, x, rev[0])?;
    let mut cin = rev[0];
    for (i, &cout) in rev.iter().enumerate() {
        let _b = g.scope(format!("up_blocks.{i}"));
        for j in 0..cfg.layers_per_block + 1 {
            let _r = g.scope(format!("resnets.{j}"));
            x = resnet(g, cfg, x, cin, cout)?;
            cin = cout;
        }
        if i + 1 < rev.len() {
            x = upsample(g, x, cout)?;
        }
    }
    let x = g.silu(g.group_norm(x, "conv_norm_out", cfg.norm_num_groups, cin, GN_EPS)?)?;
    g.conv2d(x, "conv_out", (cin, cfg.out_channels), 3, 1, 1)
}
