//! A generation request as its callers spell it (the `flux2 generate` options, the Python
//! package's keyword arguments, a Triton request): prompt text or an embeddings file, shift as
//! text, optional noise file. [`GenerateArgs::into_request`] turns it into a pipeline
//! [`Request`] with the same checks and messages for every front end, and
//! [`session_factory`] turns `provider` + `threads` into sessions the same way.

use std::path::{Path, PathBuf};

use crate::images::Reference;
use crate::pipeline::{PromptSource, Request, SessionFactory};
use crate::providers::{session_factory as provider_factory, ExecutionProvider};
use crate::schedule::Shift;
use crate::tensor_file::read_tensor;
use crate::{RuntimeError, SessionOptions};

/// Default prompt length limit in tokens (longer prompts are truncated with a warning).
pub const DEFAULT_MAX_SEQUENCE_LENGTH: usize = 512;

/// The options of one generation, as given (see `flux2 generate --help`).
#[derive(Clone, Debug, Default)]
pub struct GenerateArgs {
    pub prompt: Option<String>,
    /// safetensors with tensor `prompt_embeds` [1, L, ctx].
    pub prompt_embeds: Option<PathBuf>,
    pub negative_prompt: Option<String>,
    pub negative_prompt_embeds: Option<PathBuf>,
    pub references: Vec<Reference>,
    pub width: Option<usize>,
    pub height: Option<usize>,
    pub steps: Option<usize>,
    pub guidance: Option<f32>,
    /// `empirical` (default), `resolution[:BASE_TOKENS]` or `fixed:ALPHA`.
    pub shift: Option<String>,
    /// Seed of the first image; image k of a batch uses `seed + k`.
    pub seed: u64,
    /// Images made as one batch (seeds `seed`, `seed + 1`, …); None means 1, 0 is refused.
    pub num_images: Option<usize>,
    /// safetensors with tensor `noise` [N, 128, H/16, W/16] (N = the number of images),
    /// instead of the seed.
    pub noise: Option<PathBuf>,
    /// Prompt length limit in tokens; None means [`DEFAULT_MAX_SEQUENCE_LENGTH`], 0 is refused.
    pub max_sequence_length: Option<usize>,
    /// Step caching: `fbc:T`, `mag:T[,MAX_SKIP[,RETENTION]]`, `taylor:N[,ORDER[,BEFORE[,AFTER]]]`,
    /// `tea:T` ([`crate::cache::CacheSpec`]); None or `off`: no caching.
    pub cache: Option<String>,
}

fn input_err(name: &str, msg: impl Into<String>) -> RuntimeError {
    RuntimeError::Input { name: name.into(), msg: msg.into() }
}

fn embeds(path: &Path) -> Result<PromptSource, RuntimeError> {
    Ok(PromptSource::Embeds(read_tensor(path, "prompt_embeds")?))
}

impl GenerateArgs {
    /// A text-to-image request with every other option at its default.
    pub fn text(prompt: &str) -> GenerateArgs {
        GenerateArgs { prompt: Some(prompt.to_string()), ..GenerateArgs::default() }
    }

    /// Checks the combination of options, reads the files they name and builds the pipeline
    /// request. What needs the model (sizes, steps, references, embedding widths) is checked
    /// by [`crate::pipeline::Pipeline::plan`].
    pub fn into_request(self) -> Result<Request, RuntimeError> {
        let prompt = match (self.prompt, &self.prompt_embeds) {
            (Some(p), None) => PromptSource::Text(p),
            (None, Some(f)) => embeds(f)?,
            (Some(_), Some(_)) => {
                return Err(input_err("--prompt", "give a prompt text or prompt embeddings, not both"))
            }
            (None, None) => return Err(input_err("--prompt", "give --prompt TEXT or --prompt-embeds FILE")),
        };
        let negative = match (self.negative_prompt, &self.negative_prompt_embeds) {
            (Some(_), Some(_)) => {
                return Err(input_err(
                    "--negative-prompt",
                    "give a negative prompt text or negative prompt embeddings, not both",
                ))
            }
            (Some(p), None) => Some(PromptSource::Text(p)),
            (None, Some(f)) => Some(embeds(f)?),
            (None, None) => None,
        };
        let shift: Option<Shift> = match &self.shift {
            Some(s) => Some(
                s.parse().map_err(|e: crate::schedule::ScheduleError| input_err("--shift", e.to_string()))?,
            ),
            None => None,
        };
        let noise = match &self.noise {
            Some(p) => Some(read_tensor(p, "noise")?),
            None => None,
        };
        let mut req = Request::new(prompt);
        req.negative = negative;
        req.references = self.references;
        (req.width, req.height, req.steps, req.guidance) =
            (self.width, self.height, self.steps, self.guidance);
        req.shift = shift;
        req.seed = self.seed;
        req.num_images = match self.num_images {
            None => 1,
            Some(0) => return Err(input_err("--num-images", "0: a request makes at least 1 image")),
            Some(n) => n,
        };
        req.noise = noise;
        req.cache = match self.cache.as_deref().map(str::trim) {
            None | Some("") | Some("off") | Some("none") => None,
            Some(s) => Some(s.parse()?),
        };
        req.max_sequence_length = match self.max_sequence_length {
            None => DEFAULT_MAX_SEQUENCE_LENGTH,
            Some(0) => {
                return Err(input_err(
                    "--max-sequence-length",
                    "0: the maximum prompt sequence length must be at least 1 token",
                ))
            }
            Some(n) => n,
        };
        Ok(req)
    }
}

