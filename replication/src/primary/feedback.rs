//! The replicas' acknowledgements, read by each link's feedback thread or by a committer
//! spinning for its quorum, whichever gets there first, into the quorum tracker.

use std::sync::atomic::Ordering;

use bytes::BytesMut;
use storage::Lsn;

use super::links::LiveLink;
use super::KEEPALIVE;
use crate::frame::{self, Frame};
use crate::node::{now_us, Node};
use crate::tracker::LinkId;
use crate::wire::io::{recv_available, wait_readable};
use crate::wire::transport::Link;

/// The reading side of a replica link.
pub(crate) struct Feedback {
    /// A clone of the link's socket, read only with `MSG_DONTWAIT`.
    pub(crate) sock: Link,
    /// Bytes of a frame not yet complete.
    pub(crate) buf: BytesMut,
    pub(crate) slot: LinkId,
    /// Why the link ended, once a reader found out.
    pub(crate) closed: Option<String>,
}

impl Feedback {
    pub(crate) fn new(sock: Link, buf: BytesMut, slot: LinkId) -> Feedback {
        Feedback {
            sock,
            buf,
            slot,
            closed: None,
        }
    }

    /// Takes every acknowledgement the socket holds now, without blocking, into the quorum
    /// tracker — once, with the furthest positions among them (they only move forward);
    /// records why the link ended if it did.
    pub(crate) fn drain(&mut self, node: &Node) {
        let mut latest: Option<(Lsn, Lsn, Lsn)> = None;
        while self.closed.is_none() {
            match frame::decode(&self.buf) {
                Ok(Some((f, len))) => {
                    let _ = self.buf.split_to(len);
                    if let Frame::Feedback {
                        write_lsn,
                        flush_lsn,
                        apply_lsn,
                        ..
                    } = f
                    {
                        latest = Some(match latest {
                            Some((w, fl, a)) => {
                                (w.max(write_lsn), fl.max(flush_lsn), a.max(apply_lsn))
                            }
                            None => (write_lsn, flush_lsn, apply_lsn),
                        });
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    self.closed = Some(format!("bad frame: {e}"));
                    break;
                }
            }
            match recv_available(&self.sock, &mut self.buf) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => self.closed = Some(e.to_string()),
            }
        }
        if let Some((w, f, a)) = latest {
            node.tracker.update(self.slot, w, f, a);
            // (The WAL retention floor follows within `RETENTION_TICK`: until then it only
            // keeps more WAL than needed.)
            node.tracker.heard(self.slot, now_us() / 1000);
        }
        if self.closed.is_some() {
            // Ends the link at once even when the reader that found out is a committer: the
            // feedback thread's `poll` returns, and it reports why.
            let _ = self.sock.shutdown();
        }
    }
}

/// Reads the replica's feedback until the link ends; returns why it ended.
pub(crate) fn feedback_loop(node: &Node, link: &LiveLink) -> String {
    loop {
        {
            let mut fb = link.fb.lock();
            fb.drain(node);
            if let Some(why) = &fb.closed {
                return why.clone();
            }
        }
        if link.dead.load(Ordering::SeqCst) {
            return "the link ended".into();
        }
        // Any descriptor of the socket will do for waiting; the sending one needs no lock.
        wait_readable(&link.sock, KEEPALIVE);
    }
}
