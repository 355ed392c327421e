//! Streaming replication between real processes on 127.0.0.1, driven by a Redis client.

mod common;

use std::time::{Duration, Instant};

use common::{caught_up, everything, info, wait_for, Node};
use redis::cmd;

fn pi_flush(c: &mut redis::Connection) -> String {
    info(c)["apply_lsn"].clone()
}

#[test]
fn replicas_stream_the_wal_and_converge() {
    let (pd, d1, d2) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let primary = Node::start(pd.path(), &["--name", "p"]);
    let addr = format!("127.0.0.1:{}", primary.port);
    let r1 = Node::start(d1.path(), &["--replicaof", &addr, "--name", "r1"]);
    let r2 = Node::start(d2.path(), &["--replicaof", &addr, "--name", "r2"]);
    let mut p = primary.client();
    let (mut c1, mut c2) = (r1.client(), r2.client());
    wait_for(20, "links up", || {
        info(&mut c1)["primary_link"] == "up" && info(&mut c2)["primary_link"] == "up"
    });
    for i in 0..2000 {
        let _: () = cmd("SET")
            .arg(format!("key:{i:05}"))
            .arg(format!("value-{i}").repeat(1 + i % 7))
            .query(&mut p)
            .unwrap();
        if i % 10 == 0 {
            let _: i64 = cmd("DEL")
                .arg(format!("key:{:05}", i / 2))
                .query(&mut p)
                .unwrap();
            let _: i64 = cmd("INCR").arg("counter").query(&mut p).unwrap();
        }
    }
    wait_for(30, "replicas caught up", || {
        caught_up(&mut p, &mut c1) && caught_up(&mut p, &mut c2)
    });
    let want = everything(&mut p);
    assert!(!want.is_empty());
    assert_eq!(everything(&mut c1), want, "r1 content");
    assert_eq!(everything(&mut c2), want, "r2 content");
    // The pages are the primary's: the three DIGEST lines agree.
    let digest = |c: &mut redis::Connection| cmd("DIGEST").query::<String>(c).unwrap();
    let d = digest(&mut p);
    assert_eq!(
        d.split(' ').next(),
        Some(pi_flush(&mut p).as_str()),
        "DIGEST names the last commit's LSN"
    );
    assert_eq!(digest(&mut c1), d);
    assert_eq!(digest(&mut c2), d);
    // After a checkpoint on each node (the primary first, so its checkpoint record reaches
    // the replicas' restartpoints), the page files hold the same pages, byte for byte.
    let _: () = cmd("CHECKPOINT").query(&mut p).unwrap();
    let _: () = cmd("SET")
        .arg("after-checkpoint")
        .arg("1")
        .query(&mut p)
        .unwrap();
    wait_for(30, "replicas caught up again", || {
        caught_up(&mut p, &mut c1) && caught_up(&mut p, &mut c2)
    });
    let _: () = cmd("CHECKPOINT").query(&mut p).unwrap();
    wait_for(30, "the checkpoint record reaches the replicas", || {
        let pf = info(&mut p)["flush_lsn"].clone();
        info(&mut c1)["flush_lsn"] == pf && info(&mut c2)["flush_lsn"] == pf
    });
    let _: () = cmd("CHECKPOINT").query(&mut c1).unwrap();
    let _: () = cmd("CHECKPOINT").query(&mut c2).unwrap();
    let pages: u64 = {
        let s: String = cmd("INFO").arg("persistence").query(&mut p).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("page_count:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let file = |d: &std::path::Path| std::fs::read(d.join(storage::PAGE_FILE)).unwrap();
    let (fp, f1, f2) = (file(pd.path()), file(d1.path()), file(d2.path()));
    let n = pages as usize * storage::PAGE_SIZE;
    assert!(
        fp[..n] == f1[..n],
        "r1's page file differs from the primary's"
    );
    assert!(
        fp[..n] == f2[..n],
        "r2's page file differs from the primary's"
    );
    // Replicas refuse writes and say what they are.
    let err = cmd("SET")
        .arg("x")
        .arg("y")
        .query::<()>(&mut c1)
        .unwrap_err();
    assert!(
        err.to_string().contains("READONLY") || err.code() == Some("READONLY"),
        "{err}"
    );
    let ri = info(&mut c1);
    assert_eq!(
        (
            ri["role"].as_str(),
            ri["node_name"].as_str(),
            ri["lag_bytes"].as_str()
        ),
        ("replica", "r1", "0")
    );
    let pi = info(&mut p);
    assert_eq!(pi["role"], "primary");
    assert_eq!(pi["connected_replicas"], "2");
    let lines: Vec<&String> = pi
        .iter()
        .filter(|(k, _)| k.starts_with("replica"))
        .map(|(_, v)| v)
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("name=r1,") && l.contains("state=streaming")),
        "{pi:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("flush_lsn={}", pi["flush_lsn"]))),
        "{pi:?}"
    );
}

