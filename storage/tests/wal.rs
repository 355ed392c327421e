//! The WAL: torn tails, group commit, I/O errors (sticky fsync failure, disk full), both
//! I/O backends, and the record codec.

use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use proptest::prelude::*;
use storage::internals::record::{self, Body, DecodeError};
use storage::{
    Db, Durability, Error, FaultInjector, Lsn, Options, PageId, WalIo, WriteBatch, WAL_DIR,
};

fn opts(io: WalIo) -> Options {
    Options {
        wal_io: io,
        wal_segment_bytes: 128 * 1024,
        ..Options::default()
    }
}

fn kv(i: u32) -> (Vec<u8>, Vec<u8>) {
    (
        format!("key{i:06}").into_bytes(),
        format!("value-{i}-")
            .repeat(1 + i as usize % 20)
            .into_bytes(),
    )
}

/// The segment file holding `lsn` and the file offset of `lsn` in it.
fn locate(dir: &std::path::Path, lsn: u64) -> (std::path::PathBuf, u64) {
    let seg = 128 * 1024u64;
    let start = lsn - lsn % seg;
    (
        dir.join(WAL_DIR).join(format!("{start:016x}.wal")),
        512 + lsn - start,
    )
}

fn commit_n(db: &Db, from: u32, n: u32) -> Vec<Lsn> {
    (from..from + n)
        .map(|i| {
            let (k, v) = kv(i);
            db.put(&k, &v, Durability::Local).unwrap()
        })
        .collect()
}

fn assert_present(db: &Db, range: std::ops::Range<u32>) {
    for i in range {
        let (k, v) = kv(i);
        assert_eq!(db.get(&k).unwrap(), Some(v), "key {i}");
    }
}

#[test]
fn recovery_replays_commits_after_the_last_checkpoint() {
    for io in [WalIo::Sync, WalIo::Uring] {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), opts(io)).unwrap();
        assert_eq!(
            db.stats().wal_io,
            if io == WalIo::Sync {
                "pwrite+fdatasync"
            } else {
                "io_uring"
            }
        );
        commit_n(&db, 0, 300);
        db.checkpoint().unwrap();
        commit_n(&db, 300, 300);
        let mut b = WriteBatch::new();
        for i in 0..100 {
            b.delete(kv(i).0);
        }
        db.commit(&b, Durability::Local).unwrap();
        db.simulate_crash();
        let db = Db::open(dir.path(), opts(io)).unwrap();
        assert_present(&db, 100..600);
        assert_eq!(db.get(&kv(5).0).unwrap(), None);
        assert_eq!(db.len(), 500);
        db.check_integrity().unwrap();
    }
}

/// Cuts the log inside the last record (zeroes its last bytes): recovery stops at the start
/// of that record, keeps everything before, and the database carries on from there.
#[test]
fn a_torn_tail_is_cut_off_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), opts(WalIo::Auto)).unwrap();
    let lsns = commit_n(&db, 0, 200);
    let end = db.flush_lsn().0;
    db.simulate_crash();
    assert_eq!(*lsns.last().unwrap(), Lsn(end));
    let (path, off) = locate(dir.path(), end - 10);
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&[0u8; 10], off).unwrap();
    drop(f);
    let db = Db::open(dir.path(), opts(WalIo::Auto)).unwrap();
    assert_present(&db, 0..199);
    assert_eq!(db.get(&kv(199).0).unwrap(), None, "the torn commit is gone");
    // The log continues after the last whole commit (plus the checkpoint recovery wrote),
    // not after the torn one.
    assert!(
        db.last_lsn() >= lsns[198] && db.last_lsn() < lsns[199],
        "the log continues after the last whole commit"
    );
    // New commits go where the torn one was, and survive another crash.
    commit_n(&db, 1000, 50);
    db.simulate_crash();
    let db = Db::open(dir.path(), opts(WalIo::Auto)).unwrap();
    assert_present(&db, 0..199);
    assert_present(&db, 1000..1050);
    db.check_integrity().unwrap();
}

#[test]
fn a_corrupt_record_with_synced_log_after_it_is_refused_or_cut_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), opts(WalIo::Auto)).unwrap();
    let lsns = commit_n(&db, 0, 100);
    db.simulate_crash();
    // Flip a byte inside commit #60 (between the ends of #59 and #60).
    let (path, off) = locate(dir.path(), lsns[59].0 + 40);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, off).unwrap();
    f.write_all_at(&[b[0] ^ 0xff], off).unwrap();
    drop(f);
    // Forty acknowledged commits follow it: that is damage, not a torn tail.
    match Db::open(dir.path(), opts(WalIo::Auto)) {
        Err(storage::Error::WalDamaged(d)) => assert_eq!(d.lsn, lsns[59]),
        Err(e) => panic!("expected WalDamaged, got {e}"),
        Ok(_) => panic!("opened a log damaged before forty synced commits"),
    }
    let db = Db::open(
        dir.path(),
        Options {
            truncate_damaged_wal: true,
            ..opts(WalIo::Auto)
        },
    )
    .unwrap();
    assert_present(&db, 0..60);
    for i in 60..100 {
        assert_eq!(
            db.get(&kv(i).0).unwrap(),
            None,
            "nothing after the bad record is applied"
        );
    }
    db.check_integrity().unwrap();
}

