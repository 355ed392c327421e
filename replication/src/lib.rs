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
//! - [`cluster`]: automatic failover on etcd — the election rule, the fencing lease, the loop;
//! - [`node_dir`]: the data directory's role, gate and reseed files;
//! - [`wire`]: frames (fuzzed), socket I/O, the handshake, and the transport seam (TCP, or an
//!   in-process network for tests); [`accept`]: dispatching a connection to its role file;
//! - [`identity`]: node ids and upstream chains: no node follows itself or closes a cycle;
//! - [`quorum`], [`tracker`] (model-checked with loom), [`epochs`]: the pure decisions.

pub mod epochs;
pub mod quorum;
mod sync;
pub mod tracker;
pub mod wire;

#[cfg(not(loom))]
pub mod accept;
#[cfg(not(loom))]
pub mod archive;
#[cfg(not(loom))]
pub mod identity;
// The parts that move bytes over sockets. A `--cfg loom` build (the model checks of the
// tracker, tests/loom.rs) leaves them out: tokio has no networking under loom.
#[cfg(not(loom))]
pub mod cluster;
#[cfg(not(loom))]
pub mod error;
#[cfg(not(loom))]
pub mod node;
#[cfg(not(loom))]
pub mod node_dir;
#[cfg(not(loom))]
pub mod primary;
#[cfg(not(loom))]
pub mod repair;
#[cfg(not(loom))]
pub mod replica;
#[cfg(not(loom))]
pub mod rewind;
#[cfg(not(loom))]
pub mod role;
#[cfg(not(loom))]
pub mod scrub;
#[cfg(not(loom))]
pub mod seed;
#[cfg(not(loom))]
pub use error::{Error, Result};
#[cfg(not(loom))]
pub use node::{Node, NodeConfig};
pub use wire::frame;

#[doc(hidden)]
pub mod fuzzing {
    use crate::epochs;
    use crate::frame::{decode, Frame};
    use storage::Lsn;

    /// `repl_handshake`: frames decoded one after another; every hello meets the verdict a
    /// primary gives (against a primary of epoch 1, and one with a history of its own), and
    /// every snapshot frame the bounds a seeding node checks, every chain of upstreams the
    /// self and cycle checks. Never a panic, whatever the
    /// peer says about its epochs, history and positions.
    pub fn handshake(mut data: &[u8]) {
        type Primary<'a> = (u32, &'a [(u32, Lsn)], Lsn);
        let histories: [Primary<'_>; 2] = [
            (1, &[], Lsn(4096)),
            (3, &[(2, Lsn(1000)), (3, Lsn(5000))], Lsn(9000)),
        ];
        let mut pages = None;
        while let Ok(Some((f, len))) = decode(data) {
            data = &data[len..];
            match f {
                Frame::Hello {
                    epoch,
                    flush_lsn,
                    epochs: history,
                    ..
                } => {
                    for (pe, ph, pend) in histories {
                        let _ = epochs::check(pe, ph, pend, epoch, &history, flush_lsn);
                    }
                }
                Frame::SnapshotBegin { page_count, .. } => {
                    pages = (page_count <= storage::MAX_PAGES).then_some(page_count);
                }
                // The self and cycle checks on whatever chain a peer claims.
                #[cfg(not(loom))]
                Frame::Welcome { chain, .. } | Frame::RoleReport { chain, .. } => {
                    for own in [0, 1, 7, u64::MAX] {
                        let _ = crate::identity::check_chain(own, "me", "peer", &chain);
                    }
                }
                Frame::SnapshotPages { first_page, bytes } => {
                    if let Some(pages) = pages {
                        let n = (bytes.len() / storage::PAGE_SIZE) as u64;
                        let _ = first_page.checked_add(n).filter(|&e| e <= pages);
                    }
                }
                _ => {}
            }
        }
    }

    /// `rewind_page_list`: the first four bytes are the serving node's page count, the rest
    /// frames; every `page_list` among them goes into the rewind's list as the serving side
    /// takes it. The list never holds a page the node lacks, nor more than twice as many ids
    /// as it has pages, whatever the peer sends.
    #[cfg(not(loom))]
    pub fn rewind_page_list(data: &[u8]) {
        let Some((head, mut data)) = data.split_first_chunk::<4>() else {
            return;
        };
        let pages_here = u64::from(u32::from_le_bytes(*head));
        let mut wanted = Vec::new();
        while let Ok(Some((f, len))) = decode(data) {
            data = &data[len..];
            if let Frame::PageList { pages } = f {
                if crate::rewind::take_page_list(&mut wanted, pages, pages_here).is_err() {
                    return;
                }
                assert!(wanted.iter().all(|&p| p < pages_here));
                assert!(wanted.len() as u64 <= 2 * pages_here);
            }
        }
    }

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
