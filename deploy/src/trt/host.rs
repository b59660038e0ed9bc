//! Step 2 of `flux2 build`: can this machine build the engines? The runtime's checks (ONNX
//! Runtime with its TensorRT provider, the provider's libraries, a GPU of the requested
//! family), then TensorRT's version against the one the graphs were linted for.

use std::path::PathBuf;

use flux2_runtime::trt::host::{gpu_device, load_provider_libraries, ort_with_tensorrt};
use flux2_runtime::trt::libs::install_hint;
use flux2_runtime::trt::probe::{tensorrt_version, GpuDevice, TrtVersion};
use flux2_runtime::trt::TrtError;

use super::build::BuildPlan;

/// What the host provides.
#[derive(Clone, Debug)]
pub struct HostInfo {
    pub ort_library: PathBuf,
    pub ort_version: String,
    pub tensorrt: TrtVersion,
    pub device: GpuDevice,
}

/// Step 2: everything above, for a planned build.
pub fn check(plan: &BuildPlan) -> Result<HostInfo, TrtError> {
    let (lib, version, provider) = ort_with_tensorrt()?;
    load_provider_libraries(&lib, &provider, "TensorrtExecutionProvider")?;
    let device = gpu_device(plan.request.gpu, plan.request.device_id)?;
    let tensorrt = tensorrt_version().ok_or_else(|| TrtError::Unavailable {
        what: "TensorRT".into(),
        msg: format!(
            "libnvinfer loaded but getInferLibVersion is missing; {}",
            install_hint("libnvinfer.so.10")
        ),
    })?;
    let want = plan.lint.tensorrt.as_deref().and_then(TrtVersion::parse).map(|v| v.major);
    if want.is_some_and(|m| m != tensorrt.major) {
        return Err(TrtError::Option {
            name: "--trt-version".into(),
            msg: format!(
                "the graphs were checked for TensorRT {}, but this machine has {tensorrt}",
                plan.lint.tensorrt.as_deref().unwrap_or("?")
            ),
        });
    }
    Ok(HostInfo { ort_library: lib, ort_version: version, tensorrt, device })
}
