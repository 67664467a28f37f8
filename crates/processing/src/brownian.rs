//! Brownian-tree noise for the SDE samplers, as A1111 draws it: k-diffusion's `BrownianTreeNoiseSampler`
//! with one `torchsde.BrownianTree` per image seed over [σ_min, σ_max] (a `BrownianInterval` with
//! `halfway_tree`, tolerance 1e-6, entropy pool 24, no Lévy area), its normals from torch's CPU generator
//! seeded through numpy's `SeedSequence`.
//!
//! The tree is implicit: an interval's increment depends only on its path from the top (fixed halfway
//! splits, seeds from the path's spawn key and depth), so a query walks that path instead of keeping nodes.

use crate::denoiser::Tensor;
use crate::error::{Error, Result};
use crate::rng::{CpuKernel, RandomSource, randn};
use crate::sampling::NoiseSource;

const POOL_SIZE: usize = 24;
/// `BrownianTree`'s tolerance 1e-6: interval ends are rounded to 6 decimals.
const DECIMALS: i32 = 6;

/// numpy's `SeedSequence(entropy, spawn_key=…, pool_size=24).generate_state(n)` (32-bit words).
fn seed_sequence_state(entropy: u64, spawn_key: &[u64], words: usize) -> Vec<u32> {
    const INIT_A: u32 = 0x43b0_d7e5;
    const MULT_A: u32 = 0x931e_8875;
    const INIT_B: u32 = 0x8b51_f9dd;
    const MULT_B: u32 = 0x58f3_8ded;
    const MIX_MULT_L: u32 = 0xca01_f9dd;
    const MIX_MULT_R: u32 = 0x4973_f715;
    fn to_words(n: u64) -> Vec<u32> {
        if n == 0 {
            return vec![0];
        }
        let mut words = Vec::new();
        let mut n = n;
        while n > 0 {
            words.push(n as u32);
            n >>= 32;
        }
        words
    }
    let hashmix = |value: u32, hash: &mut u32| {
        let mut value = value ^ *hash;
        *hash = hash.wrapping_mul(MULT_A);
        value = value.wrapping_mul(*hash);
        value ^ (value >> 16)
    };
    let mix = |x: u32, y: u32| {
        let result = MIX_MULT_L.wrapping_mul(x).wrapping_sub(MIX_MULT_R.wrapping_mul(y));
        result ^ (result >> 16)
    };
    let mut entropy_words = to_words(entropy);
    let spawn: Vec<u32> = spawn_key.iter().flat_map(|&k| to_words(k)).collect();
    if !spawn.is_empty() && entropy_words.len() < POOL_SIZE {
        entropy_words.resize(POOL_SIZE, 0);
    }
    entropy_words.extend(spawn);
    let mut hash = INIT_A;
    let mut pool: Vec<u32> =
        (0..POOL_SIZE).map(|i| hashmix(entropy_words.get(i).copied().unwrap_or(0), &mut hash)).collect();
    for src in 0..POOL_SIZE {
        for dst in 0..POOL_SIZE {
            if src != dst {
                let hashed = hashmix(pool[src], &mut hash);
                pool[dst] = mix(pool[dst], hashed);
            }
        }
    }
    for &word in entropy_words.iter().skip(POOL_SIZE) {
        for slot in pool.iter_mut() {
            let hashed = hashmix(word, &mut hash);
            *slot = mix(*slot, hashed);
        }
    }
    let mut hash = INIT_B;
    (0..words)
        .map(|i| {
            let mut value = pool[i % POOL_SIZE] ^ hash;
            hash = hash.wrapping_mul(MULT_B);
            value = value.wrapping_mul(hash);
            value ^ (value >> 16)
        })
        .collect()
}

/// Python's `round(x, 6)`: the nearest double to x's correctly rounded 6-decimal form.
fn round6(x: f64) -> f64 {
    format!("{x:.prec$}", prec = DECIMALS as usize).parse().unwrap_or(x)
}

