//! # replidb replication
//!
//! Physical replication for replidb: WAL streaming from a primary to replicas, replica apply
//! through the storage crate's redo code, quorum tracking for synchronous commit, and
//! failover with epochs. The arrows point one way: this crate uses `storage` and knows
//! nothing of the client protocol.
//!
//! This crate is a placeholder in the final workspace layout; its contents arrive with the
//! replication work, after the storage engine's WAL.
