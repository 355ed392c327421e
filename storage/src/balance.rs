//! Room for a cell in a full leaf. A leaf that overflows splits in two, evenly: random
//! inserts leave leaves ~69% full, and a server packs them to ~94% when it goes quiet
//! (`Db::repack`, run by the idle repack and `COMPACT`). An append after the last key of a
//! parent's last leaf (how an ordered load arrives) packs instead: the page to its left is
//! filled full and only the last keeps room (~99% full; a split: 50%).
//!
//! Sharing with a neighbour (a B*-tree's overflow to siblings) filled leaves to ~80% under
//! random inserts but made a random load of small values ~1.2× as slow: fuller leaves
//! overflow more often and every overflow moves cells. SQLite's three-page balance filled
//! them to 85–87% at 1.2–1.4× the time and 1.9× the WAL (docs/benchmarks.md).
//!
//! Cells move with single removals and inserts, so a page's WAL delta is the cells that came
//! or went, not a rewritten page; the cells are gathered once, into one buffer.

use std::ops::Range;

use crate::btree::node_kind;
use crate::error::{Error, Result};
use crate::node::{self, MIN_FILL, SLOT};
use crate::page::{self, PageKind, USABLE};
use crate::pager::PageSource;
use crate::tree_write::{
    cells_of, free_branch_cell_chain, make_branch_cell, separator, write_node, Cell,
};
use crate::txn::WriteCtx;
use crate::types::PageId;

/// Cells copied out of pages, end to end in one buffer.
#[derive(Default)]
pub(crate) struct Cells {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Cells {
    pub(crate) fn push(&mut self, c: &[u8]) {
        self.bytes.extend_from_slice(c);
        self.ends.push(self.bytes.len());
    }

    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    pub(crate) fn get(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.bytes[start..self.ends[i]]
    }

    pub(crate) fn costs(&self) -> Vec<usize> {
        (0..self.len()).map(|i| self.get(i).len() + SLOT).collect()
    }

