//! Explicit Q/DQ insertion (the only INT8/FP8 form TensorRT 10+/11 and ONNX Runtime accept).
//!
//! For each layer chosen for quantisation:
//!
//! ```text
//! X ─[Mul 1/s]─ QuantizeLinear(scale_x, 0) ─ DequantizeLinear ─┐
//!                                W_q (int8|fp8) ─ DequantizeLinear(scale_w, 0, axis) ─ MatMul / Conv
//! ```
//!
//! * Weights are quantised here and stored as new initializers. A MatMul weight is stored
//!   pre-transposed (in, out): the exporter's `Transpose` (and any link-mode assembly chain) is
//!   folded away so the weight DQ feeds the MatMul directly, which is what ONNX Runtime needs to
//!   fuse `DQ → MatMul ← DQ` into `MatMulIntegerToFloat` (platform-notes §3).
//! * INT8 weights: symmetric per output channel (MatMul axis 1, Conv axis 0), scale amax/127,
//!   zero point 0. FP8 weights: one per-tensor scale amax/448 (E4M3FN, saturating).
//! * Activations: one per-tensor scale from the calibrator and a Q/DQ pair per consumer (ONNX
//!   Runtime fuses only when a Q feeds a single DQ; measured: a Q shared by q/k/v projections
//!   left all three unfused). TensorRT merges the duplicates.
//! * Attention sites ([`crate::attention`]) chosen in the plan are expanded first (fused
//!   `Attention` → scale·q, q·kᵀ, softmax, P·v); each of their four product inputs gets its own
//!   per-tensor Q/DQ pair, right in front of the product.
//! * SmoothQuant factors, when given for an activation, become a `Mul` by 1/s in front of its
//!   quantiser and are folded into each consumer's weight rows.
//! * **INT8 convolutions** run as integer kernels on ONNX Runtime's CPU provider only when the
//!   whole `DQ(x), DQ(w) → Conv → Q` group is there: its Q/DQ selector turns that group into a
//!   `QLinearConv` (NHWC) and leaves a Conv without a Q on its output as DQ + float Conv, which is
//!   slower than float. So a quantised Conv whose output has a range in the plan also gets a
//!   Q/DQ pair on its output (the Conv writes `<output>.conv_float`, the pair restores the
//!   original name for every reader). Conv activations are UINT8 with zero point 128: the same
//!   256 levels as INT8 with zero point 0 (q − 128 = the INT8 code, same scale), but MLAS's
//!   x86 kernels multiply unsigned activations by signed weights (`vpmaddubsw`, VNNI
//!   `vpdpbusd`), and measured on an AVX2 EPYC a QLinearConv with INT8 activations ran slower
//!   than the float Conv while UINT8 ran 1.4–2× faster. TensorRT wants INT8 with zero point 0:
//!   [`signed_activations`] rewrites a graph losslessly (`flux2 calibrate --signed-activations`).
//!
//! **FP8 and ONNX Runtime.** ONNX Runtime 1.31's QDQ fusions accept FLOAT8E4M3FN pairs and build
//! a `MatMulIntegerToFloat` / `QLinearConv` with float8 inputs, which fails to load ("Type
//! 'tensor(float8e4m3fn)' ... of operator (MatMulIntegerToFloat) is invalid"; measured with
//! per-tensor and per-channel scales, opset 21 and 23). An FP8 weight therefore reaches its
//! MatMul or Conv through a same-shape `Reshape` (DQ → Reshape → op), which ONNX Runtime leaves
//! alone (it runs DQ + the float op, i.e. simulated FP8) and TensorRT folds into the weight (it
//! propagates DQ through shuffles, as for the DQ → Transpose → MatMul that PyTorch exports).
//!
//! Likewise ONNX Runtime moves FP8 Q/DQ across Squeeze / Unsqueeze / Slice and then finds no
//! FLOAT8 kernel for them; an FP8 activation produced by such an op is quantised after a `Mul` by
//! ones (the SmoothQuant `Mul` with s = 1), which stops the move.
//!
//! Q/DQ with FLOAT8E4M3FN needs opset ≥ 19 and per-axis DQ opset ≥ 13; our graphs are opset 23
//! (ONNX Runtime) or 21 (TensorRT). Nodes left without readers are pruned.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use flux2_graphs::attr;
use flux2_graphs::onnx::{ModelProto, NodeProto, TensorProto};
use serde::{Deserialize, Serialize};

