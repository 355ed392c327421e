//! B+tree changes: insert, overwrite, delete, split, merge and redistribute. All of it runs
//! on the writer's overlay (`WriteCtx`).
//!
//! Splits and rebalances gather a node's cells, decide the new layout, and rebuild the pages:
//! simple and obviously order-preserving; the common case (a cell that fits) edits in place.

use std::cmp::Ordering;

use crate::btree::{self, load_key, node_kind, MAX_DEPTH};
use crate::error::{Error, Result};
use crate::node::{self, ValRef, KEY_INLINE_MAX, KEY_LOCAL, MIN_FILL, SLOT};
use crate::overflow;
use crate::page::{self, PageKind, PAGE_SIZE, USABLE};
use crate::pager::PageSource;
use crate::txn::WriteCtx;
use crate::types::PageId;

pub(crate) type Cell = Vec<u8>;

/// Inserts or overwrites `key`. Returns true if the key is new.
pub(crate) fn put(ctx: &mut WriteCtx<'_>, key: &[u8], value: &[u8]) -> Result<bool> {
    put_keeping(ctx, key, value, None)
}

/// Inserts or overwrites `key`; returns the value it replaced (one descent where a get and
/// a put took two).
pub(crate) fn replace(ctx: &mut WriteCtx<'_>, key: &[u8], value: &[u8]) -> Result<Option<Vec<u8>>> {
    let mut old = None;
    put_keeping(ctx, key, value, Some(&mut old))?;
    Ok(old)
}

/// Inserts or overwrites `key`, copying the value it replaces into `old` when asked. Returns
/// true if the key is new.
fn put_keeping(
    ctx: &mut WriteCtx<'_>,
    key: &[u8],
    value: &[u8],
    old: Option<&mut Option<Vec<u8>>>,
) -> Result<bool> {
    let cell = build_leaf_cell(ctx, key, value)?;
    let root = ctx.meta.root;
    let (out, inserted) = put_rec(ctx, root, key, &cell, 0, old)?;
    finish_put(ctx, root, out, inserted)?;
    Ok(inserted)
}

/// Completes a put at the root: splits a full root leaf, grows a new root over a split,
/// hands the root down a branch left with one child, and counts a new key.
fn finish_put(
    ctx: &mut WriteCtx<'_>,
    root: PageId,
    mut out: Outcome,
    inserted: bool,
) -> Result<()> {
    if let Some((idx, cell)) = out.full.take() {
        // A root leaf has no siblings: it splits.
        out.split = split_with(ctx, root, PageKind::Leaf, idx, cell)?;
    }
    if let Some(up) = out.split {
        grow_root(ctx, root, up)?;
    }
    shrink_root(ctx)?;
    if inserted {
        ctx.meta.entries += 1;
    }
    Ok(())
}

/// `modify`'s function: the value a key holds (None: absent) → the value to store (None:
/// change nothing).
pub(crate) type Derive<'f> = dyn FnMut(Option<&[u8]>) -> Option<Vec<u8>> + 'f;

/// Read-modify-write of `key` in one descent: `f` gets the value it holds (None: absent)
/// and returns the value to store, or None to leave the tree as it is. Returns None if `f`
/// declined, else whether the key is new.
pub(crate) fn modify(
    ctx: &mut WriteCtx<'_>,
    key: &[u8],
    f: &mut Derive<'_>,
) -> Result<Option<bool>> {
    let root = ctx.meta.root;
    let Some((out, inserted)) = modify_rec(ctx, root, key, f, 0)? else {
        return Ok(None);
    };
    finish_put(ctx, root, out, inserted)?;
    Ok(Some(inserted))
}

fn modify_rec(
    ctx: &mut WriteCtx<'_>,
    id: PageId,
    key: &[u8],
    f: &mut Derive<'_>,
    depth: usize,
) -> Result<Option<(Outcome, bool)>> {
    check_depth(id, depth)?;
    let p = ctx.page(id)?;
    if node_kind(p, id)? == PageKind::Branch {
        let ci = btree::search_branch(ctx, p, key)?;
        let c = node::child(p, ci);
        return match modify_rec(ctx, c, key, f, depth + 1)? {
            Some((out, inserted)) => Ok(Some((fix_child(ctx, id, ci, out)?, inserted))),
            None => Ok(None),
        };
    }
    let at = btree::search_leaf(ctx, p, key)?;
    let new = match at {
        Ok(i) => {
            let (_, v) = node::leaf_entry(p, i);
            let old = btree::load_value(ctx, v)?;
            f(Some(&old))
        }
        Err(_) => f(None),
    };
    let Some(new) = new else {
        return Ok(None);
    };
    crate::db::check_sizes(key, Some(&new))?;
    // The new cell's heap or overflow pages (if any) are other pages: the slot found above
    // stays where it is.
    let cell = build_leaf_cell(ctx, key, &new)?;
    put_in_leaf(ctx, id, at, &cell, None).map(Some)
}

