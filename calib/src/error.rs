//! The error type of the quantisation side of the crate (ONNX files, Q/DQ rewriting,
//! statistics, calibration outputs). Every variant names the file, tensor, node or option
//! at fault. Timestep distributions keep their own [`crate::timesteps::TimestepError`].

use std::path::PathBuf;

/// Errors of model reading/writing, Q/DQ insertion, statistics and reports.
#[derive(Debug, thiserror::Error)]
pub enum CalibError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a usable ONNX model: {msg}")]
    BadModel { path: PathBuf, msg: String },
    #[error("tensor '{name}' ({path}): {msg}")]
    Tensor { name: String, path: PathBuf, msg: String },
    #[error("node '{node}': {msg}")]
    Node { node: String, msg: String },
    #[error("statistics of '{name}': {msg}")]
    Stats { name: String, msg: String },
    #[error("invalid {option}: {msg}")]
    Option { option: String, msg: String },
}

pub type Result<T> = std::result::Result<T, CalibError>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> CalibError {
    let path = path.into();
    move |source| CalibError::Io { path, source }
}
