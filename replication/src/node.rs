//! A node as replication sees it: its database (replaced by a reseed), its role, the replicas
//! it serves, and what it knows of the primary it follows. The server holds one `Node` and
//! dispatches to the role files (`primary/`, `replica/`, `seed/`, `rewind`, `role/`); every
//! one of them takes the node.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use storage::{Db, Lsn};

use crate::node_dir::{Gate, NodeDir};
use crate::primary::{Links, WalSignal, KEEPALIVE};
use crate::quorum::SyncStandbys;
use crate::role::{Role, RoleCell};
use crate::tracker::Tracker;

/// What replication needs to know of the node's configuration.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The data directory.
    pub dir: PathBuf,
    /// This node's name, sent to the nodes it follows (`sync-standbys` names it).
    pub name: String,
    /// The password this node gives the primary it follows (`AUTH`), if it asks for one.
    pub primary_password: Option<String>,
    /// WAL a primary keeps for replicas that are behind, at most (`--max-retained-wal`).
    pub max_retained_wal: u64,
    /// How every database of this node is opened — its own, and those laid down by a seed,
    /// reseed or rewind (`replica` is set by the role).
    pub storage: storage::Options,
    /// How this node reaches the others (TCP for a server; an in-process network in tests).
    pub transport: crate::wire::transport::Transport,
    /// This node's id in handshakes (`identity::new_node_id`): random per process, so a node
    /// that reaches itself, or a replica that would close a cycle, is recognised whatever
    /// address led there.
    pub node_id: u64,
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

pub struct Node {
    pub config: NodeConfig,
    /// The files of the data directory that say what the node is (gate, role, reseeds).
    pub dir: NodeDir,
    /// The open database; replaced when a replica is reseeded or rewound (`Node::db`).
    db_slot: RwLock<Arc<Db>>,
    /// Bumped after `db_slot` is replaced: holders of their own `Arc` of the database (one
    /// per client connection) refresh it when this changes, so no shared reference count is
    /// touched per request.
    pub db_gen: AtomicU64,
    /// What the node is now: the one source of truth for taking writes.
    pub role: RoleCell,
    /// Bumped at every role change: a replica stream of an older generation stops.
    pub role_gen: tokio::sync::watch::Sender<u64>,
    /// Serialises role changes (`REPLICAOF`, `FAILOVER`).
    pub role_change: tokio::sync::Mutex<()>,
    /// The running replica stream, if any.
    pub replica_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Set when the node stops: every link and stream ends.
    pub shutdown: tokio::sync::watch::Sender<bool>,
    /// The replicas this node serves (a primary's, or a replica's cascaded ones), their
    /// positions, the sync-standbys quorum, and the commits waiting for it.
    pub tracker: Tracker,
    /// Signalled whenever WAL reaches the files: wakes the replica senders.
    pub wal_signal: Arc<WalSignal>,
    /// Replica links that are caught up: the WAL flusher sends them new WAL itself.
    pub links: Links,
    /// Replica: after a base backup, reads are refused until the apply LSN reaches a point.
    pub gate: Gate,
    /// This node's apply LSN, published for `WAITLSN` waiters.
    pub applied: tokio::sync::watch::Sender<u64>,
    /// Bumped whenever this node's log or database changes under its served links
    /// (promotion, demotion, a rewind, a swapped-in backup): those links end and their
    /// replicas reconnect and get a fresh verdict.
    pub log_gen: AtomicU64,
    /// Replica: how it last rejoined ("streaming", "reseeded: ...").
    pub last_join: Mutex<String>,
    /// Replica: rewinds (log cut back to a fork point) since start.
    pub rewinds: AtomicU64,
    /// Replica: reseeds from a base backup since start.
    pub reseeds: AtomicU64,
    /// Replica: databases opened since start whose damaged WAL recovery cut off (the rest
    /// is refetched from the primary).
    pub wal_repairs: AtomicU64,
    /// Pages repaired from a peer since start.
    pub pages_repaired: AtomicU64,
    /// Reads wait until the apply LSN reaches this: a page repaired from a primary that was
    /// ahead is consistent with the rest only from there.
    pub repair_gate: AtomicU64,
    /// Replica: pages compared with the primary's copies of the same version, and pages found
    /// different (drift) and replaced, since start.
    pub verified_pages: AtomicU64,
    pub drifted_pages: AtomicU64,
    /// One page repair at a time.
    pub(crate) repair_lock: tokio::sync::Mutex<()>,
    /// One scrub at a time; scrubs finished since start, and what the last one found.
    pub(crate) scrub_lock: tokio::sync::Mutex<()>,
    pub scrubs: AtomicU64,
    pub last_scrub: Mutex<String>,
    /// Primary: the retention floor last warned about.
    pub retention_warned: Mutex<Lsn>,
    /// Replica: why the link to the primary last failed (empty while it is up).
    pub link_error: Mutex<String>,
    /// Replica: the primary and its upstreams, nearest first, as the primary's welcome said
    /// (empty on a primary). A node refuses to serve a replica found in it (a cycle).
    pub upstream: Mutex<Vec<crate::frame::ChainLink>>,
    /// Replica: whether the link to the primary is up, and the primary's flush LSN last heard.
    pub link_up: AtomicBool,
    pub primary_flush: AtomicU64,
    /// Replica: when (µs since the epoch) it last received a frame from its primary.
    pub last_heard_us: AtomicU64,
    /// Replica: when (µs since the epoch) it last noticed it was behind, 0 if caught up.
    pub behind_since_us: AtomicU64,
    /// In a cluster, writes are taken only while this lease is known alive (`cluster::lease`).
    pub lease: crate::cluster::Lease,
    /// A cluster's primary: the advertised addresses of the members streaming from it, which
    /// a damaged page is repaired from (a replica repairs from its primary).
    pub repair_peers: Mutex<Vec<String>>,
    /// When this node's log came to hold each stretch of WAL (see `note_written`): how
    /// `lag_ms` learns when a replica's first unapplied record was written.
    flush_times: Arc<Mutex<VecDeque<(Lsn, Instant)>>>,
}