/// Deletes `key`. Returns true if it was present.
pub(crate) fn delete(ctx: &mut WriteCtx<'_>, key: &[u8]) -> Result<bool> {
    delete_keeping(ctx, key, None)
}

/// Deletes `key`; returns the value it held (`None`: absent).
pub(crate) fn take(ctx: &mut WriteCtx<'_>, key: &[u8]) -> Result<Option<Vec<u8>>> {
    let mut old = None;
    delete_keeping(ctx, key, Some(&mut old))?;
    Ok(old)
}

/// Deletes `key`, copying its value into `old` when asked. Returns true if it was present.
fn delete_keeping(
    ctx: &mut WriteCtx<'_>,
    key: &[u8],
    old: Option<&mut Option<Vec<u8>>>,
) -> Result<bool> {
    let root = ctx.meta.root;
    let (out, found) = del_rec(ctx, root, key, 0, old)?;
    if let Some(up) = out.split {
        grow_root(ctx, root, up)?;
    }
    shrink_root(ctx)?;
    if found {
        ctx.meta.entries = ctx.meta.entries.checked_sub(1).ok_or_else(|| {
            Error::corrupt(
                PageId(0),
                "the meta page counts fewer entries than the tree holds",
            )
        })?;
    }
    Ok(found)
}

/// A branch root left with a single child hands the root role to that child.
fn shrink_root(ctx: &mut WriteCtx<'_>) -> Result<()> {
    loop {
        let root = ctx.meta.root;
        let p = ctx.page(root)?;
        if node_kind(p, root)? != PageKind::Branch || node::count(p) > 0 {
            return Ok(());
        }
        ctx.meta.root = node::child(p, 0);
        ctx.free(root)?;
    }
}

fn check_depth(id: PageId, depth: usize) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(Error::corrupt(
            id,
            "tree deeper than any valid tree (a cycle?)",
        ));
    }
    Ok(())
}

fn grow_root(ctx: &mut WriteCtx<'_>, old_root: PageId, up: Cell) -> Result<()> {
    let id = ctx.alloc(PageKind::Branch)?;
    node::rebuild(ctx.page_mut(id)?, PageKind::Branch, id, old_root, &[up]);
    ctx.meta.root = id;
    Ok(())
}

fn put_rec(
    ctx: &mut WriteCtx<'_>,
    id: PageId,
    key: &[u8],
    cell: &[u8],
    depth: usize,
    keep: Option<&mut Option<Vec<u8>>>,
) -> Result<(Outcome, bool)> {
    check_depth(id, depth)?;
    let p = ctx.page(id)?;
    match node_kind(p, id)? {
        PageKind::Branch => {
            let ci = btree::search_branch(ctx, p, key)?;
            let c = node::child(p, ci);
            let (out, inserted) = put_rec(ctx, c, key, cell, depth + 1, keep)?;
            Ok((fix_child(ctx, id, ci, out)?, inserted))
        }
        _ => {
            // The leaf is about to be copied into the overlay: all of it, not only the
            // lines the search reads.
            page::prefetch_range(p, 0, PAGE_SIZE);
            let at = btree::search_leaf(ctx, p, key)?;
            put_in_leaf(ctx, id, at, cell, keep)
        }
    }
}

