//! Moving replication frames over TCP: the primary's sender (one task per replica) and the
//! replica's receiver. The bytes are WAL, read with `Db::read_wal` on the primary and applied
//! with `Db::apply_wal` on the replica; the frame format is `replication::frame`.
//!
//! A replica connects to the primary's client port, sends the RESP command `REPLSTREAM`, and
//! from then on both sides speak frames: hello (replica) → welcome (primary) → wal frames from
//! the replica's flush LSN on, with feedback (write/flush/apply LSNs) going back after every
//! applied chunk and on keepalives.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use bytes::BytesMut;
use replication::frame::{self, Frame};
use storage::Lsn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::session::Shared;

const KEEPALIVE: Duration = Duration::from_millis(500);
/// How often a caught-up sender looks for new WAL.
const POLL: Duration = Duration::from_millis(1);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Reads one frame, keeping leftovers in `buf`.
async fn read_frame<R: AsyncReadExt + Unpin>(rd: &mut R, buf: &mut BytesMut) -> Result<Frame> {
    loop {
        if let Some((f, len)) = frame::decode(buf).map_err(|e| anyhow!("bad frame: {e}"))? {
            let _ = buf.split_to(len);
            return Ok(f);
        }
        if rd.read_buf(buf).await? == 0 {
            bail!("connection closed");
        }
    }
}

async fn write_frame<W: AsyncWriteExt + Unpin>(wr: &mut W, f: &Frame) -> Result<()> {
    let mut out = Vec::new();
    f.encode(&mut out);
    wr.write_all(&out).await?;
    Ok(())
}

/// Pages per snapshot frame (1 MiB).
const SNAPSHOT_CHUNK_PAGES: u64 = (frame::MAX_WAL_CHUNK / storage::page::PAGE_SIZE) as u64;

/// Primary side: sends a base backup to a new replica on a connection that sent
/// `REPLSNAPSHOT`: a checkpoint's redo LSN and page count, the page file in 1 MiB frames, the
/// end. The WAL from the redo LSN stays on disk for the replica (it is registered under its
/// name at that position) until it streams.
pub async fn serve_snapshot(sh: Arc<Shared>, sock: TcpStream, mut buf: BytesMut) -> Result<()> {
    let peer = sock.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let (mut rd, mut wr) = sock.into_split();
    let Frame::Hello { name, .. } = read_frame(&mut rd, &mut buf).await? else {
        bail!("expected a hello frame");
    };
    let db = sh.db.clone();
    let (redo, pages) = tokio::task::spawn_blocking({
        let db = db.clone();
        move || db.begin_base_backup()
    })
    .await??;
    let slot = sh.tracker.connect(&name, &peer, redo, true);
    update_retention(&sh);
    tracing::info!(replica = %name, %peer, redo = redo.0, pages, "sending a base backup");
    write_frame(
        &mut wr,
        &Frame::SnapshotBegin {
            redo_lsn: redo,
            page_count: pages,
        },
    )
    .await?;
    let mut first = 0;
    while first < pages {
        let n = SNAPSHOT_CHUNK_PAGES.min(pages - first);
        let db2 = db.clone();
        let bytes = tokio::task::spawn_blocking(move || {
            let mut out = Vec::with_capacity(n as usize * storage::page::PAGE_SIZE);
            db2.read_page_file(first, n, &mut out).map(|()| out)
        })
        .await??;
        write_frame(
            &mut wr,
            &Frame::SnapshotPages {
                first_page: first,
                bytes,
            },
        )
        .await?;
        first += n;
    }
    write_frame(&mut wr, &Frame::SnapshotEnd).await?;
    wr.shutdown().await?;
    // The replica streams from the redo LSN next; until it does, its WAL stays held.
    sh.tracker.disconnect(slot);
    Ok(())
}

