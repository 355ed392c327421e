//! The replica's side of the engine: WAL received from a primary is appended at the same
//! LSNs and replayed batch by batch (assembled by `wal::batch`, as crash recovery does);
//! base backups, promotion, demotion and rewinding the log to a fork point.

use std::sync::atomic::Ordering;

use parking_lot::{Mutex, RwLockUpgradableReadGuard};

use super::{Checkpointer, Db, Inner};
use crate::error::{Error, Result};
use crate::page;
use crate::pager::PageSource;
use crate::recovery;
use crate::types::{Lsn, PageId};
use crate::wal::batch::{Assembler, Event, PageRecord, Stop};
use crate::wal::record;

/// A replica's position in the stream it receives.
pub(super) struct ReplicaState {
    /// Received bytes not yet appended: the start of a record not complete yet.
    pub(super) carry: Vec<u8>,
    /// Page records appended but not applied: a batch whose commit has not arrived, held by
    /// the same assembler crash recovery uses.
    pub(super) batches: Assembler,
    /// The redo LSN of the last primary checkpoint record applied: where this replica's own
    /// checkpoints may restart recovery from.
    pub(super) restart_redo: Lsn,
    /// Everything before this LSN is applied: the end of the last complete record replayed
    /// (a commit, or a checkpoint record with no batch open).
    pub(super) applied: Lsn,
    /// Why this stream cannot go on (records appended but not applied, and the log could not
    /// be cut back to what is applied): every later `apply_wal` fails until the database is
    /// reopened, and recovery rebuilds the pages from the log.
    pub(super) broken: Option<String>,
}

/// How far WAL received by a replica gets before it is replayed ([`Db::apply_wal_with`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaSync {
    /// Written to the log files (safe from a crash of this process) and replayed; synced
    /// later.
    Lazy,
    /// Written and synced before the replay.
    Flush,
    /// Handed to the background flusher, which writes and syncs it while this call replays
    /// it; [`Db::sync_wal`] then waits for that sync. For large batches a commit waits for:
    /// the replay and the sync overlap.
    Background,
}

/// Where a replica stands after [`Db::apply_wal`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaProgress {
    /// Received from the primary (bytes handed to `apply_wal`).
    pub write_lsn: Lsn,
    /// Durable in this node's WAL.
    pub flush_lsn: Lsn,
    /// Replayed into the pages (visible to readers).
    pub apply_lsn: Lsn,
}

impl Db {
    /// Copies written WAL bytes from `from` on (at most `max` of them) to `out`, as they lie in
    /// the segment files: what a primary streams to its replicas. Returns the LSN after the
    /// last byte copied — `from` itself when nothing newer is written yet. The bytes may still
    /// be syncing ([`Db::written_lsn`]). `Error::WalUnavailable` if `from` lies beyond the
    /// written log, or before the oldest segment still kept (hold WAL with
    /// [`Db::set_wal_retain_from`]).
    pub fn read_wal(&self, from: Lsn, max: usize, out: &mut Vec<u8>) -> Result<Lsn> {
        let flushed = self.inner.wal.written();
        if from > flushed {
            return Err(Error::WalUnavailable {
                lsn: from,
                reason: format!("beyond the written end of the log ({flushed})"),
            });
        }
        let mut segs = self.inner.wal_reader.lock();
        // Segments are renamed when recycled: never trust a file handle from an earlier call.
        segs.close_before(u64::MAX);
        let oldest = segs.list()?.first().copied().unwrap_or(flushed.0);
        if segs.start_of(from.0) < oldest {
            return Err(Error::WalUnavailable {
                lsn: from,
                reason: format!("already removed (the oldest segment starts at {oldest})"),
            });
        }
        let end = flushed.0.min(from.0.saturating_add(max as u64));
        let mut pos = from.0;
        while pos < end {
            let seg = segs.start_of(pos);
            let n = (seg + segs.segment_bytes).min(end) - pos;
            let at = out.len();
            out.resize(at + n as usize, 0);
            if let Err(e) = segs.read_at(seg, pos, &mut out[at..]) {
                out.truncate(at);
                if e.kind() == std::io::ErrorKind::NotFound {
                    return Err(Error::WalUnavailable {
                        lsn: Lsn(pos),
                        reason: "its segment was removed meanwhile".into(),
                    });
                }
                return Err(e.into());
            }
            pos += n;
        }
        Ok(Lsn(pos))
    }