    pub(crate) fn slices(&self, r: Range<usize>) -> Vec<&[u8]> {
        r.map(|i| self.get(i)).collect()
    }
}

/// Makes room for `cell` at slot `idx` of child `ci` of branch `pid` (a full leaf). Returns
/// the cell for `pid`'s parent if `pid` itself split.
pub(crate) fn balance_leaves(
    ctx: &mut WriteCtx<'_>,
    pid: PageId,
    ci: usize,
    idx: usize,
    cell: Cell,
) -> Result<Option<Cell>> {
    let p = ctx.page(pid)?;
    let n = node::count(p);
    // Appending after the last key of a parent's last leaf is how ordered loads arrive: the
    // left neighbour is packed full. Otherwise the leaf splits.
    let full_count = node::count(ctx.page(node::child(p, ci))?);
    let appending = ci == n && idx == full_count;
    let (lo, hi) = if appending {
        (ci.saturating_sub(1), ci)
    } else {
        (ci, ci)
    };
    let p = ctx.page(pid)?;
    let kids: Vec<PageId> = (lo..=hi).map(|j| node::child(p, j)).collect();
    let old_seps: Vec<Cell> = (lo..hi)
        .map(|j| node::cell(p, PageKind::Branch, j).to_vec())
        .collect();
    // Every cell of the window in order, the new one included; where each page's run starts.
    let mut cells = Cells::default();
    let mut firsts = Vec::with_capacity(kids.len() + 1);
    let mut new_at = 0;
    for (j, &kid) in kids.iter().enumerate() {
        let kp = ctx.page(kid)?;
        if node_kind(kp, kid)? != PageKind::Leaf {
            return Err(Error::corrupt(kid, "a leaf's sibling is not a leaf"));
        }
        firsts.push(cells.len());
        let count = node::count(kp);
        for i in 0..count {
            if lo + j == ci && i == idx {
                new_at = cells.len();
                cells.push(&cell);
            }
            cells.push(node::cell(kp, PageKind::Leaf, i));
        }
        if lo + j == ci {
            if idx > count {
                return Err(Error::corrupt(kid, "insert position past the leaf's cells"));
            }
            if idx == count {
                new_at = cells.len();
                cells.push(&cell);
            }
        }
    }
    firsts.push(cells.len());
    let ends = if appending {
        packed(&cells.costs())
    } else {
        partition(&cells.costs())
    };
    let mut pages = kids;
    while pages.len() < ends.len() {
        pages.push(ctx.alloc(PageKind::Leaf)?);
    }
    for extra in pages.split_off(ends.len()) {
        ctx.free(extra)?;
    }
    let mut start = 0;
    for (g, (&page, &end)) in pages.iter().zip(&ends).enumerate() {
        let held = firsts.get(g + 1).map(|&e| firsts[g]..e);
        let new = (lo + g == ci).then_some(new_at);
        if held != Some(start..end) || new.is_some() {
            regroup(ctx.page_mut(page)?, page, held, new, &cells, start..end);
        }
        start = end;
    }
    let mut seps = Vec::with_capacity(ends.len() - 1);
    for (g, &b) in ends[..ends.len() - 1].iter().enumerate() {
        let sep = separator(ctx, cells.get(b - 1), cells.get(b))?;
        seps.push(make_branch_cell(ctx, pages[g + 1], &sep)?);
    }
    for s in &old_seps {
        free_branch_cell_chain(ctx, s)?;
    }
    let pm = ctx.page_mut(pid)?;
    for _ in lo..hi {
        node::remove_cell(pm, PageKind::Branch, lo);
    }
    for (j, s) in seps.iter().enumerate() {
        if !node::insert_cell(ctx.page_mut(pid)?, PageKind::Branch, lo + j, s) {
            // The branch is full: rebuilt with the rest of the separators, it splits.
            let pp = ctx.page(pid)?;
            let link = PageId(page::header(pp).link.get());
            let mut pc = cells_of(pp, PageKind::Branch);
            let at = lo + j;
            pc.splice(at..at, seps[j..].iter().cloned());
            return write_node(ctx, pid, PageKind::Branch, link, pc);
        }
    }
    Ok(None)
}

/// Makes leaf `page` hold `cells[want]`. It held `cells[held]` (but `cells[new]`, the cell
/// that did not fit), or nothing if it is new.
fn regroup(
    p: &mut [u8],
    page: PageId,
    held: Option<Range<usize>>,
    new: Option<usize>,
    cells: &Cells,
    want: Range<usize>,
) {
    let Some(held) = held else {
        node::rebuild(p, PageKind::Leaf, page, PageId::NONE, &cells.slices(want));
        return;
    };
    // The cells on the page, by index into `cells`, in slot order.
    let on_page: Vec<usize> = held.filter(|&x| Some(x) != new).collect();
    let keep = on_page.iter().filter(|x| want.contains(x)).count();
    let before = on_page.iter().take_while(|&&x| x < want.start).count();
    for _ in before + keep..on_page.len() {
        node::remove_cell(p, PageKind::Leaf, before + keep);
    }
    for _ in 0..before {
        node::remove_cell(p, PageKind::Leaf, 0);
    }
    // What stays is `on_page` within `want`; the rest of `want` goes in, in order, each at
    // its final slot (every cell before it is in place by then).
    let kept = &on_page[before..before + keep];
    for x in want.clone() {
        if kept.binary_search(&x).is_err()
            && !node::insert_cell(p, PageKind::Leaf, x - want.start, cells.get(x))
        {
            // Cannot happen (the group fits a page); if it did, a rebuild always fits.
            node::rebuild(p, PageKind::Leaf, page, PageId::NONE, &cells.slices(want));
            return;
        }
    }
}

/// Where the groups of cells with these costs end: as few groups as fit a page each, as
/// even as the cells allow, each at least `MIN_FILL` when there are several. (Some count
/// always works: one more group than the bytes need leaves every group between half a page
/// less a cell and seven eighths of one; failing all, one cell per group fits.)
fn partition(costs: &[usize]) -> Vec<usize> {
    let total: usize = costs.iter().sum();
    let first = total.div_ceil(USABLE).max(1);
    let mut loose = None;
    for k in first..=costs.len() {
        let ends = even_ends(costs, total, k);
        let (fits, filled) = group_sums(costs, &ends).fold((true, true), |(f, m), s| {
            (f && s <= USABLE, m && s >= MIN_FILL)
        });
        if fits && (filled || k == 1) {
            return ends;
        }
        if fits && loose.is_none() {
            loose = Some(ends);
        }
    }
    loose.unwrap_or_else(|| (1..=costs.len()).collect())
}

pub(crate) fn group_sums<'a>(
    costs: &'a [usize],
    ends: &'a [usize],
) -> impl Iterator<Item = usize> + 'a {
    ends.iter().scan(0, |start, &end| {
        let s: usize = costs[*start..end].iter().sum();
        *start = end;
        Some(s)
    })
}

