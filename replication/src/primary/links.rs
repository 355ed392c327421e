//! The replica links a primary's WAL flusher pushes new WAL to, and the flags of the frames
//! it sends: sync (a commit waits for that replica's flush) and eager (few commits wait: the
//! replica looks for the next frame before it sleeps).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use storage::Lsn;

use super::feedback::Feedback;
use crate::frame;
use crate::node::Node;
use crate::wire::io::send_nowait;
use crate::wire::transport::Link;

/// The flags of a wal frame (`Links::wal_flags`) for the replica in `slot`, given the
/// tracker's `wanted` mask: the sync flag only if the quorum needs that replica's flush now
/// (`Tracker::flush_wanted`: the `sync` ones under FIRST, the ones that have flushed furthest
/// under ANY); the others write what they receive and sync it lazily (within `LAZY_SYNC`),
/// so a lone commit's syncs no longer share the disk with a sync no quorum waits for
/// (`remote_flush` × 1: 3,378 against 3,093 commits/s, p50 253.5 against 306.5 µs, 8
/// alternated rounds, docs/benchmarks.md). The eager flag stays as it is for every replica:
/// one that is not asked to sync still acknowledges `remote_write` commits, and its look for
/// the next frame keeps its vCPU awake for the others (3,324 against 3,120 commits/s with it
/// off there).
pub(crate) fn link_flags((sync, eager): (bool, bool), wanted: u64, slot: usize) -> (bool, bool) {
    (sync && crate::tracker::wanted_in(wanted, slot), eager)
}

/// One replica link's sending side, shared by its sender thread and the WAL flusher.
pub struct LiveLink {
    /// A clone of the link's (blocking) socket.
    pub(crate) sock: Link,
    pub(crate) st: parking_lot::Mutex<LinkState>,
    /// `LinkState::sent`, readable without the lock.
    pub(crate) sent: AtomicU64,
    /// The flusher left part of a frame in `LinkState::pending` (a full socket): the sender
    /// thread must not sleep before it has written it.
    pub(crate) partial: std::sync::atomic::AtomicBool,
    /// Set when either side of the link ends.
    pub(crate) dead: std::sync::atomic::AtomicBool,
    /// The replica's acknowledgements, read by the link's feedback thread or, while it
    /// spins for its quorum, by a committer (whichever gets there first).
    pub(crate) fb: parking_lot::Mutex<Feedback>,
    /// The replica's slot in the tracker.
    pub(crate) slot: usize,
}

pub(crate) struct LinkState {
    /// Everything before this LSN is on the socket or in `pending`.
    pub(crate) sent: Lsn,
    /// The unsent rest of a frame the flusher could only partly send.
    pub(crate) pending: Vec<u8>,
    /// Frame buffer of the flusher's sends.
    pub(crate) frame: Vec<u8>,
}

