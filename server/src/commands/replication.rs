//! Replication commands: ROLE, REPLICAOF, FAILOVER, WAIT, WAITLSN, MAXLAG, and the nodes' own
//! REPLSTREAM, REPLSNAPSHOT, REPLREWIND and REPLCONTROL (they hand the connection over).

use std::sync::atomic::Ordering;

use bytes::Bytes;
use storage::Lsn;

use super::{parse_i64, unreachable_command};
use crate::session::{Admin, After, Out, Part, Session};

impl Session {
    /// A replication command.
    pub(crate) fn replication_command(
        &mut self,
        name: &str,
        args: &[Bytes],
        out: &mut Out,
    ) -> After {
        match name {
            "REPLICAOF" | "SLAVEOF" if self.shared.cluster.is_some() => {
                let cluster = self
                    .shared
                    .cluster
                    .as_ref()
                    .map_or("", |c| c.config.cluster.as_str());
                self.err(out, &format!("ERR this node is a member of cluster {cluster}: etcd's leader key decides who is primary. For a planned switchover run FAILOVER TO host port on the primary"));
            }
            "REPLICAOF" | "SLAVEOF" => {
                let op = if args[1].eq_ignore_ascii_case(b"no")
                    && args[2].eq_ignore_ascii_case(b"one")
                {
                    Some(Admin::Promote)
                } else {
                    let host = String::from_utf8_lossy(&args[1]).to_string();
                    match std::str::from_utf8(&args[2])
                        .ok()
                        .and_then(|p| p.parse::<u16>().ok())
                    {
                        Some(port) if !host.is_empty() && port > 0 => {
                            Some(Admin::Follow(format!("{host}:{port}")))
                        }
                        _ => None,
                    }
                };
                match op {
                    Some(op) => {
                        out.defer(Part::Admin(op));
                    }
                    None => self.err(out, "ERR REPLICAOF host port, or REPLICAOF NO ONE"),
                }
            }
            "FAILOVER" => {
                let port = std::str::from_utf8(&args[3])
                    .ok()
                    .and_then(|p| p.parse::<u16>().ok());
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
                        out.defer(Part::Admin(Admin::Failover(format!("{host}:{port}"), ms)));
                    }
                    _ => self.err(out, "ERR FAILOVER TO host port [TIMEOUT ms]"),
                }
            }
            "WAITLSN" => match (parse_i64(&args[1]), parse_i64(&args[2])) {
                (Some(lsn), Some(ms)) if lsn >= 0 && ms >= 0 => {
                    out.defer(Part::WaitLsn {
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
                    out.defer(Part::Wait {
                        replicas: n as usize,
                        timeout_ms: ms as u64,
                    });
                }
            }
            "ROLE" => {
                if let Some(p) = &self.shared.node.replicaof() {
                    let (host, port) = p.rsplit_once(':').unwrap_or((p.as_str(), "0"));
                    let state = if self.shared.node.link_up.load(Ordering::Relaxed) {
                        "connected"
                    } else {
                        "connect"
                    };
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
                    let live: Vec<_> = reps
                        .iter()
                        .map(|(r, _)| r)
                        .filter(|r| r.pos.connected)
                        .collect();
                    self.enc.array(&mut out.buf, live.len());
                    for r in live {
                        let (host, port) =
                            r.addr.rsplit_once(':').unwrap_or((r.addr.as_str(), "0"));
                        self.enc.array(&mut out.buf, 3);
                        self.enc.bulk(&mut out.buf, host.as_bytes());
                        self.enc.bulk(&mut out.buf, port.as_bytes());
                        self.enc
                            .bulk(&mut out.buf, r.pos.apply_lsn.0.to_string().as_bytes());
                    }
                }
            }
            "FORGETREPLICA" => {
                // A replica that will not come back (a finished backup, a retired node): its
                // entry goes, and with it the WAL kept for it.
                let name = String::from_utf8_lossy(&args[1]).to_string();
                let node = &self.shared.node;
                let known = node.tracker.snapshot();
                match known.iter().find(|(r, _)| r.pos.name == name) {
                    None => self.enc.int(&mut out.buf, 0),
                    Some((r, _)) if r.pos.connected => self.err(
                        out,
                        &format!("ERR replica {name} is connected: a replica is forgotten only once its link is down"),
                    ),
                    Some(_) => {
                        node.tracker.forget(&name);
                        replication::primary::update_retention(node);
                        self.enc.int(&mut out.buf, 1);
                    }
                }
            }
            "REPLSTREAM" => return After::Replicate,
            "REPLSNAPSHOT" => return After::Snapshot,
            "REPLREWIND" => return After::Rewind,
            "REPLPAGES" => return After::Pages,
            "REPLVERIFY" => return After::Verify,
            "REPLCONTROL" => return After::Control,
            _ => unreachable_command(name),
        }
        After::Continue
    }
}
