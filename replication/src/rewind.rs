//! Rewinding a diverged node whose log past the fork point was replayed (PostgreSQL's
//! pg_rewind, over the replication protocol): the node names the pages its divergent log
//! changed, the primary sends those and the ones it changed since the fork, every other page
//! is the node's own.

use std::sync::Arc;

use crate::wire::transport::Conn;
use bytes::BytesMut;
use storage::Lsn;
use tokio::io::AsyncWriteExt;

use crate::epochs::Verdict;
use crate::error::{bail, Result};
use crate::frame::{self, Frame};
use crate::node::Node;
use crate::seed::fetch::{pages_within, read_snapshot_begin};
use crate::seed::serve::{begin_backup, send_backup_begin, send_pages};
use crate::seed::swap::swap_in;
use crate::wire::handshake::{connect_as_replica, own_hello, read_hello, verdict};
use crate::wire::io::{read_frame, write_frame};

/// Pages per `snapshot_pages` frame of a rewind.
const REWIND_RUN: u64 = 256;

/// Replica side: rewinds a diverged node whose log past `fork` was replayed. Sends the pages
/// its divergent log changed; the primary answers with a base backup that holds only those
/// and the ones it changed since the fork; every other page is copied from this node's own
/// state (unchanged since the fork on both sides, so identical). The result is laid down
/// like a reseed (`DIR/reseed-<ms>/`, swapped in, consistent after replay). Returns the
/// pages fetched and the total.
pub(crate) async fn rewind_pages(node: &Arc<Node>, primary: &str, fork: Lsn) -> Result<(u64, u64)> {
    let db = node.db();
    let local = {
        let db = db.clone();
        tokio::task::spawn_blocking(move || db.pages_changed_after(fork)).await?
    };
    let (mut rd, mut wr, mut buf) =
        connect_as_replica(&node.config, primary, b"*1\r\n$10\r\nREPLREWIND\r\n").await?;
    write_frame(
        &mut wr,
        &own_hello(&db, &node.config, frame::STREAM_VERSION),
    )
    .await?;
    for chunk in local.chunks(frame::MAX_PAGE_LIST) {
        write_frame(
            &mut wr,
            &Frame::PageList {
                pages: chunk.to_vec(),
            },
        )
        .await?;
    }
    write_frame(&mut wr, &Frame::PageList { pages: Vec::new() }).await?;
    let (redo, pages, epochs) = read_snapshot_begin(&mut rd, &mut buf).await?;
    let side = node.dir.new_side_dir();
    let dir = side.clone();
    let options = node.config.storage.clone();
    let mut seeder =
        tokio::task::spawn_blocking(move || storage::Seeder::create(&dir, redo, &options))
            .await??;
    // Runs of pages fetched, [first, end): memory grows with what the primary sent, never
    // with the page count it names.
    let mut fetched: Vec<(u64, u64)> = Vec::new();
    let mut n_fetched = 0u64;
    loop {
        match read_frame(&mut rd, &mut buf).await? {
            Frame::SnapshotPages { first_page, bytes } => {
                let end = pages_within(first_page, &bytes, pages)?;
                fetched.push((first_page, end));
                n_fetched += end - first_page;
                seeder = tokio::task::spawn_blocking(move || {
                    seeder.write_pages(first_page, &bytes).map(|()| seeder)
                })
                .await??;
            }
            Frame::SnapshotEnd => break,
            Frame::Error { message, .. } => bail!("the primary says: {message}"),
            other => bail!("unexpected frame {other:?}"),
        }
    }
    // Every page not fetched: this node's own, unchanged since the fork.
    let seeder = tokio::task::spawn_blocking(move || -> Result<storage::Seeder> {
        let mut out = Vec::new();
        fetched.sort_unstable();
        // The gaps between the fetched runs, and after the last one.
        let mut i = 0u64;
        for (first, end) in fetched.into_iter().chain([(pages, pages)]) {
            while i < first {
                let j = first.min(i + REWIND_RUN);
                out.clear();
                db.read_current_pages(i, j - i, &mut out);
                seeder.write_pages(i, &out)?;
                i = j;
            }
            i = i.max(end);
        }
        Ok(seeder)
    })
    .await??;
    tokio::task::spawn_blocking(move || seeder.finish(&epochs)).await??;
    swap_in(node, &side).await?;
    Ok((n_fetched, pages))
}

/// Ids in a rewind's page list at most (2 GiB of them).
const MAX_WANTED: usize = 1 << 28;

/// Adds a `page_list` frame's ids to a rewind's list: only pages this node has (`pages_here`)
/// are kept, and duplicates are dropped once the list is twice the page count, so the list
/// never holds more than twice as many ids as this node has pages (nor more than
/// `MAX_WANTED`), whatever a peer sends.
pub(crate) fn take_page_list(
    wanted: &mut Vec<u64>,
    pages: Vec<u64>,
    pages_here: u64,
) -> Result<()> {
    wanted.extend(pages.into_iter().filter(|&p| p < pages_here));
    // Only once it is twice the page count (then it halves at least), so a peer sending many
    // short lists does not make every one of them a sort of the whole list.
    if wanted.len() as u64 > 2 * pages_here {
        wanted.sort_unstable();
        wanted.dedup();
    }
    if wanted.len() > MAX_WANTED {
        bail!("page list too long");
    }
    Ok(())
}

