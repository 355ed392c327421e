//! `SENTINEL`: discovery through Redis Sentinel's protocol. Every cluster member answers as a
//! sentinel would, from what it knows of the leader key and the members' status records, so
//! a client with Sentinel support given the members' addresses finds the primary after
//! every failover. The reply shapes are Redis 7's (sentinel.c): a master or replica is a
//! flat list of field/value pairs in RESP2, a map in RESP3; GET-MASTER-ADDR-BY-NAME is
//! `[ip, port]` or null.

use bytes::Bytes;

use crate::session::{After, Out, Session};
use replication::cluster::records::{self, split_addr};
use replication::cluster::ViewState;

/// One instance's fields, in Redis's order.
type Fields = Vec<(&'static str, String)>;

/// The address Sentinel reports for the master: the leader once it is a primary; during a
/// vacancy, the last primary's (as Sentinel keeps the old master until a failover ends).
fn master_addr(v: &ViewState) -> Option<String> {
    match (&v.leader, &v.term) {
        (Some(l), _) if l.state == "primary" => Some(l.addr.clone()),
        (_, Some(t)) => Some(t.addr.clone()),
        _ => None,
    }
}

fn common(name: String, addr: &str, flags: &str) -> Fields {
    let (ip, port) = split_addr(addr);
    vec![
        ("name", name),
        ("ip", ip),
        ("port", port),
        ("runid", String::new()),
        ("flags", flags.to_string()),
        ("link-pending-commands", "0".into()),
        ("link-refcount", "1".into()),
        ("last-ping-sent", "0".into()),
        ("last-ok-ping-reply", "0".into()),
        ("last-ping-reply", "0".into()),
    ]
}

fn master_fields(cluster: &str, v: &ViewState, ttl_ms: u128) -> Option<Fields> {
    let addr = master_addr(v)?;
    // A member that cannot reach etcd does not vouch for the last leader it saw.
    let up = v.etcd_up && v.leader.as_ref().is_some_and(|l| l.state == "primary");
    let flags = if up { "master" } else { "s_down,o_down,master" };
    let members = v.members.len().max(1);
    let mut f = common(cluster.to_string(), &addr, flags);
    let replicas = replicas(v).len();
    f.extend([
        ("down-after-milliseconds", ttl_ms.to_string()),
        ("info-refresh", "0".into()),
        ("role-reported", "master".into()),
        ("role-reported-time", "0".into()),
        (
            "config-epoch",
            v.term.as_ref().map_or(0, |t| t.epoch).to_string(),
        ),
        ("num-slaves", replicas.to_string()),
        ("num-other-sentinels", (members - 1).to_string()),
        ("quorum", (members / 2 + 1).to_string()),
        ("failover-timeout", ttl_ms.to_string()),
        ("parallel-syncs", "1".into()),
    ]);
    Some(f)
}

/// Every member but the primary, as replicas: live ones from their status, the others
/// (registered, no status: down) flagged `s_down`.
fn replicas(v: &ViewState) -> Vec<Fields> {
    let Some(primary) = master_addr(v) else {
        return Vec::new();
    };
    let (mhost, mport) = split_addr(&primary);
    let mut out = Vec::new();
    for m in &v.members {
        if m.addr == primary {
            continue;
        }
        let st: Option<&records::Status> = v.statuses.iter().find(|s| s.name == m.name);
        let ok = st.is_some_and(|s| s.role == "replica" && s.following == primary && s.link_up);
        // Only a member streaming from the primary is offered to clients for reads.
        let flags = if ok {
            "slave"
        } else {
            "s_down,slave,disconnected"
        };
        let mut f = common(m.addr.clone(), &m.addr, flags);
        f.extend([
            ("info-refresh", "0".into()),
            ("role-reported", "slave".into()),
            ("role-reported-time", "0".into()),
            ("master-link-down-time", "0".into()),
            (
                "master-link-status",
                if ok { "ok" } else { "err" }.to_string(),
            ),
            ("master-host", mhost.clone()),
            ("master-port", mport.clone()),
            ("slave-priority", "100".into()),
            (
                "slave-repl-offset",
                st.map_or(0, |s| s.apply_lsn).to_string(),
            ),
            ("replica-announced", "1".into()),
        ]);
        out.push(f);
    }
    out
}

/// The other members, as sentinels.
fn sentinels(v: &ViewState, me: &str) -> Vec<Fields> {
    v.members
        .iter()
        .filter(|m| m.name != me)
        .map(|m| {
            let up = v.statuses.iter().any(|s| s.name == m.name);
            let mut f = common(
                m.name.clone(),
                &m.addr,
                if up { "sentinel" } else { "s_down,sentinel" },
            );
            f.extend([
                ("last-hello-message", "0".into()),
                ("voted-leader", "?".into()),
                ("voted-leader-epoch", "0".into()),
            ]);
            f
        })
        .collect()
}

impl Session {
    fn fields(&self, out: &mut Out, f: &Fields) {
        self.enc.map(&mut out.buf, f.len());
        for (k, v) in f {
            self.enc.bulk(&mut out.buf, k.as_bytes());
            self.enc.bulk(&mut out.buf, v.as_bytes());
        }
    }

    fn fields_list(&self, out: &mut Out, list: &[Fields]) {
        self.enc.array(&mut out.buf, list.len());
        for f in list {
            self.fields(out, f);
        }
    }

    /// `SENTINEL subcommand [args]`.
    pub(crate) fn sentinel_command(&mut self, args: &[Bytes], out: &mut Out) -> After {
        let Some(view) = self.shared.cluster.clone() else {
            self.err(
                out,
                "ERR SENTINEL is answered by cluster members only (serve --etcd ... --cluster NAME)",
            );
            return After::Continue;
        };
        let cluster = view.config.cluster.as_str();
        let ttl_ms = view.config.ttl.as_millis();
        let v = view.state();
        let sub = String::from_utf8_lossy(&args[1]).to_ascii_uppercase();
        // Every subcommand but MASTERS names the master: ours is the cluster.
        let named = |i: usize| {
            args.get(i)
                .is_some_and(|a| a.as_ref() == cluster.as_bytes())
        };
        let unknown = "IDONTKNOW No such master with that name";
        match (sub.as_str(), args.len()) {
            ("MASTERS", 2) => match master_fields(cluster, &v, ttl_ms) {
                Some(f) => self.fields_list(out, &[f]),
                None => self.enc.array(&mut out.buf, 0),
            },
            ("MASTER", 3) if named(2) => match master_fields(cluster, &v, ttl_ms) {
                Some(f) => self.fields(out, &f),
                None => self.err(out, unknown),
            },
            ("GET-MASTER-ADDR-BY-NAME", 3) if named(2) => match master_addr(&v) {
                Some(a) => {
                    let (ip, port) = split_addr(&a);
                    self.enc.array(&mut out.buf, 2);
                    self.enc.bulk(&mut out.buf, ip.as_bytes());
                    self.enc.bulk(&mut out.buf, port.as_bytes());
                }
                None => self.enc.null(&mut out.buf),
            },
            ("REPLICAS" | "SLAVES", 3) if named(2) => self.fields_list(out, &replicas(&v)),
            ("SENTINELS", 3) if named(2) => {
                self.fields_list(out, &sentinels(&v, &view.config.name))
            }
            ("MASTER" | "GET-MASTER-ADDR-BY-NAME" | "REPLICAS" | "SLAVES" | "SENTINELS", 3) => {
                if sub == "GET-MASTER-ADDR-BY-NAME" {
                    // Redis answers an unknown name with a null here, not an error.
                    self.enc.null(&mut out.buf);
                } else {
                    self.err(out, unknown);
                }
            }
            _ => self.err(
                out,
                &format!(
                    "ERR unknown or malformed SENTINEL subcommand '{}': this node answers MASTERS, MASTER, GET-MASTER-ADDR-BY-NAME, REPLICAS, SLAVES and SENTINELS",
                    sub.chars().take(32).collect::<String>()
                ),
            ),
        }
        After::Continue
    }
}