impl Node {
    /// A node around its open database. `primary`: the node it follows, `None` for a primary.
    pub fn new(
        config: NodeConfig,
        db: Db,
        primary: Option<String>,
        sync_standbys: Option<SyncStandbys>,
    ) -> Node {
        let wal_signal = Arc::new(WalSignal::default());
        let tracker = Tracker::new(sync_standbys);
        let dir = NodeDir::on(config.storage.vfs.clone(), config.dir.clone());
        let gate = Gate::load(&dir);
        let role = match primary {
            Some(primary) => Role::Replica {
                primary,
                verified: true,
            },
            None => Role::Primary,
        };
        let node = Node {
            dir,
            db_slot: RwLock::new(Arc::new(db)),
            db_gen: AtomicU64::new(0),
            role: RoleCell::new(role),
            role_gen: tokio::sync::watch::channel(0).0,
            role_change: tokio::sync::Mutex::new(()),
            replica_task: Mutex::new(None),
            shutdown: tokio::sync::watch::channel(false).0,
            links: Links::new(wal_signal.clone(), tracker.clone()),
            tracker,
            wal_signal,
            gate,
            applied: tokio::sync::watch::channel(0).0,
            log_gen: AtomicU64::new(0),
            last_join: Mutex::new(String::new()),
            rewinds: AtomicU64::new(0),
            reseeds: AtomicU64::new(0),
            wal_repairs: AtomicU64::new(0),
            pages_repaired: AtomicU64::new(0),
            repair_gate: AtomicU64::new(0),
            repair_lock: tokio::sync::Mutex::new(()),
            verified_pages: AtomicU64::new(0),
            drifted_pages: AtomicU64::new(0),
            scrub_lock: tokio::sync::Mutex::new(()),
            scrubs: AtomicU64::new(0),
            last_scrub: Mutex::new(String::new()),
            retention_warned: Mutex::new(Lsn(0)),
            link_error: Mutex::new(String::new()),
            upstream: Mutex::new(Vec::new()),
            link_up: AtomicBool::new(false),
            primary_flush: AtomicU64::new(0),
            last_heard_us: AtomicU64::new(0),
            behind_since_us: AtomicU64::new(0),
            flush_times: Default::default(),
            lease: crate::cluster::Lease::new(),
            repair_peers: Mutex::new(Vec::new()),
            config,
        };
        node.note_opened(&node.db());
        node.attach(&node.db());
        node
    }

    /// Counts a database whose damaged WAL its recovery cut off (`wal_repairs`).
    fn note_opened(&self, db: &Db) {
        if let Some(d) = db.wal_damage_cut() {
            self.wal_repairs.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(damage = %d, resume_from = db.apply_lsn().0, "WAL repair: the damaged log was cut; the rest comes again from the primary");
        }
    }

    /// Resolves once the node stops — at once if it has already (a task that starts after
    /// the stop must not wait for a change that came before it).
    pub async fn stopped(&self) {
        let mut rx = self.shutdown.subscribe();
        let _ = rx.wait_for(|stopped| *stopped).await;
    }

