//! Exporting fixtures through the real exporter API.

use std::path::Path;

use flux2_exporter::export::{export, ExportRequest};
use flux2_exporter::models::ExportOptions;
use flux2_exporter::{Kind, ModelSource, WeightMode};
use flux2_graphs::{DType, Target};

/// Options for an f32 export on `target`, with an optional config override file.
pub fn options(target: Target, config: Option<&Path>) -> ExportOptions {
    let config_override = config.map(|p| {
        let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    });
    ExportOptions { dtype: DType::F32, target, text_layers: None, config_override }
}

/// Exports `checkpoint` into `out`.
pub fn export_to(
    checkpoint: &Path,
    out: &Path,
    components: Option<Vec<Kind>>,
    options: ExportOptions,
    weights: WeightMode,
) -> Result<flux2_exporter::manifest::Manifest, flux2_exporter::ExportError> {
    let source = ModelSource::open(checkpoint)?;
    let req = ExportRequest::new(components, options, weights);
    export(&source, out, &req, &mut |_| {})
}

/// Runs `onnx.checker.check_model(path, full_check=True)` with the project's Python, if
/// one with `onnx` is available. Returns false (and prints why) when it cannot run.
pub fn onnx_check(path: &Path) -> bool {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = std::env::var_os("FLUX2_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join(".venv/bin/python"));
    if !python.exists() {
        eprintln!("note: no python with onnx at {}; skipping onnx.checker", python.display());
        return false;
    }
    let out = std::process::Command::new(&python)
        .arg("-c")
        .arg("import sys, onnx; onnx.checker.check_model(sys.argv[1], full_check=True)")
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", python.display()));
    assert!(
        out.status.success(),
        "onnx.checker failed on {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    true
}
