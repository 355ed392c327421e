//! INFO sections and CONFIG GET/SET.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use crate::commands::upper;
use crate::glob;
use crate::session::{Out, Session, Shared};
use storage::Durability;

const SECTIONS: &[&str] = &[
    "server",
    "clients",
    "persistence",
    "stats",
    "replication",
    "cluster",
    "keyspace",
];

/// The INFO text for `section` (all sections for none, `all`, `default` or `everything`).
pub fn render(sh: &Shared, section: Option<&str>) -> String {
    let wanted: Vec<&str> = match section {
        None | Some("all") | Some("default") | Some("everything") => SECTIONS.to_vec(),
        Some(s) => SECTIONS.iter().copied().filter(|x| *x == s).collect(),
    };
    let mut o = String::new();
    let db = sh.db();
    for s in wanted {
        if !o.is_empty() {
            o.push_str("\r\n");
        }
        match s {
            "server" => {
                let _ = write!(
                    o,
                    "# Server\r\nreplidb_version:{}\r\nredis_version:7.0.0\r\nprocess_id:{}\r\ntcp_port:{}\r\nbind:{}\r\nuptime_in_seconds:{}\r\ndir:{}\r\n",
                    env!("CARGO_PKG_VERSION"),
                    std::process::id(),
                    sh.config.port,
                    sh.config.bind,
                    sh.started.elapsed().as_secs(),
                    sh.config.dir.display()
                );
            }
            "clients" => {
                let _ = write!(
                    o,
                    "# Clients\r\nconnected_clients:{}\r\nblocked_clients:{}\r\n",
                    sh.stats.connections_now.load(Ordering::Relaxed),
                    sh.stats.blocked_clients.load(Ordering::Relaxed)
                );
            }
            "persistence" => {
                let st = db.stats();
                let _ = write!(
                    o,
                    "# Persistence\r\nwal_io:{}\r\nlast_lsn:{}\r\nflush_lsn:{}\r\nredo_lsn:{}\r\ncheckpoints:{}\r\nwal_flushes:{}\r\ndirty_pages:{}\r\npage_count:{}\r\nfree_pages:{}\r\nheap_pages:{}\r\nheap_live_bytes:{}\r\npage_file_bytes:{}\r\nleaf_repacks:{}\r\nleaf_repacks_paused:{}\r\nscrubs:{}\r\nlast_scrub:{}\r\nloading:{}\r\n",
                    st.wal_io, st.last_lsn, st.flush_lsn, st.redo_lsn, st.checkpoints, st.wal_flushes, st.dirty_pages, st.page_count, st.free_pages, st.heap_pages, st.heap_live, st.file_bytes,
                    crate::compaction::IDLE_REPACKS.load(Ordering::Relaxed),
                    crate::compaction::IDLE_REPACKS_PAUSED.load(Ordering::Relaxed),
                    sh.node.scrubs.load(Ordering::Relaxed),
                    sh.node.last_scrub.lock(),
                    // As Redis has it: 1 while the data is not served yet (a replica that
                    // has not replayed up to its primary's position after a seed).
                    u8::from(db.is_replica() && sh.loading().is_some())
                );
            }
            "stats" => {
                let h = sh.stats.commit_latency_all();
                let q = |x: f64| {
                    if h.is_empty() {
                        0
                    } else {
                        h.value_at_quantile(x)
                    }
                };
                let _ = write!(
                    o,
                    "# Stats\r\ntotal_connections_received:{}\r\nrejected_connections:{}\r\ntotal_commands_processed:{}\r\ntotal_commits:{}\r\ncommit_latency_p50_us:{}\r\ncommit_latency_p99_us:{}\r\ncommit_latency_p999_us:{}\r\ncommit_latency_max_us:{}\r\nexpired_keys:{}\r\ncollected_members:{}\r\n",
                    sh.stats.connections_total.load(Ordering::Relaxed),
                    sh.stats.rejected_connections.load(Ordering::Relaxed),
                    sh.stats.commands.load(Ordering::Relaxed),
                    sh.stats.commits.load(Ordering::Relaxed),
                    q(0.5),
                    q(0.99),
                    q(0.999),
                    if h.is_empty() { 0 } else { h.max() },
                    sh.stats.expired_keys.load(Ordering::Relaxed),
                    sh.stats.collected_members.load(Ordering::Relaxed)
                );
            }
            "cluster" => cluster_section(sh, &mut o),
            "keyspace" => {
                let snap = db.read();
                let keys = crate::model::key_count(&snap).unwrap_or(0);
                let expires = crate::model::expires_count(&snap).unwrap_or(0);
                drop(snap);
                o.push_str("# Keyspace\r\n");
                if keys > 0 {
                    let _ = write!(o, "db0:keys={keys},expires={expires},avg_ttl=0\r\n");
                }
            }
            "replication" => {
                let st = db.stats();
                let set = sh.settings.read();
                let cfg = sh
                    .node
                    .tracker
                    .config()
                    .map_or_else(String::new, |c| c.to_string());
                let (waiting, oldest) = sh.node.tracker.waiting();
                let _ = write!(
                    o,
                    "# Replication\r\nrole:{}\r\nepoch:{}\r\nepoch_history:{}\r\nnode_name:{}\r\nwrite_lsn:{}\r\nflush_lsn:{}\r\napply_lsn:{}\r\nsync_standbys:{cfg}\r\nsync_commit:{}\r\nsync_timeout_ms:{}\r\nsync_waiting_commits:{waiting}\r\nsync_waiting_oldest_lsn:{}\r\npages_repaired:{}\r\nwal_repairs:{}\r\nverified_pages:{}\r\ndrifted_pages:{}\r\n",
                    if db.is_replica() { "replica" } else { "primary" },
                    db.epoch(),
                    db.epoch_history().iter().map(|(e, l)| format!("{e}@{l}")).collect::<Vec<_>>().join(","),
                    sh.config.name,
                    if db.is_replica() { st.flush_lsn } else { db.written_lsn() },
                    st.flush_lsn,
                    db.apply_lsn(),
                    set.sync_commit.name(),
                    set.sync_timeout_ms,
                    oldest.map_or(0, |l| l.0),
                    sh.node.pages_repaired.load(Ordering::Relaxed),
                    sh.node.wal_repairs.load(Ordering::Relaxed),
                    sh.node.verified_pages.load(Ordering::Relaxed),
                    sh.node.drifted_pages.load(Ordering::Relaxed),
                );
                let _ = write!(o, "node_id:{:016x}\r\n", sh.node.config.node_id);
                if let Some(p) = &sh.node.replicaof() {
                    let err = sh.node.link_error.lock().clone();
                    if !err.is_empty() && !sh.node.link_up.load(Ordering::Relaxed) {
                        let _ =
                            write!(o, "primary_link_error:{}\r\n", crate::early::one_line(&err));
                    }
                    let chain: Vec<String> = sh
                        .node
                        .upstream
                        .lock()
                        .iter()
                        .map(|l| chain_name(&l.name))
                        .collect();
                    if !chain.is_empty() {
                        let _ = write!(o, "upstream_chain:{}\r\n", chain.join(","));
                    }
                    let primary_flush = sh.node.primary_flush.load(Ordering::Relaxed);
                    let lag = primary_flush.saturating_sub(db.apply_lsn().0);
                    let _ =
                        write!(
                        o,
                        "primary_addr:{p}\r\nprimary_link:{}\r\nlag_bytes:{lag}\r\nlag_ms:{}\r\nreseeds:{}\r\nrewinds:{}\r\n",
                        if sh.node.link_up.load(Ordering::Relaxed) { "up" } else { "down" },
                        sh.node.replica_lag_ms(),
                        sh.node.reseeds.load(Ordering::Relaxed),
                        sh.node.rewinds.load(Ordering::Relaxed)
                    );
                }
                let role = sh.node.role.get();
                let _ = write!(o, "role_state:{}\r\n", role.name());
                if let replication::role::Role::Fenced { why } = &role {
                    let _ = write!(o, "fenced:{why}\r\n");
                }
                if db.is_replica() {
                    let _ = write!(o, "loading:{}\r\n", u8::from(sh.loading().is_some()));
                }
                let join = sh.node.last_join.lock().clone();
                if !join.is_empty() {
                    let _ = write!(o, "last_join:{join}\r\n");
                }
                // Replicas served by this node (a replica serves cascaded ones).
                let reps = sh.node.tracker.snapshot();
                let _ = write!(
                    o,
                    "connected_replicas:{}\r\n",
                    reps.iter().filter(|(r, _)| r.pos.connected).count()
                );
                for (i, (r, sync)) in reps.iter().enumerate() {
                    let state = match (r.seeding, r.pos.connected, r.streaming) {
                        (true, _, _) => "seeding",
                        (false, false, _) => "disconnected",
                        (false, true, true) => "streaming",
                        (false, true, false) => "catchup",
                    };
                    let p = &r.pos;
                    let _ = write!(
                        o,
                        "replica{i}:name={},addr={},state={state},sync_state={},write_lsn={},flush_lsn={},apply_lsn={},lag_bytes={},lag_ms={}\r\n",
                        p.name,
                        r.addr,
                        sync.name(),
                        p.write_lsn,
                        p.flush_lsn,
                        p.apply_lsn,
                        st.flush_lsn.0.saturating_sub(p.apply_lsn.0),
                        if p.apply_lsn >= st.flush_lsn { 0 } else { sh.node.lag_ms_since(p.apply_lsn) }
                    );
                }
            }
            _ => {}
        }
    }
    o
}