    /// Why a write cannot be taken now, if it cannot: the role, then (in a cluster) the
    /// leader's lease.
    pub fn write_refusal(&self) -> Option<crate::role::WriteRefusal> {
        if let Some(r) = self.role.read().write_refusal() {
            return Some(r);
        }
        (!self.lease.holds()).then_some(crate::role::WriteRefusal::NoLease)
    }

    /// The peers a damaged page of this node can be repaired from: a replica's primary, or
    /// a cluster primary's streaming members.
    pub fn repair_sources(&self) -> Vec<String> {
        match self.replicaof() {
            Some(p) => vec![p],
            None => self.repair_peers.lock().clone(),
        }
    }

    /// The database now. Hold the handle only for the request at hand: a reseed or a
    /// promotion waits for every handle to the old database to be dropped.
    pub fn db(&self) -> Arc<Db> {
        self.db_slot.read().clone()
    }

    /// Puts `db` in place of the running database; returns the old one.
    pub(crate) fn replace_db(&self, db: Db) -> Arc<Db> {
        self.note_opened(&db);
        self.attach(&db);
        let old = std::mem::replace(&mut *self.db_slot.write(), Arc::new(db));
        self.db_gen.fetch_add(1, Ordering::Release);
        self.log_gen.fetch_add(1, Ordering::SeqCst);
        old
    }

    /// Whether this node follows a primary.
    pub fn is_replica_role(&self) -> bool {
        self.role.read().is_replica()
    }

    /// The primary this node follows, `None` while it is a primary.
    pub fn replicaof(&self) -> Option<String> {
        self.role.read().primary_addr().map(str::to_string)
    }

    /// `Some((apply LSN, target))` while reads must wait for a seeded replica to become
    /// consistent; lifts the gate (and removes its file) once reached.
    pub fn loading(&self) -> Option<(u64, u64)> {
        self.gate.check(&self.dir, &|| self.db().apply_lsn().0)
    }

    /// Connects the WAL flusher of `db` to the replica links and their signal (and, on a
    /// primary, whose commits are visible before they are written, to `WAITLSN` waiters).
    pub fn attach(&self, db: &Db) {
        let (links, times) = (self.links.clone(), self.flush_times.clone());
        let applied = (!db.is_replica()).then(|| self.applied.clone());
        db.set_wal_listener(Some(Arc::new(move |start, bytes| {
            let end = start.0 + bytes.len() as u64;
            links.wal_written(start, bytes);
            note_written(&times, Lsn(end), Instant::now());
            if let Some(a) = &applied {
                a.send_if_modified(|v| {
                    let up = end > *v;
                    *v = (*v).max(end);
                    up
                });
            }
        })));
    }

    /// Time since this node's log held the oldest record past `applied` (0 if none is).
    pub fn lag_ms_since(&self, applied: Lsn) -> u64 {
        first_sample_past(&self.flush_times.lock(), applied)
            .map_or(0, |t| t.elapsed().as_millis() as u64)
    }

    /// How stale this node's data may be, in ms: 0 on a primary; on a replica, how long it
    /// has been behind what it last heard of the primary — or, when it has heard nothing for
    /// longer than two keepalive intervals (link down, primary stopped), at least the time
    /// since it last heard (it cannot know what it missed).
    pub fn replica_lag_ms(&self) -> u64 {
        if !self.is_replica_role() {
            return 0;
        }
        let db = self.db();
        let lag_bytes = self
            .primary_flush
            .load(Ordering::Relaxed)
            .saturating_sub(db.apply_lsn().0);
        let behind = self.lag_ms(lag_bytes);
        let now = now_us();
        let heard = self.last_heard_us.load(Ordering::Relaxed);
        let silent_ms = now.saturating_sub(heard) / 1000;
        if heard == 0 || silent_ms > 2 * KEEPALIVE.as_millis() as u64 {
            behind.max(silent_ms.min(now / 1000))
        } else {
            behind
        }
    }

    /// Replica: how long it has been behind the primary (0 when `lag_bytes` is 0).
    pub fn lag_ms(&self, lag_bytes: u64) -> u64 {
        let now = now_us();
        if lag_bytes == 0 {
            self.behind_since_us.store(0, Ordering::Relaxed);
            return 0;
        }
        let since = match self.behind_since_us.compare_exchange(
            0,
            now,
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => now,
            Err(s) => s,
        };
        now.saturating_sub(since) / 1000
    }
}

/// Samples kept in `Node::flush_times` (a minute and more at one per millisecond).
pub const FLUSH_TIMES_MAX: usize = 100_000;

/// One `flush_times` sample covers the WAL written within this long of its time.
const FLUSH_TIMES_STEP: Duration = Duration::from_millis(1);

