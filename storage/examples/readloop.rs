//! Loads random keys and reads them back in a loop: a target for profilers.
//!
//! cargo run --release -p replidb-storage --example readloop -- [keys] [rounds]

use std::time::Instant;

use storage::{Db, Durability, Options, WriteBatch};

fn main() -> storage::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let rounds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(20);
    let dir = std::env::temp_dir().join(format!("replidb-readloop-{}", std::process::id()));
    let db = Db::open(&dir, Options::default())?;
    let sorted = std::env::var_os("SORTED").is_some();
    let key = |i: u64| {
        if sorted {
            i.to_be_bytes()
        } else {
            (i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).to_be_bytes()
        }
    };
    for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
        let mut b = WriteBatch::new();
        for &i in chunk {
            b.put(key(i).to_vec(), vec![i as u8; 100]);
        }
        db.commit(&b, Durability::Local)?;
    }
    let t = Instant::now();
    let mut found = 0u64;
    let get_rounds = if std::env::var_os("SCAN_ONLY").is_some() {
        0
    } else {
        rounds
    };
    for r in 0..get_rounds {
        let snap = db.read();
        for i in 0..n {
            let j = (i.wrapping_mul(7919) + r) % n;
            found += snap.get(&key(j))?.map_or(0, |v| v.len() as u64);
        }
    }
    let gets = n * get_rounds;
    println!(
        "{gets} gets in {:?}: {:.0} gets/s ({found} bytes)",
        t.elapsed(),
        gets as f64 / t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let snap = db.read();
    let mut count = 0u64;
    for _ in 0..rounds {
        count += snap.range(..)?.count() as u64;
    }
    println!(
        "{count} scanned in {:?}: {:.0} entries/s",
        t.elapsed(),
        count as f64 / t.elapsed().as_secs_f64()
    );
    drop(snap);
    drop(db);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
