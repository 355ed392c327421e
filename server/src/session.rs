//! One client connection's state and its commands.

use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use parking_lot::{Mutex, RwLock};
use storage::{Db, Durability, Lsn, WriteTxn, MAX_KEY, MAX_VALUE};

use crate::config::{Config, Level};
use crate::glob;
use crate::reply::{storage_error, Reply};
use crate::resp::Encoder;

/// Settings that `CONFIG SET` can change while running.
#[derive(Clone, Debug)]
pub struct Settings {
    pub requirepass: Option<String>,
    pub sync_commit: Level,
    /// How long a commit waits for its quorum (0: forever).
    pub sync_timeout_ms: u64,
}

/// Counters for INFO.
pub struct Stats {
    pub commands: AtomicU64,
    pub connections_total: AtomicU64,
    pub connections_now: AtomicU64,
    pub commits: AtomicU64,
    /// Commit latency in µs: from the command's execution to its durability being met.
    pub commit_latency: Mutex<hdrhistogram::Histogram<u64>>,
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            commands: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            connections_now: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            commit_latency: Mutex::new(
                hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3)
                    .expect("valid histogram bounds"),
            ),
        }
    }
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

/// What all connections share: the node (database, role, replication) and the server's own
/// settings, counters and write queue.
pub struct Shared {
    /// The node: its database, role, replica links and what it knows of its primary.
    pub node: Arc<replication::Node>,
    pub config: Config,
    pub settings: RwLock<Settings>,
    pub stats: Stats,
    pub started: Instant,
    pub next_client_id: AtomicU64,
    /// Durable writes of all connections waiting to be applied together.
    pub queue: Mutex<Vec<Queued>>,
}

pub use replication::node::now_us;

impl Shared {
    /// The database now (see `Node::db`).
    pub fn db(&self) -> Arc<Db> {
        self.node.db()
    }

    /// `Some((apply LSN, target))` while reads must wait for a seeded replica to become
    /// consistent (see `Node::loading`).
    pub fn loading(&self) -> Option<(u64, u64)> {
        self.node.loading()
    }
}

/// What a queued write's owner learns: its replies and the LSN to wait for, or an error line.
pub type WriteResult = Result<(Vec<Reply>, Lsn), String>;

/// A write waiting in `Shared::queue`.
pub struct Queued {
    cmds: Vec<Vec<Bytes>>,
    slot: Arc<Mutex<Option<WriteResult>>>,
}

impl Shared {
    /// Applies every queued write as one engine transaction — one commit, one set of page
    /// records, one publish — and hands each owner its replies. Durable writes of concurrent
    /// connections are gathered this way (after each connection has run its pipeline), so a
    /// leaf or the meta page touched by twenty SETs is copied and logged once, not twenty
    /// times. Each connection's write stays atomic: the group is.
    pub fn apply_queued(&self) {
        let reqs = std::mem::take(&mut *self.queue.lock());
        if reqs.is_empty() {
            return;
        }
        let run = |tx: &mut WriteTxn<'_>, q: &Queued| -> storage::Result<Vec<Reply>> {
            let mut v = Vec::with_capacity(q.cmds.len());
            for c in &q.cmds {
                v.push(run_in_tx(tx, c)?);
            }
            Ok(v)
        };
        let db = self.db();
        let all = db.update_deferred(|tx| {
            let mut all = Vec::with_capacity(reqs.len());
            for q in &reqs {
                all.push(run(tx, q)?);
            }
            Ok(all)
        });
        match all {
            Ok((all, lsn)) => {
                for (q, replies) in reqs.iter().zip(all) {
                    *q.slot.lock() = Some(Ok((replies, lsn)));
                }
            }
            // An engine error (a damaged page, say) failed the group and changed nothing:
            // apply the writes one by one so only the affected ones fail.
            Err(_) => {
                for q in &reqs {
                    let r = db
                        .update_deferred(|tx| run(tx, q))
                        .map_err(|e| storage_error(&e));
                    *q.slot.lock() = Some(r);
                }
            }
        }
        self.stats
            .commits
            .fetch_add(reqs.len() as u64, Ordering::Relaxed);
    }
}

/// Replies of one batch of pipelined requests, some of which wait for durability.
#[derive(Default)]
pub struct Out {
    /// Replies since the last deferred write.
    pub buf: BytesMut,
    /// Replies before it, in order: bytes, and durable writes whose replies are known only
    /// once they are applied and durable.
    pub parts: Vec<Part>,
}

pub enum Part {
    Bytes(Bytes),
    Write(Deferred),
    /// `WAIT numreplicas timeout_ms`, answered once the writes before it are settled.
    Wait {
        replicas: usize,
        timeout_ms: u64,
    },
    /// `WAITLSN lsn timeout_ms`.
    WaitLsn {
        lsn: Lsn,
        timeout_ms: u64,
    },
    /// A role change (`REPLICAOF`, `FAILOVER`), run once the writes before it are settled.
    Admin(Admin),
}

pub struct Deferred {
    pub slot: Arc<Mutex<Option<WriteResult>>>,
    /// The durability the write asked for.
    pub level: Level,
    /// EXEC: the replies form one array.
    pub as_array: bool,
    pub since: Instant,
    /// Held from queueing until the reply: the WAL sent meanwhile asks the replicas for
    /// what this write waits for.
    pub _sync: Option<replication::primary::SyncCommit>,
}

impl Out {
    /// Some reply waits for a write or for replicas.
    pub fn has_pending(&self) -> bool {
        !self.parts.is_empty()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty() && self.parts.is_empty()
    }
}

