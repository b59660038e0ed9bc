//! A built-in FLUX.2-architecture checkpoint with deterministic random weights: a complete
//! diffusers-layout [klein] folder (`model_index.json` for `Flux2KleinPipeline` with
//! `is_distilled`, `scheduler/`, `transformer/`, `vae/`, `text_encoder/` (Qwen3ForCausalLM) and
//! `tokenizer/`), small enough to export and run in seconds on a laptop. It lets `flux2 demo`
//! show the whole path (safetensors -> ONNX -> image) without downloading a model; random
//! weights give texture, not a picture.
//!
//! The tensors written are exactly the ones the exported graphs read (the graphs' weight
//! declarations, diffusers / transformers names) plus the full text model (every layer, the
//! final norm) and `bn.num_batches_tracked`, so diffusers 0.42.1 and transformers 5.23.0 load
//! the folder too. Values come from [`weights`]; the same [`SynthSpec`] gives byte-identical
//! files. The folder is built next to its destination and renamed into place, and records
//! its spec digest and file hashes in `synth.json` so a later run can tell it is current.

mod configs;
pub mod sparse;
pub mod sparse_gguf;
pub mod tokenizer;
pub mod weights;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use flux2_graphs::models::dit::{build_transformer, DitConfig};
use flux2_graphs::models::text::{build_text_encoder, Family, TextConfig};
use flux2_graphs::models::vae::{build_decoder, build_encoder, VaeConfig};
use flux2_graphs::{DType, Target};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::{io_err, ExportError, Result};
use tokenizer::pretty;

/// Version of the generator: bump when any value it writes changes.
pub const SYNTH_VERSION: u32 = 1;
/// The record a synthetic checkpoint carries at its root.
pub const SYNTH_RECORD: &str = "synth.json";

/// Everything that determines a synthetic checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SynthSpec {
    pub seed: u64,
    pub transformer: DitConfig,
    pub vae: VaeConfig,
    /// The Qwen3 text encoder; `hidden_layers` are the ones the DiT's context width assumes.
    pub text: TextConfig,
    /// BPE merges of the tokenizer (on top of its 256 byte tokens).
    pub merges: usize,
}

impl SynthSpec {
    /// The `flux2 demo` model: FLUX.2 [klein]'s structure at a small size. DiT 4 heads × 64
    /// (hidden 256), 2 double + 4 single blocks, 128 latent channels, SwiGLU 3×, RoPE axes
    /// (16,16,16,16) θ 2000; the released VAE topology with widths (32,64,64,64); a 28-layer
    /// Qwen3 (hidden 64, 4/2 heads of 16, θ 1e6) whose hidden states 9, 18, 27 give the
    /// 192-wide context, exactly klein's layer choice.
    pub fn demo(seed: u64) -> SynthSpec {
        let text = TextConfig {
            family: Family::Qwen3,
            vocab: 512,
            hidden: 64,
            heads: 4,
            kv_heads: 2,
            head_dim: 16,
            intermediate: 192,
            eps: 1e-6,
            rope_theta: 1e6,
            num_layers: 28,
            qk_norm: true,
            attention_bias: false,
            sliding_window: None,
            sliding_layers: vec![],
            hidden_layers: Family::Qwen3.default_layers().to_vec(),
        };
        let transformer = DitConfig {
            in_channels: 128,
            out_channels: 128,
            num_layers: 2,
            num_single_layers: 4,
            attention_head_dim: 64,
            num_attention_heads: 4,
            joint_attention_dim: text.output_dim(),
            timestep_guidance_channels: 256,
            mlp_hidden_dim: 3 * 256,
            axes_dims_rope: vec![16, 16, 16, 16],
            rope_theta: 2000.0,
            eps: 1e-6,
            guidance_embeds: false,
        };
        let vae = VaeConfig { block_out_channels: vec![32, 64, 64, 64], ..VaeConfig::flux2() };
        SynthSpec { seed, transformer, vae, text, merges: 192 }
    }

