//! The write-ahead log: record format (`record`), segment files (`segment`), the I/O backends
//! (`io`), and here the appender/flusher pair that gives group commit.
//!
//! Appenders (the one writer, under its lock) copy encoded records into a shared buffer and
//! wake the flusher. The flusher thread takes everything buffered so far, writes it and
//! `fdatasync`s it in one submission, publishes the new flush LSN and wakes every waiter whose
//! commit is now durable: however many commits arrived during one sync share the next one.

pub mod io;
pub mod record;
pub(crate) mod segment;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::error::{Error, Result};
use crate::types::Lsn;
use io::{Backend, FaultInjector, WalIo, WriteOp};
use segment::{Segments, SEGMENT_HEADER};

/// Bytes the append buffer may hold before appenders wait for the flusher.
const BUFFER_LIMIT: usize = 64 << 20;
/// How often the flusher retries after running out of disk space.
const DISK_FULL_RETRY: Duration = Duration::from_millis(100);

struct State {
    /// Appended bytes not yet taken by the flusher; `buf[0]` is at LSN `buf_start`.
    buf: Vec<u8>,
    buf_start: u64,
    /// LSN after the last appended byte.
    end: u64,
    /// Set by a failed write or sync: the log refuses everything until reopened.
    fatal: Option<String>,
    /// Set while writes fail for lack of space; bumped on every failed attempt.
    disk_full: Option<String>,
    attempt: u64,
    shutdown: bool,
}

struct Shared {
    st: Mutex<State>,
    /// The flusher waits here for bytes.
    work: Condvar,
    /// Committers wait here for the flush LSN (or an error).
    done: Condvar,
    flushed: AtomicU64,
    /// Completed write+sync rounds (each may carry many commits).
    flushes: AtomicU64,
}

pub(crate) struct Wal {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    backend_name: &'static str,
}

impl Wal {
    /// Starts the log whose valid contents end at `end` (as found by recovery).
    pub fn start(
        dir: &Path,
        segment_bytes: u64,
        end: Lsn,
        mode: WalIo,
        faults: Option<Arc<FaultInjector>>,
    ) -> Result<Wal> {
        let backend = io::backend(mode, faults.clone())?;
        let backend_name = backend.name();
        let shared = Arc::new(Shared {
            st: Mutex::new(State {
                buf: Vec::with_capacity(1 << 20),
                buf_start: end.0,
                end: end.0,
                fatal: None,
                disk_full: None,
                attempt: 0,
                shutdown: false,
            }),
            work: Condvar::new(),
            done: Condvar::new(),
            flushed: AtomicU64::new(end.0),
            flushes: AtomicU64::new(0),
        });
        let segs = Segments::new(dir, segment_bytes, faults);
        let s2 = shared.clone();
        let thread = std::thread::Builder::new()
            .name("replidb-wal-flusher".into())
            .spawn(move || flusher(s2, segs, backend))?;
        Ok(Wal {
            shared,
            thread: Mutex::new(Some(thread)),
            backend_name,
        })
    }

