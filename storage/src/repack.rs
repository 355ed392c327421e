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
//! Leaves are regrouped in windows of up to eight parents under one grandparent, the parents
//! with them: the leaves over as few pages as hold them at `REPACK_FILL`, then those over as
//! few of the window's parents as hold their separators, each parent at least at the
//! minimum fill; the grandparent keeps its page, loses the separators between the parents
//! that went, and must keep its own minimum fill (unless it is the root). Where no such
//! layout saves a leaf, each parent of the window regroups its own leaves (keeping its
//! minimum fill); a root that is a parent of leaves does the same. A step is one write
//! transaction over up to `budget` parents, in key order; the shrink pass then gives the
//! freed pages back.

use crate::balance::{even_ends, group_sums, Cells};
use crate::btree::{load_key, node_kind, search_branch, MAX_DEPTH};
use crate::error::{Error, Result};
use crate::node::{self, MIN_FILL, SLOT};
use crate::page::{self, PageKind, USABLE};
use crate::pager::PageSource;
use crate::tree_write::{cells_of, free_branch_cell_chain, make_branch_cell, separator};
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
            let c00 = node::child(ctx.page(c0)?, 0);
            if node_kind(ctx.page(c00)?, c00)? == PageKind::Leaf {
                return self.windows(ctx, id);
            }
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

impl Walk<'_> {
    /// The children of `g` (each a parent of leaves) in windows of up to `WINDOW`, leaves and
    /// parents regrouped together. Returns false to stop the walk.
    fn windows(&mut self, ctx: &mut WriteCtx<'_>, g: PageId) -> Result<bool> {
        let mut ci = match self.after {
            Some(a) => search_branch(ctx, ctx.page(g)?, a)?,
            None => 0,
        };
        loop {
            let gp = ctx.page(g)?;
            let children = node::count(gp) + 1;
            if ci >= children {
                return Ok(true);
            }
            let Some(last) = parent_edge(ctx, node::child(gp, ci), true)? else {
                ci += 1;
                continue;
            };
            if self.after.is_some_and(|a| last.as_slice() <= a) {
                ci += 1;
                continue;
            }
            if let (Some(t), Some(first)) =
                (self.through, parent_edge(ctx, node::child(gp, ci), false)?)
            {
                if first.as_slice() > t {
                    self.finished = true;
                    return Ok(false);
                }
            }
            let w = WINDOW.min(children - ci);
            let window_last = parent_edge(ctx, node::child(gp, ci + w - 1), true)?;
            let (parents_after, leaves_before, leaves_after) = match repack_window(ctx, g, ci, w)? {
                Some(c) => c,
                None => {
                    // Parents kept: each regroups its own leaves.
                    let (mut before, mut after) = (0, 0);
                    for j in 0..w {
                        let pid = node::child(ctx.page(g)?, ci + j);
                        let (b, a) = repack(ctx, pid, false)?;
                        before += b;
                        after += a;
                    }
                    (w, before, after)
                }
            };
            self.step.parents_seen += w as u64;
            self.step.leaves_before += leaves_before;
            self.step.leaves_after += leaves_after;
            if window_last.is_some() {
                self.last = window_last;
            }
            ci += parents_after;
            if self.step.parents_seen >= self.budget {
                return Ok(false);
            }
        }
    }
}

/// The first or last key under `pid`, a parent of leaves.
fn parent_edge(ctx: &WriteCtx<'_>, pid: PageId, last: bool) -> Result<Option<Vec<u8>>> {
    let p = ctx.page(pid)?;
    let leaf = node::child(p, if last { node::count(p) } else { 0 });
    let lp = ctx.page(leaf)?;
    let count = node::count(lp);
    if count == 0 {
        return Ok(None);
    }
    let (k, _) = node::leaf_entry(lp, if last { count - 1 } else { 0 });
    Ok(Some(load_key(ctx, k)?.into_owned()))
}

/// Parents of leaves one window regroups together (leaves and parents both).
const WINDOW: usize = 8;

fn branch_cell_cost(sep: &[u8]) -> usize {
    8 + node::key_field_size(sep.len()) + SLOT
}

