//! Batches: the one place where a stream of WAL records becomes what redo applies.
//!
//! Crash recovery and a replica's apply both feed their records through an [`Assembler`], so
//! they accept exactly the same streams under exactly the same rules, and every record is
//! decoded and validated once. The rules:
//!
//! | record                     | no batch open                 | a batch open (page records seen) |
//! |----------------------------|-------------------------------|----------------------------------|
//! | page image / delta         | opens a batch                 | joins the batch                  |
//! | commit, count = records    | an empty commit (count 0)     | closes the batch: `Commit`       |
//! | commit, count ≠ records    | refused (`Misplaced`)         | refused (`Misplaced`)            |
//! | checkpoint                 | `Checkpoint`                  | refused (`Misplaced`)            |
//! | epoch change               | `Epoch`                       | refused (`Misplaced`)            |
//!
//! The writer never produces a refused shape (a batch's records and its commit are appended
//! in one piece under the writer's lock, and checkpoint and epoch records are appended under
//! that lock too), so a refused record is damage, or a peer that is not a well-behaved
//! replidb primary. Before this module, a replica accepted what its own recovery later cut off.

use crate::types::{Lsn, PageId};

/// The most page records one batch may hold (1 GiB of page images). The writer refuses a
/// larger transaction (`Error::BatchTooLarge`), so a replica, which holds an open batch in
/// memory until its commit, refuses a longer run of page records from its primary as damage
/// or a hostile peer instead of growing without bound. Recovery does not enforce it: a log
/// written before the limit existed may hold a longer batch, and cutting it off there would
/// lose the commits after it.
pub const MAX_BATCH_PAGES: usize = 1 << 18;
use crate::wal::record::{self, Body, DecodeError, Record};

/// A page record of a batch, decoded once and owned (the batch outlives the buffer its
/// bytes arrived in: a replica's batch may span several network frames).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PageRecord {
    pub lsn: Lsn,
    pub epoch: u32,
    pub page: PageId,
    pub change: PageChange,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PageChange {
    /// The page's whole image (validated: one page, naming this page).
    Image(Box<[u8]>),
    /// Byte runs to patch (validated: in bounds of a page).
    Delta(Box<[u8]>),
}

impl PageRecord {
    /// The record as the redo function takes it, borrowing this one's bytes.
    pub fn as_record(&self) -> Record<'_> {
        let body = match &self.change {
            PageChange::Image(image) => Body::PageImage {
                page: self.page,
                image,
            },
            PageChange::Delta(runs) => Body::PageDelta {
                page: self.page,
                runs,
            },
        };
        Record {
            lsn: self.lsn,
            epoch: self.epoch,
            body,
        }
    }

    pub fn is_image(&self) -> bool {
        matches!(self.change, PageChange::Image(_))
    }
}

/// What a complete record means for redo.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// A batch is complete: apply its page records, then everything before `end` is visible.
    Commit {
        records: Vec<PageRecord>,
        timestamp_us: u64,
        end: Lsn,
    },
    /// A checkpoint record: a restart may begin redo at `redo`.
    Checkpoint { redo: Lsn, end: Lsn },
    /// The writer entered `epoch`; the record starts at `start`.
    Epoch { epoch: u32, start: Lsn, end: Lsn },
}

/// Why the record at a position yields nothing (yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The record is cut short: more bytes may follow (a stream) or the tail was torn (a file).
    Incomplete,
    /// The bytes are not a record at this LSN (checksum, length, kind, LSN, zeroes...).
    Invalid(String),
    /// A valid record that breaks a batch rule (see the table above).
    Misplaced(String),
}

impl Stop {
    /// The record's bytes are all zero from here: never-written log, not damage.
    pub fn is_zeroed(&self) -> bool {
        matches!(self, Stop::Invalid(why) if why.starts_with("zeroed"))
    }

    pub fn reason(&self) -> &str {
        match self {
            Stop::Incomplete => "record cut short",
            Stop::Invalid(why) | Stop::Misplaced(why) => why,
        }
    }
}

/// Turns records into [`Event`]s, holding the page records of the batch open so far.
#[derive(Debug, Default)]
pub(crate) struct Assembler {
    pending: Vec<PageRecord>,
    /// The most page records a batch may hold (`None`: no limit).
    batch_limit: Option<usize>,
}

impl Assembler {
    /// Crash recovery's assembler (no batch limit, see `MAX_BATCH_PAGES`).
    pub fn new() -> Assembler {
        Assembler::default()
    }

    /// A replica's: batches of at most `MAX_BATCH_PAGES` page records.
    pub fn for_stream() -> Assembler {
        Assembler {
            pending: Vec::new(),
            batch_limit: Some(MAX_BATCH_PAGES),
        }
    }