use crate::attention::{expand, AttentionSite, Point};
use crate::consts::Consts;
use crate::error::{CalibError, Result};
use crate::formats::Format;
use crate::layers::{prune, unique_name, Layer, LayerOp};
use crate::onnx_file::{dtype, OnnxFile};
use crate::smoothquant::fold_into_weight;

/// Producers after which an FP8 activation quantiser gets a `Mul` by ones first: ONNX Runtime
/// 1.31 moves FP8 Q/DQ across these data-movement ops and then has no FLOAT8 kernel for them
/// (measured for Squeeze, Unsqueeze and Slice; Reshape, Transpose, Flatten and Concat are fine).
const FP8_BARRIER_AFTER: &[&str] = &[
    "Squeeze",
    "Unsqueeze",
    "Slice",
    "Gather",
    "GatherElements",
    "Expand",
    "Tile",
    "Split",
    "MaxPool",
    "Resize",
    "Pad",
    "SpaceToDepth",
    "DepthToSpace",
];

/// How one activation tensor is quantised.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActivationQuant {
    /// Clipping range of the (smoothed) activation; scale = amax / qmax.
    pub amax: f32,
    /// SmoothQuant factors per channel (the activation is divided by them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smooth: Option<Vec<f32>>,
}

/// What to quantise.
#[derive(Clone, Debug)]
pub struct QdqPlan<'a> {
    pub format: Format,
    /// Names of the layers and attention sites to quantise ([`Layer::name`],
    /// [`AttentionSite::name`]).
    pub layers: &'a BTreeSet<String>,
    /// The graph's attention sites (see [`crate::attention`]). FP8 Q/DQ on both inputs of a
    /// matmul load in ONNX Runtime 1.31 only with its Q/DQ fusions off.
    pub sites: &'a [AttentionSite],
    /// Per activation tensor (attention sites: per [`AttentionSite::inputs`] tensor).
    pub activations: &'a BTreeMap<String, ActivationQuant>,
}

/// The scales of one quantised weight.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WeightScales {
    /// Per-channel axis of the stored weight, or None for one per-tensor scale.
    pub axis: Option<usize>,
    pub scales: Vec<f32>,
}

/// The rewritten model and the scales it uses.
#[derive(Clone, Debug)]
pub struct QdqModel {
    pub proto: ModelProto,
    /// Per quantised layer.
    pub weights: BTreeMap<String, WeightScales>,
}

fn const_tensor(name: &str, data_type: i32, dims: &[usize], raw: Vec<u8>) -> TensorProto {
    TensorProto {
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type,
        name: name.to_string(),
        raw_data: raw,
        ..Default::default()
    }
}

fn f32_tensor(name: &str, dims: &[usize], v: &[f32]) -> TensorProto {
    const_tensor(name, dtype::FLOAT, dims, v.iter().flat_map(|x| x.to_le_bytes()).collect())
}

fn node(
    op: &str,
    name: String,
    inputs: Vec<String>,
    output: String,
    attrs: Vec<flux2_graphs::onnx::AttributeProto>,
) -> NodeProto {
    NodeProto {
        input: inputs,
        output: vec![output],
        name,
        op_type: op.into(),
        attribute: attrs,
        ..Default::default()
    }
}

/// Appends `input → QuantizeLinear → DequantizeLinear` with a per-tensor scale amax/qmax and
/// zero point 0 (own initializers, named after `tag`); returns the dequantised tensor.
fn push_qdq(
    out: &mut Vec<NodeProto>,
    inits: &mut Vec<TensorProto>,
    fresh: &mut dyn FnMut(String) -> String,
    input: &str,
    tag: &str,
    amax: f32,
    fmt: Format,
) -> String {
    let (dt, zp) = (fmt.onnx_type(), 0u8); // int8 0 and FP8 +0.0
    push_qdq_typed(out, inits, fresh, (input, tag), fmt.scale_for(amax), (dt, zp))
}

/// [`push_qdq`] with an explicit scale, element type and zero-point byte.
fn push_qdq_typed(
    out: &mut Vec<NodeProto>,
    inits: &mut Vec<TensorProto>,
    fresh: &mut dyn FnMut(String) -> String,
    (input, tag): (&str, &str),
    scale_value: f32,
    (dt, zp_byte): (i32, u8),
) -> String {
    let (scale, zp) = (fresh(format!("{tag}_scale")), fresh(format!("{tag}_zero_point")));
    inits.push(f32_tensor(&scale, &[], &[scale_value]));
    inits.push(const_tensor(&zp, dt, &[], vec![zp_byte]));
    let q = fresh(format!("{tag}_quantized"));
    let quantize = fresh(format!("{tag}_quantize"));
    out.push(node(
        "QuantizeLinear",
        quantize,
        vec![input.to_string(), scale.clone(), zp.clone()],
        q.clone(),
        vec![],
    ));
    let dq = fresh(format!("{tag}_dq"));
    out.push(node(
        "DequantizeLinear",
        fresh(format!("{tag}_dequantize")),
        vec![q, scale, zp],
        dq.clone(),
        vec![],
    ));
    dq
}

