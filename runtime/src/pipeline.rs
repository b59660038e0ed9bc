//! The end-to-end FLUX.2 pipeline over exported graphs: prompt -> tokenizer -> text
//! encoder -> embeddings; seeded noise; α-shifted Euler flow matching with the DiT
//! (embedded guidance, true CFG, or none); reference images encoded and appended with
//! time offsets 10, 20, …; VAE decode. Mirrors diffusers 0.42.1 `Flux2Pipeline` /
//! `Flux2KleinPipeline.__call__` in float32.
//!
//! Everything a request can get wrong is checked by [`Pipeline::plan`] before any model
//! runs. Sessions are created once per pipeline and reused across steps and requests.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::Path;
use std::time::Instant;

use ort::session::Session;

use crate::images::{Chw, Reference};
use crate::lora::{AdapterRecord, AdapterSpec};
use crate::model_dir::{Guidance, ModelDir};
use crate::schedule::{euler_step, Schedule, Shift};
use crate::tensor_file::Tensor;
use crate::tensors::{run_borrowed, InputRef};
use crate::tokenizer::PromptEncoder;
use crate::{Override, RuntimeError};

#[path = "pipeline_steps.rs"]
mod steps;

/// Builds an ONNX Runtime session for a graph file (CPU, CUDA or TensorRT), replacing the
/// named initializers with the given values (run-time adapters; empty for the other graphs).
/// `Send + Sync` so a pipeline can move to the thread that runs it (e.g. with Python's GIL
/// released).
pub type SessionFactory = Box<dyn Fn(&Path, &[Override]) -> Result<Session, RuntimeError> + Send + Sync>;

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
    pub references: Vec<Reference>,
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

/// Progress events. The callback of [`Pipeline::generate_with`] answers each with
/// `ControlFlow::Break(())` to cancel the request there (between stages and sampling steps).
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

/// Passes an event to the caller; a `Break` answer cancels the request there.
fn emit(on_event: &mut dyn FnMut(Event) -> ControlFlow<()>, e: Event) -> Result<(), RuntimeError> {
    let what = match &e {
        Event::Stage(s) => format!("before {s}"),
        Event::Step { index, total } => format!("before sampling step {} of {total}", index + 1),
    };
    match on_event(e) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(()) => Err(RuntimeError::Cancelled(what)),
    }
}

/// The pipeline over one model folder.
pub struct Pipeline {
    pub model: ModelDir,
    factory: SessionFactory,
    sessions: HashMap<String, Session>,
    tokenizer: Option<PromptEncoder>,
    ort_time: f64,
    /// Merged DiT weights of the active run-time adapters, and what they are.
    dit_overrides: Vec<Override>,
    adapters: Vec<AdapterRecord>,
}

impl Pipeline {
    /// Opens a model folder; sessions are created on first use with `factory`.
    pub fn new(dir: &Path, factory: SessionFactory) -> Result<Pipeline, RuntimeError> {
        let model = ModelDir::open(dir)?;
        model.graph("transformer")?;
        model.graph("vae_decoder")?;
        Ok(Pipeline {
            model,
            factory,
            sessions: HashMap::new(),
            tokenizer: None,
            ort_time: 0.0,
            dit_overrides: Vec::new(),
            adapters: Vec::new(),
        })
    }

    /// Applies LoRA adapters at run time (replacing any active ones; empty: none): the touched
    /// DiT weights are merged in memory and handed to ONNX Runtime as initializer overrides.
    /// Only the DiT session is rebuilt, on next use. Fails, changing nothing, on a bad file, a
    /// module the model lacks, a shape mismatch, or a quantised graph.
    pub fn set_adapters(&mut self, adapters: &[AdapterSpec]) -> Result<&[AdapterRecord], RuntimeError> {
        let (overrides, records) = if adapters.is_empty() {
            (Vec::new(), Vec::new())
        } else {
            let dit = self.model.graph("transformer")?;
            let (o, plan) = crate::lora::overrides::graph_overrides(&dit, adapters)?;
            (o, plan.records().to_vec())
        };
        self.dit_overrides = overrides;
        self.adapters = records;
        self.sessions.remove("transformer");
        Ok(&self.adapters)
    }

