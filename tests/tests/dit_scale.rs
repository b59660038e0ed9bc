//! Scale check of the DiT export (ignored by default: it writes ~4.6 GB).
//!
//! Writes a FLUX.2-dev-shaped checkpoint (hidden 6144, 48 heads, context 15360, 1 double +
//! 1 single block, random bf16) in the diffusers layout, exports it in link mode and in copy
//! mode, and reports wall time and the peak RSS of each export. Link mode must take seconds
//! and little memory; copy mode's peak RSS must not grow with the checkpoint (weights are
//! streamed in chunks), which the test checks by exporting a ~4x smaller klein-4B-shaped
//! checkpoint the same way.
//!
//! ```sh
//! FLUX2_SCALE_DIR=/tmp cargo test -p flux2-tests --test dit_scale -- --ignored --nocapture
//! ```
//! `FLUX2_SCALE_DIR` (default: the system temp dir) must have room for the checkpoint and
//! one bf16 copy (~9.2 GB); everything written is deleted at the end.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use flux2_exporter::WeightMode;
use flux2_graphs::models::dit::{build_transformer, DitConfig};
use flux2_graphs::{DType, Target};
use flux2_tests::export::{export_to, options};

/// Writes `dir/transformer/{config.json, diffusion_pytorch_model.safetensors}` with random
/// bf16 weights for `config`, streaming (constant memory). Returns the file size.
fn write_checkpoint(dir: &Path, config: &DitConfig) -> u64 {
    let model = build_transformer(config, Target::Ort, DType::BF16).unwrap();
    let tdir = dir.join("transformer");
    std::fs::create_dir_all(&tdir).unwrap();
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for w in &model.weights {
        let n = w.shape.iter().product::<usize>() * 2;
        header.insert(
            w.name.clone(),
            serde_json::json!({"dtype": "BF16", "shape": w.shape, "data_offsets": [offset, offset + n]}),
        );
        offset += n;
    }
    let mut h = serde_json::Value::Object(header).to_string().into_bytes();
    h.resize(h.len().div_ceil(8) * 8, b' ');
    let path = tdir.join("diffusion_pytorch_model.safetensors");
    let mut f = std::io::BufWriter::with_capacity(8 << 20, std::fs::File::create(&path).unwrap());
    f.write_all(&(h.len() as u64).to_le_bytes()).unwrap();
    f.write_all(&h).unwrap();
    // One 8 MiB block of random bf16 (xorshift64*; random sign, exponent 2^-8..2^-5), written
    // over and over: the exporter never looks at the values, only at the bytes' size.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let block: Vec<u8> = (0..4 << 20)
        .flat_map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let r = state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32;
            let bits = ((r & 1) << 15) | ((119 + (r >> 1) % 4) << 7) | ((r >> 8) & 0x7f);
            (bits as u16).to_le_bytes()
        })
        .collect();
    for w in &model.weights {
        let mut left = w.shape.iter().product::<usize>() * 2;
        while left > 0 {
            let n = left.min(block.len());
            f.write_all(&block[..n]).unwrap();
            left -= n;
        }
    }
    f.flush().unwrap();
    let cfg = serde_json::json!({
        "_class_name": "Flux2Transformer2DModel",
        "num_layers": config.num_layers,
        "num_single_layers": config.num_single_layers,
        "num_attention_heads": config.num_attention_heads,
        "attention_head_dim": config.attention_head_dim,
        "joint_attention_dim": config.joint_attention_dim,
        "guidance_embeds": config.guidance_embeds,
        "axes_dims_rope": config.axes_dims_rope,
    });
    std::fs::write(tdir.join("config.json"), cfg.to_string()).unwrap();
    std::fs::metadata(&path).unwrap().len()
}

/// Peak RSS in KiB since the last reset (`VmHWM`).
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Resets `VmHWM` to the current RSS (Linux `clear_refs` 5).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Exports `ckpt` and returns (seconds, peak RSS growth in MiB, bytes written).
fn measure(ckpt: &Path, out: &Path, dtype: DType, mode: WeightMode) -> (f64, f64, u64) {
    reset_peak_rss();
    let before = peak_rss_kib();
    let t = Instant::now();
    let mut opts = options(Target::Ort, None);
    opts.dtype = dtype;
    export_to(ckpt, out, None, opts, mode).unwrap();
    let secs = t.elapsed().as_secs_f64();
    let peak = peak_rss_kib().saturating_sub(before) as f64 / 1024.0;
    let written: u64 = std::fs::read_dir(out)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    (secs, peak, written)
}

#[test]
#[ignore = "writes ~4.6 GB; run by hand (see the module docs)"]
fn dev_shaped_export_link_and_copy() {
    let base = std::env::var_os("FLUX2_SCALE_DIR").map(Into::into).unwrap_or_else(std::env::temp_dir);
    let root = tempfile::tempdir_in(base).unwrap();
    let mut copy_peaks = Vec::new();
    let shallow = |c: DitConfig| DitConfig { num_layers: 1, num_single_layers: 1, ..c };
    for (name, config) in
        [("dev-shaped", shallow(DitConfig::dev())), ("klein-4b-shaped", shallow(DitConfig::klein_4b()))]
    {
        let ckpt = root.path().join(name);
        let t = Instant::now();
        let size = write_checkpoint(&ckpt, &config);
        eprintln!(
            "{name}: {} parameters, {:.2} GB bf16 checkpoint written in {:.1} s",
            config.parameter_count(),
            size as f64 / 1e9,
            t.elapsed().as_secs_f64()
        );
        for (dtype, mode) in
            [(DType::BF16, WeightMode::Link), (DType::F32, WeightMode::Link), (DType::BF16, WeightMode::Copy)]
        {
            let out = root.path().join(format!("{name}-out"));
            let (secs, peak, written) = measure(&ckpt.join("transformer"), &out, dtype, mode);
            eprintln!(
                "  {mode:?} {dtype}: {secs:.2} s, peak RSS +{peak:.0} MiB, {:.1} MB written",
                written as f64 / 1e6
            );
            match mode {
                WeightMode::Link => {
                    assert!(secs < 30.0, "link export took {secs} s");
                    assert!(written < 50_000_000, "link mode wrote {written} bytes");
                }
                WeightMode::Copy => copy_peaks.push((size, peak)),
            }
            std::fs::remove_dir_all(&out).unwrap();
        }
        std::fs::remove_dir_all(&ckpt).unwrap();
    }
    // Copy mode streams: its peak RSS stays far below the checkpoint and does not scale with it.
    let (big, small) = (copy_peaks[0], copy_peaks[1]);
    assert!(big.1 < 512.0, "copy mode peak RSS {} MiB", big.1);
    assert!(big.1 < small.1 * 2.0 + 64.0, "copy RSS grew with the checkpoint: {small:?} -> {big:?}");
}
