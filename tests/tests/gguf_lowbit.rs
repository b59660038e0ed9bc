//! GGUF blocks straight into the weight-only low-bit graph (`flux2 export --transformer
//! FILE.gguf --weights-precision int8|int4|gguf`), on tests/fixtures/gguf/ (gen_gguf.py, the
//! `gguf` 0.19.0 package): dit_guided_mixed.gguf (the guided DiT in BFL names, its double
//! blocks Q8_0, single blocks Q4_0, other matrices F16), dit_guided_q4_0.gguf and
//! qwen3_q8_0.gguf.
//!
//! For every `DequantizeLinear` linear of the low-bit export it checks that
//! * each (output channel, block) of its codes and scale is a block of the GGUF file, parsed
//!   here from the file's bytes (Q8_0: f16 d, 32 int8; Q4_0: f16 d, 16 bytes of nibbles, the
//!   low ones elements 0..16, code − 8), and
//! * `scale · code` equals, bit for bit, the weight of the float export of the same GGUF (the
//!   reader's dequantised values, bit-exact with `gguf.quants.dequantize` by tests/gguf.rs);
//!
//! then that ONNX Runtime fuses every one into `MatMulNBits`, and that the DiT's output matches
//! the float export's.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use flux2_calib::onnx_file::OnnxFile;
use flux2_exporter::export::{export, ExportRequest};
use flux2_exporter::gguf::{GgmlType, GgufFile};
use flux2_exporter::lowbit::{Bits, LowbitOptions};
use flux2_exporter::models::ExportOptions;
use flux2_exporter::{Kind, ModelSource, WeightMode};
use flux2_graphs::onnx_dtype as dtype;
use flux2_graphs::{DType, Target};
use flux2_runtime::ort_env::save_optimized;
use flux2_runtime::{Input, SessionOptions};
use flux2_tests::{fixture, load_tensors, nmse, run_file};

/// (f16 bits of the scale, code bits, codes) of one block.
type Block = (u16, u32, Vec<i8>);

fn export_to(
    src: &ModelSource,
    kind: Kind,
    lowbit: Option<LowbitOptions>,
    layers: Option<Vec<usize>>,
) -> (tempfile::TempDir, PathBuf) {
    let out = tempfile::tempdir().unwrap();
    let opts =
        ExportOptions { dtype: DType::F32, target: Target::Ort, text_layers: layers, config_override: None };
    let mut req = ExportRequest::new(Some(vec![kind]), opts, WeightMode::Copy);
    req.lowbit = lowbit;
    let m = export(src, out.path(), &req, &mut |_| {}).unwrap_or_else(|e| panic!("export: {e}"));
    let stem = if kind == Kind::Transformer { "transformer" } else { "text_encoder" };
    let path = out.path().join(&m.graphs[stem].file);
    (out, path)
}

