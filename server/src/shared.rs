//! What every connection shares: the node, the server's settings and counters, and the queue
//! of durable writes that connections apply together.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use storage::{Db, Lsn, WriteTxn};

use crate::config::Config;
use crate::reply::{storage_error, Reply};
use storage::Durability;

/// Settings that `CONFIG SET` can change while running.
#[derive(Clone, Debug)]
pub struct Settings {
    pub requirepass: Option<String>,
    pub sync_commit: Durability,
    /// How long a commit waits for its quorum (0: forever).
    pub sync_timeout_ms: u64,
}

/// Counters for INFO.
pub struct Stats {
    pub commands: AtomicU64,
    pub connections_total: AtomicU64,
    pub connections_now: AtomicU64,
    /// Connections refused at `--maxclients`.
    pub rejected_connections: AtomicU64,
    pub commits: AtomicU64,
    /// Client write transactions submitted, counted before they wait for the writer:
    /// background passes that give way to clients watch it (`compaction::Gate`).
    pub writes_asked: AtomicU64,
    /// Keys the background sweep deleted at their expiry.
    pub expired_keys: AtomicU64,
    /// Members of deleted collections the background sweep removed.
    pub collected_members: AtomicU64,
    /// Connections waiting in BLPOP, BRPOP or BLMOVE.
    pub blocked_clients: AtomicU64,
    /// Commit latency in µs, from the command's execution to its durability being met, one
    /// histogram per durability level (`Durability::ALL`'s order): one lock per write, as
    /// with a single histogram; INFO merges them, /metrics labels them.
    pub commit_latency: [Mutex<hdrhistogram::Histogram<u64>>; 5],
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            commands: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            connections_now: AtomicU64::new(0),
            rejected_connections: AtomicU64::new(0),
            writes_asked: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            expired_keys: AtomicU64::new(0),
            collected_members: AtomicU64::new(0),
            blocked_clients: AtomicU64::new(0),
            commit_latency: std::array::from_fn(|_| Mutex::new(latency_histogram())),
        }
    }

    /// Notes one acknowledged write's commit latency at its level.
    pub fn record_commit(&self, level: storage::Durability, micros: u64) {
        let i = storage::Durability::ALL
            .iter()
            .position(|l| *l == level)
            .unwrap_or(0);
        let _ = self.commit_latency[i].lock().record(micros.max(1));
    }

    /// Every level's commit latencies in one histogram.
    pub fn commit_latency_all(&self) -> hdrhistogram::Histogram<u64> {
        let mut all = latency_histogram();
        for h in &self.commit_latency {
            let _ = all.add(&*h.lock());
        }
        all
    }
}

fn latency_histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
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
    /// What this member knows of its cluster (`--etcd`), if it is in one.
    pub cluster: Option<Arc<replication::cluster::ClusterView>>,
    /// Pub/sub events (channel, payload) for subscribed connections: the cluster's Sentinel
    /// events (`+switch-master`).
    /// and what clients PUBLISH.
    pub events: tokio::sync::broadcast::Sender<(Bytes, Bytes)>,
    /// Subscriptions per channel and pattern (PUBLISH's count).
    pub subs: Mutex<crate::commands::pubsub::Subscribers>,
    pub config: Config,
    pub settings: RwLock<Settings>,
    pub stats: Stats,
    pub started: Instant,
    pub next_client_id: AtomicU64,
    /// Durable writes of all connections waiting to be applied together.
    pub queue: Mutex<Vec<Queued>>,
    /// Held while a group is taken from `queue` and applied: groups are applied in the order
    /// they were queued, so a connection's writes commit in the order it sent them even when
    /// two event-loop threads apply groups (`REPLIDB_THREADS=2`).
    pub applying: Mutex<()>,
    /// SCAN-family cursors handed out.
    pub cursors: crate::cursor::Cursors,
    /// Who watches which keys (WATCH).
    pub watches: crate::watch::Watches,
    /// Counts applied groups that changed some key: blocked pops wait on it.
    pub changed: tokio::sync::watch::Sender<u64>,
}

pub use replication::node::now_us;

/// The error line for a write the node's role refuses.
pub fn role_refusal_message(refusal: &replication::role::WriteRefusal) -> String {
    use replication::role::WriteRefusal;
    match refusal {
        WriteRefusal::ReadOnly => "READONLY You can't write against a read only replica.".into(),
        WriteRefusal::Fenced(why) => format!("FENCED this node is no longer the primary: {why}"),
        WriteRefusal::SwitchingOver => {
            "TRYAGAIN writes are paused for a switchover; retry on the new primary".into()
        }
        WriteRefusal::NoLease => "TRYAGAIN this member has not renewed its leader lease in etcd within --failover-ttl-ms: it takes no writes until it does, or another member takes over".into(),
    }
}

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
    pub(crate) cmds: Vec<Vec<Bytes>>,
    pub(crate) slot: Arc<Mutex<Option<WriteResult>>>,
    /// EXEC: the replies form one array, or nil when a watched key changed first.
    pub(crate) exec: Option<Option<Arc<crate::watch::Watch>>>,
}