#[test]
fn concurrent_committers_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Db::open(dir.path(), opts(WalIo::Auto)).unwrap());
    let before = db.stats().wal_flushes;
    let threads: Vec<_> = (0..16u32)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    let (k, v) = kv(t * 1000 + i);
                    db.put(&k, &v, Durability::Local).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let flushes = db.stats().wal_flushes - before;
    assert!(flushes > 0);
    assert!(
        flushes < 16 * 50 / 2,
        "800 durable commits took {flushes} flushes: no group commit"
    );
    for t in 0..16 {
        assert_present(&db, t * 1000..t * 1000 + 50);
    }
}

#[test]
fn a_failed_fsync_is_sticky_until_reopen() {
    for io in [WalIo::Sync, WalIo::Uring] {
        let dir = tempfile::tempdir().unwrap();
        let faults = Arc::new(FaultInjector::default());
        let db = Db::open(
            dir.path(),
            Options {
                faults: Some(faults.clone()),
                ..opts(io)
            },
        )
        .unwrap();
        commit_n(&db, 0, 20);
        faults.sync_eio_after.store(1, Ordering::SeqCst);
        let (k, v) = kv(20);
        let err = db.put(&k, &v, Durability::Local).unwrap_err();
        assert!(matches!(err, Error::PreviousIo(_)), "{err}");
        assert!(err.to_string().contains("fsync"), "{err}");
        faults.clear();
        // Even with the disk healthy again, nothing more is accepted: a retried fsync can lie.
        let err = db.put(b"later", b"x", Durability::Off).unwrap_err();
        assert!(matches!(err, Error::PreviousIo(_)), "{err}");
        assert_present(&db, 0..20);
        drop(db);
        let db = Db::open(dir.path(), opts(io)).unwrap();
        assert_present(&db, 0..20);
        db.put(b"later", b"x", Durability::Local).unwrap();
        db.check_integrity().unwrap();
    }
}

#[test]
fn disk_full_fails_commits_and_they_resume_when_space_returns() {
    for io in [WalIo::Sync, WalIo::Uring] {
        let dir = tempfile::tempdir().unwrap();
        let faults = Arc::new(FaultInjector::default());
        let db = Db::open(
            dir.path(),
            Options {
                faults: Some(faults.clone()),
                ..opts(io)
            },
        )
        .unwrap();
        commit_n(&db, 0, 50);
        // Every new segment now fails to be created, as on a full disk.
        faults.repeat.store(true, Ordering::SeqCst);
        faults.segment_enospc_after.store(1, Ordering::SeqCst);
        let mut full = None;
        for i in 50..2000 {
            let (k, v) = kv(i);
            match db.put(&k, &v, Durability::Local) {
                Ok(_) => {}
                Err(e) => {
                    full = Some((i, e));
                    break;
                }
            }
        }
        let (failed_at, err) = full.expect("the log needed a new segment");
        assert!(matches!(err, Error::DiskFull(_)), "{err}");
        assert!(err.to_string().contains("disk full"), "{err}");
        // Reads still work and acknowledged data is intact.
        assert_present(&db, 0..failed_at);
        // Space comes back: writes work again.
        faults.clear();
        let (k, v) = kv(5000);
        db.put(&k, &v, Durability::Local).unwrap();
        drop(db);
        let db = Db::open(dir.path(), opts(io)).unwrap();
        assert_present(&db, 0..failed_at);
        assert_present(&db, 5000..5001);
        db.check_integrity().unwrap();
    }
}

#[test]
fn checkpoints_remove_old_segments_but_keep_what_is_retained() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), opts(WalIo::Auto)).unwrap();
    let segments = || std::fs::read_dir(dir.path().join(WAL_DIR)).unwrap().count();
    db.set_wal_retain_from(Some(Lsn(0)));
    commit_n(&db, 0, 3000);
    db.checkpoint().unwrap();
    let held = segments();
    assert!(held >= 5, "retention keeps every segment ({held})");
    db.set_wal_retain_from(None);
    commit_n(&db, 3000, 10);
    db.checkpoint().unwrap();
    let after = segments();
    assert!(
        after <= 4,
        "old segments are removed or kept as spares ({after} left of {held})"
    );
    db.simulate_crash();
    let db = Db::open(dir.path(), opts(WalIo::Auto)).unwrap();
    assert_present(&db, 0..3010);
}