    pub fn backend_name(&self) -> &'static str {
        self.backend_name
    }

    /// LSN after the last appended byte: where the next record goes.
    pub fn end(&self) -> Lsn {
        Lsn(self.shared.st.lock().end)
    }

    /// Write+sync rounds completed so far.
    pub fn flushes(&self) -> u64 {
        self.shared.flushes.load(Ordering::Relaxed)
    }

    pub fn flushed(&self) -> Lsn {
        Lsn(self.shared.flushed.load(Ordering::Acquire))
    }

    /// Appends records encoded to start at `start` (which must be `end()`); returns the new end.
    pub fn append(&self, start: Lsn, bytes: &[u8]) -> Result<Lsn> {
        let mut st = self.shared.st.lock();
        loop {
            if let Some(why) = &st.fatal {
                return Err(Error::PreviousIo(why.clone()));
            }
            if st.buf.len() < BUFFER_LIMIT {
                break;
            }
            self.shared.done.wait(&mut st);
        }
        assert_eq!(st.end, start.0, "WAL append out of order");
        st.buf.extend_from_slice(bytes);
        st.end += bytes.len() as u64;
        let end = st.end;
        drop(st);
        self.shared.work.notify_one();
        Ok(Lsn(end))
    }

    /// Waits until everything before `lsn` is durable.
    pub fn wait_flushed(&self, lsn: Lsn) -> Result<()> {
        if self.shared.flushed.load(Ordering::Acquire) >= lsn.0 {
            return Ok(());
        }
        let mut st = self.shared.st.lock();
        let attempt = st.attempt;
        loop {
            if self.shared.flushed.load(Ordering::Acquire) >= lsn.0 {
                return Ok(());
            }
            if let Some(why) = &st.fatal {
                return Err(Error::PreviousIo(why.clone()));
            }
            if st.attempt != attempt {
                if let Some(why) = &st.disk_full {
                    return Err(Error::DiskFull(why.clone()));
                }
            }
            self.shared.done.wait(&mut st);
        }
    }

    /// The sticky failure, if the log has had one.
    pub fn failure(&self) -> Option<String> {
        self.shared.st.lock().fatal.clone()
    }

    /// Flushes what is buffered and stops the flusher.
    pub fn shutdown(&self) -> Result<()> {
        let end = self.end();
        let r = self.wait_flushed(end);
        self.shared.st.lock().shutdown = true;
        self.shared.work.notify_all();
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
        r
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

fn flusher(shared: Arc<Shared>, mut segs: Segments, mut backend: Box<dyn Backend>) {
    let mut data: Vec<u8> = Vec::with_capacity(1 << 20);
    loop {
        let start = {
            let mut st = shared.st.lock();
            loop {
                if st.fatal.is_some() {
                    return;
                }
                if !st.buf.is_empty() {
                    if st.disk_full.is_some() {
                        // Back off before retrying; new appends do not shorten the wait.
                        let r = shared.work.wait_for(&mut st, DISK_FULL_RETRY);
                        if !r.timed_out() && !st.shutdown {
                            continue;
                        }
                    }
                    break;
                }
                if st.shutdown {
                    return;
                }
                shared.work.wait(&mut st);
            }
            std::mem::swap(&mut st.buf, &mut data);
            let start = st.buf_start;
            st.buf_start = st.end;
            start
        };
        match write_range(&mut segs, backend.as_mut(), start, &data) {
            Ok(()) => {
                segs.close_before(start + data.len() as u64);
                shared
                    .flushed
                    .store(start + data.len() as u64, Ordering::Release);
                shared.flushes.fetch_add(1, Ordering::Relaxed);
                let mut st = shared.st.lock();
                if st.disk_full.take().is_some() {
                    tracing::info!("WAL writes succeed again");
                }
                drop(st);
                shared.done.notify_all();
                data.clear();
            }
            Err(e) if io::is_disk_full(&e) => {
                let mut st = shared.st.lock();
                if st.disk_full.is_none() {
                    tracing::error!(error = %e, lsn = start, "WAL write failed: disk full; commits fail until space is freed");
                }
                // Keep the bytes: they go first in the next attempt.
                data.extend_from_slice(&st.buf);
                std::mem::swap(&mut st.buf, &mut data);
                st.buf_start = start;
                data.clear();
                st.disk_full = Some(format!("no space left for the WAL at LSN {start}: {e}"));
                st.attempt += 1;
                drop(st);
                shared.done.notify_all();
            }
            Err(e) => {
                tracing::error!(error = %e, lsn = start, "WAL write or fsync failed; refusing all further commits");
                let mut st = shared.st.lock();
                st.fatal = Some(format!("WAL write/fsync at LSN {start} failed: {e}"));
                st.attempt += 1;
                drop(st);
                shared.done.notify_all();
                return;
            }
        }
    }
}

/// Writes stream bytes [start, start + data.len()) into their segments and syncs them.
fn write_range(
    segs: &mut Segments,
    backend: &mut dyn Backend,
    start: u64,
    data: &[u8],
) -> std::io::Result<()> {
    let mut pieces = Vec::with_capacity(2);
    let mut pos = start;
    let end = start + data.len() as u64;
    while pos < end {
        let seg = segs.start_of(pos);
        let n = (seg + segs.segment_bytes).min(end) - pos;
        segs.ensure(seg)?;
        pieces.push((seg, pos, n));
        pos += n;
    }
    // All pieces' files are open now (a flush spans at most a few segments and the cache
    // keeps four); borrow them together.
    let mut files = Vec::with_capacity(pieces.len());
    for (seg, _, _) in &pieces {
        let f = segs
            .get(*seg)
            .ok_or_else(|| std::io::Error::other("WAL segment closed during a flush"))?;
        files.push(f);
    }
    let ops: Vec<WriteOp<'_>> = pieces
        .iter()
        .zip(&files)
        .map(|((seg, pos, n), f)| WriteOp {
            file: f,
            offset: SEGMENT_HEADER + (pos - seg),
            bytes: &data[(pos - start) as usize..(pos - start + n) as usize],
        })
        .collect();
    backend.write_and_sync(&ops, &files)
}
