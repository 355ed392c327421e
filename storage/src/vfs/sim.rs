//! A file system in memory that remembers what was made durable, and can lose power.
//!
//! What it keeps through a power cut ([`SimFs::restart`]) is what docs/wal.md ("What the disk
//! promises") says a disk keeps:
//! - a file's bytes and size as of its last `sync_data`/`sync_all`;
//! - of what was written (or the size set) after that, any part, sector by sector (512
//!   bytes): nothing, everything, or a random choice of sectors of every write — so a write
//!   may be torn and later writes may survive where earlier ones did not;
//! - names (creations, renames, removals) as of the last `sync_dir` of their directory: a
//!   file created, renamed or removed since is back under its old name, or gone.
//!
//! Two simplifications, both in the direction of fewer surprises than a disk could give:
//! directories themselves (`create_dir_all`, `remove_dir_all`, and renaming a directory) are
//! durable at once, and a sync makes a file's whole contents durable (`fdatasync` and `fsync`
//! alike). One thing is harsher: two unsynced writes that share a sector are kept or lost
//! separately, so a sector can come back as a mix of them.
//!
//! A cut is planned with [`SimFs::cut_power_after`]: the n-th mutating operation from then
//! on fails with EIO, and so does every operation after it, reads included (the process is
//! as good as dead) until [`SimFs::restart`]. Handles opened before a restart stay dead.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use super::{Mapping, OpenMode, VFile, Vfs};

const SECTOR: u64 = 512;

/// An in-memory file system for power-loss tests (see the module's documentation).
#[derive(Clone, Default)]
pub struct SimFs {
    st: Arc<Mutex<State>>,
}

impl std::fmt::Debug for SimFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SimFs")
    }
}

#[derive(Default)]
struct State {
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    /// Names as the running process sees them.
    names: BTreeMap<PathBuf, u64>,
    /// Names as a power cut would leave them.
    durable: BTreeMap<PathBuf, u64>,
    dirs: BTreeSet<PathBuf>,
    locks: BTreeSet<PathBuf>,
    /// Mutating operations left before the power goes.
    countdown: Option<u64>,
    off: bool,
    /// Bumped by every restart: handles of an earlier boot are dead.
    boot: u64,
    /// Mutating operations so far (to choose cut points from).
    ops: u64,
}

#[derive(Default)]
struct Inode {
    data: Vec<u8>,
    synced: Vec<u8>,
    pending: Vec<Pending>,
}

enum Pending {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

fn eio() -> io::Error {
    io::Error::other("simulated power loss: the disk is gone")
}

fn not_found(p: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file", p.display()),
    )
}

/// splitmix64: a small deterministic generator for the choices a power cut makes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
}

impl State {
    /// Counts a mutating operation: fails it if the power is (or now goes) off.
    fn tick(&mut self) -> io::Result<()> {
        self.alive()?;
        if let Some(n) = self.countdown {
            if n == 0 {
                self.off = true;
                self.countdown = None;
                return Err(eio());
            }
            self.countdown = Some(n - 1);
        }
        self.ops += 1;
        Ok(())
    }

    fn alive(&self) -> io::Result<()> {
        if self.off {
            Err(eio())
        } else {
            Ok(())
        }
    }

    fn parent_exists(&self, p: &Path) -> io::Result<()> {
        match p.parent() {
            Some(d) if !d.as_os_str().is_empty() && !self.dirs.contains(d) => Err(not_found(d)),
            _ => Ok(()),
        }
    }
}

impl SimFs {
    pub fn new() -> SimFs {
        SimFs::default()
    }

    /// Plans a power cut: the `n`-th mutating operation from now (0: the next) fails, and
    /// everything after it, until `restart`.
    pub fn cut_power_after(&self, n: u64) {
        self.st.lock().countdown = Some(n);
    }

    /// Cuts the power now.
    pub fn cut_power(&self) {
        self.st.lock().off = true;
    }

    /// Whether the power is off.
    pub fn is_off(&self) -> bool {
        self.st.lock().off
    }

