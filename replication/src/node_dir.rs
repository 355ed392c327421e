//! The data directory's files that say what a node is, beside the database's own (the page
//! file, `wal/`, and the control and epochs files that `storage` keeps):
//!
//! | file               | holds                                              | written when |
//! |--------------------|----------------------------------------------------|--------------|
//! | `replicaof`        | HOST:PORT of the primary a `REPLICAOF` named       | `REPLICAOF`; removed at promotion |
//! | `consistent_at`    | `pending`, or the LSN a seeded replica is consistent from | a seed or swap-in; removed once reached |
//! | `reseed-<ms>/`     | a base backup being laid down (`live` inside: swapped in) | a reseed or rewind; moved into place at the next start |
//!
//! Every file is replaced by `storage::durable::replace_file_in` (write, fsync, rename, fsync the
//! directory), so a crash leaves the old or the new one. The gate fails closed: a gate file
//! that cannot be read or parsed holds reads back, and a gate that cannot be written fails the
//! seed or swap that needed it.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use std::sync::Arc;
use storage::durable;
use storage::vfs::{RealFs, Vfs};

/// The file that remembers, across restarts, which primary a node follows when it became a
/// replica by `REPLICAOF` (a `--replicaof` flag names it too and wins).
pub const ROLE_FILE: &str = "replicaof";

/// The file that holds a seeded replica's consistency point until it is reached: `pending`
/// (the copy is done, the point not known yet) or an LSN.
pub const GATE_FILE: &str = "consistent_at";

/// Prefix of the directories a replica reseeds or rewinds into (inside its data directory).
const RESEED_PREFIX: &str = "reseed-";

/// Marks a reseed directory whose database was swapped in (the live data of the node).
const LIVE_MARKER: &str = "live";

/// The gate's value while the consistency point is not known yet.
const PENDING: u64 = u64::MAX;

/// A node's data directory (on the file system its database uses).
#[derive(Clone, Debug)]
pub struct NodeDir {
    path: PathBuf,
    vfs: Arc<dyn Vfs>,
}

impl NodeDir {
    /// The directory `path` on the operating system's file system.
    pub fn new(path: PathBuf) -> NodeDir {
        NodeDir::on(Arc::new(RealFs), path)
    }

