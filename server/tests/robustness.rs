//! Garbage on the socket, absurd frames, restarts, clean shutdown, and the Redis tools.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::Node;
use rand::{Rng, SeedableRng};
use redis::cmd;

fn raw(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Reads until the server closes the connection or the reply contains `want`.
fn read_reply(s: &mut TcpStream, want: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if String::from_utf8_lossy(&got).contains(want) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn garbage_and_absurd_frames_do_not_hurt_other_clients() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let mut good = node.client();
    let _: () = cmd("SET").arg("keep").arg("me").query(&mut good).unwrap();

    for frame in [
        &b"*99999999999\r\n"[..],
        b"*2\r\n$99999999999\r\nxx\r\n",
        b"*1\r\n$-7\r\n",
        b"*1\r\n:12\r\n",
        b"*abc\r\n",
        b"*1\r\n$3\r\nGETXX\r\n",
    ] {
        let mut s = raw(node.port);
        s.write_all(frame).unwrap();
        let reply = read_reply(&mut s, "\r\n");
        assert!(
            reply.starts_with("-ERR Protocol error"),
            "{:?} -> {reply:?}",
            String::from_utf8_lossy(frame)
        );
    }
    // Random bytes from many connections.
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    for _ in 0..50 {
        let mut s = raw(node.port);
        let n = rng.gen_range(1..4096);
        let bytes: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
        let _ = s.write_all(&bytes);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let _ = read_reply(&mut s, "\u{0}never");
    }
    // A huge inline line without newline.
    let mut s = raw(node.port);
    let _ = s.write_all(&vec![b'A'; 70 * 1024]);
    assert!(read_reply(&mut s, "\r\n").contains("too big inline request"));
    // Pipelining still works and the other client never noticed.
    let mut s = raw(node.port);
    s.write_all(b"*1\r\n$4\r\nPING\r\nPING\r\n*2\r\n$3\r\nGET\r\n$4\r\nkeep\r\n")
        .unwrap();
    let r = read_reply(&mut s, "me\r\n");
    assert_eq!(r, "+PONG\r\n+PONG\r\n$2\r\nme\r\n");
    assert_eq!(
        cmd("GET").arg("keep").query::<String>(&mut good).unwrap(),
        "me"
    );
}

#[test]
fn restart_keeps_data_and_shutdown_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let mut c = node.client();
    for i in 0..1000 {
        let _: () = cmd("SET")
            .arg(format!("k{i}"))
            .arg(format!("v{i}"))
            .query(&mut c)
            .unwrap();
    }
    // SHUTDOWN: the connection closes without a reply, the process exits 0.
    let _ = cmd("SHUTDOWN").query::<redis::Value>(&mut c);
    let status = node.wait_exit();
    assert!(status.success(), "{status:?}");
    let node = Node::start(dir.path(), &[]);
    let mut c = node.client();
    assert_eq!(cmd("DBSIZE").query::<i64>(&mut c).unwrap(), 1000);
    assert_eq!(
        cmd("GET").arg("k999").query::<String>(&mut c).unwrap(),
        "v999"
    );
    // SIGTERM is a clean shutdown too; SIGKILL loses nothing acknowledged.
    let _: () = cmd("SET")
        .arg("after")
        .arg("restart")
        .query(&mut c)
        .unwrap();
    node.signal("TERM");
    assert!(node.wait_exit().success());
    let node = Node::start(dir.path(), &[]);
    let mut c = node.client();
    let _: () = cmd("SET").arg("before").arg("kill").query(&mut c).unwrap();
    node.kill();
    let node = Node::start(dir.path(), &[]);
    let mut c = node.client();
    assert_eq!(
        cmd("GET").arg("after").query::<String>(&mut c).unwrap(),
        "restart"
    );
    assert_eq!(
        cmd("GET").arg("before").query::<String>(&mut c).unwrap(),
        "kill"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_replidb"))
        .args(["check", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success(), "check refuses a directory in use");
}

/// redis-cli and redis-benchmark (Debian's redis-tools; CI installs it) against the server.
#[test]
fn redis_cli_and_redis_benchmark_work() {
    for tool in ["redis-cli", "redis-benchmark"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .unwrap();
        assert!(
            found.status.success(),
            "{tool} is not installed (apt-get install redis-tools)"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let port = node.port.to_string();
    let cli = |args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["-p", &port])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "redis-cli {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(cli(&["PING"]), "PONG");
    assert_eq!(cli(&["SET", "tool", "works"]), "OK");
    assert_eq!(cli(&["GET", "tool"]), "works");
    assert_eq!(cli(&["INCR", "c"]), "1");
    assert!(cli(&["INFO", "keyspace"]).contains("db0:keys=2"));
    assert!(cli(&["NOPE"]).contains("unknown command"));
    let out = Command::new("redis-benchmark")
        .args([
            "-p", &port, "-t", "set,get", "-n", "50000", "-c", "50", "-q",
        ])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "redis-benchmark failed: {text}");
    assert!(text.contains("SET:") && text.contains("GET:"), "{text}");
    assert!(!text.to_lowercase().contains("error"), "{text}");
    let mut c = node.client();
    let n: i64 = cmd("DBSIZE").query(&mut c).unwrap();
    assert!(n >= 3, "redis-benchmark wrote its keys ({n})");
}

/// Every command, sent with a wrong number of arguments, gets the arity error and the
/// connection stays usable (REPLICAOF, FAILOVER, WAIT and WAITLSN with too few arguments
/// used to index past the end and drop the connection).
#[test]
fn every_command_with_a_wrong_number_of_arguments_gets_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let mut c = node.client();
    let mut tried = 0;
    for spec in replidb_server::commands::COMMANDS {
        let need = spec.arity.unsigned_abs() as usize;
        let mut counts = Vec::new();
        if spec.arity > 0 {
            counts.push(need + 1);
        }
        if need > 1 {
            counts.push(need - 1);
        }
        for n in counts {
            let mut q = cmd(spec.name);
            for i in 1..n {
                q.arg(format!("a{i}"));
            }
            let e = q.query::<redis::Value>(&mut c).unwrap_err();
            assert!(
                e.to_string().contains("wrong number of arguments"),
                "{} with {n} arguments: {e}",
                spec.name
            );
            let pong: String = cmd("PING").query(&mut c).unwrap();
            assert_eq!(pong, "PONG", "after {} with {n} arguments", spec.name);
            tried += 1;
        }
    }
    assert!(tried > 40, "only {tried} cases");
}

/// All of INFO as a map.
fn info_all(c: &mut redis::Connection) -> std::collections::HashMap<String, String> {
    let text: String = cmd("INFO").arg("all").query(c).unwrap();
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn connections_past_maxclients_are_refused_and_the_others_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &["--maxclients", "2"]);
    let mut a = node.client();
    let mut b = node.client();
    let _: () = cmd("SET").arg("k").arg("v").query(&mut a).unwrap();
    // A third connection gets Redis's answer and is closed.
    let mut third = raw(node.port);
    let reply = read_reply(&mut third, "\r\n");
    assert_eq!(reply, "-ERR max number of clients reached\r\n");
    let info = info_all(&mut b);
    assert_eq!(
        info.get("rejected_connections").map(String::as_str),
        Some("1")
    );
    assert_eq!(info.get("connected_clients").map(String::as_str), Some("2"));
    // Once one leaves, a new one is served.
    drop(a);
    common::wait_for(10, "a freed connection slot", || {
        info_all(&mut b)
            .get("connected_clients")
            .is_some_and(|n| n == "1")
    });
    let mut c = node.client();
    let v: String = cmd("GET").arg("k").query(&mut c).unwrap();
    assert_eq!(v, "v");
}

