//! Reading one adapter file: its format (from the keys, never the file name), its modules
//! (down/up matrices as f32, optional `.alpha`) and the PEFT config diffusers stores in the
//! safetensors metadata (`lora_adapter_metadata`).
//!
//! | format | keys |
//! |---|---|
//! | diffusers / PEFT | `transformer.<module>.lora_A.weight`, `.lora_B.weight` |
//! | BFL / ai-toolkit | `diffusion_model.<module>.lora_A/lora_B.weight` (or `lora_down/lora_up`), also under `base_model.model.` |
//! | kohya / musubi | `lora_unet_<module with _>.lora_down.weight`, `.lora_up.weight`, `.alpha` |
//!
//! LoKr (`lokr_*`, `lycoris_*`), LoHa (`hada_*`), DoRA (`dora_scale`, `lora_magnitude_vector`,
//! `use_dora`) and bias adapters are refused with the format named.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use sha2::{Digest, Sha256};

use super::{LoraError, Result};

/// The naming scheme of an adapter file.
#[derive(Copy, Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// `transformer.<diffusers module>.lora_A/B.weight` (diffusers `save_lora_weights`, PEFT).
    Diffusers,
    /// `diffusion_model.<BFL module>.lora_A/B.weight` (ai-toolkit, fal; `base_model.model.` too).
    Bfl,
    /// `lora_unet_<BFL module with '_'>.lora_down/lora_up.weight` + `.alpha` (kohya, musubi-tuner).
    Kohya,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Diffusers => "diffusers/PEFT",
            Format::Bfl => "BFL/ai-toolkit",
            Format::Kohya => "kohya/musubi",
        }
    }
}

/// A row-major f32 matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct Mat {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

/// One adapted module: ΔW = B·A (before scaling), A = down [r, in], B = up [out, r].
#[derive(Clone, Debug)]
pub struct ModuleLora {
    /// Module name with the format's prefix removed (`double_blocks.0.img_attn.qkv`,
    /// `transformer_blocks.0.attn.to_q`, kohya `double_blocks_0_img_attn_qkv`).
    pub name: String,
    /// The file's key of the down matrix (for messages).
    pub key: String,
    pub down: Mat,
    pub up: Mat,
    /// The `.alpha` tensor, if the file has one (kohya; scale alpha / rank).
    pub alpha: Option<f32>,
}

impl ModuleLora {
    pub fn rank(&self) -> usize {
        self.down.rows
    }
}

/// The PEFT `LoraConfig` fields that set the scaling.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PeftConfig {
    pub r: usize,
    pub lora_alpha: f32,
    pub rank_pattern: Vec<(String, usize)>,
    pub alpha_pattern: Vec<(String, f32)>,
    pub use_rslora: bool,
}

/// A parsed adapter file.
#[derive(Clone, Debug)]
pub struct LoraFile {
    pub path: PathBuf,
    pub format: Format,
    pub modules: Vec<ModuleLora>,
    pub config: Option<PeftConfig>,
    /// sha256 of the file's bytes, hex.
    pub fingerprint: String,
}

fn file_err(path: &Path, msg: impl Into<String>) -> LoraError {
    LoraError::File { path: path.to_path_buf(), msg: msg.into() }
}

/// Which part of a module a key holds.
enum Part {
    Down,
    Up,
    Alpha,
}

const PARTS: [(&str, Part); 5] = [
    (".lora_A.weight", Part::Down),
    (".lora_down.weight", Part::Down),
    (".lora_B.weight", Part::Up),
    (".lora_up.weight", Part::Up),
    (".alpha", Part::Alpha),
];

impl LoraFile {
    /// Reads and classifies `path`.
    pub fn open(path: &Path) -> Result<LoraFile> {
        if !path.is_file() {
            return Err(file_err(path, "no such file"));
        }
        let bytes = std::fs::read(path).map_err(|e| file_err(path, format!("cannot read: {e}")))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| file_err(path, format!("not a safetensors file: {e}")))?;
        let (_, header) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| file_err(path, format!("not a safetensors file: {e}")))?;
        let mut keys: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
        keys.sort();
        if keys.is_empty() {
            return Err(file_err(path, "holds no tensors"));
        }
        refuse_unsupported(path, &keys)?;
        let format = detect(path, &keys)?;
        let metadata = header.metadata().as_ref().and_then(|m| m.get("lora_adapter_metadata").cloned());
        let config = match metadata {
            Some(json) => parse_config(path, &json)?,
            None => None,
        };
        let modules = group(path, &st, &keys, format)?;
        let fingerprint = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        Ok(LoraFile { path: path.to_path_buf(), format, modules, config, fingerprint })
    }

    /// The rank most modules have (the one a summary shows).
    pub fn rank(&self) -> usize {
        let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
        for m in &self.modules {
            *counts.entry(m.rank()).or_default() += 1;
        }
        counts.into_iter().max_by_key(|&(r, n)| (n, r)).map_or(0, |(r, _)| r)
    }
}

