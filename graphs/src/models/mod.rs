//! The FLUX.2 model graphs: VAE, diffusion transformer, text encoders. Each takes a
//! config struct (detected by the exporter from the weights) and a [`crate::Graph`].

pub mod dit;
pub mod text;
pub mod vae;
