//! The engine's I/O seam: every file the engine reads, writes, syncs, creates, renames or
//! removes goes through a [`Vfs`] (the file system) and its [`VFile`]s (open files). Three
//! implementations:
//! - [`RealFs`], the default: the operating system's files (and through them io_uring and
//!   the page file's memory map);
//! - [`SimFs`]: files in memory that remember what was synced, for power-loss tests — a
//!   simulated power cut keeps only synced data and synced directory entries, and may keep
//!   any part of what was written since (sector by sector, torn);
//! - fault injection on either, through [`FaultInjector`](crate::wal::io::FaultInjector).
//!
//! The media assumptions `SimFs` encodes are the ones docs/wal.md ("What the disk promises")
//! states.

mod sim;

use std::any::Any;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub use sim::SimFs;

/// How to open a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Read and write an existing file (`NotFound` if there is none).
    Existing,
    /// Read and write, creating the file empty if missing, keeping it if present.
    Create,
    /// Read and write a file made empty (created if missing).
    Truncate,
}

/// A file system, as the engine uses one.
pub trait Vfs: Send + Sync + std::fmt::Debug {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn VFile>>;
    /// A small file's whole contents.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let f = self.open(path, OpenMode::Existing)?;
        let mut buf = vec![0; usize::try_from(f.len()?).map_err(io::Error::other)?];
        f.read_exact_at(&mut buf, 0)?;
        Ok(buf)
    }
    fn exists(&self, path: &Path) -> bool;
    /// The names of the files in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Makes the creations, renames and removals of names in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Takes the exclusive lock on `path` (created if missing) for as long as the returned
    /// guard lives; `WouldBlock` if someone holds it.
    fn lock(&self, path: &Path) -> io::Result<Box<dyn Any + Send + Sync>>;
    /// A key naming `path`'s directory for in-process locks (the canonical path for real
    /// files).
    fn key(&self, path: &Path) -> PathBuf {
        path.to_path_buf()
    }
    /// Whether files are the operating system's: io_uring and memory maps can be used.
    fn is_real(&self) -> bool;
}

/// An open file.
#[allow(clippy::len_without_is_empty)] // a file's length, read with I/O, not a container's
pub trait VFile: Send + Sync {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// `fdatasync`: the file's bytes (and the size needed to read them) are durable.
    fn sync_data(&self) -> io::Result<()>;
    /// `fsync`: `sync_data` and the file's metadata.
    fn sync_all(&self) -> io::Result<()>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    fn len(&self) -> io::Result<u64>;
    /// The descriptor of an operating-system file (for io_uring), `None` for a simulated one.
    fn fd(&self) -> Option<RawFd>;
    /// A read-only view of the whole file, for the page file's readers.
    fn map(&self) -> io::Result<Mapping>;
}

/// A read-only view of a file: a memory map of a real file (which follows later writes), or
/// a copy of a simulated one (which does not: it is taken again after the file changes).
pub enum Mapping {
    Mmap(memmap2::Mmap),
    Copy(Vec<u8>),
}

impl Mapping {
    /// Whether the view shows later writes to the file by itself.
    pub fn is_live(&self) -> bool {
        matches!(self, Mapping::Mmap(_))
    }
}

impl std::ops::Deref for Mapping {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        match self {
            Mapping::Mmap(m) => m,
            Mapping::Copy(v) => v,
        }
    }
}

/// The operating system's files.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealFs;

impl Vfs for RealFs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn VFile>> {
        let mut o = OpenOptions::new();
        o.read(true).write(true);
        match mode {
            OpenMode::Existing => {}
            OpenMode::Create => {
                o.create(true).truncate(false);
            }
            OpenMode::Truncate => {
                o.create(true).truncate(true);
            }
        }
        Ok(Box::new(o.open(path)?))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(dir)? {
            if let Some(name) = e?.file_name().to_str() {
                v.push(name.to_string());
            }
        }
        Ok(v)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir_all(path)
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn Any + Send + Sync>> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        match f.try_lock() {
            Ok(()) => Ok(Box::new(f)),
            Err(std::fs::TryLockError::WouldBlock) => Err(io::ErrorKind::WouldBlock.into()),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }

    fn key(&self, path: &Path) -> PathBuf {
        std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
    }

    fn is_real(&self) -> bool {
        true
    }
}

impl VFile for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn sync_all(&self) -> io::Result<()> {
        File::sync_all(self)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn fd(&self) -> Option<RawFd> {
        Some(self.as_raw_fd())
    }

    fn map(&self) -> io::Result<Mapping> {
        // SAFETY: the only file mapped is the page file, and its database directory is locked
        // (flock on its lock file) by this process for as long as the page file is open, so
        // no other replidb process changes it. This process writes only pages held in frames,
        // and readers read such pages from the frame, never through the map, until the write
        // is complete and the frame is dropped; the file shrinks only after a shrink pass, by
        // the checkpoint, which first drops this map while it holds the published state's
        // lock exclusively (readers borrow map bytes only under that lock) and maps the file
        // again after. So no byte a reader borrows from the map changes or vanishes under
        // it. (Bytes seen through the map are still verified before use.)
        let m = unsafe { memmap2::Mmap::map(self)? };
        Ok(Mapping::Mmap(m))
    }
}