/// Role changes a client can ask for.
#[derive(Clone, Debug)]
pub enum Admin {
    /// `REPLICAOF NO ONE`.
    Promote,
    /// `REPLICAOF host port`.
    Follow(String),
    /// `FAILOVER TO host port [TIMEOUT ms]`.
    Failover(String, u64),
}

/// What the connection does after a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum After {
    Continue,
    /// Send the replies, then close (QUIT, or a protocol error).
    Close,
    /// The connection becomes a replication stream (a replica sent REPLSTREAM).
    Replicate,
    /// The connection carries a base backup to a new replica (REPLSNAPSHOT).
    Snapshot,
    /// The connection carries the pages a diverged node needs to rewind (REPLREWIND).
    Rewind,
    /// The connection carries a switchover's questions to its target (REPLCONTROL).
    Control,
}

impl After {
    /// Whether the connection is replication's from here on.
    pub fn hands_over(self) -> bool {
        matches!(
            self,
            After::Replicate | After::Snapshot | After::Rewind | After::Control
        )
    }
}

pub struct Session {
    pub shared: Arc<Shared>,
    pub enc: Encoder,
    pub id: u64,
    name: Option<Bytes>,
    authed: bool,
    level: Option<Level>,
    pub last_lsn: Lsn,
    /// `MAXLAG`: reads fail with -STALE while the replay lag exceeds this.
    max_lag_ms: Option<u64>,
    multi: Option<Vec<Vec<Bytes>>>,
    multi_error: bool,
    /// This connection has queued writes that are not applied yet.
    unapplied: Option<Arc<Mutex<Option<WriteResult>>>>,
    /// The database as of `db_gen` (refreshed by `begin_batch`).
    db: Arc<Db>,
    db_gen: u64,
    /// Commands run and not yet added to the shared count.
    commands: u64,
}

/// Commands allowed inside MULTI (they run against the transaction at EXEC).
const TX_COMMANDS: &[&str] = &[
    "GET", "SET", "DEL", "EXISTS", "MGET", "MSET", "INCR", "INCRBY", "DECR", "DECRBY", "DBSIZE",
    "PING", "ECHO",
];

impl Session {
    pub fn new(shared: Arc<Shared>) -> Session {
        let id = shared.next_client_id.fetch_add(1, Ordering::Relaxed) + 1;
        let authed = shared.settings.read().requirepass.is_none();
        let db_gen = shared.node.db_gen.load(Ordering::Acquire);
        let db = shared.db();
        Session {
            db,
            db_gen,
            commands: 0,
            shared,
            enc: Encoder::default(),
            id,
            name: None,
            authed,
            level: None,
            last_lsn: Lsn(0),
            max_lag_ms: None,
            multi: None,
            multi_error: false,
            unapplied: None,
        }
    }

    /// Before running a batch of requests: picks up a database swapped in since the last
    /// batch (an idle connection keeps the old one alive until its next request).
    pub fn begin_batch(&mut self) {
        let gen = self.shared.node.db_gen.load(Ordering::Acquire);
        if gen != self.db_gen {
            self.db = self.shared.db();
            self.db_gen = gen;
        }
    }

    /// Adds this connection's commands to the shared count (once per batch, not per
    /// command: the counter's cache line is shared by every connection).
    pub fn count_commands(&mut self) {
        if self.commands > 0 {
            self.shared
                .stats
                .commands
                .fetch_add(std::mem::take(&mut self.commands), Ordering::Relaxed);
        }
    }

    /// Makes this connection's queued writes visible before anything else runs, so a
    /// pipeline reads its own writes.
    pub fn apply_own(&mut self) {
        if let Some(slot) = self.unapplied.take() {
            self.shared.apply_queued();
            // Another connection may have taken the queue a moment earlier and still be
            // applying it on the other thread; it finishes within microseconds.
            while slot.lock().is_none() {
                std::thread::yield_now();
            }
            if let Some(Ok((_, lsn))) = &*slot.lock() {
                self.last_lsn = *lsn;
            }
        }
    }

    fn level(&self) -> Level {
        self.level
            .unwrap_or_else(|| self.shared.settings.read().sync_commit)
    }

    fn db(&self) -> Arc<Db> {
        self.shared.db()
    }

    /// Why a write cannot be taken now, if it cannot: a replica, a fenced or paused primary,
    /// too few fresh replicas (`--min-replicas-to-write`).
    fn write_refusal(&self) -> Option<String> {
        use replication::role::WriteRefusal;
        let sh = &self.shared;
        // The role alone decides: it becomes Primary only once the database is a primary's.
        match sh.node.role.read().write_refusal() {
            None => {}
            Some(WriteRefusal::ReadOnly) => {
                return Some("READONLY You can't write against a read only replica.".into())
            }
            Some(WriteRefusal::Fenced(why)) => {
                return Some(format!("FENCED this node is no longer the primary: {why}"))
            }
            Some(WriteRefusal::SwitchingOver) => {
                return Some(
                    "TRYAGAIN writes are paused for a switchover; retry on the new primary".into(),
                )
            }
        }
        let need = sh.config.min_replicas_to_write;
        if need > 0 {
            let fresh = sh
                .node
                .tracker
                .fresh(now_us() / 1000, sh.config.min_replicas_max_lag_ms);
            if fresh < need {
                return Some(format!(
                    "NOREPLICAS Not enough good replicas to write: {fresh} of {need} connected with lag <= {} ms",
                    sh.config.min_replicas_max_lag_ms
                ));
            }
        }
        None
    }

    fn err(&self, out: &mut Out, msg: &str) {
        self.enc.error(&mut out.buf, msg);
    }

