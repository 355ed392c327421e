//! Storage space through the server: `COMPACT` gives the value heap's dead bytes back on a
//! primary and shrinks the page file, replicated page for page (DIGEST agrees, the replica's
//! file shrinks too); a replica refuses it; and a primary whose heap is mostly garbage, or
//! whose page file is mostly free, compacts or shrinks it by itself; and one that goes quiet
//! after a random load repacks its leaves by itself.

mod common;

use common::{caught_up, info, info_section, wait_for, Node};
use rand::{Rng, SeedableRng};
use redis::cmd;

fn num(c: &mut redis::Connection, field: &str) -> u64 {
    info_section(c, "persistence")[field].parse().unwrap()
}

/// `keys` 1,000-byte values, then `rounds` of overwriting a random 30% of them: heap pages
/// end partly live. Returns the values written last.
fn churn(c: &mut redis::Connection, keys: usize, rounds: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut vals: Vec<Vec<u8>> = vec![Vec::new(); keys];
    for round in 0..=rounds {
        let mut m = cmd("MSET");
        let mut any = false;
        for (i, v) in vals.iter_mut().enumerate() {
            if round == 0 || rng.gen_bool(0.3) {
                *v = (0..1000).map(|_| rng.gen()).collect();
                m.arg(format!("k{i:06}")).arg(&v[..]);
                any = true;
            }
        }
        if any {
            let _: () = m.query(c).unwrap();
        }
    }
    vals
}

