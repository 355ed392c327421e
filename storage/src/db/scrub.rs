//! Scrubbing: reading what is on disk — the page file and the WAL recovery would replay —
//! and checking every checksum, so damage is found while a peer can still mend it, not when
//! a read or a restart needs the bytes (docs/operations.md, "Scrubbing").

use super::Db;
use crate::error::{Error, Result};
use crate::page::{self, PAGE_SIZE};
use crate::types::{Lsn, PageId};
use crate::wal::record;

/// What a scrub of a range of pages found.
#[derive(Clone, Debug, Default)]
pub struct PageScrub {
    /// Pages read from the file and checked (never-written pages are skipped).
    pub checked: u64,
    /// Pages whose copy in the file is damaged and that nothing in memory replaces: each
    /// needs a repair (a peer's copy) or a restore.
    pub damaged: Vec<(PageId, String)>,
    /// Damaged in the file but changed since the last checkpoint: the next checkpoint
    /// writes the page from memory over it.
    pub rewritten_soon: Vec<PageId>,
}

/// What a scrub of the WAL found.
#[derive(Clone, Debug)]
pub struct WalScrub {
    /// The log read: from the redo LSN to the written end.
    pub from: Lsn,
    pub to: Lsn,
    pub records: u64,
    /// The first record that cannot be read, and why.
    pub damage: Option<(Lsn, String)>,
}

impl Db {
    /// Reads pages `[first, first + count)` from the page file — not from memory — and
    /// checks the checksum and structure of each written one. Holds the checkpoint lock for
    /// the read (no page is being written meanwhile), not the readers' lock.
    pub fn scrub_pages(&self, first: u64, count: u64) -> Result<PageScrub> {
        let ck = self.inner.ckpt.lock();
        let mut out = PageScrub::default();
        let mut buf = vec![0u8; PAGE_SIZE];
        let end = first.saturating_add(count).min(ck.file.len_pages());
        for i in first..end {
            let id = PageId(i);
            ck.file.read_page(id, &mut buf)?;
            if buf.iter().all(|&b| b == 0) {
                continue;
            }
            out.checked += 1;
            if let Err(e) = page::verify(&buf, id) {
                let g = self.inner.state.read();
                if g.has_frame(id) {
                    out.rewritten_soon.push(id);
                } else {
                    // Readers may hold it as checked from before the damage: no longer.
                    g.forget_verified(id);
                    out.damaged.push((id, e.to_string()));
                }
            }
        }
        Ok(out)
    }

    /// Pages in the page file (what `scrub_pages` walks).
    pub fn file_pages(&self) -> u64 {
        self.inner.ckpt.lock().file.len_pages()
    }

    /// Reads the log recovery would replay — from the redo LSN to what is written — and
    /// checks every record.
    pub fn scrub_wal(&self) -> Result<WalScrub> {
        let from = self.inner.ckpt.lock().control.redo_lsn;
        let to = self.inner.wal.written();
        let walk = self.walk_log(from, to, |_| {})?;
        Ok(WalScrub {
            from,
            to,
            records: walk.records,
            // A checkpoint that removed a segment meanwhile is not damage: what was left
            // is checked.
            damage: match walk.stop {
                Some(LogStop::Bad(lsn, why)) => Some((lsn, why)),
                Some(LogStop::Gone(_)) | None => None,
            },
        })
    }

    /// Decodes this node's log in `[from, to)` (`from` a record boundary) a chunk at a time,
    /// handing each record to `f`, until `to` or the first record that cannot be read.
    pub(super) fn walk_log(
        &self,
        from: Lsn,
        to: Lsn,
        mut f: impl FnMut(&record::Record<'_>),
    ) -> Result<LogWalk> {
        const CHUNK: usize = 1 << 20;
        let mut walk = LogWalk {
            records: 0,
            stop: None,
        };
        let mut buf: Vec<u8> = Vec::new();
        let (mut buf_start, mut pos) = (from.0, from.0);
        while pos < to.0 {
            let read_to = buf_start + buf.len() as u64;
            if read_to - pos < record::MAX_RECORD as u64 && read_to < to.0 {
                buf.drain(..(pos - buf_start) as usize);
                buf_start = pos;
                let want = CHUNK.min((to.0 - read_to) as usize);
                let before = buf.len();
                match self.read_wal(Lsn(read_to), want, &mut buf) {
                    Ok(_) if buf.len() > before => {}
                    Ok(_) | Err(Error::WalUnavailable { .. }) => {
                        walk.stop = Some(LogStop::Gone(Lsn(read_to)));
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            let off = (pos - buf_start) as usize;
            match record::decode(&buf[off..], Lsn(pos)) {
                Ok((rec, len)) => {
                    f(&rec);
                    walk.records += 1;
                    pos += len as u64;
                }
                Err(e) => {
                    walk.stop = Some(LogStop::Bad(Lsn(pos), format!("{e:?}")));
                    break;
                }
            }
        }
        Ok(walk)
    }
}

/// What `walk_log` read.
pub(super) struct LogWalk {
    pub records: u64,
    /// Why it stopped before the end, if it did.
    pub stop: Option<LogStop>,
}

pub(super) enum LogStop {
    /// The record at this LSN cannot be read.
    Bad(Lsn, String),
    /// The log from this LSN is not here (removed by a checkpoint, or not written).
    Gone(Lsn),
}
