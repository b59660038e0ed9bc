//! What the host has: ONNX Runtime version, CUDA driver and devices, TensorRT version, Jetson
//! release. Everything is read through the libraries' stable C entry points, opened with
//! `dlopen`, so it works without the CUDA toolkit, without `nvidia-smi` (absent on JetPack 6)
//! and on machines with no GPU at all (each probe then returns `None`/an error, never panics).
//!
//! Entry points: `OrtGetApiBase()->GetVersionString` (onnxruntime_c_api.h); `cuInit`,
//! `cuDriverGetVersion`, `cuDeviceGetCount`, `cuDeviceGet`, `cuDeviceGetName`,
//! `cuDeviceGetAttribute` (75/76 = compute capability major/minor), `cuDeviceTotalMem_v2`
//! (cuda.h); `getInferLibVersion` (NvInferRuntime.h, major*10000 + minor*100 + patch since 10.0).

use std::ffi::{c_char, c_int, CStr};
use std::path::Path;

/// One CUDA device.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GpuDevice {
    pub index: u32,
    pub name: String,
    /// Compute capability, e.g. (9, 0).
    pub capability: (u32, u32),
    pub memory_bytes: u64,
}

impl GpuDevice {
    pub fn sm(&self) -> u32 {
        self.capability.0 * 10 + self.capability.1
    }
}

/// The CUDA driver and its devices.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CudaDriver {
    /// e.g. 13000 for CUDA 13.0.
    pub version: i32,
    pub devices: Vec<GpuDevice>,
}

/// A TensorRT library version.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct TrtVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl TrtVersion {
    /// Decodes `getInferLibVersion()` (TensorRT 10+: major*10000 + minor*100 + patch).
    pub fn from_code(code: i32) -> TrtVersion {
        let c = code.max(0) as u32;
        TrtVersion { major: c / 10000, minor: c / 100 % 100, patch: c % 100 }
    }

    /// Parses `10`, `10.3` or `10.16.1`.
    pub fn parse(s: &str) -> Option<TrtVersion> {
        let mut it = s.trim().split('.').map(|p| p.parse::<u32>());
        let major = it.next()?.ok()?;
        let minor = it.next().transpose().ok()?.unwrap_or(0);
        let patch = it.next().transpose().ok()?.unwrap_or(0);
        (major > 0).then_some(TrtVersion { major, minor, patch })
    }
}

impl std::fmt::Display for TrtVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The ONNX Runtime version of a library file (without initialising ort).
pub fn ort_version(lib: &Path) -> Option<String> {
    #[repr(C)]
    struct OrtApiBase {
        get_api: unsafe extern "C" fn(u32) -> *const std::ffi::c_void,
        get_version_string: unsafe extern "C" fn() -> *const c_char,
    }
    // SAFETY: OrtGetApiBase has this signature in every ORT release; the returned struct is
    // static inside the library, which stays loaded while `lib` is alive.
    unsafe {
        let l = libloading::Library::new(lib).ok()?;
        let base: libloading::Symbol<unsafe extern "C" fn() -> *const OrtApiBase> =
            l.get(b"OrtGetApiBase").ok()?;
        let b = base();
        if b.is_null() {
            return None;
        }
        let s = ((*b).get_version_string)();
        (!s.is_null()).then(|| CStr::from_ptr(s).to_string_lossy().into_owned())
    }
}

/// The CUDA driver through `libcuda.so.1`; Err names what failed.
pub fn cuda_driver() -> Result<CudaDriver, String> {
    // SAFETY: the driver API functions below are C functions with these exact signatures
    // (cuda.h); every out-pointer points at a live local.
    unsafe {
        let lib = libloading::Library::new("libcuda.so.1").map_err(|e| {
            format!("no NVIDIA driver: cannot open libcuda.so.1 ({})", super::libs::dl_error(&e))
        })?;
        let dle = |e: libloading::Error| format!("libcuda.so.1: {}", super::libs::dl_error(&e));
        type F1 = unsafe extern "C" fn(*mut c_int) -> c_int;
        let sym = |name: &[u8]| -> Result<libloading::Symbol<F1>, String> { lib.get(name).map_err(dle) };
        let init: libloading::Symbol<unsafe extern "C" fn(u32) -> c_int> = lib.get(b"cuInit").map_err(dle)?;
        let rc = init(0);
        if rc != 0 {
            return Err(format!(
                "cuInit failed with CUresult {rc} (no usable GPU, or driver/device mismatch)"
            ));
        }
        let mut version = 0;
        sym(b"cuDriverGetVersion")?(&mut version);
        let mut count = 0;
        sym(b"cuDeviceGetCount")?(&mut count);
        let get: libloading::Symbol<unsafe extern "C" fn(*mut c_int, c_int) -> c_int> =
            lib.get(b"cuDeviceGet").map_err(dle)?;
        let name: libloading::Symbol<unsafe extern "C" fn(*mut c_char, c_int, c_int) -> c_int> =
            lib.get(b"cuDeviceGetName").map_err(dle)?;
        let attr: libloading::Symbol<unsafe extern "C" fn(*mut c_int, c_int, c_int) -> c_int> =
            lib.get(b"cuDeviceGetAttribute").map_err(dle)?;
        let mem: libloading::Symbol<unsafe extern "C" fn(*mut usize, c_int) -> c_int> =
            lib.get(b"cuDeviceTotalMem_v2").map_err(dle)?;
        let mut devices = Vec::new();
        for i in 0..count.max(0) {
            let mut dev = 0;
            if get(&mut dev, i) != 0 {
                continue;
            }
            let mut buf = [0 as c_char; 256];
            name(buf.as_mut_ptr(), buf.len() as c_int, dev);
            let (mut major, mut minor, mut bytes) = (0, 0, 0usize);
            attr(&mut major, 75, dev);
            attr(&mut minor, 76, dev);
            mem(&mut bytes, dev);
            devices.push(GpuDevice {
                index: i as u32,
                name: CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned(),
                capability: (major.max(0) as u32, minor.max(0) as u32),
                memory_bytes: bytes as u64,
            });
        }
        Ok(CudaDriver { version, devices })
    }
}

