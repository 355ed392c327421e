//! Giving space back on a primary: heap compaction (storage's `Db::compact`) empties sparse
//! value-heap pages, a repack pass (`Db::repack`) regroups sparse leaves, and a shrink pass
//! (`Db::shrink`) moves the pages at the end of the page file into the free pages below and
//! cuts the file. The `COMPACT` command runs all three and answers with what they did. By
//! itself, a primary runs a heap pass while the value heap holds more garbage than
//! `AUTO_GARBAGE_PCT` of its bytes, a shrink pass while more than `AUTO_FREE_PCT` of the
//! file's pages are free, and a repack pass (then a shrink) when it goes quiet after
//! writing a quarter of its tree's size in WAL: random inserts leave leaves ~69% full, a
//! repack leaves them ~94% full, and doing it when writes pause costs the writers nothing
//! (a load still running would split the packed leaves again). Every step is an ordinary logged
//! commit, so replicas follow byte for byte (and cut their own files at their checkpoints);
//! a node that stops being a writable primary stops before its next step. One pass runs at
//! a time.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::shared::{role_refusal_message, Shared};

/// `COMPACT` moves every long value on a heap page less than this percent live.
pub const COMMAND_SPARSE_PCT: usize = 80;
/// The sweep starts a pass when dead bytes pass this share of the heap's pages (percent)…
pub const AUTO_GARBAGE_PCT: u64 = 40;
/// …and the heap has at least this many pages (4 MiB).
pub const AUTO_MIN_PAGES: u64 = 1024;
/// The sweep's passes move values off pages less than this percent live. With more than
/// `AUTO_GARBAGE_PCT` of the heap dead, the pages average less than 100 - that live, so a
/// pass that starts always finds pages to empty.
pub const AUTO_SPARSE_PCT: usize = 100 - AUTO_GARBAGE_PCT as usize;

/// The sweep shrinks the page file when more than this percent of its pages are free…
pub const AUTO_FREE_PCT: u64 = 50;
/// …and at least this many (4 MiB).
pub const AUTO_MIN_FREE_PAGES: u64 = 1024;

/// The idle repack: WAL written since the last repack must reach this much…
pub const AUTO_REPACK_MIN_WAL: u64 = 8 << 20;
/// …and a quarter of the tree's bytes (leaves and branches)…
pub const AUTO_REPACK_TREE_SHARE: u64 = 4;
/// …and the last `AUTO_CHECK` must have written less than this (the node is quiet).
pub const AUTO_QUIET_WAL: u64 = 64 << 10;

/// Idle repacks run since start (INFO `leaf_repacks`).
pub static IDLE_REPACKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Idle repacks that gave way to writes before their end (INFO `leaf_repacks_paused`).
pub static IDLE_REPACKS_PAUSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The log's end after the last complete leaf repack, by `COMPACT` or the idle repack: the
/// WAL the next idle repack waits for counts from here (0: none this run). Written only by a
/// pass, which only a writable primary runs, so in a process holding several nodes (the
/// demo) replicas' ticks never move it; each node's `auto` keeps its own mark beside it.
static REPACKED_AT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Bytes of values a heap page holds at most.
const HEAP_PAGE_BYTES: u64 = (storage::PAGE_SIZE - 40) as u64;

/// Set while a pass runs (a process serves one node).
static RUNNING: AtomicBool = AtomicBool::new(false);

/// Dead bytes in the heap's pages.
fn garbage(st: &storage::Stats) -> u64 {
    (st.heap_pages * HEAP_PAGE_BYTES).saturating_sub(st.heap_live)
}

/// Whether the value heap holds enough garbage for the sweep to compact it.
pub fn worth_compacting(st: &storage::Stats) -> bool {
    let capacity = st.heap_pages * HEAP_PAGE_BYTES;
    st.heap_pages >= AUTO_MIN_PAGES && garbage(st) * 100 > capacity * AUTO_GARBAGE_PCT
}

/// Whether enough of the page file is free for the sweep to shrink it.
pub fn worth_shrinking(st: &storage::Stats) -> bool {
    st.free_pages >= AUTO_MIN_FREE_PAGES && st.free_pages * 100 > st.page_count * AUTO_FREE_PCT
}

/// Whether the tick that slept `slept` (meant to be `AUTO_CHECK`) after the last one, with
/// `written` bytes of WAL between them, found the node quiet. A tick that comes late (the
/// process was stopped, the machine paused, or the loop starved) says nothing of the
/// clients: nothing was written while this node could not take writes, and they come back
/// the moment it runs again.
pub fn is_quiet(slept: std::time::Duration, written: u64) -> bool {
    slept <= AUTO_CHECK * 2 && written < AUTO_QUIET_WAL
}

