//! Heap compaction on a primary (storage's `Db::compact`): the `COMPACT` command runs a
//! whole pass and answers with what it did; the sweep runs passes by itself while the value
//! heap holds more garbage than `AUTO_GARBAGE` of its bytes. Every step is an ordinary
//! logged commit, so replicas follow byte for byte; a node that stops being a writable
//! primary stops compacting before its next step.

use std::sync::Arc;

use anyhow::{bail, Context};

use crate::shared::{role_refusal_message, Shared};

/// `COMPACT` moves every long value on a heap page less than this percent live.
pub const COMMAND_SPARSE_PCT: usize = 80;
/// The sweep's passes move values off pages less than half live.
pub const AUTO_SPARSE_PCT: usize = 50;
/// The sweep starts a pass when dead bytes pass this share of the heap's pages (percent)…
pub const AUTO_GARBAGE_PCT: u64 = 40;
/// …and the heap has at least this many pages (4 MiB).
pub const AUTO_MIN_PAGES: u64 = 1024;

/// Bytes of values a heap page holds at most.
const HEAP_PAGE_BYTES: u64 = (storage::PAGE_SIZE - 40) as u64;

/// Whether the value heap holds enough garbage for the sweep to compact it.
pub fn worth_compacting(st: &storage::Stats) -> bool {
    let capacity = st.heap_pages * HEAP_PAGE_BYTES;
    st.heap_pages >= AUTO_MIN_PAGES
        && capacity.saturating_sub(st.heap_live) * 100 > capacity * AUTO_GARBAGE_PCT
}

/// A whole compaction pass, off the event loop; the report as text.
pub async fn run(sh: &Arc<Shared>, sparse_pct: usize) -> anyhow::Result<String> {
    if let Some(r) = sh.node.write_refusal() {
        bail!("{}", role_refusal_message(&r));
    }
    let sh2 = sh.clone();
    let report = tokio::task::spawn_blocking(move || {
        let db = sh2.db();
        db.compact(sparse_pct, |_| {
            sh2.node.write_refusal().is_none() && !*sh2.node.shutdown.borrow()
        })
    })
    .await
    .context("the compaction task failed")?
    .context("compaction")?;
    tracing::info!(%report, "heap compaction");
    if !report.complete {
        let why = sh
            .node
            .write_refusal()
            .map(|r| role_refusal_message(&r))
            .unwrap_or_else(|| "stopped".into());
        bail!(
            "compaction stopped after {} steps: {why} ({report})",
            report.steps
        );
    }
    Ok(report.to_string())
}

/// How often the automatic compaction looks at the heap.
const AUTO_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs a pass whenever this node is a writable primary and its heap is worth compacting.
pub async fn auto(sh: Arc<Shared>) {
    let mut stop = sh.node.shutdown.subscribe();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(AUTO_CHECK) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        if sh.node.write_refusal().is_some() || !worth_compacting(&sh.db().stats()) {
            continue;
        }
        if let Err(e) = run(&sh, AUTO_SPARSE_PCT).await {
            tracing::warn!("automatic heap compaction: {e:#}");
        }
    }
}
