//! Input and dynamic-shape rules: the graph's inputs match the manifest, every named dynamic
//! axis has an ordered min/opt/max range in the manifest (that range becomes the TensorRT
//! optimisation profile, so an axis without one cannot be built), and no axis is anonymous.

use flux2_graphs::onnx::{tensor_shape_proto::dimension::Value as Dim, type_proto, ValueInfoProto};
use flux2_graphs::DType;
use flux2_runtime::manifest::GraphEntry;

use super::model::{dtype, GraphIndex};
use super::{Finding, LintTarget, Severity};

fn elem_and_dims(v: &ValueInfoProto) -> Option<(i32, Vec<Option<Dim>>)> {
    match v.r#type.as_ref()?.value.as_ref()? {
        type_proto::Value::TensorType(t) => {
            Some((t.elem_type, t.shape.as_ref()?.dim.iter().map(|d| d.value.clone()).collect()))
        }
    }
}

/// Checks graph inputs against the manifest entry and its `dim_ranges`.
pub fn check(ix: &GraphIndex, entry: &GraphEntry, file: &str, target: LintTarget, out: &mut Vec<Finding>) {
    let mut find = |severity, rule, message: String| {
        out.push(Finding { severity, rule, graph: file.to_string(), node: None, message })
    };
    let inputs: Vec<&ValueInfoProto> =
        ix.graph.input.iter().filter(|v| !ix.initializers.contains_key(v.name.as_str())).collect();
    for spec in &entry.inputs {
        if !inputs.iter().any(|v| v.name == spec.name) {
            find(
                Severity::Error,
                "manifest-mismatch",
                format!("manifest input '{}' is not a graph input", spec.name),
            );
        }
    }
    for v in &inputs {
        let name = &v.name;
        let Some(spec) = entry.inputs.iter().find(|s| &s.name == name) else {
            find(
                Severity::Error,
                "manifest-mismatch",
                format!("graph input '{name}' is missing from manifest.json"),
            );
            continue;
        };
        let Some((elem, dims)) = elem_and_dims(v) else {
            find(Severity::Error, "input-shape", format!("input '{name}' has no tensor type with a shape"));
            continue;
        };
        let manifest_dtype = DType::parse(&spec.dtype).map(|d| d.onnx());
        if manifest_dtype != Some(elem) {
            find(
                Severity::Error,
                "manifest-mismatch",
                format!(
                    "input '{name}' is {} in the graph but '{}' in manifest.json",
                    dtype::name(elem),
                    spec.dtype
                ),
            );
        }
        if dims.len() != spec.shape.len() {
            find(
                Severity::Error,
                "manifest-mismatch",
                format!(
                    "input '{name}' has rank {} in the graph but {} in manifest.json",
                    dims.len(),
                    spec.shape.len()
                ),
            );
        }
        if target != LintTarget::Ort && elem == dtype::DOUBLE {
            find(
                Severity::Warning,
                "input-dtype",
                format!("input '{name}' is float64: TensorRT casts it to float32"),
            );
        }
        for (k, d) in dims.iter().enumerate() {
            match d {
                Some(Dim::DimValue(n)) if *n > 0 => {}
                Some(Dim::DimValue(n)) => find(Severity::Error, "input-shape", format!(
                    "input '{name}' axis {k} has size {n}")),
                Some(Dim::DimParam(p)) if !p.is_empty() => match entry.dim_ranges.get(p) {
                    None => find(Severity::Error, "profile-missing", format!(
                        "input '{name}' axis {k} ('{p}') is dynamic but manifest.json has no dim_ranges entry \
                         for '{p}', so it gets no optimisation profile")),
                    Some(r) if !(1 <= r.min && r.min <= r.opt && r.opt <= r.max) => {
                        find(Severity::Error, "profile-range", format!(
                            "input '{name}' axis '{p}': range min {} opt {} max {} is not 1 <= min <= opt <= max",
                            r.min, r.opt, r.max))
                    }
                    Some(_) => {}
                },
                _ => find(Severity::Error, "input-shape", format!(
                    "input '{name}' axis {k} is dynamic without a name; name it and give it a range")),
            }
        }
    }
}
