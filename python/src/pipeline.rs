//! `flux2.Pipeline`: the runtime's pipeline over one export folder, with sessions created on
//! first use and kept. `generate` checks the request first (ValueError), then runs with the
//! GIL released; calls from several Python threads take turns on the one pipeline.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Mutex;

use numpy::ndarray::Array3;
use numpy::{IntoPyArray, PyArray3};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use flux2_runtime::images::{to_rgb8, Chw};
use flux2_runtime::pipeline::{Event, Pipeline as Inner, PromptSource, Timings};
use flux2_runtime::request::{session_factory, GenerateArgs, DEFAULT_MAX_SEQUENCE_LENGTH};
use flux2_runtime::tensor_file::Tensor;

use crate::{args, py_err};

/// A FLUX.2 pipeline over an export folder (`flux2 export` / `flux2 build` output).
///
/// `provider`: "cpu", "cuda" or "tensorrt" (a `flux2 build` folder); `threads`: intra-op
/// threads per session on the CPU (default: every core); `device_id`: the GPU of the GPU
/// providers. Sessions are created by the first `generate` and reused.
#[pyclass(module = "flux2")]
pub struct Pipeline {
    inner: Mutex<Inner>,
    model_dir: PathBuf,
    provider: String,
    last: Mutex<Option<Timings>>,
}

fn lock<T>(m: &Mutex<T>) -> PyResult<std::sync::MutexGuard<'_, T>> {
    m.lock().map_err(|_| PyRuntimeError::new_err("pipeline poisoned by an earlier panic"))
}

/// The Python progress callback: `progress(stage, step, total)`; returning `False` (or raising)
/// cancels the generation.
struct Progress {
    callback: Option<Py<PyAny>>,
    raised: Option<PyErr>,
}

impl Progress {
    fn on_event(&mut self, e: Event) -> ControlFlow<()> {
        let Some(cb) = &self.callback else { return ControlFlow::Continue(()) };
        let (stage, step, total) = match e {
            Event::Stage(s) => (s.to_string(), 0, 0),
            Event::Step { index, total } => ("denoise".to_string(), index, total),
        };
        Python::attach(|py| match cb.call1(py, (stage, step, total)) {
            Ok(r) if matches!(r.extract::<bool>(py), Ok(false)) => ControlFlow::Break(()),
            Ok(_) => ControlFlow::Continue(()),
            Err(e) => {
                self.raised = Some(e);
                ControlFlow::Break(())
            }
        })
    }
}

/// An image as numpy uint8 `[H, W, 3]` (converted with the GIL released).
fn rgb_array<'py>(py: Python<'py>, image: &Chw) -> PyResult<Bound<'py, PyArray3<u8>>> {
    let (h, w) = (image.height, image.width);
    let pixels = py.detach(|| to_rgb8(image));
    let array = Array3::from_shape_vec((h, w, 3), pixels)
        .map_err(|e| PyRuntimeError::new_err(format!("image of {w}×{h}: {e}")))?;
    Ok(array.into_pyarray(py))
}

/// A prompt as text or embeddings: the text and a path go to the runtime's argument checks
/// (`GenerateArgs`); an array is put in the request afterwards, with the text slot holding a
/// placeholder so those checks see a prompt.
#[allow(clippy::type_complexity)]
fn prompt_source(
    option: &str,
    text: Option<String>,
    embeds: Option<args::Embeds>,
) -> PyResult<(Option<String>, Option<PathBuf>, Option<Tensor>)> {
    match (text, embeds) {
        (Some(_), Some(_)) => {
            Err(PyValueError::new_err(format!("input '{option}': give a text or embeddings, not both")))
        }
        (text, None) => Ok((text, None, None)),
        (None, Some(args::Embeds::Path(p))) => Ok((None, Some(p), None)),
        (None, Some(args::Embeds::Array(t))) => Ok((Some(String::new()), None, Some(t))),
    }
}

#[pymethods]
impl Pipeline {
    #[new]
    #[pyo3(signature = (model_dir, provider="cpu", threads=None, device_id=0))]
    fn new(model_dir: PathBuf, provider: &str, threads: Option<i64>, device_id: i32) -> PyResult<Self> {
        let threads = args::count("--threads", threads)?;
        let factory = session_factory(provider, threads, device_id)
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        let inner = Inner::new(&model_dir, factory).map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(Pipeline {
            inner: Mutex::new(inner),
            model_dir,
            provider: provider.to_string(),
            last: Mutex::new(None),
        })
    }

