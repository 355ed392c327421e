//! The flusher's I/O backends: io_uring (a write per file piece and an `fdatasync` per file,
//! as linked SQEs, submitted together) or plain `pwrite` + `fdatasync`. Chosen at run time:
//! io_uring when the ring can be set up, unless the options or `REPLIDB_WAL_IO=sync` force
//! the fallback. Both are exercised by the test suite.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use io_uring::{opcode, squeue, types, IoUring};

/// Which I/O path the WAL flusher (and checkpoint write-back) uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WalIo {
    /// io_uring if the kernel allows it (else `pwrite` + `fdatasync`), except for a log flush
    /// round that carries a single commit, which is written with `pwrite` + `fdatasync` on
    /// the committer's own thread (the ring's kernel worker hand-off costs a lone commit a
    /// wake-up). `REPLIDB_WAL_IO=sync` or `=uring` in the environment overrides it.
    #[default]
    Auto,
    /// io_uring for everything (fails to open if the ring cannot be set up).
    Uring,
    /// `pwrite` + `fdatasync` for everything.
    Sync,
}

/// One write: bytes to put at an offset of a file.
pub(crate) struct WriteOp<'a> {
    pub file: &'a File,
    pub offset: u64,
    pub bytes: &'a [u8],
}

pub(crate) trait Backend: Send {
    /// Performs every write, then makes the files durable. Returns only when both are done.
    fn write_and_sync(&mut self, writes: &[WriteOp<'_>], sync: &[&File]) -> io::Result<()> {
        self.write_then_sync(writes, sync, &mut || {})
    }
    /// The same, calling `written` once every write has reached the kernel (so a crash of
    /// this process can no longer lose them) and before the sync is known to be done: the
    /// moment replication may ship the bytes while the sync runs.
    fn write_then_sync(
        &mut self,
        writes: &[WriteOp<'_>],
        sync: &[&File],
        written: &mut dyn FnMut(),
    ) -> io::Result<()>;
    fn name(&self) -> &'static str;
}

/// Fails chosen I/O operations, for tests of error handling: each counter, when positive,
/// counts down on every operation of its kind and fails the one that reaches zero; the
/// failure then repeats while `repeat` is set.
#[derive(Debug, Default)]
pub struct FaultInjector {
    /// Fails WAL and page writes with ENOSPC.
    pub write_enospc_after: AtomicI64,
    /// Fails fdatasync with EIO.
    pub sync_eio_after: AtomicI64,
    /// Fails creating a new WAL segment with ENOSPC.
    pub segment_enospc_after: AtomicI64,
    pub repeat: std::sync::atomic::AtomicBool,
}

impl FaultInjector {
    fn hit(&self, c: &AtomicI64) -> bool {
        let v = c.load(Ordering::SeqCst);
        if v <= 0 {
            return false;
        }
        if v == 1 {
            if !self.repeat.load(Ordering::SeqCst) {
                c.store(0, Ordering::SeqCst);
            }
            return true;
        }
        c.store(v - 1, Ordering::SeqCst);
        false
    }

    pub(crate) fn check_write(&self) -> io::Result<()> {
        if self.hit(&self.write_enospc_after) {
            return Err(io::Error::from_raw_os_error(libc_enospc()));
        }
        Ok(())
    }

    pub(crate) fn check_sync(&self) -> io::Result<()> {
        if self.hit(&self.sync_eio_after) {
            return Err(io::Error::from_raw_os_error(5));
        }
        Ok(())
    }

    pub(crate) fn check_segment(&self) -> io::Result<()> {
        if self.hit(&self.segment_enospc_after) {
            return Err(io::Error::from_raw_os_error(libc_enospc()));
        }
        Ok(())
    }

    /// Stops injecting faults (space was freed, the disk was fixed).
    pub fn clear(&self) {
        self.write_enospc_after.store(0, Ordering::SeqCst);
        self.sync_eio_after.store(0, Ordering::SeqCst);
        self.segment_enospc_after.store(0, Ordering::SeqCst);
    }
}

const fn libc_enospc() -> i32 {
    28
}

/// Whether an error means "out of space" (retryable once space is freed).
pub fn is_disk_full(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc_enospc())
}

pub(crate) struct SyncBackend {
    pub faults: Option<Arc<FaultInjector>>,
}

impl Backend for SyncBackend {
    fn write_then_sync(
        &mut self,
        writes: &[WriteOp<'_>],
        sync: &[&File],
        written: &mut dyn FnMut(),
    ) -> io::Result<()> {
        for w in writes {
            if let Some(f) = &self.faults {
                f.check_write()?;
            }
            w.file.write_all_at(w.bytes, w.offset)?;
        }
        written();
        for f in sync {
            if let Some(fi) = &self.faults {
                fi.check_sync()?;
            }
            f.sync_data()?;
        }
        Ok(())
    }

    fn name(&self) -> &'static str {
        "pwrite+fdatasync"
    }
}

pub(crate) struct UringBackend {
    ring: IoUring,
    pub faults: Option<Arc<FaultInjector>>,
}

const RING_ENTRIES: u32 = 64;

impl UringBackend {
    pub fn new(faults: Option<Arc<FaultInjector>>) -> io::Result<UringBackend> {
        Ok(UringBackend {
            ring: IoUring::new(RING_ENTRIES)?,
            faults,
        })
    }