fn arb_record() -> impl Strategy<Value = (u8, u64, u32, Vec<u8>)> {
    (
        0u8..4,
        1u64..1 << 40,
        any::<u32>(),
        prop::collection::vec(any::<u8>(), 1..600),
    )
}

proptest! {
    /// Encode random records, decode them back: identical.
    #[test]
    fn records_round_trip(recs in prop::collection::vec(arb_record(), 1..40)) {
        let mut buf = Vec::new();
        let mut expect = Vec::new();
        for (kind, page, epoch, bytes) in &recs {
            let lsn = Lsn(buf.len() as u64);
            match kind {
                0 => {
                    let mut img = vec![0u8; storage::PAGE_SIZE];
                    img[8..16].copy_from_slice(&page.to_le_bytes());
                    img[40..40 + bytes.len()].copy_from_slice(bytes);
                    record::encode_page_image(&mut buf, lsn, *epoch, PageId(*page), &img);
                    expect.push((lsn, *epoch, Some(*page), img));
                }
                1 => {
                    let mut runs = Vec::new();
                    runs.extend_from_slice(&(100u16).to_le_bytes());
                    runs.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
                    runs.extend_from_slice(bytes);
                    record::encode_page_delta(&mut buf, lsn, *epoch, PageId(*page), &runs);
                    expect.push((lsn, *epoch, Some(*page), runs));
                }
                2 => {
                    let synced = Lsn(lsn.0 / 2);
                    record::encode_commit(&mut buf, lsn, *epoch, *page, bytes.len() as u32, synced);
                    let mut p = page.to_le_bytes().to_vec();
                    p.extend_from_slice(&synced.0.to_le_bytes());
                    expect.push((lsn, *epoch, None, p));
                }
                _ => {
                    record::encode_checkpoint(&mut buf, lsn, *epoch, Lsn(*page));
                    expect.push((lsn, *epoch, None, page.to_le_bytes().to_vec()));
                }
            }
        }
        let mut pos = 0usize;
        for (lsn, epoch, page, payload) in expect {
            let (rec, len) = record::decode(&buf[pos..], Lsn(pos as u64)).unwrap();
            prop_assert_eq!(rec.lsn, lsn);
            prop_assert_eq!(rec.epoch, epoch);
            prop_assert_eq!(rec.page().map(|p| p.0), page);
            match rec.body {
                Body::PageImage { image, .. } => prop_assert_eq!(image, &payload[..]),
                Body::PageDelta { runs, .. } => prop_assert_eq!(runs, &payload[..]),
                Body::Commit { timestamp_us, synced, .. } => {
                    let mut got = timestamp_us.to_le_bytes().to_vec();
                    got.extend_from_slice(&synced.0.to_le_bytes());
                    prop_assert_eq!(got, payload)
                }
                Body::Checkpoint { redo_lsn } => prop_assert_eq!(redo_lsn.0.to_le_bytes().to_vec(), payload),
                Body::EpochChange { .. } => prop_assert!(false),
            }
            pos += len;
        }
        prop_assert_eq!(pos, buf.len());
        // A log cut anywhere reads as incomplete or as a good first record, never as garbage.
        for cut in [1usize, 7, 31, 33] {
            if cut < buf.len() {
                let r = record::decode(&buf[..buf.len() - cut], Lsn(0));
                if let Err(DecodeError::Invalid(why)) = &r {
                    prop_assert!(false, "a cut log must read as incomplete or as a good first record: {}", why);
                }
            }
        }
    }

    /// Page deltas rebuild the new page from the old one exactly.
    #[test]
    fn deltas_rebuild_pages(edits in prop::collection::vec((0usize..4096, prop::collection::vec(any::<u8>(), 1..64)), 0..30)) {
        let mut old = vec![0u8; 4096];
        for (i, b) in old.iter_mut().enumerate() { *b = (i * 7) as u8; }
        old[8..16].copy_from_slice(&9u64.to_le_bytes());
        old[16..24].copy_from_slice(&50u64.to_le_bytes()); // page_lsn below the record's
        let mut new = old.clone();
        for (at, bytes) in &edits {
            let end = (*at + bytes.len()).min(4096);
            new[*at..end].copy_from_slice(&bytes[..end - at]);
        }
        let mut runs = Vec::new();
        let mut buf = Vec::new();
        if record::delta_runs(&old, &new, &mut runs).is_some() && !runs.is_empty() {
            record::encode_page_delta(&mut buf, Lsn(100), 1, PageId(9), &runs);
        } else {
            new[8..16].copy_from_slice(&9u64.to_le_bytes());
            record::encode_page_image(&mut buf, Lsn(100), 1, PageId(9), &new);
        }
        let (rec, _) = record::decode(&buf, Lsn(100)).unwrap();
        let mut page = old.clone();
        record::redo(&mut page, &rec);
        // redo stamps the page LSN and clears the checksum; compare the rest.
        new[16..24].copy_from_slice(&100u64.to_le_bytes());
        new[..4].copy_from_slice(&[0; 4]);
        prop_assert_eq!(page, new);
    }
}

