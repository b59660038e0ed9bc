//! Running a session on named inputs and collecting float outputs: [`run`] on owned ndarray
//! inputs, and [`run_borrowed`], the pipeline's path, which hands borrowed buffers to ONNX
//! Runtime without copying them, copies each float output out once, and reports the time
//! spent inside `Session::run` alone.

use std::collections::HashMap;
use std::time::Instant;

use ndarray::ArrayD;
use ort::session::{Session, SessionInputValue};
use ort::value::{Tensor, TensorRef};

use crate::RuntimeError;

/// A named graph input.
#[derive(Clone, Debug)]
pub enum Input {
    F32(ArrayD<f32>),
    I64(ArrayD<i64>),
}

/// Runs `session` and returns every float output by name (other outputs are skipped).
pub fn run(
    session: &mut Session,
    inputs: Vec<(&str, Input)>,
) -> Result<HashMap<String, ArrayD<f32>>, RuntimeError> {
    let mut values: Vec<(String, SessionInputValue<'static>)> = Vec::with_capacity(inputs.len());
    for (name, input) in inputs {
        let bad = |e: ort::Error| RuntimeError::Input { name: name.to_string(), msg: e.to_string() };
        let v: SessionInputValue<'static> = match input {
            Input::F32(a) => Tensor::from_array(a).map_err(bad)?.into(),
            Input::I64(a) => Tensor::from_array(a).map_err(bad)?.into(),
        };
        values.push((name.to_string(), v));
    }
    let outputs = session.run(values).map_err(|e| RuntimeError::Run(e.to_string()))?;
    let mut result = HashMap::new();
    for (name, value) in outputs.iter() {
        if let Ok(a) = value.try_extract_array::<f32>() {
            result.insert(name.to_string(), a.to_owned());
        }
    }
    Ok(result)
}

/// A named graph input borrowed from the caller: shape and row-major data.
#[derive(Clone, Debug)]
pub enum InputRef<'a> {
    F32(Vec<usize>, &'a [f32]),
    I64(Vec<usize>, &'a [i64]),
}

/// Runs `session` on borrowed inputs (no copy on the way in). Returns every float output as a
/// [`crate::tensor_file::Tensor`] (one copy on the way out) and the seconds spent inside
/// `Session::run`.
pub fn run_borrowed(
    session: &mut Session,
    inputs: &[(&str, InputRef<'_>)],
) -> Result<(HashMap<String, crate::tensor_file::Tensor>, f64), RuntimeError> {
    let mut values: Vec<(&str, SessionInputValue<'_>)> = Vec::with_capacity(inputs.len());
    for (name, input) in inputs {
        let bad = |e: ort::Error| RuntimeError::Input { name: name.to_string(), msg: e.to_string() };
        let v: SessionInputValue<'_> = match input {
            InputRef::F32(shape, data) => {
                TensorRef::from_array_view((shape.clone(), *data)).map_err(bad)?.into()
            }
            InputRef::I64(shape, data) => {
                TensorRef::from_array_view((shape.clone(), *data)).map_err(bad)?.into()
            }
        };
        values.push((name, v));
    }
    let started = Instant::now();
    let outputs = session.run(values).map_err(|e| RuntimeError::Run(e.to_string()))?;
    let seconds = started.elapsed().as_secs_f64();
    let mut result = HashMap::new();
    for (name, value) in outputs.iter() {
        if let Ok((shape, data)) = value.try_extract_tensor::<f32>() {
            let shape = shape.iter().map(|&d| d.max(0) as usize).collect();
            result.insert(name.to_string(), crate::tensor_file::Tensor { shape, data: data.to_vec() });
        }
    }
    Ok((result, seconds))
}
