//! The embedded API: open a directory, commit write batches, read points and ranges.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Condvar, Mutex, RwLock, RwLockReadGuard, RwLockUpgradableReadGuard};

use crate::btree;
use crate::check::{self, IntegrityReport};
use crate::control::Control;
use crate::cursor::Cursor;
use crate::error::{Error, Result};
use crate::node::{MAX_KEY, MAX_VALUE};
use crate::page;
use crate::pager::{PageFile, PageSource, Published};
use crate::recovery;
use crate::tree_write;
use crate::txn::WriteCtx;
use crate::types::{Lsn, PageId};
use crate::wal::io::{self as walio, Backend, FaultInjector, WalIo};
use crate::wal::record::{self, Body};
use crate::wal::segment::Segments;
use crate::wal::Wal;

/// A write transaction inside [`Db::update`]: reads see its own writes.
pub struct WriteTxn<'a> {
    ctx: WriteCtx<'a>,
}

impl WriteTxn<'_> {
    /// The value under `key`, including this transaction's own changes.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(btree::get(&self.ctx, self.ctx.meta.root, key)?.map(Cow::into_owned))
    }

    /// Inserts or overwrites; returns true if the key is new.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<bool> {
        check_sizes(key, Some(value))?;
        tree_write::put(&mut self.ctx, key, value)
    }

    /// Deletes; returns true if the key was present.
    pub fn delete(&mut self, key: &[u8]) -> Result<bool> {
        check_sizes(key, None)?;
        tree_write::delete(&mut self.ctx, key)
    }

    /// Applies a batch's operations in order.
    fn apply(&mut self, batch: &WriteBatch) -> Result<()> {
        for op in &batch.ops {
            match op {
                Op::Put(k, v) => tree_write::put(&mut self.ctx, k, v).map(drop)?,
                Op::Delete(k) => tree_write::delete(&mut self.ctx, k).map(drop)?,
            }
        }
        Ok(())
    }

    /// Number of keys, including this transaction's own changes.
    pub fn len(&self) -> u64 {
        self.ctx.meta.entries
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn check_sizes(k: &[u8], v: Option<&[u8]>) -> Result<()> {
    if k.len() > MAX_KEY {
        return Err(Error::KeyTooLarge {
            len: k.len(),
            max: MAX_KEY,
        });
    }
    if let Some(v) = v.filter(|v| v.len() > MAX_VALUE) {
        return Err(Error::ValueTooLarge {
            len: v.len(),
            max: MAX_VALUE,
        });
    }
    Ok(())
}

/// The future of [`Db::durable`].
pub struct Durable<'a> {
    db: &'a Db,
    lsn: Lsn,
    attempt: Option<u64>,
}

impl std::future::Future for Durable<'_> {
    type Output = Result<()>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<()>> {
        let this = &mut *self;
        this.db
            .inner
            .wal
            .poll_flushed(this.lsn, &mut this.attempt, cx)
    }
}

/// Name of the page file inside the database directory.
pub const PAGE_FILE: &str = "pages.db";
/// Name of the WAL directory inside the database directory.
pub const WAL_DIR: &str = "wal";

/// How durable a commit is when `commit` returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Acknowledged once the batch is in the WAL buffer (visible to readers, on disk within
    /// one flush — at most a few milliseconds later). A crash can lose it.
    Off,
    /// Acknowledged after the WAL holding it is fsynced. A crash cannot lose it.
    Local,
}

#[derive(Clone, Debug)]
pub struct Options {
    /// A checkpoint starts once this much WAL has been written since the last one.
    pub checkpoint_wal_bytes: u64,
    /// ... or when this much time has passed with changes pending.
    pub checkpoint_interval: Duration,
    /// Size of a WAL segment file (fixed when the database is created).
    pub wal_segment_bytes: u64,
    /// Which I/O path the WAL and checkpoints use.
    pub wal_io: WalIo,
    /// Open as a replica: no local writes; the log grows only by [`Db::apply_wal`] with the
    /// primary's bytes, and checkpoints restart from the primary's checkpoint records.
    pub replica: bool,
    /// Fault injection for tests of I/O error handling.
    #[doc(hidden)]
    pub faults: Option<Arc<FaultInjector>>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            checkpoint_wal_bytes: 64 << 20,
            checkpoint_interval: Duration::from_secs(60),
            wal_segment_bytes: 16 << 20,
            wal_io: WalIo::Auto,
            replica: false,
            faults: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

/// Puts and deletes applied atomically by one `commit`, in order.
#[derive(Clone, Debug, Default)]
pub struct WriteBatch {
    ops: Vec<Op>,
}

impl WriteBatch {
    pub fn new() -> WriteBatch {
        WriteBatch::default()
    }

    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(Op::Put(key.into(), value.into()));
        self
    }

    pub fn delete(&mut self, key: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(Op::Delete(key.into()));
        self
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn clear(&mut self) {
        self.ops.clear();
    }

    fn validate(&self) -> Result<()> {
        for op in &self.ops {
            match op {
                Op::Put(k, v) => check_sizes(k, Some(v))?,
                Op::Delete(k) => check_sizes(k, None)?,
            }
        }
        Ok(())
    }
}

/// Counters describing the database files and memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stats {
    pub entries: u64,
    pub page_count: u64,
    pub free_pages: u64,
    /// Pages changed since the last checkpoint (held in memory).
    pub dirty_pages: u64,
    pub file_bytes: u64,
    /// End LSN of the last commit.
    pub last_lsn: Lsn,
    /// Everything before this LSN is on disk.
    pub flush_lsn: Lsn,
    /// Recovery replays from here (the start of the last checkpoint).
    pub redo_lsn: Lsn,
    pub checkpoints: u64,
    /// WAL write+sync rounds since open; with group commit, fewer than durable commits.
    pub wal_flushes: u64,
    /// The log's I/O path: "io_uring" or "pwrite+fdatasync".
    pub wal_io: &'static str,
    /// The checkpoints' I/O path.
    pub checkpoint_io: &'static str,
}

/// State of the one writer.
struct Writer {
    /// Pages whose LSN is at or below this get a full image at their next change: it is the
    /// start of the last (or running) checkpoint, from which recovery would replay.
    redo_lsn: Lsn,
    /// WAL end when the last checkpoint started.
    wal_at_checkpoint: u64,
    epoch: u32,
    scratch: Vec<u8>,
    runs: Vec<u8>,
}

/// State of checkpoints (one at a time).
struct Checkpointer {
    file: PageFile,
    backend: Box<dyn Backend>,
    control: Control,
    segs: Segments,
    /// A failed page write or sync: checkpoints (and then writes) stop until reopened.
    failed: Option<String>,
}

struct Inner {
    state: RwLock<Published>,
    writer: Mutex<Writer>,
    ckpt: Mutex<Checkpointer>,
    wal: Wal,
    /// WAL below this LSN is kept even when checkpoints no longer need it (replication).
    retain_from: AtomicU64,
    options: Options,
    dir: PathBuf,
    bg: Mutex<BgState>,
    bg_cv: Condvar,
    /// Batches waiting for the committer that applies them (see `Inner::commit_grouped`).
    queue: Mutex<CommitQueue>,
    /// Reads WAL segments for `read_wal` (its own open files).
    wal_reader: Mutex<Segments>,
    /// A replica's stream position (idle on a primary).
    replica: Mutex<ReplicaState>,
    /// Takes local writes (a primary); else grows only by `apply_wal` (a replica). Changed by
    /// `promote` and `demote`.
    primary: AtomicBool,
    /// The epochs this node's log went through, with the LSN each started at (`epochs` file).
    epochs: Mutex<Vec<(u32, Lsn)>>,
    /// Counters for `stats` that must not wait for a running checkpoint.
    checkpoints: AtomicU64,
    file_bytes: AtomicU64,
    checkpoint_io: &'static str,
}