/// Puts `cell` into leaf `id` at the slot `search_leaf` found (`Ok`: over the key's cell,
/// whose value goes to `keep` when asked; `Err`: a new key).
fn put_in_leaf(
    ctx: &mut WriteCtx<'_>,
    id: PageId,
    at: std::result::Result<usize, usize>,
    cell: &[u8],
    keep: Option<&mut Option<Vec<u8>>>,
) -> Result<(Outcome, bool)> {
    match at {
        Ok(i) => {
            let p = ctx.page(id)?;
            if let Some(keep) = keep {
                // Read before its heap bytes (if any) are released below.
                let (_, v) = node::leaf_entry(p, i);
                *keep = Some(btree::load_value(ctx, v)?.into_owned());
            }
            let old = node::cell(p, PageKind::Leaf, i).to_vec();
            let off = node::slot(p, i);
            free_leaf_cell_chains(ctx, &old)?;
            if old.len() == cell.len() {
                ctx.overwrite(id, off, cell)?;
                return Ok((Outcome::default(), false));
            }
            ctx.leaf_remove(id, i)?;
            if ctx.leaf_insert(id, i, cell)? {
                // A shorter value can leave the leaf underfull.
                let underflow = node::used(ctx.page(id)?) < MIN_FILL;
                return Ok((
                    Outcome {
                        underflow,
                        ..Outcome::default()
                    },
                    false,
                ));
            }
            Ok((Outcome::full(i, cell), false))
        }
        Err(i) => {
            if ctx.leaf_insert(id, i, cell)? {
                return Ok((Outcome::default(), true));
            }
            Ok((Outcome::full(i, cell), true))
        }
    }
}

/// What a change did to a node: split off a sibling (the cell for the parent), left the
/// node underfull, or (a leaf) found no room for a cell, which its parent makes among the
/// leaf's siblings. Never two: halves of a split are well above the minimum.
#[derive(Default)]
struct Outcome {
    split: Option<Cell>,
    underflow: bool,
    /// The leaf's cells, with this cell inserted at this slot, need more than its page.
    full: Option<(usize, Cell)>,
}

impl Outcome {
    fn full(idx: usize, cell: &[u8]) -> Outcome {
        Outcome {
            full: Some((idx, cell.to_vec())),
            ..Outcome::default()
        }
    }
}

/// Applies a child's outcome to branch `id` (child `ci`), returning the branch's own outcome.
fn fix_child(ctx: &mut WriteCtx<'_>, id: PageId, ci: usize, out: Outcome) -> Result<Outcome> {
    let split = if let Some((idx, cell)) = out.full {
        crate::balance::balance_leaves(ctx, id, ci, idx, cell)?
    } else if let Some(up) = out.split {
        insert_branch_cell(ctx, id, ci, up)?
    } else if out.underflow {
        rebalance(ctx, id, ci)?
    } else {
        return Ok(Outcome::default());
    };
    let underflow = split.is_none() && node::used(ctx.page(id)?) < MIN_FILL;
    Ok(Outcome {
        split,
        underflow,
        full: None,
    })
}

fn del_rec(
    ctx: &mut WriteCtx<'_>,
    id: PageId,
    key: &[u8],
    depth: usize,
    keep: Option<&mut Option<Vec<u8>>>,
) -> Result<(Outcome, bool)> {
    check_depth(id, depth)?;
    let p = ctx.page(id)?;
    match node_kind(p, id)? {
        PageKind::Branch => {
            let ci = btree::search_branch(ctx, p, key)?;
            let c = node::child(p, ci);
            let (out, found) = del_rec(ctx, c, key, depth + 1, keep)?;
            Ok((fix_child(ctx, id, ci, out)?, found))
        }
        _ => match btree::search_leaf(ctx, p, key)? {
            Ok(i) => {
                page::prefetch_range(p, 0, PAGE_SIZE);
                if let Some(keep) = keep {
                    // Read before its heap bytes (if any) are released below.
                    let (_, v) = node::leaf_entry(p, i);
                    *keep = Some(btree::load_value(ctx, v)?.into_owned());
                }
                let old = node::cell(p, PageKind::Leaf, i).to_vec();
                free_leaf_cell_chains(ctx, &old)?;
                ctx.leaf_remove(id, i)?;
                let underflow = node::used(ctx.page(id)?) < MIN_FILL;
                Ok((
                    Outcome {
                        underflow,
                        ..Outcome::default()
                    },
                    true,
                ))
            }
            Err(_) => Ok((Outcome::default(), false)),
        },
    }
}

/// Inserts a branch cell at slot `idx` of branch `id`, splitting the branch if it is full.
fn insert_branch_cell(
    ctx: &mut WriteCtx<'_>,
    id: PageId,
    idx: usize,
    cell: Cell,
) -> Result<Option<Cell>> {
    let pm = ctx.page_mut(id)?;
    if node::insert_cell(pm, PageKind::Branch, idx, &cell) {
        return Ok(None);
    }
    split_with(ctx, id, PageKind::Branch, idx, cell)
}