/// Primary side of a rewind (`REPLREWIND`): a base backup holding only the pages the node
/// named and the pages changed here since the fork.
pub async fn serve_rewind(node: Arc<Node>, sock: Conn, mut buf: BytesMut) -> Result<()> {
    let peer = sock.peer();
    let (mut rd, mut wr) = tokio::io::split(sock);
    let hello = read_hello(&node, false, &mut rd, &mut wr, &mut buf).await?;
    let name = hello.name.clone();
    let pages_here = node.db().stats().page_count;
    let mut wanted: Vec<u64> = Vec::new();
    loop {
        match read_frame(&mut rd, &mut buf).await? {
            Frame::PageList { pages } if pages.is_empty() => break,
            Frame::PageList { pages } => take_page_list(&mut wanted, pages, pages_here)
                .map_err(|e| e.context(name.clone()))?,
            other => bail!("{name}: expected page_list, got {other:?}"),
        }
    }
    let db = node.db();
    let fork = match verdict(&db, &hello) {
        Verdict::Diverged { fork } => fork,
        v => {
            let message = format!("no rewind needed or possible here: {v:?}");
            write_frame(
                &mut wr,
                &Frame::Error {
                    code: 3,
                    message: message.clone(),
                },
            )
            .await?;
            bail!("{name}: {message}");
        }
    };
    let (redo, pages, _link) = begin_backup(&node, &db, &name, &peer).await?;
    let mine = {
        let db = db.clone();
        tokio::task::spawn_blocking(move || db.pages_changed_after(fork)).await?
    };
    wanted.extend(mine);
    wanted.retain(|&p| p < pages);
    wanted.sort_unstable();
    wanted.dedup();
    tracing::info!(replica = %name, %peer, fork = fork.0, redo = redo.0, pages = wanted.len(), of = pages, "sending the pages for a rewind");
    send_backup_begin(&mut wr, &db, redo, pages).await?;
    let mut i = 0;
    while i < wanted.len() {
        let first = wanted[i];
        let mut n = 1;
        while i + (n as usize) < wanted.len()
            && wanted[i + n as usize] == first + n
            && n < REWIND_RUN
        {
            n += 1;
        }
        send_pages(&db, &mut wr, first, n).await?;
        i += n as usize;
    }
    write_frame(&mut wr, &Frame::SnapshotEnd).await?;
    wr.shutdown().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// A peer that takes a rewind's request, then answers with `frames`.
    async fn hostile_primary(frames: Vec<Frame>) -> String {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (sock, _) = l.accept().await.unwrap();
            let (mut rd, mut wr) = sock.into_split();
            let mut buf = BytesMut::new();
            // The RESP command, then the hello and the page lists up to the empty one.
            while !buf.windows(12).any(|w| w == b"REPLREWIND\r\n") {
                rd.read_buf(&mut buf).await.unwrap();
            }
            let at = buf
                .windows(12)
                .position(|w| w == b"REPLREWIND\r\n")
                .unwrap()
                + 12;
            let _ = buf.split_to(at);
            loop {
                match read_frame(&mut rd, &mut buf).await.unwrap() {
                    Frame::PageList { pages } if pages.is_empty() => break,
                    _ => {}
                }
            }
            for f in frames {
                write_frame(&mut wr, &f).await.unwrap();
            }
            // Keep the connection open until the node gives up.
            let _ = rd.read_buf(&mut buf).await;
        });
        addr
    }

    #[tokio::test]
    async fn a_primary_that_sends_absurd_page_counts_or_runs_gets_an_error_not_a_panic() {
        let begin = |page_count| Frame::SnapshotBegin {
            redo_lsn: Lsn(0),
            page_count,
            epochs: Vec::new(),
        };
        let page = vec![0u8; storage::PAGE_SIZE];
        let cases = [
            (vec![begin(1 << 40)], "more than a page file holds"),
            (
                vec![
                    begin(10),
                    Frame::SnapshotPages {
                        first_page: u64::MAX,
                        bytes: page.clone(),
                    },
                ],
                "past its page count",
            ),
            (
                vec![
                    begin(10),
                    Frame::SnapshotPages {
                        first_page: 10,
                        bytes: page,
                    },
                ],
                "past its page count",
            ),
        ];
        for (frames, want) in cases {
            let dir = tempfile::tempdir().unwrap();
            let node = crate::node::test_replica(dir.path(), "nowhere:1");
            let addr = hostile_primary(frames).await;
            let e = rewind_pages(&node, &addr, Lsn(0)).await.unwrap_err();
            assert!(e.to_string().contains(want), "{e}");
        }
    }
}
