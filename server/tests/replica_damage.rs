//! A replica against damage between real processes on 127.0.0.1: a corrupted frame on the
//! wire, a damaged WAL, log its primary lost, a damaged or silently changed page, bit rot
//! found by a scrub. Each must end byte-identical to its primary or say why not.

mod common;

use common::{caught_up, everything, info, wait_for, Node};
use redis::cmd;

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

/// Replica `r1` in `d1` of the primary on `port`, with `more` arguments.
fn start_r1(d1: &std::path::Path, port: u16, more: &[&str]) -> Node {
    let addr = format!("127.0.0.1:{port}");
    let mut args = vec!["--replicaof", &addr, "--name", "r1"];
    args.extend_from_slice(more);
    Node::start(d1, &args)
}

/// A primary started with `primary_args` and its replica `r1` (`start_r1`), linked; with a
/// client of each.
fn linked_pair(
    pd: &std::path::Path,
    d1: &std::path::Path,
    primary_args: &[&str],
    replica_args: &[&str],
) -> (Node, Node, redis::Connection, redis::Connection) {
    let primary = Node::start(pd, primary_args);
    let r1 = start_r1(d1, primary.port, replica_args);
    let p = primary.client();
    let mut c1 = r1.client();
    wait_for(20, "link up", || info(&mut c1)["primary_link"] == "up");
    (primary, r1, p, c1)
}

/// Issue-17's trial: a replica is killed, one byte in the middle of its WAL is flipped, and it
/// restarts. Its recovery stops at the damage; it must then get the rest again from its
/// primary and end byte-identical (same DIGEST), with every key — never rejoin with pages
/// that differ from its primary's.
#[test]
fn a_replica_whose_wal_was_damaged_rejoins_byte_identical() {
    for round in 0..3 {
        let (pd, d1) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (primary, r1, mut p, mut c1) =
            linked_pair(pd.path(), d1.path(), &["--wal-segment-size", "1MiB"], &[]);
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
        let r1 = start_r1(d1.path(), primary.port, &[]);
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
    let (primary, _r1, mut p, mut c1) =
        linked_pair(pd.path(), d1.path(), &["--wal-segment-size", "1MiB"], &[]);
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

/// A key's value in the tests below: padded, so every value has the same length.
fn value(i: usize) -> String {
    format!("value {i:05}")
}

const KEYS: usize = 3000;

/// A primary started with `primary_args` and a replica `r1` (its `--replicaof` and name
/// given here, more arguments in `replica_args`), linked; then `KEYS` keys written on the
/// primary, a checkpoint there (so a restarted replica replays no page over damage made
/// later), and the replica caught up.
fn loaded_pair(
    pd: &std::path::Path,
    d1: &std::path::Path,
    primary_args: &[&str],
    replica_args: &[&str],
) -> (Node, Node, redis::Connection, redis::Connection) {
    let (primary, r1, mut p, mut c1) = linked_pair(pd, d1, primary_args, replica_args);
    let mut pipe = redis::pipe();
    for i in 0..KEYS {
        pipe.cmd("SET")
            .arg(format!("key:{i:05}"))
            .arg(value(i))
            .ignore();
    }
    let _: () = pipe.query(&mut p).unwrap();
    let _: () = cmd("CHECKPOINT").query(&mut p).unwrap();
    wait_for(30, "r1 caught up", || caught_up(&mut p, &mut c1));
    (primary, r1, p, c1)
}

/// Every `step`-th key of `loaded_pair` reads back with its value on `c`.
fn assert_keys(c: &mut redis::Connection, step: usize) {
    for i in (0..KEYS).step_by(step) {
        let v: Option<String> = cmd("GET").arg(format!("key:{i:05}")).query(c).unwrap();
        assert_eq!(v, Some(value(i)), "key {i}");
    }
}

/// Both nodes' DIGESTs are equal.
fn assert_same_pages(p: &mut redis::Connection, c1: &mut redis::Connection) {
    let pdig: String = cmd("DIGEST").query(p).unwrap();
    let rdig: String = cmd("DIGEST").query(c1).unwrap();
    assert_eq!(pdig, rdig, "the replica's pages differ from its primary's");
}

/// SPEC: a page that fails its checksum on a node with a peer is refetched from it, counted
/// as `pages_repaired`, and reads that hit it wait for the repair rather than fail. A
/// stopped replica gets one byte-flipped leaf page; restarted, every key reads back with its
/// value, INFO counts the repair, and the replica ends with its primary's DIGEST.
#[test]
fn a_replica_repairs_a_damaged_page_from_its_primary_and_reads_wait_for_it() {
    let (pd, d1) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (primary, r1, mut p, _) = loaded_pair(pd.path(), d1.path(), &[], &[]);
    r1.signal("TERM");
    assert!(r1.wait_exit().success());
    let path = d1.path().join("pages.db");
    let mut bytes = std::fs::read(&path).unwrap();
    let leaves = common::faults::leaf_pages(&bytes);
    assert!(leaves.len() > 10, "{} leaf pages", leaves.len());
    let leaf = leaves[leaves.len() / 2];
    bytes[leaf * 4096 + 2000] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();

    let r1 = start_r1(d1.path(), primary.port, &[]);
    let mut c1 = r1.client();
    wait_for(20, "link up again", || {
        info(&mut c1)["primary_link"] == "up"
    });
    assert_keys(&mut c1, 1);
    assert_eq!(info(&mut c1)["pages_repaired"], "1");
    let _: () = cmd("SET").arg("after").arg("repair").query(&mut p).unwrap();
    wait_for(30, "r1 caught up after the repair", || {
        caught_up(&mut p, &mut c1)
    });
    assert_same_pages(&mut p, &mut c1);
}

/// SCRUB reads the page file from disk: bit rot in a page of a running replica that no
/// read has touched since is found and repaired from the primary (INFO counts it, digests
/// stay equal); on the primary the same damage is found and reported, not hidden. The
/// background scrub runs by itself at --scrub-interval.
#[test]
fn scrub_finds_bit_rot_on_a_running_replica_and_repairs_it() {
    let (pd, d1) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_primary, _r1, mut p, mut c1) = loaded_pair(
        pd.path(),
        d1.path(),
        &["--scrub-rate", "0"],
        &["--scrub-interval", "1s"],
    );
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
    assert_same_pages(&mut p, &mut c1);
    assert_keys(&mut c1, 7);
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
    let (_primary, _r1, mut p, mut c1) =
        loaded_pair(pd.path(), d1.path(), &[], &["--verify-interval", "200ms"]);
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
    assert_keys(&mut c1, 1);
    assert_ne!(info(&mut c1)["verified_pages"], "0");
}
