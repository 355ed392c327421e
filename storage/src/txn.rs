//! The writer's private overlay: pages changed by the batch being applied. Nothing here is
//! visible to readers until `Db::commit` installs the finished overlay in one step, and a
//! batch that fails half-way is dropped without trace.

use std::collections::hash_map::Entry;

use rustc_hash::FxHashMap;

use crate::error::Result;
use crate::freelist;
use crate::page::{self, Meta, PageArc, PageKind};
use crate::pager::{PageSource, Published};
use crate::types::PageId;

/// Pages a batch changed, in page order.
pub(crate) type ChangedPages = Vec<(PageId, PageArc)>;

pub(crate) struct WriteCtx<'a> {
    base: &'a Published,
    /// Keyed by page number: a fast integer hash, as every page a descent reads is looked
    /// up here first.
    dirty: FxHashMap<PageId, PageArc>,
    pub meta: Meta,
}

impl PageSource for WriteCtx<'_> {
    #[inline]
    fn page(&self, id: PageId) -> Result<&[u8]> {
        match self.dirty.get(&id) {
            Some(b) => Ok(&b[..]),
            None => self.base.page(id),
        }
    }
}

impl<'a> WriteCtx<'a> {
    pub fn new(base: &'a Published) -> WriteCtx<'a> {
        WriteCtx {
            base,
            dirty: FxHashMap::default(),
            meta: base.meta,
        }
    }

    /// A writable copy of page `id` in the overlay.
    pub fn page_mut(&mut self, id: PageId) -> Result<&mut [u8]> {
        match self.dirty.entry(id) {
            Entry::Occupied(e) => Ok(page::page_mut(e.into_mut())),
            Entry::Vacant(v) => {
                let b = page::page_copy(self.base.page(id)?);
                Ok(page::page_mut(v.insert(b)))
            }
        }
    }

    /// A fresh, initialised page `id` in the overlay, whatever it held before.
    pub fn page_fresh(&mut self, id: PageId, kind: PageKind) -> &mut [u8] {
        let b = page::page_mut(self.dirty.entry(id).or_insert_with(page::page_zeroed));
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
        self.dirty.insert(to, b);
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
    /// order with the new meta.
    pub fn finish(mut self) -> Result<(ChangedPages, Meta)> {
        let meta = self.meta;
        if meta != self.base.meta || !self.dirty.is_empty() {
            meta.write(self.page_mut(PageId(0))?);
        }
        let mut pages: Vec<_> = self.dirty.into_iter().collect();
        pages.sort_unstable_by_key(|(id, _)| *id);
        for (id, p) in &pages {
            assert_eq!(
                page::header(&p[..]).page_id.get(),
                id.0,
                "overlay page mislabelled"
            );
            assert!(id.0 < meta.page_count, "overlay page beyond page_count");
        }
        Ok((pages, meta))
    }
}