    /// Replica side of physical replication: takes WAL bytes from the primary that continue
    /// this node's log at `start`, appends every complete record to the local WAL at the same
    /// LSNs (so the two logs are byte-identical), makes it durable, and replays each complete
    /// batch into the pages with the same redo as crash recovery — readers see whole batches
    /// only. A record cut at the end of `bytes` waits for the next call. Bytes that cannot be
    /// records are refused (`CorruptWal`) and nothing of them is kept: continue from
    /// `flush_lsn`.
    pub fn apply_wal(&self, start: Lsn, bytes: &[u8]) -> Result<ReplicaProgress> {
        self.apply_wal_with(start, bytes, ReplicaSync::Flush, &mut |_| {})
    }

    /// [`Db::apply_wal`] with a choice of how far the records get before they are replayed
    /// (`sync`), calling `reached` once they are synced (`ReplicaSync::Flush`) and before they
    /// are replayed (the progress passed names the old apply LSN). Records only written
    /// (`Lazy`) are synced by the next `sync_wal`, a later `Flush` call or a checkpoint (which
    /// syncs the log before it writes a page).
    pub fn apply_wal_with(
        &self,
        start: Lsn,
        bytes: &[u8],
        sync: ReplicaSync,
        reached: &mut dyn FnMut(ReplicaProgress),
    ) -> Result<ReplicaProgress> {
        let inner = &self.inner;
        let rs_lock = inner.replica_state().ok_or(Error::NotReplica)?;
        let mut rs = rs_lock.lock();
        // Promoted while this call waited for the lock.
        if inner.primary.load(Ordering::SeqCst) {
            return Err(Error::NotReplica);
        }
        if let Some(why) = &rs.broken {
            return Err(Error::PreviousIo(format!(
                "this replica's stream failed earlier ({why}); reopen the database"
            )));
        }
        let base = inner.wal.end().0;
        let expected = base + rs.carry.len() as u64;
        if start.0 != expected {
            return Err(Error::WalUnavailable {
                lsn: start,
                reason: format!("this replica continues at LSN {expected}"),
            });
        }
        rs.carry.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut epochs = Vec::new();
        let mut at = 0usize;
        let mut invalid = None;
        loop {
            let lsn = Lsn(base + at as u64);
            let ReplicaState { carry, batches, .. } = &mut *rs;
            match batches.push(&carry[at..], lsn) {
                Ok((len, event)) => {
                    events.extend(event);
                    at += len;
                }
                Err(Stop::Incomplete) => break,
                Err(stop) => {
                    // Keep what was good; drop the rest (the primary resends from flush_lsn,
                    // and a primary that sends the same bytes again is refused again: its
                    // stream is one this node's own recovery would cut off).
                    rs.carry.truncate(at);
                    tracing::warn!(
                        lsn = lsn.0,
                        reason = stop.reason(),
                        "refusing WAL from the primary"
                    );
                    invalid = Some(Error::CorruptWal {
                        lsn,
                        reason: stop.reason().to_string(),
                    });
                    break;
                }
            }
        }
        // From the append on, records must not stay in the log unapplied (the next commit
        // would carry the apply LSN past them). A failed sync does not stop the replay (the
        // records are in the log; they are synced once the disk lets the flusher): its error
        // is returned after it. A batch that cannot be applied cuts the log back to what is
        // applied (`abandon`).
        let first_epoch = events.iter().find_map(|e| match e {
            Event::Epoch { start, .. } => Some(*start),
            _ => None,
        });
        let mut sync_failed = None;
        if at > 0 {
            let background = sync == ReplicaSync::Background;
            let end = inner.wal.append(Lsn(base), &rs.carry[..at], background)?;
            let reached_files = match sync {
                ReplicaSync::Flush => inner.wal.wait_flushed(end),
                ReplicaSync::Lazy => inner.wal.wait_written(end),
                ReplicaSync::Background => Ok(()),
            };
            rs.carry.drain(..at);
            if let Err(e) = reached_files {
                sync_failed = Some(e);
            }
            if sync == ReplicaSync::Flush && sync_failed.is_none() {
                reached(ReplicaProgress {
                    write_lsn: Lsn(end.0 + rs.carry.len() as u64),
                    flush_lsn: inner.wal.flushed(),
                    apply_lsn: rs.applied,
                });
            }
        }
        for e in events {
            match e {
                Event::Commit { records, end, .. } => {
                    if let Err(e) = inner.apply_batch(&records, end) {
                        // Cut back to the last batch installed — unless an epoch record lies
                        // before it, not recorded yet: that cannot be cut without cutting
                        // under installed pages.
                        let to = rs.applied;
                        let cut = first_epoch.is_none_or(|s| s >= to).then_some(to);
                        return Err(inner.abandon(&mut rs, cut, e));
                    }
                    rs.applied = end;
                }
                Event::Checkpoint { redo, end } => {
                    rs.restart_redo = rs.restart_redo.max(redo);
                    let mut g = inner.state.write();
                    g.last_lsn = g.last_lsn.max(end);
                }
                Event::Epoch { epoch, start, end } => {
                    // Recorded below, without the stream lock (a checkpoint takes its lock
                    // and then the stream's).
                    epochs.push((epoch, start));
                    let mut g = inner.state.write();
                    g.last_lsn = g.last_lsn.max(end);
                }
            }
        }
        if rs.batches.open_records() == 0 {
            // No batch is open: every record appended so far is applied.
            rs.applied = inner.wal.end();
        }
        // Returned once the epochs below are recorded: an epoch record applied in this call
        // is recorded whatever follows it.
        let late_error = sync_failed.or(invalid);
        let progress = ReplicaProgress {
            write_lsn: Lsn(inner.wal.end().0 + rs.carry.len() as u64),
            flush_lsn: inner.wal.flushed(),
            apply_lsn: rs.applied,
        };
        // An epoch record counts as applied only once recorded (below, without the stream
        // lock: a checkpoint takes its lock and then the stream's), so whoever sees the apply
        // LSN past it also sees the new epoch.
        if let Some((_, start)) = epochs.first() {
            rs.applied = rs.applied.min(*start);
        }
        drop(rs);
        if !epochs.is_empty() {
            // The epoch record is durable before the epochs file names it: a history entry
            // whose record a crash could still take away would misplace the fork point.
            let entered = (|| -> Result<()> {
                if sync != ReplicaSync::Flush {
                    inner.wal.wait_flushed(inner.wal.end())?;
                }
                for (epoch, start) in &epochs {
                    inner.enter_epoch(&mut inner.ckpt.lock(), *epoch, *start)?;
                    let mut w = inner.writer.lock();
                    w.epoch = w.epoch.max(*epoch);
                }
                Ok(())
            })();
            let mut rs = rs_lock.lock();
            if let Err(e) = entered {
                // Batches after the epoch record may be installed already: nothing can be cut.
                return Err(inner.abandon(&mut rs, None, e));
            }
            rs.applied = rs.applied.max(progress.apply_lsn);
        }
        let due = {
            let w = inner.writer.lock();
            progress.flush_lsn.0.saturating_sub(w.wal_at_checkpoint)
                >= inner.options.checkpoint_wal_bytes
        };
        if due {
            inner.writer.lock().wal_at_checkpoint = progress.flush_lsn.0;
            inner.bg.lock().wake = true;
            inner.bg_cv.notify_one();
        }
        match late_error {
            Some(e) => Err(e),
            None => Ok(progress),
        }
    }

