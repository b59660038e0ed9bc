//! A checkpoint's Jinja chat template, rendered with minijinja the way transformers renders it.
//!
//! transformers v5.23.0 `utils/chat_template_utils.py` compiles templates in an
//! `ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])`
//! with `tojson`, `raise_exception`, `strftime_now`, `dict` and `namespace`, and renders
//! `messages`, `tools`, `documents`, `add_generation_prompt`, the named special tokens and any extra
//! keyword (e.g. `enable_thinking`). Python string/dict methods (`startswith`, `split`, `items`, ...)
//! come from `minijinja_contrib::pycompat`.
//!
//! The template is looked up like transformers does: `chat_template.jinja`, then the processor's
//! `chat_template.json`, then the `chat_template` entry of `tokenizer_config.json` (a string, or a
//! list of `{name, template}` of which `default` is used).

use super::config::{read_json, read_text, TokenizerConfig};
use super::pyfns;
use super::TokenizerError;
use minijinja::{AutoEscape, Environment, Error, ErrorKind, Value};
use std::path::{Path, PathBuf};

/// Name of the single template inside the environment.
const NAME: &str = "chat_template";

/// One message of a chat: a role and either plain text or a list of typed content blocks.
#[derive(Debug, Clone)]
pub enum Content {
    /// `"content": "text"`.
    Text(String),
    /// `"content": [{"type": "text", "text": ...}, ...]`: the text blocks, in order.
    TextBlocks(Vec<String>),
}

/// A chat message, as passed to `apply_chat_template`.
#[derive(Debug, Clone)]
pub struct Message {
    pub role: String,
    pub content: Content,
}

impl Message {
    fn to_value(&self) -> Value {
        let content = match &self.content {
            Content::Text(t) => Value::from(t.as_str()),
            Content::TextBlocks(blocks) => Value::from_iter(blocks.iter().map(|t| {
                Value::from_iter([("type", Value::from("text")), ("text", Value::from(t.as_str()))])
            })),
        };
        Value::from_iter([("role", Value::from(self.role.as_str())), ("content", content)])
    }
}

/// A compiled chat template plus the named special tokens it may reference.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// Where the template came from (for error messages).
    path: PathBuf,
    special: Vec<(&'static str, String)>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("path", &self.path).finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Finds and compiles the chat template of the tokenizer folder `dir`.
    pub(crate) fn load(dir: &Path, config: &TokenizerConfig) -> Result<Self, TokenizerError> {
        let (source, path) = find_source(dir, config)?;
        Self::from_source(source, path, config.special.clone())
    }

    /// Compiles `source`; `path` names it in errors. `special` are the named special tokens
    /// (`("bos_token", "<s>")`, ...) visible to the template.
    pub fn from_source(
        source: String,
        path: PathBuf,
        special: Vec<(&'static str, String)>,
    ) -> Result<Self, TokenizerError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", pyfns::tojson);
        env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |format: String| pyfns::strftime_now(&format));
        env.add_template_owned(NAME, source)
            .map_err(|e| TokenizerError::Template { path: path.clone(), msg: describe(&e) })?;
        Ok(ChatTemplate { env, path, special })
    }

    /// The file the template was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Renders one conversation. `extra` are additional template variables (e.g. `enable_thinking`).
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        extra: &[(&str, Value)],
    ) -> Result<String, TokenizerError> {
        let mut ctx: Vec<(&str, Value)> =
            self.special.iter().map(|(name, tok)| (*name, Value::from(tok.as_str()))).collect();
        ctx.extend(extra.iter().cloned());
        ctx.push(("messages", Value::from_iter(messages.iter().map(Message::to_value))));
        ctx.push(("tools", Value::from(())));
        ctx.push(("documents", Value::from(())));
        ctx.push(("add_generation_prompt", Value::from(add_generation_prompt)));
        let err = |e: Error| TokenizerError::Template { path: self.path.clone(), msg: describe(&e) };
        let template = self.env.get_template(NAME).map_err(err)?;
        template.render(Value::from_iter(ctx)).map_err(err)
    }
}

/// The template source and the file it came from.
fn find_source(dir: &Path, config: &TokenizerConfig) -> Result<(String, PathBuf), TokenizerError> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        return Ok((read_text(&jinja)?, jinja));
    }
    let json = dir.join("chat_template.json");
    if json.is_file() {
        let source = read_json(&json)?.get("chat_template").and_then(|v| v.as_str().map(str::to_owned));
        return match source {
            Some(s) => Ok((s, json)),
            None => Err(TokenizerError::Config { path: json, msg: "no \"chat_template\" string".into() }),
        };
    }
    let config_path = dir.join("tokenizer_config.json");
    match &config.chat_template {
        Some(serde_json::Value::String(s)) => Ok((s.clone(), config_path)),
        Some(serde_json::Value::Array(named)) => named
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|t| t.get("template")?.as_str())
            .map(|s| (s.to_owned(), config_path.clone()))
            .ok_or(TokenizerError::Config {
                path: config_path,
                msg: "chat_template is a list without a \"default\" template".into(),
            }),
        Some(other) => Err(TokenizerError::Config {
            path: config_path,
            msg: format!("chat_template must be a string or a list, got {other}"),
        }),
        None => Err(TokenizerError::MissingTemplate { dir: dir.to_path_buf() }),
    }
}

/// A minijinja error with its detail (the message already names the template line).
fn describe(e: &Error) -> String {
    match e.detail() {
        Some(detail) if !e.to_string().contains(detail) => format!("{e}: {detail}"),
        _ => e.to_string(),
    }
}
