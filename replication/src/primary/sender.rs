//! One replica link, primary side: the handshake's verdict, then a sender thread that ships
//! WAL from the replica's position on (the WAL flusher ships to a caught-up link itself) and
//! keepalives.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::wire::transport::{Conn, Link};
use bytes::BytesMut;

use super::feedback::{feedback_loop, Feedback};
use super::links::{LiveLink, SHIP_INTERVAL};
use super::{update_retention, LinkGuard};
use crate::epochs::Verdict;
use crate::error::{bail, peer, Result};
use crate::frame::{self, Frame};
use crate::node::{now_us, Node};
use crate::tracker::LinkId;
use crate::wire::handshake::{read_hello, verdict, DIVERGED, STALE_PRIMARY, WAL_GONE};
use crate::wire::io::write_frame;

/// A primary sends a keepalive after this long without WAL.
pub const KEEPALIVE: Duration = Duration::from_millis(500);

/// Primary side: serves one replica on a connection that sent `REPLSTREAM`.
pub async fn serve_replica(node: Arc<Node>, sock: Conn, mut buf: BytesMut) -> Result<()> {
    let peer = sock.peer();
    let (mut rd, mut wr) = tokio::io::split(sock);
    let hello = read_hello(&node, true, &mut rd, &mut wr, &mut buf).await?;
    let (name, flush_lsn, epoch) = (hello.name.clone(), hello.flush_lsn, hello.epoch);
    // The log generation first, then the database: the verdict, the welcome and the stream
    // all use this one handle, and the stream ends if the log changes after this point.
    let gen = node.log_gen.load(Ordering::SeqCst);
    let db = node.db();
    if db.is_replica() && !node.is_replica_role() {
        bail!("{name}: this node is changing role");
    }
    let verdict = verdict(&db, &hello);
    let refusal = match verdict {
        Verdict::Stream => None,
        Verdict::PrimaryStale {
            node_epoch,
            primary_epoch,
        } => {
            // A node that has seen a newer epoch talks to us: someone else was promoted. (A
            // replica is not fenced: it follows whoever it follows.)
            node.role.fence(format!(
                "{name} ({peer}) is at epoch {node_epoch}, newer than this node's {primary_epoch}"
            ));
            Some((
                STALE_PRIMARY,
                format!("this node is at epoch {primary_epoch}, older than yours ({node_epoch}): it is not the primary"),
            ))
        }
        Verdict::Diverged { fork } => Some((
            DIVERGED,
            format!(
                "your log (epoch {epoch}, up to LSN {flush_lsn}) runs past LSN {fork}, where it parts from this node's (epoch {})",
                db.epoch()
            ),
        )),
    };
    if let Some((code, message)) = refusal {
        tracing::warn!(replica = %name, %peer, reason = %message, "refusing a replica");
        let f = match verdict {
            Verdict::Diverged { fork } => Frame::Diverged {
                fork_lsn: fork,
                message: message.clone(),
            },
            _ => Frame::Error {
                code,
                message: message.clone(),
            },
        };
        write_frame(&mut wr, &f).await?;
        bail!("{name}: {message}");
    }
    let slot = node.tracker.connect(&name, &peer, flush_lsn, false);
    let _link = LinkGuard(&node.tracker, slot);
    update_retention(&node);
    tracing::info!(replica = %name, %peer, from = flush_lsn.0, "replica connected");
    write_frame(
        &mut wr,
        &Frame::Welcome {
            epoch: db.epoch(),
            node_id: node.config.node_id,
            start_lsn: flush_lsn,
            primary_flush_lsn: db.flush_lsn(),
            chain: crate::identity::own_chain(&node),
        },
    )
    .await?;
    // From here the link runs on threads of its own, never waiting for a runtime worker: the
    // WAL flusher itself sends new WAL to a caught-up link the moment it is written (so a
    // replica receives a commit while the primary is still syncing it); a sender thread
    // catches up, finishes what the flusher could not, and sends keepalives; a reader of the
    // replica's feedback wakes the commits waiting for the quorum (a committer spinning for
    // its quorum may read the feedback first: see `Links::poll_feedback`).
    let sock = rd.unsplit(wr).into_link()?;
    let link = Arc::new(LiveLink::new(
        sock.try_clone()?,
        flush_lsn,
        Feedback::new(sock.try_clone()?, buf, slot),
    ));
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    {
        let (node, link, name) = (node.clone(), link.clone(), name.clone());
        std::thread::Builder::new()
            .name(format!("replidb-feedback-{name}"))
            .spawn(move || {
                let why = feedback_loop(&node, &link);
                tracing::info!(replica = %name, reason = %why, "replica link closed");
                link.dead.store(true, Ordering::SeqCst);
                node.wal_signal.notify();
            })?;
    }
    {
        let (node, link, db) = (node.clone(), link.clone(), db.clone());
        std::thread::Builder::new()
            .name(format!("replidb-send-{name}"))
            .spawn(move || {
                node.links.add(link.clone());
                let r = send_loop(&node, &link, &link.sock, slot, &db, gen);
                node.links.remove(&link);
                let _ = link.sock.shutdown();
                let _ = done_tx.send(r);
            })?;
    }
    // A link accepted while the node was stopping ends at once, not when its peer leaves.
    let r = tokio::select! {
        r = done_rx => r.unwrap_or_else(|_| Err(peer!("the sender thread ended"))),
        _ = node.stopped() => Ok(()),
    };
    link.dead.store(true, Ordering::SeqCst);
    node.wal_signal.notify();
    let _ = sock.shutdown();
    r
}

