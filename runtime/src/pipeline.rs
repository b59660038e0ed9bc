//! The end-to-end FLUX.2 pipeline over exported graphs: prompt -> tokenizer -> text
//! encoder -> embeddings; seeded noise; α-shifted Euler flow matching with the DiT
//! (embedded guidance, true CFG, or none); reference images encoded and appended with
//! time offsets 10, 20, …; VAE decode. Mirrors diffusers 0.42.1 `Flux2Pipeline` /
//! `Flux2KleinPipeline.__call__` in float32.
//!
//! Everything a request can get wrong is checked by [`Pipeline::plan`] before any model
//! runs. Sessions are created once per pipeline and reused across steps and requests.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ndarray::{ArrayD, IxDyn};
use ort::session::Session;

use crate::images::Chw;
use crate::model_dir::{Guidance, ModelDir};
use crate::schedule::{euler_step, Schedule, Shift};
use crate::tensor_file::Tensor;
use crate::tensors::{run, Input};
use crate::tokenizer::PromptEncoder;
use crate::RuntimeError;

#[path = "pipeline_steps.rs"]
mod steps;

/// Builds an ONNX Runtime session for a graph file (CPU, CUDA or TensorRT).
pub type SessionFactory = Box<dyn Fn(&Path) -> Result<Session, RuntimeError>>;

/// A prompt as text (encoded with the exported text encoder) or as embeddings [1, L, ctx].
#[derive(Clone, Debug)]
pub enum PromptSource {
    Text(String),
    Embeds(Tensor),
}

/// One generation request. `None` fields take the model's defaults.
#[derive(Clone, Debug)]
pub struct Request {
    pub prompt: PromptSource,
    pub negative: Option<PromptSource>,
    pub references: Vec<PathBuf>,
    pub width: Option<usize>,
    pub height: Option<usize>,
    pub steps: Option<usize>,
    pub guidance: Option<f32>,
    pub shift: Shift,
    pub seed: u64,
    /// Noise [1, C, H/16, W/16] instead of the seeded generator.
    pub noise: Option<Tensor>,
    pub max_sequence_length: usize,
}

impl Request {
    pub fn new(prompt: PromptSource) -> Request {
        Request {
            prompt,
            negative: None,
            references: vec![],
            width: None,
            height: None,
            steps: None,
            guidance: None,
            shift: Shift::Empirical,
            seed: 0,
            noise: None,
            max_sequence_length: 512,
        }
    }
}

/// A validated request: everything resolved, references loaded.
#[derive(Clone, Debug)]
pub struct Plan {
    pub width: usize,
    pub height: usize,
    pub mode: Guidance,
    pub guidance: f32,
    pub cfg: bool,
    pub schedule: Schedule,
    pub references: Vec<Chw>,
}

/// Progress events.
pub enum Event<'a> {
    Stage(&'a str),
    Step { index: usize, total: usize },
}

/// Wall time per stage, seconds.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Timings {
    /// Session creation (not part of `total`).
    pub load: f64,
    pub text_encoder: f64,
    pub vae_encode: f64,
    pub dit_steps: Vec<f64>,
    pub vae_decode: f64,
    pub total: f64,
    /// Time inside ONNX Runtime calls (the rest is our own overhead).
    pub ort: f64,
}

/// A generated image and how it was made.
pub struct Generated {
    /// [3, H, W] in [0, 1] (diffusers `output_type="pt"`).
    pub image: Chw,
    pub plan: Plan,
    pub timings: Timings,
}

/// The pipeline over one model folder.
pub struct Pipeline {
    pub model: ModelDir,
    factory: SessionFactory,
    sessions: HashMap<String, Session>,
    tokenizer: Option<PromptEncoder>,
    ort_time: f64,
}

impl Pipeline {
    /// Opens a model folder; sessions are created on first use with `factory`.
    pub fn new(dir: &Path, factory: SessionFactory) -> Result<Pipeline, RuntimeError> {
        let model = ModelDir::open(dir)?;
        model.graph("transformer")?;
        model.graph("vae_decoder")?;
        Ok(Pipeline { model, factory, sessions: HashMap::new(), tokenizer: None, ort_time: 0.0 })
    }

    fn session(&mut self, name: &str) -> Result<&mut Session, RuntimeError> {
        if !self.sessions.contains_key(name) {
            let path = self.model.graph(name)?;
            let s = (self.factory)(&path)?;
            self.sessions.insert(name.to_string(), s);
        }
        self.sessions.get_mut(name).ok_or_else(|| RuntimeError::Run(format!("session {name} vanished")))
    }

