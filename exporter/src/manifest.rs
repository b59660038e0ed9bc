//! `manifest.json` as the exporter fills it. The schema is the runtime's
//! ([`flux2_runtime::manifest`], re-exported here): the runtime owns the contract it reads.
//! This module adds what only a writer needs: graph inputs/outputs as entries and the
//! checkpoint fingerprints.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use flux2_graphs::Model;
use sha2::{Digest, Sha256};

pub use flux2_runtime::manifest::*;

use crate::{io_err, Result};

/// Inputs and outputs of a finished graph, as manifest entries.
pub fn io_specs(model: &Model) -> (Vec<IoSpec>, Vec<IoSpec>) {
    let spec = |v: &flux2_graphs::onnx::ValueInfoProto| {
        let (dtype, shape) = flux2_graphs::tensor_type_of(v)
            .map(|(d, dims)| (d.map(|d| d.name().to_string()).unwrap_or_default(), dims))
            .unwrap_or_default();
        IoSpec { name: v.name.clone(), dtype, shape }
    };
    let g = model.proto.graph.as_ref();
    (
        g.map(|g| g.input.iter().map(spec).collect()).unwrap_or_default(),
        g.map(|g| g.output.iter().map(spec).collect()).unwrap_or_default(),
    )
}

/// Size and fingerprint of a checkpoint file (reads the header and at most 2 MiB).
pub fn fingerprint(path: &Path, header_len: u64) -> Result<SourceFile> {
    let meta = std::fs::metadata(path).map_err(io_err(path))?;
    let size = meta.len();
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut h = Sha256::new();
    h.update(size.to_le_bytes());
    let head = (8 + header_len + (1 << 20)).min(size);
    let mut buf = vec![0u8; head as usize];
    f.read_exact(&mut buf).map_err(io_err(path))?;
    h.update(&buf);
    if size > head {
        let tail_start = size.saturating_sub(1 << 20).max(head);
        let mut tail = vec![0u8; (size - tail_start) as usize];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut tail, tail_start).map_err(io_err(path))?;
        h.update(&tail);
    }
    let digest = h.finalize();
    Ok(SourceFile {
        path: path.display().to_string(),
        size,
        fingerprint: digest.iter().map(|b| format!("{b:02x}")).collect(),
    })
}

/// The manifest form of a graph's dynamic-axis ranges.
pub fn dim_ranges(model: &Model) -> BTreeMap<String, DimRange> {
    let range = |r: &flux2_graphs::DimRange| DimRange { min: r.min, opt: r.opt, max: r.max };
    model.dim_ranges.iter().map(|(k, r)| (k.clone(), range(r))).collect()
}
