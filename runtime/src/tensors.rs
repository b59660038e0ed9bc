//! Running a session on named ndarray inputs and collecting float outputs.

use std::collections::HashMap;

use ndarray::ArrayD;
use ort::session::{Session, SessionInputValue};
use ort::value::Tensor;

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
