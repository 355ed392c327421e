//! Giving free pages back to the file system: a shrink pass moves the live pages at the end
//! of the page file into free pages nearer its start and lowers the page count, so the
//! checkpoint can cut the file.
//!
//! ```text
//! before   | meta | live | free | live | free | free | live | live |     page_count = 8
//!            0      1      2      3      4      5      6      7
//! a step   live pages at or past n = 1 + (pages live) move, the highest first, into the
//!          lowest free pages below n: 7 -> 2, 6 -> 4 (and every reference to them follows)
//! after    | meta | live | live | live | live |                        page_count = 5
//! ```
//!
//! A step is one write transaction, logged and replicated like any other, so a replica's
//! pages stay the primary's byte for byte and a crash leaves either the step or nothing. It
//! reads the free list, picks at most `max_moves` movers, walks the tree once to find what
//! refers to them (a branch's child pointer, a cell's key-overflow or heap reference, the
//! link of the page before in a chain, the meta page's root and heap tail), copies each
//! mover to its new place, patches those references, rebuilds the free list from what stays
//! below the new end (in address order, so allocation fills the file from its start), and
//! lowers `page_count` to one past the highest page still in use. Pages are not referred to
//! from anywhere else: a free page's old contents are never read.
//!
//! The walk reads every branch and leaf, and the chains of long keys and values only when a
//! page of that kind moves: about one read of the tree per step, so a pass costs a read of
//! the database per `max_moves` pages given back.

use std::collections::HashMap;

use crate::btree::{node_kind, MAX_DEPTH};
use crate::error::{Error, Result};
use crate::freelist;
use crate::heap;
use crate::le::{get_u16, get_u64, put_u64};
use crate::node::{self, ValRef, KEY_LOCAL};
use crate::overflow;
use crate::page::{self, PageKind};
use crate::pager::PageSource;
use crate::txn::WriteCtx;
use crate::types::PageId;

/// What one shrink step did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShrinkStep {
    /// Live pages copied to a lower free page.
    pub pages_moved: u64,
    /// Pages the page count went down by.
    pub pages_cut: u64,
    /// The page count after the step.
    pub page_count: u64,
    /// Whether every live page now lies below the page count with no free page among them
    /// (false: another step has more to move).
    pub done: bool,
}

/// A reference to a moved page, found on the page named (by its id before the step).
#[derive(Clone, Copy, Debug)]
enum Patch {
    /// A branch's child `ci` (0: the leftmost, in the header's link).
    Child(PageId, usize),
    /// The overflow page of the long key in cell `i` (of a branch if `bool`).
    KeyOverflow(PageId, usize, bool),
    /// The first heap page of the value in leaf cell `i`.
    HeapStart(PageId, usize),
    /// The header's link to the next page of an overflow chain or of the heap.
    Link(PageId),
}

/// Which kinds of pages move this step: chains are walked only when some of theirs do.
#[derive(Default)]
struct Moving {
    heap: bool,
    overflow: bool,
}

struct Finder<'m> {
    map: &'m HashMap<PageId, PageId>,
    moving: Moving,
    out: Vec<Patch>,
}

impl Finder<'_> {
    fn moved(&self, id: PageId) -> bool {
        self.map.contains_key(&id)
    }

    /// Records the links, within a chain, that lead to a moving page.
    fn chain_links(&mut self, ids: &[PageId]) {
        for w in ids.windows(2) {
            if self.moved(w[1]) {
                self.out.push(Patch::Link(w[0]));
            }
        }
    }

    fn key_chain<S: PageSource>(&mut self, src: &S, k: node::KeyRef<'_>) -> Result<()> {
        if !self.moving.overflow || !k.is_long() {
            return Ok(());
        }
        let mut ids = Vec::new();
        overflow::walk_chain(src, k.ovf, k.len - KEY_LOCAL, |id, _| ids.push(id))?;
        self.chain_links(&ids);
        Ok(())
    }

    fn node<S: PageSource>(&mut self, src: &S, id: PageId, depth: usize) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(Error::corrupt(
                id,
                "tree deeper than any valid tree (a cycle?)",
            ));
        }
        let p = src.page(id)?;
        match node_kind(p, id)? {
            PageKind::Branch => {
                let n = node::count(p);
                let mut children = Vec::with_capacity(n + 1);
                for ci in 0..=n {
                    let c = node::child(p, ci);
                    if self.moved(c) {
                        self.out.push(Patch::Child(id, ci));
                    }
                    children.push(c);
                }
                for i in 0..n {
                    let (k, _) = node::branch_entry(p, i);
                    if k.is_long() && self.moved(k.ovf) {
                        self.out.push(Patch::KeyOverflow(id, i, true));
                    }
                    self.key_chain(src, k)?;
                }
                for c in children {
                    self.node(src, c, depth + 1)?;
                }
            }
            _ => {
                for i in 0..node::count(p) {
                    let (k, v) = node::leaf_entry(p, i);
                    if k.is_long() && self.moved(k.ovf) {
                        self.out.push(Patch::KeyOverflow(id, i, false));
                    }
                    self.key_chain(src, k)?;
                    let ValRef::Heap(r) = v else { continue };
                    if self.moved(r.page) {
                        self.out.push(Patch::HeapStart(id, i));
                    }
                    if self.moving.heap {
                        let mut ids = Vec::with_capacity(2);
                        heap::walk(src, r, |id, _| ids.push(id))?;
                        self.chain_links(&ids);
                    }
                }
            }
        }
        Ok(())
    }
}

