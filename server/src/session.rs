//! One client connection: its state, and `execute`, which checks a request (known command,
//! arity, authentication, the role for writes, consistency and lag for reads, MULTI) and
//! hands it to its family in `commands/`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use storage::{Db, Durability, Lsn};

use crate::commands::{self, arity_error, lookup, preview, size_error, Access, Family};
use crate::reply::storage_error;
use crate::resp::Encoder;
pub use crate::shared::{now_us, Queued, Settings, Shared, Stats, WriteResult};

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
    /// A read run again once the damaged page it hit is repaired from a peer (`page`) and
    /// this node's replay has reached the point the repaired page is consistent from.
    Retry {
        args: Vec<Bytes>,
        page: Option<storage::PageId>,
    },
    /// A role change (`REPLICAOF`, `FAILOVER`), run once the writes before it are settled.
    Admin(Admin),
    /// A blocking pop (BLPOP, BRPOP, BLMOVE) waiting for an item until `deadline` (None:
    /// forever).
    Block {
        args: Vec<Bytes>,
        deadline: Option<Instant>,
    },
}

pub struct Deferred {
    pub slot: Arc<Mutex<Option<WriteResult>>>,
    /// The durability the write asked for.
    pub level: Durability,
    pub since: Instant,
    /// Held from queueing until the reply: the WAL sent meanwhile asks the replicas for
    /// what this write waits for.
    pub _sync: Option<replication::primary::SyncCommit>,
}

impl Out {
    /// Queues a reply that is known only later, behind the replies before it.
    pub fn defer(&mut self, part: Part) {
        if !self.buf.is_empty() {
            self.parts.push(Part::Bytes(self.buf.split().freeze()));
        }
        self.parts.push(part);
    }

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
    /// `SCRUB`: read and check every page and the WAL now.
    Scrub,
    /// `COMPACT`: give the value heap's dead bytes back (a whole pass).
    Compact,
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
    /// The connection asks for pages to repair damaged copies (REPLPAGES).
    Pages,
    /// The connection compares a replica's page versions with this node's (REPLVERIFY).
    Verify,
}

impl After {
    /// Whether the connection is replication's from here on.
    pub fn hands_over(self) -> bool {
        matches!(
            self,
            After::Replicate
                | After::Snapshot
                | After::Rewind
                | After::Control
                | After::Pages
                | After::Verify
        )
    }
}

