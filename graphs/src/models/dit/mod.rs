//! The FLUX.2 diffusion transformer (diffusers `Flux2Transformer2DModel`, BFL `Flux2`) as
//! one graph: `velocity = DiT(hidden_states, encoder_hidden_states, timestep[, guidance],
//! img_ids, txt_ids)`.
//!
//! Reference: diffusers 0.42.1 `models/transformers/transformer_flux2.py`
//! (<https://github.com/huggingface/diffusers/blob/v0.42.1/src/diffusers/models/transformers/transformer_flux2.py>),
//! design doc `flux2-arch.md` §2. Weight names are the diffusers names; the exporter maps
//! BFL checkpoints onto them.
//!
//! * `embed`: sinusoidal timestep / guidance embeddings, their MLPs, and the modulation
//!   vectors shared by every double-stream and every single-stream block;
//! * `rope`: the 4-axis rotary tables, computed in the graph from the integer position ids
//!   (float64 angles for ONNX Runtime as diffusers does; float32 for TensorRT, which has no
//!   double);
//! * `blocks`: double-stream blocks (joint attention over `[text; image]`) and
//!   single-stream blocks (fused QKV + SwiGLU projection);
//! * `parts`: the same network as three graphs (head / body / tail) for step caching.
//!
//! The graph's float inputs and weights are in the graph dtype; `timestep` is σ ∈ [0, 1]
//! exactly as diffusers passes it (the graph multiplies by 1000). B, S and L are dynamic.

mod blocks;
mod embed;
mod parts;
mod rope;

use serde::{Deserialize, Serialize};

use crate::{shape, DType, Graph, GraphError, Model, Result, Target, T};

pub use blocks::{double_block, single_block};
pub use embed::{modulate, Mod, Modulations};
pub use parts::{build_dit_part, DitPart};
pub use rope::{pair_frequencies, rope_tables, Rope};

/// Shape of a FLUX.2 DiT. Field names follow the diffusers `config.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DitConfig {
    /// Latent channels per token (128).
    pub in_channels: usize,
    /// Output channels per token (128).
    pub out_channels: usize,
    /// Double-stream blocks.
    pub num_layers: usize,
    /// Single-stream blocks.
    pub num_single_layers: usize,
    pub attention_head_dim: usize,
    pub num_attention_heads: usize,
    /// Width of the text features (`context_in_dim` in BFL).
    pub joint_attention_dim: usize,
    /// Channels of the sinusoidal timestep / guidance embedding (256).
    pub timestep_guidance_channels: usize,
    /// SwiGLU hidden width F (diffusers: `int(D · mlp_ratio)`).
    pub mlp_hidden_dim: usize,
    /// RoPE width per position axis (sums to the head dim).
    pub axes_dims_rope: Vec<usize>,
    pub rope_theta: f64,
    /// LayerNorm and QK-RMSNorm epsilon.
    pub eps: f64,
    /// Whether the model has a guidance embedder (dev) or not (klein).
    pub guidance_embeds: bool,
}

impl DitConfig {
    /// FLUX.2 [dev]: BFL `Flux2Params` defaults
    /// (<https://github.com/black-forest-labs/flux2/blob/ab7cca6/src/flux2/model.py>).
    pub fn dev() -> DitConfig {
        DitConfig::preset(48, 8, 48, 15360, true)
    }

    /// FLUX.2 [klein] 4B (and base-4B): `klein-4b` in diffusers
    /// `scripts/convert_flux2_to_diffusers.py`
    /// (<https://github.com/huggingface/diffusers/blob/v0.42.1/scripts/convert_flux2_to_diffusers.py>).
    pub fn klein_4b() -> DitConfig {
        DitConfig::preset(24, 5, 20, 7680, false)
    }

    /// FLUX.2 [klein] 9B (and base-9B, 9B-KV): `klein-9b` in the same script.
    pub fn klein_9b() -> DitConfig {
        DitConfig::preset(32, 8, 24, 12288, false)
    }

    fn preset(heads: usize, layers: usize, single: usize, ctx: usize, guidance: bool) -> DitConfig {
        DitConfig {
            in_channels: 128,
            out_channels: 128,
            num_layers: layers,
            num_single_layers: single,
            attention_head_dim: 128,
            num_attention_heads: heads,
            joint_attention_dim: ctx,
            timestep_guidance_channels: 256,
            mlp_hidden_dim: 3 * heads * 128,
            axes_dims_rope: vec![32, 32, 32, 32],
            rope_theta: 2000.0,
            eps: 1e-6,
            guidance_embeds: guidance,
        }
    }