/// Zero point of the UINT8 activations of INT8 convolutions (see the module docs).
pub const CONV_ZERO_POINT: u8 = 128;

/// Q/DQ of an INT8 convolution's activation: UINT8, zero point [`CONV_ZERO_POINT`], scale
/// amax/127 (the INT8 range shifted by 128).
fn push_conv_qdq(
    out: &mut Vec<NodeProto>,
    inits: &mut Vec<TensorProto>,
    fresh: &mut dyn FnMut(String) -> String,
    input: &str,
    tag: &str,
    amax: f32,
) -> String {
    let scale = Format::Int8.scale_for(amax);
    push_qdq_typed(out, inits, fresh, (input, tag), scale, (dtype::UINT8, CONV_ZERO_POINT))
}

/// Quantises `w` (already in the layout the node uses) to `format`: bytes and scales.
pub fn quantize_weight(w: &[f32], shape: &[usize], format: Format, op: LayerOp) -> (Vec<u8>, WeightScales) {
    match format {
        Format::Fp8 => {
            let amax = w.iter().filter(|v| v.is_finite()).fold(0f32, |a, v| a.max(v.abs()));
            let s = format.scale_for(amax);
            (w.iter().map(|&v| format.encode(v, s)).collect(), WeightScales { axis: None, scales: vec![s] })
        }
        Format::Int8 => {
            // per output channel: MatMul (in, out) axis 1, Conv (out, ...) axis 0
            let (axis, channels) = match op {
                LayerOp::MatMul => (1, shape[1]),
                LayerOp::Conv => (0, shape[0]),
            };
            let channel_of = |i: usize| match op {
                LayerOp::MatMul => i % channels,
                LayerOp::Conv => i / (w.len() / channels),
            };
            let mut amax = vec![0f32; channels];
            for (i, v) in w.iter().enumerate() {
                if v.is_finite() {
                    let c = channel_of(i);
                    amax[c] = amax[c].max(v.abs());
                }
            }
            let scales: Vec<f32> = amax.iter().map(|&a| format.scale_for(a)).collect();
            let q = w.iter().enumerate().map(|(i, &v)| format.encode(v, scales[channel_of(i)])).collect();
            (q, WeightScales { axis: Some(axis), scales })
        }
    }
}

