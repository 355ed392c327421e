//! Reading a stopped database's log without changing it: where replay would stop, and
//! whether that is the tail a crash tore (nothing valid after it) or damage (valid records
//! follow). `replidb check` runs this before it opens a database, since opening recovers and
//! recovery cuts the log back to its last complete record.

use std::path::Path;

use crate::control::Control;
use crate::db::{Options, WAL_DIR};
use crate::error::{Error, Result};
use crate::types::Lsn;
use crate::wal::segment::Segments;

/// What a read of the log found.
#[derive(Clone, Debug)]
pub struct WalCheck {
    /// Where replay starts (the last checkpoint's redo LSN).
    pub redo: Lsn,
    /// The end of the last complete record: where recovery would cut the log.
    pub end: Lsn,
    /// Records read, and commits among them.
    pub records: u64,
    pub commits: u64,
    /// Why reading stopped.
    pub stop: String,
    /// Whether recovery would discard anything past `end` (a torn tail, or damage).
    pub discarded: bool,
    /// Set when valid records follow the point where reading stopped and prove it damage.
    pub damage: Option<WalDamage>,
    /// The first valid record after the stop when it proves nothing: the torn tail of an
    /// unsynced flush (a power loss kept later sectors, lost earlier ones).
    pub unproven_after: Option<Lsn>,
}

/// A record that cannot be read, with a valid commit record after it that was written when
/// the log had already been synced past it: the bad record had been durable, so this is
/// damage (not a torn tail), and commits acknowledged after it may lie beyond.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalDamage {
    /// The first record that cannot be read.
    pub lsn: Lsn,
    /// Its segment file (name) and the byte offset in it.
    pub segment: String,
    pub offset: u64,
    pub reason: String,
    /// The first valid record after it.
    pub next_valid: Lsn,
    /// The commit record that proves the damage, and how far it says the log was synced.
    pub proof: Lsn,
    pub synced: Lsn,
}

impl std::fmt::Display for WalDamage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "WAL damaged at LSN {} (segment {}, byte offset {}): {}; valid records follow from \
             LSN {}, and the commit record at LSN {} was written when the log was synced \
             through LSN {}, so the damaged bytes had been durable and acknowledged commits \
             may lie past them",
            self.lsn,
            self.segment,
            self.offset,
            self.reason,
            self.next_valid,
            self.proof,
            self.synced
        )
    }
}

/// Reads the log of the stopped database in `dir` (on `options.vfs`) and classifies where it
/// ends. Changes nothing.
pub fn check_wal(dir: &Path, options: &Options) -> Result<WalCheck> {
    let vfs = options.vfs.clone();
    // Held for the whole read: a running node's flusher writing meanwhile would make a record
    // being written look like damage with the records written after it.
    let _lock = crate::pager::lock_dir(&*vfs, dir)?;
    let control = Control::load(&*vfs, dir)?.ok_or_else(|| Error::Incompatible {
        path: dir.to_path_buf(),
        reason: "no control file: not a replidb data directory".into(),
    })?;
    let mut segs = Segments::new(vfs, &dir.join(WAL_DIR), control.segment_bytes, None);
    let closed = control.flags & crate::control::FLAG_OPEN == 0;
    let (rec, stopped) = crate::recovery::replay(None, &mut segs, control.redo_lsn, closed)?;
    let discarded = !stopped.clean || rec.end != stopped.at;
    Ok(WalCheck {
        redo: control.redo_lsn,
        end: rec.end,
        records: stopped.records,
        commits: stopped.commits,
        stop: stopped.reason,
        discarded,
        damage: stopped.damage,
        unproven_after: stopped.unproven_after,
    })
}
