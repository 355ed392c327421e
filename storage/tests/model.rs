//! The B+tree against `BTreeMap`: random puts, overwrites, deletes and range scans, with
//! keys short and long (overflowing), values small and large (multi-page), checking content
//! and every tree invariant (order, fill bounds, free list, no leaked page) as it goes.
//! Every third batch is followed by a leaf-repack step and a shrink step.

use std::collections::BTreeMap;
use std::ops::Bound;

use proptest::prelude::*;
use storage::{Db, Durability, Options, WriteBatch};

#[derive(Clone, Debug)]
enum Op {
    Put(u32, u32),
    Delete(u32),
    Scan(u32, u32, bool),
}

/// Key bytes for index `i` under a key style: the same index always maps to the same key.
fn key(style: u8, i: u32) -> Vec<u8> {
    let base = format!("{i:08}").into_bytes();
    let len = match style {
        0 => 8,
        1 => 40 + (i as usize * 7919) % 300,
        2 => 385 + (i as usize * 104729) % 1800,
        _ => match i % 7 {
            0 => 600 + (i as usize % 5) * 500,
            1 | 2 => 100 + i as usize % 200,
            _ => 1 + i as usize % 12,
        },
    };
    // Long keys share long prefixes in style 2, so comparisons must read the overflow tail.
    let mut k = Vec::with_capacity(len);
    if style == 2 {
        k.resize(len.saturating_sub(8), b'p');
        k.extend_from_slice(&base);
    } else {
        while k.len() < len {
            k.extend_from_slice(&base);
        }
    }
    k.truncate(len.max(1));
    k
}

/// Value bytes: the seed decides the size class (mostly small, some overflow, a few large).
fn value(seed: u32) -> Vec<u8> {
    let len = match seed % 100 {
        0 => 5_000 + (seed as usize * 31) % 20_000,
        1..=6 => 500 + (seed as usize * 13) % 1_500,
        _ => (seed as usize * 7) % 200,
    };
    let b = (seed % 251) as u8;
    (0..len).map(|j| b.wrapping_add(j as u8)).collect()
}

fn op_strategy(keyspace: u32) -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..keyspace, any::<u32>()).prop_map(|(k, v)| Op::Put(k, v)),
        3 => (0..keyspace).prop_map(Op::Delete),
        1 => (0..keyspace, 0..keyspace, any::<bool>()).prop_map(|(a, b, rev)| Op::Scan(a, b, rev)),
    ]
}