/// Inserts Q/DQ for `plan.layers` (a subset of `layers`) and prunes what became dead.
pub fn insert_qdq(file: &OnnxFile, layers: &[Layer], plan: &QdqPlan) -> Result<QdqModel> {
    check_opset(file, plan.format)?;
    let known = |n: &String| layers.iter().any(|l| &l.name == n) || plan.sites.iter().any(|s| &s.name == n);
    if let Some(missing) = plan.layers.iter().find(|n| !known(n)) {
        return Err(CalibError::Option {
            option: "layer selection".into(),
            msg: format!("no layer '{missing}' in the graph"),
        });
    }
    let sites: Vec<&AttentionSite> = plan.sites.iter().filter(|s| plan.layers.contains(&s.name)).collect();
    let chosen: HashSet<String> = sites.iter().map(|s| s.name.clone()).collect();
    let expanded = expand(file, plan.sites, Some(&chosen));
    let file = &expanded;
    // the products of the chosen sites: node -> (site, points of its two inputs)
    let mut products: HashMap<&str, (&AttentionSite, [Point; 2])> = HashMap::new();
    for s in &sites {
        products.insert(s.qk.as_str(), (s, [Point::Query, Point::KeyT]));
        products.insert(s.pv.as_str(), (s, [Point::Probs, Point::Value]));
    }
    let consts = Consts::new(file);
    let by_node: HashMap<&str, &Layer> =
        layers.iter().filter(|l| plan.layers.contains(&l.name)).map(|l| (l.node.as_str(), l)).collect();
    let mut taken: HashSet<String> =
        file.graph().node.iter().flat_map(|n| n.output.iter().cloned()).collect();
    taken.extend(file.graph().initializer.iter().map(|t| t.name.clone()));
    taken.extend(file.graph().input.iter().map(|t| t.name.clone()));
    let mut fresh = |want: String| unique_name(&want, '_', &mut taken);
    let fmt = plan.format;
    let zp_bytes = |n: usize| vec![0u8; n]; // int8 0 and FP8 +0.0 are both byte 0
    let mut out_nodes: Vec<NodeProto> = Vec::with_capacity(file.graph().node.len() + 4 * by_node.len());
    let mut new_inits: Vec<TensorProto> = Vec::new();
    let mut smoothed_acts: HashMap<String, String> = HashMap::new(); // activation -> smoothed name
    let mut weights = BTreeMap::new();
    for n in &file.graph().node {
        if let Some((site, points)) = products.get(n.name.as_str()) {
            let mut rewired = n.clone();
            for (slot, p) in points.iter().enumerate() {
                let t = site.input(*p);
                let aq = plan.activations.get(t).ok_or_else(|| CalibError::Stats {
                    name: t.to_string(),
                    msg: format!("no activation range for attention '{}'", site.name),
                })?;
                let tag = format!("{}.{}", site.name, p.label());
                rewired.input[slot] =
                    push_qdq(&mut out_nodes, &mut new_inits, &mut fresh, t, &tag, aq.amax, fmt);
            }
            out_nodes.push(rewired);
            continue;
        }
        let Some(layer) = by_node.get(n.name.as_str()) else {
            out_nodes.push(n.clone());
            continue;
        };
        let act = &layer.activation;
        let aq = plan.activations.get(act).ok_or_else(|| CalibError::Stats {
            name: act.clone(),
            msg: format!("no activation range for layer '{}'", layer.name),
        })?;
        if !smoothed_acts.contains_key(act) {
            let mut cur = act.clone();
            let producer = consts.producer(act).map(|p| p.op_type.as_str()).unwrap_or("");
            let barrier = fmt == Format::Fp8 && FP8_BARRIER_AFTER.contains(&producer);
            let factors: Option<Vec<f32>> = match &aq.smooth {
                Some(s) => Some(s.iter().map(|v| 1.0 / v).collect()),
                None if barrier => Some(vec![1.0; layer.in_channels()]),
                None => None,
            };
            if let Some(inv) = factors {
                if inv.len() != layer.in_channels() {
                    return Err(CalibError::Node {
                        node: n.name.clone(),
                        msg: format!(
                            "{} smoothing factors for {} input channels",
                            inv.len(),
                            layer.in_channels()
                        ),
                    });
                }
                let dims = if layer.op == LayerOp::Conv { vec![inv.len(), 1, 1] } else { vec![inv.len()] };
                let inv_name = fresh(format!("{act}.smooth_inv"));
                new_inits.push(f32_tensor(&inv_name, &dims, &inv));
                let smoothed = fresh(format!("{act}.smoothed"));
                out_nodes.push(node(
                    "Mul",
                    fresh(format!("{act}.smooth")),
                    vec![act.clone(), inv_name],
                    smoothed.clone(),
                    vec![],
                ));
                cur = smoothed;
            }
            smoothed_acts.insert(act.clone(), cur);
        }
        // a Q/DQ pair per consumer, with its own scale and zero-point initializers: ONNX
        // Runtime fuses DQ → MatMul only when the Q feeds that one DQ, and identical
        // initializer names would let common-subexpression elimination merge the pairs again
        let cur = smoothed_acts[act].clone();
        let tag = format!("{}.input", layer.name);
        let int8_conv = fmt == Format::Int8 && layer.op == LayerOp::Conv;
        let act_dq = if int8_conv {
            push_conv_qdq(&mut out_nodes, &mut new_inits, &mut fresh, &cur, &tag, aq.amax)
        } else {
            push_qdq(&mut out_nodes, &mut new_inits, &mut fresh, &cur, &tag, aq.amax, fmt)
        };

        let mut w = consts.eval(&layer.weight)?;
        if let Some(s) = &aq.smooth {
            fold_into_weight(&mut w, s, layer.op == LayerOp::Conv);
        }
        let (bytes, ws) = quantize_weight(&w.data, &w.shape, fmt, layer.op);
        let (wq, wscale, wzp) = (
            fresh(format!("{}.weight_quantized", layer.name)),
            fresh(format!("{}.weight_scale", layer.name)),
            fresh(format!("{}.weight_zero_point", layer.name)),
        );
        new_inits.push(const_tensor(&wq, fmt.onnx_type(), &w.shape, bytes));
        let nscale = ws.scales.len();
        let sdims: Vec<usize> = if ws.axis.is_some() { vec![nscale] } else { vec![] };
        new_inits.push(f32_tensor(&wscale, &sdims, &ws.scales));
        new_inits.push(const_tensor(&wzp, fmt.onnx_type(), &sdims, zp_bytes(nscale)));
        let w_dq = fresh(format!("{}.weight_dq", layer.name));
        let attrs = ws.axis.map(|a| vec![attr::int("axis", a as i64)]).unwrap_or_default();
        out_nodes.push(node(
            "DequantizeLinear",
            fresh(format!("{}.weight_dequantize", layer.name)),
            vec![wq, wscale, wzp],
            w_dq.clone(),
            attrs,
        ));
        weights.insert(layer.name.clone(), ws);
        let mut w_in = w_dq;
        if fmt == Format::Fp8 {
            // see the module docs: a same-shape Reshape keeps ONNX Runtime from fusing FP8 pairs
            let shape = fresh(format!("{}.weight_shape", layer.name));
            let dims: Vec<u8> = w.shape.iter().flat_map(|&d| (d as i64).to_le_bytes()).collect();
            new_inits.push(const_tensor(&shape, dtype::INT64, &[w.shape.len()], dims));
            let reshaped = fresh(format!("{}.weight_dq_reshaped", layer.name));
            out_nodes.push(node(
                "Reshape",
                fresh(format!("{}.weight_reshape", layer.name)),
                vec![w_in, shape],
                reshaped.clone(),
                vec![],
            ));
            w_in = reshaped;
        }

        let mut rewired = n.clone();
        rewired.input[0] = act_dq;
        rewired.input[1] = w_in;
        let out_range = plan
            .activations
            .get(&layer.output)
            .filter(|oq| int8_conv && !layer.output.is_empty() && oq.smooth.is_none());
        match out_range {
            Some(oq) => {
                // DQ(x), DQ(w) → Conv → Q: the group ONNX Runtime fuses into QLinearConv
                let float_out = fresh(format!("{}.conv_float", layer.output));
                rewired.output[0] = float_out.clone();
                out_nodes.push(rewired);
                let tag = format!("{}.output", layer.name);
                let dq = push_conv_qdq(&mut out_nodes, &mut new_inits, &mut fresh, &float_out, &tag, oq.amax);
                rename_last_output(&mut out_nodes, &dq, &layer.output);
            }
            None => out_nodes.push(rewired),
        }
    }
    let mut proto = file.proto.clone();
    let g = proto.graph.get_or_insert_with(Default::default);
    g.node = out_nodes;
    g.initializer.extend(new_inits);
    prune(g);
    Ok(QdqModel { proto, weights })
}

