//! Storage engine benches with redb and LMDB (heed) in the same run, on the same keys:
//! bulk load in durable batches of 1,000, random point reads on 1 and 2 threads, and a full
//! ordered scan. `REPLIDB_BENCH_KEYS` sets the data set size (default 1,000,000).
//!
//! cargo bench -p replidb-benches --bench storage

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use heed::types::Bytes;
use redb::{ReadableTable, TableDefinition};
use replidb_benches::{random_keys, shuffled, value_for};

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("bench");
const BATCH: usize = 1000;
const LOOKUPS: usize = 10_000;

fn n_keys() -> usize {
    std::env::var("REPLIDB_BENCH_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

// ---- the three engines behind one small interface -------------------------------------

trait Engine: Send + Sync + 'static {
    const NAME: &'static str;
    fn open(dir: &Path) -> Self;
    fn load_batch(&self, keys: &[[u8; 8]]);
    /// Looks up every key in one read snapshot; returns the bytes seen.
    fn lookups(&self, keys: &[[u8; 8]]) -> usize;
    /// Walks every entry in order; returns the number of entries.
    fn scan(&self) -> usize;
}

struct Replidb(storage::Db);
impl Engine for Replidb {
    const NAME: &'static str = "replidb";
    fn open(dir: &Path) -> Self {
        Replidb(storage::Db::open(dir, storage::Options::default()).unwrap())
    }
    fn load_batch(&self, keys: &[[u8; 8]]) {
        let mut b = storage::WriteBatch::new();
        for k in keys {
            b.put(k.to_vec(), value_for(k).to_vec());
        }
        self.0.commit(&b, storage::Durability::Local).unwrap();
    }
    fn lookups(&self, keys: &[[u8; 8]]) -> usize {
        let snap = self.0.read();
        keys.iter()
            .map(|k| snap.get(k).unwrap().map_or(0, |v| v.len()))
            .sum()
    }
    fn scan(&self) -> usize {
        let snap = self.0.read();
        snap.range(..)
            .unwrap()
            .map(|e| black_box(e.unwrap()).1.len().min(1))
            .sum()
    }
}

struct Redb(redb::Database);
impl Engine for Redb {
    const NAME: &'static str = "redb";
    fn open(dir: &Path) -> Self {
        let db = redb::Database::create(dir.join("redb.db")).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(TABLE).unwrap();
        tx.commit().unwrap();
        Redb(db)
    }
    fn load_batch(&self, keys: &[[u8; 8]]) {
        let tx = self.0.begin_write().unwrap(); // Durability::Immediate is the default
        {
            let mut t = tx.open_table(TABLE).unwrap();
            for k in keys {
                t.insert(&k[..], &value_for(k)[..]).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    fn lookups(&self, keys: &[[u8; 8]]) -> usize {
        let tx = self.0.begin_read().unwrap();
        let t = tx.open_table(TABLE).unwrap();
        keys.iter()
            .map(|k| t.get(&k[..]).unwrap().map_or(0, |v| v.value().len()))
            .sum()
    }
    fn scan(&self) -> usize {
        let tx = self.0.begin_read().unwrap();
        let t = tx.open_table(TABLE).unwrap();
        t.iter()
            .unwrap()
            .map(|e| black_box(e.unwrap()).1.value().len().min(1))
            .sum()
    }
}

struct Lmdb(heed::Env, heed::Database<Bytes, Bytes>);
impl Engine for Lmdb {
    const NAME: &'static str = "lmdb";
    fn open(dir: &Path) -> Self {
        // SAFETY: heed requires that the environment is not opened twice in one process and
        // that the directory is not modified by others; the bench owns a fresh temp dir.
        let env = unsafe {
            heed::EnvOpenOptions::new()
                .map_size(8 << 30)
                .open(dir)
                .unwrap()
        };
        let mut w = env.write_txn().unwrap();
        let db = env.create_database(&mut w, None).unwrap();
        w.commit().unwrap();
        Lmdb(env, db)
    }
    fn load_batch(&self, keys: &[[u8; 8]]) {
        let mut w = self.0.write_txn().unwrap(); // synchronous commit: the default flags
        for k in keys {
            self.1.put(&mut w, &k[..], &value_for(k)[..]).unwrap();
        }
        w.commit().unwrap();
    }
    fn lookups(&self, keys: &[[u8; 8]]) -> usize {
        let r = self.0.read_txn().unwrap();
        keys.iter()
            .map(|k| self.1.get(&r, &k[..]).unwrap().map_or(0, |v| v.len()))
            .sum()
    }
    fn scan(&self) -> usize {
        let r = self.0.read_txn().unwrap();
        self.1
            .iter(&r)
            .unwrap()
            .map(|e| black_box(e.unwrap()).1.len().min(1))
            .sum()
    }
}

// ---- workloads -----------------------------------------------------------------------

fn loaded<E: Engine>(keys: &[[u8; 8]]) -> (tempfile::TempDir, Arc<E>) {
    let dir = tempfile::tempdir_in(bench_dir()).unwrap();
    let e = E::open(dir.path());
    for chunk in keys.chunks(10_000) {
        e.load_batch(chunk);
    }
    (dir, Arc::new(e))
}

/// Benches write under target/ (a real disk), not /tmp, which may be tmpfs.
fn bench_dir() -> std::path::PathBuf {
    let d = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-data");
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn bulk_load<E: Engine>(c: &mut Criterion, keys: &[[u8; 8]]) {
    let mut g = c.benchmark_group("bulk_load_batches_of_1000");
    g.sample_size(10)
        .throughput(Throughput::Elements(keys.len() as u64));
    g.bench_function(E::NAME, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = tempfile::tempdir_in(bench_dir()).unwrap();
                let e = E::open(dir.path());
                let t = Instant::now();
                for chunk in keys.chunks(BATCH) {
                    e.load_batch(chunk);
                }
                total += t.elapsed();
            }
            total
        })
    });
    g.finish();
}

fn reads<E: Engine>(c: &mut Criterion, keys: &[[u8; 8]]) {
    let (_dir, e) = loaded::<E>(keys);
    let probe = shuffled(keys, 99);
    assert_eq!(
        e.lookups(&probe[..LOOKUPS]),
        LOOKUPS * 100,
        "{} lost keys",
        E::NAME
    );
    assert_eq!(e.scan(), keys.len(), "{} scan count", E::NAME);
    {
        let mut g = c.benchmark_group("random_get");
        g.throughput(Throughput::Elements(LOOKUPS as u64));
        let mut off = 0;
        g.bench_function(BenchmarkId::new(E::NAME, "1 thread"), |b| {
            b.iter(|| {
                off = (off + LOOKUPS) % (probe.len() - LOOKUPS);
                black_box(e.lookups(&probe[off..off + LOOKUPS]))
            })
        });
        g.bench_function(BenchmarkId::new(E::NAME, "2 threads"), |b| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                std::thread::scope(|s| {
                    for th in 0..2 {
                        let (e, probe) = (&e, &probe);
                        s.spawn(move || {
                            // Together the two threads do `iters` rounds of LOOKUPS lookups.
                            let rounds = iters.div_ceil(2) as usize;
                            for r in 0..rounds {
                                let off = ((r * 2 + th) * LOOKUPS / 2) % (probe.len() - LOOKUPS);
                                black_box(e.lookups(&probe[off..off + LOOKUPS / 2]));
                                black_box(e.lookups(&probe[off + LOOKUPS / 2..off + LOOKUPS]));
                            }
                        });
                    }
                });
                t.elapsed()
            })
        });
        g.finish();
    }
    let mut g = c.benchmark_group("full_scan");
    g.sample_size(10)
        .throughput(Throughput::Elements(keys.len() as u64));
    g.bench_function(E::NAME, |b| b.iter(|| black_box(e.scan())));
    g.finish();
}

fn benches(c: &mut Criterion) {
    let keys = random_keys(n_keys(), 42);
    // Alternate the engines within each workload, so drift on a shared machine hits all.
    bulk_load::<Replidb>(c, &keys);
    bulk_load::<Lmdb>(c, &keys);
    bulk_load::<Redb>(c, &keys);
    reads::<Replidb>(c, &keys);
    reads::<Lmdb>(c, &keys);
    reads::<Redb>(c, &keys);
}

criterion_group!(storage_benches, benches);
criterion_main!(storage_benches);