/// Replaces the page id at byte `off` of `p` by its new place, if it moved.
fn remap_at(p: &mut [u8], off: usize, map: &HashMap<PageId, PageId>) {
    if let Some(to) = map.get(&PageId(get_u64(p, off))) {
        put_u64(p, off, to.0);
    }
}

fn apply(ctx: &mut WriteCtx<'_>, patch: Patch, map: &HashMap<PageId, PageId>) -> Result<()> {
    let on = match patch {
        Patch::Child(id, _)
        | Patch::KeyOverflow(id, _, _)
        | Patch::HeapStart(id, _)
        | Patch::Link(id) => id,
    };
    // The referring page may have moved itself: its copy is what stays.
    let at = map.get(&on).copied().unwrap_or(on);
    let p = ctx.page_mut(at)?;
    match patch {
        Patch::Child(_, 0) | Patch::Link(_) => {
            let h = page::header_mut(p);
            if let Some(to) = map.get(&PageId(h.link.get())) {
                h.link.set(to.0);
            }
        }
        Patch::Child(_, ci) => {
            let off = node::slot(p, ci - 1);
            remap_at(p, off, map);
        }
        Patch::KeyOverflow(_, i, branch) => {
            let off = node::slot(p, i) + if branch { 8 } else { 0 } + 2 + KEY_LOCAL;
            remap_at(p, off, map);
        }
        Patch::HeapStart(_, i) => {
            let off = node::slot(p, i);
            let key_len = get_u16(p, off) as usize;
            // The heap field: mark u16 | len u32 | page u64 | offset u16.
            let field = off + node::key_field_size(key_len);
            remap_at(p, field + 6, map);
        }
    }
    Ok(())
}

/// One step of a shrink pass: moves up to `max_moves` of the live pages at the end of the
/// file into free pages below, and lowers the page count past every page given back.
pub(crate) fn step(ctx: &mut WriteCtx<'_>, max_moves: usize) -> Result<ShrinkStep> {
    let count = ctx.meta.page_count;
    let free_ids = freelist::walk(ctx, ctx.meta.freelist_head, count)?;
    let mut free = vec![false; count as usize];
    for id in &free_ids {
        let i = id.0 as usize;
        if id.0 == 0 || id.0 >= count || free[i] {
            return Err(Error::corrupt(
                *id,
                "the free list names this page twice, or names the meta page",
            ));
        }
        free[i] = true;
    }
    // With every live page packed at the front, the file would end here.
    let packed_end = count - free_ids.len() as u64;
    let movers: Vec<PageId> = (packed_end..count)
        .rev()
        .filter(|&i| !free[i as usize])
        .take(max_moves.max(1))
        .map(PageId)
        .collect();
    // As many free pages lie below `packed_end` as live pages lie at or past it.
    let dests: Vec<PageId> = (1..packed_end)
        .filter(|&i| free[i as usize])
        .take(movers.len())
        .map(PageId)
        .collect();
    if dests.len() != movers.len() {
        return Err(Error::Invariant(format!(
            "shrink: {} pages to move but {} free places below page {packed_end}",
            movers.len(),
            dests.len()
        )));
    }
    let map: HashMap<PageId, PageId> = movers.iter().copied().zip(dests.iter().copied()).collect();
    if !map.is_empty() {
        let mut moving = Moving::default();
        for &m in &movers {
            match page::kind(ctx.page(m)?) {
                Some(PageKind::Heap) => moving.heap = true,
                Some(PageKind::Overflow) => moving.overflow = true,
                _ => {}
            }
        }
        let mut finder = Finder {
            map: &map,
            moving,
            out: Vec::new(),
        };
        finder.node(ctx, ctx.meta.root, 0)?;
        let patches = finder.out;
        for (&m, &d) in &map {
            ctx.copy_page(m, d)?;
        }
        for patch in patches {
            apply(ctx, patch, &map)?;
        }
        for field in [&mut ctx.meta.root, &mut ctx.meta.heap_tail] {
            if let Some(&to) = map.get(field) {
                *field = to;
            }
        }
        for (&m, &d) in &map {
            free[m.0 as usize] = true;
            free[d.0 as usize] = false;
        }
    }
    // One past the highest page in use (page 0, the meta page, always is).
    let end = (1..count)
        .rev()
        .find(|&i| !free[i as usize])
        .map_or(1, |i| i + 1);
    let remaining: Vec<PageId> = (1..end).filter(|&i| free[i as usize]).map(PageId).collect();
    ctx.cut(end);
    freelist::rebuild(ctx, &remaining);
    Ok(ShrinkStep {
        pages_moved: map.len() as u64,
        pages_cut: count - end,
        page_count: end,
        done: end == packed_end,
    })
}
