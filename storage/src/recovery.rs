//! Crash recovery: redo from the last checkpoint's redo LSN to the end of the valid log.
//!
//! Records are replayed a batch at a time, assembled by `wal::batch` (the same rules a
//! replica applies with): a batch's page records are held until its commit record is read, so
//! a batch cut short by the crash is never half applied. Replay stops at the first record that
//! is cut short, fails its checksum or breaks a batch rule (or at zeroed, never-written log).
//!
//! Where it stopped is then classified (docs/wal.md, "Torn tail or damage"):
//! - a **torn tail**: nothing valid follows, or what follows is no proof that the bad record
//!   was ever synced (a power loss can keep later sectors of an unsynced flush and lose
//!   earlier ones). Nothing in it was acknowledged; the log is cut there — zeroed to the end
//!   of its segment, later segments deleted — so nothing after it is ever read again;
//! - **damage**: a valid commit record after it says the log had been synced past the bad
//!   record when it was written (`synced_lsn`). Acknowledged commits may lie beyond it, so
//!   the log is never cut silently: a primary refuses to open ([`Error::WalDamaged`]), a
//!   replica (`OnDamage::Truncate`) cuts it and refetches the rest from its primary.
use std::collections::HashMap;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::page::{self, PageArc};
use crate::pager::PageFile;
use crate::types::{Lsn, PageId};
use crate::wal::batch::{Assembler, Event, PageRecord, Stop};
use crate::wal::record;
use crate::wal::segment::Segments;
use crate::wal::segment::{segment_name, SEGMENT_HEADER};
use crate::wal::verify::WalDamage;

pub(crate) struct Recovered {
    /// Pages changed by replay, in their replayed state (checksum field zero).
    pub pages: HashMap<PageId, PageArc>,
    /// End of the last complete record (a commit, checkpoint or epoch change): the log
    /// continues from here.
    pub end: Lsn,
    /// End of the last replayed commit, if any.
    pub last_commit_end: Option<Lsn>,
    /// The redo LSN named by the last checkpoint record replayed (a replica restarts its own
    /// checkpoints from the primary's).
    pub last_checkpoint_redo: Option<Lsn>,
    /// Epoch records replayed (epoch, LSN): a crash may have come between one and the
    /// epochs and control files that record it.
    pub epochs_seen: Vec<(u32, Lsn)>,
    /// Damage found and cut off (only with `OnDamage::Truncate`).
    pub damage_cut: Option<WalDamage>,
    /// Recovery threw log away: a torn tail (bytes that were not zeros past the end) or
    /// damage. A peer may hold what was thrown away.
    pub discarded: bool,
}

/// What recovery does with damage (valid, synced log after a bad record).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OnDamage {
    /// Refuse to open: acknowledged commits may lie past it, and this node has nowhere to
    /// get them from.
    Refuse,
    /// Cut the log there (a replica: it refetches the rest from its primary).
    Truncate,
}

/// Where replay stopped: the position of the first record it could not take, why, and
/// whether what lies there is clean (zeroed, never-written log, or no more segments).
pub(crate) struct Stopped {
    pub at: Lsn,
    pub reason: String,
    pub clean: bool,
    /// Records read and commits among them.
    pub records: u64,
    pub commits: u64,
    /// Valid log after `at` that proves the bad record had been synced.
    pub damage: Option<WalDamage>,
    /// The first valid record after `at` when it proves nothing (a torn tail of a flush
    /// whose later sectors reached the disk before its earlier ones).
    pub unproven_after: Option<Lsn>,
}

pub(crate) fn recover(
    file: &PageFile,
    segs: &mut Segments,
    redo: Lsn,
    closed_cleanly: bool,
    on_damage: OnDamage,
) -> Result<Recovered> {
    replay(Some((file, on_damage)), segs, redo, closed_cleanly).map(|(r, _)| r)
}

