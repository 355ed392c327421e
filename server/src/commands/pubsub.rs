//! `SUBSCRIBE`, `PSUBSCRIBE`, `UNSUBSCRIBE`, `PUNSUBSCRIBE`: the subscribed mode of a
//! connection, with Redis's replies (RESP2 arrays, RESP3 pushes). What a subscriber
//! receives today are the cluster's Sentinel events — `+switch-master <name> <old ip> <old
//! port> <new ip> <new port>` when the leader key moves to a new primary — which clients
//! such as Jedis's `JedisSentinelPool` listen to on their sentinels to learn of a failover,
//! and what `PUBLISH` sends.

use bytes::{Bytes, BytesMut};

use std::collections::HashMap;

use crate::glob;
use crate::session::{After, Out, Session};

/// How many connections subscribe to each channel and pattern (PUBLISH's answer).
#[derive(Default)]
pub struct Subscribers {
    channels: HashMap<Vec<u8>, usize>,
    patterns: HashMap<Vec<u8>, usize>,
}

impl Subscribers {
    pub(crate) fn add(&mut self, pattern: bool, name: &[u8], d: isize) {
        let map = if pattern {
            &mut self.patterns
        } else {
            &mut self.channels
        };
        let n = map.entry(name.to_vec()).or_default();
        *n = n.saturating_add_signed(d);
        if *n == 0 {
            map.remove(name);
        }
    }

    /// The subscriptions a message on `ch` reaches.
    pub(crate) fn receivers(&self, ch: &[u8]) -> usize {
        self.channels.get(ch).copied().unwrap_or(0)
            + self
                .patterns
                .iter()
                .filter(|(p, _)| glob::matches(p, ch))
                .map(|(_, n)| n)
                .sum::<usize>()
    }
}

/// Commands a RESP2 connection may send while subscribed (Redis's list).
pub(crate) fn allowed_while_subscribed(name: &str) -> bool {
    matches!(
        name,
        "SUBSCRIBE" | "PSUBSCRIBE" | "UNSUBSCRIBE" | "PUNSUBSCRIBE" | "PING" | "QUIT" | "RESET"
    )
}

impl Session {
    /// Subscriptions held (channels and patterns).
    pub(crate) fn subscriptions(&self) -> usize {
        self.channels.len() + self.patterns.len()
    }

    fn ack(&self, out: &mut BytesMut, kind: &[u8], name: Option<&[u8]>, count: usize) {
        self.enc.push(out, 3);
        self.enc.bulk(out, kind);
        self.enc.opt_bulk(out, name);
        self.enc.int(out, count as i64);
    }

    /// A pub/sub command.
    pub(crate) fn pubsub_command(&mut self, name: &str, args: &[Bytes], out: &mut Out) -> After {
        match name {
            "SUBSCRIBE" | "PSUBSCRIBE" => {
                let pattern = name == "PSUBSCRIBE";
                for a in &args[1..] {
                    let new = if pattern {
                        self.patterns.insert(a.to_vec())
                    } else {
                        self.channels.insert(a.to_vec())
                    };
                    if new {
                        self.shared.subs.lock().add(pattern, a, 1);
                    }
                    let kind: &[u8] = if pattern { b"psubscribe" } else { b"subscribe" };
                    self.ack(&mut out.buf, kind, Some(a), self.subscriptions());
                }
                if self.events.is_none() {
                    self.events = Some(self.shared.events.subscribe());
                }
            }
            "UNSUBSCRIBE" | "PUNSUBSCRIBE" => {
                let pattern = name == "PUNSUBSCRIBE";
                let kind: &[u8] = if pattern {
                    b"punsubscribe"
                } else {
                    b"unsubscribe"
                };
                let names: Vec<Vec<u8>> = if args.len() > 1 {
                    args[1..].iter().map(|a| a.to_vec()).collect()
                } else if pattern {
                    self.patterns.iter().cloned().collect()
                } else {
                    self.channels.iter().cloned().collect()
                };
                if names.is_empty() {
                    self.ack(&mut out.buf, kind, None, self.subscriptions());
                }
                for n in names {
                    let gone = if pattern {
                        self.patterns.remove(&n)
                    } else {
                        self.channels.remove(&n)
                    };
                    if gone {
                        self.shared.subs.lock().add(pattern, &n, -1);
                    }
                    self.ack(&mut out.buf, kind, Some(&n), self.subscriptions());
                }
                if self.subscriptions() == 0 {
                    self.events = None;
                }
            }
            "PUBLISH" => {
                let (ch, msg) = (args[1].clone(), args[2].clone());
                let n = self.shared.subs.lock().receivers(&ch);
                let _ = self.shared.events.send((ch, msg));
                self.enc.int(&mut out.buf, n as i64);
            }
            _ => crate::commands::unreachable_command(name),
        }
        After::Continue
    }

    /// Drops this connection's subscriptions from the shared counts (it is closing).
    pub(crate) fn drop_subscriptions(&mut self) {
        if self.subscriptions() == 0 {
            return;
        }
        let mut subs = self.shared.subs.lock();
        for c in std::mem::take(&mut self.channels) {
            subs.add(false, &c, -1);
        }
        for p in std::mem::take(&mut self.patterns) {
            subs.add(true, &p, -1);
        }
    }

    /// Encodes `payload` on `channel` for this subscriber, if it listens to it.
    pub fn deliver(&self, out: &mut BytesMut, ch: &[u8], payload: &[u8]) {
        if self.channels.contains(ch) {
            self.enc.push(out, 3);
            self.enc.bulk(out, b"message");
            self.enc.bulk(out, ch);
            self.enc.bulk(out, payload);
        }
        for p in &self.patterns {
            if glob::matches(p, ch) {
                self.enc.push(out, 4);
                self.enc.bulk(out, b"pmessage");
                self.enc.bulk(out, p);
                self.enc.bulk(out, ch);
                self.enc.bulk(out, payload);
            }
        }
    }
}
