//! WAL records: the byte format, the encoder, and a total decoder.
//!
//! ```text
//! record
//! +0  crc      u32  crc32c of bytes 4..len (so it covers the LSN: a stale record left in a
//!                   recycled segment cannot pass for a new one)
//! +4  len      u32  whole record, header included (32 ..= MAX_RECORD)
//! +8  lsn      u64  byte position of this record in the WAL stream
//! +16 page_id  u64  the page a page record changes (0 otherwise)
//! +24 epoch    u32  the timeline the record was written in
//! +28 kind     u8   1 page image, 2 page delta, 3 commit, 4 checkpoint, 5 epoch change
//! +29 flags    u8   0
//! +30 reserved u16  0
//! +32 payload
//!
//! page image    the page's 4096 bytes (checksum and page_lsn fields zero)
//! page delta    runs, until the payload ends, each either
//!               literal:  offset u16 | len u16             | len bytes
//!               copy:     offset u16 | len u16 | 0x8000    | from u16
//!               (a copy run's bytes are the page's own bytes at `from` as they were before
//!               this record: what a slot array shifted by an insert or a delete becomes)
//! commit        timestamp_us u64 | page_records u32 | synced_lsn u64
//!               (synced_lsn: how far the writer's log was durable when it wrote this
//!               record — proof, after a crash, that every byte before it had been synced;
//!               logs of format 1 have 12-byte commits, read as synced_lsn 0)
//! checkpoint    redo_lsn u64
//! epoch change  epoch u32 | reserved u32
//! ```
//!
//! A page record replaces (image) or patches (delta) one page and sets its page_lsn to the
//! record's LSN. Redo applies a delta only when the page's LSN is lower, so replay is
//! idempotent; an image is always applied (it restores a possibly torn page).
//! Deltas are exact byte differences between the page before and after, so replaying the
//! records rebuilds the same bytes on every node.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::node::SLOT;
use crate::page::{self, HEADER_SIZE, PAGE_SIZE};
use crate::types::{Lsn, PageId};

pub const RECORD_HEADER: usize = 32;
/// The largest record: a page image (a delta larger than a page is logged as an image).
pub const MAX_RECORD: usize = RECORD_HEADER + PAGE_SIZE;
const DELTA_RUN_HEADER: usize = 4;
/// A commit's payload: timestamp_us u64 | page_records u32 | synced_lsn u64.
const COMMIT_PAYLOAD: usize = 20;
/// Runs separated by fewer unchanged bytes than this are merged (a run header costs 4).
const DELTA_MERGE_GAP: usize = 8;
/// In a run's `len` field: a copy run (its body is `from` u16, not bytes).
const COPY_RUN: u16 = 0x8000;
/// A copy run's body.
const COPY_BODY: usize = 2;
/// The shortest stretch logged as a copy run: splitting a run costs a run header and the copy
/// run's body, 6 bytes, which a copy must save several times over to be worth a second run.
const MIN_COPY: usize = 16;
/// The shifts a copy run is looked for at: one slot either way, what inserting or deleting a
/// cell does to the slot array after it. (The format takes any `from`.)
const COPY_SHIFTS: [isize; 2] = [crate::node::SLOT as isize, -(crate::node::SLOT as isize)];

const _: () = assert!(std::mem::size_of::<RecordHeader>() == RECORD_HEADER);
const _: () = assert!(MAX_RECORD <= u32::MAX as usize);

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Debug)]
#[repr(C)]
pub struct RecordHeader {
    pub crc: U32,
    pub len: U32,
    pub lsn: U64,
    pub page_id: U64,
    pub epoch: U32,
    pub kind: u8,
    pub flags: u8,
    pub reserved: U16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    PageImage = 1,
    PageDelta = 2,
    Commit = 3,
    Checkpoint = 4,
    EpochChange = 5,
}

impl RecordKind {
    fn from_u8(v: u8) -> Option<RecordKind> {
        Some(match v {
            1 => RecordKind::PageImage,
            2 => RecordKind::PageDelta,
            3 => RecordKind::Commit,
            4 => RecordKind::Checkpoint,
            5 => RecordKind::EpochChange,
            _ => return None,
        })
    }
}