    /// Runs graph `name`, accounting its time as ONNX Runtime time.
    fn call(
        &mut self,
        name: &str,
        inputs: Vec<(&str, Input)>,
    ) -> Result<HashMap<String, ArrayD<f32>>, RuntimeError> {
        let s = self.session(name)?;
        let t = Instant::now();
        let out = run(s, inputs).map_err(|e| RuntimeError::Run(format!("{name}: {e}")))?;
        self.ort_time += t.elapsed().as_secs_f64();
        Ok(out)
    }

    /// Validates a request against the model and resolves every default. Runs no model.
    pub fn plan(&self, req: &Request) -> Result<Plan, RuntimeError> {
        steps::plan(&self.model, req)
    }

    /// Generates one image.
    pub fn generate(
        &mut self,
        req: &Request,
        on_event: &mut dyn FnMut(Event),
    ) -> Result<Generated, RuntimeError> {
        let plan = self.plan(req)?;
        let mut timings = Timings::default();
        on_event(Event::Stage("loading models"));
        let t = Instant::now();
        self.load(&plan, req)?;
        timings.load = t.elapsed().as_secs_f64();
        let started = Instant::now();
        self.ort_time = 0.0;

        on_event(Event::Stage("text encoder"));
        let t = Instant::now();
        let cond = self.embeddings(&req.prompt, req.max_sequence_length)?;
        let uncond = if plan.cfg {
            let neg = req.negative.clone().unwrap_or(PromptSource::Text(String::new()));
            Some(self.embeddings(&neg, req.max_sequence_length)?)
        } else {
            None
        };
        timings.text_encoder = t.elapsed().as_secs_f64();

        on_event(Event::Stage("vae encode"));
        let t = Instant::now();
        let (ref_tokens, ref_ids) = self.encode_references(&plan.references)?;
        timings.vae_encode = t.elapsed().as_secs_f64();

        let (h, w) = (plan.height / 16, plan.width / 16);
        let c = self.model.latent_channels();
        let noise = match &req.noise {
            Some(n) => n.data.clone(),
            None => crate::noise::noise(req.seed, &[1, c, h, w]),
        };
        let mut latents = steps::pack(&noise, c, h, w); // [h·w, C] tokens
        let img_ids = steps::image_ids(h, w, &ref_ids);
        let n = plan.schedule.steps();
        for i in 0..n {
            on_event(Event::Step { index: i, total: n });
            let t = Instant::now();
            let (sigma, next) = (plan.schedule.sigmas[i], plan.schedule.sigmas[i + 1]);
            let v = self.velocity(&plan, &latents, &ref_tokens, &img_ids, sigma, &cond, uncond.as_ref())?;
            euler_step(&mut latents, &v, sigma, next).map_err(|e| RuntimeError::Run(e.to_string()))?;
            timings.dit_steps.push(t.elapsed().as_secs_f64());
        }

        on_event(Event::Stage("vae decode"));
        let t = Instant::now();
        let image = self.decode(&latents, c, h, w)?;
        timings.vae_decode = t.elapsed().as_secs_f64();
        timings.total = started.elapsed().as_secs_f64();
        timings.ort = self.ort_time;
        Ok(Generated { image, plan, timings })
    }

    /// Creates the sessions a request needs (once per pipeline).
    fn load(&mut self, plan: &Plan, req: &Request) -> Result<(), RuntimeError> {
        let text = matches!(req.prompt, PromptSource::Text(_))
            || (plan.cfg && !matches!(req.negative, Some(PromptSource::Embeds(_))));
        if text {
            self.session("text_encoder")?;
        }
        if !plan.references.is_empty() {
            self.session("vae_encoder")?;
        }
        self.session("transformer")?;
        self.session("vae_decoder")?;
        Ok(())
    }

