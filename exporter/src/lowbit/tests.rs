//! Site selection and graph rewrite on built graphs (no checkpoint needed).

use flux2_graphs::models::dit::{build_transformer, DitConfig};
use flux2_graphs::{DType, Target};

use super::*;

fn tiny_dit() -> Model {
    let mut c = DitConfig::klein_4b();
    (c.num_layers, c.num_single_layers) = (1, 1);
    (c.num_attention_heads, c.attention_head_dim) = (2, 32);
    c.joint_attention_dim = 64;
    c.axes_dims_rope = vec![8, 8, 8, 8];
    build_transformer(&c, Target::Ort, DType::F32).expect("tiny DiT graph")
}

#[test]
fn dit_policy_keeps_embedders_modulation_and_final_layer_float() {
    let m = tiny_dit();
    let lo = LowbitOptions::fixed(Bits::Int4, 32, false);
    let sites = plan(&m, "transformer", &lo);
    let names: Vec<&str> = sites.iter().map(|s| s.weight.as_str()).collect();
    for kept in ["x_embedder.weight", "context_embedder.weight", "proj_out.weight", "norm_out.linear.weight"]
    {
        assert!(!names.contains(&kept), "{kept} quantised");
    }
    assert!(!names.iter().any(|n| n.contains("modulation") || n.starts_with("time_guidance_embed")));
    for q in [
        "transformer_blocks.0.attn.to_q.weight",
        "transformer_blocks.0.ff.linear_in.weight",
        "single_transformer_blocks.0.attn.to_qkv_mlp_proj.weight",
        "single_transformer_blocks.0.attn.to_out.weight",
    ] {
        assert!(names.contains(&q), "{q} not quantised: {names:?}");
    }
    let all = plan(&m, "transformer", &LowbitOptions { include_all: true, ..lo });
    assert_eq!(all.len(), count_linears(&m, "transformer"));
    assert!(all.len() > sites.len());
    assert!(plan(&m, "vae_decoder", &lo).is_empty());
}

#[test]
fn rewrite_puts_a_blocked_dequantize_in_place_of_each_transpose() {
    let m = tiny_dit();
    let lo = LowbitOptions::fixed(Bits::Int8, 32, false);
    let sites = plan(&m, "transformer", &lo);
    let mut g = m.proto.graph.clone().expect("graph");
    let before = g.node.len();
    rewrite(&mut g, &sites, Target::Ort);
    assert_eq!(g.node.len(), before);
    let dq: Vec<_> = g.node.iter().filter(|n| n.op_type == "DequantizeLinear").collect();
    assert_eq!(dq.len(), sites.len());
    for n in &dq {
        let a: Vec<(&str, i64)> = n.attribute.iter().map(|a| (a.name.as_str(), a.i)).collect();
        assert_eq!(a, vec![("axis", 0), ("block_size", 32)]);
        let reader = g.node.iter().find(|m| m.input.contains(&n.output[0])).expect("a reader");
        assert_eq!(reader.op_type, "MatMul");
        assert_eq!(reader.input[1], n.output[0]);
    }
    // TensorRT INT8: per output channel
    let mut g = m.proto.graph.clone().expect("graph");
    rewrite(&mut g, &sites, Target::TensorRt);
    let n = g.node.iter().find(|n| n.op_type == "DequantizeLinear").expect("a DQ");
    assert_eq!(n.attribute.len(), 1);
    assert_eq!((n.attribute[0].name.as_str(), n.attribute[0].i), ("axis", 1));
    let (_, sd) = dims(&sites[0], Target::TensorRt);
    assert_eq!(sd, vec![sites[0].n]);
}
