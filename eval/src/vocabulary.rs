//! `vocabulary.json`, shipped beside a flux2-shapes checkpoint: the caption template, the named
//! palette, the shapes, and the size, step count and guidance the model is meant to run at.
//!
//! ```json
//! {"template": "a {color} {shape} on a {background} background",
//!  "colors": {"red": [220, 40, 40], ...}, "shapes": ["circle", "square", "triangle"],
//!  "size": [128, 128], "steps": 24, "guidance": 2.0, "text_layers": [9, 18, 27],
//!  "resolutions": [{"size": [64, 64], "steps": 24, "guidance": 2.0, "shift": "fixed:3"},
//!                  {"size": [128, 128], "steps": 24, "guidance": 2.0}]}
//! ```
//!
//! `size`, `steps` and `guidance` are the defaults; a model trained at several sizes lists each
//! in `resolutions` with the settings it samples best at there (any missing field falls back to
//! the top-level one; a missing `shift` means the runtime's default, FLUX.2's empirical shift).
//!
//! An export folder has no vocabulary of its own; [`Vocabulary::locate`] finds the one of the
//! checkpoint it was exported from through `manifest.json`'s source files (calibrated folders
//! keep that manifest), so any export of the model can be evaluated without extra options.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::classify::Shape;
use crate::{EvalError, Result};

/// File name of the vocabulary beside a checkpoint.
pub const VOCABULARY_FILE: &str = "vocabulary.json";

/// The vocabulary of a shapes model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Vocabulary {
    /// Caption template with `{color}`, `{shape}` and `{background}`.
    pub template: String,
    /// Colour name -> RGB.
    pub colors: BTreeMap<String, [u8; 3]>,
    /// Shape names (each one the classifier knows: circle, square, triangle).
    pub shapes: Vec<String>,
    /// [width, height] the model is meant to run at.
    pub size: [usize; 2],
    /// Sampling steps the model is meant to run at.
    pub steps: usize,
    /// Guidance scale the model is meant to run at (true CFG for a klein-base model); absent:
    /// the runtime's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance: Option<f32>,
    /// Text-encoder hidden-state layers the model was trained with.
    #[serde(default)]
    pub text_layers: Vec<usize>,
    /// Sampling settings per trained size (a multi-resolution model); empty: one size.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resolutions: Vec<Resolution>,
}

/// The settings a model samples best at for one size (`resolutions` entry of vocabulary.json).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Resolution {
    /// [width, height].
    pub size: [usize; 2],
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance: Option<f32>,
    /// Schedule shift as `flux2 generate --shift` spells it (`fixed:3`, `resolution:16`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shift: Option<String>,
}

/// Resolved sampling settings for one size.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub steps: usize,
    pub guidance: Option<f32>,
    pub shift: Option<String>,
}

/// One caption's attributes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Caption {
    pub color: String,
    pub shape: Shape,
    pub background: String,
}