    /// Checks that the parts fit together (context width, latent channels, vocabulary).
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| ExportError::Config { path: PathBuf::from("<synthetic spec>"), msg };
        self.transformer.validate()?;
        self.text.validate()?;
        if self.text.family != Family::Qwen3 {
            return Err(bad("the synthetic text encoder is Qwen3 (klein) only".into()));
        }
        if self.transformer.joint_attention_dim != self.text.output_dim() {
            return Err(bad(format!(
                "joint_attention_dim {} != {} text layers × hidden {}",
                self.transformer.joint_attention_dim,
                self.text.hidden_layers.len(),
                self.text.hidden
            )));
        }
        if self.transformer.in_channels != self.vae.patched_channels()
            || self.transformer.out_channels != self.transformer.in_channels
        {
            return Err(bad(format!(
                "transformer in/out channels {}/{} must both be the VAE's 4 × {} latent channels",
                self.transformer.in_channels, self.transformer.out_channels, self.vae.latent_channels
            )));
        }
        if let Some(c) = self.vae.block_out_channels.iter().find(|c| *c % self.vae.norm_num_groups != 0) {
            return Err(bad(format!(
                "VAE width {c} is not a multiple of {} groups",
                self.vae.norm_num_groups
            )));
        }
        let tokens = tokenizer::token_count(self.merges);
        if tokens > self.text.vocab {
            return Err(bad(format!(
                "the tokenizer has {tokens} tokens but the vocabulary is {}",
                self.text.vocab
            )));
        }
        Ok(())
    }

    /// sha256 of the generator version and the spec: identical for identical checkpoints.
    pub fn digest(&self) -> String {
        let text = serde_json::to_string(self).unwrap_or_default();
        hex(&Sha256::digest(format!("flux2-synth v{SYNTH_VERSION}\n{text}")))
    }
}

/// What [`write_checkpoint`] wrote.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SynthRecord {
    pub generator: String,
    pub spec_digest: String,
    pub spec: SynthSpec,
    pub parameters: BTreeMap<String, u64>,
    /// Relative path -> sha256 of every file but this record.
    pub files: BTreeMap<String, String>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One tensor to write: name, dtype (F32 or I64) and shape.
type Decl = (String, DType, Vec<usize>);

/// The transformer's tensors: those of its graph.
fn transformer_tensors(config: &DitConfig) -> Result<Vec<Decl>> {
    let m = build_transformer(config, Target::Ort, DType::F32)?;
    Ok(m.weights.into_iter().map(|w| (w.name, DType::F32, w.shape)).collect())
}

/// The VAE's tensors: the union of its encoder and decoder graphs, plus the BatchNorm counter.
fn vae_tensors(config: &VaeConfig) -> Result<Vec<Decl>> {
    let mut all: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for m in
        [build_encoder(config, Target::Ort, DType::F32)?, build_decoder(config, Target::Ort, DType::F32)?]
    {
        all.extend(m.weights.into_iter().map(|w| (w.name, w.shape)));
    }
    let mut out: Vec<Decl> = all.into_iter().map(|(n, s)| (n, DType::F32, s)).collect();
    if out.iter().any(|(n, _, _)| n.starts_with("bn.")) {
        out.push(("bn.num_batches_tracked".into(), DType::I64, vec![]));
    }
    Ok(out)
}

/// The whole text model (every layer and the final norm; the LM head is tied to the embeddings).
fn text_tensors(config: &TextConfig) -> Result<Vec<Decl>> {
    let full = TextConfig { hidden_layers: vec![config.num_layers], ..config.clone() };
    let m = build_text_encoder(&full, Target::Ort, DType::F32)?;
    Ok(m.weights.into_iter().map(|w| (w.name, DType::F32, w.shape)).collect())
}

/// A tensor ready to serialise: name, dtype, shape, little-endian bytes.
type Encoded = (String, safetensors::Dtype, Vec<usize>, Vec<u8>);

/// Serialises tensors with deterministic values to safetensors bytes.
fn safetensors_bytes(seed: u64, component: &str, tensors: &[Decl]) -> Result<(Vec<u8>, u64)> {
    let mut data: Vec<Encoded> = Vec::new();
    let mut params = 0u64;
    for (name, dtype, shape) in tensors {
        let n: usize = shape.iter().product();
        params += n as u64;
        let bytes = match dtype {
            DType::I64 => (0..n).flat_map(|_| 0i64.to_le_bytes()).collect(),
            _ => weights::values(seed, &format!("{component}/{name}"), shape)
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        };
        let st = if *dtype == DType::I64 { safetensors::Dtype::I64 } else { safetensors::Dtype::F32 };
        data.push((name.clone(), st, shape.clone(), bytes));
    }
    let views = data
        .iter()
        .map(|(n, d, s, b)| Ok((n.as_str(), safetensors::tensor::TensorView::new(*d, s.clone(), b)?)))
        .collect::<std::result::Result<Vec<_>, safetensors::SafeTensorError>>();
    let meta = Some([("format".to_string(), "pt".to_string())].into_iter().collect());
    let bytes =
        views.and_then(|v| safetensors::tensor::serialize(v, meta)).map_err(|e| ExportError::Output {
            path: PathBuf::from(component),
            msg: format!("serialising synthetic weights: {e}"),
        })?;
    Ok((bytes, params))
}

