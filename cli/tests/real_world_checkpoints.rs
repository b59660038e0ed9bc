//! Checkpoints as users have them: a Hugging Face hub cache snapshot (relative symlinks into
//! read-only blobs) and an output folder on another filesystem, exported in both weight
//! modes and run.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use std::process::Command;

/// A Hugging Face hub cache entry of `src`: `blobs/<hash>` files (read-only, as the hub
/// leaves them) and `snapshots/<rev>/...` relative symlinks into them.
fn hub_snapshot(src: &Path, cache: &Path) -> PathBuf {
    let repo = cache.join("models--black-forest-labs--FLUX.2-klein-test");
    let snap = repo.join("snapshots/0123456789abcdef");
    fn walk(src: &Path, rel: &Path, repo: &Path, snap: &Path, n: &mut usize) {
        for e in std::fs::read_dir(src.join(rel)).expect("read_dir").flatten() {
            let r = rel.join(e.file_name());
            if e.path().is_dir() {
                walk(src, &r, repo, snap, n);
                continue;
            }
            *n += 1;
            let blob = repo.join("blobs").join(format!("{n:040x}"));
            std::fs::copy(e.path(), &blob).expect("blob");
            let mut perm = std::fs::metadata(&blob).expect("meta").permissions();
            perm.set_readonly(true);
            std::fs::set_permissions(&blob, perm).expect("chmod");
            let link = snap.join(&r);
            std::fs::create_dir_all(link.parent().expect("parent")).expect("mkdir");
            let up = "../".repeat(r.components().count() + 1);
            std::os::unix::fs::symlink(format!("{up}blobs/{n:040x}"), &link).expect("symlink");
        }
    }
    std::fs::create_dir_all(repo.join("blobs")).expect("mkdir");
    walk(src, Path::new(""), &repo, &snap, &mut 0);
    snap
}

/// A hub-cache snapshot with read-only blobs exports in both modes and runs; link mode links
/// the blobs, not the symlinks.
#[test]
fn hub_cache_snapshot_with_read_only_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let snap = hub_snapshot(&klein(), &tmp.path().join("hub"));
    assert!(snap.join("vae/diffusion_pytorch_model.safetensors").is_symlink());
    for mode in ["copy", "link"] {
        let out = tmp.path().join(mode);
        export_klein(&snap, &out, &["--weights", mode]);
        assert!(manifest_weights(&out).iter().all(|w| w == mode), "{mode}: {:?}", manifest_weights(&out));
        if mode == "link" {
            for e in std::fs::read_dir(out.join("weights/vae_decoder")).expect("links").flatten() {
                let meta = std::fs::symlink_metadata(e.path()).expect("meta");
                assert!(meta.is_file(), "{} is a hard link to the blob, not a symlink", e.path().display());
            }
        }
        generate_ok(&out, &tmp.path().join(format!("{mode}.png")));
        // exporting again over the finished folder works too (read-only tokenizer copies)
        export_klein(&snap, &out, &["--weights", mode]);
    }
}

/// Link mode into another filesystem: refused with the way out, or copied when asked.
#[test]
fn output_on_another_filesystem() {
    use std::os::unix::fs::MetadataExt;
    let shm = Path::new("/dev/shm");
    let here = std::fs::metadata(klein()).expect("fixture").dev();
    if !shm.is_dir() || std::fs::metadata(shm).map(|m| m.dev()).ok() == Some(here) {
        eprintln!("note: no second filesystem at /dev/shm; skipping");
        return;
    }
    let tmp = tempfile::tempdir_in(shm).expect("tempdir in /dev/shm");
    let out = tmp.path().join("linked");
    let o = Command::new(env!("CARGO_BIN_EXE_flux2"))
        .args([
            "export",
            "--checkpoint",
            &s(&klein()),
            "--out",
            &s(&out),
            "--text-layers",
            "1,2,3",
            "--weights",
            "link",
        ])
        .output()
        .expect("flux2 export");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    for want in [
        "another filesystem",
        "--weights copy",
        "--link-fallback copy",
        "diffusion_pytorch_model.safetensors",
    ] {
        assert!(err.contains(want), "missing '{want}': {err}");
    }
    assert!(!out.exists(), "a refused export leaves nothing");
    export_klein(&klein(), &out, &["--weights", "link", "--link-fallback", "copy"]);
    assert!(manifest_weights(&out).iter().all(|w| w == "copy"));
    generate_ok(&out, &tmp.path().join("fox.png"));
    let copied = tmp.path().join("copied");
    export_klein(&klein(), &copied, &[]);
    generate_ok(&copied, &tmp.path().join("fox2.png"));
}
