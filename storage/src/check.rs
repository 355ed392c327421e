//! Whole-database integrity check: every invariant of the tree and the page file, walked
//! from the meta page. Used by tests after every step and by operators (`Db::check_integrity`).

use std::cmp::Ordering;
use std::collections::BTreeMap;

use crate::btree::{load_key, node_kind, MAX_DEPTH};
use crate::error::{Error, Result};
use crate::freelist;
use crate::heap::{self, HeapRef};
use crate::node::{self, ValRef, KEY_LOCAL, MIN_FILL};
use crate::overflow;
use crate::page::{self, PageKind, PAGE_SIZE};
use crate::pager::PageSource;
use crate::types::PageId;

/// What the check found (when it found nothing wrong).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IntegrityReport {
    pub page_count: u64,
    pub branch_pages: u64,
    pub leaf_pages: u64,
    pub overflow_pages: u64,
    /// Pages of the value heap, and the bytes of values on them.
    pub heap_pages: u64,
    pub heap_bytes: u64,
    pub free_pages: u64,
    pub depth: usize,
    pub entries: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Owner {
    Unseen,
    Tree,
    Overflow,
    Heap,
    Free,
}

struct Checker<'a, S: PageSource> {
    src: &'a S,
    owner: Vec<Owner>,
    report: IntegrityReport,
    leaf_depth: Option<usize>,
    /// Bytes of referenced heap values on each heap page.
    heap: BTreeMap<PageId, usize>,
}

fn fail(msg: String) -> Error {
    Error::Invariant(msg)
}

pub(crate) fn check<S: PageSource>(src: &S, meta: &page::Meta) -> Result<IntegrityReport> {
    let mut c = Checker {
        src,
        owner: vec![Owner::Unseen; meta.page_count as usize],
        report: IntegrityReport {
            page_count: meta.page_count,
            ..Default::default()
        },
        leaf_depth: None,
        heap: BTreeMap::new(),
    };
    c.owner[0] = Owner::Tree;
    c.node(meta.root, None, None, 0, true)?;
    c.heap_pages(meta.heap_tail)?;
    if (c.report.heap_pages, c.report.heap_bytes) != (meta.heap_pages, meta.heap_live) {
        return Err(fail(format!(
            "meta counts {} heap pages holding {} live bytes, the heap has {} holding {}",
            meta.heap_pages, meta.heap_live, c.report.heap_pages, c.report.heap_bytes
        )));
    }
    for id in freelist::walk(src, meta.freelist_head, meta.page_count)? {
        c.claim(id, Owner::Free)?;
        c.report.free_pages += 1;
    }
    if c.report.free_pages != meta.free_count {
        return Err(fail(format!(
            "meta counts {} free pages, the free list holds {}",
            meta.free_count, c.report.free_pages
        )));
    }
    if c.report.entries != meta.entries {
        return Err(fail(format!(
            "meta counts {} entries, the tree holds {}",
            meta.entries, c.report.entries
        )));
    }
    if let Some(i) = c.owner.iter().position(|o| *o == Owner::Unseen) {
        return Err(fail(format!(
            "page {i} is neither in the tree nor free (leaked)"
        )));
    }
    c.report.depth = c.leaf_depth.unwrap_or(0) + 1;
    Ok(c.report)
}

