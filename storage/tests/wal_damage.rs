//! Torn tail or damage (docs/wal.md): each row of the table, on real files of a stopped
//! database. A bad record with a valid commit after it that was written once the log had
//! been synced past it is damage: opening refuses (nothing on disk changes) and names the
//! segment, offset and LSN; `check_wal` says the same; a replica (or an operator who accepts
//! the loss) cuts the log there. Anything else after the end of the log is a torn tail and
//! is discarded, as before.

use std::path::Path;
use std::time::Duration;

use storage::internals::record::{self, Body};
use storage::internals::segment::{segment_name, SEGMENT_HEADER};
use storage::{check_wal, Db, Durability, Error, Lsn, Options, WalDamage, WAL_DIR};

const SEG: u64 = 64 * 1024;

fn options() -> Options {
    Options {
        wal_segment_bytes: SEG,
        checkpoint_wal_bytes: 1 << 40,
        checkpoint_interval: Duration::from_secs(3600),
        ..Options::default()
    }
}

fn key(i: usize) -> Vec<u8> {
    format!("key{i:05}").into_bytes()
}

fn value(i: usize) -> Vec<u8> {
    (0..300).map(|j| (i * 31 + j * 7) as u8).collect()
}

/// A record of the log: where it starts, its length, and whether it is a commit.
#[derive(Clone, Copy, Debug)]
struct Rec {
    lsn: u64,
    len: u64,
    commit: bool,
}

/// A stopped database (crashed after its last flush, never checkpointed) holding `n`
/// acknowledged commits over several WAL segments. Returns each commit's end LSN.
fn build(dir: &Path, n: usize) -> Vec<u64> {
    let db = Db::open(dir, options()).unwrap();
    let ends = (0..n)
        .map(|i| db.put(&key(i), &value(i), Durability::Local).unwrap().0)
        .collect();
    db.simulate_crash();
    ends
}

/// The log's records from LSN 0 to its end.
fn records(dir: &Path) -> Vec<Rec> {
    let stream = stream(dir);
    let mut out = Vec::new();
    let mut pos = 0usize;
    while let Ok((rec, len)) = record::decode(&stream[pos..], Lsn(pos as u64)) {
        out.push(Rec {
            lsn: pos as u64,
            len: len as u64,
            commit: matches!(rec.body, Body::Commit { .. }),
        });
        pos += len;
    }
    out
}

/// The WAL stream from LSN 0, segment after segment.
fn stream(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    let mut seg = 0;
    while let Ok(b) = std::fs::read(seg_path(dir, seg)) {
        out.extend_from_slice(&b[SEGMENT_HEADER as usize..]);
        seg += SEG;
    }
    out
}

fn seg_path(dir: &Path, seg: u64) -> std::path::PathBuf {
    dir.join(WAL_DIR).join(segment_name(seg))
}

/// Applies `f` to the stream byte at `lsn`, in its segment file.
fn poke(dir: &Path, lsn: u64, f: impl Fn(u8) -> u8) {
    let seg = lsn - lsn % SEG;
    let path = seg_path(dir, seg);
    let mut b = std::fs::read(&path).unwrap();
    let at = (SEGMENT_HEADER + lsn - seg) as usize;
    b[at] = f(b[at]);
    std::fs::write(&path, b).unwrap();
}

/// Every file of the data directory and its bytes.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for sub in [dir.to_path_buf(), dir.join(WAL_DIR)] {
        for e in std::fs::read_dir(&sub).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() && e.file_name() != "LOCK" {
                out.push((
                    e.path().display().to_string(),
                    std::fs::read(e.path()).unwrap(),
                ));
            }
        }
    }
    out.sort();
    out
}

