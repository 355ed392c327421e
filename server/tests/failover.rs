//! Failover between real processes on 127.0.0.1, driven by a Redis client: promotion with
//! epochs, following the new primary (stream, rewind or reseed), fencing, switchover, and
//! writes refused by an isolated primary.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{info, wait_for, Node};
use rand::Rng;
use redis::cmd;

fn set(c: &mut redis::Connection, k: &str, v: &str) -> redis::RedisResult<()> {
    cmd("SET").arg(k).arg(v).query(c)
}

fn get(c: &mut redis::Connection, k: &str) -> Option<String> {
    cmd("GET").arg(k).query(c).unwrap()
}

fn digest(c: &mut redis::Connection) -> String {
    cmd("DIGEST").query(c).unwrap()
}

fn lsn_of(c: &mut redis::Connection, field: &str) -> u64 {
    info(c)[field].parse().unwrap()
}

/// Writers, each on its own keys, logging what was acknowledged, until `stop`. A writer
/// whose node fails a write keeps trying the next key (an error is not an acknowledgement).
fn writers(port: u16, n: usize, stop: Arc<AtomicBool>) -> Arc<Mutex<Vec<String>>> {
    let acked = Arc::new(Mutex::new(Vec::new()));
    for w in 0..n {
        let (stop, acked) = (stop.clone(), acked.clone());
        std::thread::spawn(move || {
            let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}/")) else {
                return;
            };
            let Ok(mut c) = client.get_connection() else {
                return;
            };
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let k = format!("w{w}:{i}");
                i += 1;
                match set(&mut c, &k, &k) {
                    Ok(()) => acked.lock().unwrap().push(k),
                    Err(e) if e.is_io_error() || e.is_connection_dropped() => return,
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        });
    }
    acked
}

fn missing(c: &mut redis::Connection, keys: &[String]) -> Vec<String> {
    keys.iter()
        .filter(|k| get(c, k).as_deref() != Some(k.as_str()))
        .cloned()
        .collect()
}

struct Trio {
    nodes: Vec<Node>,
    _dirs: Vec<tempfile::TempDir>,
}

fn trio(primary_args: &[&str]) -> Trio {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut args = vec!["--name", "p"];
    args.extend_from_slice(primary_args);
    let p = Node::start(dirs[0].path(), &args);
    let a = format!("127.0.0.1:{}", p.port);
    let r1 = Node::start(dirs[1].path(), &["--replicaof", &a, "--name", "r1"]);
    let r2 = Node::start(dirs[2].path(), &["--replicaof", &a, "--name", "r2"]);
    let mut c = p.client();
    wait_for(20, "both replicas connected", || {
        info(&mut c)["connected_replicas"] == "2"
    });
    Trio {
        nodes: vec![p, r1, r2],
        _dirs: dirs,
    }
}

