//! Who is at the other end of a replication connection, and whether following it makes
//! sense: node ids, the chain of upstream nodes a node reports, the refusals that keep a
//! node from replicating from itself or closing a cycle of replicas, and `probe`, which asks
//! a would-be primary who it is before anything changes (`REPLICAOF`, start-up).
//!
//! Addresses cannot answer these questions (127.0.0.1, localhost and another interface all
//! reach the same node), so every hello carries the sender's random node id, and every
//! welcome and role report the answering node's chain: itself, then the node it follows,
//! and so on up (at most `MAX_CHAIN`). A node whose own id is in the chain of the node it
//! would follow would close a cycle; a chain that starts with its own id is itself.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;

use crate::error::{Error, Result};
use crate::frame::{self, ChainLink, Frame, MAX_CHAIN};
use crate::node::{Node, NodeConfig};
use crate::wire::handshake::{connect_as_replica, Hello};
use crate::wire::io::{take_frame, write_frame};

/// Error code: the connecting node is this node (its own id came back).
pub const SELF_LINK: u16 = 11;
/// Error code: serving the connecting node would close a cycle of replicas.
pub const CYCLE: u16 = 12;
/// Error code: this node is not ready to serve (it is being seeded itself).
pub const NOT_READY: u16 = 13;
/// Error code: the connecting node speaks a protocol version this one does not.
pub const VERSION_MISMATCH: u16 = 1;

/// How long a would-be primary has to answer a probe, or the first frame of a handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A fresh node id: random (the process's hash keys, seeded by the OS, over the pid and the
/// clock), never 0 (0 is "no id" in frames).
pub fn new_node_id() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u64(crate::node::now_us());
    h.finish().max(1)
}

/// `name (id)` for messages.
fn label(l: &ChainLink) -> String {
    format!("{} ({:016x})", l.name, l.node_id)
}

/// What a node answers a handshake that came back to it.
pub fn self_message(name: &str, id: u64) -> String {
    format!(
        "the handshake came back to the node that sent it ({name}, node id {id:016x}); a node \
         cannot replicate from itself: point it at the primary"
    )
}

/// This node and the nodes it replicates from, nearest first.
pub fn own_chain(node: &Node) -> Vec<ChainLink> {
    let mut chain = vec![ChainLink {
        node_id: node.config.node_id,
        name: node.config.name.clone(),
    }];
    if node.is_replica_role() {
        chain.extend(node.upstream.lock().iter().cloned());
    }
    chain.truncate(MAX_CHAIN);
    chain
}

/// Why this node refuses the node that sent `hello`, if it does: it is this node itself,
/// or (when `serving_wal`: a stream or a base backup) a node this one replicates from, so
/// serving it would close a cycle.
pub(crate) fn refusal(node: &Node, hello: &Hello, serving_wal: bool) -> Option<(u16, String)> {
    if hello.node_id != 0 && hello.node_id == node.config.node_id {
        return Some((
            SELF_LINK,
            self_message(&node.config.name, node.config.node_id),
        ));
    }
    if serving_wal && hello.node_id != 0 {
        let upstream = node.upstream.lock().clone();
        if node.is_replica_role() {
            if let Some(i) = upstream.iter().position(|l| l.node_id == hello.node_id) {
                let mut path = vec![node.config.name.clone()];
                path.extend(upstream[..=i].iter().map(|l| l.name.clone()));
                return Some((
                    CYCLE,
                    format!(
                        "{} replicates from you ({}): serving you would close a replication cycle",
                        node.config.name,
                        path.join(" → ")
                    ),
                ));
            }
        }
    }
    None
}

/// Checks the chain of the node this one (`own_id`, `own_name`) would follow (at `addr`):
/// not this node itself, and no cycle through it.
pub fn check_chain(own_id: u64, own_name: &str, addr: &str, chain: &[ChainLink]) -> Result<()> {
    let Some(first) = chain.first() else {
        return Ok(());
    };
    if first.node_id == own_id {
        return Err(Error::SelfLink(format!(
            "{addr} is this node itself ({}): a node cannot replicate from itself; point it at another node",
            label(first)
        )));
    }
    if let Some(i) = chain.iter().position(|l| l.node_id == own_id) {
        let mut path = vec![own_name.to_string()];
        path.extend(chain[..=i].iter().map(|l| l.name.clone()));
        return Err(Error::Cycle(format!(
            "following {addr} would close a replication cycle: {} (each follows the next); \
             point this node at the primary instead",
            path.join(" → ")
        )));
    }
    Ok(())
}

