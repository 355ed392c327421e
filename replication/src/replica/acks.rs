//! A replica link's acknowledgements, written by the receive thread and by the thread that
//! acknowledges batches synced in the background, one whole frame at a time.

use storage::Lsn;

use crate::frame::Frame;
use crate::node::now_us;
use crate::wire::transport::Link;

/// A replica link's acknowledgements: written by the receive thread and by the thread that
/// acknowledges background syncs, one whole frame at a time.
pub(crate) struct Acks {
    /// The socket and the buffer frames are encoded in.
    pub(crate) sock: parking_lot::Mutex<(Link, Vec<u8>)>,
    /// Another handle of the socket, to shut it down while a write may hold `sock`.
    pub(crate) closer: Link,
    pub(crate) st: parking_lot::Mutex<AckState>,
    pub(crate) cv: parking_lot::Condvar,
}

#[derive(Default)]
pub(crate) struct AckState {
    /// Acknowledge once the log is synced up to here.
    pub(crate) want: u64,
    pub(crate) stop: bool,
    /// Why the acknowledging thread stopped early (the link is then given up).
    pub(crate) failed: Option<String>,
}

impl Acks {
    pub(crate) fn send(&self, w: Lsn, f: Lsn, a: Lsn) -> std::io::Result<()> {
        use std::io::Write;
        let mut g = self.sock.lock();
        let (sock, out) = &mut *g;
        out.clear();
        Frame::Feedback {
            write_lsn: w,
            flush_lsn: f,
            apply_lsn: a,
            time_us: now_us(),
        }
        .encode(out);
        sock.write_all(out)
    }

    /// The acknowledging thread: waits for each requested sync, then reports all three
    /// positions.
    pub(crate) fn run(&self, db: &storage::Db) {
        let mut done = 0;
        loop {
            let target = {
                let mut st = self.st.lock();
                while st.want <= done && !st.stop {
                    self.cv.wait(&mut st);
                }
                if st.stop {
                    return;
                }
                st.want
            };
            let r = db
                .wait_durable(Lsn(target))
                .map_err(|e| format!("syncing received WAL: {e}"))
                .and_then(|()| {
                    self.send(db.written_lsn(), db.flush_lsn(), db.apply_lsn())
                        .map_err(|e| format!("acknowledging: {e}"))
                });
            if let Err(why) = r {
                self.st.lock().failed = Some(why);
                return;
            }
            done = target;
        }
    }
}

/// Stops the acknowledging thread when the receive loop ends, however it ends.
pub(crate) struct StopAcks<'a>(pub(crate) &'a Acks);

impl Drop for StopAcks<'_> {
    fn drop(&mut self) {
        self.0.st.lock().stop = true;
        self.0.cv.notify_all();
        // A write blocked on a primary that stopped reading returns now.
        let _ = self.0.closer.shutdown();
    }
}
