//! Moving replication frames over TCP: the primary's sender (one task per replica) and the
//! replica's receiver. The bytes are WAL, read with `Db::read_wal` on the primary and applied
//! with `Db::apply_wal` on the replica; the frame format is `replication::frame`.
//!
//! A replica connects to the primary's client port, sends the RESP command `REPLSTREAM`, and
//! from then on both sides speak frames: hello (replica) → welcome (primary) → wal frames from
//! the replica's flush LSN on, with feedback (write/flush/apply LSNs) going back after every
//! applied chunk and on keepalives.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use bytes::BytesMut;
use replication::epochs::Verdict;
use replication::frame::{self, Frame};
use replication::tracker::LinkId;
use storage::Lsn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::session::{now_us, Shared};

/// A primary sends a keepalive after this long without WAL.
pub const KEEPALIVE: Duration = Duration::from_millis(500);
/// How often the WAL retention floor is recomputed without a replica report.
const RETENTION_TICK: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Takes the frame at the start of `buf` out of it, if it is complete.
fn take_frame(buf: &mut BytesMut) -> Result<Option<Frame>> {
    match frame::decode(buf).map_err(|e| anyhow!("bad frame: {e}"))? {
        Some((f, len)) => {
            let _ = buf.split_to(len);
            Ok(Some(f))
        }
        None => Ok(None),
    }
}

/// Appends what `sock` holds now to `buf`, without blocking: whether anything came (`false`:
/// nothing waiting); an error once the peer has closed. Through a stack buffer: the frames
/// read this way are small, and zeroing a large buffer on every look would cost more.
fn recv_available(sock: &std::net::TcpStream, buf: &mut BytesMut) -> std::io::Result<bool> {
    let mut chunk = [0u8; 4096];
    loop {
        return match recv_nowait(sock, &mut chunk) {
            Ok(0) => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed",
            )),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        };
    }
}

