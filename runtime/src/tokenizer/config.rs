//! The JSON side files of a Hugging Face tokenizer folder and of the text encoder next to it:
//! `tokenizer_config.json` (+ legacy `special_tokens_map.json`) for the named special tokens, the
//! padding/truncation sides and the `add_bos_token`/`add_eos_token` flags, and the text encoder's
//! `config.json` for the model family (FLUX.2 dev = Mistral3, klein = Qwen3).
//!
//! Mirrors how transformers 5.23.0 reads them (`tokenization_utils_base.py`
//! `PreTrainedTokenizerBase.__init__`, `SPECIAL_TOKENS_ATTRIBUTES`; a special token is either a
//! string or a serialized `AddedToken` dict with a `content` field).

use super::TokenizerError;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The named special tokens transformers exposes to chat templates (`special_tokens_map`), in its
/// `SPECIAL_TOKENS_ATTRIBUTES` order.
const SPECIAL_TOKEN_NAMES: [&str; 7] =
    ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"];

/// Tokenizer classes whose transformers class attribute is `padding_side = "left"` (llama, code_llama,
/// gemma, cohere, xlnet, siglip2 `tokenization_*.py`); every other class defaults to the right.
const LEFT_PADDING_CLASSES: [&str; 6] = ["Llama", "CodeLlama", "Gemma", "Cohere", "XLNet", "Siglip2"];

/// Which end of a sequence padding is added to, or truncation removes tokens from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Left,
    Right,
}

/// The text-encoder family, which fixes the prompt format of the FLUX.2 pipelines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// FLUX.2 [dev]: Mistral Small 3.x (`Mistral3ForConditionalGeneration`), system + user turn.
    Mistral3,
    /// FLUX.2 [klein]: Qwen3 (`Qwen3ForCausalLM`), one user turn, thinking disabled.
    Qwen3,
}

impl Family {
    /// The family of a `config.json` `model_type`, if it is one of ours.
    pub fn from_model_type(model_type: &str) -> Option<Self> {
        match model_type {
            "mistral3" => Some(Family::Mistral3),
            "qwen3" => Some(Family::Qwen3),
            _ => None,
        }
    }

    /// The family of a `config.json` `architectures` entry, if it is one of ours.
    pub fn from_architecture(arch: &str) -> Option<Self> {
        match arch {
            "Mistral3ForConditionalGeneration" => Some(Family::Mistral3),
            "Qwen3ForCausalLM" | "Qwen3Model" => Some(Family::Qwen3),
            _ => None,
        }
    }

    /// Reads the family from a text encoder's `config.json` (`model_type`, else `architectures[0]`).
    pub fn from_config_file(path: &Path) -> Result<Self, TokenizerError> {
        let config = read_json(path)?;
        let unknown = |field: &'static str, value: String| TokenizerError::UnknownArchitecture {
            path: path.to_path_buf(),
            field,
            value,
        };
        if let Some(model_type) = config.get("model_type").and_then(Value::as_str) {
            return Family::from_model_type(model_type)
                .ok_or_else(|| unknown("model_type", model_type.into()));
        }
        match config.get("architectures").and_then(Value::as_array).and_then(|a| a.first()) {
            Some(Value::String(arch)) => {
                Family::from_architecture(arch).ok_or_else(|| unknown("architectures", arch.clone()))
            }
            _ => Err(unknown("model_type", "<missing>".into())),
        }
    }

    /// Padding side when neither `tokenizer_config.json` nor the tokenizer class says: left for the
    /// Mistral processor (left-padded like the real checkpoint), right for Qwen.
    pub fn default_padding_side(self) -> Side {
        match self {
            Family::Mistral3 => Side::Left,
            Family::Qwen3 => Side::Right,
        }
    }
}

impl FromStr for Family {
    type Err = TokenizerError;

    /// Accepts `mistral3`/`dev` and `qwen3`/`klein` (case-insensitive).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "mistral3" | "mistral" | "dev" => Ok(Family::Mistral3),
            "qwen3" | "qwen" | "klein" => Ok(Family::Qwen3),
            _ => Err(TokenizerError::Option(format!(
                "unknown text-encoder family '{s}' (expected mistral3/dev or qwen3/klein)"
            ))),
        }
    }
}

