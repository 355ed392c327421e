//! Replica side of a base backup: fetching one from the primary and laying it down, for a
//! new replica (before its database opens) or a reseed.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use storage::Lsn;
use tokio::io::AsyncReadExt;

use crate::error::{bail, Error, Result};
use crate::frame::{self, Frame};
use crate::node::NodeConfig;
use crate::node_dir::NodeDir;
use crate::replica::{BACKOFF_MAX, SETUP_RETRY};
use crate::wire::handshake::connect_as_replica;
use crate::wire::io::{read_frame, write_frame};

/// Past any LSN a log could reach (2^62 bytes: decades of writing at a gigabyte a second); a
/// position beyond it from a peer is refused before it can overflow arithmetic on positions.
const MAX_LSN: u64 = 1 << 62;

/// A base backup's redo LSN, page count and epoch history (`snapshot_begin`).
pub(crate) type BackupStart = (Lsn, u64, Vec<(u32, Lsn)>);

/// Reads the `snapshot_begin` that opens a base backup: its redo LSN, page count and the
/// primary's epoch history.
pub(crate) async fn read_snapshot_begin<R: AsyncReadExt + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
) -> Result<BackupStart> {
    snapshot_begin(read_frame(rd, buf).await?)
}

/// Checks a `snapshot_begin` frame: its redo LSN, page count and epoch history.
fn snapshot_begin(f: Frame) -> Result<BackupStart> {
    match f {
        Frame::SnapshotBegin { page_count, .. } if page_count > storage::MAX_PAGES => bail!(
            "the primary's backup claims {page_count} pages, more than a page file holds ({})",
            storage::MAX_PAGES
        ),
        Frame::SnapshotBegin { redo_lsn, .. } if redo_lsn.0 > MAX_LSN => {
            bail!("the primary's backup starts its log at LSN {redo_lsn}, past any log ({MAX_LSN})")
        }
        Frame::SnapshotBegin { epochs, .. }
            if storage::check_history(&epochs).is_err()
                || epochs.iter().any(|&(_, l)| l.0 > MAX_LSN) =>
        {
            bail!("the primary's backup carries an impossible epoch history: {epochs:?}")
        }
        Frame::SnapshotBegin {
            redo_lsn,
            page_count,
            epochs,
        } => Ok((redo_lsn, page_count, epochs)),
        Frame::Error { message, .. } => bail!("the primary refused: {message}"),
        other => bail!("expected snapshot_begin, got {other:?}"),
    }
}

/// The end of a `snapshot_pages` frame's run of pages, checked against the backup's page
/// count (a frame past it, or one whose end overflows, is the peer's error, not a panic).
pub(crate) fn pages_within(first_page: u64, bytes: &[u8], pages: u64) -> Result<u64> {
    let n = (bytes.len() / storage::PAGE_SIZE) as u64;
    match first_page.checked_add(n) {
        Some(end) if end <= pages => Ok(end),
        _ => bail!("the primary sent pages {first_page}+{n}, past its page count {pages}"),
    }
}

