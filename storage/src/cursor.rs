//! A position in the tree: the path of (page, slot) from the root to a leaf cell. Moving past
//! the end of a leaf climbs the path and descends into the next subtree, so ordered scans in
//! both directions need no sibling links.

use std::ops::Bound;

use crate::btree::{self, node_kind, MAX_DEPTH};
use crate::error::{Error, Result};
use crate::node::{self, KeyRef, ValRef};
use crate::page::PageKind;
use crate::pager::PageSource;
use crate::types::PageId;

#[derive(Clone, Debug)]
pub(crate) struct Cursor {
    /// Branch levels hold the child index taken; the last element is (leaf, cell index).
    stack: Vec<(PageId, usize)>,
    valid: bool,
}

impl Cursor {
    /// The first entry inside `lower` (or the first entry of all when unbounded).
    pub fn seek_first<S: PageSource>(src: &S, root: PageId, lower: Bound<&[u8]>) -> Result<Cursor> {
        let mut c = Cursor {
            stack: Vec::with_capacity(8),
            valid: true,
        };
        let mut id = root;
        loop {
            c.check_depth(id)?;
            let p = src.page(id)?;
            match node_kind(p, id)? {
                PageKind::Branch => {
                    let ci = match lower {
                        Bound::Unbounded => 0,
                        Bound::Included(k) | Bound::Excluded(k) => btree::search_branch(src, p, k)?,
                    };
                    c.stack.push((id, ci));
                    id = node::child(p, ci);
                }
                _ => {
                    let i = match lower {
                        Bound::Unbounded => 0,
                        Bound::Included(k) => btree::search_leaf(src, p, k)?.unwrap_or_else(|i| i),
                        Bound::Excluded(k) => match btree::search_leaf(src, p, k)? {
                            Ok(i) => i + 1,
                            Err(i) => i,
                        },
                    };
                    let n = node::count(p);
                    c.stack.push((id, i));
                    if i >= n {
                        c.next(src)?;
                    }
                    return Ok(c);
                }
            }
        }
    }

    /// The last entry inside `upper` (or the last entry of all when unbounded).
    pub fn seek_last<S: PageSource>(src: &S, root: PageId, upper: Bound<&[u8]>) -> Result<Cursor> {
        let mut c = Cursor {
            stack: Vec::with_capacity(8),
            valid: true,
        };
        let mut id = root;
        loop {
            c.check_depth(id)?;
            let p = src.page(id)?;
            match node_kind(p, id)? {
                PageKind::Branch => {
                    let ci = match upper {
                        Bound::Unbounded => node::count(p),
                        Bound::Included(k) | Bound::Excluded(k) => btree::search_branch(src, p, k)?,
                    };
                    c.stack.push((id, ci));
                    id = node::child(p, ci);
                }
                _ => {
                    // `end` = number of cells inside the bound; the entry is end - 1.
                    let end = match upper {
                        Bound::Unbounded => node::count(p),
                        Bound::Included(k) => match btree::search_leaf(src, p, k)? {
                            Ok(i) => i + 1,
                            Err(i) => i,
                        },
                        Bound::Excluded(k) => btree::search_leaf(src, p, k)?.unwrap_or_else(|i| i),
                    };
                    if end == 0 {
                        c.stack.push((id, 0));
                        c.prev(src)?;
                    } else {
                        c.stack.push((id, end - 1));
                    }
                    return Ok(c);
                }
            }
        }
    }

    fn check_depth(&self, id: PageId) -> Result<()> {
        if self.stack.len() > MAX_DEPTH {
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
    pub fn position(&self) -> (PageId, usize) {
        *self.stack.last().expect("cursor has a leaf")
    }

    pub fn entry<'a, S: PageSource>(&self, src: &'a S) -> Result<(KeyRef<'a>, ValRef<'a>)> {
        let (id, i) = self.position();
        let p = src.page(id)?;
        Ok(node::leaf_entry(p, i))
    }

    /// Moves to the next entry; the cursor becomes invalid past the last one.
    pub fn next<S: PageSource>(&mut self, src: &S) -> Result<()> {
        let (leaf, i) = self.position();
        if i + 1 < node::count(src.page(leaf)?) {
            self.stack.last_mut().expect("leaf").1 = i + 1;
            return Ok(());
        }
        // Climb to the first ancestor with a child to the right, then take its leftmost path.
        self.stack.pop();
        loop {
            let Some(&mut (bid, ref mut ci)) = self.stack.last_mut() else {
                self.valid = false;
                return Ok(());
            };
            let p = src.page(bid)?;
            if *ci < node::count(p) {
                *ci += 1;
                let mut id = node::child(p, *ci);
                loop {
                    self.check_depth(id)?;
                    let p = src.page(id)?;
                    if node_kind(p, id)? == PageKind::Branch {
                        self.stack.push((id, 0));
                        id = node::child(p, 0);
                    } else {
                        self.stack.push((id, 0));
                        if node::count(p) == 0 {
                            // Only an empty root leaf has no cells; keep moving.
                            return self.next(src);
                        }
                        return Ok(());
                    }
                }
            }
            self.stack.pop();
        }
    }

    /// Moves to the previous entry; the cursor becomes invalid before the first one.
    pub fn prev<S: PageSource>(&mut self, src: &S) -> Result<()> {
        let (_, i) = self.position();
        if i > 0 {
            self.stack.last_mut().expect("leaf").1 = i - 1;
            return Ok(());
        }
        self.stack.pop();
        loop {
            let Some(&mut (bid, ref mut ci)) = self.stack.last_mut() else {
                self.valid = false;
                return Ok(());
            };
            if *ci > 0 {
                *ci -= 1;
                let p = src.page(bid)?;
                let mut id = node::child(p, *ci);
                loop {
                    self.check_depth(id)?;
                    let p = src.page(id)?;
                    let n = node::count(p);
                    if node_kind(p, id)? == PageKind::Branch {
                        self.stack.push((id, n));
                        id = node::child(p, n);
                    } else {
                        if n == 0 {
                            self.stack.push((id, 0));
                            return self.prev(src);
                        }
                        self.stack.push((id, n - 1));
                        return Ok(());
                    }
                }
            }
            self.stack.pop();
        }
    }
}
