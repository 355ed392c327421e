//! # replidb storage
//!
//! A page-based B+tree key-value engine that works on its own, embedded, like redb or LMDB:
//! open a directory, commit batches of puts and deletes atomically, read points and ordered
//! ranges while a commit is being applied. Keys are byte strings up to 8 KiB, values up to
//! 64 MiB (long ones packed into the value heap). Every page carries a crc32c checksum; a
//! damaged page is reported as [`Error::Corrupt`] naming it.
//!
//! ```
//! use storage::{Db, Durability, Options, WriteBatch};
//!
//! # fn main() -> storage::Result<()> {
//! let dir = std::env::temp_dir().join(format!("replidb-doc-{}", std::process::id()));
//! # let _ = std::fs::remove_dir_all(&dir);
//! let db = Db::open(&dir, Options::default())?;
//!
//! let mut batch = WriteBatch::new();
//! batch.put("apple", "red").put("banana", "yellow").put("cherry", "dark red");
//! let lsn = db.commit(&batch, Durability::Local)?; // on disk when this returns
//! assert!(lsn.0 > 0);
//!
//! assert_eq!(db.get(b"banana")?.as_deref(), Some(&b"yellow"[..]));
//! let keys: Vec<Vec<u8>> = db
//!     .range(&b"b"[..]..)
//!     .map(|e| e.map(|(k, _)| k))
//!     .collect::<storage::Result<_>>()?;
//! assert_eq!(keys, vec![b"banana".to_vec(), b"cherry".to_vec()]);
//!
//! // A snapshot sees whole batches only, and iterates backwards too.
//! let snap = db.read();
//! let last = snap.range(..)?.next_back().transpose()?.map(|(k, _)| k.into_owned());
//! assert_eq!(last.as_deref(), Some(&b"cherry"[..]));
//! drop(snap);
//!
//! db.delete(b"apple", Durability::Off)?;
//! assert_eq!(db.len(), 2);
//! db.close()?; // writes back what Durability::Off left in memory
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok(())
//! # }
//! ```
//!
//! Layout and invariants: `docs/storage.md` in the repository.

mod balance;
mod btree;
mod check;
mod compact;
mod control;
mod cursor;
mod db;
pub mod durable;
mod error;
mod freelist;
#[doc(hidden)]
pub mod fuzzing;
mod heap;
mod inspect;
/// Formats for the project's own benches, fuzzers and tests: not API.
#[doc(hidden)]
pub mod internals {
    pub mod page {
        pub use crate::page::*;
    }
    pub mod record {
        pub use crate::wal::record::*;
    }
    pub mod segment {
        pub use crate::wal::segment::{segment_name, SEGMENT_HEADER};
    }
}
mod le;
mod node;
mod overflow;
mod page;
mod pager;
mod recovery;
mod repack;
mod seed;
mod shrink;
mod tree_write;
mod txn;
mod types;
pub mod vfs;
mod wal;

pub use check::IntegrityReport;
pub use compact::{CompactStep, COMPACT_STEP_BYTES};
pub use control::{check_history, CONTROL_FILE, EPOCHS_FILE, MAX_EPOCHS};
pub use db::{
    CompactReport, Db, Durability, Durable, Entry, Options, PageScrub, Range, ReadTxn,
    RepackReport, ReplicaProgress, ReplicaSync, ShrinkReport, Stats, TxnRange, WalScrub,
    WriteBatch, WriteTxn, COMPACT_STEP_ENTRIES, PAGE_FILE, REPACK_STEP_PARENTS, SHRINK_STEP_PAGES,
    WAL_DIR,
};
pub use error::{Error, Result};
pub use inspect::{inspect, read_wal_at, DirInfo};
pub use node::{MAX_KEY, MAX_VALUE};
pub use page::{MAX_PAGES, PAGE_SIZE};
pub use repack::{RepackStep, REPACK_FILL};
pub use seed::Seeder;
pub use shrink::ShrinkStep;
pub use types::{Lsn, PageId};
pub use wal::io::{FaultInjector, WalIo};
pub use wal::verify::{check_wal, WalCheck, WalDamage};