/// The durable log can be read back as it lies in the segments (what a primary streams to a
/// replica): every record decodes in order, and what is beyond the log or already removed is
/// a typed error.
#[test]
fn read_wal_streams_the_durable_log() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), opts(WalIo::Auto)).unwrap();
    db.set_wal_retain_from(Some(Lsn(0)));
    let lsns = commit_n(&db, 0, 600);
    let end = db.flush_lsn();
    assert_eq!(end, *lsns.last().unwrap());
    // Read it all in uneven chunks, across segment boundaries.
    let mut log = Vec::new();
    let mut pos = Lsn(0);
    while pos < end {
        let before = log.len();
        pos = db.read_wal(pos, 7_777, &mut log).unwrap();
        assert!(log.len() > before, "progress");
    }
    assert_eq!(log.len() as u64, end.0);
    let (mut at, mut commits) = (0usize, 0);
    while at < log.len() {
        let (rec, len) = record::decode(&log[at..], Lsn(at as u64)).unwrap();
        if let Body::Commit { .. } = rec.body {
            commits += 1;
            assert_eq!(
                Lsn((at + len) as u64),
                lsns[commits - 1],
                "commit {commits} ends at its LSN"
            );
        }
        at += len;
    }
    assert_eq!(commits, 600);
    // Nothing newer: no bytes. Beyond the end: an error.
    let mut none = Vec::new();
    assert_eq!(db.read_wal(end, 100, &mut none).unwrap(), end);
    assert!(none.is_empty());
    let err = db.read_wal(Lsn(end.0 + 1), 100, &mut none).unwrap_err();
    assert!(matches!(err, Error::WalUnavailable { .. }), "{err}");
    // Once nothing holds it, a checkpoint removes old WAL, and reading it is an error.
    db.set_wal_retain_from(None);
    commit_n(&db, 1000, 10);
    db.checkpoint().unwrap();
    let err = db.read_wal(Lsn(0), 100, &mut none).unwrap_err();
    assert!(matches!(err, Error::WalUnavailable { .. }), "{err}");
    assert!(err.to_string().contains("removed"), "{err}");
}

/// Every level but `off` is synced here before `commit` returns (the remote levels' waiting
/// for replicas is replication's; to the engine they are `local`), and the names round-trip.
#[test]
fn every_level_but_off_is_durable_when_commit_returns() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), opts(WalIo::Auto)).unwrap();
    for (i, d) in Durability::ALL.into_iter().enumerate() {
        assert_eq!(Durability::parse(d.name()), Some(d));
        assert_eq!(Durability::parse(&d.name().to_uppercase()), Some(d));
        let (k, v) = kv(i as u32);
        let lsn = db.put(&k, &v, d).unwrap();
        if d.syncs_locally() {
            assert!(db.flush_lsn() >= lsn, "{}: not synced", d.name());
        }
    }
    assert_eq!(Durability::parse("sync"), None);
}

/// Once the log is half-way through a segment, the next one is created ahead (whole, zeros
/// after its header) by the WAL's preparer, before any record needs it: a flush round that
/// crosses into it then only opens it, instead of writing the segment's zeros and syncing
/// them while every commit waits.
#[test]
fn the_next_segment_is_created_before_the_log_reaches_it() {
    let dir = tempfile::tempdir().unwrap();
    let seg = 128 * 1024u64;
    let db = Db::open(dir.path(), opts(WalIo::Auto)).unwrap();
    let next = dir.path().join(WAL_DIR).join(format!("{seg:016x}.wal"));
    let mut i = 0;
    while db.flush_lsn().0 < seg * 5 / 8 {
        commit_n(&db, i, 1);
        i += 1;
    }
    assert!(db.flush_lsn().0 < seg, "still in the first segment");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !next.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the next segment was not prepared while the log was at {}",
            db.flush_lsn().0
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(db.flush_lsn().0 < seg, "prepared before the log reached it");
    let bytes = std::fs::read(&next).unwrap();
    assert_eq!(bytes.len() as u64, 512 + seg);
    assert!(bytes[512..].iter().all(|&b| b == 0));
    // The log then runs on into it, and everything reads back after a restart.
    while db.flush_lsn().0 < seg + seg / 4 {
        commit_n(&db, i, 1);
        i += 1;
    }
    drop(db);
    let db = Db::open(dir.path(), opts(WalIo::Auto)).unwrap();
    assert_present(&db, 0..i);
}