    /// Runs one request. Replies go to `out`; durable-write replies are marked pending.
    pub fn execute(&mut self, args: Vec<Bytes>, out: &mut Out) -> After {
        if args.is_empty() {
            return After::Continue;
        }
        self.commands += 1;
        let name = command_name(&args[0]).unwrap_or("");
        if name == "INFO" {
            self.count_commands();
        }
        let argc = args.len();
        let queues_write = self.multi.is_none()
            && matches!(
                name,
                "SET" | "DEL" | "MSET" | "INCR" | "INCRBY" | "DECR" | "DECRBY" | "EXEC"
            );
        if !queues_write {
            self.apply_own();
        }
        if !self.authed && !matches!(name, "AUTH" | "HELLO" | "QUIT") {
            self.err(out, "NOAUTH Authentication required.");
            return After::Continue;
        }
        if matches!(
            name,
            "SET" | "DEL" | "MSET" | "INCR" | "INCRBY" | "DECR" | "DECRBY" | "EXEC" | "MULTI"
        ) {
            if let Some(msg) = self.write_refusal() {
                self.err(out, &msg);
                return After::Continue;
            }
        }
        if self.multi.is_some() && !matches!(name, "EXEC" | "DISCARD" | "MULTI" | "QUIT") {
            return self.queue(name, args, out);
        }
        if matches!(
            name,
            "GET" | "MGET" | "EXISTS" | "DBSIZE" | "SCAN" | "RANGE"
        ) {
            if let Some((at, target)) = self.shared.loading() {
                self.err(out, &format!("LOADING this replica is catching up after a base backup: applied up to LSN {at}, consistent from LSN {}", if target == u64::MAX { "(not known yet)".to_string() } else { target.to_string() }));
                return After::Continue;
            }
        }
        if let Some(max) = self.max_lag_ms {
            if matches!(
                name,
                "GET" | "MGET" | "EXISTS" | "DBSIZE" | "SCAN" | "RANGE"
            ) {
                let lag = self.shared.node.replica_lag_ms();
                if lag > max {
                    self.err(out, &format!("STALE this replica's replay lag is {lag} ms, more than MAXLAG {max} ms"));
                    return After::Continue;
                }
            }
        }
        match name {
            "GET" | "MGET" | "EXISTS" | "DBSIZE" => {
                if let Some(msg) = arity_error(name, argc).or_else(|| size_error(name, &args)) {
                    self.err(out, &msg);
                } else {
                    self.read_command(name, &args, out);
                }
            }
            "SET" | "DEL" | "MSET" | "INCR" | "INCRBY" | "DECR" | "DECRBY" => {
                if let Some(msg) = arity_error(name, argc) {
                    self.err(out, &msg);
                } else {
                    self.write_commands(vec![args], out, false);
                }
            }
            "SCAN" => self.scan(&args, out),
            "RANGE" => self.range(&args, out),
            "MULTI" => {
                if self.multi.is_some() {
                    self.err(out, "ERR MULTI calls can not be nested");
                } else {
                    self.multi = Some(Vec::new());
                    self.multi_error = false;
                    self.enc.simple(&mut out.buf, "OK");
                }
            }
            "EXEC" => self.exec(out),
            "DISCARD" => {
                if self.multi.take().is_some() {
                    self.enc.simple(&mut out.buf, "OK");
                } else {
                    self.err(out, "ERR DISCARD without MULTI");
                }
            }
            "PING" => match argc {
                1 => self.enc.simple(&mut out.buf, "PONG"),
                2 => self.enc.bulk(&mut out.buf, &args[1]),
                _ => self.err(out, &wrong_arity("ping")),
            },
            "ECHO" => {
                if argc == 2 {
                    self.enc.bulk(&mut out.buf, &args[1]);
                } else {
                    self.err(out, &wrong_arity("echo"));
                }
            }
            "QUIT" => {
                self.enc.simple(&mut out.buf, "OK");
                return After::Close;
            }
            "AUTH" => self.auth(&args[1..], out),
            "HELLO" => self.hello(&args, out),
            "SELECT" => match args.get(1).map(|a| &a[..]) {
                Some(b"0") if argc == 2 => self.enc.simple(&mut out.buf, "OK"),
                Some(_) if argc == 2 => self.err(out, "ERR DB index is out of range (replidb has one database, 0)"),
                _ => self.err(out, &wrong_arity("select")),
            },
            "CLIENT" => self.client(&args, out),
            "COMMAND" => self.command(&args, out),
            "INFO" => {
                let section = args.get(1).map(|s| String::from_utf8_lossy(s).to_ascii_lowercase());
                let text = crate::info::render(&self.shared, section.as_deref());
                self.enc.bulk(&mut out.buf, text.as_bytes());
            }
            "CONFIG" => crate::info::config(self, &args, out),
            "CHECKPOINT" => {
                // Runs inline, like Redis's SAVE: an operator's command, rare, and bounded by
                // the checkpoint distance.
                match self.shared.db().checkpoint() {
                    Ok(()) => self.enc.simple(&mut out.buf, "OK"),
                    Err(e) => self.err(out, &storage_error(&e)),
                }
            }
            "DURABILITY" => match argc {
                1 => self.enc.bulk(&mut out.buf, self.level().name().as_bytes()),
                2 => match Level::parse(&String::from_utf8_lossy(&args[1])) {
                    Some(l) => {
                        self.level = Some(l);
                        self.enc.simple(&mut out.buf, "OK");
                    }
                    None => self.err(out, "ERR durability level must be off, local, remote_write, remote_flush or remote_apply"),
                },
                _ => self.err(out, &wrong_arity("durability")),
            },
            "LSN" => self.enc.int(&mut out.buf, self.last_lsn.0 as i64),
            "REPLICAOF" | "SLAVEOF" => {
                let op = if args[1].eq_ignore_ascii_case(b"no") && args[2].eq_ignore_ascii_case(b"one") {
                    Some(Admin::Promote)
                } else {
                    let host = String::from_utf8_lossy(&args[1]).to_string();
                    match std::str::from_utf8(&args[2]).ok().and_then(|p| p.parse::<u16>().ok()) {
                        Some(port) if !host.is_empty() && port > 0 => {
                            Some(Admin::Follow(format!("{host}:{port}")))
                        }
                        _ => None,
                    }
                };
                match op {
                    Some(op) => {
                        out.parts.push(Part::Bytes(out.buf.split().freeze()));
                        out.parts.push(Part::Admin(op));
                    }
                    None => self.err(out, "ERR REPLICAOF host port, or REPLICAOF NO ONE"),
                }
            }
            "FAILOVER" => {
                let port = std::str::from_utf8(&args[3]).ok().and_then(|p| p.parse::<u16>().ok());
                let timeout = match args.len() {
                    4 => Some(10_000),
                    6 if args[4].eq_ignore_ascii_case(b"timeout") => {
                        parse_i64(&args[5]).filter(|t| *t > 0).map(|t| t as u64)
                    }
                    _ => None,
                };
                match (args[1].eq_ignore_ascii_case(b"to"), port, timeout) {
                    (true, Some(port), Some(ms)) if port > 0 => {
                        let host = String::from_utf8_lossy(&args[2]).to_string();
                        out.parts.push(Part::Bytes(out.buf.split().freeze()));
                        out.parts.push(Part::Admin(Admin::Failover(format!("{host}:{port}"), ms)));
                    }
                    _ => self.err(out, "ERR FAILOVER TO host port [TIMEOUT ms]"),
                }
            }
            "WAITLSN" => match (parse_i64(&args[1]), parse_i64(&args[2])) {
                (Some(lsn), Some(ms)) if lsn >= 0 && ms >= 0 => {
                    out.parts.push(Part::Bytes(out.buf.split().freeze()));
                    out.parts.push(Part::WaitLsn {
                        lsn: Lsn(lsn as u64),
                        timeout_ms: ms as u64,
                    });
                }
                _ => self.err(out, "ERR WAITLSN lsn timeout_ms: two non-negative integers"),
            },
            "MAXLAG" => match args.get(1) {
                None => match self.max_lag_ms {
                    Some(ms) => self.enc.int(&mut out.buf, ms as i64),
                    None => self.enc.bulk(&mut out.buf, b"off"),
                },
                Some(a) if a.eq_ignore_ascii_case(b"off") => {
                    self.max_lag_ms = None;
                    self.enc.simple(&mut out.buf, "OK");
                }
                Some(a) => match parse_i64(a) {
                    Some(ms) if ms >= 0 => {
                        self.max_lag_ms = Some(ms as u64);
                        self.enc.simple(&mut out.buf, "OK");
                    }
                    _ => self.err(out, "ERR MAXLAG ms: a non-negative integer, or off"),
                },
            },
            "WAIT" => {
                let (Some(n), Some(ms)) = (parse_i64(&args[1]), parse_i64(&args[2])) else {
                    self.err(out, "ERR value is not an integer or out of range");
                    return After::Continue;
                };
                if n < 0 || ms < 0 {
                    self.err(out, "ERR numreplicas and timeout must not be negative");
                } else if self.shared.node.is_replica_role() {
                    self.err(out, "ERR WAIT cannot be used with replica instances");
                } else {
                    out.parts.push(Part::Bytes(out.buf.split().freeze()));
                    out.parts.push(Part::Wait {
                        replicas: n as usize,
                        timeout_ms: ms as u64,
                    });
                }
            }
            "DIGEST" => {
                let (lsn, d) = self.db().read().digest();
                self.enc.bulk(&mut out.buf, format!("{lsn} {d:016x}").as_bytes());
            }
            "ROLE" => {
                if let Some(p) = &self.shared.node.replicaof() {
                    let (host, port) = p.rsplit_once(':').unwrap_or((p.as_str(), "0"));
                    let state = if self.shared.node.link_up.load(Ordering::Relaxed) { "connected" } else { "connect" };
                    self.enc.array(&mut out.buf, 5);
                    self.enc.bulk(&mut out.buf, b"slave");
                    self.enc.bulk(&mut out.buf, host.as_bytes());
                    self.enc.int(&mut out.buf, port.parse().unwrap_or(0));
                    self.enc.bulk(&mut out.buf, state.as_bytes());
                    self.enc.int(&mut out.buf, self.db().last_lsn().0 as i64);
                } else {
                    let reps = self.shared.node.tracker.snapshot();
                    self.enc.array(&mut out.buf, 3);
                    self.enc.bulk(&mut out.buf, b"master");
                    self.enc.int(&mut out.buf, self.db().last_lsn().0 as i64);
                    let live: Vec<_> = reps.iter().map(|(r, _)| r).filter(|r| r.pos.connected).collect();
                    self.enc.array(&mut out.buf, live.len());
                    for r in live {
                        let (host, port) = r.addr.rsplit_once(':').unwrap_or((r.addr.as_str(), "0"));
                        self.enc.array(&mut out.buf, 3);
                        self.enc.bulk(&mut out.buf, host.as_bytes());
                        self.enc.bulk(&mut out.buf, port.as_bytes());
                        self.enc.bulk(&mut out.buf, r.pos.apply_lsn.0.to_string().as_bytes());
                    }
                }
            }
            "REPLSTREAM" => return After::Replicate,
            "REPLSNAPSHOT" => return After::Snapshot,
            "REPLREWIND" => return After::Rewind,
            "REPLCONTROL" => return After::Control,
            "SHUTDOWN" => {
                tracing::info!(client = self.id, "SHUTDOWN requested by a client");
                let _ = self.shared.node.shutdown.send(true);
                return After::Close;
            }
            _ => {
                let shown: String = String::from_utf8_lossy(&args[0]).chars().take(64).collect();
                self.err(out, &format!("ERR unknown command '{shown}', with args beginning with: {}", preview(&args[1..])));
            }
        }
        After::Continue
    }

