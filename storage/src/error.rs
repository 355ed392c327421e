use std::path::PathBuf;

use crate::types::PageId;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the engine can refuse or fail with. Bytes read from disk are untrusted:
/// a page that fails its checksum or whose structure is impossible is `Corrupt`, never a panic.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),

    #[error("corrupt page {page}: {reason}")]
    Corrupt { page: PageId, reason: String },

    #[error("key of {len} bytes exceeds the limit of {max} bytes")]
    KeyTooLarge { len: usize, max: usize },

    #[error("value of {len} bytes exceeds the limit of {max} bytes")]
    ValueTooLarge { len: usize, max: usize },

    #[error("a transaction changing {pages} pages exceeds the limit of {max} pages per commit")]
    BatchTooLarge { pages: usize, max: usize },

    #[error(
        "an earlier write or fsync failed ({0}); writes are refused until the database is \
         reopened, because retrying a failed fsync can silently lose data"
    )]
    PreviousIo(String),

    #[error("{path} is locked by another process (is another replidb using this directory?)")]
    Locked { path: PathBuf },

    #[error("{path} is not a usable replidb page file: {reason}")]
    Incompatible { path: PathBuf, reason: String },

    #[error("corrupt WAL at LSN {lsn}: {reason}")]
    CorruptWal {
        lsn: crate::types::Lsn,
        reason: String,
    },

    #[error("{0}")]
    WalDamaged(Box<crate::wal::verify::WalDamage>),

    #[error(
        "disk full: {0}; the commit is not acknowledged, and writes resume once space is freed"
    )]
    DiskFull(String),

    #[error("this database is a replica: writes come only from its primary's WAL")]
    ReadOnly,

    #[error("this database is not a replica (open it with Options::replica)")]
    NotReplica,

    #[error("WAL at LSN {lsn} is not available: {reason}")]
    WalUnavailable {
        lsn: crate::types::Lsn,
        reason: String,
    },

    #[error("integrity check failed: {0}")]
    Invariant(String),
}

impl Error {
    pub(crate) fn corrupt(page: PageId, reason: impl Into<String>) -> Error {
        Error::Corrupt {
            page,
            reason: reason.into(),
        }
    }
}
