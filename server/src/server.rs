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
use crate::session::{Admin, After, Out, Part, Session, Settings, Shared, Stats, WriteResult};
use replication::tracker::Target;

/// How long a lone commit polls for its quorum before it parks.
const QUORUM_SPIN: Duration = Duration::from_micros(250);

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
        std::fs::create_dir_all(&config.dir)
            .with_context(|| format!("creating {}", config.dir.display()))?;
        let node_id = replication::identity::new_node_id();
        // The port first: while the node waits for etcd, its primary or its recovery, it
        // answers PING, INFO, ROLE and CONFIG, and data commands get -LOADING (`early`).
        let listener = TcpListener::bind((config.bind.as_str(), config.port))
            .await
            .with_context(|| format!("binding {}:{}", config.bind, config.port))?;
        let early = crate::early::Early::start(
            listener,
            crate::early::EarlyState::new(config.clone(), node_id),
        );
        let status = early.state().clone();
        let node_config = replication::NodeConfig {
            dir: config.dir.clone(),
            name: config.name.clone(),
            primary_password: config.primary_password.clone(),
            max_retained_wal: config.max_retained_wal,
            storage: Options {
                wal_segment_bytes: config.wal_segment_bytes,
                ..Options::default()
            },
            transport: replication::wire::transport::Transport::Tcp,
            node_id,
        };
        let dir = replication::node_dir::NodeDir::new(config.dir.clone());
        // The role: --replicaof, else what a REPLICAOF of an earlier run left in the data
        // directory (so a demoted primary never comes back as a primary by itself).
        let mut role = config.replicaof.clone().or_else(|| dir.load_role());
        // A cluster member registers and asks etcd whom to follow: the leader key decides,
        // not a role file of an earlier run.
        let cluster = config
            .cluster
            .clone()
            .map(|c| Arc::new(replication::cluster::ClusterView::new(c)));
        if let Some(view) = &cluster {
            status.set_phase(format!(
                "joining cluster {} (waiting for etcd)",
                view.config.cluster
            ));
            let (_tx, mut stop_rx) = watch::channel(false);
            let joined = replication::cluster::join(view, dir.has_database(), &mut stop_rx).await?;
            if joined.primary.is_some() {
                role = joined.primary;
            }
            tracing::info!(cluster = %view.config.cluster, follows = role.as_deref().unwrap_or("nobody (a candidate)"), "joined the cluster");
        }
        // A backup swapped in by a reseed or rewind of an earlier run is the node's data,
        // whatever its role now (it may have been promoted since).
        dir.finish_reseed()
            .with_context(|| format!("finishing a reseed in {}", config.dir.display()))?;
        *status.primary.lock() = role.clone();
        // A cluster member with no primary yet is a candidate: not a master until it wins.
        status
            .role_known
            .store(cluster.is_none() || role.is_some(), Ordering::SeqCst);
        if let (Some(primary), None) = (&role, &cluster) {
            // Asked who it is before anything else: a primary address that leads back to
            // this node (its own port, under whatever name) is a mistake to say at once.
            status.set_phase(format!("asking {primary} who it is"));
            if let Err(e) = replication::identity::check_follow(&node_config, primary).await {
                if matches!(e, replication::Error::SelfLink(_)) {
                    anyhow::bail!("refusing to start as a replica: {e}");
                }
                // Said once, by the seed or the stream that tries it next.
                tracing::debug!(%primary, "{e}");
                *status.last_error.lock() = format!("{e:#}");
            }
        }
        // A new replica lays down a base backup from its primary first.
        if let Some(primary) = &role {
            status.set_phase(format!(
                "seeding from {primary} (a new replica copies its primary's pages first)"
            ));
            let (_tx, mut stop_rx) = watch::channel(false);
            replication::seed::seed_if_new(&node_config, primary, &mut stop_rx, &status.last_error)
                .await
                .map_err(|e| match e {
                    replication::Error::SelfLink(_) => {
                        anyhow::anyhow!("refusing to start as a replica: {e}")
                    }
                    e => anyhow::Error::new(e),
                })?;
        }
        status.set_phase("opening the database (recovery replays the log)");
        let open = |replica: bool| {
            let options = Options {
                replica,
                ..node_config.storage.clone()
            };
            let dir = config.dir.clone();
            tokio::task::spawn_blocking(move || Db::open(&dir, options))
        };
        let mut opened = open(role.is_some()).await?;
        // A cluster member whose WAL is damaged does not start as a primary: it waits for
        // another member to take over, then opens as that one's replica (its recovery cuts
        // the log at the damage and the rest comes again from the new primary).
        if let (Err(storage::Error::WalDamaged(d)), Some(view)) = (&opened, &cluster) {
            tracing::error!(damage = %d, "this member's WAL is damaged: it will not lead; waiting for another member to take over, then rejoining as its replica");
            let (_tx, mut stop_rx) = watch::channel(false);
            loop {
                let joined =
                    replication::cluster::join(view, dir.has_database(), &mut stop_rx).await?;
                if let Some(p) = joined.primary {
                    role = Some(p);
                    break;
                }
                tokio::time::sleep(view.config.keepalive_every()).await;
            }
            opened = open(true).await?;
        }
        let db = opened
            .map_err(|e| match e {
                storage::Error::WalDamaged(d) => anyhow::anyhow!(
                    "{d}. Refusing to start as a primary: cutting the log there would drop those \
                 commits. Ways out: if a replica has this log, promote it (REPLICAOF NO ONE) and \
                 start this node with --replicaof pointing at it (it cuts the damaged log and \
                 takes the rest from there); with no copy anywhere, `replidb check --dir {dir}` \
                 lists the damage and `replidb check --dir {dir} --cut-wal-at-damage` keeps the \
                 log up to LSN {lsn}, losing every commit after it",
                    dir = config.dir.display(),
                    lsn = d.lsn,
                ),
                e => anyhow::Error::new(e),
            })
            .with_context(|| format!("opening the database in {}", config.dir.display()))?;
        let metrics = match &config.metrics_addr {
            Some(addr) => {
                let l = crate::metrics::bind(addr).await?;
                if let Ok(at) = l.local_addr() {
                    tracing::info!(metrics_addr = %at, "serving Prometheus metrics at /metrics");
                }
                Some(l)
            }
            None => None,
        };
        let node = Arc::new(replication::Node::new(
            node_config,
            db,
            role.clone(),
            config.sync_standbys.clone(),
        ));
        if cluster.is_some() {
            // No write is taken until this member holds the leader key and its lease.
            node.lease.enable();
        }
        let events = tokio::sync::broadcast::channel(1024).0;
        if let Some(c) = &cluster {
            // The cluster's Sentinel events reach subscribers as any published message.
            let (mut rx, tx) = (c.events.subscribe(), events.clone());
            tokio::spawn(async move {
                loop {
                    match rx.recv().await {
                        Ok((ch, msg)) => {
                            let _ = tx.send((Bytes::from(ch), Bytes::from(msg)));
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                }
            });
        }
        if crate::model::foreign_layout(&node.db().read())? {
            anyhow::bail!(
                "{}: this data directory holds keys written before replidb's typed data model (no format marker): this version cannot read it; keep using the older binary or reload the data into a new directory",
                node.db().dir().display()
            );
        }
        let shared = Arc::new(Shared {
            node: node.clone(),
            events,
            subs: Default::default(),
            cursors: Default::default(),
            watches: Default::default(),
            changed: tokio::sync::watch::channel(0).0,
            cluster: cluster.clone(),
            settings: RwLock::new(Settings {
                requirepass: config.requirepass.clone(),
                sync_commit: config.sync_commit,
                sync_timeout_ms: config.sync_timeout_ms,
            }),
            config,
            stats: Stats::new(),
            started: Instant::now(),
            next_client_id: AtomicU64::new(0),
            queue: parking_lot::Mutex::new(Vec::new()),
            applying: parking_lot::Mutex::new(()),
        });
        tokio::spawn(replication::primary::keep_retention(node.clone()));
        tokio::spawn(crate::sweep::run(shared.clone()));
        tokio::spawn(crate::compaction::auto(shared.clone()));
        if let Some(listener) = metrics {
            tokio::spawn(crate::metrics::serve(shared.clone(), listener));
        }
        if let Some(every) = shared.config.verify_interval {
            tokio::spawn(replication::repair::verify_every(node.clone(), every));
        }
        if let Some(every) = shared.config.scrub_interval {
            tokio::spawn(replication::scrub::scrub_every(
                node.clone(),
                every,
                shared.config.scrub_rate,
            ));
        }
        // What the node learnt while it started is where INFO looks from now on.
        *node.link_error.lock() = status.last_error.lock().clone();
        if let Some(primary) = role {
            replication::replica::start_replica(&node, primary, 0);
        }
        if let Some(view) = cluster {
            tokio::spawn(replication::cluster::run(node.clone(), view));
        }
        let listener = early.finish(shared.clone()).await?;
        Ok(Server { shared, listener })
    }

    /// What the server's connections share (its node, settings and counters).
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Waits until this node serves reads: a primary at once; a replica once its link to the
    /// primary is up and it has replayed past the point where its data is consistent (before
    /// that, reads get `LOADING`). Returns early if the server is shut down meanwhile.
    pub fn ready(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let sh = self.shared.clone();
        // Subscribed now, not at the first poll: a shutdown in between still ends the wait.
        let mut rx = sh.node.applied.subscribe();
        let mut stop = sh.node.shutdown.subscribe();
        async move {
            loop {
                if *stop.borrow_and_update() {
                    return;
                }
                let replica = sh.node.is_replica_role();
                if !replica || (sh.node.link_up.load(Ordering::Relaxed) && sh.loading().is_none()) {
                    return;
                }
                tokio::select! {
                    more = rx.changed() => if more.is_err() { return },
                    _ = stop.changed() => return,
                }
            }
        }
    }

    /// A handle that stops the server when `send(true)` is called on it.
    pub fn shutdown_handle(&self) -> watch::Sender<bool> {
        self.shared.node.shutdown.clone()
    }

    /// Serves until shutdown, then drains connections and closes the database.
    pub async fn run(self) -> Result<()> {
        let Server { shared, listener } = self;
        let mut stop = shared.node.shutdown.subscribe();
        if *stop.borrow() {
            // A shutdown asked for before this started counts too.
            stop.mark_changed();
        }
        let mut conns = JoinSet::new();
        tracing::info!(
            addr = %listener.local_addr()?,
            dir = %shared.config.dir.display(),
            wal_io = shared.db().stats().wal_io,
            "replidb ready to accept connections"
        );
        loop {
            tokio::select! {
                r = listener.accept() => match r {
                    Ok((mut sock, peer)) => {
                        let _ = sock.set_nodelay(true);
                        let sh = shared.clone();
                        sh.stats.connections_total.fetch_add(1, Ordering::Relaxed);
                        // Counted here, on the accepting task, so a burst of connects cannot
                        // all pass the check before any is counted.
                        if sh.stats.connections_now.load(Ordering::Relaxed) >= sh.config.maxclients as u64 {
                            sh.stats.rejected_connections.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(%peer, maxclients = sh.config.maxclients, "connection refused: max number of clients reached");
                            conns.spawn(async move {
                                let _ = sock.write_all(b"-ERR max number of clients reached\r\n").await;
                            });
                            continue;
                        }
                        let slot = ClientSlot::take(sh.clone());
                        conns.spawn(async move {
                            let inbuf = BytesMut::with_capacity(16 * 1024);
                            if let Err(e) = connection(slot.0.clone(), sock, inbuf, Default::default()).await {
                                tracing::debug!(%peer, error = %e, "connection ended with an error");
                            }
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
        let db = shared.db();
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

/// One of `--maxclients`' slots, given back when the connection's task ends — however it
/// ends (a panic in a request included).
struct ClientSlot(Arc<Shared>);

impl ClientSlot {
    fn take(sh: Arc<Shared>) -> ClientSlot {
        sh.stats.connections_now.fetch_add(1, Ordering::Relaxed);
        ClientSlot(sh)
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.stats.connections_now.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves a connection taken before the server was ready (`early`): `inbuf` holds what it
/// sent that was not answered yet; `authed`, whether it passed AUTH meanwhile.
pub(crate) async fn serve_connection(
    sh: Arc<Shared>,
    sock: TcpStream,
    inbuf: BytesMut,
    client: crate::early::EarlyClient,
) -> anyhow::Result<()> {
    sh.stats.connections_total.fetch_add(1, Ordering::Relaxed);
    let slot = ClientSlot::take(sh);
    connection(slot.0.clone(), sock, inbuf, client).await
}

async fn connection(
    sh: Arc<Shared>,
    mut sock: TcpStream,
    mut inbuf: BytesMut,
    client: crate::early::EarlyClient,
) -> Result<()> {
    let mut stop = sh.node.shutdown.subscribe();
    let mut session = Session::new(sh.clone());
    if client.authed {
        session.authed = true;
    }
    // Set up on the early port (HELLO 3, CLIENT SETNAME) before the database was open.
    session.enc.resp3 |= client.resp3;
    if client.name.is_some() {
        session.name = client.name;
    }
    let mut need = 1usize;
    let mut out = Out::default();
    loop {
        // Run every complete request already buffered (pipelining), then reply once.
        let mut after = After::Continue;
        session.begin_batch();
        while inbuf.len() >= need && after == After::Continue {
            match resp::parse(&inbuf) {
                Ok(Parsed::Request { args, len }) => {
                    let frame = inbuf.split_to(len).freeze();
                    let args: Vec<Bytes> = args.into_iter().map(|r| frame.slice(r)).collect();
                    need = 1;
                    after = session.execute(args, &mut out);
                    if matches!(out.parts.last(), Some(Part::Block { .. })) {
                        // Requests after a blocking pop wait for it, as in Redis.
                        break;
                    }
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
        session.count_commands();
        let blocked = out.parts.iter().any(|p| matches!(p, Part::Block { .. }));
        let reply = if blocked {
            // A blocked pop ends when its client goes away: the socket is read meanwhile
            // (what arrives waits in the buffer for the pop to finish), and EOF ends it.
            let fut = finish_batch(&sh, &mut session, &mut out);
            tokio::pin!(fut);
            loop {
                tokio::select! {
                    r = &mut fut => break r,
                    n = sock.read_buf(&mut inbuf), if inbuf.len() < resp::MAX_REQUEST => {
                        if matches!(n, Ok(0) | Err(_)) {
                            return Ok(());
                        }
                    }
                }
            }
        } else {
            finish_batch(&sh, &mut session, &mut out).await
        };
        if !reply.is_empty() {
            sock.write_all(&reply).await?;
        }
        // A replication command: the connection is replication's from here on.
        if after.hands_over() {
            let node = sh.node.clone();
            let r = match after {
                After::Replicate => {
                    replication::primary::serve_replica(node, sock.into(), inbuf).await
                }
                After::Rewind => replication::rewind::serve_rewind(node, sock.into(), inbuf).await,
                After::Pages => replication::repair::serve_pages(node, sock.into(), inbuf).await,
                After::Verify => replication::repair::serve_verify(node, sock.into(), inbuf).await,
                After::Snapshot => {
                    replication::seed::serve_snapshot(node, sock.into(), inbuf).await
                }
                _ => replication::role::serve_control(node, sock.into(), inbuf).await,
            };
            return r.map_err(Into::into);
        }
        if after == After::Close || *stop.borrow() {
            return Ok(());
        }
        if blocked {
            // Requests that came behind the blocking pop are in the buffer: run them first.
            continue;
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
            ev = next_event(&mut session.events) => {
                if let Some((channel, payload)) = ev {
                    let mut b = BytesMut::new();
                    session.deliver(&mut b, &channel, &payload);
                    if !b.is_empty() {
                        sock.write_all(&b).await?;
                    }
                }
            }
            _ = stop.changed() => return Ok(()),
        }
    }
}

/// The next pub/sub event for a subscribed connection (never, for one that is not).
async fn next_event(
    rx: &mut Option<tokio::sync::broadcast::Receiver<(Bytes, Bytes)>>,
) -> Option<(Bytes, Bytes)> {
    match rx {
        None => std::future::pending().await,
        Some(rx) => match rx.recv().await {
            Ok(ev) => Some(ev),
            // Too slow to keep up: the missed events are gone, as in Redis.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => None,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => std::future::pending().await,
        },
    }
}

/// The room a batch's reply buffer starts with.
const REPLY_START: usize = 256;

/// Completes a batch of replies: applies the connection's queued writes (with every other
/// connection's), waits until they are durable at their level — locally, then at the
/// sync-standbys quorum for the remote levels — and encodes their replies, or for writes that
/// did not reach their level the error. Answers `WAIT`s. Returns the bytes to send.
pub(crate) async fn finish_batch(sh: &Shared, session: &mut Session, out: &mut Out) -> BytesMut {
    if !out.has_pending() {
        return out.buf.split();
    }
    let has_writes = out.parts.iter().any(|p| matches!(p, Part::Write(_)));
    if has_writes {
        // Let the other ready connections run their pipelines first, so one apply and one
        // flush carry all their writes (what Redis gets by fsyncing once per event-loop
        // turn). Alone, this costs one extra poll.
        tokio::task::yield_now().await;
        session.apply_own();
    }
    let results: Vec<Option<WriteResult>> = out
        .parts
        .iter()
        .map(|p| match p {
            Part::Write(d) => d.slot.lock().take(),
            _ => None,
        })
        .collect();
    let max = results
        .iter()
        .flatten()
        .filter_map(|r| r.as_ref().ok())
        .map(|(_, lsn)| *lsn)
        .max();
    let durable = match max {
        Some(lsn) => sh
            .db()
            .durable(lsn)
            .await
            .map_err(|e| crate::reply::storage_error(&e)),
        None => Ok(()),
    };
    let flushed = sh.db().flush_lsn();
    // The strongest remote level asked for: one wait covers every write of the batch.
    let remote = out
        .parts
        .iter()
        .filter_map(|p| match p {
            Part::Write(d) => replication::quorum::Level::of(d.level).map(|r| (r, d.level)),
            _ => None,
        })
        .max_by_key(|(r, _)| *r as u8);
    let mut quorum: Result<(), String> = Ok(());
    if let (Some((remote, level)), Some(lsn), Ok(())) = (remote, max, &durable) {
        quorum = wait_quorum(sh, remote, level, lsn).await;
    }
    let now = Instant::now();
    // Sized for the usual short replies, so encoding them does not grow it step by step.
    let mut reply = BytesMut::with_capacity(REPLY_START + out.buf.len());
    for (p, r) in out.parts.drain(..).zip(results) {
        match p {
            Part::Bytes(b) => reply.extend_from_slice(&b),
            Part::Admin(op) => {
                let sh = session.shared.clone();
                let scrub = matches!(op, Admin::Scrub | Admin::Compact);
                let r = match op {
                    Admin::Promote => replication::role::promote(&sh.node).await,
                    Admin::Follow(addr) => replication::role::follow_checked(&sh.node, addr)
                        .await
                        .map(|()| "OK".into()),
                    Admin::Failover(addr, ms) => {
                        let r = replication::role::failover(&sh.node, addr.clone(), Duration::from_millis(ms)).await;
                        if let (Ok(_), Some(view)) = (&r, &sh.cluster) {
                            // The new primary holds the leader key from here.
                            view.hand_over(addr);
                        }
                        r
                    }
                    Admin::Scrub => replication::scrub::scrub(&sh.node, sh.config.scrub_rate)
                        .await
                        .map(|r| r.to_string()),
                    Admin::Compact => {
                        // Its errors carry their own code (READONLY, BUSY, ERR).
                        match crate::compaction::run(
                            &sh,
                            crate::compaction::Pass::Full(crate::compaction::COMMAND_SPARSE_PCT),
                        )
                            .await
                        {
                            Ok(report) => Ok(report),
                            Err(line) => {
                                session.enc.error(&mut reply, &line);
                                continue;
                            }
                        }
                    }
                };
                match r {
                    // SCRUB and COMPACT answer with what they found or did.
                    Ok(report) if scrub => session.enc.bulk(&mut reply, report.as_bytes()),
                    Ok(_) => session.enc.simple(&mut reply, "OK"),
                    Err(e) => session.enc.error(&mut reply, &format!("ERR {e:#}")),
                }
            }
            Part::WaitLsn { lsn, timeout_ms } => match wait_applied(sh, lsn, timeout_ms).await {
                Ok(at) => session.enc.int(&mut reply, at.0 as i64),
                Err(at) => session.enc.error(
                    &mut reply,
                    &format!("TIMEOUT this node has applied up to LSN {at}, not yet {lsn}"),
                ),
            },
            Part::Retry { args, page } => {
                let failed = match page {
                    Some(p) => replication::repair::repair_page(&sh.node, p)
                        .await
                        .err()
                        .map(|e| {
                            format!("CORRUPT page {p} is damaged and was not repaired: {e:#}")
                        }),
                    None => None,
                };
                let gate = storage::Lsn(
                    sh.node
                        .repair_gate
                        .load(std::sync::atomic::Ordering::Acquire),
                );
                let failed = match failed {
                    Some(f) => Some(f),
                    None => wait_applied(sh, gate, REPAIR_WAIT_MS).await.err().map(|at| {
                        format!("TRYAGAIN a repaired page is consistent from LSN {gate}; this replica has applied up to {at}")
                    }),
                };
                match failed {
                    Some(msg) => session.enc.error(&mut reply, &msg),
                    None => {
                        let mut again = Out::default();
                        session.no_repair = true;
                        session.execute(args, &mut again);
                        session.no_repair = false;
                        reply.extend_from_slice(&again.buf);
                    }
                }
            }
            Part::Block { args, deadline } => {
                let got = crate::blocking::block(sh, session, args, deadline).await;
                reply.extend_from_slice(&got);
            }
            Part::Wait {
                replicas,
                timeout_ms,
            } => {
                let n = wait_replicas(sh, session.last_lsn, replicas, timeout_ms).await;
                session.enc.int(&mut reply, n as i64);
            }
            Part::Write(d) => match r {
                // A cluster's primary whose lease lapsed while the write waited (checked
                // here, after every wait of the batch before this reply): another member may
                // be elected by now, so it is not acknowledged.
                Some(Ok((_, lsn))) if !sh.node.lease.holds() => session.enc.error(
                    &mut reply,
                    &format!("TRYAGAIN committed locally at LSN {lsn}, but this member's leader lease in etcd lapsed before the acknowledgement: not acknowledged; retry on the cluster's primary"),
                ),
                Some(Ok(_))
                    if replication::quorum::Level::of(d.level).is_some() && quorum.is_err() =>
                {
                    session
                        .enc
                        .error(&mut reply, quorum.as_ref().err().map_or("", |e| e.as_str()))
                }
                Some(Ok((replies, lsn))) if durable.is_ok() || lsn <= flushed => {
                    for r in &replies {
                        r.encode(&session.enc, &mut reply);
                    }
                    sh.stats
                        .record_commit(d.level, (now - d.since).as_micros() as u64);
                }
                Some(Ok(_)) => session.enc.error(
                    &mut reply,
                    durable
                        .as_ref()
                        .err()
                        .map_or("ERR not durable", |e| e.as_str()),
                ),
                Some(Err(msg)) => session.enc.error(&mut reply, &msg),
                None => session
                    .enc
                    .error(&mut reply, "ERR internal: write result missing"),
            },
        }
    }
    reply.extend_from_slice(&out.buf.split());
    reply
}

/// Waits until the sync-standbys quorum has reached `lsn` at `remote` (at once if no quorum is
/// configured), within the configured timeout. The error is the reply for the writes.
async fn wait_quorum(
    sh: &Shared,
    remote: replication::quorum::Level,
    level: storage::Durability,
    lsn: storage::Lsn,
) -> Result<(), String> {
    let timeout_ms = sh.settings.read().sync_timeout_ms;
    let target = Target::Quorum(remote, lsn);
    // A lone committer polls for its acknowledgement for a moment before it parks: on these
    // VMs waking a parked thread costs tens of microseconds, a fair part of a replica's round
    // trip. It reads the replicas' sockets itself, so an acknowledgement does not wait for a
    // link's feedback thread to wake either. Yielding between polls lets every other task run
    // meanwhile; with other commits waiting too, the first of them to be acknowledged is
    // woken as usual. Under load (more than two writes waiting for replicas) it parks at
    // once: acknowledgements then arrive back to back and the feedback thread is awake
    // anyway, while polling sockets that are mostly empty took a hundred thousand system
    // calls a second from the one event-loop thread (docs/benchmarks.md).
    if sh.node.tracker.waiting().0 == 0 && sh.node.links.few_waiting() {
        let until = Instant::now() + QUORUM_SPIN;
        while Instant::now() < until {
            sh.node.links.poll_feedback(&sh.node);
            if sh.node.tracker.holds(target) {
                return Ok(());
            }
            tokio::task::yield_now().await;
        }
    }
    let wait = sh.node.tracker.wait(target);
    let outcome = tokio::select! {
        r = async {
            if timeout_ms == 0 {
                wait.await;
                true
            } else {
                tokio::time::timeout(Duration::from_millis(timeout_ms), wait).await.is_ok()
            }
        } => if r { None } else { Some("timed out") },
        _ = sh.node.stopped() => Some("the server is shutting down"),
    };
    match outcome {
        None => Ok(()),
        Some(why) => {
            let acks = sh.node.tracker.acks(remote, lsn);
            let cfg = sh
                .node
                .tracker
                .config()
                .map_or_else(String::new, |c| c.to_string());
            Err(format!(
                "NOQUORUM committed locally at LSN {lsn}, acknowledged by {} of {} ({why} waiting for sync-standbys '{cfg}' at {})",
                acks.acked,
                acks.needed,
                level.name()
            ))
        }
    }
}

/// `WAITLSN`: until this node has applied `lsn` (its apply LSN then) or the timeout (0:
/// none) passes (`Err` with the apply LSN reached).
/// How long a read waits for a repaired page to become consistent before `-TRYAGAIN`.
const REPAIR_WAIT_MS: u64 = 30_000;

async fn wait_applied(
    sh: &Shared,
    lsn: storage::Lsn,
    timeout_ms: u64,
) -> Result<storage::Lsn, storage::Lsn> {
    let mut rx = sh.node.applied.subscribe();
    let deadline =
        (timeout_ms > 0).then(|| tokio::time::Instant::now() + Duration::from_millis(timeout_ms));
    loop {
        let at = sh.db().apply_lsn();
        if at >= lsn && sh.node.role.read().verified() && sh.loading().is_none() {
            return Ok(at);
        }
        let changed = async {
            match deadline {
                Some(d) => tokio::time::timeout_at(d, rx.changed()).await.is_ok(),
                None => rx.changed().await.is_ok(),
            }
        };
        tokio::select! {
            more = changed => if !more { return Err(sh.db().apply_lsn()) },
            _ = sh.node.stopped() => return Err(sh.db().apply_lsn()),
        }
    }
}

/// `WAIT`: until `n` replicas have flushed `lsn` or the timeout (0: none) passes; returns
/// how many have.
async fn wait_replicas(sh: &Shared, lsn: storage::Lsn, n: usize, timeout_ms: u64) -> usize {
    let wait = sh.node.tracker.wait(Target::Count(lsn, n));
    tokio::select! {
        _ = async {
            if timeout_ms == 0 {
                wait.await;
            } else {
                let _ = tokio::time::timeout(Duration::from_millis(timeout_ms), wait).await;
            }
        } => {}
        _ = sh.node.stopped() => {}
    }
    sh.node.tracker.count_flushed(lsn)
}