/// A replica's position in the stream it receives.
struct ReplicaState {
    /// Received bytes not yet appended: the start of a record not complete yet.
    carry: Vec<u8>,
    /// Page records appended but not applied: a batch whose commit has not arrived.
    pending: Vec<(u64, Vec<u8>)>,
    /// The redo LSN of the last primary checkpoint record applied: where this replica's own
    /// checkpoints may restart recovery from.
    restart_redo: Lsn,
    /// Everything before this LSN is applied: the end of the last complete record replayed
    /// (a commit, or a checkpoint record with no batch open).
    applied: Lsn,
}

/// How far WAL received by a replica gets before it is replayed ([`Db::apply_wal_with`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaSync {
    /// Written to the log files (safe from a crash of this process) and replayed; synced
    /// later.
    Lazy,
    /// Written and synced before the replay.
    Flush,
    /// Handed to the background flusher, which writes and syncs it while this call replays
    /// it; [`Db::sync_wal`] then waits for that sync. For large batches a commit waits for:
    /// the replay and the sync overlap.
    Background,
}

/// Where a replica stands after [`Db::apply_wal`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaProgress {
    /// Received from the primary (bytes handed to `apply_wal`).
    pub write_lsn: Lsn,
    /// Durable in this node's WAL.
    pub flush_lsn: Lsn,
    /// Replayed into the pages (visible to readers).
    pub apply_lsn: Lsn,
}

#[derive(Default)]
struct CommitQueue {
    waiting: Vec<(Arc<Slot>, WriteBatch, Durability)>,
    /// A thread is applying a group right now.
    combining: bool,
}

/// Where a queued commit learns its fate.
#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
    cv: Condvar,
}

#[derive(Default)]
enum SlotState {
    #[default]
    Waiting,
    /// The owner is to apply the next group.
    Lead,
    Done(Result<Lsn>),
}

impl Slot {
    fn set(&self, s: SlotState) {
        *self.state.lock() = s;
        self.cv.notify_one();
    }
}

#[derive(Default)]
struct BgState {
    stop: bool,
    wake: bool,
}

/// A replidb database: a B+tree in a page file plus a write-ahead log, inside a directory.
///
/// Any number of threads may read while one commit at a time is applied; a reader sees each
/// batch entirely or not at all. Commits of different threads share WAL flushes (group
/// commit). All methods take `&self`; share a `Db` with `Arc`.
pub struct Db {
    inner: Arc<Inner>,
    checkpointer: Option<JoinHandle<()>>,
    closed: bool,
}

impl Db {
    /// Opens the database in `dir`, creating the directory and an empty database if needed,
    /// and recovering from the WAL if the last run did not close cleanly.
    pub fn open(dir: impl AsRef<Path>, options: Options) -> Result<Db> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(dir.join(WAL_DIR))?;
        let mut file = PageFile::open(&dir.join(PAGE_FILE))?;
        let control = match Control::load(&dir)? {
            Some(c) => c,
            None if file.len_pages() <= 2 => {
                // New (or never finished creating): lay down an empty database. The control
                // file is written last, so its presence means creation completed.
                file.create()?;
                let c = Control {
                    redo_lsn: Lsn(0),
                    checkpoint_lsn: Lsn(0),
                    segment_bytes: options.wal_segment_bytes.max(64 * 1024),
                    node_id: random_u64(),
                    epoch: 1,
                };
                c.store(&dir)?;
                c
            }
            None => {
                return Err(Error::Incompatible {
                    path: dir.join(crate::control::CONTROL_FILE),
                    reason: "missing, but the page file holds data".into(),
                })
            }
        };
        let mut segs = Segments::new(
            &dir.join(WAL_DIR),
            control.segment_bytes,
            options.faults.clone(),
        );
        segs.remove_leftovers()?;
        let rec = recovery::recover(&file, &mut segs, control.redo_lsn)?;
        let replayed = !rec.pages.is_empty();
        // The pages reflect the log through its last complete record.
        let last_lsn = rec.end;
        let published = file.publish(rec.pages.into_iter().collect(), last_lsn)?;
        let wal = Wal::start(
            &dir.join(WAL_DIR),
            control.segment_bytes,
            rec.end,
            options.wal_io,
            options.faults.clone(),
        )?;
        let backend = walio::checkpoint_backend(options.wal_io, options.faults.clone())?;
        tracing::debug!(
            dir = %dir.display(),
            pages = published.meta.page_count,
            entries = published.meta.entries,
            wal_io = wal.backend_name(),
            "opened database"
        );
        let file_bytes = file.len_bytes();
        let checkpoint_io = backend.name();
        let epochs = crate::control::load_epochs(&dir)?;
        let replica = Mutex::new(ReplicaState {
            carry: Vec::new(),
            pending: Vec::new(),
            restart_redo: rec
                .last_checkpoint_redo
                .unwrap_or(control.redo_lsn)
                .max(control.redo_lsn),
            applied: rec.end,
        });
        let primary = AtomicBool::new(!options.replica);
        let wal_reader = Segments::new(&dir.join(WAL_DIR), control.segment_bytes, None);
        let inner = Arc::new(Inner {
            state: RwLock::new(published),
            writer: Mutex::new(Writer {
                redo_lsn: control.redo_lsn,
                wal_at_checkpoint: control.redo_lsn.0,
                epoch: control.epoch,
                scratch: Vec::with_capacity(1 << 16),
                runs: Vec::with_capacity(PAGE_SIZE_HINT),
            }),
            ckpt: Mutex::new(Checkpointer {
                file,
                backend,
                control,
                segs,
                failed: None,
            }),
            wal,
            retain_from: AtomicU64::new(u64::MAX),
            options,
            dir,
            bg: Mutex::new(BgState::default()),
            bg_cv: Condvar::new(),
            queue: Mutex::new(CommitQueue::default()),
            wal_reader: Mutex::new(wal_reader),
            replica,
            primary,
            epochs: Mutex::new(epochs),
            checkpoints: AtomicU64::new(0),
            file_bytes: AtomicU64::new(file_bytes),
            checkpoint_io,
        });
        // A crash may have come between an epoch record and the files that record it (or
        // between the epochs file and the control file): the log and the history win.
        {
            let mut ck = inner.ckpt.lock();
            let mut seen = rec.epochs_seen.clone();
            seen.extend(inner.epochs.lock().last().copied());
            for (e, at) in seen {
                if e > ck.control.epoch {
                    inner.enter_epoch(&mut ck, e, at)?;
                }
            }
            let mut w = inner.writer.lock();
            w.epoch = w.epoch.max(ck.control.epoch);
        }
        if replayed {
            // Make the replayed pages durable now, so the next crash does not replay them.
            inner.checkpoint()?;
        }
        let bg = inner.clone();
        let checkpointer = std::thread::Builder::new()
            .name("replidb-checkpointer".into())
            .spawn(move || bg.checkpointer_loop())?;
        Ok(Db {
            inner,
            checkpointer: Some(checkpointer),
            closed: false,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Applies `batch` atomically and returns its LSN: the end of its commit record in the
    /// WAL. With `Durability::Local` the batch is on disk when this returns. An empty batch
    /// changes nothing and returns the last commit's LSN.
    pub fn commit(&self, batch: &WriteBatch, durability: Durability) -> Result<Lsn> {
        batch.validate()?;
        if batch.is_empty() {
            return Ok(self.last_lsn());
        }
        self.inner.commit_grouped(batch, durability)
    }

    /// Waits until everything up to `lsn` is on disk (for a caller that committed with
    /// `Durability::Off` and now wants `Local`).
    pub fn wait_durable(&self, lsn: Lsn) -> Result<()> {
        self.inner.wal.wait_flushed(lsn)
    }

    /// Runs `f` as one atomic read-modify-write transaction: its reads see its own writes and
    /// no other writer runs meanwhile (so `INCR`-style updates never lose one). Returns `f`'s
    /// result and the commit's LSN, durable as `durability` asks. If `f` fails nothing is
    /// changed; if it changes nothing, nothing is logged and the LSN is the last commit's.
    pub fn update<T>(
        &self,
        durability: Durability,
        f: impl FnOnce(&mut WriteTxn<'_>) -> Result<T>,
    ) -> Result<(T, Lsn)> {
        let (out, lsn) = self.inner.update(durability, f)?;
        if durability == Durability::Local {
            self.inner.wal.wait_flushed(lsn)?;
        }
        Ok((out, lsn))
    }

    /// `update` for a caller that will wait for durability itself, later, with
    /// [`Db::durable`] or [`Db::wait_durable`] (an async server does this to wait without
    /// blocking). Until someone waits or another flush runs, the commit is only in memory.
    pub fn update_deferred<T>(
        &self,
        f: impl FnOnce(&mut WriteTxn<'_>) -> Result<T>,
    ) -> Result<(T, Lsn)> {
        self.inner.update_with(false, f)
    }

    /// A future that resolves once everything up to `lsn` is durable. For async callers: apply
    /// with `Durability::Off`, then await this instead of blocking. If no flush is running,
    /// polling it performs the flush on the polling thread (no hand-off to another thread);
    /// otherwise it waits for the running flush to wake it.
    pub fn durable(&self, lsn: Lsn) -> Durable<'_> {
        Durable {
            db: self,
            lsn,
            attempt: None,
        }
    }

    /// Convenience: commits one put.
    pub fn put(&self, key: &[u8], value: &[u8], durability: Durability) -> Result<Lsn> {
        let mut b = WriteBatch::new();
        b.put(key, value);
        self.commit(&b, durability)
    }

    /// Convenience: commits one delete.
    pub fn delete(&self, key: &[u8], durability: Durability) -> Result<Lsn> {
        let mut b = WriteBatch::new();
        b.delete(key);
        self.commit(&b, durability)
    }

    /// The value stored under `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let g = self.inner.state.read();
        Ok(btree::get(&*g, g.meta.root, key)?.map(Cow::into_owned))
    }

    /// A consistent snapshot for several reads. It holds the reader lock: while it lives,
    /// commits can be prepared but not published, so keep it short.
    pub fn read(&self) -> ReadTxn<'_> {
        ReadTxn {
            g: self.inner.state.read(),
        }
    }

    /// An ordered iterator over `range` (both directions). It reads in chunks, each from one
    /// consistent state, and does not hold up writers between chunks: every key present for
    /// the whole iteration is yielded exactly once, in order.
    pub fn range<'a, R: RangeBounds<&'a [u8]>>(&self, range: R) -> Range<'_> {
        Range {
            db: self,
            lower: own_bound(range.start_bound()),
            upper: own_bound(range.end_bound()),
            front: VecDeque::new(),
            back: VecDeque::new(),
            exhausted: false,
        }
    }

