//! The replica's side of replication (PostgreSQL's walreceiver.c): keeping a stream from the
//! primary going through reconnects, rewinds and reseeds (`receiver`), the stream itself on a
//! thread of its own (`stream`), and the acknowledgements of batches synced in the background
//! (`acks`).

mod acks;
mod receiver;
mod stream;

pub use receiver::{run_replica, start_replica};
pub(crate) use receiver::{stop_replica, BACKOFF_MAX, SETUP_RETRY};
