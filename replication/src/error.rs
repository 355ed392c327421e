//! Replication's errors: typed, so that a caller can tell what to do — retry a link (`Io`,
//! `Peer`, `Frame`), reseed (`WalGone`), or report a role change that cannot be made here
//! (`State`).

use crate::wire::frame::FrameError;
use crate::wire::handshake::WalGone;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Storage(#[from] storage::Error),
    /// Bytes from the other node that are not a frame.
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    /// The primary cannot stream to this node from where its log ends.
    #[error(transparent)]
    WalGone(#[from] WalGone),
    /// The other node refused, said something out of turn, or went away.
    #[error("{0}")]
    Peer(String),
    /// The node to follow is this node itself (`identity`).
    #[error("{0}")]
    SelfLink(String),
    /// Following (or serving) the other node would close a cycle of replicas.
    #[error("{0}")]
    Cycle(String),
    /// The other end is not a replidb node, or speaks another protocol version.
    #[error("{0}")]
    Incompatible(String),
    /// What was asked cannot be done in this node's state (its role, its consistency).
    #[error("{0}")]
    State(String),
    /// A blocking task (database work off the event loop) ended abnormally.
    #[error("a blocking task ended abnormally: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("{message}: {source}")]
    Context {
        message: String,
        #[source]
        source: Box<Error>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A wrong setup rather than a passing failure (this node itself, a cycle, a peer that
    /// is not replidb): retrying soon cannot help, a person has to act. Its message.
    pub fn setup_problem(&self) -> Option<&str> {
        match self {
            Error::SelfLink(m) | Error::Cycle(m) | Error::Incompatible(m) => Some(m),
            Error::Context { source, .. } => source.setup_problem(),
            _ => None,
        }
    }

    /// This error, explained by what was being done.
    pub fn context(self, message: impl Into<String>) -> Error {
        Error::Context {
            message: message.into(),
            source: Box::new(self),
        }
    }
}

/// Returns an `Error::Peer` with the formatted message.
macro_rules! bail {
    ($($t:tt)*) => {
        return Err($crate::error::Error::Peer(format!($($t)*)))
    };
}

/// Returns an `Error::State` with the formatted message.
macro_rules! refuse {
    ($($t:tt)*) => {
        return Err($crate::error::Error::State(format!($($t)*)))
    };
}

/// An `Error::Peer` with the formatted message.
macro_rules! peer {
    ($($t:tt)*) => {
        $crate::error::Error::Peer(format!($($t)*))
    };
}

pub(crate) use {bail, peer, refuse};
