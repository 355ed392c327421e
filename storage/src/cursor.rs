//! A position in the tree: the path of branch pages from the root, plus the current leaf
//! and cell. Moving past the end of a leaf climbs the path and descends into the next
//! subtree, so ordered scans in both directions need no sibling links.

use std::ops::Bound;

use crate::btree::{self, node_kind, MAX_DEPTH};
use crate::error::{Error, Result};
use crate::node::{self, KeyRef, ValRef};
use crate::page::{self, PageKind};
use crate::pager::PageSource;
use crate::types::PageId;

#[derive(Clone, Debug)]
pub(crate) struct Cursor<'a> {
    /// Branch pages from the root down, each with the index of the child taken.
    path: Vec<(PageId, usize)>,
    leaf_id: PageId,
    /// The bytes of the current leaf, so stepping within it does not look the page up again.
    leaf: &'a [u8],
    count: usize,
    idx: usize,
    valid: bool,
}

/// Which end of a subtree a descent lands on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    First,
    Last,
}

impl<'a> Cursor<'a> {
    fn empty() -> Cursor<'a> {
        Cursor {
            path: Vec::with_capacity(8),
            leaf_id: PageId::NONE,
            leaf: &[],
            count: 0,
            idx: 0,
            valid: true,
        }
    }

    /// The first entry inside `lower` (or the first entry of all when unbounded).
    pub fn seek_first<S: PageSource>(
        src: &'a S,
        root: PageId,
        lower: Bound<&[u8]>,
    ) -> Result<Cursor<'a>> {
        let mut c = Cursor::empty();
        let mut id = root;
        loop {
            c.check_depth(id)?;
            let p = src.page(id)?;
            if node_kind(p, id)? == PageKind::Branch {
                let ci = match lower {
                    Bound::Unbounded => 0,
                    Bound::Included(k) | Bound::Excluded(k) => btree::search_branch(src, p, k)?,
                };
                c.path.push((id, ci));
                id = node::child(p, ci);
                continue;
            }
            let i = match lower {
                Bound::Unbounded => 0,
                Bound::Included(k) => btree::search_leaf(src, p, k)?.unwrap_or_else(|i| i),
                Bound::Excluded(k) => match btree::search_leaf(src, p, k)? {
                    Ok(i) => i + 1,
                    Err(i) => i,
                },
            };
            c.set_leaf(id, p, i);
            if i >= c.count {
                c.next_leaf(src, End::First)?;
            }
            return Ok(c);
        }
    }

    /// The last entry inside `upper` (or the last entry of all when unbounded).
    pub fn seek_last<S: PageSource>(
        src: &'a S,
        root: PageId,
        upper: Bound<&[u8]>,
    ) -> Result<Cursor<'a>> {
        let mut c = Cursor::empty();
        let mut id = root;
        loop {
            c.check_depth(id)?;
            let p = src.page(id)?;
            if node_kind(p, id)? == PageKind::Branch {
                let ci = match upper {
                    Bound::Unbounded => node::count(p),
                    Bound::Included(k) | Bound::Excluded(k) => btree::search_branch(src, p, k)?,
                };
                c.path.push((id, ci));
                id = node::child(p, ci);
                continue;
            }
            // `end` = number of cells inside the bound; the entry is end - 1.
            let end = match upper {
                Bound::Unbounded => node::count(p),
                Bound::Included(k) => match btree::search_leaf(src, p, k)? {
                    Ok(i) => i + 1,
                    Err(i) => i,
                },
                Bound::Excluded(k) => btree::search_leaf(src, p, k)?.unwrap_or_else(|i| i),
            };
            c.set_leaf(id, p, end.saturating_sub(1));
            if end == 0 {
                c.next_leaf(src, End::Last)?;
            }
            return Ok(c);
        }
    }

    fn set_leaf(&mut self, id: PageId, p: &'a [u8], idx: usize) {
        self.leaf_id = id;
        self.leaf = p;
        self.count = node::count(p);
        self.idx = idx;
        for i in 1..PREFETCH_DISTANCE {
            self.prefetch_cell(idx + i);
            self.prefetch_cell(idx.wrapping_sub(i));
        }
    }

    /// Starts loading cell `i` of the current leaf, if there is one.
    #[inline]
    fn prefetch_cell(&self, i: usize) {
        if i < self.count {
            page::prefetch(&self.leaf[node::slot(self.leaf, i)..]);
        }
    }

    fn check_depth(&self, id: PageId) -> Result<()> {
        if self.path.len() > MAX_DEPTH {
            return Err(Error::corrupt(
                id,
                "tree deeper than any valid tree (a cycle?)",
            ));
        }
        Ok(())
    }

    pub fn is_valid(&self) -> bool {
        self.valid
    }

    /// (leaf page, cell index) of the current entry.
    #[inline]
    pub fn position(&self) -> (PageId, usize) {
        (self.leaf_id, self.idx)
    }

    #[inline]
    pub fn entry(&self) -> (KeyRef<'a>, ValRef<'a>) {
        node::leaf_entry(self.leaf, self.idx)
    }

    /// Moves to the next entry; the cursor becomes invalid past the last one.
    #[inline]
    pub fn next<S: PageSource>(&mut self, src: &'a S) -> Result<()> {
        if self.idx + 1 < self.count {
            self.idx += 1;
            self.prefetch_cell(self.idx + PREFETCH_DISTANCE);
            return Ok(());
        }
        self.next_leaf(src, End::First)
    }

    /// Moves to the previous entry; the cursor becomes invalid before the first one.
    #[inline]
    pub fn prev<S: PageSource>(&mut self, src: &'a S) -> Result<()> {
        if self.idx > 0 && self.idx <= self.count {
            self.idx -= 1;
            self.prefetch_cell(self.idx.wrapping_sub(PREFETCH_DISTANCE));
            return Ok(());
        }
        self.next_leaf(src, End::Last)
    }

    /// Leaves the current leaf for the neighbouring one in direction `to` (First = forward,
    /// landing on its first entry; Last = backward, landing on its last). Empty leaves (only
    /// an empty root can be one) are skipped.
    fn next_leaf<S: PageSource>(&mut self, src: &'a S, to: End) -> Result<()> {
        loop {
            // Climb to the first ancestor with a child on the wanted side.
            let (bid, ci) = loop {
                let Some(&(bid, ci)) = self.path.last() else {
                    self.valid = false;
                    return Ok(());
                };
                let p = src.page(bid)?;
                let n = node::count(p);
                match to {
                    End::First if ci < n => break (bid, ci + 1),
                    End::Last if ci > 0 => break (bid, ci - 1),
                    _ => {
                        self.path.pop();
                    }
                }
            };
            self.path.last_mut().expect("ancestor on the path").1 = ci;
            let mut id = node::child(src.page(bid)?, ci);
            loop {
                self.check_depth(id)?;
                let p = src.page(id)?;
                let n = node::count(p);
                if node_kind(p, id)? == PageKind::Branch {
                    let ci = if to == End::First { 0 } else { n };
                    self.path.push((id, ci));
                    id = node::child(p, ci);
                } else {
                    self.set_leaf(
                        id,
                        p,
                        if to == End::First {
                            0
                        } else {
                            n.saturating_sub(1)
                        },
                    );
                    break;
                }
            }
            if self.count > 0 {
                return Ok(());
            }
        }
    }
}

/// How many cells ahead a scan asks for. Cells sit in a leaf in insertion order, not key
/// order, so the hardware prefetcher cannot follow a scan; asking a few cells ahead overlaps
/// their cache misses instead of taking them one at a time.
const PREFETCH_DISTANCE: usize = 8;