fn run(style: u8, keyspace: u32, batches: Vec<Vec<Op>>) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options::default()).unwrap();
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut repack_after: Option<Vec<u8>> = None;
    for (bi, ops) in batches.iter().enumerate() {
        let mut batch = WriteBatch::new();
        let mut pending = model.clone();
        for op in ops {
            match *op {
                Op::Put(k, v) => {
                    batch.put(key(style, k), value(v));
                    pending.insert(key(style, k), value(v));
                }
                Op::Delete(k) => {
                    batch.delete(key(style, k));
                    pending.remove(&key(style, k));
                }
                Op::Scan(a, b, rev) => {
                    let (a, b) = (key(style, a.min(b)), key(style, a.max(b)));
                    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
                    let want: Vec<_> = model
                        .range::<Vec<u8>, _>((Bound::Included(&lo), Bound::Excluded(&hi)))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    let got: Vec<_> = if rev {
                        let mut g: Vec<_> = db
                            .range(lo.as_slice()..hi.as_slice())
                            .rev()
                            .map(|e| e.unwrap())
                            .collect();
                        g.reverse();
                        g
                    } else {
                        db.range(lo.as_slice()..hi.as_slice())
                            .map(|e| e.unwrap())
                            .collect()
                    };
                    assert_eq!(got.len(), want.len(), "scan length, batch {bi}");
                    assert!(got == want, "scan content differs, batch {bi}");
                    // The callback scan, with each kind of bound, both directions, and a
                    // visitor that stops early.
                    for (lb, hb) in [
                        (Bound::Included(&lo[..]), Bound::Excluded(&hi[..])),
                        (Bound::Excluded(&lo[..]), Bound::Included(&hi[..])),
                        (Bound::Unbounded, Bound::Included(&hi[..])),
                        (Bound::Excluded(&lo[..]), Bound::Unbounded),
                    ] {
                        let want: Vec<_> = model
                            .range::<[u8], _>((lb, hb))
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect();
                        for reverse in [false, true] {
                            let mut got = Vec::new();
                            db.read()
                                .visit(lb, hb, reverse, &mut |k, v| {
                                    got.push((k.to_vec(), v.to_vec()));
                                    true
                                })
                                .unwrap();
                            if reverse {
                                got.reverse();
                            }
                            assert!(got == want, "visit differs, batch {bi}, reverse {reverse}");
                            let mut first = Vec::new();
                            db.read()
                                .visit(lb, hb, reverse, &mut |k, _| {
                                    first.push(k.to_vec());
                                    first.len() < 3
                                })
                                .unwrap();
                            assert_eq!(first.len(), want.len().min(3), "an early stop");
                        }
                    }
                }
            }
        }
        let durability = if bi % 4 == 0 {
            Durability::Local
        } else {
            Durability::Off
        };
        db.commit(&batch, durability).unwrap();
        model = pending;
        if bi % 3 == 1 {
            // Space given back between batches: leaves regrouped under a parent or two (a
            // cursor going round the tree), pages moved off the end of the file.
            let (s, _) = db
                .update(Durability::Off, |t| {
                    t.repack_leaves(repack_after.as_deref(), None, 1 + bi % 3)
                })
                .unwrap();
            repack_after = s.next;
            db.update(Durability::Off, |t| t.shrink_step(1 + bi % 40))
                .unwrap();
        }
        assert_eq!(db.len(), model.len() as u64);
        let report = db.check_integrity().unwrap();
        assert_eq!(report.entries, model.len() as u64);
        // Spot-check point reads, present and absent.
        for i in (0..keyspace).step_by(1 + keyspace as usize / 16) {
            let k = key(style, i);
            assert_eq!(
                db.get(&k).unwrap(),
                model.get(&k).cloned(),
                "get {i}, batch {bi}"
            );
        }
    }
    // Full comparison, both directions, through a snapshot and through the chunked iterator.
    let all: Vec<_> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let got: Vec<_> = db.range(..).map(|e| e.unwrap()).collect();
    assert!(got == all, "full scan differs");
    let snap = db.read();
    let mut back: Vec<_> = snap
        .range(..)
        .unwrap()
        .rev()
        .map(|e| e.map(|(k, v)| (k.into_owned(), v.into_owned())).unwrap())
        .collect();
    back.reverse();
    assert!(back == all, "reverse snapshot scan differs");
    drop(snap);
    // Delete everything: the tree shrinks back to one empty leaf and every page is free.
    let mut batch = WriteBatch::new();
    for k in model.keys() {
        batch.delete(k.clone());
    }
    db.commit(&batch, Durability::Local).unwrap();
    let report = db.check_integrity().unwrap();
    assert_eq!((report.entries, report.depth, report.leaf_pages), (0, 1, 1));
    assert_eq!(report.branch_pages + report.overflow_pages, 0);
    // The heap keeps at most its (empty) tail page.
    assert!(
        report.heap_pages <= 1 && report.heap_bytes == 0,
        "{report:?}"
    );
    assert_eq!(
        report.free_pages,
        report.page_count - 2 - report.heap_pages,
        "all pages but meta, root and the heap's tail are free"
    );
}

fn case_strategy() -> impl Strategy<Value = (u8, u32, Vec<Vec<Op>>)> {
    (0u8..4, prop_oneof![Just(64u32), Just(600), Just(3000)]).prop_flat_map(|(style, keyspace)| {
        let batch = prop::collection::vec(op_strategy(keyspace), 1..300);
        (
            Just(style),
            Just(keyspace),
            prop::collection::vec(batch, 1..24),
        )
    })
}

proptest! {
    // 64 cases × ~1,900 operations on average: well over 100,000 operations per run.
    #![proptest_config(ProptestConfig { cases: 64, max_shrink_iters: 200, ..ProptestConfig::default() })]
    #[test]
    fn btree_matches_btreemap((style, keyspace, batches) in case_strategy()) {
        run(style, keyspace, batches);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    /// `WriteTxn::replace`, `take` and `modify` hand back (or see) exactly what the key
    /// held (values in overflow pages too: read before their chain is freed), and leave the
    /// tree as a put or a delete would; a declined `modify` changes nothing.
    #[test]
    fn replace_take_and_modify_see_the_value_they_replace(
        style in 0u8..4,
        ops in prop::collection::vec((0u32..200, any::<u32>(), any::<bool>()), 1..400),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), Options::default()).unwrap();
        let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for chunk in ops.chunks(37) {
            db.update(Durability::Off, |tx| {
                for &(k, v, del) in chunk {
                    let k = key(style, k);
                    if del && v % 2 == 0 {
                        assert_eq!(tx.delete(&k)?, model.remove(&k).is_some());
                    } else if del {
                        assert_eq!(tx.take(&k)?, model.remove(&k));
                    } else if v % 3 == 0 {
                        // Read-modify-write: the new value is derived from the old one (a
                        // value of another size each time), or declined when v % 9 == 0.
                        let want_old = model.get(&k).cloned();
                        let mut seen = None;
                        let r = tx.modify(&k, |old| {
                            seen = Some(old.map(<[u8]>::to_vec));
                            (v % 9 != 0).then(|| {
                                let mut n = value(v);
                                n.extend_from_slice(old.unwrap_or(b"none").get(..7).unwrap_or(b"short"));
                                n
                            })
                        })?;
                        assert_eq!(seen, Some(want_old.clone()));
                        if v % 9 == 0 {
                            assert_eq!(r, None);
                        } else {
                            let mut n = value(v);
                            n.extend_from_slice(
                                want_old.as_deref().unwrap_or(b"none").get(..7).unwrap_or(b"short"),
                            );
                            assert_eq!(r, Some(want_old.is_none()));
                            model.insert(k, n);
                        }
                    } else {
                        let old = tx.replace(&k, &value(v))?;
                        assert_eq!(old, model.insert(k, value(v)));
                    }
                }
                Ok(())
            })
            .unwrap();
        }
        let report = db.check_integrity().unwrap();
        prop_assert_eq!(report.entries, model.len() as u64);
        let all: Vec<_> = db.range(..).map(|e| e.unwrap()).collect();
        let want: Vec<_> = model.into_iter().collect();
        prop_assert!(all == want, "content differs");
    }
}