    fn queue(&mut self, name: &str, args: Vec<Bytes>, out: &mut Out) -> After {
        if !TX_COMMANDS.contains(&name) {
            self.multi_error = true;
            let shown = if name.is_empty() {
                String::from_utf8_lossy(&args[0]).chars().take(64).collect()
            } else {
                name.to_ascii_lowercase()
            };
            self.err(
                out,
                &format!("ERR command '{shown}' is not allowed inside MULTI"),
            );
        } else if let Some(msg) = arity_error(name, args.len()) {
            self.multi_error = true;
            self.err(out, &msg);
        } else {
            self.multi.as_mut().expect("in MULTI").push(args);
            self.enc.simple(&mut out.buf, "QUEUED");
        }
        After::Continue
    }

    fn exec(&mut self, out: &mut Out) {
        let Some(cmds) = self.multi.take() else {
            self.err(out, "ERR EXEC without MULTI");
            return;
        };
        if self.multi_error {
            self.err(
                out,
                "EXECABORT Transaction discarded because of previous errors.",
            );
            return;
        }
        self.write_commands(cmds, out, true);
    }

    /// Runs data commands as one atomic transaction (one commit), marking the reply pending
    /// until the connection's durability level is met. `as_array`: reply with an array of
    /// every command's reply (EXEC).
    fn write_commands(&mut self, cmds: Vec<Vec<Bytes>>, out: &mut Out, as_array: bool) {
        // Limits are checked before the transaction so the error names the command's input.
        for c in &cmds {
            if let Some(msg) = size_error(command_name(&c[0]).unwrap_or(""), c) {
                if as_array {
                    self.err(out, &format!("EXECABORT {msg}"));
                } else {
                    self.err(out, &msg);
                }
                return;
            }
        }
        let since = Instant::now();
        let level = self.level();
        if level != Level::Off {
            // Queued: applied together with the other connections' writes once every ready
            // connection has run its pipeline (`connection` in server.rs).
            let slot = Arc::new(Mutex::new(None));
            let sync = level
                .remote()
                .map(|r| self.shared.node.links.sync_commit(r, self.db.written_lsn()));
            self.shared.queue.lock().push(Queued {
                cmds,
                slot: slot.clone(),
            });
            out.parts.push(Part::Bytes(out.buf.split().freeze()));
            out.parts.push(Part::Write(Deferred {
                slot: slot.clone(),
                level,
                as_array,
                since,
                _sync: sync,
            }));
            self.unapplied = Some(slot);
            return;
        }
        // At `off` nobody waits: apply now; the background flusher writes it.
        let r = self.shared.db().update(Durability::Off, |tx| {
            let mut replies = Vec::with_capacity(cmds.len());
            for c in &cmds {
                replies.push(run_in_tx(tx, c)?);
            }
            Ok(replies)
        });
        match r {
            Ok((replies, lsn)) => {
                if as_array {
                    Reply::Array(replies).encode(&self.enc, &mut out.buf);
                } else {
                    for r in &replies {
                        r.encode(&self.enc, &mut out.buf);
                    }
                }
                self.last_lsn = lsn;
                self.shared.stats.commits.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.err(out, &storage_error(&e)),
        }
    }

    fn read_command(&mut self, name: &str, args: &[Bytes], out: &mut Out) {
        let db = &self.db;
        match name {
            "GET" => {
                let snap = db.read();
                match snap.get(&args[1]) {
                    Ok(v) => self.enc.opt_bulk(&mut out.buf, v.as_deref()),
                    Err(e) => self.enc.error(&mut out.buf, &storage_error(&e)),
                }
            }
            "MGET" => {
                let snap = db.read();
                let mut tmp = BytesMut::new();
                for k in &args[1..] {
                    match snap.get(k) {
                        Ok(v) => self.enc.opt_bulk(&mut tmp, v.as_deref()),
                        Err(e) => {
                            drop(snap);
                            self.enc.error(&mut out.buf, &storage_error(&e));
                            return;
                        }
                    }
                }
                self.enc.array(&mut out.buf, args.len() - 1);
                out.buf.extend_from_slice(&tmp);
            }
            "EXISTS" => {
                let snap = db.read();
                let mut n = 0;
                for k in &args[1..] {
                    match snap.get(k) {
                        Ok(v) => n += i64::from(v.is_some()),
                        Err(e) => {
                            drop(snap);
                            self.enc.error(&mut out.buf, &storage_error(&e));
                            return;
                        }
                    }
                }
                self.enc.int(&mut out.buf, n);
            }
            _ => self.enc.int(&mut out.buf, db.len() as i64),
        }
    }

    fn scan(&mut self, args: &[Bytes], out: &mut Out) {
        if args.len() < 2 || !args.len().is_multiple_of(2) {
            self.err(out, &wrong_arity("scan"));
            return;
        }
        let after = match &args[1][..] {
            b"0" => None,
            c => match c.strip_prefix(b"k").and_then(unhex) {
                Some(k) => Some(k),
                None => {
                    self.err(out, "ERR invalid cursor");
                    return;
                }
            },
        };
        let mut pattern: Option<&[u8]> = None;
        let mut count = 10usize;
        for opt in args[2..].chunks(2) {
            match upper(&opt[0]).as_str() {
                "MATCH" => pattern = Some(&opt[1]),
                "COUNT" => match parse_i64(&opt[1]) {
                    Some(n) if n >= 1 => count = (n as usize).min(100_000),
                    _ => {
                        self.err(out, "ERR value is not an integer or out of range");
                        return;
                    }
                },
                "TYPE" => {}
                _ => {
                    self.err(out, "ERR syntax error");
                    return;
                }
            }
        }
        let lower = match &after {
            Some(k) => Bound::Excluded(k.as_slice()),
            None => Bound::Unbounded,
        };
        let db = self.db();
        let snap = db.read();
        let it = match snap.range::<(Bound<&[u8]>, Bound<&[u8]>)>((lower, Bound::Unbounded)) {
            Ok(it) => it,
            Err(e) => {
                drop(snap);
                self.err(out, &storage_error(&e));
                return;
            }
        };
        let mut keys = Vec::new();
        let mut last: Option<Vec<u8>> = None;
        let mut done = true;
        for (examined, e) in it.enumerate() {
            if examined == count {
                done = false;
                break;
            }
            let (k, _) = match e {
                Ok(e) => e,
                Err(e) => {
                    self.enc.error(&mut out.buf, &storage_error(&e));
                    return;
                }
            };
            if pattern.is_none_or(|p| glob::matches(p, &k)) {
                keys.push(k.to_vec());
            }
            last = Some(k.into_owned());
        }
        drop(snap);
        let cursor = match (done, last) {
            (false, Some(k)) => format!("k{}", hex(&k)),
            _ => "0".to_string(),
        };
        self.enc.array(&mut out.buf, 2);
        self.enc.bulk(&mut out.buf, cursor.as_bytes());
        self.enc.array(&mut out.buf, keys.len());
        for k in &keys {
            self.enc.bulk(&mut out.buf, k);
        }
    }

    fn range(&mut self, args: &[Bytes], out: &mut Out) {
        if args.len() != 3 && args.len() != 5 {
            self.err(out, &wrong_arity("range"));
            return;
        }
        let mut limit = usize::MAX;
        if args.len() == 5 {
            if upper(&args[3]) != "LIMIT" {
                self.err(out, "ERR syntax error");
                return;
            }
            match parse_i64(&args[4]) {
                Some(n) if n >= 0 => limit = n as usize,
                _ => {
                    self.err(out, "ERR value is not an integer or out of range");
                    return;
                }
            }
        }
        let lo: Bound<&[u8]> = if &args[1][..] == b"-" {
            Bound::Unbounded
        } else {
            Bound::Included(&args[1])
        };
        let hi: Bound<&[u8]> = if &args[2][..] == b"+" {
            Bound::Unbounded
        } else {
            Bound::Excluded(&args[2])
        };
        if let (Bound::Included(a), Bound::Excluded(b)) = (lo, hi) {
            if a >= b {
                self.enc.array(&mut out.buf, 0);
                return;
            }
        }
        let mut tmp = BytesMut::new();
        let mut n = 0;
        for e in self.db().range((lo, hi)).take(limit) {
            match e {
                Ok((k, v)) => {
                    self.enc.bulk(&mut tmp, &k);
                    self.enc.bulk(&mut tmp, &v);
                    n += 2;
                }
                Err(e) => {
                    self.err(out, &storage_error(&e));
                    return;
                }
            }
        }
        self.enc.array(&mut out.buf, n);
        out.buf.extend_from_slice(&tmp);
    }

    fn auth(&mut self, args: &[Bytes], out: &mut Out) {
        let pass = match args.len() {
            1 => &args[0],
            2 if &args[0][..] == b"default" => &args[1],
            2 => {
                self.err(
                    out,
                    "WRONGPASS invalid username-password pair or user is disabled.",
                );
                return;
            }
            _ => {
                self.err(out, &wrong_arity("auth"));
                return;
            }
        };
        match &self.shared.settings.read().requirepass {
            None => self.err(out, "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?"),
            Some(p) if p.as_bytes() == &pass[..] => {
                self.authed = true;
                self.enc.simple(&mut out.buf, "OK");
            }
            Some(_) => self.err(out, "WRONGPASS invalid username-password pair or user is disabled."),
        }
    }

    fn hello(&mut self, args: &[Bytes], out: &mut Out) {
        let mut proto = if self.enc.resp3 { 3 } else { 2 };
        let mut i = 1;
        if let Some(v) = args.get(1) {
            match parse_i64(v) {
                Some(2) => proto = 2,
                Some(3) => proto = 3,
                _ => {
                    self.err(out, "NOPROTO unsupported protocol version");
                    return;
                }
            }
            i = 2;
        }
        while i < args.len() {
            match upper(&args[i]).as_str() {
                "AUTH" if i + 2 < args.len() => {
                    let mut tmp = Out::default();
                    self.auth(&args[i + 1..i + 3], &mut tmp);
                    if !self.authed {
                        out.buf.extend_from_slice(&tmp.buf);
                        return;
                    }
                    i += 3;
                }
                "SETNAME" if i + 1 < args.len() => {
                    self.name = Some(args[i + 1].clone());
                    i += 2;
                }
                _ => {
                    self.err(out, "ERR syntax error in HELLO");
                    return;
                }
            }
        }
        if !self.authed {
            self.err(out, "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time");
            return;
        }
        self.enc.resp3 = proto == 3;
        let enc = self.enc;
        let b = &mut out.buf;
        enc.map(b, 7);
        enc.bulk(b, b"server");
        enc.bulk(b, b"replidb");
        enc.bulk(b, b"version");
        enc.bulk(b, env!("CARGO_PKG_VERSION").as_bytes());
        enc.bulk(b, b"proto");
        enc.int(b, proto);
        enc.bulk(b, b"id");
        enc.int(b, self.id as i64);
        enc.bulk(b, b"mode");
        enc.bulk(b, b"standalone");
        enc.bulk(b, b"role");
        enc.bulk(b, b"master");
        enc.bulk(b, b"modules");
        enc.array(b, 0);
    }

    fn client(&mut self, args: &[Bytes], out: &mut Out) {
        let sub = args.get(1).map(|s| upper(s)).unwrap_or_default();
        match (sub.as_str(), args.len()) {
            ("SETNAME", 3) => {
                if args[2].iter().any(|&c| c == b' ' || c == b'\n') {
                    self.err(out, "ERR Client names cannot contain spaces, newlines or special characters.");
                } else {
                    self.name = Some(args[2].clone());
                    self.enc.simple(&mut out.buf, "OK");
                }
            }
            ("GETNAME", 2) => {
                let n = self.name.clone();
                self.enc.opt_bulk(&mut out.buf, n.as_deref());
            }
            ("ID", 2) => self.enc.int(&mut out.buf, self.id as i64),
            // Client libraries announce themselves (redis-py, go-redis); nothing to do.
            ("SETINFO", 4) => self.enc.simple(&mut out.buf, "OK"),
            _ => self.err(out, "ERR unknown subcommand or wrong number of arguments for 'client'. Try CLIENT SETNAME, GETNAME, ID, SETINFO."),
        }
    }

    fn command(&mut self, args: &[Bytes], out: &mut Out) {
        match args.get(1).map(|s| upper(s)).as_deref() {
            Some("COUNT") => self.enc.int(&mut out.buf, COMMANDS.len() as i64),
            Some("DOCS") => self.enc.map(&mut out.buf, 0),
            None => {
                // Name, arity, flags, first key, last key, step: enough for clients that look.
                self.enc.array(&mut out.buf, COMMANDS.len());
                for (name, arity) in COMMANDS {
                    self.enc.array(&mut out.buf, 6);
                    self.enc
                        .bulk(&mut out.buf, name.to_ascii_lowercase().as_bytes());
                    self.enc.int(&mut out.buf, *arity);
                    self.enc.array(&mut out.buf, 0);
                    self.enc.int(&mut out.buf, 0);
                    self.enc.int(&mut out.buf, 0);
                    self.enc.int(&mut out.buf, 0);
                }
            }
            Some(_) => self.enc.array(&mut out.buf, 0),
        }
    }

    pub fn set_requirepass(&mut self) {
        // The connection that changed the password stays authenticated.
        self.authed = true;
    }
}

/// Command names and Redis-style arity (negative: at least that many).
pub const COMMANDS: &[(&str, i64)] = &[
    ("GET", 2),
    ("SET", -3),
    ("DEL", -2),
    ("EXISTS", -2),
    ("MGET", -2),
    ("MSET", -3),
    ("INCR", 2),
    ("INCRBY", 3),
    ("DECR", 2),
    ("DECRBY", 3),
    ("DBSIZE", 1),
    ("SCAN", -2),
    ("RANGE", -3),
    ("MULTI", 1),
    ("EXEC", 1),
    ("DISCARD", 1),
    ("PING", -1),
    ("ECHO", 2),
    ("HELLO", -1),
    ("AUTH", -2),
    ("CLIENT", -2),
    ("SELECT", 2),
    ("COMMAND", -1),
    ("INFO", -1),
    ("CONFIG", -2),
    ("CHECKPOINT", 1),
    ("DURABILITY", -1),
    ("LSN", 1),
    ("WAIT", 3),
    ("REPLICAOF", 3),
    ("SLAVEOF", 3),
    ("FAILOVER", -4),
    ("WAITLSN", 3),
    ("MAXLAG", -1),
    ("ROLE", 1),
    ("QUIT", 1),
    ("SHUTDOWN", -1),
    ("REPLSTREAM", 1),
    ("REPLSNAPSHOT", 1),
    ("REPLREWIND", 1),
    ("REPLCONTROL", 1),
    ("DIGEST", 1),
];

fn arity_error(name: &str, argc: usize) -> Option<String> {
    let (_, arity) = COMMANDS.iter().find(|(n, _)| *n == name)?;
    let ok = if *arity >= 0 {
        argc as i64 == *arity
    } else {
        argc as i64 >= -arity
    };
    let extra = match name {
        "MSET" => argc.is_multiple_of(2),
        _ => false,
    };
    if !ok || extra {
        Some(wrong_arity(&name.to_ascii_lowercase()))
    } else {
        None
    }
}

fn wrong_arity(name: &str) -> String {
    format!("ERR wrong number of arguments for '{name}' command")
}

/// Key and value limits of a data command, checked before anything runs.
fn size_error(name: &str, args: &[Bytes]) -> Option<String> {
    // Which arguments are keys and which values: SET k v [opts], MSET k v k v ..., INCRBY k n;
    // everything else takes only keys.
    for (i, a) in args.iter().enumerate().skip(1) {
        let is_value = match name {
            "SET" | "INCRBY" | "DECRBY" => i >= 2,
            "MSET" => i % 2 == 0,
            "PING" | "ECHO" => true,
            _ => false,
        };
        if !is_value && a.len() > MAX_KEY {
            return Some(format!(
                "ERR key too large ({} bytes; the limit is {MAX_KEY})",
                a.len()
            ));
        }
        if is_value && a.len() > MAX_VALUE {
            return Some(format!(
                "ERR value too large ({} bytes; the limit is {MAX_VALUE})",
                a.len()
            ));
        }
    }
    None
}

/// The canonical name of a known command (case-insensitive), without allocating.
pub fn command_name(b: &[u8]) -> Option<&'static str> {
    COMMANDS
        .iter()
        .map(|(n, _)| *n)
        .find(|n| n.len() == b.len() && n.as_bytes().eq_ignore_ascii_case(b))
}

