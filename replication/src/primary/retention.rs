//! WAL retention (PostgreSQL's replication slots, with a cap): the primary keeps the WAL its
//! known replicas still need, up to `--max-retained-wal`.

use std::sync::Arc;
use std::time::Duration;

use storage::Lsn;

use crate::node::Node;

/// How often the WAL retention floor is recomputed without a replica report.
const RETENTION_TICK: Duration = Duration::from_millis(100);

/// Applies the WAL retention rule (`update_retention`) every `RETENTION_TICK` for as long as
/// the server runs: the floor moves with the log even when no replica reports.
pub async fn keep_retention(node: Arc<Node>) {
    loop {
        update_retention(&node);
        tokio::select! {
            _ = tokio::time::sleep(RETENTION_TICK) => {}
            _ = node.stopped() => return,
        }
    }
}

/// WAL that a known replica still needs stays on disk — but never more than
/// `--max-retained-wal` of it: a replica further behind is reseeded when it returns.
pub fn update_retention(node: &Node) {
    let db = node.db();
    let floor = Lsn(db
        .flush_lsn()
        .0
        .saturating_sub(node.config.max_retained_wal));
    let min = node.tracker.min_flush();
    if let Some(m) = min {
        if m < floor {
            let mut warned = node.retention_warned.lock();
            if *warned < m {
                tracing::warn!(
                    behind_from = m.0,
                    max_retained_wal = node.config.max_retained_wal,
                    "a replica is further behind than --max-retained-wal: its WAL is released and it will be reseeded when it returns"
                );
                *warned = floor;
            }
        }
    }
    db.set_wal_retain_from(min.map(|m| m.max(floor)));
}
