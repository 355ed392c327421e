//! `replidb restore` against real processes: a primary archived (`replidb archive`) and
//! backed up (`replidb backup`) while it takes writes; a "mistake" (deletes and overwrites)
//! after a noted point; restores to just before it — by LSN and by time — equal the state at
//! that moment exactly, a restore to the end equals the primary; bad input (a target before
//! the backup, a backup of another cluster, a served backup) gets a clear error.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Output};

use common::{archived, flush_lsn, info, start_archive, wait_for, Node};
use redis::Commands;

fn replidb(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_replidb"))
        .args(args)
        .output()
        .expect("run replidb")
}

/// Every key and its value (strings only here).
fn contents(c: &mut redis::Connection) -> BTreeMap<String, String> {
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(c).unwrap();
    keys.into_iter()
        .map(|k| {
            let v: String = c.get(&k).unwrap();
            (k, v)
        })
        .collect()
}

fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn err(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn restores_to_a_point_before_a_mistake_by_lsn_and_by_time_and_to_the_end() {
    let (dp, work) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let primary = Node::start(dp.path(), &["--name", "p"]);
    let addr = format!("127.0.0.1:{}", primary.port);
    let mut c = primary.client();
    let arch = work.path().join("arch");
    let mut a = start_archive(&addr, &arch);
    wait_for(20, "the archive to start", || archived(&mut c).is_some());
    for i in 0..200 {
        let _: () = c.set(format!("a{i}"), format!("first {i}")).unwrap();
    }
    let backup = work.path().join("backup");
    let out = replidb(&["backup", "--from", &addr, "--out", backup.to_str().unwrap()]);
    ok(&out);
    for i in 0..200 {
        let _: () = c.set(format!("b{i}"), format!("second {i}")).unwrap();
    }
    // The moment to go back to: its LSN, its time, and what a client saw then.
    let good_lsn = flush_lsn(&mut c);
    let good = contents(&mut c);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let good_time = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
    std::thread::sleep(std::time::Duration::from_millis(20));
    // The mistake: deletes and overwrites, then more writes.
    for i in 0..50 {
        let _: () = c.del(format!("a{i}")).unwrap();
        let _: () = c.set(format!("b{i}"), "oops").unwrap();
    }
    for i in 0..100 {
        let _: () = c.set(format!("c{i}"), "later").unwrap();
    }
    let end = flush_lsn(&mut c);
    wait_for(20, "the archive to catch up", || {
        archived(&mut c) == Some(end)
    });
    let everything = contents(&mut c);
    let restore = |name: &str, extra: &[&str]| {
        let out = work.path().join(name);
        let mut args = vec![
            "restore",
            "--backup",
            backup.to_str().unwrap(),
            "--wal",
            arch.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        (replidb(&args), out)
    };
    // By LSN: exactly the state at that moment.
    let lsn = good_lsn.to_string();
    let (run, dir) = restore("by-lsn", &["--until-lsn", &lsn]);
    let said = ok(&run);
    assert!(said.contains(&format!("LSN {good_lsn}")), "{said}");
    {
        let n = Node::start(&dir, &[]);
        let mut r = n.client();
        assert_eq!(contents(&mut r), good, "restored by LSN");
        let i = info(&mut r);
        assert_eq!(i["role"], "primary");
        assert!(i["epoch"].parse::<u32>().unwrap() > 2, "{}", i["epoch"]);
        let _: () = r.set("writable", "yes").unwrap();
    }
    // By time: the same.
    let (run, dir) = restore("by-time", &["--until-time", &good_time]);
    ok(&run);
    {
        let n = Node::start(&dir, &[]);
        assert_eq!(contents(&mut n.client()), good, "restored by time");
    }
    // To the end: what the primary holds, page for page.
    let (run, dir) = restore("to-end", &[]);
    let said = ok(&run);
    assert!(said.contains(&format!("LSN {end}")), "{said}");
    {
        let n = Node::start(&dir, &[]);
        let mut r = n.client();
        assert_eq!(contents(&mut r), everything, "restored to the end");
        let d: String = redis::cmd("DIGEST").query(&mut r).unwrap();
        let p: String = redis::cmd("DIGEST").query(&mut c).unwrap();
        assert_eq!(
            d.split(' ').nth(1),
            p.split(' ').nth(1),
            "pages differ from the primary's"
        );
    }
    // A target before the backup.
    let (run, dir) = restore("too-early", &["--until-lsn", "1"]);
    assert!(err(&run).contains("before the backup's point"));
    assert!(!dir.exists());
    let (run, _) = restore("too-early-time", &["--until-time", "2001-01-01T00:00:00Z"]);
    assert!(err(&run).contains("before the backup's point"));
    let (run, _) = restore("bad-time", &["--until-time", "yesterday"]);
    assert!(err(&run).contains("RFC 3339"));
    a.kill().unwrap();
    a.wait().unwrap();
    // A backup that has been served is not a base any more — even once checkpoints have
    // recycled the WAL segment that held its point (more than a 16 MiB segment written).
    {
        let n = Node::start(&backup, &[]);
        let mut s = n.client();
        let big = "s".repeat(4000);
        for chunk in 0..6 {
            let mut p = redis::pipe();
            for i in 0..1000 {
                p.set(format!("served:{chunk}:{i}"), &big).ignore();
            }
            let _: () = p.query(&mut s).unwrap();
            let _: () = redis::cmd("CHECKPOINT").query(&mut s).unwrap();
        }
    }
    let (run, _) = restore("served", &[]);
    assert!(err(&run).contains("has been served"));
}

#[test]
fn a_backup_of_another_cluster_is_refused() {
    let (d1, d2, work) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let one = Node::start(d1.path(), &["--name", "one"]);
    let two = Node::start(d2.path(), &["--name", "two"]);
    let (a1, a2) = (
        format!("127.0.0.1:{}", one.port),
        format!("127.0.0.1:{}", two.port),
    );
    let (mut c1, mut c2) = (one.client(), two.client());
    let arch = work.path().join("arch");
    let mut a = start_archive(&a1, &arch);
    wait_for(20, "the archive to start", || archived(&mut c1).is_some());
    // The same writes on both, so their logs run to similar positions.
    for i in 0..100 {
        let _: () = c1.set(format!("k{i}"), "v").unwrap();
        let _: () = c2.set(format!("k{i}"), "v").unwrap();
    }
    let backup = work.path().join("backup-of-two");
    ok(&replidb(&[
        "backup",
        "--from",
        &a2,
        "--out",
        backup.to_str().unwrap(),
    ]));
    for i in 0..100 {
        let _: () = c1.set(format!("m{i}"), "v").unwrap();
    }
    let end = flush_lsn(&mut c1);
    wait_for(20, "the archive to catch up", || {
        archived(&mut c1) == Some(end)
    });
    a.kill().unwrap();
    a.wait().unwrap();
    let out = work.path().join("mixed");
    let run = replidb(&[
        "restore",
        "--backup",
        backup.to_str().unwrap(),
        "--wal",
        arch.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let e = err(&run);
    assert!(
        e.contains("different clusters")
            || e.contains("different histories")
            || e.contains("missing"),
        "{e}"
    );
    assert!(!out.exists());
}
