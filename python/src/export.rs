//! `flux2.export(checkpoint, out, **options)`: `flux2 export` from Python, through the same
//! exporter and option parser, with the GIL released.

use std::path::PathBuf;

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use flux2_exporter::args::ExportArgs;
use flux2_exporter::export::export as run_export;
use flux2_exporter::{ExportError, ModelSource};

/// A list option given as a list or a comma-separated string, as strings.
fn strings(name: &str, v: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    if let Ok(s) = v.extract::<String>() {
        return Ok(s.split(',').map(|p| p.trim().to_string()).collect());
    }
    v.try_iter()
        .map_err(|_| PyTypeError::new_err(format!("{name}: expected a list or a comma-separated string")))?
        .map(|i| i?.str().map(|s| s.to_string()))
        .collect()
}

/// A list of layer indices (list of ints or "10,20,30").
fn indices(name: &str, v: &Bound<'_, PyAny>) -> PyResult<Vec<usize>> {
    strings(name, v)?
        .iter()
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| PyValueError::new_err(format!("{name}: '{s}' is not a layer index")))
        })
        .collect()
}

/// Option errors are the caller's (ValueError); reading the checkpoint can fail either way:
/// a missing or malformed checkpoint is the caller's too; writing is a runtime fault.
fn py_err(e: ExportError) -> PyErr {
    match e {
        ExportError::Output { .. } | ExportError::Graph(_) => PyRuntimeError::new_err(e.to_string()),
        _ => PyValueError::new_err(e.to_string()),
    }
}

fn option_args(options: Option<&Bound<'_, PyDict>>) -> PyResult<ExportArgs> {
    let mut a = ExportArgs::default();
    let Some(options) = options else { return Ok(a) };
    for (k, v) in options.iter() {
        let key: String = k.extract()?;
        let text = || -> PyResult<String> {
            v.extract::<String>().map_err(|_| PyValueError::new_err(format!("--{key}: expected a string")))
        };
        match key.as_str() {
            "components" => a.components = Some(strings("--components", &v)?),
            "dtype" => a.dtype = text()?,
            "weights" => a.weights = text()?,
            "target" => a.target = text()?,
            "text_layers" => a.text_layers = Some(indices("--text-layers", &v)?),
            "config" => a.config = Some(v.extract::<PathBuf>()?),
            other => {
                return Err(PyTypeError::new_err(format!(
                    "export() got an unexpected option '{other}' (expected components, dtype, weights, \
                     target, text_layers, config)"
                )))
            }
        }
    }
    Ok(a)
}

/// Exports a FLUX.2 checkpoint (diffusers folder, component folder or BFL file) to ONNX
/// graphs + manifest.json in `out`, as `flux2 export` does. Options: components (list or
/// "vae,transformer,text-encoder"), dtype ("f32", "f16", "bf16"), weights ("copy", "link"),
/// target ("ort", "tensorrt"), text_layers (list of ints), config (path). Returns the manifest
/// as a dict.
#[pyfunction]
#[pyo3(signature = (checkpoint, out, **options))]
pub fn export<'py>(
    py: Python<'py>,
    checkpoint: PathBuf,
    out: PathBuf,
    options: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let req = option_args(options)?.into_request().map_err(|e| PyValueError::new_err(e.to_string()))?;
    let manifest = py.detach(|| -> Result<String, ExportError> {
        let source = ModelSource::open(&checkpoint)?;
        let m = run_export(&source, &out, &req, &mut |_| {})?;
        serde_json::to_string(&m).map_err(|e| ExportError::Output { path: out.clone(), msg: e.to_string() })
    });
    let json = py.import("json")?;
    json.call_method1("loads", (manifest.map_err(py_err)?,))
}