    /// Mutating operations so far.
    pub fn ops(&self) -> u64 {
        self.st.lock().ops
    }

    /// Powers up again after a cut (or simulates one now, if the power is on): every file is
    /// what was synced plus what `seed` chooses of what was written since, every directory
    /// holds the names it held at its last sync, locks are released, and handles opened
    /// before are dead.
    pub fn restart(&self, seed: u64) {
        let mut st = self.st.lock();
        let mut rng = Rng(seed);
        // 0: nothing unsynced survives; 1: everything does; 2: a random choice of sectors.
        let mode = rng.next() % 3;
        for inode in st.inodes.values_mut() {
            let mut d = std::mem::take(&mut inode.synced);
            for p in std::mem::take(&mut inode.pending) {
                match p {
                    Pending::SetLen(len) => {
                        if mode == 1 || (mode == 2 && rng.coin()) {
                            d.resize(len as usize, 0);
                        }
                    }
                    Pending::Write(off, bytes) => {
                        let end = off + bytes.len() as u64;
                        let mut at = off;
                        while at < end {
                            let next = ((at / SECTOR) + 1) * SECTOR;
                            let piece = next.min(end);
                            if mode == 1 || (mode == 2 && rng.coin()) {
                                if d.len() < piece as usize {
                                    d.resize(piece as usize, 0);
                                }
                                d[at as usize..piece as usize].copy_from_slice(
                                    &bytes[(at - off) as usize..(piece - off) as usize],
                                );
                            }
                            at = piece;
                        }
                    }
                }
            }
            inode.data = d.clone();
            inode.synced = d;
        }
        st.names = st.durable.clone();
        let live: BTreeSet<u64> = st.names.values().copied().collect();
        st.inodes.retain(|ino, _| live.contains(ino));
        st.locks.clear();
        st.off = false;
        st.countdown = None;
        st.boot += 1;
    }

    fn handle(&self, ino: u64, boot: u64) -> SimFile {
        SimFile {
            fs: self.clone(),
            ino,
            boot,
        }
    }
}

impl Vfs for SimFs {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn VFile>> {
        let mut st = self.st.lock();
        st.alive()?;
        st.parent_exists(path)?;
        let boot = st.boot;
        let existing = st.names.get(path).copied();
        let ino = match (existing, mode) {
            (Some(ino), OpenMode::Truncate) => {
                st.tick()?;
                let inode = st.inodes.get_mut(&ino).ok_or_else(|| not_found(path))?;
                inode.data.clear();
                inode.pending.push(Pending::SetLen(0));
                ino
            }
            (Some(ino), _) => ino,
            (None, OpenMode::Existing) => return Err(not_found(path)),
            (None, _) => {
                st.tick()?;
                st.next_ino += 1;
                let ino = st.next_ino;
                st.inodes.insert(ino, Inode::default());
                st.names.insert(path.to_path_buf(), ino);
                ino
            }
        };
        drop(st);
        Ok(Box::new(self.handle(ino, boot)))
    }

