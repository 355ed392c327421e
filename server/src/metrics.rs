//! Prometheus metrics over HTTP (`--metrics-addr HOST:PORT`, `GET /metrics`).
//!
//! Nothing here touches the commit path: a scrape reads the counters, gauges and latency
//! histograms the node keeps anyway (the same ones INFO reads) and encodes them with the
//! `prometheus-client` crate's text encoder. The listener is its own task; a slow or hostile
//! HTTP client costs one task and at most 8 KiB of buffer, and is dropped after 5 s.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use storage::Durability;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::session::Shared;

/// The commit-latency histogram's bucket bounds, in seconds.
const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A request's head may take this long and this many bytes.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_REQUEST: usize = 8 * 1024;

type Labels = Vec<(&'static str, String)>;

/// One labelled histogram: its labels, sum (seconds), count and per-bucket counts.
type Hist = (Labels, f64, u64, Vec<(f64, u64)>);

#[derive(Debug)]
enum Values {
    Gauge(Vec<(Labels, f64)>),
    Counter(u64),
    /// A counter of seconds.
    Seconds(f64),
    Counters(Vec<(Labels, u64)>),
    Histogram(Vec<Hist>),
}

#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    values: Values,
}

/// Everything one scrape reports, read at once.
#[derive(Debug, Default)]
struct Scrape(Vec<Family>);

impl Scrape {
    fn gauge(&mut self, name: &'static str, help: &'static str, v: f64) {
        self.gauges(name, help, vec![(Vec::new(), v)]);
    }

    fn gauges(&mut self, name: &'static str, help: &'static str, v: Vec<(Labels, f64)>) {
        self.0.push(Family {
            name,
            help,
            values: Values::Gauge(v),
        });
    }