/// Writes a group's pending key counts (`model::flush_counts`) as an engine result.
pub(crate) fn counts(tx: &mut WriteTxn<'_>, t: &mut crate::model::Touched) -> storage::Result<()> {
    match crate::model::flush_counts(tx, t) {
        Ok(()) => Ok(()),
        Err(crate::model::Error::Storage(e)) => Err(e),
        // The counters are plain u64s: they always decode.
        Err(crate::model::Error::BadMeta(_)) => Ok(()),
    }
}

/// Milliseconds since the Unix epoch: the clock expiry is measured on.
pub fn now_ms() -> u64 {
    now_us() / 1000
}

/// Runs one queued write inside the group's transaction: its replies (one array for EXEC,
/// nil for an EXEC whose watched keys changed).
pub(crate) fn run_queued(
    tx: &mut WriteTxn<'_>,
    now_ms: u64,
    touched: &mut crate::model::Touched,
    watches: &crate::watch::Watches,
    cmds: &[Vec<Bytes>],
    exec: Option<&Option<Arc<crate::watch::Watch>>>,
) -> storage::Result<Vec<Reply>> {
    if let Some(Some(w)) = exec {
        // Its turn has come: from here on no write can change what it saw.
        watches.unwatch(w);
        // Writes earlier in this group flagged it already (touched below, command by command).
        if w.broken(now_ms) {
            return Ok(vec![Reply::NullArray]);
        }
    }
    let mut v = Vec::with_capacity(cmds.len());
    for c in cmds {
        let mut w = crate::model::Writer {
            tx: &mut *tx,
            now_ms,
            touched: &mut *touched,
        };
        w.touched.keep = watches.active();
        let before = w.touched.keys.len();
        v.push(crate::commands::apply(&mut w, c)?);
        watches.touch(&touched.keys[before..]);
    }
    Ok(match exec {
        Some(_) => vec![Reply::Array(v)],
        None => v,
    })
}

impl Shared {
    /// Applies every queued write as one engine transaction — one commit, one set of page
    /// records, one publish — and hands each owner its replies. Durable writes of concurrent
    /// connections are gathered this way (after each connection has run its pipeline), so a
    /// leaf or the meta page touched by twenty SETs is copied and logged once, not twenty
    /// times. Each connection's write stays atomic: the group is.
    pub fn apply_queued(&self) {
        let _in_order = self.applying.lock();
        let reqs = std::mem::take(&mut *self.queue.lock());
        if reqs.is_empty() {
            return;
        }
        // The role is read once more: a write queued before the node stopped being a primary
        // (fenced, switching over, told to follow) is refused, never committed after it. (Not
        // held while the group is applied: an append can wait on a full disk, and a role
        // change must not wait behind it; a demotion waits for a running write in the engine.)
        let refusal = self.node.write_refusal();
        if let Some(refusal) = refusal {
            let msg = role_refusal_message(&refusal);
            for q in &reqs {
                *q.slot.lock() = Some(Err(msg.clone()));
            }
            return;
        }
        let now = now_ms();
        let mut touched = crate::model::Touched::default();
        let run = |tx: &mut WriteTxn<'_>, q: &Queued, touched: &mut crate::model::Touched| {
            run_queued(tx, now, touched, &self.watches, &q.cmds, q.exec.as_ref())
        };
        let db = self.db();
        let all = db.update_deferred(|tx| {
            let mut all = Vec::with_capacity(reqs.len());
            for q in &reqs {
                all.push(run(tx, q, &mut touched)?);
            }
            counts(tx, &mut touched)?;
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
                // The failed group changed nothing: its pending counts go with it.
                touched.keys_delta = 0;
                touched.expires_delta = 0;
                touched.metas.discard();
                for q in &reqs {
                    let r = db
                        .update_deferred(|tx| {
                            // A request that failed part-way leaves no pending counts behind.
                            touched.keys_delta = 0;
                            touched.expires_delta = 0;
                            touched.metas.discard();
                            let r = run(tx, q, &mut touched)?;
                            counts(tx, &mut touched)?;
                            Ok(r)
                        })
                        .map_err(|e| storage_error(&e));
                    *q.slot.lock() = Some(r);
                }
            }
        }
        if touched.count > 0 {
            self.changed.send_modify(|n| *n += 1);
        }
        self.stats
            .commits
            .fetch_add(reqs.len() as u64, Ordering::Relaxed);
    }
}