/// One image's Brownian motion on [t0, t1].
#[derive(Debug, Clone)]
struct BrownianTree {
    entropy: u64,
    shape: Vec<usize>,
    start: f64,
    end: f64,
    /// The increment over the whole interval.
    top: Tensor,
}

impl BrownianTree {
    fn new(entropy: u64, shape: &[usize], t0: f64, t1: f64) -> Self {
        let seeds = seed_sequence_state(entropy, &[], 3);
        let top = Self::normal(shape, seeds[0]).mapv(|v| v * ((t1 - t0).sqrt() as f32));
        Self { entropy, shape: shape.to_vec(), start: round6(t0), end: round6(t1), top }
    }

    fn normal(shape: &[usize], seed: u32) -> Tensor {
        randn(RandomSource::Cpu(CpuKernel::default()), u64::from(seed), shape)
    }

    /// W(tb) − W(ta): the sum of the canonical intervals covering [ta, tb], left to right.
    fn increment(&self, ta: f64, tb: f64) -> Tensor {
        // torchsde clamps queries into [t0, t1] (with a warning), then rounds them to the tolerance.
        let clamp = |t: f64| t.clamp(self.start, self.end);
        let (ta, tb) = (round6(clamp(ta)), round6(clamp(tb)));
        if ta == tb {
            return Tensor::zeros(self.top.raw_dim());
        }
        let mut pieces = Vec::new();
        self.locate(Node { start: self.start, end: self.end, key: 0, depth: 0 }, ta, tb, &mut pieces);
        let mut total: Option<Tensor> = None;
        for node in pieces {
            let w = self.node_increment(&node);
            total = Some(match total {
                Some(sum) => sum + &w,
                None => w,
            });
        }
        total.unwrap_or_else(|| Tensor::zeros(self.top.raw_dim()))
    }

    /// `_loc`: the tree nodes that exactly cover [ta, tb], splitting every node at its (rounded) half.
    fn locate(&self, node: Node, ta: f64, tb: f64, out: &mut Vec<Node>) {
        if ta == node.start && tb == node.end {
            out.push(node);
            return;
        }
        let (left, right) = node.children();
        if left.end <= node.start || left.end >= node.end {
            // The interval is too short to split at the tolerance: it is the answer.
            out.push(node);
            return;
        }
        let middle = left.end;
        if tb <= middle {
            self.locate(left, ta, tb, out);
        } else if ta >= middle {
            self.locate(right, ta, tb, out);
        } else {
            self.locate(left, ta, middle, out);
            self.locate(right, middle, tb, out);
        }
    }

    /// A node's increment from its path: at each split the left part is a Brownian bridge sample
    /// (mean ℓ·W/h, variance ℓ·r/h) drawn with the parent's `W_seed`, the right part the rest.
    fn node_increment(&self, target: &Node) -> Tensor {
        let mut node = Node { start: self.start, end: self.end, key: 0, depth: 0 };
        let mut w = self.top.clone();
        while node.depth < target.depth {
            let (left, right) = node.children();
            let middle = left.end;
            let h_reciprocal = 1.0 / (node.end - node.start);
            let (left_diff, right_diff) = (middle - node.start, node.end - middle);
            let seed = seed_sequence_state(self.entropy, &[node.key, node.depth], 4)[0];
            let noise = Self::normal(&self.shape, seed);
            let std = (left_diff * right_diff * h_reciprocal).sqrt() as f32;
            let (a, b) = (left_diff as f32, h_reciprocal as f32);
            let mut left_w = w.mapv(|v| (a * v) * b);
            ndarray::Zip::from(&mut left_w).and(&noise).for_each(|l, &n| *l += std * n);
            // The target lies in exactly one child at every level of its path.
            if target.end <= middle {
                w = left_w;
                node = left;
            } else {
                w = &w - &left_w;
                node = right;
            }
        }
        w
    }
}

