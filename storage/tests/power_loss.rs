//! Power loss, simulated: the engine runs on `SimFs`, the power is cut after a random number
//! of I/O operations (inside a commit's flush, a checkpoint, a segment's creation or
//! recycling, the database's creation — wherever the count lands), the file system keeps only
//! what was synced plus a random choice of the sectors written since, and the database is
//! reopened. Checked against a model after every cut:
//! - it opens (recovery never fails on what a power cut leaves);
//! - its contents are exactly the model after some prefix of the commits issued, no shorter
//!   than the last one acknowledged at `Local` (nothing acknowledged is lost, no batch is
//!   half there, nothing comes back out of order);
//! - every reachable page passes the integrity check.
//!
//! Some commits are repack steps (leaves regrouped) and shrink steps (pages moved off the end
//! of the file, the count lowered, the file cut at the next checkpoint), so cuts also land
//! inside those.
//!
//! `REPLIDB_POWER_SEEDS` sets how many seeds run (default 300); `REPLIDB_POWER_SEED` runs one.
//! A failure names its seed. (The WAL flusher and the checkpointer are threads of their own,
//! so a seed fixes the operations and the cut point but not every interleaving.)

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use storage::vfs::SimFs;
use storage::{Db, Durability, Options, WriteBatch};

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

fn options(fs: &SimFs) -> Options {
    Options {
        vfs: Arc::new(fs.clone()),
        // Small segments and frequent checkpoints: cuts land in segment switches, recycling
        // and checkpoints, not only in commits.
        wal_segment_bytes: 64 << 10,
        checkpoint_wal_bytes: 48 << 10,
        checkpoint_interval: Duration::from_secs(3600),
        // A file a few pages longer than its count is cut: shrink steps' cuts reach the disk.
        page_file_step_pages: 4,
        ..Options::default()
    }
}

fn apply(model: &mut Model, ops: &[Op]) {
    for op in ops {
        match op {
            Op::Put(k, v) => {
                model.insert(k.clone(), v.clone());
            }
            Op::Delete(k) => {
                model.remove(k);
            }
        }
    }
}

fn contents(db: &Db) -> Result<Model, String> {
    db.range(..)
        .map(|e| e.map_err(|e| format!("reading the recovered database: {e}")))
        .collect()
}

fn random_batch(rng: &mut StdRng) -> Vec<Op> {
    (0..rng.gen_range(1..=4))
        .map(|_| {
            let k = format!("key-{:03}", rng.gen_range(0..80)).into_bytes();
            if rng.gen_bool(0.2) {
                Op::Delete(k)
            } else {
                // Mostly small values, some that take overflow pages.
                let len = if rng.gen_bool(0.1) {
                    rng.gen_range(4000..12000)
                } else {
                    rng.gen_range(0..300)
                };
                let b = rng.gen::<u8>();
                Op::Put(k, (0..len).map(|i| b.wrapping_add(i as u8)).collect())
            }
        })
        .collect()
}

/// One seed: a few lives, each cut short by a power loss at a random point.
fn run_seed(seed: u64) -> Result<(), String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let fs = SimFs::new();
    let dir = Path::new("/db");
    // What the database holds when a life starts (as last verified).
    let mut base = Model::new();
    for life in 0..3 {
        fs.cut_power_after(rng.gen_range(0..400));
        // Commits issued this life, in order; how many of them were acknowledged durable.
        let mut issued: Vec<Vec<Op>> = Vec::new();
        let mut acked = 0;
        if let Ok(db) = Db::open(dir, options(&fs)) {
            for _ in 0..rng.gen_range(1..120) {
                if rng.gen_bool(0.12) {
                    // A repack or a shrink step: leaves regrouped, or pages moved and the
                    // count lowered; the contents stay.
                    let (repack, n) = (rng.gen_bool(0.4), rng.gen_range(1..6));
                    let r = db.update(Durability::Local, |t| {
                        if repack {
                            t.repack_leaves(None, None, n).map(|_| ())
                        } else {
                            t.shrink_step(n).map(|_| ())
                        }
                    });
                    issued.push(Vec::new());
                    match r {
                        Ok(_) => acked = issued.len(),
                        Err(_) => break,
                    }
                    continue;
                }
                let ops = random_batch(&mut rng);
                let mut b = WriteBatch::new();
                for op in &ops {
                    match op {
                        Op::Put(k, v) => b.put(k.clone(), v.clone()),
                        Op::Delete(k) => b.delete(k.clone()),
                    };
                }
                let d = if rng.gen_bool(0.25) {
                    Durability::Off
                } else {
                    Durability::Local
                };
                let r = db.commit(&b, d);
                issued.push(ops);
                match r {
                    Ok(_) if d == Durability::Local => acked = issued.len(),
                    Ok(_) => {}
                    // The power went: this commit may or may not have reached the disk.
                    Err(_) => break,
                }
            }
            fs.cut_power();
            db.simulate_crash();
        }
        fs.restart(rng.gen());
        let db = Db::open(dir, options(&fs))
            .map_err(|e| format!("life {life}: reopening after the power cut failed: {e}"))?;
        let got = contents(&db)?;
        // The recovered state must be the model after some prefix of this life's commits, at
        // least as long as the acknowledged ones.
        let mut model = base.clone();
        for ops in &issued[..acked] {
            apply(&mut model, ops);
        }
        let mut matched = got == model;
        for ops in &issued[acked..] {
            if matched {
                break;
            }
            apply(&mut model, ops);
            matched = got == model;
        }
        if !matched {
            let mut lost: Vec<String> = Vec::new();
            let mut acked_model = base.clone();
            for ops in &issued[..acked] {
                apply(&mut acked_model, ops);
            }
            for (k, v) in &acked_model {
                if got.get(k) != Some(v) {
                    lost.push(String::from_utf8_lossy(k).into_owned());
                }
            }
            return Err(format!(
                "life {life}: the recovered database ({} keys) is no prefix of the {} commits \
                 issued ({acked} acknowledged); acknowledged keys wrong or missing: {lost:?}",
                got.len(),
                issued.len()
            ));
        }
        db.check_integrity()
            .map_err(|e| format!("life {life}: integrity check after recovery: {e}"))?;
        if db.len() != got.len() as u64 {
            return Err(format!(
                "life {life}: the meta page counts {} entries, the tree holds {}",
                db.len(),
                got.len()
            ));
        }
        base = got;
        // Close cleanly (power on) before the next life: it starts from this state.
        db.close()
            .map_err(|e| format!("life {life}: closing after recovery: {e}"))?;
    }
    Ok(())
}

#[test]
fn every_acknowledged_commit_survives_a_power_cut_at_any_point() {
    if let Some(seed) = std::env::var("REPLIDB_POWER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        if let Err(e) = run_seed(seed) {
            panic!("seed {seed}: {e}");
        }
        return;
    }
    let seeds: u64 = std::env::var("REPLIDB_POWER_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let t0 = Instant::now();
    let mut failures = Vec::new();
    for seed in 0..seeds {
        if let Err(e) = run_seed(seed) {
            failures.push(format!("seed {seed}: {e}"));
            if failures.len() >= 5 {
                break;
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "power loss: {seeds} seeds in {secs:.1} s ({:.1} seeds/s)",
        seeds as f64 / secs
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
