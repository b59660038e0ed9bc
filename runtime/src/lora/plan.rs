//! Planning and computing a merge: every module of every adapter is mapped and shape-checked
//! against the model before any weight is read, then each touched weight gets
//! `W += Σ_adapters scale · s_module · B[rows]·A` on request, one weight at a time (memory
//! stays one weight, not the model).
//!
//! `s_module` is peft's scaling: `lora_alpha / r` from the file's PEFT config (rank and alpha
//! patterns, rsLoRA `alpha / √r`), 1 without one (diffusers' "alpha = rank"); times
//! `alpha / rank` where the file stores `.alpha` tensors (kohya).

use std::collections::BTreeMap;
use std::ops::Range;

use super::file::{LoraFile, Mat};
use super::modules::{Lookup, ModuleTable};
use super::{LoraError, Result};

/// One adapter module's share of one weight.
#[derive(Clone, Debug)]
struct Contribution {
    adapter: usize,
    module: usize,
    rows: Range<usize>,
    scale: f32,
}

/// What the manifest and `flux2 inspect` record about an applied adapter.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdapterRecord {
    pub file: String,
    /// sha256 of the adapter file.
    pub fingerprint: String,
    pub format: String,
    pub rank: usize,
    /// The user's scale (as written: the f32's shortest decimal form).
    pub scale: f64,
    /// Graph weights the adapter changes.
    pub tensors: Vec<String>,
    /// Modules of the file that diffusers does not apply for this format (skipped).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
}

/// Adapters checked against a model, ready to merge.
#[derive(Clone, Debug)]
pub struct MergePlan {
    adapters: Vec<(LoraFile, f32)>,
    touched: BTreeMap<String, Vec<Contribution>>,
    records: Vec<AdapterRecord>,
}

impl MergePlan {
    /// Maps and checks every module of `adapters` (file, user scale) against `table`.
    pub fn new(adapters: Vec<(LoraFile, f32)>, table: &ModuleTable) -> Result<MergePlan> {
        let mut touched: BTreeMap<String, Vec<Contribution>> = BTreeMap::new();
        let mut records = Vec::new();
        for (ai, (file, user_scale)) in adapters.iter().enumerate() {
            let mut tensors = Vec::new();
            let mut skipped = Vec::new();
            for (mi, m) in file.modules.iter().enumerate() {
                let segments = match table.lookup(file.format, &m.name) {
                    Lookup::Segments(s) => s,
                    Lookup::Skipped(layer) => {
                        log::warn!(
                            "{}: skipping '{}' ({layer}): diffusers 0.42.1 does not apply {} keys for this layer",
                            file.path.display(),
                            m.key,
                            file.format.name()
                        );
                        skipped.push(m.name.clone());
                        continue;
                    }
                    Lookup::Unknown => return Err(unknown(file, &m.key, &m.name, table)),
                };
                let out: usize = segments.iter().map(|s| s.rows.len()).sum();
                let shape_err =
                    |msg: String| LoraError::Shape { path: file.path.clone(), module: m.name.clone(), msg };
                let targets: Vec<String> =
                    segments.iter().map(|s| format!("{} {:?}", s.weight, table.shapes[&s.weight])).collect();
                if m.up.rows != out || segments.iter().any(|s| s.cols != m.down.cols) {
                    return Err(shape_err(format!(
                        "delta B·A is [{}, {}] (lora_B [{}, {}], lora_A [{}, {}]) but the base tensor is {}",
                        m.up.rows,
                        m.down.cols,
                        m.up.rows,
                        m.up.cols,
                        m.down.rows,
                        m.down.cols,
                        targets.join(" + ")
                    )));
                }
                for s in segments {
                    let scale = user_scale * module_scale(file, mi, s.module()).map_err(shape_err)?;
                    tensors.push(s.weight.clone());
                    let c = Contribution { adapter: ai, module: mi, rows: s.rows.clone(), scale };
                    touched.entry(s.weight).or_default().push(c);
                }
            }
            tensors.sort();
            tensors.dedup();
            records.push(AdapterRecord {
                file: file.path.display().to_string(),
                fingerprint: file.fingerprint.clone(),
                format: file.format.name().into(),
                rank: file.rank(),
                scale: user_scale.to_string().parse().unwrap_or(*user_scale as f64),
                tensors,
                skipped,
            });
        }
        Ok(MergePlan { adapters, touched, records })
    }

