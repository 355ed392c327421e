//! The control file: the small piece of state that must be found without the WAL — where
//! recovery starts — plus the node's identity. Written whole to a temporary file, synced, and
//! renamed over the old one, so it is always either the old or the new version.
//!
//! ```text
//! DIR/control (64 bytes)
//! +0  crc             u32  crc32c of bytes 4..64
//! +4  format_version  u32  1
//! +8  magic           [u8; 8] "RDBCTRL\0"
//! +16 redo_lsn        u64  recovery replays the WAL from here (the last checkpoint's start)
//! +24 checkpoint_lsn  u64  LSN of that checkpoint's record
//! +32 segment_bytes   u64  WAL segment size, fixed when the database is created
//! +40 node_id         u64  random, chosen at creation
//! +48 epoch           u32  the current epoch (timeline), 1 at creation
//! +52 flags           u8   bit 0 OPEN: set while a process has the database open (found
//!                          set at open: the last run did not close cleanly); bit 1
//!                          RESUME_PENDING: an unclean stop has not yet been followed by a
//!                          resumed epoch (see `Db::open`)
//! +53 reserved        [u8; 11]
//! ```

use crate::vfs::Vfs;
use std::path::Path;

use crate::error::{Error, Result};
use crate::types::Lsn;

pub const CONTROL_FILE: &str = "control";
const SIZE: usize = 64;
const MAGIC: [u8; 8] = *b"RDBCTRL\0";
const VERSION: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Control {
    pub redo_lsn: Lsn,
    pub checkpoint_lsn: Lsn,
    pub segment_bytes: u64,
    pub node_id: u64,
    pub epoch: u32,
    /// `FLAG_OPEN` | `FLAG_RESUME_PENDING`.
    pub flags: u8,
}

/// Set while a process has the database open.
pub const FLAG_OPEN: u8 = 1;
/// An unclean stop of a primary not yet followed by a resumed epoch.
pub const FLAG_RESUME_PENDING: u8 = 2;

