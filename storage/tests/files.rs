//! The page file across reopen, under churn, and when damaged.

use std::os::unix::fs::FileExt;

use rand::{Rng, SeedableRng};
use storage::internals::page::{PageKind, PAGE_SIZE};
use storage::{Db, Durability, Error, Options, WriteBatch, PAGE_FILE};

fn val(rng: &mut impl Rng) -> Vec<u8> {
    let len = if rng.gen_ratio(1, 20) {
        rng.gen_range(600..20_000)
    } else {
        rng.gen_range(0..150)
    };
    (0..len).map(|_| rng.gen()).collect()
}

#[test]
fn reopen_gives_the_same_content() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut want = Vec::new();
    let mut lsns = Vec::new();
    {
        let db = Db::open(dir.path(), Options::default()).unwrap();
        for round in 0..20 {
            let mut b = WriteBatch::new();
            for i in 0..500u32 {
                let k = format!("key-{round:02}-{i:05}").into_bytes();
                let v = val(&mut rng);
                want.push((k.clone(), v.clone()));
                b.put(k, v);
            }
            // Mix durable and deferred commits; close must write back the deferred ones.
            let d = if round % 3 == 0 {
                Durability::Local
            } else {
                Durability::Off
            };
            lsns.push(db.commit(&b, d).unwrap());
        }
        db.close().unwrap();
    }
    assert!(
        lsns.windows(2).all(|w| w[0] < w[1]),
        "LSNs grow with every commit"
    );
    want.sort();
    let db = Db::open(dir.path(), Options::default()).unwrap();
    assert_eq!(db.len(), want.len() as u64);
    let got: Vec<_> = db.range(..).map(|e| e.unwrap()).collect();
    assert!(got == want, "content after reopen differs");
    db.check_integrity().unwrap();
    assert!(
        db.last_lsn() >= *lsns.last().unwrap(),
        "the log continues after the last commit"
    );
    drop(db);
    // Dropping without close also writes back.
    let db = Db::open(dir.path(), Options::default()).unwrap();
    db.put(b"late", b"write", Durability::Off).unwrap();
    drop(db);
    let db = Db::open(dir.path(), Options::default()).unwrap();
    assert_eq!(db.get(b"late").unwrap().as_deref(), Some(&b"write"[..]));
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _db = Db::open(dir.path(), Options::default()).unwrap();
    match Db::open(dir.path(), Options::default()) {
        Err(Error::Locked { .. }) => {}
        other => panic!("expected Locked, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn churn_over_a_fixed_key_set_does_not_grow_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options::default()).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let keys: Vec<Vec<u8>> = (0..3000u32)
        .map(|i| format!("churn{i:06}").into_bytes())
        .collect();
    let mut pages_after_warmup = 0;
    for round in 0..60 {
        let mut b = WriteBatch::new();
        for k in &keys {
            match rng.gen_range(0..3) {
                0 => {
                    b.delete(k.clone());
                }
                _ => {
                    b.put(k.clone(), val(&mut rng));
                }
            }
        }
        db.commit(&b, Durability::Off).unwrap();
        if round == 10 {
            pages_after_warmup = db.stats().page_count;
        }
    }
    db.checkpoint().unwrap();
    let s = db.stats();
    db.check_integrity().unwrap();
    assert!(
        s.page_count <= pages_after_warmup * 5 / 4,
        "page count grew from {pages_after_warmup} to {} under steady churn",
        s.page_count
    );
    assert!(s.free_pages > 0, "deleted space went to the free list");
    // Deleting everything leaves the file's pages free for reuse rather than leaked.
    let mut b = WriteBatch::new();
    for k in &keys {
        b.delete(k.clone());
    }
    db.commit(&b, Durability::Local).unwrap();
    let r = db.check_integrity().unwrap();
    assert!(r.heap_pages <= 1 && r.heap_bytes == 0, "{r:?}");
    assert_eq!(r.free_pages, r.page_count - 2 - r.heap_pages);
}

/// Flips one byte in the middle of a leaf page: every read path that touches that page
/// reports `Corrupt` naming it; nothing panics; other pages remain readable.
#[test]
fn a_flipped_byte_is_a_typed_error_naming_the_page() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(dir.path(), Options::default()).unwrap();
        let mut b = WriteBatch::new();
        for i in 0..5000u32 {
            b.put(format!("k{i:06}").into_bytes(), vec![i as u8; 100]);
        }
        db.commit(&b, Durability::Local).unwrap();
        db.close().unwrap();
    }
    let path = dir.path().join(PAGE_FILE);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let pages = f.metadata().unwrap().len() / PAGE_SIZE as u64;
    let mut victim = None;
    let mut buf = vec![0u8; PAGE_SIZE];
    for id in (1..pages).rev() {
        f.read_exact_at(&mut buf, id * PAGE_SIZE as u64).unwrap();
        if buf[4] == PageKind::Leaf as u8 && buf[8..16] == id.to_le_bytes() {
            victim = Some(id);
            break;
        }
    }
    let victim = victim.expect("a leaf page");
    let off = victim * PAGE_SIZE as u64 + 2000;
    f.read_exact_at(&mut buf[..1], off).unwrap();
    f.write_all_at(&[buf[0] ^ 0x5a], off).unwrap();
    drop(f);

    let db = Db::open(dir.path(), Options::default()).unwrap();
    let is_victim = |e: &Error| matches!(e, Error::Corrupt { page, .. } if page.0 == victim);
    let scan_err = db
        .range(..)
        .find_map(|e| e.err())
        .expect("the scan reaches the bad page");
    assert!(
        is_victim(&scan_err),
        "scan error names the page: {scan_err}"
    );
    assert!(scan_err.to_string().contains("checksum"), "{scan_err}");
    let check_err = db.check_integrity().unwrap_err();
    assert!(is_victim(&check_err), "check names the page: {check_err}");
    // Point reads: keys on the bad page fail with the typed error, the others still work.
    let (mut ok, mut bad) = (0, 0);
    for i in 0..5000u32 {
        match db.get(format!("k{i:06}").as_bytes()) {
            Ok(Some(v)) => {
                assert_eq!(v, vec![i as u8; 100]);
                ok += 1;
            }
            Err(e) => {
                assert!(is_victim(&e), "{e}");
                bad += 1;
            }
            Ok(None) => panic!("key {i} vanished instead of failing"),
        }
    }
    assert!(bad > 0 && ok > 4000, "ok {ok}, bad {bad}");
    // A write that must pass through the bad page fails without changing anything.
    let mut b = WriteBatch::new();
    b.put(b"k999999".to_vec(), b"x".to_vec());
    for i in 0..5000u32 {
        b.put(format!("k{i:06}").into_bytes(), b"y".to_vec());
    }
    assert!(db.commit(&b, Durability::Local).is_err());
    match db.get(b"k999999") {
        Ok(None) => {}
        Err(e) if is_victim(&e) => {}
        other => panic!("a failed batch left a trace: {other:?}"),
    }
    let untouched = (0..5000u32).find_map(|i| {
        db.get(format!("k{i:06}").as_bytes())
            .ok()
            .flatten()
            .map(|v| (i, v))
    });
    let (i, v) = untouched.expect("some key readable");
    assert_eq!(v, vec![i as u8; 100], "a failed batch leaves no trace");
}

