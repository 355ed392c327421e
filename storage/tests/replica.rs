//! Physical replication at the storage level: a replica fed the primary's WAL bytes (in
//! arbitrary pieces) ends with the primary's content and, after a checkpoint on each, the
//! primary's page bytes; it survives a crash and resumes; it refuses local writes and bad
//! bytes.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use storage::PAGE_SIZE;
use storage::{Db, Durability, Error, Lsn, Options, WriteBatch, PAGE_FILE};

fn opts(replica: bool) -> Options {
    Options {
        wal_segment_bytes: 256 * 1024,
        checkpoint_wal_bytes: 1 << 20,
        replica,
        ..Options::default()
    }
}

/// Streams everything durable on `primary` past the replica's position, in random pieces.
fn catch_up(primary: &Db, replica: &Db, rng: &mut impl Rng) {
    let mut pos = replica.flush_lsn();
    loop {
        let mut buf = Vec::new();
        let end = primary
            .read_wal(pos, rng.gen_range(1..20_000), &mut buf)
            .unwrap();
        if buf.is_empty() {
            break;
        }
        // Hand the bytes over in uneven pieces: records get cut anywhere.
        let mut at = 0;
        while at < buf.len() {
            let n = rng.gen_range(1..=(buf.len() - at).min(5000));
            let p = replica
                .apply_wal(Lsn(pos.0 + at as u64), &buf[at..at + n])
                .unwrap();
            at += n;
            assert_eq!(p.write_lsn, Lsn(pos.0 + at as u64));
        }
        pos = end;
    }
    let p = replica.apply_wal(pos, &[]).unwrap();
    assert_eq!(
        p.flush_lsn,
        primary.flush_lsn(),
        "the replica has the whole log"
    );
    assert_eq!(
        p.apply_lsn,
        primary.flush_lsn(),
        "and has applied all of it"
    );
    assert_eq!(
        replica.last_lsn(),
        primary.last_lsn(),
        "up to the same last commit"
    );
}

fn content(db: &Db) -> BTreeMap<Vec<u8>, Vec<u8>> {
    db.range(..).map(|e| e.unwrap()).collect()
}

fn write_load(db: &Db, rng: &mut impl Rng, batches: usize) {
    for _ in 0..batches {
        let mut b = WriteBatch::new();
        for _ in 0..rng.gen_range(1..40) {
            let k = format!("k{:05}", rng.gen_range(0..3000)).into_bytes();
            if rng.gen_ratio(1, 4) {
                b.delete(k);
            } else {
                let len = if rng.gen_ratio(1, 30) {
                    rng.gen_range(600..12_000)
                } else {
                    rng.gen_range(0..200)
                };
                b.put(k, vec![rng.gen::<u8>(); len]);
            }
        }
        db.commit(&b, Durability::Local).unwrap();
    }
}