impl Vocabulary {
    /// Parses and validates vocabulary JSON; `path` only names the source in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<Vocabulary> {
        let bad = |msg: String| EvalError::Vocabulary { path: path.to_path_buf(), msg };
        let v: Vocabulary = serde_json::from_str(text).map_err(|e| bad(format!("not a vocabulary: {e}")))?;
        for key in ["{color}", "{shape}", "{background}"] {
            if v.template.matches(key).count() != 1 {
                return Err(bad(format!("template \"{}\" must contain {key} exactly once", v.template)));
            }
        }
        if v.colors.len() < 2 {
            return Err(bad(format!("needs at least 2 colours, has {}", v.colors.len())));
        }
        if let Some(name) = v.colors.keys().find(|n| n.is_empty() || n.contains(char::is_whitespace)) {
            return Err(bad(format!("colour name \"{name}\" must be one non-empty word")));
        }
        if v.shapes.is_empty() {
            return Err(bad("no shapes".into()));
        }
        for s in &v.shapes {
            s.parse::<Shape>().map_err(|e| bad(e.to_string()))?;
        }
        if v.size.iter().any(|&s| s == 0 || s % 16 != 0) {
            return Err(bad(format!("size {:?} must be positive multiples of 16", v.size)));
        }
        if v.steps == 0 {
            return Err(bad("steps must be at least 1".into()));
        }
        if let Some(g) = v.guidance.filter(|g| !g.is_finite() || *g < 0.0) {
            return Err(bad(format!("guidance {g} must be a finite number >= 0")));
        }
        for r in &v.resolutions {
            check_resolution(r).map_err(|m| bad(format!("resolutions entry {:?}: {m}", r.size)))?;
        }
        Ok(v)
    }

    /// The sampling settings at `width`×`height`: the `resolutions` entry of that size over the
    /// top-level defaults.
    pub fn settings_at(&self, width: usize, height: usize) -> Settings {
        let r = self.resolutions.iter().find(|r| r.size == [width, height]);
        Settings {
            steps: r.and_then(|r| r.steps).unwrap_or(self.steps),
            guidance: r.and_then(|r| r.guidance).or(self.guidance),
            shift: r.and_then(|r| r.shift.clone()),
        }
    }

    /// The trained sizes: each `resolutions` entry, or the one `size`.
    pub fn sizes(&self) -> Vec<[usize; 2]> {
        if self.resolutions.is_empty() {
            return vec![self.size];
        }
        self.resolutions.iter().map(|r| r.size).collect()
    }

    /// Reads and validates a vocabulary file.
    pub fn load(path: &Path) -> Result<Vocabulary> {
        let text = std::fs::read_to_string(path).map_err(|e| EvalError::Vocabulary {
            path: path.to_path_buf(),
            msg: format!("cannot read: {e}"),
        })?;
        Self::from_json(&text, path)
    }

    /// The vocabulary of a model folder: `explicit` if given; else `dir/vocabulary.json`; else
    /// the one beside the checkpoint `dir` was exported from (the folders above each source
    /// file named in `dir/manifest.json`, nearest first). Returns it with its path.
    pub fn locate(dir: &Path, explicit: Option<&Path>) -> Result<(Vocabulary, PathBuf)> {
        if let Some(p) = explicit {
            return Ok((Self::load(p)?, p.to_path_buf()));
        }
        let candidates = candidates(dir);
        match candidates.iter().find(|p| p.is_file()) {
            Some(p) => Ok((Self::load(p)?, p.clone())),
            None => Err(EvalError::Vocabulary {
                path: dir.join(VOCABULARY_FILE),
                msg: format!(
                    "not found (looked in: {}); pass --vocabulary FILE",
                    candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
                ),
            }),
        }
    }

    /// Like [`Vocabulary::locate`] without an explicit file, but `Ok(None)` when no candidate
    /// exists (a model of another domain); a vocabulary file that exists but is invalid is an error.
    pub fn find(dir: &Path) -> Result<Option<(Vocabulary, PathBuf)>> {
        match candidates(dir).into_iter().find(|p| p.is_file()) {
            Some(p) => Ok(Some((Self::load(&p)?, p))),
            None => Ok(None),
        }
    }

    /// Colour names in a fixed (sorted) order.
    pub fn color_names(&self) -> Vec<&str> {
        self.colors.keys().map(String::as_str).collect()
    }

    /// The shapes as [`Shape`]s (validated at load).
    pub fn shape_kinds(&self) -> Vec<Shape> {
        self.shapes.iter().filter_map(|s| s.parse().ok()).collect()
    }

    /// The caption text of `c`.
    pub fn caption(&self, c: &Caption) -> String {
        self.template
            .replace("{color}", &c.color)
            .replace("{shape}", c.shape.name())
            .replace("{background}", &c.background)
    }

    /// Every caption the vocabulary allows (shape colour ≠ background), in a fixed order.
    pub fn all_captions(&self) -> Vec<Caption> {
        let mut out = Vec::new();
        for shape in self.shape_kinds() {
            for color in self.colors.keys() {
                for background in self.colors.keys().filter(|b| *b != color) {
                    out.push(Caption { color: color.clone(), shape, background: background.clone() });
                }
            }
        }
        out
    }

    /// The caption `text` spells (surrounding whitespace and letter case ignored), or an
    /// error that says what the vocabulary allows.
    pub fn parse(&self, text: &str) -> Result<Caption> {
        let want = text.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
        if let Some(c) = self.all_captions().into_iter().find(|c| self.caption(c) == want) {
            return Ok(c);
        }
        Err(EvalError::Caption {
            caption: text.to_string(),
            msg: format!(
                "not a caption of this model: expected \"{}\" with colour and background two different of {}, shape one of {}",
                self.template,
                self.color_names().join(", "),
                self.shapes.join(", ")
            ),
        })
    }
}

fn check_resolution(r: &Resolution) -> std::result::Result<(), String> {
    if r.size.iter().any(|&s| s == 0 || s % 16 != 0) {
        return Err("size must be positive multiples of 16".into());
    }
    if r.steps == Some(0) {
        return Err("steps must be at least 1".into());
    }
    if let Some(g) = r.guidance.filter(|g| !g.is_finite() || *g < 0.0) {
        return Err(format!("guidance {g} must be a finite number >= 0"));
    }
    if let Some(sh) = &r.shift {
        check_shift(sh)?;
    }
    Ok(())
}

/// A shift as `flux2 generate --shift` spells it (the runtime's own parser).
fn check_shift(s: &str) -> std::result::Result<(), String> {
    s.parse::<flux2_runtime::schedule::Shift>().map(|_| ()).map_err(|e| format!("shift \"{s}\": {e}"))
}

/// Where [`Vocabulary::locate`] looks, in order.
fn candidates(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.join(VOCABULARY_FILE)];
    let manifest = std::fs::read_to_string(dir.join("manifest.json")).ok();
    let json: Option<serde_json::Value> = manifest.and_then(|t| serde_json::from_str(&t).ok());
    let sources = json.as_ref().and_then(|j| j.get("sources")).and_then(|s| s.as_array()).cloned();
    for s in sources.unwrap_or_default() {
        let Some(path) = s.get("path").and_then(|p| p.as_str()) else { continue };
        // a component file sits at <checkpoint>/<component>/<file>: look two levels up
        for up in Path::new(path).ancestors().skip(1).take(2) {
            let p = up.join(VOCABULARY_FILE);
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}
