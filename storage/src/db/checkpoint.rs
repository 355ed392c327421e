//! Checkpoints: writing changed pages back to the page file after the WAL that covers them
//! is durable, moving the redo point, dropping WAL no one needs; and the background thread
//! that runs them every `checkpoint_wal_bytes` of WAL or `checkpoint_interval`.

use std::sync::atomic::Ordering;

use super::{Checkpointer, Inner};
use crate::error::{Error, Result};
use crate::wal::record;

impl Inner {
    /// Counts a finished checkpoint: its time, and the WAL it kept (from `kept`).
    pub(super) fn note_checkpoint(&self, t0: std::time::Instant, kept: u64) {
        let us = t0.elapsed().as_micros() as u64;
        self.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.checkpoint_us.fetch_add(us, Ordering::Relaxed);
        self.last_checkpoint_us.store(us, Ordering::Relaxed);
        self.wal_kept_from.store(kept, Ordering::Relaxed);
    }

    pub(super) fn checkpoint(&self) -> Result<()> {
        let mut ck = self.ckpt.lock();
        let t0 = std::time::Instant::now();
        if let Some(why) = &ck.failed {
            return Err(Error::PreviousIo(why.clone()));
        }
        // 1. Fix the redo point and take the frames to write. From here on, a page's next
        //    change logs a full image again (its LSN is <= redo).
        if let Some(rs) = self.replica_state() {
            return self.replica_checkpoint(&mut ck, rs, t0);
        }
        let (redo, snapshot, page_count) = {
            let mut w = self.writer.lock();
            let redo = self.wal.end();
            if redo.0 == w.wal_at_checkpoint && self.state.read().dirty_pages() == 0 {
                return Ok(());
            }
            self.redo_lsn.store(redo.0, Ordering::Relaxed);
            w.wal_at_checkpoint = redo.0;
            let g = self.state.read();
            (redo, g.frames_snapshot(), g.meta.page_count)
        };
        // 2. The WAL rule: the log up to every page's LSN is durable before the page is written.
        self.wal.wait_flushed(redo)?;
        // 3. Pages, then sync.
        let Checkpointer { file, backend, .. } = &mut *ck;
        if let Err(e) = file.write_pages(backend.as_mut(), &snapshot, page_count) {
            tracing::error!(error = %e, "checkpoint write-back failed; refusing further checkpoints (the WAL keeps everything)");
            ck.failed = Some(e.to_string());
            return Err(e);
        }
        // 4. The checkpoint record, then the control file that points recovery at `redo`.
        let ck_lsn = {
            let w = self.writer.lock();
            let start = self.wal.end();
            let mut buf = Vec::with_capacity(64);
            record::encode_checkpoint(&mut buf, start, w.epoch, redo);
            let end = self.wal.append(start, &buf, false)?;
            // The pages reflect the log through this record too (it changes none of them), so
            // a replica that applied it and this primary name the same position.
            {
                let mut g = self.state.write();
                g.last_lsn = g.last_lsn.max(end);
            }
            drop(w);
            self.wal.wait_flushed(end)?;
            start
        };
        ck.control.redo_lsn = redo;
        ck.control.checkpoint_lsn = ck_lsn;
        ck.control.store(&*self.options.vfs, &self.dir)?;
        // 5. Frames that did not change meanwhile are now clean: readers use the file again.
        {
            let mut g = self.state.write();
            ck.file.finish_checkpoint(&mut g, &snapshot, page_count)?;
        }
        // 6. WAL before the redo point (and before what replication holds) is not needed.
        let keep = redo.0.min(self.retain_from.load(Ordering::SeqCst));
        let end = self.wal.end().0;
        let removed = ck.segs.remove_below(keep, end)?;
        self.note_checkpoint(t0, ck.segs.start_of(keep.min(end)));
        self.file_bytes
            .store(ck.file.len_bytes(), Ordering::Relaxed);
        tracing::debug!(
            redo = redo.0,
            pages = snapshot.len(),
            removed_segments = removed,
            "checkpoint"
        );
        Ok(())
    }

    pub(super) fn checkpointer_loop(&self) {
        let mut bg = self.bg.lock();
        loop {
            if bg.stop {
                return;
            }
            if !bg.wake {
                let _ = self
                    .bg_cv
                    .wait_for(&mut bg, self.options.checkpoint_interval);
            }
            if bg.stop {
                return;
            }
            bg.wake = false;
            drop(bg);
            if let Err(e) = self.checkpoint() {
                tracing::warn!(error = %e, "background checkpoint failed");
            }
            bg = self.bg.lock();
        }
    }
}
