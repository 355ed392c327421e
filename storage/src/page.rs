//! Page geometry, the common page header, checksums and the meta page.
//!
//! ```text
//! every page (4096 bytes)
//! +0  checksum      u32  crc32c of bytes 4..4096
//! +4  kind          u8   1 meta, 2 branch, 3 leaf, 4 overflow, 5 free-list trunk, 6 heap
//! +5  head_skip     u8   slotted pages: key bytes every key shares, skipped by key heads
//! +6  count         u16  cells (branch/leaf), bytes used (overflow), ids (trunk),
//!                        live bytes (heap)
//! +8  page_id       u64  this page's own id (catches misdirected writes)
//! +16 page_lsn      u64  LSN of the last change applied to this page
//! +24 link          u64  branch: leftmost child; overflow, heap: next page; trunk: next trunk
//! +32 content_start u16  slotted pages: start of the cell area; heap: end of the bytes written
//! +34 garbage       u16  slotted pages: bytes of dead cells inside the cell area
//! +36 reserved      u32  0
//! +40 body
//! ```

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::error::{Error, Result};
use crate::types::{Lsn, PageId};

pub const PAGE_SIZE: usize = 4096;
/// The most pages a page file may hold (16 TiB): the bound on every page count or page id
/// that comes from a peer or a file before it sizes anything.
pub const MAX_PAGES: u64 = 1 << 32;
pub const HEADER_SIZE: usize = 40;
/// Bytes of a page below its header.
pub const USABLE: usize = PAGE_SIZE - HEADER_SIZE;

const _: () = assert!(PAGE_SIZE.is_multiple_of(512), "pages must be whole sectors");
const _: () = assert!(PAGE_SIZE <= u16::MAX as usize, "in-page offsets are u16");
const _: () = assert!(std::mem::size_of::<PageHeader>() == HEADER_SIZE);

pub type PageBuf = [u8; PAGE_SIZE];

/// A zeroed page buffer on the heap.
pub fn new_page_buf() -> Box<PageBuf> {
    Box::new([0u8; PAGE_SIZE])
}

/// A changed page on its way to becoming a published frame. A writer's copy is built straight
/// into the `Arc` the frame table will hold, so installing it copies nothing.
pub type PageArc = std::sync::Arc<PageBuf>;

/// How many replaced frames a thread keeps for reuse (4 KiB each: 2 MiB at most).
const SPARE_PAGES: usize = 512;

