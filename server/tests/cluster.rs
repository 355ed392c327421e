//! Automatic failover with real processes: etcd on loopback, three replidb members, writers
//! that find the primary through the Sentinel protocol (the `redis` crate's Sentinel client,
//! and redis-py's in `sentinel_clients_follow_a_failover`). Every trial checks that no
//! acknowledged write is lost, that no node answers +OK after another was elected, and that
//! the members end with equal digests.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::etcd::{master_addr, Etcd, MemberSpec};
use common::{info, info_section, wait_for, Node};
use rand::Rng;
use redis::cmd;

const CLUSTER: &str = "c1";
const TTL_MS: &str = "2000";

fn members(root: &Path, etcd: &Etcd, extra: &[&str]) -> Vec<MemberSpec> {
    let mut args = vec!["--failover-ttl-ms", TTL_MS];
    args.extend_from_slice(extra);
    ["n1", "n2", "n3"]
        .iter()
        .map(|n| MemberSpec::new(root, n, &etcd.endpoints(), CLUSTER, &args))
        .collect()
}

/// The primary's address as member `port` reports it through Sentinel, once a write there
/// is acknowledged.
fn wait_primary(ports: &[u16], not: Option<&str>, secs: u64) -> String {
    let mut found = String::new();
    wait_for(secs, "a primary that takes writes", || {
        for &p in ports {
            if let Some(a) = master_addr(p, CLUSTER) {
                if Some(a.as_str()) == not {
                    continue;
                }
                let ok = redis::Client::open(format!("redis://{a}/"))
                    .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(300)))
                    .and_then(|mut c| {
                        c.set_read_timeout(Some(Duration::from_secs(2)))?;
                        cmd("SET").arg("probe").arg(&a).query::<String>(&mut c)
                    });
                if ok.is_ok() {
                    found = a;
                    return true;
                }
            }
        }
        false
    });
    found
}

fn start_all(specs: &[MemberSpec]) -> Vec<Option<Node>> {
    let mut nodes = Vec::new();
    // The first member of the empty cluster becomes primary; the others seed from it.
    nodes.push(Some(specs[0].start()));
    // (Its writes may wait for a standby that is not there yet: only its address is asked.)
    wait_for(30, "the first member to lead", || {
        master_addr(specs[0].port, CLUSTER) == Some(specs[0].addr())
    });
    for s in &specs[1..] {
        nodes.push(Some(s.start()));
    }
    for n in nodes.iter().skip(1).flatten() {
        wait_streaming(n);
    }
    nodes
}

fn wait_streaming(n: &Node) {
    let mut c = n.client();
    wait_for(60, "a member to stream from the primary", || {
        let i = info(&mut c);
        i.get("role").map(String::as_str) == Some("replica")
            && i.get("primary_link").map(String::as_str) == Some("up")
    });
}

/// Writers that find the primary with the `redis` crate's Sentinel client, each on its own
/// keys; every acknowledged key is recorded with the address that acknowledged it.
fn sentinel_writers(
    ports: Vec<u16>,
    n: usize,
    stop: Arc<AtomicBool>,
) -> Arc<Mutex<Vec<(String, String)>>> {
    let acked = Arc::new(Mutex::new(Vec::new()));
    for w in 0..n {
        let (stop, acked, ports) = (stop.clone(), acked.clone(), ports.clone());
        std::thread::spawn(move || {
            let urls: Vec<String> = ports
                .iter()
                .map(|p| format!("redis://127.0.0.1:{p}/"))
                .collect();
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let Ok(mut sentinel) = redis::sentinel::Sentinel::build(urls.clone()) else {
                    continue;
                };
                let conn = sentinel.master_for(CLUSTER, None).and_then(|c| {
                    let addr = format!("{:?}", c.get_connection_info().addr);
                    c.get_connection_with_timeout(Duration::from_millis(500))
                        .map(|c| (c, addr))
                });
                let Ok((mut c, addr)) = conn else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                while !stop.load(Ordering::SeqCst) {
                    let k = format!("w{w}:{i}");
                    i += 1;
                    match cmd("SET").arg(&k).arg(&k).query::<String>(&mut c) {
                        Ok(_) => acked.lock().unwrap().push((k, addr.clone())),
                        // An error is not an acknowledgement: find the primary again.
                        Err(_) => break,
                    }
                }
            }
        });
    }
    acked
}

