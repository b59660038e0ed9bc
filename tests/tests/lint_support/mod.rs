//! Shared by the lint and build tests: exported fixture folders for both graph targets, and
//! calibrated copies made with the calibrator's own Q/DQ insertion (`flux2_calib::qdq`), so the
//! checks run on the same graph form `flux2 calibrate` writes.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use flux2_calib::attention::find_sites;
use flux2_calib::formats::Format;
use flux2_calib::layers::{find_layers, LayerOp};
use flux2_calib::onnx_file::{write_model, DataMode, OnnxFile};
use flux2_calib::qdq::{insert_qdq, signed_activations, ActivationQuant, QdqPlan};
use flux2_exporter::manifest::Manifest;
use flux2_exporter::models::ExportOptions;
use flux2_exporter::WeightMode;
use flux2_graphs::onnx::ModelProto;
use flux2_graphs::{DType, Target};
use flux2_tests::export::export_to;
use flux2_tests::fixture;
use prost::Message;
use tempfile::TempDir;

/// The tiny klein pipeline (text encoder, DiT, VAE) exported for `target`.
pub fn export_pipeline(target: Target) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    let options =
        ExportOptions { dtype: DType::F32, target, text_layers: Some(vec![1, 2, 3]), config_override: None };
    export_to(&fixture("pipeline/klein"), dir.path(), None, options, WeightMode::Copy).unwrap();
    dir
}

/// A copy of `src` with every MatMul/Conv, and the DiT's attention products, quantised to
/// `format` by the calibrator's Q/DQ insertion, INT8 convolution outputs too, with signed INT8
/// activations as for TensorRT (activation ranges are synthetic: the lint looks at structure,
/// not accuracy).
pub fn calibrated(src: &Path, format: Format) -> TempDir {
    let out = tempfile::tempdir().unwrap();
    let mut manifest = Manifest::read(src).unwrap();
    for (name, entry) in manifest.graphs.iter_mut() {
        let file = OnnxFile::read(&src.join(&entry.file)).unwrap();
        let layers = find_layers(&file).unwrap();
        let sites = if name == "transformer" { find_sites(&file).unwrap() } else { vec![] };
        let mut chosen: BTreeSet<String> = layers.iter().map(|l| l.name.clone()).collect();
        chosen.extend(sites.iter().map(|s| s.name.clone()));
        let activations: BTreeMap<String, ActivationQuant> = layers
            .iter()
            .map(|l| l.activation.clone())
            .chain(layers.iter().filter(|l| l.op == LayerOp::Conv).map(|l| l.output.clone()))
            .chain(sites.iter().flat_map(|s| s.inputs.iter().cloned()))
            .map(|t| (t, ActivationQuant { amax: 4.0, smooth: None }))
            .collect();
        let plan = QdqPlan { format, layers: &chosen, sites: &sites, activations: &activations };
        let mut q = insert_qdq(&file, &layers, &plan).unwrap_or_else(|e| panic!("{name}: {e}"));
        // TensorRT takes signed INT8 only (`flux2 calibrate --signed-activations`)
        signed_activations(&mut q.proto);
        let stem = entry.file.trim_end_matches(".onnx").to_string();
        write_model(&q.proto, &file, out.path(), &stem, DataMode::SelfContained).unwrap();
        entry.precision = Some(format.name().into());
    }
    manifest.write(out.path()).unwrap();
    out
}

pub fn read_graph(dir: &Path, file: &str) -> ModelProto {
    ModelProto::decode(std::fs::read(dir.join(file)).unwrap().as_slice()).unwrap()
}

pub fn write_graph(dir: &Path, file: &str, proto: &ModelProto) {
    std::fs::write(dir.join(file), proto.encode_to_vec()).unwrap();
}
