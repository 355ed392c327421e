//! `Db::stats`: counters describing the database files, the log and checkpoints, read
//! without waiting for a running checkpoint.

use std::sync::atomic::Ordering;

use super::Db;
use crate::types::Lsn;

/// Counters describing the database files and memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stats {
    pub entries: u64,
    pub page_count: u64,
    pub free_pages: u64,
    /// Pages of the value heap, and the bytes of live values in them: the heap's garbage is
    /// `heap_pages * (PAGE_SIZE - 40) - heap_live` (`Db::compact` gives it back).
    pub heap_pages: u64,
    pub heap_live: u64,
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
    /// Time spent in checkpoints since open, and in the last one (µs).
    pub checkpoint_us: u64,
    pub last_checkpoint_us: u64,
    /// The first LSN the WAL files still hold: `last_lsn` minus this is the log kept on
    /// disk (for recovery, and for replicas and archives that are behind).
    pub wal_kept_from: Lsn,
    /// WAL write+sync rounds since open; with group commit, fewer than durable commits.
    pub wal_flushes: u64,
    /// The log's I/O path: "io_uring" or "pwrite+fdatasync".
    pub wal_io: &'static str,
    /// The checkpoints' I/O path.
    pub checkpoint_io: &'static str,
}

impl Db {
    pub fn stats(&self) -> Stats {
        let redo = Lsn(self.inner.redo_lsn.load(Ordering::Relaxed));
        let g = self.inner.state.read();
        Stats {
            entries: g.meta.entries,
            page_count: g.meta.page_count,
            free_pages: g.meta.free_count,
            heap_pages: g.meta.heap_pages,
            heap_live: g.meta.heap_live,
            dirty_pages: g.dirty_pages() as u64,
            file_bytes: self.inner.file_bytes.load(Ordering::Relaxed),
            last_lsn: g.last_lsn,
            flush_lsn: self.inner.wal.flushed(),
            redo_lsn: redo,
            checkpoints: self.inner.checkpoints.load(Ordering::Relaxed),
            checkpoint_us: self.inner.checkpoint_us.load(Ordering::Relaxed),
            last_checkpoint_us: self.inner.last_checkpoint_us.load(Ordering::Relaxed),
            wal_kept_from: Lsn(self.inner.wal_kept_from.load(Ordering::Relaxed)),
            wal_flushes: self.inner.wal.flushes(),
            wal_io: self.inner.wal.backend_name(),
            checkpoint_io: self.inner.checkpoint_io,
        }
    }
}