/// The typed error for an error frame a peer answered a handshake with.
pub(crate) fn refused(addr: &str, code: u16, message: String) -> Error {
    match code {
        SELF_LINK => Error::SelfLink(format!("{addr} is this node itself: {message}")),
        CYCLE => Error::Cycle(format!("{addr} refused: {message}")),
        VERSION_MISMATCH => Error::Incompatible(format!(
            "{addr} is a replidb node of another replication protocol version: {message}"
        )),
        _ => Error::Peer(format!("{addr} refused: {message}")),
    }
}

/// Whether `buf` looks like text (a RESP reply, an HTTP status line…) rather than a frame.
fn looks_like_text(buf: &[u8]) -> bool {
    let head = &buf[..buf.len().min(16)];
    !head.is_empty()
        && head
            .iter()
            .all(|&b| b == b'\r' || b == b'\n' || b == b'\t' || (0x20..0x7f).contains(&b))
}

/// The first frame a peer sends in a handshake. A peer that answers with something that is
/// no frame is named for what it is (`Incompatible`), with the start of its answer: a Redis
/// server's `-ERR unknown command`, say, instead of a frame length decoded from its text.
pub(crate) async fn read_first_frame<R: AsyncReadExt + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    addr: &str,
) -> Result<Frame> {
    loop {
        match take_frame(buf) {
            Ok(Some(f)) => return Ok(f),
            Ok(None) => {}
            Err(e) => {
                let shown: String = String::from_utf8_lossy(&buf[..buf.len().min(120)])
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string();
                return Err(if looks_like_text(buf) {
                    text_answer(addr, &shown)
                } else {
                    Error::Incompatible(format!("{addr} is not a replidb node: its answer to the replication handshake is not a replidb frame ({e})"))
                });
            }
        }
        // A text line ends before a frame could: name the peer as soon as one is complete.
        if looks_like_text(buf) && buf.contains(&b'\n') {
            let line = String::from_utf8_lossy(&buf[..buf.len().min(120)])
                .lines()
                .next()
                .unwrap_or_default()
                .to_string();
            return Err(text_answer(addr, &line));
        }
        if rd.read_buf(buf).await? == 0 {
            return Err(Error::Peer(format!(
                "{addr} closed the connection during the replication handshake"
            )));
        }
    }
}

/// The error for a text line a peer answered the handshake with. A RESP error that any
/// Redis-protocol server gives before looking at the command — a password wanted, too many
/// clients, still loading — says nothing of what the peer is: it is passed on as the
/// peer's refusal (retried as usual). An unknown-command error, or text that is no RESP
/// error at all (an HTTP status line, `+OK`…), names a peer that is not replidb.
fn text_answer(addr: &str, line: &str) -> Error {
    let upper = line.to_ascii_uppercase();
    if upper.starts_with("-NOAUTH") || upper.starts_with("-WRONGPASS") {
        return Error::Peer(format!(
            "{addr} wants a password for the replication handshake ({line:?}): set --primary-password"
        ));
    }
    if line.starts_with('-') && !upper.contains("UNKNOWN COMMAND") {
        return Error::Peer(format!(
            "{addr} refused the replication handshake: {line:?}"
        ));
    }
    Error::Incompatible(format!(
        "{addr} is not a replidb node: it answered the replication handshake with {line:?}"
    ))
}

/// What a probed node says of itself.
#[derive(Clone, Debug)]
pub struct PeerReport {
    pub primary: bool,
    pub epoch: u32,
    /// The probed node and its upstreams, nearest first.
    pub chain: Vec<ChainLink>,
}

const CONTROL: &[u8] = b"*1\r\n$11\r\nREPLCONTROL\r\n";

/// Asks the node at `addr` who it is over a control connection (hello, role query), within
/// `HANDSHAKE_TIMEOUT`. Typed errors: `SelfLink` (it is this node), `Incompatible` (not
/// replidb, or another protocol version); `Io` when it cannot be reached.
pub async fn probe(config: &NodeConfig, addr: &str) -> Result<PeerReport> {
    let ask = async {
        let (mut rd, mut wr, mut buf) = connect_as_replica(config, addr, CONTROL).await?;
        let hello = Frame::Hello {
            version: frame::VERSION,
            epoch: 0,
            node_id: config.node_id,
            flush_lsn: storage::Lsn(0),
            name: config.name.clone(),
            epochs: Vec::new(),
        };
        write_frame(&mut wr, &hello).await?;
        write_frame(&mut wr, &Frame::RoleQuery).await?;
        match read_first_frame(&mut rd, &mut buf, addr).await? {
            Frame::RoleReport {
                primary,
                epoch,
                chain,
                ..
            } => Ok(PeerReport {
                primary,
                epoch,
                chain,
            }),
            Frame::Error { code, message } => Err(refused(addr, code, message)),
            other => Err(Error::Peer(format!(
                "{addr} answered a role query with {}",
                format!("{other:?}").chars().take(100).collect::<String>()
            ))),
        }
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, ask).await {
        Ok(r) => r,
        Err(_) => Err(Error::Peer(format!(
            "{addr} did not answer the replication handshake within {} s",
            HANDSHAKE_TIMEOUT.as_secs()
        ))),
    }
}

