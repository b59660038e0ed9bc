//! `flux2 build` end to end on a machine without TensorRT: it validates everything, then fails
//! with an error naming the missing provider or library, exits non-zero and writes nothing.

use std::path::Path;
use std::process::{Command, Output};

fn flux2(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_flux2"));
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("running the flux2 binary")
}

fn export_vae(target: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/vae/diffusers");
    let out = dir.path().to_str().unwrap();
    let o = flux2(&["export", "--checkpoint", ckpt.to_str().unwrap(), "--out", out, "--target", target], &[]);
    assert!(o.status.success(), "export: {}", String::from_utf8_lossy(&o.stderr));
    dir
}

#[test]
fn fails_naming_the_missing_provider_and_writes_nothing() {
    let model = export_vae("tensorrt");
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("vae-h100");
    let args = [
        "build",
        "--model",
        model.path().to_str().unwrap(),
        "--gpu",
        "hopper",
        "--out",
        out.to_str().unwrap(),
    ];
    let o = flux2(&args, &[]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{stderr}");
    assert!(
        stderr.contains("TensorrtExecutionProvider is not available") && stderr.contains("onnxruntime-gpu"),
        "{stderr}"
    );
    assert!(!out.exists(), "nothing written");
    assert_eq!(std::fs::read_dir(work.path()).unwrap().count(), 0);
}

#[test]
fn validates_before_looking_for_the_gpu() {
    let model = export_vae("tensorrt");
    let ort_model = export_vae("ort");
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    let (m, o) = (model.path().to_str().unwrap(), out.to_str().unwrap());
    for (args, want) in [
        (vec!["--gpu", "volta"], "--gpu"),
        (vec!["--gpu", "hopper", "--buckets", "1000x1000"], "1000x1000"),
        (vec!["--gpu", "hopper", "--buckets", "4096x1024"], "4096x1024"),
        (vec!["--gpu", "hopper", "--opt", "512x512", "--buckets", "1024x1024"], "--opt"),
        (vec!["--gpu", "hopper", "--dla", "0"], "--dla"),
        (vec!["--gpu", "orin", "--float", "fp64"], "--float"),
        (vec!["--gpu", "hopper", "--max-batch", "0"], "--max-batch"),
        (vec!["--gpu", "hopper", "--max-batch", "9"], "--max-batch 9"),
    ] {
        let out = flux2(&[&["build", "--model", m, "--out", o], &args[..]].concat(), &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(want), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("TensorrtExecutionProvider"),
            "{args:?} should fail before the host check: {stderr}"
        );
    }
    let out_ =
        flux2(&["build", "--model", ort_model.path().to_str().unwrap(), "--out", o, "--gpu", "orin"], &[]);
    let stderr = String::from_utf8_lossy(&out_.stderr);
    assert!(
        !out_.status.success() && stderr.contains("flux2 check") && stderr.contains("Attention"),
        "{stderr}"
    );
    assert!(!out.exists());
}

/// With ONNX Runtime's GPU build but no CUDA/TensorRT libraries (a CPU machine with the
/// `onnxruntime-gpu==1.31.1` wheel unpacked), the error lists each missing library with what to
/// install. Run with FLUX2_ORT_GPU_LIB=/path/to/onnxruntime/capi/libonnxruntime.so.1.31.1.
#[test]
#[ignore = "needs the onnxruntime-gpu wheel's library in FLUX2_ORT_GPU_LIB"]
fn gpu_runtime_without_tensorrt_names_each_missing_library() {
    let lib = std::env::var("FLUX2_ORT_GPU_LIB").expect("FLUX2_ORT_GPU_LIB");
    let model = export_vae("tensorrt");
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    let args =
        ["build", "--model", model.path().to_str().unwrap(), "--gpu", "ada", "--out", out.to_str().unwrap()];
    let o = flux2(&args, &[("ORT_DYLIB_PATH", &lib)]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{stderr}");
    for want in ["libnvinfer.so.10", "tensorrt-cu13", "libcudnn.so.9", "libcuda.so.1"] {
        assert!(stderr.contains(want), "{want}: {stderr}");
    }
    assert!(!out.exists());
}
