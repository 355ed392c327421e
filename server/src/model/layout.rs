//! Where each piece of the data model lives in the one B+tree: the first byte of an engine
//! key names its space, and the rest orders it (docs/data-model.md draws them).
//!
//! ```text
//! 0x00 'n'                                   → u64 LE: the number of keys (DBSIZE)
//! 0x00 'v'                                   → u64 LE: the last collection version given out
//! 0x00 'e'                                   → u64 LE: the number of keys with an expiry
//! 0x00 'f'                                   → the data model's format ("replidb-data 1")
//! 0x01 at_ms(u64 BE) key                     → ∅   expiry index: keys by deadline
//! 0x02 version(u64 BE) kind key              → ∅   a deleted collection's members to collect
//! 0x10 key                                   → metadata (+ a string's value)
//! 0x11 klen(u16 BE) key version(u64 BE) sub  → a member: hash field → value, set member → ∅,
//!                                              zset member → score, list index(u64 BE) → item
//! 0x12 klen(u16 BE) key version(u64 BE) score(8, ordered) member → ∅   zset by score
//! ```

use std::ops::Bound;

pub const COUNT_KEY: &[u8] = b"\x00n";
pub const VERSION_KEY: &[u8] = b"\x00v";
pub const EXPIRES_KEY: &[u8] = b"\x00e";
pub const FORMAT_KEY: &[u8] = b"\x00f";
pub const FORMAT: &[u8] = b"replidb-data 1";
pub const EXPIRY: u8 = 0x01;
pub const GARBAGE: u8 = 0x02;
pub const META: u8 = 0x10;
pub const SUB: u8 = 0x11;
pub const SCORE: u8 = 0x12;

/// The longest user key (SPEC: 8 KiB).
pub const MAX_USER_KEY: usize = 8 * 1024;
/// The longest value (SPEC: 64 MiB); the engine's limit leaves room for the metadata.
pub const MAX_USER_VALUE: usize = 64 * 1024 * 1024;
/// The longest member, field or lexicographic bound a collection takes: a composite key
/// (prefix, key, version, score, member) must fit the engine's key limit.
pub const MAX_MEMBER: usize = storage::MAX_KEY - MAX_USER_KEY - 32;

pub fn meta_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(META);
    k.extend_from_slice(key);
    k
}

/// The user key of a metadata key.
pub fn user_key(meta: &[u8]) -> &[u8] {
    &meta[1..]
}

/// The range of every metadata key (the keyspace), from `after` (exclusive) on.
pub fn meta_bounds(after: Option<&[u8]>) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let lo = match after {
        Some(k) => Bound::Excluded(meta_key(k)),
        None => Bound::Included(vec![META]),
    };
    (lo, Bound::Excluded(vec![META + 1]))
}

/// `space klen key version`: the prefix of every member of one collection version.
pub fn prefix(space: u8, key: &[u8], version: u64) -> Vec<u8> {
    prefix_and_room(space, key, version, 16)
}

/// The prefix in a vector with room for `more` bytes after it (a whole key in one
/// allocation).
fn prefix_and_room(space: u8, key: &[u8], version: u64, more: usize) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + 2 + key.len() + 8 + more);
    k.push(space);
    // User keys are at most MAX_USER_KEY bytes: the length fits a u16.
    k.extend_from_slice(&(key.len() as u16).to_be_bytes());
    k.extend_from_slice(key);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

pub fn sub_key(key: &[u8], version: u64, sub: &[u8]) -> Vec<u8> {
    let mut k = prefix_and_room(SUB, key, version, sub.len());
    k.extend_from_slice(sub);
    k
}

pub fn score_key(key: &[u8], version: u64, score: f64, member: &[u8]) -> Vec<u8> {
    let mut k = prefix_and_room(SCORE, key, version, 8 + member.len());
    k.extend_from_slice(&score_bytes(score));
    k.extend_from_slice(member);
    k
}

/// The bounds of every key starting with `p`.
pub fn prefix_bounds(p: &[u8]) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    (Bound::Included(p.to_vec()), prefix_end(p))
}

/// The smallest key greater than every key starting with `p`.
pub fn prefix_end(p: &[u8]) -> Bound<Vec<u8>> {
    let mut e = p.to_vec();
    while let Some(last) = e.pop() {
        if last < 0xff {
            e.push(last + 1);
            return Bound::Excluded(e);
        }
    }
    Bound::Unbounded
}

pub fn expiry_key(at_ms: u64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + key.len());
    k.push(EXPIRY);
    k.extend_from_slice(&at_ms.to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// (deadline, user key) of an expiry index key.
pub fn parse_expiry_key(k: &[u8]) -> Option<(u64, &[u8])> {
    let at = u64::from_be_bytes(k.get(1..9)?.try_into().ok()?);
    Some((at, &k[9..]))
}

pub fn garbage_key(version: u64, kind: u8, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(10 + key.len());
    k.push(GARBAGE);
    k.extend_from_slice(&version.to_be_bytes());
    k.push(kind);
    k.extend_from_slice(key);
    k
}

/// (version, kind, user key) of a garbage marker.
pub fn parse_garbage_key(k: &[u8]) -> Option<(u64, u8, &[u8])> {
    let v = u64::from_be_bytes(k.get(1..9)?.try_into().ok()?);
    Some((v, *k.get(9)?, &k[10..]))
}

/// A score as 8 bytes whose byte order is the numeric order (sign bit flipped for
/// positives, every bit for negatives). -0.0 is stored as 0.0.
pub fn score_bytes(s: f64) -> [u8; 8] {
    let s = if s == 0.0 { 0.0 } else { s };
    let b = s.to_bits();
    let o = if b >> 63 == 0 { b | (1 << 63) } else { !b };
    o.to_be_bytes()
}

pub fn score_from(b: &[u8]) -> Option<f64> {
    let o = u64::from_be_bytes(b.get(..8)?.try_into().ok()?);
    let b = if o >> 63 == 1 { o & !(1 << 63) } else { !o };
    Some(f64::from_bits(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_sort_as_numbers() {
        let xs = [
            f64::NEG_INFINITY,
            -1e300,
            -2.5,
            -1.0,
            -f64::MIN_POSITIVE,
            0.0,
            f64::MIN_POSITIVE,
            1.0,
            1.5,
            1e300,
            f64::INFINITY,
        ];
        for w in xs.windows(2) {
            assert!(score_bytes(w[0]) < score_bytes(w[1]), "{} < {}", w[0], w[1]);
        }
        for x in xs {
            assert_eq!(score_from(&score_bytes(x)), Some(x));
        }
        assert_eq!(score_bytes(-0.0), score_bytes(0.0));
    }

    #[test]
    fn prefix_end_is_past_every_extension() {
        assert_eq!(prefix_end(b"a\xff"), Bound::Excluded(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), Bound::Unbounded);
        assert_eq!(prefix_end(b"ab"), Bound::Excluded(b"ac".to_vec()));
    }

    #[test]
    fn index_keys_round_trip() {
        let k = expiry_key(77, b"user:1");
        assert_eq!(parse_expiry_key(&k), Some((77, &b"user:1"[..])));
        let g = garbage_key(9, 3, b"z");
        assert_eq!(parse_garbage_key(&g), Some((9, 3, &b"z"[..])));
        assert!(parse_expiry_key(b"\x01\x00").is_none());
    }
}