    /// Graph weights that change, in name order.
    pub fn touched(&self) -> impl Iterator<Item = &str> {
        self.touched.keys().map(|s| s.as_str())
    }

    pub fn touches(&self, weight: &str) -> bool {
        self.touched.contains_key(weight)
    }

    pub fn records(&self) -> &[AdapterRecord] {
        &self.records
    }

    /// Adds every adapter's delta to `base`, the f32 values of `weight` ([out, in], row-major).
    pub fn apply(&self, weight: &str, base: &mut [f32]) {
        for c in self.touched.get(weight).into_iter().flatten() {
            let m = &self.adapters[c.adapter].0.modules[c.module];
            add_product(base, &m.up, c.rows.clone(), &m.down, c.scale);
        }
    }
}

/// peft's scaling for one module (×alpha/rank when the file stores alphas).
fn module_scale(file: &LoraFile, mi: usize, module: &str) -> std::result::Result<f32, String> {
    let m = &file.modules[mi];
    let rank = m.rank();
    let mut s = match &file.config {
        Some(cfg) => {
            let (r, s) = cfg.scaling(module);
            if r != rank {
                return Err(format!(
                    "the file's metadata gives rank {r} for {module} but '{}' has rank {rank}",
                    m.key
                ));
            }
            s
        }
        None => 1.0,
    };
    if let Some(alpha) = m.alpha {
        s *= alpha / rank as f32;
    }
    Ok(s)
}

fn unknown(file: &LoraFile, key: &str, module: &str, table: &ModuleTable) -> LoraError {
    let names = table.names(file.format);
    let stem = module.rsplit_once(['.', '_']).map_or(module, |(s, _)| s);
    let near: Vec<&String> = names.iter().filter(|n| n.starts_with(stem)).take(4).collect();
    let hint = if near.is_empty() {
        format!(" (a {} file; {} adaptable layers)", file.format.name(), names.len())
    } else {
        format!(
            " (a {} file; close names: {})",
            file.format.name(),
            near.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        )
    };
    LoraError::UnknownModule {
        path: file.path.clone(),
        key: key.to_string(),
        module: module.to_string(),
        hint,
    }
}

/// `w[i, :] += scale · Σ_k b[rows.start + i, k] · a[k, :]`, rows split over threads.
fn add_product(w: &mut [f32], b: &Mat, rows: Range<usize>, a: &Mat, scale: f32) {
    let cols = a.cols;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(rows.len().max(1));
    let per = rows.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        for (t, chunk) in w.chunks_mut(per * cols).enumerate() {
            let first = rows.start + t * per;
            scope.spawn(move || {
                for (i, out) in chunk.chunks_mut(cols).enumerate() {
                    let brow = &b.data[(first + i) * b.cols..(first + i + 1) * b.cols];
                    for (k, &bv) in brow.iter().enumerate() {
                        let f = scale * bv;
                        if f != 0.0 {
                            for (o, &av) in out.iter_mut().zip(&a.data[k * cols..(k + 1) * cols]) {
                                *o += f * av;
                            }
                        }
                    }
                }
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn product_matches_naive() {
        let a = Mat { rows: 2, cols: 3, data: vec![1., 2., 3., -1., 0.5, 0.] };
        let b = Mat { rows: 4, cols: 2, data: vec![1., 0., 0., 1., 2., 3., -1., 1.] };
        let mut w = vec![0.0f32; 2 * 3];
        add_product(&mut w, &b, 2..4, &a, 0.5);
        let mut want = vec![0.0f32; 6];
        for i in 0..2 {
            for j in 0..3 {
                for k in 0..2 {
                    want[i * 3 + j] += 0.5 * b.data[(2 + i) * 2 + k] * a.data[k * 3 + j];
                }
            }
        }
        assert_eq!(w, want);
    }
}