/// Parameters CONFIG GET can show; the settable ones are marked.
/// `INFO cluster`: the etcd-coordinated cluster this node is a member of, if any.
/// (`cluster_enabled:0` always: this is not Redis Cluster, and clients read that field.)
fn cluster_section(sh: &Shared, o: &mut String) {
    o.push_str("# Cluster\r\ncluster_enabled:0\r\n");
    let Some(view) = &sh.cluster else {
        o.push_str("cluster:\r\n");
        return;
    };
    let v = view.state();
    let (leader, leader_addr, leader_state) = v
        .leader
        .as_ref()
        .map_or((String::new(), String::new(), String::new()), |l| {
            (l.name.clone(), l.addr.clone(), l.state.clone())
        });
    let term = v
        .term
        .clone()
        .unwrap_or(replication::cluster::records::Term {
            leader: String::new(),
            addr: String::new(),
            epoch: 0,
            sync_standbys: String::new(),
            failovers: 0,
            last_failover: String::new(),
        });
    let _ = write!(
        o,
        "cluster:{}\r\nmember:{}\r\nadvertise:{}\r\netcd:{}\r\netcd_error:{}\r\nleader:{leader}\r\nleader_addr:{leader_addr}\r\nleader_state:{leader_state}\r\nlease_ttl_ms:{}\r\nlease_remaining_ms:{}\r\nmembers:{}\r\nmembers_reporting:{}\r\nfailovers:{}\r\nlast_failover:{}\r\nleader_changes_seen:{}\r\nfailover_blocked:{}\r\n",
        view.config.cluster,
        view.config.name,
        view.config.advertise,
        if v.etcd_up { "up" } else { "down" },
        v.etcd_error,
        view.config.ttl.as_millis(),
        sh.node.lease.remaining_ms(),
        v.members.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(","),
        v.statuses.len(),
        term.failovers,
        term.last_failover,
        v.leader_changes,
        v.failover_blocked,
    );
}

