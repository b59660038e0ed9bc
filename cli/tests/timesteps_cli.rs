//! `flux2 timesteps` end to end: the CSV it writes is exactly the library's seeded samples
//! (header `t`, round-trip digits), the plot is a decodable PNG, and bad options fail naming the
//! option without leaving files behind.

use std::path::Path;
use std::process::{Command, Output};

use flux2_calib::timesteps::{Distribution, Kind, Params, TimestepDist};

fn flux2(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flux2")).arg("timesteps").args(args).output().unwrap()
}

fn parse_csv(text: &str) -> Vec<f64> {
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("t"), "header");
    lines.map(|l| l.parse::<f64>().unwrap()).collect()
}

#[test]
fn writes_the_library_samples_as_csv_and_a_png() {
    let dir = tempfile::tempdir().unwrap();
    let (csv, png) = (dir.path().join("t.csv"), dir.path().join("t.png"));
    let out = flux2(&[
        "--dist",
        "pln",
        "--alpha",
        "3",
        "--mu",
        "-0.5",
        "--sigma",
        "1.6",
        "--samples",
        "2500",
        "--seed",
        "9",
        "--out",
        csv.to_str().unwrap(),
        "--plot",
        png.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = parse_csv(&std::fs::read_to_string(&csv).unwrap());
    assert_eq!(got.len(), 2500);
    let want = TimestepDist::new(Kind::Pln, Params { alpha: 3.0, mu: -0.5, sigma: 1.6 })
        .unwrap()
        .sample(2500, 9)
        .unwrap();
    assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "CSV is not the seeded samples");

    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert!(info.width >= 200 && info.height >= 100);
    let pixels = &buf[..info.buffer_size()];
    assert!(pixels.chunks(3).any(|p| p == [200, 30, 30]), "no density curve drawn");

    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 2, "temporary files left: {leftovers:?}");
}

#[test]
fn stdout_by_default_with_defaults_and_same_seed_same_bytes() {
    let a = flux2(&["--dist", "ln"]);
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    let samples = parse_csv(std::str::from_utf8(&a.stdout).unwrap());
    assert_eq!(samples.len(), 1000);
    let want = TimestepDist::new(Kind::Ln, Params::default()).unwrap().sample(1000, 0).unwrap();
    assert_eq!(samples, want);
    assert_eq!(a.stdout, flux2(&["--dist", "ln", "--seed", "0", "--samples", "1000"]).stdout);
    assert_ne!(a.stdout, flux2(&["--dist", "ln", "--seed", "1"]).stdout);
}

#[test]
fn ts_samples_follow_the_closed_form_cdf() {
    // KS against u = t / (alpha + (1 - alpha) t), the ts cdf written out here.
    let out = flux2(&["--dist", "ts", "--alpha", "7.5", "--samples", "20000", "--seed", "4"]);
    let mut t = parse_csv(std::str::from_utf8(&out.stdout).unwrap());
    t.sort_by(f64::total_cmp);
    let n = t.len() as f64;
    let d = t.iter().enumerate().fold(0.0f64, |d, (i, &t)| {
        let f = t / (7.5 + (1.0 - 7.5) * t);
        d.max((i as f64 + 1.0) / n - f).max(f - i as f64 / n)
    });
    assert!(d < 1.9495 / n.sqrt(), "KS D = {d}");
}

fn assert_fails_naming(args: &[&str], option: &str, out_path: &Path) {
    let out = flux2(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(stderr.contains(option), "{args:?}: stderr does not name {option}: {stderr}");
    assert!(!out_path.exists(), "{args:?} left {}", out_path.display());
}

#[test]
fn bad_options_fail_naming_the_option() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("bad.csv");
    let c = csv.to_str().unwrap();
    assert_fails_naming(&["--dist", "ln", "--sigma", "0", "--out", c], "--sigma", &csv);
    assert_fails_naming(&["--dist", "pln", "--sigma", "-1", "--out", c], "--sigma", &csv);
    assert_fails_naming(&["--dist", "ts", "--alpha", "-2", "--out", c], "--alpha", &csv);
    assert_fails_naming(&["--dist", "ln", "--mu", "nan", "--out", c], "--mu", &csv);
    assert_fails_naming(&["--dist", "ts", "--samples", "0", "--out", c], "--samples", &csv);
    assert_fails_naming(&["--dist", "gamma", "--out", c], "--dist", &csv);
    // A plot that cannot be written leaves no CSV either.
    let png = dir.path().join("missing-dir").join("p.png");
    assert_fails_naming(&["--dist", "ln", "--out", c, "--plot", png.to_str().unwrap()], "p.png", &csv);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