/// Replays the log from `redo`: with `file`, applies it and truncates what follows the last
/// complete record (recovery) unless that is damage to refuse; without, only reads
/// (`check_wal`), changing nothing. `closed_cleanly`: the control file says the node was
/// closed, not stopped by a crash.
pub(crate) fn replay(
    file: Option<(&PageFile, OnDamage)>,
    segs: &mut Segments,
    redo: Lsn,
    closed_cleanly: bool,
) -> Result<(Recovered, Stopped)> {
    let t0 = Instant::now();
    let mut out = Recovered {
        pages: HashMap::new(),
        end: redo,
        last_commit_end: None,
        last_checkpoint_redo: None,
        epochs_seen: Vec::new(),
        damage_cut: None,
        discarded: false,
    };
    let present = segs.list()?;
    let mut pos = redo.0;
    let mut buf: Vec<u8> = Vec::new();
    let mut buf_start = pos;
    let mut batches = Assembler::new();
    let (mut records, mut commits) = (0u64, 0u64);
    // The page count as the last batch that wrote the meta page left it.
    let mut page_count: Option<u64> = None;
    let mut seg = segs.start_of(pos);
    let mut tail_is_clean = false;
    let reason = loop {
        if !present.contains(&seg) {
            tail_is_clean = buf.len() as u64 == pos - buf_start;
            break if pos == buf_start + buf.len() as u64 {
                format!("end of the log (no segment for LSN {seg})")
            } else {
                format!("record at LSN {pos} cut short at the end of the log")
            };
        }
        let from = (buf_start + buf.len() as u64).max(seg);
        let n = (seg + segs.segment_bytes - from) as usize;
        let old = buf.len();
        buf.resize(old + n, 0);
        segs.read_at(seg, from, &mut buf[old..])?;
        let stop = loop {
            let at = (pos - buf_start) as usize;
            match batches.push(&buf[at..], Lsn(pos)) {
                Ok((len, event)) => {
                    records += 1;
                    match event {
                        None => {}
                        Some(Event::Commit { records, end, .. }) => {
                            if let Some((file, _)) = file {
                                for rec in &records {
                                    apply(file, &mut out.pages, rec)?;
                                }
                                if records.iter().any(|r| r.page.0 == 0) {
                                    drop_cut_pages(&mut out.pages, &mut page_count);
                                }
                            }
                            commits += 1;
                            out.end = end;
                            out.last_commit_end = Some(end);
                        }
                        Some(Event::Checkpoint { redo, end }) => {
                            out.last_checkpoint_redo = Some(redo);
                            out.end = end;
                        }
                        Some(Event::Epoch { epoch, start, end }) => {
                            out.epochs_seen.push((epoch, start));
                            out.end = end;
                        }
                    }
                    pos += len as u64;
                }
                Err(Stop::Incomplete) => break None,
                Err(stop @ Stop::Invalid(_)) => {
                    tail_is_clean = stop.is_zeroed() && buf[at..].iter().all(|&b| b == 0);
                    break Some(format!("at LSN {pos}: {}", stop.reason()));
                }
                Err(Stop::Misplaced(why)) => break Some(why),
            }
        };
        if let Some(reason) = stop {
            break reason;
        }
        let consumed = (pos - buf_start) as usize;
        buf.drain(..consumed);
        buf_start = pos;
        seg += segs.segment_bytes;
    };
    // A close ends the log with its checkpoint, the one record from the redo point the
    // control file names: whatever follows is not log (zeros, or, in a segment recycled from
    // an older one, that segment's records) and neither damage nor a torn tail. Taking it
    // for one made every restart of a node that had recycled segments resume its epoch.
    let closed_tail = closed_cleanly
        && records == 1
        && commits == 0
        && out.last_checkpoint_redo == Some(redo)
        && out.end.0 == pos;
    let tail_is_clean = tail_is_clean || closed_tail;
    // Zeroes to the end of the segment and no later segment: nothing can follow.
    let later_segments = present.iter().any(|&s| s > segs.start_of(pos));
    let (damage, unproven_after) = if tail_is_clean && !later_segments {
        (None, None)
    } else {
        classify(segs, Lsn(pos), &reason)?
    };
    let stopped = Stopped {
        at: Lsn(pos),
        reason: reason.clone(),
        clean: tail_is_clean,
        records,
        commits,
        damage,
        unproven_after,
    };
    let Some((_, on_damage)) = file else {
        return Ok((out, stopped));
    };
    if let Some(d) = &stopped.damage {
        match on_damage {
            OnDamage::Refuse => return Err(Error::WalDamaged(Box::new(d.clone()))),
            OnDamage::Truncate => {
                tracing::error!(damage = %d, "WAL damaged: cutting the log at the damage");
                out.damage_cut = Some(d.clone());
            }
        }
    } else if let Some(next) = stopped.unproven_after {
        tracing::warn!(at = pos, next_valid = next.0, stop = %reason, "valid records follow the end of the log, but none says the log was synced past it: the tail of an unsynced flush torn by a power loss; discarded");
    }
    out.discarded = !tail_is_clean || out.end.0 != pos;
    let later_segments = present.iter().any(|&s| s > segs.start_of(out.end.0));
    // (After a close, later segments are the spares recycled ahead: kept.)
    if !closed_tail && (!tail_is_clean || out.end.0 != pos || later_segments) {
        segs.truncate_after(out.end.0)?;
    }
    // What recovery kept may never have been synced (a process crash leaves it in the page
    // cache): sync it before new commits say, in their `synced_lsn`, that it was.
    segs.sync_range(redo.0, out.end.0)?;
    let quiet = commits == 0 && batches.open_records() == 0 && tail_is_clean;
    macro_rules! report {
        ($lvl:ident) => {
            tracing::$lvl!(
                redo_from = redo.0,
                end = out.end.0,
                records,
                commits,
                discarded_records = batches.open_records(),
                pages = out.pages.len(),
                elapsed_ms = t0.elapsed().as_millis() as u64,
                stop = %reason,
                "recovery done"
            )
        };
    }
    if quiet {
        report!(debug);
    } else {
        report!(info);
    }
    Ok((out, stopped))
}

