//! N threads committing single-key batches at `Durability::Local`: a profiling target for
//! group commit. `cargo run --release -p replidb-storage --example group_commit -- 64 2000`
//! (threads, commits per thread).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use storage::{Db, Durability, Options};

fn main() -> storage::Result<()> {
    let mut args = std::env::args().skip(1);
    let threads: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(64);
    let per: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let dir = std::env::temp_dir().join(format!("replidb-gc-{}", std::process::id()));
    let db = Arc::new(Db::open(&dir, Options::default())?);
    let next = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
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
    let n = threads as u64 * per;
    let st = db.stats();
    println!(
        "{n} commits from {threads} threads in {:?}: {:.0}/s, {:.1} commits per fsync",
        t.elapsed(),
        n as f64 / t.elapsed().as_secs_f64(),
        n as f64 / st.wal_flushes.max(1) as f64
    );
    drop(db);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
