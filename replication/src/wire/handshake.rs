//! The start of every replication connection: a node connects to the other's client port
//! (`AUTH` if asked, then one RESP command naming the kind of connection), says who it is
//! (hello: name, epoch, history, flush LSN), and the other answers with a verdict on how the
//! two logs relate.

use bytes::BytesMut;
use storage::Lsn;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};

use crate::epochs::Verdict;
use crate::error::{bail, Error, Result};
use crate::frame::{self, Frame};
use crate::node::{Node, NodeConfig};
use crate::wire::io::{read_frame, write_frame};
use crate::wire::transport::Conn;

/// Connects to the primary as a replica (over the node's transport): AUTH if a password is
/// set, then `command`.
pub(crate) async fn connect_as_replica(
    config: &NodeConfig,
    primary: &str,
    command: &[u8],
) -> Result<(ReadHalf<Conn>, WriteHalf<Conn>, BytesMut)> {
    let sock = config
        .transport
        .connect(primary)
        .await
        .map_err(|e| Error::from(e).context(format!("connecting to {primary}")))?;
    let (mut rd, mut wr) = tokio::io::split(sock);
    let mut buf = BytesMut::with_capacity(1 << 20);
    if let Some(pw) = &config.primary_password {
        let mut auth = Vec::new();
        auth.extend_from_slice(format!("*2\r\n$4\r\nAUTH\r\n${}\r\n", pw.len()).as_bytes());
        auth.extend_from_slice(pw.as_bytes());
        auth.extend_from_slice(b"\r\n");
        wr.write_all(&auth).await?;
        // The primary's RESP reply to AUTH: one line.
        let line = loop {
            if let Some(i) = buf.iter().position(|&b| b == b'\n') {
                break buf.split_to(i + 1);
            }
            if buf.len() > 4096 || rd.read_buf(&mut buf).await? == 0 {
                bail!("the primary closed the connection during AUTH");
            }
        };
        if !line.starts_with(b"+OK") {
            bail!(
                "the primary refused the password: {}",
                String::from_utf8_lossy(&line).trim()
            );
        }
    }
    wr.write_all(command).await?;
    Ok((rd, wr, buf))
}

/// What a connecting node says about itself.
pub(crate) struct Hello {
    pub(crate) name: String,
    /// The connecting node's id (0 from a tool that has none).
    pub(crate) node_id: u64,
    pub(crate) flush_lsn: Lsn,
    pub(crate) epoch: u32,
    pub(crate) epochs: Vec<(u32, Lsn)>,
}

/// Reads a node's hello. A node of a protocol version outside `MIN_VERSION..=VERSION`, this
/// node itself, or (when `serving_wal`: a stream or base backup) a node upstream of this one
/// gets an error frame saying so (`identity`), and the connection ends.
pub(crate) async fn read_hello<R: AsyncReadExt + Unpin, W: AsyncWriteExt + Unpin>(
    node: &Node,
    serving_wal: bool,
    rd: &mut R,
    wr: &mut W,
    buf: &mut BytesMut,
) -> Result<Hello> {
    let Frame::Hello {
        version,
        name,
        node_id,
        flush_lsn,
        epoch,
        epochs,
    } = read_frame(rd, buf).await?
    else {
        bail!("expected a hello frame");
    };
    if !(frame::MIN_VERSION..=frame::VERSION).contains(&version) {
        write_frame(
            wr,
            &Frame::Error {
                code: crate::identity::VERSION_MISMATCH,
                message: format!(
                    "protocol version {version} not supported (this node speaks {} to {})",
                    frame::MIN_VERSION,
                    frame::VERSION
                ),
            },
        )
        .await?;
        bail!("{name} speaks protocol version {version}");
    }
    let hello = Hello {
        name,
        node_id,
        flush_lsn,
        epoch,
        epochs,
    };
    if let Some((code, message)) = crate::identity::refusal(node, &hello, serving_wal) {
        // A node that reached itself says so on its own side; a cycle is worth saying here.
        if code == crate::identity::CYCLE {
            tracing::warn!(peer = %hello.name, reason = %message, "refusing a node");
        }
        write_frame(
            wr,
            &Frame::Error {
                code,
                message: message.clone(),
            },
        )
        .await?;
        return Err(crate::identity::refused(
            "the connecting node",
            code,
            message,
        ));
    }
    Ok(hello)
}

/// This node's hello to the node it follows: its epoch, history and flush LSN.
/// `version`: `frame::STREAM_VERSION` on a stream or rewind, `frame::VERSION` on a control
/// connection.
pub(crate) fn own_hello(db: &storage::Db, config: &NodeConfig, version: u32) -> Frame {
    Frame::Hello {
        version,
        epoch: db.epoch(),
        node_id: config.node_id,
        flush_lsn: db.flush_lsn(),
        name: config.name.clone(),
        epochs: db.epoch_history(),
    }
}

/// How a node's log relates to this node's (`crate::epochs::check`).
pub(crate) fn verdict(db: &storage::Db, h: &Hello) -> Verdict {
    crate::epochs::check(
        db.epoch(),
        &db.epoch_history(),
        db.written_lsn(),
        h.epoch,
        &h.epochs,
        h.flush_lsn,
    )
}

/// Error code of a primary that no longer holds the WAL a replica asks for.
pub(crate) const WAL_GONE: u16 = 4;

/// Error code: the asking node's log has diverged from this node's (sent as a `diverged`
/// frame, which names the fork LSN).
pub(crate) const DIVERGED: u16 = 5;

/// Error code: the asking node knows a newer epoch; this node is not the primary.
pub(crate) const STALE_PRIMARY: u16 = 6;

/// The primary cannot stream to this replica from where its log ends: it no longer retains
/// that WAL, or the log has diverged from the primary's. The replica must be reseeded.
#[derive(Debug, thiserror::Error)]
pub enum WalGone {
    #[error("the primary no longer retains the WAL this replica needs ({0})")]
    Removed(String),
    #[error("this node's log has diverged from the primary's ({message})")]
    Diverged { fork: Lsn, message: String },
}
