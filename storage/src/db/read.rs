//! Reading: snapshots (`ReadTxn`, which sees whole batches only) and ranges over them, and
//! `Db::range`, which fetches owned entries in chunks so no lock is held between them.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::ops::{Bound, RangeBounds};

use parking_lot::RwLockReadGuard;

use super::Db;
use crate::btree;
use crate::cursor::Cursor;
use crate::error::Result;
use crate::pager::{PageSource, Published};
use crate::types::{Lsn, PageId};

impl Db {
    /// A consistent snapshot for several reads. It holds the reader lock: while it lives,
    /// commits can be prepared but not published, so keep it short.
    pub fn read(&self) -> ReadTxn<'_> {
        ReadTxn {
            g: self.inner.state.read(),
        }
    }

    /// An ordered iterator over `range` (both directions). It reads in chunks, each from one
    /// consistent state, and does not hold up writers between chunks: every key present for
    /// the whole iteration is yielded exactly once, in order.
    pub fn range<'a, R: RangeBounds<&'a [u8]>>(&self, range: R) -> Range<'_> {
        Range {
            db: self,
            lower: own_bound(range.start_bound()),
            upper: own_bound(range.end_bound()),
            front: VecDeque::new(),
            back: VecDeque::new(),
            exhausted: false,
        }
    }
}

fn own_bound(b: Bound<&&[u8]>) -> Bound<Vec<u8>> {
    match b {
        Bound::Included(k) => Bound::Included(k.to_vec()),
        Bound::Excluded(k) => Bound::Excluded(k.to_vec()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

fn as_ref_bound(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(k) => Bound::Included(k.as_slice()),
        Bound::Excluded(k) => Bound::Excluded(k.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// A read-only snapshot (see `Db::read`).
pub struct ReadTxn<'db> {
    g: RwLockReadGuard<'db, Published>,
}

impl ReadTxn<'_> {
    pub fn get(&self, key: &[u8]) -> Result<Option<Cow<'_, [u8]>>> {
        btree::get(&*self.g, self.g.meta.root, key)
    }

    pub fn len(&self) -> u64 {
        self.g.meta.entries
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn last_lsn(&self) -> Lsn {
        self.g.last_lsn
    }

    /// A digest of every page (0 .. page_count) in page order, as of this snapshot, and the
    /// LSN it reflects. Two nodes that applied the same log print the same digest: it is
    /// how replicas are checked against their primary. (The checksum field is left out:
    /// pages in memory carry none until they are written.)
    pub fn digest(&self) -> (Lsn, u64) {
        let g = &self.g;
        let (mut a, mut b) = (0u32, 0x9e37_79b9u32);
        for i in 0..g.meta.page_count {
            let p = g.page_raw(PageId(i));
            a = crc32c::crc32c_append(a, &p[4..]);
            b = crc32c::crc32c_append(b, &i.to_le_bytes());
            b = crc32c::crc32c_append(b, &a.to_le_bytes());
        }
        (g.last_lsn, (u64::from(a) << 32) | u64::from(b))
    }

    /// Calls `f` on each entry inside (`lower`, `upper`) in key order (descending if
    /// `reverse`) until it returns false.
    pub fn visit(
        &self,
        lower: Bound<&[u8]>,
        upper: Bound<&[u8]>,
        reverse: bool,
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        visit(&*self.g, self.g.meta.root, lower, upper, reverse, f)
    }

    /// Ordered iteration over `range` within this snapshot; entries borrow from the pages
    /// where they can.
    pub fn range<'a, R: RangeBounds<&'a [u8]>>(&self, range: R) -> Result<TxnRange<'_>> {
        let src: &Published = &self.g;
        let root = src.meta.root;
        let lower = range.start_bound().map(|k| *k);
        let upper = range.end_bound().map(|k| *k);
        let front = Cursor::seek_first(src, root, lower)?;
        let back = Cursor::seek_last(src, root, upper)?;
        let mut done = !front.is_valid() || !back.is_valid();
        if !done {
            let (fk, _) = front.entry();
            let (bk, _) = back.entry();
            let fk = btree::load_key(src, fk)?;
            let bk = btree::load_key(src, bk)?;
            done = fk > bk;
        }
        Ok(TxnRange {
            src,
            front,
            back,
            done,
        })
    }
}

/// Calls `f` on each entry inside (`lower`, `upper`) in key order (descending if `reverse`)
/// until it returns false: the scan of `ReadTxn::visit` and `WriteTxn::visit`, with no
/// allocation per entry for keys and values that fit in their leaf.
pub(crate) fn visit<S: PageSource>(
    src: &S,
    root: PageId,
    lower: Bound<&[u8]>,
    upper: Bound<&[u8]>,
    reverse: bool,
    f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
) -> Result<()> {
    let inside_upper = |k: &[u8]| match upper {
        Bound::Included(u) => k <= u,
        Bound::Excluded(u) => k < u,
        Bound::Unbounded => true,
    };
    let inside_lower = |k: &[u8]| match lower {
        Bound::Included(l) => k >= l,
        Bound::Excluded(l) => k > l,
        Bound::Unbounded => true,
    };
    let mut c = if reverse {
        Cursor::seek_last(src, root, upper)?
    } else {
        Cursor::seek_first(src, root, lower)?
    };
    while c.is_valid() {
        let (k, v) = c.entry();
        let k = btree::load_key(src, k)?;
        let inside = if reverse {
            inside_lower(&k)
        } else {
            inside_upper(&k)
        };
        if !inside {
            break;
        }
        let v = btree::load_value(src, v)?;
        if !f(&k, &v) {
            break;
        }
        if reverse {
            c.prev(src)?;
        } else {
            c.next(src)?;
        }
    }
    Ok(())
}

/// Iterator of a `ReadTxn::range`.
pub struct TxnRange<'t> {
    src: &'t Published,
    front: Cursor<'t>,
    back: Cursor<'t>,
    done: bool,
}

pub type Entry<'t> = (Cow<'t, [u8]>, Cow<'t, [u8]>);

impl<'t> TxnRange<'t> {
    fn take(&mut self, from_front: bool) -> Result<Entry<'t>> {
        let c = if from_front { &self.front } else { &self.back };
        let (k, v) = c.entry();
        let out = (
            btree::load_key(self.src, k)?,
            btree::load_value(self.src, v)?,
        );
        if self.front.position() == self.back.position() {
            self.done = true;
        } else if from_front {
            self.front.next(self.src)?;
        } else {
            self.back.prev(self.src)?;
        }
        Ok(out)
    }
}