/// What the encoder needs from `tokenizer_config.json` (+ `special_tokens_map.json`).
#[derive(Debug, Clone, Default)]
pub(crate) struct TokenizerConfig {
    /// Named special tokens present (non-null), e.g. `("bos_token", "<s>")`.
    pub special: Vec<(&'static str, String)>,
    pub padding_side: Option<Side>,
    pub truncation_side: Option<Side>,
    pub add_bos_token: Option<bool>,
    pub add_eos_token: Option<bool>,
    pub tokenizer_class: Option<String>,
    /// The `chat_template` entry, if any (a string, or a list of `{name, template}`).
    pub chat_template: Option<Value>,
}

impl TokenizerConfig {
    /// Reads `dir/tokenizer_config.json` (optional) and fills missing special tokens from
    /// `dir/special_tokens_map.json` (optional).
    pub fn load(dir: &Path) -> Result<Self, TokenizerError> {
        let path = dir.join("tokenizer_config.json");
        let config = if path.is_file() { read_json(&path)? } else { Value::Null };
        let side = |key: &str| -> Result<Option<Side>, TokenizerError> {
            match config.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if s == "left" => Ok(Some(Side::Left)),
                Some(Value::String(s)) if s == "right" => Ok(Some(Side::Right)),
                Some(other) => Err(TokenizerError::Config {
                    path: path.clone(),
                    msg: format!("{key} must be \"left\" or \"right\", got {other}"),
                }),
            }
        };
        let mut out = TokenizerConfig {
            padding_side: side("padding_side")?,
            truncation_side: side("truncation_side")?,
            add_bos_token: config.get("add_bos_token").and_then(Value::as_bool),
            add_eos_token: config.get("add_eos_token").and_then(Value::as_bool),
            tokenizer_class: config.get("tokenizer_class").and_then(Value::as_str).map(str::to_owned),
            chat_template: config.get("chat_template").filter(|v| !v.is_null()).cloned(),
            special: Vec::new(),
        };
        let map_path = dir.join("special_tokens_map.json");
        let map = if map_path.is_file() { read_json(&map_path)? } else { Value::Null };
        for name in SPECIAL_TOKEN_NAMES {
            let token =
                config.get(name).and_then(token_content).or_else(|| map.get(name).and_then(token_content));
            if let Some(token) = token {
                out.special.push((name, token));
            }
        }
        Ok(out)
    }

    pub fn token(&self, name: &str) -> Option<&str> {
        self.special.iter().find(|(n, _)| *n == name).map(|(_, t)| t.as_str())
    }

    /// `padding_side` from the config, else the tokenizer class's default, else the family's.
    pub fn padding_side(&self, family: Family) -> Side {
        let class_left = self.tokenizer_class.as_deref().is_some_and(|class| {
            let base = class.strip_suffix("Fast").unwrap_or(class);
            LEFT_PADDING_CLASSES.iter().any(|c| base.strip_suffix("Tokenizer") == Some(*c))
        });
        match (self.padding_side, class_left) {
            (Some(side), _) => side,
            (None, true) => Side::Left,
            (None, false) => family.default_padding_side(),
        }
    }
}

/// A special token's text: a plain string or a serialized `AddedToken` (`{"content": ...}`).
fn token_content(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

/// Reads and parses a JSON file; errors name the file.
pub(crate) fn read_json(path: &Path) -> Result<Value, TokenizerError> {
    let text = read_text(path)?;
    serde_json::from_str(&text)
        .map_err(|e| TokenizerError::Json { path: path.to_path_buf(), msg: e.to_string() })
}

/// Reads a UTF-8 text file; a missing file is reported as such, with its path.
pub(crate) fn read_text(path: &Path) -> Result<String, TokenizerError> {
    std::fs::read_to_string(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => TokenizerError::MissingFile { path: path.to_path_buf() },
        _ => TokenizerError::Io { path: path.to_path_buf(), err: source },
    })
}

/// Where a model's tokenizer lives and which `config.json` files may name its text encoder.
pub(crate) struct Layout {
    pub tokenizer_dir: PathBuf,
    pub encoder_configs: Vec<PathBuf>,
}

/// Accepts a diffusers model root (`<root>/tokenizer/tokenizer.json`, `<root>/text_encoder/config.json`)
/// or the tokenizer folder itself (then `../text_encoder/config.json` or `./config.json`).
pub(crate) fn locate(dir: &Path) -> Result<Layout, TokenizerError> {
    if dir.join("tokenizer.json").is_file() {
        let mut encoder_configs = Vec::new();
        if let Some(parent) = dir.parent() {
            encoder_configs.push(parent.join("text_encoder").join("config.json"));
        }
        encoder_configs.push(dir.join("config.json"));
        return Ok(Layout { tokenizer_dir: dir.to_path_buf(), encoder_configs });
    }
    let sub = dir.join("tokenizer");
    if sub.join("tokenizer.json").is_file() {
        let encoder_configs = vec![dir.join("text_encoder").join("config.json")];
        return Ok(Layout { tokenizer_dir: sub, encoder_configs });
    }
    Err(TokenizerError::MissingFile { path: sub.join("tokenizer.json") })
}