/// A decoded record, borrowing its payload from the buffer it was decoded from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub lsn: Lsn,
    pub epoch: u32,
    pub body: Body<'a>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body<'a> {
    PageImage {
        page: PageId,
        image: &'a [u8],
    },
    PageDelta {
        page: PageId,
        runs: &'a [u8],
    },
    Commit {
        timestamp_us: u64,
        page_records: u32,
        /// Everything before this LSN was durable on the writer when it wrote the record.
        synced: Lsn,
    },
    Checkpoint {
        redo_lsn: Lsn,
    },
    EpochChange {
        epoch: u32,
    },
}

impl Record<'_> {
    /// The page this record changes, if it is a page record.
    pub fn page(&self) -> Option<PageId> {
        match self.body {
            Body::PageImage { page, .. } | Body::PageDelta { page, .. } => Some(page),
            _ => None,
        }
    }
}

/// Why bytes are not a record. Recovery stops at the first one, and a replica rejects them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than the header or the record's length claims: more may arrive (stream),
    /// or the tail was torn (file).
    Incomplete { need: usize },
    /// The bytes can never be a record here.
    Invalid(String),
}

/// Decodes the record at the start of `buf`, which must sit at stream position `lsn`.
/// Returns the record and its length. Total: any input gives a record or an error, reading
/// nothing outside `buf` and allocating nothing.
pub fn decode(buf: &[u8], lsn: Lsn) -> Result<(Record<'_>, usize), DecodeError> {
    let Ok((h, _)) = RecordHeader::ref_from_prefix(buf) else {
        return Err(DecodeError::Incomplete {
            need: RECORD_HEADER,
        });
    };
    let len = h.len.get() as usize;
    if len == 0 && h.crc.get() == 0 {
        return Err(DecodeError::Invalid(
            "zeroed bytes (end of the written log)".into(),
        ));
    }
    if !(RECORD_HEADER..=MAX_RECORD).contains(&len) {
        return Err(DecodeError::Invalid(format!(
            "record length {len} outside {RECORD_HEADER}..={MAX_RECORD}"
        )));
    }
    if buf.len() < len {
        return Err(DecodeError::Incomplete { need: len });
    }
    let crc = crc32c::crc32c(&buf[4..len]);
    if crc != h.crc.get() {
        return Err(DecodeError::Invalid(format!(
            "checksum mismatch (stored {:#010x}, computed {crc:#010x})",
            h.crc.get()
        )));
    }
    if h.lsn.get() != lsn.0 {
        return Err(DecodeError::Invalid(format!(
            "record claims LSN {}, found at {lsn}",
            h.lsn.get()
        )));
    }
    let payload = &buf[RECORD_HEADER..len];
    let page = PageId(h.page_id.get());
    let kind = RecordKind::from_u8(h.kind)
        .ok_or_else(|| DecodeError::Invalid(format!("unknown record kind {}", h.kind)))?;
    let bad = |what: &str| DecodeError::Invalid(format!("{kind:?} record: {what}"));
    let body = match kind {
        RecordKind::PageImage => {
            if payload.len() != PAGE_SIZE {
                return Err(bad("image is not one page"));
            }
            if page::header(payload).page_id.get() != page.0 {
                return Err(bad("image of another page"));
            }
            Body::PageImage {
                page,
                image: payload,
            }
        }
        RecordKind::PageDelta => {
            validate_runs(payload).map_err(|e| bad(&e))?;
            Body::PageDelta {
                page,
                runs: payload,
            }
        }
        RecordKind::Commit => {
            if payload.len() != COMMIT_PAYLOAD && payload.len() != 12 {
                return Err(bad("payload is neither 20 nor 12 bytes"));
            }
            let synced = match payload.get(12..20) {
                Some(b) => u64::from_le_bytes(b.try_into().expect("8 bytes")),
                None => 0,
            };
            // Synced bytes lie before the record that says so.
            if synced > lsn.0 {
                return Err(bad(&format!(
                    "claims the log synced to {synced}, past itself"
                )));
            }
            Body::Commit {
                timestamp_us: u64::from_le_bytes(payload[..8].try_into().expect("8 bytes")),
                page_records: u32::from_le_bytes(payload[8..12].try_into().expect("4 bytes")),
                synced: Lsn(synced),
            }
        }
        RecordKind::Checkpoint => {
            if payload.len() != 8 {
                return Err(bad("payload is not 8 bytes"));
            }
            Body::Checkpoint {
                redo_lsn: Lsn(u64::from_le_bytes(payload.try_into().expect("8 bytes"))),
            }
        }
        RecordKind::EpochChange => {
            if payload.len() != 8 {
                return Err(bad("payload is not 8 bytes"));
            }
            Body::EpochChange {
                epoch: u32::from_le_bytes(payload[..4].try_into().expect("4 bytes")),
            }
        }
    };
    if page.0 != 0 && !matches!(kind, RecordKind::PageImage | RecordKind::PageDelta) {
        return Err(bad("names a page"));
    }
    Ok((
        Record {
            lsn,
            epoch: h.epoch.get(),
            body,
        },
        len,
    ))
}

