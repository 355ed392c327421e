//! `Db::compact`: a whole pass of heap compaction (compact.rs), step by step; `Db::repack`:
//! a whole pass regrouping leaves (repack.rs); `Db::shrink`: a whole pass moving pages off
//! the end of the page file (shrink.rs).

use super::{Db, WriteTxn};
use crate::compact::{self, CompactStep};
use crate::error::Result;
use crate::repack::{self, RepackStep};
use crate::shrink::{self, ShrinkStep};
use crate::Durability;

/// Entries one compaction step looks at: a step is one write transaction, so this bounds how
/// long other writers wait behind it.
pub const COMPACT_STEP_ENTRIES: usize = 2048;

/// What a compaction pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactReport {
    pub steps: u64,
    pub entries_seen: u64,
    pub values_moved: u64,
    pub bytes_moved: u64,
    pub heap_pages_before: u64,
    pub heap_pages_after: u64,
    pub heap_live: u64,
    pub free_pages: u64,
    /// Whether the pass reached the end (false: `go_on` stopped it).
    pub complete: bool,
    /// Where a pass `go_on` stopped can go on: the key to give `repack_from` (the last one
    /// its steps covered).
    pub resume: Option<Vec<u8>>,
}

impl std::fmt::Display for CompactReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}moved {} values ({} bytes) after looking at {} keys; heap pages {} -> {} \
             holding {} live bytes; {} pages free for reuse",
            if self.complete { "" } else { "stopped early: " },
            self.values_moved,
            self.bytes_moved,
            self.entries_seen,
            self.heap_pages_before,
            self.heap_pages_after,
            self.heap_live,
            self.free_pages
        )
    }
}

impl WriteTxn<'_> {
    /// One step of heap compaction: looks at up to `budget` entries after `after` (from the
    /// first if `None`; none past `through`, if given) and copies each long value that touches a heap page less than
    /// `sparse_pct` percent live to the heap's tail. `next` in the result is where the next
    /// step starts (`None`: the pass is done).
    pub fn compact_heap(
        &mut self,
        after: Option<&[u8]>,
        through: Option<&[u8]>,
        budget: usize,
        sparse_pct: usize,
    ) -> Result<CompactStep> {
        compact::step(&mut self.ctx, after, through, budget, sparse_pct)
    }

    /// One step of a shrink pass: moves up to `max_moves` live pages from the end of the page
    /// file into free pages below and lowers the page count (`done`: nothing left to move).
    pub fn shrink_step(&mut self, max_moves: usize) -> Result<ShrinkStep> {
        shrink::step(&mut self.ctx, max_moves)
    }

    /// One step of a repack pass: regroups the leaves under up to `budget` parents after
    /// `after` (none wholly past `through`). `next` is where the next step starts.
    pub fn repack_leaves(
        &mut self,
        after: Option<&[u8]>,
        through: Option<&[u8]>,
        budget: usize,
    ) -> Result<RepackStep> {
        repack::step(&mut self.ctx, after, through, budget)
    }

    /// Heap pages, and the bytes of live values in them.
    pub fn heap_usage(&self) -> (u64, u64) {
        (self.ctx.meta.heap_pages, self.ctx.meta.heap_live)
    }
}

/// Parents one repack step regroups the leaves of (at most ~200 leaves each).
pub const REPACK_STEP_PARENTS: usize = 16;

/// What a repack pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RepackReport {
    pub steps: u64,
    pub parents_seen: u64,
    pub leaves_before: u64,
    pub leaves_after: u64,
    /// Whether the pass reached the end (false: `go_on` stopped it).
    pub complete: bool,
    /// Where a pass `go_on` stopped can go on: the key to give `repack_from` (the last one
    /// its steps covered).
    pub resume: Option<Vec<u8>>,
}

impl std::fmt::Display for RepackReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}regrouped the leaves of {} parents in {} steps: {} leaves -> {}",
            if self.complete { "" } else { "stopped early: " },
            self.parents_seen,
            self.steps,
            self.leaves_before,
            self.leaves_after
        )
    }
}

/// Pages one shrink step moves at most (16 MiB): a step is one write transaction and one
/// batch in the log.
pub const SHRINK_STEP_PAGES: usize = 4096;

/// What a shrink pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShrinkReport {
    pub steps: u64,
    pub pages_moved: u64,
    pub pages_before: u64,
    pub pages_after: u64,
    /// The page file's size before the pass and after the checkpoint that ends it.
    pub file_bytes_before: u64,
    pub file_bytes_after: u64,
    /// Whether the pass reached the end (false: `go_on` stopped it).
    pub complete: bool,
    /// Where a pass `go_on` stopped can go on: the key to give `repack_from` (the last one
    /// its steps covered).
    pub resume: Option<Vec<u8>>,
}

impl std::fmt::Display for ShrinkReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}moved {} pages in {} steps; pages {} -> {}; page file {} -> {} bytes",
            if self.complete { "" } else { "stopped early: " },
            self.pages_moved,
            self.steps,
            self.pages_before,
            self.pages_after,
            self.file_bytes_before,
            self.file_bytes_after
        )
    }
}