#[test]
fn a_killed_replica_catches_up_after_restart() {
    let (pd, d1) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let primary = Node::start(pd.path(), &[]);
    let addr = format!("127.0.0.1:{}", primary.port);
    let r1 = Node::start(d1.path(), &["--replicaof", &addr, "--name", "r1"]);
    let mut p = primary.client();
    let mut c1 = r1.client();
    wait_for(20, "link up", || info(&mut c1)["primary_link"] == "up");
    for i in 0..500 {
        let _: () = cmd("SET")
            .arg(format!("a{i}"))
            .arg(i)
            .query(&mut p)
            .unwrap();
    }
    // Kill it in the middle of the stream; the primary keeps writing.
    r1.kill();
    for i in 0..1500 {
        let _: () = cmd("SET")
            .arg(format!("b{i}"))
            .arg(i)
            .query(&mut p)
            .unwrap();
    }
    wait_for(10, "the primary to notice", || {
        info(&mut p)["connected_replicas"] == "0"
    });
    let r1 = Node::start(d1.path(), &["--replicaof", &addr, "--name", "r1"]);
    let mut c1 = r1.client();
    wait_for(30, "r1 caught up after restart", || {
        caught_up(&mut p, &mut c1)
    });
    assert_eq!(everything(&mut c1), everything(&mut p));
    // A paused primary (SIGSTOP, SIGCONT): the stream resumes and carries new writes.
    drop(c1);
    primary.signal("STOP");
    primary.signal("CONT");
    let _: () = cmd("SET").arg("after").arg("pause").query(&mut p).unwrap();
    let mut c1 = r1.client();
    wait_for(30, "r1 caught up again", || caught_up(&mut p, &mut c1));
    assert_eq!(
        cmd("GET").arg("after").query::<String>(&mut c1).unwrap(),
        "pause"
    );
}

#[test]
fn a_cascading_chain_converges() {
    let (pd, d1, d2) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let primary = Node::start(pd.path(), &[]);
    let r1 = Node::start(
        d1.path(),
        &[
            "--replicaof",
            &format!("127.0.0.1:{}", primary.port),
            "--name",
            "r1",
        ],
    );
    // r2 follows r1, not the primary: r1 forwards the WAL it has flushed.
    let r2 = Node::start(
        d2.path(),
        &[
            "--replicaof",
            &format!("127.0.0.1:{}", r1.port),
            "--name",
            "r2",
        ],
    );
    let (mut p, mut c1, mut c2) = (primary.client(), r1.client(), r2.client());
    wait_for(20, "links up", || {
        info(&mut c1)["primary_link"] == "up" && info(&mut c2)["primary_link"] == "up"
    });
    for i in 0..1000 {
        let _: () = cmd("SET")
            .arg(format!("c{i}"))
            .arg(i)
            .query(&mut p)
            .unwrap();
    }
    wait_for(30, "chain caught up", || {
        caught_up(&mut p, &mut c1) && caught_up(&mut p, &mut c2)
    });
    let d = cmd("DIGEST").query::<String>(&mut p).unwrap();
    assert_eq!(cmd("DIGEST").query::<String>(&mut c1).unwrap(), d);
    assert_eq!(cmd("DIGEST").query::<String>(&mut c2).unwrap(), d);
    assert_eq!(info(&mut c1)["connected_replicas"], "1", "r1 serves r2");
}

