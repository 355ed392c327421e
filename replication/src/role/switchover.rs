//! `FAILOVER TO host port`: a planned switchover. The primary and its target speak the
//! replication protocol on a control connection (`REPLCONTROL`): catch_up (the target
//! applies everything up to the primary's end, or says how far it got), then promote; a
//! role_query settles what happened when a promote's answer is lost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::wire::transport::Conn;
use bytes::BytesMut;
use storage::Lsn;
use tokio::io::{ReadHalf, WriteHalf};

use super::follow::follow_locked;
use super::promote::promote_locked;
use super::Role;
use crate::error::{bail, peer, refuse, Error, Result};
use crate::frame::Frame;
use crate::node::Node;
use crate::wire::handshake::{connect_as_replica, own_hello, read_hello};
use crate::wire::io::{read_frame, write_frame};

/// How long the node waits for another node in a step of a switchover (a catch-up waits as
/// long as the `FAILOVER` asked on top of this).
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

/// Error code: the target did not apply the primary's end in time.
const NOT_CAUGHT_UP: u16 = 7;
/// Error code: the target refuses to promote before doing anything (not a verified replica
/// of the asking node's epoch, not consistent yet): nothing changed there.
const CANNOT_PROMOTE: u16 = 8;
/// Error code: the target's promotion failed part-way: its state is not known for sure.
const PROMOTE_FAILED: u16 = 9;

/// `FAILOVER TO host port` on a primary: stop taking writes (each refused with an error, a
/// write already running finishes), wait until the target replica has applied everything,
/// promote it, then follow it. Nothing acknowledged here is missing there. On any failure
/// before the target is promoted, this node takes writes again.
pub async fn failover(node: &Arc<Node>, target: String, timeout: Duration) -> Result<String> {
    let _g = node.role_change.lock().await;
    match &*node.role.read() {
        Role::Primary => {}
        Role::Replica { .. } => refuse!("FAILOVER runs on the primary; this node is a replica"),
        Role::Fenced { why } => {
            refuse!("FAILOVER runs on the primary; this node is fenced ({why})")
        }
        Role::SwitchingOver { target } => {
            refuse!("a switchover to {target} is already under way")
        }
    }
    let t0 = Instant::now();
    node.role
        .become_(Role::SwitchingOver {
            target: target.clone(),
        })
        .map_err(Error::State)?;
    let db = node.db();
    let demoted = tokio::task::spawn_blocking({
        let db = db.clone();
        move || db.demote()
    })
    .await;
    let end = match demoted {
        Ok(Ok(end)) => end,
        Ok(Err(e)) => return Err(resume(node, e.into(), false)),
        Err(e) => return Err(resume(node, e.into(), false)),
    };
    let undo = |e: Error| {
        let r = db.undo_demote();
        match r {
            Ok(()) => resume(node, e, false),
            Err(u) => resume(
                node,
                e.context(format!("and this node cannot resume: {u}")),
                true,
            ),
        }
    };
    let caught_up = async {
        let mut c = Control::connect(node, &target).await?;
        let ask = Frame::CatchUp {
            until_lsn: end,
            timeout_ms: timeout.as_millis().min(u128::from(u64::MAX)) as u64,
        };
        match c.call(&ask, timeout + CONTROL_TIMEOUT).await? {
            Frame::RoleReport { apply_lsn, .. } if apply_lsn >= end => Ok::<_, Error>(c),
            Frame::RoleReport { apply_lsn, .. } => {
                bail!("{target} applied only up to LSN {apply_lsn} of {end} within {timeout:?}")
            }
            Frame::Error { message, .. } => bail!("{target}: {message}"),
            other => bail!("{target} answered catch_up with {other:?}"),
        }
    }
    .await;
    let mut c = match caught_up {
        Ok(c) => c,
        Err(e) => return Err(undo(e)),
    };
    // From here the target may have been promoted even if its answer is lost: take writes
    // again only if it says it is still a replica.
    let reply = match c.call(&Frame::Promote, CONTROL_TIMEOUT).await {
        Ok(Frame::RoleReport {
            primary: true,
            message,
            ..
        }) => message,
        Ok(Frame::Error {
            code: CANNOT_PROMOTE,
            message,
        }) => return Err(undo(peer!("{target} refused to take over: {message}"))),
        Ok(Frame::Error { message, .. }) => bail!("switchover state unknown: {target}'s promotion failed part-way ({message}); this node stays read-only — check {target}, then REPLICAOF it (or promote this node if it never took over)"),
        Ok(other) => bail!("switchover state unknown: {target} answered promote with {other:?}; this node stays read-only — check {target}, then REPLICAOF it (or promote this node if it never took over)"),
        Err(e) => {
            let role = async {
                let mut c = Control::connect(node, &target).await?;
                c.call(&Frame::RoleQuery, CONTROL_TIMEOUT).await
            }
            .await;
            match role {
                Ok(Frame::RoleReport { primary: true, .. }) => {
                    format!("promoted, though its reply was lost ({e:#})")
                }
                // It may still be promoting (it reports a replica until the very end): do not
                // take writes again, or two nodes could.
                Ok(_) => bail!("switchover state unknown: {target} did not confirm its promotion ({e:#}) and still reports a replica, but may be promoting; this node stays read-only — check {target}, then REPLICAOF it (or promote this node if it never took over)"),
                Err(e2) => bail!("switchover state unknown: {target} did not answer promote ({e:#}) nor role_query ({e2:#}); this node stays read-only — point it at the new primary with REPLICAOF, or at {target} if that took over"),
            }
        }
    };
    follow_locked(node, target.clone()).await?;
    tracing::info!(target = %target, at = end.0, elapsed_ms = t0.elapsed().as_millis() as u64, "FAILOVER: switched over");
    Ok(format!("switched over to {target} at LSN {end} ({reply})"))
}