/// A deterministic deep tree: enough long-ish keys for three or more levels, then a drain in
/// an interleaved order that forces merges and redistributions at every level.
#[test]
fn deep_tree_grows_and_shrinks() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options::default()).unwrap();
    let n = 12_000u32;
    let k = |i: u32| {
        let mut v = format!("{:010}", (i as u64 * 2654435761) % 1_000_000_007).into_bytes();
        v.resize(200, b'k');
        v
    };
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let mut b = WriteBatch::new();
        for &i in chunk {
            b.put(k(i), i.to_le_bytes().to_vec());
        }
        db.commit(&b, Durability::Off).unwrap();
    }
    let r = db.check_integrity().unwrap();
    assert!(r.depth >= 3, "expected a deep tree, got {r:?}");
    assert_eq!(r.entries, n as u64);
    for step in [3u32, 2, 1] {
        let mut b = WriteBatch::new();
        for i in (0..n).filter(|i| i % step == 0) {
            b.delete(k(i));
        }
        db.commit(&b, Durability::Off).unwrap();
        db.check_integrity().unwrap();
        for i in (0..n).step_by(97) {
            let want = (i % 3 != 0 && (step > 2 || i % 2 != 0) && step > 1)
                .then(|| i.to_le_bytes().to_vec());
            assert_eq!(db.get(&k(i)).unwrap(), want, "key {i} after step {step}");
        }
    }
    let r = db.check_integrity().unwrap();
    assert_eq!((r.entries, r.depth), (0, 1));
}

/// Keys sharing a long prefix (`user:00000…`): pages skip it in their key heads. Lookups of
/// keys that are shorter than the prefix, equal to it, or outside it, and inserts of such
/// keys into pages that skip it (which shrinks the skipped prefix), all stay exact.
#[test]
fn shared_key_prefixes_are_skipped_and_shrunk_correctly() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options::default()).unwrap();
    let user = |i: u32| format!("user:{i:012}").into_bytes();
    let mut model = std::collections::BTreeMap::new();
    let mut b = WriteBatch::new();
    for i in 0..6000 {
        b.put(user(i), i.to_le_bytes().to_vec());
        model.insert(user(i), i.to_le_bytes().to_vec());
    }
    db.commit(&b, Durability::Off).unwrap();
    db.check_integrity().unwrap();
    let odd: Vec<Vec<u8>> = [
        &b""[..],
        b"a",
        b"use",
        b"user:",
        b"user:0000000",
        b"user:00000000000",
        b"user:0000000000000",
        b"user:0000000029995",
        b"user:1",
        b"userz",
        b"zzzz",
    ]
    .iter()
    .map(|k| k.to_vec())
    .collect();
    // Absent first: every probe lands on the right side of the prefix.
    for k in &odd {
        assert_eq!(db.get(k).unwrap(), None, "{:?}", String::from_utf8_lossy(k));
    }
    let mut b = WriteBatch::new();
    for (i, k) in odd.iter().enumerate() {
        b.put(k.clone(), vec![i as u8]);
        model.insert(k.clone(), vec![i as u8]);
    }
    db.commit(&b, Durability::Off).unwrap();
    db.check_integrity().unwrap();
    for (k, v) in &model {
        assert_eq!(db.get(k).unwrap().as_deref(), Some(&v[..]));
    }
    let scanned: Vec<(Vec<u8>, Vec<u8>)> = db.range(..).map(|e| e.unwrap()).collect();
    let want: Vec<(Vec<u8>, Vec<u8>)> = model.into_iter().collect();
    assert!(scanned == want, "scan order or content differs");
}
