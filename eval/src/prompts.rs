//! Seeded captions of a vocabulary: colour, shape and background drawn uniformly (background
//! among the colours other than the shape's) from a splitmix64 stream, so a seed names the same
//! prompt list on every machine.

use crate::vocabulary::{Caption, Vocabulary};

/// splitmix64: a tiny, well-mixed 64-bit generator.
#[derive(Clone, Debug)]
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> SplitMix {
        SplitMix(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (n ≥ 1), by rejection (no modulo bias).
    pub fn below(&mut self, n: usize) -> usize {
        let n = n.max(1) as u64;
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let v = self.next_u64();
            if v < zone {
                return (v % n) as usize;
            }
        }
    }
}

/// `n` captions drawn from `seed`.
pub fn captions(vocab: &Vocabulary, n: usize, seed: u64) -> Vec<Caption> {
    let colors = vocab.color_names();
    let shapes = vocab.shape_kinds();
    let mut rng = SplitMix::new(seed);
    (0..n)
        .map(|_| {
            let color = colors[rng.below(colors.len())];
            let shape = shapes[rng.below(shapes.len())];
            let others: Vec<&str> = colors.iter().copied().filter(|c| *c != color).collect();
            let background = others[rng.below(others.len())];
            Caption { color: color.to_string(), shape, background: background.to_string() }
        })
        .collect()
}
