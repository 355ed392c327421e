//! The writer's private overlay: pages changed by the batch being applied. Nothing here is
//! visible to readers until `Db::commit` installs the finished overlay in one step, and a
//! batch that fails half-way is dropped without trace.

use std::collections::hash_map::Entry;

use rustc_hash::FxHashMap;

use crate::error::Result;
use crate::freelist;
use crate::node;
use crate::page::{self, Meta, PageArc, PageKind};
use crate::pager::{PageSource, Published};
use crate::types::PageId;
use crate::wal::record;

/// Pages a batch changed, in page order.
pub(crate) type ChangedPages = Vec<(PageId, PageArc)>;

/// Where a batch wrote in a page of its overlay, as far as it said: a few byte ranges, or
/// anywhere. The commit compares only these bytes of the copy with the published page to
/// find the page's delta, instead of all 4 KiB of both: a leaf insert writes the header,
/// the slots and one cell, about a tenth of the page. Only the leaf changes that report
/// their bytes (`WriteCtx::leaf_insert` and its kin) keep a page's ranges; any other
/// `page_mut` makes it anywhere.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Touched {
    /// Ranges in use, or `ANYWHERE`.
    len: u8,
    /// Sorted, disjoint and not adjacent: `[a, b)` with `a < b`.
    ranges: [(u16, u16); MAX_RANGES],
    /// The page's only change, if it had one and it was a cell inserted or removed: the
    /// commit then writes its delta without comparing at all (`record::slot_change_runs`).
    only: Only,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Only {
    Nothing,
    One(record::SlotChange),
    More,
}

const MAX_RANGES: usize = 6;
/// The pages a batch's overlay has room for before it grows.
const DIRTY_START: usize = 32;
const ANYWHERE: u8 = u8::MAX;

impl Touched {
    const NOWHERE: Touched = Touched {
        len: 0,
        ranges: [(0, 0); MAX_RANGES],
        only: Only::Nothing,
    };
    const ANYWHERE: Touched = Touched {
        len: ANYWHERE,
        ranges: [(0, 0); MAX_RANGES],
        only: Only::More,
    };

    /// The ranges, sorted and disjoint; `None` for anywhere.
    fn ranges(&self) -> Option<&[(u16, u16)]> {
        (self.len != ANYWHERE).then(|| &self.ranges[..self.len as usize])
    }

    /// The page's one change, if that is all it had and it was a cell inserted or removed.
    fn only_change(&self) -> Option<record::SlotChange> {
        // (Anywhere is always `Only::More`.)
        match self.only {
            Only::One(c) => Some(c),
            _ => None,
        }
    }

    /// Notes one more change (`None`: not a `SlotChange`).
    fn note(&mut self, change: Option<record::SlotChange>) {
        self.only = match (self.only, change) {
            (Only::Nothing, Some(c)) => Only::One(c),
            _ => Only::More,
        };
    }

    /// Adds `[a, b)`, merging it with the ranges it overlaps or touches; past
    /// `MAX_RANGES` ranges the page becomes anywhere.
    fn add(&mut self, a: usize, b: usize) {
        let (a, b) = (a.min(page::PAGE_SIZE), b.min(page::PAGE_SIZE));
        if self.len == ANYWHERE || a >= b {
            return;
        }
        let (mut a, mut b) = (a as u16, b as u16);
        let mut kept = [(0u16, 0u16); MAX_RANGES + 1];
        let mut n = 0;
        let mut placed = false;
        for &(x, y) in &self.ranges[..self.len as usize] {
            if y < a {
                kept[n] = (x, y);
                n += 1;
            } else if b < x {
                if !placed {
                    kept[n] = (a, b);
                    n += 1;
                    placed = true;
                }
                kept[n] = (x, y);
                n += 1;
            } else {
                // Overlapping or adjacent: one range.
                a = a.min(x);
                b = b.max(y);
            }
        }
        if !placed {
            kept[n] = (a, b);
            n += 1;
        }
        if n > MAX_RANGES {
            *self = Touched::ANYWHERE;
            return;
        }
        self.ranges[..n].copy_from_slice(&kept[..n]);
        self.len = n as u8;
    }

