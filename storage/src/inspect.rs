//! A stopped data directory, read without opening it (nothing is written): its control
//! file, its epoch history, and its WAL's records (a backup's check before a restore).

use std::path::Path;

use crate::control::{self, Control};
use crate::error::{Error, Result};
use crate::types::Lsn;
use crate::vfs::{RealFs, Vfs};
use crate::wal::segment::{segment_name, SEGMENT_HEADER};

/// What a data directory's control and epochs files say.
#[derive(Clone, Debug)]
pub struct DirInfo {
    /// Where recovery would start.
    pub redo_lsn: Lsn,
    /// The last checkpoint record.
    pub checkpoint_lsn: Lsn,
    /// Its epoch.
    pub epoch: u32,
    /// Its history: (epoch, start) of every epoch after the first.
    pub epochs: Vec<(u32, Lsn)>,
    /// Stream bytes a WAL segment holds.
    pub segment_bytes: u64,
}

/// Reads `dir`'s control and epochs files; `Ok(None)` if it holds no database.
pub fn inspect(dir: &Path) -> Result<Option<DirInfo>> {
    let fs = RealFs;
    let Some(c): Option<Control> = Control::load(&fs, dir)? else {
        return Ok(None);
    };
    Ok(Some(DirInfo {
        redo_lsn: c.redo_lsn,
        checkpoint_lsn: c.checkpoint_lsn,
        epoch: c.epoch,
        epochs: control::load_epochs(&fs, dir)?,
        segment_bytes: c.segment_bytes,
    }))
}

/// The WAL stream bytes of a stopped directory from `from` on, across its segments, as far
/// as its segment files reach (zeros past the written end included: the caller decodes
/// records and stops at the first that is not one). At most `max` bytes.
pub fn read_wal_at(dir: &Path, info: &DirInfo, from: Lsn, max: usize) -> Result<Vec<u8>> {
    let fs = RealFs;
    let wal = dir.join(crate::db::WAL_DIR);
    let mut starts: Vec<u64> = std::fs::read_dir(&wal)?
        .filter_map(|e| {
            let name = e.ok()?.file_name().to_string_lossy().to_string();
            u64::from_str_radix(name.strip_suffix(".wal")?, 16).ok()
        })
        .collect();
    starts.sort_unstable();
    let seg = info.segment_bytes;
    let mut out = Vec::new();
    let mut at = from.0;
    while out.len() < max {
        // The segment holding `at`: the last to start at or before it (spares renamed for
        // reuse carry names past the log's end and are never reached from below).
        let Some(&start) = starts.iter().rev().find(|&&s| s <= at) else {
            break;
        };
        if at >= start + seg {
            break;
        }
        let path = wal.join(segment_name(start));
        let bytes = fs.read(&path)?;
        let off = (SEGMENT_HEADER + (at - start)) as usize;
        if off > bytes.len() {
            return Err(Error::Incompatible {
                path,
                reason: format!("shorter than the WAL position {at} needs"),
            });
        }
        let take = (bytes.len() - off).min(max - out.len());
        if take == 0 {
            break;
        }
        out.extend_from_slice(&bytes[off..off + take]);
        at += take as u64;
    }
    Ok(out)
}
