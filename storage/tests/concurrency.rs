//! Readers running during writes never observe part of a batch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use storage::{Db, Durability, Options, WriteBatch};

const GROUP: usize = 16;

fn gkey(i: usize) -> Vec<u8> {
    format!("group/{i:02}").into_bytes()
}

/// Group values carry their batch number in the first 8 bytes (their lengths vary).
fn batch_of(v: &[u8]) -> u64 {
    u64::from_le_bytes(v[..8].try_into().unwrap())
}

#[test]
fn readers_never_see_half_a_batch() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Db::open(dir.path(), Options::default()).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for r in 0..3 {
        let (db, stop) = (db.clone(), stop.clone());
        readers.push(std::thread::spawn(move || {
            let mut seen = 0u64;
            let mut last = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if r % 2 == 0 {
                    // Point reads in one snapshot: all members of the group agree.
                    let snap = db.read();
                    let vals: Vec<Option<Vec<u8>>> = (0..GROUP)
                        .map(|i| snap.get(&gkey(i)).unwrap().map(|c| c.into_owned()))
                        .collect();
                    drop(snap);
                    if vals[0].is_some() {
                        let ns: Vec<Option<u64>> =
                            vals.iter().map(|v| v.as_deref().map(batch_of)).collect();
                        assert!(ns.iter().all(|n| *n == ns[0]), "half a batch: {ns:?}");
                        let n = ns[0].unwrap();
                        assert!(n >= last, "went back in time: {n} after {last}");
                        last = n;
                    } else {
                        assert!(vals.iter().all(|v| v.is_none()), "half of the first batch");
                    }
                } else {
                    // A range scan in one snapshot sees the whole group with one value, plus
                    // exactly as many filler keys as the batch number says.
                    let snap = db.read();
                    let entries: Vec<_> = snap
                        .range(&b"group/"[..]..&b"group0"[..])
                        .unwrap()
                        .map(|e| e.unwrap().1.into_owned())
                        .collect();
                    let fillers = snap.range(&b"fill/"[..]..&b"fill0"[..]).unwrap().count() as u64;
                    drop(snap);
                    if !entries.is_empty() {
                        assert_eq!(entries.len(), GROUP);
                        let n = batch_of(&entries[0]);
                        assert!(
                            entries.iter().all(|v| batch_of(v) == n),
                            "half a batch in a scan"
                        );
                        assert_eq!(fillers, n * 20, "filler count disagrees with batch {n}");
                    }
                }
                seen += 1;
            }
            seen
        }));
    }
    for n in 1..=400u64 {
        let mut b = WriteBatch::new();
        for i in 0..GROUP {
            let mut v = n.to_le_bytes().to_vec();
            v.resize(8 + (n as usize * 37 + i) % 300, b'v');
            b.put(gkey(i), v);
        }
        // Fillers force splits while readers are walking the tree.
        for j in 0..20u64 {
            b.put(format!("fill/{n:05}/{j:02}").into_bytes(), vec![b'f'; 120]);
        }
        let d = if n % 50 == 0 {
            Durability::Local
        } else {
            Durability::Off
        };
        db.commit(&b, d).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        let seen = r.join().expect("reader panicked");
        assert!(seen > 0, "a reader made no progress");
    }
    db.check_integrity().unwrap();
}

/// Async committers (the server's shape) on a two-thread runtime: commits that arrive
/// together share flush rounds (run by the background flusher once several wait, so the
/// runtime threads keep running tasks), every wait ends — none is lost between a round and
/// the next — and every acknowledged commit is there after a reopen.
#[test]
fn async_committers_share_rounds_and_every_wait_ends() {
    let dir = tempfile::tempdir().unwrap();
    let db = std::sync::Arc::new(Db::open(dir.path(), Options::default()).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    const TASKS: usize = 64;
    const EACH: usize = 150;
    rt.block_on(async {
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let db = db.clone();
                tokio::spawn(async move {
                    for i in 0..EACH {
                        let k = format!("t{t:02}-{i:04}");
                        let ((), lsn) = db
                            .update_deferred(|tx| tx.put(k.as_bytes(), b"v").map(drop))
                            .unwrap();
                        tokio::task::yield_now().await;
                        db.durable(lsn).await.unwrap();
                        assert!(db.flush_lsn() >= lsn);
                    }
                })
            })
            .collect();
        let all = async {
            for t in tasks {
                t.await.unwrap();
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(120), all)
            .await
            .expect("a committer waited forever");
    });
    let flushes = db.stats().wal_flushes;
    let commits = (TASKS * EACH) as u64;
    assert!(
        flushes * 2 < commits,
        "{commits} commits took {flushes} flush rounds"
    );
    drop(rt);
    let db = std::sync::Arc::try_unwrap(db).ok().unwrap();
    db.simulate_crash();
    let db = Db::open(dir.path(), Options::default()).unwrap();
    assert_eq!(db.len(), commits);
}
