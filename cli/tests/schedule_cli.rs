//! `flux2 schedule` end to end: the JSON it prints, and non-zero exits that name the bad option.

use std::process::{Command, Output};

use flux2_runtime::schedule::{Schedule, Shift};
use serde_json::Value;

fn flux2(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flux2")).args(args).output().expect("running the flux2 binary")
}

fn schedule_json(args: &[&str]) -> Value {
    let out = flux2(&[&["schedule"], args].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "flux2 schedule {args:?} failed: {stderr}");
    serde_json::from_slice(&out.stdout).expect("stdout is JSON")
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number") as f32).collect()
}

#[test]
fn prints_the_library_schedule() {
    for (w, h, n, shift) in [
        (1024, 1024, 4, "empirical"),
        (1360, 768, 50, "empirical"),
        (1152, 1152, 28, "empirical"),
        (512, 768, 9, "resolution"),
        (2048, 2048, 28, "resolution:256"),
        (64, 64, 1, "fixed:3"),
    ] {
        let (ws, hs, ns) = (w.to_string(), h.to_string(), n.to_string());
        let j = schedule_json(&["--width", &ws, "--height", &hs, "--steps", &ns, "--shift", shift]);
        let want = Schedule::new(w, h, n, shift.parse::<Shift>().unwrap()).unwrap();
        let id = format!("{w}x{h} N={n} {shift}");
        assert_eq!(j["image_seq_len"].as_u64(), Some((w / 16 * (h / 16)) as u64), "{id}");
        // f64s are printed exactly; serde_json's default parser may be 1 ulp off reading them back
        let close = |key: &str, want: f64| {
            let got = j[key].as_f64().unwrap_or(f64::NAN);
            assert!((got - want).abs() <= 4.0 * f64::EPSILON * want.abs(), "{id}: {key} {got} vs {want}");
        };
        close("mu", want.mu);
        close("alpha", want.alpha);
        // float32 values printed in shortest round-trip form read back to the same float32
        assert_eq!(floats(&j["sigmas"]), want.sigmas, "{id}: sigmas");
        assert_eq!(floats(&j["timesteps"]), want.timesteps(), "{id}: timesteps");
        assert_eq!(j["sigmas"].as_array().map(Vec::len), Some(n + 1), "{id}");
    }
}

#[test]
fn default_shift_is_the_reference() {
    let j = schedule_json(&["--width", "1024", "--height", "1024", "--steps", "4"]);
    assert_eq!(j["shift"], "empirical");
    let s = floats(&j["sigmas"]);
    let want = [1.0f32, 0.967384, 0.908144, 0.7672, 0.0]; // design doc §6.3, klein at 1024²
    assert!(s.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6), "{s:?}");
    assert!((j["mu"].as_f64().unwrap() - 2.2912).abs() < 1e-4);
}

fn fails_naming(args: &[&str], needles: &[&str]) {
    let out = flux2(&[&["schedule"], args].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "flux2 schedule {args:?} succeeded");
    assert!(out.stdout.is_empty(), "printed a schedule despite the error");
    for n in needles {
        assert!(stderr.contains(n), "stderr for {args:?} does not mention '{n}':\n{stderr}");
    }
}

#[test]
fn bad_options_exit_nonzero_naming_them() {
    let size = ["--width", "512", "--height", "512", "--steps", "4"];
    fails_naming(&[&size[..], &["--shift", "linear"]].concat(), &["--shift", "linear"]);
    fails_naming(&[&size[..], &["--shift", "fixed:-1"]].concat(), &["--shift", "-1"]);
    fails_naming(&[&size[..], &["--shift", "resolution:x"]].concat(), &["--shift", "resolution:x"]);
    fails_naming(&["--width", "1000", "--height", "512", "--steps", "4"], &["--width", "1000", "16"]);
    fails_naming(&["--width", "512", "--height", "0", "--steps", "4"], &["--height", "0"]);
    fails_naming(&["--width", "512", "--height", "512", "--steps", "0"], &["--steps", "0"]);
    fails_naming(&["--width", "512", "--height", "512"], &["--steps"]);
}
