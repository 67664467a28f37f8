//! A1111's seed handling: `-1` means random, and the per-image seeds and subseeds of a batch.

use std::hash::{BuildHasher, Hasher};

use crate::{Error, Result};

/// A1111 draws random seeds with `random.randrange(4294967294)`.
const RANDOM_SEED_BOUND: u64 = 4_294_967_294;

/// A1111's `get_fixed_seed`: `-1` becomes a random seed in `[0, 4294967294)`; other values are kept.
/// `field` names the request field (`seed`, `subseed`) for the error on other negative values.
pub fn fixed_seed(seed: i64, field: &'static str) -> Result<u64> {
    match seed {
        -1 => Ok(random_seed()),
        s if s < 0 => Err(Error::InvalidParameter {
            field,
            problem: format!("{s} is negative; use -1 for a random seed or a value from 0 to 18446744073709551615"),
        }),
        s => Ok(s.unsigned_abs()),
    }
}

/// A random seed in `[0, 4294967294)`, from the operating system's hash keys (no RNG crate needed).
pub fn random_seed() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64),
    );
    hasher.finish() % RANDOM_SEED_BOUND
}

/// Seeds and subseeds of `count` images starting at image `first` of a job (A1111's `all_seeds` /
/// `all_subseeds`): seed + i unless a variation strength is set (then every image keeps the seed), and
/// subseed + i always.
pub fn batch_seeds(
    seed: u64,
    subseed: u64,
    subseed_strength: f32,
    first: usize,
    count: usize,
) -> Result<(Vec<u64>, Vec<u64>)> {
    let offset = |base: u64, i: usize, field: &'static str| {
        base.checked_add(i as u64).ok_or(Error::InvalidParameter {
            field,
            problem: format!("{base} + image index {i} overflows 64 bits; use a smaller seed"),
        })
    };
    let mut seeds = Vec::with_capacity(count);
    let mut subseeds = Vec::with_capacity(count);
    for i in first..first + count {
        seeds.push(if subseed_strength == 0.0 { offset(seed, i, "seed")? } else { seed });
        subseeds.push(offset(subseed, i, "subseed")?);
    }
    Ok((seeds, subseeds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minus_one_is_random_in_a1111_range_and_other_negatives_error() {
        for _ in 0..100 {
            assert!(fixed_seed(-1, "seed").unwrap() < RANDOM_SEED_BOUND);
        }
        assert_eq!(fixed_seed(42, "seed").unwrap(), 42);
        assert!(matches!(fixed_seed(-2, "seed"), Err(Error::InvalidParameter { field: "seed", .. })));
    }

    #[test]
    fn variation_keeps_the_seed_and_advances_subseeds() {
        assert_eq!(batch_seeds(10, 20, 0.0, 0, 3).unwrap(), (vec![10, 11, 12], vec![20, 21, 22]));
        assert_eq!(batch_seeds(10, 20, 0.5, 2, 2).unwrap(), (vec![10, 10], vec![22, 23]));
        assert!(batch_seeds(u64::MAX, 0, 0.0, 0, 2).is_err());
    }
}
