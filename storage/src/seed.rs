//! Laying down a replica's directory from a base backup: the primary's page file as copied,
//! and a control file that points recovery at the backup's redo LSN. The replica then opens it
//! (`Options::replica`) and applies the primary's WAL from that LSN on, which repairs whatever
//! the copy caught mid-change.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::control::{Control, CONTROL_FILE};
use crate::db::{Options, PAGE_FILE, WAL_DIR};
use crate::error::{Error, Result};
use crate::page::PAGE_SIZE;
use crate::types::Lsn;
use crate::vfs::{OpenMode, VFile, Vfs};

/// A directory being seeded. Nothing in it counts as a database until `finish` writes the
/// control file; a seeding cut short is simply started again.
pub struct Seeder {
    vfs: Arc<dyn Vfs>,
    dir: PathBuf,
    file: Box<dyn VFile>,
    redo: Lsn,
    segment_bytes: u64,
    written: u64,
}

impl Seeder {
    /// Clears `dir` of any unfinished seeding (or refuses if it holds a database) and starts
    /// a new one for a backup whose WAL must be replayed from `redo`.
    pub fn create(dir: &Path, redo: Lsn, options: &Options) -> Result<Seeder> {
        let vfs = options.vfs.clone();
        vfs.create_dir_all(dir)?;
        if vfs.exists(&dir.join(CONTROL_FILE)) {
            return Err(Error::Incompatible {
                path: dir.to_path_buf(),
                reason: "already holds a database; seeding needs a new directory".into(),
            });
        }
        let wal = dir.join(WAL_DIR);
        if vfs.exists(&wal) {
            vfs.remove_dir_all(&wal)?;
        }
        vfs.create_dir_all(&wal)?;
        let file = vfs.open(&dir.join(PAGE_FILE), OpenMode::Truncate)?;
        Ok(Seeder {
            vfs,
            dir: dir.to_path_buf(),
            file,
            redo,
            segment_bytes: options.wal_segment_bytes.clamp(64 * 1024, 1 << 30),
            written: 0,
        })
    }

    /// Writes backup pages starting at page `first` (`bytes` is whole pages).
    pub fn write_pages(&mut self, first: u64, bytes: &[u8]) -> Result<()> {
        if !bytes.len().is_multiple_of(PAGE_SIZE) {
            return Err(Error::Incompatible {
                path: self.dir.clone(),
                reason: format!("a backup chunk of {} bytes is not whole pages", bytes.len()),
            });
        }
        self.file.write_all_at(bytes, first * PAGE_SIZE as u64)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Makes the copy durable and writes the control file: from now on the directory is a
    /// database whose recovery starts at the backup's redo LSN. `epochs` is the primary's
    /// epoch history (epochs after the first, with their start LSNs): the copy is on its
    /// latest epoch.
    pub fn finish(self, epochs: &[(u32, Lsn)]) -> Result<()> {
        self.file.sync_all()?;
        crate::control::store_epochs(&*self.vfs, &self.dir, epochs)?;
        self.vfs.sync_dir(&self.dir)?;
        let c = Control {
            redo_lsn: self.redo,
            checkpoint_lsn: self.redo,
            segment_bytes: self.segment_bytes,
            node_id: crate::db::random_node_id(),
            epoch: epochs.last().map_or(1, |(e, _)| *e),
            flags: 0,
        };
        c.store(&*self.vfs, &self.dir)
    }
}