    /// Generates one image: numpy uint8 `[H, W, 3]`, the pixels `flux2 generate` writes to its
    /// PNG for the same arguments. `references`: paths, encoded PNG/JPEG bytes or uint8
    /// `[H, W, 3]` arrays. `progress(stage, step, total)` is called before each stage and
    /// sampling step; returning False cancels (`flux2.CancelledError`).
    ///
    /// `num_images=N` makes N images in one batch (seeds seed, seed+1, ..., as
    /// `flux2 generate --num-images N`; one text-encoder call, one DiT call per step, one VAE
    /// decode) and returns them as a list of N arrays, each equal to a one-image call with its
    /// seed. Without `num_images` (or `seeds`) the result is the single array.
    ///
    /// `prompt_embeds` / `negative_prompt_embeds`: instead of the texts, a safetensors path or a
    /// float32 array `[1, L, ctx]` (as `encode` returns: the text encoder can run elsewhere),
    /// or `[N, L, ctx]`, row k for image k. `seeds=[s0, s1, ...]`: one seed per image instead
    /// of seed+k. Together they batch independent requests of one size, steps and guidance
    /// into one pipeline run, each image equal to its request run alone.
    ///
    /// `cache="fbc:0.1"` (or `mag:…`, `taylor:…`, `tea:…`, as `flux2 generate --cache`) turns on
    /// step caching; `last_timings["dit_evaluations"]` counts what ran.
    #[pyo3(signature = (
        prompt=None, *, negative_prompt=None, references=None, width=None, height=None, steps=None,
        guidance=None, seed=None, shift=None, prompt_embeds=None, negative_prompt_embeds=None,
        noise=None, max_sequence_length=DEFAULT_MAX_SEQUENCE_LENGTH, num_images=None, seeds=None,
        progress=None, cache=None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn generate<'py>(
        &self,
        py: Python<'py>,
        prompt: Option<String>,
        negative_prompt: Option<String>,
        references: Option<&Bound<'py, PyAny>>,
        width: Option<i64>,
        height: Option<i64>,
        steps: Option<i64>,
        guidance: Option<f32>,
        seed: Option<&Bound<'py, PyAny>>,
        shift: Option<String>,
        prompt_embeds: Option<&Bound<'py, PyAny>>,
        negative_prompt_embeds: Option<&Bound<'py, PyAny>>,
        noise: Option<PathBuf>,
        max_sequence_length: usize,
        num_images: Option<i64>,
        seeds: Option<&Bound<'py, PyAny>>,
        progress: Option<Py<PyAny>>,
        cache: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let seeds = args::seeds(seeds)?;
        let count = args::count("--num-images", num_images)?;
        let count = match (&seeds, count) {
            (Some(s), Some(n)) if s.len() != n => {
                return Err(PyValueError::new_err(format!(
                    "input 'seeds': {} seeds for num_images={n}: give one per image",
                    s.len()
                )))
            }
            (Some(s), _) => Some(s.len()),
            (None, n) => n,
        };
        let (prompt, prompt_embeds, cond_array) =
            prompt_source("--prompt", prompt, args::embeds("prompt_embeds", prompt_embeds)?)?;
        let (negative_prompt, negative_prompt_embeds, uncond_array) = prompt_source(
            "--negative-prompt",
            negative_prompt,
            args::embeds("negative_prompt_embeds", negative_prompt_embeds)?,
        )?;
        let ga = GenerateArgs {
            prompt,
            prompt_embeds,
            negative_prompt,
            negative_prompt_embeds,
            references: args::references(references)?,
            width: args::dimension("--width", width)?,
            height: args::dimension("--height", height)?,
            steps: args::count("--steps", steps)?,
            guidance,
            shift,
            seed: match seed {
                Some(s) if !s.is_none() => args::seed(s)?,
                _ => 0,
            },
            num_images: count,
            noise,
            max_sequence_length: Some(max_sequence_length),
            cache,
        };
        let list = count.is_some();
        let mut cb = Progress { callback: progress, raised: None };
        let result = py.detach(|| -> Result<_, (bool, flux2_runtime::RuntimeError)> {
            // everything the request can get wrong, before any model runs: ValueError
            let mut req = ga.into_request().map_err(|e| (true, e))?;
            if let Some(t) = cond_array {
                req.prompt = PromptSource::Embeds(t);
            }
            if let Some(t) = uncond_array {
                req.negative = Some(PromptSource::Embeds(t));
            }
            req.seeds = seeds.unwrap_or_default();
            let mut pipe = self.inner.lock().map_err(|_| {
                (false, flux2_runtime::RuntimeError::Run("pipeline poisoned by an earlier panic".into()))
            })?;
            pipe.plan(&req).map_err(|e| (true, e))?;
            pipe.generate_batch(&req, &mut |e| cb.on_event(e)).map_err(|e| (false, e))
        });
        if let Some(e) = cb.raised.take() {
            return Err(e);
        }
        let out = result
            .map_err(|(invalid, e)| if invalid { PyValueError::new_err(e.to_string()) } else { py_err(e) })?;
        *lock(&self.last)? = Some(out.timings);
        let mut arrays = out.images.iter().map(|image| rgb_array(py, image)).collect::<PyResult<Vec<_>>>()?;
        match (list.then_some(()), arrays.pop()) {
            (None, Some(one)) if arrays.is_empty() => Ok(one.into_any()),
            (None, _) => Err(PyRuntimeError::new_err("the pipeline made no image")),
            (Some(_), last) => {
                arrays.extend(last);
                Ok(PyList::new(py, arrays)?.into_any())
            }
        }
    }

    /// Prompt embeddings of a text or a list of texts: float32 `[N, L, ctx]`, row k exactly
    /// what `generate` computes for text k (chat template, padded to `max_sequence_length`
    /// tokens), to give back as `prompt_embeds` / `negative_prompt_embeds`. Runs only the text
    /// encoder (its session alone is created), with the GIL released.
    #[pyo3(signature = (prompts, *, max_sequence_length=DEFAULT_MAX_SEQUENCE_LENGTH))]
    fn encode<'py>(
        &self,
        py: Python<'py>,
        prompts: &Bound<'py, PyAny>,
        max_sequence_length: usize,
    ) -> PyResult<Bound<'py, PyArray3<f32>>> {
        let texts: Vec<String> = match prompts.extract::<String>() {
            Ok(one) => vec![one],
            Err(_) => prompts
                .try_iter()
                .and_then(|it| it.map(|t| t?.extract::<String>()).collect::<PyResult<Vec<_>>>())
                .map_err(|_| PyValueError::new_err("input '--prompt': expected a text or a list of texts"))?,
        };
        if texts.is_empty() {
            return Err(PyValueError::new_err("input '--prompt': no text to encode"));
        }
        let out = py.detach(|| {
            let mut pipe = self.inner.lock().map_err(|_| {
                flux2_runtime::RuntimeError::Run("pipeline poisoned by an earlier panic".into())
            })?;
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            pipe.encode_prompts(&refs, max_sequence_length)
        });
        let rows = out.map_err(py_err)?;
        let (l, ctx) = rows.first().map(|t| (t.shape[1], t.shape[2])).unwrap_or((0, 0));
        let data: Vec<f32> = rows.into_iter().flat_map(|t| t.data).collect();
        let array = Array3::from_shape_vec((texts.len(), l, ctx), data)
            .map_err(|e| PyRuntimeError::new_err(format!("prompt_embeds: {e}")))?;
        Ok(array.into_pyarray(py))
    }

    /// Creates the ONNX Runtime sessions of the named graphs now ("text_encoder",
    /// "transformer", "vae_encoder", "vae_decoder"; default: transformer and vae_decoder)
    /// instead of on first use; returns the seconds it took. A server calls it before it
    /// reports ready.
    #[pyo3(signature = (graphs=None))]
    fn load(&self, py: Python<'_>, graphs: Option<Vec<String>>) -> PyResult<f64> {
        let names = graphs.unwrap_or_else(|| vec!["transformer".into(), "vae_decoder".into()]);
        let t = std::time::Instant::now();
        py.detach(|| {
            let mut pipe = self.inner.lock().map_err(|_| {
                flux2_runtime::RuntimeError::Run("pipeline poisoned by an earlier panic".into())
            })?;
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            pipe.create_sessions(&refs)
        })
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(t.elapsed().as_secs_f64())
    }

    /// Seconds per stage of the last `generate` (None before the first; for a batch, of the
    /// whole batch): load (session creation, first call only), text_encoder, vae_encode,
    /// denoise, dit_steps (list), vae_decode, total, ort (time inside ONNX Runtime), and
    /// dit_evaluations (full, first_block_only, skipped: per CFG branch).
    #[getter]
    fn last_timings<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let last = lock(&self.last)?;
        let Some(t) = last.as_ref() else { return Ok(None) };
        let d = PyDict::new(py);
        d.set_item("load", t.load)?;
        d.set_item("text_encoder", t.text_encoder)?;
        d.set_item("vae_encode", t.vae_encode)?;
        d.set_item("denoise", t.dit_steps.iter().sum::<f64>())?;
        d.set_item("dit_steps", t.dit_steps.clone())?;
        d.set_item("vae_decode", t.vae_decode)?;
        d.set_item("total", t.total)?;
        d.set_item("ort", t.ort)?;
        let e = PyDict::new(py);
        e.set_item("full", t.dit.full)?;
        e.set_item("first_block_only", t.dit.first_block_only)?;
        e.set_item("skipped", t.dit.skipped)?;
        d.set_item("dit_evaluations", e)?;
        Ok(Some(d))
    }

    /// The model's variant (dev, klein-4b, ...) from its manifest.
    #[getter]
    fn variant(&self) -> PyResult<String> {
        Ok(lock(&self.inner)?.model.manifest.variant.to_string())
    }

    /// Default sampling steps of the model.
    #[getter]
    fn default_steps(&self) -> PyResult<usize> {
        Ok(lock(&self.inner)?.model.default_steps())
    }

    fn __repr__(&self) -> String {
        format!("flux2.Pipeline({:?}, provider={:?})", self.model_dir.display().to_string(), self.provider)
    }
}
