//! The replica's apply and crash recovery take the same streams: whatever a replica accepted
//! and applied, its own recovery after a crash keeps, to the byte of every page. Streams are a
//! real primary's log, mutated record by record (dropped, duplicated, moved, recounted,
//! stray checkpoints), then handed over in random pieces.

use std::sync::OnceLock;

use proptest::prelude::*;
use rand::{Rng, SeedableRng};

use crate::wal::record::{self, RecordHeader, RECORD_HEADER};
use crate::{Db, Durability, Lsn, Options, WriteBatch};

fn opts(replica: bool) -> Options {
    Options {
        wal_segment_bytes: 256 * 1024,
        replica,
        ..Options::default()
    }
}

/// A primary's whole log from LSN 0, cut into records.
fn primary_records() -> &'static Vec<Vec<u8>> {
    static RECORDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    RECORDS.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Db::open(dir.path(), opts(false)).expect("open primary");
        db.set_wal_retain_from(Some(Lsn(0)));
        let mut rng = rand::rngs::StdRng::seed_from_u64(17);
        for i in 0..40 {
            let mut b = WriteBatch::new();
            for _ in 0..rng.gen_range(1..12) {
                let k = format!("k{:04}", rng.gen_range(0..400)).into_bytes();
                if rng.gen_ratio(1, 5) {
                    b.delete(k);
                } else {
                    b.put(k, vec![rng.gen::<u8>(); rng.gen_range(0..300)]);
                }
            }
            db.commit(&b, Durability::Local).expect("commit");
            if i % 13 == 12 {
                db.checkpoint().expect("checkpoint");
            }
        }
        let mut log = Vec::new();
        db.read_wal(Lsn(0), usize::MAX, &mut log).expect("read wal");
        let mut out = Vec::new();
        let mut at = 0;
        while at < log.len() {
            let (_, len) = record::decode(&log[at..], Lsn(at as u64)).expect("a record");
            out.push(log[at..at + len].to_vec());
            at += len;
        }
        out
    })
}

#[derive(Clone, Debug)]
enum Mutation {
    Drop(usize),
    Duplicate(usize),
    SwapWithNext(usize),
    /// Sets the page-record count of the first commit at or after this index.
    Recount(usize, u32),
    /// A checkpoint record (redo LSN 0, which moves nothing) inserted before this index.
    StrayCheckpoint(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::Drop),
        any::<usize>().prop_map(Mutation::Duplicate),
        any::<usize>().prop_map(Mutation::SwapWithNext),
        (any::<usize>(), 0u32..6).prop_map(|(i, n)| Mutation::Recount(i, n)),
        any::<usize>().prop_map(Mutation::StrayCheckpoint),
    ]
}

fn kind(rec: &[u8]) -> u8 {
    rec[28]
}

/// Re-encodes the records one after another from LSN 0: each gets its new LSN and checksum.
fn restamp(records: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        let mut r = r.clone();
        r[8..16].copy_from_slice(&(out.len() as u64).to_le_bytes());
        let crc = crc32c::crc32c(&r[4..]);
        r[..4].copy_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&r);
    }
    out
}