/// Sessions for `provider` (`cpu`, `cuda`, `tensorrt`) with `threads` intra-op threads on the
/// CPU provider (default: every core), GPU providers on GPU `device_id`. GPU providers fail with
/// what is missing instead of falling back to the CPU.
pub fn session_factory(
    provider: &str,
    threads: Option<usize>,
    device_id: i32,
) -> Result<SessionFactory, RuntimeError> {
    let kind: ExecutionProvider = provider.parse()?;
    let mut opts = SessionOptions::default();
    match (threads, kind) {
        (Some(0), _) => return Err(input_err("--threads", "must be at least 1")),
        (Some(n), ExecutionProvider::Cpu) => opts.intra_threads = n,
        (Some(_), other) => {
            return Err(input_err("--threads", format!("applies to the cpu provider, not {other}")))
        }
        (None, _) => {}
    }
    Ok(provider_factory(kind, device_id, opts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_text_xor_embeddings() {
        let e = GenerateArgs::default().into_request().unwrap_err().to_string();
        assert!(e.contains("--prompt"), "{e}");
        let both = GenerateArgs { prompt_embeds: Some("x.safetensors".into()), ..GenerateArgs::text("a") };
        assert!(both.into_request().unwrap_err().to_string().contains("not both"));
        let r = GenerateArgs::text("a fox").into_request().unwrap();
        assert!(matches!(r.prompt, PromptSource::Text(ref t) if t == "a fox"));
        assert_eq!(r.max_sequence_length, DEFAULT_MAX_SEQUENCE_LENGTH);
        let zero = GenerateArgs { max_sequence_length: Some(0), ..GenerateArgs::text("a") };
        let e = zero.into_request().unwrap_err().to_string();
        assert!(e.contains("--max-sequence-length"), "{e}");
    }

    #[test]
    fn num_images_defaults_to_one_and_refuses_zero() {
        assert_eq!(GenerateArgs::text("a").into_request().unwrap().num_images, 1);
        let four = GenerateArgs { num_images: Some(4), ..GenerateArgs::text("a") };
        assert_eq!(four.into_request().unwrap().num_images, 4);
        let zero = GenerateArgs { num_images: Some(0), ..GenerateArgs::text("a") };
        let e = zero.into_request().unwrap_err().to_string();
        assert!(e.contains("--num-images") && e.contains("at least 1"), "{e}");
    }

    #[test]
    fn shift_and_files_name_the_option() {
        let bad = GenerateArgs { shift: Some("fixed:-1".into()), ..GenerateArgs::text("a") };
        let e = bad.into_request().unwrap_err().to_string();
        assert!(e.contains("--shift") && e.contains("-1"), "{e}");
        let missing =
            GenerateArgs { noise: Some("/nonexistent/n.safetensors".into()), ..GenerateArgs::text("a") };
        let e = missing.into_request().unwrap_err().to_string();
        assert!(e.contains("/nonexistent/n.safetensors"), "{e}");
        let ok = GenerateArgs { shift: Some("fixed:3".into()), seed: 9, ..GenerateArgs::text("a") };
        let r = ok.into_request().unwrap();
        assert_eq!((r.shift, r.seed), (Some(Shift::Fixed(3.0)), 9));
    }

    #[test]
    fn threads_only_on_cpu() {
        let e = session_factory("cpu", Some(0), 0).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("--threads"), "{e}");
        let e = session_factory("cuda", Some(2), 0).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("cuda"), "{e}");
        assert!(session_factory("cpu", Some(2), 0).is_ok());
        let e = session_factory("rocm", None, 0).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("rocm"), "{e}");
    }
}