/// Opening refuses with the damage at `lsn`, changing no file; `check_wal` reports the
/// same; cut at the damage (as a replica would), the commits that end before it are there
/// and none after.
fn assert_damage(dir: &Path, lsn: u64, ends: &[u64]) {
    let before = snapshot(dir);
    let d: WalDamage = match Db::open(dir, options()) {
        Err(Error::WalDamaged(d)) => *d,
        Err(e) => panic!("expected WalDamaged, got {e}"),
        Ok(_) => panic!("a damaged log opened as if it ended at the damage"),
    };
    assert_eq!(d.lsn, Lsn(lsn), "{d}");
    let seg = lsn - lsn % SEG;
    assert_eq!(d.segment, segment_name(seg));
    assert_eq!(d.offset, SEGMENT_HEADER + lsn - seg);
    assert!(d.synced > d.lsn && d.proof > d.lsn, "{d}");
    let msg = Error::WalDamaged(Box::new(d.clone())).to_string();
    for part in [&d.segment, &d.offset.to_string(), &lsn.to_string()] {
        assert!(msg.contains(part.as_str()), "{msg} does not name {part}");
    }
    assert!(
        snapshot(dir) == before,
        "a refused open changed the directory"
    );
    let w = check_wal(dir, &options()).unwrap();
    assert_eq!(w.damage.as_ref(), Some(&d));
    // Cut there: what ended before the damage survives, nothing after it.
    let db = Db::open(
        dir,
        Options {
            truncate_damaged_wal: true,
            ..options()
        },
    )
    .unwrap();
    assert_eq!(db.wal_damage_cut(), Some(&d));
    for (i, &end) in ends.iter().enumerate() {
        let got = db.get(&key(i)).unwrap();
        if end <= lsn {
            assert_eq!(
                got,
                Some(value(i)),
                "commit {i} (end {end}) before the damage"
            );
        } else {
            assert_eq!(
                got, None,
                "commit {i} (end {end}) after the damage at {lsn}"
            );
        }
    }
    db.close().unwrap();
    let w = check_wal(dir, &options()).unwrap();
    assert!(w.damage.is_none() && !w.discarded, "{w:?}");
}

/// Opens as a torn tail: the commits that end at or before `kept_through` are there.
fn assert_torn_tail(dir: &Path, kept_through: u64, ends: &[u64]) {
    let w = check_wal(dir, &options()).unwrap();
    assert!(w.damage.is_none(), "{:?}", w.damage);
    let db = Db::open(dir, options()).unwrap();
    assert!(db.wal_damage_cut().is_none());
    for (i, &end) in ends.iter().enumerate() {
        let got = db.get(&key(i)).unwrap();
        if end <= kept_through {
            assert_eq!(got, Some(value(i)), "commit {i} (end {end}) lost");
        } else {
            assert_eq!(got, None, "commit {i} (end {end}) past the torn tail");
        }
    }
}

fn setup() -> (tempfile::TempDir, Vec<u64>, Vec<Rec>) {
    let dir = tempfile::tempdir().unwrap();
    let ends = build(dir.path(), 800);
    let recs = records(dir.path());
    assert_eq!(
        recs.iter().filter(|r| r.commit).count(),
        800,
        "every commit is in the log"
    );
    assert!(
        recs.last().unwrap().lsn > 4 * SEG,
        "the log spans several segments"
    );
    (dir, ends, recs)
}

/// The first record that starts in segment `k`.
fn first_in_segment(recs: &[Rec], k: u64) -> Rec {
    *recs.iter().find(|r| r.lsn >= k * SEG).unwrap()
}

#[test]
fn a_damaged_record_at_the_start_of_a_segment() {
    let (dir, ends, recs) = setup();
    let r = first_in_segment(&recs, 2);
    poke(dir.path(), r.lsn + 20, |b| b ^ 0x10);
    assert_damage(dir.path(), r.lsn, &ends);
}

#[test]
fn a_damaged_record_in_the_middle_of_a_segment() {
    let (dir, ends, recs) = setup();
    let r = first_in_segment(&recs, 1);
    let r = *recs.iter().find(|x| x.lsn >= r.lsn + SEG / 2).unwrap();
    poke(dir.path(), r.lsn + r.len - 1, |b| b ^ 0x01);
    assert_damage(dir.path(), r.lsn, &ends);
}

