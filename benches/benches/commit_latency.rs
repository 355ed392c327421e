//! Commit latency on this disk, all measured in one run, alternating the systems:
//!
//! - the floor: a 4 KiB pwrite + fdatasync into a preallocated, already-written file;
//! - replidb, one committer at `Durability::Local`: p50/p99 per commit;
//! - replidb group commit: commits/s with 1, 16 and 64 concurrent committers;
//! - redb (`Durability::Immediate`) and SQLite (WAL mode, synchronous=FULL), one committer.
//!
//! cargo bench -p replidb-benches --bench commit_latency [-- --commits N] [--group-commits M]
//! (N commits per single-committer row, default 3000; M commits in all per group-commit row,
//! default 20000)

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use redb::TableDefinition;

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("t");

fn bench_dir() -> std::path::PathBuf {
    let d = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-data");
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 10_000_000, 3).unwrap()
}

fn row(name: &str, h: &Histogram<u64>, elapsed: Duration) {
    println!(
        "{name:<34} {:>9.0}/s  p50 {:>6} µs  p99 {:>6} µs  p99.9 {:>6} µs",
        h.len() as f64 / elapsed.as_secs_f64(),
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999)
    );
}

fn timed(n: usize, mut f: impl FnMut(usize)) -> (Histogram<u64>, Duration) {
    let mut h = hist();
    let t0 = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        f(i);
        h.record(t.elapsed().as_micros().max(1) as u64).unwrap();
    }
    (h, t0.elapsed())
}

fn floor(n: usize) -> (Histogram<u64>, Duration) {
    let dir = tempfile::tempdir_in(bench_dir()).unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.path().join("floor"))
        .unwrap();
    let size = 16u64 << 20;
    let zeros = vec![0u8; 1 << 20];
    for off in (0..size).step_by(zeros.len()) {
        f.write_all_at(&zeros, off).unwrap();
    }
    f.sync_all().unwrap();
    let block = vec![7u8; 4096];
    timed(n, |i| {
        f.write_all_at(&block, (i as u64 * 4096) % size).unwrap();
        f.sync_data().unwrap();
    })
}

fn replidb_single(n: usize) -> (Histogram<u64>, Duration) {
    let dir = tempfile::tempdir_in(bench_dir()).unwrap();
    let db = storage::Db::open(dir.path(), storage::Options::default()).unwrap();
    let v = [5u8; 100];
    let (h, el) = timed(n, |i| {
        db.put(&(i as u64).to_be_bytes(), &v, storage::Durability::Local)
            .unwrap();
    });
    db.close().unwrap();
    (h, el)
}

fn replidb_group(threads: usize, per_thread: usize) -> (Histogram<u64>, Duration, u64) {
    let dir = tempfile::tempdir_in(bench_dir()).unwrap();
    let db = Arc::new(storage::Db::open(dir.path(), storage::Options::default()).unwrap());
    let next = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let hs: Vec<Histogram<u64>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|_| {
                let (db, next) = (db.clone(), next.clone());
                s.spawn(move || {
                    let mut h = hist();
                    let v = [5u8; 100];
                    for _ in 0..per_thread {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        let t = Instant::now();
                        db.put(&k.to_be_bytes(), &v, storage::Durability::Local)
                            .unwrap();
                        h.record(t.elapsed().as_micros().max(1) as u64).unwrap();
                    }
                    h
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let el = t0.elapsed();
    let mut all = hist();
    for h in hs {
        all.add(h).unwrap();
    }
    let flushes = db.stats().wal_flushes;
    (all, el, flushes)
}

/// N committers as async tasks on a 2-thread tokio runtime (the server's shape): each applies
/// with `update_deferred` and awaits `durable`, so waiting costs no OS thread switch.
fn replidb_async(tasks: usize, per_task: usize) -> (Histogram<u64>, Duration, u64) {
    let dir = tempfile::tempdir_in(bench_dir()).unwrap();
    let db = Arc::new(storage::Db::open(dir.path(), storage::Options::default()).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let next = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let hs: Vec<Histogram<u64>> = rt.block_on(async {
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let (db, next) = (db.clone(), next.clone());
                tokio::spawn(async move {
                    let mut h = hist();
                    let v = [5u8; 100];
                    for _ in 0..per_task {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        let t = Instant::now();
                        let ((), lsn) = db
                            .update_deferred(|tx| tx.put(&k.to_be_bytes(), &v).map(drop))
                            .unwrap();
                        tokio::task::yield_now().await;
                        db.durable(lsn).await.unwrap();
                        h.record(t.elapsed().as_micros().max(1) as u64).unwrap();
                    }
                    h
                })
            })
            .collect();
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.unwrap());
        }
        out
    });
    let el = t0.elapsed();
    let mut all = hist();
    for h in hs {
        all.add(h).unwrap();
    }
    let flushes = db.stats().wal_flushes;
    (all, el, flushes)
}

