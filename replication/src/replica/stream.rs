//! The replica's stream, on a thread of its own with blocking I/O: WAL frames are written,
//! replayed, synced when a commit waits for this replica, and acknowledged, without waiting
//! for a runtime worker.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use storage::Lsn;

use super::acks::{Acks, StopAcks};
use super::receiver::stream_over;
use crate::error::{bail, Error, Result};
use crate::frame::{self, Frame};
use crate::node::{now_us, Node};
use crate::wire::handshake::{WalGone, WAL_GONE};
use crate::wire::io::{read_frame_blocking, spin_for_frame};
use crate::wire::transport::Link;

/// How long a replica's receive thread looks for the next frame without sleeping, from its
/// acknowledgement of a batch flagged eager (one or two commits at a remote level wait on the
/// primary, and the next can only follow that acknowledgement). On these VMs a thread asleep
/// on its socket wakes tens of microseconds after the bytes arrive (an idle vCPU is slow to
/// wake), a fair part of a synchronous commit, and a lone client's next commit reaches the
/// replica within about a client round trip of the acknowledgement. Between looks the thread
/// yields, so the primary and the clients sharing the CPUs run first. Measured for a lone
/// client: `remote_flush` 11% faster, `remote_apply` 8%, `remote_write` 41%
/// (docs/benchmarks.md). With more commits waiting the frames are not flagged: spinning then
/// took CPU the primary needed.
const REPLICA_SPIN: Duration = Duration::from_micros(300);

/// How often a blocked replica stream looks at the stop flag.
pub(crate) const STOP_CHECK: Duration = Duration::from_millis(100);

/// A primary silent for this long (it sends keepalives every `KEEPALIVE`) is taken as gone.
const SILENCE: Duration = Duration::from_secs(5);

/// A batch at least this large that a commit waits for is synced in the background while it
/// is replayed.
const OVERLAP_SYNC_BYTES: usize = 2 * 1024;

/// How long a replica leaves WAL that no commit waits for unsynced.
const LAZY_SYNC: Duration = Duration::from_millis(10);

/// How often an idle replica with unsynced WAL looks whether `LAZY_SYNC` has passed.
const LAZY_TICK: Duration = Duration::from_millis(1);

/// Replica side: receives WAL frames, writes and replays them, syncs them if a frame asks
/// (a commit waits for this replica's flush), and acknowledges once; syncs WAL nobody waits
/// for within `LAZY_SYNC`; answers keepalives. Consecutive WAL frames already received go
/// into one `apply_wal` call (one write, at most one sync, one acknowledgement). A large
/// batch to sync is written and synced by the WAL's background flusher while this thread
/// replays it, and acknowledged by a thread of its own once synced, while this one goes on
/// receiving and replaying the next: under load the replica's syncs run back to back.
pub(crate) fn receive_loop(node: &Node, sock: Link, buf: BytesMut, gen: u64) -> Result<()> {
    let db = node.db();
    let acks = Acks {
        sock: parking_lot::Mutex::new((sock.try_clone()?, Vec::with_capacity(64))),
        closer: sock.try_clone()?,
        st: Default::default(),
        cv: Default::default(),
    };
    std::thread::scope(|s| {
        let (acks, db2) = (&acks, &db);
        std::thread::Builder::new()
            .name("replidb-acks".into())
            .spawn_scoped(s, move || acks.run(db2))?;
        let _stop = StopAcks(acks);
        receive_frames(node, sock, buf, gen, &db, acks)
    })
}

