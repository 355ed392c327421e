//! The write-ahead log: record format (`record`), segment files (`segment`), the I/O backends
//! (`io`), and here the appender/flusher pair that gives group commit.
//!
//! Appenders (the one writer, under its lock) copy encoded records into a shared buffer. A
//! flush round takes everything buffered so far, writes it and `fdatasync`s it in one
//! submission, publishes the new flush LSN and wakes every waiter whose commit is now durable:
//! however many commits arrived during one sync share the next one (see `Wal`).

pub(crate) mod batch;
pub mod io;
pub mod record;
pub(crate) mod segment;
pub mod verify;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::error::{Error, Result};
use crate::types::Lsn;
use io::{Backend, FaultInjector, WalIo, WriteOp};
use segment::{Segments, SEGMENT_HEADER};

use crate::vfs::Vfs;

/// Called by the flusher each time bytes reach the files, with their start LSN and the bytes
/// (between the write and the sync); must be quick and never block (it runs on the commit
/// path).
pub type WalListener = Arc<dyn Fn(Lsn, &[u8]) + Send + Sync>;

/// Bytes the append buffer may hold before appenders wait for a flush.
const BUFFER_LIMIT: usize = 64 << 20;
/// How often the background flusher retries after running out of disk space.
const DISK_FULL_RETRY: Duration = Duration::from_millis(100);

struct State {
    /// Appended bytes not yet taken by a flush; `buf[0]` is at LSN `buf_start`.
    buf: Vec<u8>,
    buf_start: u64,
    /// A cleared buffer kept for reuse.
    spare: Vec<u8>,
    /// LSN after the last appended byte.
    end: u64,
    /// A flush round is running (at most one at a time).
    flushing: bool,
    /// Set by a failed write or sync: the log refuses everything until reopened.
    fatal: Option<String>,
    /// Set while writes fail for lack of space.
    disk_full: Option<String>,
    /// Failed flush rounds so far: a waiter fails if a round fails after it started waiting.
    attempt: u64,
    shutdown: bool,
    /// Async waiters, woken after every flush round.
    wakers: Vec<std::task::Waker>,
    /// Appends (commits) in `buf`.
    appends: u32,
    /// Async waiters the last round woke: more than one means commits arrive together, and
    /// an async waiter hands the next round to the background flusher instead of leading it
    /// on its own (runtime) thread.
    last_wakers: usize,
    /// The next segment, for the preparer to create before the log reaches it.
    prepare: Option<u64>,
    /// Segments up to this start exist or were asked for already.
    prepared: u64,
}

/// What a flush round needs exclusively; only the round's leader touches it.
struct Io {
    segs: Segments,
    /// The ring, unless `WalIo::Sync` (or no ring could be set up).
    ring: Option<Box<dyn Backend>>,
    /// `pwrite` + `fdatasync` on the leader's own thread.
    direct: Box<dyn Backend>,
    /// `WalIo::Auto`: the ring for rounds that carry several commits, direct syscalls for a
    /// round with a lone commit. A ring hands `fdatasync` to a kernel worker thread: under
    /// load that let rounds grow (20 commits per fsync against 6.5 with 50 clients, 42k
    /// against 33k commits/s), alone it costs a wake-up (p50 245 µs against 190 µs). Measured
    /// in docs/benchmarks.md.
    adaptive: bool,
}

struct Shared {
    st: Mutex<State>,
    io: Mutex<Io>,
    /// The background flusher waits here for `Durability::Off` bytes.
    work: Condvar,
    /// Committers wait here for the flush LSN (or an error).
    done: Condvar,
    flushed: AtomicU64,
    /// Everything before this LSN has reached the kernel (a crash of this process cannot lose
    /// it; the OS may until the sync): what replication ships while the sync runs.
    written: AtomicU64,
    /// Called after every write, before the sync (replication ships the bytes meanwhile).
    listener: parking_lot::RwLock<Option<WalListener>>,
    /// Completed write+sync rounds (each may carry many commits).
    flushes: AtomicU64,
    /// Segment size, for the preparer's requests.
    segment_bytes: u64,
    /// The preparer runs (real files only: a simulated file system's crash tests count
    /// every operation, and a thread of its own would make them depend on timing).
    prepares: bool,
    /// The preparer waits here for a segment to create.
    prep_work: Condvar,
}