    /// The directory `path` on `vfs` (a simulated file system in power-loss tests).
    pub fn on(vfs: Arc<dyn Vfs>, path: PathBuf) -> NodeDir {
        NodeDir { path, vfs }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a database was created here (its control file exists).
    pub fn has_database(&self) -> bool {
        self.vfs.exists(&self.path.join(storage::CONTROL_FILE))
    }

    /// The primary this directory was last told to follow, if any.
    pub fn load_role(&self) -> Option<String> {
        self.vfs
            .read(&self.path.join(ROLE_FILE))
            .ok()
            .map(|b| String::from_utf8_lossy(&b).trim().to_string())
            .filter(|s| !s.is_empty())
    }

    /// Remembers the primary to follow (`None`: this node is a primary).
    pub fn store_role(&self, primary: Option<&str>) -> io::Result<()> {
        match primary {
            Some(p) => durable::replace_file_in(
                &*self.vfs,
                &self.path,
                ROLE_FILE,
                format!("{p}\n").as_bytes(),
            ),
            None => durable::remove_file_in(&*self.vfs, &self.path, ROLE_FILE).map(|_| ()),
        }
    }

    /// A new directory for a reseed or rewind backup.
    pub fn new_side_dir(&self) -> PathBuf {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        self.path.join(format!("{RESEED_PREFIX}{ms}"))
    }

    /// Marks `side`'s backup as the node's data: the next start moves it into place.
    pub fn mark_live(&self, side: &Path) -> io::Result<()> {
        let marker = side.join(LIVE_MARKER);
        let r = self
            .vfs
            .open(&marker, storage::vfs::OpenMode::Truncate)
            .and_then(|_| self.vfs.sync_dir(side));
        if r.is_err() {
            let _ = self.vfs.remove_file(&marker);
        }
        r
    }

    /// Before a node opens its database: if a reseed or rewind swapped in a backup in a
    /// previous run (`DIR/reseed-<ms>/` with its `live` marker), that backup replaces the data
    /// in `DIR`; other reseed directories (cut short, or never swapped in) are removed.
    /// Restartable: the control file goes first and comes back last, each other file moves
    /// only if it is still in the backup, so a crash at any point leaves either the old data,
    /// a directory that seeds itself anew, or a move this function finishes next time.
    pub fn finish_reseed(&self) -> io::Result<()> {
        let (dir, vfs) = (&self.path, &*self.vfs);
        let Ok(names) = vfs.list(dir) else {
            return Ok(());
        };
        let mut sides: Vec<PathBuf> = names
            .iter()
            .filter(|n| n.starts_with(RESEED_PREFIX))
            .map(|n| dir.join(n))
            .collect();
        sides.sort();
        let newest = sides
            .iter()
            .rev()
            .find(|p| vfs.exists(&p.join(LIVE_MARKER)))
            .cloned();
        if let Some(side) = &newest {
            tracing::info!(from = %side.display(), "finishing a reseed: the backup replaces the old data");
            if vfs.exists(&side.join(storage::CONTROL_FILE)) {
                let _ = vfs.remove_file(&dir.join(storage::CONTROL_FILE));
            }
            for name in [storage::PAGE_FILE, storage::EPOCHS_FILE] {
                if vfs.exists(&side.join(name)) {
                    let _ = vfs.remove_file(&dir.join(name));
                    vfs.rename(&side.join(name), &dir.join(name))?;
                }
            }
            if vfs.exists(&side.join(storage::WAL_DIR)) {
                let _ = vfs.remove_dir_all(&dir.join(storage::WAL_DIR));
                vfs.rename(&side.join(storage::WAL_DIR), &dir.join(storage::WAL_DIR))?;
            }
            if vfs.exists(&side.join(storage::CONTROL_FILE)) {
                vfs.rename(
                    &side.join(storage::CONTROL_FILE),
                    &dir.join(storage::CONTROL_FILE),
                )?;
            }
            vfs.sync_dir(dir)?;
        }
        for side in sides {
            vfs.remove_dir_all(&side)?;
        }
        Ok(())
    }

    /// Writes (or, with `None`, removes) the gate file.
    pub fn store_gate(&self, gate: Option<u64>) -> io::Result<()> {
        let vfs = &*self.vfs;
        match gate {
            Some(PENDING) => durable::replace_file_in(vfs, &self.path, GATE_FILE, b"pending\n"),
            Some(g) => {
                durable::replace_file_in(vfs, &self.path, GATE_FILE, format!("{g}\n").as_bytes())
            }
            None => durable::remove_file_in(vfs, &self.path, GATE_FILE).map(|_| ()),
        }
    }

    /// The gate file's value (0: none). Fails closed: a file that cannot be read or parsed
    /// is a gate whose point is not known (reads wait until the link sets it).
    pub fn load_gate(&self) -> u64 {
        match self.vfs.read(&self.path.join(GATE_FILE)) {
            Ok(s) => String::from_utf8_lossy(&s)
                .trim()
                .parse()
                .unwrap_or(PENDING),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the consistency gate file: reads wait until the primary names the point again");
                PENDING
            }
        }
    }
}

/// A seeded replica's consistency gate: before its apply LSN reaches the point, its pages
/// may be as the copy caught them, mid-change, and reads are refused (`-LOADING`). Mirrored
/// in the gate file so a restart keeps it.
pub struct Gate {
    /// The point (0: none; `PENDING`: not known yet).
    target: AtomicU64,
    /// Serialises changes of the file with `target`.
    lock: Mutex<()>,
}

impl Gate {
    pub fn load(dir: &NodeDir) -> Gate {
        Gate {
            target: AtomicU64::new(dir.load_gate()),
            lock: Mutex::new(()),
        }
    }

    /// Closes the gate until the point is known: memory first, then the file. An error means
    /// a restart would not find the gate: the caller must not go on (a seed or swap fails).
    pub fn close_pending(&self, dir: &NodeDir) -> io::Result<()> {
        let _g = self.lock.lock();
        self.target.store(PENDING, Ordering::SeqCst);
        dir.store_gate(Some(PENDING))
    }

