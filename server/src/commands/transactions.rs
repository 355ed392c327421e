//! Transactions: MULTI, EXEC, DISCARD (the queued commands run as one commit at EXEC), and
//! WATCH / UNWATCH (EXEC answers nil when a watched key changed — or expired — after WATCH).

use bytes::Bytes;

use super::{arity_error, lookup, unreachable_command};
use crate::session::{After, Out, Session};

/// The most a connection may queue in MULTI: its commands' argument bytes, plus
/// `MULTI_ARG_COST` per argument for what holding one costs. Past it the command is refused
/// and the transaction is discarded at EXEC (as a queueing error is), so one client cannot
/// grow the server's memory without bound.
pub const MAX_MULTI_BYTES: usize = 512 << 20;
const MULTI_ARG_COST: usize = 64;

impl Session {
    fn unwatch(&mut self) {
        if let Some(w) = self.watch.take() {
            self.shared.watches.unwatch(&w);
        }
    }

    /// MULTI, EXEC, DISCARD, WATCH or UNWATCH.
    pub(crate) fn transaction_command(&mut self, name: &str, args: &[Bytes], out: &mut Out) {
        match name {
            "WATCH" => {
                if self.multi.is_some() {
                    self.err(out, "ERR WATCH inside MULTI is not allowed");
                    return;
                }
                // No group is applied between reading the keys and registering the watch: a
                // write in between would flag nothing and be missed.
                let sh = self.shared.clone();
                let _no_group = sh.applying.lock();
                let now = crate::shared::now_ms();
                let mut deadlines = Vec::new();
                {
                    let snap = self.db.read();
                    for k in &args[1..] {
                        match crate::model::lookup(&snap, k, now) {
                            Ok(f) => deadlines.push(f.and_then(|f| f.meta.expire_at)),
                            Err(e) => {
                                drop(snap);
                                self.err(out, &format!("ERR {e}"));
                                return;
                            }
                        }
                    }
                }
                let w = self.watch.get_or_insert_with(|| crate::watch::Watch {
                    dirty: Default::default(),
                    keys: Vec::new(),
                    deadline: None,
                });
                for (k, d) in args[1..].iter().zip(deadlines) {
                    sh.watches.watch(w, k);
                    if let Some(d) = d {
                        w.deadline = Some(w.deadline.map_or(d, |x| x.min(d)));
                    }
                }
                self.enc.simple(&mut out.buf, "OK");
            }
            "UNWATCH" => {
                self.unwatch();
                self.enc.simple(&mut out.buf, "OK");
            }
            "MULTI" => {
                if self.multi.is_some() {
                    self.err(out, "ERR MULTI calls can not be nested");
                } else {
                    self.multi = Some(Vec::new());
                    self.multi_error = false;
                    self.multi_bytes = 0;
                    self.enc.simple(&mut out.buf, "OK");
                }
            }
            "EXEC" => self.exec(out),
            "DISCARD" => {
                self.unwatch();
                if self.multi.take().is_some() {
                    self.enc.simple(&mut out.buf, "OK");
                } else {
                    self.err(out, "ERR DISCARD without MULTI");
                }
            }
            _ => unreachable_command(name),
        }
    }

    pub(crate) fn queue(&mut self, name: &str, args: Vec<Bytes>, out: &mut Out) -> After {
        if !lookup(name.as_bytes()).is_some_and(|s| s.in_multi) {
            self.multi_error = true;
            let shown = if name.is_empty() {
                String::from_utf8_lossy(&args[0]).chars().take(64).collect()
            } else {
                name.to_ascii_lowercase()
            };
            self.err(
                out,
                &format!("ERR command '{shown}' is not allowed inside MULTI"),
            );
        } else if let Some(msg) = arity_error(name, args.len()) {
            self.multi_error = true;
            self.err(out, &msg);
        } else if self.multi_bytes + args.iter().map(|a| a.len() + MULTI_ARG_COST).sum::<usize>()
            > MAX_MULTI_BYTES
        {
            self.multi_error = true;
            self.err(
                out,
                &format!(
                    "ERR MULTI queue full (more than {} MiB queued); the transaction will be discarded",
                    MAX_MULTI_BYTES >> 20
                ),
            );
        } else {
            self.multi_bytes += args.iter().map(|a| a.len() + MULTI_ARG_COST).sum::<usize>();
            self.multi.as_mut().expect("in MULTI").push(args);
            self.enc.simple(&mut out.buf, "QUEUED");
        }
        After::Continue
    }

    fn exec(&mut self, out: &mut Out) {
        let Some(cmds) = self.multi.take() else {
            self.err(out, "ERR EXEC without MULTI");
            return;
        };
        if self.multi_error {
            self.unwatch();
            self.err(
                out,
                "EXECABORT Transaction discarded because of previous errors.",
            );
            return;
        }
        self.write_commands(cmds, out, true);
    }
}