/// Replica side, before the database opens: when the data directory is new, fetch a base
/// backup from the primary and lay it down (retrying until it succeeds or the node stops).
pub async fn seed_if_new(
    config: &crate::config::Config,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    let Some(primary) = &config.replicaof else {
        return Ok(());
    };
    if config.dir.join("control").exists() {
        return Ok(());
    }
    let mut backoff = Duration::from_millis(50);
    loop {
        match seed_once(config, primary).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::warn!(primary = %primary, error = %format!("{e:#}"), retry_in_ms = backoff.as_millis() as u64, "seeding from the primary failed")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => bail!("stopped while seeding"),
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn seed_once(config: &crate::config::Config, primary: &str) -> Result<()> {
    let (mut rd, mut wr, mut buf) =
        connect_as_replica(config, primary, b"*1\r\n$12\r\nREPLSNAPSHOT\r\n").await?;
    let hello = Frame::Hello {
        version: frame::VERSION,
        epoch: 1,
        node_id: 0,
        flush_lsn: Lsn(0),
        name: config.name.clone(),
    };
    write_frame(&mut wr, &hello).await?;
    let (redo, pages) = match read_frame(&mut rd, &mut buf).await? {
        Frame::SnapshotBegin {
            redo_lsn,
            page_count,
        } => (redo_lsn, page_count),
        Frame::Error { message, .. } => bail!("the primary refused: {message}"),
        other => bail!("expected snapshot_begin, got {other:?}"),
    };
    let dir = config.dir.clone();
    let mut seeder = tokio::task::spawn_blocking(move || {
        storage::Seeder::create(&dir, redo, &storage::Options::default())
    })
    .await??;
    let total = pages * storage::page::PAGE_SIZE as u64;
    let t0 = Instant::now();
    let mut last_log = Instant::now();
    tracing::info!(primary = %primary, redo = redo.0, bytes = total, "seeding from a base backup");
    loop {
        match read_frame(&mut rd, &mut buf).await? {
            Frame::SnapshotPages { first_page, bytes } => {
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
    tokio::task::spawn_blocking(move || seeder.finish()).await??;
    let secs = t0.elapsed().as_secs_f64();
    tracing::info!(
        bytes = done,
        secs = format!("{secs:.2}"),
        rate_mb_s = format!("{:.0}", done as f64 / secs.max(1e-6) / 1e6),
        "seeded; streaming the WAL from the backup's redo LSN"
    );
    Ok(())
}

/// Connects to the primary as a replica: AUTH if a password is set, then `command`.
async fn connect_as_replica(
    config: &crate::config::Config,
    primary: &str,
    command: &[u8],
) -> Result<(
    tokio::net::tcp::OwnedReadHalf,
    tokio::net::tcp::OwnedWriteHalf,
    BytesMut,
)> {
    let sock = TcpStream::connect(primary)
        .await
        .with_context(|| format!("connecting to {primary}"))?;
    let _ = sock.set_nodelay(true);
    let (mut rd, mut wr) = sock.into_split();
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

/// Primary side: serves one replica on a connection that sent `REPLSTREAM`.
pub async fn serve_replica(sh: Arc<Shared>, sock: TcpStream, mut buf: BytesMut) -> Result<()> {
    let peer = sock.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let (mut rd, mut wr) = sock.into_split();
    let Frame::Hello {
        version,
        name,
        flush_lsn,
        ..
    } = read_frame(&mut rd, &mut buf).await?
    else {
        bail!("expected a hello frame");
    };
    if version != frame::VERSION {
        write_frame(
            &mut wr,
            &Frame::Error {
                code: 1,
                message: format!("protocol version {version} not supported"),
            },
        )
        .await?;
        bail!("replica {name} speaks protocol version {version}");
    }
    let db = sh.db.clone();
    if flush_lsn > db.flush_lsn() {
        let msg = format!(
            "replica is ahead of the primary ({flush_lsn} > {})",
            db.flush_lsn()
        );
        write_frame(
            &mut wr,
            &Frame::Error {
                code: 2,
                message: msg.clone(),
            },
        )
        .await?;
        bail!("{name}: {msg}");
    }
    let slot = sh.tracker.connect(&name, &peer, flush_lsn, false);
    update_retention(&sh);
    tracing::info!(replica = %name, %peer, from = flush_lsn.0, "replica connected");
    write_frame(
        &mut wr,
        &Frame::Welcome {
            epoch: 1,
            node_id: 0,
            start_lsn: flush_lsn,
            primary_flush_lsn: db.flush_lsn(),
        },
    )
    .await?;
    // From here the link runs on two threads of its own: a sender woken directly by the WAL
    // flusher the moment new WAL is written (so a replica receives a commit while the
    // primary is still syncing it), and a reader of the replica's feedback, which wakes the
    // commits waiting for the quorum. Neither waits for a runtime worker to be free.
    let sock = rd
        .reunite(wr)
        .map_err(|_| anyhow!("socket halves do not match"))?
        .into_std()?;
    sock.set_nonblocking(false)?;
    let link = Arc::new(Link {
        dead: std::sync::atomic::AtomicBool::new(false),
    });
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let reader = sock.try_clone()?;
    {
        let (sh, link, name) = (sh.clone(), link.clone(), name.clone());
        std::thread::Builder::new()
            .name(format!("replidb-feedback-{name}"))
            .spawn(move || {
                let why = feedback_loop(&sh, reader, buf, slot);
                tracing::info!(replica = %name, reason = %why, "replica link closed");
                link.dead.store(true, Ordering::SeqCst);
                sh.wal_signal.notify();
            })?;
    }
    {
        let (sh, link, mut sock) = (sh.clone(), link.clone(), sock.try_clone()?);
        std::thread::Builder::new()
            .name(format!("replidb-send-{name}"))
            .spawn(move || {
                let r = send_loop(&sh, &link, &mut sock, slot, flush_lsn);
                let _ = sock.shutdown(std::net::Shutdown::Both);
                let _ = done_tx.send(r);
            })?;
    }
    let mut stop = sh.shutdown.subscribe();
    let r = tokio::select! {
        r = done_rx => r.unwrap_or_else(|_| Err(anyhow!("the sender thread ended"))),
        _ = stop.changed() => Ok(()),
    };
    link.dead.store(true, Ordering::SeqCst);
    sh.wal_signal.notify();
    let _ = sock.shutdown(std::net::Shutdown::Both);
    sh.tracker.disconnect(slot);
    r
}

/// One replica link's shared state.
struct Link {
    /// Set when either side of the link ends.
    dead: std::sync::atomic::AtomicBool,
}

/// Sends WAL from `pos` on as it is written, and keepalives when there is none.
fn send_loop(
    sh: &Shared,
    link: &Link,
    sock: &mut std::net::TcpStream,
    slot: usize,
    mut pos: Lsn,
) -> Result<()> {
    use std::io::Write;
    let db = &sh.db;
    let mut last_sent = Instant::now();
    let mut out = Vec::with_capacity(frame::MAX_WAL_CHUNK + 64);
    let mut chunk = Vec::with_capacity(frame::MAX_WAL_CHUNK);
    loop {
        if link.dead.load(Ordering::SeqCst) {
            return Ok(());
        }
        chunk.clear();
        let end = match db.read_wal(pos, frame::MAX_WAL_CHUNK, &mut chunk) {
            Ok(end) => end,
            Err(e) => {
                out.clear();
                Frame::Error {
                    code: 3,
                    message: e.to_string(),
                }
                .encode(&mut out);
                let _ = sock.write_all(&out);
                return Err(e.into());
            }
        };
        if end > pos {
            out.clear();
            let f = Frame::Wal {
                start_lsn: pos,
                bytes: std::mem::take(&mut chunk),
            };
            f.encode(&mut out);
            sock.write_all(&out)?;
            if let Frame::Wal { bytes, .. } = f {
                chunk = bytes; // keep the buffer for the next round
            }
            pos = end;
            last_sent = Instant::now();
            sh.tracker.set_streaming(slot, pos >= db.flush_lsn());
            continue;
        }
        // Everything written is sent: the replica streams live.
        sh.tracker.set_streaming(slot, true);
        if last_sent.elapsed() >= KEEPALIVE {
            out.clear();
            Frame::Keepalive {
                primary_flush_lsn: db.flush_lsn(),
                time_us: now_us(),
            }
            .encode(&mut out);
            sock.write_all(&out)?;
            last_sent = Instant::now();
        }
        sh.wal_signal.wait_until(KEEPALIVE, || {
            db.written_lsn() > pos || link.dead.load(Ordering::SeqCst)
        });
    }
}

/// Reads the replica's feedback until the link ends; returns why it ended.
fn feedback_loop(
    sh: &Shared,
    mut sock: std::net::TcpStream,
    mut buf: BytesMut,
    slot: usize,
) -> String {
    loop {
        match read_frame_blocking(&mut sock, &mut buf) {
            Ok(Frame::Feedback {
                write_lsn,
                flush_lsn,
                apply_lsn,
                ..
            }) => {
                sh.tracker.update(slot, write_lsn, flush_lsn, apply_lsn);
                update_retention(sh);
            }
            Ok(_) => {}
            Err(e) => return format!("{e:#}"),
        }
    }
}

/// Reads one frame from a blocking socket, keeping leftovers in `buf`. A read timeout on the
/// socket surfaces as an error of kind `WouldBlock`/`TimedOut`; `buf` then keeps what came.
fn read_frame_blocking(sock: &mut std::net::TcpStream, buf: &mut BytesMut) -> Result<Frame> {
    use std::io::Read;
    loop {
        if let Some((f, len)) = frame::decode(buf).map_err(|e| anyhow!("bad frame: {e}"))? {
            let _ = buf.split_to(len);
            return Ok(f);
        }
        let at = buf.len();
        buf.resize(at + 64 * 1024, 0);
        match sock.read(&mut buf[at..]) {
            Ok(0) => {
                buf.truncate(at);
                bail!("connection closed");
            }
            Ok(n) => buf.truncate(at + n),
            Err(e) => {
                buf.truncate(at);
                return Err(e.into());
            }
        }
    }
}

/// Samples when the flush LSN advances (for `lag_ms`), every millisecond while anything
/// changes, for as long as the server runs.
pub async fn track_flush_times(sh: Arc<Shared>) {
    let mut stop = sh.shutdown.subscribe();
    let mut last = Lsn(0);
    loop {
        let now = sh.db.flush_lsn();
        if now > last {
            let mut ft = sh.flush_times.lock();
            if ft.len() >= crate::session::FLUSH_TIMES_MAX {
                ft.pop_front();
            }
            ft.push_back((now, Instant::now()));
            last = now;
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = stop.changed() => return,
        }
    }
}

/// WAL that a connected replica still needs stays on disk.
fn update_retention(sh: &Shared) {
    let min = sh.tracker.min_flush();
    sh.db.set_wal_retain_from(min);
}

/// Replica side: keeps a stream from the primary going, reconnecting with backoff.
pub async fn run_replica(sh: Arc<Shared>, primary: String) {
    let mut stop = sh.shutdown.subscribe();
    let mut backoff = Duration::from_millis(50);
    loop {
        let r = tokio::select! {
            r = stream_from(&sh, &primary) => r,
            _ = stop.changed() => return,
        };
        sh.link_up.store(false, Ordering::Relaxed);
        match r {
            Ok(()) => backoff = Duration::from_millis(50),
            Err(e) => {
                tracing::warn!(primary = %primary, error = %format!("{e:#}"), retry_in_ms = backoff.as_millis() as u64, "replication link down")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn stream_from(sh: &Arc<Shared>, primary: &str) -> Result<()> {
    let (mut rd, mut wr, mut buf) =
        connect_as_replica(&sh.config, primary, b"*1\r\n$10\r\nREPLSTREAM\r\n").await?;
    let db = sh.db.clone();
    let hello = Frame::Hello {
        version: frame::VERSION,
        epoch: 1,
        node_id: 0,
        flush_lsn: db.flush_lsn(),
        name: sh.config.name.clone(),
    };
    write_frame(&mut wr, &hello).await?;
    match read_frame(&mut rd, &mut buf).await? {
        Frame::Welcome {
            primary_flush_lsn, ..
        } => sh
            .primary_flush
            .store(primary_flush_lsn.0, Ordering::Relaxed),
        Frame::Error { message, .. } => bail!("the primary refused: {message}"),
        other => bail!("expected welcome, got {other:?}"),
    }
    sh.link_up.store(true, Ordering::Relaxed);
    tracing::info!(primary = %primary, from = db.flush_lsn().0, "replication link up");
    // The stream itself runs on a thread of its own with blocking I/O: a frame is written,
    // synced, acknowledged and applied without waiting for a runtime worker.
    let sock = rd
        .reunite(wr)
        .map_err(|_| anyhow!("socket halves do not match"))?
        .into_std()?;
    sock.set_nonblocking(false)?;
    sock.set_read_timeout(Some(STOP_CHECK))?;
    let sh = sh.clone();
    tokio::task::spawn_blocking(move || receive_loop(&sh, sock, buf)).await?
}

/// How often a blocked replica stream looks at the stop flag.
const STOP_CHECK: Duration = Duration::from_millis(100);
/// A primary silent for this long (it sends keepalives every `KEEPALIVE`) is taken as gone.
const SILENCE: Duration = Duration::from_secs(5);

/// Replica side: receives WAL frames, appends and syncs them, acknowledges, applies them, and
/// acknowledges again; answers keepalives. Consecutive WAL frames already received go into
/// one `apply_wal` call (one sync).
fn receive_loop(sh: &Shared, mut sock: std::net::TcpStream, mut buf: BytesMut) -> Result<()> {
    use std::io::Write;
    let db = &sh.db;
    let mut out = Vec::with_capacity(64);
    let mut heard = Instant::now();
    let mut feedback = |sock: &mut std::net::TcpStream, w: Lsn, f: Lsn, a: Lsn| {
        out.clear();
        Frame::Feedback {
            write_lsn: w,
            flush_lsn: f,
            apply_lsn: a,
            time_us: now_us(),
        }
        .encode(&mut out);
        sock.write_all(&out)
    };
    loop {
        if *sh.shutdown.borrow() {
            return Ok(());
        }
        let f = match read_frame_blocking(&mut sock, &mut buf) {
            Ok(f) => f,
            Err(e)
                if e.downcast_ref::<std::io::Error>().is_some_and(|e| {
                    matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    )
                }) =>
            {
                if heard.elapsed() > SILENCE {
                    bail!("the primary has been silent for {SILENCE:?}");
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        heard = Instant::now();
        match f {
            Frame::Wal {
                start_lsn,
                mut bytes,
            } => {
                // Take along every further WAL frame that is already here.
                while let Ok(Some((
                    Frame::Wal {
                        start_lsn: s2,
                        bytes: b2,
                    },
                    len,
                ))) = frame::decode(&buf)
                {
                    if s2.0 != start_lsn.0 + bytes.len() as u64 {
                        break;
                    }
                    bytes.extend_from_slice(&b2);
                    let _ = buf.split_to(len);
                }
                // Acknowledge the flush before replaying (remote_flush need not wait for
                // replay), then the apply.
                let mut sent = Ok(());
                let p = db.apply_wal_with(start_lsn, &bytes, &mut |p| {
                    sent = feedback(&mut sock, p.write_lsn, p.flush_lsn, p.apply_lsn);
                })?;
                sent?;
                feedback(&mut sock, p.write_lsn, p.flush_lsn, p.apply_lsn)?;
                let primary_flush = sh
                    .primary_flush
                    .fetch_max(p.write_lsn.0, Ordering::Relaxed)
                    .max(p.write_lsn.0);
                sh.lag_ms(primary_flush.saturating_sub(p.apply_lsn.0));
            }
            Frame::Keepalive {
                primary_flush_lsn, ..
            } => {
                sh.primary_flush
                    .store(primary_flush_lsn.0, Ordering::Relaxed);
                let l = db.flush_lsn();
                feedback(&mut sock, l, l, db.apply_lsn())?;
            }
            Frame::Error { message, .. } => bail!("the primary says: {message}"),
            other => bail!("unexpected frame {other:?}"),
        }
    }
}
