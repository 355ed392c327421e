//! Shrinking the page file: after large deletes, a shrink pass moves the live pages at the end
//! of the file into the free pages below, lowers the page count, and the checkpoint cuts the
//! file; every key, long key and long value reads back the same, across a reopen.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use storage::{Db, Durability, Options, WriteBatch, PAGE_FILE, PAGE_SIZE};

fn value(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.gen()).collect()
}

fn file_len(dir: &std::path::Path) -> u64 {
    std::fs::metadata(dir.join(PAGE_FILE)).unwrap().len()
}

/// Random keys, a few of them long (overflow pages), with short (inline), 1,000-byte and
/// 9,000-byte (heap) values; then most of them deleted, the survivors scattered all over.
fn load_then_delete(db: &Db, seed: u64) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut want = BTreeMap::new();
    for batch in 0..20u64 {
        let mut b = WriteBatch::new();
        for i in 0..500u64 {
            let klen = if rng.gen_bool(0.02) { 600 } else { 16 };
            let k: Vec<u8> = (0..klen).map(|_| rng.gen()).collect();
            let vlen = [40, 1000, 9000][rng.gen_range(0..3)];
            let v = value(batch * 1000 + i, vlen);
            b.put(k.clone(), v.clone());
            want.insert(k, v);
        }
        db.commit(&b, Durability::Off).unwrap();
    }
    let keys: Vec<Vec<u8>> = want.keys().cloned().collect();
    let mut b = WriteBatch::new();
    for k in keys {
        if rng.gen_bool(0.85) {
            b.delete(k.clone());
            want.remove(&k);
        }
    }
    db.commit(&b, Durability::Local).unwrap();
    want
}

fn assert_holds(db: &Db, want: &BTreeMap<Vec<u8>, Vec<u8>>) {
    for (k, v) in want {
        assert_eq!(db.get(k).unwrap().as_deref(), Some(&v[..]));
    }
    assert_eq!(db.len(), want.len() as u64);
    let got: Vec<Vec<u8>> = db.range(..).map(|e| e.unwrap().0).collect();
    assert_eq!(got.len(), want.len());
}

#[test]
fn a_shrink_pass_gives_the_free_pages_back_and_keeps_every_value() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options::default()).unwrap();
    let want = load_then_delete(&db, 11);
    db.checkpoint().unwrap();
    let before = db.stats();
    let len_before = file_len(dir.path());
    assert!(
        before.free_pages * 2 > before.page_count,
        "the deletes freed {} of {} pages",
        before.free_pages,
        before.page_count
    );
    // Small steps (each its own transaction), the whole database checked after each.
    let mut steps = 0;
    loop {
        let (s, _) = db
            .update(Durability::Local, |t| t.shrink_step(300))
            .unwrap();
        steps += 1;
        db.check_integrity()
            .unwrap_or_else(|e| panic!("after step {steps} ({s:?}): {e}"));
        assert!(s.pages_moved <= 300, "{s:?}");
        if s.done {
            break;
        }
        assert!(steps < 1000, "the pass does not end: {s:?}");
    }
    assert!(steps >= 3, "{steps} steps");
    let after = db.stats();
    assert_eq!(after.free_pages, 0, "free pages left inside the file");
    assert_eq!(
        after.page_count,
        before.page_count - before.free_pages,
        "every free page given back"
    );
    assert_holds(&db, &want);
    // The checkpoint cuts the file to the page count.
    db.checkpoint().unwrap();
    let len_after = file_len(dir.path());
    assert_eq!(len_after, after.page_count * PAGE_SIZE as u64);
    assert!(
        len_after * 2 < len_before,
        "page file {len_before} -> {len_after} bytes"
    );
    // A pass over a packed file moves nothing.
    let again = db.shrink(|_| true).unwrap();
    assert!(again.complete && again.pages_moved == 0, "{again:?}");
    drop(db);
    let db = Db::open(dir.path(), Options::default()).unwrap();
    db.check_integrity().unwrap();
    assert_holds(&db, &want);
    assert_eq!(file_len(dir.path()), len_after);
    // The file grows again from its new end, filling from the start.
    let mut want = want;
    let mut b = WriteBatch::new();
    for i in 0..300u32 {
        let (k, v) = (format!("new-{i}").into_bytes(), value(i as u64, 2000));
        b.put(k.clone(), v.clone());
        want.insert(k, v);
    }
    db.commit(&b, Durability::Local).unwrap();
    db.check_integrity().unwrap();
    assert_holds(&db, &want);
}

