//! Slotted branch and leaf pages, and the cells they hold.
//!
//! ```text
//! slotted page
//! +0   header (40 bytes, see page.rs; count = cells, link = leftmost child on branches)
//! +40  slot[0] slot[1] ... slot[count-1]      in key order, 6 bytes each:
//!                                             cell offset u16 | key head [u8; 4]
//!      ... free space ...
//! +content_start  cells, packed towards the end of the page (in any order)
//! +4096
//!
//! key field     short (len <= 384):   len u16 | key bytes
//!               long  (len  > 384):   len u16 | first 256 bytes | overflow page u64 (the rest)
//! value field   inline:               len u16 (bit 15 clear) | value bytes
//!               heap:                 0x8000 u16 | len u32 | page u64 | offset u16 (heap.rs)
//! leaf cell     key field | value field
//! branch cell   child u64 | key field      (keys >= this key live under child)
//! ```
//!
//! The key head is four bytes of the key, zero-padded: those after the first `head_skip`
//! bytes (page header), a prefix every key on the page shares. Comparing heads as big-endian
//! numbers orders keys correctly whenever the heads differ; equal heads fall back to the key.
//! A page rebuilt by a split or merge skips the common prefix of its first and last keys (at
//! most `MAX_HEAD_SKIP`), so keys with a long shared prefix (`user:000123…`) still differ in
//! their heads; a key inserted without that prefix shrinks it and the heads are rewritten.
//! Searches compare the probe's first `head_skip` bytes with the prefix once per page.
//!
//! A branch with cells (k1,c1)..(kn,cn) and leftmost child c0 routes a key to the child
//! after the last separator <= key. Every cell costs its bytes plus a 2-byte slot and no
//! cell costs more than `MAX_CELL_COST` (an eighth of a page), which is what lets a split or
//! a rebalance always leave both halves at least `MIN_FILL` full.

use crate::error::{Error, Result};
use crate::heap::HeapRef;
use crate::le::{get_u16, get_u32, get_u64, put_u16, put_u64, try_u16, try_u32};
use crate::page::{self, header, header_mut, PageKind, HEADER_SIZE, PAGE_SIZE, USABLE};
use crate::types::PageId;

/// A slot: the cell's offset (u16 LE) and the first 4 key bytes (zero-padded), so a binary
/// search mostly compares slots without touching the scattered cells.
pub const SLOT: usize = 6;
pub const MAX_CELL_COST: usize = USABLE / 8;
/// A non-root slotted page holding fewer bytes (cells + slots) than this is underfull.
pub const MIN_FILL: usize = USABLE / 4;
/// Keys up to this length are stored whole inside the cell.
pub const KEY_INLINE_MAX: usize = 384;
/// A longer key keeps this many leading bytes in the cell and the rest in overflow pages.
pub const KEY_LOCAL: usize = 256;
/// The engine's limit; the server keeps user keys to 8 KiB and uses the rest for the data
/// model's composite keys (a collection's key, version and member).
pub const MAX_KEY: usize = 16 * 1024 + 64;
/// The engine's limit: 64 MiB for the server's values plus room for a key's metadata.
pub const MAX_VALUE: usize = 64 * 1024 * 1024 + 64;
/// The first two bytes of a value field that refers to the heap (an inline value's length
/// is below it: inline values are under an eighth of a page).
const HEAP_MARK: u16 = 0x8000;
/// Size of a value field that refers to the heap.
pub const HEAP_FIELD: usize = 16;

const _: () = assert!(MAX_KEY < 1 << 15 && MAX_VALUE < 1 << 31);
// The largest branch cell and the largest leaf cell with a heap value must fit the
// per-cell budget, or a split could fail to make room.
const _: () = assert!(8 + 2 + KEY_INLINE_MAX + SLOT <= MAX_CELL_COST);
const _: () = assert!(2 + KEY_INLINE_MAX + HEAP_FIELD + SLOT <= MAX_CELL_COST);
const _: () = assert!(KEY_LOCAL < KEY_INLINE_MAX);
const _: () = assert!(2 * MAX_CELL_COST <= MIN_FILL + MAX_CELL_COST);

