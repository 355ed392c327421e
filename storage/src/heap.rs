//! The value heap: values too long for a leaf cell, packed byte by byte into heap pages.
//!
//! ```text
//! heap page: header (kind 6) | value bytes, appended in order
//!   count          u16  live bytes: bytes of values still referenced that lie on this page
//!   content_start  u16  fill: bytes are appended at this offset (40 ..= 4096)
//!   link           u64  the next heap page, where a value that reached this page's end goes on
//!
//! leaf value field:  0x8000 u16 | len u32 | page u64 | offset u16     (16 bytes)
//! ```
//!
//! New values go to the tail page (`meta.heap_tail`) at its fill; a value longer than the room
//! left runs on into a new page linked from the tail, which becomes the tail. So a 1,000-byte
//! or a 3,000-byte value costs its own bytes, not a whole 4 KiB page (an overflow chain's
//! rounding), and consecutive values share pages.
//!
//! Releasing a value subtracts its bytes from each page's live count. A page whose count
//! reaches zero holds nothing anyone references: it goes back to the free list (or, if it is
//! the tail, its fill returns to the start). No value runs through a freed page (its bytes
//! there would be live), so a stale `link` to it is never followed. Holes in pages that still
//! hold live bytes are not reused until the page empties; `Db::compact` rewrites them.
//!
//! A value is read knowing its length, page and offset; every step checks the page kind and
//! that the bytes lie below the page's fill, so a damaged reference or link is caught and the
//! walk always ends (each step consumes at least one byte of the known length).

use crate::error::{Error, Result};
use crate::page::{self, PageKind, HEADER_SIZE, PAGE_SIZE, USABLE};
use crate::pager::PageSource;
use crate::txn::WriteCtx;
use crate::types::PageId;

/// Where a heap value starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeapRef {
    pub len: usize,
    pub page: PageId,
    pub off: usize,
}

fn fill(p: &[u8]) -> usize {
    page::header(p).content_start.get() as usize
}

fn live(p: &[u8]) -> usize {
    page::header(p).count.get() as usize
}

/// A new heap page, empty, linked from nothing yet.
fn new_page(ctx: &mut WriteCtx<'_>) -> Result<PageId> {
    let id = ctx.alloc(PageKind::Heap)?;
    let p = ctx.page_mut(id)?;
    page::header_mut(p).content_start.set(HEADER_SIZE as u16);
    ctx.meta.heap_pages += 1;
    Ok(id)
}

/// Appends `data` (not empty) at the heap's tail and returns where it starts.
pub(crate) fn append(ctx: &mut WriteCtx<'_>, data: &[u8]) -> Result<HeapRef> {
    assert!(!data.is_empty(), "empty heap value");
    let mut tail = ctx.meta.heap_tail;
    if tail.is_none() {
        tail = new_page(ctx)?;
        ctx.meta.heap_tail = tail;
    }
    let p = ctx.page(tail)?;
    if page::kind(p) != Some(PageKind::Heap) {
        return Err(Error::corrupt(tail, "the heap's tail is not a heap page"));
    }
    let mut at = fill(p);
    if at >= PAGE_SIZE {
        let next = new_page(ctx)?;
        page::header_mut(ctx.page_mut(tail)?).link.set(next.0);
        tail = next;
        ctx.meta.heap_tail = tail;
        at = HEADER_SIZE;
    }
    let start = HeapRef {
        len: data.len(),
        page: tail,
        off: at,
    };
    let mut rest = data;
    loop {
        let n = rest.len().min(PAGE_SIZE - at);
        let p = ctx.page_mut(tail)?;
        p[at..at + n].copy_from_slice(&rest[..n]);
        let h = page::header_mut(p);
        h.content_start.set((at + n) as u16);
        h.count.set(h.count.get() + n as u16);
        ctx.meta.heap_live += n as u64;
        rest = &rest[n..];
        if rest.is_empty() {
            return Ok(start);
        }
        let next = new_page(ctx)?;
        page::header_mut(ctx.page_mut(tail)?).link.set(next.0);
        tail = next;
        ctx.meta.heap_tail = tail;
        at = HEADER_SIZE;
    }
}

