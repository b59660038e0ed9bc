//! The end-to-end FLUX.2 pipeline over exported graphs: prompt -> tokenizer -> text
//! encoder -> embeddings; seeded noise; α-shifted Euler flow matching with the DiT
//! (embedded guidance, true CFG, or none); reference images encoded and appended with
//! time offsets 10, 20, …; VAE decode. Mirrors diffusers 0.42.1 `Flux2Pipeline` /
//! `Flux2KleinPipeline.__call__` in float32.
//!
//! Several images of one prompt (seeds s, s+1, …) run as one batch: every graph call takes
//! all images at once (and both CFG branches), which keeps the CPU's matrix kernels busier
//! than N separate runs, while each image stays bit-identical to its one-image run because
//! every graph computes its batch rows independently.
//!
//! Everything a request can get wrong is checked by [`Pipeline::plan`] before any model
//! runs. Sessions are created once per pipeline and reused across steps and requests.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::Path;
use std::time::Instant;

use ort::session::Session;

use crate::images::{Chw, Reference};
use crate::lora::{AdapterRecord, AdapterSpec};
use crate::model_dir::{Guidance, ModelDir};
use crate::schedule::{Schedule, Shift};
use crate::tensor_file::Tensor;
use crate::tensors::{run_borrowed, InputRef};
use crate::tokenizer::PromptEncoder;
use crate::{Override, RuntimeError, SessionSpec};

#[path = "pipeline_batch.rs"]
mod batch;
#[path = "pipeline_cached.rs"]
mod cached;
#[path = "pipeline_denoise.rs"]
mod denoise;
#[path = "pipeline_memory.rs"]
mod memory;
#[path = "pipeline_prefetch.rs"]
mod prefetch;
#[path = "pipeline_steps.rs"]
mod steps;
#[path = "pipeline_text.rs"]
mod text;

/// Builds an ONNX Runtime session for a graph file (CPU, CUDA or TensorRT) as a
/// [`SessionSpec`] asks: initializers replaced (run-time adapters on the DiT), dimensions fixed
/// (the text encoder's padded length). `Send + Sync` so a pipeline can move to the thread that
/// runs it (e.g. with Python's GIL released). [`crate::cpu_factory`] is the CPU one.
pub type SessionFactory = Box<dyn Fn(&Path, &SessionSpec) -> Result<Session, RuntimeError> + Send + Sync>;

/// The factory as the pipeline keeps it: shared with the threads that create sessions ahead.
type SharedFactory =
    std::sync::Arc<dyn Fn(&Path, &SessionSpec) -> Result<Session, RuntimeError> + Send + Sync>;

/// A prompt as text (encoded with the exported text encoder) or as embeddings [1, L, ctx]
/// (the same for every image) or [N, L, ctx] (row k for image k of an N-image batch).
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
    /// Schedule shift; None: the export's for this size (a multi-resolution model's
    /// `resolutions`), else FLUX.2's empirical shift.
    pub shift: Option<Shift>,
    /// Seed of the first image; image k of a batch uses `seed + k` (wrapping).
    pub seed: u64,
    /// One seed per image (`num_images` of them) instead of `seed + k`: a batch of independent
    /// requests (a serving model's dynamic batch). Empty: `seed + k`.
    pub seeds: Vec<u64>,
    /// Images to make from this request (one batch; [`Pipeline::generate_batch`]). Default 1.
    pub num_images: usize,
    /// Noise [num_images, C, H/16, W/16] instead of the seeded generator.
    pub noise: Option<Tensor>,
    pub max_sequence_length: usize,
    /// Step caching (`--cache`); None: every step runs the whole DiT (the monolithic graph).
    pub cache: Option<crate::cache::CacheSpec>,
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
            shift: None,
            seed: 0,
            seeds: Vec::new(),
            num_images: 1,
            noise: None,
            max_sequence_length: 512,
            cache: None,
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
    /// Images in the batch (`Request::num_images`).
    pub num_images: usize,
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
    /// DiT evaluations (per CFG branch): full, first block only, skipped.
    pub dit: crate::cache::DitCounts,
    /// Peak RSS per stage (measured only when [`Pipeline::set_measure_memory`] turned it on).
    pub memory: crate::memory::StagePeaks,
    /// Whether the text encoder ran, or the prompt cache (or given embeddings) made it unneeded.
    pub text_encoder_use: EncoderUse,
}