#[test]
fn replicas_authenticate_to_a_primary_with_a_password() {
    let (pd, d1, d2) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let primary = Node::start(pd.path(), &["--requirepass", "s3cret"]);
    let addr = format!("127.0.0.1:{}", primary.port);
    let good = Node::start(
        d1.path(),
        &[
            "--replicaof",
            &addr,
            "--name",
            "r1",
            "--primary-password",
            "s3cret",
        ],
    );
    let mut p = redis::Client::open(format!("redis://:s3cret@127.0.0.1:{}/", primary.port))
        .unwrap()
        .get_connection()
        .unwrap();
    let mut c1 = good.client();
    let _: () = cmd("SET").arg("k").arg("v").query(&mut p).unwrap();
    wait_for(20, "the authenticated replica", || {
        caught_up(&mut p, &mut c1)
    });
    assert_eq!(
        cmd("GET")
            .arg("k")
            .query::<Option<String>>(&mut c1)
            .unwrap()
            .as_deref(),
        Some("v")
    );
    // A replica with the wrong password never gets the data (a new one cannot even seed), and
    // says why in its log.
    let (mut bad, log) = Node::spawn_raw(
        d2.path(),
        &[
            "--replicaof",
            &addr,
            "--name",
            "r2",
            "--primary-password",
            "wrong",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut refused = false;
    while Instant::now() < deadline {
        if let Ok(line) = log.recv_timeout(Duration::from_millis(200)) {
            assert!(
                !line.contains("ready to accept"),
                "a refused replica must not start serving"
            );
            if line.contains("refused the password") {
                refused = true;
                break;
            }
        }
    }
    let _ = bad.kill();
    let _ = bad.wait();
    assert!(refused, "the replica logged the refusal");
    assert!(!d2.path().join("control").exists(), "nothing was seeded");
}

/// Lag is visible: a paused replica shows growing lag_bytes and lag_ms on the primary, and
/// both fall back to 0 once it resumes and catches up.
#[test]
fn lag_is_visible_on_the_primary() {
    let (pd, d1) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let primary = Node::start(pd.path(), &[]);
    let r1 = Node::start(
        d1.path(),
        &[
            "--replicaof",
            &format!("127.0.0.1:{}", primary.port),
            "--name",
            "r1",
        ],
    );
    let mut p = primary.client();
    let mut c1 = r1.client();
    wait_for(20, "link up", || info(&mut c1)["primary_link"] == "up");
    let field = |c: &mut redis::Connection, f: &str| -> u64 {
        let line = info(c)["replica0"].clone();
        line.split(',')
            .find_map(|kv| kv.strip_prefix(&format!("{f}=")))
            .unwrap()
            .parse()
            .unwrap()
    };
    r1.signal("STOP");
    let t0 = Instant::now();
    for i in 0..200 {
        let _: () = cmd("SET")
            .arg(format!("lag{i}"))
            .arg("x".repeat(500))
            .query(&mut p)
            .unwrap();
    }
    // Let the paused replica fall measurably behind in time, not only in bytes.
    wait_for(10, "lag_ms to grow", || field(&mut p, "lag_ms") >= 100);
    assert!(field(&mut p, "lag_bytes") > 0);
    assert!(
        field(&mut p, "lag_ms") <= t0.elapsed().as_millis() as u64 + 50,
        "lag_ms is bounded by the pause"
    );
    r1.signal("CONT");
    wait_for(20, "caught up again", || caught_up(&mut p, &mut c1));
    wait_for(5, "lag back to 0", || {
        field(&mut p, "lag_ms") == 0 && field(&mut p, "lag_bytes") == 0
    });
}

/// A replica with a new directory joins a primary that already holds data: it seeds itself
/// from a base backup (logging progress), then streams, and ends with the primary's pages.
#[test]
fn an_empty_replica_seeds_itself_from_a_primary_holding_data() {
    let (pd, d1) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let primary = Node::start(pd.path(), &[]);
    let mut p = primary.client();
    for i in 0..3000 {
        let _: () = cmd("SET")
            .arg(format!("old{i:05}"))
            .arg("z".repeat(300))
            .query(&mut p)
            .unwrap();
    }
    let _: () = cmd("CHECKPOINT").query(&mut p).unwrap();
    let r1 = Node::start(
        d1.path(),
        &[
            "--replicaof",
            &format!("127.0.0.1:{}", primary.port),
            "--name",
            "r1",
        ],
    );
    let mut c1 = r1.client();
    for i in 0..100 {
        let _: () = cmd("SET")
            .arg(format!("new{i}"))
            .arg(i)
            .query(&mut p)
            .unwrap();
    }
    wait_for(30, "the seeded replica caught up", || {
        caught_up(&mut p, &mut c1)
    });
    assert_eq!(cmd("DBSIZE").query::<i64>(&mut c1).unwrap(), 3100);
    assert_eq!(
        cmd("DIGEST").query::<String>(&mut c1).unwrap(),
        cmd("DIGEST").query::<String>(&mut p).unwrap()
    );
}

fn wal_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir.join("wal"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

#[test]
fn a_replica_beyond_the_retention_cap_is_reseeded_and_the_primary_wal_stays_bounded() {
    let (pd, d1) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let primary = Node::start(
        pd.path(),
        &[
            "--name",
            "p",
            "--max-retained-wal",
            "4MiB",
            "--wal-segment-size",
            "1MiB",
        ],
    );
    let addr = format!("127.0.0.1:{}", primary.port);
    let r1 = Node::start(d1.path(), &["--replicaof", &addr, "--name", "r1"]);
    let mut p = primary.client();
    wait_for(20, "r1 connected", || {
        info(&mut p)["connected_replicas"] == "1"
    });
    let _: () = cmd("SET").arg("before").arg("1").query(&mut p).unwrap();
    r1.kill();
    // ~24 MB of WAL while r1 is away: far more than the 4 MiB cap.
    let big = "v".repeat(8000);
    for i in 0..3000 {
        let _: () = cmd("SET")
            .arg(format!("k{i:05}"))
            .arg(&big)
            .query(&mut p)
            .unwrap();
    }
    // Checkpoints release segments; the retention floor follows the cap.
    wait_for(20, "the primary's WAL to shrink under the cap", || {
        let _: () = cmd("CHECKPOINT").query(&mut p).unwrap();
        wal_bytes(pd.path()) <= (4 + 4) << 20
    });
    // r1 returns: the WAL it needs is gone, so it reseeds and converges.
    let r1 = Node::start(d1.path(), &["--replicaof", &addr, "--name", "r1"]);
    let mut c1 = r1.client();
    wait_for(60, "r1 reseeded and caught up", || {
        info(&mut c1).get("reseeds").is_some_and(|n| n == "1") && caught_up(&mut p, &mut c1)
    });
    let d: String = cmd("DIGEST").query(&mut p).unwrap();
    wait_for(20, "equal digests", || {
        cmd("DIGEST").query::<String>(&mut c1).unwrap() == d
    });
    assert!(
        r1.log_since_start()
            .iter()
            .any(|l| l.contains("reseeding from a base backup")),
        "the replica's log says it reseeded"
    );
    // Restarted, the replica moves the backup into its directory and keeps the data.
    r1.signal("TERM");
    r1.wait_exit();
    let r1 = Node::start(d1.path(), &["--replicaof", &addr, "--name", "r1"]);
    let mut c1 = r1.client();
    wait_for(20, "r1 back after restart", || caught_up(&mut p, &mut c1));
    assert_eq!(cmd("DIGEST").query::<String>(&mut c1).unwrap(), d);
    let leftovers: Vec<_> = std::fs::read_dir(d1.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("reseed-"))
        .collect();
    assert!(leftovers.is_empty(), "reseed directories left behind");
}

#[test]
fn waitlsn_and_maxlag_with_the_upstream_replica_paused() {
    // primary -> r1 -> r2: stopping r1 cuts r2 off while both stay up.
    let (pd, d1, d2) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let primary = Node::start(pd.path(), &["--name", "p"]);
    let a = format!("127.0.0.1:{}", primary.port);
    let r1 = Node::start(d1.path(), &["--replicaof", &a, "--name", "r1"]);
    let a1 = format!("127.0.0.1:{}", r1.port);
    let r2 = Node::start(d2.path(), &["--replicaof", &a1, "--name", "r2"]);
    let (mut p, mut c2) = (primary.client(), r2.client());
    let _: () = cmd("SET").arg("k").arg("1").query(&mut p).unwrap();
    let lsn: i64 = cmd("LSN").query(&mut p).unwrap();
    assert!(lsn > 0);
    // Read-your-writes on a replica: wait until it has applied the write's LSN.
    let at: i64 = cmd("WAITLSN").arg(lsn).arg(10_000).query(&mut c2).unwrap();
    assert!(at >= lsn);
    assert_eq!(
        cmd("GET")
            .arg("k")
            .query::<Option<String>>(&mut c2)
            .unwrap(),
        Some("1".into())
    );
    let _: () = cmd("MAXLAG").arg(1500).query(&mut c2).unwrap();
    let _: Option<String> = cmd("GET").arg("k").query(&mut c2).unwrap();

    r1.signal("STOP");
    let _: () = cmd("SET").arg("k").arg("2").query(&mut p).unwrap();
    let lsn2: i64 = cmd("LSN").query(&mut p).unwrap();
    let t = Instant::now();
    let e = cmd("WAITLSN")
        .arg(lsn2)
        .arg(300)
        .query::<i64>(&mut c2)
        .unwrap_err();
    assert_eq!(e.code(), Some("TIMEOUT"), "{e}");
    assert!(t.elapsed() >= Duration::from_millis(300));
    // r2 hears nothing: once the silence passes MAXLAG its reads are refused.
    wait_for(20, "-STALE on r2", || {
        matches!(cmd("GET").arg("k").query::<Option<String>>(&mut c2),
            Err(e) if e.code() == Some("STALE"))
    });
    let mut other = r2.client();
    assert!(
        cmd("GET")
            .arg("k")
            .query::<Option<String>>(&mut other)
            .is_ok(),
        "MAXLAG is per connection"
    );
    // A WAITLSN that starts now is answered when r1 resumes.
    let waiter = {
        let mut c = r2.client();
        std::thread::spawn(move || cmd("WAITLSN").arg(lsn2).arg(0).query::<i64>(&mut c))
    };
    r1.signal("CONT");
    let at = waiter
        .join()
        .unwrap()
        .expect("WAITLSN without timeout returns once applied");
    assert!(at >= lsn2);
    wait_for(20, "fresh reads again", || {
        cmd("GET").arg("k").query::<Option<String>>(&mut c2).ok() == Some(Some("2".into()))
    });
    let e = cmd("MAXLAG").arg("soon").query::<()>(&mut c2).unwrap_err();
    assert!(format!("{e}").contains("MAXLAG"), "{e}");
}

#[test]
fn a_seeded_replica_serves_reads_only_once_consistent() {
    let (pd, d1) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let primary = Node::start(pd.path(), &["--name", "p"]);
    let addr = format!("127.0.0.1:{}", primary.port);
    let mut p = primary.client();
    let _: () = cmd("SET").arg("a").arg("1").query(&mut p).unwrap();
    let r1 = Node::start(d1.path(), &["--replicaof", &addr, "--name", "r1"]);
    let mut c1 = r1.client();
    wait_for(30, "seeded and caught up", || caught_up(&mut p, &mut c1));
    // Once consistent, the gate is gone (INFO and the file).
    assert_eq!(info(&mut c1)["loading"], "0");
    assert!(!d1.path().join("consistent_at").exists());
    // A replica that stops before its catch-up after a copy finished (here: the gate a
    // copy leaves, for a position it has not reached) refuses reads after a restart until
    // it gets there — and cannot be promoted meanwhile.
    r1.signal("TERM");
    r1.wait_exit();
    for i in 0..50 {
        let _: () = cmd("SET")
            .arg(format!("k{i}"))
            .arg("v")
            .query(&mut p)
            .unwrap();
    }
    let target: u64 = info(&mut p)["flush_lsn"].parse().unwrap();
    std::fs::write(d1.path().join("consistent_at"), format!("{target}\n")).unwrap();
    primary.signal("STOP");
    let r1 = Node::start(d1.path(), &["--replicaof", &addr, "--name", "r1"]);
    let mut c1 = r1.client();
    let e = cmd("GET")
        .arg("a")
        .query::<Option<String>>(&mut c1)
        .unwrap_err();
    assert_eq!(e.code(), Some("LOADING"), "{e}");
    assert_eq!(info(&mut c1)["loading"], "1");
    let e = cmd("REPLICAOF")
        .arg("NO")
        .arg("ONE")
        .query::<()>(&mut c1)
        .unwrap_err();
    assert!(format!("{e}").contains("not consistent yet"), "{e}");
    primary.signal("CONT");
    wait_for(30, "reads served once consistent", || {
        cmd("GET").arg("k49").query::<Option<String>>(&mut c1).ok() == Some(Some("v".into()))
    });
    assert!(!d1.path().join("consistent_at").exists());
}

#[test]
fn a_replica_of_a_primary_that_has_written_nothing_serves_reads_at_once() {
    let (pd, d1) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let primary = Node::start(pd.path(), &["--name", "p"]);
    let addr = format!("127.0.0.1:{}", primary.port);
    let mut p = primary.client();
    assert_eq!(info(&mut p)["flush_lsn"], "0");
    let r1 = Node::start(d1.path(), &["--replicaof", &addr, "--name", "r1"]);
    let mut c1 = r1.client();
    wait_for(30, "the replication link", || {
        info(&mut c1)["primary_link"] == "up"
    });
    // The copy of an empty database is consistent as it stands: no write has to come
    // first for reads to be served.
    assert_eq!(info(&mut c1)["loading"], "0");
    let v: Option<String> = cmd("GET").arg("a").query(&mut c1).unwrap();
    assert_eq!(v, None);
    assert!(!d1.path().join("consistent_at").exists());
    // And it still follows the primary.
    let _: () = cmd("SET").arg("a").arg("1").query(&mut p).unwrap();
    wait_for(30, "the write on the replica", || {
        caught_up(&mut p, &mut c1)
    });
    let v: Option<String> = cmd("GET").arg("a").query(&mut c1).unwrap();
    assert_eq!(v.as_deref(), Some("1"));
}
