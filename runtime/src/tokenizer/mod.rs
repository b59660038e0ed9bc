//! Prompt tokenisation for the FLUX.2 text encoders: the chat template of the checkpoint rendered
//! with minijinja, its `tokenizer.json` applied with the `tokenizers` crate, then truncation and
//! padding to a fixed length, giving the `input_ids` / `attention_mask` the text encoder consumes.
//!
//! It reproduces diffusers v0.42.1 (`pipelines/flux2/pipeline_flux2.py`
//! `Flux2Pipeline._get_mistral_3_small_prompt_embeds` + `format_input`, and
//! `pipeline_flux2_klein.py` `Flux2KleinPipeline._get_qwen3_prompt_embeds`) on transformers v5.23.0:
//!
//! * **dev (Mistral3)**: `"[IMG]"` is removed from the prompt, the chat is a system turn
//!   ([`SYSTEM_MESSAGE`]) and a user turn with content `[{"type":"text","text":prompt}]`, rendered with
//!   `add_generation_prompt=False`. The processor tokenizes with `add_special_tokens=False` when the
//!   text starts with the BOS token (`ProcessorMixin.apply_chat_template`), else with special tokens.
//! * **klein (Qwen3)**: `[{"role":"user","content":prompt}]` with `add_generation_prompt=True,
//!   enable_thinking=False`, tokenized by `tokenizer(text)` (special tokens on).
//!
//! Both then use `padding="max_length", truncation=True, max_length=L` (512 by default): tokens past
//! `L` are dropped from the tokenizer's truncation side (right: the head is kept, `[/INST]` or
//! `<|im_end|>` may be lost), then the row is padded with the pad token on the padding side
//! (`padding_side` of `tokenizer_config.json`; Mistral left, Qwen right). Text in a prompt that spells
//! a special token (`<s>`, `[INST]`, `<|im_end|>`) becomes that token, as in the reference.

mod config;
mod pyfns;
pub mod template;

pub use config::{Family, Side};
/// Values passed to [`ChatTemplate::render`] as extra template variables.
pub use minijinja::Value as TemplateValue;
pub use template::{ChatTemplate, Content, Message};

use config::{locate, TokenizerConfig};
use minijinja::Value;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationDirection, TruncationParams,
    TruncationStrategy,
};

/// The FLUX.2 [dev] system message (diffusers `pipelines/flux2/system_messages.py` `SYSTEM_MESSAGE`,
/// identical to BFL `flux2/system_messages.py`); note the newline after "object".
pub const SYSTEM_MESSAGE: &str = "You are an AI that reasons about image descriptions. You give structured \
responses focusing on object relationships, object\nattribution and actions without speculation.";

/// `max_sequence_length` default of both FLUX.2 pipelines.
pub const DEFAULT_MAX_LENGTH: usize = 512;

/// Errors of prompt tokenisation; each names the file, field or prompt at fault.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("missing file {path}")]
    MissingFile { path: PathBuf },
    #[error("no tokenizer in {dir}: neither {dir}/tokenizer.json nor {dir}/tokenizer/tokenizer.json exists")]
    NoTokenizer { dir: PathBuf },
    #[error("reading {path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{path}: invalid JSON: {msg}")]
    Json { path: PathBuf, msg: String },
    #[error("{path}: cannot load tokenizer: {msg}")]
    Load { path: PathBuf, msg: String },
    #[error("{path}: {msg}")]
    Config { path: PathBuf, msg: String },
    #[error(
        "{path}: unknown text-encoder architecture {field} = '{value}'; supported: mistral3 / \
         Mistral3ForConditionalGeneration (FLUX.2 dev), qwen3 / Qwen3ForCausalLM (FLUX.2 klein)"
    )]
    UnknownArchitecture { path: PathBuf, field: &'static str, value: String },
    #[error("cannot tell the text-encoder family: none of {tried:?} exists; pass the family explicitly")]
    UnknownFamily { tried: Vec<PathBuf> },
    #[error(
        "no chat template in {dir}: expected chat_template.jinja, chat_template.json or a \
         \"chat_template\" entry in tokenizer_config.json"
    )]
    MissingTemplate { dir: PathBuf },
    #[error("chat template {path}: {msg}")]
    Template { path: PathBuf, msg: String },
    #[error("tokenizing prompt {index}: {msg}")]
    Encode { index: usize, msg: String },
    #[error("{0}")]
    Option(String),
}

/// Token ids and attention masks of a batch, row-major `[batch, len]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub input_ids: Vec<i64>,
    /// 1 for a real token (including special-token text written in the prompt), 0 for padding.
    pub attention_mask: Vec<i64>,
    pub batch: usize,
    pub len: usize,
    /// Tokens dropped by truncation, per prompt (0 when the prompt fits).
    pub truncated: Vec<usize>,
}

/// Renders and tokenizes prompts exactly as the FLUX.2 pipelines do for one checkpoint.
#[derive(Debug)]
pub struct PromptEncoder {
    family: Family,
    template: ChatTemplate,
    /// The tokenizer; its truncation/padding settings are set per call, hence the lock.
    tokenizer: Mutex<Tokenizer>,
    tokenizer_path: PathBuf,
    bos_token: Option<String>,
    pad_token: String,
    pad_id: u32,
    padding_side: Side,
    truncation_side: Side,
}