/// Calls `f` with each page id and the value's bytes on it, in order.
pub(crate) fn walk<'s, S: PageSource>(
    src: &'s S,
    r: HeapRef,
    mut f: impl FnMut(PageId, &'s [u8]),
) -> Result<()> {
    let mut remaining = r.len;
    let (mut id, mut at) = (r.page, r.off);
    // A value's pages are distinct; a damaged link back to one already walked would make
    // `release` free a page twice. Long chains are checked through a set.
    let mut seen: Vec<PageId> = Vec::new();
    let mut seen_set: std::collections::HashSet<PageId> = std::collections::HashSet::new();
    if !(HEADER_SIZE..PAGE_SIZE).contains(&at) {
        return Err(Error::corrupt(
            r.page,
            format!("heap value at offset {at}, outside the page body"),
        ));
    }
    while remaining > 0 {
        if id.is_none() {
            return Err(Error::corrupt(
                r.page,
                format!("heap value ends {remaining} bytes early"),
            ));
        }
        let revisited = if seen.len() < 16 {
            let again = seen.contains(&id);
            seen.push(id);
            again
        } else {
            if seen_set.is_empty() {
                seen_set.extend(seen.iter().copied());
            }
            !seen_set.insert(id)
        };
        if revisited {
            return Err(Error::corrupt(
                id,
                format!(
                    "heap value starting on page {} runs through page {id} twice (a damaged link)",
                    r.page
                ),
            ));
        }
        let p = src.page(id)?;
        if page::kind(p) != Some(PageKind::Heap) {
            return Err(Error::corrupt(id, "expected a heap page"));
        }
        let n = remaining.min(PAGE_SIZE - at);
        if at + n > fill(p) {
            return Err(Error::corrupt(
                id,
                format!(
                    "heap value bytes {at}..{} past the page's fill {}",
                    at + n,
                    fill(p)
                ),
            ));
        }
        f(id, &p[at..at + n]);
        remaining -= n;
        id = PageId(page::header(p).link.get());
        at = HEADER_SIZE;
    }
    Ok(())
}

pub(crate) fn read(src: &impl PageSource, r: HeapRef, out: &mut Vec<u8>) -> Result<()> {
    out.reserve(r.len);
    walk(src, r, |_, b| out.extend_from_slice(b))
}

/// Releases a value: its bytes leave each page's live count; emptied pages are freed.
pub(crate) fn release(ctx: &mut WriteCtx<'_>, r: HeapRef) -> Result<()> {
    let mut parts: Vec<(PageId, usize)> = Vec::with_capacity(r.len / USABLE + 2);
    walk(ctx, r, |id, b| parts.push((id, b.len())))?;
    let tail = ctx.meta.heap_tail;
    ctx.meta.heap_live = ctx.meta.heap_live.saturating_sub(r.len as u64);
    for (id, n) in parts {
        let p = ctx.page_mut(id)?;
        let h = page::header_mut(p);
        let left = (h.count.get() as usize).checked_sub(n).ok_or_else(|| {
            Error::corrupt(
                id,
                format!("heap page counts fewer live bytes than a value has on it ({n})"),
            )
        })?;
        h.count.set(left as u16);
        if left > 0 {
            continue;
        }
        if id == tail {
            h.content_start.set(HEADER_SIZE as u16);
            h.link.set(0);
        } else {
            ctx.free(id)?;
            ctx.meta.heap_pages = ctx.meta.heap_pages.saturating_sub(1);
        }
    }
    Ok(())
}

/// Structure of a heap page read from disk: fill and live count inside the page.
pub fn validate(p: &[u8], id: PageId) -> Result<()> {
    let (f, l) = (fill(p), live(p));
    if !(HEADER_SIZE..=PAGE_SIZE).contains(&f) {
        return Err(Error::corrupt(
            id,
            format!("heap page fill {f} outside the page"),
        ));
    }
    if l > f - HEADER_SIZE {
        return Err(Error::corrupt(
            id,
            format!(
                "heap page counts {l} live bytes in {} written",
                f - HEADER_SIZE
            ),
        ));
    }
    Ok(())
}

/// A heap page's live byte count, for the integrity check.
pub fn live_bytes(p: &[u8]) -> usize {
    live(p)
}
