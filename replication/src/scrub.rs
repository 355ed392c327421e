//! Scrubbing a node: every page of its page file and the WAL recovery would replay, read
//! from disk and checked, at a bounded rate so foreground latency barely moves; a damaged
//! page is repaired from a peer when the node has one (a replica, from its primary; a
//! cluster's primary, from a member streaming from it), and reported otherwise (docs/operations.md, "Scrubbing").

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use storage::PAGE_SIZE;

use crate::error::Result;
use crate::node::Node;

/// Pages read per step (1 MiB).
const STEP: u64 = 256;

/// What one scrub found and did.
#[derive(Clone, Debug, Default)]
pub struct ScrubReport {
    pub pages_checked: u64,
    pub damaged_pages: u64,
    pub repaired_pages: u64,
    /// Damaged on disk, changed in memory since: the next checkpoint rewrites them.
    pub rewritten_soon: u64,
    pub wal_bytes: u64,
    pub wal_records: u64,
    /// The first WAL record that cannot be read, if any.
    pub wal_damage: Option<(u64, String)>,
    pub elapsed: Duration,
}

impl std::fmt::Display for ScrubReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pages_checked={} damaged_pages={} repaired_pages={} rewritten_at_checkpoint={} wal_bytes={} wal_records={} wal_damage={} elapsed_ms={}",
            self.pages_checked,
            self.damaged_pages,
            self.repaired_pages,
            self.rewritten_soon,
            self.wal_bytes,
            self.wal_records,
            self.wal_damage
                .as_ref()
                .map_or("none".to_string(), |(lsn, _)| format!("LSN {lsn}")),
            self.elapsed.as_millis()
        )
    }
}

/// Scrubs the node now, reading at most `rate` bytes per second (0: unbounded).
pub async fn scrub(node: &Arc<Node>, rate: u64) -> Result<ScrubReport> {
    let _one = node.scrub_lock.lock().await;
    let t0 = Instant::now();
    let mut report = ScrubReport::default();
    let db = node.db();
    let pages = db.file_pages();
    let mut first = 0u64;
    while first < pages {
        let step_start = Instant::now();
        let db2 = db.clone();
        let s = tokio::task::spawn_blocking(move || db2.scrub_pages(first, STEP)).await??;
        report.pages_checked += s.checked;
        report.rewritten_soon += s.rewritten_soon.len() as u64;
        for (id, why) in s.damaged {
            report.damaged_pages += 1;
            tracing::error!(page = id.0, damage = %why, "scrub: a damaged page in the page file");
            if !node.repair_sources().is_empty() {
                match crate::repair::repair_page(node, id).await {
                    Ok(_) => report.repaired_pages += 1,
                    Err(e) => {
                        tracing::error!(page = id.0, error = %format!("{e:#}"), "scrub: could not repair the page")
                    }
                }
            }
        }
        first += STEP;
        if rate > 0 {
            // Paced: this step's bytes at `rate`, less the time the step took.
            let due = Duration::from_secs_f64((STEP * PAGE_SIZE as u64) as f64 / rate as f64);
            if let Some(rest) = due.checked_sub(step_start.elapsed()) {
                tokio::select! {
                    _ = tokio::time::sleep(rest) => {}
                    _ = node.stopped() => return Ok(report),
                }
            }
        }
    }
    let db2 = db.clone();
    let w = tokio::task::spawn_blocking(move || db2.scrub_wal()).await??;
    report.wal_bytes = w.to.0 - w.from.0;
    report.wal_records = w.records;
    if let Some((lsn, why)) = w.damage {
        tracing::error!(lsn = lsn.0, damage = %why, "scrub: a damaged WAL record in the log recovery replays; {}", if node.is_replica_role() { "restart this replica: it cuts its log there and takes the rest from its primary again" } else { "this node will refuse to start as a primary; see docs/operations.md (\"A node whose WAL is damaged\")" });
        report.wal_damage = Some((lsn.0, why));
    }
    report.elapsed = t0.elapsed();
    node.scrubs.fetch_add(1, Ordering::Relaxed);
    *node.last_scrub.lock() = report.to_string();
    tracing::info!(report = %report, "scrub done");
    Ok(report)
}

/// Scrubs the node every `interval` (the first run one interval after start) at `rate`
/// bytes per second, until it stops.
pub async fn scrub_every(node: Arc<Node>, interval: Duration, rate: u64) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = node.stopped() => return,
        }
        if let Err(e) = scrub(&node, rate).await {
            tracing::warn!(error = %format!("{e:#}"), "scrub failed");
        }
    }
}