/// Every acknowledged key is on `addr`.
fn check_acked(addr: &str, acked: &[(String, String)]) {
    let mut c = redis::Client::open(format!("redis://{addr}/"))
        .unwrap()
        .get_connection()
        .unwrap();
    let mut lost = Vec::new();
    for chunk in acked.chunks(500) {
        let keys: Vec<&str> = chunk.iter().map(|(k, _)| k.as_str()).collect();
        let vals: Vec<Option<String>> = cmd("MGET").arg(&keys).query(&mut c).unwrap();
        for ((k, by), v) in chunk.iter().zip(vals) {
            if v.as_deref() != Some(k.as_str()) {
                lost.push(format!("{k} (acknowledged by {by})"));
            }
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes missing on the primary {addr}: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(10)]
    );
}

/// Once writes stop: every member has the primary's digest.
fn check_digests(ports: &[u16], primary: &str) {
    let mut p = redis::Client::open(format!("redis://{primary}/"))
        .unwrap()
        .get_connection()
        .unwrap();
    let want: String = cmd("DIGEST").query(&mut p).unwrap();
    let lsn: u64 = want.split(' ').next().unwrap().parse().unwrap();
    for &port in ports {
        let mut c = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
            .unwrap()
            .get_connection()
            .unwrap();
        let _: i64 = cmd("WAITLSN").arg(lsn).arg(30_000).query(&mut c).unwrap();
        let got: String = cmd("DIGEST").query(&mut c).unwrap();
        assert_eq!(got, want, "member on port {port} differs from the primary");
    }
}

/// `n` SETs of `key:NNNNN` in one pipeline, each value `value(i)`.
fn fill(c: &mut redis::Connection, n: usize, value: impl Fn(usize) -> String) {
    let mut pipe = redis::pipe();
    for i in 0..n {
        pipe.cmd("SET")
            .arg(format!("key:{i:05}"))
            .arg(value(i))
            .ignore();
    }
    let _: () = pipe.query(c).unwrap();
}

#[test]
fn a_killed_primary_is_replaced_and_nothing_acknowledged_is_lost() {
    let root = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(root.path(), 1);
    let specs = members(root.path(), &etcd, &["--sync-standbys", "ANY 1 (*)"]);
    let ports: Vec<u16> = specs.iter().map(|s| s.port).collect();
    let mut nodes = start_all(&specs);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = sentinel_writers(ports.clone(), 4, stop.clone());
    let trials: usize = std::env::var("REPLIDB_CLUSTER_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let mut rng = rand::thread_rng();
    let mut times = Vec::new();
    for trial in 0..trials {
        let primary = wait_primary(&ports, None, 30);
        let i = specs.iter().position(|s| s.addr() == primary).unwrap();
        let before = acked.lock().unwrap().len();
        wait_for(30, "writes to be acknowledged", || {
            acked.lock().unwrap().len() > before + 50
        });
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..400)));
        let t0 = Instant::now();
        nodes[i].take().unwrap().kill();
        let others: Vec<u16> = ports
            .iter()
            .copied()
            .filter(|&p| p != specs[i].port)
            .collect();
        let next = wait_primary(&others, Some(&primary), 30);
        times.push(t0.elapsed());
        assert_ne!(next, primary, "trial {trial}");
        // The old primary comes back and follows the new one by itself.
        nodes[i] = Some(specs[i].start());
        wait_streaming(nodes[i].as_ref().unwrap());
        let mut c = nodes[i].as_ref().unwrap().client();
        let cl = info_section(&mut c, "cluster");
        assert_eq!(cl["leader_addr"], next, "trial {trial}: {cl:?}");
    }
    stop.store(true, Ordering::SeqCst);
    let primary = wait_primary(&ports, None, 30);
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 100,
        "only {} writes acknowledged",
        acked.len()
    );
    check_acked(&primary, &acked);
    check_digests(&ports, &primary);
    let mut c = redis::Client::open(format!("redis://{primary}/"))
        .unwrap()
        .get_connection()
        .unwrap();
    let cl = info_section(&mut c, "cluster");
    assert_eq!(cl["failovers"], trials.to_string(), "{cl:?}");
    eprintln!("kill to first acknowledged write: {times:?}");
}