impl<'t> Iterator for TxnRange<'t> {
    type Item = Result<Entry<'t>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let r = self.take(true);
        if r.is_err() {
            self.done = true;
        }
        Some(r)
    }
}

impl DoubleEndedIterator for TxnRange<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let r = self.take(false);
        if r.is_err() {
            self.done = true;
        }
        Some(r)
    }
}

/// Entries fetched per reader-lock acquisition by `Range`.
const RANGE_CHUNK: usize = 512;

/// Iterator of `Db::range`: owned entries, fetched in chunks.
pub struct Range<'db> {
    db: &'db Db,
    /// Not yet fetched: keys inside (lower, upper).
    lower: Bound<Vec<u8>>,
    upper: Bound<Vec<u8>>,
    front: VecDeque<(Vec<u8>, Vec<u8>)>,
    back: VecDeque<(Vec<u8>, Vec<u8>)>,
    exhausted: bool,
}

impl Range<'_> {
    /// Fetches the next chunk from the front (or back) of the unfetched interval.
    fn fill(&mut self, from_front: bool) -> Result<()> {
        let mut got = Vec::new();
        {
            let txn = self.db.read();
            let it = txn.range::<(Bound<&[u8]>, Bound<&[u8]>)>((
                as_ref_bound(&self.lower),
                as_ref_bound(&self.upper),
            ))?;
            if from_front {
                for e in it.take(RANGE_CHUNK) {
                    let (k, v) = e?;
                    got.push((k.into_owned(), v.into_owned()));
                }
            } else {
                for e in it.rev().take(RANGE_CHUNK) {
                    let (k, v) = e?;
                    got.push((k.into_owned(), v.into_owned()));
                }
            }
        }
        if got.len() < RANGE_CHUNK {
            self.exhausted = true;
        }
        if let Some((k, _)) = got.last() {
            if from_front {
                self.lower = Bound::Excluded(k.clone());
            } else {
                self.upper = Bound::Excluded(k.clone());
            }
        }
        if from_front {
            self.front.extend(got);
        } else {
            self.back.extend(got);
        }
        Ok(())
    }
}

impl Iterator for Range<'_> {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.front.is_empty() && !self.exhausted {
            if let Err(e) = self.fill(true) {
                self.exhausted = true;
                return Some(Err(e));
            }
        }
        if let Some(e) = self.front.pop_front() {
            return Some(Ok(e));
        }
        // The back has fetched the rest (in descending order).
        self.back.pop_back().map(Ok)
    }
}

impl DoubleEndedIterator for Range<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        if self.back.is_empty() && !self.exhausted {
            if let Err(e) = self.fill(false) {
                self.exhausted = true;
                return Some(Err(e));
            }
        }
        if let Some(e) = self.back.pop_front() {
            return Some(Ok(e));
        }
        self.front.pop_back().map(Ok)
    }
}
