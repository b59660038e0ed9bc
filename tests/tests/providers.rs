//! Execution providers (runtime/src/providers.rs): CPU sessions run; CUDA and TensorRT are
//! registered with `error_on_failure`, so on ONNX Runtime's CPU build they fail with the
//! provider's name and what to install instead of silently running on the CPU; the TensorRT
//! factory only accepts `flux2 build` folders made for this GPU and TensorRT.

#[path = "lint_support/mod.rs"]
mod support;

use std::collections::BTreeMap;

use flux2_graphs::Target;
use flux2_runtime::providers::{
    check_build_folder, session_factory, session_with_provider, ExecutionProvider, ProviderConfig,
};
use flux2_runtime::trt::probe::{GpuDevice, TrtVersion};
use flux2_runtime::trt::profiles::ShapePlan;
use flux2_runtime::trt::{BuildManifest, EpContext, GpuTarget, TrtOptions};
use flux2_runtime::{run, Input, SessionOptions};
use ndarray::ArrayD;
use support::export_pipeline;

fn latents() -> Input {
    Input::F32(ArrayD::from_shape_fn(vec![1, 128, 4, 4], |ix| {
        (ix[1] as f32 * 0.01) - (ix[2] * ix[3]) as f32 * 0.03
    }))
}

#[test]
fn cpu_sessions_run_through_every_entry_point() {
    let dir = export_pipeline(Target::TensorRt);
    let path = dir.path().join("vae_decoder.onnx");
    let mut a = session_with_provider(&path, &ProviderConfig::Cpu, &SessionOptions::default()).unwrap();
    let factory = session_factory(ExecutionProvider::Cpu, 0, SessionOptions::default());
    let mut b = factory(&path, &Default::default()).unwrap();
    let ya = run(&mut a, vec![("latents", latents())]).unwrap();
    let yb = run(&mut b, vec![("latents", latents())]).unwrap();
    assert_eq!(ya["image"].shape(), &[1, 3, 64, 64]);
    assert_eq!(ya["image"], yb["image"]);
}

#[test]
fn gpu_providers_fail_loudly_on_the_cpu_build() {
    let dir = export_pipeline(Target::TensorRt);
    let path = dir.path().join("vae_decoder.onnx");
    for (config, name) in [
        (ProviderConfig::Cuda { device_id: 0 }, "CUDAExecutionProvider"),
        (
            ProviderConfig::TensorRt(Box::new(TrtOptions { fp16: true, ..Default::default() })),
            "TensorrtExecutionProvider",
        ),
    ] {
        let e = session_with_provider(&path, &config, &SessionOptions::default()).unwrap_err().to_string();
        assert!(e.contains(name) && e.contains("onnxruntime-gpu") && e.contains("vae_decoder.onnx"), "{e}");
    }
    assert!(!ExecutionProvider::TensorRt.is_available().unwrap());
    assert!(!ExecutionProvider::Cuda.is_available().unwrap());
    assert!(ExecutionProvider::Cpu.is_available().unwrap());
    // invalid options are refused before ORT sees them
    let bad = TrtOptions {
        engine_cache: Some("/abs".into()),
        ep_context: Some(EpContext { file: "/out/x_ctx.onnx".into(), embed_mode: 0 }),
        ..Default::default()
    };
    assert!(bad.to_ep().unwrap_err().to_string().contains("trt_engine_cache_path"));
}

#[test]
fn tensorrt_factory_wants_a_build_folder_for_this_host() {
    let dir = export_pipeline(Target::TensorRt);
    let factory = session_factory(ExecutionProvider::TensorRt, 0, SessionOptions::default());
    let e = factory(&dir.path().join("transformer.onnx"), &Default::default()).unwrap_err().to_string();
    assert!(e.contains("tensorrt.json") && e.contains("flux2 build"), "{e}");

    let built = BuildManifest {
        tool: "flux2-deploy".into(),
        tool_version: "0".into(),
        gpu: GpuTarget::Hopper,
        device: "NVIDIA H100 80GB HBM3".into(),
        sm: 90,
        tensorrt: "10.16.1".into(),
        onnxruntime: "1.31.1".into(),
        shapes: ShapePlan::new(vec!["1024x1024".parse().unwrap()], None, 0, 1, false).unwrap(),
        graphs: BTreeMap::new(),
        refit_from: None,
    };
    built.write(dir.path()).unwrap();
    assert_eq!(BuildManifest::read(dir.path()).unwrap(), built);
    // this machine has no GPU: the engines cannot run, said before ORT is involved
    let e = check_build_folder(dir.path(), 0).unwrap_err().to_string();
    assert!(e.contains("cannot run TensorRT engines") && e.contains("libcuda.so.1"), "{e}");
    // a factory checks its folder once; a new one sees the build manifest
    let factory = session_factory(ExecutionProvider::TensorRt, 0, SessionOptions::default());
    let e = factory(&dir.path().join("transformer.onnx"), &Default::default()).unwrap_err().to_string();
    assert!(e.contains("libcuda.so.1"), "{e}");

    let h100 = GpuDevice { index: 0, name: "NVIDIA H100".into(), capability: (9, 0), memory_bytes: 80 << 30 };
    let l40s = GpuDevice { index: 0, name: "NVIDIA L40S".into(), capability: (8, 9), memory_bytes: 48 << 30 };
    assert!(built.verify_host(&h100, TrtVersion::parse("10.16.1")).is_ok());
    let e = built.verify_host(&l40s, TrtVersion::parse("10.16.1")).unwrap_err().to_string();
    assert!(e.contains("sm90") && e.contains("sm89") && e.contains("L40S"), "{e}");
    let e = built.verify_host(&h100, TrtVersion::parse("10.13.3")).unwrap_err().to_string();
    assert!(e.contains("10.16.1") && e.contains("10.13.3"), "{e}");
}