    /// Takes the record at the start of `buf`, which sits at `lsn`. On success returns how
    /// many bytes it was and the event it completed, if any; on a `Stop`, nothing changed (a
    /// refused record leaves the open batch as it was).
    pub fn push(&mut self, buf: &[u8], lsn: Lsn) -> Result<(usize, Option<Event>), Stop> {
        let (rec, len) = record::decode(buf, lsn).map_err(|e| match e {
            DecodeError::Incomplete { .. } => Stop::Incomplete,
            DecodeError::Invalid(why) => Stop::Invalid(why),
        })?;
        let end = Lsn(lsn.0 + len as u64);
        let misplaced = |what: &str| {
            Stop::Misplaced(format!(
                "{what} at LSN {lsn} inside a batch of {} page records",
                self.pending.len()
            ))
        };
        if rec.page().is_some() && self.batch_limit.is_some_and(|m| self.pending.len() >= m) {
            return Err(Stop::Misplaced(format!(
                "page record at LSN {lsn} makes a batch of more than {MAX_BATCH_PAGES} page records"
            )));
        }
        let event = match rec.body {
            Body::PageImage { page, image } => {
                self.pending.push(PageRecord {
                    lsn,
                    epoch: rec.epoch,
                    page,
                    change: PageChange::Image(image.into()),
                });
                None
            }
            Body::PageDelta { page, runs } => {
                self.pending.push(PageRecord {
                    lsn,
                    epoch: rec.epoch,
                    page,
                    change: PageChange::Delta(runs.into()),
                });
                None
            }
            Body::Commit {
                timestamp_us,
                page_records,
                ..
            } => {
                if page_records as usize != self.pending.len() {
                    return Err(Stop::Misplaced(format!(
                        "commit at LSN {lsn} counts {page_records} page records, the log holds {}",
                        self.pending.len()
                    )));
                }
                Some(Event::Commit {
                    records: std::mem::take(&mut self.pending),
                    timestamp_us,
                    end,
                })
            }
            Body::Checkpoint { redo_lsn } => {
                if !self.pending.is_empty() {
                    return Err(misplaced("checkpoint record"));
                }
                // A checkpoint's redo point is where it started, before the record itself.
                if redo_lsn > lsn {
                    return Err(Stop::Invalid(format!(
                        "checkpoint record at LSN {lsn} names redo LSN {redo_lsn}, after itself"
                    )));
                }
                Some(Event::Checkpoint {
                    redo: redo_lsn,
                    end,
                })
            }
            Body::EpochChange { epoch } => {
                if !self.pending.is_empty() {
                    return Err(misplaced("epoch change record"));
                }
                // Epochs start at 1 (a record naming the epoch it is in resumes it after a
                // primary's unclean stop); the last value could never be followed by a
                // promotion.
                if epoch == 0 || epoch == u32::MAX {
                    return Err(Stop::Invalid(format!(
                        "epoch change record at LSN {lsn} names epoch {epoch}"
                    )));
                }
                Some(Event::Epoch {
                    epoch,
                    start: lsn,
                    end,
                })
            }
        };
        Ok((len, event))
    }

    /// Page records of the batch open now (its commit not seen yet).
    pub fn open_records(&self) -> usize {
        self.pending.len()
    }