/// Regroups the leaves under children `ci0 .. ci0 + w` of `g` (each a parent of leaves)
/// over as few leaves as hold them at `REPACK_FILL`, and those leaves over as few of the
/// parents as hold their separators, each parent at least at the minimum fill: returns the
/// parents left and the leaves before and after, or `None` (nothing changed) if no layout
/// saves a leaf within the bounds (`g` must keep its minimum fill unless it is the root).
fn repack_window(
    ctx: &mut WriteCtx<'_>,
    g: PageId,
    ci0: usize,
    w: usize,
) -> Result<Option<(usize, u64, u64)>> {
    let g_is_root = g == ctx.meta.root;
    let gp = ctx.page(g)?;
    let parents: Vec<PageId> = (ci0..ci0 + w).map(|ci| node::child(gp, ci)).collect();
    // Cell i of a branch routes to child i + 1: the separators between the window's parents.
    let g_inner: Vec<Vec<u8>> = (ci0..ci0 + w - 1)
        .map(|i| node::cell(gp, PageKind::Branch, i).to_vec())
        .collect();
    let g_used = node::used(gp);
    let mut leaves = Vec::new();
    let mut leaf_seps = Vec::new();
    for &pid in &parents {
        let pp = ctx.page(pid)?;
        if node_kind(pp, pid)? != PageKind::Branch {
            return Err(Error::corrupt(pid, "a branch's sibling is not a branch"));
        }
        let n = node::count(pp);
        leaf_seps.extend((0..n).map(|i| node::cell(pp, PageKind::Branch, i).to_vec()));
        leaves.extend((0..=n).map(|ci| node::child(pp, ci)));
    }
    let mut cells = Cells::default();
    for &leaf in &leaves {
        let lp = ctx.page(leaf)?;
        if node_kind(lp, leaf)? != PageKind::Leaf {
            return Err(Error::corrupt(leaf, "a leaf's sibling is not a leaf"));
        }
        for i in 0..node::count(lp) {
            cells.push(node::cell(lp, PageKind::Leaf, i));
        }
    }
    let costs = cells.costs();
    let total: usize = costs.iter().sum();
    let g_inner_cost: usize = g_inner.iter().map(|c| c.len() + SLOT).sum();
    let g_children = node::count(ctx.page(g)?) + 1;
    let mut k = total.div_ceil(REPACK_FILL).max(2);
    let layout = 'search: loop {
        if k >= leaves.len() || k > cells.len() {
            return Ok(None);
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
        let sep_total: usize = seps.iter().map(|s| branch_cell_cost(s)).sum();
        let q_min = sep_total.div_ceil(REPACK_FILL).max(1);
        for q in q_min..=w.min(k / 2) {
            if q == 1 && g_is_root && w == g_children {
                // The root would be left with one child.
                continue;
            }
            // Parent j holds leaves runs[j]..runs[j + 1]; the separator before each run but
            // the first goes up to `g`.
            let runs: Vec<usize> = (0..=q).map(|j| k * j / q).collect();
            let fits = (0..q).all(|j| {
                let c: usize = seps[runs[j]..runs[j + 1] - 1]
                    .iter()
                    .map(|s| branch_cell_cost(s))
                    .sum();
                (MIN_FILL..=USABLE).contains(&c)
            });
            let g_after = g_used - g_inner_cost
                + (1..q)
                    .map(|j| branch_cell_cost(&seps[runs[j] - 1]))
                    .sum::<usize>();
            if fits && g_after <= USABLE && (g_is_root || g_after >= MIN_FILL) {
                break 'search (ends, seps, runs);
            }
        }
        return Ok(None);
    };
    let (ends, seps, runs) = layout;
    let q = runs.len() - 1;
    let mut start = 0;
    for (i, &end) in ends.iter().enumerate() {
        let page = leaves[i];
        node::rebuild(
            ctx.page_mut(page)?,
            PageKind::Leaf,
            page,
            PageId::NONE,
            &cells.slices(start..end),
        );
        start = end;
    }
    for &extra in leaves[k..].iter().chain(&parents[q..]) {
        ctx.free(extra)?;
    }
    for c in leaf_seps.iter().chain(&g_inner) {
        free_branch_cell_chain(ctx, c)?;
    }
    for j in 0..q {
        let mut pc = Vec::with_capacity(runs[j + 1] - runs[j]);
        for i in runs[j]..runs[j + 1] - 1 {
            pc.push(make_branch_cell(ctx, leaves[i + 1], &seps[i])?);
        }
        let pid = parents[j];
        node::rebuild(
            ctx.page_mut(pid)?,
            PageKind::Branch,
            pid,
            leaves[runs[j]],
            &pc,
        );
    }
    let mut up = Vec::with_capacity(q - 1);
    for j in 1..q {
        up.push(make_branch_cell(ctx, parents[j], &seps[runs[j] - 1])?);
    }
    let gp = ctx.page(g)?;
    let link = PageId(page::header(gp).link.get());
    let mut gc = cells_of(gp, PageKind::Branch);
    gc.splice(ci0..ci0 + w - 1, up);
    node::rebuild(ctx.page_mut(g)?, PageKind::Branch, g, link, &gc);
    Ok(Some((q, leaves.len() as u64, k as u64)))
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
