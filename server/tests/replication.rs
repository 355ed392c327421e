//! Streaming replication between real processes on 127.0.0.1, driven by a Redis client.

mod common;

use std::time::{Duration, Instant};

use common::{info, wait_for, Node};
use redis::cmd;

fn everything(c: &mut redis::Connection) -> Vec<Vec<u8>> {
    cmd("RANGE").arg("-").arg("+").query(c).unwrap()
}

fn pi_flush(c: &mut redis::Connection) -> String {
    info(c)["apply_lsn"].clone()
}

fn caught_up(primary: &mut redis::Connection, replica: &mut redis::Connection) -> bool {
    let p = info(primary);
    let r = info(replica);
    r["apply_lsn"] == p["flush_lsn"] && r["flush_lsn"] == p["flush_lsn"]
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

/// A relay between replica and primary that corrupts one byte of the primary's stream once.
fn corrupting_proxy(
    primary_port: u16,
    flip_at: usize,
) -> (u16, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let flipped = Arc::new(AtomicBool::new(false));
    let f2 = flipped.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let Ok(server) = TcpStream::connect(("127.0.0.1", primary_port)) else {
                return;
            };
            let (mut c_rd, mut s_wr) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(n) = c_rd.read(&mut buf) {
                    if n == 0 || s_wr.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = s_wr.shutdown(std::net::Shutdown::Both);
            });
            let (mut s_rd, mut c_wr) = (server, client);
            let flipped = f2.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                let mut seen = 0usize;
                while let Ok(n) = s_rd.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if seen <= flip_at
                        && flip_at < seen + n
                        && !flipped.swap(true, Ordering::SeqCst)
                    {
                        buf[flip_at - seen] ^= 0x40;
                    }
                    seen += n;
                    if c_wr.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = c_wr.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    (port, flipped)
}

