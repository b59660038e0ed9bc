//! Which shared libraries a GPU execution provider needs, which of them the dynamic loader
//! can open, and what to install for the missing ones.
//!
//! The list is not hard-coded: it is the `DT_NEEDED` entries of the provider library that sits
//! next to the loaded ONNX Runtime (`libonnxruntime_providers_tensorrt.so`, read from its ELF
//! dynamic section), so it follows whatever ORT build is installed (PyPI's CUDA 13 wheel,
//! a JetPack build against CUDA 12.6). For `onnxruntime-gpu==1.31.1` the TensorRT provider needs
//! `libnvinfer.so.10`, `libnvonnxparser.so.10`, `libcudart.so.13`, `libcublas.so.13` and
//! `libcudnn.so.9`.
//!
//! pip's NVIDIA wheels install their libraries under `site-packages/nvidia/*/lib` (CUDA 13:
//! `nvidia/cu13/lib`) and `site-packages/tensorrt_libs`, which the loader does not search;
//! [`preload_from_wheels`] opens them by path so the provider finds them by soname.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Libraries every Linux process has; never reported.
const SYSTEM: &[&str] = &[
    "libc.so",
    "libm.so",
    "libdl.so",
    "librt.so",
    "libpthread.so",
    "libstdc++.so",
    "libgcc_s.so",
    "ld-linux",
];

/// Handles kept open for the life of the process (preloaded libraries must stay loaded).
static KEPT: Mutex<Vec<libloading::Library>> = Mutex::new(Vec::new());

/// One library and whether the loader could open it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LibStatus {
    pub soname: String,
    /// Where it was loaded from (from /proc/self/maps), when it loaded.
    pub path: Option<PathBuf>,
    /// The loader's message when it did not.
    pub error: Option<String>,
}

impl LibStatus {
    pub fn found(&self) -> bool {
        self.error.is_none()
    }
}

/// The `DT_NEEDED` sonames of an ELF64 little-endian shared object.
pub fn elf_needed(path: &Path) -> std::io::Result<Vec<String>> {
    let data = std::fs::read(path)?;
    let bad =
        |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {m}", path.display()));
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 || data[5] != 1 {
        return Err(bad("not a 64-bit little-endian ELF file"));
    }
    let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u32_at = |o: usize| data.get(o..o + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    let u64_at = |o: usize| {
        data.get(o..o + 8)
            .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as usize)
    };
    let (shoff, shentsize, shnum) = match (u64_at(0x28), u16_at(0x3a), u16_at(0x3c)) {
        (Some(a), Some(b), Some(c)) if b >= 64 => (a, b, c),
        _ => return Err(bad("bad section header table")),
    };
    let section = |i: usize| {
        let o = shoff.checked_add(i.checked_mul(shentsize)?)?;
        Some((u32_at(o + 4)?, u64_at(o + 24)?, u64_at(o + 32)?, u32_at(o + 40)?))
    };
    let mut out = Vec::new();
    for i in 0..shnum {
        let Some((kind, offset, size, link)) = section(i) else {
            return Err(bad("truncated section header"));
        };
        if kind != 6 {
            continue; // SHT_DYNAMIC
        }
        let Some((_, str_off, str_size, _)) = section(link) else { return Err(bad("bad .dynstr link")) };
        for e in (offset..offset.saturating_add(size)).step_by(16) {
            let (Some(tag), Some(val)) = (u64_at(e), u64_at(e + 8)) else { break };
            if tag == 0 {
                break; // DT_NULL
            }
            if tag == 1 && val < str_size && str_off.saturating_add(val) < data.len() {
                let s = &data[str_off + val..str_off.saturating_add(str_size).min(data.len())];
                let end = s.iter().position(|&c| c == 0).unwrap_or(s.len());
                out.push(String::from_utf8_lossy(&s[..end]).into_owned());
            }
        }
    }
    Ok(out)
}

/// The non-system libraries `provider_lib` needs.
pub fn required_libraries(provider_lib: &Path) -> std::io::Result<Vec<String>> {
    Ok(elf_needed(provider_lib)?.into_iter().filter(|n| !SYSTEM.iter().any(|s| n.starts_with(s))).collect())
}

/// Tries to open `soname` through the normal loader search (`LD_LIBRARY_PATH`, ldconfig cache,
/// RUNPATH) and keeps it open when it loads.
pub fn probe(soname: &str) -> LibStatus {
    // SAFETY: loading a library runs its initialisers; these are NVIDIA/ORT libraries the
    // provider would load anyway.
    match unsafe { libloading::Library::new(soname) } {
        Ok(lib) => {
            keep(lib);
            LibStatus { soname: soname.into(), path: loaded_path(soname), error: None }
        }
        Err(e) => LibStatus { soname: soname.into(), path: None, error: Some(dl_error(&e)) },
    }
}

/// libloading's error with its `dlerror()` text (its Display alone says only "dlopen failed").
pub fn dl_error(e: &libloading::Error) -> String {
    match std::error::Error::source(e) {
        Some(src) => src.to_string(),
        None => e.to_string(),
    }
}

fn keep(lib: libloading::Library) {
    if let Ok(mut kept) = KEPT.lock() {
        kept.push(lib);
    }
}