/// The first position after `from` where a whole, valid record of that position lies (its
/// header names that LSN and its checksum holds), searching the segments present. A log
/// whose replay stopped at `from` and that has one is damaged, not cut: a crash leaves
/// nothing valid after the tail it tore (but see `WalDamage` on power losses).
pub(crate) fn next_valid_record(segs: &mut Segments, from: Lsn) -> Result<Option<Lsn>> {
    let present = segs.list()?;
    let seg_bytes = segs.segment_bytes;
    for &seg in present.iter().filter(|&&s| s + seg_bytes > from.0) {
        // The segment, plus the start of the next (a record may cross into it).
        let mut buf = vec![0u8; seg_bytes as usize];
        segs.read_at(seg, seg, &mut buf)?;
        if present.contains(&(seg + seg_bytes)) {
            let mut more = vec![0u8; record::MAX_RECORD];
            segs.read_at(seg + seg_bytes, seg + seg_bytes, &mut more)?;
            buf.extend_from_slice(&more);
        }
        let first = from.0.saturating_add(1).max(seg) - seg;
        for off in first..seg_bytes {
            let o = off as usize;
            // The header's LSN field first: one comparison rejects almost every offset
            // before a checksum is computed.
            let Some(field) = buf.get(o + 8..o + 16) else {
                break;
            };
            let q = seg + off;
            if field != q.to_le_bytes() {
                continue;
            }
            if record::decode(&buf[o..], Lsn(q)).is_ok() {
                return Ok(Some(Lsn(q)));
            }
        }
    }
    Ok(None)
}