/// Refuses files that are not a plain low-rank sum, naming the format.
fn refuse_unsupported(path: &Path, keys: &[String]) -> Result<()> {
    let refuse = |format: &str, key: &str| LoraError::Unsupported {
        path: path.to_path_buf(),
        format: format.into(),
        why: format!("found key '{key}'"),
    };
    for k in keys {
        if k.contains(".lokr_") || k.starts_with("lycoris_") {
            return Err(refuse("LoKr (LyCORIS Kronecker product)", k));
        }
        if k.contains(".hada_") {
            return Err(refuse("LoHa (LyCORIS Hadamard product)", k));
        }
        if k.contains("dora_scale") || k.contains("lora_magnitude_vector") {
            return Err(refuse("DoRA (weight-decomposed LoRA)", k));
        }
        if k.ends_with(".lora_B.bias") || k.ends_with(".lora_up.bias") {
            return Err(refuse("LoRA with a bias term", k));
        }
    }
    Ok(())
}

/// The format from the key prefixes; every key must share it.
fn detect(path: &Path, keys: &[String]) -> Result<Format> {
    let of = |k: &str| -> Option<Format> {
        if k.starts_with("lora_unet_") {
            Some(Format::Kohya)
        } else if k.starts_with("diffusion_model.") || k.starts_with("base_model.model.") {
            Some(Format::Bfl)
        } else if k.starts_with("transformer.") {
            Some(Format::Diffusers)
        } else {
            None
        }
    };
    let first = &keys[0];
    let format = of(first).ok_or_else(|| {
        let te = first.starts_with("lora_te") || first.starts_with("text_encoder");
        file_err(
            path,
            if te {
                format!("key '{first}' belongs to a text encoder; flux2 applies adapters to the DiT only")
            } else {
                format!(
                    "key '{first}' has no known prefix (transformer., diffusion_model., base_model.model., lora_unet_)"
                )
            },
        )
    })?;
    if let Some(k) = keys.iter().find(|k| of(k) != Some(format)) {
        return Err(file_err(
            path,
            format!("mixes key formats: '{first}' is {} but '{k}' is not", format.name()),
        ));
    }
    Ok(format)
}

fn strip_prefix(key: &str, format: Format) -> &str {
    let prefixes: &[&str] = match format {
        Format::Diffusers => &["transformer."],
        Format::Bfl => &["diffusion_model.", "base_model.model."],
        Format::Kohya => &["lora_unet_"],
    };
    prefixes.iter().find_map(|p| key.strip_prefix(p)).unwrap_or(key)
}

/// Groups keys into modules, converting each matrix to f32.
fn group(path: &Path, st: &SafeTensors, keys: &[String], format: Format) -> Result<Vec<ModuleLora>> {
    type Slots = (Option<(String, Mat)>, Option<(String, Mat)>, Option<f32>);
    let mut slots: BTreeMap<String, Slots> = BTreeMap::new();
    for key in keys {
        let rest = strip_prefix(key, format);
        let (module, part) = PARTS
            .iter()
            .find_map(|(suffix, part)| rest.strip_suffix(suffix).map(|m| (m.to_string(), part)))
            .ok_or_else(|| {
                file_err(
                    path,
                    format!("key '{key}' is not a LoRA tensor (lora_A/lora_B/lora_down/lora_up/alpha)"),
                )
            })?;
        let slot = slots.entry(module).or_default();
        match part {
            Part::Down => slot.0 = Some((key.clone(), matrix(path, st, key)?)),
            Part::Up => slot.1 = Some((key.clone(), matrix(path, st, key)?)),
            Part::Alpha => slot.2 = Some(scalar(path, st, key)?),
        }
    }
    let mut modules = Vec::new();
    for (name, (down, up, alpha)) in slots {
        let (Some((key, down)), Some((up_key, up))) = (down, up) else {
            return Err(file_err(
                path,
                format!("module '{name}' lacks its down (lora_A) or up (lora_B) matrix"),
            ));
        };
        if down.rows != up.cols {
            return Err(LoraError::Shape {
                path: path.to_path_buf(),
                module: name,
                msg: format!(
                    "rank mismatch: '{key}' is [{}, {}] but '{up_key}' is [{}, {}]",
                    down.rows, down.cols, up.rows, up.cols
                ),
            });
        }
        modules.push(ModuleLora { name, key, down, up, alpha });
    }
    Ok(modules)
}

