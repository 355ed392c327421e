//! Packing leaves: after large deletes, leaves sit anywhere between the minimum fill and
//! full; a repack pass gathers the cells of all the leaves under one parent and lays them
//! out again over as few leaves as hold them at `REPACK_FILL`, freeing the rest.
//!
//! ```text
//! parent P:   c0 | s1 | c1 | s2 | c2 | s3 | c3         four leaves, 40–60% full
//! after:      c0 | s1' | c1                            two leaves ~94% full (even split),
//!                                                      c2 and c3 freed, new separators
//! ```
//!
//! Only leaves under the same parent are regrouped, so nothing above the parent changes:
//! the parent keeps its page and loses separators. A parent that would fall below the
//! minimum fill keeps more leaves (a root may hold as few as two), and one whose new
//! separators would not fit is left alone. A step is one write transaction over up to
//! `budget` parents, in key order; the shrink pass then gives the freed pages back.

use crate::balance::{even_ends, group_sums, Cells};
use crate::btree::{load_key, node_kind, search_branch, MAX_DEPTH};
use crate::error::{Error, Result};
use crate::node::{self, MIN_FILL, SLOT};
use crate::page::{PageKind, USABLE};
use crate::pager::PageSource;
use crate::tree_write::{free_branch_cell_chain, make_branch_cell, separator};
use crate::txn::WriteCtx;
use crate::types::PageId;

/// How full a repack leaves each leaf (of its usable bytes): room for a few inserts or a
/// longer value before the next split.
pub const REPACK_FILL: usize = USABLE * 15 / 16;

/// What one repack step did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RepackStep {
    /// The last key under the last parent looked at (`None`: the walk reached the end).
    pub next: Option<Vec<u8>>,
    pub parents_seen: u64,
    /// Leaves under those parents before and after.
    pub leaves_before: u64,
    pub leaves_after: u64,
}

struct Walk<'k> {
    after: Option<&'k [u8]>,
    through: Option<&'k [u8]>,
    budget: u64,
    step: RepackStep,
    last: Option<Vec<u8>>,
    /// Set when the walk passed `through`.
    finished: bool,
}

impl Walk<'_> {
    /// Returns false to stop the walk (budget spent or `through` passed).
    fn node(&mut self, ctx: &mut WriteCtx<'_>, id: PageId, depth: usize) -> Result<bool> {
        if depth > MAX_DEPTH {
            return Err(Error::corrupt(
                id,
                "tree deeper than any valid tree (a cycle?)",
            ));
        }
        let p = ctx.page(id)?;
        if node_kind(p, id)? != PageKind::Branch {
            return Ok(true);
        }
        let n = node::count(p);
        let c0 = node::child(p, 0);
        if node_kind(ctx.page(c0)?, c0)? != PageKind::Leaf {
            let first = match self.after {
                Some(k) => search_branch(ctx, p, k)?,
                None => 0,
            };
            let kids: Vec<PageId> = (first..=n).map(|ci| node::child(p, ci)).collect();
            for kid in kids {
                if !self.node(ctx, kid, depth + 1)? {
                    return Ok(false);
                }
            }
            return Ok(true);
        }
        // A parent of leaves: its keys run from its first leaf's first to its last's last.
        let edge = |ctx: &WriteCtx<'_>, ci: usize, last: bool| -> Result<Option<Vec<u8>>> {
            let kid = node::child(ctx.page(id)?, ci);
            let kp = ctx.page(kid)?;
            let count = node::count(kp);
            if count == 0 {
                return Ok(None);
            }
            let (k, _) = node::leaf_entry(kp, if last { count - 1 } else { 0 });
            Ok(Some(load_key(ctx, k)?.into_owned()))
        };
        let Some(last_key) = edge(ctx, n, true)? else {
            return Ok(true);
        };
        if self.after.is_some_and(|a| last_key.as_slice() <= a) {
            return Ok(true);
        }
        if let (Some(t), Some(first)) = (self.through, edge(ctx, 0, false)?) {
            if first.as_slice() > t {
                self.finished = true;
                return Ok(false);
            }
        }
        let is_root = id == ctx.meta.root;
        let (before, after) = repack(ctx, id, is_root)?;
        self.step.parents_seen += 1;
        self.step.leaves_before += before;
        self.step.leaves_after += after;
        self.last = Some(last_key);
        Ok(self.step.parents_seen < self.budget)
    }
}