    /// Everything before this LSN is applied and visible: on a replica, the end of the last
    /// record replayed; on a primary, the end of the last commit.
    pub fn apply_lsn(&self) -> Lsn {
        match self.inner.replica_state() {
            Some(rs) => rs.lock().applied,
            None => self.last_lsn(),
        }
    }

    /// Starts a base backup for seeding a replica: checkpoints, and returns the checkpoint's
    /// redo LSN — the replica replays the WAL from there — and the page count. The page file
    /// may then be copied (`read_page_file`) while writes go on: every page that changes after
    /// the redo LSN, or that the copy catches half-written, is logged as a full image after it,
    /// so replaying from the redo LSN repairs the copy (PostgreSQL's base backup argument). The
    /// caller must keep the WAL from the redo LSN (`set_wal_retain_from`) until the replica has
    /// it.
    pub fn begin_base_backup(&self) -> Result<(Lsn, u64)> {
        self.checkpoint()?;
        let ck = self.inner.ckpt.lock();
        let redo = ck.control.redo_lsn;
        // Held from here (no checkpoint can remove it before the caller registers the
        // replica with `set_wal_retain_from`).
        self.inner.retain_from.fetch_min(redo.0, Ordering::SeqCst);
        drop(ck);
        Ok((redo, self.len_pages()))
    }

