//! Bad input gives a clear error naming the culprit, and no partial output.

use std::path::{Path, PathBuf};

use flux2_exporter::WeightMode;
use flux2_graphs::Target;
use flux2_tests::export::{export_to, options};
use flux2_tests::fixture;

/// A writable copy of the diffusers VAE fixture.
fn vae_copy() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("model");
    std::fs::create_dir_all(root.join("vae")).unwrap();
    for f in ["model_index.json", "vae/config.json", "vae/diffusion_pytorch_model.safetensors"] {
        std::fs::copy(fixture("vae/diffusers").join(f), root.join(f)).unwrap();
    }
    (dir, root)
}

fn weights(root: &Path) -> PathBuf {
    root.join("vae/diffusion_pytorch_model.safetensors")
}

/// Rewrites the safetensors header through `edit` (tensor data is kept as is).
fn edit_header(path: &Path, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    edit(&mut header);
    let mut text = serde_json::to_vec(&header).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(path, out).unwrap();
}

fn export_err(root: &Path) -> (String, tempfile::TempDir) {
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("onnx");
    let err =
        export_to(root, &target, None, options(Target::Ort, None), WeightMode::Copy).unwrap_err().to_string();
    assert!(
        !target.exists() || std::fs::read_dir(&target).unwrap().count() == 0,
        "partial output left: {err}"
    );
    (err, out)
}

#[test]
fn truncated_file_is_named() {
    let (_d, root) = vae_copy();
    let p = weights(&root);
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 100]).unwrap();
    let (err, _o) = export_err(&root);
    assert!(err.contains("diffusion_pytorch_model.safetensors") && err.contains("truncated"), "{err}");
}

#[test]
fn header_length_beyond_file_is_named() {
    let (_d, root) = vae_copy();
    let p = weights(&root);
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    std::fs::write(&p, &bytes).unwrap();
    let (err, _o) = export_err(&root);
    assert!(err.contains("header length") && err.contains("diffusion_pytorch_model.safetensors"), "{err}");
}

#[test]
fn misshaped_tensor_is_named_with_both_shapes() {
    let (_d, root) = vae_copy();
    edit_header(&weights(&root), |h| {
        // same byte count, different shape: only the graph can notice
        let t = h.get_mut("encoder.down_blocks.1.resnets.0.conv_shortcut.weight").unwrap();
        let shape: Vec<u64> = t["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        t["shape"] = serde_json::json!([shape[1], shape[0], shape[2], shape[3]]);
    });
    let (err, _o) = export_err(&root);
    assert!(
        err.contains("encoder.down_blocks.1.resnets.0.conv_shortcut.weight") && err.contains("expected"),
        "{err}"
    );
}

#[test]
fn every_missing_tensor_is_listed() {
    let (_d, root) = vae_copy();
    edit_header(&weights(&root), |h| {
        h.remove("decoder.mid_block.resnets.0.conv1.weight");
        h.remove("decoder.mid_block.resnets.0.conv1.bias");
        h.remove("bn.running_var");
    });
    let (err, _o) = export_err(&root);
    for name in [
        "decoder.mid_block.resnets.0.conv1.weight",
        "decoder.mid_block.resnets.0.conv1.bias",
        "bn.running_var",
    ] {
        assert!(err.contains(name), "{name} not listed in: {err}");
    }
}

#[test]
fn unexpected_tensor_is_listed() {
    let (_d, root) = vae_copy();
    edit_header(&weights(&root), |h| {
        let t = h["bn.running_mean"].clone();
        h.insert("decoder.extra_layer.weight".into(), t);
    });
    let (err, _o) = export_err(&root);
    assert!(err.contains("unexpected") && err.contains("decoder.extra_layer.weight"), "{err}");
}

#[test]
fn unknown_layout_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("mystery.safetensors");
    edit_header(
        &{
            std::fs::copy(fixture("vae/diffusers/vae/diffusion_pytorch_model.safetensors"), &p).unwrap();
            p.clone()
        },
        |h| {
            let keys: Vec<String> = h.keys().filter(|k| *k != "__metadata__").cloned().collect();
            for (i, k) in keys.iter().enumerate() {
                let v = h.remove(k).unwrap();
                h.insert(format!("blob_{i}"), v);
            }
        },
    );
    let (err, _o) = export_err(&p);
    assert!(err.contains("mystery.safetensors") && err.contains("unknown layout"), "{err}");
}

#[test]
fn unwritable_output_is_named() {
    let (_d, root) = vae_copy();
    let out = tempfile::tempdir().unwrap();
    let blocker = out.path().join("file");
    std::fs::write(&blocker, b"x").unwrap();
    let target = blocker.join("onnx"); // a folder under a regular file cannot exist
    let err = export_to(&root, &target, None, options(Target::Ort, None), WeightMode::Copy)
        .unwrap_err()
        .to_string();
    assert!(err.contains("onnx") && err.contains("output"), "{err}");
}
