//! Real-size export (ignored by default: writes 15.5 GB): the FLUX.2 [klein] 4B transformer
//! as released (names, shapes, bf16), from a sparse synthetic checkpoint, exported in copy
//! mode (bf16 -> f32) and link mode, with the manifest checked against the released config.
//!
//!   cargo test --release -p flux2-tests --test real_size_export -- --ignored --nocapture
//!
//! Work folder: `FLUX2_BIG_DIR` (default: the system temp folder); it needs ~16 GB free.
//! Timing against the disk is `scripts/export_speed.sh`, not this test.

use std::path::PathBuf;

use flux2_exporter::synth::sparse::{write_sparse_checkpoint, Variant};
use flux2_exporter::{Kind, WeightMode};
use flux2_graphs::models::dit::DitConfig;
use flux2_graphs::Target;
use flux2_tests::export::{export_to, options};

fn work_dir() -> tempfile::TempDir {
    let base = std::env::var_os("FLUX2_BIG_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    tempfile::tempdir_in(base).expect("work folder")
}

#[test]
#[ignore = "writes 15.5 GB; run by hand (see the module docs)"]
fn klein_4b_transformer_exports_in_copy_and_link_mode() {
    let work = work_dir();
    let ckpt = work.path().join("klein-4b");
    let report = write_sparse_checkpoint(Variant::Klein4b, &ckpt).expect("sparse checkpoint");
    let (files, bf16_bytes) = &report["transformer"];
    assert_eq!(files.len(), 1, "released klein-4B transformer is one file");
    // sparse: the 7.75 GB of data take (almost) no disk space
    let used = std::process::Command::new("du").arg("-sk").arg(&files[0]).output().expect("du");
    let kib: u64 =
        String::from_utf8_lossy(&used.stdout).split_whitespace().next().unwrap_or("0").parse().unwrap_or(0);
    assert!(kib < 4096, "sparse file uses {kib} KiB on disk");

    let params = bf16_bytes / 2;
    let c = DitConfig::klein_4b();
    let d = c.inner_dim() as u64;
    assert!(params > 3_800_000_000 && params < 4_000_000_000, "{params} parameters");
    assert!(params > d * d * 24, "{params} parameters for D = {d}");

    for mode in [WeightMode::Link, WeightMode::Copy] {
        let out = work.path().join(format!("{mode:?}"));
        let started = std::time::Instant::now();
        let m = export_to(&ckpt, &out, Some(vec![Kind::Transformer]), options(Target::Ort, None), mode)
            .unwrap_or_else(|e| panic!("{mode:?} export: {e}"));
        let secs = started.elapsed().as_secs_f64();
        assert_eq!(m.variant, "klein-4b");
        let g = &m.graphs["transformer"];
        assert_eq!(g.parameters, params);
        assert_eq!(g.weights, format!("{mode:?}").to_lowercase());
        assert_eq!(g.dtype, "f32");
        assert_eq!(m.configs["transformer"]["num_single_layers"], 20);
        assert!(out.join("transformer.onnx").is_file());
        match mode {
            WeightMode::Copy => {
                let data = std::fs::metadata(out.join("transformer.onnx.data")).expect("data file").len();
                assert!(
                    data >= params * 4 && data < params * 4 + (64 << 20),
                    "{data} bytes for {params} f32"
                );
                println!(
                    "copy: {:.2} GB in {secs:.1} s = {:.2} GB/s",
                    data as f64 / 1e9,
                    data as f64 / 1e9 / secs
                );
            }
            WeightMode::Link => {
                assert!(!out.join("transformer.onnx.data").exists());
                assert!(out.join("weights/transformer").read_dir().expect("links").count() == 1);
                println!("link: {secs:.2} s");
            }
        }
        std::fs::remove_dir_all(&out).expect("clean up");
    }
}
