//! A small PRNG with explicit, serialisable state.
//!
//! `rand`'s `StdRng` does not promise a stable algorithm across versions, and
//! checkpoints must resume bit-identically forever, so the algorithm is fixed
//! here: xoshiro256** seeded through SplitMix64 (the authors' recommendation).

/// SplitMix64: used to expand a 64-bit seed into a full xoshiro state and to
/// derive independent streams from hashes.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.next_f32()
    }
}

/// xoshiro256**: the stream that is part of a generation's checkpointed state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Xoshiro256 {
    s: [u64; 4],
}

impl Xoshiro256 {
    pub fn seed_from_u64(seed: u64) -> Self {
        let mut sm = SplitMix64(seed);
        let s = [sm.next_u64(), sm.next_u64(), sm.next_u64(), sm.next_u64()];
        Self::from_state(s)
    }

    /// Restores a state; the all-zero state (a fixed point) is replaced by a
    /// valid one so garbage input cannot produce a stuck generator.
    pub fn from_state(s: [u64; 4]) -> Self {
        if s == [0; 4] {
            return Self::seed_from_u64(0);
        }
        Self { s }
    }

    pub fn state(&self) -> [u64; 4] {
        self.s
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Zero-mean, unit-variance noise from one draw: the sum of two 24-bit
    /// uniforms (a triangular distribution), cheap and close enough to
    /// Gaussian for a latent that is smoothed every step.
    #[inline]
    pub fn noise(&mut self) -> f32 {
        const SCALE: f32 = 1.0 / (1u32 << 24) as f32;
        // sqrt(6): the variance of (a + b - 1) for uniform a, b is 1/6.
        const NORM: f32 = 2.449_489_7;
        let r = self.next_u64();
        let a = (r >> 40) as f32 * SCALE;
        let b = ((r >> 8) & 0xFF_FFFF) as f32 * SCALE;
        (a + b - 1.0) * NORM
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xoshiro_reference_vector() {
        // Reference output of xoshiro256** for state [1, 2, 3, 4].
        let mut r = Xoshiro256::from_state([1, 2, 3, 4]);
        let got: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
        assert_eq!(got, vec![11520, 0, 1509978240]);
    }

    #[test]
    fn splitmix_reference_vector() {
        let mut s = SplitMix64(0);
        assert_eq!(s.next_u64(), 0xE220_A839_7B1D_CDAF);
    }

    #[test]
    fn noise_is_roughly_standard() {
        let mut r = Xoshiro256::seed_from_u64(7);
        let n = 100_000;
        let (mut sum, mut sq) = (0.0f64, 0.0f64);
        for _ in 0..n {
            let v = r.noise() as f64;
            sum += v;
            sq += v * v;
        }
        let mean = sum / n as f64;
        let var = sq / n as f64 - mean * mean;
        assert!(mean.abs() < 0.02, "mean {mean}");
        assert!((var - 1.0).abs() < 0.03, "var {var}");
    }

    #[test]
    fn zero_state_is_replaced() {
        let mut r = Xoshiro256::from_state([0; 4]);
        assert_ne!(r.next_u64(), r.next_u64());
    }
}
