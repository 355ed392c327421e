//! The flusher's I/O backends: io_uring (a write per file piece and an `fdatasync` per file,
//! as linked SQEs, submitted together) or plain `pwrite` + `fdatasync`. Chosen at run time:
//! io_uring when the ring can be set up, unless the options or `REPLIDB_WAL_IO=sync` force
//! the fallback. Both are exercised by the test suite.

use std::io;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use io_uring::{opcode, squeue, types, IoUring};

use crate::vfs::VFile;

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
    pub file: &'a dyn VFile,
    pub offset: u64,
    pub bytes: &'a [u8],
}

pub(crate) trait Backend: Send {
    /// Performs every write, then makes the files durable. Returns only when both are done.
    fn write_and_sync(&mut self, writes: &[WriteOp<'_>], sync: &[&dyn VFile]) -> io::Result<()> {
        self.write_then_sync(writes, sync, &mut || {})
    }
    /// The same, calling `written` once every write has reached the kernel (so a crash of
    /// this process can no longer lose them) and before the sync is known to be done: the
    /// moment replication may ship the bytes while the sync runs.
    fn write_then_sync(
        &mut self,
        writes: &[WriteOp<'_>],
        sync: &[&dyn VFile],
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
    /// Fails an io_uring round with EIO after its entries were submitted, as a failing
    /// `io_uring_enter` would: the round's completions must still all be reaped before the
    /// error is returned.
    pub ring_eio_after: AtomicI64,
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

    pub(crate) fn check_ring(&self) -> io::Result<()> {
        if self.hit(&self.ring_eio_after) {
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
        self.ring_eio_after.store(0, Ordering::SeqCst);
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
        sync: &[&dyn VFile],
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
    /// Rounds submitted so far: the high bits of every entry's `user_data`, so a completion
    /// is matched to its entry by tag and index, never by position alone.
    round: u64,
    /// Entries of the current round whose completions have not been reaped. Zero whenever
    /// `run` returns, and when the ring is dropped (see `drain`).
    in_flight: usize,
}

const RING_ENTRIES: u32 = 64;

/// Bits of `user_data` that hold an entry's index in its round (the rest hold the round).
const INDEX_BITS: u32 = 16;

impl UringBackend {
    pub fn new(faults: Option<Arc<FaultInjector>>) -> io::Result<UringBackend> {
        Ok(UringBackend {
            ring: IoUring::new(RING_ENTRIES)?,
            faults,
            round: 0,
            in_flight: 0,
        })
    }

    /// Submits `entries` (already linked as the caller wants) and waits for all of them;
    /// returns each one's result in order. `written`, if given, is called as soon as the
    /// first `lens.len()` entries (writes of those lengths) have all completed in full —
    /// before the entries after them (the syncs) are waited for.
    ///
    /// Soundness: the entries point at buffers and descriptors the caller borrows for this
    /// call only. This function therefore never returns while the kernel may still hold one
    /// of them: the entries are pushed all or none, and on any error after they were pushed
    /// every completion of the round is reaped before the error is returned (`drain`).
    fn run(
        &mut self,
        entries: &mut [squeue::Entry],
        lens: &[usize],
        written: Option<&mut dyn FnMut()>,
    ) -> io::Result<Vec<i32>> {
        debug_assert_eq!(self.in_flight, 0, "a round still in flight");
        debug_assert!(entries.len() < 1 << INDEX_BITS);
        self.round += 1;
        let tag = self.round << INDEX_BITS;
        for (i, e) in entries.iter_mut().enumerate() {
            *e = e.clone().user_data(tag | i as u64);
        }
        // SAFETY: each entry's buffer (`WriteOp::bytes`) and descriptor are borrowed by the
        // caller for the whole of this call, and this call does not return before every
        // completion of the round has been reaped: `reap` waits for them all, and on its
        // failure `drain` does (or aborts the process, which frees nothing the kernel could
        // still write from). `push_multiple` pushes all entries or none, so a full queue
        // leaves no entry behind for a later submission to carry.
        unsafe {
            self.ring
                .submission()
                .push_multiple(entries)
                .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        }
        self.in_flight = entries.len();
        let mut res = vec![0i32; entries.len()];
        let r = self.reap(tag, &mut res, lens, written);
        if r.is_err() {
            self.drain(tag);
        }
        r.map(|()| res)
    }

    /// Waits for the round's completions, calling `written` once its writes are in.
    fn reap(
        &mut self,
        tag: u64,
        res: &mut [i32],
        lens: &[usize],
        mut written: Option<&mut dyn FnMut()>,
    ) -> io::Result<()> {
        if let Some(f) = &self.faults {
            f.check_ring()?;
        }
        let mut done = vec![false; res.len()];
        let mut writes_done = 0;
        loop {
            for cqe in self.ring.completion() {
                let (t, i) = (cqe.user_data() & !((1 << INDEX_BITS) - 1), cqe.user_data());
                let i = (i & ((1 << INDEX_BITS) - 1)) as usize;
                // A completion of another round cannot be here (rounds are drained before
                // the next), but one is never taken for this round's.
                if t != tag || i >= res.len() || done[i] {
                    continue;
                }
                res[i] = cqe.result();
                done[i] = true;
                self.in_flight -= 1;
                if i < lens.len() {
                    writes_done += 1;
                }
            }
            if writes_done == lens.len()
                && res
                    .iter()
                    .zip(lens)
                    .all(|(r, l)| *r >= 0 && *r as usize == *l)
            {
                if let Some(f) = written.take() {
                    f();
                }
            }
            if self.in_flight == 0 {
                return Ok(());
            }
            // Wait for the writes first (so `written` runs while the syncs are under way),
            // then for the rest. The completion queue was just emptied, so `want` counts new
            // completions.
            let want = if written.is_some() && writes_done < lens.len() {
                lens.len() - writes_done
            } else {
                self.in_flight
            };
            match self.ring.submit_and_wait(want) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Reaps every outstanding completion of round `tag`, resubmitting what the kernel has
    /// not taken yet. If the ring itself fails meanwhile, nothing can tell when the kernel is
    /// done with the buffers the entries point at: the process aborts rather than free them
    /// under an operation that may still read them (and write their bytes into the log).
    fn drain(&mut self, tag: u64) {
        let mut failures = 0;
        while self.in_flight > 0 {
            for cqe in self.ring.completion() {
                if cqe.user_data() & !((1 << INDEX_BITS) - 1) == tag {
                    self.in_flight -= 1;
                }
            }
            if self.in_flight == 0 {
                break;
            }
            match self.ring.submit_and_wait(self.in_flight) {
                Ok(_) => failures = 0,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    failures += 1;
                    if failures >= 100 {
                        tracing::error!(error = %e, in_flight = self.in_flight, "io_uring cannot reap its completions; aborting rather than free buffers the kernel may still use");
                        std::process::abort();
                    }
                }
            }
        }
    }
}

impl Drop for UringBackend {
    fn drop(&mut self) {
        // `run` leaves nothing in flight; this holds the invariant even if that changes.
        if self.in_flight > 0 {
            self.drain(self.round << INDEX_BITS);
        }
    }
}

impl Backend for UringBackend {
    fn write_then_sync(
        &mut self,
        writes: &[WriteOp<'_>],
        sync: &[&dyn VFile],
        written: &mut dyn FnMut(),
    ) -> io::Result<()> {
        if let Some(f) = &self.faults {
            for _ in writes {
                f.check_write()?;
            }
        }
        // The ring works on descriptors: only files of the operating system can go through it
        // (checked before anything is submitted, without collecting them).
        let fd = |f: &dyn VFile| {
            f.fd()
                .map(types::Fd)
                .ok_or_else(|| io::Error::other("io_uring needs files of the operating system"))
        };
        if let Some(e) = writes
            .iter()
            .map(|w| w.file)
            .chain(sync.iter().copied())
            .find_map(|f| fd(f).err())
        {
            return Err(e);
        }
        let write_entry = |w: &WriteOp<'_>| -> io::Result<squeue::Entry> {
            Ok(
                opcode::Write::new(fd(w.file)?, w.bytes.as_ptr(), w.bytes.len() as u32)
                    .offset(w.offset)
                    .build(),
            )
        };
        // Writes go in groups that fit the ring; the last group is linked to the syncs, so the
        // common case (one or two writes, one or two files) is a single submission.
        let per_round = (RING_ENTRIES as usize).saturating_sub(sync.len()).max(1);
        let mut chunks: Vec<&[WriteOp<'_>]> = writes.chunks(per_round).collect();
        let last = chunks.pop().unwrap_or(&[]);
        for chunk in chunks {
            let mut entries = chunk
                .iter()
                .map(write_entry)
                .collect::<io::Result<Vec<_>>>()?;
            let res = self.run(&mut entries, &[], None)?;
            finish_writes(chunk, &res)?;
        }
        let mut entries = Vec::with_capacity(last.len() + sync.len());
        for w in last {
            entries.push(write_entry(w)?.flags(squeue::Flags::IO_LINK));
        }
        for (j, f) in sync.iter().enumerate() {
            let mut e = opcode::Fsync::new(fd(*f)?)
                .flags(types::FsyncFlags::DATASYNC)
                .build();
            if j + 1 < sync.len() {
                e = e.flags(squeue::Flags::IO_LINK);
            }
            entries.push(e);
        }
        let lens: Vec<usize> = last.iter().map(|w| w.bytes.len()).collect();
        let mut told = false;
        let res = self.run(
            &mut entries,
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
    if mode == WalIo::Sync {
        // Forced by the options (a simulated file system needs it): the environment cannot
        // ask for a ring there.
        return mode;
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    fn ring(faults: &Arc<FaultInjector>) -> Option<UringBackend> {
        match UringBackend::new(Some(faults.clone())) {
            Ok(r) => Some(r),
            // A kernel without io_uring (or a sandbox forbidding it): the direct path is
            // what runs there, and the suite tests it elsewhere.
            Err(e) => {
                eprintln!("io_uring unavailable, ring test skipped: {e}");
                None
            }
        }
    }

    /// An empty file in a directory of its own (kept while the guard lives).
    fn scratch_file() -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().unwrap();
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("f"))
            .unwrap();
        (dir, file)
    }

    #[test]
    fn a_ring_round_that_fails_mid_way_reaps_every_completion_before_it_returns() {
        let (_dir, file) = scratch_file();
        let faults = Arc::new(FaultInjector::default());
        let Some(mut ring) = ring(&faults) else {
            return;
        };
        // The round is submitted, then the wait for it fails.
        faults.ring_eio_after.store(1, Ordering::SeqCst);
        let a = vec![0xAAu8; 256 << 10];
        let mut calls = 0;
        let r = ring.write_then_sync(
            &[
                WriteOp {
                    file: &file,
                    offset: 0,
                    bytes: &a[..128 << 10],
                },
                WriteOp {
                    file: &file,
                    offset: 128 << 10,
                    bytes: &a[128 << 10..],
                },
            ],
            &[&file as &dyn VFile],
            &mut || calls += 1,
        );
        assert_eq!(r.map_err(|e| e.raw_os_error()), Err(Some(5)));
        assert_eq!(calls, 0, "a failed round is never reported written");
        // Nothing of the round is left with the kernel: its entries ran to completion (their
        // bytes are in the file) before the error came back, so the buffer may go.
        assert_eq!(ring.in_flight, 0);
        drop(a);
        let mut got = vec![0u8; 256 << 10];
        file.read_exact_at(&mut got, 0).unwrap();
        assert!(got.iter().all(|&b| b == 0xAA));
        // The next round is matched to its own completions and succeeds.
        let b = vec![0xBBu8; 4096];
        ring.write_then_sync(
            &[WriteOp {
                file: &file,
                offset: 256 << 10,
                bytes: &b,
            }],
            &[&file as &dyn VFile],
            &mut || calls += 1,
        )
        .unwrap();
        assert_eq!(calls, 1);
        assert_eq!(ring.in_flight, 0);
        let mut got = vec![0u8; 4096];
        file.read_exact_at(&mut got, 256 << 10).unwrap();
        assert_eq!(got, b);
    }

    #[test]
    fn a_round_larger_than_the_ring_goes_in_parts_and_lands_whole() {
        let (_dir, file) = scratch_file();
        let faults = Arc::new(FaultInjector::default());
        let Some(mut ring) = ring(&faults) else {
            return;
        };
        let n = RING_ENTRIES as usize * 3 + 5;
        let bufs: Vec<Vec<u8>> = (0..n).map(|i| vec![i as u8; 512]).collect();
        let writes: Vec<WriteOp<'_>> = bufs
            .iter()
            .enumerate()
            .map(|(i, b)| WriteOp {
                file: &file,
                offset: (i * 512) as u64,
                bytes: b,
            })
            .collect();
        let mut calls = 0;
        ring.write_then_sync(&writes, &[&file as &dyn VFile], &mut || calls += 1)
            .unwrap();
        assert_eq!(calls, 1);
        let mut got = vec![0u8; n * 512];
        file.read_exact_at(&mut got, 0).unwrap();
        for (i, c) in got.chunks(512).enumerate() {
            assert!(c.iter().all(|&b| b == i as u8), "write {i} missing");
        }
    }
}