impl LiveLink {
    pub(crate) fn new(sock: Link, from: Lsn, fb: Feedback) -> LiveLink {
        LiveLink {
            sock,
            slot: fb.slot.slot,
            fb: parking_lot::Mutex::new(fb),
            st: parking_lot::Mutex::new(LinkState {
                sent: from,
                pending: Vec::new(),
                frame: Vec::new(),
            }),
            sent: AtomicU64::new(from.0),
            partial: std::sync::atomic::AtomicBool::new(false),
            dead: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Called by the WAL flusher between write and sync: if this link has sent everything up
    /// to `start` and its socket has room, the bytes go out now — no thread to wake, the
    /// replica receives them while this node syncs. Otherwise (busy, behind, or a full socket)
    /// the sender thread does it.
    /// Returns whether the link took the bytes (or is dead: nothing to do for it).
    pub(crate) fn push(&self, start: Lsn, bytes: &[u8], (sync, eager): (bool, bool)) -> bool {
        if self.dead.load(Ordering::Relaxed) {
            return true;
        }
        if bytes.len() > frame::MAX_WAL_CHUNK {
            return false;
        }
        let Some(mut st) = self.st.try_lock() else {
            return false;
        };
        if st.sent != start || !st.pending.is_empty() {
            return false;
        }
        let st = &mut *st;
        st.frame.clear();
        frame::encode_wal(start, bytes, sync, eager, &mut st.frame);
        let n = match send_nowait(&self.sock, &st.frame) {
            Ok(n) => n,
            // Full socket or a broken link: the sender thread will see.
            Err(_) => return false,
        };
        if n < st.frame.len() {
            st.pending.extend_from_slice(&st.frame[n..]);
            // Before the caller's notify: the sender thread finishes the frame.
            self.partial.store(true, Ordering::SeqCst);
        }
        st.sent = Lsn(start.0 + bytes.len() as u64);
        self.sent.store(st.sent.0, Ordering::Release);
        n == st.frame.len()
    }
}

impl LiveLink {
    /// Whether the link's sender thread must not sleep, the log having been written up to
    /// `written`: WAL past what the link has sent, the rest of a frame the flusher could send
    /// only in part, or the link's end to report.
    pub(crate) fn sender_has_work(&self, written: Lsn) -> bool {
        written.0 > self.sent.load(Ordering::Acquire)
            || self.partial.load(Ordering::SeqCst)
            || self.dead.load(Ordering::SeqCst)
    }
}

/// How long a sender thread lets new WAL gather before it ships it while no commit waits for
/// the replicas (`off`, `local`): one frame per link per interval instead of one per commit.
/// Every frame wakes a sender thread here and a receive thread on the replica, and on two
/// vCPUs those wake-ups slowed the primary's own commits (with the interval a lone client's
/// `off` commits ran 1.8× as fast, its `local` commits 14% faster; docs/benchmarks.md). The
/// price: asynchronous replicas run up to this much further behind.
pub const SHIP_INTERVAL: Duration = Duration::from_millis(1);

/// The replica links the WAL flusher pushes to, and the signal their sender threads wait on.
#[derive(Clone)]
pub struct Links(pub(crate) Arc<LinksInner>);

impl Links {
    pub fn new(signal: Arc<WalSignal>, tracker: crate::tracker::Tracker) -> Links {
        Links(Arc::new(LinksInner {
            links: Default::default(),
            remote_waits: Default::default(),
            flush_waits: Default::default(),
            idle: Default::default(),
            crowded_until_us: AtomicU64::new(0),
            born: Instant::now(),
            signal,
            tracker,
        }))
    }

    /// The WAL flusher's hook, between write and sync. While a commit waits for the replicas,
    /// new WAL goes to the caught-up links from here (no wake-up between a commit and its
    /// replicas), and the sender threads are woken only for links that could not take it.
    /// Otherwise only an idle sender thread is woken: it ships, then lets WAL gather for
    /// `SHIP_INTERVAL` (see there); this node's sync is not delayed by the sends.
    pub fn wal_written(&self, start: Lsn, bytes: &[u8]) {
        if self.remote_wanted() {
            let flags = self.wal_flags();
            // One snapshot for every link: a report in between could otherwise move an `ANY`
            // choice so that no replica gets the sync flag for this WAL.
            let wanted = self.0.tracker.wanted_mask();
            let mut all = true;
            for l in self.0.links.read().iter() {
                all &= l.push(start, bytes, link_flags(flags, wanted, l.slot));
            }
            if !all {
                self.0.signal.notify();
            }
            return;
        }
        // Pairs with the fence of a sender going idle: either it sees the new WAL, or this
        // sees it idle.
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.0.idle.load(Ordering::SeqCst) > 0 {
            self.0.signal.notify();
        }
    }

    /// Call before a write at a remote level is queued (`written`: this node's written LSN);
    /// hold until its quorum answered. For a write at `remote_flush` or `remote_apply`, every
    /// frame sent from then on to a replica the quorum needs to sync (`link_flags`) carries
    /// the sync flag: WAL is read for sending only after it was appended, and the write is
    /// appended only after this. The first such write wakes
    /// the sender threads of links still holding back WAL (see `SHIP_INTERVAL`), so that
    /// usually the links are caught up by the time it is written and the flusher sends it
    /// itself; a link that is not is woken again by `wal_written`.
    pub fn sync_commit(&self, level: crate::quorum::Level, written: Lsn) -> SyncCommit {
        let flush = level != crate::quorum::Level::Write;
        let before = self.0.remote_waits.fetch_add(1, Ordering::SeqCst);
        if before >= EAGER_MAX_WAITS {
            let until = self.0.born.elapsed() + EAGER_QUIET;
            self.0
                .crowded_until_us
                .fetch_max(until.as_micros() as u64 + 1, Ordering::Relaxed);
        }
        if flush {
            self.0.flush_waits.fetch_add(1, Ordering::SeqCst);
        }
        if before == 0
            && self
                .0
                .links
                .read()
                .iter()
                .any(|l| l.sent.load(Ordering::Acquire) < written.0)
        {
            self.0.signal.notify();
        }
        SyncCommit {
            links: self.clone(),
            flush,
        }
    }

    /// Whether at most `EAGER_MAX_WAITS` writes wait for replicas (at any remote level).
    pub fn few_waiting(&self) -> bool {
        self.0.remote_waits.load(Ordering::SeqCst) <= EAGER_MAX_WAITS
    }

    /// Whether a write in flight waits for replicas (at any remote level).
    pub fn remote_wanted(&self) -> bool {
        self.0.remote_waits.load(Ordering::SeqCst) > 0
    }

    /// The flags of a wal frame sent now: sync (a write in flight waits for replicas to sync)
    /// and eager (one to `EAGER_MAX_WAITS` writes at any remote level wait, and no more than
    /// that waited within `EAGER_QUIET`: the replica looks for the next frame before it
    /// sleeps, see `REPLICA_SPIN`).
    pub fn wal_flags(&self) -> (bool, bool) {
        let n = self.0.flush_waits.load(Ordering::SeqCst);
        let r = self.0.remote_waits.load(Ordering::SeqCst);
        let eager = r > 0
            && r <= EAGER_MAX_WAITS
            && self.0.born.elapsed().as_micros() as u64
                >= self.0.crowded_until_us.load(Ordering::Relaxed);
        (n > 0, eager)
    }

    /// `link_flags` for the replica in `slot`, as of now.
    pub fn flags_for(&self, slot: usize) -> (bool, bool) {
        link_flags(self.wal_flags(), self.0.tracker.wanted_mask(), slot)
    }

    /// For a committer spinning for its quorum: takes in the acknowledgements the replica
    /// sockets hold now, sparing the wait for a feedback thread to wake. Links whose reader
    /// is busy are skipped (that reader takes them in).
    pub fn poll_feedback(&self, node: &Node) {
        for l in self.0.links.read().iter() {
            if let Some(mut fb) = l.fb.try_lock() {
                fb.drain(node);
            }
        }
    }

    pub(crate) fn add(&self, l: Arc<LiveLink>) {
        self.0.links.write().push(l);
    }

    pub(crate) fn remove(&self, l: &Arc<LiveLink>) {
        self.0.links.write().retain(|x| !Arc::ptr_eq(x, l));
    }
}

pub(crate) struct LinksInner {
    pub(crate) links: parking_lot::RwLock<Vec<Arc<LiveLink>>>,
    /// Writes at a remote level in flight (from queueing until their quorum answered).
    pub(crate) remote_waits: std::sync::atomic::AtomicUsize,
    /// Those of them at `remote_flush` or `remote_apply`.
    pub(crate) flush_waits: std::sync::atomic::AtomicUsize,
    /// Sender threads waiting for new WAL with nothing to send.
    pub(crate) idle: std::sync::atomic::AtomicUsize,
    /// Until when (µs on `born`'s clock) frames are not flagged eager: the last time more
    /// than `EAGER_MAX_WAITS` writes waited, plus `EAGER_QUIET`.
    pub(crate) crowded_until_us: AtomicU64,
    pub(crate) born: Instant,
    pub(crate) signal: Arc<WalSignal>,
    /// Which replicas the quorum needs to sync at once (`Tracker::flush_wanted`).
    pub(crate) tracker: crate::tracker::Tracker,
}

/// Marks a write at a remote level as in flight while it lives: the WAL flusher sends new
/// WAL itself, and WAL sent meanwhile asks the replicas to sync if the write waits for that.
pub struct SyncCommit {
    links: Links,
    flush: bool,
}

impl Drop for SyncCommit {
    fn drop(&mut self) {
        let inner = &self.links.0;
        inner.remote_waits.fetch_sub(1, Ordering::SeqCst);
        if self.flush {
            inner.flush_waits.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// How long after more than `EAGER_MAX_WAITS` writes waited frames stay unflagged. Between
/// two rounds of a loaded primary the count of waiting writes dips; with 16 clients at
/// `remote_write` those dips flagged frames and the replicas' spinning cost 9% of the
/// commits (docs/benchmarks.md).
pub(crate) const EAGER_QUIET: Duration = Duration::from_millis(2);

/// Most commits at a remote level in flight for which wal frames are flagged eager.
pub(crate) const EAGER_MAX_WAITS: usize = 2;

/// Wakes the threads that send WAL to replicas when new WAL is written (set as the
/// database's WAL listener) or when their link should stop.
#[derive(Default)]
pub struct WalSignal {
    seq: parking_lot::Mutex<u64>,
    cv: parking_lot::Condvar,
}

impl WalSignal {
    /// Notifications so far.
    #[cfg(test)]
    pub fn notified(&self) -> u64 {
        *self.seq.lock()
    }

    pub fn notify(&self) {
        *self.seq.lock() += 1;
        self.cv.notify_all();
    }

    /// Waits until `ready()` holds (checked under the signal's lock, so a notify cannot slip
    /// between the check and the wait) or `timeout` passes.
    pub fn wait_until(&self, timeout: Duration, ready: impl Fn() -> bool) {
        let deadline = Instant::now() + timeout;
        let mut g = self.seq.lock();
        while !ready() {
            if self.cv.wait_until(&mut g, deadline).timed_out() {
                return;
            }
        }
    }
}

#[cfg(test)]
#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Frame;
    use crate::quorum::Level;
    use crate::tracker::LinkId;
    use crate::wire::io::{read_frame_blocking, recv_nowait, spin_for_frame};
    use bytes::BytesMut;

    /// A primary-side link over a real loopback connection; returns it and the replica's end.
    fn link() -> (Arc<LiveLink>, Link) {
        link_in(0, Lsn(0))
    }

    /// `link` for the replica in tracker slot `slot`, sending from `from`.
    fn link_in(slot: usize, from: Lsn) -> (Arc<LiveLink>, Link) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let replica = std::net::TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (primary, _) = l.accept().expect("accept");
        let (primary, replica) = (Link::Tcp(primary), Link::Tcp(replica));
        let slot = LinkId { slot, id: 1 };
        let fb = Feedback::new(primary.try_clone().expect("clone"), BytesMut::new(), slot);
        (Arc::new(LiveLink::new(primary, from, fb)), replica)
    }

    fn received(replica: &Link) -> Vec<u8> {
        let mut got = vec![0u8; 4096];
        match recv_nowait(replica, &mut got) {
            Ok(n) => got.truncate(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => got.clear(),
            Err(e) => panic!("{e}"),
        }
        got
    }

    #[test]
    fn a_replica_looking_for_its_next_frame_keeps_what_came_for_the_blocking_read() {
        use std::io::Write;
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut primary =
            std::net::TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (replica, _) = l.accept().expect("accept");
        let mut replica = Link::Tcp(replica);
        replica
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut f = Vec::new();
        frame::encode_wal(Lsn(7), b"hello", true, true, &mut f);
        let want = Frame::Wal {
            start_lsn: Lsn(7),
            bytes: b"hello".to_vec(),
            sync: true,
            eager: true,
        };
        let mut buf = BytesMut::new();
        let soon = || Instant::now() + Duration::from_millis(1);
        let deadline = Instant::now() + Duration::from_secs(5);

        // Nothing sent: the look ends empty-handed.
        assert_eq!(
            spin_for_frame(&replica, &mut buf, soon()).expect("look"),
            None
        );
        // Half a frame: no frame, but the bytes stay for the next read.
        primary.write_all(&f[..6]).expect("send");
        while buf.len() < 6 && Instant::now() < deadline {
            assert_eq!(
                spin_for_frame(&replica, &mut buf, soon()).expect("look"),
                None
            );
        }
        assert_eq!(&buf[..], &f[..6]);
        // The rest comes while the thread sleeps on the socket: one whole frame.
        primary.write_all(&f[6..]).expect("send");
        assert_eq!(
            read_frame_blocking(&mut replica, &mut buf).expect("read"),
            want
        );
        assert!(buf.is_empty());
        // A frame that arrives during the look is returned by it.
        primary.write_all(&f).expect("send");
        let mut got = None;
        while got.is_none() && Instant::now() < deadline {
            got = spin_for_frame(&replica, &mut buf, soon()).expect("look");
        }
        assert_eq!(got, Some(want));
        // The primary goes away during the look: an error, not a silent timeout.
        drop(primary);
        let mut ended = false;
        while !ended && Instant::now() < deadline {
            ended = spin_for_frame(&replica, &mut buf, soon()).is_err();
        }
        assert!(ended, "a closed connection ends the look with an error");
    }

    #[test]
    fn wal_frames_ask_for_a_sync_while_a_commit_waits_for_one_and_are_eager_while_few_do() {
        let links = Links::new(Arc::new(WalSignal::default()), Default::default());
        assert_eq!(links.wal_flags(), (false, false));
        let write = links.sync_commit(Level::Write, Lsn(0));
        assert_eq!(
            links.wal_flags(),
            (false, true),
            "remote_write needs no sync, but its replica had better be awake"
        );
        let mut flush: Vec<_> = (1..EAGER_MAX_WAITS)
            .map(|_| links.sync_commit(Level::Flush, Lsn(0)))
            .collect();
        assert_eq!(links.wal_flags(), (true, true));
        let crowded = Instant::now();
        flush.push(links.sync_commit(Level::Apply, Lsn(0)));
        assert_eq!(
            links.wal_flags(),
            (true, false),
            "many waiting commits: no spinning"
        );
        drop(write);
        assert_eq!(
            links.wal_flags(),
            (true, false),
            "a dip between two rounds of a loaded primary does not count as quiet"
        );
        let quiet = crowded + EAGER_QUIET;
        let deadline = quiet + Duration::from_secs(5);
        while links.wal_flags() != (true, true) && Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert!(
            Instant::now() >= quiet,
            "eager again only after the quiet period"
        );
        assert_eq!(links.wal_flags(), (true, true));
        drop(flush);
        assert_eq!(links.wal_flags(), (false, false));
    }

    #[test]
    fn a_sender_thread_flags_its_frames_by_the_quorum_choice_of_the_moment() {
        let tracker = crate::tracker::Tracker::new(
            crate::quorum::SyncStandbys::parse("ANY 1 (r1, r2)").expect("parses"),
        );
        let r1 = tracker.connect("r1", "a", Lsn(0), false);
        let r2 = tracker.connect("r2", "b", Lsn(0), false);
        let links = Links::new(Arc::new(WalSignal::default()), tracker.clone());
        assert_eq!(links.flags_for(r1.slot), (false, false), "no commit waits");
        let flush = links.sync_commit(Level::Flush, Lsn(0));
        assert_eq!(
            links.flags_for(r1.slot),
            (true, true),
            "a tie goes by list order"
        );
        assert_eq!(links.flags_for(r2.slot), (false, true), "r2 syncs lazily");
        // r2's lazy sync overtakes r1: from then on r2 is asked.
        tracker.update(r2, Lsn(9), Lsn(9), Lsn(9));
        assert_eq!(links.flags_for(r1.slot), (false, true));
        assert_eq!(links.flags_for(r2.slot), (true, true));
        drop(flush);
        assert_eq!(links.flags_for(r2.slot), (false, false));
    }

    #[test]
    fn wal_wakes_senders_only_when_they_have_work_and_goes_straight_out_for_waiting_commits() {
        let signal = Arc::new(WalSignal::default());
        // r1 counts towards the quorum, r2 is only a potential standby.
        let tracker = crate::tracker::Tracker::new(
            crate::quorum::SyncStandbys::parse("FIRST 1 (r1, r2)").expect("parses"),
        );
        assert_eq!(tracker.connect("r1", "a", Lsn(0), false).slot, 0);
        assert_eq!(tracker.connect("r2", "b", Lsn(0), false).slot, 1);
        let links = Links::new(signal.clone(), tracker);
        let (link, replica) = link();
        links.add(link.clone());

        // No commit waits for the replicas and the sender is busy (batching): writes neither
        // wake it nor go out on their own.
        links.wal_written(Lsn(0), b"abc");
        assert_eq!(signal.notified(), 0);
        assert!(received(&replica).is_empty());
        // An idle sender is woken.
        links.0.idle.fetch_add(1, Ordering::SeqCst);
        links.wal_written(Lsn(0), b"abc");
        assert_eq!(signal.notified(), 1);
        links.0.idle.fetch_sub(1, Ordering::SeqCst);

        // A commit waits for the replicas' flush: its WAL goes to the caught-up link from the
        // hook itself, with the sync flag, and no thread is woken.
        let guard = links.sync_commit(Level::Flush, Lsn(0));
        assert_eq!(signal.notified(), 1, "the link was caught up");
        links.wal_written(Lsn(0), b"abc");
        assert_eq!(signal.notified(), 1);
        let bytes = received(&replica);
        match frame::decode(&bytes) {
            Ok(Some((
                Frame::Wal {
                    start_lsn,
                    bytes,
                    sync,
                    eager,
                },
                _,
            ))) => {
                assert_eq!(
                    (start_lsn, &bytes[..], sync, eager),
                    (Lsn(0), &b"abc"[..], true, true)
                );
            }
            other => panic!("expected a wal frame, got {other:?}"),
        }
        // A replica whose flush the quorum cannot use gets the frame without the sync flag
        // (it syncs lazily), still eager.
        let (potential, potential_end) = link_in(1, Lsn(3));
        links.add(potential.clone());
        links.wal_written(Lsn(3), b"def");
        let flags = |bytes: &[u8]| match frame::decode(bytes) {
            Ok(Some((Frame::Wal { sync, eager, .. }, _))) => (sync, eager),
            other => panic!("expected a wal frame, got {other:?}"),
        };
        assert_eq!(flags(&received(&replica)), (true, true));
        assert_eq!(flags(&received(&potential_end)), (false, true));
        links.remove(&potential);
        // WAL the link cannot take directly (it is not caught up) wakes its sender.
        links.wal_written(Lsn(10), b"xyz");
        assert_eq!(signal.notified(), 2);
        drop(guard);

        // The first commit to wait wakes the senders of links still holding WAL back.
        let _guard = links.sync_commit(Level::Write, Lsn(20));
        assert_eq!(signal.notified(), 3);
    }

    #[test]
    fn a_frame_cut_short_by_a_full_socket_is_left_for_the_sender_to_finish() {
        let (link, replica) = link();
        // The replica reads (almost) nothing: pushes fill the socket until one is cut short
        // (the kernel takes what fits, so a frame goes out in part).
        let chunk = vec![7u8; 64 * 1024];
        let mut at = 0u64;
        for _ in 0..10_000 {
            if link.push(Lsn(at), &chunk, (false, false)) {
                at += chunk.len() as u64;
            } else if link.partial.load(Ordering::SeqCst) {
                at += chunk.len() as u64;
                break;
            } else {
                // Full exactly at a frame boundary (nothing sent): make a little room.
                let mut sink = [0u8; 1000];
                let _ = recv_nowait(&replica, &mut sink);
            }
        }
        // The rest waits in `pending`, the link counts it as sent, and the flag keeps the
        // sender thread from sleeping before it has written it.
        assert!(
            link.partial.load(Ordering::SeqCst),
            "no frame was cut short"
        );
        let st = link.st.lock();
        assert!(!st.pending.is_empty());
        assert_eq!(st.sent, Lsn(at));
        drop(st);
        // Further WAL is not pushed past unfinished bytes.
        assert!(!link.push(Lsn(at), b"more", (false, false)));
        // And the sender thread does not sleep with it unsent, although the link counts
        // everything written as sent.
        assert!(link.sender_has_work(Lsn(at)));
        link.partial.store(false, Ordering::SeqCst);
        assert!(
            !link.sender_has_work(Lsn(at)),
            "nothing left once the rest is written"
        );
        assert!(
            link.sender_has_work(Lsn(at + 1)),
            "new WAL past what was sent"
        );
        link.dead.store(true, Ordering::SeqCst);
        assert!(link.sender_has_work(Lsn(at)), "a dead link to report");
    }
}
