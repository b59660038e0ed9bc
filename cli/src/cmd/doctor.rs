//! `flux2 doctor`: what this machine can run, and what to install for the rest.

use flux2_runtime::cpu::CpuInfo;
use flux2_runtime::providers::ExecutionProvider;
use flux2_runtime::trt::host::{provider_library, ORT_GPU_HINT};
use flux2_runtime::trt::libs::{
    install_hint, preload_from_wheels, probe, required_libraries, wheel_library_dirs,
};
use flux2_runtime::trt::probe::tensorrt_version;
use flux2_runtime::trt::probe::{
    cuda_driver, cudart_version, jetpack_of, jetson_release, nvidia_smi, ort_version,
};
use flux2_runtime::trt::GpuTarget;
use flux2_runtime::{environment, find_ort_library};

/// The CPU section: model and the instruction sets ONNX Runtime's CPU kernels use.
fn print_cpu(cpu: &CpuInfo) {
    println!("CPU");
    println!("  model: {}", cpu.model);
    if let Some(f) = &cpu.family {
        println!("  id: {f}");
    }
    println!("  logical CPUs: {}", cpu.logical_cpus);
    let list = |v: &[String]| if v.is_empty() { "none".to_string() } else { v.join(" ") };
    println!("  instruction sets: {}", list(&cpu.isa));
    println!("  not available: {}", list(&cpu.missing));
    let int8 = if cpu.has("AMX-INT8") {
        "AMX tiles"
    } else if cpu.has("AVX-512 VNNI") || cpu.has("AVX-VNNI") || cpu.has("DOTPROD") {
        "VNNI / dot-product instructions"
    } else {
        "no int8 dot-product instructions: INT8 graphs gain less here than on VNNI CPUs"
    };
    println!("  int8 matmuls: {int8}");
}

/// Show the CPU (model, AVX2 / AVX-512 / VNNI / AMX / BF16), the ONNX Runtime library and its providers, the GPU, driver, CUDA, cuDNN and TensorRT
/// libraries this process can load, and what to install when something is missing.
///
/// Libraries are looked up the way the providers load them (LD_LIBRARY_PATH, the ldconfig
/// cache) plus pip's NVIDIA wheels next to ONNX Runtime (site-packages/nvidia/*/lib,
/// site-packages/tensorrt_libs). Exits 0 unless ONNX Runtime itself cannot be loaded.
///
/// Examples:
///   ORT_DYLIB_PATH=/venv/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1 flux2 doctor
///   echo "CPU: $(flux2 doctor --cpu)"     # the one line benchmark scripts print with their figures
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Print only the CPU line (model, logical CPUs, instruction sets present and missing).
    #[arg(long)]
    pub cpu: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.cpu {
        println!("{}", CpuInfo::detect().summary());
        return Ok(());
    }
    let mut todo: Vec<String> = Vec::new();
    print_cpu(&CpuInfo::detect());
    println!("ONNX Runtime");
    let lib = find_ort_library();
    match &lib {
        Some(p) => println!("  library: {}", p.display()),
        None => println!("  library: not found (ORT_DYLIB_PATH unset, no ./.venv with onnxruntime)"),
    }
    if let Err(e) = environment() {
        anyhow::bail!("{e}\n  install the CPU build: `pip install onnxruntime==1.31.1` (or run scripts/setup.sh)\n  for GPUs: {ORT_GPU_HINT}");
    }
    let lib = lib.unwrap_or_else(|| "libonnxruntime.so".into());
    println!("  version: {}", ort_version(&lib).unwrap_or_else(|| "unknown".into()));
    let mut ready = vec!["cpu"];
    for kind in [ExecutionProvider::Cuda, ExecutionProvider::TensorRt] {
        let short = if kind == ExecutionProvider::Cuda { "cuda" } else { "tensorrt" };
        if !kind.is_available().unwrap_or(false) {
            println!("  {}: not in this build", kind.ort_name());
            let hint = format!("CUDA/TensorRT providers: {ORT_GPU_HINT}");
            if !todo.contains(&hint) {
                todo.push(hint);
            }
            continue;
        }
        let provider = provider_library(&lib, short);
        println!("  {}: available ({})", kind.ort_name(), provider.display());
        let needed = match required_libraries(&provider) {
            Ok(mut n) => {
                if !n.iter().any(|x| x == "libcuda.so.1") {
                    n.push("libcuda.so.1".into());
                }
                n
            }
            Err(e) => {
                todo.push(format!("{}: cannot read {}: {e}", kind.ort_name(), provider.display()));
                continue;
            }
        };
        preload_from_wheels(&needed, &wheel_library_dirs(&lib));
        let mut ok = true;
        for s in needed.iter().map(|n| probe(n)) {
            match (&s.error, &s.path) {
                (None, Some(p)) => println!("    {:<24} {}", s.soname, p.display()),
                (None, None) => println!("    {:<24} loaded", s.soname),
                (Some(e), _) => {
                    ok = false;
                    println!("    {:<24} MISSING ({e})", s.soname);
                    let hint = format!("{}: {}", s.soname, install_hint(&s.soname));
                    if !todo.contains(&hint) {
                        todo.push(hint);
                    }
                }
            }
        }
        if ok {
            ready.push(short);
        }
    }
    println!("GPU");
    match cuda_driver() {
        Ok(d) => {
            println!("  driver: CUDA {}.{}", d.version / 1000, d.version % 1000 / 10);
            for dev in &d.devices {
                let family = GpuTarget::from_compute_capability(dev.capability.0, dev.capability.1);
                let what = match family {
                    Some(g) => format!(
                        "--gpu {g}{}{}",
                        if g.supports_fp8() { ", FP8" } else { ", no FP8 (use INT8)" },
                        if g.has_dla() { ", DLA" } else { "" }
                    ),
                    None => "not a flux2 build target".into(),
                };
                println!(
                    "  [{}] {} sm{} {:.1} GiB: {what}",
                    dev.index,
                    dev.name,
                    dev.sm(),
                    dev.memory_bytes as f64 / (1u64 << 30) as f64
                );
            }
        }
        Err(e) => {
            println!("  none: {e}");
            todo.push(format!("GPU: {e}; {}", install_hint("libcuda.so.1")));
        }
    }
    if let Some(smi) = nvidia_smi() {
        for l in smi.lines() {
            println!("  nvidia-smi: {l}");
        }
    }
    if let Some(l4t) = jetson_release() {
        let jp = jetpack_of(&l4t).map(|j| format!(" (JetPack {j})")).unwrap_or_default();
        println!("  Jetson: {l4t}{jp}");
    }
    println!("Libraries");
    let cuda =
        ["libcudart.so.13", "libcudart.so.12"].into_iter().find_map(|s| cudart_version(s).map(|v| (s, v)));
    match cuda {
        Some((s, v)) => println!("  CUDA runtime: {}.{} ({s})", v / 1000, v % 1000 / 10),
        None => println!("  CUDA runtime: not loadable (libcudart.so.13/.12)"),
    }
    let cudnn = probe("libcudnn.so.9");
    println!(
        "  cuDNN 9: {}",
        cudnn.path.map(|p| p.display().to_string()).unwrap_or_else(|| "not loadable".into())
    );
    match tensorrt_version() {
        Some(v) => println!("  TensorRT: {v}"),
        None => println!("  TensorRT: not loadable (libnvinfer.so.10/.11)"),
    }
    println!("Ready: --provider {}", ready.join(", --provider "));
    if !todo.is_empty() {
        println!("To enable the rest:");
        for t in &todo {
            println!("  - {t}");
        }
    }
    Ok(())
}
