//! Resolving graph weights against a checkpoint through a name map.
//!
//! A graph declares weights by canonical name (the diffusers / transformers names) and
//! shape. A layout's name map says where each comes from: a tensor as stored, a tensor
//! reinterpreted with another shape of the same size (1×1 conv -> linear), a row range of
//! a fused tensor (BFL `qkv`), or row pieces concatenated (BFL's swapped shift/scale).
//! Resolution checks every declaration and reports all missing, misshaped and unexpected
//! tensors in one error.

use flux2_graphs::{DType, WeightDecl};

use crate::checkpoint::Checkpoint;
use crate::{ExportError, Result};

/// Where one graph weight comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The tensor stored under this name, with exactly the declared shape.
    Tensor(String),
    /// The tensor stored under this name, reinterpreted with the declared shape (same element count).
    Reshaped(String),
    /// Rows `start..end` (axis 0) of a stored tensor.
    Rows { name: String, start: usize, end: usize },
    /// Row pieces concatenated along axis 0.
    Concat(Vec<Source>),
}

impl Source {
    pub fn tensor(name: impl Into<String>) -> Source {
        Source::Tensor(name.into())
    }
}

/// A contiguous byte range of one stored tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Piece {
    pub tensor: String,
    pub file: usize,
    pub dtype: DType,
    /// Shape of this piece (rows of the source for `Rows`).
    pub shape: Vec<usize>,
    pub offset: u64,
    pub len: u64,
    /// Per-tensor scale of an FP8 tensor (value = stored × scale; see [`crate::fp8`]).
    pub scale: Option<f32>,
}

/// A graph weight and the pieces that make it, in order (concatenated on axis 0).
#[derive(Clone, Debug)]
pub struct ResolvedWeight {
    pub decl: WeightDecl,
    pub pieces: Vec<Piece>,
}

impl ResolvedWeight {
    /// True when the pieces are one stored tensor with the declared shape and dtype.
    pub fn is_plain(&self) -> bool {
        self.pieces.len() == 1
            && self.pieces[0].shape == self.decl.shape
            && self.pieces[0].dtype == self.decl.dtype
            && self.pieces[0].scale.is_none()
    }
}

/// Resolves every declared weight. `map` gives each canonical name's source; `ignore`
/// lists name prefixes of stored tensors that are expected but unused (e.g. a vision
/// tower). Every other unused stored tensor is reported as unexpected.
pub fn resolve_weights(
    ckpt: &Checkpoint,
    decls: &[WeightDecl],
    map: &dyn Fn(&str) -> Source,
    ignore: &[&str],
    model: &str,
) -> Result<Vec<ResolvedWeight>> {
    let mut used = std::collections::BTreeSet::new();
    let mut missing = Vec::new();
    let mut misshaped = Vec::new();
    let mut out = Vec::new();
    for decl in decls {
        let src = map(&decl.name);
        let mut pieces = Vec::new();
        match collect(ckpt, &src, &mut pieces, &mut used) {
            Err(name) => {
                missing.push(if name == decl.name { name } else { format!("{name} (for {})", decl.name) })
            }
            Ok(()) => {
                if let Some(problem) = check_shape(decl, &src, &pieces) {
                    misshaped.push(problem);
                } else {
                    out.push(ResolvedWeight { decl: decl.clone(), pieces });
                }
            }
        }
    }
    let unexpected: Vec<&String> = ckpt
        .tensors
        .keys()
        .filter(|k| !used.contains(*k) && !ignore.iter().any(|p| k.starts_with(p)))
        .collect();
    if missing.is_empty() && misshaped.is_empty() && unexpected.is_empty() {
        return Ok(out);
    }
    let mut problems = String::new();
    let mut list = |title: &str, items: Vec<String>| {
        if !items.is_empty() {
            problems.push_str(&format!("  {} {title}:\n", items.len()));
            for i in items {
                problems.push_str(&format!("    {i}\n"));
            }
        }
    };
    list("missing tensors", missing);
    list("misshaped tensors", misshaped);
    list("unexpected tensors", unexpected.into_iter().cloned().collect());
    Err(ExportError::WeightMismatch {
        checkpoint: ckpt.origin.display().to_string(),
        model: model.to_string(),
        problems: problems.trim_end().to_string(),
    })
}

fn collect(
    ckpt: &Checkpoint,
    src: &Source,
    pieces: &mut Vec<Piece>,
    used: &mut std::collections::BTreeSet<String>,
) -> std::result::Result<(), String> {
    match src {
        Source::Tensor(n) | Source::Reshaped(n) => {
            let t = ckpt.get(n).ok_or_else(|| n.clone())?;
            used.insert(n.clone());
            pieces.push(Piece {
                tensor: n.clone(),
                file: t.file,
                dtype: t.raw.dtype,
                shape: t.raw.shape.clone(),
                offset: t.raw.offset,
                len: t.raw.len,
                scale: ckpt.fp8.of(n),
            });
        }
        Source::Rows { name, start, end } => {
            let t = ckpt.get(name).ok_or_else(|| name.clone())?;
            used.insert(name.clone());
            let rows = t.raw.shape.first().copied().unwrap_or(0);
            let row_bytes = if rows == 0 { 0 } else { t.raw.len / rows as u64 };
            let (s, e) = ((*start).min(rows), (*end).min(rows).max((*start).min(rows)));
            let mut shape = t.raw.shape.clone();
            if !shape.is_empty() {
                shape[0] = e - s;
            }
            pieces.push(Piece {
                tensor: name.clone(),
                file: t.file,
                dtype: t.raw.dtype,
                shape,
                offset: t.raw.offset + s as u64 * row_bytes,
                len: (e - s) as u64 * row_bytes,
                scale: ckpt.fp8.of(name),
            });
        }
        Source::Concat(parts) => {
            for p in parts {
                collect(ckpt, p, pieces, used)?;
            }
        }
    }
    Ok(())
}

fn check_shape(decl: &WeightDecl, src: &Source, pieces: &[Piece]) -> Option<String> {
    let want: usize = decl.shape.iter().product();
    let got: usize = pieces.iter().map(|p| p.shape.iter().product::<usize>()).sum();
    let names: Vec<&str> = pieces.iter().map(|p| p.tensor.as_str()).collect();
    let shapes: Vec<&Vec<usize>> = pieces.iter().map(|p| &p.shape).collect();
    let exact = match src {
        Source::Tensor(_) => pieces[0].shape == decl.shape,
        Source::Reshaped(_) => got == want,
        Source::Rows { .. } | Source::Concat(_) => {
            got == want && pieces.iter().all(|p| p.shape.get(1..) == decl.shape.get(1..))
        }
    };
    if exact && !pieces.iter().any(|p| !p.dtype.is_float() && decl.dtype.is_float()) {
        return None;
    }
    Some(format!("{}: got {:?} from {}, expected {:?}", decl.name, shapes, names.join(" + "), decl.shape))
}
