//! Weight-only low-bit export (`flux2 export --weights-precision int8|int4 --block-size B`).
//!
//! The graphs write a linear layer as `Transpose(W) → MatMul` with `W` stored `(out, in)`.
//! For the linears this module selects, the exporter stores instead the `(in, out)` integer codes
//! and their block scales ([`quant`]) and replaces the `Transpose` by a standard
//! `DequantizeLinear(codes, scales, axis = 0, block_size = B)` whose output (same name) the
//! `MatMul` reads: activations stay float, only the weights shrink. This is the form
//! TensorRT 10 takes as weight-only quantisation and the form ONNX Runtime's CPU provider fuses
//! into `com.microsoft::MatMulNBits` (its DQ → MatMul fusion, for 4- and 8-bit codes).
//!
//! For `--target tensorrt` INT8 weights get one scale per output channel (`axis = 1`, no
//! `block_size`) instead: TensorRT 10 documents block quantisation for 4-bit weights only.
//!
//! What stays float by default (most sensitive, and a small share of the parameters): the DiT's
//! embedders (`x_embedder`, `context_embedder`, `time_guidance_embed`), its modulation linears and
//! its final layer (`norm_out`, `proj_out`); the text encoder's token embedding is a `Gather`,
//! never a linear, so it stays float as well. `include_all` quantises every linear.
//!
//! LoRA adapters are merged into the f32 values before they are quantised (see the writer).

pub mod fp8;
pub mod gguf;
pub mod nbits;
pub mod quant;

use std::collections::HashMap;

use flux2_graphs::onnx::{GraphProto, NodeProto, StringStringEntryProto};
use flux2_graphs::{attr, Model, Target};

pub use quant::{quantise, Bits, Quantised};

/// Name prefixes / parts of DiT weights kept float unless `include_all`.
const DIT_FLOAT_PREFIXES: &[&str] = &[
    "x_embedder.",
    "context_embedder.",
    "time_guidance_embed.",
    "time_text_embed.",
    "norm_out.",
    "proj_out.",
];

/// Block sizes accepted (powers of two that ONNX Runtime's `MatMulNBits` supports).
pub const BLOCK_SIZES: &[usize] = &[16, 32, 64, 128, 256];

/// How the selected linear weights are stored.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct LowbitOptions {
    pub bits: Bits,
    /// Input channels per scale (along K).
    pub block_size: usize,
    /// Also quantise embedders, modulation and the final layer.
    pub include_all: bool,
    /// `--weights-precision gguf`: each linear whose weight is a quantised GGUF tensor gets the
    /// form its type maps to ([`crate::gguf::direct::gguf_form`]); the others stay float.
    /// `bits` and `block_size` are then unused.
    pub from_gguf: bool,
    /// `--lowbit-op matmulnbits`: write ONNX Runtime's `MatMulNBits` directly ([`nbits`])
    /// instead of the standard `DequantizeLinear → MatMul`.
    pub nbits_op: bool,
}

impl LowbitOptions {
    /// Fixed `bits` and `block_size` for every selected linear.
    pub fn fixed(bits: Bits, block_size: usize, include_all: bool) -> LowbitOptions {
        LowbitOptions { bits, block_size, include_all, from_gguf: false, nbits_op: false }
    }
}

/// One `Transpose(W) → MatMul` to turn into `DequantizeLinear → MatMul`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    /// The declared weight name (`…to_q.weight`), stored `(N, K)` = (out, in).
    pub weight: String,
    pub n: usize,
    pub k: usize,
    /// Name of the Transpose node replaced.
    pub node: String,
    /// Integer width of this site's codes.
    pub bits: Bits,
    /// Input channels per scale (before [`effective_block`]).
    pub block: usize,
    /// Codes and scales taken from a GGUF file as they are (set by the writer).
    pub from_file: bool,
}

/// Whether the policy keeps weight `name` of graph `stem` float.
pub fn keeps_float(stem: &str, name: &str, include_all: bool) -> bool {
    if include_all {
        return false;
    }
    match stem {
        "transformer" => {
            DIT_FLOAT_PREFIXES.iter().any(|p| name.starts_with(p)) || name.contains("modulation")
        }
        "text_encoder" => false,
        _ => true,
    }
}

/// Graphs whose linears may be quantised.
pub fn applies_to(stem: &str) -> bool {
    matches!(stem, "transformer" | "text_encoder")
}

