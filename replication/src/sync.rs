//! Synchronisation primitives: std's, or loom's when built with `--cfg loom` (the model
//! checks in `tests/loom.rs` then explore every interleaving of the code that uses them).

#[cfg(loom)]
pub(crate) use loom::sync::{Arc, Mutex, MutexGuard};
#[cfg(not(loom))]
pub(crate) use std::sync::{Arc, Mutex, MutexGuard};