/// What the text-encoder stage of a generation did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EncoderUse {
    /// No prompt text to encode (embeddings given).
    #[default]
    NotNeeded,
    /// Every prompt text came from the prompt-embedding cache: the encoder did not run.
    Cached,
    /// The encoder ran (for at least one text).
    Ran,
}

/// Which sessions a pipeline keeps between stages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Residency {
    /// Every session, once created, stays for the next request (a serving process: no
    /// session is built twice, but the peak holds all stages' weights).
    #[default]
    All,
    /// Only the running stage's session: each is created when its stage starts and dropped
    /// when it ends, so one stage's weights are resident at a time (`flux2 generate`).
    Stage,
}

/// A generated image and how it was made.
pub struct Generated {
    /// [3, H, W] in [0, 1] (diffusers `output_type="pt"`).
    pub image: Chw,
    pub plan: Plan,
    pub timings: Timings,
}

/// The images of one batched request and how they were made.
pub struct Batch {
    /// [3, H, W] each in [0, 1], in seed order.
    pub images: Vec<Chw>,
    /// The seed of each image (`seed`, `seed + 1`, …); empty when the request gave the noise.
    pub seeds: Vec<u64>,
    pub plan: Plan,
    /// For the whole batch (each stage ran once for all images).
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
    factory: SharedFactory,
    sessions: HashMap<String, Session>,
    /// Sessions being created on other threads ([`prefetch`]).
    pending: HashMap<String, prefetch::Pending>,
    tokenizer: Option<PromptEncoder>,
    ort_time: f64,
    /// Merged DiT weights of the active run-time adapters, and what they are.
    dit_overrides: Vec<Override>,
    adapters: Vec<AdapterRecord>,
    /// The padded prompt length the text encoder's session is made for (its `L` fixed; see
    /// [`SessionSpec::fixed_dims`]); the tokenizer's default until a request asks otherwise.
    text_len: usize,
    /// What a calibration run ([`crate::cache::CacheSpec::Record`]) recorded, per branch.
    pub last_cache_records: std::collections::BTreeMap<&'static str, crate::cache::policies::Records>,
    residency: Residency,
    /// Whether generations measure their peak RSS per stage (resets the process's `VmHWM`).
    measure_memory: bool,
    /// Session creations of the running generation: seconds and peak RSS.
    load_time: f64,
    peaks: crate::memory::StagePeaks,
    prompt_cache: Option<crate::prompt_cache::PromptCache>,
    /// The text encoder's identity for the prompt cache's keys (computed on first use).
    text_identity: Option<String>,
    /// What the last prompt encoding did (taken by the generation that asked for it).
    encoder_use: Option<EncoderUse>,
}

