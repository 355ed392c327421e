//! `replidb demo` from a new directory: three nodes come up, the primary's writes reach the
//! replicas, Ctrl-C stops them cleanly.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::wait_for;
use rand::Rng;
use redis::cmd;

#[test]
fn the_demo_starts_a_primary_and_two_replicas_from_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port: u16 = rand::thread_rng().gen_range(20000..60000);
    let mut child = Command::new(env!("CARGO_BIN_EXE_replidb"))
        .args(["demo", "--port", &port.to_string(), "--dir"])
        .arg(dir.path().join("demo"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The banner comes once all three are up.
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let mut banner = String::new();
    while !banner.contains("Ctrl-C") {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(l) => banner.push_str(&l),
            Err(e) => {
                let _ = child.kill();
                panic!("no banner from the demo: {e}; got {banner:?}");
            }
        }
    }
    let conn = |p: u16| {
        redis::Client::open(format!("redis://127.0.0.1:{p}/"))
            .unwrap()
            .get_connection()
            .unwrap()
    };
    let mut p = conn(port);
    let _: () = cmd("SET")
        .arg("greeting")
        .arg("hello")
        .query(&mut p)
        .unwrap();
    for r in [port + 1, port + 2] {
        let mut c = conn(r);
        wait_for(20, "the write on a replica", || {
            cmd("GET")
                .arg("greeting")
                .query::<Option<String>>(&mut c)
                .unwrap()
                == Some("hello".into())
        });
    }
    let text: String = cmd("INFO").arg("replication").query(&mut p).unwrap();
    assert!(text.contains("sync_standbys:ANY 1 (r1, r2)"), "{text}");
    assert!(text.contains("connected_replicas:2"), "{text}");
    let ok = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let mut status = None;
    for _ in 0..600 {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = status.expect("the demo exits on Ctrl-C");
    assert!(status.success(), "{status:?}");
}
