//! Shared helpers for the integration tests: fixture paths, running a graph on ONNX
//! Runtime, reading safetensors into ndarrays and comparing with named tolerances.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use flux2_graphs::Model;
use flux2_runtime::{cpu_session, run, Input, SessionOptions};
use ndarray::ArrayD;

/// `tests/fixtures/<rel>`.
/// Pins ONNX Runtime's `MatMulNBits` accuracy level to 0 (f32 compute on the dequantised
/// weights) for this test process, so tests can compare the fused n-bit kernels with the
/// dequantised graph tightly; the runtime's default is 4 on CPUs with INT8 dot products.
/// Call before creating any session.
pub fn exact_nbits() {
    let level = flux2_runtime::ort_env::pin_nbits_accuracy_level("0");
    assert_eq!(level, "0", "a session fixed the MatMulNBits accuracy level before exact_nbits()");
}

pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(rel)
}

/// Writes `model` (weights inline) to a temp dir and runs it once on the CPU provider.
pub fn run_model(model: &Model, inputs: Vec<(&str, Input)>) -> anyhow::Result<HashMap<String, ArrayD<f32>>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("model.onnx");
    std::fs::write(&path, model.to_bytes())?;
    let mut s = cpu_session(&path, &SessionOptions::default())?;
    Ok(run(&mut s, inputs)?)
}

/// Runs an ONNX file on the CPU provider.
pub fn run_file(path: &Path, inputs: Vec<(&str, Input)>) -> anyhow::Result<HashMap<String, ArrayD<f32>>> {
    let mut s = cpu_session(path, &SessionOptions::default())?;
    Ok(run(&mut s, inputs)?)
}

/// Reads every tensor of a safetensors file as f32 (F32/F16/BF16) or i64 (I64) arrays.
pub fn load_tensors(path: &Path) -> anyhow::Result<HashMap<String, Input>> {
    let bytes = std::fs::read(path)?;
    let st = safetensors::SafeTensors::deserialize(&bytes)?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let shape: Vec<usize> = view.shape().to_vec();
        let data = view.data();
        let input = match view.dtype() {
            safetensors::Dtype::F32 => Input::F32(ArrayD::from_shape_vec(
                shape,
                data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            )?),
            safetensors::Dtype::I64 => Input::I64(ArrayD::from_shape_vec(
                shape,
                data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect(),
            )?),
            other => anyhow::bail!("{}: tensor {name} has unsupported dtype {other:?}", path.display()),
        };
        out.insert(name, input);
    }
    Ok(out)
}

/// Takes an f32 tensor out of a loaded map.
pub fn f32_of(map: &HashMap<String, Input>, name: &str) -> ArrayD<f32> {
    match map.get(name) {
        Some(Input::F32(a)) => a.clone(),
        _ => panic!("fixture has no f32 tensor '{name}'"),
    }
}

/// Largest absolute difference.
pub fn max_abs_diff(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape(), "shape mismatch");
    a.iter().zip(b.iter()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// mse(a, b) / mse(a, 0).
pub fn nmse(reference: &ArrayD<f32>, b: &ArrayD<f32>) -> f64 {
    let num: f64 = reference.iter().zip(b.iter()).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = reference.iter().map(|x| (*x as f64).powi(2)).sum();
    num / den.max(1e-30)
}

/// Asserts max-abs ≤ tol with a message naming the tensor.
pub fn assert_close(name: &str, reference: &ArrayD<f32>, got: &ArrayD<f32>, tol: f32) {
    assert_eq!(reference.shape(), got.shape(), "{name}: shape mismatch");
    assert!(got.iter().all(|v| v.is_finite()), "{name}: non-finite values");
    let d = max_abs_diff(reference, got);
    assert!(d <= tol, "{name}: max-abs {d:e} > {tol:e} (nmse {:e})", nmse(reference, got));
}

pub mod export;
