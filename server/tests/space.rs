//! Storage space through the server: `COMPACT` gives the value heap's dead bytes back on a
//! primary, replicated page for page (DIGEST agrees); a replica refuses it; and a primary
//! whose heap is mostly garbage compacts it by itself.

mod common;

use common::{info, info_section, wait_for, Node};
use rand::{Rng, SeedableRng};
use redis::cmd;

fn caught_up(primary: &mut redis::Connection, replica: &mut redis::Connection) -> bool {
    let p = info(primary);
    let r = info(replica);
    r["apply_lsn"] == p["flush_lsn"] && r["flush_lsn"] == p["flush_lsn"]
}

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

#[test]
fn compact_gives_heap_pages_back_and_replicas_follow_byte_for_byte() {
    let (pd, rd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let primary = Node::start(pd.path(), &["--name", "p"]);
    let addr = format!("127.0.0.1:{}", primary.port);
    let replica = Node::start(rd.path(), &["--replicaof", &addr, "--name", "r"]);
    let (mut p, mut r) = (primary.client(), replica.client());
    wait_for(20, "link up", || info(&mut r)["primary_link"] == "up");
    // Below the automatic threshold (4 MiB of heap): only COMPACT compacts here.
    let vals = churn(&mut p, 2000, 8, 1);
    let live = num(&mut p, "heap_live_bytes");
    let before = num(&mut p, "heap_pages");
    let needed = live.div_ceil(4056);
    assert!(
        before > needed * 13 / 10,
        "{before} heap pages for {needed}"
    );
    let report: String = cmd("COMPACT").query(&mut p).unwrap();
    assert!(report.contains("moved"), "{report}");
    let after = num(&mut p, "heap_pages");
    assert!(
        after <= needed * 12 / 10 + 2,
        "{after} heap pages after COMPACT for {needed} pages of values: {report}"
    );
    assert_eq!(num(&mut p, "heap_live_bytes"), live, "nothing lost");
    assert!(num(&mut p, "free_pages") >= before - after);
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
    let logs = primary.log_lines().join("\n");
    assert!(
        logs.contains("heap compaction"),
        "the pass is logged:\n{logs}"
    );
}
