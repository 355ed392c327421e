//! `replidb demo` from a new directory: three nodes come up, the primary's writes reach the
//! replicas, Ctrl-C stops them cleanly.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::wait_for;
use rand::Rng;
use redis::cmd;

/// A base port whose next two are free too, below Linux's ephemeral range (32768 and up) so
/// that no outgoing connection of another process takes one between the check and the bind.
fn three_free_ports() -> u16 {
    let mut rng = rand::thread_rng();
    loop {
        let base: u16 = rng.gen_range(20000..32000);
        if (base..base + 3).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return base;
        }
    }
}

/// Starts the demo and waits for its banner; `Err` with its log when it exits first.
fn start_demo(dir: &std::path::Path, port: u16) -> Result<Child, String> {
    let log = dir.join(format!("demo-{port}.log"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_replidb"))
        .args(["demo", "--port", &port.to_string(), "--dir"])
        .arg(dir.join("demo"))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
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
                let _ = child.wait();
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!(
                    "no banner from the demo on port {port}: {e}; got {banner:?}\n{log}"
                ));
            }
        }
    }
    Ok(child)
}

#[test]
fn the_demo_starts_a_primary_and_two_replicas_from_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // Another process may still take a port between the check and the demo's bind: then
    // the demo exits saying so, and we try other ports (three tries, then the logs).
    let mut failures = Vec::new();
    let (mut child, port) = loop {
        let port = three_free_ports();
        match start_demo(dir.path(), port) {
            Ok(child) => break (child, port),
            Err(e) if failures.len() < 2 && e.contains("in use") => failures.push(e),
            Err(e) => panic!("{}\n{e}", failures.join("\n")),
        }
    };
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
