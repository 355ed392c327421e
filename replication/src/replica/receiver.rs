//! Keeping a replica's stream from its primary going: connect, hand the log over for a
//! verdict, stream; on the way back from a failure, rewind or reseed as the primary says.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::stream::{receive_loop, STOP_CHECK};
use crate::error::{bail, Error, Result};
use crate::frame::{self, Frame};
use crate::identity::{check_chain, read_first_frame, refused, HANDSHAKE_TIMEOUT};
use crate::node::Node;
use crate::rewind::rewind_pages;
use crate::seed::swap::reseed;
use crate::wire::handshake::{connect_as_replica, own_hello, WalGone, WAL_GONE};
use crate::wire::io::write_frame;

pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Retry interval after a wrong setup (this node itself, a cycle, a peer that is not
/// replidb): retrying cannot help until someone changes something, so the node asks again
/// only this often, and logs the problem once, not at every try.
pub(crate) const SETUP_RETRY: Duration = Duration::from_secs(30);

/// Resolves when this node stops or its role changes away from generation `gen`.
pub(crate) async fn role_ended(node: &Node, gen: u64) {
    let mut stop = node.shutdown.subscribe();
    let mut roles = node.role_gen.subscribe();
    loop {
        if *stop.borrow_and_update() || *roles.borrow_and_update() != gen {
            return;
        }
        tokio::select! {
            r = stop.changed() => if r.is_err() { return },
            r = roles.changed() => if r.is_err() { return },
        }
    }
}

/// Whether the stream of role generation `gen` must stop.
pub(crate) fn stream_over(node: &Node, gen: u64) -> bool {
    *node.shutdown.borrow() || *node.role_gen.borrow() != gen
}

/// Replica side: keeps a stream from the primary going, reconnecting with backoff, until the
/// node stops or its role changes (generation `gen` ends). Returns only once no stream thread
/// of this generation runs any more.
pub async fn run_replica(node: Arc<Node>, primary: String, gen: u64) {
    let mut backoff = Duration::from_millis(50);
    // The wrong setup last logged: said once, then quietly retried.
    let mut said = String::new();
    while !stream_over(&node, gen) {
        let r = stream_from(&node, &primary, gen).await;
        node.link_up.store(false, Ordering::Relaxed);
        if stream_over(&node, gen) {
            return;
        }
        if let Err(e) = &r {
            *node.link_error.lock() = format!("{e:#}");
        }
        match r {
            Ok(()) => {
                backoff = Duration::from_millis(50);
                said.clear();
            }
            Err(e) if e.setup_problem().is_some() => {
                let why = e.setup_problem().unwrap_or_default().to_string();
                if why != said {
                    tracing::error!(primary = %primary, retry_in_s = SETUP_RETRY.as_secs(), "cannot replicate: {why}");
                    said = why;
                } else {
                    tracing::debug!(primary = %primary, "still cannot replicate: {why}");
                }
                backoff = SETUP_RETRY;
            }
            Err(Error::WalGone(why)) => {
                let why = &why;
                if let WalGone::Diverged { fork, .. } = why {
                    let r = tokio::select! {
                        r = rewind_pages(&node, &primary, *fork) => r,
                        _ = role_ended(&node, gen) => return,
                    };
                    match r {
                        Ok((fetched, total)) => {
                            let msg =
                                format!("rewound: refetched {fetched} of {total} pages ({why})");
                            tracing::info!(primary = %primary, fetched_pages = fetched, total_pages = total, "{msg}");
                            *node.last_join.lock() = msg;
                            node.rewinds.fetch_add(1, Ordering::Relaxed);
                            backoff = Duration::from_millis(50);
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(primary = %primary, error = %format!("{e:#}"), "rewind failed; reseeding instead")
                        }
                    }
                }
                *node.last_join.lock() = format!("reseeded: {why}");
                let r = tokio::select! {
                    r = reseed(&node, &primary, why) => r,
                    _ = role_ended(&node, gen) => return,
                };
                match r {
                    Ok(()) => {
                        backoff = Duration::from_millis(50);
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(primary = %primary, error = %format!("{e:#}"), "reseeding failed; will retry")
                    }
                }
            }
            Err(e) => {
                // A page this node needs to apply the stream is damaged here: take the
                // primary's copy, then stream again.
                if let Some(page) = crate::repair::damaged_page(&e) {
                    match crate::repair::repair_page(&node, page).await {
                        Ok(_) => {
                            backoff = Duration::from_millis(50);
                            continue;
                        }
                        Err(r) => {
                            tracing::error!(primary = %primary, page = page.0, error = %format!("{r:#}"), "could not repair a damaged page")
                        }
                    }
                }
                tracing::warn!(primary = %primary, error = %format!("{e:#}"), retry_in_ms = backoff.as_millis() as u64, "replication link down")
            }
        }
        if backoff >= SETUP_RETRY {
            // Asked again after a wrong setup; a passing failure next backs off from the start.
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = role_ended(&node, gen) => return,
            }
            backoff = Duration::from_millis(50);
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = role_ended(&node, gen) => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn stream_from(node: &Arc<Node>, primary: &str, gen: u64) -> Result<()> {
    let handshake = async {
        let (mut rd, mut wr, mut buf) =
            connect_as_replica(&node.config, primary, b"*1\r\n$10\r\nREPLSTREAM\r\n").await?;
        let db = node.db();
        // A record cut by the last link's end starts again from the flush LSN, where
        // everything received so far ends once it is synced.
        db.reset_stream();
        let db2 = db.clone();
        tokio::task::spawn_blocking(move || db2.sync_wal()).await??;
        write_frame(
            &mut wr,
            &own_hello(&db, &node.config, frame::STREAM_VERSION),
        )
        .await?;
        let first = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            read_first_frame(&mut rd, &mut buf, primary),
        )
        .await
        .map_err(|_| {
            Error::Peer(format!(
                "{primary} did not answer the replication handshake within {} s",
                HANDSHAKE_TIMEOUT.as_secs()
            ))
        })??;
        match first {
            Frame::Welcome {
                primary_flush_lsn,
                chain,
                ..
            } => {
                // Not this node, no cycle: then the chain is this node's upstream.
                check_chain(node.config.node_id, &node.config.name, primary, &chain)?;
                let changed = {
                    let mut up = node.upstream.lock();
                    let changed = *up != chain;
                    *up = chain;
                    changed
                };
                if changed {
                    // Replicas streaming from this one learn the new chain when they
                    // reconnect: end their links (as a change of log does), so every node
                    // down a cascade knows its upstreams and can refuse a cycle.
                    node.log_gen.fetch_add(1, Ordering::SeqCst);
                }
                node.primary_flush
                    .store(primary_flush_lsn.0, Ordering::Relaxed);
                // Just seeded: consistent once the primary's position now is applied (the
                // copy ended before this). Already there (a primary that has written
                // nothing yet): consistent now, since a gate of 0 would mean "none" and no
                // replay would ever lift a gate above it.
                node.gate
                    .resolve(&node.dir, db.apply_lsn().0, primary_flush_lsn.0)?;
            }
            Frame::Diverged { fork_lsn, message } => {
                // Nothing past the fork replayed: cutting the log back is the whole rewind.
                let db2 = db.clone();
                let cut = tokio::task::spawn_blocking(move || db2.rewind_log(fork_lsn)).await??;
                match cut {
                    Some(dropped) => {
                        node.log_gen.fetch_add(1, Ordering::SeqCst);
                        *node.last_join.lock() = format!(
                            "rewound: dropped {dropped} bytes of log past LSN {fork_lsn} ({message})"
                        );
                        node.rewinds.fetch_add(1, Ordering::Relaxed);
                        bail!("rewound the log to LSN {fork_lsn}; reconnecting");
                    }
                    None => {
                        return Err(WalGone::Diverged {
                            fork: fork_lsn,
                            message,
                        }
                        .into())
                    }
                }
            }
            Frame::Error { code, message } if code == WAL_GONE => {
                return Err(WalGone::Removed(message).into())
            }
            Frame::Error { code, message } => return Err(refused(primary, code, message)),
            other => bail!("expected welcome, got {other:?}"),
        }
        Ok::<_, Error>((rd, wr, buf))
    };
    let (rd, wr, buf) = tokio::select! {
        r = handshake => r?,
        _ = role_ended(node, gen) => return Ok(()),
    };
    node.link_up.store(true, Ordering::Relaxed);
    node.link_error.lock().clear();
    node.role.verify(primary);
    node.applied.send_modify(|_| {});
    {
        let mut j = node.last_join.lock();
        if j.is_empty() {
            *j = "streaming".into();
        }
    }
    tracing::info!(primary = %primary, from = node.db().flush_lsn().0, epoch = node.db().epoch(), "replication link up");
    // The stream itself runs on a thread of its own with blocking I/O: a frame is written,
    // synced, acknowledged and applied without waiting for a runtime worker.
    let sock = rd.unsplit(wr).into_link()?;
    sock.set_read_timeout(Some(STOP_CHECK))?;
    let node = node.clone();
    tokio::task::spawn_blocking(move || receive_loop(&node, sock, buf, gen)).await?
}

/// Starts following `primary` as role generation `gen`.
pub fn start_replica(node: &Arc<Node>, primary: String, gen: u64) {
    let t = tokio::spawn(run_replica(node.clone(), primary, gen));
    *node.replica_task.lock() = Some(t);
}

/// Stops the replica stream (if any) and waits until its thread no longer applies WAL.
pub(crate) async fn stop_replica(node: &Arc<Node>) -> u64 {
    node.role_gen.send_modify(|g| *g += 1);
    let task = node.replica_task.lock().take();
    if let Some(t) = task {
        let _ = t.await;
    }
    node.link_up.store(false, Ordering::Relaxed);
    *node.role_gen.borrow()
}
