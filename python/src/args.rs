//! Python values -> the runtime's request arguments: integers that must not be negative,
//! references given as paths, encoded bytes or uint8 `[H, W, 3]` arrays, prompt embeddings as
//! paths or float32 arrays, per-image seeds.

use std::path::PathBuf;

use numpy::{PyReadonlyArray3, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes};

use flux2_runtime::images::Reference;
use flux2_runtime::tensor_file::Tensor;

/// A value in the form of the CLI's messages: `input '--width': ...`.
fn bad(name: &str, msg: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(format!("input '{name}': {msg}"))
}

/// An optional non-negative count (steps): negative values are refused here, zero and the
/// rest by the runtime's own checks.
pub fn count(name: &str, v: Option<i64>) -> PyResult<Option<usize>> {
    match v {
        None => Ok(None),
        Some(n) if n < 0 => Err(bad(name, format!("{n} is negative"))),
        Some(n) => usize::try_from(n).map(Some).map_err(|_| bad(name, format!("{n} is too large"))),
    }
}

/// An optional image side in pixels: a positive multiple of 16 (the runtime says the same).
pub fn dimension(name: &str, v: Option<i64>) -> PyResult<Option<usize>> {
    match v {
        Some(n) if n <= 0 || n % 16 != 0 => {
            Err(bad(name, format!("{n} is not a positive multiple of 16 (try {})", (n / 16).max(1) * 16)))
        }
        v => count(name, v),
    }
}

/// A seed: any integer in 0..2⁶⁴.
pub fn seed(v: &Bound<'_, PyAny>) -> PyResult<u64> {
    v.extract::<u64>().map_err(|_| bad("--seed", format!("{v} is not an integer in 0..2^64")))
}

/// One reference: a path (str or os.PathLike), encoded image bytes, or uint8 `[H, W, 3]` pixels.
fn reference(i: usize, v: &Bound<'_, PyAny>) -> PyResult<Reference> {
    let name = format!("references[{i}]");
    if let Ok(b) = v.cast::<PyBytes>() {
        return Ok(Reference::Encoded { name, bytes: b.as_bytes().to_vec() });
    }
    if let Ok(b) = v.cast::<PyByteArray>() {
        return Ok(Reference::Encoded { name, bytes: b.to_vec() });
    }
    if let Ok(a) = v.extract::<PyReadonlyArray3<'_, u8>>() {
        let [height, width, channels] = a.shape() else { unreachable!("a 3-d array") };
        if *channels != 3 {
            return Err(bad(&name, format!("array of shape {:?}; expected uint8 [H, W, 3] RGB", a.shape())));
        }
        let pixels = a.as_array().iter().copied().collect();
        return Ok(Reference::Rgb { name, width: *width, height: *height, pixels });
    }
    if let Ok(p) = v.extract::<PathBuf>() {
        return Ok(Reference::Path(p));
    }
    let kind = v.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into());
    let shape = v.getattr("shape").ok().map(|s| format!(" of shape {s}")).unwrap_or_default();
    let dtype = v.getattr("dtype").ok().map(|s| format!(" and dtype {s}")).unwrap_or_default();
    Err(bad(
        &name,
        format!("{kind}{shape}{dtype}: expected a path, encoded PNG/JPEG bytes or a uint8 [H, W, 3] array"),
    ))
}

/// The `references` argument: None, or a list/tuple of references.
pub fn references(v: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<Reference>> {
    let Some(v) = v else { return Ok(vec![]) };
    if v.is_none() {
        return Ok(vec![]);
    }
    if v.extract::<PathBuf>().is_ok() || v.cast::<PyBytes>().is_ok() || v.hasattr("shape")? {
        return Err(bad("references", "expected a list of references (paths, bytes or arrays)"));
    }
    v.try_iter()
        .map_err(|_| bad("references", "expected a list of references"))?
        .enumerate()
        .map(|(i, item)| reference(i, &item?))
        .collect()
}

/// Prompt embeddings given as a path (a safetensors file, read by the runtime) or as a float32
/// array `[1, L, ctx]` / `[N, L, ctx]` (taken as is).
pub enum Embeds {
    Path(PathBuf),
    Array(Tensor),
}

/// `prompt_embeds` / `negative_prompt_embeds`: None, a path, or a float32 3-d array.
pub fn embeds(name: &str, v: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Embeds>> {
    let Some(v) = v.filter(|v| !v.is_none()) else { return Ok(None) };
    if let Ok(a) = v.extract::<PyReadonlyArray3<'_, f32>>() {
        let shape = a.shape().to_vec();
        let data = a.as_array().iter().copied().collect();
        return Ok(Some(Embeds::Array(Tensor { shape, data })));
    }
    if v.hasattr("shape")? {
        let shape = v.getattr("shape")?.str()?.to_string();
        let dtype = v.getattr("dtype").ok().map(|d| d.to_string()).unwrap_or_default();
        return Err(bad(
            name,
            format!("array of shape {shape} {dtype}: expected float32 [1, L, ctx] or [N, L, ctx]"),
        ));
    }
    v.extract::<PathBuf>()
        .map(|p| Some(Embeds::Path(p)))
        .map_err(|_| bad(name, "expected a safetensors path or a float32 [1, L, ctx] array"))
}

/// `seeds`: None or a list of integers in 0..2⁶⁴, one per image.
pub fn seeds(v: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Vec<u64>>> {
    let Some(v) = v.filter(|v| !v.is_none()) else { return Ok(None) };
    let list: Vec<u64> = v
        .try_iter()
        .map_err(|_| bad("seeds", "expected a list of integers"))?
        .map(|s| seed(&s?))
        .collect::<PyResult<_>>()?;
    if list.is_empty() {
        return Err(bad("seeds", "empty: give one seed per image"));
    }
    Ok(Some(list))
}
