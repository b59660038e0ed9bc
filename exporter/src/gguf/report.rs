//! What `flux2 inspect FILE.gguf` reports: version, architecture, metadata, tensor types
//! with their counts and sizes, and how each type maps onto ONNX's low-bit forms (exactly,
//! or with the added error measured by re-expressing every block, see [`super::reexpress`]).

use std::collections::BTreeMap;

use serde::Serialize;

use super::direct::gguf_form;
use super::reexpress::{exact_form, quantize, reexpress, Form};
use super::{GgmlType, GgufError, GgufFile};

/// Tensors of one type.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TypeStats {
    pub tensors: usize,
    pub elements: u64,
    pub bytes: u64,
    /// How the type maps onto the low-bit forms, in words.
    pub mapping: String,
    /// With [`measure`]: added error of each candidate form (form name -> figures).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub forms: BTreeMap<String, FormError>,
}

/// The error of re-expressing a type's tensors in one form.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FormError {
    /// RMS of the added error over every element of the type.
    pub added_rms: f64,
    /// Signal (RMS of the values) to added error, in dB (`null`: exact).
    pub snr_db: Option<f64>,
    /// Tensors whose rows were not whole blocks of the form (not counted).
    pub skipped: usize,
}

/// The summary of a GGUF file.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub path: String,
    pub version: u32,
    pub architecture: Option<String>,
    pub alignment: u64,
    pub size: u64,
    /// Key -> short rendering of the value.
    pub metadata: BTreeMap<String, String>,
    pub tensors: usize,
    pub types: BTreeMap<String, TypeStats>,
}

/// What a type becomes in the low-bit graphs: the form `--weights-precision gguf` gives it,
/// whether that is exact (the file's codes, taken as they are), and the matching options.
pub fn mapping_note(ty: GgmlType) -> String {
    if ty.is_float() {
        return format!("{ty} values, used as they are (or converted to the export dtype); stays float");
    }
    let opt = |f: &Form| format!("--weights-precision int{} --block-size {}", f.bits, f.block);
    match (exact_form(ty), gguf_form(ty)) {
        (Some(f), _) => format!(
            "exact: {} with {} scales, the file's codes as they are (--weights-precision gguf, or {})",
            f.name(),
            if matches!(ty, GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q5_0) { "f16" } else { "f32" },
            opt(&f)
        ),
        (None, Some(f)) => format!(
            "approximate: {ty} has a per-block minimum, which a symmetric form holds only approximately; \
             re-quantised to the nearest, {} (--weights-precision gguf; added error with --verify)",
            f.name()
        ),
        (None, None) => format!("{ty}: no low-bit form"),
    }
}

/// The summary without reading tensor data.
pub fn summarize(g: &GgufFile) -> Report {
    let mut types: BTreeMap<String, TypeStats> = BTreeMap::new();
    for t in &g.tensors {
        let s = types.entry(t.ty.name().into()).or_default();
        s.tensors += 1;
        s.elements += t.numel();
        s.bytes += t.len;
        s.mapping = mapping_note(t.ty);
    }
    Report {
        path: g.path.display().to_string(),
        version: g.version,
        architecture: g.architecture().map(str::to_string),
        alignment: g.alignment,
        size: g.size,
        metadata: g.metadata.iter().map(|(k, v)| (k.clone(), v.summary())).collect(),
        tensors: g.tensors.len(),
        types,
    }
}

/// The forms measured for a quantised type: its exact form (if any), then INT8 and INT4,
/// symmetric and with zero points, block 32.
pub fn candidate_forms(ty: GgmlType) -> Vec<Form> {
    let mut forms: Vec<Form> = exact_form(ty).into_iter().collect();
    for bits in [8, 4] {
        for symmetric in [true, false] {
            let f = Form { bits, symmetric, block: 32 };
            if !forms.contains(&f) {
                forms.push(f);
            }
        }
    }
    forms
}

/// Reads every quantised tensor and measures the added error of each candidate form.
/// `progress` gets bytes of tensor data read.
pub fn measure(g: &GgufFile, report: &mut Report, progress: &mut dyn FnMut(u64)) -> Result<(), GgufError> {
    // per type and form: (sum of squared errors, sum of squared values, elements, skipped)
    let mut acc: BTreeMap<(String, String), (f64, f64, f64, usize)> = BTreeMap::new();
    for t in g.tensors.iter().filter(|t| !t.ty.is_float()) {
        let values = g.dequantize(t)?;
        let row = t.shape.last().copied().unwrap_or(1);
        for form in candidate_forms(t.ty) {
            let e = acc.entry((t.ty.name().into(), form.name())).or_default();
            if row % form.block != 0 {
                e.3 += 1;
                continue;
            }
            let r =
                if exact_form(t.ty) == Some(form) { reexpress(g, t, form)? } else { quantize(&values, form) };
            let n = t.numel() as f64;
            e.0 += r.added_rms * r.added_rms * n;
            e.1 += r.rms * r.rms * n;
            e.2 += n;
        }
        progress(t.len);
    }
    for ((ty, form), (e2, v2, n, skipped)) in acc {
        let added = if n > 0.0 { (e2 / n).sqrt() } else { 0.0 };
        let snr = (e2 > 0.0).then(|| 10.0 * (v2 / e2).log10());
        if let Some(s) = report.types.get_mut(&ty) {
            s.forms.insert(form, FormError { added_rms: added, snr_db: snr, skipped });
        }
    }
    Ok(())
}