#[test]
fn killing_the_primary_and_promoting_the_best_replica_loses_no_acknowledged_write() {
    let mut rng = rand::thread_rng();
    let mut how = HashMap::new();
    for trial in 0..10 {
        let t = trio(&["--sync-standbys", "ANY 1 (r1, r2)"]);
        let stop = Arc::new(AtomicBool::new(false));
        let acked = writers(t.nodes[0].port, 4, stop.clone());
        let after = rng.gen_range(50..400);
        let t0 = Instant::now();
        wait_for(20, "writes under way", || {
            t0.elapsed() >= Duration::from_millis(after) && acked.lock().unwrap().len() > 20
        });
        let Trio { mut nodes, _dirs } = t;
        let old = nodes.remove(0);
        old.kill();
        stop.store(true, Ordering::SeqCst);
        let acked = acked.lock().unwrap().clone();
        // Promote the replica with the highest flush LSN; point the other at it.
        let (f1, f2) = (
            lsn_of(&mut nodes[0].client(), "flush_lsn"),
            lsn_of(&mut nodes[1].client(), "flush_lsn"),
        );
        let (best, other) = if f1 >= f2 { (0, 1) } else { (1, 0) };
        let mut b = nodes[best].client();
        let t1 = Instant::now();
        let _: () = cmd("REPLICAOF").arg("NO").arg("ONE").query(&mut b).unwrap();
        set(&mut b, "first-after-promotion", "x").expect("the promoted node takes writes");
        let promote_ms = t1.elapsed().as_millis();
        let i = info(&mut b);
        assert_eq!(i["role"], "primary");
        assert_eq!(i["epoch"], "2", "trial {trial}: the epoch grew");
        let lost = missing(&mut b, &acked);
        assert!(
            lost.is_empty(),
            "trial {trial}: {} of {} acknowledged writes missing after promotion, e.g. {:?}",
            lost.len(),
            acked.len(),
            &lost[..lost.len().min(5)]
        );
        let mut o = nodes[other].client();
        let _: () = cmd("REPLICAOF")
            .arg("127.0.0.1")
            .arg(nodes[best].port)
            .query(&mut o)
            .unwrap();
        set(&mut b, "after", "failover").unwrap();
        let lsn: i64 = cmd("LSN").query(&mut b).unwrap();
        let _: i64 = cmd("WAITLSN").arg(lsn).arg(20_000).query(&mut o).unwrap();
        assert_eq!(get(&mut o, "after").as_deref(), Some("failover"));
        let oi = info(&mut o);
        assert_eq!(
            oi["epoch"], "2",
            "trial {trial}: the follower is on the new epoch"
        );
        *how.entry(oi["last_join"].split(':').next().unwrap_or("").to_string())
            .or_insert(0) += 1;
        wait_for(20, "equal digests", || digest(&mut b) == digest(&mut o));
        assert!(
            promote_ms < 5000,
            "trial {trial}: promotion took {promote_ms} ms"
        );
    }
    eprintln!("how the other replica rejoined: {how:?}");
}

#[test]
fn the_old_primary_comes_back_fenced_and_rejoins_the_new_one() {
    let t = trio(&[
        "--sync-standbys",
        "ANY 1 (r1, r2)",
        "--sync-timeout-ms",
        "300",
    ]);
    let mut p = t.nodes[0].client();
    for i in 0..200 {
        set(&mut p, &format!("k{i}"), "v").unwrap();
    }
    // An expiry and a collection travel through failover and rewind like any write.
    let _: () = cmd("SET")
        .arg("session")
        .arg("s")
        .arg("EX")
        .arg(3600)
        .query(&mut p)
        .unwrap();
    let _: () = cmd("HSET")
        .arg("h")
        .arg("f")
        .arg("v")
        .query(&mut p)
        .unwrap();
    let Trio { mut nodes, _dirs } = t;
    let old = nodes.remove(0);
    old.kill();
    let mut r1 = nodes[0].client();
    let _: () = cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query(&mut r1)
        .unwrap();
    let mut r2 = nodes[1].client();
    let _: () = cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(nodes[0].port)
        .query(&mut r2)
        .unwrap();
    set(&mut r1, "new", "1").unwrap();

    // The old primary restarts on its old directory and port, still configured as before:
    // with no replica to confirm it, it acknowledges nothing.
    let oldp = Node::start(
        _dirs[0].path(),
        &[
            "--name",
            "p",
            "--sync-standbys",
            "ANY 1 (r1, r2)",
            "--sync-timeout-ms",
            "300",
        ],
    );
    let old_port = oldp.port;
    let mut o = oldp.client();
    let e = set(&mut o, "lost?", "x").unwrap_err();
    assert_eq!(e.code(), Some("NOQUORUM"), "{e}");
    // A node of the newer epoch that talks to it fences it: no more writes at all.
    let _: () = cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(old_port)
        .query(&mut r2)
        .unwrap();
    wait_for(20, "the old primary to be fenced", || {
        info(&mut o).contains_key("fenced")
    });
    let e = set(&mut o, "lost?", "y").unwrap_err();
    assert_eq!(e.code(), Some("FENCED"), "{e}");
    let _: () = cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(nodes[0].port)
        .query(&mut r2)
        .unwrap();
    // Rejoined under the new primary, the old one drops what it alone had.
    let _: () = cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(nodes[0].port)
        .query(&mut o)
        .unwrap();
    set(&mut r1, "newer", "2").unwrap();
    let lsn: i64 = cmd("LSN").query(&mut r1).unwrap();
    let _: i64 = cmd("WAITLSN").arg(lsn).arg(30_000).query(&mut o).unwrap();
    let oi = info(&mut o);
    assert_eq!(
        (oi["role"].as_str(), oi["epoch"].as_str()),
        ("replica", "2")
    );
    assert!(
        oi["last_join"].starts_with("rewound: refetched"),
        "{:?}",
        oi["last_join"]
    );
    assert_eq!(
        get(&mut o, "lost?"),
        None,
        "a write never acknowledged is gone"
    );
    assert_eq!(get(&mut o, "newer").as_deref(), Some("2"));
    wait_for(20, "equal digests", || digest(&mut r1) == digest(&mut o));
    for c in [&mut r1, &mut o] {
        let ttl: i64 = cmd("TTL").arg("session").query(c).unwrap();
        assert!(
            (3000..=3600).contains(&ttl),
            "TTL after failover and rewind: {ttl}"
        );
        let v: Option<String> = cmd("HGET").arg("h").arg("f").query(c).unwrap();
        assert_eq!(v.as_deref(), Some("v"));
    }
    // Restarted without flags, it is still a replica of the new primary.
    oldp.signal("TERM");
    oldp.wait_exit();
    let oldp = Node::start(_dirs[0].path(), &["--name", "p"]);
    let mut o = oldp.client();
    assert_eq!(info(&mut o)["role"], "replica");
    assert_eq!(set(&mut o, "x", "y").unwrap_err().code(), Some("READONLY"));
}