/// Whether a quiet primary has written enough since its last repack (WAL from LSN
/// `repacked_at`) for another: random inserts and deletes leave leaves part full.
pub fn worth_repacking(st: &storage::Stats, repacked_at: u64) -> bool {
    let tree_pages = st
        .page_count
        .saturating_sub(st.free_pages)
        .saturating_sub(st.heap_pages);
    let written = st.last_lsn.0.saturating_sub(repacked_at);
    written >= AUTO_REPACK_MIN_WAL
        && written >= tree_pages * storage::PAGE_SIZE as u64 / AUTO_REPACK_TREE_SHARE
}

/// What a pass does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// Heap compaction (values off pages less than this percent live), a leaf repack, then
    /// a shrink.
    Full(usize),
    /// Heap compaction only.
    Heap(usize),
    /// A shrink only.
    Shrink,
    /// A leaf repack, then a shrink, that give way to clients: the idle repack, which stops
    /// after its step if a batch other than its own committed meanwhile.
    Leaves,
}

/// Whether a pass goes on to its next step: not once the node is no longer a writable
/// primary or is shutting down, nor, for a pass that gives way (`Pass::Leaves`), once a
/// client asked for a write since its last step (committed, or waiting for the writer the
/// step holds: the next step would take it again first). A pass that started in a quiet
/// moment must not hold the writer and the log's syncs against the clients that come back
/// (nor against a process that was only paused: its timer fires the moment it runs again,
/// and finds the log quiet).
struct Gate<'a> {
    sh: &'a Shared,
    gives_way: bool,
    /// `Stats::writes_asked` when the pass started.
    at_start: u64,
    gave_way: Cell<bool>,
}

impl Gate<'_> {
    /// Asked before each step.
    fn go_on(&self) -> bool {
        if self.sh.node.write_refusal().is_some() || *self.sh.node.shutdown.borrow() {
            return false;
        }
        if self.gives_way && self.sh.stats.writes_asked.load(Ordering::Relaxed) != self.at_start {
            self.gave_way.set(true);
            return false;
        }
        true
    }
}

/// Where the last idle repack that gave way stopped: the next one goes on from there, so
/// a node that is never quiet for long still gets through its whole tree.
static IDLE_RESUME: parking_lot::Mutex<Option<Vec<u8>>> = parking_lot::Mutex::new(None);

/// A whole pass, off the event loop: the report as text, or an error line for the client
/// (`READONLY …` when this node is not a writable primary, `BUSY …` while another pass
/// runs, `ERR …` when the pass failed, `PAUSED …` when a pass that gives way did).
pub async fn run(sh: &Arc<Shared>, pass: Pass) -> Result<String, String> {
    if let Some(r) = sh.node.write_refusal() {
        return Err(role_refusal_message(&r));
    }
    if RUNNING.swap(true, Ordering::AcqRel) {
        return Err("BUSY a compaction pass is already running on this node".into());
    }
    struct Running;
    impl Drop for Running {
        fn drop(&mut self) {
            RUNNING.store(false, Ordering::Release);
        }
    }
    let _running = Running;
    let sh2 = sh.clone();
    let (report, complete, steps, gave_way) = tokio::task::spawn_blocking(move || {
        let db = sh2.db();
        let gives_way = pass == Pass::Leaves;
        let gate = Gate {
            sh: &sh2,
            gives_way,
            at_start: sh2.stats.writes_asked.load(Ordering::Relaxed),
            gave_way: Cell::new(false),
        };
        let (go_on, gave_way) = (|| gate.go_on(), || gate.gave_way.get());
        let mut lines = Vec::new();
        let mut steps = 0;
        if let Pass::Full(pct) | Pass::Heap(pct) = pass {
            let r = db
                .compact(pct, |_| go_on())
                .map_err(|e| format!("ERR compaction: {e}"))?;
            tracing::info!(report = %r, "heap compaction");
            steps += r.steps;
            lines.push(format!("heap: {r}"));
            if !r.complete {
                return Ok((lines.join("\n"), false, steps, gave_way()));
            }
        }
        if let Pass::Full(_) | Pass::Leaves = pass {
            let from = if gives_way {
                IDLE_RESUME.lock().take()
            } else {
                None
            };
            let r = db
                .repack_from(from, |_| go_on())
                .map_err(|e| format!("ERR repacking leaves: {e}"))?;
            if gives_way && gave_way() {
                IDLE_RESUME.lock().clone_from(&r.resume);
            }
            tracing::info!(report = %r, "leaf repack");
            steps += r.steps;
            lines.push(format!("leaves: {r}"));
            if !r.complete {
                return Ok((lines.join("\n"), false, steps, gave_way()));
            }
            REPACKED_AT.fetch_max(db.stats().last_lsn.0, Ordering::Relaxed);
        }
        if let Pass::Full(_) | Pass::Shrink | Pass::Leaves = pass {
            let r = db
                .shrink(|_| go_on())
                .map_err(|e| format!("ERR shrinking the page file: {e}"))?;
            tracing::info!(report = %r, "page file shrink");
            steps += r.steps;
            lines.push(format!("file: {r}"));
            if !r.complete {
                return Ok((lines.join("\n"), false, steps, gave_way()));
            }
        }
        Ok::<_, String>((lines.join("\n"), true, steps, false))
    })
    .await
    .map_err(|e| format!("ERR the compaction task failed: {e}"))??;
    if !complete {
        let report = report.replace('\n', "; ");
        if gave_way {
            return Err(format!(
                "PAUSED the pass gave way to writes after {steps} steps ({report})"
            ));
        }
        return Err(match sh.node.write_refusal() {
            // The role's own error, so clients that follow READONLY see it.
            Some(r) => format!(
                "{} (compaction stopped after {steps} steps: {report})",
                role_refusal_message(&r),
            ),
            None => format!(
                "ERR compaction stopped after {steps} steps: the node is shutting down ({report})",
            ),
        });
    }
    Ok(report)
}