#[test]
fn a_corrupted_frame_is_rejected_and_the_replica_reconnects() {
    let (pd, d1) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let primary = Node::start(pd.path(), &[]);
    let (proxy, flipped) = corrupting_proxy(primary.port, 20_000);
    let r1 = Node::start(
        d1.path(),
        &["--replicaof", &format!("127.0.0.1:{proxy}"), "--name", "r1"],
    );
    let mut p = primary.client();
    for i in 0..500 {
        let _: () = cmd("SET")
            .arg(format!("p{i}"))
            .arg("v".repeat(200))
            .query(&mut p)
            .unwrap();
    }
    let mut c1 = r1.client();
    wait_for(30, "the replica caught up through the proxy", || {
        caught_up(&mut p, &mut c1)
    });
    assert!(
        flipped.load(std::sync::atomic::Ordering::SeqCst),
        "the proxy corrupted a byte"
    );
    let log = r1.log_lines().join("\n");
    assert!(
        log.contains("bad frame") && log.contains("checksum"),
        "the replica saw the bad frame: {log}"
    );
    // Nothing bad was applied: the pages are the primary's.
    assert_eq!(
        cmd("DIGEST").query::<String>(&mut c1).unwrap(),
        cmd("DIGEST").query::<String>(&mut p).unwrap()
    );
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

/// Issue-17's trial: a replica is killed, one byte in the middle of its WAL is flipped, and it
/// restarts. Its recovery stops at the damage; it must then get the rest again from its
/// primary and end byte-identical (same DIGEST), with every key — never rejoin with pages
/// that differ from its primary's.
#[test]
fn a_replica_whose_wal_was_damaged_rejoins_byte_identical() {
    for round in 0..3 {
        let (pd, d1) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let primary = Node::start(pd.path(), &["--wal-segment-size", "1MiB"]);
        let addr = format!("127.0.0.1:{}", primary.port);
        let r1 = Node::start(d1.path(), &["--replicaof", &addr, "--name", "r1"]);
        let mut p = primary.client();
        let mut c1 = r1.client();
        wait_for(20, "link up", || info(&mut c1)["primary_link"] == "up");
        let mut pipe = redis::pipe();
        for i in 0..4000 {
            pipe.cmd("SET")
                .arg(format!("key:{i:05}"))
                .arg(format!("value {i} {}", "x".repeat(i % 50)))
                .ignore();
        }
        let _: () = pipe.query(&mut p).unwrap();
        wait_for(30, "r1 caught up", || caught_up(&mut p, &mut c1));
        r1.kill();
        let (seg, end) = common::last_segment(d1.path());
        let mut bytes = std::fs::read(&seg).unwrap();
        let at = 512 + (end - 512) * (round + 1) / 4;
        bytes[at] ^= 0x5a;
        std::fs::write(&seg, &bytes).unwrap();
        // The flip is in log the replica's recovery reads (`check` calls it damage).
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_replidb"))
            .args(["check", "--dir"])
            .arg(d1.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("damaged WAL"),
            "round {round}: {err}"
        );
        let r1 = Node::start(d1.path(), &["--replicaof", &addr, "--name", "r1"]);
        let mut c1 = r1.client();
        // Its recovery cut the log at the damage (said in INFO); the rest comes again.
        assert_eq!(info(&mut c1)["wal_repairs"], "1", "round {round}");
        let _: () = cmd("SET").arg("after").arg("damage").query(&mut p).unwrap();
        wait_for(30, "r1 caught up after the damage", || {
            caught_up(&mut p, &mut c1)
        });
        let (pdig, rdig): (String, String) = (
            cmd("DIGEST").query(&mut p).unwrap(),
            cmd("DIGEST").query(&mut c1).unwrap(),
        );
        assert_eq!(
            pdig, rdig,
            "round {round}: the replica's pages differ from its primary's"
        );
        assert_eq!(everything(&mut c1), everything(&mut p), "round {round}");
    }
}

/// SPEC: a primary that restarts after an unclean stop starts a new epoch entry at its
/// recovered end, so a replica holding log the primary's disk lost is rewound, never mixed.
/// The primary is SIGKILLed with its replica caught up, the tail of its WAL is cut (what a
/// power loss does to an unsynced tail), and it restarts and writes more than it lost before
/// the replica reconnects — the case where streaming from the replica's position would read
/// the primary's new log from the middle of a record, or splice two logs.
#[test]
fn a_replica_holding_log_its_primary_lost_is_rewound_not_mixed() {
    let (pd, d1) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let primary = Node::start(pd.path(), &["--wal-segment-size", "1MiB"]);
    let addr = format!("127.0.0.1:{}", primary.port);
    let r1 = Node::start(d1.path(), &["--replicaof", &addr, "--name", "r1"]);
    let mut p = primary.client();
    let mut c1 = r1.client();
    wait_for(20, "link up", || info(&mut c1)["primary_link"] == "up");
    for i in 0..300 {
        let _: () = cmd("SET")
            .arg(format!("a:{i:04}"))
            .arg(format!("first {i}"))
            .query(&mut p)
            .unwrap();
    }
    wait_for(30, "r1 caught up", || caught_up(&mut p, &mut c1));
    let held = lsn_field(&mut c1, "flush_lsn");
    primary.kill();
    let (seg, end) = common::last_segment(pd.path());
    let mut bytes = std::fs::read(&seg).unwrap();
    let cut = end - (end - 512) / 3;
    bytes[cut..end].fill(0);
    std::fs::write(&seg, &bytes).unwrap();

    let primary = Node::start(pd.path(), &["--wal-segment-size", "1MiB"]);
    let mut p = primary.client();
    let pi = info(&mut p);
    let recovered = lsn_field(&mut p, "flush_lsn");
    assert!(
        recovered < held,
        "the primary lost log: {recovered} < {held}"
    );
    assert!(
        pi["epoch_history"].starts_with("1@"),
        "the restart resumed epoch 1 at its recovered end: {:?}",
        pi["epoch_history"]
    );
    assert_eq!(pi["epoch"], "1", "a resume is not a promotion");
    for i in 0..300 {
        let _: () = cmd("SET")
            .arg(format!("b:{i:04}"))
            .arg(format!("second {i} {}", "y".repeat(40)))
            .query(&mut p)
            .unwrap();
    }
    assert!(
        lsn_field(&mut p, "flush_lsn") > held,
        "the primary wrote past what the replica holds"
    );
    let _: () = cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(primary.port)
        .query(&mut c1)
        .unwrap();
    wait_for(30, "r1 caught up with the restarted primary", || {
        caught_up(&mut p, &mut c1)
    });
    let ri = info(&mut c1);
    assert!(
        ri["last_join"].starts_with("rewound"),
        "the replica was not rewound: {:?}",
        ri["last_join"]
    );
    assert_eq!(ri["epoch_history"], info(&mut p)["epoch_history"]);
    let (pdig, rdig): (String, String) = (
        cmd("DIGEST").query(&mut p).unwrap(),
        cmd("DIGEST").query(&mut c1).unwrap(),
    );
    assert_eq!(pdig, rdig, "the replica's pages differ from its primary's");
    assert_eq!(everything(&mut c1), everything(&mut p));
}

fn lsn_field(c: &mut redis::Connection, field: &str) -> u64 {
    info(c)[field].parse().unwrap()
}

/// SPEC: a page that fails its checksum on a node with a peer is refetched from it, counted
/// as `pages_repaired`, and reads that hit it wait for the repair rather than fail. A
/// stopped replica gets one byte-flipped leaf page; restarted, every key reads back with its
/// value, INFO counts the repair, and the replica ends with its primary's DIGEST.
#[test]
fn a_replica_repairs_a_damaged_page_from_its_primary_and_reads_wait_for_it() {
    let (pd, d1) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let primary = Node::start(pd.path(), &[]);
    let addr = format!("127.0.0.1:{}", primary.port);
    let r1 = Node::start(d1.path(), &["--replicaof", &addr, "--name", "r1"]);
    let mut p = primary.client();
    let mut c1 = r1.client();
    wait_for(20, "link up", || info(&mut c1)["primary_link"] == "up");
    let mut pipe = redis::pipe();
    for i in 0..3000 {
        pipe.cmd("SET")
            .arg(format!("key:{i:05}"))
            .arg(format!("value {i}"))
            .ignore();
    }
    let _: () = pipe.query(&mut p).unwrap();
    // A checkpoint last: the replica's restart replays no page over the damage.
    let _: () = cmd("CHECKPOINT").query(&mut p).unwrap();
    wait_for(30, "r1 caught up", || caught_up(&mut p, &mut c1));
    r1.signal("TERM");
    assert!(r1.wait_exit().success());
    let path = d1.path().join("pages.db");
    let mut bytes = std::fs::read(&path).unwrap();
    let leaves = common::faults::leaf_pages(&bytes);
    assert!(leaves.len() > 10, "{} leaf pages", leaves.len());
    let leaf = leaves[leaves.len() / 2];
    bytes[leaf * 4096 + 2000] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();

    let r1 = Node::start(d1.path(), &["--replicaof", &addr, "--name", "r1"]);
    let mut c1 = r1.client();
    wait_for(20, "link up again", || {
        info(&mut c1)["primary_link"] == "up"
    });
    for i in 0..3000 {
        let v: Option<String> = cmd("GET")
            .arg(format!("key:{i:05}"))
            .query(&mut c1)
            .unwrap();
        assert_eq!(v, Some(format!("value {i}")), "key {i}");
    }
    assert_eq!(info(&mut c1)["pages_repaired"], "1");
    let _: () = cmd("SET").arg("after").arg("repair").query(&mut p).unwrap();
    wait_for(30, "r1 caught up after the repair", || {
        caught_up(&mut p, &mut c1)
    });
    let (pdig, rdig): (String, String) = (
        cmd("DIGEST").query(&mut p).unwrap(),
        cmd("DIGEST").query(&mut c1).unwrap(),
    );
    assert_eq!(pdig, rdig, "the replica's pages differ from its primary's");
}

/// SCRUB reads the page file from disk: bit rot in a page of a running replica that no
/// read has touched since is found and repaired from the primary (INFO counts it, digests
/// stay equal); on the primary the same damage is found and reported, not hidden. The
/// background scrub runs by itself at --scrub-interval.
#[test]
fn scrub_finds_bit_rot_on_a_running_replica_and_repairs_it() {
    let (pd, d1) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let primary = Node::start(pd.path(), &["--scrub-rate", "0"]);
    let addr = format!("127.0.0.1:{}", primary.port);
    let r1 = Node::start(
        d1.path(),
        &[
            "--replicaof",
            &addr,
            "--name",
            "r1",
            "--scrub-interval",
            "1s",
        ],
    );
    let mut p = primary.client();
    let mut c1 = r1.client();
    wait_for(20, "link up", || info(&mut c1)["primary_link"] == "up");
    let mut pipe = redis::pipe();
    for i in 0..3000 {
        pipe.cmd("SET")
            .arg(format!("key:{i:05}"))
            .arg(format!("value {i}"))
            .ignore();
    }
    let _: () = pipe.query(&mut p).unwrap();
    let _: () = cmd("CHECKPOINT").query(&mut p).unwrap();
    wait_for(30, "r1 caught up", || caught_up(&mut p, &mut c1));
    // The background scrub runs every second on r1.
    wait_for(20, "a background scrub", || {
        persistence(&mut c1)["scrubs"] != "0"
    });
    // The replica's restartpoint has written its pages: rot one of them.
    let _: () = cmd("CHECKPOINT").query(&mut c1).unwrap();
    common::faults::rot_leaf(d1.path());
    let report: String = cmd("SCRUB").query(&mut c1).unwrap();
    assert!(
        report.contains("damaged_pages=1") && report.contains("repaired_pages=1"),
        "{report}"
    );
    assert_eq!(info(&mut c1)["pages_repaired"], "1");
    let _: () = cmd("SET").arg("after").arg("scrub").query(&mut p).unwrap();
    wait_for(30, "r1 caught up after the scrub", || {
        caught_up(&mut p, &mut c1)
    });
    let (pdig, rdig): (String, String) = (
        cmd("DIGEST").query(&mut p).unwrap(),
        cmd("DIGEST").query(&mut c1).unwrap(),
    );
    assert_eq!(pdig, rdig);
    for i in (0..3000).step_by(7) {
        let v: Option<String> = cmd("GET")
            .arg(format!("key:{i:05}"))
            .query(&mut c1)
            .unwrap();
        assert_eq!(v, Some(format!("value {i}")));
    }
    // The primary has no peer to repair from: it finds and reports.
    common::faults::rot_leaf(pd.path());
    let report: String = cmd("SCRUB").query(&mut p).unwrap();
    assert!(
        report.contains("damaged_pages=1") && report.contains("repaired_pages=0"),
        "{report}"
    );
    assert!(persistence(&mut p)["last_scrub"].contains("damaged_pages=1"));
}

fn persistence(c: &mut redis::Connection) -> std::collections::HashMap<String, String> {
    common::info_section(c, "persistence")
}

/// A replica never drifts silently: a page of a running replica changed on disk and
/// resealed — a valid page with other bytes at the same page LSN, what a lost or stray write
/// leaves, which no checksum can see — is found by the background comparison of page
/// versions with the primary, replaced with the primary's copy and counted in INFO; the
/// digests are equal again.
#[test]
fn a_drifted_replica_page_is_found_by_the_background_check_and_replaced() {
    let (pd, d1) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let primary = Node::start(pd.path(), &[]);
    let addr = format!("127.0.0.1:{}", primary.port);
    let r1 = Node::start(
        d1.path(),
        &[
            "--replicaof",
            &addr,
            "--name",
            "r1",
            "--verify-interval",
            "200ms",
        ],
    );
    let mut p = primary.client();
    let mut c1 = r1.client();
    wait_for(20, "link up", || info(&mut c1)["primary_link"] == "up");
    let mut pipe = redis::pipe();
    for i in 0..3000 {
        pipe.cmd("SET")
            .arg(format!("key:{i:05}"))
            .arg(format!("value {i:05}"))
            .ignore();
    }
    let _: () = pipe.query(&mut p).unwrap();
    let _: () = cmd("CHECKPOINT").query(&mut p).unwrap();
    wait_for(30, "r1 caught up", || caught_up(&mut p, &mut c1));
    let _: () = cmd("CHECKPOINT").query(&mut c1).unwrap();
    let before = info(&mut c1)["drifted_pages"].clone();
    assert_eq!(before, "0");
    // Change one value's digit in a leaf of r1's page file and reseal the page.
    let path = d1.path().join("pages.db");
    let bytes = std::fs::read(&path).unwrap();
    let leaves = common::faults::leaf_pages(&bytes);
    let leaf = leaves[leaves.len() / 2];
    let mut page = bytes[leaf * 4096..(leaf + 1) * 4096].to_vec();
    let at = page
        .windows(6)
        .position(|w| w == b"value ")
        .expect("a value in the leaf")
        + 10;
    page[at] = if page[at] == b'9' { b'0' } else { page[at] + 1 };
    storage::internals::page::seal(&mut page);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&page, (leaf * 4096) as u64).unwrap();
    }
    let pdig: String = cmd("DIGEST").query(&mut p).unwrap();
    wait_for(30, "the drift found and mended", || {
        info(&mut c1)["drifted_pages"] == "1"
    });
    wait_for(30, "equal digests", || {
        cmd("DIGEST").query::<String>(&mut c1).unwrap() == pdig
    });
    for i in 0..3000 {
        let v: Option<String> = cmd("GET")
            .arg(format!("key:{i:05}"))
            .query(&mut c1)
            .unwrap();
        assert_eq!(v, Some(format!("value {i:05}")), "key {i}");
    }
    assert_ne!(info(&mut c1)["verified_pages"], "0");
}
