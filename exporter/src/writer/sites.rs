//! The writer's low-bit linears: weight-only INT8/INT4 codes (quantised, or a GGUF file's own
//! blocks, [`lowbit::gguf`]) and FP8 weights kept FP8 for TensorRT ([`lowbit::fp8`]), each
//! written after the graph's other weights, with the graph rewrite and metadata that go with them.

use std::path::Path;

use flux2_graphs::onnx::{ModelProto, StringStringEntryProto, TensorProto};
use flux2_graphs::{Model, Target};

use super::{external, open_sources, read_merged, DataFile, WeightMerge, WriteReport};
use crate::checkpoint::Checkpoint;
use crate::lowbit::{self, LowbitOptions, Site};
use crate::names::ResolvedWeight;
use crate::{io_err, ExportError, Result};

/// What the writer is building.
pub(super) struct Out<'a> {
    pub proto: &'a mut ModelProto,
    pub inits: &'a mut Vec<TensorProto>,
    pub report: &'a mut WriteReport,
}

/// Writes the weight-only low-bit linears `quantised` (their `sites`), rewrites the graph.
#[allow(clippy::too_many_arguments)]
pub(super) fn write_lowbit(
    model: &Model,
    stem: &str,
    ckpt: &Checkpoint,
    dir: &Path,
    (lo, target): (&LowbitOptions, Target),
    merge: Option<&dyn WeightMerge>,
    quantised: &[ResolvedWeight],
    sites: &mut [Site],
    out: &mut Out,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    let mut data = DataFile::append(dir, stem)?;
    for w in quantised {
        if let Some(i) = sites.iter().position(|s| s.weight == w.decl.name) {
            sites[i].from_file = write_quantised(
                w,
                &sites[i],
                ckpt,
                stem,
                (merge, lo),
                target,
                &mut data,
                out.inits,
                progress,
            )?;
        }
    }
    data.finish(out.report)?;
    let total = lowbit::count_linears(model, stem);
    let g = out.proto.graph.get_or_insert_with(Default::default);
    if lo.nbits_op {
        lowbit::nbits::rewrite(g, sites);
        if !out.proto.opset_import.iter().any(|o| o.domain == lowbit::nbits::DOMAIN) {
            out.proto.opset_import.push(flux2_graphs::onnx::OperatorSetIdProto {
                domain: lowbit::nbits::DOMAIN.into(),
                version: 1,
            });
        }
    } else {
        lowbit::rewrite(g, sites, target);
    }
    out.proto.metadata_props.push(lowbit::metadata(sites, total, target, lo));
    Ok(())
}

/// Writes the FP8 linears `fp8w` (their `sites`) as they are stored, rewrites the graph.
#[allow(clippy::too_many_arguments)]
pub(super) fn write_fp8_sites(
    model: &Model,
    stem: &str,
    ckpt: &Checkpoint,
    dir: &Path,
    allow_nonfinite: bool,
    fp8w: &[ResolvedWeight],
    sites: &[Site],
    out: &mut Out,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    let mut data = DataFile::append(dir, stem)?;
    for w in fp8w {
        if let Some(site) = sites.iter().find(|s| s.weight == w.decl.name) {
            write_fp8(w, site, ckpt, allow_nonfinite, &mut data, out.inits, progress)?;
        }
    }
    data.finish(out.report)?;
    let total = lowbit::count_linears(model, stem);
    lowbit::fp8::rewrite(out.proto.graph.get_or_insert_with(Default::default), sites);
    out.proto.metadata_props.push(StringStringEntryProto {
        key: "flux2.weights_precision".into(),
        value: format!(
            "fp8 e4m3, per-tensor scales (the checkpoint's): {} of {total} linear weights",
            sites.len()
        ),
    });
    Ok(())
}

/// A linear's codes and scales in the graph's `(K, N)` form or already in `MatMulNBits` layout.
enum Stored {
    Graph(lowbit::Quantised),
    Nbits((Vec<u8>, Vec<f32>)),
}

