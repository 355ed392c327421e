//! Automatic failover: a cluster of members coordinated by etcd (docs/replication.md,
//! "Automatic failover"). One leader key bound to the leader's lease says who is primary; the
//! others follow it. When the lease expires, the members report their positions and the one
//! the election rule picks (`election`) claims the key and promotes itself. A primary takes
//! writes only while its lease is known alive (`lease`).
//!
//! - [`election`]: the rule, sans-IO, with its table;
//! - [`lease`]: the fencing deadline every write checks;
//! - [`records`]: the keys and values in etcd;
//! - `run`: the loop that talks to etcd and acts.

pub mod election;
pub mod lease;
pub mod records;
mod run;

use std::time::Duration;

use parking_lot::Mutex;

pub use lease::Lease;
pub use run::{join, run, Joined};

/// `--etcd`, `--cluster`, `--name`, `--failover-ttl-ms`, `--advertise`.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub endpoints: Vec<String>,
    pub cluster: String,
    pub name: String,
    /// The address other members and clients reach this node at.
    pub advertise: String,
    pub ttl: Duration,
}

impl ClusterConfig {
    /// The lease's TTL in whole seconds as etcd grants it (at least the configured TTL).
    pub fn ttl_secs(&self) -> i64 {
        (self.ttl.as_millis().div_ceil(1000) as i64).max(1)
    }

    /// How often the loop renews its lease: well inside the TTL.
    pub fn keepalive_every(&self) -> Duration {
        (self.ttl / 4).max(Duration::from_millis(50))
    }
}

/// What this member knows of the cluster, for `INFO cluster` and `SENTINEL`.
#[derive(Clone, Debug, Default)]
pub struct ViewState {
    pub etcd_up: bool,
    /// Why etcd is not reachable, when it is not.
    pub etcd_error: String,
    pub leader: Option<records::Leader>,
    pub term: Option<records::Term>,
    pub members: Vec<records::Member>,
    pub statuses: Vec<records::Status>,
    pub failover_blocked: String,
    /// Leader changes this member took part in (promoted itself, or followed a new leader).
    pub leader_changes: u64,
    /// The last primary's address this member saw (for `+switch-master`).
    pub last_primary: Option<String>,
}

pub struct ClusterView {
    pub config: ClusterConfig,
    state: Mutex<ViewState>,
    /// `FAILOVER TO` finished: hand the leader key to the member at this address.
    handover: Mutex<Option<String>>,
    wake: tokio::sync::Notify,
    /// The etcd endpoint sessions start with (the one that answered last).
    endpoint: std::sync::atomic::AtomicUsize,
    /// Sentinel events for subscribers: `("+switch-master", "<cluster> <old ip> <old port>
    /// <new ip> <new port>")` when this member sees the leader key move to a new primary.
    pub events: tokio::sync::broadcast::Sender<(String, String)>,
}

impl ClusterView {
    pub fn new(config: ClusterConfig) -> ClusterView {
        ClusterView {
            config,
            state: Mutex::new(ViewState::default()),
            handover: Mutex::new(None),
            wake: tokio::sync::Notify::new(),
            endpoint: std::sync::atomic::AtomicUsize::new(0),
            events: tokio::sync::broadcast::channel(64).0,
        }
    }

    /// Records the leader the loop just read; announces `+switch-master` when the primary
    /// moved from one address to another.
    pub(crate) fn saw_leader(&self, leader: Option<&records::Leader>) {
        let Some(l) = leader.filter(|l| l.state == "primary") else {
            return;
        };
        let old = self.state.lock().last_primary.replace(l.addr.clone());
        if let Some(old) = old.filter(|o| *o != l.addr) {
            let ((oh, op), (nh, np)) = (records::split_addr(&old), records::split_addr(&l.addr));
            let msg = format!("{} {oh} {op} {nh} {np}", self.config.cluster);
            tracing::info!(event = %msg, "+switch-master");
            let _ = self.events.send(("+switch-master".into(), msg));
        }
    }

    pub fn state(&self) -> ViewState {
        self.state.lock().clone()
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut ViewState)) {
        f(&mut self.state.lock());
    }

    /// After a `FAILOVER TO addr` on the leader: move the leader key to that member.
    pub fn hand_over(&self, addr: String) {
        *self.handover.lock() = Some(addr);
        self.wake.notify_one();
    }

    /// The primary's address as the leader key says, once it is a primary.
    pub fn primary_addr(&self) -> Option<String> {
        let s = self.state.lock();
        s.leader
            .as_ref()
            .filter(|l| l.state == "primary")
            .map(|l| l.addr.clone())
    }
}