    /// Prompt embeddings [1, L, ctx].
    fn embeddings(&mut self, prompt: &PromptSource, max_len: usize) -> Result<Tensor, RuntimeError> {
        match prompt {
            PromptSource::Embeds(t) => Ok(t.clone()),
            PromptSource::Text(text) => {
                if self.tokenizer.is_none() {
                    let dir = self.model.tokenizer_dir().ok_or_else(|| RuntimeError::Model {
                        path: self.model.dir.clone(),
                        msg: "no tokenizer/ folder: export the text encoder from a diffusers folder, or pass embeddings".into(),
                    })?;
                    let family = steps::text_family(&self.model)?;
                    let tok = PromptEncoder::from_tokenizer_dir(&dir, family)
                        .map_err(|e| RuntimeError::Model { path: dir.clone(), msg: e.to_string() })?;
                    self.tokenizer = Some(tok);
                }
                let enc = match &self.tokenizer {
                    Some(t) => t
                        .encode(&[text.as_str()], max_len)
                        .map_err(|e| RuntimeError::Input { name: "prompt".into(), msg: e.to_string() })?,
                    None => unreachable!("tokenizer set above"),
                };
                if enc.truncated[0] > 0 {
                    log::warn!(
                        "prompt truncated: {} tokens beyond --max-sequence-length {max_len} dropped",
                        enc.truncated[0]
                    );
                }
                let ids =
                    ArrayD::from_shape_vec(IxDyn(&[1, enc.len]), enc.input_ids).map_err(steps::shape_err)?;
                let mask = ArrayD::from_shape_vec(IxDyn(&[1, enc.len]), enc.attention_mask)
                    .map_err(steps::shape_err)?;
                let out = self.call(
                    "text_encoder",
                    vec![("input_ids", Input::I64(ids)), ("attention_mask", Input::I64(mask))],
                )?;
                steps::take(out, "prompt_embeds")
            }
        }
    }

    /// Encodes each reference with the VAE encoder: packed tokens and their (t, i, j) ids.
    fn encode_references(&mut self, refs: &[Chw]) -> Result<(Vec<f32>, Vec<[i64; 4]>), RuntimeError> {
        let mut tokens = Vec::new();
        let mut ids = Vec::new();
        for (k, r) in refs.iter().enumerate() {
            let x = ArrayD::from_shape_vec(IxDyn(&[1, 3, r.height, r.width]), r.data.clone())
                .map_err(steps::shape_err)?;
            let out = self.call("vae_encoder", vec![("image", Input::F32(x))])?;
            let lat = steps::take(out, "latents")?;
            let (c, h, w) = (lat.shape[1], lat.shape[2], lat.shape[3]);
            tokens.extend(steps::pack(&lat.data, c, h, w));
            let t = 10 + 10 * k as i64;
            for i in 0..h {
                for j in 0..w {
                    ids.push([t, i as i64, j as i64, 0]);
                }
            }
        }
        Ok((tokens, ids))
    }

    #[allow(clippy::too_many_arguments)]
    fn velocity(
        &mut self,
        plan: &Plan,
        latents: &[f32],
        refs: &[f32],
        img_ids: &ArrayD<i64>,
        sigma: f32,
        cond: &Tensor,
        uncond: Option<&Tensor>,
    ) -> Result<Vec<f32>, RuntimeError> {
        let n = latents.len();
        let v_c = self.dit_call(plan, latents, refs, img_ids, sigma, cond)?;
        match uncond {
            Some(u) => {
                let v_u = self.dit_call(plan, latents, refs, img_ids, sigma, u)?;
                let g = plan.guidance;
                Ok((0..n).map(|i| v_u[i] + g * (v_c[i] - v_u[i])).collect())
            }
            None => Ok(v_c),
        }
    }

    /// One DiT call; returns the velocity of the noisy tokens only.
    fn dit_call(
        &mut self,
        plan: &Plan,
        latents: &[f32],
        refs: &[f32],
        img_ids: &ArrayD<i64>,
        sigma: f32,
        text: &Tensor,
    ) -> Result<Vec<f32>, RuntimeError> {
        let c = self.model.latent_channels();
        let inputs = steps::dit_inputs(plan, latents, refs, img_ids, sigma, text, c)?;
        let out = self.call("transformer", inputs)?;
        let v = steps::take(out, "velocity")?;
        Ok(v.data[..latents.len()].to_vec())
    }

    /// Unpacks tokens and decodes: [3, H, W] in [0, 1].
    fn decode(&mut self, tokens: &[f32], c: usize, h: usize, w: usize) -> Result<Chw, RuntimeError> {
        let lat = steps::unpack(tokens, c, h, w);
        let x = ArrayD::from_shape_vec(IxDyn(&[1, c, h, w]), lat).map_err(steps::shape_err)?;
        let out = self.call("vae_decoder", vec![("latents", Input::F32(x))])?;
        let img = steps::take(out, "image")?;
        let data = img.data.iter().map(|v| (v / 2.0 + 0.5).clamp(0.0, 1.0)).collect();
        Ok(Chw { width: img.shape[3], height: img.shape[2], data })
    }
}