#[test]
fn a_primary_stopped_past_the_ttl_never_acknowledges_again_and_rejoins() {
    let root = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(root.path(), 1);
    let specs = members(root.path(), &etcd, &["--sync-standbys", "ANY 1 (*)"]);
    let ports: Vec<u16> = specs.iter().map(|s| s.port).collect();
    let nodes = start_all(&specs);
    let old = nodes[0].as_ref().unwrap();
    let mut c = old.client();
    let _: String = cmd("SET").arg("before").arg("1").query(&mut c).unwrap();
    old.signal("STOP");
    let next = wait_primary(&ports[1..], Some(&specs[0].addr()), 30);
    // Sent while it is stopped, answered once it runs again: never +OK.
    let mut pipe = redis::pipe();
    pipe.cmd("SET").arg("during").arg("1");
    let handle = std::thread::spawn(move || pipe.query::<Vec<String>>(&mut c));
    std::thread::sleep(Duration::from_millis(100));
    old.signal("CONT");
    let reply = handle.join().unwrap();
    let err = reply.expect_err("the old primary acknowledged a write after another was elected");
    assert!(
        matches!(err.code(), Some("TRYAGAIN" | "READONLY" | "FENCED")),
        "{err}"
    );
    // It follows the new primary by itself and ends with its digest.
    wait_streaming(old);
    let mut n = redis::Client::open(format!("redis://{next}/"))
        .unwrap()
        .get_connection()
        .unwrap();
    let during: Option<String> = cmd("GET").arg("during").query(&mut n).unwrap();
    assert_eq!(during, None);
    let before: Option<String> = cmd("GET").arg("before").query(&mut n).unwrap();
    assert_eq!(before.as_deref(), Some("1"));
    check_digests(&ports, &next);
}

#[test]
fn no_promotion_without_proof_when_the_primary_and_a_replica_die_together() {
    let root = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(root.path(), 1);
    let specs = members(root.path(), &etcd, &["--sync-standbys", "ANY 1 (*)"]);
    let ports: Vec<u16> = specs.iter().map(|s| s.port).collect();
    let mut nodes = start_all(&specs);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = sentinel_writers(ports.clone(), 2, stop.clone());
    wait_for(30, "writes to be acknowledged", || {
        acked.lock().unwrap().len() > 200
    });
    nodes[0].take().unwrap().kill();
    nodes[1].take().unwrap().kill();
    stop.store(true, Ordering::SeqCst);
    let survivor = nodes[2].as_ref().unwrap();
    let mut c = survivor.client();
    let mut blocked = HashMap::new();
    wait_for(30, "the survivor to say why it cannot take over", || {
        blocked = info_section(&mut c, "cluster");
        blocked["failover_blocked"].contains("need the flush positions of 2")
    });
    // Held for three TTLs: it stays a replica the whole time, and a blocked election does
    // not keep writing to etcd (its status is written once per vacancy, not at every wake).
    let rev = etcd.revision();
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(6000) {
        assert_eq!(info(&mut c)["role"], "replica", "promoted without proof");
        std::thread::sleep(Duration::from_millis(100));
    }
    let writes = etcd.revision() - rev;
    assert!(
        writes < 10,
        "{writes} etcd writes in 6 s of a blocked election"
    );
    assert_eq!(master_addr(specs[2].port, CLUSTER), Some(specs[0].addr()));
    // The other replica returns: the proof is complete, the most advanced takes over.
    nodes[1] = Some(specs[1].start());
    let primary = wait_primary(&ports[1..], Some(&specs[0].addr()), 30);
    let acked = acked.lock().unwrap().clone();
    check_acked(&primary, &acked);
    nodes[0] = Some(specs[0].start());
    wait_streaming(nodes[0].as_ref().unwrap());
    check_digests(&ports, &primary);
}