#[test]
fn switchover_under_load_loses_no_acknowledged_write() {
    let t = trio(&["--sync-standbys", "ANY 1 (r1, r2)"]);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = writers(t.nodes[0].port, 4, stop.clone());
    wait_for(20, "writes under way", || acked.lock().unwrap().len() > 300);
    let mut p = t.nodes[0].client();
    let t0 = Instant::now();
    let _: () = cmd("FAILOVER")
        .arg("TO")
        .arg("127.0.0.1")
        .arg(t.nodes[1].port)
        .query(&mut p)
        .unwrap();
    let mut n = t.nodes[1].client();
    set(&mut n, "first-on-new-primary", "1").unwrap();
    let switch_ms = t0.elapsed().as_millis();
    // The writers now get errors from the old primary; nothing more is acknowledged there.
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::SeqCst);
    let acked = acked.lock().unwrap().clone();
    assert_eq!(set(&mut p, "x", "y").unwrap_err().code(), Some("READONLY"));
    let lost = missing(&mut n, &acked);
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes missing on the new primary, e.g. {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
    assert_eq!(info(&mut n)["epoch"], "2");
    let pi = info(&mut p);
    assert_eq!(pi["role"], "replica");
    // The old primary and the third node follow the new primary.
    let mut r2 = t.nodes[2].client();
    let _: () = cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(t.nodes[1].port)
        .query(&mut r2)
        .unwrap();
    set(&mut n, "after", "1").unwrap();
    let lsn: i64 = cmd("LSN").query(&mut n).unwrap();
    for c in [&mut p, &mut r2] {
        let _: i64 = cmd("WAITLSN").arg(lsn).arg(20_000).query(c).unwrap();
    }
    wait_for(20, "equal digests", || {
        let d = digest(&mut n);
        digest(&mut p) == d && digest(&mut r2) == d
    });
    eprintln!("FAILOVER TO -> first write on the new primary: {switch_ms} ms");
}