/// Sends WAL from the link's position on as it is written (unless the flusher already did),
/// and keepalives when there is none.
pub(crate) fn send_loop(
    node: &Node,
    link: &LiveLink,
    mut sock: &Link,
    slot: LinkId,
    db: &storage::Db,
    gen: u64,
) -> Result<()> {
    use std::io::Write;
    let mut last_sent = Instant::now();
    let mut chunk = Vec::with_capacity(frame::MAX_WAL_CHUNK);
    loop {
        if link.dead.load(Ordering::SeqCst) {
            return Ok(());
        }
        if node.log_gen.load(Ordering::SeqCst) != gen {
            bail!("this node's log changed under the link (promotion, demotion, rewind or reseed): the replica reconnects");
        }
        {
            // Writes happen under the lock, so the flusher's frames and ours never interleave.
            let mut st = link.st.lock();
            if !st.pending.is_empty() {
                sock.write_all(&st.pending)?;
                st.pending.clear();
            }
            link.partial.store(false, Ordering::SeqCst);
            let pos = st.sent;
            chunk.clear();
            let end = match db.read_wal(pos, frame::MAX_WAL_CHUNK, &mut chunk) {
                Ok(end) => end,
                Err(e) => {
                    let mut out = Vec::new();
                    let gone = matches!(e, storage::Error::WalUnavailable { lsn, .. } if lsn < db.written_lsn());
                    if gone {
                        tracing::warn!(replica_from = pos.0, error = %e, "a replica needs WAL this node no longer retains: it will reseed");
                    }
                    Frame::Error {
                        code: if gone { WAL_GONE } else { 3 },
                        message: e.to_string(),
                    }
                    .encode(&mut out);
                    let _ = sock.write_all(&out);
                    return Err(e.into());
                }
            };
            if end > pos {
                st.frame.clear();
                let (sync, eager) = node.links.flags_for(link.slot);
                frame::encode_wal(pos, &chunk, sync, eager, &mut st.frame);
                sock.write_all(&st.frame)?;
                st.sent = end;
                link.sent.store(end.0, Ordering::Release);
                last_sent = Instant::now();
                drop(st);
                node.tracker.set_streaming(slot, end >= db.flush_lsn());
                if chunk.len() < frame::MAX_WAL_CHUNK && !node.links.remote_wanted() {
                    // Caught up, and no commit waits for the replicas: let WAL gather (see
                    // `SHIP_INTERVAL`), unless a commit starts waiting meanwhile.
                    node.wal_signal.wait_until(SHIP_INTERVAL, || {
                        node.links.remote_wanted() || link.dead.load(Ordering::SeqCst)
                    });
                }
                continue;
            }
            if last_sent.elapsed() >= KEEPALIVE {
                st.frame.clear();
                Frame::Keepalive {
                    primary_flush_lsn: db.flush_lsn(),
                    time_us: now_us(),
                }
                .encode(&mut st.frame);
                sock.write_all(&st.frame)?;
                last_sent = Instant::now();
            }
        }
        // Everything written is sent: the replica streams live.
        node.tracker.set_streaming(slot, true);
        let idle = &node.links.0.idle;
        idle.fetch_add(1, Ordering::SeqCst);
        // Pairs with the fence in `Links::wal_written`.
        std::sync::atomic::fence(Ordering::SeqCst);
        node.wal_signal
            .wait_until(KEEPALIVE, || link.sender_has_work(db.written_lsn()));
        idle.fetch_sub(1, Ordering::SeqCst);
    }
}