/// The file a loaded library came from, read from `/proc/self/maps`.
pub fn loaded_path(soname: &str) -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| Path::new(p).file_name().is_some_and(|f| f.to_string_lossy().starts_with(soname)))
        .map(PathBuf::from)
}

/// Library folders of pip's NVIDIA wheels in the `site-packages` that holds `ort_lib`
/// (`site-packages/onnxruntime/capi/libonnxruntime.so.*`).
pub fn wheel_library_dirs(ort_lib: &Path) -> Vec<PathBuf> {
    let Some(site) = ort_lib.parent().and_then(Path::parent).and_then(Path::parent) else { return vec![] };
    let mut dirs = Vec::new();
    if let Ok(entries) = std::fs::read_dir(site.join("nvidia")) {
        let mut subs: Vec<PathBuf> =
            entries.flatten().map(|e| e.path().join("lib")).filter(|p| p.is_dir()).collect();
        subs.sort();
        dirs.extend(subs);
    }
    for name in ["tensorrt_libs", "tensorrt"] {
        if site.join(name).is_dir() {
            dirs.push(site.join(name));
        }
    }
    dirs
}

/// Opens every `sonames` entry the loader cannot find by itself from `dirs`, repeating until
/// no more load (a library loads once the ones it needs are in). Returns what loaded.
pub fn preload_from_wheels(sonames: &[String], dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut pending: Vec<PathBuf> = Vec::new();
    for s in sonames {
        if probe(s).found() {
            continue;
        }
        if let Some(p) = dirs.iter().map(|d| d.join(s)).find(|p| p.is_file()) {
            pending.push(p);
        }
    }
    // what the wanted libraries themselves need from the same folders (cublas -> cublasLt, ...)
    for d in dirs {
        if let Ok(entries) = std::fs::read_dir(d) {
            for e in entries.flatten() {
                let p = e.path();
                let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                if name.contains(".so") && !pending.contains(&p) && pending.iter().any(|q| needs(q, &name)) {
                    pending.push(p);
                }
            }
        }
    }
    let mut loaded = Vec::new();
    loop {
        let before = pending.len();
        pending.retain(|p| {
            // SAFETY: as in `probe`.
            match unsafe { libloading::Library::new(p) } {
                Ok(lib) => {
                    keep(lib);
                    loaded.push(p.clone());
                    false
                }
                Err(_) => true,
            }
        });
        if pending.is_empty() || pending.len() == before {
            return loaded;
        }
    }
}

fn needs(lib: &Path, soname: &str) -> bool {
    elf_needed(lib).map(|n| n.iter().any(|x| x == soname)).unwrap_or(false)
}

/// What to install for a missing library.
pub fn install_hint(soname: &str) -> &'static str {
    let s = soname;
    if s.starts_with("libcuda.so") {
        "the NVIDIA driver (datacenter: a driver >= 580 for CUDA 13; Jetson: part of JetPack)"
    } else if s.starts_with("libnvinfer") || s.starts_with("libnvonnxparser") {
        "TensorRT 10: `pip install tensorrt-cu13==10.16.1.11` next to onnxruntime-gpu (x86_64), \
         or JetPack's TensorRT on Jetson (`sudo apt install tensorrt`)"
    } else if s.starts_with("libcudnn") {
        "cuDNN 9: `pip install \"onnxruntime-gpu[cuda,cudnn]==1.31.1\"` (nvidia-cudnn-cu13), or JetPack's cuDNN"
    } else if s.starts_with("libcublas") {
        "cuBLAS 13: `pip install nvidia-cublas~=13.0` (also pulled in by nvidia-cudnn-cu13)"
    } else if s.starts_with("libcudart")
        || s.starts_with("libcufft")
        || s.starts_with("libcurand")
        || s.starts_with("libnvrtc")
    {
        "the CUDA 13 runtime: `pip install \"onnxruntime-gpu[cuda,cudnn]==1.31.1\"` (nvidia-cuda-runtime, \
         nvidia-cuda-nvrtc, nvidia-cufft, nvidia-curand), or the CUDA toolkit's lib64 on LD_LIBRARY_PATH"
    } else {
        "the package that provides it (check `ldd` of the provider library)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_needed_entries_of_a_real_library() {
        // the test binary itself is an ELF executable that needs libc
        let exe = std::env::current_exe().unwrap();
        let needed = elf_needed(&exe).unwrap();
        assert!(needed.iter().any(|n| n.starts_with("libc.so")), "{needed:?}");
        assert!(required_libraries(&exe).unwrap().iter().all(|n| !n.starts_with("libc.so")));
    }

    #[test]
    fn rejects_non_elf_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.so");
        std::fs::write(&p, b"not an elf").unwrap();
        assert!(elf_needed(&p).unwrap_err().to_string().contains("x.so"));
    }

    #[test]
    fn probing_reports_missing_libraries_with_the_loader_message() {
        let s = probe("libflux2-definitely-missing.so.7");
        assert!(!s.found());
        assert!(s.error.unwrap().contains("libflux2-definitely-missing.so.7"));
        assert!(install_hint("libnvinfer.so.10").contains("tensorrt-cu13"));
        assert!(install_hint("libcudnn.so.9").contains("cudnn"));
    }
}