fn dit_source(gguf: &str) -> ModelSource {
    ModelSource::open_with(&fixture("dit/guided"), &[(Kind::Transformer, fixture(&format!("gguf/{gguf}")))])
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Every Q8_0 / Q4_0 block of the file, from its bytes.
fn file_blocks(path: &Path) -> HashSet<Block> {
    let g = GgufFile::open(path).unwrap();
    let mut out = HashSet::new();
    for t in &g.tensors {
        let (bits, size) = match t.ty {
            GgmlType::Q8_0 => (8, 34),
            GgmlType::Q4_0 => (4, 18),
            _ => continue,
        };
        for b in g.bytes(t).chunks_exact(size) {
            let d = u16::from_le_bytes([b[0], b[1]]);
            let codes: Vec<i8> = if bits == 8 {
                b[2..].iter().map(|&c| c as i8).collect()
            } else {
                let lo = b[2..].iter().map(|&c| (c & 0x0f) as i8 - 8);
                lo.chain(b[2..].iter().map(|&c| (c >> 4) as i8 - 8)).collect()
            };
            out.insert((d, bits, codes));
        }
    }
    out
}

/// A `DequantizeLinear` linear of an export: `(K, N)` codes, `(K / block, N)` scales.
struct DqSite {
    weight: String,
    bits: u32,
    block: usize,
    k: usize,
    n: usize,
    codes: Vec<i8>,
    scales: Vec<f32>,
}

fn dq_sites(f: &OnnxFile) -> Vec<DqSite> {
    let mut out = Vec::new();
    for node in f.graph().node.iter().filter(|n| n.op_type == "DequantizeLinear") {
        let c = f.initializer(&node.input[0]).unwrap();
        let s = f.initializer(&node.input[1]).unwrap();
        let (k, n) = (c.dims[0] as usize, c.dims[1] as usize);
        let raw = f.tensor_bytes(c).unwrap();
        let (bits, codes) = match c.data_type {
            dtype::INT8 => (8, raw.iter().map(|&b| b as i8).collect()),
            dtype::INT4 => {
                let nib = |i: usize| ((raw[i / 2] >> (4 * (i % 2))) << 4) as i8 >> 4;
                (4, (0..k * n).map(nib).collect())
            }
            other => panic!("{}: codes of type {other}", node.name),
        };
        let block = node.attribute.iter().find(|a| a.name == "block_size").map_or(k, |a| a.i as usize);
        let weight = node.input[0].trim_end_matches(".q").to_string();
        out.push(DqSite { weight, bits, block, k, n, codes, scales: f.tensor_f32(s).unwrap() });
    }
    out
}

/// Checks every DQ site of `q` against `blocks` (when given) and the float export `f`; returns
/// (sites, sites equal to the float weights bit for bit).
fn compare_sites(q: &Path, f: &Path, blocks: Option<&HashSet<Block>>) -> (usize, usize, HashMap<u32, usize>) {
    let (q, f) = (OnnxFile::read(q).unwrap(), OnnxFile::read(f).unwrap());
    let sites = dq_sites(&q);
    let (mut equal, mut by_bits) = (0, HashMap::new());
    for s in &sites {
        *by_bits.entry(s.bits).or_insert(0) += 1;
        let w = f.tensor_f32(f.initializer(&s.weight).unwrap()).unwrap(); // (N, K)
        let value =
            |kk: usize, nn: usize| f32::from(s.codes[kk * s.n + nn]) * s.scales[(kk / s.block) * s.n + nn];
        let same =
            (0..s.k).all(|kk| (0..s.n).all(|nn| value(kk, nn).to_bits() == w[nn * s.k + kk].to_bits()));
        equal += usize::from(same);
        let Some(blocks) = blocks else { continue };
        for nn in 0..s.n {
            for b in 0..s.k / s.block {
                let scale = s.scales[b * s.n + nn];
                let d = half::f16::from_f32(scale);
                assert_eq!(d.to_f32(), scale, "{}: scale {scale} is no f16 value", s.weight);
                let codes: Vec<i8> =
                    (b * s.block..(b + 1) * s.block).map(|kk| s.codes[kk * s.n + nn]).collect();
                assert!(
                    blocks.contains(&(d.to_bits(), s.bits, codes.clone())),
                    "{} (channel {nn}, block {b}): scale {scale} codes {codes:?} are no block of the file",
                    s.weight
                );
            }
        }
    }
    (sites.len(), equal, by_bits)
}

fn metadata(path: &Path) -> String {
    let f = OnnxFile::read(path).unwrap();
    let m = f.proto.metadata_props.iter().find(|p| p.key == "flux2.weights_precision");
    m.map(|p| p.value.clone()).unwrap_or_default()
}

fn ops(path: &Path, work: &Path) -> HashMap<String, usize> {
    let out = work.join("optimised.onnx");
    let o = SessionOptions { intra_threads: 2, optimization: true, ..SessionOptions::default() };
    save_optimized(path, &out, &o).unwrap_or_else(|e| panic!("{e}"));
    let mut ops = HashMap::new();
    for n in &OnnxFile::read(&out).unwrap().graph().node {
        *ops.entry(n.op_type.clone()).or_insert(0) += 1;
    }
    ops
}

fn dit_inputs() -> Vec<(&'static str, Input)> {
    let io = load_tensors(&fixture("dit/guided/io.safetensors")).unwrap();
    ["hidden_states", "encoder_hidden_states", "timestep", "guidance", "img_ids", "txt_ids"]
        .into_iter()
        .filter_map(|n| io.get(n).map(|t| (n, t.clone())))
        .collect()
}

/// `--weights-precision gguf` on the mixed DiT: Q8_0 → INT8 block 32 and Q4_0 → INT4 block 32
/// straight from the file, F16 matrices float; fused into MatMulNBits; same output.
#[test]
fn gguf_precision_takes_the_files_blocks() {
    flux2_tests::exact_nbits();
    let gguf = fixture("gguf/dit_guided_mixed.gguf");
    let src = dit_source("dit_guided_mixed.gguf");
    let lo = LowbitOptions {
        bits: Bits::Int8,
        block_size: 32,
        include_all: true,
        from_gguf: true,
        nbits_op: false,
    };
    let (_q, q) = export_to(&src, Kind::Transformer, Some(lo), None);
    let (_f, f) = export_to(&src, Kind::Transformer, None, None);
    let (n, equal, by_bits) = compare_sites(&q, &f, Some(&file_blocks(&gguf)));
    let quantised = GgufFile::open(&gguf).unwrap().tensors.iter().filter(|t| !t.ty.is_float()).count();
    eprintln!("{n} DQ linears ({by_bits:?}) from {quantised} quantised GGUF tensors; {}", metadata(&q));
    assert!(
        by_bits.get(&8).is_some_and(|&c| c > 0) && by_bits.get(&4).is_some_and(|&c| c > 0),
        "{by_bits:?}"
    );
    assert!(n >= quantised, "every quantised tensor (fused qkv: several linears) is low-bit");
    assert_eq!(equal, n, "every low-bit weight equals the dequantised GGUF values");
    assert!(metadata(&q).contains(&format!("{n} of")) && metadata(&q).matches("own codes").count() == 2);
    // the F16 tensors (embedders, modulation, final layer) stay float
    let g = OnnxFile::read(&q).unwrap();
    assert!(g.graph().node.iter().any(|x| x.op_type == "Transpose" && x.input[0] == "x_embedder.weight"));

    let work = tempfile::tempdir().unwrap();
    let ops = ops(&q, work.path());
    assert_eq!(ops.get("MatMulNBits").copied().unwrap_or(0), n, "{ops:?}");
    assert_eq!(ops.get("DequantizeLinear"), None, "{ops:?}");

    let want = run_file(&f, dit_inputs()).unwrap().remove("velocity").unwrap();
    let got = run_file(&q, dit_inputs()).unwrap().remove("velocity").unwrap();
    let e = nmse(&want, &got);
    eprintln!("velocity: MatMulNBits export vs float export of the same GGUF: nmse {e:.2e}");
    assert!(e < 1e-10, "nmse {e:e}");
}

/// `int4 --block-size 32` on a Q4_0 DiT is the file's blocks; `--block-size 64` is not its
/// form, so it is re-quantised (and differs from the GGUF values).
#[test]
fn fixed_precision_takes_the_blocks_only_in_the_types_form() {
    flux2_tests::exact_nbits();
    let gguf = fixture("gguf/dit_guided_q4_0.gguf");
    let src = dit_source("dit_guided_q4_0.gguf");
    let (_f, f) = export_to(&src, Kind::Transformer, None, None);
    let (_q, q) = export_to(&src, Kind::Transformer, Some(LowbitOptions::fixed(Bits::Int4, 32, false)), None);
    let (n, equal, _) = compare_sites(&q, &f, Some(&file_blocks(&gguf)));
    eprintln!("int4 block 32: {n} linears, {equal} exact; {}", metadata(&q));
    assert!(n > 0 && equal == n);
    assert!(metadata(&q).contains(&format!("int4 symmetric, block 32: {n} ({n} the GGUF file's own codes)")));
    let (_r, r) = export_to(&src, Kind::Transformer, Some(LowbitOptions::fixed(Bits::Int4, 64, false)), None);
    let (n64, equal64, _) = compare_sites(&r, &f, None);
    eprintln!("int4 block 64: {n64} linears, {equal64} exact; {}", metadata(&r));
    assert!(n64 == n && equal64 < n64, "block 64 re-quantises");
    assert!(!metadata(&r).contains("own codes"));
}

/// `int8 --block-size 32` on a Q8_0 Qwen3 text encoder (llama.cpp names): every linear is the
/// file's blocks.
#[test]
fn text_encoder_q8_0_to_int8() {
    flux2_tests::exact_nbits();
    let gguf = fixture("gguf/qwen3_q8_0.gguf");
    let src = ModelSource::open(&gguf).unwrap_or_else(|e| panic!("{e}"));
    let io = load_tensors(&fixture("text/qwen3/io.safetensors")).unwrap();
    let layers = match io.get("layers") {
        Some(Input::I64(a)) => Some(a.iter().map(|&v| v as usize).collect::<Vec<_>>()),
        _ => panic!("no layers"),
    };
    let lo = LowbitOptions::fixed(Bits::Int8, 32, false);
    let (_q, q) = export_to(&src, Kind::TextEncoder, Some(lo), layers.clone());
    let (_f, f) = export_to(&src, Kind::TextEncoder, None, layers);
    let (n, equal, _) = compare_sites(&q, &f, Some(&file_blocks(&gguf)));
    eprintln!("qwen3 Q8_0 → int8 block 32: {n} linears, {equal} exact; {}", metadata(&q));
    assert!(n > 0 && equal == n);
    let inputs =
        vec![("input_ids", io["input_ids"].clone()), ("attention_mask", io["attention_mask"].clone())];
    let want = run_file(&f, inputs.clone()).unwrap().remove("prompt_embeds").unwrap();
    let got = run_file(&q, inputs).unwrap().remove("prompt_embeds").unwrap();
    let e = nmse(&want, &got);
    eprintln!("prompt_embeds: nmse {e:.2e}");
    assert!(e < 1e-10, "nmse {e:e}");
}