    /// Pages in the database (meta `page_count`).
    pub fn len_pages(&self) -> u64 {
        self.inner.state.read().meta.page_count
    }

    /// Appends the page file's raw bytes for pages `first .. first + count` to `out` (zeros
    /// past the end of the file). For base backups.
    pub fn read_page_file(&self, first: u64, count: u64, out: &mut Vec<u8>) -> Result<()> {
        let ck = self.inner.ckpt.lock();
        let mut page = page::new_page_buf();
        for id in first..first + count {
            ck.file.read_page(PageId(id), &mut page[..])?;
            out.extend_from_slice(&page[..]);
        }
        Ok(())
    }

    /// Pages whose last change was made by a record at or after `lsn` (a page's LSN is the
    /// start of the record that last changed it), in this node's current state: after a
    /// fork, the pages a diverged log changed — what a rewind must refetch. (A record that
    /// starts at the fork is already past the shared history.)
    pub fn pages_changed_after(&self, lsn: Lsn) -> Vec<u64> {
        let g = self.inner.state.read();
        (0..g.meta.page_count)
            .filter(|&i| {
                let p = g.page_raw(PageId(i));
                p.iter().any(|&b| b != 0) && page::header(p).page_lsn.get() >= lsn.0
            })
            .collect()
    }

    /// Appends sealed copies of pages `first .. first + count` as this node's current state
    /// has them (frames or file; zeros for never-written pages) to `out`. For a rewind, which
    /// keeps the pages no one changed since the fork.
    pub fn read_current_pages(&self, first: u64, count: u64, out: &mut Vec<u8>) {
        let g = self.inner.state.read();
        for i in first..first + count {
            let at = out.len();
            out.extend_from_slice(g.page_raw(PageId(i)));
            let p = &mut out[at..];
            if p.iter().any(|&b| b != 0) {
                page::seal(p);
            }
        }
    }

    /// This node's epoch (timeline): 1 at creation, one more at every promotion.
    pub fn epoch(&self) -> u32 {
        self.inner.writer.lock().epoch
    }

    /// The epochs this node's log went through after the first, with the LSN each started at
    /// (where the log of the epoch before it ended): PostgreSQL's timeline history.
    pub fn epoch_history(&self) -> Vec<(u32, Lsn)> {
        self.inner.epochs.lock().clone()
    }

    /// Replica → primary (`REPLICAOF NO ONE`). Keeps everything replayed; drops a batch whose
    /// commit never arrived (it was never acknowledged as durable anywhere) and zeroes the log
    /// after the last complete record, so it can never be read again; then starts the next
    /// epoch there with an epoch record, recorded in the epochs file and the control file
    /// before this returns. Returns the new epoch and the LSN it starts at. Writes are taken
    /// from here on. The caller stops feeding `apply_wal` first.
    pub fn promote(&self) -> Result<(u32, Lsn)> {
        self.promote_at_least(0)
    }