fn validate_runs(mut runs: &[u8]) -> Result<(), String> {
    if runs.is_empty() {
        return Err("no runs".into());
    }
    while !runs.is_empty() {
        let Some((run, rest)) = next_run(runs) else {
            return Err("run cut short".into());
        };
        let (off, len) = (run.off, run.len);
        if len == 0 || off + len > PAGE_SIZE {
            return Err(format!("run {off}+{len} outside the page"));
        }
        if let RunBody::Copy(from) = run.body {
            if from + len > PAGE_SIZE {
                return Err(format!("copy run from {from}+{len} outside the page"));
            }
            // The header holds a field that is not the same on every node (the checksum: zero
            // in memory, set on disk, so it depends on when a node last read the page from
            // its file); literal runs overwrite it with the same bytes everywhere, but a copy
            // would copy each node's own. So copies neither read nor write the header.
            if from < HEADER_SIZE || off < HEADER_SIZE {
                return Err(format!(
                    "copy run {off} from {from} touches the page header"
                ));
            }
        }
        runs = rest;
    }
    Ok(())
}

/// One decoded delta run.
struct Run<'a> {
    off: usize,
    len: usize,
    body: RunBody<'a>,
}

enum RunBody<'a> {
    Bytes(&'a [u8]),
    /// From this offset of the page as it was before the record.
    Copy(usize),
}

/// The first run of `runs` and what follows it; `None` if it is cut short. Bounds against
/// the page are `validate_runs`'s.
fn next_run(runs: &[u8]) -> Option<(Run<'_>, &[u8])> {
    let head = runs.get(..DELTA_RUN_HEADER)?;
    let off = u16::from_le_bytes([head[0], head[1]]) as usize;
    let len_field = u16::from_le_bytes([head[2], head[3]]);
    let len = (len_field & !COPY_RUN) as usize;
    let rest = &runs[DELTA_RUN_HEADER..];
    if len_field & COPY_RUN != 0 {
        let b = rest.get(..COPY_BODY)?;
        let from = u16::from_le_bytes([b[0], b[1]]) as usize;
        Some((
            Run {
                off,
                len,
                body: RunBody::Copy(from),
            },
            &rest[COPY_BODY..],
        ))
    } else {
        let bytes = rest.get(..len)?;
        Some((
            Run {
                off,
                len,
                body: RunBody::Bytes(bytes),
            },
            &rest[len..],
        ))
    }
}

