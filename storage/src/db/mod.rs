//! The embedded API: open a directory, commit write batches, read points and ranges.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::{Condvar, Mutex, RwLock, RwLockUpgradableReadGuard};

use crate::btree;
use crate::check::{self, IntegrityReport};
use crate::control::Control;
use crate::error::{Error, Result};
use crate::node::{MAX_KEY, MAX_VALUE};
use crate::page;
use crate::pager::{PageFile, PageSource, Published};
use crate::recovery;
use crate::tree_write;
use crate::txn::WriteCtx;
use crate::types::Lsn;
use crate::wal::io::{self as walio, Backend, WalIo};
use crate::wal::record;
use crate::wal::segment::Segments;
use crate::wal::Wal;

mod checkpoint;
mod compact;
mod epochs;
mod options;
mod read;
mod repair;
mod replica;
#[cfg(test)]
mod replica_tests;
mod scrub;
mod stats;

pub use compact::{
    CompactReport, RepackReport, ShrinkReport, COMPACT_STEP_ENTRIES, REPACK_STEP_PARENTS,
    SHRINK_STEP_PAGES,
};
pub use options::Options;
pub use read::{Entry, Range, ReadTxn, TxnRange};
pub use scrub::{PageScrub, WalScrub};
pub use stats::Stats;