impl PromptEncoder {
    /// Loads from a diffusers model folder (`<dir>/tokenizer/`, family from
    /// `<dir>/text_encoder/config.json`) or from the tokenizer folder itself (family from
    /// `../text_encoder/config.json` or `./config.json`). `family` overrides the detection.
    ///
    /// ```no_run
    /// use flux2_runtime::tokenizer::{PromptEncoder, DEFAULT_MAX_LENGTH};
    /// let enc = PromptEncoder::from_model_dir("FLUX.2-klein-4B".as_ref(), None)?;
    /// let batch = enc.encode(&["a red cat", ""], DEFAULT_MAX_LENGTH)?;
    /// assert_eq!(batch.input_ids.len(), 2 * 512);
    /// # Ok::<(), flux2_runtime::tokenizer::TokenizerError>(())
    /// ```
    pub fn from_model_dir(dir: &Path, family: Option<Family>) -> Result<Self, TokenizerError> {
        let layout = locate(dir)?;
        let family = match family {
            Some(f) => f,
            None => match layout.encoder_configs.iter().find(|p| p.is_file()) {
                Some(path) => Family::from_config_file(path)?,
                None => return Err(TokenizerError::UnknownFamily { tried: layout.encoder_configs }),
            },
        };
        Self::from_tokenizer_dir(&layout.tokenizer_dir, family)
    }

    /// Loads `dir/tokenizer.json`, `dir/tokenizer_config.json` and the chat template of `dir`.
    pub fn from_tokenizer_dir(dir: &Path, family: Family) -> Result<Self, TokenizerError> {
        let tokenizer_path = dir.join("tokenizer.json");
        let json = config::read_text(&tokenizer_path)?;
        let mut tokenizer: Tokenizer = json
            .parse()
            .map_err(|e| TokenizerError::Load { path: tokenizer_path.clone(), msg: format!("{e}") })?;
        let config = TokenizerConfig::load(dir)?;
        let config_path = dir.join("tokenizer_config.json");
        apply_bos_eos_flags(&mut tokenizer, &config, &config_path)?;
        let pad_token = config.token("pad_token").ok_or_else(|| TokenizerError::Config {
            path: config_path.clone(),
            msg: "no pad_token: the pipelines pad every prompt to max_length".into(),
        })?;
        let pad_id = tokenizer.token_to_id(pad_token).ok_or_else(|| TokenizerError::Config {
            path: config_path.clone(),
            msg: format!("pad_token '{pad_token}' is not in {}", tokenizer_path.display()),
        })?;
        let template = ChatTemplate::load(dir, &config)?;
        Ok(PromptEncoder {
            family,
            template,
            tokenizer: Mutex::new(tokenizer),
            tokenizer_path,
            bos_token: config.token("bos_token").map(str::to_owned),
            pad_token: pad_token.to_owned(),
            pad_id,
            padding_side: config.padding_side(family),
            truncation_side: config.truncation_side.unwrap_or(Side::Right),
        })
    }

