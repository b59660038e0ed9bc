//! `flux2._flux2`: the native half of the `flux2` Python package. A client of the runtime
//! crate (the same pipeline, request checks and image conversion as `flux2 generate`) and of
//! the exporter (`flux2.export`); no inference logic of its own.
//!
//! Errors: what the caller got wrong (options, sizes, files, references) raises `ValueError`
//! with the CLI's message; faults while running raise `RuntimeError`; a generation stopped by
//! its progress callback raises `flux2.CancelledError` (a `RuntimeError`).

mod args;
mod export;
mod pipeline;

use pyo3::create_exception;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use flux2_runtime::schedule::{Schedule, Shift};
use flux2_runtime::RuntimeError;

create_exception!(
    flux2,
    CancelledError,
    PyRuntimeError,
    "A generation stopped by its progress callback (between stages or sampling steps)."
);

/// A runtime error as a Python exception: `ValueError` for what the caller can fix by changing
/// the arguments, `CancelledError` for a cancelled run, `RuntimeError` for the rest.
pub(crate) fn py_err(e: RuntimeError) -> PyErr {
    match e {
        RuntimeError::Cancelled(_) => CancelledError::new_err(e.to_string()),
        RuntimeError::Input { .. } | RuntimeError::Image { .. } | RuntimeError::TensorFile { .. } => {
            PyValueError::new_err(e.to_string())
        }
        _ => PyRuntimeError::new_err(e.to_string()),
    }
}

/// Loads ONNX Runtime from `path` in this process (before the first session). The package
/// calls it at import with `ORT_DYLIB_PATH` or the `onnxruntime` wheel's library.
#[pyfunction]
fn _use_ort_library(path: std::path::PathBuf) -> PyResult<String> {
    let abs = flux2_runtime::use_ort_library(&path).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    Ok(abs.display().to_string())
}

/// The ONNX Runtime library this process uses (or would load), if one is found.
#[pyfunction]
fn ort_library() -> Option<String> {
    flux2_runtime::find_ort_library().map(|p| p.display().to_string())
}

/// The sampling schedule for a `width`×`height` image in `steps` steps, as `flux2 schedule`
/// prints it: width, height, steps, shift, image_seq_len, mu, alpha, sigmas (steps + 1 values),
/// timesteps (σ·1000). `shift`: "empirical" (default), "resolution[:BASE]" or "fixed:ALPHA".
#[pyfunction]
#[pyo3(signature = (width, height, steps, shift=None))]
fn schedule<'py>(
    py: Python<'py>,
    width: i64,
    height: i64,
    steps: i64,
    shift: Option<&str>,
) -> PyResult<Bound<'py, PyDict>> {
    let width = args::dimension("--width", Some(width))?.unwrap_or_default();
    let height = args::dimension("--height", Some(height))?.unwrap_or_default();
    let steps = args::count("--steps", Some(steps))?.unwrap_or_default();
    if steps == 0 {
        return Err(PyValueError::new_err("input '--steps': must be at least 1"));
    }
    let shift: Shift = match shift {
        Some(s) => s.parse().map_err(|e| PyValueError::new_err(format!("--shift: {e}")))?,
        None => Shift::Empirical,
    };
    let s = Schedule::new(width, height, steps, shift)
        .map_err(|e| PyValueError::new_err(format!("schedule for {width}x{height}, {steps} steps: {e}")))?;
    let d = PyDict::new(py);
    d.set_item("width", width)?;
    d.set_item("height", height)?;
    d.set_item("steps", steps)?;
    d.set_item("shift", shift.to_string())?;
    d.set_item("image_seq_len", s.image_seq_len)?;
    d.set_item("mu", s.mu)?;
    d.set_item("alpha", s.alpha)?;
    d.set_item("timesteps", s.timesteps())?;
    d.set_item("sigmas", s.sigmas)?;
    Ok(d)
}

#[pymodule]
fn _flux2(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("CancelledError", m.py().get_type::<CancelledError>())?;
    m.add_class::<pipeline::Pipeline>()?;
    m.add_function(wrap_pyfunction!(schedule, m)?)?;
    m.add_function(wrap_pyfunction!(export::export, m)?)?;
    m.add_function(wrap_pyfunction!(ort_library, m)?)?;
    m.add_function(wrap_pyfunction!(_use_ort_library, m)?)?;
    Ok(())
}