impl<S: PageSource> Checker<'_, S> {
    fn claim(&mut self, id: PageId, who: Owner) -> Result<()> {
        match self.owner.get_mut(id.0 as usize) {
            None => Err(fail(format!("reference to page {id} beyond page_count"))),
            Some(o) if *o != Owner::Unseen => Err(fail(format!("page {id} is referenced twice"))),
            Some(o) => {
                *o = who;
                Ok(())
            }
        }
    }

    fn chain(&mut self, first: PageId, len: usize) -> Result<()> {
        let mut ids = Vec::new();
        overflow::walk_chain(self.src, first, len, |id, _| ids.push(id))?;
        for id in ids {
            self.claim(id, Owner::Overflow)?;
            self.report.overflow_pages += 1;
        }
        Ok(())
    }

    fn heap_value(&mut self, r: HeapRef) -> Result<()> {
        let heap = &mut self.heap;
        heap::walk(self.src, r, |id, b| *heap.entry(id).or_default() += b.len())
    }

    /// Every heap page holds exactly the live bytes it counts; the tail may hold none.
    fn heap_pages(&mut self, tail: PageId) -> Result<()> {
        if !tail.is_none() {
            self.heap.entry(tail).or_default();
        }
        let pages = std::mem::take(&mut self.heap);
        for (id, bytes) in pages {
            self.claim(id, Owner::Heap)?;
            let p = self.src.page(id)?;
            if page::kind(p) != Some(PageKind::Heap) {
                return Err(fail(format!("heap page {id} is not a heap page")));
            }
            let live = heap::live_bytes(p);
            if live != bytes {
                return Err(fail(format!(
                    "heap page {id} counts {live} live bytes, values hold {bytes} there"
                )));
            }
            self.report.heap_pages += 1;
            self.report.heap_bytes += bytes as u64;
        }
        Ok(())
    }

    /// Checks the subtree at `id`, whose keys must lie in [lo, hi).
    fn node(
        &mut self,
        id: PageId,
        lo: Option<&[u8]>,
        hi: Option<&[u8]>,
        depth: usize,
        root: bool,
    ) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(fail(format!("tree deeper than {MAX_DEPTH} at page {id}")));
        }
        self.claim(id, Owner::Tree)?;
        let src = self.src;
        let p = src.page(id)?;
        let kind = node_kind(p, id)?;
        let n = node::count(p);
        let h = page::header(p);
        let cells_bytes: usize = (0..n).map(|i| node::cell(p, kind, i).len()).sum();
        let area = PAGE_SIZE - h.content_start.get() as usize - h.garbage.get() as usize;
        if cells_bytes != area {
            return Err(fail(format!(
                "page {id}: cells take {cells_bytes} bytes, the header accounts {area}"
            )));
        }
        // Deletes keep a branch at least `MIN_FILL` full; a leaf only non-empty (an empty one
        // leaves the tree, a sparse one waits for a merge or the repack: tree_write.rs).
        if !root && kind == PageKind::Branch && node::used(p) < MIN_FILL {
            return Err(fail(format!(
                "branch {id}: {} bytes used, below the minimum {MIN_FILL}",
                node::used(p)
            )));
        }
        if !root && n == 0 {
            return Err(fail(format!("page {id}: an empty page below the root")));
        }
        let in_bounds = |k: &[u8]| lo.is_none_or(|l| k >= l) && hi.is_none_or(|h| k < h);
        match kind {
            PageKind::Leaf => {
                match self.leaf_depth {
                    None => self.leaf_depth = Some(depth),
                    Some(d) if d != depth => {
                        return Err(fail(format!("leaf {id} at depth {depth}, others at {d}")));
                    }
                    _ => {}
                }
                self.report.leaf_pages += 1;
                self.report.entries += n as u64;
                let mut prev: Option<Vec<u8>> = None;
                for i in 0..n {
                    let (k, v) = node::leaf_entry(p, i);
                    let key = load_key(src, k)?.into_owned();
                    if !in_bounds(&key) {
                        return Err(fail(format!(
                            "leaf {id} cell {i}: key outside its parent's range"
                        )));
                    }
                    if prev
                        .as_deref()
                        .is_some_and(|pk| pk.cmp(&key) != Ordering::Less)
                    {
                        return Err(fail(format!("leaf {id} cell {i}: keys out of order")));
                    }
                    if k.is_long() {
                        self.chain(k.ovf, k.len - KEY_LOCAL)?;
                    }
                    if let ValRef::Heap(r) = v {
                        self.heap_value(r)?;
                    }
                    prev = Some(key);
                }
            }
            _ => {
                if n == 0 {
                    return Err(fail(format!("branch {id} has no separator")));
                }
                self.report.branch_pages += 1;
                let mut keys = Vec::with_capacity(n);
                for i in 0..n {
                    let (k, _) = node::branch_entry(p, i);
                    let key = load_key(src, k)?.into_owned();
                    if k.is_long() {
                        self.chain(k.ovf, k.len - KEY_LOCAL)?;
                    }
                    let above_lo = lo.is_none_or(|l| key.as_slice() > l);
                    if !above_lo || hi.is_some_and(|h| key.as_slice() >= h) {
                        return Err(fail(format!(
                            "branch {id} cell {i}: separator outside its range"
                        )));
                    }
                    if keys.last().is_some_and(|pk: &Vec<u8>| pk >= &key) {
                        return Err(fail(format!(
                            "branch {id} cell {i}: separators out of order"
                        )));
                    }
                    keys.push(key);
                }
                let children: Vec<PageId> = (0..=n).map(|ci| node::child(p, ci)).collect();
                for (ci, child) in children.into_iter().enumerate() {
                    let clo = if ci == 0 {
                        lo
                    } else {
                        Some(keys[ci - 1].as_slice())
                    };
                    let chi = if ci == n {
                        hi
                    } else {
                        Some(keys[ci].as_slice())
                    };
                    self.node(child, clo, chi, depth + 1, false)?;
                }
            }
        }
        Ok(())
    }
}