/// A primary and its replica, each in a directory of its own, the link up.
fn primary_and_replica() -> (tempfile::TempDir, tempfile::TempDir, Node, Node) {
    let (pd, rd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let primary = Node::start(pd.path(), &["--name", "p"]);
    let addr = format!("127.0.0.1:{}", primary.port);
    let replica = Node::start(rd.path(), &["--replicaof", &addr, "--name", "r"]);
    wait_for(20, "link up", || {
        info(&mut replica.client())["primary_link"] == "up"
    });
    (pd, rd, primary, replica)
}

#[test]
fn compact_gives_heap_pages_back_and_replicas_follow_byte_for_byte() {
    let (_pd, _rd, primary, replica) = primary_and_replica();
    let (mut p, mut r) = (primary.client(), replica.client());
    // Below the automatic threshold (4 MiB of heap): only COMPACT compacts here.
    let vals = churn(&mut p, 2000, 8, 1);
    let live = num(&mut p, "heap_live_bytes");
    let before = num(&mut p, "heap_pages");
    let needed = live.div_ceil(4056);
    assert!(
        before > needed * 13 / 10,
        "{before} heap pages for {needed}"
    );
    let pages_before = num(&mut p, "page_count");
    let report: String = cmd("COMPACT").query(&mut p).unwrap();
    assert!(report.contains("heap: moved"), "{report}");
    assert!(report.contains("leaves: regrouped"), "{report}");
    assert!(report.contains("file: moved"), "{report}");
    let after = num(&mut p, "heap_pages");
    assert!(
        after <= needed * 12 / 10 + 2,
        "{after} heap pages after COMPACT for {needed} pages of values: {report}"
    );
    assert_eq!(num(&mut p, "heap_live_bytes"), live, "nothing lost");
    // The emptied pages were given back: none is left free inside the file.
    assert_eq!(num(&mut p, "free_pages"), 0, "{report}");
    assert!(num(&mut p, "page_count") <= pages_before - (before - after));
    // The replica took the same steps: same pages, same values.
    wait_for(30, "replica caught up", || caught_up(&mut p, &mut r));
    let digest = |c: &mut redis::Connection| cmd("DIGEST").query::<String>(c).unwrap();
    assert_eq!(digest(&mut r), digest(&mut p));
    assert_eq!(num(&mut r, "heap_pages"), after);
    for i in (0..vals.len()).step_by(97) {
        let got: Vec<u8> = cmd("GET").arg(format!("k{i:06}")).query(&mut r).unwrap();
        assert_eq!(got, vals[i], "k{i:06} on the replica");
    }
    // A replica does not compact (its pages are its primary's).
    let err = cmd("COMPACT").query::<String>(&mut r).unwrap_err();
    assert_eq!(err.code(), Some("READONLY"), "{err}");
    // Nor does COMPACT take arguments.
    let err = cmd("COMPACT")
        .arg("now")
        .query::<String>(&mut p)
        .unwrap_err();
    assert!(err.to_string().contains("wrong number"), "{err}");
}

#[test]
fn a_heap_mostly_garbage_is_compacted_by_the_primary_itself() {
    let pd = tempfile::tempdir().unwrap();
    let primary = Node::start(pd.path(), &["--name", "p"]);
    let mut p = primary.client();
    // 6 MB of values overwritten until far more than 40% of the heap's bytes are dead.
    let vals = churn(&mut p, 6000, 14, 2);
    let live = num(&mut p, "heap_live_bytes");
    let needed = live.div_ceil(4056);
    // Whether the garbage was seen during the load or after it, the heap ends with less
    // than 40% of its bytes dead (the threshold), and a pass says so in the log.
    wait_for(60, "the heap compacted by itself", || {
        num(&mut p, "heap_pages") * 6 <= needed * 10
    });
    assert_eq!(num(&mut p, "heap_live_bytes"), live);
    for i in (0..vals.len()).step_by(211) {
        let got: Vec<u8> = cmd("GET").arg(format!("k{i:06}")).query(&mut p).unwrap();
        assert_eq!(got, vals[i]);
    }
    // The heap can reach the mark in the middle of a pass; the line comes at its end.
    let mut logs = Vec::new();
    wait_for(30, "the pass logged", || {
        logs.extend(primary.log_lines());
        logs.iter().any(|l| l.contains("heap compaction"))
    });
}

/// `n` keys `prefix{i}` with `len`-byte values, in MSETs of 100.
fn load(c: &mut redis::Connection, prefix: &str, n: usize, len: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let vals: Vec<Vec<u8>> = (0..n)
        .map(|_| (0..len).map(|_| rng.gen()).collect())
        .collect();
    for (chunk_no, chunk) in vals.chunks(100).enumerate() {
        let mut m = cmd("MSET");
        for (j, v) in chunk.iter().enumerate() {
            m.arg(format!("{prefix}{}", chunk_no * 100 + j)).arg(&v[..]);
        }
        let _: () = m.query(c).unwrap();
    }
    vals
}

/// Deletes all but every fifth key, so the survivors are spread over the whole file.
fn delete_most(c: &mut redis::Connection, prefix: &str, n: usize) {
    for chunk in (0..n)
        .filter(|i| i % 5 != 0)
        .collect::<Vec<_>>()
        .chunks(200)
    {
        let mut d = cmd("DEL");
        for i in chunk {
            d.arg(format!("{prefix}{i}"));
        }
        let _: u64 = d.query(c).unwrap();
    }
}

#[test]
fn compact_shrinks_the_page_file_after_large_deletes_and_the_replica_follows() {
    let (pd, _rd, primary, replica) = primary_and_replica();
    let (mut p, mut r) = (primary.client(), replica.client());
    // Under the sweep's thresholds (4 MiB free, 4 MiB of heap): only COMPACT acts here.
    let vals = load(&mut p, "s", 900, 3000, 2);
    delete_most(&mut p, "s", vals.len());
    wait_for(30, "replica caught up", || caught_up(&mut p, &mut r));
    for c in [&mut p, &mut r] {
        let _: () = cmd("CHECKPOINT").query(c).unwrap();
    }
    let (p_file, r_file) = (
        num(&mut p, "page_file_bytes"),
        num(&mut r, "page_file_bytes"),
    );
    let (count, free) = (num(&mut p, "page_count"), num(&mut p, "free_pages"));
    assert!(
        free * 2 > count,
        "{free} of {count} pages free after the deletes"
    );
    let report: String = cmd("COMPACT").query(&mut p).unwrap();
    let after = num(&mut p, "page_count");
    assert_eq!(num(&mut p, "free_pages"), 0, "{report}");
    assert!(after * 2 < count, "page count {count} -> {after}: {report}");
    let p_after = num(&mut p, "page_file_bytes");
    assert_eq!(
        p_after,
        after * 4096,
        "the primary's file is cut to its pages: {report}"
    );
    assert!(p_after * 2 < p_file, "{p_file} -> {p_after} bytes");
    // The replica took the same steps: same pages, and its own checkpoint cuts its file.
    wait_for(30, "replica caught up", || caught_up(&mut p, &mut r));
    let digest = |c: &mut redis::Connection| cmd("DIGEST").query::<String>(c).unwrap();
    assert_eq!(digest(&mut r), digest(&mut p));
    assert_eq!(num(&mut r, "page_count"), after);
    let _: () = cmd("CHECKPOINT").query(&mut r).unwrap();
    let r_after = num(&mut r, "page_file_bytes");
    assert!(
        r_after * 2 < r_file,
        "replica's file {r_file} -> {r_after} bytes"
    );
    for c in [&mut p, &mut r] {
        for i in (0..vals.len()).step_by(5) {
            let got: Vec<u8> = cmd("GET").arg(format!("s{i}")).query(c).unwrap();
            assert_eq!(got, vals[i], "s{i}");
        }
        let gone: Option<Vec<u8>> = cmd("GET").arg("s1").query(c).unwrap();
        assert_eq!(gone, None);
    }
    // A SIGKILL and a restart keep the smaller file and every value.
    drop(replica);
    let mut primary = primary;
    primary.child.kill().unwrap();
    primary.child.wait().unwrap();
    drop(primary);
    let primary = Node::start(pd.path(), &["--name", "p"]);
    let mut p = primary.client();
    assert_eq!(num(&mut p, "page_count"), after);
    let got: Vec<u8> = cmd("GET").arg("s895").query(&mut p).unwrap();
    assert_eq!(got, vals[895]);
}

#[test]
fn a_page_file_mostly_free_is_shrunk_by_the_primary_itself() {
    let pd = tempfile::tempdir().unwrap();
    let primary = Node::start(pd.path(), &["--name", "p"]);
    let mut p = primary.client();
    // About 2,300 pages of values; four fifths deleted: past 1,024 free pages and half the file.
    let vals = load(&mut p, "a", 3000, 3000, 3);
    let count = num(&mut p, "page_count");
    delete_most(&mut p, "a", vals.len());
    wait_for(30, "the primary to shrink its page file", || {
        num(&mut p, "page_count") * 2 < count && num(&mut p, "free_pages") < 64
    });
    for i in (0..vals.len()).step_by(5) {
        let got: Vec<u8> = cmd("GET").arg(format!("a{i}")).query(&mut p).unwrap();
        assert_eq!(got, vals[i], "a{i}");
    }
}

/// A key and its value.
type Pair = (Vec<u8>, Vec<u8>);

/// 50,000 random 16-byte keys with 100-byte values, 1,000 to an MSET: the pairs, and the
/// most pages the file had meanwhile.
fn random_load(p: &mut redis::Connection, seed: u64) -> (Vec<Pair>, u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut kv: Vec<Pair> = Vec::new();
    let mut most_pages = 0;
    for _ in 0..50 {
        let mut m = cmd("MSET");
        for _ in 0..1000 {
            let k: [u8; 16] = rng.gen();
            let v: Vec<u8> = (0..100).map(|_| rng.gen()).collect();
            m.arg(&k[..]).arg(&v[..]);
            kv.push((k.to_vec(), v));
        }
        let _: () = m.query(p).unwrap();
        most_pages = most_pages.max(num(p, "page_count"));
    }
    (kv, most_pages)
}

/// Random inserts leave leaves ~77% full; when the load stops, the primary repacks them by
/// itself (and gives the freed pages back), and the replica follows page for page.
#[test]
fn a_primary_gone_quiet_after_a_random_load_repacks_its_leaves() {
    let (_pd, _rd, primary, replica) = primary_and_replica();
    let (mut p, mut r) = (primary.client(), replica.client());
    let (kv, most_pages) = random_load(&mut p, 7);
    // (A stall of the client mid-load can start a repack early; the one after the load is
    // the one waited for.)
    wait_for(30, "the idle repack", || {
        num(&mut p, "leaf_repacks") >= 1 && num(&mut p, "page_count") * 100 < most_pages * 88
    });
    let after = num(&mut p, "page_count");
    assert!(
        after * 100 < most_pages * 88,
        "page count {most_pages} -> {after} after the repack"
    );
    let _: () = cmd("CHECKPOINT").query(&mut p).unwrap();
    assert_eq!(num(&mut p, "page_file_bytes"), after * 4096);
    wait_for(30, "replica caught up", || caught_up(&mut p, &mut r));
    let digest = |c: &mut redis::Connection| cmd("DIGEST").query::<String>(c).unwrap();
    assert_eq!(digest(&mut r), digest(&mut p));
    assert_eq!(num(&mut r, "page_count"), after);
    for c in [&mut p, &mut r] {
        for (k, v) in kv.iter().step_by(97) {
            let got: Vec<u8> = cmd("GET").arg(&k[..]).query(c).unwrap();
            assert_eq!(&got, v);
        }
    }
}

/// A repack that started in a quiet moment gives way to the writes that come back: under a
/// trickle of writes too slow to count as load (a SET every 10 ms), the pass that starts
/// stops after its first step (which regroups 16 parents' leaves: far longer than 10 ms);
/// once the trickle stops, a pass goes on from there to the end, and the replica still
/// matches byte for byte.
#[test]
fn an_idle_repack_gives_way_to_writes() {
    let (_pd, _rd, primary, replica) = primary_and_replica();
    let (mut p, mut r) = (primary.client(), replica.client());
    random_load(&mut p, 11);
    // (A stall of the client mid-load may have started a pass already.)
    let done_before = num(&mut p, "leaf_repacks");
    let paused_before = num(&mut p, "leaf_repacks_paused");
    let started = std::time::Instant::now();
    let mut i = 0u64;
    while num(&mut p, "leaf_repacks_paused") == paused_before {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "no idle repack gave way to the trickle of writes"
        );
        let _: () = cmd("SET")
            .arg(format!("t{}", i % 100))
            .arg(i)
            .query(&mut p)
            .unwrap();
        i += 1;
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    wait_for(30, "a pass to the end once the writes stop", || {
        num(&mut p, "leaf_repacks") > done_before
    });
    wait_for(30, "replica caught up", || caught_up(&mut p, &mut r));
    let digest = |c: &mut redis::Connection| cmd("DIGEST").query::<String>(c).unwrap();
    assert_eq!(digest(&mut r), digest(&mut p));
}
