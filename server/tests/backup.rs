//! `replidb backup` against real processes: a copy taken while a client writes is consistent
//! (every acknowledged write before its point, none after a gap), serves as a standalone
//! primary of a new epoch, and leaves no replica entry holding WAL on the source; bad input
//! gets a clear error and no half-made directory.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use common::{info, Node};
use redis::Commands;

/// Runs `replidb backup ARGS`, killed if it takes more than two minutes.
fn backup(args: &[&str]) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_replidb"))
        .arg("backup")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run replidb backup");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while child.try_wait().expect("wait for the backup").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child
                .wait_with_output()
                .expect("the killed backup's output");
            panic!(
                "replidb backup {args:?} ran past two minutes: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().expect("the backup's output")
}

#[test]
fn a_backup_taken_during_writes_is_consistent_and_serves_as_a_new_primary() {
    let (dp, work) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let primary = Node::start(dp.path(), &["--name", "p"]);
    let addr = format!("127.0.0.1:{}", primary.port);
    let mut c = primary.client();
    // Enough data for many snapshot frames (1 MiB each).
    let value = vec![b'x'; 1000];
    for chunk in 0..20 {
        let mut p = redis::pipe();
        for i in 0..1000 {
            p.set(format!("pre:{chunk}:{i}"), &value[..]).ignore();
        }
        let _: () = p.query(&mut c).unwrap();
    }
    // A writer that goes on through the whole backup: one acknowledged write at a time.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, acked, url) = (stop.clone(), acked.clone(), primary.url());
        std::thread::spawn(move || {
            let mut w = redis::Client::open(url).unwrap().get_connection().unwrap();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) || i < 200 {
                let _: () = w.set(format!("seq:{i}"), i).unwrap();
                i += 1;
                acked.store(i, Ordering::Relaxed);
            }
        })
    };
    common::wait_for(10, "the writer to start", || {
        acked.load(Ordering::Relaxed) >= 100
    });
    let out = work.path().join("copy");
    let run = backup(&["--from", &addr, "--out", out.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&run.stdout).to_string();
    let stderr = String::from_utf8_lossy(&run.stderr).to_string();
    assert!(run.status.success(), "{stdout}\n{stderr}");
    let during = acked.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let total = acked.load(Ordering::Relaxed);
    assert!(
        stdout.contains("consistent at LSN")
            && stdout.contains("as a standalone primary of epoch 2"),
        "{stdout}"
    );
    // Served, the copy is a primary of a new epoch holding a prefix of the acknowledged
    // writes: all those acknowledged before the copy began, none after a gap.
    let copy = Node::start(&out, &[]);
    let mut b = copy.client();
    let i = info(&mut b);
    assert_eq!(i["role"], "primary");
    assert_eq!(i["epoch"], "2");
    let keys: Vec<String> = (0..total).map(|i| format!("seq:{i}")).collect();
    let present: Vec<Option<u64>> = keys
        .chunks(1000)
        .flat_map(|ks| b.mget::<_, Vec<Option<u64>>>(ks).unwrap())
        .collect();
    let k = present.iter().take_while(|v| v.is_some()).count();
    assert!(k >= 100, "only {k} of the writes made before the backup");
    assert!(
        k as u64 <= during,
        "{k} writes, but {during} were acknowledged when it ended"
    );
    assert!(
        present[k..].iter().all(Option::is_none),
        "a write after a gap: the copy is not a prefix of the history"
    );
    for (i, v) in present[..k].iter().enumerate() {
        assert_eq!(*v, Some(i as u64));
    }
    let dbsize: u64 = redis::cmd("DBSIZE").query(&mut b).unwrap();
    assert_eq!(dbsize, 20_000 + k as u64);
    assert_eq!(
        b.get::<_, Vec<u8>>("pre:19:999").unwrap(),
        value,
        "a preloaded value"
    );
    let _: () = b.set("after", "taken").unwrap();
    // The source forgot the backup: no replica entry keeps WAL for it.
    let text: String = redis::cmd("INFO").arg("replication").query(&mut c).unwrap();
    assert!(!text.contains("name=backup-"), "{text}");
    assert!(text.contains("connected_replicas:0"), "{text}");
}

#[test]
fn bad_input_gets_a_clear_error_and_leaves_nothing_behind() {
    let work = tempfile::tempdir().unwrap();
    let d = tempfile::tempdir().unwrap();
    let primary = Node::start(d.path(), &[]);
    let addr = format!("127.0.0.1:{}", primary.port);
    // A directory that holds something is not overwritten.
    let full = work.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("keep"), b"mine").unwrap();
    let run = backup(&["--from", &addr, "--out", full.to_str().unwrap()]);
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("is not empty"), "{err}");
    assert_eq!(std::fs::read(full.join("keep")).unwrap(), b"mine");
    // Nobody at the address.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = closed.local_addr().unwrap().to_string();
    drop(closed);
    let out = work.path().join("nothing");
    let run = backup(&["--from", &gone, "--out", out.to_str().unwrap()]);
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains(&gone), "{err}");
    assert!(!out.exists(), "a failed backup left {}", out.display());
    // A peer that is not replidb.
    let foreign = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let faddr = foreign.local_addr().unwrap().to_string();
    let fake = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut s, _) = foreign.accept().unwrap();
        let mut buf = [0u8; 256];
        let _ = s.read(&mut buf);
        let _ = s.write_all(b"-ERR unknown command 'INFO'\r\n");
    });
    let run = backup(&["--from", &faddr, "--out", out.to_str().unwrap()]);
    fake.join().unwrap();
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains(&faddr) && err.contains("unknown command"),
        "{err}"
    );
    assert!(!out.exists());
}