    /// `promote`, to an epoch of at least `min` (a cluster's coordinator hands out epoch
    /// numbers, so two members promoted in turn never take the same one).
    pub fn promote_at_least(&self, min: u32) -> Result<(u32, Lsn)> {
        let inner = &self.inner;
        let mut ck = inner.ckpt.lock();
        let rs_lock = inner.replica_state().ok_or(Error::NotReplica)?;
        let mut rs = rs_lock.lock();
        // The next epoch, checked before anything changes: `u32::MAX` is never written (the
        // log's readers refuse it as no epoch could follow).
        let epoch = ck
            .control
            .epoch
            .max(inner.writer.lock().epoch)
            .checked_add(1)
            .map(|e| e.max(min))
            .filter(|&e| e < u32::MAX)
            .ok_or_else(|| Error::Invariant("the epoch counter is exhausted".into()))?;
        let at = rs.applied;
        let dropped = inner.wal.end().0 + rs.carry.len() as u64 - at.0;
        rs.batches.discard_open();
        rs.carry.clear();
        inner.wal.truncate(at)?;
        let mut w = inner.writer.lock();
        // Pages last written before the point recovery starts from get a full image at their
        // next change (see `checkpoint`): that point is the replica's restartpoint.
        inner
            .redo_lsn
            .store(ck.control.redo_lsn.0, Ordering::Relaxed);
        w.wal_at_checkpoint = at.0;
        w.epoch = epoch;
        let mut buf = Vec::with_capacity(64);
        record::encode_epoch_change(&mut buf, at, epoch, epoch);
        let end = inner.wal.append(at, &buf, false)?;
        inner.wal.wait_flushed(end)?;
        {
            let mut g = inner.state.write();
            g.last_lsn = g.last_lsn.max(end);
        }
        inner.enter_epoch(&mut ck, epoch, at)?;
        inner.primary.store(true, Ordering::SeqCst);
        drop(w);
        drop(rs);
        tracing::info!(
            epoch,
            start = at.0,
            dropped_bytes = dropped,
            "promoted to primary"
        );
        Ok((epoch, at))
    }

    /// Primary → replica (`REPLICAOF host port` on a primary): refuses local writes from here
    /// on (a write running now finishes first) and continues the log with `apply_wal` from the
    /// end of what this node wrote, all of it durable before this returns.
    pub fn demote(&self) -> Result<Lsn> {
        let inner = &self.inner;
        // Held throughout: no checkpoint appends a record after the end taken here (same
        // order as a checkpoint and `promote`: ckpt, then the others).
        let ck = inner.ckpt.lock();
        let redo = ck.control.redo_lsn;
        let w = inner.writer.lock();
        if !inner.primary.swap(false, Ordering::SeqCst) {
            return Err(Error::Invariant(
                "demote: this node is already a replica".into(),
            ));
        }
        let end = inner.wal.end();
        if let Err(e) = inner.wal.wait_flushed(end) {
            inner.primary.store(true, Ordering::SeqCst);
            return Err(e);
        }
        let mut rs = inner.replica.lock();
        rs.carry.clear();
        rs.batches.discard_open();
        rs.applied = end;
        rs.restart_redo = rs.restart_redo.max(redo);
        drop(w);
        drop(ck);
        tracing::info!(at = end.0, "demoted to replica");
        Ok(end)
    }

    /// A replica whose log runs past `fork`, the last LSN it shares with its new primary:
    /// if nothing past the fork was replayed (only an incomplete batch, or records never
    /// applied, lie beyond it), cuts the log back to `fork` and returns the bytes dropped —
    /// the pages are already the shared history's. `Ok(None)` when replayed changes lie past
    /// the fork: those pages must be refetched (or the node reseeded).
    pub fn rewind_log(&self, fork: Lsn) -> Result<Option<u64>> {
        let inner = &self.inner;
        let rs_lock = inner.replica_state().ok_or(Error::NotReplica)?;
        let mut rs = rs_lock.lock();
        let end = inner.wal.end();
        if fork >= end {
            rs.carry.clear();
            return Ok(Some(0));
        }
        if rs.applied > fork || inner.state.read().last_lsn > fork {
            return Ok(None);
        }
        let dropped = end.0 - fork.0;
        rs.batches.discard_open();
        rs.carry.clear();
        inner.wal.truncate(fork)?;
        rs.applied = fork;
        tracing::info!(
            fork = fork.0,
            dropped_bytes = dropped,
            "rewound the log to the fork point (nothing past it was replayed)"
        );
        Ok(Some(dropped))
    }

    /// Syncs every WAL byte this node has written (a replica's records applied with
    /// `ReplicaSync::Lazy` or `Background`); returns the flush LSN.
    pub fn sync_wal(&self) -> Result<Lsn> {
        let end = self.inner.wal.end();
        self.inner.wal.wait_flushed(end)?;
        Ok(self.inner.wal.flushed())
    }

