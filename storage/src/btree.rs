//! B+tree searches shared by readers and the writer.

use std::borrow::Cow;
use std::cmp::Ordering;

use crate::error::{Error, Result};
use crate::node::{self, KeyRef, ValRef, KEY_LOCAL};
use crate::overflow;
use crate::page::{self, PageKind};
use crate::pager::PageSource;
use crate::types::PageId;

/// Deeper than any real tree (fan-out >= 4 and at most 2^64 pages): a deeper walk means a
/// cycle in a corrupt file.
pub const MAX_DEPTH: usize = 40;

/// The kind of a tree page, or `Corrupt` if it is not a branch or leaf.
#[inline]
pub fn node_kind(p: &[u8], id: PageId) -> Result<PageKind> {
    match page::kind(p) {
        Some(k @ (PageKind::Branch | PageKind::Leaf)) => Ok(k),
        _ => Err(Error::corrupt(id, "expected a branch or leaf page")),
    }
}

/// The whole key a cell refers to.
pub fn load_key<'a, S: PageSource>(src: &'a S, k: KeyRef<'a>) -> Result<Cow<'a, [u8]>> {
    if !k.is_long() {
        return Ok(Cow::Borrowed(k.local));
    }
    let mut v = Vec::with_capacity(k.len);
    v.extend_from_slice(k.local);
    overflow::read_chain(src, k.ovf, k.len - KEY_LOCAL, &mut v)?;
    Ok(Cow::Owned(v))
}

pub fn load_value<'a, S: PageSource>(src: &'a S, v: ValRef<'a>) -> Result<Cow<'a, [u8]>> {
    match v {
        ValRef::Inline(b) => Ok(Cow::Borrowed(b)),
        ValRef::Heap(r) => {
            let mut out = Vec::new();
            crate::heap::read(src, r, &mut out)?;
            Ok(Cow::Owned(out))
        }
    }
}

/// Orders the stored key `k` against `probe`, reading a long key's tail only when its local
/// prefix does not decide.
#[inline]
pub fn cmp_key<S: PageSource>(src: &S, k: KeyRef<'_>, probe: &[u8]) -> Result<Ordering> {
    if !k.is_long() {
        return Ok(k.local.cmp(probe));
    }
    let m = k.local.len().min(probe.len());
    match k.local[..m].cmp(&probe[..m]) {
        Ordering::Equal if probe.len() <= k.local.len() => Ok(Ordering::Greater),
        Ordering::Equal => Ok(load_key(src, k)?.as_ref().cmp(probe)),
        o => Ok(o),
    }
}

/// How `probe` compares with every key of the page, as far as the prefix they all share
/// decides: `Equal` if the probe has that prefix too (its heads then order it).
#[inline]
fn against_prefix(p: &[u8], kind: PageKind, probe: &[u8], skip: usize) -> Ordering {
    if skip == 0 {
        return Ordering::Equal;
    }
    let prefix = node::shared_prefix(p, kind);
    if probe.len() < prefix.len() {
        // Shorter than the prefix: before every key if it is a prefix of it.
        return probe.cmp(&prefix[..probe.len()]).then(Ordering::Less);
    }
    probe[..prefix.len()].cmp(prefix)
}

/// Starts loading the slot array of a node of `count` cells, all its lines at once: the
/// binary search below then waits for memory about once instead of once a probe. (The
/// header's line, read for the count, holds the first slots.)
#[inline]
fn prefetch_slots(p: &[u8], count: usize) {
    page::prefetch_range(
        p,
        page::HEADER_SIZE + 64,
        page::HEADER_SIZE + count * node::SLOT,
    );
}

/// Leaf search: `Ok(Ok(i))` if slot `i` holds `probe`, `Ok(Err(i))` for the insertion slot.
pub fn search_leaf<S: PageSource>(src: &S, p: &[u8], probe: &[u8]) -> Result<Result<usize, usize>> {
    let (mut lo, mut hi) = (0, node::count(p));
    prefetch_slots(p, hi);
    let skip = node::head_skip(p);
    match against_prefix(p, PageKind::Leaf, probe, skip) {
        Ordering::Less => return Ok(Err(0)),
        Ordering::Greater => return Ok(Err(hi)),
        Ordering::Equal => {}
    }
    let ph = node::key_head(probe, skip);
    while lo < hi {
        let mid = (lo + hi) / 2;
        let h = node::head(p, mid);
        let ord = if h != ph {
            h.cmp(&ph)
        } else {
            cmp_key(src, node::key_at(p, node::slot(p, mid)), probe)?
        };
        match ord {
            Ordering::Less => lo = mid + 1,
            Ordering::Greater => hi = mid,
            Ordering::Equal => return Ok(Ok(mid)),
        }
    }
    Ok(Err(lo))
}

/// Branch search: the index of the child whose range holds `probe` (the number of
/// separators <= probe).
pub fn search_branch<S: PageSource>(src: &S, p: &[u8], probe: &[u8]) -> Result<usize> {
    let (mut lo, mut hi) = (0, node::count(p));
    prefetch_slots(p, hi);
    let skip = node::head_skip(p);
    match against_prefix(p, PageKind::Branch, probe, skip) {
        Ordering::Less => return Ok(0),
        Ordering::Greater => return Ok(hi),
        Ordering::Equal => {}
    }
    let ph = node::key_head(probe, skip);
    while lo < hi {
        let mid = (lo + hi) / 2;
        let h = node::head(p, mid);
        let ord = if h != ph {
            h.cmp(&ph)
        } else {
            cmp_key(src, node::key_at(p, node::slot(p, mid) + 8), probe)?
        };
        if ord == Ordering::Greater {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Ok(lo)
}

/// Point lookup.
pub fn get<'a, S: PageSource>(
    src: &'a S,
    root: PageId,
    key: &[u8],
) -> Result<Option<Cow<'a, [u8]>>> {
    let mut id = root;
    for _ in 0..MAX_DEPTH {
        let p = src.page(id)?;
        match node_kind(p, id)? {
            PageKind::Branch => {
                let ci = search_branch(src, p, key)?;
                id = node::child(p, ci);
            }
            _ => {
                return match search_leaf(src, p, key)? {
                    Ok(i) => {
                        let (_, v) = node::leaf_entry(p, i);
                        Ok(Some(load_value(src, v)?))
                    }
                    Err(_) => Ok(None),
                };
            }
        }
    }
    Err(Error::corrupt(
        root,
        "tree deeper than any valid tree (a cycle?)",
    ))
}
