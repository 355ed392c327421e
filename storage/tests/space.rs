//! Space: leaves stay full under random inserts; long values share heap pages byte by byte
//! and their space comes back when they go; a damaged heap page is a typed error; a page
//! file of the older format is refused.

use std::os::unix::fs::FileExt;

use rand::{Rng, SeedableRng};
use storage::internals::page::{self, PageKind, PAGE_SIZE};
use storage::{Db, Durability, Error, Options, WriteBatch, PAGE_FILE};

const USABLE: usize = PAGE_SIZE - 40;

fn value(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.gen()).collect()
}

/// 1,000- and 3,000-byte values take their own bytes of heap pages, not a page each; the
/// live-byte counts stay exact through overwrites and deletes, and all space comes back.
#[test]
fn long_values_share_heap_pages_and_their_space_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options::default()).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut want = std::collections::BTreeMap::new();
    let mut b = WriteBatch::new();
    for i in 0..600u64 {
        let len = if i % 2 == 0 { 1000 } else { 3000 };
        let k = rng.gen::<[u8; 16]>().to_vec();
        let v = value(i, len);
        b.put(k.clone(), v.clone());
        want.insert(k, v);
    }
    db.commit(&b, Durability::Local).unwrap();
    let bytes: usize = want.values().map(Vec::len).sum();
    let r = db.check_integrity().unwrap();
    assert_eq!(r.heap_bytes as usize, bytes);
    assert!(
        (r.heap_pages as usize) <= bytes.div_ceil(USABLE) + 1,
        "{} heap pages for {bytes} bytes ({} would hold them)",
        r.heap_pages,
        bytes.div_ceil(USABLE)
    );
    // Overwrite half (with other lengths, some short enough to go inline), delete a quarter.
    let keys: Vec<Vec<u8>> = want.keys().cloned().collect();
    for (round, chunk) in keys.chunks(50).enumerate() {
        let mut b = WriteBatch::new();
        for (j, k) in chunk.iter().enumerate() {
            match j % 4 {
                0 => {
                    b.delete(k.clone());
                    want.remove(k);
                }
                1 | 2 => {
                    let v = value(1000 + j as u64, [20, 700, 2500, 9000][round % 4]);
                    b.put(k.clone(), v.clone());
                    want.insert(k.clone(), v);
                }
                _ => {}
            }
        }
        db.commit(&b, Durability::Off).unwrap();
        let r = db.check_integrity().unwrap();
        let heap_values: usize = want.values().map(Vec::len).filter(|&n| n > 500).sum();
        assert_eq!(r.heap_bytes as usize, heap_values, "round {round}");
    }
    for (k, v) in &want {
        assert_eq!(db.get(k).unwrap().as_deref(), Some(&v[..]));
    }
    db.close().unwrap();
    let db = Db::open(dir.path(), Options::default()).unwrap();
    for (k, v) in &want {
        assert_eq!(db.get(k).unwrap().as_deref(), Some(&v[..]), "after reopen");
    }
    let mut b = WriteBatch::new();
    for k in want.keys() {
        b.delete(k.clone());
    }
    db.commit(&b, Durability::Local).unwrap();
    let r = db.check_integrity().unwrap();
    assert_eq!(r.heap_bytes, 0);
    assert!(r.heap_pages <= 1, "only the heap's tail page is kept");
    assert_eq!(r.free_pages, r.page_count - 2 - r.heap_pages);
}

fn heap_pages_on_disk(bytes: &[u8]) -> Vec<usize> {
    bytes
        .chunks(PAGE_SIZE)
        .enumerate()
        .filter(|(_, p)| p[4] == PageKind::Heap as u8)
        .map(|(i, _)| i)
        .collect()
}

