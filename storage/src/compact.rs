//! Giving the value heap's dead bytes back: values on sparse heap pages are copied to the
//! heap's tail, so the sparse pages empty and go to the free list.
//!
//! A heap page is freed only once every value on it is gone, so overwrites of long values
//! at random leave pages partly live: without this, such a heap settles near half live
//! (twice the bytes it holds). A pass walks the leaves in key order, a bounded number of
//! entries per step (each step one write transaction, logged and replicated like any
//! other), and rewrites each long value that touches a page less than `sparse_pct` live.
//! To decide, a pass follows each long value's chain of heap pages and reads their headers
//! (only a value's first and last pages can hold other values, but the last is found by
//! following the links): about one page header per 4 KiB of long values, besides the
//! leaves and the values it moves. A step ends after `COMPACT_STEP_BYTES` moved, so a step
//! stays far below the largest batch even when values are megabytes long.

use crate::btree::{load_key, node_kind, search_branch, search_leaf, MAX_DEPTH};
use crate::error::{Error, Result};
use crate::heap::{self, HeapRef};
use crate::node::{self, ValRef};
use crate::page::{PageKind, USABLE};
use crate::pager::PageSource;
use crate::tree_write;
use crate::txn::WriteCtx;
use crate::types::PageId;

/// What one step did, and where the next one starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactStep {
    /// The last key this step looked at (`None`: the walk reached the end of the tree).
    pub next: Option<Vec<u8>>,
    pub entries_seen: u64,
    pub values_moved: u64,
    pub bytes_moved: u64,
}

/// Up to `budget` entries after `after` (all, from the first, if `None`), in key order, with
/// their heap references (if any). Returns whether the walk reached the end of the tree.
fn collect<S: PageSource>(
    src: &S,
    id: PageId,
    after: Option<&[u8]>,
    budget: usize,
    out: &mut Vec<(Vec<u8>, Option<HeapRef>)>,
    depth: usize,
) -> Result<bool> {
    if depth > MAX_DEPTH {
        return Err(Error::corrupt(
            id,
            "tree deeper than any valid tree (a cycle?)",
        ));
    }
    let p = src.page(id)?;
    match node_kind(p, id)? {
        PageKind::Branch => {
            let first = match after {
                Some(k) => search_branch(src, p, k)?,
                None => 0,
            };
            for ci in first..=node::count(p) {
                if !collect(src, node::child(p, ci), after, budget, out, depth + 1)? {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        _ => {
            let first = match after {
                Some(k) => match search_leaf(src, p, k)? {
                    Ok(i) => i + 1,
                    Err(i) => i,
                },
                None => 0,
            };
            for i in first..node::count(p) {
                if out.len() >= budget {
                    return Ok(false);
                }
                let (k, v) = node::leaf_entry(p, i);
                let r = match v {
                    ValRef::Heap(r) => Some(r),
                    ValRef::Inline(_) => None,
                };
                out.push((load_key(src, k)?.into_owned(), r));
            }
            Ok(true)
        }
    }
}

/// Whether the value touches a heap page (other than the tail, which is being filled) that
/// holds fewer than `limit` live bytes.
fn on_sparse_page(ctx: &WriteCtx<'_>, r: HeapRef, limit: usize) -> Result<bool> {
    let mut pages = Vec::with_capacity(2);
    heap::walk(ctx, r, |id, _| pages.push(id))?;
    for id in pages {
        if id != ctx.meta.heap_tail && heap::live_bytes(ctx.page(id)?) < limit {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Bytes of values one step moves at most before it ends (it ends after the value that
/// passes this): each step is one batch in the log.
pub const COMPACT_STEP_BYTES: u64 = 16 << 20;

/// One step of a compaction pass: looks at up to `budget` entries after `after` (none past
/// `through`, if given) and moves the long values that touch a heap page less than
/// `sparse_pct` percent live.
pub(crate) fn step(
    ctx: &mut WriteCtx<'_>,
    after: Option<&[u8]>,
    through: Option<&[u8]>,
    budget: usize,
    sparse_pct: usize,
) -> Result<CompactStep> {
    let mut entries = Vec::new();
    let root = ctx.meta.root;
    let mut done = collect(ctx, root, after, budget.max(1), &mut entries, 0)?;
    if let Some(end) = through {
        // Keys written behind the cursor after the pass began are the next pass's.
        if let Some(past) = entries.iter().position(|(k, _)| k.as_slice() > end) {
            entries.truncate(past);
            done = true;
        }
    }
    let limit = USABLE * sparse_pct.min(100) / 100;
    let mut s = CompactStep::default();
    for (i, (key, r)) in entries.iter().enumerate() {
        if s.bytes_moved >= COMPACT_STEP_BYTES {
            entries.truncate(i);
            done = false;
            break;
        }
        s.entries_seen += 1;
        let Some(r) = *r else { continue };
        if !on_sparse_page(ctx, r, limit)? {
            continue;
        }
        let mut value = Vec::with_capacity(r.len);
        heap::read(ctx, r, &mut value)?;
        // The same key and length: the cell is rewritten in place, pointing at the new copy.
        tree_write::put(ctx, key, &value)?;
        s.values_moved += 1;
        s.bytes_moved += r.len as u64;
    }
    s.next = if done {
        None
    } else {
        entries.last().map(|(k, _)| k.clone())
    };
    Ok(s)
}