    /// The delta runs that turn `old` (the published page) into `new` (this batch's copy,
    /// its header already sealed) into `runs`, found from what the batch said it wrote:
    /// written from its one cell change, or compared only in its ranges and the header, or
    /// compared whole. `None` if they would not be smaller than a page image.
    pub fn delta(&self, old: &[u8], new: &[u8], runs: &mut Vec<u8>) -> Option<()> {
        let mut scan = *self;
        scan.add(0, page::HEADER_SIZE);
        let same_skip = page::header(old).head_skip == page::header(new).head_skip;
        let found = match (self.only_change(), scan.ranges()) {
            // One cell in or out: the delta is known without comparing.
            (Some(c), _) if same_skip => record::slot_change_runs(old, new, c, runs),
            (_, Some(r)) => record::delta_runs_within(old, new, r, runs),
            (_, None) => record::delta_runs(old, new, runs),
        };
        debug_assert!(
            found.is_none() || record::runs_rebuild(old, runs, new),
            "page {}: bytes written outside what was reported ({self:?})",
            page::header(new).page_id.get()
        );
        found
    }

    fn add_all(&mut self, wrote: node::Wrote) {
        for (a, b) in wrote {
            self.add(a, b);
        }
    }
}

pub(crate) struct WriteCtx<'a> {
    base: &'a Published,
    /// Keyed by page number: a fast integer hash, as every page a descent reads is looked
    /// up here first.
    dirty: FxHashMap<PageId, (PageArc, Touched)>,
    pub meta: Meta,
}

impl PageSource for WriteCtx<'_> {
    #[inline]
    fn page(&self, id: PageId) -> Result<&[u8]> {
        match self.dirty.get(&id) {
            Some((b, _)) => Ok(&b[..]),
            None => self.base.page(id),
        }
    }
}

impl<'a> WriteCtx<'a> {
    pub fn new(base: &'a Published) -> WriteCtx<'a> {
        WriteCtx {
            base,
            // A group of commits changes tens of pages: room for them from the start
            // instead of growing the map through its small sizes.
            dirty: FxHashMap::with_capacity_and_hasher(DIRTY_START, Default::default()),
            meta: base.meta,
        }
    }

    /// A writable copy of page `id` in the overlay, to be written anywhere.
    pub fn page_mut(&mut self, id: PageId) -> Result<&mut [u8]> {
        let (p, t) = self.page_mut_tracked(id)?;
        *t = Touched::ANYWHERE;
        Ok(p)
    }

    /// A writable copy of page `id` and where the batch wrote in it so far, which the
    /// caller extends by every byte it writes.
    fn page_mut_tracked(&mut self, id: PageId) -> Result<(&mut [u8], &mut Touched)> {
        let (b, t) = match self.dirty.entry(id) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(v) => {
                let b = page::page_copy(self.base.page(id)?);
                v.insert((b, Touched::NOWHERE))
            }
        };
        Ok((page::page_mut(b), t))
    }

    /// Inserts `cell` at slot `idx` of leaf `id` (`node::insert_cell`); false if it does not
    /// fit, and then the page is unchanged.
    pub fn leaf_insert(&mut self, id: PageId, idx: usize, cell: &[u8]) -> Result<bool> {
        let (p, t) = self.page_mut_tracked(id)?;
        let n = node::count(p);
        let Some(wrote) = node::insert_cell_where(p, PageKind::Leaf, idx, cell) else {
            return Ok(false);
        };
        // (A compaction reports the whole page: every cell moved.)
        let compacted = wrote[0] == (0, page::PAGE_SIZE);
        t.note((!compacted).then_some(record::SlotChange::Insert {
            idx,
            n,
            cell: wrote[1],
        }));
        t.add_all(wrote);
        Ok(true)
    }

    /// Removes the cell at slot `idx` of leaf `id` (`node::remove_cell`).
    pub fn leaf_remove(&mut self, id: PageId, idx: usize) -> Result<()> {
        let (p, t) = self.page_mut_tracked(id)?;
        let n = node::count(p);
        t.note(Some(record::SlotChange::Remove { idx, n }));
        t.add(0, page::HEADER_SIZE + node::SLOT * n);
        node::remove_cell(p, PageKind::Leaf, idx);
        Ok(())
    }

    /// Writes `bytes` over page `id` at `at` (a cell replaced by one of its length).
    pub fn overwrite(&mut self, id: PageId, at: usize, bytes: &[u8]) -> Result<()> {
        let (p, t) = self.page_mut_tracked(id)?;
        p[at..at + bytes.len()].copy_from_slice(bytes);
        t.note(None);
        t.add(at, at + bytes.len());
        Ok(())
    }