    /// Number of keys.
    pub fn len(&self) -> u64 {
        self.inner.state.read().meta.entries
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// End LSN of the last record the pages reflect: the last commit, or a checkpoint record
    /// after it (which changes no page). A replica that has applied everything names the same
    /// LSN as its primary.
    pub fn last_lsn(&self) -> Lsn {
        self.inner.state.read().last_lsn
    }

    /// Everything before this LSN is durable.
    pub fn flush_lsn(&self) -> Lsn {
        self.inner.wal.flushed()
    }

    /// Everything before this LSN is written to the WAL files — safe from a crash of this
    /// process, not yet from one of the machine until `flush_lsn` passes it. A primary ships
    /// WAL up to here, so replicas receive and sync a commit while the primary syncs it.
    pub fn written_lsn(&self) -> Lsn {
        self.inner.wal.written()
    }

    /// Sets (or clears) a function called with each run of WAL bytes (and its start LSN) as it
    /// reaches the files, before it is synced. It runs on the commit path: it must never
    /// block.
    pub fn set_wal_listener(&self, f: Option<crate::wal::WalListener>) {
        self.inner.wal.set_listener(f);
    }

    /// Copies written WAL bytes from `from` on (at most `max` of them) to `out`, as they lie in
    /// the segment files: what a primary streams to its replicas. Returns the LSN after the
    /// last byte copied — `from` itself when nothing newer is written yet. The bytes may still
    /// be syncing ([`Db::written_lsn`]). `Error::WalUnavailable` if `from` lies beyond the
    /// written log, or before the oldest segment still kept (hold WAL with
    /// [`Db::set_wal_retain_from`]).
    pub fn read_wal(&self, from: Lsn, max: usize, out: &mut Vec<u8>) -> Result<Lsn> {
        let flushed = self.inner.wal.written();
        if from > flushed {
            return Err(Error::WalUnavailable {
                lsn: from,
                reason: format!("beyond the written end of the log ({flushed})"),
            });
        }
        let mut segs = self.inner.wal_reader.lock();
        // Segments are renamed when recycled: never trust a file handle from an earlier call.
        segs.close_before(u64::MAX);
        let oldest = segs.list()?.first().copied().unwrap_or(flushed.0);
        if segs.start_of(from.0) < oldest {
            return Err(Error::WalUnavailable {
                lsn: from,
                reason: format!("already removed (the oldest segment starts at {oldest})"),
            });
        }
        let end = flushed.0.min(from.0.saturating_add(max as u64));
        let mut pos = from.0;
        while pos < end {
            let seg = segs.start_of(pos);
            let n = (seg + segs.segment_bytes).min(end) - pos;
            let at = out.len();
            out.resize(at + n as usize, 0);
            if let Err(e) = segs.read_at(seg, pos, &mut out[at..]) {
                out.truncate(at);
                if e.kind() == std::io::ErrorKind::NotFound {
                    return Err(Error::WalUnavailable {
                        lsn: Lsn(pos),
                        reason: "its segment was removed meanwhile".into(),
                    });
                }
                return Err(e.into());
            }
            pos += n;
        }
        Ok(Lsn(pos))
    }

    /// Replica side of physical replication: takes WAL bytes from the primary that continue
    /// this node's log at `start`, appends every complete record to the local WAL at the same
    /// LSNs (so the two logs are byte-identical), makes it durable, and replays each complete
    /// batch into the pages with the same redo as crash recovery — readers see whole batches
    /// only. A record cut at the end of `bytes` waits for the next call. Bytes that cannot be
    /// records are refused (`CorruptWal`) and nothing of them is kept: continue from
    /// `flush_lsn`.
    pub fn apply_wal(&self, start: Lsn, bytes: &[u8]) -> Result<ReplicaProgress> {
        self.apply_wal_with(start, bytes, ReplicaSync::Flush, &mut |_| {})
    }

    /// [`Db::apply_wal`] with a choice of how far the records get before they are replayed
    /// (`sync`), calling `reached` once they are synced (`ReplicaSync::Flush`) and before they
    /// are replayed (the progress passed names the old apply LSN). Records only written
    /// (`Lazy`) are synced by the next `sync_wal`, a later `Flush` call or a checkpoint (which
    /// syncs the log before it writes a page).
    pub fn apply_wal_with(
        &self,
        start: Lsn,
        bytes: &[u8],
        sync: ReplicaSync,
        reached: &mut dyn FnMut(ReplicaProgress),
    ) -> Result<ReplicaProgress> {
        let inner = &self.inner;
        let rs_lock = inner.replica_state().ok_or(Error::NotReplica)?;
        let mut rs = rs_lock.lock();
        // Promoted while this call waited for the lock.
        if inner.primary.load(Ordering::SeqCst) {
            return Err(Error::NotReplica);
        }
        let base = inner.wal.end().0;
        let expected = base + rs.carry.len() as u64;
        if start.0 != expected {
            return Err(Error::WalUnavailable {
                lsn: start,
                reason: format!("this replica continues at LSN {expected}"),
            });
        }
        rs.carry.extend_from_slice(bytes);
        enum Event {
            Batch(Vec<(u64, Vec<u8>)>, Lsn),
            Checkpoint(Lsn, Lsn),
            /// The primary entered an epoch at an LSN (record start, end).
            Epoch(u32, Lsn, Lsn),
        }
        let mut events = Vec::new();
        let mut epochs = Vec::new();
        let mut at = 0usize;
        let mut invalid = None;
        let mut pending = std::mem::take(&mut rs.pending);
        loop {
            match record::decode(&rs.carry[at..], Lsn(base + at as u64)) {
                Ok((rec, len)) => {
                    let lsn = base + at as u64;
                    match rec.body {
                        Body::PageImage { .. } | Body::PageDelta { .. } => {
                            pending.push((lsn, rs.carry[at..at + len].to_vec()))
                        }
                        Body::Commit { .. } => events.push(Event::Batch(
                            std::mem::take(&mut pending),
                            Lsn(lsn + len as u64),
                        )),
                        Body::Checkpoint { redo_lsn } => {
                            events.push(Event::Checkpoint(redo_lsn, Lsn(lsn + len as u64)))
                        }
                        Body::EpochChange { epoch } => {
                            events.push(Event::Epoch(epoch, Lsn(lsn), Lsn(lsn + len as u64)))
                        }
                    }
                    at += len;
                }
                Err(record::DecodeError::Incomplete { .. }) => break,
                Err(record::DecodeError::Invalid(why)) => {
                    // Keep what was good; drop the rest (the primary resends from flush_lsn).
                    rs.carry.truncate(at);
                    tracing::warn!(lsn = base + at as u64, reason = %why, "refusing WAL from the primary");
                    invalid = Some(Error::CorruptWal {
                        lsn: Lsn(base + at as u64),
                        reason: why,
                    });
                    break;
                }
            }
        }
        if at > 0 {
            let background = sync == ReplicaSync::Background;
            let end = inner.wal.append(Lsn(base), &rs.carry[..at], background)?;
            match sync {
                ReplicaSync::Flush => inner.wal.wait_flushed(end)?,
                ReplicaSync::Lazy => inner.wal.wait_written(end)?,
                ReplicaSync::Background => {}
            }
            rs.carry.drain(..at);
            if sync == ReplicaSync::Flush {
                reached(ReplicaProgress {
                    write_lsn: Lsn(end.0 + rs.carry.len() as u64),
                    flush_lsn: inner.wal.flushed(),
                    apply_lsn: rs.applied,
                });
            }
        }
        for e in events {
            match e {
                Event::Batch(records, end) => {
                    inner.apply_batch(records, end)?;
                    rs.applied = end;
                }
                Event::Checkpoint(redo, end) => {
                    rs.restart_redo = rs.restart_redo.max(redo);
                    let mut g = inner.state.write();
                    g.last_lsn = g.last_lsn.max(end);
                }
                Event::Epoch(epoch, start, end) => {
                    // Recorded below, without the stream lock (a checkpoint takes its lock
                    // and then the stream's).
                    epochs.push((epoch, start));
                    let mut g = inner.state.write();
                    g.last_lsn = g.last_lsn.max(end);
                }
            }
        }
        if pending.is_empty() {
            // No batch is open: every record appended so far is applied.
            rs.applied = inner.wal.end();
        }
        rs.pending = pending;
        if let Some(e) = invalid {
            return Err(e);
        }
        let progress = ReplicaProgress {
            write_lsn: Lsn(inner.wal.end().0 + rs.carry.len() as u64),
            flush_lsn: inner.wal.flushed(),
            apply_lsn: rs.applied,
        };
        // An epoch record counts as applied only once recorded (below, without the stream
        // lock: a checkpoint takes its lock and then the stream's), so whoever sees the apply
        // LSN past it also sees the new epoch.
        if let Some((_, start)) = epochs.first() {
            rs.applied = rs.applied.min(*start);
        }
        drop(rs);
        if !epochs.is_empty() {
            // The epoch record is durable before the epochs file names it: a history entry
            // whose record a crash could still take away would misplace the fork point.
            if sync != ReplicaSync::Flush {
                inner.wal.wait_flushed(inner.wal.end())?;
            }
            for (epoch, start) in &epochs {
                inner.enter_epoch(&mut inner.ckpt.lock(), *epoch, *start)?;
                let mut w = inner.writer.lock();
                w.epoch = w.epoch.max(*epoch);
            }
            let mut rs = rs_lock.lock();
            rs.applied = rs.applied.max(progress.apply_lsn);
        }
        let due = {
            let w = inner.writer.lock();
            progress.flush_lsn.0.saturating_sub(w.wal_at_checkpoint)
                >= inner.options.checkpoint_wal_bytes
        };
        if due {
            inner.writer.lock().wal_at_checkpoint = progress.flush_lsn.0;
            inner.bg.lock().wake = true;
            inner.bg_cv.notify_one();
        }
        Ok(progress)
    }

    /// Everything before this LSN is applied and visible: on a replica, the end of the last
    /// record replayed; on a primary, the end of the last commit.
    pub fn apply_lsn(&self) -> Lsn {
        match self.inner.replica_state() {
            Some(rs) => rs.lock().applied,
            None => self.last_lsn(),
        }
    }

    /// Starts a base backup for seeding a replica: checkpoints, and returns the checkpoint's
    /// redo LSN — the replica replays the WAL from there — and the page count. The page file
    /// may then be copied (`read_page_file`) while writes go on: every page that changes after
    /// the redo LSN, or that the copy catches half-written, is logged as a full image after it,
    /// so replaying from the redo LSN repairs the copy (PostgreSQL's base backup argument). The
    /// caller must keep the WAL from the redo LSN (`set_wal_retain_from`) until the replica has
    /// it.
    pub fn begin_base_backup(&self) -> Result<(Lsn, u64)> {
        self.checkpoint()?;
        let ck = self.inner.ckpt.lock();
        let redo = ck.control.redo_lsn;
        // Held from here (no checkpoint can remove it before the caller registers the
        // replica with `set_wal_retain_from`).
        self.inner.retain_from.fetch_min(redo.0, Ordering::SeqCst);
        drop(ck);
        Ok((redo, self.len_pages()))
    }

    /// Pages in the database (meta `page_count`).
    pub fn len_pages(&self) -> u64 {
        self.inner.state.read().meta.page_count
    }

    /// Appends the page file's raw bytes for pages `first .. first + count` to `out` (zeros
    /// past the end of the file). For base backups.
    pub fn read_page_file(&self, first: u64, count: u64, out: &mut Vec<u8>) -> Result<()> {
        let ck = self.inner.ckpt.lock();
        let mut page = page::new_page_buf();
        for id in first..first + count {
            ck.file.read_page(PageId(id), &mut page[..])?;
            out.extend_from_slice(&page[..]);
        }
        Ok(())
    }

    /// Pages whose last change was made by a record at or after `lsn` (a page's LSN is the
    /// start of the record that last changed it), in this node's current state: after a
    /// fork, the pages a diverged log changed — what a rewind must refetch. (A record that
    /// starts at the fork is already past the shared history.)
    pub fn pages_changed_after(&self, lsn: Lsn) -> Vec<u64> {
        let g = self.inner.state.read();
        (0..g.meta.page_count)
            .filter(|&i| {
                let p = g.page_raw(PageId(i));
                p.iter().any(|&b| b != 0) && page::header(p).page_lsn.get() >= lsn.0
            })
            .collect()
    }

    /// Appends sealed copies of pages `first .. first + count` as this node's current state
    /// has them (frames or file; zeros for never-written pages) to `out`. For a rewind, which
    /// keeps the pages no one changed since the fork.
    pub fn read_current_pages(&self, first: u64, count: u64, out: &mut Vec<u8>) {
        let g = self.inner.state.read();
        for i in first..first + count {
            let at = out.len();
            out.extend_from_slice(g.page_raw(PageId(i)));
            let p = &mut out[at..];
            if p.iter().any(|&b| b != 0) {
                page::seal(p);
            }
        }
    }

    /// This node's epoch (timeline): 1 at creation, one more at every promotion.
    pub fn epoch(&self) -> u32 {
        self.inner.writer.lock().epoch
    }

    /// The epochs this node's log went through after the first, with the LSN each started at
    /// (where the log of the epoch before it ended): PostgreSQL's timeline history.
    pub fn epoch_history(&self) -> Vec<(u32, Lsn)> {
        self.inner.epochs.lock().clone()
    }

    /// Replica → primary (`REPLICAOF NO ONE`). Keeps everything replayed; drops a batch whose
    /// commit never arrived (it was never acknowledged as durable anywhere) and zeroes the log
    /// after the last complete record, so it can never be read again; then starts the next
    /// epoch there with an epoch record, recorded in the epochs file and the control file
    /// before this returns. Returns the new epoch and the LSN it starts at. Writes are taken
    /// from here on. The caller stops feeding `apply_wal` first.
    pub fn promote(&self) -> Result<(u32, Lsn)> {
        let inner = &self.inner;
        let mut ck = inner.ckpt.lock();
        let rs_lock = inner.replica_state().ok_or(Error::NotReplica)?;
        let mut rs = rs_lock.lock();
        let at = rs.applied;
        let dropped = inner.wal.end().0 + rs.carry.len() as u64 - at.0;
        rs.pending.clear();
        rs.carry.clear();
        inner.wal.truncate(at)?;
        let mut w = inner.writer.lock();
        let epoch = ck.control.epoch.max(w.epoch) + 1;
        // Pages last written before the point recovery starts from get a full image at their
        // next change (see `checkpoint`): that point is the replica's restartpoint.
        w.redo_lsn = ck.control.redo_lsn;
        w.wal_at_checkpoint = at.0;
        w.epoch = epoch;
        let mut buf = Vec::with_capacity(64);
        record::encode_epoch_change(&mut buf, at, epoch, epoch);
        let end = inner.wal.append(at, &buf, false)?;
        inner.wal.wait_flushed(end)?;
        {
            let mut g = inner.state.write();
            g.last_lsn = g.last_lsn.max(end);
        }
        inner.enter_epoch(&mut ck, epoch, at)?;
        inner.primary.store(true, Ordering::SeqCst);
        drop(w);
        drop(rs);
        tracing::info!(
            epoch,
            start = at.0,
            dropped_bytes = dropped,
            "promoted to primary"
        );
        Ok((epoch, at))
    }

    /// Primary → replica (`REPLICAOF host port` on a primary): refuses local writes from here
    /// on (a write running now finishes first) and continues the log with `apply_wal` from the
    /// end of what this node wrote, all of it durable before this returns.
    pub fn demote(&self) -> Result<Lsn> {
        let inner = &self.inner;
        // Held throughout: no checkpoint appends a record after the end taken here (same
        // order as a checkpoint and `promote`: ckpt, then the others).
        let ck = inner.ckpt.lock();
        let redo = ck.control.redo_lsn;
        let w = inner.writer.lock();
        if !inner.primary.swap(false, Ordering::SeqCst) {
            return Err(Error::Invariant(
                "demote: this node is already a replica".into(),
            ));
        }
        let end = inner.wal.end();
        if let Err(e) = inner.wal.wait_flushed(end) {
            inner.primary.store(true, Ordering::SeqCst);
            return Err(e);
        }
        let mut rs = inner.replica.lock();
        rs.carry.clear();
        rs.pending.clear();
        rs.applied = end;
        rs.restart_redo = rs.restart_redo.max(redo);
        drop(w);
        drop(ck);
        tracing::info!(at = end.0, "demoted to replica");
        Ok(end)
    }

    /// A replica whose log runs past `fork`, the last LSN it shares with its new primary:
    /// if nothing past the fork was replayed (only an incomplete batch, or records never
    /// applied, lie beyond it), cuts the log back to `fork` and returns the bytes dropped —
    /// the pages are already the shared history's. `Ok(None)` when replayed changes lie past
    /// the fork: those pages must be refetched (or the node reseeded).
    pub fn rewind_log(&self, fork: Lsn) -> Result<Option<u64>> {
        let inner = &self.inner;
        let rs_lock = inner.replica_state().ok_or(Error::NotReplica)?;
        let mut rs = rs_lock.lock();
        let end = inner.wal.end();
        if fork >= end {
            rs.carry.clear();
            return Ok(Some(0));
        }
        if rs.applied > fork || inner.state.read().last_lsn > fork {
            return Ok(None);
        }
        let dropped = end.0 - fork.0;
        rs.pending.clear();
        rs.carry.clear();
        inner.wal.truncate(fork)?;
        rs.applied = fork;
        tracing::info!(
            fork = fork.0,
            dropped_bytes = dropped,
            "rewound the log to the fork point (nothing past it was replayed)"
        );
        Ok(Some(dropped))
    }

    /// Syncs every WAL byte this node has written (a replica's records applied with
    /// `ReplicaSync::Lazy` or `Background`); returns the flush LSN.
    pub fn sync_wal(&self) -> Result<Lsn> {
        let end = self.inner.wal.end();
        self.inner.wal.wait_flushed(end)?;
        Ok(self.inner.wal.flushed())
    }

    /// Forgets the start of a record received but not complete (a link that broke mid-record):
    /// the next stream starts at `flush_lsn`, where the complete records end.
    pub fn reset_stream(&self) {
        if let Some(rs) = self.inner.replica_state() {
            rs.lock().carry.clear();
        }
    }

    /// Undoes a `demote` after which nothing was received (a switchover that could not
    /// complete): local writes are taken again, in the same epoch.
    pub fn undo_demote(&self) -> Result<()> {
        let inner = &self.inner;
        let rs = inner.replica.lock();
        if inner.primary.load(Ordering::SeqCst) {
            return Ok(());
        }
        if rs.applied != inner.wal.end() || !rs.carry.is_empty() || !rs.pending.is_empty() {
            return Err(Error::Invariant(
                "undo_demote: WAL was received since the demotion".into(),
            ));
        }
        inner.primary.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Whether this database was opened as a replica.
    pub fn is_replica(&self) -> bool {
        self.inner.replica_state().is_some()
    }

    /// Keeps WAL from `lsn` on even after checkpoints no longer need it (`None`: no hold).
    /// Replication holds WAL its replicas still have to fetch.
    pub fn set_wal_retain_from(&self, lsn: Option<Lsn>) {
        self.inner
            .retain_from
            .store(lsn.map_or(u64::MAX, |l| l.0), Ordering::SeqCst);
    }

    /// Writes every changed page to the page file, syncs it, records a checkpoint and drops
    /// WAL segments no longer needed.
    pub fn checkpoint(&self) -> Result<()> {
        self.inner.checkpoint()
    }

    /// Checks every invariant of the tree, the free list and the page accounting.
    pub fn check_integrity(&self) -> Result<IntegrityReport> {
        let g = self.inner.state.read();
        check::check(&*g, &g.meta)
    }

    pub fn stats(&self) -> Stats {
        let redo = self.inner.writer.lock().redo_lsn;
        let g = self.inner.state.read();
        Stats {
            entries: g.meta.entries,
            page_count: g.meta.page_count,
            free_pages: g.meta.free_count,
            dirty_pages: g.dirty_pages() as u64,
            file_bytes: self.inner.file_bytes.load(Ordering::Relaxed),
            last_lsn: g.last_lsn,
            flush_lsn: self.inner.wal.flushed(),
            redo_lsn: redo,
            checkpoints: self.inner.checkpoints.load(Ordering::Relaxed),
            wal_flushes: self.inner.wal.flushes(),
            wal_io: self.inner.wal.backend_name(),
            checkpoint_io: self.inner.checkpoint_io,
        }
    }

    /// Checkpoints and closes. Dropping a `Db` does the same but can only log a failure;
    /// `close` reports it.
    pub fn close(mut self) -> Result<()> {
        self.shutdown()
    }

    /// Stops the background threads and the log without a checkpoint, leaving the files as a
    /// crash right after the last flush would. For recovery tests.
    #[doc(hidden)]
    pub fn simulate_crash(mut self) {
        self.closed = true;
        self.inner.bg.lock().stop = true;
        self.inner.bg_cv.notify_all();
        if let Some(t) = self.checkpointer.take() {
            let _ = t.join();
        }
        let _ = self.inner.wal.shutdown();
    }

    fn shutdown(&mut self) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        {
            let mut bg = self.inner.bg.lock();
            bg.stop = true;
        }
        self.inner.bg_cv.notify_all();
        if let Some(t) = self.checkpointer.take() {
            let _ = t.join();
        }
        let r = if self.inner.wal.failure().is_none() && self.inner.ckpt.lock().failed.is_none() {
            self.inner.checkpoint()
        } else {
            Ok(())
        };
        let r2 = self.inner.wal.shutdown();
        r.and(r2)
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!(dir = %self.inner.dir.display(), error = %e, "could not checkpoint on close; the WAL has everything");
        }
    }
}

