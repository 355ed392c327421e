//! Damaging the files of a stopped node, as disks and crashes do: a flipped bit or a zeroed
//! block in a WAL segment or the page file, a cut WAL tail. Every helper says what it did.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use rand::Rng;

const SEGMENT_HEADER: usize = 512;
const PAGE: usize = 4096;

/// The WAL segments of a stopped node, oldest first, with the end of what was written in
/// each (segments are preallocated with zeros).
pub fn wal_segments(dir: &Path) -> Vec<(PathBuf, usize)> {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    segs.sort();
    segs.into_iter()
        .filter_map(|p| {
            let b = std::fs::read(&p).unwrap();
            let end = b.iter().rposition(|&x| x != 0)? + 1;
            (end > SEGMENT_HEADER).then_some((p, end))
        })
        .collect()
}

/// A random (segment, offset) inside the written log.
fn wal_spot(dir: &Path, rng: &mut impl Rng) -> Option<(PathBuf, usize)> {
    let segs = wal_segments(dir);
    let (path, end) = segs.get(rng.gen_range(0..segs.len().max(1)))?.clone();
    Some((path, rng.gen_range(SEGMENT_HEADER..end)))
}

pub fn flip_wal_bit(dir: &Path, rng: &mut impl Rng) -> String {
    let Some((path, at)) = wal_spot(dir, rng) else {
        return "no WAL to damage".into();
    };
    let mut b = std::fs::read(&path).unwrap();
    let bit = rng.gen_range(0..8);
    b[at] ^= 1 << bit;
    std::fs::write(&path, b).unwrap();
    format!("flipped bit {bit} at byte {at} of {}", path.display())
}

pub fn zero_wal_block(dir: &Path, rng: &mut impl Rng) -> String {
    let Some((path, at)) = wal_spot(dir, rng) else {
        return "no WAL to damage".into();
    };
    let mut b = std::fs::read(&path).unwrap();
    let end = (at + PAGE).min(b.len());
    b[at..end].fill(0);
    std::fs::write(&path, b).unwrap();
    format!("zeroed bytes {at}..{end} of {}", path.display())
}

/// Zeroes the last 1..=`max` written bytes of the newest segment (a torn or lost tail).
pub fn cut_wal_tail(dir: &Path, rng: &mut impl Rng, max: usize) -> String {
    let Some((path, end)) = wal_segments(dir).pop() else {
        return "no WAL to cut".into();
    };
    let n = rng.gen_range(1..=max.min(end - SEGMENT_HEADER));
    let mut b = std::fs::read(&path).unwrap();
    b[end - n..end].fill(0);
    std::fs::write(&path, b).unwrap();
    format!("cut the last {n} bytes of {}", path.display())
}

/// Flips a bit of a written page (not the meta page) of the page file.
pub fn flip_page_bit(dir: &Path, rng: &mut impl Rng) -> String {
    let path = dir.join("pages.db");
    let mut b = std::fs::read(&path).unwrap();
    let written: Vec<usize> = (1..b.len() / PAGE)
        .filter(|&i| b[i * PAGE..(i + 1) * PAGE].iter().any(|&x| x != 0))
        .collect();
    if written.is_empty() {
        return "no page to damage".into();
    }
    let page = written[rng.gen_range(0..written.len())];
    let at = page * PAGE + rng.gen_range(64..PAGE);
    let bit = rng.gen_range(0..8);
    b[at] ^= 1 << bit;
    std::fs::write(&path, b).unwrap();
    format!("flipped bit {bit} of page {page} in {}", path.display())
}

/// The leaf pages of a page file's bytes (page type 3 at byte 4 of the header).
pub fn leaf_pages(bytes: &[u8]) -> Vec<usize> {
    (1..bytes.len() / PAGE)
        .filter(|&i| bytes[i * PAGE + 4] == 3)
        .collect()
}

/// Flips one bit in a leaf a third of the way through the page file of a node — running
/// or not: written in place, as bit rot is — and returns the leaf's page number.
pub fn rot_leaf(dir: &Path) -> usize {
    use std::os::unix::fs::FileExt;
    let path = dir.join("pages.db");
    let bytes = std::fs::read(&path).unwrap();
    let leaves = leaf_pages(&bytes);
    let leaf = leaves[leaves.len() / 3];
    let at = leaf * PAGE + 3000;
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&[bytes[at] ^ 0x04], at as u64).unwrap();
    leaf
}
