//! # replidb replication
//!
//! Physical replication for replidb: WAL streaming from a primary to replicas, replica apply
//! through the storage crate's redo code, base backups and rewinds, quorum tracking for
//! synchronous commit, and role changes with epochs. The arrows point one way: this crate
//! uses `storage` and knows sockets and frames, never the client protocol (the server parses
//! RESP and hands a connection over once it names a replication command).
//!
//! Cut by role, as PostgreSQL's `src/backend/replication/` is (docs/architecture.md):
//! - [`node`]: the node as replication sees it (database, role, links, lag);
//! - [`role`]: the role state machine and its changes (promote, follow, switchover);
//! - [`primary`]: a primary's links — senders, the WAL flusher's pushes, feedback, retention;
//! - [`replica`]: a replica's stream — reconnects, apply, acknowledgements;
//! - [`seed`]: base backups — serving, fetching, swapping in; [`rewind`]: rewinds;
//! - [`node_dir`]: the data directory's role, gate and reseed files;
//! - [`wire`]: frames (fuzzed), socket I/O and the handshake;
//! - [`quorum`], [`tracker`] (model-checked with loom), [`epochs`]: the pure decisions.

pub mod epochs;
pub mod quorum;
mod sync;
pub mod tracker;
pub mod wire;

// The parts that move bytes over sockets. A `--cfg loom` build (the model checks of the
// tracker, tests/loom.rs) leaves them out: tokio has no networking under loom.
#[cfg(not(loom))]
pub mod error;
#[cfg(not(loom))]
pub mod node;
#[cfg(not(loom))]
pub mod node_dir;
#[cfg(not(loom))]
pub mod primary;
#[cfg(not(loom))]
pub mod replica;
#[cfg(not(loom))]
pub mod rewind;
#[cfg(not(loom))]
pub mod role;
#[cfg(not(loom))]
pub mod seed;
#[cfg(not(loom))]
pub use error::{Error, Result};
#[cfg(not(loom))]
pub use node::{Node, NodeConfig};
pub use wire::frame;

#[doc(hidden)]
pub mod fuzzing {
    /// `repl_frame_decode`: frames decoded one after another until an error or the end.
    pub fn frame_decode(mut data: &[u8]) {
        loop {
            match crate::frame::decode(data) {
                Ok(Some((_, len))) => {
                    assert!(len >= crate::frame::HEADER && len <= data.len());
                    data = &data[len..];
                }
                Ok(None) | Err(_) => return,
            }
        }
    }
}