/// The log's appender and flusher.
///
/// A third thread, the preparer, creates each segment (16 MiB of zeros and a sync: tens of
/// milliseconds) once the log is half-way through the one before, so no flush round waits
/// for it, unless a checkpoint recycled an old segment into that name already.
///
/// Group commit is leader/follower: a committer that needs its bytes durable and finds no
/// flush running becomes the leader — it takes everything buffered, writes and syncs it on
/// its own thread, then wakes the followers that queued meanwhile, one of which leads the next
/// round. A lone committer thus pays no thread hand-off at all (on these VMs a wake-up costs
/// tens of microseconds, a fair part of an fsync). A background thread flushes what nobody
/// waits for (`Durability::Off`) and retries after a full disk.
pub(crate) struct Wal {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    preparer: Mutex<Option<JoinHandle<()>>>,
    backend_name: &'static str,
}

impl Wal {
    /// Starts the log whose valid contents end at `end` (as found by recovery).
    pub fn start(
        vfs: Arc<dyn Vfs>,
        dir: &Path,
        segment_bytes: u64,
        end: Lsn,
        mode: WalIo,
        faults: Option<Arc<FaultInjector>>,
    ) -> Result<Wal> {
        // A simulated file system has no descriptors for a ring to use.
        let mode = if vfs.is_real() { mode } else { WalIo::Sync };
        let ring = io::ring_for_log(mode, faults.clone())?;
        let adaptive = ring.is_some() && io::effective_mode(mode) == WalIo::Auto;
        let direct: Box<dyn Backend> = Box::new(io::SyncBackend {
            faults: faults.clone(),
        });
        let backend_name = match (&ring, adaptive) {
            (Some(_), true) => "io_uring+pwrite",
            (Some(r), false) => r.name(),
            (None, _) => direct.name(),
        };
        // Lay down the segment the next record goes to now, not in the first commit's flush
        // (a new segment is 16 MiB of zeros: tens of milliseconds).
        let prep = vfs
            .is_real()
            .then(|| Segments::new(vfs.clone(), dir, segment_bytes, faults.clone()));
        let mut segs = Segments::new(vfs, dir, segment_bytes, faults);
        if let Err(e) = segs.ensure(segs.start_of(end.0)) {
            tracing::warn!(error = %e, "could not prepare the current WAL segment; the first flush will retry");
        }
        let shared = Arc::new(Shared {
            st: Mutex::new(State {
                buf: Vec::with_capacity(1 << 20),
                buf_start: end.0,
                spare: Vec::with_capacity(1 << 20),
                end: end.0,
                flushing: false,
                fatal: None,
                disk_full: None,
                attempt: 0,
                shutdown: false,
                wakers: Vec::new(),
                appends: 0,
                last_wakers: 0,
                prepare: None,
                prepared: segs.start_of(end.0),
            }),
            io: Mutex::new(Io {
                segs,
                ring,
                direct,
                adaptive,
            }),
            work: Condvar::new(),
            done: Condvar::new(),
            flushed: AtomicU64::new(end.0),
            written: AtomicU64::new(end.0),
            listener: parking_lot::RwLock::new(None),
            flushes: AtomicU64::new(0),
            segment_bytes,
            prepares: prep.is_some(),
            prep_work: Condvar::new(),
        });
        let s2 = shared.clone();
        let thread = std::thread::Builder::new()
            .name("replidb-wal-flusher".into())
            .spawn(move || background_flusher(&s2))?;
        let preparer = match prep {
            Some(segs) => {
                let s3 = shared.clone();
                Some(
                    std::thread::Builder::new()
                        .name("replidb-wal-prep".into())
                        .spawn(move || preparer(&s3, &segs))?,
                )
            }
            None => None,
        };
        Ok(Wal {
            shared,
            thread: Mutex::new(Some(thread)),
            preparer: Mutex::new(preparer),
            backend_name,
        })
    }

