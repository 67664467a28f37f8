//! MT19937 as torch's CPU generator runs it (`at::mt19937`): seeded from the low 32 bits of the seed.

const STATE_N: usize = 624;
const STATE_M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

/// The 32-bit Mersenne Twister; `torch.Generator("cpu").manual_seed(seed)` keeps only `seed & 0xffff_ffff`.
#[derive(Clone)]
pub(crate) struct Mt19937 {
    state: [u32; STATE_N],
    next: usize,
}

impl Mt19937 {
    pub(crate) fn new(seed: u64) -> Self {
        let mut state = [0u32; STATE_N];
        // Truncation is the point: torch's engine stores `seed & 0xffffffff` as the first word.
        state[0] = (seed & 0xffff_ffff) as u32;
        for j in 1..STATE_N {
            let prev = state[j - 1];
            state[j] = 1_812_433_253u32.wrapping_mul(prev ^ (prev >> 30)).wrapping_add(j as u32);
        }
        Self { state, next: STATE_N }
    }

    pub(crate) fn next_u32(&mut self) -> u32 {
        if self.next >= STATE_N {
            self.regenerate();
        }
        let mut y = self.state[self.next];
        self.next += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// Two draws combined the way torch's `random64()` does: the first draw is the high word.
    pub(crate) fn next_u64(&mut self) -> u64 {
        let hi = u64::from(self.next_u32());
        let lo = u64::from(self.next_u32());
        (hi << 32) | lo
    }

    fn regenerate(&mut self) {
        for i in 0..STATE_N {
            let y = (self.state[i] & UPPER_MASK) | (self.state[(i + 1) % STATE_N] & LOWER_MASK);
            let mag = if y & 1 == 1 { MATRIX_A } else { 0 };
            self.state[i] = self.state[(i + STATE_M) % STATE_N] ^ (y >> 1) ^ mag;
        }
        self.next = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_mt19937_outputs() {
        // std::mt19937 with the default seed 5489: the 10000th output is 4123659995 (C++ standard).
        let mut mt = Mt19937::new(5489);
        let first = mt.next_u32();
        assert_eq!(first, 3_499_211_612);
        let mut last = first;
        for _ in 1..10_000 {
            last = mt.next_u32();
        }
        assert_eq!(last, 4_123_659_995);
    }

    #[test]
    fn seeds_above_u32_use_the_low_word() {
        let mut a = Mt19937::new(7);
        let mut b = Mt19937::new((1u64 << 32) + 7);
        assert_eq!(a.next_u64(), b.next_u64());
    }
}