/// The TensorRT version of the first loadable `libnvinfer.so.{11,10}`.
pub fn tensorrt_version() -> Option<TrtVersion> {
    for soname in ["libnvinfer.so.11", "libnvinfer.so.10"] {
        // SAFETY: getInferLibVersion is `extern "C" int32_t getInferLibVersion() noexcept`.
        unsafe {
            let Ok(lib) = libloading::Library::new(soname) else { continue };
            let Ok(f) = lib.get::<unsafe extern "C" fn() -> i32>(b"getInferLibVersion") else { continue };
            return Some(TrtVersion::from_code(f()));
        }
    }
    None
}

/// The CUDA runtime version of `libcudart` (e.g. 13000), if one loads.
pub fn cudart_version(soname: &str) -> Option<i32> {
    // SAFETY: `cudaError_t cudaRuntimeGetVersion(int*)`.
    unsafe {
        let lib = libloading::Library::new(soname).ok()?;
        let f = lib.get::<unsafe extern "C" fn(*mut c_int) -> c_int>(b"cudaRuntimeGetVersion").ok()?;
        let mut v = 0;
        (f(&mut v) == 0).then_some(v)
    }
}

/// The Jetson Linux (L4T) release line, e.g. `# R36 (release), REVISION: 4.3, ...`.
pub fn jetson_release() -> Option<String> {
    let text = std::fs::read_to_string("/etc/nv_tegra_release").ok()?;
    text.lines().next().map(|l| l.trim().to_string())
}

/// The JetPack generation of an L4T release line (R36 -> 6, R38/R39 -> 7, R35 -> 5).
pub fn jetpack_of(l4t: &str) -> Option<u32> {
    let r = l4t.split_once('R')?.1;
    let major: u32 = r.chars().take_while(|c| c.is_ascii_digit()).collect::<String>().parse().ok()?;
    match major {
        35 => Some(5),
        36 => Some(6),
        38 | 39 => Some(7),
        _ => None,
    }
}

/// `nvidia-smi`'s one-line summary per GPU, when the tool exists.
pub fn nvidia_smi() -> Option<String> {
    let out = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=name,driver_version,compute_cap,memory.total", "--format=csv,noheader"])
        .output()
        .ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trt_version_codes_and_strings() {
        assert_eq!(TrtVersion::from_code(101601), TrtVersion { major: 10, minor: 16, patch: 1 });
        assert_eq!(TrtVersion::from_code(100300).to_string(), "10.3.0");
        assert_eq!(TrtVersion::parse("10.3"), Some(TrtVersion { major: 10, minor: 3, patch: 0 }));
        assert_eq!(TrtVersion::parse("11"), Some(TrtVersion { major: 11, minor: 0, patch: 0 }));
        assert_eq!(TrtVersion::parse("ten"), None);
        assert!(TrtVersion::parse("10.16.1") > TrtVersion::parse("10.3"));
    }

    #[test]
    fn jetpack_generation_from_l4t() {
        assert_eq!(jetpack_of("# R36 (release), REVISION: 4.3, GCID: 1, BOARD: generic"), Some(6));
        assert_eq!(jetpack_of("# R38 (release), REVISION: 2.0"), Some(7));
        assert_eq!(jetpack_of("garbage"), None);
    }

    #[test]
    fn probes_do_not_panic_without_a_gpu() {
        // on a CPU machine these fail cleanly; on a GPU machine they describe it
        match cuda_driver() {
            Ok(d) => assert!(d.version > 0),
            Err(e) => assert!(!e.is_empty()),
        }
        let _ = tensorrt_version();
        let _ = cudart_version("libcudart.so.13");
    }
}