pub struct Session {
    pub shared: Arc<Shared>,
    pub enc: Encoder,
    pub id: u64,
    pub(crate) name: Option<Bytes>,
    pub(crate) authed: bool,
    pub(crate) level: Option<Durability>,
    pub last_lsn: Lsn,
    /// `MAXLAG`: reads fail with -STALE while the replay lag exceeds this.
    pub(crate) max_lag_ms: Option<u64>,
    pub(crate) multi: Option<Vec<Vec<Bytes>>>,
    pub(crate) multi_error: bool,
    /// What the commands queued in MULTI hold (see `MAX_MULTI_BYTES`).
    pub(crate) multi_bytes: usize,
    /// This connection has queued writes that are not applied yet.
    pub(crate) unapplied: Option<Arc<Mutex<Option<WriteResult>>>>,
    /// The database as of `db_gen` (refreshed by `begin_batch`).
    pub(crate) db: Arc<Db>,
    pub(crate) db_gen: u64,
    /// Commands run and not yet added to the shared count.
    pub(crate) commands: u64,
    /// The damaged page the last read hit, if any (see `Part::Retry`).
    pub(crate) corrupt: std::cell::Cell<Option<storage::PageId>>,
    /// Set while a read is run again after a repair: it is not repaired twice.
    pub(crate) no_repair: bool,
    /// Subscribed channels and patterns (`pubsub`), and the events they listen on.
    pub(crate) channels: std::collections::BTreeSet<Vec<u8>>,
    pub(crate) patterns: std::collections::BTreeSet<Vec<u8>>,
    pub events: Option<tokio::sync::broadcast::Receiver<(Bytes, Bytes)>>,
    /// WATCHed keys, until EXEC, DISCARD or UNWATCH.
    pub(crate) watch: Option<crate::watch::Watch>,
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(w) = self.watch.take() {
            self.shared.watches.unwatch(&w);
        }
        self.drop_subscriptions();
    }
}

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
            corrupt: std::cell::Cell::new(None),
            no_repair: false,
            channels: Default::default(),
            patterns: Default::default(),
            events: None,
            watch: None,
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
            multi_bytes: 0,
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
            // Groups are taken and applied one at a time, in queue order (`Shared::applying`):
            // once this returns, every write queued before it is applied — this connection's
            // earlier ones too, whichever thread took them.
            self.shared.apply_queued();
            debug_assert!(slot.lock().is_some(), "a queued write left unapplied");
            if let Some(Ok((_, lsn))) = &*slot.lock() {
                self.last_lsn = *lsn;
            }
        }
    }

    pub(crate) fn level(&self) -> Durability {
        self.level
            .unwrap_or_else(|| self.shared.settings.read().sync_commit)
    }

    pub(crate) fn db(&self) -> Arc<Db> {
        self.shared.db()
    }

    /// Why a write cannot be taken now, if it cannot: a replica, a fenced or paused primary,
    /// too few fresh replicas (`--min-replicas-to-write`).
    fn write_refusal(&self) -> Option<String> {
        let sh = &self.shared;
        // The role alone decides: it becomes Primary only once the database is a primary's.
        if let Some(refusal) = sh.node.write_refusal() {
            return Some(crate::shared::role_refusal_message(&refusal));
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

    pub(crate) fn err(&self, out: &mut Out, msg: &str) {
        self.enc.error(&mut out.buf, msg);
    }

    /// Encodes an engine error of a read, noting a damaged page for repair.
    pub(crate) fn storage_err(&self, buf: &mut BytesMut, e: &storage::Error) {
        if let storage::Error::Corrupt { page, .. } = e {
            self.corrupt.set(Some(*page));
        }
        self.enc.error(buf, &storage_error(e));
    }

    /// Whether reads here repair damaged pages from a peer (a replica, from its primary; a
    /// cluster's primary, from a member streaming from it) and wait for the repair instead
    /// of failing.
    fn repairs(&self) -> bool {
        !self.no_repair
            && (self.shared.node.is_replica_role()
                || !self.shared.node.repair_peers.lock().is_empty())
    }

    /// Runs one request. Replies go to `out`; durable-write replies are marked pending.
    pub fn execute(&mut self, args: Vec<Bytes>, out: &mut Out) -> After {
        if args.is_empty() {
            return After::Continue;
        }
        self.commands += 1;
        let spec = lookup(&args[0]);
        let name = spec.map_or("", |s| s.name);
        let access = spec.map_or(Access::Other, |s| s.access);
        if name == "INFO" {
            self.count_commands();
        }
        let argc = args.len();
        let queues_write = self.multi.is_none() && (access == Access::Write || name == "EXEC");
        if !queues_write {
            self.apply_own();
        }
        if !self.authed && !matches!(name, "AUTH" | "HELLO" | "QUIT") {
            self.err(out, "NOAUTH Authentication required.");
            return After::Continue;
        }
        // A blocking pop on a replica waits for a replicated push and takes the item on the
        // primary (`blocking`); inside MULTI it would pop here, so it is refused there.
        let waits_on_replica = self.multi.is_none()
            && commands::is_blocking(name)
            && matches!(
                self.shared.node.write_refusal(),
                Some(replication::role::WriteRefusal::ReadOnly)
            );
        if (access == Access::Write || matches!(name, "EXEC" | "MULTI")) && !waits_on_replica {
            if let Some(msg) = self.write_refusal() {
                self.err(out, &msg);
                return After::Continue;
            }
        }
        if self.multi.is_some() && !matches!(name, "EXEC" | "DISCARD" | "MULTI" | "QUIT" | "WATCH")
        {
            return self.queue(name, args, out);
        }
        let Some(spec) = spec else {
            let shown: String = String::from_utf8_lossy(&args[0]).chars().take(64).collect();
            self.err(
                out,
                &format!(
                    "ERR unknown command '{shown}', with args beginning with: {}",
                    preview(&args[1..])
                ),
            );
            return After::Continue;
        };
        if let Some(msg) = arity_error(name, argc) {
            self.err(out, &msg);
            return After::Continue;
        }
        if self.subscriptions() > 0
            && !self.enc.resp3
            && !crate::commands::pubsub::allowed_while_subscribed(name)
        {
            self.err(out, &format!("ERR Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context", name.to_ascii_lowercase()));
            return After::Continue;
        }
        if access == Access::Read {
            if let Some((at, target)) = self.shared.loading() {
                self.err(out, &format!("LOADING this replica is catching up after a base backup: applied up to LSN {at}, consistent from LSN {}", if target == u64::MAX { "(not known yet)".to_string() } else { target.to_string() }));
                return After::Continue;
            }
            if let Some(max) = self.max_lag_ms {
                let lag = self.shared.node.replica_lag_ms();
                if lag > max {
                    self.err(out, &format!("STALE this replica's replay lag is {lag} ms, more than MAXLAG {max} ms"));
                    return After::Continue;
                }
            }
            // Point reads check their keys' size first (a write checks in `write_commands`).
            if spec.in_multi {
                if let Some(msg) = size_error(name, &args) {
                    self.err(out, &msg);
                    return After::Continue;
                }
            }
            // A page repaired from the primary is consistent with the rest only once the
            // replay reaches the primary's position at the repair: reads wait until then.
            if self.shared.node.repair_gate.load(Ordering::Acquire) > self.db.apply_lsn().0
                && self.repairs()
            {
                out.defer(Part::Retry { args, page: None });
                return After::Continue;
            }
        }
        let mark = out.buf.len();
        self.corrupt.set(None);
        match (spec.family, access) {
            (_, Access::Write) if commands::is_blocking(name) => {
                match crate::commands::list::block_deadline(&args[args.len() - 1]) {
                    Ok(deadline) => {
                        out.defer(Part::Block { args, deadline });
                    }
                    Err(msg) => self.err(out, msg),
                }
                return After::Continue;
            }
            (_, Access::Write) => {
                self.write_commands(vec![args], out, false);
                return After::Continue;
            }
            (_, Access::Read) => self.data_read(spec, &args, out),
            (Family::Transactions, _) => self.transaction_command(name, &args, out),
            (Family::Connection, _) => return self.connection_command(name, &args, out),
            (Family::Server, _) => return self.server_command(name, &args, out),
            (Family::Replication, _) => return self.replication_command(name, &args, out),
            (Family::Sentinel, _) => return self.sentinel_command(&args, out),
            (Family::PubSub, _) => return self.pubsub_command(name, &args, out),
            _ => self.err(out, "ERR command cannot run here"),
        }
        // A read that hit a damaged page: its error is replaced by the read run again once
        // the page is repaired.
        if let Some(page) = self.corrupt.take().filter(|_| access == Access::Read) {
            if !self.repairs() {
                return After::Continue;
            }
            out.buf.truncate(mark);
            out.defer(Part::Retry {
                args,
                page: Some(page),
            });
        }
        After::Continue
    }

    /// A data read from one snapshot, encoded straight into the reply.
    fn data_read(&mut self, spec: &commands::Spec, args: &[Bytes], out: &mut Out) {
        let now = crate::shared::now_ms();
        let snap = self.db.read();
        // GET, the hottest read, encodes from the page without a copy.
        if spec.name == "GET" {
            match crate::model::lookup(&snap, &args[1], now) {
                Ok(Some(f)) if f.meta.kind == crate::model::Kind::String => {
                    self.enc.bulk(&mut out.buf, f.value());
                }
                Ok(Some(_)) => self.err(out, crate::reply::WRONGTYPE),
                Ok(None) => self.enc.null(&mut out.buf),
                Err(e) => {
                    drop(snap);
                    self.model_err(out, e);
                }
            }
            return;
        }
        // Whole collections go from the pages to the reply in one copy.
        if let Some(r) =
            commands::collection::stream(&snap, now, spec.name, args, &self.enc, &mut out.buf)
        {
            drop(snap);
            if let Err(e) = r {
                self.model_err(out, e);
            }
            return;
        }
        // SCAN-family cursors: the client's number stands for a position the server keeps.
        let scan_at = match spec.name {
            "SCAN" => Some(1),
            "HSCAN" | "SSCAN" | "ZSCAN" => Some(2),
            _ => None,
        };
        let mut translated;
        let mut args = args;
        if let Some(i) = scan_at.filter(|&i| &args[i][..] != b"0") {
            let pos =
                commands::parse_i64(&args[i]).and_then(|id| self.shared.cursors.get(id as u64));
            let Some(pos) = pos else {
                drop(snap);
                self.err(
                    out,
                    "ERR invalid cursor (unknown or expired: start again from 0)",
                );
                return;
            };
            translated = args.to_vec();
            translated[i] = Bytes::from(pos);
            args = &translated;
        }
        let mut r = commands::read(&snap, now, spec, args);
        drop(snap);
        if scan_at.is_some() {
            if let Ok(crate::reply::Reply::Array(v)) = &mut r {
                if let Some(crate::reply::Reply::Bulk(c)) = v.first_mut() {
                    if c.as_slice() != b"0" {
                        let id = self.shared.cursors.put(std::mem::take(c));
                        *c = id.to_string().into_bytes();
                    }
                }
            }
        }
        match r {
            Ok(reply) => reply.encode(&self.enc, &mut out.buf),
            Err(e) => self.model_err(out, e),
        }
    }

    fn model_err(&self, out: &mut Out, e: crate::model::Error) {
        match e {
            crate::model::Error::Storage(e) => self.storage_err(&mut out.buf, &e),
            crate::model::Error::BadMeta(e) => self.err(out, &format!("CORRUPT {e}")),
        }
    }

    /// Runs data commands as one atomic transaction (one commit), marking the reply pending
    /// until the connection's durability level is met. `exec`: EXEC's commands, answered with
    /// one array (or nil when a key it watches changed first).
    pub(crate) fn write_commands(&mut self, cmds: Vec<Vec<Bytes>>, out: &mut Out, exec: bool) {
        // Limits are checked before the transaction so the error names the command's input.
        for c in &cmds {
            if let Some(msg) = size_error(commands::command_name(&c[0]).unwrap_or(""), c) {
                if exec {
                    if let Some(w) = self.watch.take() {
                        self.shared.watches.unwatch(&w);
                    }
                    self.err(out, &format!("EXECABORT {msg}"));
                } else {
                    self.err(out, &msg);
                }
                return;
            }
        }
        self.shared
            .stats
            .writes_asked
            .fetch_add(1, Ordering::Relaxed);
        let since = Instant::now();
        let level = self.level();
        // The registry keeps flagging the watch until the EXEC is applied (`run_queued`).
        let exec = exec.then(|| self.watch.take().map(std::sync::Arc::new));
        if level != Durability::Off {
            // Queued: applied together with the other connections' writes once every ready
            // connection has run its pipeline (`connection` in server.rs).
            let slot = Arc::new(Mutex::new(None));
            let sync = replication::quorum::Level::of(level)
                .map(|r| self.shared.node.links.sync_commit(r, self.db.written_lsn()));
            self.shared.queue.lock().push(Queued {
                cmds,
                slot: slot.clone(),
                exec,
            });
            out.defer(Part::Write(Deferred {
                slot: slot.clone(),
                level,
                since,
                _sync: sync,
            }));
            self.unapplied = Some(slot);
            return;
        }
        // At `off` nobody waits: apply now; the background flusher writes it.
        let sh = self.shared.clone();
        let _in_order = sh.applying.lock();
        let mut touched = crate::model::Touched::default();
        let now = crate::shared::now_ms();
        let r = sh.db().update(Durability::Off, |tx| {
            let r = crate::shared::run_queued(
                tx,
                now,
                &mut touched,
                &sh.watches,
                &cmds,
                exec.as_ref(),
            )?;
            crate::shared::counts(tx, &mut touched)?;
            Ok(r)
        });
        if touched.count > 0 {
            sh.changed.send_modify(|n| *n += 1);
        }
        match r {
            Ok((replies, lsn)) => {
                for r in &replies {
                    r.encode(&self.enc, &mut out.buf);
                }
                self.last_lsn = lsn;
                self.shared.stats.commits.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.err(out, &storage_error(&e)),
        }
    }
}
