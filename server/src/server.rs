//! The network side: accept connections, read pipelined requests, run them, wait for the
//! durability their writes need, write the replies. Stops on SIGINT/SIGTERM or SHUTDOWN:
//! no new connections, in-flight batches finish, the database checkpoints and closes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::{Bytes, BytesMut};
use parking_lot::RwLock;
use storage::{Db, Options};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::resp::{self, Parsed};
use crate::session::{After, Out, Session, Settings, Shared, Stats};

/// How long shutdown waits for connections to finish their current batch.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A running server (for tests and the CLI): bound, serving until shut down.
pub struct Server {
    shared: Arc<Shared>,
    listener: TcpListener,
}

impl Server {
    /// Opens the database and binds the port.
    pub async fn start(config: Config) -> Result<Server> {
        let dir = config.dir.clone();
        let db = tokio::task::spawn_blocking(move || Db::open(&dir, Options::default()))
            .await?
            .with_context(|| format!("opening the database in {}", config.dir.display()))?;
        let listener = TcpListener::bind((config.bind.as_str(), config.port))
            .await
            .with_context(|| format!("binding {}:{}", config.bind, config.port))?;
        let (tx, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            db: Arc::new(db),
            settings: RwLock::new(Settings {
                requirepass: config.requirepass.clone(),
                sync_commit: config.sync_commit,
            }),
            config,
            stats: Stats::new(),
            started: Instant::now(),
            next_client_id: AtomicU64::new(0),
            shutdown: tx,
        });
        Ok(Server { shared, listener })
    }

    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// A handle that stops the server when `send(true)` is called on it.
    pub fn shutdown_handle(&self) -> watch::Sender<bool> {
        self.shared.shutdown.clone()
    }

    /// Serves until shutdown, then drains connections and closes the database.
    pub async fn run(self) -> Result<()> {
        let Server { shared, listener } = self;
        let mut stop = shared.shutdown.subscribe();
        let mut conns = JoinSet::new();
        tracing::info!(
            addr = %listener.local_addr()?,
            dir = %shared.config.dir.display(),
            wal_io = shared.db.stats().wal_io,
            "replidb ready to accept connections"
        );
        loop {
            tokio::select! {
                r = listener.accept() => match r {
                    Ok((sock, peer)) => {
                        let _ = sock.set_nodelay(true);
                        let sh = shared.clone();
                        conns.spawn(async move {
                            sh.stats.connections_total.fetch_add(1, Ordering::Relaxed);
                            sh.stats.connections_now.fetch_add(1, Ordering::Relaxed);
                            if let Err(e) = connection(sh.clone(), sock).await {
                                tracing::debug!(%peer, error = %e, "connection ended with an error");
                            }
                            sh.stats.connections_now.fetch_sub(1, Ordering::Relaxed);
                        });
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: keep serving the others.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = stop.changed() => break,
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        drop(listener);
        tracing::info!(
            connections = conns.len(),
            "shutting down: finishing in-flight requests"
        );
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while conns.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("connections still busy after {DRAIN_TIMEOUT:?}; closing them");
            conns.abort_all();
        }
        let db = shared.db.clone();
        drop(shared);
        let closed = tokio::task::spawn_blocking(move || match Arc::try_unwrap(db) {
            Ok(db) => db.close(),
            // A task still holds it (aborted mid-request): checkpoint; drop closes the rest.
            Err(db) => db.checkpoint(),
        })
        .await?;
        closed.context("closing the database")?;
        tracing::info!("shutdown complete");
        Ok(())
    }
}

async fn connection(sh: Arc<Shared>, mut sock: TcpStream) -> Result<()> {
    let mut stop = sh.shutdown.subscribe();
    let mut session = Session::new(sh.clone());
    let mut inbuf = BytesMut::with_capacity(16 * 1024);
    let mut need = 1usize;
    let mut out = Out::default();
    loop {
        // Run every complete request already buffered (pipelining), then reply once.
        let mut after = After::Continue;
        while inbuf.len() >= need && after == After::Continue {
            match resp::parse(&inbuf) {
                Ok(Parsed::Request { args, len }) => {
                    let frame = inbuf.split_to(len).freeze();
                    let args: Vec<Bytes> = args.into_iter().map(|r| frame.slice(r)).collect();
                    need = 1;
                    after = session.execute(args, &mut out);
                }
                Ok(Parsed::Incomplete { need: n }) => {
                    need = n;
                    break;
                }
                Err(e) => {
                    session.enc.error(&mut out.buf, &format!("ERR {e}"));
                    after = After::Close;
                }
            }
        }
        finish_batch(&sh, &mut out).await;
        if !out.buf.is_empty() {
            sock.write_all(&out.buf).await?;
            out.buf.clear();
        }
        if after == After::Close || *stop.borrow() {
            return Ok(());
        }
        if inbuf.capacity() - inbuf.len() < 4096 {
            inbuf.reserve(16 * 1024.max(need.saturating_sub(inbuf.len()).min(resp::MAX_REQUEST)));
        }
        tokio::select! {
            r = sock.read_buf(&mut inbuf) => {
                if r? == 0 {
                    return Ok(());
                }
            }
            _ = stop.changed() => return Ok(()),
        }
    }
}

/// Waits until the batch's writes are as durable as their connection asked; replaces the
/// success replies of writes that did not get there with the error.
async fn finish_batch(sh: &Shared, out: &mut Out) {
    let Some(max) = out.pending.iter().map(|p| p.lsn).max() else {
        return;
    };
    let r = sh.db.durable(max).await;
    let now = Instant::now();
    match r {
        Ok(()) => {
            let mut h = sh.stats.commit_latency.lock();
            for p in &out.pending {
                let _ = h.record((now - p.since).as_micros().max(1) as u64);
            }
        }
        Err(e) => {
            let flushed = sh.db.flush_lsn();
            let msg = crate::reply::storage_error(&e);
            let mut fixed = BytesMut::with_capacity(out.buf.len());
            let mut at = 0;
            for p in &out.pending {
                fixed.extend_from_slice(&out.buf[at..p.start]);
                if p.lsn <= flushed {
                    fixed.extend_from_slice(&out.buf[p.start..p.end]);
                } else {
                    fixed.extend_from_slice(b"-");
                    fixed.extend_from_slice(msg.replace(['\r', '\n'], " ").as_bytes());
                    fixed.extend_from_slice(b"\r\n");
                }
                at = p.end;
            }
            fixed.extend_from_slice(&out.buf[at..]);
            out.buf = fixed;
        }
    }
    out.pending.clear();
}