/// Splits page `id` after adding `cell` at slot `idx`; returns the cell for the parent.
fn split_with(
    ctx: &mut WriteCtx<'_>,
    id: PageId,
    kind: PageKind,
    idx: usize,
    cell: Cell,
) -> Result<Option<Cell>> {
    let p = ctx.page(id)?;
    let link = PageId(page::header(p).link.get());
    let mut cells = cells_of(p, kind);
    cells.insert(idx, cell);
    write_node(ctx, id, kind, link, cells)
}

pub(crate) fn cells_of(p: &[u8], kind: PageKind) -> Vec<Cell> {
    (0..node::count(p))
        .map(|i| node::cell(p, kind, i).to_vec())
        .collect()
}

/// Makes page `id` hold `cells`; if they do not fit, splits them over `id` and a new right
/// sibling and returns the branch cell that routes to the sibling.
pub(crate) fn write_node(
    ctx: &mut WriteCtx<'_>,
    id: PageId,
    kind: PageKind,
    link: PageId,
    cells: Vec<Cell>,
) -> Result<Option<Cell>> {
    if node::cost(&cells) <= USABLE {
        node::rebuild(ctx.page_mut(id)?, kind, id, link, &cells);
        return Ok(None);
    }
    let right = ctx.alloc(kind)?;
    Ok(Some(share(ctx, kind, id, link, right, cells)?))
}

/// Spreads `cells` (too many for one page) evenly over pages `left` and `right`, and returns
/// the branch cell that routes to `right`: for leaves a new, suffix-truncated separator; for
/// branches the middle cell, moved up (its child becomes `right`'s leftmost child).
fn share(
    ctx: &mut WriteCtx<'_>,
    kind: PageKind,
    left: PageId,
    left_link: PageId,
    right: PageId,
    mut cells: Vec<Cell>,
) -> Result<Cell> {
    match kind {
        PageKind::Leaf => {
            let m = leaf_split_point(&cells);
            let right_cells = cells.split_off(m);
            let sep = separator(ctx, &cells[m - 1], &right_cells[0])?;
            node::rebuild(ctx.page_mut(left)?, kind, left, PageId::NONE, &cells);
            node::rebuild(
                ctx.page_mut(right)?,
                kind,
                right,
                PageId::NONE,
                &right_cells,
            );
            make_branch_cell(ctx, right, &sep)
        }
        _ => {
            let m = branch_split_point(&cells);
            let right_cells = cells.split_off(m + 1);
            let mut up = cells.pop().expect("split point inside the cells");
            let right_link = node::branch_cell_child(&up);
            node::set_branch_cell_child(&mut up, right);
            node::rebuild(ctx.page_mut(left)?, kind, left, left_link, &cells);
            node::rebuild(ctx.page_mut(right)?, kind, right, right_link, &right_cells);
            Ok(up)
        }
    }
}

fn costs(cells: &[Cell]) -> Vec<usize> {
    cells.iter().map(|c| c.len() + SLOT).collect()
}

/// The first index of the right half: both halves fit and are as even as possible.
fn leaf_split_point(cells: &[Cell]) -> usize {
    let c = costs(cells);
    let total: usize = c.iter().sum();
    let (mut best, mut best_diff, mut left) = (1, usize::MAX, 0);
    for m in 1..c.len() {
        left += c[m - 1];
        let right = total - left;
        if left <= USABLE && right <= USABLE && left.abs_diff(right) < best_diff {
            best = m;
            best_diff = left.abs_diff(right);
        }
    }
    assert!(
        best_diff != usize::MAX,
        "no split point fits: {total} bytes in {} cells",
        c.len()
    );
    best
}

/// The index of the cell that moves up: the cells before and after it both fit, evenly.
fn branch_split_point(cells: &[Cell]) -> usize {
    let c = costs(cells);
    let total: usize = c.iter().sum();
    let (mut best, mut best_diff, mut left) = (1, usize::MAX, 0);
    for m in 1..c.len().saturating_sub(1) {
        left += c[m - 1];
        let right = total - left - c[m];
        if left <= USABLE && right <= USABLE && left.abs_diff(right) < best_diff {
            best = m;
            best_diff = left.abs_diff(right);
        }
    }
    assert!(
        best_diff != usize::MAX,
        "no split point fits: {total} bytes in {} cells",
        c.len()
    );
    best
}

