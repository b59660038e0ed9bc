//! Shared by the CLI catalogue tests: fixture paths, a table of cases run against the real
//! `flux2` binary (exit status, the culprit named in the error, nothing half-written), and
//! helpers that export and run the klein fixture.
#![allow(dead_code)] // each test crate uses a part

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(rel)
}

pub fn klein() -> PathBuf {
    fixture("pipeline/klein")
}

/// What a case must do.
pub enum Expect {
    /// Exit non-zero, stderr containing every string, and none of the paths existing after.
    Fails(Vec<String>, Vec<PathBuf>),
    /// Exit 0 and every path existing after.
    Works(Vec<PathBuf>),
}

pub struct Case {
    pub name: &'static str,
    pub args: Vec<String>,
    pub env: Vec<(&'static str, String)>,
    pub expect: Expect,
}

pub fn s(p: &Path) -> String {
    p.display().to_string()
}

pub fn fails<A: AsRef<str>>(name: &'static str, args: &[A], mentions: &[&str], absent: &[&Path]) -> Case {
    Case {
        name,
        args: args.iter().map(|a| a.as_ref().to_string()).collect(),
        env: vec![],
        expect: Expect::Fails(
            mentions.iter().map(|m| m.to_string()).collect(),
            absent.iter().map(|p| p.to_path_buf()).collect(),
        ),
    }
}

pub fn works<A: AsRef<str>>(name: &'static str, args: &[A], creates: &[&Path]) -> Case {
    Case {
        name,
        args: args.iter().map(|a| a.as_ref().to_string()).collect(),
        env: vec![],
        expect: Expect::Works(creates.iter().map(|p| p.to_path_buf()).collect()),
    }
}

/// Temporaries a failed write might leave: `.name.tmp` files and `.flux2-staging-*` folders.
pub fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".tmp") || n.starts_with(".flux2-"))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs every case; returns one line per case that did not behave.
pub fn run_all(cases: &[Case], scratch: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    for c in cases {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flux2"));
        cmd.args(&c.args).current_dir(scratch);
        for (k, v) in &c.env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("running flux2");
        let err = String::from_utf8_lossy(&out.stderr);
        let code = out.status.code();
        match &c.expect {
            Expect::Fails(mentions, absent) => {
                if out.status.success() || code == Some(101) {
                    problems.push(format!("{}: exit {code:?} (want a clean failure); stderr: {err}", c.name));
                }
                for m in mentions {
                    if !err.contains(m.as_str()) {
                        problems.push(format!("{}: error does not mention '{m}': {err}", c.name));
                    }
                }
                for p in absent {
                    if p.exists() {
                        problems.push(format!("{}: left {} behind", c.name, p.display()));
                    }
                }
                if err.contains("panicked") {
                    problems.push(format!("{}: panicked: {err}", c.name));
                }
            }
            Expect::Works(created) => {
                if !out.status.success() {
                    problems.push(format!("{}: failed (exit {code:?}): {err}", c.name));
                }
                for p in created {
                    if !p.exists() {
                        problems.push(format!("{}: did not create {}", c.name, p.display()));
                    }
                }
            }
        }
        let left = leftovers(scratch);
        if !left.is_empty() {
            problems.push(format!("{}: temporaries left in {}: {left:?}", c.name, scratch.display()));
        }
    }
    problems
}

/// Exports the klein fixture (every component, copy mode) into `out`.
pub fn export_klein(ckpt: &Path, out: &Path, extra: &[&str]) {
    let o = Command::new(env!("CARGO_BIN_EXE_flux2"))
        .args(["export", "--checkpoint", &s(ckpt), "--out", &s(out), "--text-layers", "1,2,3"])
        .args(extra)
        .output()
        .expect("flux2 export");
    assert!(o.status.success(), "export {}: {}", ckpt.display(), String::from_utf8_lossy(&o.stderr));
}

pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).expect("mkdir");
    for e in std::fs::read_dir(src).expect("read_dir").flatten() {
        let to = dst.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).expect("copy");
        }
    }
}

pub fn generate_ok(model: &Path, out: &Path) {
    let o = Command::new(env!("CARGO_BIN_EXE_flux2"))
        .args([
            "generate",
            "--model",
            &s(model),
            "--prompt",
            "a fox",
            "--width",
            "64",
            "--height",
            "64",
            "--out",
            &s(out),
        ])
        .output()
        .expect("flux2 generate");
    assert!(o.status.success(), "generate with {}: {}", model.display(), String::from_utf8_lossy(&o.stderr));
    assert!(out.is_file());
}

pub fn manifest_weights(dir: &Path) -> Vec<String> {
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).expect("manifest"))
            .expect("json");
    let graphs = m["graphs"].as_object().expect("graphs");
    graphs.values().map(|g| g["weights"].as_str().unwrap_or("").to_string()).collect()
}
