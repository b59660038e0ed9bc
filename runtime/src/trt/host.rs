//! Can this machine run (or build) TensorRT engines? Checked in the order a user has to fix
//! things, each failure naming what is missing and how to install it: the ONNX Runtime
//! library, its TensorRT provider (absent from the CPU wheel), the libraries that provider
//! needs (read from its ELF header, preloaded from pip's NVIDIA wheels when they sit next to
//! ONNX Runtime), and the NVIDIA driver with a GPU of the requested family. `flux2 build`
//! adds its own last check (TensorRT's version against the lint target) in `flux2-deploy`.

use std::path::{Path, PathBuf};

use ort::ep::ExecutionProvider;

use super::gpu::GpuTarget;
use super::libs::{install_hint, preload_from_wheels, probe, required_libraries, wheel_library_dirs};
use super::probe::{cuda_driver, ort_version, GpuDevice};
use super::TrtError;

/// Install instructions for the ONNX Runtime GPU build.
pub const ORT_GPU_HINT: &str = "install ONNX Runtime's GPU build and point ORT_DYLIB_PATH at it: \
     `pip install \"onnxruntime-gpu[cuda,cudnn]==1.31.1\" tensorrt-cu13==10.16.1.11` (x86_64, CUDA 13), then \
     `export ORT_DYLIB_PATH=$(python -c 'import onnxruntime,os;print(os.path.dirname(onnxruntime.__file__))')\
     /capi/libonnxruntime.so.1.31.1`; on Jetson use an ONNX Runtime built for JetPack with --use_tensorrt";

/// The loaded ONNX Runtime library and its TensorRT provider library.
pub fn ort_with_tensorrt() -> Result<(PathBuf, String, PathBuf), TrtError> {
    let unavailable = |what: &str, msg: String| TrtError::Unavailable { what: what.into(), msg };
    crate::environment().map_err(|e| unavailable("ONNX Runtime", format!("{e}; {ORT_GPU_HINT}")))?;
    let lib = crate::find_ort_library().unwrap_or_else(|| PathBuf::from("libonnxruntime.so"));
    let version = ort_version(&lib).unwrap_or_else(|| "unknown".into());
    let available = ort::ep::TensorRT::is_available().map_err(|e| {
        unavailable("TensorrtExecutionProvider", format!("GetAvailableProviders failed: {e}"))
    })?;
    if !available {
        return Err(unavailable(
            "TensorrtExecutionProvider",
            format!(
                "the ONNX Runtime {version} at {} was built without it (that is the CPU wheel `onnxruntime`); \
                 {ORT_GPU_HINT}",
                lib.display()
            ),
        ));
    }
    let provider = provider_library(&lib, "tensorrt");
    if !provider.is_file() {
        return Err(unavailable(
            "TensorrtExecutionProvider",
            format!("{} is missing next to {}; reinstall onnxruntime-gpu", provider.display(), lib.display()),
        ));
    }
    Ok((lib, version, provider))
}

/// `libonnxruntime_providers_<name>.so` next to the ORT library.
pub fn provider_library(ort_lib: &Path, name: &str) -> PathBuf {
    ort_lib.with_file_name(format!("libonnxruntime_providers_{name}.so"))
}

/// Loads (from pip wheels if needed) every library `provider` needs; Err lists what is missing.
pub fn load_provider_libraries(ort_lib: &Path, provider: &Path, what: &str) -> Result<(), TrtError> {
    let mut needed = required_libraries(provider).map_err(|e| TrtError::Unavailable {
        what: what.into(),
        msg: format!("cannot read {}: {e}", provider.display()),
    })?;
    if !needed.iter().any(|n| n == "libcuda.so.1") {
        needed.push("libcuda.so.1".into());
    }
    preload_from_wheels(&needed, &wheel_library_dirs(ort_lib));
    let missing: Vec<String> = needed
        .iter()
        .map(|s| probe(s))
        .filter(|s| !s.found())
        .map(|s| {
            format!("  {}\n    install: {}", s.error.clone().unwrap_or_default(), install_hint(&s.soname))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(TrtError::Unavailable {
        what: what.into(),
        msg: format!(
            "{} needs libraries the loader cannot find:\n{}\n  (pip wheels under site-packages/nvidia/*/lib and \
             site-packages/tensorrt_libs next to ONNX Runtime are found automatically; otherwise add their \
             folders to LD_LIBRARY_PATH)",
            provider.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
            missing.join("\n")
        ),
    })
}

/// The GPU `device_id`, checked to be of family `gpu`.
pub fn gpu_device(gpu: GpuTarget, device_id: i32) -> Result<GpuDevice, TrtError> {
    let driver = cuda_driver().map_err(|msg| TrtError::Unavailable { what: "an NVIDIA GPU".into(), msg })?;
    let dev = driver.devices.iter().find(|d| d.index as i32 == device_id).cloned().ok_or_else(|| {
        TrtError::Unavailable {
            what: format!("GPU {device_id}"),
            msg: format!("the driver reports {} device(s)", driver.devices.len()),
        }
    })?;
    let family = GpuTarget::from_compute_capability(dev.capability.0, dev.capability.1);
    if family != Some(gpu) {
        return Err(TrtError::Refused {
            gpu: gpu.name().into(),
            msg: format!(
                "GPU {device_id} is {} (sm{}, {}); engines run only on the GPU family they are built on, so build \
                 on a {gpu} machine ({}) or pass the matching --gpu",
                dev.name,
                dev.sm(),
                family.map(|f| f.name()).unwrap_or("not a supported family"),
                gpu.examples()
            ),
        });
    }
    Ok(dev)
}