    /// Hidden size D = heads · head_dim.
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// Checks the invariants the graph relies on.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(GraphError::Config(msg));
        let dh = self.attention_head_dim;
        if dh == 0 || !dh.is_multiple_of(2) || self.num_attention_heads == 0 {
            return bad(format!(
                "attention_head_dim {dh} must be even and heads ({}) > 0",
                self.num_attention_heads
            ));
        }
        if self.axes_dims_rope.is_empty() || self.axes_dims_rope.iter().any(|a| a % 2 != 0) {
            return bad(format!("axes_dims_rope {:?} must be non-empty and even", self.axes_dims_rope));
        }
        if self.axes_dims_rope.iter().sum::<usize>() != dh {
            return bad(format!(
                "axes_dims_rope {:?} sums to {}, not the head dim {dh}",
                self.axes_dims_rope,
                self.axes_dims_rope.iter().sum::<usize>()
            ));
        }
        if self.timestep_guidance_channels == 0 || !self.timestep_guidance_channels.is_multiple_of(2) {
            return bad(format!(
                "timestep_guidance_channels {} must be even",
                self.timestep_guidance_channels
            ));
        }
        if self.in_channels == 0 || self.out_channels == 0 || self.joint_attention_dim == 0 {
            return bad("in_channels, out_channels and joint_attention_dim must be > 0".into());
        }
        if self.mlp_hidden_dim == 0 && self.num_layers + self.num_single_layers > 0 {
            return bad("mlp_hidden_dim must be > 0".into());
        }
        if !(self.rope_theta > 0.0 && self.eps >= 0.0) {
            return bad(format!("rope_theta {} / eps {} out of range", self.rope_theta, self.eps));
        }
        Ok(())
    }

    /// Number of parameters (elements of all weights).
    pub fn parameter_count(&self) -> u64 {
        let (d, f, dh) =
            (self.inner_dim() as u64, self.mlp_hidden_dim as u64, self.attention_head_dim as u64);
        let mlp = |cin: u64| d * cin + d * d; // TimestepEmbedding: linear_1, linear_2
        let embed = mlp(self.timestep_guidance_channels as u64) * if self.guidance_embeds { 2 } else { 1 }
            + d * self.in_channels as u64
            + d * self.joint_attention_dim as u64;
        let modulation = (6 + 6 + 3) * d * d;
        let double = 8 * d * d + 4 * dh + 2 * 3 * f * d; // q k v out ×2 streams, QK norms, 2 FFs
        let single = (3 * d + 2 * f) * d + d * (d + f) + 2 * dh;
        let last = 2 * d * d + self.out_channels as u64 * d;
        embed + modulation + self.num_layers as u64 * double + self.num_single_layers as u64 * single + last
    }
}

/// Builds the transformer graph for `target` with weights and activations in `dtype`.
pub fn build_transformer(config: &DitConfig, target: Target, dtype: DType) -> Result<Model> {
    config.validate()?;
    let g = Graph::new(target, dtype);
    let velocity = transformer(&g, config)?;
    g.output(velocity, "velocity")?;
    g.metadata("flux2.component", "transformer");
    g.finish("flux2_transformer")
}

/// Declares the inputs and wires the whole forward pass; returns the velocity [B, S, C].
pub fn transformer(g: &Graph, config: &DitConfig) -> Result<T> {
    let d = config.inner_dim();
    let n_axes = config.axes_dims_rope.len();
    let x = g.input("hidden_states", g.dtype, shape!["B", "S", config.in_channels])?;
    let c = g.input("encoder_hidden_states", g.dtype, shape!["B", "L", config.joint_attention_dim])?;
    let timestep = g.input("timestep", g.dtype, shape!["B"])?;
    let guidance =
        if config.guidance_embeds { Some(g.input("guidance", g.dtype, shape!["B"])?) } else { None };
    let img_ids = g.input("img_ids", DType::I64, shape!["B", "S", n_axes])?;
    let txt_ids = g.input("txt_ids", DType::I64, shape!["B", "L", n_axes])?;
    // Batch: CFG pairs; S: 1024² noisy tokens plus up to four 1024² references; L: 512 text tokens.
    g.dim_range("B", 1, 1, 4);
    g.dim_range("S", 1, 4096, 4096 + 4 * 4096);
    g.dim_range("L", 1, 512, 512);

    let temb = embed::time_guidance_embed(g, config, timestep, guidance)?; // [B, D]
    let mods = Modulations::new(g, config, temb)?;
    let pe = rope_tables(g, config, txt_ids, img_ids)?; // [L+S, Dh/2] each

    let mut img = g.linear(x, "x_embedder", config.in_channels, d, false)?; // [B, S, D]
    let mut txt = g.linear(c, "context_embedder", config.joint_attention_dim, d, false)?; // [B, L, D]
    for i in 0..config.num_layers {
        let _s = g.scope(format!("transformer_blocks.{i}"));
        (txt, img) = double_block(g, config, img, txt, &pe, &mods)?;
    }
    let text_len = g.gather(g.shape(txt), g.ints(&[1]), 0)?; // [1] = L
    let mut z = g.concat(&[txt, img], 1)?; // [B, L+S, D]
    for i in 0..config.num_single_layers {
        let _s = g.scope(format!("single_transformer_blocks.{i}"));
        z = single_block(g, config, z, &pe, &mods.single)?;
    }
    let end = g.ints(&[i64::MAX]);
    let img = g.slice_dyn(z, 1, text_len, end, "S".into())?; // [B, S, D]: drop the text tokens

    final_layer(g, config, img, mods.silu_temb)
}

/// `proj_out(LN(h)·(1 + scale) + shift)` with `[scale | shift] = norm_out.linear(SiLU(temb))`:
/// `AdaLayerNormContinuous` chunks (scale, shift), the reverse of the blocks' order.
fn final_layer(g: &Graph, config: &DitConfig, img: T, silu_temb: T) -> Result<T> {
    let d = config.inner_dim();
    let emb = g.linear(silu_temb, "norm_out.linear", d, 2 * d, false)?; // [B, 2D]
    let emb = g.unsqueeze(emb, &[1])?; // [B, 1, 2D]
    let parts = g.split(emb, -1, &[d as i64, d as i64])?;
    let scale1 = g.add(g.scalar(1.0), parts[0])?;
    let y = modulate(g, g.layer_norm(img, config.eps as f32)?, parts[1], scale1)?;
    g.linear(y, "proj_out", d, config.out_channels, false)
}