/// Replica side, before the database opens: when the data directory is new, fetch a base
/// backup from the primary and lay it down (retrying until it succeeds or the node stops).
/// Each failure is put in `last_error` (what INFO shows meanwhile). The primary turning out
/// to be this node itself ends it with that error; another wrong setup (a peer that is not
/// replidb) is logged once and asked again every `SETUP_RETRY`.
pub async fn seed_if_new(
    config: &NodeConfig,
    primary: &str,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    last_error: &parking_lot::Mutex<String>,
) -> Result<()> {
    if NodeDir::on(config.storage.vfs.clone(), config.dir.clone()).has_database() {
        return Ok(());
    }
    let mut backoff = Duration::from_millis(50);
    let mut said = String::new();
    loop {
        let wait = match seed_once(config, primary, &config.dir).await {
            Ok(()) => {
                // Seeded: whatever failed before (the primary down, say) is over.
                last_error.lock().clear();
                return Ok(());
            }
            Err(e @ Error::SelfLink(_)) => return Err(e),
            Err(e) => {
                *last_error.lock() = format!("{e:#}");
                match e.setup_problem() {
                    Some(why) => {
                        if why != said {
                            tracing::error!(primary = %primary, retry_in_s = SETUP_RETRY.as_secs(), "cannot seed: {why}");
                            said = why.to_string();
                        }
                        SETUP_RETRY
                    }
                    None => {
                        tracing::warn!(primary = %primary, error = %format!("{e:#}"), retry_in_ms = backoff.as_millis() as u64, "seeding from the primary failed");
                        backoff
                    }
                }
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => bail!("stopped while seeding"),
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

pub(crate) async fn seed_once(
    config: &NodeConfig,
    primary: &str,
    dir: &std::path::Path,
) -> Result<()> {
    let (mut rd, mut wr, mut buf) =
        connect_as_replica(config, primary, b"*1\r\n$12\r\nREPLSNAPSHOT\r\n").await?;
    let hello = Frame::Hello {
        version: frame::STREAM_VERSION,
        epoch: 1,
        node_id: config.node_id,
        flush_lsn: Lsn(0),
        name: config.name.clone(),
        epochs: Vec::new(),
    };
    write_frame(&mut wr, &hello).await?;
    // The first answer says whether the peer is a replidb node that will serve this one.
    let first = crate::identity::read_first_frame(&mut rd, &mut buf, primary).await?;
    if let Frame::Error { code, message } = first {
        return Err(crate::identity::refused(primary, code, message));
    }
    let (redo, pages, epochs) = snapshot_begin(first)?;
    let dir_for_gate = dir;
    let dir = dir.to_path_buf();
    let options = config.storage.clone();
    let mut seeder =
        tokio::task::spawn_blocking(move || storage::Seeder::create(&dir, redo, &options))
            .await??;
    let total = pages * storage::PAGE_SIZE as u64;
    let t0 = Instant::now();
    let mut last_log = Instant::now();
    tracing::info!(primary = %primary, redo = redo.0, bytes = total, "seeding from a base backup");
    loop {
        match read_frame(&mut rd, &mut buf).await? {
            Frame::SnapshotPages { first_page, bytes } => {
                pages_within(first_page, &bytes, pages)?;
                seeder = tokio::task::spawn_blocking(move || {
                    seeder.write_pages(first_page, &bytes).map(|()| seeder)
                })
                .await??;
                if last_log.elapsed() >= Duration::from_secs(1) {
                    let done = seeder.written();
                    let rate = done as f64 / t0.elapsed().as_secs_f64() / 1e6;
                    tracing::info!(
                        bytes = done,
                        percent = done * 100 / total.max(1),
                        rate_mb_s = format!("{rate:.0}"),
                        "seeding"
                    );
                    last_log = Instant::now();
                }
            }
            Frame::SnapshotEnd => break,
            Frame::Error { message, .. } => bail!("the primary says: {message}"),
            other => bail!("unexpected frame {other:?}"),
        }
    }
    let done = seeder.written();
    // The gate first: once the control file exists the directory opens as a database. (A
    // reseed's directory gets none: the running node keeps its gate in its own directory.)
    if dir_for_gate == config.dir.as_path() {
        NodeDir::on(config.storage.vfs.clone(), config.dir.clone()).store_gate(Some(u64::MAX))?;
    }
    tokio::task::spawn_blocking(move || seeder.finish(&epochs)).await??;
    let secs = t0.elapsed().as_secs_f64();
    tracing::info!(
        bytes = done,
        secs = format!("{secs:.2}"),
        rate_mb_s = format!("{:.0}", done as f64 / secs.max(1e-6) / 1e6),
        "seeded; streaming the WAL from the backup's redo LSN"
    );
    Ok(())
}