    fn exists(&self, path: &Path) -> bool {
        let st = self.st.lock();
        st.names.contains_key(path) || st.dirs.contains(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let st = self.st.lock();
        st.alive()?;
        if !st.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        // Files and subdirectories, as `read_dir` lists them.
        Ok(st
            .names
            .keys()
            .chain(st.dirs.iter())
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
            .collect())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.st.lock();
        st.alive()?;
        st.parent_exists(to)?;
        if st.dirs.contains(from) {
            // A directory moves with everything in it, at once and durably (directories are
            // durable at once here: see the module's documentation).
            st.tick()?;
            let moved = |p: &PathBuf| match p.strip_prefix(from) {
                Ok(rest) if rest.as_os_str().is_empty() => to.to_path_buf(),
                Ok(rest) => to.join(rest),
                Err(_) => p.clone(),
            };
            st.dirs = st.dirs.iter().map(moved).collect();
            st.names = st.names.iter().map(|(p, i)| (moved(p), *i)).collect();
            st.durable = st.durable.iter().map(|(p, i)| (moved(p), *i)).collect();
            return Ok(());
        }
        if !st.names.contains_key(from) {
            return Err(not_found(from));
        }
        st.tick()?;
        let ino = st.names.remove(from).ok_or_else(|| not_found(from))?;
        st.names.insert(to.to_path_buf(), ino);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut st = self.st.lock();
        st.alive()?;
        if !st.names.contains_key(path) {
            return Err(not_found(path));
        }
        st.tick()?;
        st.names.remove(path);
        Ok(())
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut st = self.st.lock();
        st.alive()?;
        if !st.dirs.contains(path) {
            return Err(not_found(path));
        }
        st.tick()?;
        st.names.retain(|p, _| !p.starts_with(path));
        st.durable.retain(|p, _| !p.starts_with(path));
        st.dirs.retain(|p| !p.starts_with(path));
        Ok(())
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut st = self.st.lock();
        st.alive()?;
        for a in path.ancestors() {
            if a.as_os_str().is_empty() {
                continue;
            }
            if st.names.contains_key(a) {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{}: a file", a.display()),
                ));
            }
            st.dirs.insert(a.to_path_buf());
        }
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.st.lock();
        st.alive()?;
        if !st.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        st.tick()?;
        let st = &mut *st;
        st.durable.retain(|p, _| p.parent() != Some(dir));
        for (p, ino) in &st.names {
            if p.parent() == Some(dir) {
                st.durable.insert(p.clone(), *ino);
            }
        }
        Ok(())
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn Any + Send + Sync>> {
        let mut st = self.st.lock();
        st.alive()?;
        if !st.locks.insert(path.to_path_buf()) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(Box::new(SimLock {
            fs: self.clone(),
            path: path.to_path_buf(),
            boot: st.boot,
        }))
    }

    fn is_real(&self) -> bool {
        false
    }
}

struct SimLock {
    fs: SimFs,
    path: PathBuf,
    boot: u64,
}

impl Drop for SimLock {
    fn drop(&mut self) {
        let mut st = self.fs.st.lock();
        // A restart released every lock of the boot before.
        if st.boot == self.boot {
            st.locks.remove(&self.path);
        }
    }
}

/// An open file of a [`SimFs`].
struct SimFile {
    fs: SimFs,
    ino: u64,
    boot: u64,
}

impl SimFile {
    /// Runs `f` on the file's inode, if the file system is powered and this handle is of the
    /// current boot; `tick`: the operation mutates (and counts towards a planned cut).
    fn with<T>(&self, tick: bool, f: impl FnOnce(&mut Inode) -> io::Result<T>) -> io::Result<T> {
        let mut st = self.fs.st.lock();
        st.alive()?;
        if st.boot != self.boot {
            return Err(eio());
        }
        if tick {
            st.tick()?;
        }
        // A removed file stays readable and writable through its open handles, as on Unix.
        let inode = st.inodes.get_mut(&self.ino).ok_or_else(eio)?;
        f(inode)
    }
}