/// Size hint for the delta scratch buffer.
const PAGE_SIZE_HINT: usize = crate::page::PAGE_SIZE;

impl Inner {
    /// The stream state, while this node is a replica.
    fn replica_state(&self) -> Option<&Mutex<ReplicaState>> {
        (!self.primary.load(Ordering::SeqCst)).then_some(&self.replica)
    }

    /// Records that this node's log entered `epoch` at `start` (an epoch record was
    /// appended or received): the epochs file first, then the control file.
    fn enter_epoch(&self, ck: &mut Checkpointer, epoch: u32, start: Lsn) -> Result<()> {
        if epoch <= ck.control.epoch {
            return Ok(());
        }
        let mut h = self.epochs.lock();
        h.retain(|(e, _)| *e < epoch);
        h.push((epoch, start));
        crate::control::store_epochs(&self.dir, &h)?;
        ck.control.epoch = epoch;
        ck.control.store(&self.dir)?;
        tracing::info!(epoch, start = start.0, "entered a new epoch");
        Ok(())
    }

    /// Applies a batch, logs it and publishes it; returns its end LSN (not yet durable).
    /// Commits a batch together with whatever other threads queued meanwhile (flat
    /// combining): the first committer to find nobody applying becomes the combiner — it
    /// applies every queued batch in one write transaction, logs and publishes them as one
    /// group, hands the combiner role on, waits for the flush, and tells each owner. A waiting
    /// committer thus blocks once and is woken once, instead of queueing on the writer lock
    /// and then again on the flush. Each batch stays atomic (the group is).
    fn commit_grouped(&self, batch: &WriteBatch, durability: Durability) -> Result<Lsn> {
        let slot = Arc::new(Slot::default());
        let lead = {
            let mut q = self.queue.lock();
            q.waiting.push((slot.clone(), batch.clone(), durability));
            !std::mem::replace(&mut q.combining, true)
        };
        if !lead {
            let mut st = slot.state.lock();
            loop {
                match std::mem::take(&mut *st) {
                    SlotState::Waiting => slot.cv.wait(&mut st),
                    SlotState::Done(r) => return r,
                    SlotState::Lead => break,
                }
            }
        }
        // The combiner: take the group, apply it.
        let group = std::mem::take(&mut self.queue.lock().waiting);
        let applied = self.update_with(false, |tx| {
            for (_, b, _) in &group {
                tx.apply(b)?;
            }
            Ok(())
        });
        // Hand the role on before waiting for the flush, so the next group is applied while
        // this one syncs.
        {
            let mut q = self.queue.lock();
            match q.waiting.first() {
                Some((next, _, _)) => next.set(SlotState::Lead),
                None => q.combining = false,
            }
        }
        let results: Vec<Result<Lsn>> = match applied {
            Ok(((), end)) => {
                let mut flushed = None;
                group
                    .iter()
                    .map(|(_, _, d)| {
                        if *d == Durability::Off {
                            return Ok(end);
                        }
                        let r = flushed.get_or_insert_with(|| {
                            self.wal.wait_flushed(end).map_err(|e| e.to_string())
                        });
                        r.clone()
                            .map(|()| end)
                            .map_err(|why| match self.wal.failure() {
                                Some(f) => Error::PreviousIo(f),
                                None => Error::DiskFull(why),
                            })
                    })
                    .collect()
            }
            // Something in the group failed (a damaged page, say): nothing of it was applied.
            // Commit the batches one by one, so each gets its own result.
            Err(_) => group
                .iter()
                .map(|(_, b, d)| {
                    let (_, end) = self.update(*d, |tx| tx.apply(b))?;
                    if *d == Durability::Local {
                        self.wal.wait_flushed(end)?;
                    }
                    Ok(end)
                })
                .collect(),
        };
        let mut mine = None;
        for ((s, _, _), r) in group.iter().zip(results) {
            if Arc::ptr_eq(s, &slot) {
                mine = Some(r);
            } else {
                s.set(SlotState::Done(r));
            }
        }
        mine.expect("the combiner's own batch is in its group")
    }

