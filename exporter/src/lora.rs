//! LoRA adapters merged at export: the adapter code lives in the runtime
//! (`flux2_runtime::lora`, shared with run-time adapters); this module plans a merge against the
//! transformer graph's declared weights before anything is written and hands it to the writer
//! as a [`WeightMerge`].

use std::sync::Arc;

use flux2_runtime::lora::{AdapterRecord, AdapterSpec, LoraFile, MergePlan, ModuleTable};

use crate::layout::{Kind, ModelSource};
use crate::models::{build, ExportOptions};
use crate::writer::WeightMerge;
use crate::{ExportError, Result};

/// A merge plan as the writer's [`WeightMerge`]: it touches the transformer graph only.
#[derive(Debug)]
pub struct ExportMerge(pub MergePlan);

impl WeightMerge for ExportMerge {
    fn touches(&self, graph: &str, weight: &str) -> bool {
        graph == "transformer" && self.0.touches(weight)
    }
    fn apply(&self, _graph: &str, weight: &str, values: &mut [f32]) {
        self.0.apply(weight, values)
    }
    fn records(&self) -> Vec<AdapterRecord> {
        self.0.records().to_vec()
    }
}

/// The transformer graph's weights (name, shape) as the adapters' module table.
pub fn dit_table(source: &ModelSource, options: &ExportOptions) -> Result<ModuleTable> {
    let c = source.component(Kind::Transformer).ok_or_else(|| ExportError::UnknownLayout {
        path: source.root.clone(),
        msg: "LoRA adapters need a transformer (DiT) in the checkpoint".into(),
    })?;
    let graphs = build(c, options)?;
    let g = graphs.iter().find(|g| g.stem == "transformer").ok_or_else(|| ExportError::UnknownLayout {
        path: source.root.clone(),
        msg: "no transformer graph was built".into(),
    })?;
    let shapes: Vec<(&str, &[usize])> =
        g.model.weights.iter().map(|w| (w.name.as_str(), w.shape.as_slice())).collect();
    Ok(ModuleTable::new(shapes))
}

/// Reads every adapter and checks it against the DiT (modules, shapes, scales) before anything
/// is written; `None` without adapters.
pub fn plan_merge(
    source: &ModelSource,
    options: &ExportOptions,
    adapters: &[AdapterSpec],
    components: Option<&[Kind]>,
) -> Result<Option<Arc<dyn WeightMerge>>> {
    if adapters.is_empty() {
        return Ok(None);
    }
    if components.is_some_and(|k| !k.contains(&Kind::Transformer)) {
        return Err(ExportError::UnknownLayout {
            path: source.root.clone(),
            msg: "LoRA adapters adapt the transformer: export it too (--components ...,transformer)".into(),
        });
    }
    let table = dit_table(source, options)?;
    let files =
        adapters.iter().map(|a| Ok((LoraFile::open(&a.path)?, a.scale))).collect::<Result<Vec<_>>>()?;
    Ok(Some(Arc::new(ExportMerge(MergePlan::new(files, &table)?))))
}
