//! Repairing a damaged page from a peer (docs/replication.md, "Repairing damaged pages"):
//! the node whose copy of a page fails its checksum asks a node on the same history for
//! the page (`REPLPAGES`: its hello, `page_list` frames, an empty one to end), and gets
//! `snapshot_begin` — whose `redo_lsn` is the LSN the pages are consistent at — one
//! `snapshot_pages` per page and `snapshot_end`, or an `error` frame (the peer's copy is
//! damaged too, the page does not exist there, the histories differ). The storage side
//! (`Db::install_repaired_page`) brings the page to this node's position.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::BytesMut;
use storage::{Lsn, PageId, PAGE_SIZE};

use crate::epochs::Verdict;
use crate::error::{bail, refuse, Error, Result};
use crate::frame::{self, Frame};
use crate::node::Node;
use crate::seed::fetch::read_snapshot_begin;
use crate::wire::handshake::{connect_as_replica, own_hello, read_hello, verdict, Hello};
use crate::wire::io::{read_frame, write_frame};
use crate::wire::transport::Conn;

/// The command that opens a page-repair connection.
pub const PAGES_COMMAND: &[u8] = b"*1\r\n$9\r\nREPLPAGES\r\n";

/// Pages one request may name.
const MAX_REQUEST: usize = 1024;

/// Error code of a peer that cannot give the pages asked for.
const CANNOT: u16 = 7;

/// The damaged page an error names, if it is a damaged page (through any context).
pub fn damaged_page(e: &Error) -> Option<PageId> {
    match e {
        Error::Storage(storage::Error::Corrupt { page, .. }) => Some(*page),
        Error::Context { source, .. } => damaged_page(source),
        _ => None,
    }
}

/// Whether the asking node and this one are on one history up to the older one's position:
/// the asker behind this node on its history, or this node behind the asker on its.
fn shares_history(db: &storage::Db, h: &Hello) -> bool {
    if verdict(db, h) == Verdict::Stream {
        return true;
    }
    crate::epochs::check(
        h.epoch,
        &h.epochs,
        h.flush_lsn,
        db.epoch(),
        &db.epoch_history(),
        db.last_lsn(),
    ) == Verdict::Stream
}

/// Serving side of `REPLPAGES`.
pub async fn serve_pages(node: Arc<Node>, sock: Conn, mut buf: BytesMut) -> Result<()> {
    let peer = sock.peer();
    let (mut rd, mut wr) = tokio::io::split(sock);
    let hello = read_hello(&mut rd, &mut wr, &mut buf).await?;
    let name = hello.name.clone();
    let mut wanted: Vec<u64> = Vec::new();
    loop {
        match read_frame(&mut rd, &mut buf).await? {
            Frame::PageList { pages } if pages.is_empty() => break,
            Frame::PageList { pages } if wanted.len() + pages.len() <= MAX_REQUEST => {
                wanted.extend(pages)
            }
            Frame::PageList { .. } => bail!("{name}: asks for more than {MAX_REQUEST} pages"),
            other => bail!("{name}: expected page_list, got {other:?}"),
        }
    }
    let db = node.db();
    let answer = if !shares_history(&db, &hello) {
        Err(format!(
            "your log (epoch {}, up to LSN {}) and this node's (epoch {}) are not one history: \
             its pages are not yours",
            hello.epoch,
            hello.flush_lsn,
            db.epoch()
        ))
    } else {
        let (db2, ids) = (db.clone(), wanted.clone());
        tokio::task::spawn_blocking(move || db2.pages_for_peer(&ids))
            .await?
            .map_err(|e| format!("this node cannot give them: {e}"))
    };
    let (at, pages) = match answer {
        Ok(x) => x,
        Err(message) => {
            tracing::warn!(peer = %name, addr = %peer, pages = ?wanted, reason = %message, "refused a page repair");
            write_frame(
                &mut wr,
                &Frame::Error {
                    code: CANNOT,
                    message: message.clone(),
                },
            )
            .await?;
            return Ok(());
        }
    };
    write_frame(
        &mut wr,
        &Frame::SnapshotBegin {
            redo_lsn: at,
            page_count: db.stats().page_count,
            epochs: db.epoch_history(),
        },
    )
    .await?;
    for (i, id) in wanted.iter().enumerate() {
        write_frame(
            &mut wr,
            &Frame::SnapshotPages {
                first_page: *id,
                bytes: pages[i * PAGE_SIZE..(i + 1) * PAGE_SIZE].to_vec(),
            },
        )
        .await?;
    }
    write_frame(&mut wr, &Frame::SnapshotEnd).await?;
    tracing::info!(peer = %name, addr = %peer, pages = ?wanted, at = at.0, "sent pages for a repair");
    Ok(())
}

/// Fetches page `id` from `peer` and puts it in place of this node's damaged copy. Returns
/// the LSN from which the page is consistent with the rest of this node's state.
pub async fn fetch_page(node: &Arc<Node>, peer: &str, id: PageId) -> Result<Lsn> {
    let db = node.db();
    let (mut rd, mut wr, mut buf) = connect_as_replica(&node.config, peer, PAGES_COMMAND).await?;
    write_frame(
        &mut wr,
        &own_hello(&db, &node.config.name, frame::STREAM_VERSION),
    )
    .await?;
    write_frame(&mut wr, &Frame::PageList { pages: vec![id.0] }).await?;
    write_frame(&mut wr, &Frame::PageList { pages: Vec::new() }).await?;
    let (at, _, _) = read_snapshot_begin(&mut rd, &mut buf).await?;
    let image = match read_frame(&mut rd, &mut buf).await? {
        Frame::SnapshotPages { first_page, bytes }
            if first_page == id.0 && bytes.len() == PAGE_SIZE =>
        {
            bytes
        }
        Frame::Error { message, .. } => bail!("{peer} says: {message}"),
        other => bail!("{peer}: expected page {id}, got {other:?}"),
    };
    match read_frame(&mut rd, &mut buf).await? {
        Frame::SnapshotEnd => {}
        other => bail!("{peer}: expected snapshot_end, got {other:?}"),
    }
    let from =
        tokio::task::spawn_blocking(move || db.install_repaired_page(id, &image, at)).await??;
    Ok(from)
}

/// Repairs damaged page `id` of this node from a peer — a replica from its primary — and
/// returns the LSN reads of it must wait for (the node's repair gate moves there). One
/// repair runs at a time; a page repaired meanwhile is not fetched again.
pub async fn repair_page(node: &Arc<Node>, id: PageId) -> Result<Lsn> {
    let _one = node.repair_lock.lock().await;
    let db = node.db();
    let Some(why) = db.page_damage(id) else {
        return Ok(Lsn(node.repair_gate.load(Ordering::Acquire)));
    };
    let Some(peer) = node.replicaof() else {
        refuse!("page {id} is damaged ({why}) and this node has no peer to repair it from: a primary does not yet know its replicas' addresses; `replidb check` names the damage")
    };
    tracing::warn!(page = id.0, peer = %peer, damage = %why, "repairing a damaged page from the primary");
    let from = fetch_page(node, &peer, id)
        .await
        .map_err(|e| e.context(format!("repairing page {id} from {peer}")))?;
    node.repair_gate.fetch_max(from.0, Ordering::AcqRel);
    node.pages_repaired.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(page = id.0, peer = %peer, consistent_from = from.0, "page repaired");
    Ok(from)
}
