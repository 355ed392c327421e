//! `replidb archive` against real processes: it keeps the primary's WAL, shows on the
//! primary as a replica, can be a sync standby (a stopped archive holds remote writes back),
//! resumes after SIGKILL, cuts a torn tail, and refuses a gap.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Command;

use common::{archived, flush_lsn, start_archive, wait_for, Node};
use redis::Commands;

/// (first LSN, total bytes) of the archive's files, checking they are contiguous.
fn files(dir: &Path) -> (u64, u64) {
    let mut v: Vec<(u64, u64)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().to_string();
            let start = u64::from_str_radix(name.strip_suffix(".wal")?, 16).ok()?;
            Some((start, e.metadata().unwrap().len()))
        })
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no archive files");
    for w in v.windows(2) {
        assert_eq!(w[0].0 + w[0].1, w[1].0, "a gap between archive files");
    }
    (v[0].0, v.iter().map(|f| f.1).sum())
}

#[test]
fn the_archive_keeps_the_wal_resumes_and_can_be_a_sync_standby() {
    let (dp, da) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let primary = Node::start(dp.path(), &["--name", "p"]);
    let addr = format!("127.0.0.1:{}", primary.port);
    let mut c = primary.client();
    let _: () = c.set("before", "the archive").unwrap();
    let arch = da.path().join("arch");
    let mut a = start_archive(&addr, &arch);
    wait_for(20, "the archive to show on the primary", || {
        archived(&mut c).is_some()
    });
    for i in 0..500 {
        let _: () = c.set(format!("k{i}"), "v".repeat(200)).unwrap();
    }
    let end = flush_lsn(&mut c);
    wait_for(20, "the archive to catch up", || {
        archived(&mut c) == Some(end)
    });
    let (start, bytes) = files(&arch);
    assert_eq!(
        start + bytes,
        end,
        "the archive holds the WAL up to the primary's end"
    );
    assert!(
        bytes > 500 * 200,
        "{bytes} bytes for 500 writes of 200 bytes"
    );
    // A sync standby: remote_flush writes wait for it, and fail while it is stopped.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("sync-standbys")
        .arg("ANY 1 (arch)")
        .query(&mut c)
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("sync-timeout-ms")
        .arg("500")
        .query(&mut c)
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("sync-commit")
        .arg("remote_flush")
        .query(&mut c)
        .unwrap();
    let _: () = c.set("synced", "1").unwrap();
    let lsn = flush_lsn(&mut c);
    let (s2, b2) = files(&arch);
    assert!(
        s2 + b2 >= lsn,
        "acknowledged at remote_flush but not in the archive"
    );
    let pid = a.id().to_string();
    let signal = |sig: &str| {
        assert!(Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status()
            .unwrap()
            .success())
    };
    signal("STOP");
    let e = c.set::<_, _, ()>("held", "1").unwrap_err();
    assert_eq!(e.code(), Some("NOQUORUM"), "{e}");
    signal("CONT");
    let _: () = c.set("after", "cont").unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("sync-commit")
        .arg("local")
        .query(&mut c)
        .unwrap();
    // SIGKILL; writes go on; a torn record at the end of the last file (a crash in the
    // middle of a write) is cut off at the next start, which resumes from the last whole one.
    a.kill().unwrap();
    a.wait().unwrap();
    for i in 0..300 {
        let _: () = c.set(format!("later{i}"), "w".repeat(100)).unwrap();
    }
    let (s3, b3) = files(&arch);
    let last = std::fs::read_dir(&arch)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .max()
        .unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&last)
        .unwrap();
    std::io::Write::write_all(&mut f, &[0xAB; 77]).unwrap();
    drop(f);
    let a = start_archive(&addr, &arch);
    let end = flush_lsn(&mut c);
    wait_for(20, "the restarted archive to catch up", || {
        archived(&mut c) == Some(end)
    });
    let (s4, b4) = files(&arch);
    assert_eq!(s4, s3, "the archive starts where it started");
    assert_eq!(s4 + b4, end);
    assert!(b4 > b3);
    // Stopped by SIGTERM, it says what it holds.
    Command::new("kill")
        .args(["-TERM", &a.id().to_string()])
        .status()
        .unwrap();
    let out = a.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains(&format!("WAL from LSN {s4} to LSN {end}")),
        "{stdout}"
    );
}

#[test]
fn an_archive_with_a_gap_or_a_replica_to_start_from_is_refused() {
    let (dp, da, dr) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let primary = Node::start(dp.path(), &["--name", "p"]);
    let addr = format!("127.0.0.1:{}", primary.port);
    let mut c = primary.client();
    let _: () = c.set("a", "b").unwrap();
    // A new archive starts from a primary, not from a replica.
    let replica = Node::start(dr.path(), &["--replicaof", &addr, "--name", "r"]);
    let raddr = format!("127.0.0.1:{}", replica.port);
    let out = start_archive(&raddr, &da.path().join("x"))
        .wait_with_output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is a replica"), "{err}");
    // A gap between files: refused at start, naming it.
    let arch = da.path().join("gap");
    let mut a = start_archive(&addr, &arch);
    wait_for(20, "the archive to show on the primary", || {
        archived(&mut c).is_some()
    });
    for i in 0..50 {
        let _: () = c.set(format!("k{i}"), "v").unwrap();
    }
    let end = flush_lsn(&mut c);
    wait_for(20, "the archive to catch up", || {
        archived(&mut c) == Some(end)
    });
    a.kill().unwrap();
    a.wait().unwrap();
    let (s, b) = files(&arch);
    std::fs::write(arch.join(format!("{:016x}.wal", s + b + 4096)), b"").unwrap();
    let mut a = start_archive(&addr, &arch);
    let stderr = a.stderr.take().unwrap();
    let status = a.wait().unwrap();
    assert!(!status.success());
    let text: Vec<String> = BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .collect();
    let text = text.join("\n");
    assert!(text.contains("has a gap"), "{text}");
}