/// A heap page whose fill was damaged (and its checksum made right again, as a bad write
/// resealed would) makes reads of the values on it `Corrupt` naming the page; nothing panics.
#[test]
fn a_damaged_heap_page_is_a_typed_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options::default()).unwrap();
    db.put(b"long", &value(1, 2000), Durability::Local).unwrap();
    db.put(b"short", b"inline", Durability::Local).unwrap();
    db.checkpoint().unwrap();
    db.close().unwrap();
    let path = dir.path().join(PAGE_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    let heap = heap_pages_on_disk(&bytes);
    assert_eq!(heap.len(), 1, "one heap page holds the value");
    let at = heap[0] * PAGE_SIZE;
    let p = &mut bytes[at..at + PAGE_SIZE];
    // content_start (the fill) at +32: as if only 100 bytes had been written.
    p[32..34].copy_from_slice(&140u16.to_le_bytes());
    p[6..8].copy_from_slice(&100u16.to_le_bytes());
    page::seal(p);
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(p, at as u64).unwrap();
    drop(f);
    let db = Db::open(dir.path(), Options::default()).unwrap();
    match db.get(b"long") {
        Err(Error::Corrupt { page, .. }) => assert_eq!(page.0, heap[0] as u64),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(db.get(b"short").unwrap().as_deref(), Some(&b"inline"[..]));
    assert!(db.check_integrity().is_err());
}

/// A page file of format 1 (overflow chains for long values) is refused at open with a
/// message that says what it is and what to do, not read as if it were format 2.
#[test]
fn a_page_file_of_the_older_format_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options::default()).unwrap();
    db.put(b"k", b"v", Durability::Local).unwrap();
    db.close().unwrap();
    let path = dir.path().join(PAGE_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    // format_version: after the 40-byte page header and the 8-byte magic.
    assert_eq!(
        bytes[48..52],
        2u32.to_le_bytes(),
        "this build writes format 2"
    );
    bytes[48..52].copy_from_slice(&1u32.to_le_bytes());
    page::seal(&mut bytes[..PAGE_SIZE]);
    std::fs::write(&path, &bytes).unwrap();
    let err = Db::open(dir.path(), Options::default())
        .err()
        .expect("a format-1 file must be refused");
    assert!(matches!(err, Error::Incompatible { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("page format 1") && msg.contains("older replidb"),
        "{msg}"
    );
    // And one from a newer build.
    bytes[48..52].copy_from_slice(&3u32.to_le_bytes());
    page::seal(&mut bytes[..PAGE_SIZE]);
    std::fs::write(&path, &bytes).unwrap();
    let err = Db::open(dir.path(), Options::default()).err().unwrap();
    assert!(err.to_string().contains("newer replidb"), "{err}");
}

/// How full the leaves are, every entry being a `key_len`-byte key with a 100-byte value:
/// a cell is key (2 + key_len), value (2 + 100) and a 6-byte slot.
fn leaf_fill(db: &Db, key_len: usize) -> f64 {
    let r = db.check_integrity().unwrap();
    let bytes = r.entries as usize * (2 + key_len + 2 + 100 + 6);
    bytes as f64 / (r.leaf_pages as usize * USABLE) as f64
}

/// Random inserts split full leaves in two (leaves ~69% full, never under the minimum fill);
/// a repack pass, what a quiet server runs by itself, then packs them over 90% full.
#[test]
fn random_inserts_split_and_a_repack_packs_the_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options::default()).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let n = 30_000;
    for _ in 0..n / 1000 {
        let mut b = WriteBatch::new();
        for _ in 0..1000 {
            b.put(rng.gen::<[u8; 16]>().to_vec(), vec![b'v'; 100]);
        }
        db.commit(&b, Durability::Off).unwrap();
    }
    let fill = leaf_fill(&db, 16);
    eprintln!("random inserts: leaves {:.1}% full", fill * 100.0);
    assert!(fill > 0.6, "leaves {:.0}% full", fill * 100.0);
    db.repack(|_| true).unwrap();
    let packed = leaf_fill(&db, 16);
    eprintln!("after a repack: leaves {:.1}% full", packed * 100.0);
    assert!(packed > 0.9, "leaves {:.0}% full", packed * 100.0);
    assert_eq!(db.check_integrity().unwrap().entries, n);
}

/// Keys 0..n (8 bytes, big-endian) in key order with 100-byte values, 1,000 a commit.
fn load_in_order(db: &Db, n: u64) {
    for chunk in 0..n / 1000 {
        let mut b = WriteBatch::new();
        for i in chunk * 1000..(chunk + 1) * 1000 {
            b.put(i.to_be_bytes().to_vec(), vec![b'v'; 100]);
        }
        db.commit(&b, Durability::Off).unwrap();
    }
}