/// Back to taking writes after an abandoned switchover (`stuck`: the database could not be
/// made a primary's again, so the node stays read-only and says so).
fn resume(node: &Node, e: Error, stuck: bool) -> Error {
    if stuck {
        return e.context("switchover abandoned; this node stays read-only");
    }
    match node.role.become_(Role::Primary) {
        Ok(_) => e.context("switchover abandoned; this node takes writes again"),
        Err(r) => e.context(format!("switchover abandoned ({r})")),
    }
}

/// A control connection to another node.
struct Control {
    rd: ReadHalf<Conn>,
    wr: WriteHalf<Conn>,
    buf: BytesMut,
}

impl Control {
    async fn connect(node: &Node, addr: &str) -> Result<Control> {
        let conn = async {
            let (rd, mut wr, buf) =
                connect_as_replica(&node.config, addr, b"*1\r\n$11\r\nREPLCONTROL\r\n").await?;
            write_frame(
                &mut wr,
                &own_hello(&node.db(), &node.config, crate::frame::VERSION),
            )
            .await?;
            Ok::<_, Error>(Control { rd, wr, buf })
        };
        tokio::time::timeout(CONTROL_TIMEOUT, conn)
            .await
            .map_err(|_| peer!("connecting to {addr} timed out"))?
    }

    /// Sends `ask` and reads the answer, within `limit`.
    async fn call(&mut self, ask: &Frame, limit: Duration) -> Result<Frame> {
        let exchange = async {
            write_frame(&mut self.wr, ask).await?;
            read_frame(&mut self.rd, &mut self.buf).await
        };
        tokio::time::timeout(limit, exchange)
            .await
            .map_err(|_| peer!("no answer within {limit:?}"))?
    }
}

