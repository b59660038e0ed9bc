//! The run-only `flux2` (built with `--no-default-features`, the device build): it generates,
//! benches, prints schedules and diagnoses, gives the same image as the full binary, and has
//! no export/calibrate/build commands. `scripts/test.sh` builds it and sets
//! `FLUX2_RUN_ONLY_BIN`; without that variable (a plain `cargo test`) the test says so and
//! checks nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn run(bin: &Path, args: &[&str]) -> Output {
    Command::new(bin).args(args).output().unwrap_or_else(|e| panic!("running {}: {e}", bin.display()))
}

fn ok(out: Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{what} failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    stdout
}

#[test]
fn run_only_binary_generates_like_the_full_one() {
    let Some(run_only) = std::env::var_os("FLUX2_RUN_ONLY_BIN").map(PathBuf::from) else {
        eprintln!("FLUX2_RUN_ONLY_BIN is not set (scripts/test.sh sets it): run-only binary not tested");
        return;
    };
    assert!(run_only.is_file(), "FLUX2_RUN_ONLY_BIN={} does not exist", run_only.display());
    let full = PathBuf::from(env!("CARGO_BIN_EXE_flux2"));
    let tmp = tempfile::tempdir().unwrap();
    let demo = tmp.path().join("demo");
    let d = demo.to_str().unwrap();
    ok(run(&full, &["demo", "--out", d, "--size", "32x32"]), "flux2 demo");
    let model = demo.join("onnx");
    let m = model.to_str().unwrap();
    let (a, b) = (tmp.path().join("full.png"), tmp.path().join("run.png"));
    let gen = |bin: &Path, out: &Path| {
        let args = ["generate", "--model", m, "--prompt", "a red square", "--width", "32", "--height", "32"];
        let mut args: Vec<&str> = args.to_vec();
        args.extend(["--out", out.to_str().unwrap()]);
        ok(run(bin, &args), "flux2 generate");
    };
    gen(&full, &a);
    gen(&run_only, &b);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "same image from both binaries");

    ok(run(&run_only, &["schedule", "--width", "64", "--height", "64", "--steps", "4"]), "schedule");
    ok(run(&run_only, &["doctor"]), "doctor");
    let bench = ["bench", "--model", m, "--width", "32", "--height", "32", "--runs", "1", "--warmup", "0"];
    ok(run(&run_only, &bench), "bench");
    let help = ok(run(&run_only, &["--help"]), "--help");
    for cmd in ["export", "calibrate", "build", "check"] {
        assert!(!help.contains(&format!("\n  {cmd} ")), "run-only binary lists `{cmd}`:\n{help}");
        let out = run(&run_only, &[cmd, "--help"]);
        assert!(!out.status.success(), "run-only `{cmd}` should not exist");
    }
}
