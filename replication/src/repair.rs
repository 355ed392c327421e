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

/// Error code of a peer that cannot give the pages asked for, or compare them.
const CANNOT: u16 = 10;

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
    let hello = read_hello(&node, false, &mut rd, &mut wr, &mut buf).await?;
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

/// Fetches page `id` from `peer` and puts it in place of this node's damaged copy (with
/// `drifted`, of its copy that differs from the peer's at the same version). Returns the LSN
/// from which the page is consistent with the rest of this node's state.
pub async fn fetch_page(node: &Arc<Node>, peer: &str, id: PageId, drifted: bool) -> Result<Lsn> {
    let db = node.db();
    let (mut rd, mut wr, mut buf) = connect_as_replica(&node.config, peer, PAGES_COMMAND).await?;
    write_frame(
        &mut wr,
        &own_hello(&db, &node.config, frame::STREAM_VERSION),
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
    let from = tokio::task::spawn_blocking(move || {
        if drifted {
            db.replace_drifted_page(id, &image, at)
        } else {
            db.install_repaired_page(id, &image, at)
        }
    })
    .await??;
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
    let peers = node.repair_sources();
    if peers.is_empty() {
        refuse!("page {id} is damaged ({why}) and this node has no peer to repair it from (a primary repairs from the members of its cluster; outside one it does not know its replicas' addresses); `replidb check` names the damage")
    }
    // A replica asks its primary; a cluster's primary asks each streaming member in turn
    // (their older copy is brought forward with this node's own WAL).
    let mut failures = Vec::new();
    for peer in peers {
        tracing::warn!(page = id.0, peer = %peer, damage = %why, "repairing a damaged page from a peer");
        match fetch_page(node, &peer, id, false).await {
            Ok(from) => {
                node.repair_gate.fetch_max(from.0, Ordering::AcqRel);
                node.pages_repaired.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(page = id.0, peer = %peer, consistent_from = from.0, "page repaired");
                return Ok(from);
            }
            Err(e) => {
                tracing::warn!(page = id.0, peer = %peer, error = %format!("{e:#}"), "this peer could not repair the page");
                failures.push(format!("{peer}: {e:#}"));
            }
        }
    }
    refuse!(
        "repairing page {id}: no peer could give it ({})",
        failures.join("; ")
    )
}

/// The command that opens a drift check (`REPLVERIFY`).
pub const VERIFY_COMMAND: &[u8] = b"*1\r\n$10\r\nREPLVERIFY\r\n";

/// Pages compared per round of the background check.
const VERIFY_PAGES: u64 = 1024;

/// The pages of `first ..` whose version on the replica (`theirs`) cannot be this node's:
/// the same page LSN with other bytes, or a page LSN this node's copy never had (past its
/// own). A page changed here since (a higher LSN here) is not comparable and is skipped.
pub fn drifted(first: u64, theirs: &[(u64, u32)], mine: &[(u64, u32)]) -> Vec<u64> {
    theirs
        .iter()
        .enumerate()
        .filter(|(i, &(lsn, crc))| {
            let (my_lsn, my_crc) = mine.get(*i).copied().unwrap_or((0, 0));
            (lsn == my_lsn && crc != my_crc) || lsn > my_lsn
        })
        .filter_map(|(i, _)| first.checked_add(i as u64))
        .collect()
}

/// Serving side of `REPLVERIFY`: a hello, one `page_versions` frame, answered with a
/// `page_list` of the pages that drifted (or an `error` frame).
pub async fn serve_verify(node: Arc<Node>, sock: Conn, mut buf: BytesMut) -> Result<()> {
    let (mut rd, mut wr) = tokio::io::split(sock);
    let hello = read_hello(&node, false, &mut rd, &mut wr, &mut buf).await?;
    let Frame::PageVersions {
        first_page,
        versions,
    } = read_frame(&mut rd, &mut buf).await?
    else {
        bail!("{}: expected page_versions", hello.name);
    };
    let db = node.db();
    if !shares_history(&db, &hello) {
        write_frame(
            &mut wr,
            &Frame::Error {
                code: CANNOT,
                message: "your log and this node's are not one history".into(),
            },
        )
        .await?;
        return Ok(());
    }
    let n = versions.len() as u64;
    let pages_here = db.stats().page_count;
    if first_page >= pages_here {
        bail!(
            "{}: page versions from page {first_page}, past this node's {pages_here} pages",
            hello.name
        );
    }
    let mine = tokio::task::spawn_blocking(move || db.page_versions(first_page, n).1).await?;
    let pages = drifted(first_page, &versions, &mine);
    if !pages.is_empty() {
        tracing::error!(replica = %hello.name, pages = ?pages, "a replica's pages differ from this node's at the same version");
    }
    write_frame(&mut wr, &Frame::PageList { pages }).await?;
    Ok(())
}

/// Compares this replica's pages `[first, first + VERIFY_PAGES)` with its primary's copies
/// of the same versions and replaces every page that drifted with the primary's. Returns
/// the pages compared and the pages replaced.
pub async fn verify_range(node: &Arc<Node>, first: u64) -> Result<(u64, Vec<u64>)> {
    let Some(primary) = node.replicaof() else {
        refuse!("only a replica compares its pages with its primary");
    };
    let db = node.db();
    let db2 = db.clone();
    let (_, versions) =
        tokio::task::spawn_blocking(move || db2.page_versions(first, VERIFY_PAGES)).await?;
    let (mut rd, mut wr, mut buf) =
        connect_as_replica(&node.config, &primary, VERIFY_COMMAND).await?;
    write_frame(
        &mut wr,
        &own_hello(&db, &node.config, frame::STREAM_VERSION),
    )
    .await?;
    let compared = versions.len() as u64;
    write_frame(
        &mut wr,
        &Frame::PageVersions {
            first_page: first,
            versions,
        },
    )
    .await?;
    let pages = match read_frame(&mut rd, &mut buf).await? {
        Frame::PageList { pages } => pages,
        Frame::Error { message, .. } => bail!("{primary} says: {message}"),
        other => bail!("{primary}: expected page_list, got {other:?}"),
    };
    drop((rd, wr));
    let _one = node.repair_lock.lock().await;
    for &id in &pages {
        tracing::error!(page = id, primary = %primary, "drift: this replica's page differs from its primary's at the same version; replacing it with the primary's copy");
        node.drifted_pages.fetch_add(1, Ordering::Relaxed);
        // One page that cannot be replaced does not keep the others from it.
        match fetch_page(node, &primary, PageId(id), true).await {
            Ok(from) => {
                node.repair_gate.fetch_max(from.0, Ordering::AcqRel);
            }
            Err(e) => {
                tracing::error!(page = id, error = %format!("{e:#}"), "could not replace a drifted page")
            }
        }
    }
    node.verified_pages.fetch_add(compared, Ordering::Relaxed);
    Ok((compared, pages))
}

/// On a replica: every `interval`, compares the next `VERIFY_PAGES` pages with the
/// primary's (round the whole file, again and again) and replaces drifted ones.
pub async fn verify_every(node: Arc<Node>, interval: std::time::Duration) {
    let mut first = 0u64;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = node.stopped() => return,
        }
        if !node.is_replica_role() || !node.link_up.load(Ordering::Relaxed) {
            continue;
        }
        if let Err(e) = verify_range(&node, first).await {
            tracing::warn!(first_page = first, error = %format!("{e:#}"), "comparing pages with the primary failed");
        }
        // On to the next range either way: one range that fails does not stop the rest.
        first += VERIFY_PAGES;
        if first >= node.db().stats().page_count {
            first = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::drifted;

    #[test]
    fn only_same_version_differences_and_versions_the_primary_never_had_are_drift() {
        let mine = [(10, 1), (20, 2), (30, 3), (0, 0), (40, 4)];
        let theirs = [
            (10, 1), // same version, same bytes
            (20, 9), // same version, other bytes: drift
            (25, 7), // the primary changed it since: not comparable
            (5, 5),  // a version the primary never had here: drift
            (40, 4), // equal
        ];
        assert_eq!(drifted(100, &theirs, &mine), vec![101, 103]);
        assert!(drifted(0, &[(0, 0)], &[(0, 0)]).is_empty());
    }
}
