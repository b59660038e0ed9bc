//! `flux2 synth-checkpoint`: a real-size FLUX.2 checkpoint with the released names and
//! shapes but no data (sparse files), for export timing and real-size tests.

use std::path::PathBuf;

use anyhow::{bail, Context};
use flux2_exporter::gguf::GgmlType;
use flux2_exporter::synth::sparse::{write_sparse_checkpoint, Variant};
use flux2_exporter::synth::sparse_gguf::write_gguf_forms;

/// Write a real-size FLUX.2 checkpoint (diffusers folder, bf16) whose data is a hole.
///
/// The safetensors headers are the released ones (names, shapes, sharding); the tensor data
/// reads as zeros and takes no disk space, so `flux2 export` can be timed on a real-size
/// model without downloading it (see scripts/export_speed.sh). Images generated from it are
/// meaningless.
///
/// With --gguf TYPE it also writes the GGUF forms users hold, one file per component, into
/// OUT/gguf/: transformer-TYPE.gguf (diffusers names) and text_encoder-TYPE.gguf (llama.cpp
/// names and metadata), every 2-D tensor whose rows are whole blocks stored as TYPE.
///
/// Example:
///   flux2 synth-checkpoint --variant klein-4b --out /tmp/klein-4b-sparse
///   flux2 export --checkpoint /tmp/klein-4b-sparse --components transformer --out /tmp/k4
///   flux2 synth-checkpoint --variant dev --out /tmp/dev --gguf Q4_K
///   flux2 export --checkpoint /tmp/dev --transformer /tmp/dev/gguf/transformer-Q4_K.gguf \
///     --text-encoder /tmp/dev/gguf/text_encoder-Q4_K.gguf --weights-precision int4 --out /tmp/d
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// dev, klein-4b or klein-9b.
    #[arg(long)]
    variant: String,
    /// New folder to create.
    #[arg(long)]
    out: PathBuf,
    /// Also write GGUF forms of the DiT and text encoder with this quantised type (Q4_0, Q4_K,
    /// Q8_0, ...; any type `flux2 inspect` reads).
    #[arg(long, value_name = "TYPE")]
    gguf: Option<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let Some(variant) = Variant::parse(&args.variant) else {
        bail!("--variant: '{}' is not one of dev, klein-4b, klein-9b", args.variant)
    };
    let ty = match &args.gguf {
        None => None,
        Some(t) => match GgmlType::from_name(t) {
            Some(ty) => Some(ty),
            None => bail!(
                "--gguf: '{t}' is not a GGUF type (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K)"
            ),
        },
    };
    let report = write_sparse_checkpoint(variant, &args.out)?;
    println!("wrote sparse {} checkpoint {}", args.variant, args.out.display());
    for (component, (files, bytes)) in &report {
        println!("  {component}: {:.2} GB of bf16 data in {} file(s)", *bytes as f64 / 1e9, files.len());
    }
    if let Some(ty) = ty {
        let dir = args.out.join("gguf");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for (file, bytes) in write_gguf_forms(variant, ty, &dir)? {
            println!("  {}: {:.2} GB of {ty} data", file.display(), bytes as f64 / 1e9);
        }
    }
    Ok(())
}