    /// The run-time adapters in use.
    pub fn adapters(&self) -> &[AdapterRecord] {
        &self.adapters
    }

    fn session(&mut self, name: &str) -> Result<&mut Session, RuntimeError> {
        if !self.sessions.contains_key(name) {
            let path = self.model.graph(name)?;
            let overrides: &[Override] = if name == "transformer" { &self.dit_overrides } else { &[] };
            let s = (self.factory)(&path, overrides)?;
            self.sessions.insert(name.to_string(), s);
        }
        self.sessions.get_mut(name).ok_or_else(|| RuntimeError::Run(format!("session {name} vanished")))
    }

    /// Runs graph `name` on borrowed inputs, accounting the time inside `Session::run` as
    /// ONNX Runtime time.
    fn call(
        &mut self,
        name: &str,
        inputs: &[(&str, InputRef<'_>)],
    ) -> Result<HashMap<String, Tensor>, RuntimeError> {
        let s = self.session(name)?;
        let (out, seconds) =
            run_borrowed(s, inputs).map_err(|e| RuntimeError::Run(format!("{name}: {e}")))?;
        self.ort_time += seconds;
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
        self.generate_with(req, &mut |e| {
            on_event(e);
            ControlFlow::Continue(())
        })
    }

    /// Generates one image; `on_event` may cancel it ([`RuntimeError::Cancelled`]) at any
    /// event, i.e. before each stage and each sampling step.
    pub fn generate_with(
        &mut self,
        req: &Request,
        on_event: &mut dyn FnMut(Event) -> ControlFlow<()>,
    ) -> Result<Generated, RuntimeError> {
        let plan = self.plan(req)?;
        let mut timings = Timings::default();
        emit(on_event, Event::Stage("loading models"))?;
        let t = Instant::now();
        self.load(&plan, req)?;
        timings.load = t.elapsed().as_secs_f64();
        let started = Instant::now();
        self.ort_time = 0.0;

        emit(on_event, Event::Stage("text encoder"))?;
        let t = Instant::now();
        let cond = self.embeddings(&req.prompt, req.max_sequence_length)?;
        let empty = PromptSource::Text(String::new());
        let uncond = if plan.cfg {
            Some(self.embeddings(req.negative.as_ref().unwrap_or(&empty), req.max_sequence_length)?)
        } else {
            None
        };
        timings.text_encoder = t.elapsed().as_secs_f64();

        emit(on_event, Event::Stage("vae encode"))?;
        let t = Instant::now();
        let (ref_tokens, ref_ids) = self.encode_references(&plan.references)?;
        timings.vae_encode = t.elapsed().as_secs_f64();

        let (h, w) = (plan.height / 16, plan.width / 16);
        let c = self.model.latent_channels();
        // The DiT input [noisy tokens | reference tokens]: the noisy part is updated in place.
        let mut x = match &req.noise {
            Some(n) => steps::pack(&n.data, c, h, w),
            None => steps::pack(&crate::noise::noise(req.seed, &[1, c, h, w]), c, h, w),
        }; // [h·w, C] tokens
        let n_img = x.len();
        x.extend_from_slice(&ref_tokens);
        let img_ids = steps::image_ids(h, w, &ref_ids);
        let n = plan.schedule.steps();
        for i in 0..n {
            emit(on_event, Event::Step { index: i, total: n })?;
            let t = Instant::now();
            let (sigma, next) = (plan.schedule.sigmas[i], plan.schedule.sigmas[i + 1]);
            let v = self.velocity(&plan, &x, n_img, &img_ids, sigma, &cond, uncond.as_deref())?;
            euler_step(&mut x[..n_img], &v, sigma, next).map_err(|e| RuntimeError::Run(e.to_string()))?;
            timings.dit_steps.push(t.elapsed().as_secs_f64());
        }

        emit(on_event, Event::Stage("vae decode"))?;
        let t = Instant::now();
        let image = self.decode(&x[..n_img], c, h, w)?;
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

    /// Prompt embeddings [1, L, ctx] (given ones are borrowed, not copied).
    fn embeddings<'p>(
        &mut self,
        prompt: &'p PromptSource,
        max_len: usize,
    ) -> Result<Cow<'p, Tensor>, RuntimeError> {
        match prompt {
            PromptSource::Embeds(t) => Ok(Cow::Borrowed(t)),
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
                let shape = vec![1, enc.len];
                let inputs = [
                    ("input_ids", InputRef::I64(shape.clone(), &enc.input_ids)),
                    ("attention_mask", InputRef::I64(shape, &enc.attention_mask)),
                ];
                let out = self.call("text_encoder", &inputs)?;
                steps::take(out, "prompt_embeds").map(Cow::Owned)
            }
        }
    }

