//! Replacing a running replica's database by a base backup (a reseed, or the result of a
//! rewind) while the old one keeps serving reads.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::error::Result;
use crate::node::Node;
use crate::seed::fetch::seed_once;
use crate::wire::handshake::WalGone;

/// Replica side: replaces this node's database by a fresh base backup from the primary,
/// while the old one keeps serving reads. The backup goes to `DIR/reseed-<ms>/`, is opened
/// there and swapped in; the next start moves it into `DIR` (`NodeDir::finish_reseed`).
pub(crate) async fn reseed(node: &Arc<Node>, primary: &str, why: &WalGone) -> Result<()> {
    let side = node.dir.new_side_dir();
    tracing::warn!(primary = %primary, reason = %why, dir = %side.display(), "this replica fell behind the WAL its primary retains: reseeding from a base backup");
    node.reseeds.fetch_add(1, Ordering::Relaxed);
    seed_once(&node.config, primary, &side).await?;
    swap_in(node, &side).await?;
    tracing::info!(dir = %side.display(), "reseeded; streaming from the backup's redo LSN");
    Ok(())
}

/// Opens the database prepared in `side` (a base backup, full or rewound) and puts it in
/// place of the running one: new requests use it at once, reads wait for it to become
/// consistent (the gate), the old one closes when its last user lets go.
pub(crate) async fn swap_in(node: &Arc<Node>, side: &std::path::Path) -> Result<()> {
    let dir = side.to_path_buf();
    let options = storage::Options {
        replica: true,
        ..node.config.storage.clone()
    };
    let db = tokio::task::spawn_blocking(move || storage::Db::open(&dir, options)).await??;
    // The gate first (synced): a crash after the marker must find it, and a gate that
    // cannot be written stops the swap.
    node.gate.close_pending(&node.dir)?;
    // Only a backup that was swapped in replaces the data at the next start.
    node.dir.mark_live(side)?;
    let old = node.replace_db(db);
    // The old database closes when its last user lets go (a request in flight, say).
    tokio::task::spawn_blocking(move || drop(old));
    Ok(())
}
