//! Pages repaired from a peer (docs/replication.md, "Repairing damaged pages"). Every node of
//! a cluster holds the same page bytes at the same LSN, so a page that fails its checksum
//! here can be taken from a peer's copy and brought to this node's position:
//! - from a node **ahead** (a replica asking its primary): the peer's page at its LSN `at`
//!   is installed as is; this node's replay then reaches `at` (records of the page up to
//!   `at` are skipped by their LSN, or — images — reapplied and overtaken again), and until
//!   then the caller holds reads back;
//! - from a node **behind** (a primary asking a replica): the peer's page at `at` is brought
//!   forward by this node's own WAL records of that page from `at` to its last commit.
//!
//! Either way the page goes into memory at once (a frame, read before the file) and into the
//! file at the next checkpoint.

use super::scrub::LogStop;
use super::Db;
use crate::error::{Error, Result};
use crate::page::{self, PAGE_SIZE};
use crate::pager::PageSource;
use crate::types::{Lsn, PageId};
use crate::wal::record;

impl Db {
    /// Why page `id` cannot be read here now (its checksum or structure fails), if it cannot.
    pub fn page_damage(&self, id: PageId) -> Option<String> {
        let g = self.inner.state.read();
        g.page(id).err().map(|e| e.to_string())
    }

    /// Sealed copies of pages `ids` as this node has them now, and the LSN they are all
    /// consistent at (a primary's last commit, a replica's apply LSN). Fails if one of them
    /// is damaged here too or does not exist.
    pub fn pages_for_peer(&self, ids: &[u64]) -> Result<(Lsn, Vec<u8>)> {
        let g = self.inner.state.read();
        let mut out = Vec::with_capacity(ids.len() * PAGE_SIZE);
        for &i in ids {
            let p = g.page(PageId(i))?;
            let at = out.len();
            out.extend_from_slice(p);
            page::seal(&mut out[at..]);
        }
        Ok((g.last_lsn, out))
    }

    /// Each page of `[first, first + count)` as this node has it now (in memory or in the
    /// file): its page LSN and the crc32c of its bytes after the checksum field — what two
    /// nodes compare to find a page that differs at the same version (drift). Never-written
    /// pages are `(0, 0)`.
    pub fn page_versions(&self, first: u64, count: u64) -> (Lsn, Vec<(u64, u32)>) {
        let g = self.inner.state.read();
        let end = first.saturating_add(count).min(g.meta.page_count);
        let v = (first..end)
            .map(|i| {
                let p = g.page_raw(PageId(i));
                if p.iter().all(|&b| b == 0) {
                    (0, 0)
                } else {
                    (page::header(p).page_lsn.get(), crc32c::crc32c(&p[4..]))
                }
            })
            .collect();
        (g.last_lsn, v)
    }

    /// Puts `image` — page `id` as a peer had it at LSN `at`, sealed — in place of this
    /// node's damaged copy. Returns the LSN from which the page is consistent with the rest
    /// of this node's state: `at` when the peer was ahead (reads must wait until the apply
    /// LSN reaches it), this node's last commit when the peer was behind. A page that reads
    /// fine by now (repaired meanwhile) is left alone.
    pub fn install_repaired_page(&self, id: PageId, image: &[u8], at: Lsn) -> Result<Lsn> {
        self.install_page(id, image, at, false)
    }

    /// As `install_repaired_page`, for a page that reads fine here but differs from the
    /// peer's copy of the same version (drift found by comparing `page_versions`): replaced
    /// whatever it reads as.
    pub fn replace_drifted_page(&self, id: PageId, image: &[u8], at: Lsn) -> Result<Lsn> {
        self.install_page(id, image, at, true)
    }

    fn install_page(&self, id: PageId, image: &[u8], at: Lsn, force: bool) -> Result<Lsn> {
        if image.len() != PAGE_SIZE {
            return Err(Error::corrupt(id, "a repair image is not one page"));
        }
        page::verify(image, id)?;
        if page::header(image).page_lsn.get() > at.0 {
            return Err(Error::corrupt(
                id,
                format!("the peer's copy claims a page LSN past its own position {at}"),
            ));
        }
        if id.0 == 0 {
            // The meta page is read into the published state itself (page count, root):
            // one from another position would not match the rest.
            return Err(Error::corrupt(
                id,
                "the meta page is not repaired from a peer",
            ));
        }
        let mut g = self.inner.state.write();
        if id.0 >= g.meta.page_count {
            return Err(Error::corrupt(id, "no such page here"));
        }
        if !force && g.page(id).is_ok() {
            return Ok(g.last_lsn);
        }
        let mut p = page::page_copy(image);
        page::header_mut(page::page_mut(&mut p)).checksum.set(0);
        let consistent_from = if at >= g.last_lsn {
            at
        } else {
            // The peer is behind: this node's own log brings the page forward. New commits
            // wait for the state lock held here, so the log ends at `last_lsn` meanwhile;
            // commits are published before they are written, so wait for that (flush rounds
            // take no state lock).
            self.inner.wal.wait_written(g.last_lsn)?;
            self.redo_page_from_log(id, page::page_mut(&mut p), at, g.last_lsn)?;
            page::check_structure(&p[..], id)?;
            g.last_lsn
        };
        let (meta, last) = (g.meta, g.last_lsn);
        g.install(vec![(id, p)], meta, last);
        drop(g);
        tracing::warn!(
            page = id.0,
            peer_lsn = at.0,
            consistent_from = consistent_from.0,
            "repaired a damaged page from a peer's copy"
        );
        Ok(consistent_from)
    }

    /// Applies this node's WAL records of page `id` in `[from, to)` to `p`.
    fn redo_page_from_log(&self, id: PageId, p: &mut [u8], from: Lsn, to: Lsn) -> Result<()> {
        let walk = self.walk_log(from, to, |rec| {
            if rec.page() == Some(id) {
                record::redo(p, rec);
            }
        })?;
        match walk.stop {
            None => Ok(()),
            Some(LogStop::Bad(lsn, why)) => Err(Error::CorruptWal {
                lsn,
                reason: format!("bringing repaired page {id} forward: {why}"),
            }),
            Some(LogStop::Gone(lsn)) => Err(Error::WalUnavailable {
                lsn,
                reason: format!("bringing repaired page {id} forward: not here"),
            }),
        }
    }
}
