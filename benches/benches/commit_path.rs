//! The work of one small commit that no sync is waited for: on the primary (apply a one-key
//! batch, encode its WAL and append it to the log buffer, install its pages; the background
//! flusher writes and syncs the log on its own thread, outside the timing) and on a replica
//! (write that commit's WAL to its log with one `pwrite`, unsynced, replay it and install its
//! pages). These run once per commit on every node at every durability level, so they bound
//! what a node can do when its CPU, not its disk, is the limit (64 clients on two vCPUs). The
//! two figures are not like for like: the replica's includes its log write.
//!
//! cargo bench -p replidb-benches --bench commit_path

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use replidb_benches::{random_keys, shuffled, value_for};
use storage::{Db, Durability, Lsn, Options, ReplicaSync, WriteBatch};

/// Keys loaded before measuring: a tree of about two thousand leaves, as a small database has.
const PRELOAD: usize = 50_000;
/// One-key commits logged on the primary for the replica bench to replay.
const COMMITS: usize = 20_000;

fn bench_dir() -> std::path::PathBuf {
    let d = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-data");
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn opts(replica: bool) -> Options {
    Options {
        replica,
        ..Options::default()
    }
}

fn preload(db: &Db, keys: &[[u8; 8]]) {
    for chunk in keys.chunks(1000) {
        let mut b = WriteBatch::new();
        for k in chunk {
            b.put(k.to_vec(), value_for(k).to_vec());
        }
        db.commit(&b, Durability::Local).unwrap();
    }
}

/// A one-key overwrite of an existing key, not waiting for any sync.
fn primary_commit(c: &mut Criterion, keys: &[[u8; 8]]) {
    let dir = tempfile::tempdir_in(bench_dir()).unwrap();
    let db = Db::open(dir.path(), opts(false)).unwrap();
    preload(&db, keys);
    let probe = shuffled(keys, 7);
    let mut i = 0;
    let mut g = c.benchmark_group("commit_path");
    g.throughput(Throughput::Elements(1));
    g.bench_function("primary one-key commit (no sync)", |b| {
        b.iter(|| {
            let k = &probe[i % probe.len()];
            i += 1;
            let mut v = value_for(k);
            v[0] = i as u8;
            db.put(k, &v, Durability::Off).unwrap()
        })
    });
    g.finish();
    db.close().unwrap();
}

/// The WAL of a preload and then `COMMITS` one-key commits, with where each commit ends.
fn logged_commits(keys: &[[u8; 8]]) -> (Vec<u8>, Lsn, Vec<Lsn>) {
    let dir = tempfile::tempdir_in(bench_dir()).unwrap();
    let db = Db::open(dir.path(), opts(false)).unwrap();
    // The whole log is read back below: no checkpoint may remove a segment of it.
    db.set_wal_retain_from(Some(Lsn(0)));
    preload(&db, keys);
    let preloaded = db.last_lsn();
    let probe = shuffled(keys, 11);
    let ends: Vec<Lsn> = (0..COMMITS)
        .map(|i| {
            let k = &probe[i % probe.len()];
            let mut v = value_for(k);
            v[0] = i as u8;
            db.put(k, &v, Durability::Off).unwrap()
        })
        .collect();
    db.sync_wal().unwrap();
    let mut wal = Vec::new();
    let mut at = Lsn(0);
    while at < db.flush_lsn() {
        at = db.read_wal(at, 1 << 20, &mut wal).unwrap();
    }
    db.close().unwrap();
    (wal, preloaded, ends)
}

/// A replica replaying those commits one `apply_wal_with` call each, as frames of one commit
/// arrive when clients commit one at a time. `Lazy`: written to its log, not synced (a
/// replica's sync is the disk's cost, not the CPU's, and most replicas skip it per commit).
fn replica_apply(c: &mut Criterion, keys: &[[u8; 8]]) {
    let (wal, preloaded, ends) = logged_commits(keys);
    let mut g = c.benchmark_group("commit_path");
    g.throughput(Throughput::Elements(1));
    g.bench_function("replica replay of one-key commit", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters as usize;
            while left > 0 {
                // A new replica, brought to the end of the preload untimed.
                let dir = tempfile::tempdir_in(bench_dir()).unwrap();
                let r = Db::open(dir.path(), opts(true)).unwrap();
                r.apply_wal(Lsn(0), &wal[..preloaded.0 as usize]).unwrap();
                let n = left.min(COMMITS);
                let mut from = preloaded;
                let t = Instant::now();
                for end in &ends[..n] {
                    let bytes = &wal[from.0 as usize..end.0 as usize];
                    r.apply_wal_with(from, bytes, ReplicaSync::Lazy, &mut |_| {})
                        .unwrap();
                    from = *end;
                }
                total += t.elapsed();
                assert_eq!(r.apply_lsn(), from, "the replica replayed every commit");
                left -= n;
                r.close().unwrap();
            }
            total
        })
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    let keys = random_keys(PRELOAD, 42);
    primary_commit(c, &keys);
    replica_apply(c, &keys);
}

criterion_group!(commit_path_benches, benches);
criterion_main!(commit_path_benches);
