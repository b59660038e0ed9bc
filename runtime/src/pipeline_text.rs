//! The prompt side of the pipeline: every prompt given as text (the prompt and, with true
//! CFG, the negative prompt, "" by default) goes through the tokenizer and ONE text-encoder
//! call as a batch; prompts given as embeddings are borrowed as they are.
//!
//! All images of a batch share the prompt, so the text encoder runs once per request, not
//! once per image. Every text is padded to `max_sequence_length` (as diffusers does), so the
//! rows of the call have one length and the attention mask only hides padding inside a row:
//! the embeddings of a text do not depend on what else is in the call.

use std::borrow::Cow;

use super::{steps, EncoderUse, Pipeline, Plan, PromptSource, Request};
use crate::tensor_file::Tensor;
use crate::tensors::InputRef;
use crate::tokenizer::PromptEncoder;
use crate::RuntimeError;

impl Pipeline {
    /// Prompt embeddings `[1, L, ctx]` of the request and, with true CFG, of its negative.
    pub(super) fn prompt_embeddings<'r>(
        &mut self,
        plan: &Plan,
        req: &'r Request,
    ) -> Result<(Cow<'r, Tensor>, Option<Cow<'r, Tensor>>), RuntimeError> {
        let negative_text = match (&req.negative, plan.cfg) {
            (_, false) | (Some(PromptSource::Embeds(_)), true) => None,
            (None, true) => Some(""),
            (Some(PromptSource::Text(t)), true) => Some(t.as_str()),
        };
        let mut texts: Vec<(&str, &str)> = Vec::new();
        if let PromptSource::Text(t) = &req.prompt {
            texts.push(("prompt", t.as_str()));
        }
        if let Some(t) = negative_text {
            texts.push(("negative prompt", t));
        }
        let mut encoded = self.encode_texts(&texts, req.max_sequence_length)?.into_iter();
        let mut next =
            || encoded.next().ok_or_else(|| RuntimeError::Run("text encoder returned too few rows".into()));
        let cond = match &req.prompt {
            PromptSource::Embeds(t) => Cow::Borrowed(t),
            PromptSource::Text(_) => Cow::Owned(next()?),
        };
        let uncond = match (&req.negative, plan.cfg) {
            (_, false) => None,
            (Some(PromptSource::Embeds(t)), true) => Some(Cow::Borrowed(t)),
            _ => Some(Cow::Owned(next()?)),
        };
        Ok((cond, uncond))
    }

    /// Embeddings `[1, L, ctx]` of each text, exactly as a generation computes them (chat
    /// template, padding to `max_len` tokens, one text-encoder call for all), for callers that
    /// encode prompts apart from sampling (a shared text-encoder service, an embeddings cache).
    pub fn encode_prompts(&mut self, texts: &[&str], max_len: usize) -> Result<Vec<Tensor>, RuntimeError> {
        if max_len == 0 {
            return Err(RuntimeError::Input {
                name: "--max-sequence-length".into(),
                msg: "0: the maximum prompt sequence length must be at least 1 token".into(),
            });
        }
        self.model.graph("text_encoder")?;
        let named: Vec<(&str, &str)> = texts.iter().map(|t| ("prompt", *t)).collect();
        self.encode_texts(&named, max_len)
    }

    /// The tokenizer of the export (loaded on first use).
    fn tokenizer(&mut self) -> Result<&PromptEncoder, RuntimeError> {
        if self.tokenizer.is_none() {
            let dir = self.model.tokenizer_dir().ok_or_else(|| RuntimeError::Model {
                path: self.model.dir.clone(),
                msg: "no tokenizer/ folder: export the text encoder from a diffusers folder, or pass embeddings"
                    .into(),
            })?;
            let family = steps::text_family(&self.model)?;
            let tok = PromptEncoder::from_tokenizer_dir(&dir, family)
                .map_err(|e| RuntimeError::Model { path: dir.clone(), msg: e.to_string() })?;
            self.tokenizer = Some(tok);
        }
        self.tokenizer.as_ref().ok_or_else(|| RuntimeError::Run("tokenizer not loaded".into()))
    }

    /// Embeddings `[1, L, ctx]` of each `(name, text)`: from the prompt cache where it has
    /// them, the others from one text-encoder call (whose session is created only then).
    fn encode_texts(&mut self, texts: &[(&str, &str)], max_len: usize) -> Result<Vec<Tensor>, RuntimeError> {
        if texts.is_empty() {
            self.encoder_use = Some(EncoderUse::NotNeeded);
            return Ok(vec![]);
        }
        let mut keys = Vec::with_capacity(texts.len());
        let mut found = Vec::with_capacity(texts.len());
        for (_, text) in texts {
            let key = self.prompt_key(text, max_len)?;
            found.push(key.and_then(|k| self.prompt_cache.as_mut()?.get(&k)));
            keys.push(key);
        }
        let missing: Vec<(&str, &str)> =
            texts.iter().zip(&found).filter(|(_, f)| f.is_none()).map(|(t, _)| *t).collect();
        self.encoder_use = Some(if missing.is_empty() { EncoderUse::Cached } else { EncoderUse::Ran });
        let mut encoded = self.run_encoder(&missing, max_len)?.into_iter();
        let mut out = Vec::with_capacity(texts.len());
        for (f, key) in found.into_iter().zip(keys) {
            let t = match f {
                Some(t) => t,
                None => {
                    let t = encoded
                        .next()
                        .ok_or_else(|| RuntimeError::Run("text encoder returned too few rows".into()))?;
                    if let (Some(k), Some(c)) = (key, self.prompt_cache.as_mut()) {
                        c.counts.misses += 1;
                        c.put(k, &t);
                    }
                    t
                }
            };
            out.push(t);
        }
        Ok(out)
    }

    /// Makes the text encoder's session (whose `L` is fixed) one for `len` tokens: a session
    /// made for another length is dropped, to be created again on use.
    fn fix_text_length(&mut self, len: usize) {
        if self.text_len != len {
            log::info!("text encoder: padded length {} -> {len}; its session is made again", self.text_len);
            self.text_len = len;
            let _ = self.take_pending("text_encoder");
            self.sessions.remove("text_encoder");
        }
    }

    /// Embeddings `[1, L, ctx]` of each `(name, text)`, from one text-encoder call.
    fn run_encoder(&mut self, texts: &[(&str, &str)], max_len: usize) -> Result<Vec<Tensor>, RuntimeError> {
        if texts.is_empty() {
            return Ok(vec![]);
        }
        let strings: Vec<&str> = texts.iter().map(|(_, t)| *t).collect();
        let enc = self
            .tokenizer()?
            .encode(&strings, max_len)
            .map_err(|e| RuntimeError::Input { name: "prompt".into(), msg: e.to_string() })?;
        for ((name, _), dropped) in texts.iter().zip(&enc.truncated) {
            if *dropped > 0 {
                log::warn!(
                    "{name} truncated: {dropped} tokens beyond --max-sequence-length {max_len} dropped"
                );
            }
        }
        self.fix_text_length(enc.len);
        let shape = vec![enc.batch, enc.len];
        let inputs = [
            ("input_ids", InputRef::I64(shape.clone(), &enc.input_ids)),
            ("attention_mask", InputRef::I64(shape, &enc.attention_mask)),
        ];
        let out = steps::take(self.call("text_encoder", &inputs)?, "prompt_embeds")?;
        let [b, l, ctx] = out.shape[..] else {
            return Err(RuntimeError::Run(format!(
                "prompt_embeds has shape {:?}, expected [B, L, ctx]",
                out.shape
            )));
        };
        if b != texts.len() || out.data.len() != b * l * ctx {
            return Err(RuntimeError::Run(format!(
                "prompt_embeds has shape {:?} for {} prompts",
                out.shape,
                texts.len()
            )));
        }
        Ok(out.data.chunks(l * ctx).map(|d| Tensor { shape: vec![1, l, ctx], data: d.to_vec() }).collect())
    }
}