    /// The primary's position is known (its welcome): consistent once `primary_flush` is
    /// applied, or now if it already is (a gate of 0 would mean "none", and no replay would
    /// lift a gate above what is applied).
    pub fn resolve(&self, dir: &NodeDir, applied: u64, primary_flush: u64) -> io::Result<()> {
        let _g = self.lock.lock();
        if self.target.load(Ordering::SeqCst) != PENDING {
            return Ok(());
        }
        let gate = (applied < primary_flush).then_some(primary_flush);
        // The file first: if it cannot be written the gate stays pending (closed).
        dir.store_gate(gate)?;
        self.target.store(gate.unwrap_or(0), Ordering::SeqCst);
        Ok(())
    }

    /// `Some((applied, target))` while reads must wait; lifts the gate (and removes its file)
    /// once the apply LSN (`applied()`, read again under the gate's lock before it is lifted:
    /// a database swapped in meanwhile must not be judged by the old one's LSN) reaches it.
    pub fn check(&self, dir: &NodeDir, applied: &dyn Fn() -> u64) -> Option<(u64, u64)> {
        let target = self.target.load(Ordering::SeqCst);
        if target == 0 {
            return None;
        }
        let at = applied();
        if at < target {
            return Some((at, target));
        }
        // Only this gate: a new one set meanwhile (another swap) stays, in memory and on disk.
        let _g = self.lock.lock();
        let at = applied();
        let target = self.target.load(Ordering::SeqCst);
        if target == 0 {
            return None;
        }
        if at < target {
            return Some((at, target));
        }
        self.target.store(0, Ordering::SeqCst);
        // A file left behind is harmless: after a restart it is reached again at once, or
        // later if the restart recovered less than was applied (it then holds reads back
        // until the replica is past it again, which is right).
        if let Err(e) = dir.store_gate(None) {
            tracing::warn!(error = %e, "could not remove the consistency gate file");
        }
        tracing::info!(lsn = at, "consistent after the base backup: serving reads");
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_survives_a_restart_and_fails_closed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = NodeDir::new(tmp.path().to_path_buf());
        let gate = Gate::load(&dir);
        let at = |n: u64| move || n;
        assert_eq!(gate.check(&dir, &at(0)), None, "no file: no gate");
        gate.close_pending(&dir).unwrap();
        assert_eq!(gate.check(&dir, &at(500)), Some((500, PENDING)));
        // Restart before the point is known: still closed.
        assert_eq!(Gate::load(&dir).check(&dir, &at(500)), Some((500, PENDING)));
        gate.resolve(&dir, 100, 700).unwrap();
        assert_eq!(Gate::load(&dir).check(&dir, &at(600)), Some((600, 700)));
        // Judged by the apply LSN as it stands under the lock: one that went back (another
        // database swapped in) keeps the gate closed.
        let calls = std::cell::Cell::new(0u64);
        let backwards = || {
            calls.set(calls.get() + 1);
            if calls.get() == 1 {
                700
            } else {
                5
            }
        };
        assert_eq!(gate.check(&dir, &backwards), Some((5, 700)));
        assert_eq!(gate.check(&dir, &at(700)), None);
        assert!(!tmp.path().join(GATE_FILE).exists());
        // Garbage in the file: closed, not open.
        std::fs::write(tmp.path().join(GATE_FILE), "what\n").unwrap();
        assert_eq!(Gate::load(&dir).check(&dir, &at(10)), Some((10, PENDING)));
        // A gate that cannot be written fails the caller, and stays closed in memory.
        let gone = NodeDir::new(tmp.path().join("missing"));
        let g = Gate::load(&gone);
        assert!(g.close_pending(&gone).is_err());
        assert!(g.check(&gone, &at(1)).is_some());
        // Already applied when the point is learned: open at once.
        let g2 = Gate::load(&dir);
        std::fs::remove_file(tmp.path().join(GATE_FILE)).unwrap();
        g2.close_pending(&dir).unwrap();
        g2.resolve(&dir, 900, 900).unwrap();
        assert_eq!(g2.check(&dir, &at(900)), None);
    }

    #[test]
    fn the_role_file_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = NodeDir::new(tmp.path().to_path_buf());
        assert_eq!(dir.load_role(), None);
        dir.store_role(Some("127.0.0.1:6380")).unwrap();
        assert_eq!(dir.load_role().as_deref(), Some("127.0.0.1:6380"));
        dir.store_role(None).unwrap();
        assert_eq!(dir.load_role(), None);
    }
}