/// Size of the key field for a key of `len` bytes.
#[inline]
pub fn key_field_size(len: usize) -> usize {
    if len > KEY_INLINE_MAX {
        2 + KEY_LOCAL + 8
    } else {
        2 + len
    }
}

/// A key as stored in a cell: the local bytes and, for long keys, where the rest lives.
#[derive(Clone, Copy, Debug)]
pub struct KeyRef<'a> {
    pub local: &'a [u8],
    pub len: usize,
    pub ovf: PageId,
}

impl KeyRef<'_> {
    #[inline]
    pub fn is_long(&self) -> bool {
        self.len > KEY_INLINE_MAX
    }
}

#[inline]
pub fn key_at(p: &[u8], off: usize) -> KeyRef<'_> {
    let len = get_u16(p, off) as usize;
    if len > KEY_INLINE_MAX {
        KeyRef {
            local: &p[off + 2..off + 2 + KEY_LOCAL],
            len,
            ovf: PageId(get_u64(p, off + 2 + KEY_LOCAL)),
        }
    } else {
        KeyRef {
            local: &p[off + 2..off + 2 + len],
            len,
            ovf: PageId::NONE,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub enum ValRef<'a> {
    Inline(&'a [u8]),
    Heap(HeapRef),
}

/// Value field at `off`, and the field's size.
#[inline]
pub fn val_at(p: &[u8], off: usize) -> (ValRef<'_>, usize) {
    let raw = get_u16(p, off);
    if raw & HEAP_MARK != 0 {
        (
            ValRef::Heap(HeapRef {
                len: get_u32(p, off + 2) as usize,
                page: PageId(get_u64(p, off + 6)),
                off: get_u16(p, off + 14) as usize,
            }),
            HEAP_FIELD,
        )
    } else {
        let len = raw as usize;
        (ValRef::Inline(&p[off + 2..off + 2 + len]), 2 + len)
    }
}

/// The leaf cell at slot `i`: its key and value.
#[inline]
pub fn leaf_entry(p: &[u8], i: usize) -> (KeyRef<'_>, ValRef<'_>) {
    let off = slot(p, i);
    let k = key_at(p, off);
    let (v, _) = val_at(p, off + key_field_size(k.len));
    (k, v)
}

/// The branch cell at slot `i`: its separator key and the child holding keys >= it.
#[inline]
pub fn branch_entry(p: &[u8], i: usize) -> (KeyRef<'_>, PageId) {
    let off = slot(p, i);
    (key_at(p, off + 8), PageId(get_u64(p, off)))
}

/// Child `ci` of a branch: 0 is the leftmost child, `i + 1` the child of cell `i`.
#[inline]
pub fn child(p: &[u8], ci: usize) -> PageId {
    if ci == 0 {
        PageId(header(p).link.get())
    } else {
        PageId(get_u64(p, slot(p, ci - 1)))
    }
}

#[inline]
pub fn cell_len(p: &[u8], kind: PageKind, off: usize) -> usize {
    match kind {
        PageKind::Branch => 8 + key_field_size(get_u16(p, off + 8) as usize),
        _ => {
            let kf = key_field_size(get_u16(p, off) as usize);
            let (_, vf) = val_at(p, off + kf);
            kf + vf
        }
    }
}

/// The bytes of the cell at slot `i`.
pub fn cell(p: &[u8], kind: PageKind, i: usize) -> &[u8] {
    let off = slot(p, i);
    &p[off..off + cell_len(p, kind, off)]
}

#[inline]
pub fn count(p: &[u8]) -> usize {
    header(p).count.get() as usize
}

#[inline]
pub fn slot(p: &[u8], i: usize) -> usize {
    get_u16(p, HEADER_SIZE + SLOT * i) as usize
}

#[inline]
fn set_slot(p: &mut [u8], i: usize, off: usize) {
    put_u16(p, HEADER_SIZE + SLOT * i, off as u16);
}

/// Longest prefix key heads skip: the head's bytes stay within a long key's local part.
pub const MAX_HEAD_SKIP: usize = 252;

/// Bytes of every key on the page that the key heads skip (all keys share them).
#[inline]
pub fn head_skip(p: &[u8]) -> usize {
    header(p).head_skip as usize
}

/// The first `head_skip` bytes of the page's keys (empty if it skips none or has no keys).
pub fn shared_prefix(p: &[u8], kind: PageKind) -> &[u8] {
    let skip = head_skip(p);
    if skip == 0 || count(p) == 0 {
        return &[];
    }
    let off = slot(p, 0) + if kind == PageKind::Branch { 8 } else { 0 };
    &key_at(p, off).local[..skip]
}

/// The key head stored in slot `i`.
#[inline]
pub fn head(p: &[u8], i: usize) -> u32 {
    let o = HEADER_SIZE + SLOT * i + 2;
    u32::from_be_bytes([p[o], p[o + 1], p[o + 2], p[o + 3]])
}

/// The head of a key on a page that skips `skip` bytes: its four bytes after them,
/// zero-padded, read big-endian.
#[inline]
pub fn key_head(key: &[u8], skip: usize) -> u32 {
    let mut h = [0u8; 4];
    let rest = key.get(skip..).unwrap_or(&[]);
    let n = rest.len().min(4);
    h[..n].copy_from_slice(&rest[..n]);
    u32::from_be_bytes(h)
}

/// The local key bytes of an encoded cell.
fn cell_key(kind: PageKind, cell: &[u8]) -> &[u8] {
    let kf = if kind == PageKind::Branch {
        &cell[8..]
    } else {
        cell
    };
    key_at(kf, 0).local
}

/// Sets how many key bytes the heads skip and rewrites every head to match.
fn set_head_skip(p: &mut [u8], kind: PageKind, skip: usize) {
    header_mut(p).head_skip = skip as u8;
    for i in 0..count(p) {
        let off = slot(p, i);
        let h = key_head(cell_key(kind, &p[off..]), skip);
        let o = HEADER_SIZE + SLOT * i + 2;
        p[o..o + 4].copy_from_slice(&h.to_be_bytes());
    }
}

/// Where the cell area begins.
#[inline]
fn content_start(p: &[u8]) -> usize {
    header(p).content_start.get() as usize
}

/// Contiguous free bytes between the slot array and the cell area.
#[inline]
pub fn gap(p: &[u8]) -> usize {
    content_start(p) - (HEADER_SIZE + SLOT * count(p))
}

/// Bytes taken by live cells and their slots.
#[inline]
pub fn used(p: &[u8]) -> usize {
    USABLE - gap(p) - header(p).garbage.get() as usize
}

/// Inserts `cell` at slot `idx`, compacting if needed. Returns false if it does not fit.
pub fn insert_cell(p: &mut [u8], kind: PageKind, idx: usize, cell: &[u8]) -> bool {
    insert_cell_where(p, kind, idx, cell).is_some()
}

/// The stretches of a page a change wrote (`a..b` each; an empty one is `b == a`): every
/// byte it may have changed lies in one of them.
pub type Wrote = [(usize, usize); 2];

/// `insert_cell`, telling where it wrote: `None` (nothing written) if the cell does not fit.
pub fn insert_cell_where(p: &mut [u8], kind: PageKind, idx: usize, cell: &[u8]) -> Option<Wrote> {
    let need = cell.len() + SLOT;
    // A cell that does not fit the gap goes into a dead cell's hole if one is big enough
    // (only its bytes change, so the page's WAL delta stays small); otherwise the cell area
    // is compacted, which moves every cell.
    let mut hole = None;
    let mut compacted = false;
    if gap(p) < need {
        if USABLE - used(p) < need {
            return None;
        }
        // Dead bytes fewer than the cell's: no hole can hold it, no need to look.
        if gap(p) >= SLOT && header(p).garbage.get() as usize >= cell.len() {
            hole = find_hole(p, kind, cell.len());
        }
        if hole.is_none() {
            compact(p, kind);
            compacted = true;
        }
    }
    let n = count(p);
    // A key without the prefix the heads skip shrinks it (rare: pages are rebuilt with the
    // prefix their keys share, and keys arrive in their ranges).
    let skip = head_skip(p);
    if skip > 0 {
        let key = cell_key(kind, cell);
        // An empty page's prefix is whatever its first key brings.
        let shared = if n == 0 {
            key.len()
        } else {
            page::common_prefix(shared_prefix(p, kind), key)
        };
        if shared < skip {
            set_head_skip(p, kind, shared);
        }
    }
    let start = hole.unwrap_or_else(|| content_start(p) - cell.len());
    p[start..start + cell.len()].copy_from_slice(cell);
    let slots = HEADER_SIZE + SLOT * idx;
    p.copy_within(slots..HEADER_SIZE + SLOT * n, slots + SLOT);
    set_slot(p, idx, start);
    let o = HEADER_SIZE + SLOT * idx + 2;
    let h = key_head(cell_key(kind, cell), head_skip(p));
    p[o..o + 4].copy_from_slice(&h.to_be_bytes());
    let h = header_mut(p);
    h.count.set((n + 1) as u16);
    if hole.is_some() {
        h.garbage.set(h.garbage.get() - cell.len() as u16);
    } else {
        h.content_start.set(start as u16);
    }
    if compacted {
        // Every cell moved.
        return Some([(0, PAGE_SIZE), (0, 0)]);
    }
    // The header, the slots (all of them: a shorter shared prefix rewrites every head) and
    // the cell.
    Some([
        (0, HEADER_SIZE + SLOT * (n + 1)),
        (start, start + cell.len()),
    ])
}

/// Most cells a page can hold (each costs at least a slot and two length fields).
const MAX_CELLS: usize = USABLE / (SLOT + 4) + 1;

/// The start of the smallest stretch of dead bytes in the cell area that holds `len`
/// bytes, if there is one.
fn find_hole(p: &[u8], kind: PageKind, len: usize) -> Option<usize> {
    let n = count(p);
    if n > MAX_CELLS {
        return None;
    }
    // Each cell as offset << 16 | length, in page order.
    let mut cells = [0u32; MAX_CELLS];
    for (i, c) in cells[..n].iter_mut().enumerate() {
        let off = slot(p, i);
        *c = (off as u32) << 16 | cell_len(p, kind, off) as u32;
    }
    cells[..n].sort_unstable();
    let mut best: Option<(usize, usize)> = None;
    let mut pos = content_start(p);
    let mut consider = |start: usize, end: usize| {
        let size = end.saturating_sub(start);
        if size >= len && best.is_none_or(|(_, b)| size < b) {
            best = Some((start, size));
        }
    };
    for &c in &cells[..n] {
        let (off, l) = ((c >> 16) as usize, (c & 0xffff) as usize);
        consider(pos, off);
        pos = pos.max(off + l);
    }
    consider(pos, PAGE_SIZE);
    best.map(|(start, _)| start)
}

/// Removes the cell at slot `idx` (its overflow pages are the caller's business). Writes
/// only the header and the slots, `..HEADER_SIZE + SLOT * count` as they were before.
pub fn remove_cell(p: &mut [u8], kind: PageKind, idx: usize) {
    let n = count(p);
    let off = slot(p, idx);
    let len = cell_len(p, kind, off);
    p.copy_within(
        HEADER_SIZE + SLOT * (idx + 1)..HEADER_SIZE + SLOT * n,
        HEADER_SIZE + SLOT * idx,
    );
    let cs = content_start(p);
    let h = header_mut(p);
    h.count.set((n - 1) as u16);
    if off == cs {
        h.content_start.set((cs + len) as u16);
    } else {
        h.garbage.set(h.garbage.get() + len as u16);
    }
}

/// Rewrites the cell area without dead bytes.
pub fn compact(p: &mut [u8], kind: PageKind) {
    let n = count(p);
    let mut tmp = [0u8; PAGE_SIZE];
    let mut end = PAGE_SIZE;
    for i in 0..n {
        let off = slot(p, i);
        let len = cell_len(p, kind, off);
        end -= len;
        tmp[end..end + len].copy_from_slice(&p[off..off + len]);
        set_slot(p, i, end);
    }
    p[end..].copy_from_slice(&tmp[end..]);
    let h = header_mut(p);
    h.content_start.set(end as u16);
    h.garbage.set(0);
}

/// Turns `p` into a slotted page holding exactly `cells`, in order.
pub fn rebuild<C: AsRef<[u8]>>(
    p: &mut [u8],
    kind: PageKind,
    id: PageId,
    link: PageId,
    cells: &[C],
) {
    page::init(p, kind, id);
    header_mut(p).link.set(link.0);
    // Keys are in order: the prefix of the first and the last is shared by all.
    if let (Some(first), Some(last)) = (cells.first(), cells.last()) {
        let skip = page::common_prefix(
            cell_key(kind, first.as_ref()),
            cell_key(kind, last.as_ref()),
        );
        header_mut(p).head_skip = skip.min(MAX_HEAD_SKIP) as u8;
    }
    for (i, c) in cells.iter().enumerate() {
        let ok = insert_cell(p, kind, i, c.as_ref());
        assert!(ok, "rebuild given more cells than fit a page");
    }
}

/// Cost of a set of cells on a page (bytes plus slots).
pub fn cost<C: AsRef<[u8]>>(cells: &[C]) -> usize {
    cells.iter().map(|c| c.as_ref().len() + SLOT).sum()
}

/// Key field of an encoded branch cell.
pub fn branch_cell_key_field(cell: &[u8]) -> &[u8] {
    &cell[8..]
}

pub fn branch_cell_child(cell: &[u8]) -> PageId {
    PageId(get_u64(cell, 0))
}

pub fn set_branch_cell_child(cell: &mut [u8], c: PageId) {
    put_u64(cell, 0, c.0);
}

/// Key field of an encoded leaf cell.
pub fn leaf_cell_key_field(cell: &[u8]) -> &[u8] {
    let len = get_u16(cell, 0) as usize;
    &cell[..key_field_size(len)]
}

/// Encodes a key field. `ovf` must be set (the rest of the key written there) for long keys.
pub fn encode_key_field(key: &[u8], ovf: PageId, out: &mut Vec<u8>) {
    out.extend_from_slice(&(key.len() as u16).to_le_bytes());
    if key.len() > KEY_INLINE_MAX {
        out.extend_from_slice(&key[..KEY_LOCAL]);
        out.extend_from_slice(&ovf.0.to_le_bytes());
    } else {
        out.extend_from_slice(key);
    }
}

pub fn encode_inline_value(value: &[u8], out: &mut Vec<u8>) {
    debug_assert!(value.len() < HEAP_MARK as usize);
    out.extend_from_slice(&(value.len() as u16).to_le_bytes());
    out.extend_from_slice(value);
}

pub fn encode_heap_value(r: HeapRef, out: &mut Vec<u8>) {
    out.extend_from_slice(&HEAP_MARK.to_le_bytes());
    out.extend_from_slice(&(r.len as u32).to_le_bytes());
    out.extend_from_slice(&r.page.0.to_le_bytes());
    out.extend_from_slice(&(r.off as u16).to_le_bytes());
}

/// Whether a value of `vlen` bytes stays inside a leaf cell next to a key of `klen` bytes.
pub fn value_fits_inline(klen: usize, vlen: usize) -> bool {
    key_field_size(klen) + 2 + vlen + SLOT <= MAX_CELL_COST
}

/// Structural check of a slotted page read from disk (after its checksum passed): every slot
/// and every cell lies inside the page, so accessors can index without bounds surprises.
pub fn validate(p: &[u8], id: PageId) -> Result<()> {
    let h = header(p);
    let kind = match PageKind::from_u8(h.kind) {
        Some(k @ (PageKind::Branch | PageKind::Leaf)) => k,
        _ => return Err(Error::corrupt(id, "not a slotted page")),
    };
    let n = h.count.get() as usize;
    let cs = h.content_start.get() as usize;
    let slots_end = HEADER_SIZE + SLOT * n;
    if slots_end > cs || cs > PAGE_SIZE {
        return Err(Error::corrupt(
            id,
            format!("{n} slots overlap the cell area at {cs}"),
        ));
    }
    if h.garbage.get() as usize > PAGE_SIZE - cs {
        return Err(Error::corrupt(
            id,
            "garbage count larger than the cell area",
        ));
    }
    let mut cells_bytes = 0usize;
    for i in 0..n {
        let off = get_u16(p, HEADER_SIZE + SLOT * i) as usize;
        let bad = |what: &str| Error::corrupt(id, format!("cell {i} at offset {off}: {what}"));
        if off < cs || off >= PAGE_SIZE {
            return Err(bad("offset outside the cell area"));
        }
        let kstart = if kind == PageKind::Branch {
            off + 8
        } else {
            off
        };
        let klen = try_u16(p, kstart).ok_or_else(|| bad("key length cut off"))? as usize;
        if klen > MAX_KEY {
            return Err(bad("key longer than the limit"));
        }
        let kend = kstart + key_field_size(klen);
        if kend > PAGE_SIZE {
            return Err(bad("key runs past the page end"));
        }
        let mut cell_end = kend;
        if klen > KEY_INLINE_MAX && get_u64(p, kend - 8) == 0 {
            return Err(bad("long key without overflow page"));
        }
        let skip = h.head_skip as usize;
        let key = key_at(p, kstart).local;
        if skip > 0 {
            let k0 = if kind == PageKind::Branch { 8 } else { 0 };
            let first = get_u16(p, HEADER_SIZE) as usize + k0;
            let shares = skip <= MAX_HEAD_SKIP
                && first + 2 + skip <= PAGE_SIZE
                && key.len() >= skip
                && key[..skip] == p[first + 2..first + 2 + skip];
            if !shares {
                return Err(bad("key does not share the prefix the key heads skip"));
            }
        }
        if head(p, i) != key_head(key, skip) {
            return Err(bad("slot key head does not match the key"));
        }
        if kind == PageKind::Leaf {
            let raw = try_u16(p, kend).ok_or_else(|| bad("value length cut off"))?;
            let vend = if raw & HEAP_MARK != 0 {
                let len = try_u32(p, kend + 2).ok_or_else(|| bad("value length cut off"))?;
                if raw != HEAP_MARK || len as usize > MAX_VALUE {
                    return Err(bad("heap value field damaged or longer than the limit"));
                }
                kend + HEAP_FIELD
            } else {
                kend + 2 + raw as usize
            };
            if vend > PAGE_SIZE {
                return Err(bad("value runs past the page end"));
            }
            cell_end = vend;
        }
        // Every cell within the size a split relies on; together (below) exactly the bytes
        // the header accounts, so no two overlap and `used`/`compact` never underflow.
        if cell_end - off + SLOT > MAX_CELL_COST {
            return Err(bad("cell larger than a cell may be"));
        }
        cells_bytes += cell_end - off;
    }
    let area = PAGE_SIZE - cs - h.garbage.get() as usize;
    if cells_bytes != area {
        return Err(Error::corrupt(
            id,
            format!("cells take {cells_bytes} bytes, the header accounts {area}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page::{self, PageKind};

    fn leaf_with(cells: &[(&[u8], &[u8])]) -> Box<page::PageBuf> {
        let mut p = page::new_page_buf();
        page::init(&mut p[..], PageKind::Leaf, PageId(5));
        for (i, (k, v)) in cells.iter().enumerate() {
            assert!(insert_cell(&mut p[..], PageKind::Leaf, i, &leaf_cell(k, v)));
        }
        p
    }

    #[test]
    fn overlapping_and_oversized_cells_are_refused() {
        let p = leaf_with(&[(b"same", b"one")]);
        validate(&p[..], PageId(5)).expect("a well-formed leaf");
        // A second slot pointing at the one cell: each cell is in bounds, but together they
        // claim more bytes than the header accounts (a later `used` or `compact` would
        // underflow).
        let mut q = p.clone();
        let slot0 = q[HEADER_SIZE..HEADER_SIZE + SLOT].to_vec();
        q[HEADER_SIZE + SLOT..HEADER_SIZE + 2 * SLOT].copy_from_slice(&slot0);
        page::header_mut(&mut q[..]).count.set(2);
        let err = validate(&q[..], PageId(5)).unwrap_err();
        assert!(err.to_string().contains("header accounts"), "{err}");
        // A cell larger than any cell may be (a split could find no point that fits).
        let big = vec![7u8; USABLE / 4];
        let r = leaf_with(&[(b"k", &big)]);
        let err = validate(&r[..], PageId(5)).unwrap_err();
        assert!(
            err.to_string().contains("larger than a cell may be"),
            "{err}"
        );
    }

    fn leaf_cell(k: &[u8], v: &[u8]) -> Vec<u8> {
        let mut c = Vec::new();
        encode_key_field(k, PageId(0), &mut c);
        encode_inline_value(v, &mut c);
        c
    }

    #[test]
    fn a_cell_goes_into_a_dead_cells_hole_and_the_others_stay_put() {
        let mut p = page::new_page_buf();
        page::init(&mut p[..], PageKind::Leaf, PageId(5));
        let mut n = 0;
        while insert_cell(
            &mut p[..],
            PageKind::Leaf,
            n,
            &leaf_cell(&[n as u8], &[1; 100]),
        ) {
            n += 1;
        }
        // A cell from the middle of the cell area (not the lowest) dies; the gap between the
        // slots and the cells stays too small for another cell.
        let victim = (0..n)
            .find(|&i| slot(&p[..], i) != content_start(&p[..]))
            .unwrap();
        let hole = slot(&p[..], victim);
        remove_cell(&mut p[..], PageKind::Leaf, victim);
        assert!(gap(&p[..]) < 100 + SLOT);
        let before: Vec<usize> = (0..n - 1).map(|i| slot(&p[..], i)).collect();
        let new = leaf_cell(&[200], &[2; 100]);
        assert!(insert_cell(&mut p[..], PageKind::Leaf, n - 1, &new));
        assert_eq!(slot(&p[..], n - 1), hole, "the new cell fills the hole");
        let after: Vec<usize> = (0..n - 1).map(|i| slot(&p[..], i)).collect();
        assert_eq!(before, after, "no other cell moved");
        assert_eq!(page::header(&p[..]).garbage.get(), 0);
        assert_eq!(cell(&p[..], PageKind::Leaf, n - 1), &new[..]);
        validate(&p[..], PageId(5)).expect("a well-formed leaf");
    }

    proptest::proptest! {
        /// Inserts and removals of cells of any size (holes filled, pages compacted) keep
        /// every cell's bytes and a page that validates.
        #[test]
        fn cells_survive_any_mix_of_inserts_and_removals(
            ops in proptest::collection::vec(
                (proptest::bool::weighted(0.7), 0usize..1000, 1usize..40, 0usize..300, proptest::num::u8::ANY),
                1..400,
            ),
        ) {
            let mut p = page::new_page_buf();
            page::init(&mut p[..], PageKind::Leaf, PageId(5));
            let mut model: Vec<Vec<u8>> = Vec::new();
            for (insert, at, klen, vlen, b) in ops {
                if insert || model.is_empty() {
                    let c = leaf_cell(&vec![b; klen], &vec![b ^ 0x5a; vlen]);
                    let at = at % (model.len() + 1);
                    if insert_cell(&mut p[..], PageKind::Leaf, at, &c) {
                        model.insert(at, c);
                    } else {
                        proptest::prop_assert!(USABLE - used(&p[..]) < c.len() + SLOT);
                    }
                } else {
                    let at = at % model.len();
                    remove_cell(&mut p[..], PageKind::Leaf, at);
                    model.remove(at);
                }
                proptest::prop_assert!(validate(&p[..], PageId(5)).is_ok());
                for (i, c) in model.iter().enumerate() {
                    proptest::prop_assert_eq!(cell(&p[..], PageKind::Leaf, i), &c[..]);
                }
            }
        }
    }
}
