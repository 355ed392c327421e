//! The cluster loop: one etcd session at a time (a lease kept alive, a watch on the cluster's
//! prefix), and on every change or tick one read of the whole prefix and one decision —
//! lead, follow the leader, or, with the leader key vacant, report this member's position
//! and run the election (`election::decide`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};

use super::election::{decide, Decision, OldPrimary, Report};
use super::records::{Keys, Leader, Member, Status, Term};
use super::{ClusterConfig, ClusterView};
use crate::node::Node;
use crate::quorum::SyncStandbys;
use crate::role::Role;

type Res<T> = std::result::Result<T, String>;

fn etcd_err(what: &str) -> impl Fn(etcd_client::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// A client of one etcd endpoint that answers a linearizable read (so it is part of a
/// working quorum), trying them in turn from the one last used. One endpoint at a time: a
/// client balanced over all of them sends some requests to a dead member, and every such
/// failure would end the session.
async fn connect(view: &ClusterView) -> Res<Client> {
    let cfg = &view.config;
    let n = cfg.endpoints.len().max(1);
    let first = view.endpoint.load(Ordering::Relaxed);
    let mut errors = Vec::new();
    for i in 0..n {
        let at = (first + i) % n;
        let ep = &cfg.endpoints[at];
        let opts = ConnectOptions::new()
            .with_connect_timeout(cfg.ttl / 2)
            .with_timeout(cfg.ttl / 2);
        let probe = async {
            let mut c = Client::connect([ep.as_str()], Some(opts)).await?;
            c.get(Keys::new(&cfg.cluster).leader(), None).await?;
            Ok::<_, etcd_client::Error>(c)
        };
        match probe.await {
            Ok(c) => {
                view.endpoint.store(at, Ordering::Relaxed);
                return Ok(c);
            }
            Err(e) => errors.push(format!("{ep}: {e}")),
        }
    }
    Err(format!("connecting to etcd: {}", errors.join("; ")))
}

/// One read of the cluster's keys.
#[derive(Default)]
struct Snapshot {
    rev: i64,
    /// The leader, its key's create revision and lease.
    leader: Option<(Leader, i64, i64)>,
    /// The term and its key's mod revision.
    term: Option<(Term, i64)>,
    members: Vec<Member>,
    statuses: Vec<(Status, i64)>,
    /// A leader or term key exists but this version cannot read it: nobody may treat the
    /// leader key as vacant, nor prove anything against the term.
    unreadable: Option<String>,
    /// The member that bootstrapped the cluster (the first member), if any.
    bootstrap: Option<String>,
    /// The highest epoch a claim of the leader key handed out, and the key's mod revision.
    epoch: Option<(u32, i64)>,
}

async fn read(client: &mut Client, keys: &Keys) -> Res<Snapshot> {
    let resp = client
        .get(keys.prefix.as_str(), Some(GetOptions::new().with_prefix()))
        .await
        .map_err(etcd_err("reading the cluster's keys"))?;
    let mut s = Snapshot {
        rev: resp.header().map_or(0, |h| h.revision()),
        ..Snapshot::default()
    };
    for kv in resp.kvs() {
        let key = String::from_utf8_lossy(kv.key());
        let Some(rest) = key.strip_prefix(keys.prefix.as_str()) else {
            continue;
        };
        let v = kv.value();
        // A value this version cannot read is skipped (and logged): never a panic.
        let bad = |e: serde_json::Error| tracing::warn!(key = %key, error = %e, "unreadable cluster key in etcd, ignored");
        if rest == "leader" {
            match serde_json::from_slice(v) {
                Ok(l) => s.leader = Some((l, kv.create_revision(), kv.lease())),
                Err(e) => {
                    s.unreadable = Some(format!("the leader key is unreadable ({e})"));
                    bad(e)
                }
            }
        } else if rest == "term" {
            match serde_json::from_slice::<Term>(v) {
                Ok(t) if SyncStandbys::parse(&t.sync_standbys).is_err() => {
                    s.unreadable = Some(format!(
                        "the term's sync_standbys {:?} does not parse",
                        t.sync_standbys
                    ));
                }
                Ok(t) => s.term = Some((t, kv.mod_revision())),
                Err(e) => {
                    s.unreadable = Some(format!("the term key is unreadable ({e})"));
                    bad(e)
                }
            }
        } else if rest == "bootstrap" {
            s.bootstrap = Some(String::from_utf8_lossy(v).into_owned());
        } else if rest == "epoch" {
            match std::str::from_utf8(v)
                .ok()
                .and_then(|t| t.parse::<u32>().ok())
            {
                Some(e) => s.epoch = Some((e, kv.mod_revision())),
                None => s.unreadable = Some("the epoch key is unreadable".into()),
            }
        } else if rest.starts_with("members/") {
            match serde_json::from_slice(v) {
                Ok(m) => s.members.push(m),
                Err(e) => bad(e),
            }
        } else if rest.starts_with("status/") {
            match serde_json::from_slice(v) {
                Ok(st) => s.statuses.push((st, kv.lease())),
                Err(e) => bad(e),
            }
        }
    }
    Ok(s)
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// What `Server::start` learns before it opens the database.
pub struct Joined {
    /// The primary to follow (`None`: none yet, or this member).
    pub primary: Option<String>,
}

/// Before the node starts: register this member and find the leader. A member without a
/// database waits for a leader to seed from, unless the cluster has never had one (then it
/// is the first member and starts empty). Retries while etcd is unreachable.
pub async fn join(
    view: &ClusterView,
    has_database: bool,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Joined> {
    let cfg = &view.config;
    let keys = Keys::new(&cfg.cluster);
    let mut said = String::new();
    loop {
        let attempt = async {
            let mut c = connect(view).await?;
            let member = Member {
                name: cfg.name.clone(),
                addr: cfg.advertise.clone(),
            };
            c.put(keys.member(&cfg.name), json(&member), None)
                .await
                .map_err(etcd_err("registering this member"))?;
            // One member, once, may start a cluster that never had a term: the first to
            // claim this key. (Two started together would otherwise both open as primaries
            // of epoch 1 with different data.)
            c.txn(
                Txn::new()
                    .when([
                        Compare::create_revision(keys.bootstrap(), CompareOp::Equal, 0),
                        Compare::create_revision(keys.term(), CompareOp::Equal, 0),
                    ])
                    .and_then([TxnOp::put(keys.bootstrap(), cfg.name.as_str(), None)]),
            )
            .await
            .map_err(etcd_err("claiming the cluster's bootstrap"))?;
            read(&mut c, &keys).await
        }
        .await;
        if let Ok(s) = &attempt {
            // SENTINEL and INFO answer from what join saw until the loop's first read.
            view.update(|v| {
                v.etcd_up = true;
                v.leader = s.leader.as_ref().map(|(l, ..)| l.clone());
                v.term = s.term.as_ref().map(|(t, _)| t.clone());
                v.members = s.members.clone();
                v.statuses = s.statuses.iter().map(|(s, _)| s.clone()).collect();
            });
        }
        let why = match attempt {
            Ok(s) => match (&s.leader, &s.term) {
                (Some((l, ..)), _) if l.name != cfg.name && l.state == "primary" => {
                    return Ok(Joined {
                        primary: Some(l.addr.clone()),
                    })
                }
                (Some((l, ..)), _) if l.name == cfg.name && has_database => {
                    return Ok(Joined { primary: None })
                }
                (_, None) if s.bootstrap.as_deref() == Some(cfg.name.as_str()) => {
                    return Ok(Joined { primary: None })
                }
                (_, None) if has_database => return Ok(Joined { primary: None }),
                (_, None) => format!(
                    "this member has no data yet; waiting for the first member ({}) to lead so as to seed from it",
                    s.bootstrap.as_deref().unwrap_or("?")
                ),
                (None, Some(_)) if has_database => return Ok(Joined { primary: None }),
                (Some((l, ..)), _) => format!(
                    "this member has no data yet; waiting for the leader ({}) to become primary to seed from it",
                    l.name
                ),
                (None, Some(_)) => {
                    "this member has no data yet and the cluster has no leader now; waiting for one to seed from".to_string()
                }
            },
            Err(e) => format!("{e}; retrying"),
        };
        if why != said {
            tracing::warn!(cluster = %cfg.cluster, "{why}");
            said = why;
        }
        tokio::select! {
            _ = tokio::time::sleep(cfg.keepalive_every()) => {}
            _ = stop.changed() => anyhow::bail!("stopped while joining cluster {}", cfg.cluster),
        }
    }
}

/// The loop, until the node shuts down. etcd unreachable: the session ends, the view says
/// so, and a new one is tried; a primary's lease deadline then runs out by itself.
pub async fn run(node: Arc<Node>, view: Arc<ClusterView>) {
    let mut stop = node.shutdown.subscribe();
    let mut lease_id: Option<i64> = None;
    let mut said = String::new();
    let mut st = LoopState::default();
    loop {
        if *stop.borrow() {
            break;
        }
        match session(&node, &view, &mut stop, &mut lease_id, &mut st).await {
            Ok(()) => break,
            Err(e) => {
                // The next session starts with the next endpoint.
                view.endpoint.fetch_add(1, Ordering::Relaxed);
                st.set_leading(false);
                view.update(|s| {
                    s.etcd_up = false;
                    s.etcd_error = e.clone();
                });
                if e != said {
                    if node.role.read().write_refusal().is_none() {
                        tracing::error!(error = %e, "etcd unreachable: this primary stops taking writes when its lease runs out ({} ms left); reads continue", node.lease.remaining_ms());
                    } else {
                        tracing::warn!(error = %e, "etcd unreachable; this member keeps its role and retries");
                    }
                    said = e;
                }
                tokio::select! {
                    _ = tokio::time::sleep(view.config.keepalive_every()) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }
    // A clean stop hands the leadership on at once rather than after the TTL.
    node.lease.revoke();
    if let (Some(id), true) = (lease_id, st.leading()) {
        if let Ok(mut c) = connect(&view).await {
            let _ = c.lease_revoke(id).await;
            tracing::info!("stopping: released the leader key");
        }
    }
}

/// What the loop shares with its keepalive task.
#[derive(Default)]
struct Keep {
    /// This member leads: each renewal moves the fencing deadline.
    leading: AtomicBool,
    /// When the last successful keepalive was sent.
    renewed: parking_lot::Mutex<Option<Instant>>,
}

#[derive(Default)]
struct LoopState {
    keep: Arc<Keep>,
    /// The status last published, and when.
    published: Option<(Status, Instant)>,
    /// When this member first saw the current vacancy.
    vacant_since: Option<Instant>,
    /// The blocked reason last logged.
    blocked: String,
    /// The revision at which this member saw the current vacancy (0: none). Kept for the
    /// whole vacancy — every put moves etcd's revision, and a status that changed with it
    /// would be rewritten at every wake.
    vacant_rev: i64,
    /// After a failed promotion, this member reports it cannot promote until then.
    no_promote_until: Option<Instant>,
    /// After a failed follow, the next attempt waits until then.
    follow_retry_at: Option<Instant>,
}

impl LoopState {
    fn leading(&self) -> bool {
        self.keep.leading.load(Ordering::SeqCst)
    }

    fn set_leading(&self, on: bool) {
        self.keep.leading.store(on, Ordering::SeqCst);
    }

    fn renewed(&self) -> Option<Instant> {
        *self.keep.renewed.lock()
    }
}

/// Aborts the keepalive task when the session ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Renews the lease every TTL/4 on its own task — never held up by a promotion or a follow
/// the loop is waiting on — and, while the member leads, moves the fencing deadline. Sends
/// why it stopped (and whether the lease is gone) when a renewal fails.
async fn keep_alive(
    node: Arc<Node>,
    keep: Arc<Keep>,
    ttl: std::time::Duration,
    every: std::time::Duration,
    mut keeper: etcd_client::LeaseKeeper,
    mut alive: etcd_client::LeaseKeepAliveStream,
    failed: tokio::sync::oneshot::Sender<(String, bool)>,
) {
    let why = loop {
        let sent = Instant::now();
        if let Err(e) = keeper.keep_alive().await {
            break (format!("renewing the lease: {e}"), false);
        }
        match tokio::time::timeout(ttl / 3, alive.message()).await {
            Ok(Ok(Some(r))) if r.ttl() > 0 => {
                *keep.renewed.lock() = Some(sent);
                if keep.leading.load(Ordering::SeqCst) {
                    node.lease.renewed(sent, ttl);
                }
            }
            Ok(Ok(Some(_))) => break ("this member's lease expired in etcd".into(), true),
            Ok(Ok(None)) => break ("etcd closed the lease's keepalive stream".into(), false),
            Ok(Err(e)) => break (format!("renewing the lease: {e}"), false),
            Err(_) => break ("etcd did not answer a lease renewal in time".into(), false),
        }
        tokio::time::sleep_until(tokio::time::Instant::from_std(sent + every)).await;
    };
    let _ = failed.send(why);
}

async fn session(
    node: &Arc<Node>,
    view: &Arc<ClusterView>,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    lease_id: &mut Option<i64>,
    st: &mut LoopState,
) -> Res<()> {
    let cfg = &view.config;
    let keys = Keys::new(&cfg.cluster);
    let mut client = connect(view).await?;
    // The lease of an earlier session, if etcd still has it (etcd restarted, or a short
    // outage): the leader key is bound to it.
    let mut kept = None;
    if let Some(id) = *lease_id {
        if let Ok((mut k, mut s)) = client.lease_keep_alive(id).await {
            let sent = Instant::now();
            if k.keep_alive().await.is_ok() {
                if let Ok(Ok(Some(r))) = tokio::time::timeout(cfg.ttl / 2, s.message()).await {
                    if r.ttl() > 0 {
                        *st.keep.renewed.lock() = Some(sent);
                        kept = Some((k, s));
                    }
                }
            }
        }
    }
    let (keeper, alive) = match kept {
        Some(k) => k,
        None => {
            let g = client
                .lease_grant(cfg.ttl_secs(), None)
                .await
                .map_err(etcd_err("granting a lease"))?;
            *lease_id = Some(g.id());
            st.published = None;
            client
                .lease_keep_alive(g.id())
                .await
                .map_err(etcd_err("keeping the lease alive"))?
        }
    };
    let lease = lease_id.unwrap_or(0);
    let member = Member {
        name: cfg.name.clone(),
        addr: cfg.advertise.clone(),
    };
    client
        .put(keys.member(&cfg.name), json(&member), None)
        .await
        .map_err(etcd_err("registering this member"))?;
    let mut watch = client
        .watch(
            keys.prefix.as_str(),
            Some(WatchOptions::new().with_prefix()),
        )
        .await
        .map_err(etcd_err("watching the cluster's keys"))?;
    view.update(|s| {
        if !s.etcd_up {
            tracing::info!(cluster = %cfg.cluster, "etcd reachable");
        }
        s.etcd_up = true;
        s.etcd_error.clear();
    });
    let (failed_tx, mut failed) = tokio::sync::oneshot::channel();
    let _keeping = AbortOnDrop(tokio::spawn(keep_alive(
        node.clone(),
        st.keep.clone(),
        cfg.ttl,
        cfg.keepalive_every(),
        keeper,
        alive,
        failed_tx,
    )));
    loop {
        if let Ok((why, expired)) = failed.try_recv() {
            if expired {
                *lease_id = None;
            }
            return Err(why);
        }
        let snap = read(&mut client, &keys).await?;
        act(node, view, &mut client, &keys, lease, &snap, st).await?;
        let until = tokio::time::Instant::now() + cfg.keepalive_every();
        tokio::select! {
            r = &mut failed => {
                let (why, expired) = r.unwrap_or_else(|_| ("the lease's keepalive task ended".into(), false));
                if expired {
                    *lease_id = None;
                }
                return Err(why);
            }
            m = watch.message() => match m {
                Ok(Some(_)) => {}
                Ok(None) => return Err("etcd closed the watch".into()),
                Err(e) => return Err(format!("watching: {e}")),
            },
            _ = tokio::time::sleep_until(until) => {}
            _ = view.wake.notified() => {}
            _ = stop.changed() => return Ok(()),
        }
    }
}

/// This member's status now. `vacant_rev`: the revision at which it saw the leader key
/// vacant, read before the positions are.
fn my_status(node: &Node, cfg: &ClusterConfig, vacant_rev: i64, st: &LoopState) -> Status {
    let db = node.db();
    let role = node.role.get();
    let applied = db.apply_lsn().0;
    let backing_off = st.no_promote_until.is_some_and(|t| Instant::now() < t);
    let can_promote = !backing_off
        && node.loading().is_none()
        && node.repair_gate.load(Ordering::Acquire) <= applied
        && matches!(role, Role::Replica { .. } | Role::Primary);
    Status {
        name: cfg.name.clone(),
        addr: cfg.advertise.clone(),
        role: role.name().into(),
        epoch: db.epoch(),
        epoch_start: db.epoch_history().last().map_or(0, |(_, l)| l.0),
        // Written, not only fsynced: a write acknowledged at remote_write is on a standby's
        // WAL before its sync, and a promotion keeps it (it syncs what it has).
        flush_lsn: db.flush_lsn().max(db.written_lsn()).0,
        apply_lsn: applied,
        vacant_rev,
        can_promote,
        following: role.primary_addr().unwrap_or_default().to_string(),
        link_up: node.link_up.load(Ordering::Relaxed),
    }
}

fn quorum_string(node: &Node) -> String {
    node.tracker
        .config()
        .map(|q| q.to_string())
        .unwrap_or_default()
}

async fn act(
    node: &Arc<Node>,
    view: &ClusterView,
    client: &mut Client,
    keys: &Keys,
    lease: i64,
    snap: &Snapshot,
    st: &mut LoopState,
) -> Res<()> {
    let cfg = &view.config;
    let me = cfg.name.as_str();
    let mut blocked = String::new();
    view.update(|s| {
        s.leader = snap.leader.as_ref().map(|(l, ..)| l.clone());
        s.term = snap.term.as_ref().map(|(t, _)| t.clone());
        s.members = snap.members.clone();
        s.statuses = snap.statuses.iter().map(|(s, _)| s.clone()).collect();
    });
    view.saw_leader(snap.leader.as_ref().map(|(l, ..)| l));
    if let Some(why) = &snap.unreadable {
        // Not a vacancy: the key is there. Nobody acts on what cannot be read.
        let why = format!(
            "{why}: written by another replidb version? Nothing is decided until it can be read"
        );
        if why != st.blocked {
            tracing::error!(cluster = %cfg.cluster, "{why}");
        }
        st.blocked.clone_from(&why);
        view.update(|s| s.failover_blocked = why);
        return Ok(());
    }
    if snap.leader.is_some() {
        st.vacant_rev = 0;
    }
    let handover = view.handover.lock().take();
    if let Some(target) = handover {
        hand_over(node, client, keys, lease, snap, &target).await?;
        return Ok(());
    }
    match &snap.leader {
        Some((l, _, lid)) if l.name == me && *lid == lease => {
            st.vacant_since = None;
            match node.role.get() {
                Role::Primary => {
                    if !st.leading() {
                        st.set_leading(true);
                        tracing::info!(cluster = %cfg.cluster, "this member leads the cluster");
                    }
                    // The term first: no write is taken under a quorum etcd does not hold.
                    let epoch = node.db().epoch();
                    let q = quorum_string(node);
                    let stale = snap.term.as_ref().is_none_or(|(t, _)| {
                        t.leader != me || t.epoch != epoch || t.sync_standbys != q
                    });
                    if l.state != "primary" || l.epoch != epoch || stale {
                        establish(node, client, keys, lease, snap, cfg).await?;
                    }
                    if let Some(sent) = st.renewed() {
                        node.lease.renewed(sent, cfg.ttl);
                    }
                }
                // Promoting or handing over: the step in progress finishes it.
                Role::SwitchingOver { .. } => {}
                // Holding the key but unable to take writes: let another member take over.
                other => {
                    tracing::warn!(
                        role = other.name(),
                        "this member holds the leader key but is not a primary: releasing it"
                    );
                    release(client, keys, lease).await?;
                    st.set_leading(false);
                    node.lease.revoke();
                }
            }
        }
        Some((l, ..)) => {
            if st.leading() {
                tracing::error!(leader = %l.name, "another member holds the leader key: this node stops taking writes");
                st.set_leading(false);
            }
            node.lease.revoke();
            st.vacant_since = None;
            if l.state == "primary" && l.name != me {
                let epoch = node.db().epoch();
                let follow = match node.role.get() {
                    Role::Replica { primary, .. } => primary != l.addr,
                    // A primary of a newer epoch than the leader's was promoted outside etcd
                    // (a switchover): it waits for the key to be handed to it.
                    Role::Primary | Role::Fenced { .. } => l.epoch >= epoch,
                    Role::SwitchingOver { .. } => false,
                };
                let due = st.follow_retry_at.is_none_or(|t| Instant::now() >= t);
                if follow && due {
                    tracing::info!(leader = %l.name, addr = %l.addr, epoch = l.epoch, "following the cluster's leader");
                    match crate::role::follow(node, l.addr.clone()).await {
                        Ok(()) => {
                            st.follow_retry_at = None;
                            view.update(|s| s.leader_changes += 1);
                        }
                        Err(e) => {
                            st.follow_retry_at = Some(Instant::now() + cfg.keepalive_every());
                            tracing::warn!(error = %format!("{e:#}"), leader = %l.name, "could not follow the leader yet");
                        }
                    }
                }
            }
        }
        None => {
            if st.leading() {
                tracing::error!(
                    "the leader key is gone (this member's lease lapsed): it stops taking writes"
                );
                st.set_leading(false);
            }
            node.lease.revoke();
            // The revision this member first saw the vacancy at — renewed only if it is not
            // past the term's (a vacancy seen before the last leader's term was written).
            let term_rev = snap.term.as_ref().map_or(0, |(_, r)| *r);
            if st.vacant_rev <= term_rev {
                st.vacant_rev = snap.rev;
            }
            let since = *st.vacant_since.get_or_insert_with(Instant::now);
            let mine = my_status(node, cfg, st.vacant_rev, st);
            put_status(client, keys, lease, &mine, st).await?;
            match &snap.term {
                None if snap.bootstrap.as_deref() == Some(me) => {
                    // A cluster that never had a leader: the member that claimed its
                    // bootstrap takes it.
                    if take_over(node, view, client, keys, lease, snap, st, true).await? {
                        return Ok(());
                    }
                }
                None => {
                    blocked = format!(
                        "the cluster has never had a leader; waiting for its first member ({}) to take the key",
                        snap.bootstrap.as_deref().unwrap_or("none yet")
                    );
                }
                Some((term, term_rev)) => {
                    let old = OldPrimary {
                        name: term.leader.clone(),
                        quorum: SyncStandbys::parse(&term.sync_standbys).unwrap_or(None),
                    };
                    let members: Vec<String> =
                        snap.members.iter().map(|m| m.name.clone()).collect();
                    let mut reports: Vec<Report> = snap
                        .statuses
                        .iter()
                        .filter(|(s, _)| s.name != me)
                        .map(|(s, _)| Report {
                            name: s.name.clone(),
                            epoch: s.epoch,
                            epoch_start: s.epoch_start,
                            flush_lsn: s.flush_lsn,
                            fresh: s.vacant_rev > *term_rev,
                            can_promote: s.can_promote,
                        })
                        .collect();
                    reports.push(Report {
                        name: me.to_string(),
                        epoch: mine.epoch,
                        epoch_start: mine.epoch_start,
                        flush_lsn: mine.flush_lsn,
                        fresh: true,
                        can_promote: mine.can_promote,
                    });
                    let waited = since.elapsed() >= cfg.ttl;
                    match decide(me, &members, Some(&old), &reports, waited) {
                        Decision::TakeOver => {
                            if take_over(node, view, client, keys, lease, snap, st, false).await? {
                                return Ok(());
                            }
                        }
                        Decision::Defer { to } => {
                            blocked =
                                format!("waiting for {to}, the most advanced member, to take over");
                        }
                        Decision::Blocked(why) => blocked = why,
                    }
                }
            }
        }
    }
    if !blocked.is_empty() && blocked != st.blocked {
        tracing::warn!(cluster = %cfg.cluster, "no failover yet: {blocked}");
    }
    st.blocked.clone_from(&blocked);
    // A leader repairs damaged pages from the members streaming from it.
    *node.repair_peers.lock() = if st.leading() {
        snap.statuses
            .iter()
            .filter(|(s, _)| s.name != me && s.following == cfg.advertise && s.link_up)
            .map(|(s, _)| s.addr.clone())
            .collect()
    } else {
        Vec::new()
    };
    // Refreshed on change, at most every keepalive period (a vacancy answers at once, above).
    let mine = my_status(node, cfg, st.vacant_rev, st);
    let due = st.published.as_ref().is_none_or(|(p, at)| {
        *p != mine && (at.elapsed() >= cfg.keepalive_every() || p.role != mine.role)
    });
    if due {
        put_status(client, keys, lease, &mine, st).await?;
    }
    view.update(|s| s.failover_blocked = blocked);
    Ok(())
}

async fn put_status(
    client: &mut Client,
    keys: &Keys,
    lease: i64,
    status: &Status,
    st: &mut LoopState,
) -> Res<()> {
    if st.published.as_ref().is_some_and(|(p, _)| p == status) {
        return Ok(());
    }
    client
        .put(
            keys.status(&status.name),
            json(status),
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .map_err(etcd_err("publishing this member's status"))?;
    st.published = Some((status.clone(), Instant::now()));
    Ok(())
}

/// Deletes the leader key if this member's lease holds it.
async fn release(client: &mut Client, keys: &Keys, lease: i64) -> Res<()> {
    client
        .txn(
            Txn::new()
                .when([Compare::lease(keys.leader(), CompareOp::Equal, lease)])
                .and_then([TxnOp::delete(keys.leader(), None)]),
        )
        .await
        .map_err(etcd_err("releasing the leader key"))?;
    Ok(())
}

/// Claims the vacant leader key, promotes this member if it is a replica, then establishes
/// its term. Returns whether it took the key.
#[allow(clippy::too_many_arguments)]
async fn take_over(
    node: &Arc<Node>,
    view: &ClusterView,
    client: &mut Client,
    keys: &Keys,
    lease: i64,
    snap: &Snapshot,
    st: &mut LoopState,
    first: bool,
) -> Res<bool> {
    let cfg = &view.config;
    let role = node.role.get();
    let promoting = matches!(role, Role::Replica { .. });
    // The epoch this claim hands out: past every one handed out before, so two members
    // promoted in turn (one that lost the key part-way, then another) never share a number.
    let mine = node.db().epoch();
    let (handed, epoch_rev) = snap.epoch.unwrap_or((0, 0));
    let epoch = handed.max(mine) + u32::from(promoting);
    let claim = Leader {
        name: cfg.name.clone(),
        addr: cfg.advertise.clone(),
        epoch,
        state: "promoting".into(),
    };
    let mut when = vec![
        Compare::create_revision(keys.leader(), CompareOp::Equal, 0),
        Compare::mod_revision(keys.epoch(), CompareOp::Equal, epoch_rev),
    ];
    if first {
        when.push(Compare::create_revision(keys.term(), CompareOp::Equal, 0));
    }
    let won = client
        .txn(Txn::new().when(when).and_then([
            TxnOp::put(
                keys.leader(),
                json(&claim),
                Some(PutOptions::new().with_lease(lease)),
            ),
            TxnOp::put(keys.epoch(), epoch.to_string(), None),
        ]))
        .await
        .map_err(etcd_err("claiming the leader key"))?
        .succeeded();
    if !won {
        return Ok(false);
    }
    let t0 = Instant::now();
    if promoting {
        if let Err(e) = crate::role::promote_at_least(node, epoch).await {
            tracing::error!(error = %format!("{e:#}"), "won the election but could not promote: releasing the leader key (this member reports it cannot promote for one TTL)");
            st.no_promote_until = Some(Instant::now() + cfg.ttl);
            release(client, keys, lease).await?;
            return Ok(true);
        }
    } else if role != Role::Primary {
        release(client, keys, lease).await?;
        return Ok(true);
    }
    if !promoting && handed > mine {
        tracing::warn!(
            epoch = mine,
            handed_out = handed,
            "leading in an older epoch than one handed out before (a member promoted to it never took writes)"
        );
    }
    establish(node, client, keys, lease, snap, cfg).await?;
    st.set_leading(true);
    st.vacant_rev = 0;
    view.update(|s| s.failover_blocked.clear());
    if let Some(sent) = st.renewed() {
        node.lease.renewed(sent, cfg.ttl);
    }
    view.update(|s| s.leader_changes += 1);
    tracing::info!(
        cluster = %cfg.cluster,
        epoch = node.db().epoch(),
        elapsed_ms = t0.elapsed().as_millis() as u64,
        first,
        "this member took over as the cluster's primary"
    );
    Ok(true)
}

/// Writes the leader key as a primary's and the term, if this member's lease still holds
/// the key.
async fn establish(
    node: &Node,
    client: &mut Client,
    keys: &Keys,
    lease: i64,
    snap: &Snapshot,
    cfg: &ClusterConfig,
) -> Res<()> {
    let epoch = node.db().epoch();
    let leader = Leader {
        name: cfg.name.clone(),
        addr: cfg.advertise.clone(),
        epoch,
        state: "primary".into(),
    };
    let old = snap.term.as_ref().map(|(t, _)| t);
    let changed = old.is_none_or(|t| t.leader != cfg.name || t.epoch != epoch);
    let term = Term {
        leader: cfg.name.clone(),
        addr: cfg.advertise.clone(),
        epoch,
        sync_standbys: quorum_string(node),
        failovers: old.map_or(0, |t| t.failovers + u64::from(changed)),
        last_failover: match old {
            Some(t) if changed => format!(
                "{} -> {} at {} (epoch {epoch}, LSN {})",
                t.leader,
                cfg.name,
                crate::node::now_us() / 1000,
                node.db().flush_lsn().0
            ),
            Some(t) => t.last_failover.clone(),
            None => String::new(),
        },
    };
    let ok = client
        .txn(
            Txn::new()
                .when([Compare::lease(keys.leader(), CompareOp::Equal, lease)])
                .and_then([
                    TxnOp::put(
                        keys.leader(),
                        json(&leader),
                        Some(PutOptions::new().with_lease(lease)),
                    ),
                    TxnOp::put(keys.term(), json(&term), None),
                ]),
        )
        .await
        .map_err(etcd_err("writing the term"))?
        .succeeded();
    if !ok {
        return Err("lost the leader key while establishing the term".into());
    }
    Ok(())
}

/// `FAILOVER TO target` finished here: the target is a primary of a newer epoch and this
/// node follows it; move the leader key to the target's lease.
async fn hand_over(
    node: &Node,
    client: &mut Client,
    keys: &Keys,
    lease: i64,
    snap: &Snapshot,
    target: &str,
) -> Res<()> {
    let Some((status, target_lease)) = snap.statuses.iter().find(|(s, _)| s.addr == target) else {
        tracing::warn!(target, "FAILOVER TO a member that has no status in etcd: the leader key stays until this node's lease lapses");
        return release(client, keys, lease).await;
    };
    let leader = Leader {
        name: status.name.clone(),
        addr: status.addr.clone(),
        epoch: node.db().epoch().max(status.epoch),
        state: "primary".into(),
    };
    let moved = client
        .txn(
            Txn::new()
                .when([Compare::lease(keys.leader(), CompareOp::Equal, lease)])
                .and_then([TxnOp::put(
                    keys.leader(),
                    json(&leader),
                    Some(PutOptions::new().with_lease(*target_lease)),
                )]),
        )
        .await
        .map_err(etcd_err("handing the leader key over"))?
        .succeeded();
    if moved {
        tracing::info!(to = %status.name, "FAILOVER: the leader key moved to the new primary");
    } else {
        tracing::warn!(to = %status.name, "FAILOVER: this node no longer held the leader key; the election decides");
    }
    Ok(())
}
