//! `flux2 inspect FILE.gguf`: the GGUF part of the report (version, architecture, metadata,
//! types with counts and sizes, how each maps onto the low-bit forms; with --verify the
//! added error of each form, measured).

use std::path::Path;

use flux2_exporter::gguf::report::{measure, summarize, Report};
use flux2_exporter::gguf::GgufFile;

/// Reads the file's header and, with `verify`, all its quantised data.
pub fn report(path: &Path, verify: bool) -> anyhow::Result<Report> {
    let g = GgufFile::open(path)?;
    let mut r = summarize(&g);
    if verify {
        let total = g.tensors.iter().filter(|t| !t.ty.is_float()).map(|t| t.len).sum();
        let pb = crate::progress::bar(total, "re-express");
        measure(&g, &mut r, &mut |n| pb.inc(n))?;
        pb.finish_and_clear();
    }
    Ok(r)
}

/// Prints `r` as text.
pub fn print(r: &Report) {
    println!("{} (GGUF v{}, {:.3} GB)", r.path, r.version, r.size as f64 / 1e9);
    println!("  architecture: {}", r.architecture.as_deref().unwrap_or("(none)"));
    println!("  alignment:    {}", r.alignment);
    println!("  metadata:     {} keys", r.metadata.len());
    for (k, v) in r.metadata.iter().filter(|(k, _)| !k.starts_with("tokenizer.ggml.")).take(40) {
        println!("    {k} = {v}");
    }
    let tok = r.metadata.keys().filter(|k| k.starts_with("tokenizer.ggml.")).count();
    if tok > 0 {
        println!("    ({tok} tokenizer.ggml.* keys)");
    }
    let bytes: u64 = r.types.values().map(|t| t.bytes).sum();
    println!("  tensors:      {} ({:.3} GB of data)", r.tensors, bytes as f64 / 1e9);
    for (ty, s) in &r.types {
        println!(
            "    {ty:<5} {:>6} tensors {:>14} values {:>10.3} MB  {}",
            s.tensors,
            s.elements,
            s.bytes as f64 / 1e6,
            s.mapping
        );
        for (form, e) in &s.forms {
            match e.snr_db {
                None => println!("          {form:<16} exact"),
                Some(db) => println!(
                    "          {form:<16} added RMS {:.3e} ({db:.1} dB below the values)",
                    e.added_rms
                ),
            }
            if e.skipped > 0 {
                println!("          {form:<16} ({} tensors with rows not whole blocks)", e.skipped);
            }
        }
    }
}