thread_local! {
    /// Frames this thread replaced that no one else held: the next copies are built in them
    /// instead of in new allocations. A commit replaces about as many frames as its
    /// transaction copied, on the same thread, so in a steady load every copy reuses one;
    /// a 4 KiB block is past the allocator's per-thread caches, so each allocation and free
    /// otherwise goes through its shared bins.
    static SPARE: std::cell::RefCell<Vec<PageArc>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Keeps a replaced frame for reuse by this thread's next `page_copy`, if nothing else holds
/// it (a reader's snapshot or a checkpoint may: then it is only dropped).
pub fn recycle(mut p: PageArc) {
    if std::sync::Arc::get_mut(&mut p).is_none() {
        return;
    }
    SPARE.with(|s| {
        if let Ok(mut s) = s.try_borrow_mut() {
            if s.len() < SPARE_PAGES {
                s.push(p);
            }
        }
    });
}

/// A hint to start loading the cache line at the start of `b`.
#[inline]
pub fn prefetch(b: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: the pointer comes from a live slice; a prefetch is only a hint: it never
        // faults and changes no memory, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(b.as_ptr().cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = b;
}

/// Asks for every cache line of `p[from..to]` at once. A page that is not in the cache
/// costs one memory latency for all its lines this way, instead of one for each line a
/// binary search or a copy reaches in turn.
#[inline]
pub fn prefetch_range(p: &[u8], from: usize, to: usize) {
    let to = to.min(p.len());
    let mut i = from & !63;
    while i < to {
        prefetch(&p[i..]);
        i += 64;
    }
}

/// A copy of `src` (one page) in a `PageArc`: a recycled frame if this thread has one, else
/// one allocation; one copy, no zeroing first.
pub fn page_copy(src: &[u8]) -> PageArc {
    debug_assert_eq!(src.len(), PAGE_SIZE);
    if src.len() == PAGE_SIZE {
        if let Some(mut p) = SPARE.with(|s| s.try_borrow_mut().ok().and_then(|mut s| s.pop())) {
            if let Some(b) = std::sync::Arc::get_mut(&mut p) {
                b.copy_from_slice(src);
                return p;
            }
        }
    }
    let a: std::sync::Arc<[u8]> = std::sync::Arc::from(src);
    match a.try_into() {
        Ok(p) => p,
        // Never taken (pages are PAGE_SIZE); if it were, a zeroed page padded with the bytes.
        Err(a) => {
            let mut p = page_zeroed();
            let n = a.len().min(PAGE_SIZE);
            page_mut(&mut p)[..n].copy_from_slice(&a[..n]);
            p
        }
    }
}

/// How many bytes `x` and `y` share from their starts. Equal stretches are skipped 32 bytes
/// at a time (fixed-size compares the compiler turns into vector instructions; a page
/// delta's scan of two 4 KiB pages is most of a commit's diffing), and the differing byte is
/// found from a word's XOR.
pub fn common_prefix(x: &[u8], y: &[u8]) -> usize {
    let n = x.len().min(y.len());
    let word = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    let mut i = 0;
    while i + 32 <= n {
        let a: &[u8; 32] = x[i..i + 32].try_into().expect("32 bytes");
        let b: &[u8; 32] = y[i..i + 32].try_into().expect("32 bytes");
        if a != b {
            break;
        }
        i += 32;
    }
    while i + 8 <= n {
        let d = word(x, i) ^ word(y, i);
        if d != 0 {
            return i + (d.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < n && x[i] == y[i] {
        i += 1;
    }
    i
}

/// How many bytes `x` and `y` share at their ends (compared a word at a time).
pub fn common_suffix(x: &[u8], y: &[u8]) -> usize {
    let n = x.len().min(y.len());
    let (x, y) = (&x[x.len() - n..], &y[y.len() - n..]);
    let word = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    let mut k = 0;
    while k + 8 <= n {
        let at = n - k - 8;
        let d = word(x, at) ^ word(y, at);
        if d != 0 {
            // Little-endian: the word's last byte is its most significant.
            return k + (d.leading_zeros() / 8) as usize;
        }
        k += 8;
    }
    while k < n && x[n - 1 - k] == y[n - 1 - k] {
        k += 1;
    }
    k
}

/// A zeroed page in a new `PageArc`.
pub fn page_zeroed() -> PageArc {
    const ZERO: PageBuf = [0; PAGE_SIZE];
    page_copy(&ZERO)
}

/// The bytes of a page the writer is changing. Its copy is its own (no reader sees it before
/// it is installed), so this copies nothing; were it shared, it would copy first.
#[inline]
pub fn page_mut(p: &mut PageArc) -> &mut [u8] {
    &mut std::sync::Arc::make_mut(p)[..]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PageKind {
    Meta = 1,
    Branch = 2,
    Leaf = 3,
    Overflow = 4,
    FreeTrunk = 5,
    Heap = 6,
}

impl PageKind {
    pub fn from_u8(v: u8) -> Option<PageKind> {
        Some(match v {
            1 => PageKind::Meta,
            2 => PageKind::Branch,
            3 => PageKind::Leaf,
            4 => PageKind::Overflow,
            5 => PageKind::FreeTrunk,
            6 => PageKind::Heap,
            _ => return None,
        })
    }
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Debug)]
#[repr(C)]
pub struct PageHeader {
    pub checksum: U32,
    pub kind: u8,
    /// Slotted pages: the length of a prefix every key on the page shares; key heads are
    /// the four bytes after it (`node`). 0 in pages written before it existed.
    pub head_skip: u8,
    pub count: U16,
    pub page_id: U64,
    pub page_lsn: U64,
    pub link: U64,
    pub content_start: U16,
    pub garbage: U16,
    pub reserved2: U32,
}

#[inline]
pub fn header(p: &[u8]) -> &PageHeader {
    // Page slices are always PAGE_SIZE long (asserted where they are made), so the prefix
    // cast cannot fail; PageHeader is Unaligned, so alignment cannot fail either.
    match PageHeader::ref_from_prefix(p) {
        Ok((h, _)) => h,
        Err(_) => unreachable!("page buffer shorter than its header"),
    }
}

#[inline]
pub fn header_mut(p: &mut [u8]) -> &mut PageHeader {
    match PageHeader::mut_from_prefix(p) {
        Ok((h, _)) => h,
        Err(_) => unreachable!("page buffer shorter than its header"),
    }
}

#[inline]
pub fn kind(p: &[u8]) -> Option<PageKind> {
    PageKind::from_u8(header(p).kind)
}

/// Zeroes a page and writes a fresh header for `kind`.
pub fn init(p: &mut [u8], kind: PageKind, id: PageId) {
    p.fill(0);
    let h = header_mut(p);
    h.kind = kind as u8;
    h.page_id = U64::new(id.0);
    h.content_start = U16::new(PAGE_SIZE as u16);
}

pub fn checksum_of(p: &[u8]) -> u32 {
    crc32c::crc32c(&p[4..PAGE_SIZE])
}

/// Fills in the checksum: the last thing done before a page leaves memory. (Pages in memory
/// keep a zero checksum; the WAL's records carry them that way too.)
pub fn seal(p: &mut [u8]) {
    assert_eq!(p.len(), PAGE_SIZE);
    let c = checksum_of(p);
    header_mut(p).checksum = U32::new(c);
}

/// Checks a page read from the file: checksum, self-identification, and (for slotted pages)
/// that every offset and length stays inside the page, so later accessors cannot index out of
/// bounds. Structure errors are `Corrupt` naming the page.
pub fn verify(p: &[u8], id: PageId) -> Result<()> {
    assert_eq!(p.len(), PAGE_SIZE);
    let h = header(p);
    let stored = h.checksum.get();
    let actual = checksum_of(p);
    if stored != actual {
        return Err(Error::corrupt(
            id,
            format!("checksum mismatch (stored {stored:#010x}, computed {actual:#010x})"),
        ));
    }
    check_structure(p, id)
}

/// The checks of [`verify`] but the checksum, for a page built in memory (by redo, before it
/// is sealed): it names itself, and its kind's counts, offsets and lengths stay inside it.
pub fn check_structure(p: &[u8], id: PageId) -> Result<()> {
    assert_eq!(p.len(), PAGE_SIZE);
    let h = header(p);
    if h.page_id.get() != id.0 {
        return Err(Error::corrupt(
            id,
            format!("page claims to be page {}", h.page_id.get()),
        ));
    }
    match PageKind::from_u8(h.kind) {
        None => Err(Error::corrupt(id, format!("unknown page kind {}", h.kind))),
        Some(PageKind::Branch) | Some(PageKind::Leaf) => crate::node::validate(p, id),
        Some(PageKind::Overflow) => {
            if h.count.get() as usize > USABLE {
                return Err(Error::corrupt(
                    id,
                    "overflow page claims more bytes than fit",
                ));
            }
            Ok(())
        }
        Some(PageKind::FreeTrunk) => {
            if h.count.get() as usize > crate::freelist::TRUNK_CAPACITY {
                return Err(Error::corrupt(
                    id,
                    "free-list trunk claims more ids than fit",
                ));
            }
            Ok(())
        }
        Some(PageKind::Heap) => crate::heap::validate(p, id),
        Some(PageKind::Meta) => Ok(()),
    }
}

/// Body of page 0.
///
/// ```text
/// +40 magic          [u8; 8]  "REPLIDB\0"
/// +48 format_version u32      2 (1: long values in overflow chains, no heap)
/// +52 page_size      u32      4096
/// +56 root           u64      root page of the B+tree
/// +64 page_count     u64      pages 0..page_count are in use or free
/// +72 freelist_head  u64      first free-list trunk page (0 = none)
/// +80 free_count     u64      pages on the free list (trunks included)
/// +88 entries        u64      keys in the tree
/// +96 heap_tail      u64      the value heap's tail page (0 = no heap yet)
/// +104 heap_pages    u64      pages of the value heap
/// +112 heap_live     u64      bytes of live values in them
/// ```
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Debug, Clone, PartialEq, Eq)]
#[repr(C)]
pub struct MetaBody {
    pub magic: [u8; 8],
    pub format_version: U32,
    pub page_size: U32,
    pub root: U64,
    pub page_count: U64,
    pub freelist_head: U64,
    pub free_count: U64,
    pub entries: U64,
    pub heap_tail: U64,
    pub heap_pages: U64,
    pub heap_live: U64,
}

pub const MAGIC: [u8; 8] = *b"REPLIDB\0";
pub const FORMAT_VERSION: u32 = 2;

/// The engine's in-memory view of the meta page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub root: PageId,
    pub page_count: u64,
    pub freelist_head: PageId,
    pub free_count: u64,
    pub entries: u64,
    pub heap_tail: PageId,
    pub heap_pages: u64,
    pub heap_live: u64,
}

impl Meta {
    pub fn read(p: &[u8]) -> std::result::Result<Meta, String> {
        let body = match MetaBody::ref_from_prefix(&p[HEADER_SIZE..]) {
            Ok((b, _)) => b,
            Err(_) => return Err("meta page too short".into()),
        };
        if body.magic != MAGIC {
            return Err("bad magic (not a replidb page file)".into());
        }
        let version = body.format_version.get();
        if version != FORMAT_VERSION {
            return Err(if version < FORMAT_VERSION {
                format!(
                    "page format {version}, written by an older replidb; this build reads \
                     format {FORMAT_VERSION} only. Serve it with the replidb that wrote it; to \
                     move to this build, copy its keys through a client into a new directory"
                )
            } else {
                format!(
                    "page format {version}, written by a newer replidb; this build reads \
                     format {FORMAT_VERSION} only"
                )
            });
        }
        if body.page_size.get() as usize != PAGE_SIZE {
            return Err(format!(
                "page size {} (this build uses {})",
                body.page_size.get(),
                PAGE_SIZE
            ));
        }
        let m = Meta {
            root: PageId(body.root.get()),
            page_count: body.page_count.get(),
            freelist_head: PageId(body.freelist_head.get()),
            free_count: body.free_count.get(),
            entries: body.entries.get(),
            heap_tail: PageId(body.heap_tail.get()),
            heap_pages: body.heap_pages.get(),
            heap_live: body.heap_live.get(),
        };
        if m.page_count > MAX_PAGES {
            return Err(format!(
                "page count {} past the largest database ({MAX_PAGES} pages)",
                m.page_count
            ));
        }
        if m.page_count < 2 || m.root.0 == 0 || m.root.0 >= m.page_count {
            return Err(format!(
                "root {} outside the {} pages",
                m.root, m.page_count
            ));
        }
        if m.freelist_head.0 >= m.page_count || m.free_count >= m.page_count {
            return Err("free list outside the file".into());
        }
        if m.heap_tail.0 >= m.page_count {
            return Err("heap tail outside the file".into());
        }
        Ok(m)
    }

    pub fn write(&self, p: &mut [u8]) {
        let body = MetaBody {
            magic: MAGIC,
            format_version: U32::new(FORMAT_VERSION),
            page_size: U32::new(PAGE_SIZE as u32),
            root: U64::new(self.root.0),
            page_count: U64::new(self.page_count),
            freelist_head: U64::new(self.freelist_head.0),
            free_count: U64::new(self.free_count),
            entries: U64::new(self.entries),
            heap_tail: U64::new(self.heap_tail.0),
            heap_pages: U64::new(self.heap_pages),
            heap_live: U64::new(self.heap_live),
        };
        let n = std::mem::size_of::<MetaBody>();
        p[HEADER_SIZE..HEADER_SIZE + n].copy_from_slice(body.as_bytes());
    }
}

/// What [`inspect`] found on a page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageSummary {
    pub kind: PageKind,
    pub count: usize,
    pub page_lsn: Lsn,
    /// Key and value bytes stored on this page (slotted pages).
    pub local_bytes: usize,
    /// Cells pointing elsewhere: a long key's overflow chain or a value in the heap.
    pub overflow_refs: usize,
}