/// Regroups the leaves under branch `pid`; returns how many leaves it had and has.
fn repack(ctx: &mut WriteCtx<'_>, pid: PageId, is_root: bool) -> Result<(u64, u64)> {
    let p = ctx.page(pid)?;
    let n = node::count(p);
    let kids: Vec<PageId> = (0..=n).map(|ci| node::child(p, ci)).collect();
    let old_seps: Vec<Vec<u8>> = (0..n)
        .map(|i| node::cell(p, PageKind::Branch, i).to_vec())
        .collect();
    let parent_used = node::used(p);
    let unchanged = (kids.len() as u64, kids.len() as u64);
    let mut cells = Cells::default();
    for &kid in &kids {
        let kp = ctx.page(kid)?;
        if node_kind(kp, kid)? != PageKind::Leaf {
            return Err(Error::corrupt(kid, "a leaf's sibling is not a leaf"));
        }
        for i in 0..node::count(kp) {
            cells.push(node::cell(kp, PageKind::Leaf, i));
        }
    }
    if cells.len() < 2 {
        return Ok(unchanged);
    }
    let costs = cells.costs();
    let total: usize = costs.iter().sum();
    let old_sep_cost: usize = old_seps.iter().map(|c| c.len() + SLOT).sum();
    // A branch keeps at least one separator (two leaves).
    let mut k = total.div_ceil(REPACK_FILL).max(2);
    let (ends, seps) = loop {
        if k >= kids.len() || k > cells.len() {
            return Ok(unchanged);
        }
        let ends = even_ends(&costs, total, k);
        if !group_sums(&costs, &ends).all(|s| (MIN_FILL..=USABLE).contains(&s)) {
            k += 1;
            continue;
        }
        let mut seps = Vec::with_capacity(k - 1);
        for &b in &ends[..k - 1] {
            seps.push(separator(ctx, cells.get(b - 1), cells.get(b))?);
        }
        let new_sep_cost: usize = seps
            .iter()
            .map(|s| 8 + node::key_field_size(s.len()) + SLOT)
            .sum();
        let used_after = parent_used - old_sep_cost + new_sep_cost;
        if used_after > USABLE {
            return Ok(unchanged);
        }
        if !is_root && used_after < MIN_FILL {
            k += 1;
            continue;
        }
        break (ends, seps);
    };
    let mut start = 0;
    for (g, &end) in ends.iter().enumerate() {
        let page = kids[g];
        node::rebuild(
            ctx.page_mut(page)?,
            PageKind::Leaf,
            page,
            PageId::NONE,
            &cells.slices(start..end),
        );
        start = end;
    }
    for &extra in &kids[k..] {
        ctx.free(extra)?;
    }
    for c in &old_seps {
        free_branch_cell_chain(ctx, c)?;
    }
    let mut new_cells = Vec::with_capacity(seps.len());
    for (g, sep) in seps.iter().enumerate() {
        new_cells.push(make_branch_cell(ctx, kids[g + 1], sep)?);
    }
    node::rebuild(
        ctx.page_mut(pid)?,
        PageKind::Branch,
        pid,
        kids[0],
        &new_cells,
    );
    Ok((kids.len() as u64, k as u64))
}

/// One step of a repack pass: regroups the leaves of up to `budget` parents after `after`
/// (from the first if `None`), none of whose keys all lie past `through`.
pub(crate) fn step(
    ctx: &mut WriteCtx<'_>,
    after: Option<&[u8]>,
    through: Option<&[u8]>,
    budget: usize,
) -> Result<RepackStep> {
    let mut w = Walk {
        after,
        through,
        budget: budget.max(1) as u64,
        step: RepackStep::default(),
        last: None,
        finished: false,
    };
    let root = ctx.meta.root;
    let walked_all = w.node(ctx, root, 0)?;
    let mut s = w.step;
    s.next = if walked_all || w.finished {
        None
    } else {
        w.last
    };
    Ok(s)
}