    /// Forgets the start of a record received but not complete (a link that broke mid-record):
    /// the next stream starts at `flush_lsn`, where the complete records end.
    pub fn reset_stream(&self) {
        if let Some(rs) = self.inner.replica_state() {
            rs.lock().carry.clear();
        }
    }

    /// Undoes a `demote` after which nothing was received (a switchover that could not
    /// complete): local writes are taken again, in the same epoch.
    pub fn undo_demote(&self) -> Result<()> {
        let inner = &self.inner;
        let rs = inner.replica.lock();
        if inner.primary.load(Ordering::SeqCst) {
            return Ok(());
        }
        if rs.applied != inner.wal.end() || !rs.carry.is_empty() || rs.batches.open_records() != 0 {
            return Err(Error::Invariant(
                "undo_demote: WAL was received since the demotion".into(),
            ));
        }
        inner.primary.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Whether this database was opened as a replica.
    pub fn is_replica(&self) -> bool {
        self.inner.replica_state().is_some()
    }
}

impl Inner {
    /// A replica's checkpoint (PostgreSQL's restartpoint): write every changed page, then
    /// point recovery at the redo LSN of the last primary checkpoint record applied. Pages the
    /// write may tear were all changed after that point, so the primary's full-page images
    /// for them are in the log that recovery replays. Nothing is appended: the replica's log
    /// stays the primary's, byte for byte.
    pub(super) fn replica_checkpoint(
        &self,
        ck: &mut Checkpointer,
        rs: &Mutex<ReplicaState>,
        t0: std::time::Instant,
    ) -> Result<()> {
        let redo = rs.lock().restart_redo;
        let (snapshot, page_count) = {
            let g = self.state.read();
            (g.frames_snapshot(), g.meta.page_count)
        };
        if snapshot.is_empty() && redo == ck.control.redo_lsn {
            return Ok(());
        }
        // The WAL rule: the log behind every page's LSN is durable before the page is written
        // (a replica may have replayed records it has only written).
        self.wal.wait_flushed(self.wal.end())?;
        // A page repaired from the primary as of a position this replica has not reached yet
        // stays in memory until the log catches up with it: on disk it would be a page from
        // the future after a restart.
        let end = self.wal.end().0;
        let snapshot: Vec<_> = snapshot
            .into_iter()
            .filter(|(_, p)| page::header(&p[..]).page_lsn.get() <= end)
            .collect();
        let Checkpointer { file, backend, .. } = ck;
        if let Err(e) = file.write_pages(backend.as_mut(), &snapshot, page_count) {
            tracing::error!(error = %e, "replica checkpoint write-back failed; refusing further checkpoints");
            ck.failed = Some(e.to_string());
            return Err(e);
        }
        if redo > ck.control.redo_lsn {
            ck.control.redo_lsn = redo;
            ck.control.store(&*self.options.vfs, &self.dir)?;
        }
        {
            let mut g = self.state.write();
            ck.file.finish_checkpoint(&mut g, &snapshot, page_count)?;
        }
        let keep = redo.0.min(self.retain_from.load(Ordering::SeqCst));
        let end = self.wal.end().0;
        ck.segs.remove_below(keep, end)?;
        self.note_checkpoint(t0, ck.segs.start_of(keep.min(end)));
        self.file_bytes
            .store(ck.file.len_bytes(), Ordering::Relaxed);
        // Under the writer lock: a running commit reads one redo point throughout.
        let _w = self.writer.lock();
        self.redo_lsn.store(redo.0, Ordering::Relaxed);
        Ok(())
    }

