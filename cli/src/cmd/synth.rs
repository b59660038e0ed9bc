//! `flux2 synth-checkpoint`: a real-size FLUX.2 checkpoint with the released names and
//! shapes but no data (sparse files), for export timing and real-size tests.

use std::path::PathBuf;

use anyhow::bail;
use flux2_exporter::synth::sparse::{write_sparse_checkpoint, Variant};

/// Write a real-size FLUX.2 checkpoint (diffusers folder, bf16) whose data is a hole.
///
/// The safetensors headers are the released ones (names, shapes, sharding); the tensor data
/// reads as zeros and takes no disk space, so `flux2 export` can be timed on a real-size
/// model without downloading it (see scripts/export_speed.sh). Images generated from it are
/// meaningless.
///
/// Example:
///   flux2 synth-checkpoint --variant klein-4b --out /tmp/klein-4b-sparse
///   flux2 export --checkpoint /tmp/klein-4b-sparse --components transformer --out /tmp/k4
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// dev, klein-4b or klein-9b.
    #[arg(long)]
    variant: String,
    /// New folder to create.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let Some(variant) = Variant::parse(&args.variant) else {
        bail!("--variant: '{}' is not one of dev, klein-4b, klein-9b", args.variant)
    };
    let report = write_sparse_checkpoint(variant, &args.out)?;
    println!("wrote sparse {} checkpoint {}", args.variant, args.out.display());
    for (component, (files, bytes)) in &report {
        println!("  {component}: {:.2} GB of bf16 data in {} file(s)", *bytes as f64 / 1e9, files.len());
    }
    Ok(())
}