/// A node of the halfway tree: its interval and its `SeedSequence` spawn key and depth.
#[derive(Debug, Clone, Copy)]
struct Node {
    start: f64,
    end: f64,
    key: u64,
    depth: u64,
}

impl Node {
    fn children(&self) -> (Node, Node) {
        let middle = round6(0.5 * (self.end + self.start));
        let depth = self.depth + 1;
        (
            Node { start: self.start, end: middle, key: 2 * self.key, depth },
            Node { start: middle, end: self.end, key: 2 * self.key + 1, depth },
        )
    }
}

/// k-diffusion's `BrownianTreeNoiseSampler` with one tree per image seed: the noise for a step from σ to
/// σ_next is (W(σ_next) − W(σ)) / √|σ_next − σ|, standard normal and consistent across step sizes.
#[derive(Debug, Clone)]
pub struct BrownianNoise {
    trees: Vec<BrownianTree>,
}

impl BrownianNoise {
    /// Trees over [σ_min, σ_max] (A1111: the schedule's smallest non-zero σ and its largest) for `seeds`, each
    /// image's latent of `shape` (`[C, h, w]`).
    pub fn new(seeds: &[u64], shape: [usize; 3], sigma_min: f64, sigma_max: f64) -> Result<Self> {
        if !(sigma_min > 0.0 && sigma_max > sigma_min && sigma_max.is_finite()) {
            return Err(Error::InvalidParameter {
                field: "sigmas",
                problem: format!("a Brownian tree needs 0 < σ_min < σ_max, got {sigma_min} and {sigma_max}"),
            });
        }
        // A1111's σ are float32.
        let (t0, t1) = (f64::from(sigma_min as f32), f64::from(sigma_max as f32));
        Ok(Self { trees: seeds.iter().map(|&seed| BrownianTree::new(seed, &shape, t0, t1)).collect() })
    }
}

impl NoiseSource for BrownianNoise {
    fn noise(&mut self, sigma: f64, sigma_next: f64, like: &Tensor) -> Result<Tensor> {
        let (s, n) = (sigma as f32, sigma_next as f32);
        let (t0, t1, sign) = if s < n { (s, n, 1.0f32) } else { (n, s, -1.0f32) };
        let scale = (t1 - t0).abs().sqrt();
        let rows: Vec<Tensor> = self
            .trees
            .iter()
            .map(|tree| tree.increment(f64::from(t0), f64::from(t1)).mapv(|v| v * sign / scale))
            .collect();
        let views: Vec<_> = rows.iter().map(|r| r.view()).collect();
        let stacked = ndarray::stack(ndarray::Axis(0), &views).map_err(|_| Error::Shape {
            stage: "processing::brownian",
            tensor: "noise",
            found: like.shape().to_vec(),
            expected: "one latent per seed".into(),
        })?;
        if stacked.shape() != like.shape() {
            return Err(Error::Shape {
                stage: "processing::brownian",
                tensor: "latent",
                found: like.shape().to_vec(),
                expected: format!("{:?} (one Brownian tree per seed)", stacked.shape()),
            });
        }
        Ok(stacked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_rounding_to_six_decimals() {
        assert_eq!(round6(0.1234565), 0.123456, "the double below the tie rounds down, as in Python");
        assert_eq!(round6(14.614642), 14.614642);
    }

    #[test]
    fn increments_add_up_and_scale_like_brownian_motion() {
        let tree = BrownianTree::new(42, &[1, 8, 8], 0.03, 14.6);
        let whole = tree.increment(0.5, 9.0);
        let parts = tree.increment(0.5, 3.25) + tree.increment(3.25, 9.0);
        let gap = whole.iter().zip(parts.iter()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(gap < 1e-4, "W(0.5, 9) = W(0.5, 3.25) + W(3.25, 9): {gap}");
        let var = whole.iter().map(|v| v * v).sum::<f32>() / whole.len() as f32;
        assert!((var / 8.5 - 1.0).abs() < 0.5, "variance ≈ the interval's length: {var}");
    }
}