fn mutate(mut recs: Vec<Vec<u8>>, muts: &[Mutation]) -> Vec<Vec<u8>> {
    const _: () = assert!(std::mem::size_of::<RecordHeader>() == RECORD_HEADER);
    for m in muts {
        let n = recs.len();
        if n == 0 {
            break;
        }
        match *m {
            Mutation::Drop(i) => {
                recs.remove(i % n);
            }
            Mutation::Duplicate(i) => {
                let r = recs[i % n].clone();
                recs.insert(i % n, r);
            }
            Mutation::SwapWithNext(i) if n > 1 => recs.swap(i % (n - 1), i % (n - 1) + 1),
            Mutation::SwapWithNext(_) => {}
            Mutation::Recount(i, count) => {
                if let Some(r) = recs[i % n..].iter_mut().find(|r| kind(r) == 3) {
                    r[RECORD_HEADER + 8..RECORD_HEADER + 12].copy_from_slice(&count.to_le_bytes());
                }
            }
            Mutation::StrayCheckpoint(i) => {
                let mut r = Vec::new();
                record::encode_checkpoint(&mut r, Lsn(0), 1, Lsn(0));
                recs.insert(i % n, r);
            }
        }
    }
    recs
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn a_stream_a_replica_applies_is_one_its_recovery_keeps(
        muts in proptest::collection::vec(mutation(), 0..4),
        cut in any::<u64>(),
        seed in any::<u64>(),
    ) {
        let recs = mutate(primary_records().clone(), &muts);
        let mut stream = restamp(&recs);
        // Sometimes the stream ends mid-record (a link cut).
        if cut % 3 == 0 && !stream.is_empty() {
            stream.truncate((cut as usize) % stream.len());
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let replica = Db::open(dir.path(), opts(true)).expect("open replica");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut at = 0usize;
        while at < stream.len() {
            let n = rng.gen_range(1..=(stream.len() - at).min(9000));
            match replica.apply_wal(Lsn(at as u64), &stream[at..at + n]) {
                Ok(_) => at += n,
                Err(_) => break,
            }
        }
        let applied = replica.apply_lsn();
        let digest = replica.read().digest().1;
        replica.simulate_crash();
        let reopened = Db::open(dir.path(), opts(true)).expect("reopen replica");
        prop_assert!(
            reopened.apply_lsn() >= applied,
            "recovery cut back what the replica had applied: {} < {}",
            reopened.apply_lsn(),
            applied
        );
        prop_assert_eq!(reopened.read().digest().1, digest, "pages differ after recovery");
    }
}

#[test]
fn a_replica_refuses_a_batch_its_recovery_would_cut_off() {
    let mut recs = primary_records().clone();
    // The first commit with page records, told it has one more than it does.
    let i = recs
        .iter()
        .position(|r| kind(r) == 3 && r[RECORD_HEADER + 8] > 0)
        .expect("a commit with page records");
    let count = u32::from(recs[i][RECORD_HEADER + 8]) + 1;
    recs[i][RECORD_HEADER + 8..RECORD_HEADER + 12].copy_from_slice(&count.to_le_bytes());
    let stream = restamp(&recs);
    let dir = tempfile::tempdir().expect("temp dir");
    let replica = Db::open(dir.path(), opts(true)).expect("open replica");
    let err = replica.apply_wal(Lsn(0), &stream).unwrap_err();
    let bad_at: usize = recs[..i].iter().map(Vec::len).sum();
    assert!(
        matches!(&err, crate::Error::CorruptWal { lsn, reason } if lsn.0 == bad_at as u64 && reason.contains("counts")),
        "{err}"
    );
    // Everything before the bad commit's batch is applied, nothing of it.
    assert!(replica.apply_lsn().0 < bad_at as u64);
}

/// A batch whose records pass their checksums but whose redo builds a broken page (a delta
/// that rewrites the page's own id) is refused as `CorruptWal`; nothing of it is installed,
/// and the checkpointer, which asserts that every frame names its page, never sees it.
#[test]
fn a_batch_that_builds_a_broken_page_is_refused_and_nothing_panics() {
    let mut recs = primary_records().clone();
    let i = recs
        .iter()
        .position(|r| kind(r) == 2)
        .expect("a page delta");
    let mut r = recs[i].clone();
    r.extend_from_slice(&8u16.to_le_bytes()); // offset of the header's page_id
    r.extend_from_slice(&8u16.to_le_bytes());
    r.extend_from_slice(&9_999_999u64.to_le_bytes());
    let len = r.len() as u32;
    r[4..8].copy_from_slice(&len.to_le_bytes());
    recs[i] = r;
    let stream = restamp(&recs);
    let dir = tempfile::tempdir().expect("temp dir");
    let replica = Db::open(dir.path(), opts(true)).expect("open replica");
    let err = replica.apply_wal(Lsn(0), &stream).unwrap_err();
    assert!(
        matches!(&err, crate::Error::CorruptWal { reason, .. } if reason.contains("broken")),
        "{err}"
    );
    let bad_at: usize = recs[..i].iter().map(Vec::len).sum();
    assert!(replica.apply_lsn().0 <= bad_at as u64);
    // Nothing it did not apply stays in its log: the log ends where the pages do.
    assert_eq!(replica.flush_lsn(), replica.apply_lsn());
    replica
        .checkpoint()
        .expect("a checkpoint after the refusal");
    replica.check_integrity().expect("the replica is whole");
    // It survives a crash (recovery finds no broken batch to replay), and the good stream
    // from where it stands makes it what a replica fed only good bytes is.
    replica.simulate_crash();
    let replica = Db::open(dir.path(), opts(true)).expect("reopen after the refusal");
    let good = restamp(primary_records());
    let from = replica.flush_lsn().0 as usize;
    replica
        .apply_wal(Lsn(from as u64), &good[from..])
        .expect("the good stream");
    let dir2 = tempfile::tempdir().expect("temp dir");
    let clean = Db::open(dir2.path(), opts(true)).expect("open replica");
    clean.apply_wal(Lsn(0), &good).expect("the good stream");
    assert_eq!(replica.read().digest(), clean.read().digest());
}

/// A batch whose meta page claims a page count the batch cannot have made (a million pages
/// from a batch of a few) is refused before anything is sized by it: a peer's number never
/// allocates memory or leaves pages past the end reachable.
#[test]
fn a_batch_that_claims_an_impossible_page_count_is_refused() {
    let mut recs = primary_records().clone();
    let i = recs
        .iter()
        .position(|r| kind(r) == 2 && r[16..24] == [0; 8])
        .expect("a delta of the meta page");
    let mut r = recs[i].clone();
    // The meta page's page_count: after the page header (40 bytes), magic, version, page
    // size and root.
    r.extend_from_slice(&64u16.to_le_bytes());
    r.extend_from_slice(&8u16.to_le_bytes());
    r.extend_from_slice(&(1u64 << 20).to_le_bytes());
    let len = r.len() as u32;
    r[4..8].copy_from_slice(&len.to_le_bytes());
    recs[i] = r;
    let stream = restamp(&recs);
    let dir = tempfile::tempdir().expect("temp dir");
    let replica = Db::open(dir.path(), opts(true)).expect("open replica");
    let err = replica.apply_wal(Lsn(0), &stream).unwrap_err();
    assert!(
        matches!(&err, crate::Error::CorruptWal { reason, .. } if reason.contains("page count")),
        "{err}"
    );
    let bad_at: usize = recs[..i].iter().map(Vec::len).sum();
    assert!(replica.apply_lsn().0 <= bad_at as u64);
    replica.check_integrity().expect("the replica is whole");
}

/// A checkpoint record whose redo point lies after the record itself (which would make a
/// replica release WAL it still needs) and an epoch record naming an impossible epoch are
/// refused as corrupt.
#[test]
fn checkpoint_and_epoch_records_from_the_future_are_refused() {
    let recs = primary_records().clone();
    let at = recs.len() / 2;
    for bad in [
        {
            let mut r = Vec::new();
            record::encode_checkpoint(&mut r, Lsn(0), 1, Lsn(u64::MAX / 2));
            r
        },
        {
            let mut r = Vec::new();
            record::encode_epoch_change(&mut r, Lsn(0), 1, u32::MAX);
            r
        },
    ] {
        let mut recs = recs.clone();
        // Between two batches: after a commit.
        let i = recs[..at]
            .iter()
            .rposition(|r| kind(r) == 3)
            .expect("a commit")
            + 1;
        recs.insert(i, bad);
        let stream = restamp(&recs);
        let dir = tempfile::tempdir().expect("temp dir");
        let replica = Db::open(dir.path(), opts(true)).expect("open replica");
        let err = replica.apply_wal(Lsn(0), &stream).unwrap_err();
        assert!(matches!(&err, crate::Error::CorruptWal { .. }), "{err}");
        let bad_at: usize = recs[..i].iter().map(Vec::len).sum();
        assert_eq!(replica.apply_lsn().0, bad_at as u64, "{err}");
    }
}

/// A transaction that takes pages and frees them again (a large value put and deleted in one
/// batch) grows the page count by pages it never writes: they sit in a free-list page. The
/// replica's page-count bound must accept it (it once refused such a batch for good).
#[test]
fn a_batch_that_takes_and_frees_many_pages_replicates() {
    let dir = tempfile::tempdir().expect("temp dir");
    let primary = Db::open(dir.path(), opts(false)).expect("open primary");
    primary.set_wal_retain_from(Some(Lsn(0)));
    let mut b = WriteBatch::new();
    b.put("small", "v");
    primary.commit(&b, Durability::Local).expect("commit");
    let mut b = WriteBatch::new();
    b.put("big", vec![7u8; 400 * 1024])
        .delete("big")
        .put("after", "x");
    primary.commit(&b, Durability::Local).expect("commit");
    let mut log = Vec::new();
    primary
        .read_wal(Lsn(0), usize::MAX, &mut log)
        .expect("read wal");
    let rdir = tempfile::tempdir().expect("temp dir");
    let replica = Db::open(rdir.path(), opts(true)).expect("open replica");
    replica
        .apply_wal(Lsn(0), &log)
        .expect("the replica takes the batch");
    assert_eq!(replica.read().digest(), primary.read().digest());
    assert!(
        replica.stats().page_count > 90,
        "the batch grew the file by the big value's pages"
    );
}
