//! The DiT cut into three graphs for step caching: a runtime that decides, after the first
//! block, to reuse the rest of the network from an earlier step needs to stop there, which a
//! monolithic graph cannot do.
//!
//! * `dit_embed`: only the image embedder and the first block's modulated image input
//!   (`modulated`, TeaCache's signal); cheap, for policies that decide before any block.
//! * `dit_head`: embedders and the first double-stream block. Outputs the image stream
//!   before the blocks (`img_in`, what residuals are measured against) and both streams after
//!   block 0 (`img`, `txt`).
//! * `dit_body`: the remaining double blocks and every single block; outputs the image tokens
//!   after the last block (`img_out`), before the final norm.
//! * `dit_tail`: `velocity = proj_out(norm_out(x_embedder(hidden_states) + residual))`: the
//!   image stream is given as a residual over the embedded input, so a step that reuses an
//!   earlier step's residual needs only this small graph (no block).
//!
//! Each part recomputes the cheap pieces it needs (timestep embedding, modulations, RoPE
//! tables) from `timestep` (and `guidance`) and the ids, with exactly the ops of the
//! monolithic graph, so head → body → tail gives the monolithic velocity. Weight names are the
//! monolithic graph's, so an export can point every part at the same weight files.

use super::{blocks, embed, final_layer, modulate, rope_tables, DitConfig, Modulations};
use crate::{shape, DType, Graph, GraphError, Model, Result, Target, T};

/// One of the three parts.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum DitPart {
    Embed,
    Head,
    Body,
    Tail,
}

impl DitPart {
    pub const ALL: [DitPart; 4] = [DitPart::Embed, DitPart::Head, DitPart::Body, DitPart::Tail];

    /// File stem and manifest key (`dit_head`, `dit_body`, `dit_tail`).
    pub fn stem(self) -> &'static str {
        match self {
            DitPart::Embed => "dit_embed",
            DitPart::Head => "dit_head",
            DitPart::Body => "dit_body",
            DitPart::Tail => "dit_tail",
        }
    }
}

/// Builds one part for `target` in `dtype`. The config needs at least one double block.
pub fn build_dit_part(config: &DitConfig, part: DitPart, target: Target, dtype: DType) -> Result<Model> {
    config.validate()?;
    if config.num_layers == 0 {
        return Err(GraphError::Config("the DiT parts need at least one double-stream block".into()));
    }
    let g = Graph::new(target, dtype);
    match part {
        DitPart::Embed => embed_part(&g, config)?,
        DitPart::Head => head(&g, config)?,
        DitPart::Body => body(&g, config)?,
        DitPart::Tail => tail(&g, config)?,
    }
    g.metadata("flux2.component", "transformer");
    g.metadata("flux2.dit_part", part.stem());
    g.finish(&format!("flux2_{}", part.stem()))
}

/// `timestep` [B] (and `guidance` [B] for dev) → temb [B, D].
fn temb(g: &Graph, config: &DitConfig) -> Result<T> {
    let timestep = g.input("timestep", g.dtype, shape!["B"])?;
    let guidance =
        if config.guidance_embeds { Some(g.input("guidance", g.dtype, shape!["B"])?) } else { None };
    embed::time_guidance_embed(g, config, timestep, guidance)
}

/// `img_ids` [B, S, n] and `txt_ids` [B, L, n] (int64).
fn ids(g: &Graph, config: &DitConfig) -> Result<(T, T)> {
    let n_axes = config.axes_dims_rope.len();
    let img_ids = g.input("img_ids", DType::I64, shape!["B", "S", n_axes])?;
    let txt_ids = g.input("txt_ids", DType::I64, shape!["B", "L", n_axes])?;
    Ok((img_ids, txt_ids))
}

/// The monolithic graph's axis ranges (TensorRT profiles).
fn ranges(g: &Graph) {
    g.dim_range("B", 1, 1, 4);
    g.dim_range("S", 1, 4096, 4096 + 4 * 4096);
    g.dim_range("L", 1, 512, 512);
}

/// `modulated = LN(x_embedder(x))·(1 + scale) + shift` with block 0's first image modulation.
fn embed_part(g: &Graph, config: &DitConfig) -> Result<()> {
    let x = g.input("hidden_states", g.dtype, shape!["B", "S", config.in_channels])?;
    let temb = temb(g, config)?;
    ranges(g);
    let mods = Modulations::new(g, config, temb)?;
    let img_in = g.linear(x, "x_embedder", config.in_channels, config.inner_dim(), false)?;
    let m = mods.img[0];
    let modulated = modulate(g, g.layer_norm(img_in, config.eps as f32)?, m.shift, m.scale1)?;
    g.output(modulated, "modulated")
}

fn head(g: &Graph, config: &DitConfig) -> Result<()> {
    let d = config.inner_dim();
    let x = g.input("hidden_states", g.dtype, shape!["B", "S", config.in_channels])?;
    let c = g.input("encoder_hidden_states", g.dtype, shape!["B", "L", config.joint_attention_dim])?;
    let temb = temb(g, config)?;
    let (img_ids, txt_ids) = ids(g, config)?;
    ranges(g);
    let mods = Modulations::new(g, config, temb)?;
    let pe = rope_tables(g, config, txt_ids, img_ids)?;
    let img_in = g.linear(x, "x_embedder", config.in_channels, d, false)?;
    let txt_in = g.linear(c, "context_embedder", config.joint_attention_dim, d, false)?;
    let (txt, img) = {
        let _s = g.scope("transformer_blocks.0");
        blocks::double_block(g, config, img_in, txt_in, &pe, &mods)?
    };
    g.output(img_in, "img_in")?;
    g.output(img, "img")?;
    g.output(txt, "txt")
}

fn body(g: &Graph, config: &DitConfig) -> Result<()> {
    let d = config.inner_dim();
    let mut img = g.input("img", g.dtype, shape!["B", "S", d])?;
    let mut txt = g.input("txt", g.dtype, shape!["B", "L", d])?;
    let temb = temb(g, config)?;
    let (img_ids, txt_ids) = ids(g, config)?;
    ranges(g);
    let mods = Modulations::new(g, config, temb)?;
    let pe = rope_tables(g, config, txt_ids, img_ids)?;
    for i in 1..config.num_layers {
        let _s = g.scope(format!("transformer_blocks.{i}"));
        (txt, img) = blocks::double_block(g, config, img, txt, &pe, &mods)?;
    }
    let img_out = if config.num_single_layers == 0 {
        g.identity(img)
    } else {
        let text_len = g.gather(g.shape(txt), g.ints(&[1]), 0)?; // [1] = L
        let mut z = g.concat(&[txt, img], 1)?;
        for i in 0..config.num_single_layers {
            let _s = g.scope(format!("single_transformer_blocks.{i}"));
            z = blocks::single_block(g, config, z, &pe, &mods.single)?;
        }
        g.slice_dyn(z, 1, text_len, g.ints(&[i64::MAX]), "S".into())?
    };
    g.output(img_out, "img_out")
}

fn tail(g: &Graph, config: &DitConfig) -> Result<()> {
    let d = config.inner_dim();
    let x = g.input("hidden_states", g.dtype, shape!["B", "S", config.in_channels])?;
    let residual = g.input("residual", g.dtype, shape!["B", "S", d])?;
    let temb = temb(g, config)?;
    ranges(g);
    let img_in = g.linear(x, "x_embedder", config.in_channels, d, false)?;
    let img = g.add(img_in, residual)?;
    let v = final_layer(g, config, img, g.silu(temb)?)?;
    g.output(v, "velocity")
}