/// Records that the log holds everything before `end` now, as the WAL flusher writes it:
/// one sample per `FLUSH_TIMES_STEP`, holding the time of the first write in it and the end of
/// the last. So the first sample past a replica's apply LSN is at most one step older than
/// the record the replica lacks: `lag_ms` errs by less than a millisecond, and high. (No
/// timer samples the log: an idle server does not wake for it.)
fn note_written(times: &Mutex<VecDeque<(Lsn, Instant)>>, end: Lsn, now: Instant) {
    let mut ft = times.lock();
    // The log was cut back (a promotion dropping an incomplete batch, a rewind) or another
    // database swapped in: samples past its end describe WAL that is gone, and the samples
    // must stay in LSN order for the search in `lag_ms_since`.
    while ft.back().is_some_and(|(l, _)| *l >= end) {
        ft.pop_back();
    }
    match ft.back_mut() {
        Some((l, t)) if now.duration_since(*t) < FLUSH_TIMES_STEP => *l = (*l).max(end),
        _ => {
            if ft.len() >= FLUSH_TIMES_MAX {
                ft.pop_front();
            }
            ft.push_back((end, now));
        }
    }
}

/// The time of the first sample past `applied`: the record after it was written by then.
fn first_sample_past(times: &VecDeque<(Lsn, Instant)>, applied: Lsn) -> Option<Instant> {
    let i = times.partition_point(|(l, _)| *l <= applied);
    times.get(i).map(|(_, t)| *t)
}

/// A node named `r` following `primary`, on a fresh replica database in `dir`: for the
/// crate's tests of the role and rewind paths.
#[cfg(test)]
pub(crate) fn test_replica(dir: &std::path::Path, primary: &str) -> Arc<Node> {
    let config = NodeConfig {
        dir: dir.to_path_buf(),
        name: "r".into(),
        primary_password: None,
        max_retained_wal: 1 << 30,
        storage: storage::Options::default(),
        transport: Default::default(),
        node_id: crate::identity::new_node_id(),
    };
    let options = storage::Options {
        replica: true,
        ..storage::Options::default()
    };
    let db = Db::open(dir, options).expect("open a replica database");
    Arc::new(Node::new(config, db, Some(primary.to_string()), None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_time_samples_never_date_a_record_later_than_it_was_written() {
        let times = Mutex::new(VecDeque::new());
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_micros(n * 1000);
        // Writes at 0, 0.4 and 0.9 ms share one sample (the first write's time); 1.5 ms starts
        // the next, 7 ms (after a pause) the one after.
        note_written(&times, Lsn(100), ms(0));
        note_written(&times, Lsn(250), t0 + Duration::from_micros(400));
        note_written(&times, Lsn(300), t0 + Duration::from_micros(900));
        note_written(&times, Lsn(420), t0 + Duration::from_micros(1500));
        note_written(&times, Lsn(500), ms(7));
        let ft = times.lock();
        assert_eq!(
            ft.iter().copied().collect::<Vec<_>>(),
            [
                (Lsn(300), ms(0)),
                (Lsn(420), t0 + Duration::from_micros(1500)),
                (Lsn(500), ms(7))
            ]
        );
        // The first sample past an apply LSN: for a replica at 260 (lacking the record
        // written at 0.9 ms), the sample of 0 ms — older, never newer, by under a step.
        let first_past = |applied: u64| first_sample_past(&ft, Lsn(applied));
        assert_eq!(first_past(260), Some(ms(0)));
        assert_eq!(first_past(300), Some(t0 + Duration::from_micros(1500)));
        assert_eq!(first_past(450), Some(ms(7)));
        assert_eq!(first_past(500), None, "caught up: no lag");
        drop(ft);
        // Bounded: the oldest samples go first.
        for i in 0..FLUSH_TIMES_MAX as u64 + 5 {
            note_written(&times, Lsn(1000 + i), ms(10 + 2 * i));
        }
        let ft = times.lock();
        assert_eq!(ft.len(), FLUSH_TIMES_MAX);
        assert_eq!(ft.front().map(|s| s.0), Some(Lsn(1005)));
        let last = *ft.back().unwrap();
        drop(ft);
        // A log cut back below the newest samples drops them; the order stays.
        let later = last.1 + Duration::from_millis(5);
        note_written(&times, Lsn(1003), later);
        let ft = times.lock();
        assert_eq!(ft.back().copied(), Some((Lsn(1003), later)));
        assert!(ft.iter().zip(ft.iter().skip(1)).all(|(a, b)| a.0 < b.0));
    }
}