impl Control {
    pub fn encode(&self) -> [u8; SIZE] {
        let mut b = [0u8; SIZE];
        b[4..8].copy_from_slice(&VERSION.to_le_bytes());
        b[8..16].copy_from_slice(&MAGIC);
        b[16..24].copy_from_slice(&self.redo_lsn.0.to_le_bytes());
        b[24..32].copy_from_slice(&self.checkpoint_lsn.0.to_le_bytes());
        b[32..40].copy_from_slice(&self.segment_bytes.to_le_bytes());
        b[40..48].copy_from_slice(&self.node_id.to_le_bytes());
        b[48..52].copy_from_slice(&self.epoch.to_le_bytes());
        b[52] = self.flags;
        let crc = crc32c::crc32c(&b[4..]);
        b[..4].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> std::result::Result<Control, String> {
        if b.len() != SIZE {
            return Err(format!("{} bytes, expected {SIZE}", b.len()));
        }
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        if u32_at(0) != crc32c::crc32c(&b[4..]) {
            return Err("checksum mismatch".into());
        }
        if b[8..16] != MAGIC || u32_at(4) != VERSION {
            return Err("not a replidb control file of this version".into());
        }
        let c = Control {
            redo_lsn: Lsn(u64_at(16)),
            checkpoint_lsn: Lsn(u64_at(24)),
            segment_bytes: u64_at(32),
            node_id: u64_at(40),
            epoch: u32_at(48),
            flags: b[52] & (FLAG_OPEN | FLAG_RESUME_PENDING),
        };
        if c.epoch == 0 {
            return Err("epoch 0".into());
        }
        // Recovery reads a segment's worth of log at a time: a size read from a damaged file
        // must not size that buffer. (Segments are 16 MiB by default.)
        if c.segment_bytes < 64 * 1024 || c.segment_bytes > 1 << 30 {
            return Err(format!("implausible segment size {}", c.segment_bytes));
        }
        Ok(c)
    }

    /// Reads `DIR/control`; `Ok(None)` if there is none.
    pub fn load(vfs: &dyn Vfs, dir: &Path) -> Result<Option<Control>> {
        let path = dir.join(CONTROL_FILE);
        match vfs.read(&path) {
            Ok(b) => Control::decode(&b)
                .map(Some)
                .map_err(|reason| Error::Incompatible { path, reason }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Replaces `DIR/control` atomically and durably.
    pub fn store(&self, vfs: &dyn Vfs, dir: &Path) -> Result<()> {
        crate::durable::replace_file_in(vfs, dir, CONTROL_FILE, &self.encode())?;
        Ok(())
    }
}

/// The epochs file: one line `epoch start_lsn` per epoch after the first (which starts at 0),
/// replaced atomically like the control file.
pub const EPOCHS_FILE: &str = "epochs";

/// The most epochs a node's history holds (what a replication hello can carry). A history
/// that would pass it is refused: in the epochs file at open, and at a new epoch.
pub const MAX_EPOCHS: usize = 1024;

/// Reads the epochs file (empty if there is none: epoch 1 only).
pub(crate) fn load_epochs(vfs: &dyn Vfs, dir: &Path) -> Result<Vec<(u32, Lsn)>> {
    let path = dir.join(EPOCHS_FILE);
    let text = match vfs.read(&path) {
        Ok(t) => String::from_utf8(t).map_err(|_| Error::Incompatible {
            path: path.clone(),
            reason: "not text".into(),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let bad = |why: &str| Error::Incompatible {
        path: path.clone(),
        reason: why.to_string(),
    };
    let mut out: Vec<(u32, Lsn)> = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut it = line.split_whitespace();
        let (Some(e), Some(l), None) = (it.next(), it.next(), it.next()) else {
            return Err(bad("a line is not `epoch start_lsn`"));
        };
        let e: u32 = e.parse().map_err(|_| bad("an epoch is not a number"))?;
        let l: u64 = l.parse().map_err(|_| bad("an LSN is not a number"))?;
        out.push((e, Lsn(l)));
        if out.len() > MAX_EPOCHS {
            return Err(bad("more epochs than a history holds"));
        }
    }
    check_history(&out).map_err(|why| bad(&why))?;
    Ok(out)
}

/// Whether `h` can be an epoch history: entries after epoch 1's implicit `(1, 0)`, each
/// either a new epoch (a promotion: a greater number, from 2 up to `u32::MAX - 1`) or the
/// same epoch resumed at a later LSN (a primary's restart after an unclean stop); LSNs never
/// shrink; at most `MAX_EPOCHS` entries.
pub fn check_history(h: &[(u32, Lsn)]) -> std::result::Result<(), String> {
    if h.len() > MAX_EPOCHS {
        return Err(format!("{} epochs, more than a history holds", h.len()));
    }
    let mut prev = (1u32, Lsn(0));
    for &(e, l) in h {
        let grows = e > prev.0 || (e == prev.0 && l > prev.1);
        if !grows || l < prev.1 || e == u32::MAX {
            return Err(format!(
                "entry {e}@{l} after {}@{}: epochs must grow (or an epoch resume at a later \
                 LSN), LSNs must not shrink",
                prev.0, prev.1
            ));
        }
        prev = (e, l);
    }
    Ok(())
}

/// Replaces the epochs file (write, sync, rename, sync the directory).
pub(crate) fn store_epochs(vfs: &dyn Vfs, dir: &Path, epochs: &[(u32, Lsn)]) -> Result<()> {
    let mut text = String::new();
    for (e, l) in epochs {
        text.push_str(&format!("{e} {}\n", l.0));
    }
    crate::durable::replace_file_in(vfs, dir, EPOCHS_FILE, text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histories_grow_by_promotion_or_resume() {
        let ok = |h: &[(u32, u64)]| {
            let h: Vec<(u32, Lsn)> = h.iter().map(|&(e, l)| (e, Lsn(l))).collect();
            check_history(&h).is_ok()
        };
        assert!(ok(&[]));
        assert!(ok(&[(2, 100), (3, 200)]));
        assert!(ok(&[(1, 50), (2, 100), (2, 150), (3, 150)]));
        assert!(!ok(&[(1, 0)]), "epoch 1 starts at 0 already");
        assert!(!ok(&[(0, 10)]), "no epoch 0");
        assert!(!ok(&[(3, 100), (2, 200)]), "epochs never shrink");
        assert!(!ok(&[(2, 100), (2, 100)]), "a resume is at a later LSN");
        assert!(!ok(&[(2, 200), (3, 100)]), "LSNs never shrink");
        assert!(!ok(&[(u32::MAX, 1)]), "no epoch could follow");
    }

    #[test]
    fn the_flags_survive_encoding() {
        let c = Control {
            redo_lsn: Lsn(1),
            checkpoint_lsn: Lsn(2),
            segment_bytes: 1 << 20,
            node_id: 7,
            epoch: 3,
            flags: FLAG_OPEN | FLAG_RESUME_PENDING,
        };
        assert_eq!(Control::decode(&c.encode()), Ok(c));
    }
}