/// An ordered load packs leaves full: appends after a parent's last key fill the pages to
/// the left and leave room only in the last (a split in two would leave them half full).
#[test]
fn ordered_inserts_pack_leaves_full() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options::default()).unwrap();
    load_in_order(&db, 30_000);
    let fill = leaf_fill(&db, 8);
    eprintln!("ordered inserts: leaves {:.1}% full", fill * 100.0);
    assert!(fill > 0.95, "leaves {:.0}% full", fill * 100.0);
}

/// Pops at either end of a packed range (a queue's LPOP / RPOP, ZPOPMIN) change only the
/// end leaf: it empties and goes, its full neighbour untouched, and the leaves stay packed.
/// (Sharing an underfull end leaf's cells with its neighbour rewrote both every ~17 pops of
/// these 100-byte entries: 264 and 282 WAL bytes a pop from the right and the left, against
/// 144 and 156 now.) Each pop is its own commit.
#[test]
fn pops_at_either_end_rewrite_only_the_end_leaf() {
    for from_left in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), Options::default()).unwrap();
        let n = 20_000u64;
        load_in_order(&db, n);
        let packed = leaf_fill(&db, 8);
        let leaves = db.check_integrity().unwrap().leaf_pages;
        let mut lowest = packed;
        let wal_before = db.stats().last_lsn.0;
        for j in 0..n * 3 / 4 {
            let i = if from_left { j } else { n - 1 - j };
            let mut b = WriteBatch::new();
            b.delete(i.to_be_bytes().to_vec());
            db.commit(&b, Durability::Off).unwrap();
            if j % 1000 == 999 {
                lowest = lowest.min(leaf_fill(&db, 8));
            }
        }
        let per_pop = (db.stats().last_lsn.0 - wal_before) / (n * 3 / 4);
        let r = db.check_integrity().unwrap();
        assert_eq!(r.entries, n / 4);
        eprintln!(
            "pops from the {}: {leaves} -> {} leaves, {:.1}% -> lowest {:.1}% full, {per_pop} WAL bytes a pop",
            if from_left { "left" } else { "right" },
            r.leaf_pages,
            packed * 100.0,
            lowest * 100.0
        );
        assert!(per_pop < 200, "{per_pop} WAL bytes a pop");
        assert!(lowest > 0.9, "leaves down to {:.0}% full", lowest * 100.0);
        assert!(
            r.leaf_pages * 10 < leaves * 3,
            "{leaves} -> {} leaves",
            r.leaf_pages
        );
    }
}

/// Random overwrites of long values leave heap pages partly live (a page is freed only when
/// every value on it is gone); a compaction pass moves the values off sparse pages and gives
/// those pages back, the content unchanged.
#[test]
fn compaction_gives_back_the_heap_pages_overwrites_left_sparse() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options::default()).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let keys: Vec<Vec<u8>> = (0..3000u32).map(|i| i.to_be_bytes().to_vec()).collect();
    let mut want = std::collections::BTreeMap::new();
    for round in 0..12u64 {
        let mut b = WriteBatch::new();
        for k in &keys {
            if round == 0 || rng.gen_bool(0.3) {
                let v = value(rng.gen(), 1000);
                b.put(k.clone(), v.clone());
                want.insert(k.clone(), v);
            }
        }
        db.commit(&b, Durability::Off).unwrap();
    }
    let live: usize = want.values().map(Vec::len).sum();
    let needed = live.div_ceil(USABLE) as u64;
    let before = db.stats();
    assert_eq!(before.heap_live as usize, live);
    assert!(
        before.heap_pages > needed * 13 / 10,
        "overwrites left {} heap pages for {needed} pages of values",
        before.heap_pages
    );
    let mut steps = 0;
    let r = db
        .compact(60, |_| {
            steps += 1;
            true
        })
        .unwrap();
    assert_eq!(r.steps, steps);
    assert!(r.complete && r.values_moved > 0 && r.steps >= 2, "{r:?}");
    let after = db.stats();
    assert_eq!(r.heap_pages_after, after.heap_pages);
    assert!(
        after.heap_pages <= needed * 12 / 10 + 2,
        "compaction left {} heap pages for {needed} pages of values ({r})",
        after.heap_pages
    );
    assert!(after.free_pages >= before.heap_pages - after.heap_pages);
    let report = db.check_integrity().unwrap();
    assert_eq!(report.heap_bytes as usize, live);
    for (k, v) in &want {
        assert_eq!(db.get(k).unwrap().as_deref(), Some(&v[..]));
    }
    // A second pass finds little to move (pages the first pass made sparse after it went
    // by: a moved value that straddled two pages left the other one less live).
    let again = db.compact(60, |_| true).unwrap();
    eprintln!("first pass: {r}\nsecond pass: {again}");
    assert!(
        again.values_moved * 4 < r.values_moved,
        "{again:?} after {r:?}"
    );
    // A pass told to stop after its first step says so.
    let stopped = db.compact(100, |last| last.is_none()).unwrap();
    assert!(!stopped.complete && stopped.steps == 1, "{stopped:?}");
}