    /// A counter; the encoder appends `_total` to `name`.
    fn counter(&mut self, name: &'static str, help: &'static str, v: u64) {
        self.0.push(Family {
            name,
            help,
            values: Values::Counter(v),
        });
    }
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.0 {
            let kind = match f.values {
                Values::Gauge(_) => MetricType::Gauge,
                Values::Counter(_) | Values::Seconds(_) | Values::Counters(_) => {
                    MetricType::Counter
                }
                Values::Histogram(_) => MetricType::Histogram,
            };
            let mut m = enc.encode_descriptor(f.name, f.help, None, kind)?;
            match &f.values {
                Values::Counter(v) => m.encode_counter::<NoLabelSet, _, u64>(v, None)?,
                Values::Seconds(v) => m.encode_counter::<NoLabelSet, _, f64>(v, None)?,
                Values::Counters(vs) => {
                    for (labels, v) in vs {
                        m.encode_family(labels)?
                            .encode_counter::<NoLabelSet, _, u64>(v, None)?;
                    }
                }
                Values::Gauge(vs) => {
                    for (labels, v) in vs {
                        if labels.is_empty() {
                            m.encode_gauge(v)?;
                        } else {
                            m.encode_family(labels)?.encode_gauge(v)?;
                        }
                    }
                }
                Values::Histogram(hs) => {
                    for (labels, sum, count, buckets) in hs {
                        m.encode_family(labels)?
                            .encode_histogram::<NoLabelSet>(*sum, *count, buckets, None)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// One latency histogram (µs) as Prometheus buckets in seconds: (sum, count, per-bucket
/// counts). The sum is the mean times the count (the histogram keeps no exact sum).
fn buckets(h: &hdrhistogram::Histogram<u64>) -> (f64, u64, Vec<(f64, u64)>) {
    let mut below = 0;
    let mut out = Vec::with_capacity(BUCKETS.len());
    for b in BUCKETS {
        let upto = if h.is_empty() {
            0
        } else {
            h.count_between(0, (b * 1e6) as u64)
        };
        out.push((b, upto - below));
        below = upto;
    }
    (h.mean() * h.len() as f64 / 1e6, h.len(), out)
}

/// The metrics text, as `GET /metrics` answers it.
pub fn render(sh: &Shared) -> String {
    let mut s = Scrape::default();
    let db = sh.db();
    let st = db.stats();
    let role = sh.node.role.get();
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    s.gauge("replidb_up", "1 while the node serves.", 1.0);
    s.gauge(
        "replidb_is_primary",
        "1 on a primary that takes writes (not fenced, not switching over).",
        flag(matches!(role, replication::role::Role::Primary)),
    );
    s.gauge(
        "replidb_fenced",
        "1 on a former primary that saw a newer epoch and refuses writes.",
        flag(matches!(role, replication::role::Role::Fenced { .. })),
    );
    s.gauge(
        "replidb_epoch",
        "The epoch of this node's history.",
        db.epoch() as f64,
    );
    s.gauge(
        "replidb_flush_lsn",
        "WAL position durable on this node's disk (bytes).",
        st.flush_lsn.0 as f64,
    );
    s.gauge(
        "replidb_write_lsn",
        "WAL position written (a primary: committed, maybe not yet durable).",
        if db.is_replica() {
            st.flush_lsn.0
        } else {
            db.written_lsn().0
        } as f64,
    );
    s.gauge(
        "replidb_apply_lsn",
        "WAL position whose changes readers see.",
        db.apply_lsn().0 as f64,
    );
    s.counter(
        "replidb_commits",
        "Writes applied (each request of a group counts once).",
        sh.stats.commits.load(Ordering::Relaxed),
    );
    s.counter(
        "replidb_commands",
        "Commands processed.",
        sh.stats.commands.load(Ordering::Relaxed),
    );
    let hists = Durability::ALL
        .iter()
        .zip(&sh.stats.commit_latency)
        .map(|(level, h)| {
            let (sum, count, b) = buckets(&h.lock());
            (vec![("level", level.name().to_string())], sum, count, b)
        })
        .collect();
    s.0.push(Family {
        name: "replidb_commit_duration_seconds",
        help: "Time from a write's execution to its acknowledgement, by sync-commit level.",
        values: Values::Histogram(hists),
    });
    s.counter(
        "replidb_wal_written_bytes",
        "WAL bytes written (the log's LSN; it falls back only when a rewind cuts the log).",
        st.last_lsn.0,
    );
    s.counter(
        "replidb_wal_fsyncs",
        "WAL flushes to disk (one fsync each; a group commit makes one for many writes).",
        st.wal_flushes,
    );
    s.counter(
        "replidb_checkpoints",
        "Checkpoints: dirty pages written back so the WAL before them can go.",
        st.checkpoints,
    );
    s.0.push(Family {
        name: "replidb_checkpoint_duration_seconds",
        help: "Time spent in checkpoints since the node opened its database.",
        values: Values::Seconds(st.checkpoint_us as f64 / 1e6),
    });
    s.gauge(
        "replidb_last_checkpoint_duration_seconds",
        "How long the last checkpoint took.",
        st.last_checkpoint_us as f64 / 1e6,
    );
    s.gauge(
        "replidb_wal_retained_bytes",
        "WAL kept on disk: for recovery since the last checkpoint, and for replicas and archives that are behind (bounded by --max-retained-wal).",
        st.last_lsn.0.saturating_sub(st.wal_kept_from.0) as f64,
    );
    s.gauge(
        "replidb_dirty_pages",
        "Pages changed since the last checkpoint.",
        st.dirty_pages as f64,
    );
    s.gauge(
        "replidb_page_file_bytes",
        "Size of the page file.",
        st.file_bytes as f64,
    );
    s.gauge(
        "replidb_free_pages",
        "Pages on the free list.",
        st.free_pages as f64,
    );
    s.counter(
        "replidb_leaf_repacks",
        "Leaf repack passes a quiet primary ran by itself.",
        crate::compaction::IDLE_REPACKS.load(Ordering::Relaxed),
    );
    s.counter(
        "replidb_leaf_repacks_paused",
        "Idle leaf repack passes that gave way to writes before their end.",
        crate::compaction::IDLE_REPACKS_PAUSED.load(Ordering::Relaxed),
    );
    s.gauge(
        "replidb_heap_pages",
        "Pages of the value heap (long values).",
        st.heap_pages as f64,
    );
    s.gauge(
        "replidb_heap_live_bytes",
        "Bytes of live values in the value heap's pages.",
        st.heap_live as f64,
    );
    let replicas = sh.node.tracker.snapshot();
    s.gauge(
        "replidb_connected_replicas",
        "Replicas streaming from this node.",
        replicas.iter().filter(|(r, _)| r.pos.connected).count() as f64,
    );
    let lag = |f: &dyn Fn(&replication::quorum::ReplicaPos) -> f64| {
        replicas
            .iter()
            .map(|(r, _)| (vec![("replica", r.pos.name.clone())], f(&r.pos)))
            .collect::<Vec<_>>()
    };
    s.gauges(
        "replidb_replica_lag_bytes",
        "WAL bytes a replica has yet to apply, by replica name (on the node it streams from).",
        lag(&|p| st.flush_lsn.0.saturating_sub(p.apply_lsn.0) as f64),
    );
    s.gauges(
        "replidb_replica_lag_seconds",
        "How long ago this node flushed the oldest record a replica has not applied.",
        lag(&|p| {
            if p.apply_lsn >= st.flush_lsn {
                0.0
            } else {
                sh.node.lag_ms_since(p.apply_lsn) as f64 / 1e3
            }
        }),
    );
    s.gauge(
        "replidb_sync_waiting_commits",
        "Commits waiting for the sync-standbys quorum.",
        sh.node.tracker.waiting().0 as f64,
    );
    if sh.node.replicaof().is_some() {
        let primary_flush = sh.node.primary_flush.load(Ordering::Relaxed);
        s.gauge(
            "replidb_primary_link_up",
            "1 while this replica streams from its primary.",
            flag(sh.node.link_up.load(Ordering::Relaxed)),
        );
        s.gauge(
            "replidb_replay_lag_bytes",
            "WAL bytes the primary has flushed that this replica has not applied.",
            primary_flush.saturating_sub(db.apply_lsn().0) as f64,
        );
        s.gauge(
            "replidb_replay_lag_seconds",
            "This replica's replay lag.",
            sh.node.replica_lag_ms() as f64 / 1e3,
        );
        let loading = sh.loading();
        s.gauge(
            "replidb_loading",
            "1 while a seeded replica replays towards its consistent point (reads get -LOADING).",
            flag(loading.is_some()),
        );
        s.gauge(
            "replidb_loading_remaining_bytes",
            "WAL a seeded or rewound replica still replays before it serves reads (0 once consistent, or while the target is not known yet).",
            loading.map_or(0, |(at, target)| {
                if target == u64::MAX {
                    0
                } else {
                    target.saturating_sub(at)
                }
            }) as f64,
        );
        s.counter(
            "replidb_reseeds",
            "Base backups this replica took from its primary.",
            sh.node.reseeds.load(Ordering::Relaxed),
        );
        s.counter(
            "replidb_rewinds",
            "Rewinds of this replica's divergent WAL.",
            sh.node.rewinds.load(Ordering::Relaxed),
        );
    }
    s.counter(
        "replidb_pages_repaired",
        "Damaged pages repaired from a peer.",
        sh.node.pages_repaired.load(Ordering::Relaxed),
    );
    s.counter(
        "replidb_wal_repairs",
        "Damaged WAL repaired by refetching it from a peer.",
        sh.node.wal_repairs.load(Ordering::Relaxed),
    );
    s.counter(
        "replidb_drifted_pages",
        "Pages a drift check found different from the primary's.",
        sh.node.drifted_pages.load(Ordering::Relaxed),
    );
    let failovers = sh
        .cluster
        .as_ref()
        .and_then(|v| v.state().term.map(|t| t.failovers))
        .unwrap_or(0);
    s.counter(
        "replidb_failovers",
        "Automatic failovers the cluster has made (from etcd; 0 outside a cluster).",
        failovers,
    );
    if let Some(view) = &sh.cluster {
        s.gauge(
            "replidb_lease_remaining_seconds",
            "Time left on this member's leader lease (0 unless it leads).",
            sh.node.lease.remaining_ms() as f64 / 1e3,
        );
        s.gauge(
            "replidb_etcd_up",
            "1 while this member reaches etcd.",
            flag(view.state().etcd_up),
        );
    }
    s.gauge(
        "replidb_connected_clients",
        "Open client connections.",
        sh.stats.connections_now.load(Ordering::Relaxed) as f64,
    );
    s.gauge(
        "replidb_blocked_clients",
        "Connections waiting in BLPOP, BRPOP or BLMOVE.",
        sh.stats.blocked_clients.load(Ordering::Relaxed) as f64,
    );
    s.counter(
        "replidb_connections_received",
        "Connections accepted.",
        sh.stats.connections_total.load(Ordering::Relaxed),
    );
    s.counter(
        "replidb_rejected_connections",
        "Connections refused at --maxclients.",
        sh.stats.rejected_connections.load(Ordering::Relaxed),
    );
    s.0.push(Family {
        name: "replidb_errors",
        help: "Error replies sent to clients, by kind (the error's first word: ERR, WRONGTYPE, NOQUORUM, READONLY, FENCED, TRYAGAIN, ...).",
        values: Values::Counters(
            crate::resp::ERROR_KINDS
                .iter()
                .zip(&crate::resp::ERRORS)
                .map(|(k, n)| (vec![("kind", k.to_string())], n.load(Ordering::Relaxed)))
                .collect(),
        ),
    });
    let snap = db.read();
    let keys = crate::model::key_count(&snap).unwrap_or(0);
    let expires = crate::model::expires_count(&snap).unwrap_or(0);
    drop(snap);
    s.gauge("replidb_keys", "Keys in the keyspace.", keys as f64);
    s.gauge(
        "replidb_expiring_keys",
        "Keys with an expiry.",
        expires as f64,
    );
    s.counter(
        "replidb_expired_keys",
        "Keys deleted at their expiry.",
        sh.stats.expired_keys.load(Ordering::Relaxed),
    );
    s.counter(
        "replidb_collected_members",
        "Members of deleted collections removed in the background.",
        sh.stats.collected_members.load(Ordering::Relaxed),
    );
    let mut registry = Registry::default();
    registry.register_collector(Box::new(s));
    let mut text = String::new();
    match prometheus_client::encoding::prometheus_text::encode(&mut text, &registry) {
        Ok(()) => text,
        Err(_) => "# encoding the metrics failed\n".into(),
    }
}

/// Binds `addr`; an address that cannot be bound stops the start, as the main port does.
pub async fn bind(addr: &str) -> anyhow::Result<TcpListener> {
    use anyhow::Context;
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding --metrics-addr {addr}"))
}

/// Scrapes answered at once, at most (more connections wait in the accept queue).
const MAX_SCRAPERS: usize = 16;

/// Answers HTTP requests on `listener` until the process ends.
pub async fn serve(sh: Arc<Shared>, listener: TcpListener) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPERS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((sock, _)) => {
                let sh = sh.clone();
                tokio::spawn(async move {
                    if let Err(e) = answer(&sh, sock).await {
                        tracing::debug!("metrics request: {e}");
                    }
                    drop(slot);
                });
            }
            Err(e) => {
                tracing::warn!("metrics listener: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Reads one request head and answers it; the connection closes after.
async fn answer(sh: &Shared, mut sock: TcpStream) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    // The whole head within REQUEST_TIMEOUT, not each read of it.
    let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
    let (status, body) = loop {
        let n = match tokio::time::timeout_at(deadline, sock.read(&mut chunk)).await {
            Ok(r) => r?,
            Err(_) => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                let path = req.path.unwrap_or("").split('?').next().unwrap_or("");
                break match (req.method, path) {
                    (Some("GET" | "HEAD"), "/metrics") => ("200 OK", render(sh)),
                    (Some("GET" | "HEAD"), "/") => {
                        ("200 OK", "replidb: metrics are at /metrics\n".into())
                    }
                    (Some("GET" | "HEAD"), _) => {
                        ("404 Not Found", "not found: try /metrics\n".into())
                    }
                    _ => ("405 Method Not Allowed", "only GET and HEAD\n".into()),
                };
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_REQUEST => continue,
            Ok(httparse::Status::Partial) => {
                break (
                    "431 Request Header Fields Too Large",
                    "request head too large\n".into(),
                )
            }
            Err(e) => break ("400 Bad Request", format!("bad request: {e}\n")),
        }
    };
    let head_only = buf.starts_with(b"HEAD ");
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await?;
    if !head_only {
        sock.write_all(body.as_bytes()).await?;
    }
    sock.shutdown().await
}