/// `Db::shrink` runs the pass to its end in steps of `SHRINK_STEP_PAGES` and reports it;
/// pages freed after that are reused lowest first (the rebuilt free list is in address
/// order), so the file does not grow while free pages remain.
#[test]
fn db_shrink_reports_the_pass_and_later_writes_reuse_the_lowest_pages() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options::default()).unwrap();
    let want = load_then_delete(&db, 12);
    let before = db.stats();
    let r = db.shrink(|_| true).unwrap();
    assert!(r.complete, "{r:?}");
    assert_eq!(r.pages_before, before.page_count);
    assert_eq!(r.pages_after, before.page_count - before.free_pages);
    assert!(
        r.pages_moved > 0 && r.file_bytes_after < r.file_bytes_before,
        "{r}"
    );
    assert_eq!(r.file_bytes_after, file_len(dir.path()));
    assert_holds(&db, &want);
    // Free some pages in the middle, then write: the count does not move.
    let keys: Vec<Vec<u8>> = want.keys().take(200).cloned().collect();
    let mut b = WriteBatch::new();
    for k in &keys {
        b.delete(k.clone());
    }
    db.commit(&b, Durability::Local).unwrap();
    let freed = db.stats();
    assert!(freed.free_pages > 10, "{freed:?}");
    let mut b = WriteBatch::new();
    b.put(b"one".to_vec(), value(1, 4000));
    db.commit(&b, Durability::Local).unwrap();
    assert_eq!(db.stats().page_count, freed.page_count);
    db.check_integrity().unwrap();
    // A pass stopped after its first step says so.
    let stopped = db.shrink(|last| last.is_none()).unwrap();
    assert_eq!(stopped.steps, 1);
}

/// After deleting most of many small entries, the leaves are left sparse: a repack pass
/// regroups the leaves under each parent at ~94%, and the shrink then gives the freed leaves
/// back. Long keys (overflow separators) included.
#[test]
fn a_repack_pass_packs_sparse_leaves_and_the_shrink_gives_them_back() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options::default()).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(21);
    let mut want = BTreeMap::new();
    for _ in 0..40 {
        let mut b = WriteBatch::new();
        for _ in 0..1000 {
            let klen = if rng.gen_bool(0.01) { 500 } else { 16 };
            let k: Vec<u8> = (0..klen).map(|_| rng.gen()).collect();
            let v = value(rng.gen(), 100);
            b.put(k.clone(), v.clone());
            want.insert(k, v);
        }
        db.commit(&b, Durability::Off).unwrap();
    }
    // Deleted from the last key down: a leaf thinned under the minimum fill finds the
    // sibling to its left still full, without room for it (a leaf merges only into a sibling
    // with room), and the one to its right, thinned already, has room only now and then:
    // the leaves are left under half full.
    let keys: Vec<Vec<u8>> = want.keys().rev().cloned().collect();
    let mut b = WriteBatch::new();
    for k in keys {
        if rng.gen_bool(0.8) {
            b.delete(k.clone());
            want.remove(&k);
        }
    }
    db.commit(&b, Durability::Local).unwrap();
    let before = db.check_integrity().unwrap();
    let bytes: usize = want.iter().map(|(k, v)| k.len() + v.len() + 10).sum();
    let fill_before = bytes as f64 / (before.leaf_pages as usize * (PAGE_SIZE - 40)) as f64;
    assert!(
        fill_before < 0.7,
        "leaves {fill_before:.2} full after the deletes"
    );
    // Steps of two parents, the whole tree checked after each.
    let mut after: Option<Vec<u8>> = None;
    let mut steps = 0;
    loop {
        let (s, _) = db
            .update(Durability::Local, |t| {
                t.repack_leaves(after.as_deref(), None, 2)
            })
            .unwrap();
        steps += 1;
        db.check_integrity()
            .unwrap_or_else(|e| panic!("after repack step {steps} ({s:?}): {e}"));
        assert!(s.leaves_after <= s.leaves_before, "{s:?}");
        after = s.next;
        if after.is_none() {
            break;
        }
        assert!(steps < 10_000, "the pass does not end");
    }
    let packed = db.check_integrity().unwrap();
    let fill_after = bytes as f64 / (packed.leaf_pages as usize * (PAGE_SIZE - 40)) as f64;
    assert!(
        fill_after > 0.9,
        "leaves {fill_before:.2} -> {fill_after:.2} full ({} -> {} leaves)",
        before.leaf_pages,
        packed.leaf_pages
    );
    assert_holds(&db, &want);
    // A second pass finds nothing to regroup; the shrink gives the freed leaves back.
    let again = db.repack(|_| true).unwrap();
    assert!(
        again.complete && again.leaves_after == again.leaves_before,
        "{again:?}"
    );
    let r = db.shrink(|_| true).unwrap();
    assert!(r.complete, "{r:?}");
    let end = db.check_integrity().unwrap();
    assert_eq!(end.free_pages, 0);
    assert!(
        end.page_count * 10 < before.page_count * 6,
        "{before:?} -> {end:?}"
    );
    drop(db);
    let db = Db::open(dir.path(), Options::default()).unwrap();
    db.check_integrity().unwrap();
    assert_holds(&db, &want);
}