/// A heap page whose link was damaged to point back at itself (checksum resealed): reading
/// or deleting the value that runs through it is `Corrupt` naming the page, never the same
/// bytes twice (and so never a page freed twice).
#[test]
fn a_heap_link_back_to_the_same_value_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options::default()).unwrap();
    // Three heap pages: 4,056 + 4,056 + 1,888 bytes.
    db.put(b"long", &value(3, 10_000), Durability::Local)
        .unwrap();
    db.checkpoint().unwrap();
    db.close().unwrap();
    let path = dir.path().join(PAGE_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    let heap = heap_pages_on_disk(&bytes);
    assert_eq!(heap.len(), 3, "three heap pages hold the value");
    let first = heap[0];
    let at = first * PAGE_SIZE;
    let p = &mut bytes[at..at + PAGE_SIZE];
    // link at +24: the first page now says the value goes on in itself.
    p[24..32].copy_from_slice(&(first as u64).to_le_bytes());
    page::seal(p);
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(p, at as u64).unwrap();
    drop(f);
    let db = Db::open(dir.path(), Options::default()).unwrap();
    match db.get(b"long") {
        Err(Error::Corrupt { page, reason }) => {
            assert_eq!(page.0, first as u64);
            assert!(reason.contains("twice"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(matches!(
        db.delete(b"long", Durability::Local),
        Err(Error::Corrupt { .. })
    ));
}

/// A pass ends at the last key it started with, however fast writers add keys past it.
#[test]
fn a_compaction_pass_does_not_chase_keys_added_behind_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options::default()).unwrap();
    let mut b = WriteBatch::new();
    for i in 0..3000u32 {
        b.put(i.to_be_bytes().to_vec(), value(i as u64, 600));
    }
    db.commit(&b, Durability::Off).unwrap();
    let mut next = 3000u32;
    let mut asked = 0;
    let r = db
        .compact(100, |_| {
            asked += 1;
            // Each step, more keys than a step looks at land past the cursor.
            let mut b = WriteBatch::new();
            for _ in 0..3000 {
                b.put(next.to_be_bytes().to_vec(), value(next as u64, 600));
                next += 1;
            }
            db.commit(&b, Durability::Off).unwrap();
            asked < 20
        })
        .unwrap();
    assert!(r.complete, "the pass chased new keys: {r:?}");
    assert_eq!(r.entries_seen, 3000, "{r:?}");
}

/// A step ends once it has moved `COMPACT_STEP_BYTES`, however few keys it looked at, so a
/// step of multi-megabyte values stays one modest batch.
#[test]
fn a_compaction_step_is_bounded_by_bytes_moved() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options::default()).unwrap();
    const MIB: usize = 1 << 20;
    let n = (storage::COMPACT_STEP_BYTES as usize / MIB) * 3 / 2;
    for i in 0..2 * n as u32 {
        db.put(&i.to_be_bytes(), &value(i as u64, MIB + 7), Durability::Off)
            .unwrap();
    }
    // Every other value gone: each survivor's first and last pages are partly live.
    for i in (0..2 * n as u32).step_by(2) {
        db.delete(&i.to_be_bytes(), Durability::Off).unwrap();
    }
    let mut moved = Vec::new();
    let r = db
        .compact(100, |last| {
            if let Some(s) = last {
                moved.push(s.bytes_moved);
            }
            true
        })
        .unwrap();
    assert!(r.complete && r.steps >= 2, "{r:?}");
    let cap = storage::COMPACT_STEP_BYTES + (MIB + 7) as u64;
    assert!(moved.iter().all(|&b| b <= cap), "{moved:?}");
    assert!(r.values_moved as usize >= n * 9 / 10, "{r:?}");
    let live: usize = n * (MIB + 7);
    assert_eq!(db.check_integrity().unwrap().heap_bytes as usize, live);
}