/// Verifies a page image exactly as the engine does for every page it reads from disk, then
/// decodes every cell on it. For tools and fuzzing: any byte string yields a summary or a
/// typed error, never a panic.
pub fn inspect(p: &[u8], id: PageId) -> Result<PageSummary> {
    if p.len() != PAGE_SIZE {
        return Err(Error::corrupt(
            id,
            format!("a page is {PAGE_SIZE} bytes, got {}", p.len()),
        ));
    }
    verify(p, id)?;
    let h = header(p);
    let kind = PageKind::from_u8(h.kind).ok_or_else(|| Error::corrupt(id, "unknown kind"))?;
    let mut s = PageSummary {
        kind,
        count: h.count.get() as usize,
        page_lsn: Lsn(h.page_lsn.get()),
        local_bytes: 0,
        overflow_refs: 0,
    };
    match kind {
        PageKind::Leaf => {
            for i in 0..s.count {
                let (k, v) = crate::node::leaf_entry(p, i);
                s.local_bytes += k.local.len();
                s.overflow_refs += usize::from(k.is_long());
                match v {
                    crate::node::ValRef::Inline(b) => s.local_bytes += b.len(),
                    crate::node::ValRef::Heap(_) => s.overflow_refs += 1,
                }
            }
        }
        PageKind::Branch => {
            for i in 0..s.count {
                let (k, _) = crate::node::branch_entry(p, i);
                s.local_bytes += k.local.len();
                s.overflow_refs += usize::from(k.is_long());
            }
        }
        PageKind::Meta => {
            Meta::read(p).map_err(|reason| Error::corrupt(id, reason))?;
        }
        PageKind::Overflow | PageKind::FreeTrunk | PageKind::Heap => {}
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recycled_frame_is_reused_only_when_no_one_else_holds_it() {
        let a: PageBuf = [7; PAGE_SIZE];
        let b: PageBuf = [9; PAGE_SIZE];
        // Held elsewhere (a reader's snapshot): never handed out again, its bytes stay.
        let shared = page_copy(&a);
        let reader = shared.clone();
        recycle(shared);
        let next = page_copy(&b);
        assert!(!std::sync::Arc::ptr_eq(&next, &reader));
        assert_eq!(reader[..], a[..]);
        // No one else holds it: the next copy is built in it.
        let alone = page_copy(&a);
        let addr = std::sync::Arc::as_ptr(&alone);
        recycle(alone);
        let reused = page_copy(&b);
        assert_eq!(std::sync::Arc::as_ptr(&reused), addr);
        assert_eq!(reused[..], b[..]);
        drop(next);
    }
}