/// The target's side of a control connection: answers catch_up, promote and role_query
/// until the other side closes it.
pub async fn serve_control(node: Arc<Node>, sock: Conn, mut buf: BytesMut) -> Result<()> {
    let peer = sock.peer();
    let (mut rd, mut wr) = tokio::io::split(sock);
    let hello = read_hello(&node, false, &mut rd, &mut wr, &mut buf).await?;
    loop {
        let ask = match read_frame(&mut rd, &mut buf).await {
            Ok(f) => f,
            // The switching primary closed the connection: done.
            Err(_) => return Ok(()),
        };
        let answer = match ask {
            Frame::CatchUp {
                until_lsn,
                timeout_ms,
            } => {
                let applied =
                    wait_applied(&node, until_lsn, Duration::from_millis(timeout_ms)).await;
                if applied >= until_lsn {
                    report(&node, format!("applied up to LSN {applied}"))
                } else {
                    Frame::Error {
                        code: NOT_CAUGHT_UP,
                        message: format!(
                            "applied only up to LSN {applied} of {until_lsn} within {timeout_ms} ms"
                        ),
                    }
                }
            }
            Frame::Promote => {
                let _g = node.role_change.lock().await;
                match promotion_refusal(&node, hello.epoch) {
                    Some(why) => Frame::Error {
                        code: CANNOT_PROMOTE,
                        message: why,
                    },
                    None => {
                        tracing::info!(from = %hello.name, %peer, "promoting for a switchover");
                        match promote_locked(&node, 0).await {
                            Ok(msg) => report(&node, msg),
                            Err(e) => Frame::Error {
                                code: PROMOTE_FAILED,
                                message: format!("{e:#}"),
                            },
                        }
                    }
                }
            }
            Frame::RoleQuery => report(&node, String::new()),
            other => bail!(
                "{}: unexpected frame on a control connection: {other:?}",
                hello.name
            ),
        };
        write_frame(&mut wr, &answer).await?;
    }
}

/// Why this node must not promote itself for a switchover asked by a node of `epoch`, checked
/// before anything changes: it is not a replica whose log its primary accepted, it is not on
/// the asking node's epoch (a deposed primary cannot hand over), or it is not consistent yet.
fn promotion_refusal(node: &Node, epoch: u32) -> Option<String> {
    if !matches!(&*node.role.read(), Role::Replica { verified: true, .. }) {
        return Some(format!(
            "this node is {}, not a replica its primary has accepted",
            node.role.read().name()
        ));
    }
    let mine = node.db().epoch();
    if mine != epoch {
        return Some(format!(
            "this node is at epoch {mine}, the asking node at {epoch}: it is not this node's primary"
        ));
    }
    node.loading().map(|(at, target)| {
        format!("not consistent yet after a base backup (applied up to LSN {at}, consistent from {target})")
    })
}

fn report(node: &Node, message: String) -> Frame {
    let db = node.db();
    Frame::RoleReport {
        primary: matches!(&*node.role.read(), Role::Primary),
        epoch: db.epoch(),
        apply_lsn: db.apply_lsn(),
        node_id: node.config.node_id,
        chain: crate::identity::own_chain(node),
        message,
    }
}

/// Waits until this node has applied `lsn` (or `limit` passes); returns its apply LSN.
async fn wait_applied(node: &Node, lsn: Lsn, limit: Duration) -> Lsn {
    let mut rx = node.applied.subscribe();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let at = node.db().apply_lsn();
        if at >= lsn {
            return at;
        }
        // The apply LSN is published as replay moves; a short tick covers a database swapped
        // in meanwhile (its replay publishes from then on).
        let tick = tokio::time::sleep(Duration::from_millis(50));
        tokio::select! {
            _ = rx.changed() => {}
            _ = tick => {}
            _ = tokio::time::sleep_until(deadline) => return node.db().apply_lsn(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_verified_replica_of_the_askers_epoch_promotes_for_a_switchover() {
        let dir = tempfile::tempdir().unwrap();
        let node = crate::node::test_replica(dir.path(), "p:1");
        assert_eq!(promotion_refusal(&node, 1), None);
        // A deposed primary (an older or newer epoch than this node's) cannot hand over.
        assert!(promotion_refusal(&node, 2).is_some_and(|w| w.contains("epoch")));
        // A replica whose log its (new) primary has not accepted yet.
        node.role
            .become_(Role::Replica {
                primary: "q:1".into(),
                verified: false,
            })
            .unwrap();
        assert!(promotion_refusal(&node, 1).is_some_and(|w| w.contains("accepted")));
        // A primary.
        node.role.restore(Role::Primary);
        assert!(promotion_refusal(&node, 1).is_some_and(|w| w.contains("primary")));
    }
}
