//! A fixed, portable random number generator: xoshiro256++ seeded through splitmix64
//! (Blackman & Vigna, <https://prng.di.unimi.it/xoshiro256plusplus.c>,
//! <https://prng.di.unimi.it/splitmix64.c>). Integer-only, so a seed gives the same stream on
//! every machine and every Rust version; `rand`'s `StdRng` promises neither.

/// xoshiro256++ state.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

/// One splitmix64 step: advances `state` and returns the mixed output.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    /// The generator for `seed`: four splitmix64 outputs fill the state (never all zero).
    pub fn new(seed: u64) -> Self {
        let mut sm = seed;
        Self { s: [splitmix64(&mut sm), splitmix64(&mut sm), splitmix64(&mut sm), splitmix64(&mut sm)] }
    }

    /// The generator with its raw state set, for checking against the reference code.
    pub fn from_state(s: [u64; 4]) -> Self {
        Self { s }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// A uniform draw from the open interval (0, 1): the top 52 bits k give (k + ½)·2⁻⁵², so
    /// the extremes are 2⁻⁵³ and 1 − 2⁻⁵³, both exact, and 0 and 1 never occur.
    pub fn open01(&mut self) -> f64 {
        const SCALE: f64 = 1.0 / (1u64 << 52) as f64;
        ((self.next_u64() >> 12) as f64 + 0.5) * SCALE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_reference_xoshiro256plusplus() {
        // State {1, 2, 3, 4}: first output rotl(1 + 4, 23) + 1; the rest follow the C code.
        let mut r = Rng::from_state([1, 2, 3, 4]);
        let got: Vec<u64> = (0..4).map(|_| r.next_u64()).collect();
        assert_eq!(got, [41943041, 58720359, 3588806011781223, 3591011842654386]);
    }

    #[test]
    fn splitmix_matches_reference() {
        // splitmix64 from seed 0: the published first output.
        let mut s = 0u64;
        assert_eq!(splitmix64(&mut s), 0xE220_A839_7B1D_CDAF);
    }

    #[test]
    fn open01_stays_inside() {
        let mut r = Rng::new(7);
        for _ in 0..10_000 {
            let u = r.open01();
            assert!(u > 0.0 && u < 1.0);
        }
        // The extreme draws are exact and strictly inside.
        let scale = 1.0 / (1u64 << 52) as f64;
        assert_eq!(((u64::MAX >> 12) as f64 + 0.5) * scale, 1.0 - f64::EPSILON / 2.0);
        assert_eq!(0.5 * scale, f64::EPSILON / 2.0);
    }
}