    pub fn family(&self) -> Family {
        self.family
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn padding_side(&self) -> Side {
        self.padding_side
    }

    pub fn truncation_side(&self) -> Side {
        self.truncation_side
    }

    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    /// The chat-templated text of one prompt, before tokenisation.
    pub fn render(&self, prompt: &str) -> Result<String, TokenizerError> {
        match self.family {
            Family::Mistral3 => {
                let user = prompt.replace("[IMG]", "");
                let messages = [
                    Message {
                        role: "system".into(),
                        content: Content::TextBlocks(vec![SYSTEM_MESSAGE.into()]),
                    },
                    Message { role: "user".into(), content: Content::TextBlocks(vec![user]) },
                ];
                self.template.render(&messages, false, &[])
            }
            Family::Qwen3 => {
                let messages = [Message { role: "user".into(), content: Content::Text(prompt.into()) }];
                self.template.render(&messages, true, &[("enable_thinking", Value::from(false))])
            }
        }
    }

    /// Renders, tokenizes, truncates and pads each prompt to `max_len` tokens. A truncated prompt is
    /// logged with `log::warn!` and counted in [`Encoded::truncated`].
    pub fn encode(&self, prompts: &[&str], max_len: usize) -> Result<Encoded, TokenizerError> {
        if max_len == 0 {
            return Err(TokenizerError::Option("max sequence length must be at least 1".into()));
        }
        let mut tokenizer = self.tokenizer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut out = Encoded {
            input_ids: Vec::with_capacity(prompts.len() * max_len),
            attention_mask: Vec::with_capacity(prompts.len() * max_len),
            batch: prompts.len(),
            len: max_len,
            truncated: Vec::with_capacity(prompts.len()),
        };
        for (index, prompt) in prompts.iter().enumerate() {
            let (ids, mask, dropped) = self.encode_one(&mut tokenizer, index, prompt, max_len)?;
            out.input_ids.extend(ids);
            out.attention_mask.extend(mask);
            out.truncated.push(dropped);
        }
        Ok(out)
    }

    /// One prompt: (ids, mask, tokens dropped by truncation).
    fn encode_one(
        &self,
        tokenizer: &mut Tokenizer,
        index: usize,
        prompt: &str,
        max_len: usize,
    ) -> Result<(Vec<i64>, Vec<i64>, usize), TokenizerError> {
        let text = self.render(prompt)?;
        // The Mistral processor skips special tokens when the template already wrote BOS.
        let add_special = match (self.family, &self.bos_token) {
            (Family::Mistral3, Some(bos)) => !text.starts_with(bos.as_str()),
            _ => true,
        };
        let fail = |e: tokenizers::Error| TokenizerError::Encode { index, msg: e.to_string() };
        // Untruncated length first, to report what truncation drops.
        tokenizer.with_truncation(None).map_err(fail)?.with_padding(None);
        let full = tokenizer.encode(text.as_str(), add_special).map_err(fail)?.len();
        tokenizer.with_truncation(Some(self.truncation(max_len))).map_err(fail)?;
        tokenizer.with_padding(Some(self.padding(max_len)));
        let enc = tokenizer.encode(text.as_str(), add_special).map_err(fail)?;
        if enc.len() != max_len {
            let msg = format!("got {} tokens after padding to {max_len}", enc.len());
            return Err(TokenizerError::Encode { index, msg });
        }
        let dropped = full.saturating_sub(max_len);
        if dropped > 0 {
            let side = if self.truncation_side == Side::Right { "right" } else { "left" };
            log::warn!(
                "prompt {index} is {full} tokens after templating; truncated to {max_len} \
                 ({dropped} dropped from the {side} end)"
            );
        }
        let ids = enc.get_ids().iter().map(|&id| i64::from(id)).collect();
        let mask = enc.get_attention_mask().iter().map(|&m| i64::from(m)).collect();
        Ok((ids, mask, dropped))
    }

    fn truncation(&self, max_len: usize) -> TruncationParams {
        TruncationParams {
            direction: match self.truncation_side {
                Side::Left => TruncationDirection::Left,
                Side::Right => TruncationDirection::Right,
            },
            max_length: max_len,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
        }
    }

    fn padding(&self, max_len: usize) -> PaddingParams {
        PaddingParams {
            strategy: PaddingStrategy::Fixed(max_len),
            direction: match self.padding_side {
                Side::Left => PaddingDirection::Left,
                Side::Right => PaddingDirection::Right,
            },
            pad_to_multiple_of: None,
            pad_id: self.pad_id,
            pad_type_id: 0,
            pad_token: self.pad_token.clone(),
        }
    }

    /// The `tokenizer.json` this encoder was loaded from.
    pub fn tokenizer_path(&self) -> &Path {
        &self.tokenizer_path
    }
}

/// transformers' `TokenizersBackend.update_post_processor`: when `tokenizer_config.json` sets
/// `add_bos_token`/`add_eos_token`, or `tokenizer.json` has no post-processor, the post-processor
/// becomes `[bos] $A [eos]` per those flags (default off).
fn apply_bos_eos_flags(
    tokenizer: &mut Tokenizer,
    config: &TokenizerConfig,
    config_path: &Path,
) -> Result<(), TokenizerError> {
    let explicit = config.add_bos_token.is_some() || config.add_eos_token.is_some();
    if !explicit && tokenizer.get_post_processor().is_some() {
        return Ok(());
    }
    let lookup = |flag: Option<bool>, name: &str| -> Result<Option<(String, u32)>, TokenizerError> {
        match (flag, config.token(name)) {
            (Some(true), Some(token)) => match tokenizer.token_to_id(token) {
                Some(id) => Ok(Some((token.to_owned(), id))),
                None => Err(TokenizerError::Config {
                    path: config_path.to_path_buf(),
                    msg: format!("{name} '{token}' is not in the vocabulary"),
                }),
            },
            _ => Ok(None),
        }
    };
    let bos = lookup(config.add_bos_token, "bos_token")?;
    let eos = lookup(config.add_eos_token, "eos_token")?;
    let piece = |t: &Option<(String, u32)>, seq: u32| t.as_ref().map(|(tok, _)| format!("{tok}:{seq}"));
    let single: Vec<String> =
        [piece(&bos, 0), Some("$A:0".into()), piece(&eos, 0)].into_iter().flatten().collect();
    let pair_tail = [piece(&bos, 1), Some("$B:1".into()), piece(&eos, 1)].into_iter().flatten();
    let pair: Vec<String> = single.iter().cloned().chain(pair_tail).collect();
    let specials: Vec<(String, u32)> = bos.into_iter().chain(eos).collect();
    let invalid = |e: String| TokenizerError::Config { path: config_path.to_path_buf(), msg: e };
    let processor = TemplateProcessing::builder()
        .try_single(single)
        .map_err(invalid)?
        .try_pair(pair)
        .map_err(invalid)?
        .special_tokens(specials)
        .build()
        .map_err(|e| invalid(e.to_string()))?;
    tokenizer.with_post_processor(Some(processor));
    Ok(())
}