/// Writes a linear weight's codes and scales: a GGUF file's own where they are the site's
/// form (returns true), else the weight read as f32 (merged) and quantised.
#[allow(clippy::too_many_arguments)]
fn write_quantised(
    w: &ResolvedWeight,
    site: &Site,
    ckpt: &Checkpoint,
    stem: &str,
    (merge, lo): (Option<&dyn WeightMerge>, &LowbitOptions),
    target: Target,
    data: &mut DataFile,
    inits: &mut Vec<TensorProto>,
    progress: &mut dyn FnMut(u64),
) -> Result<bool> {
    let merged = merge.is_some_and(|m| m.touches(stem, &w.decl.name));
    let direct = match merged {
        false => lowbit::gguf::direct(w, site, ckpt, target, w.decl.dtype)?,
        true => None,
    };
    let from_file = direct.is_some();
    let q = match direct {
        Some(q) => {
            progress(w.pieces.iter().map(|p| p.len).sum());
            Stored::Graph(q)
        }
        None => {
            let values = read_merged(w, ckpt, stem, merge, progress)?;
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                return Err(ExportError::Tensor {
                    name: w.decl.name.clone(),
                    path: ckpt.origin.clone(),
                    msg: format!("element {i} is {}: a non-finite weight cannot be quantised", values[i]),
                });
            }
            let block = lowbit::effective_block(site, target);
            match lo.nbits_op {
                true => Stored::Nbits(lowbit::nbits::quantise_nbits(
                    &values,
                    site.n,
                    site.k,
                    site.bits,
                    block,
                    w.decl.dtype,
                )),
                false => {
                    Stored::Graph(lowbit::quantise(&values, site.n, site.k, site.bits, block, w.decl.dtype))
                }
            }
        }
    };
    let nbits = |(b, scales): (Vec<u8>, Vec<f32>)| {
        let scales = flux2_graphs::encode_floats(w.decl.dtype, &scales);
        (b, flux2_graphs::onnx_dtype::UINT8, lowbit::nbits::dims(site), scales)
    };
    let (codes, code_type, (code_dims, scale_dims), scales) = match q {
        Stored::Nbits(pair) => nbits(pair),
        Stored::Graph(q) if lo.nbits_op => nbits(lowbit::nbits::to_nbits(&q, site.bits, site.block)),
        Stored::Graph(q) => {
            let scales = q.scale_bytes(w.decl.dtype);
            (q.codes, site.bits.onnx(), lowbit::dims(site, target), scales)
        }
    };
    let start = data.begin(codes.len())?;
    data.write(&codes)?;
    let code_name = lowbit::code_name(&site.weight);
    inits.push(external(&code_name, code_type, &code_dims, &data.name, start, codes.len() as u64));
    let start = data.begin(scales.len())?;
    data.write(&scales)?;
    let scale_name = lowbit::scale_name(&site.weight);
    inits.push(external(
        &scale_name,
        w.decl.dtype.onnx(),
        &scale_dims,
        &data.name,
        start,
        scales.len() as u64,
    ));
    Ok(from_file)
}

/// Writes an FP8 linear weight as it is stored, transposed to `(in, out)`, with its scale.
fn write_fp8(
    w: &ResolvedWeight,
    site: &Site,
    ckpt: &Checkpoint,
    allow_nonfinite: bool,
    data: &mut DataFile,
    inits: &mut Vec<TensorProto>,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    let sources = open_sources(ckpt)?;
    let mut bytes = Vec::with_capacity(site.n * site.k);
    for p in &w.pieces {
        let at = bytes.len();
        bytes.resize(at + p.len as usize, 0);
        ckpt.read_at(p.file, &sources[p.file], &mut bytes[at..], p.offset)
            .map_err(io_err(&ckpt.files[p.file].path))?;
        progress(p.len);
        let bad = crate::convert::count_nonfinite(p.dtype, &bytes[at..]);
        if bad > 0 && !allow_nonfinite {
            let path = &ckpt.files[p.file].path;
            return Err(crate::copy::nonfinite_error(&p.tensor, path, bad, p.len));
        }
    }
    let codes = lowbit::fp8::transpose(&bytes, site.n, site.k);
    let start = data.begin(codes.len())?;
    data.write(&codes)?;
    let fp8 = flux2_graphs::onnx_dtype::FLOAT8E4M3FN;
    let dims = [site.k, site.n];
    inits.push(external(&lowbit::code_name(&site.weight), fp8, &dims, &data.name, start, codes.len() as u64));
    let scale = lowbit::fp8::fp8_scale(w, ckpt).unwrap_or(1.0);
    let sb = flux2_graphs::encode_floats(w.decl.dtype, &[scale]);
    let start = data.begin(sb.len())?;
    data.write(&sb)?;
    let name = lowbit::scale_name(&site.weight);
    inits.push(external(&name, w.decl.dtype.onnx(), &[], &data.name, start, sb.len() as u64));
    Ok(())
}
