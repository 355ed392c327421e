//! `REPLICAOF NO ONE`: promotion to primary.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::Role;
use crate::error::{refuse, Error, Result};
use crate::node::Node;
use crate::replica::{start_replica, stop_replica};

/// `REPLICAOF NO ONE`: a replica stops following, finishes what it has (an incomplete batch
/// is dropped), starts a new epoch and takes writes. Returns what happened, for the reply.
pub async fn promote(node: &Arc<Node>) -> Result<String> {
    promote_at_least(node, 0).await
}

/// `promote` to an epoch of at least `min_epoch` (a cluster's election hands it out).
pub async fn promote_at_least(node: &Arc<Node>, min_epoch: u32) -> Result<String> {
    let _g = node.role_change.lock().await;
    promote_locked(node, min_epoch).await
}

/// `promote`, for a caller that holds `Node::role_change`.
pub(crate) async fn promote_locked(node: &Arc<Node>, min_epoch: u32) -> Result<String> {
    let t0 = Instant::now();
    match &*node.role.read() {
        // A fenced primary stays fenced: another node was promoted, and this one must follow.
        Role::Primary | Role::Fenced { .. } => return Ok("already a primary".into()),
        Role::Replica { .. } | Role::SwitchingOver { .. } => {}
    }
    // Every hello carries the whole history, bounded by the frame format: a promotion that
    // would grow it past that bound is refused before anything changes.
    let epochs = node.db().epoch_history().len();
    if epochs + 1 >= crate::frame::MAX_EPOCHS {
        refuse!(
            "this node's epoch history holds {epochs} epochs, the most a hello can carry is {}: promote another node, or reseed this one from a primary",
            crate::frame::MAX_EPOCHS
        );
    }
    if let Some((at, target)) = node.loading() {
        refuse!("this replica is not consistent yet after its base backup (applied up to LSN {at}, consistent from {target}); let it catch up first");
    }
    let gate = node.repair_gate.load(std::sync::atomic::Ordering::Acquire);
    let applied = node.db().apply_lsn().0;
    if gate > applied {
        refuse!("a page this replica repaired from its primary is consistent only from LSN {gate}, and it has applied up to LSN {applied}; let it catch up first");
    }
    let gen = stop_replica(node).await;
    let db = node.db();
    let epoch_before = db.epoch();
    let promoted = tokio::task::spawn_blocking({
        let db = db.clone();
        move || db.promote_at_least(min_epoch)
    })
    .await
    .map_err(Error::from)
    .and_then(|r| r.map_err(Error::from));
    let (epoch, at) = match promoted {
        Ok(p) => p,
        Err(e) => {
            // Still a replica's database in its old epoch: follow the primary again rather
            // than sit idle. (One whose epoch moved on would tell its primary of a newer
            // epoch and fence it: it stays idle, with the error.)
            let db = node.db();
            if let (true, true, Some(p)) = (
                db.is_replica(),
                db.epoch() == epoch_before,
                node.replicaof(),
            ) {
                start_replica(node, p, gen);
            }
            return Err(e.context("promotion failed"));
        }
    };
    // The upstream chain goes before the log generation moves: a cascaded replica that
    // connects after the bump must be welcomed with this node as the chain's end, or it
    // would keep a stale chain and refuse links that close no cycle.
    node.last_join.lock().clear();
    node.upstream.lock().clear();
    node.link_error.lock().clear();
    node.log_gen.fetch_add(1, Ordering::SeqCst);
    // On a primary, commits wake WAITLSN through the flusher: attach again as a primary.
    node.attach(&db);
    if let Err(e) = node.dir.store_role(None) {
        tracing::error!(error = %e, "promoted, but could not remove the role file: remove DIR/replicaof before restarting");
    }
    // Writes are taken from here: the database is a primary's and the new epoch is durable.
    node.role.become_(Role::Primary).map_err(Error::State)?;
    tracing::info!(
        epoch,
        start = at.0,
        elapsed_ms = t0.elapsed().as_millis() as u64,
        "REPLICAOF NO ONE: this node is the primary now"
    );
    Ok(format!("promoted: epoch {epoch} from LSN {at}"))
}