    /// A fresh, initialised page `id` in the overlay, whatever it held before.
    pub fn page_fresh(&mut self, id: PageId, kind: PageKind) -> &mut [u8] {
        let (b, t) = self
            .dirty
            .entry(id)
            .or_insert_with(|| (page::page_zeroed(), Touched::ANYWHERE));
        *t = Touched::ANYWHERE;
        let b = page::page_mut(b);
        page::init(b, kind, id);
        b
    }

    /// Forgets any overlay copy of a page that has just been freed.
    pub fn forget(&mut self, id: PageId) {
        self.dirty.remove(&id);
    }

    /// Page `from`'s bytes as page `to` in the overlay (for moving a page: the caller
    /// redirects every reference to it).
    pub fn copy_page(&mut self, from: PageId, to: PageId) -> Result<()> {
        let mut b = page::page_copy(self.page(from)?);
        page::header_mut(page::page_mut(&mut b)).page_id.set(to.0);
        self.dirty.insert(to, (b, Touched::ANYWHERE));
        Ok(())
    }

    /// Lowers the page count to `end`, dropping overlay copies of the pages past it.
    pub fn cut(&mut self, end: u64) {
        assert!(
            end <= self.meta.page_count && end >= 1,
            "cut to {end} pages"
        );
        self.dirty.retain(|id, _| id.0 < end);
        self.meta.page_count = end;
    }

    pub fn alloc(&mut self, kind: PageKind) -> Result<PageId> {
        freelist::alloc(self, kind)
    }

    pub fn free(&mut self, id: PageId) -> Result<()> {
        freelist::free(self, id)
    }

    /// Writes the meta page (if anything changed) and returns the changed pages in page
    /// order, where each was written (in the same order), and the new meta.
    pub fn finish(mut self) -> Result<(ChangedPages, Vec<Touched>, Meta)> {
        let meta = self.meta;
        if meta != self.base.meta || !self.dirty.is_empty() {
            meta.write(self.page_mut(PageId(0))?);
        }
        let mut all: Vec<_> = self.dirty.into_iter().collect();
        all.sort_unstable_by_key(|(id, _)| *id);
        let mut pages = Vec::with_capacity(all.len());
        let mut touched = Vec::with_capacity(all.len());
        for (id, (p, t)) in all {
            assert_eq!(
                page::header(&p[..]).page_id.get(),
                id.0,
                "overlay page mislabelled"
            );
            assert!(id.0 < meta.page_count, "overlay page beyond page_count");
            pages.push((id, p));
            touched.push(t);
        }
        Ok((pages, touched, meta))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// However ranges are added, the ranges kept are sorted, apart, and cover exactly
        /// the bytes added, or the page has become "anywhere" (past `MAX_RANGES`).
        #[test]
        fn touched_ranges_cover_exactly_what_was_added(
            adds in proptest::collection::vec((0usize..4200, 0usize..300), 0..12),
        ) {
            let mut t = Touched::NOWHERE;
            let mut want = vec![false; page::PAGE_SIZE];
            for &(a, len) in &adds {
                t.add(a, a + len);
                for w in want.iter_mut().take(a + len).skip(a) {
                    *w = true;
                }
            }
            let Some(ranges) = t.ranges() else {
                // Only more disjoint stretches than it keeps make it give up.
                let mut stretches = 0;
                for i in 0..want.len() {
                    if want[i] && (i == 0 || !want[i - 1]) {
                        stretches += 1;
                    }
                }
                prop_assert!(stretches > MAX_RANGES || adds.len() > MAX_RANGES);
                return Ok(());
            };
            let mut got = vec![false; page::PAGE_SIZE];
            let mut last_end = None;
            for &(a, b) in ranges {
                prop_assert!(a < b);
                if let Some(e) = last_end {
                    prop_assert!(a > e, "{:?} not sorted and apart", ranges);
                }
                last_end = Some(b);
                for g in &mut got[a as usize..b as usize] {
                    *g = true;
                }
            }
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn page_mut_makes_a_page_anywhere() {
        let mut t = Touched::NOWHERE;
        t.add(10, 20);
        assert_eq!(t.ranges(), Some(&[(10, 20)][..]));
        let mut t = Touched::ANYWHERE;
        t.add(10, 20);
        assert_eq!(t.ranges(), None);
    }
}