    /// Replays one complete batch received by a replica: its page records onto copies of the
    /// published pages, then one publish.
    /// After records were appended but could not all be applied (`e`): cuts the log back to
    /// `cut` (the end of the last batch installed) and forgets the open batch and the received
    /// rest, so the stream resumes from there (the primary sends those bytes again; bytes that
    /// fail again are refused again, never skipped). With no point to cut to, or if the cut
    /// fails, the stream is broken until the database is reopened (recovery then replays the
    /// log). Returns `e`.
    fn abandon(&self, rs: &mut ReplicaState, cut: Option<Lsn>, e: Error) -> Error {
        rs.carry.clear();
        rs.batches.discard_open();
        let Some(to) = cut else {
            tracing::error!(error = %e, "applying WAL from the primary failed past a point the log can be cut back to: this replica takes no more WAL until it is reopened");
            rs.broken = Some(e.to_string());
            return e;
        };
        match self.wal.truncate(to) {
            Ok(()) => {
                rs.applied = to;
                // Recovery may start earlier, never later than the log now reaches.
                rs.restart_redo = rs.restart_redo.min(to);
                let mut g = self.state.write();
                g.last_lsn = g.last_lsn.min(to);
                tracing::warn!(to = to.0, error = %e, "applying WAL from the primary failed: cut the log back to what is applied");
            }
            Err(t) => {
                tracing::error!(error = %e, cut_back = %t, "applying WAL from the primary failed and the log could not be cut back: this replica takes no more WAL until it is reopened");
                rs.broken = Some(format!("{e}; cutting the log back to LSN {to} failed: {t}"));
            }
        }
        e
    }

    fn apply_batch(&self, records: &[PageRecord], end: Lsn) -> Result<()> {
        let guard = self.state.upgradable_read();
        let mut pages: std::collections::HashMap<PageId, page::PageArc> =
            std::collections::HashMap::new();
        for rec in records {
            recovery::redo_record(&mut pages, rec, |id| {
                if id.0 >= guard.meta.page_count {
                    return Err(Error::CorruptWal {
                        lsn: rec.lsn,
                        reason: format!("delta for page {id}, which does not exist yet"),
                    });
                }
                Ok(page::page_copy(guard.page(id)?))
            })?;
        }
        let meta = match pages.get(&PageId(0)) {
            Some(p0) => page::Meta::read(&p0[..])
                .map_err(|reason| Error::CorruptWal { lsn: end, reason })?,
            None => guard.meta,
        };
        // A database grows only by pages the batch writes or names (a new page's first
        // record is its image): a count past that is a peer's lie, and would size memory by
        // a number it chose. It shrinks only by a shrink step, never to nothing.
        // A page the batch took and freed again is not written, but its id is named in a
        // free-list page the batch does write (a trunk holds `TRUNK_CAPACITY` ids): so each
        // page written accounts for at most that many new ids, and itself.
        let per_page = crate::freelist::TRUNK_CAPACITY as u64 + 1;
        let most = guard
            .meta
            .page_count
            .saturating_add((pages.len() as u64).saturating_mul(per_page) + 16);
        if meta.page_count < 2 || meta.page_count > most {
            return Err(Error::CorruptWal {
                lsn: end,
                reason: format!(
                    "the batch sets the page count to {}, from {} with {} pages written",
                    meta.page_count,
                    guard.meta.page_count,
                    pages.len()
                ),
            });
        }
        let mut pages: Vec<_> = pages.into_iter().collect();
        pages.sort_unstable_by_key(|(id, _)| *id);
        // Verified before anyone can read them or the checkpointer write them: bytes that
        // passed the records' checksums but build no valid page (a primary's bug, or a peer
        // that is not one) are refused here, not found later by a reader or an assertion.
        for (id, p) in &pages {
            check_redone(*id, &p[..], meta.page_count, end)?;
        }
        let mut g = RwLockUpgradableReadGuard::upgrade(guard);
        g.install(pages, meta, end);
        Ok(())
    }
}

/// A page built by redo, as a batch ending at `end` left it: within the page count the batch
/// leaves, and whole (`page::check_structure`). A page past the count or a broken page is
/// `CorruptWal`: the log is refused, nothing of the batch is installed.
pub(crate) fn check_redone(id: PageId, p: &[u8], page_count: u64, end: Lsn) -> Result<()> {
    if id.0 >= page_count {
        return Err(Error::CorruptWal {
            lsn: end,
            reason: format!("the batch changes page {id}, past its page count {page_count}"),
        });
    }
    page::check_structure(p, id).map_err(|e| Error::CorruptWal {
        lsn: end,
        reason: format!("the batch leaves page {id} broken: {e}"),
    })
}
