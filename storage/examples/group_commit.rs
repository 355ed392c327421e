//! N threads committing single-key batches at `Durability::Local`: a profiling target for
//! group commit. `cargo run --release -p replidb-storage --example group_commit -- 64 2000`
//! (threads, commits per thread); with a third argument `async`, N tasks on a two-thread
//! tokio runtime (`update_deferred` + `durable().await`, the server's shape) instead.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use storage::{Db, Durability, Options};

fn main() -> storage::Result<()> {
    let mut args = std::env::args().skip(1);
    let threads: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(64);
    let per: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let tasks = args.next().as_deref() == Some("async");
    let dir = std::env::temp_dir().join(format!("replidb-gc-{}", std::process::id()));
    let db = Arc::new(Db::open(&dir, Options::default())?);
    let next = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    if tasks {
        run_tasks(&db, &next, threads, per)?;
    } else {
        run_threads(&db, &next, threads, per);
    }
    let n = threads as u64 * per;
    let st = db.stats();
    println!(
        "{n} commits from {threads} {} in {:?}: {:.0}/s, {:.1} commits per fsync",
        if tasks { "tasks" } else { "threads" },
        t.elapsed(),
        n as f64 / t.elapsed().as_secs_f64(),
        n as f64 / st.wal_flushes.max(1) as f64
    );
    drop(db);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

fn run_threads(db: &Arc<Db>, next: &Arc<AtomicU64>, threads: usize, per: u64) {
    std::thread::scope(|s| {
        for _ in 0..threads {
            let (db, next) = (db.clone(), next.clone());
            s.spawn(move || {
                for _ in 0..per {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    db.put(&k.to_be_bytes(), &[7u8; 100], Durability::Local)
                        .expect("commit");
                }
            });
        }
    });
}

fn run_tasks(db: &Arc<Db>, next: &Arc<AtomicU64>, tasks: usize, per: u64) -> storage::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()?;
    rt.block_on(async {
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let (db, next) = (db.clone(), next.clone());
                tokio::spawn(async move {
                    for _ in 0..per {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        let ((), lsn) = db
                            .update_deferred(|tx| tx.put(&k.to_be_bytes(), &[7u8; 100]).map(drop))
                            .expect("commit");
                        tokio::task::yield_now().await;
                        db.durable(lsn).await.expect("durable");
                    }
                })
            })
            .collect();
        for h in handles {
            h.await.expect("task");
        }
    });
    Ok(())
}
