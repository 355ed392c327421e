//! Server commands: INFO, CONFIG, CHECKPOINT, DURABILITY, LSN, DIGEST, SCRUB, COMPACT,
//! SHUTDOWN.

use bytes::Bytes;

use super::{unreachable_command, wrong_arity};
use crate::reply::storage_error;
use crate::session::{After, Out, Session};
use storage::Durability;

impl Session {
    /// A server command.
    pub(crate) fn server_command(&mut self, name: &str, args: &[Bytes], out: &mut Out) -> After {
        let argc = args.len();
        match name {
            "INFO" => {
                let section = args.get(1).map(|s| String::from_utf8_lossy(s).to_ascii_lowercase());
                let text = crate::info::render(&self.shared, section.as_deref());
                self.enc.bulk(&mut out.buf, text.as_bytes());
            }
            "CONFIG" => crate::info::config(self, args, out),
            "CHECKPOINT" => {
                // Runs inline, like Redis's SAVE: an operator's command, rare, and bounded by
                // the checkpoint distance.
                match self.shared.db().checkpoint() {
                    Ok(()) => self.enc.simple(&mut out.buf, "OK"),
                    Err(e) => self.err(out, &storage_error(&e)),
                }
            }
            "DURABILITY" => match argc {
                1 => self.enc.bulk(&mut out.buf, self.level().name().as_bytes()),
                2 => match Durability::parse(&String::from_utf8_lossy(&args[1])) {
                    Some(l) => {
                        self.level = Some(l);
                        self.enc.simple(&mut out.buf, "OK");
                    }
                    None => self.err(out, "ERR durability level must be off, local, remote_write, remote_flush or remote_apply"),
                },
                _ => self.err(out, &wrong_arity("durability")),
            },
            "LSN" => self.enc.int(&mut out.buf, self.last_lsn.0 as i64),
            "DIGEST" => {
                let (lsn, d) = self.db().read().digest();
                self.enc.bulk(&mut out.buf, format!("{lsn} {d:016x}").as_bytes());
            }
            "SCRUB" => {
                // Reads the whole page file and the WAL at --scrub-rate: answered when done.
                out.defer(crate::session::Part::Admin(crate::session::Admin::Scrub));
            }
            "COMPACT" => {
                // A primary's write (logged, replicated): refused at once where writes are.
                if let Some(r) = self.shared.node.write_refusal() {
                    self.err(out, &crate::shared::role_refusal_message(&r));
                } else {
                    // Runs step by step off the event loop: answered when the pass is done.
                    out.defer(crate::session::Part::Admin(crate::session::Admin::Compact));
                }
            }
            "SHUTDOWN" => {
                tracing::info!(client = self.id, "SHUTDOWN requested by a client");
                let _ = self.shared.node.shutdown.send(true);
                return After::Close;
            }
            _ => unreachable_command(name),
        }
        After::Continue
    }
}