    /// Runs `f` as one write transaction under the writer lock, then logs and publishes what
    /// it changed; returns `f`'s result and the commit's end LSN (not yet durable). If `f`
    /// fails, nothing is changed; if it changes nothing, nothing is logged.
    fn update<T>(
        &self,
        durability: Durability,
        f: impl FnOnce(&mut WriteTxn<'_>) -> Result<T>,
    ) -> Result<(T, Lsn)> {
        self.update_with(durability == Durability::Off, f)
    }

    /// `update`, where `background` says whether the background flusher should write the
    /// commit (nobody will wait for it) or the caller will wait and lead the flush itself.
    fn update_with<T>(
        &self,
        background: bool,
        f: impl FnOnce(&mut WriteTxn<'_>) -> Result<T>,
    ) -> Result<(T, Lsn)> {
        if self.replica_state().is_some() {
            return Err(Error::ReadOnly);
        }
        let mut w = self.writer.lock();
        // Demoted while this call waited for the writer lock.
        if self.replica_state().is_some() {
            return Err(Error::ReadOnly);
        }
        if let Some(why) = self.wal.failure() {
            return Err(Error::PreviousIo(why));
        }
        let guard = self.state.upgradable_read();
        let (out, mut pages, meta) = {
            let mut tx = WriteTxn {
                ctx: WriteCtx::new(&guard),
            };
            let out = f(&mut tx)?;
            let (pages, meta) = tx.ctx.finish()?;
            (out, pages, meta)
        };
        if pages.is_empty() {
            return Ok((out, guard.last_lsn));
        }
        // Log every changed page: a full image the first time a page changes after the
        // checkpoint recovery would start from (it may be torn on disk), a delta after that.
        let start = self.wal.end();
        let Writer {
            redo_lsn,
            epoch,
            scratch,
            runs,
            ..
        } = &mut *w;
        scratch.clear();
        let mut lsn = start.0;
        for (id, p) in pages.iter_mut() {
            {
                let h = page::header_mut(page::page_mut(p));
                h.page_lsn.set(lsn);
                h.checksum.set(0);
            }
            let base = if id.0 < guard.meta.page_count {
                guard.page(*id).ok()
            } else {
                None
            };
            let len = match base {
                Some(b) if page::header(b).page_lsn.get() > redo_lsn.0 => {
                    runs.clear();
                    match record::delta_runs(b, &p[..], runs) {
                        Some(()) => record::encode_page_delta(scratch, Lsn(lsn), *epoch, *id, runs),
                        None => record::encode_page_image(scratch, Lsn(lsn), *epoch, *id, &p[..]),
                    }
                }
                _ => record::encode_page_image(scratch, Lsn(lsn), *epoch, *id, &p[..]),
            };
            lsn += len as u64;
        }
        let len = record::encode_commit(scratch, Lsn(lsn), *epoch, now_us(), pages.len() as u32);
        lsn += len as u64;
        // A `Local` committer flushes (or joins a flush) itself; `Off` leaves it to the
        // background flusher.
        let end = self.wal.append(start, scratch, background)?;
        debug_assert_eq!(end.0, lsn);
        let mut g = RwLockUpgradableReadGuard::upgrade(guard);
        g.install(pages, meta, end);
        drop(g);
        let due = end.0 - w.wal_at_checkpoint >= self.options.checkpoint_wal_bytes;
        drop(w);
        if due {
            self.bg.lock().wake = true;
            self.bg_cv.notify_one();
        }
        Ok((out, end))
    }

    fn checkpoint(&self) -> Result<()> {
        let mut ck = self.ckpt.lock();
        if let Some(why) = &ck.failed {
            return Err(Error::PreviousIo(why.clone()));
        }
        // 1. Fix the redo point and take the frames to write. From here on, a page's next
        //    change logs a full image again (its LSN is <= redo).
        if let Some(rs) = self.replica_state() {
            return self.replica_checkpoint(&mut ck, rs);
        }
        let (redo, snapshot, page_count) = {
            let mut w = self.writer.lock();
            let redo = self.wal.end();
            if redo.0 == w.wal_at_checkpoint && self.state.read().dirty_pages() == 0 {
                return Ok(());
            }
            w.redo_lsn = redo;
            w.wal_at_checkpoint = redo.0;
            let g = self.state.read();
            (redo, g.frames_snapshot(), g.meta.page_count)
        };
        // 2. The WAL rule: the log up to every page's LSN is durable before the page is written.
        self.wal.wait_flushed(redo)?;
        // 3. Pages, then sync.
        let Checkpointer { file, backend, .. } = &mut *ck;
        if let Err(e) = file.write_pages(backend.as_mut(), &snapshot, page_count) {
            tracing::error!(error = %e, "checkpoint write-back failed; refusing further checkpoints (the WAL keeps everything)");
            ck.failed = Some(e.to_string());
            return Err(e);
        }
        // 4. The checkpoint record, then the control file that points recovery at `redo`.
        let ck_lsn = {
            let w = self.writer.lock();
            let start = self.wal.end();
            let mut buf = Vec::with_capacity(64);
            record::encode_checkpoint(&mut buf, start, w.epoch, redo);
            let end = self.wal.append(start, &buf, false)?;
            // The pages reflect the log through this record too (it changes none of them), so
            // a replica that applied it and this primary name the same position.
            {
                let mut g = self.state.write();
                g.last_lsn = g.last_lsn.max(end);
            }
            drop(w);
            self.wal.wait_flushed(end)?;
            start
        };
        ck.control.redo_lsn = redo;
        ck.control.checkpoint_lsn = ck_lsn;
        ck.control.store(&self.dir)?;
        // 5. Frames that did not change meanwhile are now clean: readers use the file again.
        {
            let mut g = self.state.write();
            ck.file.finish_checkpoint(&mut g, &snapshot)?;
        }
        // 6. WAL before the redo point (and before what replication holds) is not needed.
        let keep = redo.0.min(self.retain_from.load(Ordering::SeqCst));
        let end = self.wal.end().0;
        let removed = ck.segs.remove_below(keep, end)?;
        self.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.file_bytes
            .store(ck.file.len_bytes(), Ordering::Relaxed);
        tracing::debug!(
            redo = redo.0,
            pages = snapshot.len(),
            removed_segments = removed,
            "checkpoint"
        );
        Ok(())
    }

    /// A replica's checkpoint (PostgreSQL's restartpoint): write every changed page, then
    /// point recovery at the redo LSN of the last primary checkpoint record applied. Pages the
    /// write may tear were all changed after that point, so the primary's full-page images
    /// for them are in the log that recovery replays. Nothing is appended: the replica's log
    /// stays the primary's, byte for byte.
    fn replica_checkpoint(&self, ck: &mut Checkpointer, rs: &Mutex<ReplicaState>) -> Result<()> {
        let redo = rs.lock().restart_redo;
        let (snapshot, page_count) = {
            let g = self.state.read();
            (g.frames_snapshot(), g.meta.page_count)
        };
        if snapshot.is_empty() && redo == ck.control.redo_lsn {
            return Ok(());
        }
        // The WAL rule: the log behind every page's LSN is durable before the page is written
        // (a replica may have replayed records it has only written).
        self.wal.wait_flushed(self.wal.end())?;
        let Checkpointer { file, backend, .. } = ck;
        if let Err(e) = file.write_pages(backend.as_mut(), &snapshot, page_count) {
            tracing::error!(error = %e, "replica checkpoint write-back failed; refusing further checkpoints");
            ck.failed = Some(e.to_string());
            return Err(e);
        }
        if redo > ck.control.redo_lsn {
            ck.control.redo_lsn = redo;
            ck.control.store(&self.dir)?;
        }
        {
            let mut g = self.state.write();
            ck.file.finish_checkpoint(&mut g, &snapshot)?;
        }
        let keep = redo.0.min(self.retain_from.load(Ordering::SeqCst));
        ck.segs.remove_below(keep, self.wal.end().0)?;
        self.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.file_bytes
            .store(ck.file.len_bytes(), Ordering::Relaxed);
        self.writer.lock().redo_lsn = redo;
        Ok(())
    }

    /// Replays one complete batch received by a replica: its page records onto copies of the
    /// published pages, then one publish.
    fn apply_batch(&self, records: Vec<(u64, Vec<u8>)>, end: Lsn) -> Result<()> {
        let guard = self.state.upgradable_read();
        let mut pages: std::collections::HashMap<PageId, page::PageArc> =
            std::collections::HashMap::new();
        for (lsn, raw) in &records {
            recovery::redo_record(&mut pages, *lsn, raw, |id| {
                if id.0 >= guard.meta.page_count {
                    return Err(Error::CorruptWal {
                        lsn: Lsn(*lsn),
                        reason: format!("delta for page {id}, which does not exist yet"),
                    });
                }
                Ok(page::page_copy(guard.page(id)?))
            })?;
        }
        let meta = match pages.get(&PageId(0)) {
            Some(p0) => page::Meta::read(&p0[..])
                .map_err(|reason| Error::CorruptWal { lsn: end, reason })?,
            None => guard.meta,
        };
        let mut pages: Vec<_> = pages.into_iter().collect();
        pages.sort_unstable_by_key(|(id, _)| *id);
        let mut g = RwLockUpgradableReadGuard::upgrade(guard);
        g.install(pages, meta, end);
        Ok(())
    }

    fn checkpointer_loop(&self) {
        let mut bg = self.bg.lock();
        loop {
            if bg.stop {
                return;
            }
            if !bg.wake {
                let _ = self
                    .bg_cv
                    .wait_for(&mut bg, self.options.checkpoint_interval);
            }
            if bg.stop {
                return;
            }
            bg.wake = false;
            drop(bg);
            if let Err(e) = self.checkpoint() {
                tracing::warn!(error = %e, "background checkpoint failed");
            }
            bg = self.bg.lock();
        }
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

pub(crate) fn random_node_id() -> u64 {
    random_u64()
}

fn random_u64() -> u64 {
    // Node identities need uniqueness, not secrecy: mix the clock, the pid and an address.
    let t = now_us();
    let x = &t as *const u64 as u64;
    let mut z = t ^ (u64::from(std::process::id()) << 32) ^ x.rotate_left(17);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn own_bound(b: Bound<&&[u8]>) -> Bound<Vec<u8>> {
    match b {
        Bound::Included(k) => Bound::Included(k.to_vec()),
        Bound::Excluded(k) => Bound::Excluded(k.to_vec()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

fn as_ref_bound(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(k) => Bound::Included(k.as_slice()),
        Bound::Excluded(k) => Bound::Excluded(k.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// A read-only snapshot (see `Db::read`).
pub struct ReadTxn<'db> {
    g: RwLockReadGuard<'db, Published>,
}

impl ReadTxn<'_> {
    pub fn get(&self, key: &[u8]) -> Result<Option<Cow<'_, [u8]>>> {
        btree::get(&*self.g, self.g.meta.root, key)
    }

    pub fn len(&self) -> u64 {
        self.g.meta.entries
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn last_lsn(&self) -> Lsn {
        self.g.last_lsn
    }

    /// A digest of every page (0 .. page_count) in page order, as of this snapshot, and the
    /// LSN it reflects. Two nodes that applied the same log print the same digest: it is
    /// how replicas are checked against their primary. (The checksum field is left out:
    /// pages in memory carry none until they are written.)
    pub fn digest(&self) -> (Lsn, u64) {
        let g = &self.g;
        let (mut a, mut b) = (0u32, 0x9e37_79b9u32);
        for i in 0..g.meta.page_count {
            let p = g.page_raw(PageId(i));
            a = crc32c::crc32c_append(a, &p[4..]);
            b = crc32c::crc32c_append(b, &i.to_le_bytes());
            b = crc32c::crc32c_append(b, &a.to_le_bytes());
        }
        (g.last_lsn, (u64::from(a) << 32) | u64::from(b))
    }

    /// Ordered iteration over `range` within this snapshot; entries borrow from the pages
    /// where they can.
    pub fn range<'a, R: RangeBounds<&'a [u8]>>(&self, range: R) -> Result<TxnRange<'_>> {
        let src: &Published = &self.g;
        let root = src.meta.root;
        let lower = range.start_bound().map(|k| *k);
        let upper = range.end_bound().map(|k| *k);
        let front = Cursor::seek_first(src, root, lower)?;
        let back = Cursor::seek_last(src, root, upper)?;
        let mut done = !front.is_valid() || !back.is_valid();
        if !done {
            let (fk, _) = front.entry();
            let (bk, _) = back.entry();
            let fk = btree::load_key(src, fk)?;
            let bk = btree::load_key(src, bk)?;
            done = fk > bk;
        }
        Ok(TxnRange {
            src,
            front,
            back,
            done,
        })
    }
}

/// Iterator of a `ReadTxn::range`.
pub struct TxnRange<'t> {
    src: &'t Published,
    front: Cursor<'t>,
    back: Cursor<'t>,
    done: bool,
}

pub type Entry<'t> = (Cow<'t, [u8]>, Cow<'t, [u8]>);

impl<'t> TxnRange<'t> {
    fn take(&mut self, from_front: bool) -> Result<Entry<'t>> {
        let c = if from_front { &self.front } else { &self.back };
        let (k, v) = c.entry();
        let out = (
            btree::load_key(self.src, k)?,
            btree::load_value(self.src, v)?,
        );
        if self.front.position() == self.back.position() {
            self.done = true;
        } else if from_front {
            self.front.next(self.src)?;
        } else {
            self.back.prev(self.src)?;
        }
        Ok(out)
    }
}

impl<'t> Iterator for TxnRange<'t> {
    type Item = Result<Entry<'t>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let r = self.take(true);
        if r.is_err() {
            self.done = true;
        }
        Some(r)
    }
}

impl DoubleEndedIterator for TxnRange<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let r = self.take(false);
        if r.is_err() {
            self.done = true;
        }
        Some(r)
    }
}

/// Entries fetched per reader-lock acquisition by `Range`.
const RANGE_CHUNK: usize = 512;

/// Iterator of `Db::range`: owned entries, fetched in chunks.
pub struct Range<'db> {
    db: &'db Db,
    /// Not yet fetched: keys inside (lower, upper).
    lower: Bound<Vec<u8>>,
    upper: Bound<Vec<u8>>,
    front: VecDeque<(Vec<u8>, Vec<u8>)>,
    back: VecDeque<(Vec<u8>, Vec<u8>)>,
    exhausted: bool,
}

impl Range<'_> {
    /// Fetches the next chunk from the front (or back) of the unfetched interval.
    fn fill(&mut self, from_front: bool) -> Result<()> {
        let mut got = Vec::new();
        {
            let txn = self.db.read();
            let it = txn.range::<(Bound<&[u8]>, Bound<&[u8]>)>((
                as_ref_bound(&self.lower),
                as_ref_bound(&self.upper),
            ))?;
            if from_front {
                for e in it.take(RANGE_CHUNK) {
                    let (k, v) = e?;
                    got.push((k.into_owned(), v.into_owned()));
                }
            } else {
                for e in it.rev().take(RANGE_CHUNK) {
                    let (k, v) = e?;
                    got.push((k.into_owned(), v.into_owned()));
                }
            }
        }
        if got.len() < RANGE_CHUNK {
            self.exhausted = true;
        }
        if let Some((k, _)) = got.last() {
            if from_front {
                self.lower = Bound::Excluded(k.clone());
            } else {
                self.upper = Bound::Excluded(k.clone());
            }
        }
        if from_front {
            self.front.extend(got);
        } else {
            self.back.extend(got);
        }
        Ok(())
    }
}

impl Iterator for Range<'_> {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.front.is_empty() && !self.exhausted {
            if let Err(e) = self.fill(true) {
                self.exhausted = true;
                return Some(Err(e));
            }
        }
        if let Some(e) = self.front.pop_front() {
            return Some(Ok(e));
        }
        // The back has fetched the rest (in descending order).
        self.back.pop_back().map(Ok)
    }
}

impl DoubleEndedIterator for Range<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        if self.back.is_empty() && !self.exhausted {
            if let Err(e) = self.fill(false) {
                self.exhausted = true;
                return Some(Err(e));
            }
        }
        if let Some(e) = self.back.pop_front() {
            return Some(Ok(e));
        }
        self.front.pop_back().map(Ok)
    }
}