use replica::ReplicaState;
pub use replica::{ReplicaProgress, ReplicaSync};

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

    /// Inserts or overwrites; returns the value it replaced (`None`: the key is new). One
    /// descent where `get` then `put` take two.
    pub fn replace(&mut self, key: &[u8], value: &[u8]) -> Result<Option<Vec<u8>>> {
        check_sizes(key, Some(value))?;
        tree_write::replace(&mut self.ctx, key, value)
    }

    /// Deletes; returns true if the key was present.
    pub fn delete(&mut self, key: &[u8]) -> Result<bool> {
        check_sizes(key, None)?;
        tree_write::delete(&mut self.ctx, key)
    }

    /// Read-modify-write in one descent: `f` gets the value under `key` (None: absent) and
    /// returns the value to store, or None to change nothing. Returns None if `f` declined,
    /// else whether the key is new.
    pub fn modify(
        &mut self,
        key: &[u8],
        mut f: impl FnMut(Option<&[u8]>) -> Option<Vec<u8>>,
    ) -> Result<Option<bool>> {
        check_sizes(key, None)?;
        tree_write::modify(&mut self.ctx, key, &mut f)
    }

    /// Deletes; returns the value the key held (`None`: it was absent). One descent where
    /// `get` then `delete` take two.
    pub fn take(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        check_sizes(key, None)?;
        tree_write::take(&mut self.ctx, key)
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

    /// Calls `f` on each entry inside (`lower`, `upper`) in key order (descending if
    /// `reverse`) until it returns false, this transaction's own changes included.
    pub fn visit(
        &self,
        lower: std::ops::Bound<&[u8]>,
        upper: std::ops::Bound<&[u8]>,
        reverse: bool,
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        read::visit(&self.ctx, self.ctx.meta.root, lower, upper, reverse, f)
    }

    /// Number of keys, including this transaction's own changes.
    pub fn len(&self) -> u64 {
        self.ctx.meta.entries
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub(crate) fn check_sizes(k: &[u8], v: Option<&[u8]>) -> Result<()> {
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

/// How durable a commit is when it is acknowledged: PostgreSQL's `synchronous_commit`
/// levels, the one vocabulary of the engine, the server and replication. The engine honours
/// the local part (`Off`: acknowledged before the WAL is synced; every other level: after);
/// the remote levels also wait for replicas, which is replication's business — to the engine
/// they are `Local`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Acknowledged once the batch is in the WAL buffer (visible to readers, on disk within
    /// one flush — at most a few milliseconds later). A crash can lose it.
    Off,
    /// Acknowledged after the WAL holding it is fsynced. A crash cannot lose it.
    Local,
    /// `Local`, and the sync-standbys quorum has received it.
    RemoteWrite,
    /// `Local`, and the sync-standbys quorum has fsynced it.
    RemoteFlush,
    /// `Local`, and the sync-standbys quorum has applied it (readers there see it).
    RemoteApply,
}

impl Durability {
    /// Every level, weakest first.
    pub const ALL: [Durability; 5] = [
        Durability::Off,
        Durability::Local,
        Durability::RemoteWrite,
        Durability::RemoteFlush,
        Durability::RemoteApply,
    ];

    /// The level named `s` (`off`, `local`, `remote_write`, `remote_flush`, `remote_apply`;
    /// any case).
    pub fn parse(s: &str) -> Option<Durability> {
        Durability::ALL
            .into_iter()
            .find(|d| d.name().eq_ignore_ascii_case(s))
    }

    pub fn name(self) -> &'static str {
        match self {
            Durability::Off => "off",
            Durability::Local => "local",
            Durability::RemoteWrite => "remote_write",
            Durability::RemoteFlush => "remote_flush",
            Durability::RemoteApply => "remote_apply",
        }
    }

    /// Whether a commit at this level waits for this node's WAL sync.
    pub fn syncs_locally(self) -> bool {
        self != Durability::Off
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

/// State of the one writer.
struct Writer {
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
    /// WAL damage recovery cut off at open (a replica: it refetches the rest).
    wal_damage_cut: Option<crate::WalDamage>,
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
    /// Time spent in checkpoints in all, and in the last one (µs).
    checkpoint_us: AtomicU64,
    last_checkpoint_us: AtomicU64,
    /// The first LSN the WAL files still hold (what the last checkpoint kept).
    wal_kept_from: AtomicU64,
    /// Pages whose LSN is at or below this get a full image at their next change: it is the
    /// start of the last (or running) checkpoint, from which recovery would replay. Set
    /// only under the writer lock, so a commit reads one value throughout; an atomic so
    /// that `stats` need not wait for the writer (a long batch, a compaction step).
    redo_lsn: AtomicU64,
    file_bytes: AtomicU64,
    checkpoint_io: &'static str,
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
        let vfs = options.vfs.clone();
        let wal_io = if vfs.is_real() {
            options.wal_io
        } else {
            WalIo::Sync
        };
        vfs.create_dir_all(&dir.join(WAL_DIR))?;
        let mut file = PageFile::open(&*vfs, &dir.join(PAGE_FILE))?;
        file.set_step_pages(options.page_file_step_pages);
        let control = match Control::load(&*vfs, &dir)? {
            Some(c) => c,
            None if file.len_pages() <= 2 => {
                // New (or never finished creating): lay down an empty database. The control
                // file is written last, so its presence means creation completed.
                file.create(&*vfs)?;
                let c = Control {
                    redo_lsn: Lsn(0),
                    checkpoint_lsn: Lsn(0),
                    segment_bytes: options.wal_segment_bytes.clamp(64 * 1024, 1 << 30),
                    node_id: random_u64(),
                    epoch: 1,
                    flags: 0,
                };
                c.store(&*vfs, &dir)?;
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
            vfs.clone(),
            &dir.join(WAL_DIR),
            control.segment_bytes,
            options.faults.clone(),
        );
        segs.remove_leftovers()?;
        let on_damage = if options.replica || options.truncate_damaged_wal {
            recovery::OnDamage::Truncate
        } else {
            recovery::OnDamage::Refuse
        };
        let closed = control.flags & crate::control::FLAG_OPEN == 0;
        let rec = recovery::recover(&file, &mut segs, control.redo_lsn, closed, on_damage)?;
        let wal_damage_cut = rec.damage_cut.clone();
        let discarded = rec.discarded;
        let replayed = !rec.pages.is_empty();
        // The pages reflect the log through its last complete record.
        let last_lsn = rec.end;
        let published = file.publish(rec.pages.into_iter().collect(), last_lsn)?;
        let wal = Wal::start(
            vfs.clone(),
            &dir.join(WAL_DIR),
            control.segment_bytes,
            rec.end,
            wal_io,
            options.faults.clone(),
        )?;
        let backend = walio::checkpoint_backend(wal_io, options.faults.clone())?;
        tracing::debug!(
            dir = %dir.display(),
            pages = published.meta.page_count,
            entries = published.meta.entries,
            wal_io = wal.backend_name(),
            "opened database"
        );
        let file_bytes = file.len_bytes();
        let checkpoint_io = backend.name();
        let epochs = crate::control::load_epochs(&*vfs, &dir)?;
        let replica = Mutex::new(ReplicaState {
            carry: Vec::new(),
            batches: crate::wal::batch::Assembler::for_stream(),
            restart_redo: rec
                .last_checkpoint_redo
                .unwrap_or(control.redo_lsn)
                .max(control.redo_lsn),
            applied: rec.end,
            broken: None,
        });
        let primary = AtomicBool::new(!options.replica);
        let wal_reader = Segments::new(vfs, &dir.join(WAL_DIR), control.segment_bytes, None);
        let inner = Arc::new(Inner {
            state: RwLock::new(published),
            writer: Mutex::new(Writer {
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
            redo_lsn: AtomicU64::new(control.redo_lsn.0),
            checkpoint_us: AtomicU64::new(0),
            last_checkpoint_us: AtomicU64::new(0),
            wal_kept_from: AtomicU64::new(
                control.redo_lsn.0 - control.redo_lsn.0 % control.segment_bytes.max(1),
            ),
            file_bytes: AtomicU64::new(file_bytes),
            checkpoint_io,
            wal_damage_cut,
        });
        // A crash may have come between an epoch record and the files that record it (or
        // between the epochs file and the control file): the log and the history win.
        {
            let mut ck = inner.ckpt.lock();
            let mut seen = rec.epochs_seen.clone();
            seen.extend(inner.epochs.lock().last().copied());
            for (e, at) in seen {
                inner.enter_epoch(&mut ck, e, at)?;
            }
            let mut w = inner.writer.lock();
            w.epoch = w.epoch.max(ck.control.epoch);
        }
        // A primary that did not close cleanly may have lost log it had already shipped (a
        // power loss takes the unsynced tail): it resumes its epoch at the recovered end, so
        // a replica holding more is rewound at the handshake, never mixed (docs/replication.md).
        {
            use crate::control::{FLAG_OPEN, FLAG_RESUME_PENDING};
            let mut ck = inner.ckpt.lock();
            // After an unclean stop — or whenever recovery threw log away (a torn tail after a
            // clean stop, damage cut on request): a replica may hold what was thrown away.
            let mut pending = !inner.options.replica
                && (discarded || ck.control.flags & (FLAG_OPEN | FLAG_RESUME_PENDING) != 0);
            if pending && !inner.options.inspect {
                inner.resume_epoch(&mut ck)?;
                pending = false;
            }
            ck.control.flags = FLAG_OPEN | if pending { FLAG_RESUME_PENDING } else { 0 };
            ck.control.store(&*inner.options.vfs, &inner.dir)?;
        }
        if replayed && !inner.options.inspect {
            // Make the replayed pages durable now, so the next crash does not replay them.
            inner.checkpoint()?;
        }
        let checkpointer = if inner.options.inspect {
            None
        } else {
            let bg = inner.clone();
            Some(
                std::thread::Builder::new()
                    .name("replidb-checkpointer".into())
                    .spawn(move || bg.checkpointer_loop())?,
            )
        };
        Ok(Db {
            inner,
            checkpointer,
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
        if durability.syncs_locally() {
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

    /// WAL damage that recovery cut off when this replica opened (a primary refuses to open
    /// instead: `Error::WalDamaged`). The log past it is refetched from the primary.
    pub fn wal_damage_cut(&self) -> Option<&crate::WalDamage> {
        self.inner.wal_damage_cut.as_ref()
    }

    /// Every page that fails its checksum or structure checks (see `check_integrity` for the
    /// tree's invariants, which stops at the first problem).
    pub fn damaged_pages(&self) -> Vec<(crate::PageId, String)> {
        self.inner.state.read().damaged_pages()
    }

    /// Checks every invariant of the tree, the free list and the page accounting.
    pub fn check_integrity(&self) -> Result<IntegrityReport> {
        let g = self.inner.state.read();
        check::check(&*g, &g.meta)
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
        let r = if self.inner.options.inspect {
            Ok(())
        } else if self.inner.wal.failure().is_none() && self.inner.ckpt.lock().failed.is_none() {
            self.inner.checkpoint()
        } else {
            Ok(())
        };
        let r2 = self.inner.wal.shutdown();
        let r3 = if r.is_ok() && r2.is_ok() {
            // Closed cleanly: the next open has nothing to resume.
            let mut ck = self.inner.ckpt.lock();
            ck.control.flags &= !crate::control::FLAG_OPEN;
            ck.control.store(&*self.inner.options.vfs, &self.inner.dir)
        } else {
            Ok(())
        };
        r.and(r2).and(r3)
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
                    if d.syncs_locally() {
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
        let (out, mut pages, touched, meta) = {
            let mut tx = WriteTxn {
                ctx: WriteCtx::new(&guard),
            };
            let out = f(&mut tx)?;
            let (pages, touched, meta) = tx.ctx.finish()?;
            (out, pages, touched, meta)
        };
        if pages.is_empty() {
            return Ok((out, guard.last_lsn));
        }
        if pages.len() > crate::wal::batch::MAX_BATCH_PAGES {
            // Nothing was installed or logged: the transaction's pages are dropped here.
            return Err(Error::BatchTooLarge {
                pages: pages.len(),
                max: crate::wal::batch::MAX_BATCH_PAGES,
            });
        }
        // Log every changed page: a full image the first time a page changes after the
        // checkpoint recovery would start from (it may be torn on disk), a delta after that.
        let start = self.wal.end();
        let redo_lsn = Lsn(self.redo_lsn.load(Ordering::Relaxed));
        let Writer {
            epoch,
            scratch,
            runs,
            ..
        } = &mut *w;
        scratch.clear();
        let mut lsn = start.0;
        for ((id, p), touched) in pages.iter_mut().zip(&touched) {
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
                    let found = touched.delta(b, &p[..], runs);
                    match found {
                        Some(()) => record::encode_page_delta(scratch, Lsn(lsn), *epoch, *id, runs),
                        None => record::encode_page_image(scratch, Lsn(lsn), *epoch, *id, &p[..]),
                    }
                }
                _ => record::encode_page_image(scratch, Lsn(lsn), *epoch, *id, &p[..]),
            };
            lsn += len as u64;
        }
        // The commit vouches for everything synced before it: after a crash, a damaged record
        // before that point is damage, not a torn tail (recovery.rs).
        let synced = self.wal.flushed();
        let len = record::encode_commit(
            scratch,
            Lsn(lsn),
            *epoch,
            now_us(),
            pages.len() as u32,
            synced,
        );
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