#[test]
fn a_damaged_record_at_the_end_of_a_segment() {
    let (dir, ends, recs) = setup();
    let r = *recs
        .iter()
        .rev()
        .find(|x| x.lsn + x.len <= 2 * SEG)
        .unwrap();
    poke(dir.path(), r.lsn + 9, |b| b ^ 0x80);
    assert_damage(dir.path(), r.lsn, &ends);
}

#[test]
fn a_damaged_record_across_a_segment_boundary() {
    let (dir, ends, recs) = setup();
    let r = *recs
        .iter()
        .find(|x| x.lsn < 3 * SEG && x.lsn + x.len > 3 * SEG)
        .expect("a record crosses into segment 3");
    // The byte in the later segment.
    poke(dir.path(), 3 * SEG, |b| b ^ 0x04);
    assert_damage(dir.path(), r.lsn, &ends);
}

#[test]
fn a_damaged_record_in_the_last_segment() {
    let (dir, ends, recs) = setup();
    // Ten commits before the end: later flush rounds vouch for it.
    let commits: Vec<&Rec> = recs.iter().filter(|r| r.commit).collect();
    let r = *commits[commits.len() - 10];
    assert!(r.lsn >= recs.last().unwrap().lsn - recs.last().unwrap().lsn % SEG);
    poke(dir.path(), r.lsn + 33, |b| b.wrapping_add(1));
    assert_damage(dir.path(), r.lsn, &ends);
}

#[test]
fn a_zeroed_block_in_the_middle_of_the_log() {
    let (dir, ends, recs) = setup();
    // A 4 KiB block of the file in the middle of segment 1.
    let block_lsn = SEG + 8 * 4096 - SEGMENT_HEADER;
    let path = seg_path(dir.path(), SEG);
    let mut b = std::fs::read(&path).unwrap();
    let at = (SEGMENT_HEADER + block_lsn - SEG) as usize;
    b[at..at + 4096].fill(0);
    std::fs::write(&path, b).unwrap();
    let r = *recs
        .iter()
        .find(|x| x.lsn + x.len > block_lsn)
        .expect("a record overlaps the block");
    assert_damage(dir.path(), r.lsn, &ends);
}

#[test]
fn garbage_after_the_end_is_a_torn_tail() {
    let (dir, ends, recs) = setup();
    let last = *recs.last().unwrap();
    let end = last.lsn + last.len;
    for (n, lsn) in (end..end + 3000).enumerate() {
        poke(dir.path(), lsn, |_| (n * 131 + 7) as u8);
    }
    assert_torn_tail(dir.path(), end, &ends);
    // ...and a later open finds the log cut clean.
    let w = check_wal(dir.path(), &options()).unwrap();
    assert!(!w.discarded && w.unproven_after.is_none(), "{w:?}");
}

#[test]
fn a_record_cut_short_at_the_end_is_a_torn_tail() {
    let (dir, ends, recs) = setup();
    let last = *recs.last().unwrap();
    // Zero the last commit record from its middle on.
    for lsn in last.lsn + 10..last.lsn + last.len {
        poke(dir.path(), lsn, |_| 0);
    }
    assert_torn_tail(dir.path(), last.lsn, &ends);
}

/// Damage inside the last flush round: the only valid records after it were written with
/// it, before it was synced, so nothing proves it was ever durable — the tail a power loss
/// leaves when a later sector of an unsynced flush reached the disk and an earlier one did
/// not. Discarded as a torn tail; nothing in it was acknowledged had it been a power loss.
#[test]
fn a_bad_record_that_no_later_record_vouches_for_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), options()).unwrap();
    let mut ends = Vec::new();
    for i in 0..50 {
        ends.push(db.put(&key(i), &value(i), Durability::Local).unwrap().0);
    }
    // One last batch of several pages in one flush.
    let mut batch = storage::WriteBatch::new();
    for i in 50..400 {
        batch.put(key(i), value(i));
    }
    let end = db.commit(&batch, Durability::Local).unwrap().0;
    ends.extend(std::iter::repeat_n(end, 350));
    db.simulate_crash();
    let recs = records(dir.path());
    let synced_before = ends[49];
    let page_recs: Vec<&Rec> = recs
        .iter()
        .filter(|r| r.lsn >= synced_before && !r.commit)
        .collect();
    assert!(
        page_recs.len() > 2,
        "the last batch has several page records"
    );
    let r = page_recs[1];
    poke(dir.path(), r.lsn + 40, |b| b ^ 0xff);
    let w = check_wal(dir.path(), &options()).unwrap();
    assert!(w.damage.is_none(), "{:?}", w.damage);
    assert!(w.unproven_after.is_some(), "{w:?}");
    assert_torn_tail(dir.path(), synced_before, &ends);
}