#[test]
fn with_etcd_down_reads_continue_and_writes_stop_until_it_returns() {
    let root = tempfile::tempdir().unwrap();
    let mut etcd = Etcd::start(root.path(), 1);
    let specs = members(root.path(), &etcd, &[]);
    let nodes = start_all(&specs[..2]);
    let p = nodes[0].as_ref().unwrap();
    let mut c = p.client();
    if let Err(e) = cmd("SET").arg("k").arg("v").query::<String>(&mut c) {
        panic!("{e}\n{}", p.log_lines().join("\n"));
    }
    etcd.kill(0);
    let mut last = String::new();
    wait_for(
        15,
        "writes to stop once the lease runs out",
        || match cmd("SET").arg("k2").arg("v").query::<String>(&mut c) {
            Ok(_) => false,
            Err(e) => {
                last = e.code().unwrap_or_default().to_string();
                true
            }
        },
    );
    assert!(last.contains("TRYAGAIN"), "{last}");
    let v: Option<String> = cmd("GET").arg("k").query(&mut c).unwrap();
    assert_eq!(v.as_deref(), Some("v"), "reads continue");
    wait_for(15, "INFO cluster to say etcd is down", || {
        info_section(&mut c, "cluster")["etcd"] == "down"
    });
    let mut r = nodes[1].as_ref().unwrap().client();
    assert_eq!(
        info(&mut r)["role"],
        "replica",
        "nobody promotes without etcd"
    );
    etcd.restart(0);
    wait_for(30, "writes to resume on the same primary", || {
        cmd("SET")
            .arg("k3")
            .arg("v")
            .query::<String>(&mut c)
            .is_ok()
    });
    assert_eq!(info_section(&mut c, "cluster")["leader"], "n1");
}

#[test]
fn failover_to_moves_the_leader_key() {
    let root = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(root.path(), 1);
    let specs = members(root.path(), &etcd, &["--sync-standbys", "ANY 1 (*)"]);
    let ports: Vec<u16> = specs.iter().map(|s| s.port).collect();
    let nodes = start_all(&specs);
    let mut c = nodes[0].as_ref().unwrap().client();
    let _: String = cmd("SET").arg("k").arg("v").query(&mut c).unwrap();
    let refused = cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query::<String>(&mut nodes[1].as_ref().unwrap().client());
    assert!(format!("{:?}", refused.unwrap_err()).contains("member of cluster"));
    let _: String = cmd("FAILOVER")
        .arg("TO")
        .arg("127.0.0.1")
        .arg(specs[1].port)
        .query(&mut c)
        .unwrap();
    wait_for(30, "every member to name n2 the master", || {
        ports
            .iter()
            .all(|&p| master_addr(p, CLUSTER) == Some(specs[1].addr()))
    });
    assert_eq!(wait_primary(&ports, None, 30), specs[1].addr());
    wait_streaming(nodes[0].as_ref().unwrap());
    let mut n2 = nodes[1].as_ref().unwrap().client();
    assert_eq!(info_section(&mut n2, "cluster")["leader"], "n2");
    check_digests(&ports, &specs[1].addr());
}