/// Relative path and contents of each file.
type Files = Vec<(String, Vec<u8>)>;

/// Every file of the checkpoint, and the parameter count of each component.
fn files(spec: &SynthSpec) -> Result<(Files, BTreeMap<String, u64>)> {
    let mut out: Files = Vec::new();
    let mut params = BTreeMap::new();
    let mut add = |path: &str, text: String| out.push((path.to_string(), text.into_bytes()));
    add("model_index.json", pretty(&configs::model_index()));
    add("scheduler/scheduler_config.json", pretty(&configs::scheduler()));
    add("transformer/config.json", pretty(&configs::transformer(&spec.transformer)));
    add("vae/config.json", pretty(&configs::vae(&spec.vae)));
    add("text_encoder/config.json", pretty(&configs::text_encoder(&spec.text)));
    add("text_encoder/generation_config.json", pretty(&json!({"transformers_version": "5.23.0"})));
    let tok = tokenizer::qwen_like(spec.merges);
    add("tokenizer/tokenizer.json", tok.tokenizer_json);
    add("tokenizer/tokenizer_config.json", tok.tokenizer_config_json);
    add("tokenizer/chat_template.jinja", tok.chat_template);
    for (component, file, tensors) in [
        ("transformer", "diffusion_pytorch_model.safetensors", transformer_tensors(&spec.transformer)?),
        ("vae", "diffusion_pytorch_model.safetensors", vae_tensors(&spec.vae)?),
        ("text_encoder", "model.safetensors", text_tensors(&spec.text)?),
    ] {
        let (bytes, n) = safetensors_bytes(spec.seed, component, &tensors)?;
        params.insert(component.to_string(), n);
        out.push((format!("{component}/{file}"), bytes));
    }
    Ok((out, params))
}

/// Writes the checkpoint of `spec` to `out` (built in a sibling folder, then renamed). An
/// existing `out` is replaced only if it is itself a synthetic checkpoint (has `synth.json`).
pub fn write_checkpoint(spec: &SynthSpec, out: &Path) -> Result<SynthRecord> {
    spec.validate()?;
    if out.exists() && !out.join(SYNTH_RECORD).is_file() {
        return Err(ExportError::Output {
            path: out.to_path_buf(),
            msg: format!("exists and is not a synthetic checkpoint (no {SYNTH_RECORD}); not replacing it"),
        });
    }
    let (files, parameters) = files(spec)?;
    let name =
        out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "checkpoint".into());
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    let staging = parent.join(format!(".{name}.synth-{}", std::process::id()));
    let result = (|| {
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(io_err(&staging))?;
        }
        let mut hashes = BTreeMap::new();
        for (rel, bytes) in &files {
            let path = staging.join(rel);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io_err(dir))?;
            }
            std::fs::write(&path, bytes).map_err(io_err(&path))?;
            hashes.insert(rel.clone(), hex(&Sha256::digest(bytes)));
        }
        let record = SynthRecord {
            generator: format!("flux2-deploy {} synth v{SYNTH_VERSION}", env!("CARGO_PKG_VERSION")),
            spec_digest: spec.digest(),
            spec: spec.clone(),
            parameters,
            files: hashes,
        };
        let text = serde_json::to_string_pretty(&record).unwrap_or_default();
        let path = staging.join(SYNTH_RECORD);
        std::fs::write(&path, text + "\n").map_err(io_err(&path))?;
        if out.exists() {
            std::fs::remove_dir_all(out).map_err(io_err(out))?;
        }
        std::fs::rename(&staging, out).map_err(io_err(out))?;
        Ok(record)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

/// The record of `dir` if it is a synthetic checkpoint of exactly `spec` whose files are all
/// present and unchanged; `None` otherwise.
pub fn current_checkpoint(dir: &Path, spec: &SynthSpec) -> Option<SynthRecord> {
    let text = std::fs::read_to_string(dir.join(SYNTH_RECORD)).ok()?;
    let record: SynthRecord = serde_json::from_str(&text).ok()?;
    if record.spec_digest != spec.digest() {
        return None;
    }
    for (rel, hash) in &record.files {
        let bytes = std::fs::read(dir.join(rel)).ok()?;
        if hex(&Sha256::digest(&bytes)) != *hash {
            return None;
        }
    }
    Some(record)
}
