//! The embedded API: open a directory, commit write batches, read points and ranges.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};

use parking_lot::{Mutex, RwLock, RwLockReadGuard, RwLockUpgradableReadGuard, RwLockWriteGuard};

use crate::btree;
use crate::check::{self, IntegrityReport};
use crate::cursor::Cursor;
use crate::error::{Error, Result};
use crate::node::{MAX_KEY, MAX_VALUE};
use crate::page::PAGE_SIZE;
use crate::pager::{PageFile, Published};
use crate::tree_write;
use crate::txn::WriteCtx;
use crate::types::Lsn;

/// Name of the page file inside the database directory.
pub const PAGE_FILE: &str = "pages.db";

/// How durable a commit is when `commit` returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Visible to readers, on disk later (at the next durable commit, checkpoint or close).
    Off,
    /// On disk (fsynced) before `commit` returns.
    Local,
}

#[derive(Clone, Debug)]
pub struct Options {
    /// Changed pages kept in memory before they are written back even without a durable
    /// commit. Bounds memory under a stream of `Durability::Off` commits.
    pub dirty_limit_bytes: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            dirty_limit_bytes: 64 << 20,
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
            let (k, v) = match op {
                Op::Put(k, v) => (k, Some(v)),
                Op::Delete(k) => (k, None),
            };
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
    pub dirty_pages: u64,
    pub file_bytes: u64,
    pub last_lsn: Lsn,
}

struct Writer {
    file: PageFile,
    /// Set by the first failed write or fsync; every later write is refused.
    failed: Option<String>,
    closed: bool,
}

/// A replidb database: a B+tree in a page file inside a directory.
///
/// Any number of threads may read while one commit at a time is applied; a reader sees each
/// batch entirely or not at all. All methods take `&self`; share a `Db` with `Arc`.
pub struct Db {
    state: RwLock<Published>,
    writer: Mutex<Writer>,
    options: Options,
    dir: PathBuf,
}

impl Db {
    /// Opens the database in `dir`, creating the directory and an empty database if needed.
    pub fn open(dir: impl AsRef<Path>, options: Options) -> Result<Db> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir)?;
        let (file, published) = PageFile::open(&dir.join(PAGE_FILE))?;
        tracing::debug!(
            dir = %dir.display(),
            pages = published.meta.page_count,
            entries = published.meta.entries,
            "opened database"
        );
        Ok(Db {
            state: RwLock::new(published),
            writer: Mutex::new(Writer {
                file,
                failed: None,
                closed: false,
            }),
            options,
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Applies `batch` atomically and returns its LSN. With `Durability::Local` the batch is
    /// on disk when this returns. An empty batch changes nothing and returns the last LSN.
    pub fn commit(&self, batch: &WriteBatch, durability: Durability) -> Result<Lsn> {
        batch.validate()?;
        let mut w = self.writer.lock();
        if let Some(why) = &w.failed {
            return Err(Error::PreviousIo(why.clone()));
        }
        let guard = self.state.upgradable_read();
        if batch.is_empty() {
            return Ok(guard.meta.last_lsn);
        }
        let lsn = Lsn(guard.meta.last_lsn.0 + 1);
        let (pages, meta) = {
            let mut ctx = WriteCtx::new(&guard);
            for op in &batch.ops {
                match op {
                    Op::Put(k, v) => {
                        tree_write::put(&mut ctx, k, v)?;
                    }
                    Op::Delete(k) => {
                        tree_write::delete(&mut ctx, k)?;
                    }
                }
            }
            ctx.finish(lsn)?
        };
        let mut g = RwLockUpgradableReadGuard::upgrade(guard);
        g.install(pages, meta);
        let over_limit = g.dirty_pages() * PAGE_SIZE > self.options.dirty_limit_bytes;
        if durability == Durability::Local || over_limit {
            let g = RwLockWriteGuard::downgrade_to_upgradable(g);
            write_back(&mut w, g)?;
        }
        Ok(lsn)
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
        let g = self.state.read();
        Ok(btree::get(&*g, g.meta.root, key)?.map(Cow::into_owned))
    }

    /// A consistent snapshot for several reads. It holds the reader lock: while it lives,
    /// commits can be prepared but not published, so keep it short.
    pub fn read(&self) -> ReadTxn<'_> {
        ReadTxn {
            g: self.state.read(),
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
        self.state.read().meta.entries
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// LSN of the last commit.
    pub fn last_lsn(&self) -> Lsn {
        self.state.read().meta.last_lsn
    }

    /// Writes every changed page to the page file and syncs it.
    pub fn checkpoint(&self) -> Result<()> {
        let mut w = self.writer.lock();
        if let Some(why) = &w.failed {
            return Err(Error::PreviousIo(why.clone()));
        }
        let g = self.state.upgradable_read();
        if g.dirty_pages() == 0 {
            return Ok(());
        }
        write_back(&mut w, g)
    }

    /// Checks every invariant of the tree, the free list and the page accounting.
    pub fn check_integrity(&self) -> Result<IntegrityReport> {
        let g = self.state.read();
        check::check(&*g, &g.meta)
    }

    pub fn stats(&self) -> Stats {
        let w = self.writer.lock();
        let g = self.state.read();
        Stats {
            entries: g.meta.entries,
            page_count: g.meta.page_count,
            free_pages: g.meta.free_count,
            dirty_pages: g.dirty_pages() as u64,
            file_bytes: w.file.len_bytes(),
            last_lsn: g.meta.last_lsn,
        }
    }

    /// Writes back everything and closes. Dropping a `Db` does the same but can only log
    /// a failure; `close` reports it.
    pub fn close(self) -> Result<()> {
        let r = self.checkpoint();
        self.writer.lock().closed = true;
        r
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if self.writer.lock().closed {
            return;
        }
        if let Err(e) = self.checkpoint() {
            tracing::error!(dir = %self.dir.display(), error = %e, "could not write back on close");
        }
    }
}

fn write_back(w: &mut Writer, g: RwLockUpgradableReadGuard<'_, Published>) -> Result<()> {
    let written = match w.file.write_back(&g) {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(file = %w.file.path().display(), error = %e, "write-back failed; refusing further writes");
            w.failed = Some(e.to_string());
            return Err(e);
        }
    };
    let mut g = RwLockUpgradableReadGuard::upgrade(g);
    if let Err(e) = w.file.finish_write_back(&mut g, &written) {
        w.failed = Some(e.to_string());
        return Err(e);
    }
    Ok(())
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
        self.g.meta.last_lsn
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
            let (fk, _) = front.entry(src)?;
            let (bk, _) = back.entry(src)?;
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
    front: Cursor,
    back: Cursor,
    done: bool,
}

pub type Entry<'t> = (Cow<'t, [u8]>, Cow<'t, [u8]>);

impl<'t> TxnRange<'t> {
    fn take(&mut self, from_front: bool) -> Result<Entry<'t>> {
        let c = if from_front { &self.front } else { &self.back };
        let (k, v) = c.entry(self.src)?;
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