/// Where the groups end when each group but the last is filled as full as a page allows;
/// the last then takes cells back from the one before until it is at least `MIN_FILL`
/// (that one stays above it: it was full less a cell).
fn packed(costs: &[usize]) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut acc = 0;
    for (i, &c) in costs.iter().enumerate() {
        if acc + c > USABLE {
            ends.push(i);
            acc = 0;
        }
        acc += c;
    }
    ends.push(costs.len());
    if ends.len() >= 2 {
        let at = ends.len() - 2;
        let floor = if at == 0 { 1 } else { ends[at - 1] + 1 };
        let mut b = ends[at];
        while acc < MIN_FILL && b > floor {
            b -= 1;
            acc += costs[b];
        }
        ends[at] = b;
    }
    ends
}

/// `k` consecutive non-empty groups whose boundaries fall as near to `total * g / k` as the
/// cells allow (a cell joins the group its middle lies in).
pub(crate) fn even_ends(costs: &[usize], total: usize, k: usize) -> Vec<usize> {
    let mut ends = Vec::with_capacity(k);
    let (mut i, mut acc) = (0, 0);
    for g in 1..k {
        let target = total * g / k;
        let start = i;
        // Leave at least one cell for each group still to come.
        while i < costs.len() - (k - g) && (i == start || acc + costs[i] / 2 < target) {
            acc += costs[i];
            i += 1;
        }
        ends.push(i);
    }
    ends.push(costs.len());
    ends
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::MAX_CELL_COST;
    use proptest::prelude::*;

    proptest! {
        /// Any cells that overflow up to three pages are grouped into as few pages as the
        /// even spread allows, every group fits a page and none is underfull.
        #[test]
        fn partition_fits_every_group_and_fills_each(
            all in prop::collection::vec(SLOT + 6..=MAX_CELL_COST, 400),
            want in USABLE + 1..=3 * USABLE + MAX_CELL_COST,
        ) {
            // Cells overflowing one to three pages.
            let costs = prefix_of(&all, want);
            let total: usize = costs.iter().sum();
            prop_assume!(total >= want);
            let ends = partition(costs);
            check_groups(costs, &ends)?;
            prop_assert!(ends.len() <= total.div_ceil(USABLE) + 1, "{} groups", ends.len());
        }

        /// Packed groups (an ordered load): every group fits and is at least `MIN_FILL`, and
        /// every one before the last two is full but for less than a cell.
        #[test]
        fn packed_groups_fill_all_pages_but_the_last(
            all in prop::collection::vec(SLOT + 6..=MAX_CELL_COST, 400),
            want in USABLE + 1..=3 * USABLE + MAX_CELL_COST,
        ) {
            let costs = prefix_of(&all, want);
            prop_assume!(costs.iter().sum::<usize>() >= want);
            let ends = packed(costs);
            check_groups(costs, &ends)?;
            let mut start = 0;
            for &end in ends.iter().rev().skip(2).rev() {
                let s: usize = costs[start..end].iter().sum();
                prop_assert!(s + MAX_CELL_COST > USABLE, "a packed group of {} bytes", s);
                start = end;
            }
        }
    }

    /// The shortest prefix of `all` of at least `want` bytes, or all of it.
    fn prefix_of(all: &[usize], want: usize) -> &[usize] {
        let mut total = 0;
        let n = all
            .iter()
            .take_while(|&&c| {
                let before = total;
                total += c;
                before < want
            })
            .count();
        &all[..n]
    }

    /// Every group non-empty, within a page, and at least `MIN_FILL`; the last ends the cells.
    fn check_groups(costs: &[usize], ends: &[usize]) -> Result<(), TestCaseError> {
        prop_assert_eq!(ends.last().copied(), Some(costs.len()));
        let mut start = 0;
        for &end in ends {
            prop_assert!(end > start);
            let s: usize = costs[start..end].iter().sum();
            prop_assert!((MIN_FILL..=USABLE).contains(&s), "group of {} bytes", s);
            start = end;
        }
        Ok(())
    }
}