/// Reads one frame, keeping leftovers in `buf`.
async fn read_frame<R: AsyncReadExt + Unpin>(rd: &mut R, buf: &mut BytesMut) -> Result<Frame> {
    loop {
        if let Some(f) = take_frame(buf)? {
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

/// Sends pages `first .. first + n` of `db`'s page file as one `snapshot_pages` frame.
async fn send_pages<W: AsyncWriteExt + Unpin>(
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

/// Reads the `snapshot_begin` that opens a base backup: its redo LSN, page count and the
/// primary's epoch history.
async fn read_snapshot_begin<R: AsyncReadExt + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
) -> Result<(Lsn, u64, Vec<(u32, Lsn)>)> {
    match read_frame(rd, buf).await? {
        Frame::SnapshotBegin {
            redo_lsn,
            page_count,
            epochs,
        } => Ok((redo_lsn, page_count, epochs)),
        Frame::Error { message, .. } => bail!("the primary refused: {message}"),
        other => bail!("expected snapshot_begin, got {other:?}"),
    }
}

/// A new directory for a reseed or rewind backup inside the data directory.
fn new_side_dir(dir: &std::path::Path) -> std::path::PathBuf {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    dir.join(format!("{RESEED_PREFIX}{ms}"))
}

/// Pages per snapshot frame (1 MiB).
const SNAPSHOT_CHUNK_PAGES: u64 = (frame::MAX_WAL_CHUNK / storage::PAGE_SIZE) as u64;

/// Primary side: sends a base backup to a new replica on a connection that sent
/// `REPLSNAPSHOT`: a checkpoint's redo LSN and page count, the page file in 1 MiB frames, the
/// end. The WAL from the redo LSN stays on disk for the replica (it is registered under its
/// name at that position) until it streams.
pub async fn serve_snapshot(sh: Arc<Shared>, sock: TcpStream, mut buf: BytesMut) -> Result<()> {
    let peer = sock.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let (mut rd, mut wr) = sock.into_split();
    let Hello { name, .. } = read_hello(&mut rd, &mut wr, &mut buf).await?;
    let db = sh.db();
    let (redo, pages) = tokio::task::spawn_blocking({
        let db = db.clone();
        move || db.begin_base_backup()
    })
    .await??;
    let slot = sh.tracker.connect(&name, &peer, redo, true);
    let _link = LinkGuard(&sh.tracker, slot);
    update_retention(&sh);
    tracing::info!(replica = %name, %peer, redo = redo.0, pages, "sending a base backup");
    write_frame(
        &mut wr,
        &Frame::SnapshotBegin {
            redo_lsn: redo,
            page_count: pages,
            epochs: db.epoch_history(),
        },
    )
    .await?;
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

/// Replica side, before the database opens: when the data directory is new, fetch a base
/// backup from the primary and lay it down (retrying until it succeeds or the node stops).
pub async fn seed_if_new(
    config: &crate::config::Config,
    primary: &str,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    if config.dir.join("control").exists() {
        return Ok(());
    }
    let mut backoff = Duration::from_millis(50);
    loop {
        match seed_once(config, primary, &config.dir).await {
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

async fn seed_once(
    config: &crate::config::Config,
    primary: &str,
    dir: &std::path::Path,
) -> Result<()> {
    let (mut rd, mut wr, mut buf) =
        connect_as_replica(config, primary, b"*1\r\n$12\r\nREPLSNAPSHOT\r\n").await?;
    let hello = Frame::Hello {
        version: frame::VERSION,
        epoch: 1,
        node_id: 0,
        flush_lsn: Lsn(0),
        name: config.name.clone(),
        epochs: Vec::new(),
    };
    write_frame(&mut wr, &hello).await?;
    let (redo, pages, epochs) = read_snapshot_begin(&mut rd, &mut buf).await?;
    let dir_for_gate = dir;
    let dir = dir.to_path_buf();
    let mut seeder = tokio::task::spawn_blocking(move || {
        storage::Seeder::create(&dir, redo, &storage::Options::default())
    })
    .await??;
    let total = pages * storage::PAGE_SIZE as u64;
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
    // The gate first: once the control file exists the directory opens as a database. (A
    // reseed's directory gets none: the running node keeps its gate in its own directory.)
    if dir_for_gate == config.dir.as_path() {
        store_gate(dir_for_gate, Some(u64::MAX));
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

/// What a connecting node says about itself.
struct Hello {
    name: String,
    flush_lsn: Lsn,
    epoch: u32,
    epochs: Vec<(u32, Lsn)>,
}

/// Reads a node's hello; a node of another protocol version gets an error frame and the
/// connection ends.
async fn read_hello<R: AsyncReadExt + Unpin, W: AsyncWriteExt + Unpin>(
    rd: &mut R,
    wr: &mut W,
    buf: &mut BytesMut,
) -> Result<Hello> {
    let Frame::Hello {
        version,
        name,
        flush_lsn,
        epoch,
        epochs,
        ..
    } = read_frame(rd, buf).await?
    else {
        bail!("expected a hello frame");
    };
    if version != frame::VERSION {
        write_frame(
            wr,
            &Frame::Error {
                code: 1,
                message: format!("protocol version {version} not supported"),
            },
        )
        .await?;
        bail!("{name} speaks protocol version {version}");
    }
    Ok(Hello {
        name,
        flush_lsn,
        epoch,
        epochs,
    })
}

/// This node's hello to the node it follows: its epoch, history and flush LSN.
fn own_hello(db: &storage::Db, name: &str) -> Frame {
    Frame::Hello {
        version: frame::VERSION,
        epoch: db.epoch(),
        node_id: 0,
        flush_lsn: db.flush_lsn(),
        name: name.to_string(),
        epochs: db.epoch_history(),
    }
}

/// How a node's log relates to this node's (`replication::epochs::check`).
fn verdict(db: &storage::Db, h: &Hello) -> Verdict {
    replication::epochs::check(
        db.epoch(),
        &db.epoch_history(),
        db.written_lsn(),
        h.epoch,
        &h.epochs,
        h.flush_lsn,
    )
}

/// Primary side: serves one replica on a connection that sent `REPLSTREAM`.
pub async fn serve_replica(sh: Arc<Shared>, sock: TcpStream, mut buf: BytesMut) -> Result<()> {
    let peer = sock.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let (mut rd, mut wr) = sock.into_split();
    let hello = read_hello(&mut rd, &mut wr, &mut buf).await?;
    let (name, flush_lsn, epoch) = (hello.name.clone(), hello.flush_lsn, hello.epoch);
    // The log generation first, then the database: the verdict, the welcome and the stream
    // all use this one handle, and the stream ends if the log changes after this point.
    let gen = sh.log_gen.load(Ordering::SeqCst);
    let db = sh.db();
    if db.is_replica() && !sh.is_replica_role() {
        bail!("{name}: this node is changing role");
    }
    let verdict = verdict(&db, &hello);
    let refusal = match verdict {
        Verdict::Stream => None,
        Verdict::PrimaryStale {
            node_epoch,
            primary_epoch,
        } => {
            // A node that has seen a newer epoch talks to us: someone else was promoted.
            if !sh.is_replica_role() {
                sh.fence(format!(
                    "{name} ({peer}) is at epoch {node_epoch}, newer than this node's {primary_epoch}"
                ));
            }
            Some((
                STALE_PRIMARY,
                format!("this node is at epoch {primary_epoch}, older than yours ({node_epoch}): it is not the primary"),
            ))
        }
        Verdict::Diverged { fork } => Some((
            DIVERGED,
            format!(
                "your log (epoch {epoch}, up to LSN {flush_lsn}) runs past LSN {fork}, where it parts from this node's (epoch {})",
                db.epoch()
            ),
        )),
    };
    if let Some((code, message)) = refusal {
        tracing::warn!(replica = %name, %peer, reason = %message, "refusing a replica");
        let f = match verdict {
            Verdict::Diverged { fork } => Frame::Diverged {
                fork_lsn: fork,
                message: message.clone(),
            },
            _ => Frame::Error {
                code,
                message: message.clone(),
            },
        };
        write_frame(&mut wr, &f).await?;
        bail!("{name}: {message}");
    }
    let slot = sh.tracker.connect(&name, &peer, flush_lsn, false);
    let _link = LinkGuard(&sh.tracker, slot);
    update_retention(&sh);
    tracing::info!(replica = %name, %peer, from = flush_lsn.0, "replica connected");
    write_frame(
        &mut wr,
        &Frame::Welcome {
            epoch: db.epoch(),
            node_id: 0,
            start_lsn: flush_lsn,
            primary_flush_lsn: db.flush_lsn(),
        },
    )
    .await?;
    // From here the link runs on threads of its own, never waiting for a runtime worker: the
    // WAL flusher itself sends new WAL to a caught-up link the moment it is written (so a
    // replica receives a commit while the primary is still syncing it); a sender thread
    // catches up, finishes what the flusher could not, and sends keepalives; a reader of the
    // replica's feedback wakes the commits waiting for the quorum (a committer spinning for
    // its quorum may read the feedback first: see `Links::poll_feedback`).
    let sock = rd
        .reunite(wr)
        .map_err(|_| anyhow!("socket halves do not match"))?
        .into_std()?;
    sock.set_nonblocking(false)?;
    let link = Arc::new(LiveLink::new(
        sock.try_clone()?,
        flush_lsn,
        Feedback::new(sock.try_clone()?, buf, slot),
    ));
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    {
        let (sh, link, name) = (sh.clone(), link.clone(), name.clone());
        std::thread::Builder::new()
            .name(format!("replidb-feedback-{name}"))
            .spawn(move || {
                let why = feedback_loop(&sh, &link);
                tracing::info!(replica = %name, reason = %why, "replica link closed");
                link.dead.store(true, Ordering::SeqCst);
                sh.wal_signal.notify();
            })?;
    }
    {
        let (sh, link, db) = (sh.clone(), link.clone(), db.clone());
        std::thread::Builder::new()
            .name(format!("replidb-send-{name}"))
            .spawn(move || {
                sh.links.add(link.clone());
                let r = send_loop(&sh, &link, &link.sock, slot, &db, gen);
                sh.links.remove(&link);
                let _ = link.sock.shutdown(std::net::Shutdown::Both);
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
    r
}

/// The flags of a wal frame (`Links::wal_flags`) for the replica in `slot`, given the
/// tracker's `wanted` mask: the sync flag only if the quorum needs that replica's flush now
/// (`Tracker::flush_wanted`: the `sync` ones under FIRST, the ones that have flushed furthest
/// under ANY); the others write what they receive and sync it lazily (within `LAZY_SYNC`),
/// so a lone commit's syncs no longer share the disk with a sync no quorum waits for
/// (`remote_flush` × 1: 3,378 against 3,093 commits/s, p50 253.5 against 306.5 µs, 8
/// alternated rounds, docs/benchmarks.md). The eager flag stays as it is for every replica:
/// one that is not asked to sync still acknowledges `remote_write` commits, and its look for
/// the next frame keeps its vCPU awake for the others (3,324 against 3,120 commits/s with it
/// off there).
fn link_flags((sync, eager): (bool, bool), wanted: u64, slot: usize) -> (bool, bool) {
    (sync && replication::tracker::wanted_in(wanted, slot), eager)
}

/// One replica link's sending side, shared by its sender thread and the WAL flusher.
pub struct LiveLink {
    /// A clone of the link's (blocking) socket.
    sock: std::net::TcpStream,
    st: parking_lot::Mutex<LinkState>,
    /// `LinkState::sent`, readable without the lock.
    sent: AtomicU64,
    /// The flusher left part of a frame in `LinkState::pending` (a full socket): the sender
    /// thread must not sleep before it has written it.
    partial: std::sync::atomic::AtomicBool,
    /// Set when either side of the link ends.
    dead: std::sync::atomic::AtomicBool,
    /// The replica's acknowledgements, read by the link's feedback thread or, while it
    /// spins for its quorum, by a committer (whichever gets there first).
    fb: parking_lot::Mutex<Feedback>,
    /// The replica's slot in the tracker.
    slot: usize,
}

/// The reading side of a replica link.
struct Feedback {
    /// A clone of the link's socket, read only with `MSG_DONTWAIT`.
    sock: std::net::TcpStream,
    /// Bytes of a frame not yet complete.
    buf: BytesMut,
    slot: LinkId,
    /// Why the link ended, once a reader found out.
    closed: Option<String>,
}

impl Feedback {
    fn new(sock: std::net::TcpStream, buf: BytesMut, slot: LinkId) -> Feedback {
        Feedback {
            sock,
            buf,
            slot,
            closed: None,
        }
    }

    /// Takes every acknowledgement the socket holds now, without blocking, into the quorum
    /// tracker — once, with the furthest positions among them (they only move forward);
    /// records why the link ended if it did.
    fn drain(&mut self, sh: &Shared) {
        let mut latest: Option<(Lsn, Lsn, Lsn)> = None;
        while self.closed.is_none() {
            match frame::decode(&self.buf) {
                Ok(Some((f, len))) => {
                    let _ = self.buf.split_to(len);
                    if let Frame::Feedback {
                        write_lsn,
                        flush_lsn,
                        apply_lsn,
                        ..
                    } = f
                    {
                        latest = Some(match latest {
                            Some((w, fl, a)) => {
                                (w.max(write_lsn), fl.max(flush_lsn), a.max(apply_lsn))
                            }
                            None => (write_lsn, flush_lsn, apply_lsn),
                        });
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    self.closed = Some(format!("bad frame: {e}"));
                    break;
                }
            }
            match recv_available(&self.sock, &mut self.buf) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => self.closed = Some(e.to_string()),
            }
        }
        if let Some((w, f, a)) = latest {
            sh.tracker.update(self.slot, w, f, a);
            // (The WAL retention floor follows within `RETENTION_TICK`: until then it only
            // keeps more WAL than needed.)
            sh.tracker.heard(self.slot, now_us() / 1000);
        }
        if self.closed.is_some() {
            // Ends the link at once even when the reader that found out is a committer: the
            // feedback thread's `poll` returns, and it reports why.
            let _ = self.sock.shutdown(std::net::Shutdown::Both);
        }
    }
}

struct LinkState {
    /// Everything before this LSN is on the socket or in `pending`.
    sent: Lsn,
    /// The unsent rest of a frame the flusher could only partly send.
    pending: Vec<u8>,
    /// Frame buffer of the flusher's sends.
    frame: Vec<u8>,
}

impl LiveLink {
    fn new(sock: std::net::TcpStream, from: Lsn, fb: Feedback) -> LiveLink {
        LiveLink {
            sock,
            slot: fb.slot.slot,
            fb: parking_lot::Mutex::new(fb),
            st: parking_lot::Mutex::new(LinkState {
                sent: from,
                pending: Vec::new(),
                frame: Vec::new(),
            }),
            sent: AtomicU64::new(from.0),
            partial: std::sync::atomic::AtomicBool::new(false),
            dead: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Called by the WAL flusher between write and sync: if this link has sent everything up
    /// to `start` and its socket has room, the bytes go out now — no thread to wake, the
    /// replica receives them while this node syncs. Otherwise (busy, behind, or a full socket)
    /// the sender thread does it.
    /// Returns whether the link took the bytes (or is dead: nothing to do for it).
    fn push(&self, start: Lsn, bytes: &[u8], (sync, eager): (bool, bool)) -> bool {
        if self.dead.load(Ordering::Relaxed) {
            return true;
        }
        if bytes.len() > frame::MAX_WAL_CHUNK {
            return false;
        }
        let Some(mut st) = self.st.try_lock() else {
            return false;
        };
        if st.sent != start || !st.pending.is_empty() {
            return false;
        }
        let st = &mut *st;
        st.frame.clear();
        frame::encode_wal(start, bytes, sync, eager, &mut st.frame);
        let n = match send_nowait(&self.sock, &st.frame) {
            Ok(n) => n,
            // Full socket or a broken link: the sender thread will see.
            Err(_) => return false,
        };
        if n < st.frame.len() {
            st.pending.extend_from_slice(&st.frame[n..]);
            // Before the caller's notify: the sender thread finishes the frame.
            self.partial.store(true, Ordering::SeqCst);
        }
        st.sent = Lsn(start.0 + bytes.len() as u64);
        self.sent.store(st.sent.0, Ordering::Release);
        n == st.frame.len()
    }
}

impl LiveLink {
    /// Whether the link's sender thread must not sleep, the log having been written up to
    /// `written`: WAL past what the link has sent, the rest of a frame the flusher could send
    /// only in part, or the link's end to report.
    fn sender_has_work(&self, written: Lsn) -> bool {
        written.0 > self.sent.load(Ordering::Acquire)
            || self.partial.load(Ordering::SeqCst)
            || self.dead.load(Ordering::SeqCst)
    }
}

/// Sends what the socket takes without blocking; returns how much it took.
fn send_nowait(sock: &std::net::TcpStream, buf: &[u8]) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    // SAFETY: `send` reads at most `buf.len()` bytes from `buf`, which is a live slice for the
    // whole call, and writes nothing to our memory; the descriptor belongs to `sock`, which
    // is borrowed (so open) for the call. MSG_DONTWAIT makes this one call non-blocking
    // without changing the socket's mode for the sender thread's blocking writes;
    // MSG_NOSIGNAL turns a closed peer into EPIPE instead of SIGPIPE.
    let r = unsafe {
        libc::send(
            sock.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// Reads what the socket holds without blocking; returns how much it gave (0: closed).
fn recv_nowait(sock: &std::net::TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    // SAFETY: `recv` writes at most `buf.len()` bytes into `buf`, which is a live, exclusively
    // borrowed slice for the whole call; the descriptor belongs to `sock`, borrowed (so open)
    // for the call. MSG_DONTWAIT makes this one call non-blocking without changing the
    // socket's mode, which its clones share.
    let r = unsafe {
        libc::recv(
            sock.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// Blocks until `sock` has something to read (or has ended), or `timeout` passes.
fn wait_readable(sock: &std::net::TcpStream, timeout: Duration) {
    use std::os::fd::AsRawFd;
    let mut p = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `poll` reads and writes exactly the one `pollfd` it is given (count 1), which
    // lives on this stack frame for the whole call; the descriptor belongs to `sock`, borrowed
    // (so open) for the call. Its result needs no handling: the caller reads either way.
    unsafe {
        libc::poll(&mut p, 1, timeout.as_millis().min(i32::MAX as u128) as i32);
    }
}

/// How long a sender thread lets new WAL gather before it ships it while no commit waits for
/// the replicas (`off`, `local`): one frame per link per interval instead of one per commit.
/// Every frame wakes a sender thread here and a receive thread on the replica, and on two
/// vCPUs those wake-ups slowed the primary's own commits (with the interval a lone client's
/// `off` commits ran 1.8× as fast, its `local` commits 14% faster; docs/benchmarks.md). The
/// price: asynchronous replicas run up to this much further behind.
pub const SHIP_INTERVAL: Duration = Duration::from_millis(1);

/// The replica links the WAL flusher pushes to, and the signal their sender threads wait on.
#[derive(Clone)]
pub struct Links(Arc<LinksInner>);

struct LinksInner {
    links: parking_lot::RwLock<Vec<Arc<LiveLink>>>,
    /// Writes at a remote level in flight (from queueing until their quorum answered).
    remote_waits: std::sync::atomic::AtomicUsize,
    /// Those of them at `remote_flush` or `remote_apply`.
    flush_waits: std::sync::atomic::AtomicUsize,
    /// Sender threads waiting for new WAL with nothing to send.
    idle: std::sync::atomic::AtomicUsize,
    /// Until when (µs on `born`'s clock) frames are not flagged eager: the last time more
    /// than `EAGER_MAX_WAITS` writes waited, plus `EAGER_QUIET`.
    crowded_until_us: AtomicU64,
    born: Instant,
    signal: Arc<crate::session::WalSignal>,
    /// Which replicas the quorum needs to sync at once (`Tracker::flush_wanted`).
    tracker: replication::tracker::Tracker,
}

/// Marks a write at a remote level as in flight while it lives: the WAL flusher sends new
/// WAL itself, and WAL sent meanwhile asks the replicas to sync if the write waits for that.
pub struct SyncCommit {
    links: Links,
    flush: bool,
}

impl Drop for SyncCommit {
    fn drop(&mut self) {
        let inner = &self.links.0;
        inner.remote_waits.fetch_sub(1, Ordering::SeqCst);
        if self.flush {
            inner.flush_waits.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Links {
    pub fn new(
        signal: Arc<crate::session::WalSignal>,
        tracker: replication::tracker::Tracker,
    ) -> Links {
        Links(Arc::new(LinksInner {
            links: Default::default(),
            remote_waits: Default::default(),
            flush_waits: Default::default(),
            idle: Default::default(),
            crowded_until_us: AtomicU64::new(0),
            born: Instant::now(),
            signal,
            tracker,
        }))
    }

    /// The WAL flusher's hook, between write and sync. While a commit waits for the replicas,
    /// new WAL goes to the caught-up links from here (no wake-up between a commit and its
    /// replicas), and the sender threads are woken only for links that could not take it.
    /// Otherwise only an idle sender thread is woken: it ships, then lets WAL gather for
    /// `SHIP_INTERVAL` (see there); this node's sync is not delayed by the sends.
    pub fn wal_written(&self, start: Lsn, bytes: &[u8]) {
        if self.remote_wanted() {
            let flags = self.wal_flags();
            // One snapshot for every link: a report in between could otherwise move an `ANY`
            // choice so that no replica gets the sync flag for this WAL.
            let wanted = self.0.tracker.wanted_mask();
            let mut all = true;
            for l in self.0.links.read().iter() {
                all &= l.push(start, bytes, link_flags(flags, wanted, l.slot));
            }
            if !all {
                self.0.signal.notify();
            }
            return;
        }
        // Pairs with the fence of a sender going idle: either it sees the new WAL, or this
        // sees it idle.
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.0.idle.load(Ordering::SeqCst) > 0 {
            self.0.signal.notify();
        }
    }

    /// Call before a write at a remote level is queued (`written`: this node's written LSN);
    /// hold until its quorum answered. For a write at `remote_flush` or `remote_apply`, every
    /// frame sent from then on to a replica the quorum needs to sync (`link_flags`) carries
    /// the sync flag: WAL is read for sending only after it was appended, and the write is
    /// appended only after this. The first such write wakes
    /// the sender threads of links still holding back WAL (see `SHIP_INTERVAL`), so that
    /// usually the links are caught up by the time it is written and the flusher sends it
    /// itself; a link that is not is woken again by `wal_written`.
    pub fn sync_commit(&self, level: replication::quorum::Level, written: Lsn) -> SyncCommit {
        let flush = level != replication::quorum::Level::Write;
        let before = self.0.remote_waits.fetch_add(1, Ordering::SeqCst);
        if before >= EAGER_MAX_WAITS {
            let until = self.0.born.elapsed() + EAGER_QUIET;
            self.0
                .crowded_until_us
                .fetch_max(until.as_micros() as u64 + 1, Ordering::Relaxed);
        }
        if flush {
            self.0.flush_waits.fetch_add(1, Ordering::SeqCst);
        }
        if before == 0
            && self
                .0
                .links
                .read()
                .iter()
                .any(|l| l.sent.load(Ordering::Acquire) < written.0)
        {
            self.0.signal.notify();
        }
        SyncCommit {
            links: self.clone(),
            flush,
        }
    }

    /// Whether at most `EAGER_MAX_WAITS` writes wait for replicas (at any remote level).
    pub fn few_waiting(&self) -> bool {
        self.0.remote_waits.load(Ordering::SeqCst) <= EAGER_MAX_WAITS
    }

    /// Whether a write in flight waits for replicas (at any remote level).
    pub fn remote_wanted(&self) -> bool {
        self.0.remote_waits.load(Ordering::SeqCst) > 0
    }

    /// The flags of a wal frame sent now: sync (a write in flight waits for replicas to sync)
    /// and eager (one to `EAGER_MAX_WAITS` writes at any remote level wait, and no more than
    /// that waited within `EAGER_QUIET`: the replica looks for the next frame before it
    /// sleeps, see `REPLICA_SPIN`).
    pub fn wal_flags(&self) -> (bool, bool) {
        let n = self.0.flush_waits.load(Ordering::SeqCst);
        let r = self.0.remote_waits.load(Ordering::SeqCst);
        let eager = r > 0
            && r <= EAGER_MAX_WAITS
            && self.0.born.elapsed().as_micros() as u64
                >= self.0.crowded_until_us.load(Ordering::Relaxed);
        (n > 0, eager)
    }

    /// `link_flags` for the replica in `slot`, as of now.
    pub fn flags_for(&self, slot: usize) -> (bool, bool) {
        link_flags(self.wal_flags(), self.0.tracker.wanted_mask(), slot)
    }

    /// For a committer spinning for its quorum: takes in the acknowledgements the replica
    /// sockets hold now, sparing the wait for a feedback thread to wake. Links whose reader
    /// is busy are skipped (that reader takes them in).
    pub fn poll_feedback(&self, sh: &Shared) {
        for l in self.0.links.read().iter() {
            if let Some(mut fb) = l.fb.try_lock() {
                fb.drain(sh);
            }
        }
    }

    fn add(&self, l: Arc<LiveLink>) {
        self.0.links.write().push(l);
    }

    fn remove(&self, l: &Arc<LiveLink>) {
        self.0.links.write().retain(|x| !Arc::ptr_eq(x, l));
    }
}

/// Sends WAL from the link's position on as it is written (unless the flusher already did),
/// and keepalives when there is none.
fn send_loop(
    sh: &Shared,
    link: &LiveLink,
    mut sock: &std::net::TcpStream,
    slot: LinkId,
    db: &storage::Db,
    gen: u64,
) -> Result<()> {
    use std::io::Write;
    let mut last_sent = Instant::now();
    let mut chunk = Vec::with_capacity(frame::MAX_WAL_CHUNK);
    loop {
        if link.dead.load(Ordering::SeqCst) {
            return Ok(());
        }
        if sh.log_gen.load(Ordering::SeqCst) != gen {
            bail!("this node's log changed under the link (promotion, demotion, rewind or reseed): the replica reconnects");
        }
        {
            // Writes happen under the lock, so the flusher's frames and ours never interleave.
            let mut st = link.st.lock();
            if !st.pending.is_empty() {
                sock.write_all(&st.pending)?;
                st.pending.clear();
            }
            link.partial.store(false, Ordering::SeqCst);
            let pos = st.sent;
            chunk.clear();
            let end = match db.read_wal(pos, frame::MAX_WAL_CHUNK, &mut chunk) {
                Ok(end) => end,
                Err(e) => {
                    let mut out = Vec::new();
                    let gone = matches!(e, storage::Error::WalUnavailable { lsn, .. } if lsn < db.written_lsn());
                    if gone {
                        tracing::warn!(replica_from = pos.0, error = %e, "a replica needs WAL this node no longer retains: it will reseed");
                    }
                    Frame::Error {
                        code: if gone { WAL_GONE } else { 3 },
                        message: e.to_string(),
                    }
                    .encode(&mut out);
                    let _ = sock.write_all(&out);
                    return Err(e.into());
                }
            };
            if end > pos {
                st.frame.clear();
                let (sync, eager) = sh.links.flags_for(link.slot);
                frame::encode_wal(pos, &chunk, sync, eager, &mut st.frame);
                sock.write_all(&st.frame)?;
                st.sent = end;
                link.sent.store(end.0, Ordering::Release);
                last_sent = Instant::now();
                drop(st);
                sh.tracker.set_streaming(slot, end >= db.flush_lsn());
                if chunk.len() < frame::MAX_WAL_CHUNK && !sh.links.remote_wanted() {
                    // Caught up, and no commit waits for the replicas: let WAL gather (see
                    // `SHIP_INTERVAL`), unless a commit starts waiting meanwhile.
                    sh.wal_signal.wait_until(SHIP_INTERVAL, || {
                        sh.links.remote_wanted() || link.dead.load(Ordering::SeqCst)
                    });
                }
                continue;
            }
            if last_sent.elapsed() >= KEEPALIVE {
                st.frame.clear();
                Frame::Keepalive {
                    primary_flush_lsn: db.flush_lsn(),
                    time_us: now_us(),
                }
                .encode(&mut st.frame);
                sock.write_all(&st.frame)?;
                last_sent = Instant::now();
            }
        }
        // Everything written is sent: the replica streams live.
        sh.tracker.set_streaming(slot, true);
        let idle = &sh.links.0.idle;
        idle.fetch_add(1, Ordering::SeqCst);
        // Pairs with the fence in `Links::wal_written`.
        std::sync::atomic::fence(Ordering::SeqCst);
        sh.wal_signal
            .wait_until(KEEPALIVE, || link.sender_has_work(db.written_lsn()));
        idle.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Reads the replica's feedback until the link ends; returns why it ended.
fn feedback_loop(sh: &Shared, link: &LiveLink) -> String {
    loop {
        {
            let mut fb = link.fb.lock();
            fb.drain(sh);
            if let Some(why) = &fb.closed {
                return why.clone();
            }
        }
        if link.dead.load(Ordering::SeqCst) {
            return "the link ended".into();
        }
        // Any descriptor of the socket will do for waiting; the sending one needs no lock.
        wait_readable(&link.sock, KEEPALIVE);
    }
}

/// How long a replica's receive thread looks for the next frame without sleeping, from its
/// acknowledgement of a batch flagged eager (one or two commits at a remote level wait on the
/// primary, and the next can only follow that acknowledgement). On these VMs a thread asleep
/// on its socket wakes tens of microseconds after the bytes arrive (an idle vCPU is slow to
/// wake), a fair part of a synchronous commit, and a lone client's next commit reaches the
/// replica within about a client round trip of the acknowledgement. Between looks the thread
/// yields, so the primary and the clients sharing the CPUs run first. Measured for a lone
/// client: `remote_flush` 11% faster, `remote_apply` 8%, `remote_write` 41%
/// (docs/benchmarks.md). With more commits waiting the frames are not flagged: spinning then
/// took CPU the primary needed.
const REPLICA_SPIN: Duration = Duration::from_micros(300);

/// How long after more than `EAGER_MAX_WAITS` writes waited frames stay unflagged. Between
/// two rounds of a loaded primary the count of waiting writes dips; with 16 clients at
/// `remote_write` those dips flagged frames and the replicas' spinning cost 9% of the
/// commits (docs/benchmarks.md).
const EAGER_QUIET: Duration = Duration::from_millis(2);

/// Most commits at a remote level in flight for which wal frames are flagged eager.
const EAGER_MAX_WAITS: usize = 2;

/// Looks for a complete frame on `sock` without blocking until `until`: the frame, or `None`
/// if none came in time (what did come stays in `buf`).
fn spin_for_frame(
    sock: &std::net::TcpStream,
    buf: &mut BytesMut,
    until: Instant,
) -> Result<Option<Frame>> {
    loop {
        if let Some(f) = take_frame(buf)? {
            return Ok(Some(f));
        }
        if recv_available(sock, buf)? {
            continue;
        }
        if Instant::now() >= until {
            return Ok(None);
        }
        std::thread::yield_now();
    }
}

/// Reads one frame from a blocking socket, keeping leftovers in `buf`. A read timeout on the
/// socket surfaces as an error of kind `WouldBlock`/`TimedOut`; `buf` then keeps what came.
fn read_frame_blocking(sock: &mut std::net::TcpStream, buf: &mut BytesMut) -> Result<Frame> {
    use std::io::Read;
    loop {
        if let Some(f) = take_frame(buf)? {
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
            // A signal (SIGSTOP/SIGCONT, say) interrupted the read: nothing was lost.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => buf.truncate(at),
            Err(e) => {
                buf.truncate(at);
                return Err(e.into());
            }
        }
    }
}

/// Applies the WAL retention rule (`update_retention`) every `RETENTION_TICK` for as long as
/// the server runs: the floor moves with the log even when no replica reports.
pub async fn keep_retention(sh: Arc<Shared>) {
    let mut stop = sh.shutdown.subscribe();
    loop {
        update_retention(&sh);
        tokio::select! {
            _ = tokio::time::sleep(RETENTION_TICK) => {}
            _ = stop.changed() => return,
        }
    }
}

/// WAL that a known replica still needs stays on disk — but never more than
/// `--max-retained-wal` of it: a replica further behind is reseeded when it returns.
pub fn update_retention(sh: &Shared) {
    let db = sh.db();
    let floor = Lsn(db.flush_lsn().0.saturating_sub(sh.config.max_retained_wal));
    let min = sh.tracker.min_flush();
    if let Some(m) = min {
        if m < floor {
            let mut warned = sh.retention_warned.lock();
            if *warned < m {
                tracing::warn!(
                    behind_from = m.0,
                    max_retained_wal = sh.config.max_retained_wal,
                    "a replica is further behind than --max-retained-wal: its WAL is released and it will be reseeded when it returns"
                );
                *warned = floor;
            }
        }
    }
    db.set_wal_retain_from(min.map(|m| m.max(floor)));
}

/// Resolves when this node stops or its role changes away from generation `gen`.
async fn role_ended(sh: &Shared, gen: u64) {
    let mut stop = sh.shutdown.subscribe();
    let mut roles = sh.role_gen.subscribe();
    loop {
        if *stop.borrow_and_update() || *roles.borrow_and_update() != gen {
            return;
        }
        tokio::select! {
            r = stop.changed() => if r.is_err() { return },
            r = roles.changed() => if r.is_err() { return },
        }
    }
}

/// Whether the stream of role generation `gen` must stop.
fn stream_over(sh: &Shared, gen: u64) -> bool {
    *sh.shutdown.borrow() || *sh.role_gen.borrow() != gen
}

/// Replica side: keeps a stream from the primary going, reconnecting with backoff, until the
/// node stops or its role changes (generation `gen` ends). Returns only once no stream thread
/// of this generation runs any more.
pub async fn run_replica(sh: Arc<Shared>, primary: String, gen: u64) {
    let mut backoff = Duration::from_millis(50);
    while !stream_over(&sh, gen) {
        let r = stream_from(&sh, &primary, gen).await;
        sh.link_up.store(false, Ordering::Relaxed);
        if stream_over(&sh, gen) {
            return;
        }
        match r {
            Ok(()) => backoff = Duration::from_millis(50),
            Err(e) if e.downcast_ref::<WalGone>().is_some() => {
                let why = e.downcast_ref::<WalGone>().expect("checked");
                if let WalGone::Diverged { fork, .. } = why {
                    let r = tokio::select! {
                        r = rewind_pages(&sh, &primary, *fork) => r,
                        _ = role_ended(&sh, gen) => return,
                    };
                    match r {
                        Ok((fetched, total)) => {
                            let msg =
                                format!("rewound: refetched {fetched} of {total} pages ({why})");
                            tracing::info!(primary = %primary, fetched_pages = fetched, total_pages = total, "{msg}");
                            *sh.last_join.lock() = msg;
                            sh.rewinds.fetch_add(1, Ordering::Relaxed);
                            backoff = Duration::from_millis(50);
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(primary = %primary, error = %format!("{e:#}"), "rewind failed; reseeding instead")
                        }
                    }
                }
                *sh.last_join.lock() = format!("reseeded: {why}");
                let r = tokio::select! {
                    r = reseed(&sh, &primary, why) => r,
                    _ = role_ended(&sh, gen) => return,
                };
                match r {
                    Ok(()) => {
                        backoff = Duration::from_millis(50);
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(primary = %primary, error = %format!("{e:#}"), "reseeding failed; will retry")
                    }
                }
            }
            Err(e) => {
                tracing::warn!(primary = %primary, error = %format!("{e:#}"), retry_in_ms = backoff.as_millis() as u64, "replication link down")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = role_ended(&sh, gen) => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn stream_from(sh: &Arc<Shared>, primary: &str, gen: u64) -> Result<()> {
    let handshake = async {
        let (mut rd, mut wr, mut buf) =
            connect_as_replica(&sh.config, primary, b"*1\r\n$10\r\nREPLSTREAM\r\n").await?;
        let db = sh.db();
        // A record cut by the last link's end starts again from the flush LSN, where
        // everything received so far ends once it is synced.
        db.reset_stream();
        let db2 = db.clone();
        tokio::task::spawn_blocking(move || db2.sync_wal()).await??;
        write_frame(&mut wr, &own_hello(&db, &sh.config.name)).await?;
        match read_frame(&mut rd, &mut buf).await? {
            Frame::Welcome {
                primary_flush_lsn, ..
            } => {
                sh.primary_flush
                    .store(primary_flush_lsn.0, Ordering::Relaxed);
                // Just seeded: consistent once the primary's position now is applied (the
                // copy ended before this). Already there (a primary that has written
                // nothing yet): consistent now, since a gate of 0 would mean "none" and no
                // replay would ever lift a gate above it.
                let _g = sh.gate_lock.lock();
                if sh.consistent_at.load(Ordering::SeqCst) == u64::MAX {
                    let gate = (db.apply_lsn() < primary_flush_lsn).then_some(primary_flush_lsn.0);
                    sh.consistent_at.store(gate.unwrap_or(0), Ordering::SeqCst);
                    store_gate(&sh.config.dir, gate);
                }
            }
            Frame::Diverged { fork_lsn, message } => {
                // Nothing past the fork replayed: cutting the log back is the whole rewind.
                let db2 = db.clone();
                let cut = tokio::task::spawn_blocking(move || db2.rewind_log(fork_lsn)).await??;
                match cut {
                    Some(dropped) => {
                        sh.log_gen.fetch_add(1, Ordering::SeqCst);
                        *sh.last_join.lock() = format!(
                            "rewound: dropped {dropped} bytes of log past LSN {fork_lsn} ({message})"
                        );
                        sh.rewinds.fetch_add(1, Ordering::Relaxed);
                        bail!("rewound the log to LSN {fork_lsn}; reconnecting");
                    }
                    None => {
                        return Err(WalGone::Diverged {
                            fork: fork_lsn,
                            message,
                        }
                        .into())
                    }
                }
            }
            Frame::Error { code, message } if code == WAL_GONE => {
                return Err(WalGone::Removed(message).into())
            }
            Frame::Error { message, .. } => bail!("the primary refused: {message}"),
            other => bail!("expected welcome, got {other:?}"),
        }
        anyhow::Ok((rd, wr, buf))
    };
    let (rd, wr, buf) = tokio::select! {
        r = handshake => r?,
        _ = role_ended(sh, gen) => return Ok(()),
    };
    sh.link_up.store(true, Ordering::Relaxed);
    sh.verified.store(true, Ordering::SeqCst);
    sh.applied.send_modify(|_| {});
    {
        let mut j = sh.last_join.lock();
        if j.is_empty() {
            *j = "streaming".into();
        }
    }
    tracing::info!(primary = %primary, from = sh.db().flush_lsn().0, epoch = sh.db().epoch(), "replication link up");
    // The stream itself runs on a thread of its own with blocking I/O: a frame is written,
    // synced, acknowledged and applied without waiting for a runtime worker.
    let sock = rd
        .reunite(wr)
        .map_err(|_| anyhow!("socket halves do not match"))?
        .into_std()?;
    sock.set_nonblocking(false)?;
    sock.set_read_timeout(Some(STOP_CHECK))?;
    let sh = sh.clone();
    tokio::task::spawn_blocking(move || receive_loop(&sh, sock, buf, gen)).await?
}

/// How often a blocked replica stream looks at the stop flag.
const STOP_CHECK: Duration = Duration::from_millis(100);
/// A primary silent for this long (it sends keepalives every `KEEPALIVE`) is taken as gone.
const SILENCE: Duration = Duration::from_secs(5);

/// A batch at least this large that a commit waits for is synced in the background while it
/// is replayed.
const OVERLAP_SYNC_BYTES: usize = 2 * 1024;

/// How long a replica leaves WAL that no commit waits for unsynced.
const LAZY_SYNC: Duration = Duration::from_millis(10);
/// How often an idle replica with unsynced WAL looks whether `LAZY_SYNC` has passed.
const LAZY_TICK: Duration = Duration::from_millis(1);

/// A replica link's acknowledgements: written by the receive thread and by the thread that
/// acknowledges background syncs, one whole frame at a time.
struct Acks {
    /// The socket and the buffer frames are encoded in.
    sock: parking_lot::Mutex<(std::net::TcpStream, Vec<u8>)>,
    /// Another handle of the socket, to shut it down while a write may hold `sock`.
    closer: std::net::TcpStream,
    st: parking_lot::Mutex<AckState>,
    cv: parking_lot::Condvar,
}

#[derive(Default)]
struct AckState {
    /// Acknowledge once the log is synced up to here.
    want: u64,
    stop: bool,
    /// Why the acknowledging thread stopped early (the link is then given up).
    failed: Option<String>,
}

impl Acks {
    fn send(&self, w: Lsn, f: Lsn, a: Lsn) -> std::io::Result<()> {
        use std::io::Write;
        let mut g = self.sock.lock();
        let (sock, out) = &mut *g;
        out.clear();
        Frame::Feedback {
            write_lsn: w,
            flush_lsn: f,
            apply_lsn: a,
            time_us: now_us(),
        }
        .encode(out);
        sock.write_all(out)
    }

    /// The acknowledging thread: waits for each requested sync, then reports all three
    /// positions.
    fn run(&self, db: &storage::Db) {
        let mut done = 0;
        loop {
            let target = {
                let mut st = self.st.lock();
                while st.want <= done && !st.stop {
                    self.cv.wait(&mut st);
                }
                if st.stop {
                    return;
                }
                st.want
            };
            let r = db
                .wait_durable(Lsn(target))
                .map_err(|e| format!("syncing received WAL: {e}"))
                .and_then(|()| {
                    self.send(db.written_lsn(), db.flush_lsn(), db.apply_lsn())
                        .map_err(|e| format!("acknowledging: {e}"))
                });
            if let Err(why) = r {
                self.st.lock().failed = Some(why);
                return;
            }
            done = target;
        }
    }
}

/// Stops the acknowledging thread when the receive loop ends, however it ends.
struct StopAcks<'a>(&'a Acks);

impl Drop for StopAcks<'_> {
    fn drop(&mut self) {
        self.0.st.lock().stop = true;
        self.0.cv.notify_all();
        // A write blocked on a primary that stopped reading returns now.
        let _ = self.0.closer.shutdown(std::net::Shutdown::Both);
    }
}

/// Replica side: receives WAL frames, writes and replays them, syncs them if a frame asks
/// (a commit waits for this replica's flush), and acknowledges once; syncs WAL nobody waits
/// for within `LAZY_SYNC`; answers keepalives. Consecutive WAL frames already received go
/// into one `apply_wal` call (one write, at most one sync, one acknowledgement). A large
/// batch to sync is written and synced by the WAL's background flusher while this thread
/// replays it, and acknowledged by a thread of its own once synced, while this one goes on
/// receiving and replaying the next: under load the replica's syncs run back to back.
fn receive_loop(sh: &Shared, sock: std::net::TcpStream, buf: BytesMut, gen: u64) -> Result<()> {
    let db = sh.db();
    let acks = Acks {
        sock: parking_lot::Mutex::new((sock.try_clone()?, Vec::with_capacity(64))),
        closer: sock.try_clone()?,
        st: Default::default(),
        cv: Default::default(),
    };
    std::thread::scope(|s| {
        let (acks, db2) = (&acks, &db);
        std::thread::Builder::new()
            .name("replidb-acks".into())
            .spawn_scoped(s, move || acks.run(db2))?;
        let _stop = StopAcks(acks);
        receive_frames(sh, sock, buf, gen, &db, acks)
    })
}

fn receive_frames(
    sh: &Shared,
    mut sock: std::net::TcpStream,
    mut buf: BytesMut,
    gen: u64,
    db: &storage::Db,
    acks: &Acks,
) -> Result<()> {
    let feedback = |w: Lsn, f: Lsn, a: Lsn| acks.send(w, f, a);
    let mut heard = Instant::now();
    // When WAL was first left unsynced (since the last sync).
    let mut unsynced_since: Option<Instant> = None;
    let mut timeout = STOP_CHECK;
    let mut spin_until: Option<Instant> = None;
    loop {
        if stream_over(sh, gen) {
            return Ok(());
        }
        if let Some(why) = acks.st.lock().failed.take() {
            bail!("{why}");
        }
        if unsynced_since.is_some_and(|t| t.elapsed() >= LAZY_SYNC) {
            let f = db.sync_wal()?;
            unsynced_since = None;
            feedback(db.written_lsn(), f, db.apply_lsn())?;
        }
        // While WAL waits for its lazy sync, reads wake every `LAZY_TICK` to look at the
        // clock; the socket option changes only when that state does (not per batch).
        let want = if unsynced_since.is_some() {
            LAZY_TICK
        } else {
            STOP_CHECK
        };
        if want != timeout {
            timeout = want;
            sock.set_read_timeout(Some(timeout))?;
        }
        // While commits wait for this replica, the next frame usually follows within a round
        // trip of the client: look for it without sleeping first (see `REPLICA_SPIN`).
        let spun = match spin_until.take() {
            Some(until) => spin_for_frame(&sock, &mut buf, until)?,
            None => None,
        };
        let got = match spun {
            Some(f) => Ok(f),
            None => read_frame_blocking(&mut sock, &mut buf),
        };
        let f = match got {
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
        sh.last_heard_us.store(now_us(), Ordering::Relaxed);
        match f {
            Frame::Wal {
                start_lsn,
                mut bytes,
                mut sync,
                mut eager,
            } => {
                // Take along every further WAL frame that is already here.
                while let Ok(Some((
                    Frame::Wal {
                        start_lsn: s2,
                        bytes: b2,
                        sync: s2sync,
                        eager: s2eager,
                    },
                    len,
                ))) = frame::decode(&buf)
                {
                    if s2.0 != start_lsn.0 + bytes.len() as u64 {
                        break;
                    }
                    bytes.extend_from_slice(&b2);
                    sync |= s2sync;
                    eager = s2eager;
                    let _ = buf.split_to(len);
                }
                // Write and replay, then sync if a commit waits for this replica's flush, then
                // one acknowledgement of all three positions. (Acknowledging the flush before
                // the replay would answer `remote_flush` a replay earlier, but each
                // acknowledgement wakes the primary and the second one competes with its next
                // commit: measured slower on two vCPUs, see docs/benchmarks.md.) A small batch
                // is synced here: a hand-off to other threads would cost it wake-ups.
                let background = sync && bytes.len() >= OVERLAP_SYNC_BYTES;
                let how = if background {
                    storage::ReplicaSync::Background
                } else {
                    storage::ReplicaSync::Lazy
                };
                let mut p = db.apply_wal_with(start_lsn, &bytes, how, &mut |_| {})?;
                if background {
                    let mut st = acks.st.lock();
                    // Every commit of the batch is at or before its apply LSN (records past
                    // it belong to a batch still incomplete, synced with it all the same).
                    st.want = st.want.max(p.apply_lsn.0);
                    drop(st);
                    acks.cv.notify_one();
                    unsynced_since = None;
                } else {
                    if sync {
                        p.flush_lsn = db.sync_wal()?;
                    }
                    feedback(p.write_lsn, p.flush_lsn, p.apply_lsn)?;
                    if p.flush_lsn < db.written_lsn() {
                        unsynced_since.get_or_insert_with(Instant::now);
                    } else {
                        unsynced_since = None;
                    }
                }
                sh.applied.send_replace(p.apply_lsn.0);
                let primary_flush = sh
                    .primary_flush
                    .fetch_max(p.write_lsn.0, Ordering::Relaxed)
                    .max(p.write_lsn.0);
                sh.lag_ms(primary_flush.saturating_sub(p.apply_lsn.0));
                // From the acknowledgement on, which the next commit can only follow.
                if eager {
                    spin_until = Some(Instant::now() + REPLICA_SPIN);
                }
            }
            Frame::Keepalive {
                primary_flush_lsn, ..
            } => {
                sh.primary_flush
                    .store(primary_flush_lsn.0, Ordering::Relaxed);
                feedback(db.written_lsn(), db.flush_lsn(), db.apply_lsn())?;
            }
            Frame::Error { code, message } if code == WAL_GONE => {
                return Err(WalGone::Removed(message).into())
            }
            Frame::Error { message, .. } => bail!("the primary says: {message}"),
            other => bail!("unexpected frame {other:?}"),
        }
    }
}

/// Error code of a primary that no longer holds the WAL a replica asks for.
const WAL_GONE: u16 = 4;
/// Error code: the asking node's log has diverged from this node's (sent as a `diverged`
/// frame, which names the fork LSN).
const DIVERGED: u16 = 5;
/// Error code: the asking node knows a newer epoch; this node is not the primary.
const STALE_PRIMARY: u16 = 6;

/// The primary cannot stream to this replica from where its log ends: it no longer retains
/// that WAL, or the log has diverged from the primary's. The replica must be reseeded.
#[derive(Debug, thiserror::Error)]
pub enum WalGone {
    #[error("the primary no longer retains the WAL this replica needs ({0})")]
    Removed(String),
    #[error("this node's log has diverged from the primary's ({message})")]
    Diverged { fork: Lsn, message: String },
}

/// Prefix of the directories a running replica reseeds into (inside its data directory).
const RESEED_PREFIX: &str = "reseed-";

/// Replica side: replaces this node's database by a fresh base backup from the primary,
/// while the old one keeps serving reads. The backup goes to `DIR/reseed-<ms>/`, is opened
/// there and swapped in; the next start moves it into `DIR` (`finish_reseed`).
async fn reseed(sh: &Arc<Shared>, primary: &str, why: &WalGone) -> Result<()> {
    let side = new_side_dir(&sh.config.dir);
    tracing::warn!(primary = %primary, reason = %why, dir = %side.display(), "this replica fell behind the WAL its primary retains: reseeding from a base backup");
    sh.reseeds.fetch_add(1, Ordering::Relaxed);
    seed_once(&sh.config, primary, &side).await?;
    swap_in(sh, &side).await?;
    tracing::info!(dir = %side.display(), "reseeded; streaming from the backup's redo LSN");
    Ok(())
}

/// Opens the database prepared in `side` (a base backup, full or rewound) and puts it in
/// place of the running one: new requests use it at once, reads wait for it to become
/// consistent (the gate), the old one closes when its last user lets go.
async fn swap_in(sh: &Arc<Shared>, side: &std::path::Path) -> Result<()> {
    let dir = side.to_path_buf();
    let db = tokio::task::spawn_blocking(move || {
        storage::Db::open(
            &dir,
            storage::Options {
                replica: true,
                ..storage::Options::default()
            },
        )
    })
    .await??;
    sh.attach(&db);
    {
        // The gate first (synced): a crash after the marker must find it.
        let _g = sh.gate_lock.lock();
        sh.consistent_at.store(u64::MAX, Ordering::SeqCst);
        store_gate(&sh.config.dir, Some(u64::MAX));
    }
    // Only a backup that was swapped in replaces the data at the next start.
    let marked = std::fs::write(side.join(LIVE_MARKER), b"")
        .and_then(|()| std::fs::File::open(side)?.sync_all());
    if let Err(e) = marked {
        let _ = std::fs::remove_file(side.join(LIVE_MARKER));
        return Err(e.into());
    }
    let old = std::mem::replace(&mut *sh.db_slot.write(), Arc::new(db));
    sh.db_gen.fetch_add(1, Ordering::Release);
    sh.log_gen.fetch_add(1, Ordering::SeqCst);
    // The old database closes when its last user lets go (a request in flight, say).
    tokio::task::spawn_blocking(move || drop(old));
    Ok(())
}

/// Pages per `snapshot_pages` frame of a rewind.
const REWIND_RUN: u64 = 256;

/// Replica side: rewinds a diverged node whose log past `fork` was replayed. Sends the pages
/// its divergent log changed; the primary answers with a base backup that holds only those
/// and the ones it changed since the fork; every other page is copied from this node's own
/// state (unchanged since the fork on both sides, so identical). The result is laid down
/// like a reseed (`DIR/reseed-<ms>/`, swapped in, consistent after replay). Returns the
/// pages fetched and the total.
async fn rewind_pages(sh: &Arc<Shared>, primary: &str, fork: Lsn) -> Result<(u64, u64)> {
    let db = sh.db();
    let local = {
        let db = db.clone();
        tokio::task::spawn_blocking(move || db.pages_changed_after(fork)).await?
    };
    let (mut rd, mut wr, mut buf) =
        connect_as_replica(&sh.config, primary, b"*1\r\n$10\r\nREPLREWIND\r\n").await?;
    write_frame(&mut wr, &own_hello(&db, &sh.config.name)).await?;
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
    let side = new_side_dir(&sh.config.dir);
    let dir = side.clone();
    let mut seeder = tokio::task::spawn_blocking(move || {
        storage::Seeder::create(&dir, redo, &storage::Options::default())
    })
    .await??;
    let mut fetched = vec![false; pages as usize];
    let mut n_fetched = 0u64;
    loop {
        match read_frame(&mut rd, &mut buf).await? {
            Frame::SnapshotPages { first_page, bytes } => {
                let n = (bytes.len() / storage::PAGE_SIZE) as u64;
                if first_page + n > pages {
                    bail!("the primary sent pages past its page count");
                }
                for i in first_page..first_page + n {
                    fetched[i as usize] = true;
                }
                n_fetched += n;
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
        let mut i = 0u64;
        while i < pages {
            if fetched[i as usize] {
                i += 1;
                continue;
            }
            let mut j = i;
            while j < pages && !fetched[j as usize] && j - i < REWIND_RUN {
                j += 1;
            }
            out.clear();
            db.read_current_pages(i, j - i, &mut out);
            seeder.write_pages(i, &out)?;
            i = j;
        }
        Ok(seeder)
    })
    .await??;
    tokio::task::spawn_blocking(move || seeder.finish(&epochs)).await??;
    swap_in(sh, &side).await?;
    Ok((n_fetched, pages))
}

/// Primary side of a rewind (`REPLREWIND`): a base backup holding only the pages the node
/// named and the pages changed here since the fork.
pub async fn serve_rewind(sh: Arc<Shared>, sock: TcpStream, mut buf: BytesMut) -> Result<()> {
    let peer = sock.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let (mut rd, mut wr) = sock.into_split();
    let hello = read_hello(&mut rd, &mut wr, &mut buf).await?;
    let name = hello.name.clone();
    let mut wanted: Vec<u64> = Vec::new();
    loop {
        match read_frame(&mut rd, &mut buf).await? {
            Frame::PageList { pages } if pages.is_empty() => break,
            Frame::PageList { pages } => {
                wanted.extend(pages);
                if wanted.len() > (1 << 28) {
                    bail!("{name}: page list too long");
                }
            }
            other => bail!("{name}: expected page_list, got {other:?}"),
        }
    }
    let db = sh.db();
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
    let (redo, pages) = tokio::task::spawn_blocking({
        let db = db.clone();
        move || db.begin_base_backup()
    })
    .await??;
    let slot = sh.tracker.connect(&name, &peer, redo, true);
    let _link = LinkGuard(&sh.tracker, slot);
    update_retention(&sh);
    let mine = {
        let db = db.clone();
        tokio::task::spawn_blocking(move || db.pages_changed_after(fork)).await?
    };
    wanted.extend(mine);
    wanted.retain(|&p| p < pages);
    wanted.sort_unstable();
    wanted.dedup();
    tracing::info!(replica = %name, %peer, fork = fork.0, redo = redo.0, pages = wanted.len(), of = pages, "sending the pages for a rewind");
    write_frame(
        &mut wr,
        &Frame::SnapshotBegin {
            redo_lsn: redo,
            page_count: pages,
            epochs: db.epoch_history(),
        },
    )
    .await?;
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

/// Disconnects a replica's link from the tracker when dropped, on every way out of the
/// function that holds it (an early `?` included).
struct LinkGuard<'a>(&'a replication::tracker::Tracker, LinkId);

impl Drop for LinkGuard<'_> {
    fn drop(&mut self) {
        self.0.disconnect(self.1);
    }
}

/// Marks a reseed directory whose database was swapped in (the live data of the node).
const LIVE_MARKER: &str = "live";

/// Before a node opens its database: if a reseed or rewind swapped in a backup in a previous
/// run (`DIR/reseed-<ms>/` with its `live` marker), that backup replaces the data in `DIR`;
/// other reseed directories (cut short, or never swapped in) are removed. Restartable: the
/// control file goes first and comes back last, each other file moves only if it is still in
/// the backup, so a crash at any point leaves either the old data, a directory that seeds
/// itself anew, or a move this function finishes next time.
pub fn finish_reseed(dir: &std::path::Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    let mut sides: Vec<std::path::PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(RESEED_PREFIX))
        })
        .collect();
    sides.sort();
    let newest = sides
        .iter()
        .rev()
        .find(|p| p.join(LIVE_MARKER).exists())
        .cloned();
    if let Some(side) = &newest {
        tracing::info!(from = %side.display(), "finishing a reseed: the backup replaces the old data");
        if side.join(storage::CONTROL_FILE).exists() {
            let _ = std::fs::remove_file(dir.join(storage::CONTROL_FILE));
        }
        for name in [storage::PAGE_FILE, storage::EPOCHS_FILE] {
            if side.join(name).exists() {
                let _ = std::fs::remove_file(dir.join(name));
                std::fs::rename(side.join(name), dir.join(name))?;
            }
        }
        if side.join(storage::WAL_DIR).exists() {
            let _ = std::fs::remove_dir_all(dir.join(storage::WAL_DIR));
            std::fs::rename(side.join(storage::WAL_DIR), dir.join(storage::WAL_DIR))?;
        }
        if side.join(storage::CONTROL_FILE).exists() {
            std::fs::rename(
                side.join(storage::CONTROL_FILE),
                dir.join(storage::CONTROL_FILE),
            )?;
        }
        std::fs::File::open(dir)?.sync_all()?;
    }
    for side in sides {
        std::fs::remove_dir_all(&side)?;
    }
    Ok(())
}

/// The file that holds a seeded replica's consistency point until it is reached: `pending`
/// (the copy is done, the point not known yet) or an LSN.
const GATE_FILE: &str = "consistent_at";

/// The consistency gate of a data directory (0: none).
pub fn load_gate(dir: &std::path::Path) -> u64 {
    match std::fs::read_to_string(dir.join(GATE_FILE)) {
        Ok(s) => s.trim().parse().unwrap_or(u64::MAX),
        Err(_) => 0,
    }
}

/// Writes (or, with `None`, removes) the gate file, synced with its directory. Callers hold
/// `Shared::gate_lock` while they change the in-memory gate and the file together. A failure is
/// logged: a lost gate file means reads are not held back after a restart.
pub fn store_gate(dir: &std::path::Path, gate: Option<u64>) {
    let path = dir.join(GATE_FILE);
    let r = (|| -> std::io::Result<()> {
        match gate {
            Some(g) => {
                let text = if g == u64::MAX {
                    "pending\n".to_string()
                } else {
                    format!("{g}\n")
                };
                let tmp = dir.join(format!("{GATE_FILE}.tmp"));
                std::fs::write(&tmp, text)?;
                std::fs::File::open(&tmp)?.sync_all()?;
                std::fs::rename(&tmp, &path)?;
            }
            None => match std::fs::remove_file(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                r => r?,
            },
        }
        std::fs::File::open(dir)?.sync_all()
    })();
    if let Err(e) = r {
        tracing::warn!(error = %e, "could not write the consistency gate file");
    }
}

/// The file that remembers, across restarts, which primary a node follows when it became a
/// replica by `REPLICAOF` (a `--replicaof` flag names it too and wins).
pub const ROLE_FILE: &str = "replicaof";

/// The primary a data directory was last told to follow, if any.
pub fn load_role(dir: &std::path::Path) -> Option<String> {
    std::fs::read_to_string(dir.join(ROLE_FILE))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn store_role(dir: &std::path::Path, primary: Option<&str>) -> Result<()> {
    let path = dir.join(ROLE_FILE);
    match primary {
        Some(p) => {
            let tmp = dir.join(format!("{ROLE_FILE}.tmp"));
            std::fs::write(&tmp, format!("{p}\n"))?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &path)?;
        }
        None => match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        },
    }
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Starts following `primary` as role generation `gen`.
pub fn start_replica(sh: &Arc<Shared>, primary: String, gen: u64) {
    let t = tokio::spawn(run_replica(sh.clone(), primary, gen));
    *sh.replica_task.lock() = Some(t);
}

/// Stops the replica stream (if any) and waits until its thread no longer applies WAL.
async fn stop_replica(sh: &Arc<Shared>) -> u64 {
    sh.role_gen.send_modify(|g| *g += 1);
    let task = sh.replica_task.lock().take();
    if let Some(t) = task {
        let _ = t.await;
    }
    sh.link_up.store(false, Ordering::Relaxed);
    *sh.role_gen.borrow()
}

/// `REPLICAOF NO ONE`: a replica stops following, finishes what it has (an incomplete batch
/// is dropped), starts a new epoch and takes writes. Returns what happened, for the reply.
pub async fn promote(sh: &Arc<Shared>) -> Result<String> {
    let _g = sh.role_change.lock().await;
    let t0 = Instant::now();
    if !sh.is_replica_role() && !sh.db().is_replica() {
        return Ok("already a primary".into());
    }
    if let Some((at, target)) = sh.loading() {
        bail!("this replica is not consistent yet after its base backup (applied up to LSN {at}, consistent from {target}); let it catch up first");
    }
    stop_replica(sh).await;
    let db = sh.db();
    let (epoch, at) = tokio::task::spawn_blocking({
        let db = db.clone();
        move || db.promote()
    })
    .await??;
    sh.log_gen.fetch_add(1, Ordering::SeqCst);
    // On a primary, commits wake WAITLSN through the flusher: attach again as a primary.
    sh.attach(&db);
    sh.verified.store(true, Ordering::SeqCst);
    sh.paused.store(false, Ordering::SeqCst);
    if let Err(e) = store_role(&sh.config.dir, None) {
        tracing::error!(error = %e, "promoted, but could not remove the role file: remove DIR/replicaof before restarting");
    }
    *sh.role.write() = None;
    *sh.fenced.write() = None;
    sh.last_join.lock().clear();
    tracing::info!(
        epoch,
        start = at.0,
        elapsed_ms = t0.elapsed().as_millis() as u64,
        "REPLICAOF NO ONE: this node is the primary now"
    );
    Ok(format!("promoted: epoch {epoch} from LSN {at}"))
}

/// `REPLICAOF host port`: follow `primary` from now on. A primary first stops taking writes
/// (one running finishes) and makes its log durable; the handshake with the new primary then
/// decides whether it can stream on or must be reseeded (`replication::epochs::check`).
pub async fn follow(sh: &Arc<Shared>, primary: String) -> Result<()> {
    let _g = sh.role_change.lock().await;
    follow_locked(sh, primary).await
}

async fn follow_locked(sh: &Arc<Shared>, primary: String) -> Result<()> {
    *sh.role.write() = Some(primary.clone());
    let gen = stop_replica(sh).await;
    let db = sh.db();
    if !db.is_replica() {
        let end = tokio::task::spawn_blocking(move || db.demote()).await??;
        sh.log_gen.fetch_add(1, Ordering::SeqCst);
        tracing::info!(at = end.0, new_primary = %primary, "REPLICAOF: this primary becomes a replica");
    }
    store_role(&sh.config.dir, Some(&primary))?;
    sh.verified.store(false, Ordering::SeqCst);
    sh.paused.store(false, Ordering::SeqCst);
    sh.primary_flush.store(0, Ordering::Relaxed);
    sh.last_join.lock().clear();
    tracing::info!(primary = %primary, "following a new primary");
    start_replica(sh, primary, gen);
    Ok(())
}

/// `FAILOVER TO host port` on a primary: stop taking writes (each refused with an error, a
/// write already running finishes), wait until the target replica has applied everything,
/// promote it (`REPLICAOF NO ONE` over its client port), then follow it. Nothing acknowledged
/// here is missing there. On any failure before the target is promoted, this node takes
/// writes again.
pub async fn failover(sh: &Arc<Shared>, target: String, timeout: Duration) -> Result<String> {
    let _g = sh.role_change.lock().await;
    if sh.is_replica_role() {
        bail!("FAILOVER runs on the primary; this node is a replica");
    }
    let t0 = Instant::now();
    sh.paused.store(true, Ordering::SeqCst);
    let db = sh.db();
    let end = match tokio::task::spawn_blocking({
        let db = db.clone();
        move || db.demote()
    })
    .await?
    {
        Ok(end) => end,
        Err(e) => {
            sh.paused.store(false, Ordering::SeqCst);
            return Err(e.into());
        }
    };
    let undo = |e: anyhow::Error| {
        let r = db.undo_demote();
        sh.paused.store(false, Ordering::SeqCst);
        match r {
            Ok(()) => e.context("switchover abandoned; this node takes writes again"),
            Err(u) => e.context(format!(
                "switchover abandoned, and this node cannot resume: {u}"
            )),
        }
    };
    let caught_up = async {
        let mut c = admin_conn(&target, sh.config.primary_password.as_deref()).await?;
        let deadline = Instant::now() + timeout;
        loop {
            let info = admin_call(&mut c, &["INFO", "replication"]).await?;
            let applied: u64 = info_field(&info, "apply_lsn").unwrap_or(0);
            if applied >= end.0 {
                break;
            }
            if Instant::now() > deadline {
                bail!("{target} applied only up to LSN {applied} of {end} within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        anyhow::Ok(c)
    }
    .await;
    let mut c = match caught_up {
        Ok(c) => c,
        Err(e) => return Err(undo(e)),
    };
    // From here the target may have been promoted even if its answer is lost: take writes
    // again only if it says it is still a replica.
    let reply = match admin_call(&mut c, &["REPLICAOF", "NO", "ONE"]).await {
        Ok(r) => r,
        Err(e) => {
            let role = async {
                let mut c = admin_conn(&target, sh.config.primary_password.as_deref()).await?;
                let info = admin_call(&mut c, &["INFO", "replication"]).await?;
                anyhow::Ok(info.lines().any(|l| l.trim() == "role:primary"))
            }
            .await;
            match role {
                // It may still be promoting (INFO shows a replica until the very end): do not
                // take writes again, or two nodes could.
                Ok(false) => bail!("switchover state unknown: {target} did not confirm REPLICAOF NO ONE ({e:#}) and still reports role:replica, but may be promoting; this node stays read-only — check {target}, then REPLICAOF it (or promote this node if it never took over)"),
                Ok(true) => format!("promoted, though its reply was lost ({e:#})"),
                Err(e2) => {
                    bail!("switchover state unknown: {target} did not answer REPLICAOF NO ONE ({e:#}) nor INFO ({e2:#}); this node stays read-only — point it at the new primary with REPLICAOF, or at {target} if that took over")
                }
            }
        }
    };
    follow_locked(sh, target.clone()).await?;
    tracing::info!(target = %target, at = end.0, elapsed_ms = t0.elapsed().as_millis() as u64, "FAILOVER: switched over");
    Ok(format!("switched over to {target} at LSN {end} ({reply})"))
}

/// A numeric `key:value` field of INFO text.
fn info_field(info: &str, key: &str) -> Option<u64> {
    info.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

/// How long the node waits for another node in its own admin calls.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A client connection to another node, for this node's own admin calls.
async fn admin_conn(addr: &str, password: Option<&str>) -> Result<crate::client::Conn> {
    tokio::time::timeout(ADMIN_TIMEOUT, crate::client::Conn::connect(addr, password))
        .await
        .map_err(|_| anyhow!("connecting to {addr} timed out"))?
}

/// One admin call with a time limit.
async fn admin_call(c: &mut crate::client::Conn, args: &[&str]) -> Result<String> {
    tokio::time::timeout(ADMIN_TIMEOUT, c.call(args))
        .await
        .map_err(|_| anyhow!("no reply to {} within {ADMIN_TIMEOUT:?}", args[0]))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use replication::quorum::Level;

    /// A primary-side link over a real loopback connection; returns it and the replica's end.
    fn link() -> (Arc<LiveLink>, std::net::TcpStream) {
        link_in(0, Lsn(0))
    }

    /// `link` for the replica in tracker slot `slot`, sending from `from`.
    fn link_in(slot: usize, from: Lsn) -> (Arc<LiveLink>, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let replica = std::net::TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (primary, _) = l.accept().expect("accept");
        let slot = LinkId { slot, id: 1 };
        let fb = Feedback::new(primary.try_clone().expect("clone"), BytesMut::new(), slot);
        (Arc::new(LiveLink::new(primary, from, fb)), replica)
    }

    fn received(replica: &std::net::TcpStream) -> Vec<u8> {
        let mut got = vec![0u8; 4096];
        match recv_nowait(replica, &mut got) {
            Ok(n) => got.truncate(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => got.clear(),
            Err(e) => panic!("{e}"),
        }
        got
    }

    #[test]
    fn a_replica_looking_for_its_next_frame_keeps_what_came_for_the_blocking_read() {
        use std::io::Write;
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut primary =
            std::net::TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (mut replica, _) = l.accept().expect("accept");
        replica
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut f = Vec::new();
        frame::encode_wal(Lsn(7), b"hello", true, true, &mut f);
        let want = Frame::Wal {
            start_lsn: Lsn(7),
            bytes: b"hello".to_vec(),
            sync: true,
            eager: true,
        };
        let mut buf = BytesMut::new();
        let soon = || Instant::now() + Duration::from_millis(1);
        let deadline = Instant::now() + Duration::from_secs(5);

        // Nothing sent: the look ends empty-handed.
        assert_eq!(
            spin_for_frame(&replica, &mut buf, soon()).expect("look"),
            None
        );
        // Half a frame: no frame, but the bytes stay for the next read.
        primary.write_all(&f[..6]).expect("send");
        while buf.len() < 6 && Instant::now() < deadline {
            assert_eq!(
                spin_for_frame(&replica, &mut buf, soon()).expect("look"),
                None
            );
        }
        assert_eq!(&buf[..], &f[..6]);
        // The rest comes while the thread sleeps on the socket: one whole frame.
        primary.write_all(&f[6..]).expect("send");
        assert_eq!(
            read_frame_blocking(&mut replica, &mut buf).expect("read"),
            want
        );
        assert!(buf.is_empty());
        // A frame that arrives during the look is returned by it.
        primary.write_all(&f).expect("send");
        let mut got = None;
        while got.is_none() && Instant::now() < deadline {
            got = spin_for_frame(&replica, &mut buf, soon()).expect("look");
        }
        assert_eq!(got, Some(want));
        // The primary goes away during the look: an error, not a silent timeout.
        drop(primary);
        let mut ended = false;
        while !ended && Instant::now() < deadline {
            ended = spin_for_frame(&replica, &mut buf, soon()).is_err();
        }
        assert!(ended, "a closed connection ends the look with an error");
    }

    #[test]
    fn wal_frames_ask_for_a_sync_while_a_commit_waits_for_one_and_are_eager_while_few_do() {
        let links = Links::new(
            Arc::new(crate::session::WalSignal::default()),
            Default::default(),
        );
        assert_eq!(links.wal_flags(), (false, false));
        let write = links.sync_commit(Level::Write, Lsn(0));
        assert_eq!(
            links.wal_flags(),
            (false, true),
            "remote_write needs no sync, but its replica had better be awake"
        );
        let mut flush: Vec<_> = (1..EAGER_MAX_WAITS)
            .map(|_| links.sync_commit(Level::Flush, Lsn(0)))
            .collect();
        assert_eq!(links.wal_flags(), (true, true));
        let crowded = Instant::now();
        flush.push(links.sync_commit(Level::Apply, Lsn(0)));
        assert_eq!(
            links.wal_flags(),
            (true, false),
            "many waiting commits: no spinning"
        );
        drop(write);
        assert_eq!(
            links.wal_flags(),
            (true, false),
            "a dip between two rounds of a loaded primary does not count as quiet"
        );
        let quiet = crowded + EAGER_QUIET;
        let deadline = quiet + Duration::from_secs(5);
        while links.wal_flags() != (true, true) && Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert!(
            Instant::now() >= quiet,
            "eager again only after the quiet period"
        );
        assert_eq!(links.wal_flags(), (true, true));
        drop(flush);
        assert_eq!(links.wal_flags(), (false, false));
    }

    #[test]
    fn a_sender_thread_flags_its_frames_by_the_quorum_choice_of_the_moment() {
        let tracker = replication::tracker::Tracker::new(
            replication::quorum::SyncStandbys::parse("ANY 1 (r1, r2)").expect("parses"),
        );
        let r1 = tracker.connect("r1", "a", Lsn(0), false);
        let r2 = tracker.connect("r2", "b", Lsn(0), false);
        let links = Links::new(
            Arc::new(crate::session::WalSignal::default()),
            tracker.clone(),
        );
        assert_eq!(links.flags_for(r1.slot), (false, false), "no commit waits");
        let flush = links.sync_commit(Level::Flush, Lsn(0));
        assert_eq!(
            links.flags_for(r1.slot),
            (true, true),
            "a tie goes by list order"
        );
        assert_eq!(links.flags_for(r2.slot), (false, true), "r2 syncs lazily");
        // r2's lazy sync overtakes r1: from then on r2 is asked.
        tracker.update(r2, Lsn(9), Lsn(9), Lsn(9));
        assert_eq!(links.flags_for(r1.slot), (false, true));
        assert_eq!(links.flags_for(r2.slot), (true, true));
        drop(flush);
        assert_eq!(links.flags_for(r2.slot), (false, false));
    }

    #[test]
    fn wal_wakes_senders_only_when_they_have_work_and_goes_straight_out_for_waiting_commits() {
        let signal = Arc::new(crate::session::WalSignal::default());
        // r1 counts towards the quorum, r2 is only a potential standby.
        let tracker = replication::tracker::Tracker::new(
            replication::quorum::SyncStandbys::parse("FIRST 1 (r1, r2)").expect("parses"),
        );
        assert_eq!(tracker.connect("r1", "a", Lsn(0), false).slot, 0);
        assert_eq!(tracker.connect("r2", "b", Lsn(0), false).slot, 1);
        let links = Links::new(signal.clone(), tracker);
        let (link, replica) = link();
        links.add(link.clone());

        // No commit waits for the replicas and the sender is busy (batching): writes neither
        // wake it nor go out on their own.
        links.wal_written(Lsn(0), b"abc");
        assert_eq!(signal.notified(), 0);
        assert!(received(&replica).is_empty());
        // An idle sender is woken.
        links.0.idle.fetch_add(1, Ordering::SeqCst);
        links.wal_written(Lsn(0), b"abc");
        assert_eq!(signal.notified(), 1);
        links.0.idle.fetch_sub(1, Ordering::SeqCst);

        // A commit waits for the replicas' flush: its WAL goes to the caught-up link from the
        // hook itself, with the sync flag, and no thread is woken.
        let guard = links.sync_commit(Level::Flush, Lsn(0));
        assert_eq!(signal.notified(), 1, "the link was caught up");
        links.wal_written(Lsn(0), b"abc");
        assert_eq!(signal.notified(), 1);
        let bytes = received(&replica);
        match frame::decode(&bytes) {
            Ok(Some((
                Frame::Wal {
                    start_lsn,
                    bytes,
                    sync,
                    eager,
                },
                _,
            ))) => {
                assert_eq!(
                    (start_lsn, &bytes[..], sync, eager),
                    (Lsn(0), &b"abc"[..], true, true)
                );
            }
            other => panic!("expected a wal frame, got {other:?}"),
        }
        // A replica whose flush the quorum cannot use gets the frame without the sync flag
        // (it syncs lazily), still eager.
        let (potential, potential_end) = link_in(1, Lsn(3));
        links.add(potential.clone());
        links.wal_written(Lsn(3), b"def");
        let flags = |bytes: &[u8]| match frame::decode(bytes) {
            Ok(Some((Frame::Wal { sync, eager, .. }, _))) => (sync, eager),
            other => panic!("expected a wal frame, got {other:?}"),
        };
        assert_eq!(flags(&received(&replica)), (true, true));
        assert_eq!(flags(&received(&potential_end)), (false, true));
        links.remove(&potential);
        // WAL the link cannot take directly (it is not caught up) wakes its sender.
        links.wal_written(Lsn(10), b"xyz");
        assert_eq!(signal.notified(), 2);
        drop(guard);

        // The first commit to wait wakes the senders of links still holding WAL back.
        let _guard = links.sync_commit(Level::Write, Lsn(20));
        assert_eq!(signal.notified(), 3);
    }

    #[test]
    fn a_frame_cut_short_by_a_full_socket_is_left_for_the_sender_to_finish() {
        let (link, replica) = link();
        // The replica reads (almost) nothing: pushes fill the socket until one is cut short
        // (the kernel takes what fits, so a frame goes out in part).
        let chunk = vec![7u8; 64 * 1024];
        let mut at = 0u64;
        for _ in 0..10_000 {
            if link.push(Lsn(at), &chunk, (false, false)) {
                at += chunk.len() as u64;
            } else if link.partial.load(Ordering::SeqCst) {
                at += chunk.len() as u64;
                break;
            } else {
                // Full exactly at a frame boundary (nothing sent): make a little room.
                let mut sink = [0u8; 1000];
                let _ = recv_nowait(&replica, &mut sink);
            }
        }
        // The rest waits in `pending`, the link counts it as sent, and the flag keeps the
        // sender thread from sleeping before it has written it.
        assert!(
            link.partial.load(Ordering::SeqCst),
            "no frame was cut short"
        );
        let st = link.st.lock();
        assert!(!st.pending.is_empty());
        assert_eq!(st.sent, Lsn(at));
        drop(st);
        // Further WAL is not pushed past unfinished bytes.
        assert!(!link.push(Lsn(at), b"more", (false, false)));
        // And the sender thread does not sleep with it unsent, although the link counts
        // everything written as sent.
        assert!(link.sender_has_work(Lsn(at)));
        link.partial.store(false, Ordering::SeqCst);
        assert!(
            !link.sender_has_work(Lsn(at)),
            "nothing left once the rest is written"
        );
        assert!(
            link.sender_has_work(Lsn(at + 1)),
            "new WAL past what was sent"
        );
        link.dead.store(true, Ordering::SeqCst);
        assert!(link.sender_has_work(Lsn(at)), "a dead link to report");
    }
}