fn values(path: &Path, st: &SafeTensors, key: &str) -> Result<(Vec<usize>, Vec<f32>)> {
    let view = st.tensor(key).map_err(|e| file_err(path, format!("tensor '{key}': {e}")))?;
    let d = view.data();
    let data: Vec<f32> = match view.dtype() {
        Dtype::F32 => d.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        Dtype::F16 => d.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::BF16 => d.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        Dtype::F64 => d
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        other => {
            return Err(file_err(path, format!("tensor '{key}' has dtype {other:?}; expected a float type")))
        }
    };
    Ok((view.shape().to_vec(), data))
}

/// A 2-D matrix; trailing 1-sized dims (1×1 conv LoRA layout) are dropped.
fn matrix(path: &Path, st: &SafeTensors, key: &str) -> Result<Mat> {
    let (shape, data) = values(path, st, key)?;
    let mut dims = shape.clone();
    while dims.len() > 2 && dims.last() == Some(&1) {
        dims.pop();
    }
    match dims[..] {
        [rows, cols] => Ok(Mat { rows, cols, data }),
        _ => Err(file_err(path, format!("tensor '{key}' has shape {shape:?}; expected a matrix"))),
    }
}

fn scalar(path: &Path, st: &SafeTensors, key: &str) -> Result<f32> {
    let (shape, data) = values(path, st, key)?;
    match data[..] {
        [v] => Ok(v),
        _ => Err(file_err(path, format!("alpha '{key}' has shape {shape:?}; expected a scalar"))),
    }
}

/// The `transformer.` part of diffusers' `lora_adapter_metadata` JSON (or the bare keys of a
/// PEFT-saved model), as the scaling fields.
fn parse_config(path: &Path, json: &str) -> Result<Option<PeftConfig>> {
    let v: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| file_err(path, format!("metadata 'lora_adapter_metadata' is not JSON: {e}")))?;
    let Some(obj) = v.as_object() else {
        return Err(file_err(path, "metadata 'lora_adapter_metadata' is not a JSON object"));
    };
    let prefixed = obj.keys().any(|k| k.starts_with("transformer."));
    let get = |k: &str| if prefixed { obj.get(&format!("transformer.{k}")) } else { obj.get(k) };
    if get("use_dora").and_then(|d| d.as_bool()) == Some(true) {
        return Err(LoraError::Unsupported {
            path: path.to_path_buf(),
            format: "DoRA (weight-decomposed LoRA)".into(),
            why: "metadata has use_dora = true".into(),
        });
    }
    let Some(r) = get("r").and_then(|r| r.as_u64()) else {
        return Ok(None);
    };
    let lora_alpha = get("lora_alpha").and_then(|a| a.as_f64()).unwrap_or(8.0) as f32;
    let pattern = |k: &str| -> Vec<(String, f64)> {
        get(k)
            .and_then(|p| p.as_object())
            .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_f64()?))).collect())
            .unwrap_or_default()
    };
    Ok(Some(PeftConfig {
        r: r as usize,
        lora_alpha,
        rank_pattern: pattern("rank_pattern").into_iter().map(|(k, v)| (k, v as usize)).collect(),
        alpha_pattern: pattern("alpha_pattern").into_iter().map(|(k, v)| (k, v as f32)).collect(),
        use_rslora: get("use_rslora").and_then(|b| b.as_bool()).unwrap_or(false),
    }))
}

impl PeftConfig {
    /// peft's pattern rule: a key matches when it is the module name or its dotted suffix; a
    /// leading `^` anchors it at the start.
    fn lookup<T: Copy>(patterns: &[(String, T)], module: &str) -> Option<T> {
        patterns.iter().find_map(|(p, v)| {
            let hit = match p.strip_prefix('^') {
                Some(anchored) => module == anchored,
                None => module == p || module.ends_with(&format!(".{p}")),
            };
            hit.then_some(*v)
        })
    }

    /// (rank, scaling) peft uses for `module` (a diffusers module name).
    pub fn scaling(&self, module: &str) -> (usize, f32) {
        let r = Self::lookup(&self.rank_pattern, module).unwrap_or(self.r);
        let alpha = Self::lookup(&self.alpha_pattern, module).unwrap_or(self.lora_alpha);
        let denom = if self.use_rslora { (r as f32).sqrt() } else { r as f32 };
        (r, alpha / denom)
    }
}