/// Appends one encoded record to `out`; returns its length.
fn encode(
    out: &mut Vec<u8>,
    lsn: Lsn,
    epoch: u32,
    kind: RecordKind,
    page: PageId,
    payload: &[&[u8]],
) -> usize {
    let start = out.len();
    let len = RECORD_HEADER + payload.iter().map(|p| p.len()).sum::<usize>();
    assert!(len <= MAX_RECORD, "record of {len} bytes");
    let h = RecordHeader {
        crc: U32::new(0),
        len: U32::new(len as u32),
        lsn: U64::new(lsn.0),
        page_id: U64::new(page.0),
        epoch: U32::new(epoch),
        kind: kind as u8,
        flags: 0,
        reserved: U16::new(0),
    };
    out.extend_from_slice(h.as_bytes());
    for p in payload {
        out.extend_from_slice(p);
    }
    let crc = crc32c::crc32c(&out[start + 4..start + len]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
    len
}

pub fn encode_page_image(
    out: &mut Vec<u8>,
    lsn: Lsn,
    epoch: u32,
    page: PageId,
    image: &[u8],
) -> usize {
    debug_assert_eq!(image.len(), PAGE_SIZE);
    encode(out, lsn, epoch, RecordKind::PageImage, page, &[image])
}

/// Encodes a commit record. `synced`: how far the log is durable now (at most `lsn`).
pub fn encode_commit(
    out: &mut Vec<u8>,
    lsn: Lsn,
    epoch: u32,
    timestamp_us: u64,
    page_records: u32,
    synced: Lsn,
) -> usize {
    debug_assert!(synced <= lsn);
    let mut p = [0u8; COMMIT_PAYLOAD];
    p[..8].copy_from_slice(&timestamp_us.to_le_bytes());
    p[8..12].copy_from_slice(&page_records.to_le_bytes());
    p[12..].copy_from_slice(&synced.0.min(lsn.0).to_le_bytes());
    encode(out, lsn, epoch, RecordKind::Commit, PageId::NONE, &[&p])
}

pub fn encode_checkpoint(out: &mut Vec<u8>, lsn: Lsn, epoch: u32, redo_lsn: Lsn) -> usize {
    encode(
        out,
        lsn,
        epoch,
        RecordKind::Checkpoint,
        PageId::NONE,
        &[&redo_lsn.0.to_le_bytes()],
    )
}

pub fn encode_epoch_change(out: &mut Vec<u8>, lsn: Lsn, epoch: u32, new_epoch: u32) -> usize {
    let mut p = [0u8; 8];
    p[..4].copy_from_slice(&new_epoch.to_le_bytes());
    encode(
        out,
        lsn,
        epoch,
        RecordKind::EpochChange,
        PageId::NONE,
        &[&p],
    )
}

/// The byte ranges in which `new` differs from `old`, as delta runs. `None` if the delta
/// would not be smaller than a page image.
pub fn delta_runs(old: &[u8], new: &[u8], out: &mut Vec<u8>) -> Option<()> {
    delta_runs_within(old, new, &[(0, PAGE_SIZE as u16)], out)
}

/// `delta_runs` when `new` is known to differ from `old` only inside `ranges` (sorted,
/// disjoint): only their bytes are compared.
pub fn delta_runs_within(
    old: &[u8],
    new: &[u8],
    ranges: &[(u16, u16)],
    out: &mut Vec<u8>,
) -> Option<()> {
    debug_assert_eq!(old.len(), PAGE_SIZE);
    debug_assert_eq!(new.len(), PAGE_SIZE);
    let start = out.len();
    for &(a, b) in ranges {
        let (mut i, limit) = (a as usize, (b as usize).min(PAGE_SIZE));
        while i < limit {
            i += page::common_prefix(&old[i..limit], &new[i..limit]);
            if i == limit {
                break;
            }
            let run_start = i;
            let run_end = run_end(old, new, i, limit);
            emit_run(old, new, run_start, run_end, out);
            if out.len() - start >= PAGE_SIZE {
                out.truncate(start);
                return None;
            }
            i = run_end;
        }
    }
    Some(())
}

/// One cell inserted into or removed from a slotted page, as the page change reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotChange {
    /// At slot `idx` of `n` slots (before the insert), the cell written at `cell`.
    Insert {
        idx: usize,
        n: usize,
        cell: (usize, usize),
    },
    /// Slot `idx` of `n` removed.
    Remove { idx: usize, n: usize },
}