/// Classifies the log after a stop at `at`: damage (a valid commit record after it says the
/// log was synced past `at` when it was written), or a torn tail — with the first valid
/// record after `at`, if any, when it proves nothing.
fn classify(
    segs: &mut Segments,
    at: Lsn,
    reason: &str,
) -> Result<(Option<WalDamage>, Option<Lsn>)> {
    let Some(first) = next_valid_record(segs, at)? else {
        return Ok((None, None));
    };
    let mut pos = first;
    let mut buf = vec![0u8; record::MAX_RECORD];
    loop {
        // Walk the chain of valid records from `pos`; where it breaks, search again.
        let n = read_stream(segs, pos, &mut buf)?;
        match record::decode(&buf[..n], pos) {
            Ok((rec, len)) => {
                if let record::Body::Commit { synced, .. } = rec.body {
                    if synced > at {
                        let seg = segs.start_of(at.0);
                        return Ok((
                            Some(WalDamage {
                                lsn: at,
                                segment: segment_name(seg),
                                offset: SEGMENT_HEADER + (at.0 - seg),
                                reason: reason.to_string(),
                                next_valid: first,
                                proof: pos,
                                synced,
                            }),
                            None,
                        ));
                    }
                }
                pos = Lsn(pos.0 + len as u64);
            }
            Err(_) => match next_valid_record(segs, pos)? {
                Some(next) => pos = next,
                None => return Ok((None, Some(first))),
            },
        }
    }
}

/// Reads the stream bytes from `from` into `buf` (up to its length, across a segment
/// boundary, stopping where the segments present end); returns how many were read.
fn read_stream(segs: &mut Segments, from: Lsn, buf: &mut [u8]) -> Result<usize> {
    let present = segs.list()?;
    let mut done = 0usize;
    while done < buf.len() {
        let at = from.0 + done as u64;
        let seg = segs.start_of(at);
        if !present.contains(&seg) {
            break;
        }
        let n = ((seg + segs.segment_bytes - at) as usize).min(buf.len() - done);
        segs.read_at(seg, at, &mut buf[done..done + n])?;
        done += n;
    }
    Ok(done)
}

/// After a batch that wrote the meta page: if it lowered the page count (a shrink step),
/// the pages past the new end are no longer the database's, whatever earlier batches did to
/// them. (A meta page that does not parse is left for `PageFile::publish` to report.)
fn drop_cut_pages(pages: &mut HashMap<PageId, PageArc>, last: &mut Option<u64>) {
    let Some(count) = pages
        .get(&PageId(0))
        .and_then(|p| page::Meta::read(&p[..]).ok())
        .map(|m| m.page_count)
    else {
        return;
    };
    if last.is_none_or(|l| count < l) {
        pages.retain(|id, _| id.0 < count);
    }
    *last = Some(count);
}

/// Applies one page record from the log to the page it names, loading the page from the
/// file the first time.
fn apply(file: &PageFile, pages: &mut HashMap<PageId, PageArc>, rec: &PageRecord) -> Result<()> {
    let lsn = rec.lsn;
    redo_record(pages, rec, |id| {
        let mut p = page::page_zeroed();
        let b = page::page_mut(&mut p);
        file.read_page(id, b)?;
        page::verify(b, id).map_err(|e| Error::Corrupt {
            page: id,
            reason: format!("needed by the WAL record at LSN {lsn}, but damaged and the log holds no image of it: {e}"),
        })?;
        Ok(p)
    })
}

/// Applies one page record to its page in `pages` — the redo shared by crash recovery and
/// replicas. The first record of a page that is a delta needs the page as it stood before:
/// `load` returns a copy of it (recovery: from the file; a replica: from its published
/// state). An image needs no base.
pub(crate) fn redo_record(
    pages: &mut HashMap<PageId, PageArc>,
    rec: &PageRecord,
    load: impl FnOnce(PageId) -> Result<PageArc>,
) -> Result<()> {
    let p = match pages.entry(rec.page) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        std::collections::hash_map::Entry::Vacant(v) => {
            let b = if rec.is_image() {
                page::page_zeroed()
            } else {
                load(rec.page)?
            };
            v.insert(b)
        }
    };
    record::redo(page::page_mut(p), &rec.as_record());
    Ok(())
}