/// Opening only to look (`Options::inspect`, what `replidb check` does) after a crash
/// appends nothing to the log: a record written there would fork this node's log from what
/// its replica holds at the same LSNs with no history entry saying so (found by the
/// randomized fault test: `check` checkpointed a crashed primary's log, which then streamed
/// into a mixed log as a replica). The next real start resumes the epoch instead.
#[test]
fn opening_to_inspect_after_a_crash_appends_nothing_to_the_log() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 50);
    let before = stream(dir.path());
    let last = *records(dir.path()).last().unwrap();
    let db = Db::open(
        dir.path(),
        Options {
            inspect: true,
            ..options()
        },
    )
    .unwrap();
    assert_eq!(db.get(&key(49)).unwrap(), Some(value(49)));
    assert!(db.epoch_history().is_empty());
    db.close().unwrap();
    // (A segment the log had not reached yet, prepared ahead full of zeros, may be gone:
    // recovery after a crash drops the segments past the end. Zeros are no log.)
    let written = |s: &[u8]| s.len() - s.iter().rev().take_while(|&&b| b == 0).count();
    let after = stream(dir.path());
    assert!(
        after[..written(&after)] == before[..written(&before)],
        "inspecting appended to the log"
    );
    // A real start afterwards resumes the epoch at the end it recovered.
    let db = Db::open(dir.path(), options()).unwrap();
    assert_eq!(
        db.epoch_history(),
        vec![(1, Lsn(last.lsn + last.len))],
        "resumed where the log ended"
    );
}

/// A primary that closed cleanly but whose log lost its tail since (bit rot in the last
/// records: nothing after them vouches for them, so recovery cuts them as a torn tail) may
/// have shipped that tail to a replica: it resumes its epoch at the cut all the same.
#[test]
fn a_log_cut_at_open_after_a_clean_close_resumes_the_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), options()).unwrap();
    for i in 0..20 {
        db.put(&key(i), &value(i), Durability::Local).unwrap();
    }
    db.close().unwrap();
    let last = *records(dir.path()).last().unwrap();
    poke(dir.path(), last.lsn + last.len - 1, |b| b ^ 0x40);
    let db = Db::open(dir.path(), options()).unwrap();
    assert_eq!(
        db.epoch_history(),
        vec![(1, Lsn(last.lsn))],
        "resumed where the cut log ends"
    );
    assert_eq!(db.get(&key(19)).unwrap(), Some(value(19)));
}

/// A node that ran long enough to recycle segments ends its log inside a recycled one: the
/// bytes after its last record are an older segment's records. A clean stop there is not a
/// torn tail: nothing is discarded, and reopening keeps the epoch.
#[test]
fn a_clean_stop_inside_a_recycled_segment_discards_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let opts = || Options {
        wal_segment_bytes: SEG,
        checkpoint_wal_bytes: 2 * SEG,
        ..options()
    };
    let db = Db::open(dir.path(), opts()).unwrap();
    for i in 0..2000 {
        db.put(&key(i % 500), &value(i), Durability::Local).unwrap();
    }
    let epoch = db.epoch();
    db.close().unwrap();
    let w = check_wal(dir.path(), &opts()).unwrap();
    assert!(w.damage.is_none() && !w.discarded, "{w:?}");
    let db = Db::open(dir.path(), opts()).unwrap();
    assert_eq!(db.epoch(), epoch, "a clean stop resumed its epoch");
    assert_eq!(db.get(&key(7)).unwrap(), Some(value(1507)));
}