    /// Encodes each reference with the VAE encoder: packed tokens and their (t, i, j) ids.
    fn encode_references(&mut self, refs: &[Chw]) -> Result<(Vec<f32>, Vec<[i64; 4]>), RuntimeError> {
        let mut tokens = Vec::new();
        let mut ids = Vec::new();
        for (k, r) in refs.iter().enumerate() {
            let image = InputRef::F32(vec![1, 3, r.height, r.width], &r.data);
            let out = self.call("vae_encoder", &[("image", image)])?;
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

    /// The velocity of the noisy tokens `x[..n_img]` (with CFG: v_u + g·(v_c − v_u)).
    #[allow(clippy::too_many_arguments)]
    fn velocity(
        &mut self,
        plan: &Plan,
        x: &[f32],
        n_img: usize,
        img_ids: &[i64],
        sigma: f32,
        cond: &Tensor,
        uncond: Option<&Tensor>,
    ) -> Result<Vec<f32>, RuntimeError> {
        let mut v = self.dit_call(plan, x, n_img, img_ids, sigma, cond)?;
        if let Some(u) = uncond {
            let v_u = self.dit_call(plan, x, n_img, img_ids, sigma, u)?;
            let g = plan.guidance;
            for (c, u) in v.iter_mut().zip(&v_u) {
                *c = u + g * (*c - u);
            }
        }
        Ok(v)
    }

    /// One DiT call on `x` = [noisy tokens | reference tokens]; returns the velocity of the
    /// first `n_img` values (the noisy tokens) only.
    fn dit_call(
        &mut self,
        plan: &Plan,
        x: &[f32],
        n_img: usize,
        img_ids: &[i64],
        sigma: f32,
        text: &Tensor,
    ) -> Result<Vec<f32>, RuntimeError> {
        let c = self.model.latent_channels();
        let txt_ids = steps::text_ids(text.shape.get(1).copied().unwrap_or(0));
        // diffusers passes (σ·1000 in float32) / 1000
        let scalars = [(sigma * 1000.0) / 1000.0, plan.guidance];
        let inputs = steps::dit_inputs(plan, x, img_ids, &txt_ids, &scalars, text, c)?;
        let out = self.call("transformer", &inputs)?;
        let mut v = steps::take(out, "velocity")?.data;
        if v.len() < n_img {
            return Err(RuntimeError::Run(format!(
                "velocity has {} values, expected {n_img} or more",
                v.len()
            )));
        }
        v.truncate(n_img);
        Ok(v)
    }

    /// Unpacks tokens and decodes: [3, H, W] in [0, 1].
    fn decode(&mut self, tokens: &[f32], c: usize, h: usize, w: usize) -> Result<Chw, RuntimeError> {
        let lat = steps::unpack(tokens, c, h, w);
        let out = self.call("vae_decoder", &[("latents", InputRef::F32(vec![1, c, h, w], &lat))])?;
        let img = steps::take(out, "image")?;
        let [_, 3, height, width] = img.shape[..] else {
            return Err(RuntimeError::Run(format!(
                "decoded image has shape {:?}, expected [1, 3, H, W]",
                img.shape
            )));
        };
        let mut data = img.data;
        for v in data.iter_mut() {
            *v = (*v / 2.0 + 0.5).clamp(0.0, 1.0);
        }
        Ok(Chw { width, height, data })
    }
}
