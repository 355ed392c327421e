//! Identity newtypes: an LSN, a page id and an epoch are never bare `u64`s.

use std::fmt;

/// Log sequence number: a byte position in the WAL stream. Until the WAL exists it is the
/// commit sequence number; either way it grows with every commit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

/// Index of a page in the page file (byte offset = id × `PAGE_SIZE`). Page 0 is the meta page,
/// so 0 doubles as "no page" in links.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PageId(pub u64);

impl PageId {
    pub const NONE: PageId = PageId(0);

    #[inline]
    pub fn is_none(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for PageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