fn receive_frames(
    node: &Node,
    mut sock: Link,
    mut buf: BytesMut,
    gen: u64,
    db: &storage::Db,
    acks: &Acks,
) -> Result<()> {
    let feedback = |w: Lsn, f: Lsn, a: Lsn| acks.send(w, f, a);
    let mut heard = Instant::now();
    // When WAL was first left unsynced (since the last sync).
    let mut unsynced_since: Option<Instant> = None;
    let mut timeout = STOP_CHECK;
    let mut spin_until: Option<Instant> = None;
    loop {
        if stream_over(node, gen) {
            return Ok(());
        }
        if let Some(why) = acks.st.lock().failed.take() {
            bail!("{why}");
        }
        if unsynced_since.is_some_and(|t| t.elapsed() >= LAZY_SYNC) {
            let f = db.sync_wal()?;
            unsynced_since = None;
            feedback(db.written_lsn(), f, db.apply_lsn())?;
        }
        // While WAL waits for its lazy sync, reads wake every `LAZY_TICK` to look at the
        // clock; the socket option changes only when that state does (not per batch).
        let want = if unsynced_since.is_some() {
            LAZY_TICK
        } else {
            STOP_CHECK
        };
        if want != timeout {
            timeout = want;
            sock.set_read_timeout(Some(timeout))?;
        }
        // While commits wait for this replica, the next frame usually follows within a round
        // trip of the client: look for it without sleeping first (see `REPLICA_SPIN`).
        let spun = match spin_until.take() {
            Some(until) => spin_for_frame(&sock, &mut buf, until)?,
            None => None,
        };
        let got = match spun {
            Some(f) => Ok(f),
            None => read_frame_blocking(&mut sock, &mut buf),
        };
        let f = match got {
            Ok(f) => f,
            Err(Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if heard.elapsed() > SILENCE {
                    bail!("the primary has been silent for {SILENCE:?}");
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        heard = Instant::now();
        node.last_heard_us.store(now_us(), Ordering::Relaxed);
        match f {
            Frame::Wal {
                start_lsn,
                mut bytes,
                mut sync,
                mut eager,
            } => {
                // Take along every further WAL frame that is already here.
                while let Ok(Some((
                    Frame::Wal {
                        start_lsn: s2,
                        bytes: b2,
                        sync: s2sync,
                        eager: s2eager,
                    },
                    len,
                ))) = frame::decode(&buf)
                {
                    if start_lsn.0.checked_add(bytes.len() as u64) != Some(s2.0) {
                        break;
                    }
                    bytes.extend_from_slice(&b2);
                    sync |= s2sync;
                    eager = s2eager;
                    let _ = buf.split_to(len);
                }
                // Write and replay, then sync if a commit waits for this replica's flush, then
                // one acknowledgement of all three positions. (Acknowledging the flush before
                // the replay would answer `remote_flush` a replay earlier, but each
                // acknowledgement wakes the primary and the second one competes with its next
                // commit: measured slower on two vCPUs, see docs/benchmarks.md.) A small batch
                // is synced here: a hand-off to other threads would cost it wake-ups.
                let background = sync && bytes.len() >= OVERLAP_SYNC_BYTES;
                let how = if background {
                    storage::ReplicaSync::Background
                } else {
                    storage::ReplicaSync::Lazy
                };
                let mut p = db.apply_wal_with(start_lsn, &bytes, how, &mut |_| {})?;
                if background {
                    let mut st = acks.st.lock();
                    // Every commit of the batch is at or before its apply LSN (records past
                    // it belong to a batch still incomplete, synced with it all the same).
                    st.want = st.want.max(p.apply_lsn.0);
                    drop(st);
                    acks.cv.notify_one();
                    unsynced_since = None;
                } else {
                    if sync {
                        p.flush_lsn = db.sync_wal()?;
                    }
                    feedback(p.write_lsn, p.flush_lsn, p.apply_lsn)?;
                    if p.flush_lsn < db.written_lsn() {
                        unsynced_since.get_or_insert_with(Instant::now);
                    } else {
                        unsynced_since = None;
                    }
                }
                node.applied.send_replace(p.apply_lsn.0);
                let primary_flush = node
                    .primary_flush
                    .fetch_max(p.write_lsn.0, Ordering::Relaxed)
                    .max(p.write_lsn.0);
                node.lag_ms(primary_flush.saturating_sub(p.apply_lsn.0));
                // From the acknowledgement on, which the next commit can only follow.
                if eager {
                    spin_until = Some(Instant::now() + REPLICA_SPIN);
                }
            }
            Frame::Keepalive {
                primary_flush_lsn, ..
            } => {
                node.primary_flush
                    .store(primary_flush_lsn.0, Ordering::Relaxed);
                feedback(db.written_lsn(), db.flush_lsn(), db.apply_lsn())?;
            }
            Frame::Error { code, message } if code == WAL_GONE => {
                return Err(WalGone::Removed(message).into())
            }
            Frame::Error { message, .. } => bail!("the primary says: {message}"),
            other => bail!("unexpected frame {other:?}"),
        }
    }
}
