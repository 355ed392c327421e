//! Shared workload generators for replidb's benches, so every engine in a comparison runs on
//! the same keys in the same order.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// `n` distinct random 8-byte keys (big-endian u64s), in random order, from a fixed seed.
pub fn random_keys(n: usize, seed: u64) -> Vec<[u8; 8]> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut set = std::collections::HashSet::with_capacity(n);
    let mut keys = Vec::with_capacity(n);
    while keys.len() < n {
        let k: u64 = rng.gen();
        if set.insert(k) {
            keys.push(k.to_be_bytes());
        }
    }
    keys
}

/// A 100-byte value derived from a key (cheap, and different per key).
pub fn value_for(key: &[u8; 8]) -> [u8; 100] {
    let mut v = [0u8; 100];
    for (i, b) in v.iter_mut().enumerate() {
        *b = key[i % 8].wrapping_add(i as u8);
    }
    v
}

/// The same keys in another random order (lookups should not follow insertion order).
pub fn shuffled(keys: &[[u8; 8]], seed: u64) -> Vec<[u8; 8]> {
    let mut v = keys.to_vec();
    v.shuffle(&mut StdRng::seed_from_u64(seed));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_distinct_and_repeatable() {
        let a = random_keys(10_000, 1);
        let b = random_keys(10_000, 1);
        assert_eq!(a, b);
        let set: std::collections::HashSet<_> = a.iter().collect();
        assert_eq!(set.len(), a.len());
        assert_ne!(value_for(&a[0]), value_for(&a[1]));
    }
}