impl Db {
    /// A whole repack pass: the leaves under each parent are laid out again over as few
    /// leaves as hold them at `REPACK_FILL` (the rest freed, for `shrink` to give back).
    /// Each step is its own durable commit; `go_on` is asked before each step.
    pub fn repack(&self, go_on: impl FnMut(Option<&RepackStep>) -> bool) -> Result<RepackReport> {
        self.repack_from(None, go_on)
    }

    /// `repack` over the keys after `after` only (all if `None`): the rest of a pass that
    /// stopped there (`RepackReport::resume`).
    pub fn repack_from(
        &self,
        mut after: Option<Vec<u8>>,
        mut go_on: impl FnMut(Option<&RepackStep>) -> bool,
    ) -> Result<RepackReport> {
        let mut r = RepackReport::default();
        let through: Option<Vec<u8>> = match self.range::<std::ops::RangeFull>(..).next_back() {
            Some(entry) => Some(entry?.0),
            None => None,
        };
        let mut last: Option<RepackStep> = None;
        loop {
            if !go_on(last.as_ref()) {
                r.resume = after;
                break;
            }
            let (s, _) = self.update(Durability::Local, |t| {
                t.repack_leaves(after.as_deref(), through.as_deref(), REPACK_STEP_PARENTS)
            })?;
            r.steps += 1;
            r.parents_seen += s.parents_seen;
            r.leaves_before += s.leaves_before;
            r.leaves_after += s.leaves_after;
            after = s.next.clone();
            let done = after.is_none();
            last = Some(s);
            if done {
                r.complete = true;
                break;
            }
        }
        Ok(r)
    }

    /// A whole shrink pass: the live pages at the end of the page file move into free pages
    /// below until no free page is left inside the file, the page count falls with each
    /// step, and a checkpoint at the end cuts the file to it (one at the start, too, so the
    /// report's sizes are the file's). Each step is its own durable
    /// commit (writers go on between steps; replicas follow byte for byte). `go_on` is
    /// asked before each step (with the step before, if any); false stops the pass there.
    pub fn shrink(
        &self,
        mut go_on: impl FnMut(Option<&ShrinkStep>) -> bool,
    ) -> Result<ShrinkReport> {
        // The file as a checkpoint leaves it, so the report compares like with like.
        self.checkpoint()?;
        let before = self.stats();
        let mut r = ShrinkReport {
            pages_before: before.page_count,
            file_bytes_before: before.file_bytes,
            ..ShrinkReport::default()
        };
        // A pass gives back what was free when it started: pages writers free while it runs
        // may be left to the next, so a pass ends however busy the writers are.
        let most_steps = before.free_pages / SHRINK_STEP_PAGES as u64 + 2;
        let mut last: Option<ShrinkStep> = None;
        loop {
            if !go_on(last.as_ref()) {
                break;
            }
            let (s, _) = self.update(Durability::Local, |t| t.shrink_step(SHRINK_STEP_PAGES))?;
            r.steps += 1;
            r.pages_moved += s.pages_moved;
            let done = s.done || r.steps >= most_steps;
            last = Some(s);
            if done {
                r.complete = true;
                break;
            }
        }
        if r.steps > 0 {
            self.checkpoint()?;
        }
        let now = self.stats();
        r.pages_after = now.page_count;
        r.file_bytes_after = now.file_bytes;
        Ok(r)
    }

    /// A whole compaction pass: every long value on a heap page less than `sparse_pct`
    /// percent live is moved to the heap's tail, so those pages empty and are freed. Each
    /// step is its own durable commit, so writers go on between steps. `go_on` is asked
    /// before each step (with the step before, if any); false stops the pass there.
    pub fn compact(
        &self,
        sparse_pct: usize,
        mut go_on: impl FnMut(Option<&CompactStep>) -> bool,
    ) -> Result<CompactReport> {
        let before = self.stats();
        let mut r = CompactReport {
            heap_pages_before: before.heap_pages,
            ..CompactReport::default()
        };
        // The pass ends at the last key it started with: a pass never chases keys that
        // writers keep adding past its cursor.
        let through: Option<Vec<u8>> = match self.range::<std::ops::RangeFull>(..).next_back() {
            Some(entry) => Some(entry?.0),
            None => None,
        };
        let mut after: Option<Vec<u8>> = None;
        let mut last: Option<CompactStep> = None;
        loop {
            if !go_on(last.as_ref()) {
                break;
            }
            let (s, _) = self.update(Durability::Local, |t| {
                t.compact_heap(
                    after.as_deref(),
                    through.as_deref(),
                    COMPACT_STEP_ENTRIES,
                    sparse_pct,
                )
            })?;
            r.steps += 1;
            r.entries_seen += s.entries_seen;
            r.values_moved += s.values_moved;
            r.bytes_moved += s.bytes_moved;
            after = s.next.clone();
            let done = after.is_none();
            last = Some(s);
            if done {
                r.complete = true;
                break;
            }
        }
        let now = self.stats();
        r.heap_pages_after = now.heap_pages;
        r.heap_live = now.heap_live;
        r.free_pages = now.free_pages;
        Ok(r)
    }
}