#[test]
fn a_damaged_meta_page_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    Db::open(dir.path(), Options::default())
        .unwrap()
        .close()
        .unwrap();
    let path = dir.path().join(PAGE_FILE);
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(b"garbage!", 40).unwrap();
    drop(f);
    let err = Db::open(dir.path(), Options::default())
        .err()
        .expect("open must fail");
    assert!(matches!(err, Error::Incompatible { .. }), "{err}");
    // A page file cut inside its first page (with a control file that says a database was
    // created) is refused too: padded out to a whole page, its meta page is zeros.
    std::fs::write(&path, b"short").unwrap();
    let err = Db::open(dir.path(), Options::default())
        .err()
        .expect("open must fail");
    assert!(matches!(err, Error::Incompatible { .. }), "{err}");
    assert!(err.to_string().contains("meta page"), "{err}");
}

#[test]
fn limits_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options::default()).unwrap();
    let big_key = vec![b'k'; storage::MAX_KEY + 1];
    assert!(matches!(
        db.put(&big_key, b"v", Durability::Off),
        Err(Error::KeyTooLarge { .. })
    ));
    let max_key = vec![b'k'; storage::MAX_KEY];
    db.put(&max_key, b"v", Durability::Off).unwrap();
    assert_eq!(db.get(&max_key).unwrap().as_deref(), Some(&b"v"[..]));
    let big_val = vec![0u8; storage::MAX_VALUE + 1];
    assert!(matches!(
        db.put(b"k", &big_val, Durability::Off),
        Err(Error::ValueTooLarge { .. })
    ));
    let max_val: Vec<u8> = (0..storage::MAX_VALUE).map(|i| (i % 253) as u8).collect();
    db.put(b"big", &max_val, Durability::Local).unwrap();
    assert!(db.get(b"big").unwrap().as_deref() == Some(&max_val[..]));
    db.put(b"", b"empty key", Durability::Off).unwrap();
    assert_eq!(db.get(b"").unwrap().as_deref(), Some(&b"empty key"[..]));
    db.check_integrity().unwrap();
    db.delete(b"big", Durability::Local).unwrap();
    let r = db.check_integrity().unwrap();
    assert!(
        r.free_pages >= (storage::MAX_VALUE / PAGE_SIZE) as u64,
        "the big value's pages are free"
    );
}

