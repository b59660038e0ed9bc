//! Graph-structure snapshots of the released FLUX.2 VAE (flux2-arch.md §1.2, §4): the
//! contract of each graph, its op mix and its parameter count. A change here is a change
//! of the exported model and must be deliberate.

use flux2_graphs::models::vae::{build_decoder, build_encoder, VaeConfig};
use flux2_graphs::{DType, Target};

/// Encoder + decoder weights cover the released checkpoint exactly: 110 + 142 tensors, with
/// the two BN statistics shared, plus the unused `bn.num_batches_tracked` = 251 keys; and
/// 34,426,112 + 49,620,515 − 256 (shared BN) + 1 = 84,046,372 elements (flux2-arch.md §1.2).
#[test]
fn vae_weights_match_the_released_key_and_element_counts() {
    let enc = build_encoder(&VaeConfig::flux2(), Target::Ort, DType::F32).unwrap();
    let dec = build_decoder(&VaeConfig::flux2(), Target::Ort, DType::F32).unwrap();
    let mut names: Vec<&str> = enc.weights.iter().chain(&dec.weights).map(|w| w.name.as_str()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len() + 1, 251);
    let count =
        |m: &flux2_graphs::Model| m.weights.iter().map(|w| w.shape.iter().product::<usize>()).sum::<usize>();
    assert_eq!(count(&enc) + count(&dec) - 256 + 1, 84_046_372);
}

#[test]
fn vae_encoder_structure() {
    let m = build_encoder(&VaeConfig::flux2(), Target::Ort, DType::F32).unwrap();
    let want = "\
in  image: f32 [B,3,H,W]
out latents: f32 [B,128,H/16,W/16]
weights 110 (34426112 parameters)
ops Add:38 Attention:1 Conv:28 Div:1 Gather:1 InstanceNormalization:22 MatMul:4 Mul:43 Pad:3 Reshape:92 Shape:23 Sigmoid:21 Slice:1 SpaceToDepth:1 Sqrt:1 Squeeze:1 Sub:1 Transpose:6 Unsqueeze:3
";
    assert_eq!(normalise(&m.summary()), normalise(want), "\n{}", m.summary());
}

#[test]
fn vae_decoder_structure() {
    let m = build_decoder(&VaeConfig::flux2(), Target::Ort, DType::F32).unwrap();
    let want = "\
in  latents: f32 [B,128,h,w]
out image: f32 [B,3,16*h,16*w]
weights 142 (49620515 parameters)
ops Add:51 Attention:1 Conv:36 DepthToSpace:1 InstanceNormalization:30 MatMul:4 Mul:60 Reshape:124 Resize:3 Shape:31 Sigmoid:29 Sqrt:1 Squeeze:1 Transpose:6 Unsqueeze:3
";
    assert_eq!(normalise(&m.summary()), normalise(want), "\n{}", m.summary());
}

/// The op list sorted, so the snapshot does not depend on its order.
fn normalise(s: &str) -> Vec<String> {
    s.lines()
        .map(|l| match l.strip_prefix("ops ") {
            Some(ops) => {
                let mut v: Vec<&str> = ops.split(' ').filter(|o| !o.ends_with(":0")).collect();
                v.sort();
                format!("ops {}", v.join(" "))
            }
            None => l.to_string(),
        })
        .collect()
}