/// One data command against a write transaction. Command errors are replies (the rest of an
/// EXEC still runs, as in Redis); only engine errors abort the transaction.
fn run_in_tx(tx: &mut WriteTxn<'_>, args: &[Bytes]) -> storage::Result<Reply> {
    let name = command_name(&args[0]).unwrap_or("");
    Ok(match name {
        "GET" => tx.get(&args[1])?.map_or(Reply::Null, Reply::Bulk),
        "MGET" => {
            let mut v = Vec::with_capacity(args.len() - 1);
            for k in &args[1..] {
                v.push(tx.get(k)?.map_or(Reply::Null, Reply::Bulk));
            }
            Reply::Array(v)
        }
        "EXISTS" => {
            let mut n = 0;
            for k in &args[1..] {
                n += i64::from(tx.get(k)?.is_some());
            }
            Reply::Int(n)
        }
        "DBSIZE" => Reply::Int(tx.len() as i64),
        "PING" => match args.get(1) {
            Some(m) => Reply::Bulk(m.to_vec()),
            None => Reply::Bulk(b"PONG".to_vec()),
        },
        "ECHO" => Reply::Bulk(args[1].to_vec()),
        "SET" => {
            let (mut nx, mut xx) = (false, false);
            for opt in &args[3..] {
                match upper(opt).as_str() {
                    "NX" => nx = true,
                    "XX" => xx = true,
                    "EX" | "PX" | "EXAT" | "PXAT" | "KEEPTTL" | "GET" => {
                        return Ok(Reply::Error(format!(
                            "ERR SET option {} is not supported by replidb (no expiry)",
                            upper(opt)
                        )))
                    }
                    _ => return Ok(Reply::Error("ERR syntax error".into())),
                }
            }
            if nx && xx {
                return Ok(Reply::Error("ERR syntax error".into()));
            }
            if nx || xx {
                let exists = tx.get(&args[1])?.is_some();
                if (nx && exists) || (xx && !exists) {
                    return Ok(Reply::Null);
                }
            }
            tx.put(&args[1], &args[2])?;
            Reply::Ok
        }
        "MSET" => {
            for kv in args[1..].chunks(2) {
                tx.put(&kv[0], &kv[1])?;
            }
            Reply::Ok
        }
        "DEL" => {
            let mut n = 0;
            for k in &args[1..] {
                n += i64::from(tx.delete(k)?);
            }
            Reply::Int(n)
        }
        "INCR" | "DECR" | "INCRBY" | "DECRBY" => {
            let by = match name {
                "INCR" => 1,
                "DECR" => -1,
                _ => match parse_i64(&args[2]) {
                    Some(n) if name == "INCRBY" => n,
                    Some(n) => match n.checked_neg() {
                        Some(n) => n,
                        None => return Ok(Reply::Error("ERR decrement would overflow".into())),
                    },
                    None => {
                        return Ok(Reply::Error(
                            "ERR value is not an integer or out of range".into(),
                        ))
                    }
                },
            };
            let cur = match tx.get(&args[1])? {
                None => 0,
                Some(v) => match parse_i64(&v) {
                    Some(n) => n,
                    None => {
                        return Ok(Reply::Error(
                            "ERR value is not an integer or out of range".into(),
                        ))
                    }
                },
            };
            match cur.checked_add(by) {
                Some(n) => {
                    tx.put(&args[1], n.to_string().as_bytes())?;
                    Reply::Int(n)
                }
                None => Reply::Error("ERR increment or decrement would overflow".into()),
            }
        }
        other => Reply::Error(format!(
            "ERR command '{}' cannot run here",
            other.to_ascii_lowercase()
        )),
    })
}