fn redb_single(n: usize) -> (Histogram<u64>, Duration) {
    let dir = tempfile::tempdir_in(bench_dir()).unwrap();
    let db = redb::Database::create(dir.path().join("r.redb")).unwrap();
    let v = [5u8; 100];
    timed(n, |i| {
        let tx = db.begin_write().unwrap();
        {
            let mut t = tx.open_table(TABLE).unwrap();
            t.insert(&(i as u64).to_be_bytes()[..], &v[..]).unwrap();
        }
        tx.commit().unwrap();
    })
}

fn sqlite_single(n: usize) -> (Histogram<u64>, Duration) {
    let dir = tempfile::tempdir_in(bench_dir()).unwrap();
    let c = rusqlite::Connection::open(dir.path().join("s.db")).unwrap();
    c.pragma_update(None, "journal_mode", "WAL").unwrap();
    c.pragma_update(None, "synchronous", "FULL").unwrap();
    c.execute("CREATE TABLE t (k BLOB PRIMARY KEY, v BLOB)", [])
        .unwrap();
    let v = [5u8; 100];
    let mut st = c
        .prepare("INSERT OR REPLACE INTO t (k, v) VALUES (?1, ?2)")
        .unwrap();
    timed(n, |i| {
        st.execute(rusqlite::params![&(i as u64).to_be_bytes()[..], &v[..]])
            .unwrap();
    })
}

/// The number after `flag` in `args`, or `default`.
fn count_arg(args: &[String], flag: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n = count_arg(&args, "--commits", 3000);
    // Group-commit rows run this many commits in all (split among the committers): a row of
    // 64 committers must last long enough to reach its steady state (a few thousand commits
    // are over in tens of milliseconds).
    let group = count_arg(&args, "--group-commits", 20_000);
    if args.iter().any(|a| a == "--list") {
        return;
    }
    println!("commit latency, {n} commits per single-committer row, 100-byte values");
    // Alternate the systems in two rounds; the machine's fsync speed drifts.
    for round in 1..=2 {
        println!("-- round {round}");
        let (h, e) = floor(n);
        row("floor: 4 KiB pwrite+fdatasync", &h, e);
        let (h, e) = replidb_single(n);
        row("replidb local, 1 committer", &h, e);
        let (h, e) = redb_single(n);
        row("redb Immediate, 1 committer", &h, e);
        let (h, e) = sqlite_single(n);
        row("sqlite WAL synchronous=FULL", &h, e);
    }
    println!("-- group commit (replidb local)");
    let mut base = 0.0;
    for threads in [1usize, 16, 64] {
        let per = (group / threads).max(50);
        let (h, e, flushes) = replidb_group(threads, per);
        let rate = h.len() as f64 / e.as_secs_f64();
        if threads == 1 {
            base = rate;
        }
        row(&format!("replidb local, {threads} committers"), &h, e);
        println!(
            "{:<34} {:.1}x one committer, {:.1} commits per fsync",
            "",
            rate / base,
            h.len() as f64 / flushes.max(1) as f64
        );
    }
    println!("-- group commit, committers as async tasks (replidb local, tokio, 2 threads)");
    for tasks in [1usize, 16, 64] {
        let per = (group / tasks).max(50);
        let (h, e, flushes) = replidb_async(tasks, per);
        let rate = h.len() as f64 / e.as_secs_f64();
        row(&format!("replidb local, {tasks} async committers"), &h, e);
        println!(
            "{:<34} {:.1}x one (thread) committer, {:.1} commits per fsync",
            "",
            rate / base,
            h.len() as f64 / flushes.max(1) as f64
        );
    }
}