/// How often the automatic compaction looks at the heap.
const AUTO_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs a pass whenever this node is a writable primary and its heap is worth compacting.
pub async fn auto(sh: Arc<Shared>) {
    let mut stop = sh.node.shutdown.subscribe();
    // Dead heap bytes the last pass left behind.
    let mut floor: Option<u64> = None;
    // The log's end at the last tick, and after the last repack (writes before this run
    // do not count: a restart does not walk the whole tree).
    let start = sh.db().stats().last_lsn.0;
    let (mut prev_lsn, mut repacked_at) = (start, start);
    loop {
        let slept_from = std::time::Instant::now();
        tokio::select! {
            _ = tokio::time::sleep(AUTO_CHECK) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        let st = sh.db().stats();
        let quiet = is_quiet(slept_from.elapsed(), st.last_lsn.0.saturating_sub(prev_lsn));
        prev_lsn = st.last_lsn.0;
        if let Some(refusal) = sh.node.write_refusal() {
            // A replica follows its primary's passes; when promoted, only its own writes
            // count. (A primary paused for a switchover or without its lease keeps its count.)
            if refusal == replication::role::WriteRefusal::ReadOnly {
                repacked_at = st.last_lsn.0;
            }
            continue;
        }
        // A repack `COMPACT` ran counts as one: its own WAL is no reason for another.
        repacked_at = repacked_at.max(REPACKED_AT.load(Ordering::Relaxed));
        if quiet && worth_repacking(&st, repacked_at) {
            match run(&sh, Pass::Leaves).await {
                Ok(report) => {
                    IDLE_REPACKS.fetch_add(1, Ordering::Relaxed);
                    let now = sh.db().stats().last_lsn.0;
                    tracing::info!(
                        report = %report.replace('\n', "; "),
                        wal_bytes = now.saturating_sub(st.last_lsn.0),
                        "idle leaf repack"
                    );
                    (prev_lsn, repacked_at) = (now, now);
                }
                Err(e) if e.starts_with("BUSY") => {}
                // Tried again at the next quiet moment (its own steps' log is not activity).
                Err(e) if e.starts_with("PAUSED") => {
                    IDLE_REPACKS_PAUSED.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("idle leaf repack: {e}");
                    prev_lsn = sh.db().stats().last_lsn.0;
                }
                Err(e) => {
                    tracing::warn!("automatic leaf repack: {e}");
                    repacked_at = sh.db().stats().last_lsn.0;
                }
            }
            continue;
        }
        if worth_shrinking(&st) {
            match run(&sh, Pass::Shrink).await {
                Ok(report) => tracing::debug!(%report, "automatic shrink"),
                Err(e) if e.starts_with("BUSY") => {}
                Err(e) => tracing::warn!("automatic shrink of the page file: {e}"),
            }
            continue;
        }
        if !worth_compacting(&st) {
            continue;
        }
        // Hysteresis: after a pass, the next starts only once the garbage has grown by a
        // quarter (and at least 1 MiB) past what that pass left, so a heap whose pages all
        // sit just above the sparse limit is not walked again and again for nothing.
        if let Some(left) = floor {
            if garbage(&st) <= left + (left / 4).max(1 << 20) {
                continue;
            }
        }
        match run(&sh, Pass::Heap(AUTO_SPARSE_PCT)).await {
            Ok(_) => floor = Some(garbage(&sh.db().stats())),
            Err(e) if e.starts_with("BUSY") => {}
            Err(e) => tracing::warn!("automatic heap compaction: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_tick_is_quiet_only_on_time_and_with_little_written() {
        assert!(is_quiet(AUTO_CHECK, 0));
        assert!(is_quiet(
            AUTO_CHECK + Duration::from_millis(300),
            AUTO_QUIET_WAL - 1
        ));
        assert!(!is_quiet(AUTO_CHECK, AUTO_QUIET_WAL));
        // Woken after a stop (SIGSTOP, a paused machine): nothing written, yet not quiet.
        assert!(!is_quiet(AUTO_CHECK * 3, 0));
    }
}
