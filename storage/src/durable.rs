//! The one way a node replaces a small metadata file (control, epochs, and the replication
//! layer's gate, role and reseed markers): write a temporary file, fsync it, rename it over
//! the old one, fsync the directory. After a crash at any point the file is either the old
//! one or the new one, never a mix, and once this returns the new one survives a power loss
//! (the rename is durable only once its directory is synced — see docs/wal.md, "What the
//! disk promises").

use std::io;
use std::path::Path;

use crate::vfs::{OpenMode, RealFs, Vfs};

/// Replaces `dir/name` with `bytes`, atomically and durably.
pub fn replace_file(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    replace_file_in(&RealFs, dir, name, bytes)
}

/// `replace_file` on the file system `vfs`.
pub fn replace_file_in(vfs: &dyn Vfs, dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let f = vfs.open(&tmp, OpenMode::Truncate)?;
    f.write_all_at(bytes, 0)?;
    f.sync_all()?;
    drop(f);
    vfs.rename(&tmp, &dir.join(name))?;
    vfs.sync_dir(dir)
}

/// Removes `dir/name` if it exists, durably. Returns whether it existed.
pub fn remove_file(dir: &Path, name: &str) -> io::Result<bool> {
    remove_file_in(&RealFs, dir, name)
}

/// `remove_file` on the file system `vfs`.
pub fn remove_file_in(vfs: &dyn Vfs, dir: &Path, name: &str) -> io::Result<bool> {
    match vfs.remove_file(&dir.join(name)) {
        Ok(()) => {
            vfs.sync_dir(dir)?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Makes the directory's entries (creations, renames, removals) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    RealFs.sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn a_replaced_file_holds_the_new_bytes_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        replace_file(dir.path(), "f", b"one").unwrap();
        replace_file(dir.path(), "f", b"two").unwrap();
        assert_eq!(fs::read(dir.path().join("f")).unwrap(), b"two");
        assert!(!dir.path().join("f.tmp").exists());
        assert!(remove_file(dir.path(), "f").unwrap());
        assert!(!remove_file(dir.path(), "f").unwrap());
        // A directory that is not there is an error, not a silent success.
        assert!(replace_file(&dir.path().join("missing"), "f", b"x").is_err());
    }
}
