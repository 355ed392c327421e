//! The dispatch a server's connection loop does for replication connections, for nodes that
//! run without one: over a [`LocalNet`](crate::wire::transport::LocalNet) a connection opens
//! with one of the six commands `connect_as_replica` sends, and is handed to the role file
//! that serves it (as PostgreSQL's postmaster hands a connection to a walsender). No `AUTH`
//! is taken here: nodes in one process need no password (a node configured with
//! `primary_password` cannot follow over the local transport).

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;

use crate::error::{bail, Result};
use crate::node::Node;
use crate::wire::transport::{Conn, LocalListener};

/// The commands a connecting node opens with, as `connect_as_replica` sends them.
const STREAM: &[u8] = b"*1\r\n$10\r\nREPLSTREAM\r\n";
const SNAPSHOT: &[u8] = b"*1\r\n$12\r\nREPLSNAPSHOT\r\n";
const REWIND: &[u8] = b"*1\r\n$10\r\nREPLREWIND\r\n";
const CONTROL: &[u8] = b"*1\r\n$11\r\nREPLCONTROL\r\n";
const PAGES: &[u8] = crate::repair::PAGES_COMMAND;
const VERIFY: &[u8] = crate::repair::VERIFY_COMMAND;

/// Serves one replication connection: reads its opening command and runs the side that
/// answers it (a sender, a base backup, a rewind or a control connection).
pub async fn serve_connection(node: Arc<Node>, mut conn: Conn) -> Result<()> {
    let mut buf = BytesMut::with_capacity(4096);
    let kind = loop {
        if let Some(k) = [STREAM, SNAPSHOT, REWIND, CONTROL, PAGES, VERIFY]
            .into_iter()
            .find(|c| buf.starts_with(c))
        {
            break k;
        }
        let longest = SNAPSHOT.len();
        let prefix_of_one = [STREAM, SNAPSHOT, REWIND, CONTROL, PAGES, VERIFY]
            .iter()
            .any(|c| c.starts_with(&buf[..buf.len().min(c.len())]));
        if buf.len() >= longest || !prefix_of_one {
            bail!(
                "{}: not a replication command: {:?}",
                conn.peer(),
                String::from_utf8_lossy(&buf[..buf.len().min(64)])
            );
        }
        if conn.read_buf(&mut buf).await? == 0 {
            bail!("{}: closed before its command", conn.peer());
        }
    };
    let _ = buf.split_to(kind.len());
    match kind {
        STREAM => crate::primary::serve_replica(node, conn, buf).await,
        SNAPSHOT => crate::seed::serve_snapshot(node, conn, buf).await,
        REWIND => crate::rewind::serve_rewind(node, conn, buf).await,
        PAGES => crate::repair::serve_pages(node, conn, buf).await,
        VERIFY => crate::repair::serve_verify(node, conn, buf).await,
        _ => crate::role::serve_control(node, conn, buf).await,
    }
}

/// Accepts connections on `listener` until it closes or the node stops, serving each on a
/// task of its own.
pub async fn serve_local(node: Arc<Node>, mut listener: LocalListener) {
    loop {
        let conn = tokio::select! {
            c = listener.accept() => match c {
                Some(c) => c,
                None => return,
            },
            _ = node.stopped() => return,
        };
        let node = node.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_connection(node, conn).await {
                tracing::info!(error = %format!("{e:#}"), "replication connection ended");
            }
        });
    }
}
