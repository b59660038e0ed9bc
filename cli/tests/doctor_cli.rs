//! `flux2 doctor` end to end: it always reports (exit 0) what it found and what is missing,
//! starting with the CPU and its instruction sets.

use std::process::Command;

#[test]
fn reports_runtime_gpu_and_libraries() {
    let o = Command::new(env!("CARGO_BIN_EXE_flux2")).arg("doctor").output().expect("running flux2");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}{}", String::from_utf8_lossy(&o.stderr));
    let cpu = flux2_runtime::cpu::CpuInfo::detect();
    assert!(stdout.starts_with("CPU\n"), "{stdout}");
    assert!(stdout.contains(&format!("model: {}", cpu.model)), "{stdout}");
    assert!(stdout.contains(&format!("logical CPUs: {}", cpu.logical_cpus)), "{stdout}");
    for section in [
        "instruction sets: ",
        "not available: ",
        "int8 matmuls: ",
        "ONNX Runtime",
        "library: ",
        "version: 1.31",
        "GPU",
        "Libraries",
        "TensorRT",
        "Ready: --provider cpu",
    ] {
        assert!(stdout.contains(section), "{section}: {stdout}");
    }
    // every provider is either ready or explained
    for p in ["CUDAExecutionProvider", "TensorrtExecutionProvider"] {
        assert!(stdout.contains(p), "{p}: {stdout}");
    }
    if !stdout.contains("--provider tensorrt") {
        assert!(stdout.contains("To enable the rest") && stdout.contains("onnxruntime-gpu"), "{stdout}");
    }
}

#[test]
fn cpu_flag_prints_the_summary_line_only() {
    let o =
        Command::new(env!("CARGO_BIN_EXE_flux2")).args(["doctor", "--cpu"]).output().expect("running flux2");
    assert!(o.status.success());
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(stdout, format!("{}\n", flux2_runtime::cpu::CpuInfo::detect().summary()));
}