/// A meta page that claims the largest page count there is (its checksum made right, as a
/// damaged-then-resealed file or a hostile base backup could) does not size memory by it: the
/// database opens without allocating a frame per claimed page, and reads fail cleanly.
#[test]
fn a_meta_page_claiming_a_huge_page_count_sizes_nothing_by_it() {
    use storage::internals::page;
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options::default()).unwrap();
    db.put(b"k", b"v", Durability::Local).unwrap();
    db.close().unwrap();
    let path = dir.path().join(PAGE_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    // page_count: after the 40-byte page header, magic, version, page size and root.
    bytes[64..72].copy_from_slice(&storage::MAX_PAGES.to_le_bytes());
    page::seal(&mut bytes[..storage::PAGE_SIZE]);
    std::fs::write(&path, &bytes).unwrap();
    match Db::open(dir.path(), Options::default()) {
        Ok(db) => {
            // Whatever the reads say, they say it as values or errors.
            let _ = db.get(b"k");
            let _ = db.get(b"zzz");
            assert!(db.stats().page_count == storage::MAX_PAGES);
        }
        Err(e) => assert!(
            matches!(e, Error::Incompatible { .. } | Error::Corrupt { .. }),
            "{e}"
        ),
    }
}

/// A scrub reads the page file, not memory: a page damaged on disk under a running
/// database is found (by id), one changed since the last checkpoint is left to that
/// checkpoint, and a damaged WAL record in the log recovery would replay is found by LSN.
#[test]
fn scrub_finds_damage_on_disk_under_a_running_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options::default()).unwrap();
    for i in 0..3000u32 {
        db.put(
            format!("key-{i:05}").as_bytes(),
            &[7u8; 100],
            Durability::Off,
        )
        .unwrap();
    }
    db.checkpoint().unwrap();
    let clean = db.scrub_pages(0, db.file_pages()).unwrap();
    assert!(clean.checked > 10 && clean.damaged.is_empty(), "{clean:?}");
    // Bit rot in a leaf the readers have not touched since.
    let path = dir.path().join(PAGE_FILE);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let bytes = std::fs::read(&path).unwrap();
    // A leaf in the middle of the key range (the writes below go to the last one).
    let leaves: Vec<usize> = (1..bytes.len() / PAGE_SIZE)
        .filter(|&i| bytes[i * PAGE_SIZE + 4] == PageKind::Leaf as u8)
        .collect();
    let leaf = leaves[leaves.len() / 2];
    f.write_all_at(
        &[bytes[leaf * PAGE_SIZE + 1500] ^ 0x08],
        (leaf * PAGE_SIZE + 1500) as u64,
    )
    .unwrap();
    let s = db.scrub_pages(0, db.file_pages()).unwrap();
    assert_eq!(
        s.damaged.iter().map(|(id, _)| id.0).collect::<Vec<_>>(),
        vec![leaf as u64]
    );
    assert!(s.damaged[0].1.contains("checksum"), "{:?}", s.damaged);
    // Found damaged, the page is no longer served from the checks it passed before.
    assert!(db.page_damage(storage::PageId(leaf as u64)).is_some());

    // WAL: commits after the checkpoint, then a flipped byte in the middle of them.
    let mut ends = Vec::new();
    for i in 0..200u32 {
        ends.push(
            db.put(
                format!("more-{i:05}").as_bytes(),
                &[9u8; 60],
                Durability::Local,
            )
            .unwrap(),
        );
    }
    let w = db.scrub_wal().unwrap();
    assert!(w.damage.is_none() && w.records >= 400, "{w:?}");
    let target = ends[100].0 + 10;
    let seg = target - target % (16 << 20);
    let wal = dir
        .path()
        .join(storage::WAL_DIR)
        .join(storage::internals::segment::segment_name(seg));
    let wf = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&wal)
        .unwrap();
    let off = storage::internals::segment::SEGMENT_HEADER + target - seg;
    let mut b = [0u8; 1];
    wf.read_exact_at(&mut b, off).unwrap();
    wf.write_all_at(&[b[0] ^ 0x01], off).unwrap();
    let w = db.scrub_wal().unwrap();
    let (at, _) = w.damage.expect("the flipped record is found");
    assert_eq!(at, ends[100], "the record after commit 100 is named");
}