/// A TCP relay that can be cut: while cut it forwards nothing (the bytes wait in the
/// kernel), like a partition that drops no connection.
fn cuttable_relay(upstream: u16) -> (u16, Arc<AtomicBool>) {
    let cut = Arc::new(AtomicBool::new(false));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let c2 = cut.clone();
    std::thread::spawn(move || {
        for down in listener.incoming().map_while(Result::ok) {
            let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else {
                continue;
            };
            for (mut from, mut to) in [
                (down.try_clone().unwrap(), up.try_clone().unwrap()),
                (up, down),
            ] {
                let cut = c2.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 65536];
                    loop {
                        while cut.load(Ordering::SeqCst) {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        match from.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if to.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        }
    });
    (port, cut)
}

#[test]
fn an_isolated_primary_refuses_writes_within_the_lag_bound() {
    let (pd, d1) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let primary = Node::start(
        pd.path(),
        &[
            "--name",
            "p",
            "--min-replicas-to-write",
            "1",
            "--min-replicas-max-lag-ms",
            "1500",
        ],
    );
    let mut p = primary.client();
    let e = set(&mut p, "a", "1").unwrap_err();
    assert_eq!(e.code(), Some("NOREPLICAS"), "no replica yet: {e}");
    let (relay, cut) = cuttable_relay(primary.port);
    let _r1 = Node::start(
        d1.path(),
        &["--replicaof", &format!("127.0.0.1:{relay}"), "--name", "r1"],
    );
    wait_for(20, "writes accepted with a replica", || {
        set(&mut p, "a", "1").is_ok()
    });
    cut.store(true, Ordering::SeqCst);
    let t = Instant::now();
    wait_for(
        20,
        "NOREPLICAS while cut off",
        || matches!(set(&mut p, "b", "2"), Err(e) if e.code() == Some("NOREPLICAS")),
    );
    let took = t.elapsed();
    assert!(
        took < Duration::from_millis(1500 + 1500),
        "refused only after {took:?}"
    );
    cut.store(false, Ordering::SeqCst);
    wait_for(20, "writes accepted again", || {
        set(&mut p, "c", "3").is_ok()
    });
}

#[test]
fn two_promoted_replicas_are_never_mixed() {
    // Split brain by hand: both replicas promoted (each to epoch 2, at different points),
    // each takes a write. Pointed at the other, a node is rewound by pages, not merged.
    let t = trio(&[]);
    let mut p = t.nodes[0].client();
    // Enough data for many pages, so a rewind refetches only some.
    for chunk in 0..40 {
        let mut c = cmd("MSET");
        for i in 0..500 {
            c.arg(format!("base:{chunk}:{i}")).arg("x".repeat(40));
        }
        let _: () = c.query(&mut p).unwrap();
    }
    set(&mut p, "base", "1").unwrap();
    let lsn: i64 = cmd("LSN").query(&mut p).unwrap();
    let (mut r1, mut r2) = (t.nodes[1].client(), t.nodes[2].client());
    for c in [&mut r1, &mut r2] {
        let _: i64 = cmd("WAITLSN").arg(lsn).arg(10_000).query(c).unwrap();
    }
    let _: () = cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query(&mut r1)
        .unwrap();
    set(&mut p, "more", "2").unwrap();
    let lsn: i64 = cmd("LSN").query(&mut p).unwrap();
    let _: i64 = cmd("WAITLSN").arg(lsn).arg(10_000).query(&mut r2).unwrap();
    let _: () = cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query(&mut r2)
        .unwrap();
    set(&mut r1, "only-r1", "a").unwrap();
    set(&mut r2, "only-r2", "b").unwrap();
    assert_eq!(
        (
            info(&mut r1)["epoch"].clone(),
            info(&mut r2)["epoch"].clone()
        ),
        ("2".into(), "2".into())
    );
    let _: () = cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(t.nodes[1].port)
        .query(&mut r2)
        .unwrap();
    set(&mut r1, "later", "c").unwrap();
    let lsn: i64 = cmd("LSN").query(&mut r1).unwrap();
    let _: i64 = cmd("WAITLSN").arg(lsn).arg(30_000).query(&mut r2).unwrap();
    let i = info(&mut r2);
    assert!(
        i["last_join"].starts_with("rewound"),
        "{:?}",
        i["last_join"]
    );
    // "rewound: refetched X of Y pages (...)": only the changed pages came over the network.
    let nums: Vec<u64> = i["last_join"]
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .take(2)
        .collect();
    assert!(
        nums.len() == 2 && nums[0] * 4 < nums[1],
        "refetched {nums:?}: more than a quarter of the pages"
    );
    assert_eq!(
        get(&mut r2, "base:39:499").as_deref(),
        Some("x".repeat(40).as_str())
    );
    assert_eq!(
        get(&mut r2, "only-r2"),
        None,
        "r2's own write is gone with its history"
    );
    assert_eq!(get(&mut r2, "only-r1").as_deref(), Some("a"));
    assert_eq!(get(&mut r2, "more"), None, "r1 never had it");
    wait_for(20, "equal digests", || digest(&mut r1) == digest(&mut r2));
}

/// A switchover whose target is not this primary's replica cannot complete: the target is
/// never promoted (it did not catch up), and the primary takes writes again, in its epoch.
#[test]
fn a_switchover_that_cannot_complete_leaves_the_primary_taking_writes() {
    let (dp, dq) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let p = Node::start(dp.path(), &["--name", "p"]);
    let q = Node::start(dq.path(), &["--name", "q"]);
    let (mut pc, mut qc) = (p.client(), q.client());
    for i in 0..50 {
        set(&mut pc, &format!("k{i}"), "v").unwrap();
    }
    let err = cmd("FAILOVER")
        .arg("TO")
        .arg("127.0.0.1")
        .arg(q.port)
        .arg("TIMEOUT")
        .arg(300)
        .query::<()>(&mut pc)
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("switchover abandoned") && msg.contains("takes writes again"),
        "{msg}"
    );
    assert!(msg.contains("applied only up to LSN"), "{msg}");
    set(&mut pc, "after", "1").unwrap();
    let pi = info(&mut pc);
    assert_eq!(
        (
            pi["role"].as_str(),
            pi["role_state"].as_str(),
            pi["epoch"].as_str()
        ),
        ("primary", "primary", "1")
    );
    // The would-be target was asked to catch up, never to promote.
    assert_eq!(info(&mut qc)["epoch"], "1");
}

/// While a switchover waits for its target, writes get `-TRYAGAIN` (never `+OK`), and once
/// the target answers the switchover completes.
#[test]
fn writes_during_a_switchover_are_refused_with_tryagain() {
    let t = trio(&[]);
    let mut p = t.nodes[0].client();
    set(&mut p, "before", "1").unwrap();
    let target = t.nodes[1].port;
    t.nodes[1].signal("STOP");
    let url = t.nodes[0].url();
    let switch = std::thread::spawn(move || {
        let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
        cmd("FAILOVER")
            .arg("TO")
            .arg("127.0.0.1")
            .arg(target)
            .arg("TIMEOUT")
            .arg(20_000)
            .query::<()>(&mut c)
    });
    wait_for(10, "the switchover under way", || {
        info(&mut p)["role_state"] == "switching_over"
    });
    let e = set(&mut p, "during", "1").unwrap_err();
    assert_eq!(e.code(), Some("TRYAGAIN"), "{e}");
    t.nodes[1].signal("CONT");
    switch.join().unwrap().unwrap();
    let mut n = t.nodes[1].client();
    assert_eq!(get(&mut n, "before").as_deref(), Some("1"));
    assert_eq!(get(&mut n, "during"), None);
    assert_eq!(info(&mut n)["role_state"], "primary");
    assert_eq!(info(&mut p)["role_state"], "replica");
}
