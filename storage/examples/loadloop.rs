//! Loads random keys (100-byte values) in durable batches of 1,000, as the criterion bench
//! does, and prints the time, the pages and the WAL bytes of each round: a target for
//! profilers. With `UPDATES=1` it then overwrites as many random keys with values of 80–120
//! bytes and reports that phase instead.
//!
//! cargo run --release -p replidb-storage --example loadloop -- [keys] [rounds]

use std::time::Instant;

use storage::{Db, Durability, Options, WriteBatch};

fn main() -> storage::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let rounds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let updates = std::env::var_os("UPDATES").is_some();
    for r in 0..rounds {
        let dir = std::env::temp_dir().join(format!("replidb-loadloop-{}-{r}", std::process::id()));
        let db = Db::open(&dir, Options::default())?;
        let keys: Vec<u64> = (0..n)
            .map(|i| (i + r * n).wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .collect();
        let (mut t, mut lsn) = (Instant::now(), db.stats().last_lsn.0);
        for chunk in keys.chunks(1_000) {
            let mut b = WriteBatch::new();
            for &k in chunk {
                b.put(k.to_be_bytes().to_vec(), vec![k as u8; 100]);
            }
            db.commit(&b, Durability::Local)?;
        }
        if updates {
            // Values of another length: the old cell's bytes become a hole in its leaf.
            (t, lsn) = (Instant::now(), db.stats().last_lsn.0);
            for (c, chunk) in keys.chunks(1_000).enumerate() {
                let mut b = WriteBatch::new();
                for &k in chunk {
                    let k = k.rotate_left(17) ^ c as u64;
                    let key = keys[(k % n) as usize];
                    b.put(
                        key.to_be_bytes().to_vec(),
                        vec![k as u8; 80 + (k % 41) as usize],
                    );
                }
                db.commit(&b, Durability::Local)?;
            }
        }
        let took = t.elapsed();
        let s = db.stats();
        drop(db);
        let _ = std::fs::remove_dir_all(&dir);
        println!(
            "round {r}: {:.1} ms, {} pages, {} WAL bytes",
            took.as_secs_f64() * 1e3,
            s.page_count,
            s.last_lsn.0 - lsn
        );
    }
    Ok(())
}
