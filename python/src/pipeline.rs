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
use flux2_runtime::pipeline::{Event, Pipeline as Inner, Timings};
use flux2_runtime::request::{session_factory, GenerateArgs, DEFAULT_MAX_SEQUENCE_LENGTH};

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
    /// seed. Without `num_images` the result is the single array.
    ///
    /// `cache="fbc:0.1"` (or `mag:…`, `taylor:…`, `tea:…`, as `flux2 generate --cache`) turns on
    /// step caching; `last_timings["dit_evaluations"]` counts what ran.
    #[pyo3(signature = (
        prompt=None, *, negative_prompt=None, references=None, width=None, height=None, steps=None,
        guidance=None, seed=None, shift=None, prompt_embeds=None, negative_prompt_embeds=None,
        noise=None, max_sequence_length=DEFAULT_MAX_SEQUENCE_LENGTH, num_images=None, progress=None,
        cache=None
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
        prompt_embeds: Option<PathBuf>,
        negative_prompt_embeds: Option<PathBuf>,
        noise: Option<PathBuf>,
        max_sequence_length: usize,
        num_images: Option<i64>,
        progress: Option<Py<PyAny>>,
        cache: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
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
            num_images: args::count("--num-images", num_images)?,
            noise,
            max_sequence_length: Some(max_sequence_length),
            cache,
        };
        let mut cb = Progress { callback: progress, raised: None };
        let result = py.detach(|| -> Result<_, (bool, flux2_runtime::RuntimeError)> {
            // everything the request can get wrong, before any model runs: ValueError
            let req = ga.into_request().map_err(|e| (true, e))?;
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
        match (num_images, arrays.pop()) {
            (None, Some(one)) if arrays.is_empty() => Ok(one.into_any()),
            (None, _) => Err(PyRuntimeError::new_err("the pipeline made no image")),
            (Some(_), last) => {
                arrays.extend(last);
                Ok(PyList::new(py, arrays)?.into_any())
            }
        }
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