/// The linears of `model` (graph `stem`) to quantise: 2-D float weights read only by a
/// `Transpose(perm = [1, 0])` that is read only by a `MatMul` as its second input.
pub fn plan(model: &Model, stem: &str, opts: &LowbitOptions) -> Vec<Site> {
    let Some(g) = model.proto.graph.as_ref() else { return Vec::new() };
    if !applies_to(stem) {
        return Vec::new();
    }
    let mut readers: HashMap<&str, Vec<(&NodeProto, usize)>> = HashMap::new();
    for n in &g.node {
        for (i, inp) in n.input.iter().enumerate() {
            readers.entry(inp.as_str()).or_default().push((n, i));
        }
    }
    let mut sites = Vec::new();
    for w in &model.weights {
        if w.shape.len() != 2
            || !w.dtype.is_float()
            || keeps_float(stem, &w.name, opts.include_all || opts.from_gguf)
        {
            continue;
        }
        let Some([(t, 0)]) = readers.get(w.name.as_str()).map(|v| v.as_slice()) else { continue };
        let perm_ok = t.attribute.iter().any(|a| a.name == "perm" && a.ints == [1, 0]);
        if t.op_type != "Transpose" || !t.domain.is_empty() || !perm_ok || t.output.len() != 1 {
            continue;
        }
        let Some([(m, 1)]) = readers.get(t.output[0].as_str()).map(|v| v.as_slice()) else { continue };
        if m.op_type != "MatMul" || !m.domain.is_empty() {
            continue;
        }
        sites.push(Site {
            weight: w.name.clone(),
            n: w.shape[0],
            k: w.shape[1],
            node: t.name.clone(),
            bits: opts.bits,
            block: opts.block_size,
            from_file: false,
        });
    }
    sites
}

/// Name of the initializer holding a site's integer codes.
pub fn code_name(weight: &str) -> String {
    format!("{weight}.q")
}

/// Name of a site's scale initializer.
pub fn scale_name(weight: &str) -> String {
    format!("{weight}.scale")
}

/// Whether INT8 weights of `target` use one scale per output channel instead of blocks.
pub fn per_channel(target: Target, bits: Bits) -> bool {
    target == Target::TensorRt && bits == Bits::Int8
}

/// The block size used for a site: `K` for per-channel scales.
pub fn effective_block(site: &Site, target: Target) -> usize {
    if per_channel(target, site.bits) {
        site.k.max(1)
    } else {
        site.block
    }
}

/// The (codes, scales) initializer dims of `site`.
pub fn dims(site: &Site, target: Target) -> (Vec<usize>, Vec<usize>) {
    if per_channel(target, site.bits) {
        (vec![site.k, site.n], vec![site.n])
    } else {
        (vec![site.k, site.n], vec![site.k.div_ceil(site.block), site.n])
    }
}

/// Replaces each site's Transpose by its `DequantizeLinear` (same output name) and records the
/// storage in the model's metadata. The initializers are added by the writer.
pub fn rewrite(g: &mut GraphProto, sites: &[Site], target: Target) {
    let by_node: HashMap<&str, &Site> = sites.iter().map(|s| (s.node.as_str(), s)).collect();
    for n in g.node.iter_mut() {
        let Some(site) = by_node.get(n.name.as_str()) else { continue };
        let mut attrs = Vec::new();
        if per_channel(target, site.bits) {
            attrs.push(attr::int("axis", 1));
        } else {
            attrs.push(attr::int("axis", 0));
            attrs.push(attr::int("block_size", site.block as i64));
        }
        *n = NodeProto {
            input: vec![code_name(&site.weight), scale_name(&site.weight)],
            output: n.output.clone(),
            name: format!("{}.dequantizelinear", site.weight),
            op_type: "DequantizeLinear".into(),
            domain: String::new(),
            attribute: attrs,
            doc_string: String::new(),
        };
    }
}

/// The `metadata_props` entry describing the weight storage: each form with its count of
/// linears (and how many took a GGUF file's own codes).
pub fn metadata(
    sites: &[Site],
    total_linears: usize,
    target: Target,
    opts: &LowbitOptions,
) -> StringStringEntryProto {
    let mut forms: std::collections::BTreeMap<String, (usize, usize)> = Default::default();
    for s in sites {
        let scales = if per_channel(target, s.bits) {
            "per output channel".to_string()
        } else {
            format!("block {}", s.block)
        };
        let e = forms.entry(format!("{} symmetric, {scales}", s.bits.name())).or_default();
        e.0 += 1;
        e.1 += usize::from(s.from_file);
    }
    let parts: Vec<String> = forms
        .iter()
        .map(|(f, (n, file))| match file {
            0 => format!("{f}: {n}"),
            _ => format!("{f}: {n} ({file} the GGUF file's own codes)"),
        })
        .collect();
    let op = if opts.nbits_op { "; as com.microsoft MatMulNBits" } else { "" };
    let policy = match (opts.from_gguf, opts.include_all) {
        (true, _) => " (as the GGUF file stores them; its float tensors stay float)",
        (false, true) => " (all)",
        (false, false) => " (embedders, modulation, final layer float)",
    };
    StringStringEntryProto {
        key: "flux2.weights_precision".into(),
        value: format!("{}; {} of {total_linears} linear weights{policy}{op}", parts.join("; "), sites.len()),
    }
}

/// Number of `Transpose → MatMul` linears in a graph (the denominator in the metadata).
pub fn count_linears(model: &Model, stem: &str) -> usize {
    plan(model, stem, &LowbitOptions::fixed(Bits::Int8, 32, true)).len()
}

#[cfg(test)]
mod tests;