/// The delta of a page that one `SlotChange` changed (and whose heads skip as many key bytes
/// as before), written from what the change did instead of found by comparing the two
/// pages: the header's changed bytes, the moved slots as one copy run, the new slot and the
/// cell as literal bytes. Reads only the old page's header. `None` if it would not be
/// smaller than a page image.
pub fn slot_change_runs(
    old: &[u8],
    new: &[u8],
    change: SlotChange,
    out: &mut Vec<u8>,
) -> Option<()> {
    debug_assert_eq!(
        old[..HEADER_SIZE][5],
        new[..HEADER_SIZE][5],
        "head_skip changed"
    );
    let start = out.len();
    delta_runs_within(old, new, &[(0, HEADER_SIZE as u16)], out)?;
    let slot = |i: usize| HEADER_SIZE + SLOT * i;
    let literal = |out: &mut Vec<u8>, s: usize, e: usize| {
        if s < e {
            out.extend_from_slice(&(s as u16).to_le_bytes());
            out.extend_from_slice(&((e - s) as u16).to_le_bytes());
            out.extend_from_slice(&new[s..e]);
        }
    };
    // `[s, e)` of the new page is the old page's bytes from `from`.
    let moved = |out: &mut Vec<u8>, s: usize, e: usize, from: usize| {
        if e - s >= MIN_COPY {
            out.extend_from_slice(&(s as u16).to_le_bytes());
            out.extend_from_slice(&((e - s) as u16 | COPY_RUN).to_le_bytes());
            out.extend_from_slice(&(from as u16).to_le_bytes());
        } else {
            literal(out, s, e);
        }
    };
    match change {
        SlotChange::Insert { idx, n, cell } => {
            literal(out, slot(idx), slot(idx + 1));
            moved(out, slot(idx + 1), slot(n + 1), slot(idx));
            literal(out, cell.0, cell.1);
        }
        SlotChange::Remove { idx, n } => moved(out, slot(idx), slot(n - 1), slot(idx + 1)),
    }
    if out.len() - start >= PAGE_SIZE {
        out.truncate(start);
        return None;
    }
    Some(())
}

/// Logs the changed stretch `[a, b)` of `new`: as its bytes, or, where a part of it at one
/// end is `old`'s bytes shifted by one slot (the cell pointers after an inserted or deleted
/// cell), that part as a copy run and the rest as bytes. A one-cell insert into a leaf of
/// 150 cells moves 450 bytes of pointers: 10 bytes logged instead.
fn emit_run(old: &[u8], new: &[u8], a: usize, b: usize, out: &mut Vec<u8>) {
    // (copied stretch start, end, shift): new[j] == old[j - shift] over the stretch.
    let mut best: Option<(usize, usize, isize)> = None;
    let len_of = |c: &Option<(usize, usize, isize)>| c.map_or(0, |(s, e, _)| e - s);
    if b - a >= MIN_COPY {
        for d in COPY_SHIFTS {
            // Where old[j - d] exists for every j of the stretch, and neither it nor j is in
            // the page header (see `validate_runs`).
            let lo = if d > 0 {
                a.max(HEADER_SIZE + d as usize)
            } else {
                a.max(HEADER_SIZE)
            };
            let hi = if d < 0 {
                b.min(PAGE_SIZE - d.unsigned_abs())
            } else {
                b
            };
            if lo >= hi {
                continue;
            }
            let from = |j: usize| (j as isize - d) as usize;
            if lo == a {
                let n = page::common_prefix(&new[a..hi], &old[from(a)..from(hi)]);
                if n > len_of(&best) {
                    best = Some((a, a + n, d));
                }
            }
            if hi == b {
                let n = page::common_suffix(&new[lo..b], &old[from(lo)..from(b)]);
                if n > len_of(&best) {
                    best = Some((b - n, b, d));
                }
            }
        }
    }
    let literal = |out: &mut Vec<u8>, s: usize, e: usize| {
        if s < e {
            out.extend_from_slice(&(s as u16).to_le_bytes());
            out.extend_from_slice(&((e - s) as u16).to_le_bytes());
            out.extend_from_slice(&new[s..e]);
        }
    };
    match best {
        Some((s, e, d)) if e - s >= MIN_COPY => {
            literal(out, a, s);
            out.extend_from_slice(&(s as u16).to_le_bytes());
            out.extend_from_slice(&((e - s) as u16 | COPY_RUN).to_le_bytes());
            out.extend_from_slice(&((s as isize - d) as u16).to_le_bytes());
            literal(out, e, b);
        }
        _ => literal(out, a, b),
    }
}

