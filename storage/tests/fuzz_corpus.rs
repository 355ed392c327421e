//! Replays every committed fuzz corpus file through the same entry points the cargo-fuzz
//! targets use, on the stable toolchain, so CI exercises them on every run.

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        if p.is_file() {
            let data = std::fs::read(&p).unwrap();
            out.push((p, data));
        }
    }
    out.sort();
    out
}

#[test]
fn page_decode_corpus_replays_without_panic() {
    let files = corpus("page_decode");
    assert!(files.len() >= 5, "the seed corpus is committed");
    let mut decoded = 0;
    for (path, data) in &files {
        let r = std::panic::catch_unwind(|| storage::fuzzing::page_decode(data));
        assert!(r.is_ok(), "{} made the decoder panic", path.display());
        // Real pages from the seed corpus decode cleanly as they are.
        if data.len() == storage::PAGE_SIZE {
            let id = storage::PageId(u64::from_le_bytes(data[8..16].try_into().unwrap()));
            if storage::internals::page::inspect(data, id).is_ok() {
                decoded += 1;
            }
        }
    }
    assert!(decoded >= 4, "seed pages of every kind decode ({decoded})");
}

#[test]
fn inspect_reports_damage_as_typed_errors() {
    let files = corpus("page_decode");
    let (_, page) = files
        .iter()
        .find(|(name, d)| {
            // A seed written from a real database (the fuzzer's own finds may be damaged).
            name.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("page-"))
                && d.len() == storage::PAGE_SIZE
                && d[4] == storage::internals::page::PageKind::Leaf as u8
        })
        .expect("a leaf page in the corpus");
    let id = storage::PageId(u64::from_le_bytes(page[8..16].try_into().unwrap()));
    let s = storage::internals::page::inspect(page, id).unwrap();
    assert!(s.count > 0 && s.local_bytes > 0);
    let mut bad = page.clone();
    bad[100] ^= 1;
    assert!(matches!(
        storage::internals::page::inspect(&bad, id),
        Err(storage::Error::Corrupt { .. })
    ));
    assert!(storage::internals::page::inspect(&page[..100], id).is_err());
    assert!(
        storage::internals::page::inspect(page, storage::PageId(id.0 + 1)).is_err(),
        "misdirected page"
    );
}

#[test]
fn wal_decode_corpus_replays_without_panic() {
    let files = corpus("wal_decode");
    assert!(files.len() >= 3, "the seed corpus is committed");
    let mut with_records = 0;
    for (path, data) in &files {
        let r = std::panic::catch_unwind(|| storage::fuzzing::wal_decode(data));
        assert!(r.is_ok(), "{} made the decoder panic", path.display());
        let lsn = data
            .get(8..16)
            .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()));
        if storage::internals::record::decode(data, storage::Lsn(lsn)).is_ok() {
            with_records += 1;
        }
    }
    assert!(
        with_records >= 2,
        "seed files hold real records ({with_records})"
    );
}

#[test]
fn power_loss_corpus_replays_and_every_acknowledged_commit_survives() {
    let files = corpus("power_loss");
    assert!(files.len() >= 8, "the seed corpus is committed");
    for (path, data) in &files {
        let r = std::panic::catch_unwind(|| storage::fuzzing::power_loss(data));
        assert!(r.is_ok(), "{} lost data or panicked", path.display());
    }
}

#[test]
fn replica_apply_corpus_replays_without_panic() {
    let files = corpus("replica_apply");
    assert!(files.len() >= 8, "the seed corpus is committed");
    for (path, data) in &files {
        let r = std::panic::catch_unwind(|| storage::fuzzing::replica_apply(data));
        assert!(r.is_ok(), "{} made replica apply panic", path.display());
    }
}

#[test]
fn wal_damage_corpus_replays_and_check_and_open_agree() {
    let files = corpus("wal_damage");
    assert!(files.len() >= 8, "the seed corpus is committed");
    for (path, data) in &files {
        let r = std::panic::catch_unwind(|| storage::fuzzing::wal_damage(data));
        assert!(
            r.is_ok(),
            "{} broke the torn-tail/damage rule",
            path.display()
        );
    }
}

/// Random damage beyond the corpus (REPLIDB_DAMAGE_SEEDS, default 200): the same rule.
#[test]
fn wal_damage_holds_on_random_damage() {
    use rand::{Rng, SeedableRng};
    let seeds: u64 = std::env::var("REPLIDB_DAMAGE_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let mut seen = std::collections::BTreeMap::new();
    for seed in 0..seeds {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n = rng.gen_range(20..600);
        let data: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
        let r = std::panic::catch_unwind(|| storage::fuzzing::wal_damage(&data));
        match r {
            Ok(v) => *seen.entry(format!("{v:?}")).or_insert(0) += 1,
            Err(_) => panic!("seed {seed} broke the torn-tail/damage rule"),
        }
    }
    eprintln!("wal_damage verdicts: {seen:?}");
    // The runs reach both sides of the rule, not only one.
    if seeds >= 100 {
        assert!(
            seen.get("Damage").copied().unwrap_or(0) >= seeds / 10
                && seen.get("TornTail").copied().unwrap_or(0) >= 1,
            "{seen:?}"
        );
    }
}
