//! Epoch bookkeeping: entering a new epoch (a promotion's or one received from the primary)
//! and resuming the current one after a primary's unclean stop (docs/replication.md).

use super::{Checkpointer, Inner};
use crate::error::{Error, Result};
use crate::types::Lsn;
use crate::wal::record;

impl Inner {
    /// Records that this node's log entered `epoch` at `start` (an epoch record was
    /// appended or received): the epochs file first, then the control file. An epoch
    /// record of the current epoch at a later LSN than the epoch's last entry resumes it
    /// (a primary's restart after an unclean stop). Records already in the history, and
    /// older epochs, change nothing.
    pub(super) fn enter_epoch(&self, ck: &mut Checkpointer, epoch: u32, start: Lsn) -> Result<()> {
        if epoch < ck.control.epoch {
            return Ok(());
        }
        let mut h = self.epochs.lock();
        if epoch == ck.control.epoch {
            let last = h
                .iter()
                .rev()
                .find(|(e, _)| *e == epoch)
                .map(|(_, l)| *l)
                .unwrap_or(Lsn(0));
            if start <= last {
                return Ok(());
            }
        }
        h.retain(|&(e, l)| e < epoch || (e == epoch && l < start));
        if h.len() >= crate::control::MAX_EPOCHS {
            return Err(Error::Invariant(format!(
                "epoch {epoch} would make the epoch history longer than {} epochs",
                crate::control::MAX_EPOCHS
            )));
        }
        let resumed = epoch == ck.control.epoch;
        h.push((epoch, start));
        crate::control::store_epochs(&*self.options.vfs, &self.dir, &h)?;
        ck.control.epoch = epoch;
        // A new epoch (or a resumed one) is what a pending resume waited for.
        ck.control.flags &= !crate::control::FLAG_RESUME_PENDING;
        ck.control.store(&*self.options.vfs, &self.dir)?;
        if resumed {
            tracing::info!(epoch, start = start.0, "resumed the epoch at a new point");
        } else {
            tracing::info!(epoch, start = start.0, "entered a new epoch");
        }
        Ok(())
    }

    /// Resumes the current epoch at the end of the log: an epoch record naming the epoch
    /// it is in, synced and recorded in the history. After a primary's unclean stop (see
    /// `Db::open`): its history now parts at this point from any replica's that holds log
    /// past it, so the handshake rewinds that replica instead of streaming into it.
    pub(super) fn resume_epoch(&self, ck: &mut Checkpointer) -> Result<()> {
        if self.epochs.lock().len() + 1 >= crate::control::MAX_EPOCHS {
            // A full history must not keep the node from opening: the resume is skipped,
            // said loudly (promote a replica or reseed this node to start a fresh history).
            tracing::error!(
                max = crate::control::MAX_EPOCHS,
                "the epoch history is full: not resuming the epoch after this unclean stop; a replica that holds log this node lost would not be told apart — reseed this node or promote a replica"
            );
            return Ok(());
        }
        let w = self.writer.lock();
        let epoch = w.epoch;
        let at = self.wal.end();
        let mut buf = Vec::with_capacity(64);
        record::encode_epoch_change(&mut buf, at, epoch, epoch);
        let end = self.wal.append(at, &buf, false)?;
        self.wal.wait_flushed(end)?;
        {
            let mut g = self.state.write();
            g.last_lsn = g.last_lsn.max(end);
        }
        drop(w);
        tracing::warn!(
            epoch,
            at = at.0,
            "the last run did not stop cleanly: resuming the epoch at the recovered end, so a replica that holds log this node lost is rewound, not mixed"
        );
        self.enter_epoch(ck, epoch, at)
    }
}
