//! WAL hot paths: record encode and decode throughput (bytes of log per second), delta
//! computation, and crc32c itself.
//!
//! cargo bench -p replidb-benches --bench wal_codec

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use storage::internals::record;
use storage::{Lsn, PageId};

/// A realistic batch: 1 image, 20 deltas of ~150 bytes, a commit — repeated to ~1 MiB.
fn sample_log() -> Vec<u8> {
    let mut buf = Vec::with_capacity(1 << 20);
    let mut img = vec![0u8; 4096];
    for (i, b) in img.iter_mut().enumerate() {
        *b = (i * 13) as u8;
    }
    let mut runs = Vec::new();
    while buf.len() < 1 << 20 {
        let lsn = Lsn(buf.len() as u64);
        img[8..16].copy_from_slice(&7u64.to_le_bytes());
        record::encode_page_image(&mut buf, lsn, 1, PageId(7), &img);
        for p in 0..20u64 {
            runs.clear();
            runs.extend_from_slice(&(200u16).to_le_bytes());
            runs.extend_from_slice(&(150u16).to_le_bytes());
            runs.extend_from_slice(&img[..150]);
            let lsn = Lsn(buf.len() as u64);
            record::encode_page_delta(&mut buf, lsn, 1, PageId(100 + p), &runs);
        }
        let lsn = Lsn(buf.len() as u64);
        record::encode_commit(&mut buf, lsn, 1, 0, 21, Lsn(0));
    }
    buf
}

fn codec(c: &mut Criterion) {
    let log = sample_log();
    let mut g = c.benchmark_group("wal");
    g.throughput(Throughput::Bytes(log.len() as u64));
    g.bench_function("decode", |b| {
        b.iter(|| {
            let mut pos = 0;
            let mut n = 0;
            while pos < log.len() {
                let (_, len) = record::decode(&log[pos..], Lsn(pos as u64)).unwrap();
                pos += len;
                n += 1;
            }
            black_box(n)
        })
    });
    g.bench_function("encode", |b| {
        let mut out = Vec::with_capacity(log.len() + 8192);
        b.iter(|| {
            out.clear();
            let mut pos = 0;
            while pos < log.len() {
                let (rec, len) = record::decode(&log[pos..], Lsn(pos as u64)).unwrap();
                // Re-encoding from decoded parts: the encoder's own work (header, copy, crc).
                match rec.body {
                    record::Body::PageImage { page, image } => {
                        record::encode_page_image(&mut out, rec.lsn, 1, page, image);
                    }
                    record::Body::PageDelta { page, runs } => {
                        record::encode_page_delta(&mut out, rec.lsn, 1, page, runs);
                    }
                    record::Body::Commit {
                        timestamp_us,
                        page_records,
                        synced,
                    } => {
                        record::encode_commit(
                            &mut out,
                            rec.lsn,
                            1,
                            timestamp_us,
                            page_records,
                            synced,
                        );
                    }
                    _ => {}
                }
                pos += len;
            }
            black_box(out.len())
        })
    });
    g.bench_function("crc32c", |b| b.iter(|| black_box(crc32c::crc32c(&log))));
    g.finish();

    let mut g = c.benchmark_group("page_delta");
    let old: Vec<u8> = (0..4096).map(|i| (i * 7) as u8).collect();
    let mut new = old.clone();
    new[300..420].fill(9);
    new[2000..2008].fill(1);
    g.throughput(Throughput::Bytes(4096));
    g.bench_function("delta_runs", |b| {
        let mut runs = Vec::with_capacity(4096);
        b.iter(|| {
            runs.clear();
            black_box(record::delta_runs(&old, &new, &mut runs))
        })
    });
    g.finish();
}

criterion_group!(wal_benches, codec);
criterion_main!(wal_benches);
