//! WAL segment files: fixed-size files named by the LSN of their first byte, preallocated by
//! writing zeros (so `fdatasync` does not also have to commit file-size changes), recycled
//! once a checkpoint makes them unnecessary.
//!
//! ```text
//! segment file  DIR/wal/<start LSN, 16 hex digits>.wal
//! +0    crc            u32   crc32c of bytes 4..64
//! +4    format_version u32   1
//! +8    magic          [u8; 8] "RDBWAL\0\0"
//! +16   start_lsn      u64   LSN of the first stream byte in this file
//! +24   segment_bytes  u64   stream bytes the file holds
//! +32   reserved       [u8; 32]
//! +512  stream bytes start_lsn .. start_lsn + segment_bytes
//! ```
//! The stream runs on across segments: a record may begin in one file and end in the next.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::io::FaultInjector;
use crate::vfs::{OpenMode, VFile, Vfs};

pub const SEGMENT_HEADER: u64 = 512;
const MAGIC: [u8; 8] = *b"RDBWAL\0\0";
const VERSION: u32 = 1;
/// How many obsolete segments are kept (renamed) for reuse instead of deleted.
const SPARES: usize = 2;

pub fn segment_name(start: u64) -> String {
    format!("{start:016x}.wal")
}

fn header_bytes(start: u64, segment_bytes: u64) -> [u8; SEGMENT_HEADER as usize] {
    let mut h = [0u8; SEGMENT_HEADER as usize];
    h[4..8].copy_from_slice(&VERSION.to_le_bytes());
    h[8..16].copy_from_slice(&MAGIC);
    h[16..24].copy_from_slice(&start.to_le_bytes());
    h[24..32].copy_from_slice(&segment_bytes.to_le_bytes());
    let crc = crc32c::crc32c(&h[4..64]);
    h[..4].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Checks a segment's header against where it should sit in the stream.
fn check_header(h: &[u8], start: u64, segment_bytes: u64) -> Result<(), String> {
    if h.len() < 64 {
        return Err("header cut short".into());
    }
    let crc = u32::from_le_bytes(h[..4].try_into().expect("4 bytes"));
    if crc != crc32c::crc32c(&h[4..64]) {
        return Err("header checksum mismatch".into());
    }
    if h[8..16] != MAGIC || u32::from_le_bytes(h[4..8].try_into().expect("4 bytes")) != VERSION {
        return Err("not a replidb WAL segment of this version".into());
    }
    let s = u64::from_le_bytes(h[16..24].try_into().expect("8 bytes"));
    let n = u64::from_le_bytes(h[24..32].try_into().expect("8 bytes"));
    if s != start || n != segment_bytes {
        return Err(format!(
            "header says start {s} size {n}, expected start {start} size {segment_bytes}"
        ));
    }
    Ok(())
}

/// The segment files of one WAL directory.
///
/// Several `Segments` can work on one directory (the flusher creates segments, checkpoints
/// recycle old ones into future names, replication reads): a lock per directory, shared by
/// all of them in this process, makes "create a segment" and "recycle into a name" exclusive,
/// and a recycled segment gets its new header before it takes its new name, so a file found
/// under a segment name is always complete.
pub(crate) struct Segments {
    vfs: Arc<dyn Vfs>,
    dir: PathBuf,
    pub segment_bytes: u64,
    open: BTreeMap<u64, Box<dyn VFile>>,
    faults: Option<Arc<FaultInjector>>,
    names: Arc<parking_lot::Mutex<()>>,
}

/// The per-directory naming locks of this process.
fn names_lock(vfs: &dyn Vfs, dir: &Path) -> Arc<parking_lot::Mutex<()>> {
    static LOCKS: std::sync::OnceLock<
        parking_lot::Mutex<
            std::collections::HashMap<PathBuf, std::sync::Weak<parking_lot::Mutex<()>>>,
        >,
    > = std::sync::OnceLock::new();
    let key = vfs.key(dir);
    let mut map = LOCKS.get_or_init(Default::default).lock();
    map.retain(|_, w| w.strong_count() > 0);
    if let Some(l) = map.get(&key).and_then(|w| w.upgrade()) {
        return l;
    }
    let l = Arc::new(parking_lot::Mutex::new(()));
    map.insert(key, Arc::downgrade(&l));
    l
}

impl Segments {
    pub fn new(
        vfs: Arc<dyn Vfs>,
        dir: &Path,
        segment_bytes: u64,
        faults: Option<Arc<FaultInjector>>,
    ) -> Segments {
        Segments {
            names: names_lock(&*vfs, dir),
            vfs,
            dir: dir.to_path_buf(),
            segment_bytes,
            open: BTreeMap::new(),
            faults,
        }
    }

    pub fn start_of(&self, lsn: u64) -> u64 {
        lsn - lsn % self.segment_bytes
    }

    pub fn path(&self, start: u64) -> PathBuf {
        self.dir.join(segment_name(start))
    }

    /// Removes leftovers of a segment creation or recycling that a crash interrupted
    /// (`*.wal.tmp`, `*.recycle`). Called at open, before anything else uses the directory.
    pub fn remove_leftovers(&self) -> io::Result<()> {
        for name in self.vfs.list(&self.dir)? {
            if name.ends_with(".wal.tmp") || name.ends_with(".recycle") {
                tracing::info!(file = %name, "removing an unfinished WAL segment left by a crash");
                self.vfs.remove_file(&self.dir.join(&name))?;
            }
        }
        Ok(())
    }

    /// Start LSNs of the segment files present, ascending.
    pub fn list(&self) -> io::Result<Vec<u64>> {
        let mut v = Vec::new();
        for name in self.vfs.list(&self.dir)? {
            if let Some(hex) = name.strip_suffix(".wal") {
                if hex.len() == 16 {
                    if let Ok(s) = u64::from_str_radix(hex, 16) {
                        v.push(s);
                    }
                }
            }
        }
        v.sort_unstable();
        Ok(v)
    }

    /// Opens segment `start` for reading and writing, creating (preallocating) it if missing.
    pub fn ensure(&mut self, start: u64) -> io::Result<&dyn VFile> {
        if !self.open.contains_key(&start) {
            let path = self.path(start);
            let names = self.names.clone();
            let _naming = names.lock();
            let f = match self.vfs.open(&path, OpenMode::Existing) {
                Ok(f) => {
                    let mut h = [0u8; 64];
                    f.read_exact_at(&mut h, 0)?;
                    check_header(&h, start, self.segment_bytes).map_err(|e| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("{}: {e}", path.display()),
                        )
                    })?;
                    f
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => self.create(start)?,
                Err(e) => return Err(e),
            };
            self.open.insert(start, f);
        }
        Ok(&**self.open.get(&start).expect("just inserted"))
    }

    /// Syncs the segments present that hold stream bytes in `[from, to)`.
    pub fn sync_range(&mut self, from: u64, to: u64) -> io::Result<()> {
        if to <= from {
            return Ok(());
        }
        let (first, last) = (self.start_of(from), self.start_of(to - 1));
        for s in self.list()? {
            if (first..=last).contains(&s) {
                self.ensure(s)?.sync_data()?;
            }
        }
        Ok(())
    }

    /// Closes the files of segments before the one holding `lsn` (the writer moves forward).
    pub fn close_before(&mut self, lsn: u64) {
        let keep = self.start_of(lsn);
        self.open.retain(|&s, _| s >= keep);
    }

    /// An open segment file (after `ensure`).
    pub fn get(&self, start: u64) -> Option<&dyn VFile> {
        self.open.get(&start).map(|f| &**f)
    }

    /// Creates segment `start` full of zeros under a temporary name, syncs it, and renames it
    /// into place, so a segment file either does not exist or is fully allocated.
    fn create(&mut self, start: u64) -> io::Result<Box<dyn VFile>> {
        if let Some(f) = &self.faults {
            f.check_segment()?;
        }
        let tmp = self.dir.join(format!("{}.tmp", segment_name(start)));
        let f = self.vfs.open(&tmp, OpenMode::Truncate)?;
        let r = (|| {
            self.fill(&*f, start)?;
            self.vfs.rename(&tmp, &self.path(start))?;
            self.vfs.sync_dir(&self.dir)
        })();
        if let Err(e) = r {
            let _ = self.vfs.remove_file(&tmp);
            return Err(e);
        }
        tracing::debug!(segment = %segment_name(start), "created WAL segment");
        Ok(f)
    }

    /// Writes segment `start`'s header and zeros over all its stream bytes, and syncs them.
    fn fill(&self, f: &dyn VFile, start: u64) -> io::Result<()> {
        f.write_all_at(&header_bytes(start, self.segment_bytes), 0)?;
        let zeros = vec![0u8; 1 << 20];
        let mut off = 0;
        while off < self.segment_bytes {
            let n = (self.segment_bytes - off).min(zeros.len() as u64) as usize;
            f.write_all_at(&zeros[..n], SEGMENT_HEADER + off)?;
            off += n as u64;
        }
        f.sync_all()
    }

    /// Creates segment `start` ahead of the log, unless it exists: as `create`, but under a
    /// temporary name of its own and without the naming lock until the rename (which it
    /// skips if a flush or a checkpoint's recycling put a segment there meanwhile), so a
    /// flush round that needs a segment never waits for this one's zeros. Returns whether
    /// it created the file.
    pub fn prepare(&self, start: u64) -> io::Result<bool> {
        let to = self.path(start);
        if self.vfs.exists(&to) {
            return Ok(false);
        }
        if let Some(f) = &self.faults {
            f.check_segment()?;
        }
        // Ends in ".wal.tmp": a crash leaves it to `remove_leftovers`.
        let tmp = self
            .dir
            .join(format!("{}.prep.wal.tmp", segment_name(start)));
        let f = self.vfs.open(&tmp, OpenMode::Truncate)?;
        let r = (|| {
            self.fill(&*f, start)?;
            let names = self.names.clone();
            let _naming = names.lock();
            if self.vfs.exists(&to) {
                return Ok(false);
            }
            self.vfs.rename(&tmp, &to)?;
            self.vfs.sync_dir(&self.dir)?;
            Ok(true)
        })();
        match r {
            Ok(true) => {
                tracing::debug!(segment = %segment_name(start), "prepared WAL segment ahead of the log")
            }
            _ => {
                let _ = self.vfs.remove_file(&tmp);
            }
        }
        r
    }

    /// Reads stream bytes [from, from + buf.len()) of segment `start` (which must hold them).
    pub fn read_at(&mut self, start: u64, from: u64, buf: &mut [u8]) -> io::Result<()> {
        let f = match self.open.get(&start) {
            Some(f) => f,
            None => {
                // Read-write: the same handle may be used to truncate after recovery.
                let f = self.vfs.open(&self.path(start), OpenMode::Existing)?;
                let mut h = [0u8; 64];
                f.read_exact_at(&mut h, 0)?;
                check_header(&h, start, self.segment_bytes)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                self.open.insert(start, f);
                self.open.get(&start).expect("just inserted")
            }
        };
        f.read_exact_at(buf, SEGMENT_HEADER + (from - start))
    }

    /// Writes zeros over the stream from `lsn` to the end of its segment and deletes every
    /// later segment: after recovery, nothing past the last good record can ever be read as
    /// a record again.
    pub fn truncate_after(&mut self, lsn: u64) -> io::Result<()> {
        let start = self.start_of(lsn);
        for s in self.list()? {
            if s > start {
                self.open.remove(&s);
                self.vfs.remove_file(&self.path(s))?;
            }
        }
        if self.vfs.exists(&self.path(start)) {
            let end = self.segment_bytes;
            let f = self.ensure(start)?;
            let zeros = vec![0u8; 1 << 20];
            let mut off = lsn - start;
            while off < end {
                let n = (end - off).min(zeros.len() as u64) as usize;
                f.write_all_at(&zeros[..n], SEGMENT_HEADER + off)?;
                off += n as u64;
            }
            f.sync_data()?;
        }
        self.vfs.sync_dir(&self.dir)
    }

    /// Removes segments wholly below `lsn`, keeping a few as renamed spares ahead of `end`.
    /// Returns how many were removed or recycled.
    pub fn remove_below(&mut self, lsn: u64, end: u64) -> io::Result<usize> {
        let keep_from = self.start_of(lsn);
        let all = self.list()?;
        // A segment name near the end of the LSN space (a stray file) ends recycling: there
        // is no name after it.
        let overflow = || {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "WAL segment names reach the end of the LSN space",
            )
        };
        let mut next_future = all
            .last()
            .copied()
            .unwrap_or(0)
            .max(self.start_of(end))
            .checked_add(self.segment_bytes)
            .ok_or_else(overflow)?;
        let mut n = 0;
        for s in all.into_iter().filter(|&s| s < keep_from) {
            self.open.remove(&s);
            let future = self
                .list()?
                .into_iter()
                .filter(|&x| x > self.start_of(end))
                .count();
            let names = self.names.clone();
            let _naming = names.lock();
            let to = self.path(next_future);
            if future < SPARES && !self.vfs.exists(&to) {
                // Recycle: the blocks are allocated already, which makes the future fdatasyncs
                // cheap; the stale records in it carry other LSNs and can never be read back.
                // The new header goes in before the new name, so no one ever opens a segment
                // whose header does not match its name.
                let tmp = self
                    .dir
                    .join(format!("{}.recycle", segment_name(next_future)));
                self.vfs.rename(&self.path(s), &tmp)?;
                let f = self.vfs.open(&tmp, OpenMode::Existing)?;
                f.write_all_at(&header_bytes(next_future, self.segment_bytes), 0)?;
                f.sync_data()?;
                self.vfs.rename(&tmp, &to)?;
                // The new name is durable before the flusher can open it (it takes the naming
                // lock held here): records it then writes and syncs there would otherwise sit
                // in a file a power loss could leave under its old name.
                self.vfs.sync_dir(&self.dir)?;
                next_future = next_future
                    .checked_add(self.segment_bytes)
                    .ok_or_else(overflow)?;
            } else {
                self.vfs.remove_file(&self.path(s))?;
            }
            n += 1;
        }
        if n > 0 {
            self.vfs.sync_dir(&self.dir)?;
        }
        Ok(n)
    }
}