impl VFile for SimFile {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.with(false, |i| {
            let end = offset
                .checked_add(buf.len() as u64)
                .filter(|&e| e <= i.data.len() as u64)
                .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
            buf.copy_from_slice(&i.data[offset as usize..end as usize]);
            Ok(())
        })
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.with(true, |i| {
            let end = (offset as usize)
                .checked_add(buf.len())
                .ok_or_else(|| io::Error::other("write past the largest file"))?;
            if i.data.len() < end {
                i.data.resize(end, 0);
            }
            i.data[offset as usize..end].copy_from_slice(buf);
            i.pending.push(Pending::Write(offset, buf.to_vec()));
            Ok(())
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        self.with(true, |i| {
            i.synced.clone_from(&i.data);
            i.pending.clear();
            Ok(())
        })
    }

    fn sync_all(&self) -> io::Result<()> {
        self.sync_data()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.with(true, |i| {
            i.data.resize(
                usize::try_from(len).map_err(|_| io::Error::other("file too large"))?,
                0,
            );
            i.pending.push(Pending::SetLen(len));
            Ok(())
        })
    }

    fn len(&self) -> io::Result<u64> {
        self.with(false, |i| Ok(i.data.len() as u64))
    }

    fn fd(&self) -> Option<RawFd> {
        None
    }

    fn map(&self) -> io::Result<Mapping> {
        self.with(false, |i| Ok(Mapping::Copy(i.data.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(fs: &SimFs, p: &str) -> Option<Vec<u8>> {
        fs.read(Path::new(p)).ok()
    }

    #[test]
    fn a_power_cut_keeps_what_was_synced_and_names_whose_directory_was_synced() {
        // Across seeds, the unsynced write is dropped by some and kept by others.
        let mut saw_none = false;
        let mut saw_all = false;
        for seed in 0..64 {
            let fs2 = SimFs::new();
            // Replay the same history on a fresh file system for each seed.
            fs2.create_dir_all(Path::new("/d")).unwrap();
            let f = fs2.open(Path::new("/d/a"), OpenMode::Create).unwrap();
            f.write_all_at(b"synced", 0).unwrap();
            f.sync_data().unwrap();
            fs2.sync_dir(Path::new("/d")).unwrap();
            f.write_all_at(b"SYNCED, then more", 0).unwrap();
            let g = fs2.open(Path::new("/d/b"), OpenMode::Create).unwrap();
            g.write_all_at(b"never named durably", 0).unwrap();
            g.sync_data().unwrap();
            fs2.rename(Path::new("/d/a"), Path::new("/d/c")).unwrap();
            fs2.restart(seed);
            // The rename and the new file were never made durable by a directory sync.
            assert!(read_all(&fs2, "/d/b").is_none());
            assert!(read_all(&fs2, "/d/c").is_none());
            let a = read_all(&fs2, "/d/a").expect("the synced name survives");
            // Old handles are dead.
            assert!(f.write_all_at(b"x", 0).is_err());
            match &a[..] {
                b"synced" => saw_none = true,
                b"SYNCED, then more" => saw_all = true,
                // Torn: every sector is one of the two versions (here one sector).
                other => panic!("a write of one sector came back as {other:?}"),
            }
        }
        assert!(saw_none && saw_all, "both outcomes occur across seeds");
    }

    #[test]
    fn a_planned_cut_fails_that_operation_and_every_later_one() {
        let fs = SimFs::new();
        fs.create_dir_all(Path::new("/d")).unwrap();
        let f = fs.open(Path::new("/d/a"), OpenMode::Create).unwrap();
        fs.cut_power_after(1);
        f.write_all_at(b"one", 0).unwrap();
        assert!(f.write_all_at(b"two", 3).is_err());
        assert!(f.read_exact_at(&mut [0; 3], 0).is_err());
        assert!(fs.is_off());
        fs.restart(7);
        assert!(!fs.is_off());
        // Nothing was synced: the file is empty (its name was never synced either).
        assert!(read_all(&fs, "/d/a").is_none());
    }

    #[test]
    fn a_torn_write_is_made_of_whole_sectors_of_either_version() {
        for seed in 0..32 {
            let fs = SimFs::new();
            fs.create_dir_all(Path::new("/d")).unwrap();
            let f = fs.open(Path::new("/d/a"), OpenMode::Create).unwrap();
            f.write_all_at(&[1u8; 4096], 0).unwrap();
            f.sync_data().unwrap();
            fs.sync_dir(Path::new("/d")).unwrap();
            f.write_all_at(&[2u8; 4096], 0).unwrap();
            fs.restart(seed);
            let a = read_all(&fs, "/d/a").unwrap();
            assert_eq!(a.len(), 4096);
            for s in a.chunks(512) {
                assert!(s.iter().all(|&b| b == s[0]) && (s[0] == 1 || s[0] == 2));
            }
        }
    }
}
