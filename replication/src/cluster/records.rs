//! What a cluster keeps in etcd, under `/replidb/CLUSTER/` (docs/operations.md, "Cluster
//! keys"). Values are JSON, so `etcdctl get --prefix /replidb/` is readable.
//!
//! | key                 | lease        | written by                 | holds            |
//! |---------------------|--------------|----------------------------|------------------|
//! | `leader`            | the leader's | the member that takes over | [`Leader`]       |
//! | `term`              | none         | the leader, as it starts   | [`Term`]         |
//! | `bootstrap`         | none         | the first member, once     | its name         |
//! | `epoch`             | none         | each claim of the leader   | highest epoch handed out |
//! | `members/NAME`      | none         | each member, at start      | [`Member`]       |
//! | `status/NAME`       | the member's | each member, on change     | [`Status`]       |

use serde::{Deserialize, Serialize};

/// The leader key's value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leader {
    pub name: String,
    /// Its client address (`--advertise`).
    pub addr: String,
    pub epoch: u32,
    /// `promoting` while it becomes primary, then `primary`: members follow only a primary.
    pub state: String,
}

/// The last primary's term: written (with a compare on the leader key) when a member starts
/// leading, so its revision falls inside that leader's tenure — a status reported at a later
/// revision with the leader key vacant was read after that leader lost its lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Term {
    pub leader: String,
    pub addr: String,
    pub epoch: u32,
    /// Its `--sync-standbys` ("" for asynchronous): what the election must prove.
    pub sync_standbys: String,
    /// Leader changes since the cluster began, and the last one.
    pub failovers: u64,
    pub last_failover: String,
}

/// A member, registered for good (the election counts members for `ANY n (*)`). Remove a
/// member that is gone for good with `etcdctl del /replidb/CLUSTER/members/NAME`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub addr: String,
}

/// A member's live status, bound to its lease (gone when it is).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub name: String,
    pub addr: String,
    pub role: String,
    pub epoch: u32,
    /// Where its current epoch began in its history: two branches of one epoch number (a
    /// primary that resumed after an unclean stop) rank by the later start.
    #[serde(default)]
    pub epoch_start: u64,
    /// How far its WAL reaches: written, synced or not (a `remote_write` acknowledgement
    /// counts a standby's written WAL).
    pub flush_lsn: u64,
    pub apply_lsn: u64,
    /// The etcd revision at which this member saw the leader key vacant before it read the
    /// positions above (0: it saw a leader).
    pub vacant_rev: i64,
    pub can_promote: bool,
    /// The primary it follows (replicas), and whether the link is up.
    pub following: String,
    pub link_up: bool,
}

/// The keys of one cluster.
#[derive(Clone, Debug)]
pub struct Keys {
    pub prefix: String,
}

impl Keys {
    pub fn new(cluster: &str) -> Keys {
        Keys {
            prefix: format!("/replidb/{cluster}/"),
        }
    }
    pub fn leader(&self) -> String {
        format!("{}leader", self.prefix)
    }
    pub fn term(&self) -> String {
        format!("{}term", self.prefix)
    }
    pub fn bootstrap(&self) -> String {
        format!("{}bootstrap", self.prefix)
    }
    pub fn epoch(&self) -> String {
        format!("{}epoch", self.prefix)
    }
    pub fn member(&self, name: &str) -> String {
        format!("{}members/{name}", self.prefix)
    }
    pub fn status(&self, name: &str) -> String {
        format!("{}status/{name}", self.prefix)
    }
}

/// `HOST:PORT` as (host, port); a string without a port is all host, port "0".
pub fn split_addr(addr: &str) -> (String, String) {
    match addr.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.to_string()),
        None => (addr.to_string(), "0".into()),
    }
}
