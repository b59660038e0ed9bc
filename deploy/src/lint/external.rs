//! External-data rules: every external initializer names a file that exists, through a plain
//! relative path that stays inside the model folder (ORT refuses paths that escape it, and a
//! folder that is copied to a device must be self-contained), with a byte range inside the file;
//! and the `.onnx` protobuf itself stays under protobuf's 2 GiB limit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use flux2_graphs::onnx::tensor_proto::DataLocation;

use super::model::{dtype, external_ref, GraphIndex};
use super::{Finding, Severity};

/// protobuf's hard limit on one serialized message.
pub const PROTOBUF_LIMIT: u64 = (2u64 << 30) - 1;

pub fn check(ix: &GraphIndex, onnx_path: &Path, file: &str, out: &mut Vec<Finding>) {
    let mut find = |severity, rule, node: Option<String>, message: String| {
        out.push(Finding { severity, rule, graph: file.to_string(), node, message })
    };
    if let Ok(meta) = std::fs::metadata(onnx_path) {
        if meta.len() > PROTOBUF_LIMIT {
            find(
                Severity::Error,
                "external-data",
                None,
                format!(
                    "{} is {} bytes, over protobuf's 2 GiB limit: move the weights to external data",
                    file,
                    meta.len()
                ),
            );
        }
    }
    let mut sizes: HashMap<PathBuf, Option<u64>> = HashMap::new();
    for t in &ix.graph.initializer {
        let external = t.data_location == DataLocation::External as i32;
        if !external {
            if !t.external_data.is_empty() {
                find(
                    Severity::Error,
                    "external-data",
                    Some(t.name.clone()),
                    "initializer has external_data entries but data_location is not EXTERNAL".into(),
                );
            }
            continue;
        }
        let (path, offset, length) = match external_ref(ix.dir, t) {
            Ok(r) => r,
            Err(msg) => {
                find(Severity::Error, "external-data", Some(t.name.clone()), msg);
                continue;
            }
        };
        let size =
            *sizes.entry(path.clone()).or_insert_with(|| std::fs::metadata(&path).ok().map(|m| m.len()));
        let numel: u64 = t.dims.iter().map(|&d| d.max(0) as u64).product();
        let want = dtype::size(t.data_type).map(|s| s as u64 * numel);
        if let (Some(l), Some(w)) = (length, want) {
            if l != w {
                find(
                    Severity::Error,
                    "external-data",
                    Some(t.name.clone()),
                    format!(
                        "external length {l} bytes, but {} {:?} needs {w}",
                        dtype::name(t.data_type),
                        t.dims
                    ),
                );
            }
        }
        let end = offset + length.or(want).unwrap_or(0);
        match size {
            Some(s) if end > s => find(
                Severity::Error,
                "external-data",
                Some(t.name.clone()),
                format!("bytes {offset}..{end} are past the end of {} ({s} bytes)", path.display()),
            ),
            None => find(
                Severity::Error,
                "external-data",
                Some(t.name.clone()),
                format!("cannot read the size of {}", path.display()),
            ),
            _ => {}
        }
    }
}