#[test]
fn a_replica_fed_the_wal_matches_the_primary_byte_for_byte() {
    let (pdir, rdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let primary = Db::open(pdir.path(), opts(false)).unwrap();
    primary.set_wal_retain_from(Some(Lsn(0)));
    // The replica starts from an empty database (both were created the same way).
    let replica = Db::open(rdir.path(), opts(true)).unwrap();
    assert!(replica.is_replica());
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    for round in 0..6 {
        write_load(&primary, &mut rng, 150);
        if round % 2 == 1 {
            primary.checkpoint().unwrap();
        }
        catch_up(&primary, &replica, &mut rng);
        assert!(
            content(&replica) == content(&primary),
            "round {round}: content differs"
        );
        replica.check_integrity().unwrap();
    }
    // The digest covers every page: one changed byte of data changes it.
    let before = primary.read().digest();
    primary
        .put(b"k00001", b"changed", Durability::Local)
        .unwrap();
    assert_ne!(primary.read().digest().1, before.1);
    catch_up(&primary, &replica, &mut rng);
    assert_eq!(replica.read().digest(), primary.read().digest());
    // Writes on a replica are refused.
    assert!(matches!(
        replica.put(b"x", b"y", Durability::Local),
        Err(Error::ReadOnly)
    ));
    // After a checkpoint on each, the page files hold the same pages.
    primary.checkpoint().unwrap();
    write_load(&primary, &mut rng, 1); // a checkpoint record after the redo point
    primary.checkpoint().unwrap();
    catch_up(&primary, &replica, &mut rng);
    replica.checkpoint().unwrap();
    let pages = primary.stats().page_count;
    assert_eq!(replica.stats().page_count, pages);
    drop(primary);
    drop(replica);
    let a = std::fs::read(pdir.path().join(PAGE_FILE)).unwrap();
    let b = std::fs::read(rdir.path().join(PAGE_FILE)).unwrap();
    let n = pages as usize * PAGE_SIZE;
    let differing: Vec<usize> = (0..pages as usize)
        .filter(|&i| a[i * PAGE_SIZE..(i + 1) * PAGE_SIZE] != b[i * PAGE_SIZE..(i + 1) * PAGE_SIZE])
        .collect();
    assert!(a.len() >= n && b.len() >= n);
    assert!(differing.is_empty(), "pages differ: {differing:?}");
}

#[test]
fn a_replica_recovers_from_a_crash_and_resumes() {
    let (pdir, rdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let primary = Db::open(pdir.path(), opts(false)).unwrap();
    primary.set_wal_retain_from(Some(Lsn(0)));
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let replica = Db::open(rdir.path(), opts(true)).unwrap();
    write_load(&primary, &mut rng, 300);
    catch_up(&primary, &replica, &mut rng);
    // Half a batch arrives, then the replica dies.
    write_load(&primary, &mut rng, 5);
    let mut buf = Vec::new();
    let from = replica.flush_lsn();
    primary.read_wal(from, usize::MAX, &mut buf).unwrap();
    replica.apply_wal(from, &buf[..buf.len() / 2]).unwrap();
    replica.simulate_crash();
    let replica = Db::open(rdir.path(), opts(true)).unwrap();
    replica.check_integrity().unwrap();
    // It resumes from its own durable position and converges.
    catch_up(&primary, &replica, &mut rng);
    assert!(content(&replica) == content(&primary));
    // Garbage is refused, and the replica carries on from where it was.
    let at = replica.flush_lsn();
    let err = replica.apply_wal(at, &[0xAB; 100]).unwrap_err();
    assert!(matches!(err, Error::CorruptWal { .. }), "{err}");
    let err = replica.apply_wal(Lsn(at.0 + 5), b"x").unwrap_err();
    assert!(matches!(err, Error::WalUnavailable { .. }), "{err}");
    write_load(&primary, &mut rng, 20);
    catch_up(&primary, &replica, &mut rng);
    assert!(content(&replica) == content(&primary));
    // A primary cannot be fed WAL.
    assert!(matches!(
        primary.apply_wal(Lsn(0), b""),
        Err(Error::NotReplica)
    ));
}

/// A replica seeded from a base backup — the page file copied while writes go on — and the
/// WAL from the backup's redo LSN ends with the primary's content and pages, even when the
/// primary's log no longer reaches back to its start.
#[test]
fn a_replica_seeded_from_a_base_backup_converges() {
    let (pdir, rdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let primary = Db::open(pdir.path(), opts(false)).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(21);
    write_load(&primary, &mut rng, 400);
    primary.checkpoint().unwrap();
    write_load(&primary, &mut rng, 50);
    primary.checkpoint().unwrap();
    assert!(
        primary.read_wal(Lsn(0), 10, &mut Vec::new()).is_err(),
        "the log's start is gone"
    );
    let (redo, pages) = primary.begin_base_backup().unwrap();
    primary.set_wal_retain_from(Some(redo));
    let mut seeder = storage::Seeder::create(rdir.path(), redo, &opts(true)).unwrap();
    // Copy in chunks while the primary keeps changing pages (and checkpointing).
    let mut first = 0;
    while first < pages {
        let n = 37.min(pages - first);
        let mut buf = Vec::new();
        primary.read_page_file(first, n, &mut buf).unwrap();
        seeder.write_pages(first, &buf).unwrap();
        write_load(&primary, &mut rng, 3);
        if first % 111 == 0 {
            primary.checkpoint().unwrap();
        }
        first += n;
    }
    seeder.finish(&[]).unwrap();
    let replica = Db::open(rdir.path(), opts(true)).unwrap();
    assert_eq!(
        replica.flush_lsn(),
        redo,
        "the replica's log starts at the backup's redo LSN"
    );
    catch_up(&primary, &replica, &mut rng);
    assert!(content(&replica) == content(&primary));
    assert_eq!(replica.read().digest(), primary.read().digest());
    replica.check_integrity().unwrap();
    // Seeding refuses a directory that already holds a database.
    assert!(storage::Seeder::create(rdir.path(), redo, &opts(true)).is_err());
}

/// WAL bytes of `primary` from `from` up to (not including) the commit record of the last
/// batch: a batch cut before its commit, as a replica holds it when its primary dies.
fn wal_without_last_commit(primary: &Db, from: Lsn) -> Vec<u8> {
    let mut buf = Vec::new();
    primary.read_wal(from, 1 << 24, &mut buf).unwrap();
    // The commit record is the last record; find it by decoding from the start.
    let mut at = 0;
    let mut last_start = 0;
    while at < buf.len() {
        let (_, len) =
            storage::internals::record::decode(&buf[at..], Lsn(from.0 + at as u64)).unwrap();
        last_start = at;
        at += len;
    }
    buf.truncate(last_start);
    buf
}

#[test]
fn promotion_drops_an_incomplete_batch_and_starts_a_new_epoch() {
    let (pd, rd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let primary = Db::open(pd.path(), opts(false)).unwrap();
    let replica = Db::open(rd.path(), opts(true)).unwrap();
    write_load(&primary, &mut rng, 50);
    catch_up(&primary, &replica, &mut rng);
    let before = content(&replica);
    let at = replica.flush_lsn();
    // One more batch reaches the replica without its commit; then the primary is gone.
    primary
        .put(b"only-on-the-dead-primary", b"x", Durability::Local)
        .unwrap();
    let cut = wal_without_last_commit(&primary, at);
    assert!(!cut.is_empty());
    let p = replica.apply_wal(at, &cut).unwrap();
    assert_eq!(p.flush_lsn.0, at.0 + cut.len() as u64);
    assert_eq!(p.apply_lsn, at, "a batch without its commit is not applied");
    assert_eq!(replica.epoch(), 1);
    let (epoch, start) = replica.promote().unwrap();
    assert_eq!(
        (epoch, start),
        (2, at),
        "the epoch starts where the complete log ends"
    );
    assert_eq!(replica.epoch_history(), vec![(2, at)]);
    assert!(!replica.is_replica());
    assert_eq!(content(&replica), before);
    replica
        .put(b"after", b"promotion", Durability::Local)
        .unwrap();
    assert!(matches!(
        replica.apply_wal(at, &cut),
        Err(Error::NotReplica)
    ));
    // Reopened (a crash right now), the dropped batch stays dropped and the epoch stays.
    replica.simulate_crash();
    let again = Db::open(rd.path(), opts(false)).unwrap();
    assert_eq!(again.epoch(), 2);
    // ...and, as after any unclean stop of a primary, epoch 2 resumes at the recovered end.
    let h = again.epoch_history();
    assert!(
        matches!(h[..], [(2, a), (2, resumed)] if a == at && resumed > at),
        "{h:?}"
    );
    assert_eq!(again.get(b"only-on-the-dead-primary").unwrap(), None);
    assert_eq!(
        again.get(b"after").unwrap().as_deref(),
        Some(&b"promotion"[..])
    );
    again.check_integrity().unwrap();
}

#[test]
fn a_replica_rewinds_its_log_only_when_nothing_past_the_fork_was_replayed() {
    let (pd, rd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let primary = Db::open(pd.path(), opts(false)).unwrap();
    let replica = Db::open(rd.path(), opts(true)).unwrap();
    write_load(&primary, &mut rng, 20);
    catch_up(&primary, &replica, &mut rng);
    let fork = replica.flush_lsn();
    primary.put(b"k", b"v", Durability::Local).unwrap();
    let cut = wal_without_last_commit(&primary, fork);
    replica.apply_wal(fork, &cut).unwrap();
    assert_eq!(
        replica.rewind_log(fork).unwrap(),
        Some(cut.len() as u64),
        "only an incomplete batch lies past the fork: cut it off"
    );
    assert_eq!(replica.flush_lsn(), fork);
    // It continues from the fork with whatever the (new) primary has there.
    catch_up(&primary, &replica, &mut rng);
    assert_eq!(content(&replica), content(&primary));
    // A replayed batch past the fork cannot be cut off: the pages changed.
    assert_eq!(replica.rewind_log(fork).unwrap(), None);
}

#[test]
fn demotion_turns_a_primary_into_a_replica_of_its_own_log() {
    let (pd, rd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    let a = Db::open(pd.path(), opts(false)).unwrap();
    let b = Db::open(rd.path(), opts(true)).unwrap();
    write_load(&a, &mut rng, 10);
    catch_up(&a, &b, &mut rng);
    // b takes over; a follows it.
    b.promote().unwrap();
    let end = a.demote().unwrap();
    assert_eq!(end, a.flush_lsn());
    assert!(matches!(
        a.put(b"x", b"y", Durability::Local),
        Err(Error::ReadOnly)
    ));
    write_load(&b, &mut rng, 10);
    catch_up(&b, &a, &mut rng);
    assert_eq!(a.epoch(), 2, "the epoch record came with the stream");
    assert_eq!(content(&a), content(&b));
    // A demotion nothing followed can be undone (an abandoned switchover).
    let cd = tempfile::tempdir().unwrap();
    let c = Db::open(cd.path(), opts(false)).unwrap();
    c.put(b"k", b"v", Durability::Local).unwrap();
    c.demote().unwrap();
    c.undo_demote().unwrap();
    c.put(b"k2", b"v", Durability::Local).unwrap();
}

/// WAL a replica only writes (no commit waits for its flush) is replayed at once and synced
/// later: by `sync_wal`, by a checkpoint before any page reaches the file (the WAL rule), and
/// before promotion cuts the log.
#[test]
fn wal_applied_without_a_sync_is_synced_before_pages_and_before_promotion() {
    use storage::ReplicaSync;
    let (pd, rd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut rng = rand::rngs::StdRng::seed_from_u64(21);
    let primary = Db::open(pd.path(), opts(false)).unwrap();
    primary.set_wal_retain_from(Some(Lsn(0)));
    let replica = Db::open(rd.path(), opts(true)).unwrap();
    let feed = |sync: ReplicaSync, rng: &mut rand::rngs::StdRng| {
        write_load(&primary, rng, 40);
        let from = replica.written_lsn();
        let mut buf = Vec::new();
        primary.read_wal(from, usize::MAX, &mut buf).unwrap();
        let mut reached = Vec::new();
        let p = replica
            .apply_wal_with(from, &buf, sync, &mut |p| reached.push(p))
            .unwrap();
        (from, buf.len() as u64, p, reached)
    };
    // Lazy: written and replayed, not synced, nothing acknowledged before the replay.
    let (from, len, p, reached) = feed(ReplicaSync::Lazy, &mut rng);
    assert!(reached.is_empty());
    assert_eq!(p.write_lsn.0, from.0 + len);
    assert_eq!(p.apply_lsn, primary.flush_lsn());
    assert_eq!(replica.written_lsn().0, from.0 + len);
    assert!(
        replica.flush_lsn() < replica.written_lsn(),
        "not synced yet"
    );
    assert!(content(&replica) == content(&primary));
    // Flush: acknowledged once synced, earlier unsynced rounds included.
    let (from, len, _, reached) = feed(ReplicaSync::Flush, &mut rng);
    assert_eq!(reached[0].flush_lsn.0, from.0 + len);
    assert_eq!(replica.flush_lsn(), replica.written_lsn());
    // sync_wal syncs what lazy rounds left.
    feed(ReplicaSync::Lazy, &mut rng);
    assert!(replica.flush_lsn() < replica.written_lsn());
    assert_eq!(replica.sync_wal().unwrap(), replica.written_lsn());
    // A checkpoint syncs the log before it writes pages.
    feed(ReplicaSync::Lazy, &mut rng);
    assert!(replica.flush_lsn() < replica.written_lsn());
    replica.checkpoint().unwrap();
    assert_eq!(replica.flush_lsn(), replica.written_lsn());
    // Promotion right after a lazy round keeps everything replayed.
    feed(ReplicaSync::Lazy, &mut rng);
    let at = replica.written_lsn();
    assert!(replica.flush_lsn() < at);
    let before = content(&primary);
    assert_eq!(replica.promote().unwrap(), (2, at));
    assert!(content(&replica) == before);
    replica.simulate_crash();
    let again = Db::open(rd.path(), opts(false)).unwrap();
    assert!(content(&again) == before);
    again.check_integrity().unwrap();
}

/// Damages page `id` of a stopped database's page file (bytes in its middle).
fn damage_page(dir: &std::path::Path, id: u64) {
    let path = dir.join(PAGE_FILE);
    let mut b = std::fs::read(&path).unwrap();
    let at = id as usize * PAGE_SIZE + 2000;
    for x in &mut b[at..at + 16] {
        *x ^= 0x5a;
    }
    std::fs::write(&path, b).unwrap();
}

/// A page with entries in it (a leaf or branch), found by reading it back from the file.
fn some_tree_page(db: &Db) -> u64 {
    let pages = db.stats().page_count;
    (pages / 2..pages)
        .find(|&i| {
            let mut out = Vec::new();
            db.read_current_pages(i, 1, &mut out);
            matches!(out[4], 2 | 3) // kind: branch or leaf (page.rs)
        })
        .expect("a tree page")
}

#[test]
fn a_replica_repairs_a_damaged_page_from_its_primary_which_is_ahead() {
    let (pd, rd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut rng = rand::rngs::StdRng::seed_from_u64(21);
    let primary = Db::open(pd.path(), opts(false)).unwrap();
    primary.set_wal_retain_from(Some(Lsn(0)));
    let replica = Db::open(rd.path(), opts(true)).unwrap();
    write_load(&primary, &mut rng, 200);
    // A checkpoint last, so the replica's restart replays no page over the damage.
    primary.checkpoint().unwrap();
    catch_up(&primary, &replica, &mut rng);
    let id = some_tree_page(&replica);
    replica.close().unwrap();
    damage_page(rd.path(), id);
    let replica = Db::open(rd.path(), opts(true)).unwrap();
    assert!(replica.page_damage(storage::PageId(id)).is_some());
    // The primary moves on; the replica takes the page as the primary has it now.
    write_load(&primary, &mut rng, 50);
    let (at, image) = primary.pages_for_peer(&[id]).unwrap();
    assert!(at > replica.apply_lsn(), "the primary is ahead");
    let from = replica
        .install_repaired_page(storage::PageId(id), &image, at)
        .unwrap();
    assert_eq!(
        from, at,
        "consistent once the replica's replay reaches the peer's LSN"
    );
    assert!(replica.page_damage(storage::PageId(id)).is_none());
    catch_up(&primary, &replica, &mut rng);
    assert_eq!(replica.read().digest(), primary.read().digest());
    assert_eq!(content(&replica), content(&primary));
    // The file is mended by the next restartpoint.
    replica.close().unwrap();
    let replica = Db::open(rd.path(), opts(true)).unwrap();
    assert!(replica.damaged_pages().is_empty());
    assert_eq!(content(&replica), content(&primary));
}

#[test]
fn a_primary_repairs_a_damaged_page_from_a_replica_that_is_behind() {
    let (pd, rd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut rng = rand::rngs::StdRng::seed_from_u64(22);
    let primary = Db::open(pd.path(), opts(false)).unwrap();
    primary.set_wal_retain_from(Some(Lsn(0)));
    let replica = Db::open(rd.path(), opts(true)).unwrap();
    write_load(&primary, &mut rng, 200);
    catch_up(&primary, &replica, &mut rng);
    // The primary moves on without the replica, then stops cleanly.
    write_load(&primary, &mut rng, 80);
    let want = content(&primary);
    let digest = primary.read().digest().1;
    let id = some_tree_page(&primary);
    primary.close().unwrap();
    damage_page(pd.path(), id);
    let primary = Db::open(pd.path(), opts(false)).unwrap();
    primary.set_wal_retain_from(Some(Lsn(0)));
    assert!(primary.page_damage(storage::PageId(id)).is_some());
    let (at, image) = replica.pages_for_peer(&[id]).unwrap();
    assert!(at < primary.last_lsn(), "the replica is behind");
    let from = primary
        .install_repaired_page(storage::PageId(id), &image, at)
        .unwrap();
    assert_eq!(
        from,
        primary.last_lsn(),
        "brought forward by the primary's own log"
    );
    assert_eq!(
        primary.read().digest().1,
        digest,
        "the page as it was before the damage"
    );
    assert_eq!(content(&primary), want);
    primary.check_integrity().unwrap();
    // A copy that is not the page is refused.
    let (_, other) = replica.pages_for_peer(&[id - 1]).unwrap();
    assert!(primary
        .install_repaired_page(storage::PageId(id), &other, at)
        .is_err());
}