fn params(sh: &Shared) -> Vec<(&'static str, String, bool)> {
    let set = sh.settings.read();
    let standbys = sh
        .node
        .tracker
        .config()
        .map_or_else(String::new, |c| c.to_string());
    params_of(&sh.config, &set, standbys)
}

/// `CONFIG GET`'s parameters (name, value, settable) from the configuration and settings.
pub fn params_of(
    config: &crate::config::Config,
    set: &crate::shared::Settings,
    sync_standbys: String,
) -> Vec<(&'static str, String, bool)> {
    vec![
        ("dir", config.dir.display().to_string(), false),
        ("bind", config.bind.clone(), false),
        ("port", config.port.to_string(), false),
        (
            "requirepass",
            set.requirepass.clone().unwrap_or_default(),
            true,
        ),
        ("sync-commit", set.sync_commit.name().to_string(), true),
        ("sync-standbys", sync_standbys, true),
        ("sync-timeout-ms", set.sync_timeout_ms.to_string(), true),
        // Asked by redis-benchmark and other tools; replidb always logs and fsyncs.
        ("appendonly", "yes".to_string(), false),
        ("save", String::new(), false),
        ("databases", "1".to_string(), false),
    ]
}

/// `CONFIG GET pattern...`'s reply: every parameter matching one of the patterns, once.
pub fn config_get(
    enc: crate::resp::Encoder,
    buf: &mut bytes::BytesMut,
    all: &[(&'static str, String, bool)],
    patterns: &[Bytes],
) {
    let mut hits: Vec<(&str, String)> = Vec::new();
    for pat in patterns {
        let pat = pat.to_ascii_lowercase();
        for (name, value, _) in all {
            if glob::matches(&pat, name.as_bytes()) && !hits.iter().any(|(n, _)| n == name) {
                hits.push((name, value.clone()));
            }
        }
    }
    enc.map(buf, hits.len());
    for (n, v) in hits {
        enc.bulk(buf, n.as_bytes());
        enc.bulk(buf, v.as_bytes());
    }
}

pub fn config(s: &mut Session, args: &[Bytes], out: &mut Out) {
    let sub = args.get(1).map(|a| upper(a)).unwrap_or_default();
    let enc = s.enc;
    match (sub.as_str(), args.len()) {
        ("GET", n) if n >= 3 => config_get(enc, &mut out.buf, &params(&s.shared), &args[2..]),
        ("SET", n) if n >= 4 && n % 2 == 0 => {
            for pair in args[2..].chunks(2) {
                let name = String::from_utf8_lossy(&pair[0]).to_ascii_lowercase();
                let value = String::from_utf8_lossy(&pair[1]).to_string();
                match name.as_str() {
                    "requirepass" => {
                        s.shared.settings.write().requirepass = Some(value).filter(|v| !v.is_empty());
                        s.set_requirepass();
                    }
                    // In a cluster the election proves writes against the quorum recorded
                    // in etcd; changing it here first would leave a window where the record
                    // claims a stronger quorum than the primary used.
                    "sync-standbys" | "sync_standbys" if s.shared.cluster.is_some() => {
                        enc.error(&mut out.buf, "ERR sync-standbys cannot change at run time in a cluster: the election reads it from etcd; restart the members with the new --sync-standbys");
                        return;
                    }
                    "sync-standbys" | "sync_standbys" => {
                        match replication::quorum::SyncStandbys::parse(&value) {
                            Ok(cfg) => {
                                tracing::info!(sync_standbys = %value, "sync-standbys changed");
                                s.shared.node.tracker.set_config(cfg);
                            }
                            Err(e) => {
                                enc.error(&mut out.buf, &format!("ERR {e}"));
                                return;
                            }
                        }
                    }
                    "sync-timeout-ms" | "sync_timeout_ms" => match value.parse::<u64>() {
                        Ok(ms) => s.shared.settings.write().sync_timeout_ms = ms,
                        Err(_) => {
                            enc.error(&mut out.buf, "ERR sync-timeout-ms must be a number of milliseconds (0: wait forever)");
                            return;
                        }
                    },
                    "sync-commit" | "sync_commit" => match Durability::parse(&value) {
                        Some(l) => s.shared.settings.write().sync_commit = l,
                        None => {
                            enc.error(&mut out.buf, "ERR sync-commit must be off, local, remote_write, remote_flush or remote_apply");
                            return;
                        }
                    },
                    other => {
                        let known = params(&s.shared).iter().any(|(n, _, _)| *n == other);
                        let msg = if known {
                            format!("ERR CONFIG SET {other}: not changeable while running (restart with the new value)")
                        } else {
                            format!("ERR Unknown option or number of arguments for CONFIG SET - '{other}'")
                        };
                        enc.error(&mut out.buf, &msg);
                        return;
                    }
                }
            }
            enc.simple(&mut out.buf, "OK");
        }
        ("RESETSTAT", 2) => {
            for h in &s.shared.stats.commit_latency {
                h.lock().reset();
            }
            enc.simple(&mut out.buf, "OK");
        }
        _ => enc.error(&mut out.buf, "ERR unknown subcommand or wrong number of arguments for 'config'. Try CONFIG GET, SET, RESETSTAT."),
    }
}

/// A node name as one item of `upstream_chain`: names come from peers, so anything that
/// would break the field (line ends, other control bytes, the comma between items) is `_`.
fn chain_name(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_control() || c == ',' { '_' } else { c })
        .collect()
}

#[cfg(test)]
mod chain_name_tests {
    #[test]
    fn a_peer_name_cannot_break_the_info_field() {
        assert_eq!(
            super::chain_name("a,b\r\nrole:primary"),
            "a_b__role:primary"
        );
        assert_eq!(super::chain_name("node-2"), "node-2");
    }
}