#[test]
fn sentinel_replies_have_redis_shapes() {
    let root = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(root.path(), 1);
    let specs = members(root.path(), &etcd, &[]);
    let nodes = start_all(&specs);
    let mut c = nodes[2].as_ref().unwrap().client();
    let addr: Vec<String> = cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(CLUSTER)
        .query(&mut c)
        .unwrap();
    assert_eq!(
        addr,
        vec!["127.0.0.1".to_string(), specs[0].port.to_string()]
    );
    let none: Option<Vec<String>> = cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg("other")
        .query(&mut c)
        .unwrap();
    assert_eq!(none, None);
    let masters: Vec<HashMap<String, String>> =
        cmd("SENTINEL").arg("masters").query(&mut c).unwrap();
    assert_eq!(masters.len(), 1);
    assert_eq!(masters[0]["name"], CLUSTER);
    assert_eq!(masters[0]["flags"], "master");
    assert_eq!(masters[0]["num-slaves"], "2");
    assert_eq!(masters[0]["num-other-sentinels"], "2");
    // Every member's status reaches this one's view shortly after it starts.
    let mut replicas: Vec<HashMap<String, String>> = Vec::new();
    wait_for(30, "both replicas to be reported up", || {
        replicas = cmd("SENTINEL")
            .arg("replicas")
            .arg(CLUSTER)
            .query(&mut c)
            .unwrap();
        replicas.iter().all(|r| r["flags"] == "slave")
    });
    let mut ports: Vec<String> = replicas.iter().map(|r| r["port"].clone()).collect();
    ports.sort();
    let mut want = vec![specs[1].port.to_string(), specs[2].port.to_string()];
    want.sort();
    assert_eq!(ports, want);
    let sentinels: Vec<HashMap<String, String>> = cmd("SENTINEL")
        .arg("sentinels")
        .arg(CLUSTER)
        .query(&mut c)
        .unwrap();
    assert_eq!(sentinels.len(), 2);
    let err = cmd("SENTINEL")
        .arg("master")
        .arg("other")
        .query::<HashMap<String, String>>(&mut c)
        .unwrap_err();
    assert!(format!("{err:?}").contains("IDONTKNOW"), "{err:?}");
}

/// redis-py's `Sentinel`, given the members' addresses, finds the primary and its replicas,
/// and after the primary is killed finds the new one and writes there.
#[test]
fn sentinel_clients_follow_a_failover() {
    let root = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(root.path(), 1);
    let specs = members(root.path(), &etcd, &["--sync-standbys", "ANY 1 (*)"]);
    let ports: Vec<u16> = specs.iter().map(|s| s.port).collect();
    let mut nodes = start_all(&specs);
    let script = root.path().join("sentinel_client.py");
    std::fs::write(&script, PY_CLIENT).unwrap();
    let py = |phase: &str| {
        let mut args = vec![script.display().to_string(), phase.to_string()];
        args.extend(ports.iter().map(|p| p.to_string()));
        let out = std::process::Command::new("python3")
            .args(&args)
            .output()
            .expect("python3");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "redis-py client failed (pip install redis): {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text.trim().to_string()
    };
    // redis-py asks whichever member answers first and drops replicas flagged down, so wait
    // until every member's view lists both replicas as up.
    for n in nodes.iter().flatten() {
        let mut c = n.client();
        wait_for(30, "every member to report both replicas up", || {
            let replicas: Vec<HashMap<String, String>> = cmd("SENTINEL")
                .arg("replicas")
                .arg(CLUSTER)
                .query(&mut c)
                .unwrap_or_default();
            replicas.len() == 2 && replicas.iter().all(|r| r["flags"] == "slave")
        });
    }
    let before = py("before");
    assert_eq!(
        before,
        format!("master={} replicas=2 acked=1", specs[0].addr())
    );
    nodes[0].take().unwrap().kill();
    let after = py("after");
    let master = after
        .strip_prefix("master=")
        .and_then(|s| s.split(' ').next())
        .unwrap_or_default()
        .to_string();
    assert!(
        master == specs[1].addr() || master == specs[2].addr(),
        "{after}"
    );
    assert!(after.ends_with("before=1"), "{after}");
}

const PY_CLIENT: &str = r#"
import sys, time
from redis.sentinel import Sentinel, MasterNotFoundError
from redis.exceptions import ConnectionError, ResponseError, TimeoutError, ReadOnlyError
phase, ports = sys.argv[1], [int(p) for p in sys.argv[2:]]
s = Sentinel([("127.0.0.1", p) for p in ports], socket_timeout=1.0)
if phase == "before":
    host, port = s.discover_master("c1")
    replicas = s.discover_slaves("c1")
    s.master_for("c1", socket_timeout=2.0).set("pykey", "1")
    print(f"master={host}:{port} replicas={len(replicas)} acked=1")
else:
    deadline = time.time() + 30
    while True:
        try:
            m = s.master_for("c1", socket_timeout=2.0)
            m.set("after", "1")
            host, port = s.discover_master("c1")
            print(f"master={host}:{port} before={m.get('pykey').decode()}")
            break
        except (MasterNotFoundError, ConnectionError, ResponseError, TimeoutError, ReadOnlyError) as e:
            if time.time() > deadline:
                raise
            time.sleep(0.05)
