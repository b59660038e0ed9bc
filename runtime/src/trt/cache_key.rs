//! The engine cache key: one sha256 over everything that makes a TensorRT engine valid, so a
//! stale engine (other weights, other scales, other TensorRT, other GPU, other profiles, other
//! precision) is never picked up.
//!
//! - model hash: the graph's `.onnx` bytes (structure, inline constants, external-data layout)
//!   and the manifest's source fingerprints (the checkpoint the external weights come from);
//! - calibration hash: the bytes of every Q/DQ scale and zero point ("none" for float graphs;
//!   computed by `flux2-deploy`, which reads graphs);
//! - TensorRT and ONNX Runtime versions, GPU family and compute capability, the min/opt/max
//!   profile strings, the precision flags, DLA core and builder optimisation level.

use sha2::{Digest, Sha256};

use crate::manifest::Manifest;

use super::gpu::GpuTarget;
use super::options::ProfileShapes;

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of the graph file and the checkpoint fingerprints it was exported from.
pub fn model_hash(onnx_bytes: &[u8], manifest: &Manifest) -> String {
    let mut h = Sha256::new();
    h.update(b"onnx\0");
    h.update((onnx_bytes.len() as u64).to_le_bytes());
    h.update(onnx_bytes);
    for s in &manifest.sources {
        // the fingerprint already covers size and content; the path is deliberately left out
        h.update(b"source\0");
        h.update(s.fingerprint.as_bytes());
        h.update(s.size.to_le_bytes());
    }
    hex(&h.finalize())
}

/// Everything the key covers.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyParts {
    pub model_hash: String,
    pub calibration_hash: String,
    pub tensorrt: String,
    pub onnxruntime: String,
    pub gpu: GpuTarget,
    pub sm: u32,
    pub profiles: Option<ProfileShapes>,
    /// e.g. `fp16+int8`, `fp16+fp8`, `bf16`.
    pub precision: String,
    pub dla_core: Option<u32>,
    pub builder_optimization_level: Option<u8>,
}

impl KeyParts {
    /// The key (64 hex digits).
    pub fn key(&self) -> String {
        let p = self.profiles.as_ref();
        let text = format!(
            "flux2-engine-v1\nmodel={}\ncalibration={}\ntensorrt={}\nonnxruntime={}\ngpu={} sm{}\n\
             profile.min={}\nprofile.opt={}\nprofile.max={}\nprecision={}\ndla={:?}\nopt_level={:?}\n",
            self.model_hash,
            self.calibration_hash,
            self.tensorrt,
            self.onnxruntime,
            self.gpu,
            self.sm,
            p.map(|p| p.min.as_str()).unwrap_or(""),
            p.map(|p| p.opt.as_str()).unwrap_or(""),
            p.map(|p| p.max.as_str()).unwrap_or(""),
            self.precision,
            self.dla_core,
            self.builder_optimization_level,
        );
        hex(&Sha256::digest(text.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts() -> KeyParts {
        KeyParts {
            model_hash: "m".into(),
            calibration_hash: "none".into(),
            tensorrt: "10.16.1".into(),
            onnxruntime: "1.31.1".into(),
            gpu: GpuTarget::Hopper,
            sm: 90,
            profiles: Some(ProfileShapes { min: "x:1".into(), opt: "x:2".into(), max: "x:4".into() }),
            precision: "fp16+fp8".into(),
            dla_core: None,
            builder_optimization_level: Some(3),
        }
    }

    #[test]
    fn every_part_changes_the_key() {
        let base = parts().key();
        assert_eq!(base.len(), 64);
        assert_eq!(base, parts().key(), "deterministic");
        let variants: Vec<KeyParts> = vec![
            KeyParts { model_hash: "m2".into(), ..parts() },
            KeyParts { calibration_hash: "c".into(), ..parts() },
            KeyParts { tensorrt: "10.16.2".into(), ..parts() },
            KeyParts { onnxruntime: "1.31.2".into(), ..parts() },
            KeyParts { gpu: GpuTarget::Ada, sm: 89, ..parts() },
            KeyParts { sm: 91, ..parts() },
            KeyParts {
                profiles: Some(ProfileShapes { min: "x:1".into(), opt: "x:2".into(), max: "x:8".into() }),
                ..parts()
            },
            KeyParts { profiles: None, ..parts() },
            KeyParts { precision: "fp16+int8".into(), ..parts() },
            KeyParts { dla_core: Some(0), ..parts() },
            KeyParts { builder_optimization_level: Some(5), ..parts() },
        ];
        for v in variants {
            assert_ne!(v.key(), base, "{v:?}");
        }
    }

    #[test]
    fn model_hash_covers_graph_bytes_and_sources() {
        let mut m = Manifest::new();
        let a = model_hash(b"graph", &m);
        assert_ne!(a, model_hash(b"graph2", &m));
        m.sources.push(crate::manifest::SourceFile { path: "x".into(), size: 1, fingerprint: "f".into() });
        assert_ne!(a, model_hash(b"graph", &m));
    }
}
