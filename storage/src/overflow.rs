//! Overflow chains: the tails of long keys, in linked pages (long values live in the heap).
//!
//! ```text
//! overflow page: header (kind 4, count = bytes used here, link = next page or 0) | bytes
//! ```
//! A chain is read knowing its total length, so a damaged link or count is caught and the
//! walk always ends (each step consumes at least one byte of the known length).

use crate::error::{Error, Result};
use crate::page::{self, PageKind, HEADER_SIZE, USABLE};
use crate::pager::PageSource;
use crate::txn::WriteCtx;
use crate::types::PageId;

pub(crate) fn write_chain(ctx: &mut WriteCtx<'_>, data: &[u8]) -> Result<PageId> {
    assert!(!data.is_empty(), "empty overflow chain");
    let n = data.len().div_ceil(USABLE);
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(ctx.alloc(PageKind::Overflow)?);
    }
    for (i, chunk) in data.chunks(USABLE).enumerate() {
        let p = ctx.page_fresh(ids[i], PageKind::Overflow);
        p[HEADER_SIZE..HEADER_SIZE + chunk.len()].copy_from_slice(chunk);
        let h = page::header_mut(p);
        h.count.set(chunk.len() as u16);
        h.link.set(ids.get(i + 1).map_or(0, |id| id.0));
    }
    Ok(ids[0])
}

/// Calls `f` with each page id and its bytes of a `len`-byte chain starting at `first`.
pub(crate) fn walk_chain<'s, S: PageSource>(
    src: &'s S,
    first: PageId,
    len: usize,
    mut f: impl FnMut(PageId, &'s [u8]),
) -> Result<()> {
    let mut remaining = len;
    let mut id = first;
    while remaining > 0 {
        if id.is_none() {
            return Err(Error::corrupt(
                first,
                format!("overflow chain ends {remaining} bytes early"),
            ));
        }
        let p = src.page(id)?;
        if page::kind(p) != Some(PageKind::Overflow) {
            return Err(Error::corrupt(id, "expected an overflow page"));
        }
        let n = page::header(p).count.get() as usize;
        if n != remaining.min(USABLE) {
            return Err(Error::corrupt(
                id,
                format!(
                    "overflow page holds {n} bytes, expected {}",
                    remaining.min(USABLE)
                ),
            ));
        }
        f(id, &p[HEADER_SIZE..HEADER_SIZE + n]);
        remaining -= n;
        id = PageId(page::header(p).link.get());
    }
    Ok(())
}

pub(crate) fn read_chain(
    src: &impl PageSource,
    first: PageId,
    len: usize,
    out: &mut Vec<u8>,
) -> Result<()> {
    out.reserve(len);
    walk_chain(src, first, len, |_, b| out.extend_from_slice(b))
}

pub(crate) fn free_chain(ctx: &mut WriteCtx<'_>, first: PageId, len: usize) -> Result<()> {
    let mut ids = Vec::with_capacity(len.div_ceil(USABLE));
    walk_chain(ctx, first, len, |id, _| ids.push(id))?;
    for id in ids {
        ctx.free(id)?;
    }
    Ok(())
}