    pub fn backend_name(&self) -> &'static str {
        self.backend_name
    }

    /// LSN after the last appended byte: where the next record goes.
    pub fn end(&self) -> Lsn {
        Lsn(self.shared.st.lock().end)
    }

    /// Write+sync rounds completed so far.
    pub fn flushes(&self) -> u64 {
        self.shared.flushes.load(Ordering::Relaxed)
    }

    pub fn flushed(&self) -> Lsn {
        Lsn(self.shared.flushed.load(Ordering::Acquire))
    }

    /// Everything before this LSN is written to the segment files (maybe not yet synced).
    pub fn written(&self) -> Lsn {
        Lsn(self.shared.written.load(Ordering::Acquire))
    }

    pub fn set_listener(&self, f: Option<WalListener>) {
        *self.shared.listener.write() = f;
    }

    /// Appends records encoded to start at `start` (which must be `end()`); returns the new
    /// end. `background` asks the background flusher to write them (nobody will wait).
    pub fn append(&self, start: Lsn, bytes: &[u8], background: bool) -> Result<Lsn> {
        let mut st = self.shared.st.lock();
        loop {
            if let Some(why) = &st.fatal {
                return Err(Error::PreviousIo(why.clone()));
            }
            if st.buf.len() < BUFFER_LIMIT {
                break;
            }
            if !st.flushing && st.disk_full.is_none() {
                st = lead(&self.shared, st, true, Leader::Committer);
                continue;
            }
            self.shared.done.wait(&mut st);
        }
        assert_eq!(st.end, start.0, "WAL append out of order");
        st.buf.extend_from_slice(bytes);
        st.appends += 1;
        st.end += bytes.len() as u64;
        let end = st.end;
        drop(st);
        if background {
            self.shared.work.notify_one();
        }
        Ok(Lsn(end))
    }

    /// Waits until everything before `lsn` is durable, leading flush rounds as needed.
    pub fn wait_flushed(&self, lsn: Lsn) -> Result<()> {
        self.wait_until(lsn, true)
    }

    /// Waits until everything before `lsn` is written to the segment files — safe from a
    /// crash of this process, not of the machine — leading write-only rounds (no sync) as
    /// needed. What a replica does with WAL no commit waits to see synced on it; `wait_flushed`
    /// (or the next sync round) syncs it later.
    pub fn wait_written(&self, lsn: Lsn) -> Result<()> {
        self.wait_until(lsn, false)
    }

    /// Bytes buffered, or written but not yet synced: a sync round has work.
    fn has_unsynced(&self, st: &State) -> bool {
        !st.buf.is_empty()
            || self.shared.written.load(Ordering::Acquire)
                > self.shared.flushed.load(Ordering::Acquire)
    }

    /// `wait_flushed` (`sync`) or `wait_written`: leads rounds of that kind while none runs
    /// and there is work for one, else waits for the running round.
    fn wait_until(&self, lsn: Lsn, sync: bool) -> Result<()> {
        let target = if sync {
            &self.shared.flushed
        } else {
            &self.shared.written
        };
        if target.load(Ordering::Acquire) >= lsn.0 {
            return Ok(());
        }
        let mut st = self.shared.st.lock();
        let attempt = st.attempt;
        loop {
            if target.load(Ordering::Acquire) >= lsn.0 {
                return Ok(());
            }
            if let Some(why) = &st.fatal {
                return Err(Error::PreviousIo(why.clone()));
            }
            if st.attempt != attempt {
                if let Some(why) = &st.disk_full {
                    return Err(Error::DiskFull(why.clone()));
                }
            }
            let work = if sync {
                self.has_unsynced(&st)
            } else {
                !st.buf.is_empty()
            };
            if !st.flushing && work && st.disk_full.is_none() {
                st = lead(&self.shared, st, sync, Leader::Committer);
                continue;
            }
            self.shared.done.wait(&mut st);
        }
    }

    /// The async form of `wait_flushed`: leads a flush round on this thread if none is running,
    /// else registers the task to be woken after the running one. `attempt` remembers the
    /// failure count when the wait began (disk-full failures after that fail the wait).
    pub fn poll_flushed(
        &self,
        lsn: Lsn,
        attempt: &mut Option<u64>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<()>> {
        use std::task::Poll;
        if self.shared.flushed.load(Ordering::Acquire) >= lsn.0 {
            return Poll::Ready(Ok(()));
        }
        let mut st = self.shared.st.lock();
        let a = *attempt.get_or_insert(st.attempt);
        loop {
            if self.shared.flushed.load(Ordering::Acquire) >= lsn.0 {
                return Poll::Ready(Ok(()));
            }
            if let Some(why) = &st.fatal {
                return Poll::Ready(Err(Error::PreviousIo(why.clone())));
            }
            if st.attempt != a {
                if let Some(why) = &st.disk_full {
                    return Poll::Ready(Err(Error::DiskFull(why.clone())));
                }
            }
            if !st.flushing && self.has_unsynced(&st) && st.disk_full.is_none() {
                if st.last_wakers < 2 || st.buf.is_empty() {
                    st = lead(&self.shared, st, true, Leader::Runtime);
                    continue;
                }
                // Commits arrive together: the background flusher runs this round, and this
                // thread goes on running the other tasks (their commits join the next round)
                // instead of blocking in the sync. A lone committer still leads its own round:
                // a hand-off costs it a thread wake-up.
                self.shared.work.notify_one();
            }
            if !st.wakers.iter().any(|w| w.will_wake(cx.waker())) {
                st.wakers.push(cx.waker().clone());
            }
            return Poll::Pending;
        }
    }

    /// Cuts the log back to `to` (at or before the end, everything durable): zeroes the
    /// files from there and deletes later segments, so the bytes after it can never be read
    /// as records; the next append goes to `to`. For a promoted replica dropping an
    /// incomplete batch.
    pub fn truncate(&self, to: Lsn) -> Result<()> {
        // Bytes written but not synced are synced first: the files are then exactly what
        // the flush LSN says, and cutting them back is one consistent step.
        self.wait_flushed(self.end())?;
        let mut st = self.shared.st.lock();
        while st.flushing {
            self.shared.done.wait(&mut st);
        }
        if !st.buf.is_empty() || to.0 > st.end || self.flushed().0 < st.end {
            return Err(Error::Invariant(format!(
                "WAL truncate to {} with {} bytes unflushed (end {})",
                to.0,
                st.buf.len(),
                st.end
            )));
        }
        self.shared.io.lock().segs.truncate_after(to.0)?;
        st.end = to.0;
        st.buf_start = to.0;
        self.shared.flushed.store(to.0, Ordering::Release);
        self.shared.written.store(to.0, Ordering::Release);
        Ok(())
    }

    /// The sticky failure, if the log has had one.
    pub fn failure(&self) -> Option<String> {
        self.shared.st.lock().fatal.clone()
    }

    /// Flushes what is buffered and stops the background flusher.
    pub fn shutdown(&self) -> Result<()> {
        let end = self.end();
        let r = self.wait_flushed(end);
        self.shared.st.lock().shutdown = true;
        self.shared.work.notify_all();
        self.shared.prep_work.notify_all();
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
        if let Some(t) = self.preparer.lock().take() {
            let _ = t.join();
        }
        r
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Which thread leads a flush round: it decides how the round is written (see `lead`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Leader {
    /// A committing thread that blocks until its bytes are durable (`wait_flushed`, a full
    /// buffer).
    Committer,
    /// A task polling `poll_flushed` on an async runtime's thread: its whole event loop
    /// waits for the round.
    Runtime,
    /// The background flusher.
    Flusher,
}

/// Runs one flush round: takes everything buffered, writes it, and with `sync` syncs it
/// together with anything earlier rounds wrote without a sync, publishes the result and wakes
/// the waiters. Called with the state locked and no round running; returns with the state
/// locked again.
fn lead<'a>(
    shared: &'a Shared,
    mut st: MutexGuard<'a, State>,
    sync: bool,
    leader: Leader,
) -> MutexGuard<'a, State> {
    debug_assert!(!st.flushing);
    st.flushing = true;
    let spare = std::mem::take(&mut st.spare);
    let mut data = std::mem::replace(&mut st.buf, spare);
    let start = st.buf_start;
    st.buf_start = st.end;
    let appends = std::mem::take(&mut st.appends);
    drop(st);
    // Only a round leads at a time, so nothing moves the flush LSN meanwhile.
    let synced_to = shared.flushed.load(Ordering::Acquire);
    let end = start + data.len() as u64;
    let r = {
        let mut io = shared.io.lock();
        let Io {
            segs,
            ring,
            direct,
            adaptive,
        } = &mut *io;
        // A write without a sync gains nothing from the ring's hand-off; neither does a
        // thread that exists to block in the sync — the background flusher, or an async
        // runtime's thread, whose event loop waits for the round either way (a server's
        // rounds): the ring would hand the sync to a kernel worker, one more thread switch
        // per round (docs/benchmarks.md: 10–20% fewer writes a second under
        // `redis-benchmark`). Committing threads that block one by one gather larger rounds
        // through it.
        let backend = match ring {
            Some(r) if sync && (!*adaptive || (appends > 1 && leader == Leader::Committer)) => {
                r.as_mut()
            }
            _ => direct.as_mut(),
        };
        let r = write_range(
            segs,
            backend,
            start,
            &data,
            sync.then_some(synced_to),
            &mut || {
                if data.is_empty() {
                    return;
                }
                shared.written.fetch_max(end, Ordering::AcqRel);
                if let Some(f) = &*shared.listener.read() {
                    f(Lsn(start), &data);
                }
            },
        );
        if r.is_ok() {
            // Segments holding bytes not yet synced stay open for the sync that follows.
            segs.close_before(if sync { end } else { synced_to });
        }
        r
    };
    let mut st = shared.st.lock();
    match r {
        Ok(()) => {
            if sync {
                shared.flushed.store(end, Ordering::Release);
                shared.flushes.fetch_add(1, Ordering::Relaxed);
            }
            if st.disk_full.take().is_some() {
                tracing::info!("WAL writes succeed again");
            }
            // A round that wrote nothing (a sync only; an inspecting open) changes no file.
            if !data.is_empty() {
                ask_for_next_segment(shared, &mut st, end);
            }
            data.clear();
            if st.spare.capacity() < data.capacity() {
                st.spare = data;
            }
        }
        // A sync that also covered bytes of earlier write-only rounds failed: those bytes are
        // not in `data` to be written again, and after a failed fsync the kernel may have
        // dropped them (marked clean): only a restart, which recovers from the files, is safe.
        Err(e) if sync && synced_to < start => {
            tracing::error!(error = %e, lsn = synced_to, "WAL sync of written bytes failed; refusing all further writes until restart");
            st.fatal = Some(format!("WAL sync from LSN {synced_to} failed: {e}"));
            st.attempt += 1;
        }
        Err(e) if io::is_disk_full(&e) => {
            if st.disk_full.is_none() {
                tracing::error!(error = %e, lsn = start, "WAL write failed: disk full; commits fail until space is freed");
            }
            // Keep the bytes: they go first in the next attempt.
            st.appends += appends;
            data.extend_from_slice(&st.buf);
            st.buf = data;
            st.buf_start = start;
            st.disk_full = Some(format!("no space left for the WAL at LSN {start}: {e}"));
            st.attempt += 1;
            shared.work.notify_one();
        }
        Err(e) => {
            tracing::error!(error = %e, lsn = start, "WAL write or fsync failed; refusing all further commits");
            st.fatal = Some(format!("WAL write/fsync at LSN {start} failed: {e}"));
            st.attempt += 1;
        }
    }
    st.flushing = false;
    shared.done.notify_all();
    st.last_wakers = st.wakers.len();
    for w in st.wakers.drain(..) {
        w.wake();
    }
    st
}

/// Past half of the segment that `end` is in, asks the preparer for the next one (once).
fn ask_for_next_segment(shared: &Shared, st: &mut State, end: u64) {
    let size = shared.segment_bytes;
    let seg = end - end % size;
    let Some(next) = seg.checked_add(size) else {
        return;
    };
    if shared.prepares && end - seg >= size / 2 && next > st.prepared && st.prepare.is_none() {
        st.prepare = Some(next);
        shared.prep_work.notify_one();
    }
}

/// Creates the segments the flush rounds ask for ahead (`ask_for_next_segment`). A failure
/// (a full disk) only leaves the segment to the flush round that reaches it, which then
/// reports it.
fn preparer(shared: &Shared, segs: &Segments) {
    let mut st = shared.st.lock();
    loop {
        if st.shutdown || st.fatal.is_some() {
            return;
        }
        let Some(start) = st.prepare else {
            shared.prep_work.wait(&mut st);
            continue;
        };
        let r = MutexGuard::unlocked(&mut st, || segs.prepare(start));
        if let Err(e) = r {
            tracing::warn!(error = %e, segment = %segment::segment_name(start), "could not create the next WAL segment ahead; the flush that reaches it will try again");
        }
        st.prepared = st.prepared.max(start);
        st.prepare = None;
    }
}

/// Flushes bytes nobody waits for, and retries after a full disk.
fn background_flusher(shared: &Shared) {
    let mut st = shared.st.lock();
    loop {
        if st.fatal.is_some() || (st.shutdown && st.buf.is_empty()) {
            return;
        }
        if st.buf.is_empty() || st.flushing {
            shared.work.wait(&mut st);
            continue;
        }
        if st.disk_full.is_some() {
            // Back off before retrying; appends do not shorten the wait.
            let deadline = Instant::now() + DISK_FULL_RETRY;
            while !st.shutdown && !shared.work.wait_until(&mut st, deadline).timed_out() {}
            if st.flushing || st.buf.is_empty() || st.fatal.is_some() {
                continue;
            }
        }
        st = lead(shared, st, true, Leader::Flusher);
    }
}

/// Writes stream bytes [start, start + data.len()) into their segments, calling `written`
/// once they are in the kernel; with `sync_from`, then syncs every segment holding bytes from
/// that LSN to the end (earlier write-only rounds' bytes as well as these).
fn write_range(
    segs: &mut Segments,
    backend: &mut dyn Backend,
    start: u64,
    data: &[u8],
    sync_from: Option<u64>,
    written: &mut dyn FnMut(),
) -> std::io::Result<()> {
    let mut pieces = Vec::with_capacity(2);
    let mut pos = start;
    let end = start + data.len() as u64;
    while pos < end {
        let seg = segs.start_of(pos);
        let n = (seg + segs.segment_bytes).min(end) - pos;
        segs.ensure(seg)?;
        pieces.push((seg, pos, n));
        pos += n;
    }
    let mut to_sync = Vec::with_capacity(2);
    if let Some(from) = sync_from.filter(|&f| f < end) {
        let mut seg = segs.start_of(from);
        while seg < end {
            segs.ensure(seg)?;
            to_sync.push(seg);
            seg += segs.segment_bytes;
        }
    }
    // All pieces' files are open now (a round spans at most a few segments, and segments
    // with unsynced bytes stay open); borrow them together.
    let open = |seg: &u64| {
        segs.get(*seg)
            .ok_or_else(|| std::io::Error::other("WAL segment closed during a flush"))
    };
    let files = pieces
        .iter()
        .map(|(seg, _, _)| open(seg))
        .collect::<std::io::Result<Vec<_>>>()?;
    let sync_files = to_sync
        .iter()
        .map(open)
        .collect::<std::io::Result<Vec<_>>>()?;
    let ops: Vec<WriteOp<'_>> = pieces
        .iter()
        .zip(&files)
        .map(|((seg, pos, n), f)| WriteOp {
            file: *f,
            offset: SEGMENT_HEADER + (pos - seg),
            bytes: &data[(pos - start) as usize..(pos - start + n) as usize],
        })
        .collect();
    backend.write_then_sync(&ops, &sync_files, written)
}