/// ASCII upper-case of a command word (lossy for non-UTF-8, which matches nothing anyway).
pub fn upper(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len());
    for &c in b.iter().take(64) {
        s.push(char::from(c.to_ascii_uppercase()));
    }
    s
}

/// Strict decimal i64, as Redis parses numbers: no spaces, no plus sign, no leading zeros.
pub fn parse_i64(b: &[u8]) -> Option<i64> {
    if b.is_empty()
        || b.len() > 20
        || b[0] == b'+'
        || (b.len() > 1 && b[0] == b'0')
        || b.starts_with(b"-0")
    {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &[u8]) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 2 * MAX_KEY {
        return None;
    }
    s.chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok())
        .collect()
}

fn preview(args: &[Bytes]) -> String {
    args.iter()
        .take(3)
        .map(|a| format!("'{}'", String::from_utf8_lossy(&a[..a.len().min(32)])))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_parse_like_redis() {
        assert_eq!(parse_i64(b"42"), Some(42));
        assert_eq!(parse_i64(b"-7"), Some(-7));
        assert_eq!(parse_i64(b"0"), Some(0));
        for bad in [
            &b""[..],
            b"+1",
            b"01",
            b"-0",
            b" 1",
            b"1.5",
            b"99999999999999999999",
            b"abc",
        ] {
            assert_eq!(parse_i64(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn scan_cursors_round_trip() {
        for k in [&b""[..], b"a", b"\x00\xff"] {
            assert_eq!(unhex(hex(k).as_bytes()).as_deref(), Some(k));
        }
        assert_eq!(unhex(b"zz"), None);
        assert_eq!(unhex(b"abc"), None);
    }
}
