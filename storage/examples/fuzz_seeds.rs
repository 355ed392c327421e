//! Writes seed corpora for the fuzz targets from a real database: pages of every kind for
//! `page_decode`, and WAL stream pieces (from record boundaries) for `wal_decode`.
//!
//! cargo run -p replidb-storage --example fuzz_seeds -- fuzz/corpus

use std::path::PathBuf;

use storage::internals::page::{PageKind, PAGE_SIZE};
use storage::internals::record;
use storage::{Db, Durability, Lsn, Options, WriteBatch};

fn main() -> storage::Result<()> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fuzz/corpus".into()),
    );
    let dir = std::env::temp_dir().join(format!("replidb-seeds-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let opts = Options {
        wal_segment_bytes: 64 * 1024,
        ..Options::default()
    };
    let db = Db::open(&dir, opts.clone())?;
    let mut b = WriteBatch::new();
    for i in 0..2000u32 {
        b.put(
            format!("key{i:05}").into_bytes(),
            vec![i as u8; (i % 150) as usize],
        );
    }
    b.put(vec![b'L'; 1000], vec![b'v'; 9000]); // long key, overflow value
    db.commit(&b, Durability::Local)?;
    let mut b = WriteBatch::new();
    for i in (0..2000u32).filter(|i| i % 3 != 0) {
        b.delete(format!("key{i:05}").into_bytes());
    }
    db.commit(&b, Durability::Local)?;
    db.checkpoint()?;
    // Some log after the checkpoint: images and deltas.
    let mut lsns = vec![db.last_lsn()];
    for i in 0..20u32 {
        lsns.push(db.put(
            format!("key{:05}", i * 7).as_bytes(),
            b"changed",
            Durability::Local,
        )?);
    }
    let wal_dir = dir.join(storage::WAL_DIR);
    db.simulate_crash();

    let pages = std::fs::read(dir.join(storage::PAGE_FILE))?;
    let pdir = out.join("page_decode");
    std::fs::create_dir_all(&pdir)?;
    let mut taken = std::collections::HashMap::new();
    for (i, p) in pages.chunks(PAGE_SIZE).enumerate() {
        let kind = p[4];
        let n = taken.entry(kind).or_insert(0);
        if *n < 2 && PageKind::from_u8(kind).is_some() {
            std::fs::write(pdir.join(format!("page-{i}-kind{kind}")), p)?;
            *n += 1;
        }
    }
    // WAL: the stream from each of a few commit boundaries, as the decoder sees it at LSN 0
    // for the first seed (a fresh log) and at its own LSN otherwise.
    let mut segs: Vec<_> = std::fs::read_dir(&wal_dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    segs.sort();
    let mut stream = Vec::new();
    for s in &segs {
        let bytes = std::fs::read(s)?;
        stream.extend_from_slice(&bytes[512..]);
    }
    let seg0 = u64::from_str_radix(
        segs[0].file_stem().and_then(|s| s.to_str()).unwrap_or("0"),
        16,
    )
    .unwrap_or(0);
    let wdir = out.join("wal_decode");
    std::fs::create_dir_all(&wdir)?;
    let mut written = 0;
    for (n, lsn) in lsns.iter().enumerate().step_by(5) {
        let Lsn(at) = *lsn;
        if at < seg0 {
            continue;
        }
        let off = (at - seg0) as usize;
        let end = (off + 6000).min(stream.len());
        if record::decode(&stream[off..end], Lsn(at)).is_ok() || n == 0 {
            std::fs::write(wdir.join(format!("stream-from-{at}")), &stream[off..end])?;
            written += 1;
        }
    }
    // A stream that starts at LSN 0 decodes as-is (the first records of the log).
    if seg0 == 0 {
        std::fs::write(
            wdir.join("stream-from-0"),
            &stream[..stream.len().min(9000)],
        )?;
        written += 1;
    }
    println!(
        "wrote {} page seeds and {written} WAL seeds under {}",
        taken.values().sum::<i32>(),
        out.display()
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
