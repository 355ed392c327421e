//! # replidb replication
//!
//! Physical replication for replidb: WAL streaming from a primary to replicas, replica apply
//! through the storage crate's redo code, quorum tracking for synchronous commit, and
//! failover with epochs. The arrows point one way: this crate uses `storage` and knows
//! nothing of the client protocol; it does no I/O itself (the server moves the bytes), so
//! its state machines can be driven by tests deterministically.
//!
//! The wire format ([`frame`]), the quorum rule ([`quorum`]) and the tracker that commit
//! waiters wait on ([`tracker`], model-checked with loom). The storage side is in `storage`
//! (`Db::read_wal`, `Db::apply_wal`); the server moves the bytes (docs/replication.md).

pub mod epochs;
pub mod frame;
pub mod quorum;
mod sync;
pub mod tracker;

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