#[test]
fn a_multi_queue_past_its_bound_is_refused_and_the_transaction_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let mut c = node.client();
    let _: () = cmd("MULTI").query(&mut c).unwrap();
    // 63 MiB values (under the 64 MiB value limit): eight fit in the 512 MiB bound, the
    // ninth does not.
    let big = vec![b'x'; 63 << 20];
    for i in 0..8 {
        let q: String = cmd("SET")
            .arg(format!("k{i}"))
            .arg(&big[..])
            .query(&mut c)
            .unwrap();
        assert_eq!(q, "QUEUED");
    }
    let err = cmd("SET")
        .arg("k8")
        .arg(&big[..])
        .query::<String>(&mut c)
        .expect_err("past the MULTI bound");
    assert!(err.to_string().contains("MULTI queue full"), "{err}");
    let err = cmd("EXEC")
        .query::<redis::Value>(&mut c)
        .expect_err("discarded");
    assert_eq!(err.kind(), redis::ErrorKind::ExecAbortError, "{err}");
    // Nothing of it was applied, and the connection goes on.
    let n: i64 = cmd("EXISTS").arg("k0").query(&mut c).unwrap();
    assert_eq!(n, 0);
    let _: () = cmd("SET").arg("after").arg("1").query(&mut c).unwrap();
}

fn check(dir: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_replidb"))
        .args(["check", "--dir"])
        .arg(dir)
        .output()
        .unwrap()
}

/// A node on `dir` holding 3,000 keys, written in one pipeline.
fn node_with_keys(dir: &std::path::Path) -> Node {
    let node = Node::start(dir, &[]);
    let mut c = node.client();
    let mut p = redis::pipe();
    for i in 0..3000 {
        p.cmd("SET")
            .arg(format!("key:{i:05}"))
            .arg(format!("value {i}"))
            .ignore();
    }
    let _: () = p.query(&mut c).unwrap();
    node
}

/// Writes keys and SIGKILLs the node: its log holds them, its page file does not.
fn killed_node_with_keys(dir: &std::path::Path) {
    node_with_keys(dir).kill();
}