    /// Submits `entries` (already linked as the caller wants) and waits for all of them;
    /// returns each one's result in order. `written`, if given, is called as soon as the
    /// first `lens.len()` entries (writes of those lengths) have all completed in full.
    fn run(
        &mut self,
        entries: &[squeue::Entry],
        lens: &[usize],
        mut written: Option<&mut dyn FnMut()>,
    ) -> io::Result<Vec<i32>> {
        for e in entries {
            // SAFETY: every entry points at buffers (`WriteOp::bytes`) and file descriptors
            // borrowed by the caller for the whole of `write_and_sync`, which does not return
            // before `submit_and_wait` below has seen all their completions; nothing is freed
            // or moved while the kernel may still use it.
            unsafe {
                self.ring
                    .submission()
                    .push(e)
                    .map_err(|_| io::Error::other("io_uring submission queue full"))?;
            }
        }
        self.ring.submit_and_wait(entries.len())?;
        let mut res = vec![0i32; entries.len()];
        let mut done = vec![false; entries.len()];
        let mut seen = 0;
        while seen < entries.len() {
            let mut got = false;
            for cqe in self.ring.completion() {
                let i = cqe.user_data() as usize;
                if i < res.len() && !done[i] {
                    res[i] = cqe.result();
                    done[i] = true;
                    seen += 1;
                }
                got = true;
            }
            if written.is_some()
                && done[..lens.len()].iter().all(|d| *d)
                && res
                    .iter()
                    .zip(lens)
                    .all(|(r, l)| *r >= 0 && *r as usize == *l)
            {
                if let Some(f) = written.take() {
                    f();
                }
            }
            if !got && seen < entries.len() {
                self.ring.submit_and_wait(entries.len() - seen)?;
            }
        }
        Ok(res)
    }
}

impl Backend for UringBackend {
    fn write_then_sync(
        &mut self,
        writes: &[WriteOp<'_>],
        sync: &[&File],
        written: &mut dyn FnMut(),
    ) -> io::Result<()> {
        if let Some(f) = &self.faults {
            for _ in writes {
                f.check_write()?;
            }
        }
        // Writes go in groups that fit the ring; the last group is linked to the syncs, so the
        // common case (one or two writes, one or two files) is a single submission.
        let per_round = (RING_ENTRIES as usize).saturating_sub(sync.len()).max(1);
        let mut chunks: Vec<&[WriteOp<'_>]> = writes.chunks(per_round).collect();
        let last = chunks.pop().unwrap_or(&[]);
        for chunk in chunks {
            let entries: Vec<_> = chunk
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    opcode::Write::new(
                        types::Fd(w.file.as_raw_fd()),
                        w.bytes.as_ptr(),
                        w.bytes.len() as u32,
                    )
                    .offset(w.offset)
                    .build()
                    .user_data(i as u64)
                })
                .collect();
            let res = self.run(&entries, &[], None)?;
            finish_writes(chunk, &res)?;
        }
        let mut entries = Vec::with_capacity(last.len() + sync.len());
        for (i, w) in last.iter().enumerate() {
            entries.push(
                opcode::Write::new(
                    types::Fd(w.file.as_raw_fd()),
                    w.bytes.as_ptr(),
                    w.bytes.len() as u32,
                )
                .offset(w.offset)
                .build()
                .flags(squeue::Flags::IO_LINK)
                .user_data(i as u64),
            );
        }
        for (j, f) in sync.iter().enumerate() {
            let mut e = opcode::Fsync::new(types::Fd(f.as_raw_fd()))
                .flags(types::FsyncFlags::DATASYNC)
                .build()
                .user_data((last.len() + j) as u64);
            if j + 1 < sync.len() {
                e = e.flags(squeue::Flags::IO_LINK);
            }
            entries.push(e);
        }
        let lens: Vec<usize> = last.iter().map(|w| w.bytes.len()).collect();
        let mut told = false;
        let res = self.run(
            &entries,
            &lens,
            Some(&mut || {
                told = true;
                written()
            }),
        )?;
        let (wres, sres) = res.split_at(last.len());
        // A short write cancels the rest of the chain: finish it by hand, then sync by hand.
        let short = finish_writes(last, wres)?;
        if !told {
            written();
        }
        for (j, f) in sync.iter().enumerate() {
            if let Some(fi) = &self.faults {
                fi.check_sync()?;
            }
            let r = sres[j];
            if short || r == -125 {
                // -ECANCELED: the chain broke before this sync ran.
                f.sync_data()?;
            } else if r < 0 {
                return Err(io::Error::from_raw_os_error(-r));
            }
        }
        Ok(())
    }

