//! Deterministic random weights for a synthetic checkpoint, one independent stream per tensor.
//!
//! * **Bits**: counter-based SplitMix64 (Steele, Lea & Flood 2014), keyed by the seed and the
//!   FNV-1a hash of the tensor name, so a tensor's values do not depend on which other tensors
//!   exist or the order they are written in.
//! * **Gaussians**: Box–Muller in float64 with the pure-Rust `libm` (no platform maths), rounded
//!   to float32: the same seed gives the same bytes on every machine.
//! * **Scales** keep activations O(1) through a randomly initialised network: matrices and
//!   convolutions N(0, 1/fan_in), token embeddings N(0, 1), norm weights 1 + 0.1·N(0, 1), biases
//!   0.02·N(0, 1), BatchNorm running statistics mean 0.1·N(0, 1) and variance exp(0.2·N(0, 1)).

const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// `n` standard-normal float32 values of the stream (`seed`, `name`).
pub fn gaussians(seed: u64, name: &str, n: usize) -> Vec<f32> {
    const TWO_POW_M53: f64 = 1.0 / (1u64 << 53) as f64;
    let key = mix64(mix64(seed) ^ fnv1a(name));
    let word = |j: u64| mix64(key.wrapping_add(j.wrapping_add(1).wrapping_mul(GAMMA)));
    let mut out = Vec::with_capacity(n + 1);
    for k in 0..n.div_ceil(2) as u64 {
        let u1 = ((word(2 * k) >> 11) + 1) as f64 * TWO_POW_M53; // (0, 1]
        let u2 = (word(2 * k + 1) >> 11) as f64 * TWO_POW_M53; // [0, 1)
        let r = libm::sqrt(-2.0 * libm::log(u1));
        let theta = 2.0 * std::f64::consts::PI * u2;
        out.push((r * libm::cos(theta)) as f32);
        out.push((r * libm::sin(theta)) as f32);
    }
    out.truncate(n);
    out
}

/// How a tensor is initialised, from its name and shape.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// N(0, 1/fan_in): linear (out, in) and conv (out, in, kh, kw) weights.
    FanIn(usize),
    /// N(0, 1): token embeddings.
    Embedding,
    /// 1 + 0.1·N(0, 1): norm scales.
    Norm,
    /// 0.02·N(0, 1).
    Bias,
    /// 0.1·N(0, 1): BatchNorm running mean.
    RunningMean,
    /// exp(0.2·N(0, 1)): BatchNorm running variance (positive).
    RunningVar,
}

/// The initialisation rule of tensor `name` with `shape`.
pub fn init_for(name: &str, shape: &[usize]) -> Init {
    if name.ends_with("running_mean") {
        Init::RunningMean
    } else if name.ends_with("running_var") {
        Init::RunningVar
    } else if name.ends_with("embed_tokens.weight") {
        Init::Embedding
    } else if name.ends_with(".bias") {
        Init::Bias
    } else if shape.len() >= 2 {
        Init::FanIn(shape[1..].iter().product::<usize>().max(1))
    } else {
        Init::Norm
    }
}

/// The float32 values of tensor `name`.
pub fn values(seed: u64, name: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let z = gaussians(seed, name, n);
    let map = |f: &dyn Fn(f32) -> f32| z.iter().map(|&v| f(v)).collect();
    match init_for(name, shape) {
        Init::FanIn(fan_in) => {
            let s = (1.0 / fan_in as f64).sqrt() as f32;
            map(&|v| v * s)
        }
        Init::Embedding => z,
        Init::Norm => map(&|v| 1.0 + 0.1 * v),
        Init::Bias => map(&|v| 0.02 * v),
        Init::RunningMean => map(&|v| 0.1 * v),
        Init::RunningVar => map(&|v| libm::expf(0.2 * v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_per_name_and_prefix_stable() {
        let a = gaussians(7, "x.weight", 1001);
        assert_eq!(a[..10], gaussians(7, "x.weight", 10)[..]);
        assert_ne!(a[..10], gaussians(7, "y.weight", 10)[..]);
        assert_ne!(a[..10], gaussians(8, "x.weight", 10)[..]);
        let mean = a.iter().map(|&v| v as f64).sum::<f64>() / a.len() as f64;
        let var = a.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / a.len() as f64;
        assert!(mean.abs() < 0.1 && (var - 1.0).abs() < 0.15, "mean {mean}, var {var}");
    }

    #[test]
    fn rules() {
        assert_eq!(init_for("a.to_q.weight", &[8, 16]), Init::FanIn(16));
        assert_eq!(init_for("conv_in.weight", &[8, 3, 3, 3]), Init::FanIn(27));
        assert_eq!(init_for("model.embed_tokens.weight", &[512, 64]), Init::Embedding);
        assert_eq!(init_for("attn.norm_q.weight", &[64]), Init::Norm);
        assert_eq!(init_for("conv_in.bias", &[8]), Init::Bias);
        assert_eq!(init_for("bn.running_var", &[128]), Init::RunningVar);
        assert!(values(1, "bn.running_var", &[64]).iter().all(|&v| v > 0.0));
    }
}
