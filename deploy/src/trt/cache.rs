//! The calibration part of the engine cache key (the rest is `flux2_runtime::trt::cache_key`):
//! it reads the graph's Q/DQ constants, so it lives with the graph reader.

use sha2::{Digest, Sha256};

use crate::lint::model::GraphIndex;
use flux2_runtime::trt::cache_key::hex;

/// sha256 of every Q/DQ scale and zero point (name, type, dims, bytes), or "none".
pub fn calibration_hash(ix: &GraphIndex) -> Result<String, String> {
    let mut h = Sha256::new();
    let mut any = false;
    for n in &ix.graph.node {
        if !matches!(n.op_type.as_str(), "QuantizeLinear" | "DequantizeLinear") {
            continue;
        }
        for name in n.input.iter().skip(1).filter(|s| !s.is_empty()) {
            let Some(t) = ix.constant(name) else { continue };
            any = true;
            h.update(name.as_bytes());
            h.update(t.data_type.to_le_bytes());
            for d in &t.dims {
                h.update(d.to_le_bytes());
            }
            h.update(ix.tensor_bytes(t).map_err(|e| format!("{name}: {e}"))?);
        }
    }
    Ok(if any { hex(&h.finalize()) } else { "none".into() })
}