/// Restores the fill of child `ci` of branch `pid`, underfull after a delete: a branch
/// merges with a sibling or, when the two do not fit one page, shares their cells evenly; a
/// leaf is lazier (`merge_leaf`).
fn rebalance(ctx: &mut WriteCtx<'_>, pid: PageId, ci: usize) -> Result<Option<Cell>> {
    let p = ctx.page(pid)?;
    if node::count(p) == 0 {
        return Ok(None);
    }
    let child = node::child(p, ci);
    if node_kind(ctx.page(child)?, child)? == PageKind::Leaf {
        merge_leaf(ctx, pid, ci)?;
        return Ok(None);
    }
    let li = if ci > 0 { ci - 1 } else { 0 };
    let (left, right) = (node::child(p, li), node::child(p, li + 1));
    let sep_cell = node::cell(p, PageKind::Branch, li).to_vec();
    let lp = ctx.page(left)?;
    let rp = ctx.page(right)?;
    let kind = node_kind(lp, left)?;
    if node_kind(rp, right)? != kind {
        return Err(Error::corrupt(right, "siblings of different kinds"));
    }
    let left_link = PageId(page::header(lp).link.get());
    let mut cells = cells_of(lp, kind);
    if kind == PageKind::Branch {
        let mut down = sep_cell.clone();
        node::set_branch_cell_child(&mut down, PageId(page::header(rp).link.get()));
        cells.push(down);
    }
    cells.extend(cells_of(rp, kind));

    if node::cost(&cells) <= USABLE {
        // Merge into the left page; the separator goes away (or moved down, for branches).
        node::rebuild(ctx.page_mut(left)?, kind, left, left_link, &cells);
        ctx.free(right)?;
        if kind == PageKind::Leaf {
            free_branch_cell_chain(ctx, &sep_cell)?;
        }
        node::remove_cell(ctx.page_mut(pid)?, PageKind::Branch, li);
        return Ok(None);
    }

    // Share the cells evenly. A leaf separator is recomputed (the old one's overflow pages, if
    // any, are freed); a branch separator moved down into `cells`, and one of them moves up.
    let new_sep = share(ctx, kind, left, left_link, right, cells)?;
    if kind == PageKind::Leaf {
        free_branch_cell_chain(ctx, &sep_cell)?;
    }
    node::remove_cell(ctx.page_mut(pid)?, PageKind::Branch, li);
    insert_branch_cell(ctx, pid, li, new_sep)
}

/// Leaf `ci` of branch `pid` is underfull after a delete. It goes into a sibling (the left
/// one first) that has room for all its cells — an empty one into either, its neighbour
/// untouched, as nothing moves; one whose siblings have no room stays as it is: each of them is then more than three
/// quarters full, so the pair is still over half full on average, and a sibling that later
/// falls under the minimum itself finds room here.
///
/// Sharing cells with a sibling that has no room (what a branch does) rewrote both leaves
/// and the parent's separator every few deletes at one end of a key range: a queue's pops of
/// 100-byte items every ~17 pops, 3% of the server's CPU under `RPOP`. Now a pop at an end
/// rewrites nothing but its own leaf until that leaf is empty. A merge moves the smaller
/// page's cells into the larger (the larger keeps its bytes, so its WAL delta is only the
/// cells moved in), and frees the smaller. Leaves left sparse by random deletes are the idle
/// repack's work (`repack`).
fn merge_leaf(ctx: &mut WriteCtx<'_>, pid: PageId, ci: usize) -> Result<()> {
    let p = ctx.page(pid)?;
    let n = node::count(p);
    let child = node::child(p, ci);
    let used = node::used(ctx.page(child)?);
    let mut pair = None;
    for li in [ci.checked_sub(1), (ci < n).then_some(ci)]
        .into_iter()
        .flatten()
    {
        let other = node::child(p, if li == ci { ci + 1 } else { li });
        let op = ctx.page(other)?;
        if node_kind(op, other)? != PageKind::Leaf {
            return Err(Error::corrupt(other, "siblings of different kinds"));
        }
        if used + node::used(op) <= USABLE {
            pair = Some(li);
            break;
        }
    }
    let Some(li) = pair else {
        return Ok(());
    };
    let (left, right) = (node::child(p, li), node::child(p, li + 1));
    let sep_cell = node::cell(p, PageKind::Branch, li).to_vec();
    let into_left = node::used(ctx.page(left)?) >= node::used(ctx.page(right)?);
    let (keep, gone) = if into_left {
        (left, right)
    } else {
        (right, left)
    };
    let mut moved = [0u8; PAGE_SIZE];
    moved.copy_from_slice(ctx.page(gone)?);
    let k = node::count(&moved);
    let at = if into_left {
        node::count(ctx.page(keep)?)
    } else {
        0
    };
    // An empty leaf moves nothing: the page kept is not even copied.
    if k > 0 {
        let kp = ctx.page_mut(keep)?;
        for i in 0..k {
            if !node::insert_cell(
                kp,
                PageKind::Leaf,
                at + i,
                node::cell(&moved, PageKind::Leaf, i),
            ) {
                return Err(Error::Invariant(format!(
                    "merging leaf {gone} into {keep}: the cells did not fit"
                )));
            }
        }
    }
    ctx.free(gone)?;
    free_branch_cell_chain(ctx, &sep_cell)?;
    let pm = ctx.page_mut(pid)?;
    node::remove_cell(pm, PageKind::Branch, li);
    if !into_left {
        // The right leaf takes the left one's place: the pointer to the left one now points
        // to it.
        if li == 0 {
            page::header_mut(pm).link.set(right.0);
        } else {
            let off = node::slot(pm, li - 1);
            node::set_branch_cell_child(&mut pm[off..], right);
        }
    }
    Ok(())
}

