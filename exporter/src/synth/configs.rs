//! The JSON configs of the synthetic checkpoint, field for field as diffusers 0.42.1 and
//! transformers 5.23.0 `save_pretrained` write them for FLUX.2 [klein].

use flux2_graphs::models::dit::DitConfig;
use flux2_graphs::models::text::TextConfig;
use flux2_graphs::models::vae::VaeConfig;
use serde_json::{json, Value};

/// `model_index.json` of a distilled [klein] pipeline.
pub fn model_index() -> Value {
    json!({
        "_class_name": "Flux2KleinPipeline",
        "_diffusers_version": "0.42.1",
        "is_distilled": true,
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "Qwen3ForCausalLM"],
        "tokenizer": ["transformers", "Qwen2Tokenizer"],
        "transformer": ["diffusers", "Flux2Transformer2DModel"],
        "vae": ["diffusers", "AutoencoderKLFlux2"],
    })
}

/// The released FLUX.2 scheduler config (flux2-arch.md §1.3).
pub fn scheduler() -> Value {
    json!({
        "_class_name": "FlowMatchEulerDiscreteScheduler",
        "_diffusers_version": "0.42.1",
        "base_image_seq_len": 256,
        "base_shift": 0.5,
        "invert_sigmas": false,
        "max_image_seq_len": 4096,
        "max_shift": 1.15,
        "num_train_timesteps": 1000,
        "shift": 3.0,
        "shift_terminal": null,
        "stochastic_sampling": false,
        "time_shift_type": "exponential",
        "use_beta_sigmas": false,
        "use_dynamic_shifting": true,
        "use_exponential_sigmas": false,
        "use_karras_sigmas": false,
    })
}

/// `transformer/config.json` (`Flux2Transformer2DModel`).
pub fn transformer(c: &DitConfig) -> Value {
    json!({
        "_class_name": "Flux2Transformer2DModel",
        "_diffusers_version": "0.42.1",
        "attention_head_dim": c.attention_head_dim,
        "axes_dims_rope": c.axes_dims_rope,
        "eps": c.eps,
        "guidance_embeds": c.guidance_embeds,
        "in_channels": c.in_channels,
        "joint_attention_dim": c.joint_attention_dim,
        "mlp_ratio": c.mlp_hidden_dim as f64 / c.inner_dim() as f64,
        "num_attention_heads": c.num_attention_heads,
        "num_layers": c.num_layers,
        "num_single_layers": c.num_single_layers,
        "out_channels": if c.out_channels == c.in_channels { Value::Null } else { c.out_channels.into() },
        "patch_size": 1,
        "rope_theta": c.rope_theta,
        "timestep_guidance_channels": c.timestep_guidance_channels,
    })
}

/// `vae/config.json` (`AutoencoderKLFlux2`).
pub fn vae(c: &VaeConfig) -> Value {
    let n = c.block_out_channels.len();
    json!({
        "_class_name": "AutoencoderKLFlux2",
        "_diffusers_version": "0.42.1",
        "act_fn": "silu",
        "batch_norm_eps": c.batch_norm_eps,
        "batch_norm_momentum": 0.1,
        "block_out_channels": c.block_out_channels,
        "decoder_block_out_channels": null,
        "down_block_types": vec!["DownEncoderBlock2D"; n],
        "in_channels": c.in_channels,
        "latent_channels": c.latent_channels,
        "layers_per_block": c.layers_per_block,
        "mid_block_add_attention": c.mid_block_add_attention,
        "norm_num_groups": c.norm_num_groups,
        "out_channels": c.out_channels,
        "patch_size": [2, 2],
        "sample_size": 1024,
        "up_block_types": vec!["UpDecoderBlock2D"; n],
        "use_post_quant_conv": c.use_post_quant_conv,
        "use_quant_conv": c.use_quant_conv,
    })
}

/// `text_encoder/config.json` (`Qwen3ForCausalLM`, tied embeddings).
pub fn text_encoder(c: &TextConfig) -> Value {
    json!({
        "architectures": ["Qwen3ForCausalLM"],
        "attention_bias": c.attention_bias,
        "attention_dropout": 0.0,
        "bos_token_id": null,
        "dtype": "float32",
        "eos_token_id": null,
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "hidden_size": c.hidden,
        "initializer_range": 0.02,
        "intermediate_size": c.intermediate,
        "layer_types": vec!["full_attention"; c.num_layers],
        "max_position_embeddings": 40960,
        "max_window_layers": c.num_layers,
        "model_type": "qwen3",
        "num_attention_heads": c.heads,
        "num_hidden_layers": c.num_layers,
        "num_key_value_heads": c.kv_heads,
        "pad_token_id": null,
        "rms_norm_eps": c.eps,
        "rope_parameters": {"rope_theta": c.rope_theta, "rope_type": "default"},
        "sliding_window": null,
        "tie_word_embeddings": true,
        "transformers_version": "5.23.0",
        "use_cache": true,
        "use_sliding_window": false,
        "vocab_size": c.vocab,
    })
}