/// The end (exclusive) of the run of differences that starts at `i` (where `old` and `new`
/// differ): it goes on through later differences while the equal stretch between two of
/// them is at most `DELTA_MERGE_GAP` bytes. Whole words are compared once `i` is aligned: a
/// page whose cell pointers shifted differs almost everywhere, byte by byte that was the
/// hottest loop of a commit.
fn run_end(old: &[u8], new: &[u8], i: usize, limit: usize) -> usize {
    let word = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    let mut end = i + 1;
    let mut j = i + 1;
    while j < limit {
        if !j.is_multiple_of(8) || j + 8 > limit {
            if old[j] != new[j] {
                end = j + 1;
            } else if j - end >= DELTA_MERGE_GAP {
                return end;
            }
            j += 1;
            continue;
        }
        let x = word(old, j) ^ word(new, j);
        if x == 0 {
            if j + 7 - end >= DELTA_MERGE_GAP {
                return end;
            }
        } else {
            // Little-endian: byte k of the word is bits 8k..8k+8.
            let first = j + (x.trailing_zeros() / 8) as usize;
            if first > end && first - 1 - end >= DELTA_MERGE_GAP {
                return end;
            }
            end = j + 8 - (x.leading_zeros() / 8) as usize;
        }
        j += 8;
    }
    end
}

pub fn encode_page_delta(
    out: &mut Vec<u8>,
    lsn: Lsn,
    epoch: u32,
    page: PageId,
    runs: &[u8],
) -> usize {
    encode(out, lsn, epoch, RecordKind::PageDelta, page, &[runs])
}

/// Applies a page record to `p` if the page has not seen it yet (`page_lsn < lsn`), and sets
/// the page LSN. The one redo function: crash recovery and replicas both use it.
/// Returns whether the record was applied.
pub fn redo(p: &mut [u8], rec: &Record<'_>) -> bool {
    assert_eq!(p.len(), PAGE_SIZE);
    match rec.body {
        // An image is always applied: it is the first change to the page after a checkpoint,
        // the page on disk may be torn (its LSN field garbage), and every later record of
        // the page follows it in the log.
        Body::PageImage { image, .. } => p.copy_from_slice(image),
        Body::PageDelta { runs, .. } => {
            if page::header(p).page_lsn.get() >= rec.lsn.0 {
                return false;
            }
            apply_runs(p, runs);
        }
        _ => return false,
    }
    let h = page::header_mut(p);
    h.page_lsn.set(rec.lsn.0);
    h.checksum.set(0);
    true
}

/// Whether `runs` turn `old` into `new`: a check that a delta found in part of a page
/// (`delta_runs_within`) missed no change.
pub fn runs_rebuild(old: &[u8], runs: &[u8], new: &[u8]) -> bool {
    let mut p = [0u8; PAGE_SIZE];
    p.copy_from_slice(old);
    apply_runs(&mut p, runs);
    p[..] == *new
}

