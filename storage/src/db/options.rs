//! How a database is opened: `Options`.

use std::sync::Arc;
use std::time::Duration;

use crate::vfs::{RealFs, Vfs};
use crate::wal::io::{FaultInjector, WalIo};

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
    /// Cut the log at WAL damage instead of refusing to open (a replica always does: it
    /// refetches the rest from its primary). For an operator who has no copy of the log
    /// anywhere and accepts losing the commits after the damage (`replidb check
    /// --cut-wal-at-damage`).
    pub truncate_damaged_wal: bool,
    /// Open only to look (`replidb check`, `stats`): nothing is appended to the log — no
    /// epoch resume after an unclean stop (left to the node's next start), no checkpoint at
    /// open, in the background or at close. A record appended here would fork this log from
    /// what its peers hold at the same LSNs without the history saying so.
    pub inspect: bool,
    /// The page file grows in steps of at least this many pages (and at least a quarter of
    /// its length); a checkpoint cuts it back to the page count once it is longer by more
    /// than such a step (after a shrink pass, `Db::shrink`).
    pub page_file_step_pages: u64,
    /// Fault injection for tests of I/O error handling.
    #[doc(hidden)]
    pub faults: Option<Arc<FaultInjector>>,
    /// The file system the database lives on: the operating system's ([`RealFs`]), or a
    /// simulated one for power-loss tests ([`crate::vfs::SimFs`], which forces
    /// `WalIo::Sync`).
    pub vfs: Arc<dyn Vfs>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            checkpoint_wal_bytes: 64 << 20,
            checkpoint_interval: Duration::from_secs(60),
            wal_segment_bytes: 16 << 20,
            wal_io: WalIo::Auto,
            replica: false,
            truncate_damaged_wal: false,
            inspect: false,
            page_file_step_pages: 256,
            faults: None,
            vfs: Arc::new(RealFs),
        }
    }
}