#[test]
fn check_names_damage_in_the_middle_of_the_wal_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    killed_node_with_keys(dir.path());
    let (seg, end) = common::last_segment(dir.path());
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = 512 + (end - 512) / 2;
    bytes[at] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();
    let out = check(dir.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "check passed a damaged WAL: {err}");
    assert!(
        err.contains("damaged WAL record") && err.contains("valid records follow"),
        "{err}"
    );
    assert!(
        err.contains(&seg.file_name().unwrap().to_string_lossy().to_string()),
        "{err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
    // It changed nothing: the damage and every record after it are still there.
    assert_eq!(
        std::fs::read(&seg).unwrap(),
        bytes,
        "check modified the log"
    );
}

#[test]
fn check_refuses_a_running_node_instead_of_reading_a_log_being_written() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let mut c = node.client();
    let _: () = cmd("SET").arg("k").arg("v").query(&mut c).unwrap();
    let out = check(dir.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "check read a live log: {err}");
    assert!(err.contains("locked"), "{err}");
    assert!(!err.contains("damaged"), "{err}");
}

#[test]
fn check_tells_a_torn_tail_from_damage() {
    let dir = tempfile::tempdir().unwrap();
    killed_node_with_keys(dir.path());
    let (seg, end) = common::last_segment(dir.path());
    // The last record cut short, as a crash in the middle of a write leaves it.
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[end - 20..end].fill(0);
    std::fs::write(&seg, &bytes).unwrap();
    let out = check(dir.path());
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("torn tail"), "{stdout}");
    assert!(stdout.contains("ok:"), "{stdout}");
}

#[test]
fn check_names_every_damaged_page_not_only_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with_keys(dir.path());
    node.signal("TERM");
    assert!(node.wait_exit().success());
    // Two pages damaged in the file (a stopped node's pages are all written back).
    let path = dir.path().join("pages.db");
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() >= 8 * 4096, "enough pages for the test");
    for id in [2usize, 6] {
        bytes[id * 4096 + 1000] ^= 0x40;
    }
    std::fs::write(&path, &bytes).unwrap();
    let out = check(dir.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("damaged page 2:") && err.contains("damaged page 6:"),
        "{err}"
    );
    assert!(err.contains("2 damaged page(s)"), "{err}");
}

/// The trial: a standalone primary whose WAL has a flipped byte in its middle after
/// a SIGKILL. It used to start and drop every key after the damage; now it refuses, naming
/// the segment, offset and LSN and the ways out, and changes nothing. Told to cut the log
/// (`check --cut-wal-at-damage`), it keeps what preceded the damage.
#[test]
fn a_primary_with_damaged_wal_refuses_to_start_and_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(dir.path(), &[]);
    let mut c = node.client();
    // Separate commits (each one acknowledged after its own flush).
    for i in 0..400 {
        let _: () = cmd("SET")
            .arg(format!("key:{i:05}"))
            .arg(format!("value {i}"))
            .query(&mut c)
            .unwrap();
    }
    node.kill();
    let (seg, end) = common::last_segment(dir.path());
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = 512 + (end - 512) / 2;
    bytes[at] ^= 0x20;
    std::fs::write(&seg, &bytes).unwrap();
    let before = std::fs::read(&seg).unwrap();

    let (mut child, log) = Node::spawn_raw(dir.path(), &[]);
    let status = child.wait().unwrap();
    assert!(!status.success(), "a primary started on a damaged log");
    let err: Vec<String> = log.iter().collect();
    let err = err.join("\n");
    let name = seg.file_name().unwrap().to_string_lossy().to_string();
    for part in [
        name.as_str(),
        "byte offset",
        "WAL damaged at LSN",
        "--replicaof",
        "--cut-wal-at-damage",
    ] {
        assert!(
            err.contains(part),
            "the refusal does not say {part:?}: {err}"
        );
    }
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        std::fs::read(&seg).unwrap(),
        before,
        "the refused start changed the log"
    );

    // The operator accepts the loss.
    let out = Command::new(env!("CARGO_BIN_EXE_replidb"))
        .args(["check", "--cut-wal-at-damage", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("cutting the WAL at LSN"), "{stdout}");
    let node = Node::start(dir.path(), &[]);
    let mut c = node.client();
    let kept: usize = (0..400)
        .filter(|i| {
            cmd("GET")
                .arg(format!("key:{i:05}"))
                .query::<Option<String>>(&mut c)
                .unwrap()
                .is_some()
        })
        .count();
    assert!(kept > 0 && kept < 400, "kept {kept} of 400 keys");
    // Keys are a prefix of the writes: nothing after the cut came back half applied.
    for i in 0..kept {
        let v: Option<String> = cmd("GET").arg(format!("key:{i:05}")).query(&mut c).unwrap();
        assert_eq!(v, Some(format!("value {i}")));
    }
}