"#;

/// A three-member etcd that loses one member keeps its quorum: a failover still happens,
/// and the cluster keeps going when that etcd member returns.
#[test]
fn a_failover_with_one_etcd_member_down() {
    let root = tempfile::tempdir().unwrap();
    let mut etcd = Etcd::start(root.path(), 3);
    let specs = members(root.path(), &etcd, &["--sync-standbys", "ANY 1 (*)"]);
    let ports: Vec<u16> = specs.iter().map(|s| s.port).collect();
    let mut nodes = start_all(&specs);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = sentinel_writers(ports.clone(), 2, stop.clone());
    wait_for(30, "writes to be acknowledged", || {
        acked.lock().unwrap().len() > 100
    });
    etcd.kill(0);
    let before = acked.lock().unwrap().len();
    wait_for(30, "writes to go on without one etcd member", || {
        acked.lock().unwrap().len() > before + 100
    });
    nodes[0].take().unwrap().kill();
    let next = wait_primary(&ports[1..], Some(&specs[0].addr()), 30);
    etcd.restart(0);
    nodes[0] = Some(specs[0].start());
    wait_streaming(nodes[0].as_ref().unwrap());
    let before = acked.lock().unwrap().len();
    wait_for(30, "writes on the new primary", || {
        acked.lock().unwrap().len() > before + 100
    });
    stop.store(true, Ordering::SeqCst);
    let primary = wait_primary(&ports, None, 30);
    assert_eq!(primary, next);
    check_acked(&primary, &acked.lock().unwrap().clone());
    check_digests(&ports, &primary);
}

/// A cluster's primary repairs its own damaged page from a member streaming from it: bit
/// rot in a page of the running primary is found by SCRUB, the page is fetched from a
/// replica (an older copy brought forward with the primary's WAL), INFO counts it, every key
/// still reads, and the members' digests stay equal. (Outside a cluster a primary only
/// reports it: tests/replication.rs.)
#[test]
fn a_cluster_primary_repairs_a_damaged_page_from_a_member() {
    let root = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(root.path(), 1);
    let specs = members(
        root.path(),
        &etcd,
        &["--sync-standbys", "ANY 1 (*)", "--scrub-rate", "0"],
    );
    let ports: Vec<u16> = specs.iter().map(|s| s.port).collect();
    let nodes = start_all(&specs);
    let mut p = nodes[0].as_ref().unwrap().client();
    fill(&mut p, 3000, |i| format!("value {i}"));
    let _: () = cmd("CHECKPOINT").query(&mut p).unwrap();
    // More writes after the checkpoint: the replicas' copies may be older than the primary's.
    for i in 0..3000 {
        if i % 11 == 0 {
            let _: () = cmd("SET")
                .arg(format!("key:{i:05}"))
                .arg(format!("new {i}"))
                .query(&mut p)
                .unwrap();
        }
    }
    let _: () = cmd("CHECKPOINT").query(&mut p).unwrap();
    wait_for(30, "the primary to know its members' addresses", || {
        info_section(&mut p, "cluster")["members_reporting"] == "3"
    });
    common::faults::rot_leaf(&specs[0].dir);
    let mut report = String::new();
    wait_for(30, "SCRUB on the primary to repair the page", || {
        report = cmd("SCRUB").query(&mut p).unwrap();
        report.contains("repaired_pages=1")
    });
    assert!(report.contains("damaged_pages=1"), "{report}");
    assert_eq!(info(&mut p)["pages_repaired"], "1");
    for i in (0..3000).step_by(7) {
        let v: Option<String> = cmd("GET").arg(format!("key:{i:05}")).query(&mut p).unwrap();
        let want = if i % 11 == 0 {
            format!("new {i}")
        } else {
            format!("value {i}")
        };
        assert_eq!(v, Some(want));
    }
    let _: () = cmd("SET").arg("after").arg("repair").query(&mut p).unwrap();
    // The page file holds the repaired page again after a checkpoint: a second scrub is clean.
    let _: () = cmd("CHECKPOINT").query(&mut p).unwrap();
    let again: String = cmd("SCRUB").query(&mut p).unwrap();
    assert!(again.contains("damaged_pages=0"), "{again}");
    check_digests(&ports, &specs[0].addr());
}