/// Renames the output `from` of the last node in `nodes` to `to`.
fn rename_last_output(nodes: &mut [NodeProto], from: &str, to: &str) {
    if let Some(o) = nodes.last_mut().and_then(|n| n.output.iter_mut().find(|o| o.as_str() == from)) {
        *o = to.to_string();
    }
}

/// Rewrites every UINT8 Q/DQ zero point of [`CONV_ZERO_POINT`] to INT8 zero point 0, which
/// TensorRT needs: the same levels and scale (q − 128), so the graph computes the same values.
/// Returns the number of zero points rewritten.
pub fn signed_activations(proto: &mut ModelProto) -> usize {
    let Some(g) = proto.graph.as_mut() else { return 0 };
    let zps: HashSet<String> = g
        .node
        .iter()
        .filter(|n| matches!(n.op_type.as_str(), "QuantizeLinear" | "DequantizeLinear"))
        .filter_map(|n| n.input.get(2).cloned())
        .collect();
    let mut count = 0;
    for t in g.initializer.iter_mut().filter(|t| zps.contains(&t.name)) {
        if t.data_type == dtype::UINT8 && t.raw_data.iter().all(|&b| b == CONV_ZERO_POINT) {
            t.data_type = dtype::INT8;
            t.raw_data.iter_mut().for_each(|b| *b = 0);
            count += 1;
        }
    }
    count
}

fn check_opset(file: &OnnxFile, format: Format) -> Result<()> {
    let opset = file
        .proto
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .unwrap_or(0);
    let need = match format {
        Format::Int8 => 13,
        Format::Fp8 => 19,
    };
    if opset < need {
        return Err(CalibError::BadModel {
            path: file.path.clone(),
            msg: format!(
                "opset {opset} is too old for {} Q/DQ (needs {need}); re-export the model",
                format.name()
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
#[path = "qdq_tests.rs"]
mod tests;
