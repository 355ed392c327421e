//! `REPLICAOF host port`: following a (new) primary.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::Role;
use crate::error::{Error, Result};
use crate::node::Node;
use crate::replica::{start_replica, stop_replica};

/// `REPLICAOF host port`: follow `primary` from now on. A primary first stops taking writes
/// (one running finishes) and makes its log durable; the handshake with the new primary then
/// decides whether it can stream on or must be reseeded (`crate::epochs::check`).
pub async fn follow(node: &Arc<Node>, primary: String) -> Result<()> {
    let _g = node.role_change.lock().await;
    follow_locked(node, primary).await
}

/// `REPLICAOF host port` from a client: asks `primary` who it is first and refuses, keeping
/// this node's role, when it is this node itself, when following it would close a cycle of
/// replicas, or when it is not a replidb node of this protocol (`identity::check_follow`).
/// A primary that cannot be reached is followed anyway: the link waits for it.
pub async fn follow_checked(node: &Arc<Node>, primary: String) -> Result<()> {
    if let Err(e) = crate::identity::check_follow(&node.config, &primary).await {
        tracing::warn!(%primary, "REPLICAOF refused: {e}");
        return Err(e.context(format!(
            "REPLICAOF {primary} refused; this node keeps its role"
        )));
    }
    follow(node, primary).await
}

/// `follow`, for a caller that holds `Node::role_change`.
pub(crate) async fn follow_locked(node: &Arc<Node>, primary: String) -> Result<()> {
    // Writes are refused from here on (a write running now finishes first, in `demote`).
    let old = node
        .role
        .become_(Role::Replica {
            primary: primary.clone(),
            verified: false,
        })
        .map_err(Error::State)?;
    let gen = stop_replica(node).await;
    // The role file before the demotion: a crash after it must not bring this node back as
    // a primary of its old epoch.
    let demoted = async {
        node.dir.store_role(Some(&primary))?;
        let db = node.db();
        if !db.is_replica() {
            let end = tokio::task::spawn_blocking(move || db.demote()).await??;
            node.log_gen.fetch_add(1, Ordering::SeqCst);
            tracing::info!(at = end.0, new_primary = %primary, "REPLICAOF: this primary becomes a replica");
        }
        Ok::<_, Error>(())
    }
    .await;
    if let Err(e) = demoted {
        // Back to what it was: the old role, its role file, its stream.
        let old_primary = old.primary_addr().map(str::to_string);
        let old = match node.dir.store_role(old_primary.as_deref()) {
            Ok(()) => old,
            // The file still names the new primary: taking writes now would be undone when a
            // restart makes this node that primary's replica. Refuse them instead.
            Err(f) if old_primary.is_none() => {
                tracing::error!(error = %f, "could not restore the role file after a failed REPLICAOF");
                Role::Fenced {
                    why: format!("a REPLICAOF {primary} failed and DIR/replicaof could not be restored ({f})"),
                }
            }
            Err(f) => {
                tracing::error!(error = %f, "could not restore the role file after a failed REPLICAOF");
                old
            }
        };
        node.role.restore(old);
        if let Some(p) = old_primary {
            start_replica(node, p, gen);
        }
        return Err(e.context(format!(
            "following {primary} failed; this node keeps its role"
        )));
    }
    node.primary_flush.store(0, Ordering::Relaxed);
    node.last_join.lock().clear();
    node.upstream.lock().clear();
    node.link_error.lock().clear();
    tracing::info!(primary = %primary, "following a new primary");
    start_replica(node, primary, gen);
    Ok(())
}
