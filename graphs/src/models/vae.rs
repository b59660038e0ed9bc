//! The FLUX.2 VAE (`AutoencoderKLFlux2`) as two graphs, with the pipeline's latent
//! handling folded in so the DiT side only ever sees 128-channel normalised latents:
//!
//! * encoder: image [B,3,H,W] in [-1,1] -> mode of the latent distribution (first half of
//!   the moments) -> 2×2 patchify -> BatchNorm-statistics normalisation -> [B,4C,H/16,W/16];
//! * decoder: [B,4C,h,w] -> un-normalise -> un-patchify -> post_quant_conv -> decoder ->
//!   raw image [B,3,16h,16w] (not clamped).
//!
//! Source: diffusers 0.42.1 `models/autoencoders/autoencoder_kl_flux2.py`, `vae.py`
//! (Encoder/Decoder), and `pipelines/flux2/pipeline_flux2.py` (`_patchify_latents`,
//! `_unpatchify_latents`, the BN normalisation). Weight names are the diffusers ones.

use serde::{Deserialize, Serialize};

use crate::{shape, DType, Graph, Model, Result, Target, T};

#[path = "vae_blocks.rs"]
mod blocks;

/// VAE hyper-parameters (diffusers config names).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VaeConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub latent_channels: usize,
    pub norm_num_groups: usize,
    pub mid_block_add_attention: bool,
    pub use_quant_conv: bool,
    pub use_post_quant_conv: bool,
    pub batch_norm_eps: f32,
}

impl VaeConfig {
    /// The released FLUX.2 VAE (all variants share it). Source: flux2-arch.md §1.2.
    pub fn flux2() -> VaeConfig {
        VaeConfig {
            in_channels: 3,
            out_channels: 3,
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            latent_channels: 32,
            norm_num_groups: 32,
            mid_block_add_attention: true,
            use_quant_conv: true,
            use_post_quant_conv: true,
            batch_norm_eps: 1e-4,
        }
    }

    /// Channels of the patchified latent the DiT sees.
    pub fn patched_channels(&self) -> usize {
        self.latent_channels * 4
    }
}

/// GroupNorm / resnet epsilon of the diffusers Encoder and Decoder.
pub(crate) const GN_EPS: f32 = 1e-6;

fn dim_ranges(g: &Graph, pixels: bool) {
    g.dim_range("B", 1, 1, 4);
    if pixels {
        g.dim_range("H", 64, 1024, 2048);
        g.dim_range("W", 64, 1024, 2048);
    } else {
        g.dim_range("h", 4, 64, 128);
        g.dim_range("w", 4, 64, 128);
    }
}

/// `vae_encoder.onnx`: `image` [B,3,H,W] -> `latents` [B,4C,H/16,W/16].
pub fn build_encoder(config: &VaeConfig, target: Target, dtype: DType) -> Result<Model> {
    let g = Graph::new(target, dtype);
    let image = g.input("image", dtype, shape!["B", config.in_channels, "H", "W"])?;
    dim_ranges(&g, true);
    let moments = blocks::encoder(&g, config, image)?; // [B, 2C, H/8, W/8]
    let mode = g.slice(moments, 1, 0, config.latent_channels as i64)?; // mean half
    let patched = patchify(&g, mode, config.latent_channels)?; // [B, 4C, H/16, W/16]
    let latents = bn_normalize(&g, patched, config)?;
    g.relabel(latents, shape!["B", config.patched_channels(), "H/16", "W/16"])?;
    g.output(latents, "latents")?;
    g.metadata("flux2.component", "vae_encoder");
    g.finish("vae_encoder")
}

/// `vae_decoder.onnx`: `latents` [B,4C,h,w] -> `image` [B,3,16h,16w] (raw, unclamped).
pub fn build_decoder(config: &VaeConfig, target: Target, dtype: DType) -> Result<Model> {
    let g = Graph::new(target, dtype);
    let latents = g.input("latents", dtype, shape!["B", config.patched_channels(), "h", "w"])?;
    dim_ranges(&g, false);
    let z = bn_denormalize(&g, latents, config)?;
    let z = g.depth_to_space_crd(z, 2)?; // unpatchify: [B, C, 2h, 2w]
    let image = blocks::decoder(&g, config, z)?;
    g.relabel(image, shape!["B", config.out_channels, "16*h", "16*w"])?;
    g.output(image, "image")?;
    g.metadata("flux2.component", "vae_decoder");
    g.finish("vae_decoder")
}

/// 2×2 patchify with channel `c·4 + i·2 + j` (diffusers `_patchify_latents`).
fn patchify(g: &Graph, x: T, channels: usize) -> Result<T> {
    let s2d = g.space_to_depth(x, 2)?; // channel (i·2 + j)·C + c
    let perm: Vec<i64> = (0..4 * channels).map(|k| ((k % 4) * channels + k / 4) as i64).collect();
    g.gather(s2d, g.ints(&perm), 1)
}

/// Per-channel BN statistics as [1, 4C, 1, 1] tensors: (mean, sqrt(var + eps)).
fn bn_stats(g: &Graph, config: &VaeConfig) -> Result<(T, T)> {
    let n = config.patched_channels();
    let mean = g.reshape(g.weight("bn.running_mean", &[n])?, &[1, n as i64, 1, 1])?;
    let var = g.reshape(g.weight("bn.running_var", &[n])?, &[1, n as i64, 1, 1])?;
    let std = g.sqrt(g.add(var, g.scalar(config.batch_norm_eps))?);
    Ok((mean, std))
}

/// `(z − mean) / sqrt(var + eps)`.
fn bn_normalize(g: &Graph, z: T, config: &VaeConfig) -> Result<T> {
    let (mean, std) = bn_stats(g, config)?;
    g.div(g.sub(z, mean)?, std)
}

/// `z · sqrt(var + eps) + mean`.
fn bn_denormalize(g: &Graph, z: T, config: &VaeConfig) -> Result<T> {
    let (mean, std) = bn_stats(g, config)?;
    g.add(g.mul(z, std)?, mean)
}