impl Pipeline {
    /// Opens a model folder; sessions are created on first use with `factory`.
    pub fn new(dir: &Path, factory: SessionFactory) -> Result<Pipeline, RuntimeError> {
        let model = ModelDir::open(dir)?;
        model.graph("transformer")?;
        model.graph("vae_decoder")?;
        Ok(Pipeline {
            model,
            factory: std::sync::Arc::from(factory),
            sessions: HashMap::new(),
            pending: HashMap::new(),
            tokenizer: None,
            ort_time: 0.0,
            dit_overrides: Vec::new(),
            adapters: Vec::new(),
            text_len: crate::tokenizer::DEFAULT_MAX_LENGTH,
            last_cache_records: Default::default(),
            residency: Residency::All,
            measure_memory: false,
            load_time: 0.0,
            peaks: Default::default(),
            prompt_cache: None,
            text_identity: None,
            encoder_use: None,
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
        let _ = self.take_pending("transformer"); // made with the previous weights
        self.sessions.remove("transformer");
        Ok(&self.adapters)
    }

    /// The run-time adapters in use.
    pub fn adapters(&self) -> &[AdapterRecord] {
        &self.adapters
    }

    /// What the session of graph `name` is made with: the DiT's adapter weights, the text
    /// encoder's padded length.
    fn spec(&self, name: &str) -> SessionSpec {
        match name {
            "transformer" => SessionSpec { overrides: self.dit_overrides.clone(), fixed_dims: vec![] },
            "text_encoder" => {
                SessionSpec { overrides: vec![], fixed_dims: vec![("L".into(), self.text_len as i64)] }
            }
            _ => SessionSpec::default(),
        }
    }

    /// The session of graph `name`, created on first use: its creation's time and peak RSS
    /// count as the generation's `load`, and the peak is reset after it so that the stage
    /// that asked for it measures its own run.
    fn session(&mut self, name: &str) -> Result<&mut Session, RuntimeError> {
        if !self.sessions.contains_key(name) {
            if let Some(made) = self.take_pending(name) {
                self.sessions.insert(name.to_string(), made?);
                return self
                    .sessions
                    .get_mut(name)
                    .ok_or_else(|| RuntimeError::Run(format!("session {name} vanished")));
            }
            let path = self.model.graph(name)?;
            let spec = self.spec(name);
            let mut meter = crate::memory::Meter::new(self.measure_memory);
            meter.start();
            let t = Instant::now();
            let s = (self.factory)(&path, &spec)?;
            self.load_time += t.elapsed().as_secs_f64();
            if self.measure_memory {
                log::info!(
                    "session {name}: created in {:.1} s, peak RSS {:.2} GB",
                    t.elapsed().as_secs_f64(),
                    crate::memory::peak_rss().unwrap_or(0) as f64 / 1e9
                );
            }
            meter.stop(&mut self.peaks, "load");
            // what creation used and freed (graph copies, optimiser buffers) goes back now
            crate::memory::release_free_memory();
            meter.start();
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

    /// Creates the sessions of the named graphs now instead of on first use (a server's warm
    /// start: ready only once they exist). A graph the export lacks fails with its message.
    pub fn create_sessions(&mut self, names: &[&str]) -> Result<(), RuntimeError> {
        self.prefetch(names)?; // in parallel where the residency allows
        for name in names {
            self.session(name)?;
        }
        Ok(())
    }

    /// Validates a request against the model and resolves every default. Runs no model.
    pub fn plan(&self, req: &Request) -> Result<Plan, RuntimeError> {
        steps::plan(&self.model, req)
    }

    /// Why step caching cannot help a plan (≤ 8 steps, e.g. a step-distilled model), to tell the user.
    pub fn cache_advice(&self, plan: &Plan) -> Option<String> {
        steps::cache_advice(&self.model, plan)
    }

    /// Generates one image (`req.num_images` must be 1; see [`Pipeline::generate_batch`]).
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

    /// Generates one image (`req.num_images` must be 1; see [`Pipeline::generate_batch`]);
    /// `on_event` may cancel it ([`RuntimeError::Cancelled`]) at any event, i.e. before each
    /// stage and each sampling step.
    pub fn generate_with(
        &mut self,
        req: &Request,
        on_event: &mut dyn FnMut(Event) -> ControlFlow<()>,
    ) -> Result<Generated, RuntimeError> {
        if req.num_images != 1 {
            return Err(RuntimeError::Input {
                name: "num_images".into(),
                msg: format!("generate makes one image, not {}: call generate_batch", req.num_images),
            });
        }
        let Batch { mut images, plan, timings, .. } = self.generate_batch(req, on_event)?;
        let image = images.pop().ok_or_else(|| RuntimeError::Run("the batch made no image".into()))?;
        Ok(Generated { image, plan, timings })
    }

    /// Generates `req.num_images` images from seeds `req.seed`, `req.seed + 1`, … (or the rows
    /// of `req.noise`) in one pass: one text-encoder call for every prompt text, one DiT call
    /// per step for all images (true CFG's two branches in the same call when their prompt
    /// lengths agree) and one VAE-decoder call. Image k is bit-identical to a one-image run
    /// with seed `req.seed + k` on ONNX Runtime's CPU provider (see the README's batching notes).
    /// `on_event` may cancel the batch like [`Pipeline::generate_with`] (before each stage and
    /// each sampling step; no image is returned then).
    pub fn generate_batch(
        &mut self,
        req: &Request,
        on_event: &mut dyn FnMut(Event) -> ControlFlow<()>,
    ) -> Result<Batch, RuntimeError> {
        let plan = self.plan(req)?;
        let mut timings = Timings::default();
        (self.load_time, self.peaks) = (0.0, Default::default());
        emit(on_event, Event::Stage("loading models"))?;
        if self.residency == Residency::All {
            self.load(&plan, req)?;
        }
        let (started, loaded) = (Instant::now(), self.load_time);
        self.ort_time = 0.0;

        emit(on_event, Event::Stage("text encoder"))?;
        let ((cond, uncond), t) =
            self.stage("text_encoder", &[], &["text_encoder"], |p| p.prompt_embeddings(&plan, req))?;
        (timings.text_encoder, timings.text_encoder_use) = (t, self.encoder_use.take().unwrap_or_default());

        emit(on_event, Event::Stage("vae encode"))?;
        let vae_enc: &[&str] = if plan.references.is_empty() { &[] } else { &["vae_encoder"] };
        let ((ref_tokens, ref_ids), t) =
            self.stage("vae_encode", vae_enc, vae_enc, |p| p.encode_references(&plan.references))?;
        timings.vae_encode = t;

        let c = self.model.latent_channels();
        let mut latents = batch::Latents::new(&plan, req, c, &ref_tokens)?;
        let dit = batch::DitBatch::new(&latents, &ref_ids, &cond, uncond.as_deref())?;
        let mut cache = match &req.cache {
            Some(spec) => Some(crate::cache::StepCache::new(
                spec.clone(),
                plan.schedule.steps(),
                crate::cache::CacheCalibration::read(&self.model.dir)?,
            )?),
            None => None,
        };
        let dit_graphs: &[&str] = if req.cache.is_some() { &cached::PARTS } else { &["transformer"] };
        self.stage("denoise", dit_graphs, dit_graphs, |p| {
            p.denoise(&plan, &dit, &mut latents, &mut timings, cache.as_mut(), &mut *on_event)
        })?;
        if let Some(c) = &mut cache {
            timings.dit = c.counts;
            self.last_cache_records = c.take_records();
        }

        emit(on_event, Event::Stage("vae decode"))?;
        let (images, t) =
            self.stage("vae_decode", &["vae_decoder"], &["vae_decoder"], |p| p.decode(&latents))?;
        timings.vae_decode = t;
        timings.total = started.elapsed().as_secs_f64() - (self.load_time - loaded);
        if timings.text_encoder_use == EncoderUse::NotNeeded {
            self.peaks.forget("text_encoder");
        }
        if plan.references.is_empty() {
            self.peaks.forget("vae_encode");
        }
        (timings.load, timings.memory, timings.ort) = (self.load_time, self.peaks, self.ort_time);
        let seeds = match req.noise {
            Some(_) => vec![],
            None => (0..plan.num_images).map(|k| batch::image_seed(req, k)).collect(),
        };
        Ok(Batch { images, seeds, plan, timings })
    }

    /// Creates the sessions a request needs besides the text encoder's (once per pipeline,
    /// with [`Residency::All`]); the text encoder's is made when a prompt misses the prompt
    /// cache.
    /// They are started on background threads ([`prefetch`]) and taken when their stage
    /// begins, so their creation overlaps the text encoder's.
    fn load(&mut self, plan: &Plan, req: &Request) -> Result<(), RuntimeError> {
        let mut names: Vec<&str> = Vec::new();
        if !plan.references.is_empty() {
            names.push("vae_encoder");
        }
        match req.cache {
            Some(_) => names.extend(cached::PARTS),
            None => names.push("transformer"),
        }
        names.push("vae_decoder");
        self.prefetch(&names)
    }
}