/// Sentinel's `+switch-master` event: a client subscribed on a member (as Jedis's
/// `JedisSentinelPool` subscribes on each sentinel) is told when the primary moves, with
/// the old and new addresses.
#[test]
fn subscribers_hear_switch_master() {
    let root = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(root.path(), 1);
    let specs = members(root.path(), &etcd, &["--sync-standbys", "ANY 1 (*)"]);
    let ports: Vec<u16> = specs.iter().map(|s| s.port).collect();
    let mut nodes = start_all(&specs);
    let mut sub = nodes[2].as_ref().unwrap().client();
    let mut ps = sub.as_pubsub();
    ps.subscribe("+switch-master").unwrap();
    ps.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    nodes[0].take().unwrap().kill();
    let next = wait_primary(&ports[1..], Some(&specs[0].addr()), 30);
    let msg = ps.get_message().expect("+switch-master within 30 s");
    assert_eq!(msg.get_channel_name(), "+switch-master");
    let payload: String = msg.get_payload().unwrap();
    let (host, port) = next.rsplit_once(':').unwrap();
    assert_eq!(
        payload,
        format!("{CLUSTER} 127.0.0.1 {} {host} {port}", specs[0].port)
    );
    drop(ps);
    // Subscribed (RESP2), other commands are refused as Redis refuses them.
    let mut c = nodes[1].as_ref().unwrap().client();
    let mut p = redis::pipe();
    p.cmd("SUBSCRIBE").arg("x").cmd("GET").arg("k");
    let err = p.query::<redis::Value>(&mut c).unwrap_err();
    assert!(format!("{err}").contains("only (P|S)SUBSCRIBE"), "{err}");
}

/// A cluster's primary whose WAL is damaged (SIGKILL, then a flipped byte in log its
/// recovery replays) does not start as a primary again, and does not give up either: it
/// waits for another member to take over, opens as its replica — its recovery cuts the log
/// at the damage — takes the rest from the new primary and ends with its digest.
#[test]
fn a_primary_with_a_damaged_wal_rejoins_as_a_replica() {
    let root = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(root.path(), 1);
    let specs = members(
        root.path(),
        &etcd,
        &["--sync-standbys", "ANY 1 (*)", "--wal-segment-size", "1MiB"],
    );
    let ports: Vec<u16> = specs.iter().map(|s| s.port).collect();
    let mut nodes = start_all(&specs);
    let mut p = nodes[0].as_ref().unwrap().client();
    fill(&mut p, 4000, |i| {
        format!("value {i} {}", "x".repeat(i % 50))
    });
    nodes[0].take().unwrap().kill();
    let (seg, end) = common::last_segment(&specs[0].dir);
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = 512 + (end - 512) / 2;
    bytes[at] ^= 0x5a;
    std::fs::write(&seg, &bytes).unwrap();
    // The flip is in log its recovery reads, and later commits prove it was synced.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_replidb"))
        .args(["check", "--dir"])
        .arg(&specs[0].dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("damaged WAL"),
        "{err}"
    );
    // Started again at once, while its own lease still names it leader.
    nodes[0] = Some(specs[0].start());
    let n1 = nodes[0].as_ref().unwrap();
    let mut c = n1.client();
    assert_eq!(info(&mut c)["wal_repairs"], "1");
    wait_streaming(n1);
    let primary = wait_primary(&ports[1..], Some(&specs[0].addr()), 30);
    let mut q = redis::Client::open(format!("redis://{primary}/"))
        .unwrap()
        .get_connection()
        .unwrap();
    for i in (0..4000).step_by(13) {
        let v: Option<String> = cmd("GET").arg(format!("key:{i:05}")).query(&mut q).unwrap();
        assert_eq!(v, Some(format!("value {i} {}", "x".repeat(i % 50))));
    }
    check_digests(&ports, &primary);
}