/// The shortest key `s` with `left_last < s <= right_first` (suffix truncation), so branch
/// pages hold short separators however long the keys are.
pub(crate) fn separator(
    ctx: &WriteCtx<'_>,
    left_cell: &[u8],
    right_cell: &[u8],
) -> Result<Vec<u8>> {
    let lk = load_key(ctx, node::key_at(left_cell, 0))?;
    let rk = load_key(ctx, node::key_at(right_cell, 0))?;
    debug_assert_eq!(lk.as_ref().cmp(rk.as_ref()), Ordering::Less);
    let common = lk.iter().zip(rk.iter()).take_while(|(a, b)| a == b).count();
    Ok(rk[..(common + 1).min(rk.len())].to_vec())
}

fn encode_key(ctx: &mut WriteCtx<'_>, key: &[u8], out: &mut Vec<u8>) -> Result<()> {
    let ovf = if key.len() > KEY_INLINE_MAX {
        overflow::write_chain(ctx, &key[KEY_LOCAL..])?
    } else {
        PageId::NONE
    };
    node::encode_key_field(key, ovf, out);
    Ok(())
}

pub(crate) fn make_branch_cell(ctx: &mut WriteCtx<'_>, child: PageId, key: &[u8]) -> Result<Cell> {
    let mut c = Vec::with_capacity(8 + node::key_field_size(key.len()));
    c.extend_from_slice(&child.0.to_le_bytes());
    encode_key(ctx, key, &mut c)?;
    Ok(c)
}

fn build_leaf_cell(ctx: &mut WriteCtx<'_>, key: &[u8], value: &[u8]) -> Result<Cell> {
    let mut c = Vec::with_capacity(node::key_field_size(key.len()) + 12 + value.len().min(512));
    encode_key(ctx, key, &mut c)?;
    if node::value_fits_inline(key.len(), value.len()) {
        node::encode_inline_value(value, &mut c);
    } else {
        let r = crate::heap::append(ctx, value)?;
        node::encode_heap_value(r, &mut c);
    }
    Ok(c)
}

fn free_key_chain(ctx: &mut WriteCtx<'_>, field: &[u8]) -> Result<()> {
    let k = node::key_at(field, 0);
    if k.is_long() {
        overflow::free_chain(ctx, k.ovf, k.len - KEY_LOCAL)?;
    }
    Ok(())
}

pub(crate) fn free_branch_cell_chain(ctx: &mut WriteCtx<'_>, cell: &[u8]) -> Result<()> {
    free_key_chain(ctx, node::branch_cell_key_field(cell))
}

fn free_leaf_cell_chains(ctx: &mut WriteCtx<'_>, cell: &[u8]) -> Result<()> {
    let kf = node::leaf_cell_key_field(cell);
    let klen = kf.len();
    free_key_chain(ctx, kf)?;
    if let (ValRef::Heap(r), _) = node::val_at(cell, klen) {
        crate::heap::release(ctx, r)?;
    }
    Ok(())
}
