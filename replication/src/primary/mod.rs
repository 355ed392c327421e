//! The primary's side of replication (PostgreSQL's walsender.c, slot.c and syncrep.c): a
//! sender per replica link (`sender`), the links the WAL flusher pushes to and the flags
//! their frames carry (`links`), the replicas' acknowledgements (`feedback`), and the WAL kept
//! for them (`retention`).

mod feedback;
mod links;
mod retention;
mod sender;

pub use links::{Links, SyncCommit, WalSignal, SHIP_INTERVAL};
pub use retention::{keep_retention, update_retention};
pub use sender::{serve_replica, KEEPALIVE};

use crate::tracker::{LinkId, Tracker};

/// Disconnects a replica's link from the tracker when dropped, on every way out of the
/// function that holds it (an early `?` included).
pub(crate) struct LinkGuard<'a>(pub(crate) &'a Tracker, pub(crate) LinkId);

impl Drop for LinkGuard<'_> {
    fn drop(&mut self) {
        self.0.disconnect(self.1);
    }
}