    fn name(&self) -> &'static str {
        "io_uring"
    }
}

/// Checks write completions; completes short writes synchronously. Returns whether any was
/// short (the linked operations after it were then cancelled).
fn finish_writes(writes: &[WriteOp<'_>], res: &[i32]) -> io::Result<bool> {
    let mut short = false;
    for (w, &r) in writes.iter().zip(res) {
        if r == -125 && short {
            w.file.write_all_at(w.bytes, w.offset)?;
            continue;
        }
        if r < 0 {
            return Err(io::Error::from_raw_os_error(-r));
        }
        let n = r as usize;
        if n < w.bytes.len() {
            short = true;
            w.file.write_all_at(&w.bytes[n..], w.offset + n as u64)?;
        }
    }
    Ok(short)
}

/// The mode after the `REPLIDB_WAL_IO` override.
pub(crate) fn effective_mode(mode: WalIo) -> WalIo {
    match std::env::var("REPLIDB_WAL_IO").as_deref() {
        Ok("sync") => WalIo::Sync,
        Ok("uring") => WalIo::Uring,
        _ => mode,
    }
}

/// The ring the log's flusher uses, if any: none for `Sync`; for `Auto`, none (with a warning)
/// if the kernel refuses one; `Uring` fails without one.
pub(crate) fn ring_for_log(
    mode: WalIo,
    faults: Option<Arc<FaultInjector>>,
) -> io::Result<Option<Box<dyn Backend>>> {
    match effective_mode(mode) {
        WalIo::Sync => {
            tracing::info!("WAL I/O: pwrite+fdatasync (forced)");
            Ok(None)
        }
        WalIo::Uring => Ok(Some(Box::new(UringBackend::new(faults)?))),
        WalIo::Auto => match UringBackend::new(faults) {
            Ok(r) => Ok(Some(Box::new(r))),
            Err(e) => {
                tracing::warn!(error = %e, "io_uring unavailable; WAL I/O falls back to pwrite+fdatasync");
                Ok(None)
            }
        },
    }
}

/// The backend for checkpoint write-back (the log's flusher picks per round; see
/// `ring_for_log` and `wal::Io`).
pub(crate) fn checkpoint_backend(
    mode: WalIo,
    faults: Option<Arc<FaultInjector>>,
) -> io::Result<Box<dyn Backend>> {
    match effective_mode(mode) {
        WalIo::Sync => Ok(Box::new(SyncBackend { faults })),
        WalIo::Uring => Ok(Box::new(UringBackend::new(faults)?)),
        WalIo::Auto => match UringBackend::new(faults.clone()) {
            Ok(b) => Ok(Box::new(b)),
            Err(e) => {
                tracing::warn!(error = %e, "io_uring unavailable; checkpoints fall back to pwrite+fdatasync");
                Ok(Box::new(SyncBackend { faults }))
            }
        },
    }
}
