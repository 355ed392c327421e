//! The free-page list: trunk pages, each holding ids of free pages (SQLite's design).
//!
//! ```text
//! trunk page: header (kind 5, count = ids held, link = next trunk) | id u64 × count
//! ```
//! Freeing pushes an id onto the head trunk, or makes the freed page the new head trunk when
//! the head is full; allocating pops an id, or takes the empty head trunk itself. Trunks are
//! ordinary pages changed through the writer's overlay, so the list is updated atomically
//! with the batch that frees or takes pages. `meta.free_count` counts trunks and ids.

use crate::error::{Error, Result};
use crate::le::{get_u64, put_u64};
use crate::page::{self, PageKind, HEADER_SIZE, USABLE};
use crate::pager::PageSource;
use crate::txn::WriteCtx;
use crate::types::PageId;

pub const TRUNK_CAPACITY: usize = USABLE / 8;

pub(crate) fn alloc(ctx: &mut WriteCtx<'_>, kind: PageKind) -> Result<PageId> {
    let head = ctx.meta.freelist_head;
    let id = if head.is_none() {
        let id = PageId(ctx.meta.page_count);
        ctx.meta.page_count += 1;
        id
    } else {
        let p = ctx.page(head)?;
        if page::kind(p) != Some(PageKind::FreeTrunk) {
            return Err(Error::corrupt(head, "free-list head is not a trunk page"));
        }
        let n = page::header(p).count.get() as usize;
        let next = PageId(page::header(p).link.get());
        let id = if n > 0 {
            let id = PageId(get_u64(p, HEADER_SIZE + 8 * (n - 1)));
            if id.0 == 0 || id.0 >= ctx.meta.page_count || id == head {
                return Err(Error::corrupt(
                    head,
                    format!("free-list entry {id} is not a page"),
                ));
            }
            let pm = ctx.page_mut(head)?;
            page::header_mut(pm).count.set((n - 1) as u16);
            id
        } else {
            if next.0 >= ctx.meta.page_count {
                return Err(Error::corrupt(head, "free-list link beyond the file"));
            }
            ctx.meta.freelist_head = next;
            head
        };
        ctx.meta.free_count = ctx.meta.free_count.saturating_sub(1);
        id
    };
    ctx.page_fresh(id, kind);
    Ok(id)
}

pub(crate) fn free(ctx: &mut WriteCtx<'_>, id: PageId) -> Result<()> {
    assert!(
        id.0 != 0 && id.0 < ctx.meta.page_count,
        "freeing page {id} outside the tree"
    );
    let head = ctx.meta.freelist_head;
    let room = if head.is_none() {
        false
    } else {
        let p = ctx.page(head)?;
        if page::kind(p) != Some(PageKind::FreeTrunk) {
            return Err(Error::corrupt(head, "free-list head is not a trunk page"));
        }
        (page::header(p).count.get() as usize) < TRUNK_CAPACITY
    };
    if room {
        ctx.forget(id);
        let p = ctx.page_mut(head)?;
        let n = page::header(p).count.get() as usize;
        put_u64(p, HEADER_SIZE + 8 * n, id.0);
        page::header_mut(p).count.set((n + 1) as u16);
    } else {
        let p = ctx.page_fresh(id, PageKind::FreeTrunk);
        page::header_mut(p).link.set(head.0);
        ctx.meta.freelist_head = id;
    }
    ctx.meta.free_count += 1;
    Ok(())
}

/// Replaces the free list by `ids` (ascending, all below the page count): trunks of
/// `TRUNK_CAPACITY + 1` ids each, the lowest of each group the trunk, the rest stored so that
/// allocation takes them lowest first: the file fills from its start.
pub(crate) fn rebuild(ctx: &mut WriteCtx<'_>, ids: &[PageId]) {
    debug_assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "free ids not ascending"
    );
    let groups: Vec<&[PageId]> = ids.chunks(TRUNK_CAPACITY + 1).collect();
    for (g, group) in groups.iter().enumerate() {
        let next = groups.get(g + 1).map_or(PageId::NONE, |n| n[0]);
        let p = ctx.page_fresh(group[0], PageKind::FreeTrunk);
        // Popped from the end: highest first in the page, lowest last.
        for (i, id) in group[1..].iter().rev().enumerate() {
            put_u64(p, HEADER_SIZE + 8 * i, id.0);
        }
        let h = page::header_mut(p);
        h.count.set((group.len() - 1) as u16);
        h.link.set(next.0);
    }
    ctx.meta.freelist_head = ids.first().copied().unwrap_or(PageId::NONE);
    ctx.meta.free_count = ids.len() as u64;
}

/// Every page on the free list (trunks first in each step), for the integrity check.
pub(crate) fn walk(src: &impl PageSource, head: PageId, page_count: u64) -> Result<Vec<PageId>> {
    let mut out = Vec::new();
    let mut t = head;
    while !t.is_none() {
        if t.0 >= page_count || out.len() as u64 > page_count {
            return Err(Error::corrupt(
                t,
                "free list runs outside the file or loops",
            ));
        }
        let p = src.page(t)?;
        if page::kind(p) != Some(PageKind::FreeTrunk) {
            return Err(Error::corrupt(t, "free-list trunk has the wrong kind"));
        }
        out.push(t);
        let n = page::header(p).count.get() as usize;
        for i in 0..n {
            out.push(PageId(get_u64(p, HEADER_SIZE + 8 * i)));
        }
        t = PageId(page::header(p).link.get());
    }
    Ok(out)
}
