//! LoRA adapters for the FLUX.2 DiT, without PyTorch: reading adapter files in the formats
//! trainers write (diffusers / PEFT, BFL / ai-toolkit, kohya / musubi-tuner), mapping their
//! modules onto the graph's weights (diffusers names: split q/k/v in double blocks, fused
//! `to_qkv_mlp_proj` in single blocks), and computing `W + Σ scale·(alpha/rank)·B·A`.
//!
//! The same code serves both places an adapter can be applied:
//! * at export (`flux2 export --lora`), where the exporter writes the merged tensors;
//! * at run time (`flux2 generate --lora`), where [`overrides`] reads the touched tensors of an
//!   exported `transformer.onnx`, merges them in memory and hands them to ONNX Runtime as
//!   initializer overrides, so nothing is re-exported and untouched weights are not copied.
//!
//! Rules follow diffusers 0.42.1 (`Flux2LoraLoaderMixin`, its conversion functions) and peft
//! 0.21 (the scaling `lora_alpha / r`, `rank_pattern` / `alpha_pattern`, rsLoRA), so a merged
//! model gives diffusers' output with the adapter loaded. Formats that are not a plain low-rank
//! sum (LoKr, LoHa, DoRA) and bias adapters are refused by name, never applied as plain LoRA.

pub mod file;
pub mod modules;
pub mod overrides;
pub mod plan;

pub use file::{Format, LoraFile, ModuleLora};
pub use modules::{ModuleTable, Segment};
pub use plan::{AdapterRecord, MergePlan};

use std::path::{Path, PathBuf};

/// Errors of adapter handling; each names the file, key, module or shape at fault.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    #[error("adapter {path}: {msg}")]
    File { path: PathBuf, msg: String },
    #[error("adapter {path}: {format} adapters are not supported ({why}); flux2 merges plain LoRA only (lora_A/lora_B, lora_down/lora_up)")]
    Unsupported { path: PathBuf, format: String, why: String },
    #[error("adapter {path}: key '{key}' targets module '{module}', which the model does not have{hint}")]
    UnknownModule { path: PathBuf, key: String, module: String, hint: String },
    #[error("adapter {path}: module '{module}': {msg}")]
    Shape { path: PathBuf, module: String, msg: String },
    #[error("--lora '{spec}': {msg}")]
    Spec { spec: String, msg: String },
    #[error("{path}: {msg}")]
    Model { path: PathBuf, msg: String },
}

pub type Result<T> = std::result::Result<T, LoraError>;

/// One `--lora FILE[:SCALE]` argument.
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterSpec {
    pub path: PathBuf,
    pub scale: f32,
}

impl AdapterSpec {
    /// Parses `FILE` or `FILE:SCALE` (scale defaults to 1). A path that itself contains ':' is
    /// taken whole when it names an existing file.
    pub fn parse(spec: &str) -> Result<AdapterSpec> {
        let err = |msg: String| LoraError::Spec { spec: spec.to_string(), msg };
        if spec.is_empty() {
            return Err(err("empty: expected FILE or FILE:SCALE".into()));
        }
        if let Some((file, scale)) = spec.rsplit_once(':') {
            if !Path::new(spec).is_file() {
                let s: f32 = scale.trim().parse().map_err(|_| {
                    err(format!(
                        "scale '{scale}' is not a number (expected FILE:SCALE, e.g. style.safetensors:0.8)"
                    ))
                })?;
                if !s.is_finite() {
                    return Err(err(format!("scale '{scale}' is not a finite number")));
                }
                if file.is_empty() {
                    return Err(err("no file before ':'".into()));
                }
                return Ok(AdapterSpec { path: PathBuf::from(file), scale: s });
            }
        }
        Ok(AdapterSpec { path: PathBuf::from(spec), scale: 1.0 })
    }
}

impl std::str::FromStr for AdapterSpec {
    type Err = LoraError;
    fn from_str(s: &str) -> Result<AdapterSpec> {
        AdapterSpec::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        assert_eq!(AdapterSpec::parse("a.safetensors").unwrap().scale, 1.0);
        let s = AdapterSpec::parse("dir/a.safetensors:0.75").unwrap();
        assert_eq!((s.path.to_str().unwrap(), s.scale), ("dir/a.safetensors", 0.75));
        assert_eq!(AdapterSpec::parse("a:-1.5").unwrap().scale, -1.5);
        let e = AdapterSpec::parse("a.safetensors:strong").unwrap_err().to_string();
        assert!(e.contains("'strong' is not a number"), "{e}");
        assert!(AdapterSpec::parse("a:nan").is_err());
        assert!(AdapterSpec::parse(":1").is_err());
        assert!(AdapterSpec::parse("").is_err());
    }
}