    /// Forgets the open batch (its records are cut from the log, or the log was replaced).
    pub fn discard_open(&mut self) -> usize {
        std::mem::take(&mut self.pending).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page::{self, PAGE_SIZE};

    fn image(out: &mut Vec<u8>, page: u64) -> usize {
        let lsn = Lsn(out.len() as u64);
        let mut p = vec![0u8; PAGE_SIZE];
        page::header_mut(&mut p).page_id.set(page);
        record::encode_page_image(out, lsn, 1, PageId(page), &p)
    }

    fn commit(out: &mut Vec<u8>, count: u32) -> usize {
        let lsn = Lsn(out.len() as u64);
        record::encode_commit(out, lsn, 1, 7, count, Lsn(0))
    }

    fn checkpoint(out: &mut Vec<u8>) -> usize {
        let lsn = Lsn(out.len() as u64);
        record::encode_checkpoint(out, lsn, 1, Lsn(0))
    }

    fn epoch(out: &mut Vec<u8>) -> usize {
        let lsn = Lsn(out.len() as u64);
        record::encode_epoch_change(out, lsn, 1, 2)
    }

    /// Feeds the whole stream; returns the events and where it stopped (if before the end).
    fn run(stream: &[u8]) -> (Vec<Event>, Option<(u64, Stop)>) {
        let mut a = Assembler::new();
        let (mut at, mut events) = (0usize, Vec::new());
        while at < stream.len() {
            match a.push(&stream[at..], Lsn(at as u64)) {
                Ok((len, e)) => {
                    at += len;
                    events.extend(e);
                }
                Err(stop) => return (events, Some((at as u64, stop))),
            }
        }
        (events, None)
    }

    #[test]
    fn every_row_of_the_rule_table() {
        // Page records open a batch, a commit with the right count closes it.
        let mut s = Vec::new();
        image(&mut s, 3);
        image(&mut s, 4);
        commit(&mut s, 2);
        let (ev, stop) = run(&s);
        assert_eq!(stop, None);
        assert!(matches!(&ev[..], [Event::Commit { records, .. }] if records.len() == 2));

        // An empty commit is a batch of nothing.
        let mut s = Vec::new();
        commit(&mut s, 0);
        let (ev, stop) = run(&s);
        assert_eq!(stop, None);
        assert!(matches!(&ev[..], [Event::Commit { records, .. }] if records.is_empty()));

        // A count that does not match, with or without a batch open.
        for (pages, count) in [(1u64, 2u32), (2, 1), (0, 1)] {
            let mut s = Vec::new();
            for p in 0..pages {
                image(&mut s, p + 1);
            }
            let at = s.len() as u64;
            commit(&mut s, count);
            let (ev, stop) = run(&s);
            assert!(ev.is_empty());
            assert!(
                matches!(&stop, Some((l, Stop::Misplaced(_))) if *l == at),
                "{pages} pages, count {count}: {stop:?}"
            );
        }

        // Checkpoint and epoch records: events between batches, refused inside one.
        type Encode = fn(&mut Vec<u8>) -> usize;
        let encoders: [Encode; 2] = [checkpoint, epoch];
        for rec in encoders {
            let mut s = Vec::new();
            rec(&mut s);
            let (ev, stop) = run(&s);
            assert_eq!(stop, None);
            assert_eq!(ev.len(), 1);

            let mut s = Vec::new();
            image(&mut s, 1);
            let at = s.len() as u64;
            rec(&mut s);
            commit(&mut s, 1);
            let (ev, stop) = run(&s);
            assert!(ev.is_empty());
            assert!(matches!(&stop, Some((l, Stop::Misplaced(_))) if *l == at));
        }
    }

    #[test]
    fn a_refused_record_leaves_the_open_batch_as_it_was() {
        let mut s = Vec::new();
        image(&mut s, 1);
        let bad = s.len();
        commit(&mut s, 5);
        let mut a = Assembler::new();
        let (len, _) = a.push(&s, Lsn(0)).unwrap();
        assert!(matches!(
            a.push(&s[bad..], Lsn(bad as u64)),
            Err(Stop::Misplaced(_))
        ));
        assert_eq!(a.open_records(), 1);
        // The good commit for that batch is still taken.
        let mut good = s[..len].to_vec();
        commit(&mut good, 1);
        assert!(matches!(
            a.push(&good[len..], Lsn(len as u64)),
            Ok((_, Some(Event::Commit { .. })))
        ));
    }

    #[test]
    fn a_batch_longer_than_the_writer_can_make_is_refused_from_a_stream_only() {
        let mut a = Assembler::for_stream();
        let mut r = Assembler::new();
        let mut s = Vec::new();
        let runs = [0u8, 1, 1, 0, 7]; // one run: one byte at offset 256
        let mut at = 0usize;
        for _ in 0..MAX_BATCH_PAGES {
            s.clear();
            record::encode_page_delta(&mut s, Lsn(at as u64), 1, PageId(3), &runs);
            let (len, e) = a.push(&s, Lsn(at as u64)).unwrap();
            assert!(e.is_none());
            assert!(r.push(&s, Lsn(at as u64)).is_ok());
            at += len;
        }
        s.clear();
        record::encode_page_delta(&mut s, Lsn(at as u64), 1, PageId(3), &runs);
        assert!(matches!(
            a.push(&s, Lsn(at as u64)),
            Err(Stop::Misplaced(_))
        ));
        // Recovery takes it: a log written before the limit existed may hold such a batch.
        assert!(r.push(&s, Lsn(at as u64)).is_ok());
        // Its commit still closes the batch that is within the limit.
        s.clear();
        record::encode_commit(&mut s, Lsn(at as u64), 1, 0, MAX_BATCH_PAGES as u32, Lsn(0));
        assert!(matches!(
            a.push(&s, Lsn(at as u64)),
            Ok((_, Some(Event::Commit { .. })))
        ));
    }

    #[test]
    fn cut_and_zeroed_bytes_are_told_apart_from_damage() {
        let mut s = Vec::new();
        image(&mut s, 1);
        let mut a = Assembler::new();
        assert_eq!(a.push(&s[..100], Lsn(0)), Err(Stop::Incomplete));
        let zeros = [0u8; 64];
        assert!(a.push(&zeros, Lsn(0)).unwrap_err().is_zeroed());
        s[40] ^= 1;
        let e = a.push(&s, Lsn(0)).unwrap_err();
        assert!(matches!(&e, Stop::Invalid(_)) && !e.is_zeroed(), "{e:?}");
    }
}
