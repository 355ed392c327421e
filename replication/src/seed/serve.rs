//! Primary side of a base backup: a checkpoint's redo LSN, then the page file in 1 MiB
//! frames while writes go on.

use std::sync::Arc;

use crate::wire::transport::Conn;
use bytes::BytesMut;
use storage::Lsn;
use tokio::io::AsyncWriteExt;

use crate::error::Result;
use crate::frame::{self, Frame};
use crate::node::Node;
use crate::primary::{update_retention, LinkGuard};
use crate::wire::handshake::{read_hello, Hello};
use crate::wire::io::write_frame;

/// Sends pages `first .. first + n` of `db`'s page file as one `snapshot_pages` frame.
pub(crate) async fn send_pages<W: AsyncWriteExt + Unpin>(
    db: &Arc<storage::Db>,
    wr: &mut W,
    first: u64,
    n: u64,
) -> Result<()> {
    let db = db.clone();
    let bytes = tokio::task::spawn_blocking(move || {
        let mut out = Vec::with_capacity(n as usize * storage::PAGE_SIZE);
        db.read_page_file(first, n, &mut out).map(|()| out)
    })
    .await??;
    write_frame(
        wr,
        &Frame::SnapshotPages {
            first_page: first,
            bytes,
        },
    )
    .await
}

/// Starts a base backup of `db` for the node `name` at `peer` (a new replica, or one that
/// rewinds): a checkpoint, then the node is registered at the backup's redo LSN so the WAL
/// from there stays on disk until it streams (released when the returned guard drops, unless
/// it streams by then). Returns the redo LSN and the page count.
pub(crate) async fn begin_backup<'a>(
    node: &'a Node,
    db: &Arc<storage::Db>,
    name: &str,
    peer: &str,
) -> Result<(Lsn, u64, LinkGuard<'a>)> {
    let (redo, pages) = tokio::task::spawn_blocking({
        let db = db.clone();
        move || db.begin_base_backup()
    })
    .await??;
    let slot = node.tracker.connect(name, peer, redo, true);
    let guard = LinkGuard(&node.tracker, slot);
    update_retention(node);
    Ok((redo, pages, guard))
}

/// The `snapshot_begin` frame that opens a base backup.
pub(crate) async fn send_backup_begin<W: AsyncWriteExt + Unpin>(
    wr: &mut W,
    db: &storage::Db,
    redo: Lsn,
    pages: u64,
) -> Result<()> {
    let begin = Frame::SnapshotBegin {
        redo_lsn: redo,
        page_count: pages,
        epochs: db.epoch_history(),
    };
    write_frame(wr, &begin).await
}

/// Pages per snapshot frame (1 MiB).
const SNAPSHOT_CHUNK_PAGES: u64 = (frame::MAX_WAL_CHUNK / storage::PAGE_SIZE) as u64;

/// Primary side: sends a base backup to a new replica on a connection that sent
/// `REPLSNAPSHOT`: a checkpoint's redo LSN and page count, the page file in 1 MiB frames, the
/// end. The WAL from the redo LSN stays on disk for the replica (it is registered under its
/// name at that position) until it streams.
pub async fn serve_snapshot(node: Arc<Node>, sock: Conn, mut buf: BytesMut) -> Result<()> {
    let peer = sock.peer();
    let (mut rd, mut wr) = tokio::io::split(sock);
    let Hello { name, .. } = read_hello(&node, true, &mut rd, &mut wr, &mut buf).await?;
    let db = node.db();
    let (redo, pages, _link) = begin_backup(&node, &db, &name, &peer).await?;
    tracing::info!(replica = %name, %peer, redo = redo.0, pages, "sending a base backup");
    send_backup_begin(&mut wr, &db, redo, pages).await?;
    let mut first = 0;
    while first < pages {
        let n = SNAPSHOT_CHUNK_PAGES.min(pages - first);
        send_pages(&db, &mut wr, first, n).await?;
        first += n;
    }
    write_frame(&mut wr, &Frame::SnapshotEnd).await?;
    wr.shutdown().await?;
    // The replica streams from the redo LSN next; until it does, its WAL stays held.
    Ok(())
}
