//! Prompt adherence for models trained on the flux2-shapes domain (`train/`): one solid shape
//! on a solid background, captioned `a {color} {shape} on a {background} background`.
//!
//! * [`vocabulary`]: the model's `vocabulary.json` (template, named palette, shapes, the size
//!   and steps the model is meant to run at), where to find it for an export folder, and the
//!   captions it allows.
//! * [`classify`]: a deterministic classifier of an RGB image (background colour, shape colour,
//!   shape kind) from the palette alone; no learned parts, so its verdict can be trusted and
//!   unit-tested on images drawn by [`draw`].
//! * [`run`]: generate N seeded captions with a [`flux2_runtime::pipeline::Pipeline`], classify
//!   each picture, and report per-attribute and all-three accuracy with a contact sheet.
//!
//! Depends on the runtime only (to run a model); it knows nothing about training or export.

pub mod classify;
pub mod draw;
pub mod prompts;
pub mod run;
pub mod vocabulary;

#[cfg(test)]
mod classify_tests;

use std::path::PathBuf;

pub use classify::{classify, Prediction, Rgb, Shape};
pub use vocabulary::{Caption, Vocabulary};

/// Errors of the eval crate; each names the file, caption or option at fault.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("vocabulary {path}: {msg}")]
    Vocabulary { path: PathBuf, msg: String },
    #[error("caption \"{caption}\": {msg}")]
    Caption { caption: String, msg: String },
    #[error("{name}: {msg}")]
    Option { name: String, msg: String },
    #[error("{path}: {msg}")]
    Io { path: PathBuf, msg: String },
    #[error(transparent)]
    Runtime(#[from] flux2_runtime::RuntimeError),
}

pub type Result<T> = std::result::Result<T, EvalError>;