/// Probes `addr` and checks that this node may follow it: not itself, no cycle, a replidb
/// node of this protocol. Unreachable is not a refusal (`Ok(None)`): a replica waits for its
/// primary to come up.
pub async fn check_follow(config: &NodeConfig, addr: &str) -> Result<Option<PeerReport>> {
    match probe(config, addr).await {
        Ok(report) => {
            check_chain(config.node_id, &config.name, addr, &report.chain)?;
            Ok(Some(report))
        }
        Err(e) if e.setup_problem().is_some() => Err(e),
        Err(e) => {
            tracing::info!(%addr, error = %format!("{e:#}"), "could not ask the node to follow who it is; following it anyway");
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(node_id: u64, name: &str) -> ChainLink {
        ChainLink {
            node_id,
            name: name.into(),
        }
    }

    #[test]
    fn a_chain_starting_with_this_node_is_itself() {
        let e = check_chain(5, "a", "h:1", &[link(5, "a")]).unwrap_err();
        assert!(matches!(e, Error::SelfLink(_)), "{e}");
        assert!(e.to_string().contains("h:1 is this node itself"), "{e}");
    }

    #[test]
    fn a_chain_holding_this_node_further_up_is_a_cycle_named_in_order() {
        let chain = [link(3, "c"), link(2, "b"), link(1, "a"), link(9, "z")];
        let e = check_chain(1, "a", "h:3", &chain).unwrap_err();
        assert!(matches!(e, Error::Cycle(_)), "{e}");
        assert!(e.to_string().contains("a → c → b → a"), "{e}");
        check_chain(4, "d", "h:3", &chain).unwrap();
        check_chain(4, "d", "h:3", &[]).unwrap();
    }

    #[test]
    fn refusals_read_from_a_peer_are_typed() {
        assert!(matches!(
            refused("h:1", SELF_LINK, "x".into()),
            Error::SelfLink(_)
        ));
        assert!(matches!(refused("h:1", CYCLE, "x".into()), Error::Cycle(_)));
        let v = refused("h:1", VERSION_MISMATCH, "protocol version 5".into());
        assert!(v
            .to_string()
            .contains("another replication protocol version"));
        assert!(v.setup_problem().is_some());
        assert!(refused("h:1", NOT_READY, "x".into())
            .setup_problem()
            .is_none());
    }

    #[test]
    fn text_answers_are_told_from_frames() {
        assert!(looks_like_text(b"-ERR unknown command 'REPLSTREAM'\r\n"));
        assert!(looks_like_text(b"HTTP/1.1 400 Bad Request\r\n"));
        let mut f = Vec::new();
        Frame::RoleQuery.encode(&mut f);
        assert!(!looks_like_text(&f));
    }

    #[tokio::test]
    async fn a_redis_reply_to_the_handshake_names_the_peer() {
        let mut rd: &[u8] = b"-ERR unknown command 'REPLSTREAM', with args beginning with: \r\n";
        let mut buf = BytesMut::new();
        let e = read_first_frame(&mut rd, &mut buf, "h:6379")
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Incompatible(_)), "{e}");
        assert!(
            e.to_string().contains("h:6379 is not a replidb node"),
            "{e}"
        );
        assert!(e.to_string().contains("-ERR unknown command"), "{e}");
    }

    #[tokio::test]
    async fn an_error_any_server_gives_is_not_taken_for_a_foreign_peer() {
        for (answer, wanted) in [
            (
                &b"-NOAUTH Authentication required.\r\n"[..],
                "--primary-password",
            ),
            (
                b"-ERR max number of clients reached\r\n",
                "max number of clients",
            ),
        ] {
            let mut rd: &[u8] = answer;
            let mut buf = BytesMut::new();
            let e = read_first_frame(&mut rd, &mut buf, "h:1")
                .await
                .unwrap_err();
            assert!(matches!(e, Error::Peer(_)), "{e}");
            assert!(e.setup_problem().is_none(), "{e}");
            assert!(e.to_string().contains(wanted), "{e}");
        }
    }
}