/// Applies validated delta runs to page `p`. Copy runs read the page as it was before the
/// record (a copy of it is taken first if there are any), so the order of runs is free.
fn apply_runs(p: &mut [u8], runs: &[u8]) {
    let mut any_copy = false;
    let mut rest = runs;
    while let Some((run, next)) = next_run(rest) {
        any_copy |= matches!(run.body, RunBody::Copy(_));
        rest = next;
    }
    let before: Option<[u8; PAGE_SIZE]> = any_copy.then(|| {
        let mut b = [0u8; PAGE_SIZE];
        b.copy_from_slice(p);
        b
    });
    let mut rest = runs;
    while let Some((run, next)) = next_run(rest) {
        let (off, len) = (run.off, run.len);
        match (run.body, &before) {
            (RunBody::Bytes(b), _) => p[off..off + len].copy_from_slice(b),
            (RunBody::Copy(from), Some(b)) => {
                p[off..off + len].copy_from_slice(&b[from..from + len])
            }
            (RunBody::Copy(_), None) => unreachable!("copy runs were counted above"),
        }
        rest = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node;
    use proptest::prelude::*;

    /// The runs as first written, byte by byte: the word-wise `run_end` must cut the same.
    fn reference(old: &[u8], new: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < PAGE_SIZE {
            while i < PAGE_SIZE && old[i] == new[i] {
                i += 1;
            }
            if i == PAGE_SIZE {
                break;
            }
            let (start, mut end, mut j) = (i, i + 1, i + 1);
            while j < PAGE_SIZE {
                if old[j] != new[j] {
                    end = j + 1;
                } else if j - end >= DELTA_MERGE_GAP {
                    break;
                }
                j += 1;
            }
            out.extend_from_slice(&(start as u16).to_le_bytes());
            out.extend_from_slice(&((end - start) as u16).to_le_bytes());
            out.extend_from_slice(&new[start..end]);
            if out.len() >= PAGE_SIZE {
                return None;
            }
            i = end;
        }
        Some(out)
    }

    proptest! {
        #[test]
        fn delta_runs_cut_where_the_bytewise_scan_did(
            seed in proptest::collection::vec(any::<u8>(), PAGE_SIZE),
            edits in proptest::collection::vec((0..PAGE_SIZE, 1usize..40, any::<u8>()), 0..60),
            shift in proptest::option::of((prop_oneof![0usize..64, 0..PAGE_SIZE], 1usize..512, 0usize..3)),
        ) {
            let old = seed;
            let mut new = old.clone();
            // A shifted stretch, as when cell pointers move over by one slot (or by 2 bytes:
            // no copy run). Anywhere, the header included: copies must stay out of it.
            if let Some((at, len, how)) = shift {
                let by = if how == 0 { 2 } else { node::SLOT };
                let end = (at + len).min(PAGE_SIZE - by);
                if at < end {
                    if how == 2 {
                        new.copy_within(at + by..end + by, at);
                    } else {
                        new.copy_within(at..end, at + by);
                    }
                }
            }
            for (at, len, b) in edits {
                for x in &mut new[at..(at + len).min(PAGE_SIZE)] {
                    *x ^= b | 1;
                }
            }
            let mut got = Vec::new();
            let got = delta_runs(&old, &new, &mut got).map(|()| got);
            let want = reference(&old, &new);
            // The same stretches (a copy run and the literal bytes around it are one stretch
            // cut in pieces), never more bytes, and applied to `old` they give `new`.
            prop_assert_eq!(got.as_deref().map(stretches), want.as_deref().map(stretches));
            if let (Some(got), Some(want)) = (&got, &want) {
                prop_assert!(got.len() <= want.len());
                if !got.is_empty() {
                    prop_assert_eq!(validate_runs(got), Ok(()));
                }
                let mut p = old.clone();
                apply_runs(&mut p, got);
                prop_assert_eq!(p, new);
            }
        }

        /// Cells inserted into and deleted from a real leaf, as the tree does: the delta is
        /// exact, and a shifted slot array is logged as a copy run.
        #[test]
        fn a_leafs_shifted_slots_are_logged_as_a_copy(
            keys in proptest::collection::btree_set(proptest::collection::vec(any::<u8>(), 1..16), 40..90),
            at in any::<proptest::sample::Index>(),
            insert in any::<bool>(),
        ) {
            use crate::page::PageKind;
            let cells: Vec<Vec<u8>> = keys
                .iter()
                .map(|k| {
                    let mut c = Vec::new();
                    node::encode_key_field(k, PageId(0), &mut c);
                    node::encode_inline_value(b"value", &mut c);
                    c
                })
                .collect();
            let i = at.index(cells.len());
            let leaf = |cells: &[&Vec<u8>]| {
                let mut p = vec![0u8; PAGE_SIZE];
                crate::page::init(&mut p, PageKind::Leaf, PageId(5));
                for (j, c) in cells.iter().enumerate() {
                    assert!(node::insert_cell(&mut p, PageKind::Leaf, j, c));
                }
                p
            };
            // Insert: the page lacks cell i, which then goes in; delete: it has it and loses it.
            // With the stretches the change says it wrote, and the change itself.
            let (old, new, wrote, change) = if insert {
                let without: Vec<&Vec<u8>> =
                    cells.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, c)| c).collect();
                let old = leaf(&without);
                let mut new = old.clone();
                let wrote = node::insert_cell_where(&mut new, PageKind::Leaf, i, &cells[i]);
                prop_assert!(wrote.is_some());
                let wrote = wrote.unwrap_or_default();
                let change = SlotChange::Insert { idx: i, n: without.len(), cell: wrote[1] };
                (old, new, wrote, change)
            } else {
                let old = leaf(&cells.iter().collect::<Vec<_>>());
                let mut new = old.clone();
                node::remove_cell(&mut new, PageKind::Leaf, i);
                let wrote = [(0, HEADER_SIZE + node::SLOT * cells.len()), (0, 0)];
                (old, new, wrote, SlotChange::Remove { idx: i, n: cells.len() })
            };
            let mut runs = Vec::new();
            prop_assert!(delta_runs(&old, &new, &mut runs).is_some());
            let mut p = old.clone();
            apply_runs(&mut p, &runs);
            prop_assert_eq!(&p, &new);
            // Compared only where it wrote, the delta is the same.
            let ranges: Vec<(u16, u16)> =
                wrote.iter().filter(|(a, b)| a < b).map(|&(a, b)| (a as u16, b as u16)).collect();
            let mut within = Vec::new();
            prop_assert!(delta_runs_within(&old, &new, &ranges, &mut within).is_some());
            prop_assert!(runs_rebuild(&old, &within, &new));
            // (A run the whole-page scan joins across the equal bytes between two stretches
            // is two runs here: one more run header at most.)
            prop_assert!(within.len() <= runs.len() + 4, "{} against {}", within.len(), runs.len());
            // Written from the change without comparing, it rebuilds the page too, and is
            // no bigger than the compared one but for a slot's bytes.
            if old[5] == new[5] {
                let mut direct = Vec::new();
                prop_assert!(slot_change_runs(&old, &new, change, &mut direct).is_some());
                prop_assert_eq!(validate_runs(&direct), Ok(()));
                prop_assert!(runs_rebuild(&old, &direct, &new));
                prop_assert!(direct.len() <= runs.len() + 16, "{} against {}", direct.len(), runs.len());
            }
            let literal = reference(&old, &new).map_or(PAGE_SIZE, |r| r.len());
            let moved = node::SLOT * (cells.len() - 1 - i);
            // Of the slots moved, all but a few bytes at the ends are left out of the log.
            if moved >= 64 {
                prop_assert!(
                    runs.len() + moved <= literal + 32,
                    "{} bytes logged, {} literal, {} bytes of slots moved", runs.len(), literal, moved
                );
            }
        }
    }

    /// The stretches of the page a delta's runs cover, adjacent runs joined.
    fn stretches(mut runs: &[u8]) -> Vec<(usize, usize)> {
        let mut out: Vec<(usize, usize)> = Vec::new();
        while let Some((run, rest)) = next_run(runs) {
            match out.last_mut() {
                Some(last) if last.1 == run.off => last.1 += run.len,
                _ => out.push((run.off, run.off + run.len)),
            }
            runs = rest;
        }
        out
    }
}
