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
    let slot = sh.replicas.lock().register(&name, &peer, flush_lsn);
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
    // Feedback arrives on the read half.
    let sh2 = sh.clone();
    let name2 = name.clone();
    let mut feedback = tokio::spawn(async move {
        loop {
            match read_frame(&mut rd, &mut buf).await {
                Ok(Frame::Feedback {
                    write_lsn,
                    flush_lsn,
                    apply_lsn,
                    ..
                }) => {
                    sh2.replicas
                        .lock()
                        .update(slot, write_lsn, flush_lsn, apply_lsn);
                    update_retention(&sh2);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::info!(replica = %name2, error = %e, "replica link closed");
                    return;
                }
            }
        }
    });
    let mut pos = flush_lsn;
    let mut last_sent = Instant::now();
    let r: Result<()> = async {
        loop {
            let mut chunk = Vec::new();
            let end = match db.read_wal(pos, frame::MAX_WAL_CHUNK, &mut chunk) {
                Ok(end) => end,
                Err(e) => {
                    let _ = write_frame(
                        &mut wr,
                        &Frame::Error {
                            code: 3,
                            message: e.to_string(),
                        },
                    )
                    .await;
                    return Err(e.into());
                }
            };
            if end > pos {
                write_frame(
                    &mut wr,
                    &Frame::Wal {
                        start_lsn: pos,
                        bytes: chunk,
                    },
                )
                .await?;
                pos = end;
                last_sent = Instant::now();
                sh.replicas
                    .lock()
                    .set_streaming(slot, pos >= db.flush_lsn());
                continue;
            }
            if last_sent.elapsed() >= KEEPALIVE {
                write_frame(
                    &mut wr,
                    &Frame::Keepalive {
                        primary_flush_lsn: db.flush_lsn(),
                        time_us: now_us(),
                    },
                )
                .await?;
                last_sent = Instant::now();
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = &mut feedback => bail!("replica went away"),
            }
        }
    }
    .await;
    feedback.abort();
    sh.replicas.lock().disconnect(slot);
    r
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
    let min = sh.replicas.lock().min_flush();
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
    let sock = TcpStream::connect(primary)
        .await
        .with_context(|| format!("connecting to {primary}"))?;
    let _ = sock.set_nodelay(true);
    let (mut rd, mut wr) = sock.into_split();
    let mut buf = BytesMut::with_capacity(1 << 20);
    if let Some(pw) = &sh.config.primary_password {
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
    wr.write_all(b"*1\r\n$10\r\nREPLSTREAM\r\n").await?;
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
    loop {
        match read_frame(&mut rd, &mut buf).await? {
            Frame::Wal { start_lsn, bytes } => {
                let db2 = db.clone();
                let p =
                    tokio::task::spawn_blocking(move || db2.apply_wal(start_lsn, &bytes)).await??;
                let primary_flush = sh
                    .primary_flush
                    .fetch_max(p.write_lsn.0, Ordering::Relaxed)
                    .max(p.write_lsn.0);
                sh.lag_ms(primary_flush.saturating_sub(p.apply_lsn.0));
                let fb = Frame::Feedback {
                    write_lsn: p.write_lsn,
                    flush_lsn: p.flush_lsn,
                    apply_lsn: p.apply_lsn,
                    time_us: now_us(),
                };
                write_frame(&mut wr, &fb).await?;
            }
            Frame::Keepalive {
                primary_flush_lsn, ..
            } => {
                sh.primary_flush
                    .store(primary_flush_lsn.0, Ordering::Relaxed);
                let l = db.flush_lsn();
                let fb = Frame::Feedback {
                    write_lsn: l,
                    flush_lsn: l,
                    apply_lsn: db.apply_lsn(),
                    time_us: now_us(),
                };
                write_frame(&mut wr, &fb).await?;
            }
            Frame::Error { message, .. } => bail!("the primary says: {message}"),
            other => bail!("unexpected frame {other:?}"),
        }
    }
}
