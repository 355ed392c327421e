//! A wrong replication setup gets a clear, prompt answer: a node pointed at itself (under
//! any address) exits or refuses saying so; a replica waiting for its primary answers PING,
//! INFO, ROLE and CONFIG and says what it waits for, while reads get -LOADING; a peer that is
//! not replidb is named as such, once, with no frame-length noise; a REPLICAOF that would
//! close a cycle of replicas is refused and the node keeps its role. Real processes, a real
//! redis-server.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::etcd::free_port;
use common::{info, wait_for, Node};
use redis::{cmd, Commands};

/// A child process killed when the test ends, however it ends.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Log lines until one contains `what` (returned with every line before it), or a panic
/// with the log after `secs`.
fn wait_log(rx: &mpsc::Receiver<String>, what: &str, secs: u64) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                let hit = line.contains(what);
                seen.push(line);
                if hit {
                    return seen;
                }
            }
            Err(e) => panic!("no log line with {what:?} ({e}):\n{}", seen.join("\n")),
        }
    }
}

/// The port a starting node listens on, from its "listening while the node starts" line.
fn early_port(rx: &mpsc::Receiver<String>) -> (u16, Vec<String>) {
    let seen = wait_log(rx, "listening while the node starts", 30);
    let line = seen.last().cloned().unwrap_or_default();
    let at = line.find("addr=").expect("addr= in the line") + 5;
    let addr: String = line[at..]
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect();
    let port = addr.rsplit(':').next().and_then(|p| p.parse().ok());
    (port.expect("a port"), seen)
}

fn client(port: u16) -> redis::Connection {
    redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .unwrap()
        .get_connection()
        .unwrap()
}

/// Waits for the process to exit (at most `secs`), then returns its status and every log
/// line it printed.
fn wait_exit(child: &mut Child, rx: &mpsc::Receiver<String>, secs: u64) -> (i32, String) {
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "the node did not exit:\n{}",
            rx.try_iter().collect::<Vec<_>>().join("\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // The log pipe closes with the process.
    let log: Vec<String> = rx.iter().collect();
    (status.code().unwrap_or(-1), log.join("\n"))
}

/// `--replicaof` the node's own port exits non-zero saying so, whatever address names it,
/// for a new data directory (it would seed from itself) and for one with data.
#[test]
fn a_node_started_as_a_replica_of_itself_exits_saying_so() {
    let root = tempfile::tempdir().unwrap();
    // A directory with data: a primary that ran once.
    let used = root.path().join("used");
    let mut n = Node::start(&used, &[]);
    let _: () = n.client().set("k", "v").unwrap();
    n.signal("TERM");
    n.child.wait().unwrap();
    for (dir, host) in [
        (root.path().join("new"), "127.0.0.1"),
        (used.clone(), "localhost"),
    ] {
        let port = free_port();
        let target = format!("{host}:{port}");
        let (child, rx) =
            Node::spawn_raw(&dir, &["--port", &port.to_string(), "--replicaof", &target]);
        let mut child = Proc(child);
        let (code, log) = wait_exit(&mut child.0, &rx, 30);
        assert_ne!(code, 0, "{log}");
        assert!(
            log.contains("refusing to start as a replica") && log.contains("is this node itself"),
            "{log}"
        );
        assert!(!log.contains("connection refused"), "{log}");
    }
    // The directory with data is untouched and opens as it was.
    let n = Node::start(&used, &[]);
    let v: String = n.client().get("k").unwrap();
    assert_eq!(v, "v");
}

/// `REPLICAOF` naming the node itself, by any of its addresses, is refused; the node stays
/// a primary and takes writes.
#[test]
fn replicaof_the_node_itself_is_refused_and_it_keeps_its_role() {
    let dir = tempfile::tempdir().unwrap();
    let n = Node::start(dir.path(), &["--bind", "0.0.0.0"]);
    let mut c = n.client();
    for host in ["127.0.0.1", "localhost", "0.0.0.0"] {
        let err = cmd("REPLICAOF")
            .arg(host)
            .arg(n.port)
            .query::<()>(&mut c)
            .unwrap_err();
        let text = format!("{err}");
        assert!(text.contains("is this node itself"), "{host}: {text}");
        assert!(text.contains("keeps its role"), "{text}");
    }
    assert_eq!(info(&mut c)["role"], "primary");
    let _: () = c.set("still", "writable").unwrap();
}

/// A new replica whose primary is down listens at once: PING, INFO (what it waits for and
/// why), ROLE and CONFIG answer, reads get -LOADING. When the primary comes up, the same
/// connection reads the primary's data.
#[test]
fn a_new_replica_waiting_for_its_primary_answers_and_reads_get_loading() {
    let root = tempfile::tempdir().unwrap();
    let primary_port = free_port();
    let (child, rx) = Node::spawn_raw(
        &root.path().join("r"),
        &[
            "--replicaof",
            &format!("127.0.0.1:{primary_port}"),
            "--name",
            "r1",
        ],
    );
    let _child = Proc(child);
    let (port, _) = early_port(&rx);
    let mut c = client(port);
    let pong: String = cmd("PING").query(&mut c).unwrap();
    assert_eq!(pong, "PONG");
    wait_for(30, "INFO to say why the primary is not reached", || {
        info(&mut c)
            .get("primary_link_error")
            .is_some_and(|e| e.contains("refused"))
    });
    let i = info(&mut c);
    assert_eq!(i["role"], "replica");
    assert_eq!(i["loading"], "1");
    assert_eq!(i["node_name"], "r1");
    assert_eq!(i["primary_addr"], format!("127.0.0.1:{primary_port}"));
    assert!(i["startup_phase"].contains("seeding"), "{i:?}");
    let role: (String, String, i64, String, i64) = cmd("ROLE").query(&mut c).unwrap();
    assert_eq!(role.0, "slave");
    assert_eq!(role.2, primary_port as i64);
    let conf: Vec<String> = cmd("CONFIG").arg("GET").arg("dir").query(&mut c).unwrap();
    let dir = root.path().join("r").display().to_string();
    assert_eq!(conf, vec!["dir".to_string(), dir]);
    let err = cmd("GET")
        .arg("k")
        .query::<Option<String>>(&mut c)
        .unwrap_err();
    assert_eq!(err.code(), Some("LOADING"), "{err}");
    assert!(format!("{err}").contains("not serving data yet"), "{err}");
    // Connection set-up is answered as the server answers it, and kept when the
    // connection moves on: a name, and RESP3 asked for with HELLO.
    let err = cmd("SELECT").arg(1).query::<()>(&mut c).unwrap_err();
    assert!(format!("{err}").contains("out of range"), "{err}");
    let _: () = cmd("CLIENT")
        .arg("SETNAME")
        .arg("early")
        .query(&mut c)
        .unwrap();
    let err = cmd("CLIENT")
        .arg("SETNAME")
        .arg("two words")
        .query::<()>(&mut c)
        .unwrap_err();
    assert!(format!("{err}").contains("cannot contain spaces"), "{err}");
    // HELLO checks all of its options first, here as on the server's loop.
    let err = cmd("HELLO")
        .arg(2)
        .arg("SETNAME")
        .arg("two words")
        .query::<redis::Value>(&mut c)
        .unwrap_err();
    assert!(format!("{err}").contains("cannot contain spaces"), "{err}");
    let err = cmd("HELLO")
        .arg(2)
        .arg("LOUDLY")
        .query::<redis::Value>(&mut c)
        .unwrap_err();
    assert!(
        format!("{err}").contains("Syntax error in HELLO option 'LOUDLY'"),
        "{err}"
    );
    let echo: String = cmd("ECHO").arg("still here").query(&mut c).unwrap();
    assert_eq!(echo, "still here");
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let hello = raw_request(&mut raw, b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n", b"modules");
    assert!(hello.starts_with("%7\r\n"), "{hello}");
    assert!(hello.contains("replica"), "{hello}");
    // The primary comes up: the replica seeds, and the connection made meanwhile reads.
    let p = Node::start(
        &root.path().join("p"),
        &["--port", &primary_port.to_string()],
    );
    let _: () = p.client().set("k", "from the primary").unwrap();
    wait_for(
        60,
        "the early connection to read the primary's data",
        || {
            cmd("GET")
                .arg("k")
                .query::<Option<String>>(&mut c)
                .ok()
                .flatten()
                == Some("from the primary".into())
        },
    );
    let i = info(&mut c);
    assert_eq!(i["primary_link"], "up");
    assert!(!i.contains_key("primary_link_error"), "{i:?}");
    let name: String = cmd("CLIENT").arg("GETNAME").query(&mut c).unwrap();
    assert_eq!(name, "early");
    // An empty hash is a RESP3 map on the connection that said HELLO 3 before.
    let empty = raw_request(&mut raw, b"*2\r\n$7\r\nHGETALL\r\n$4\r\nnone\r\n", b"\r\n");
    assert_eq!(empty, "%0\r\n");
}

/// Sends `req` on `sock` and reads until the reply holds `until`.
fn raw_request(sock: &mut std::net::TcpStream, req: &[u8], until: &[u8]) -> String {
    use std::io::{Read, Write};
    sock.write_all(req).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(until.len()).any(|w| w == until) {
        let n = sock.read(&mut buf).unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

fn start_redis_server(dir: &std::path::Path) -> (Proc, u16) {
    let port = free_port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server (apt-get install redis-server)");
    let p = Proc(child);
    wait_for(30, "redis-server to answer", || {
        redis::Client::open(format!("redis://127.0.0.1:{port}/"))
            .and_then(|c| c.get_connection())
            .and_then(|mut c| cmd("PING").query::<String>(&mut c))
            .is_ok()
    });
    (p, port)
}

/// A replica pointed at a redis-server names it as not replidb, in one log line and in
/// INFO, and retries slowly; `REPLICAOF` to it is refused outright.
#[test]
fn a_peer_that_is_not_replidb_is_named_as_such() {
    let root = tempfile::tempdir().unwrap();
    let (_redis, redis_port) = start_redis_server(root.path());
    let target = format!("127.0.0.1:{redis_port}");
    let (child, rx) = Node::spawn_raw(&root.path().join("r"), &["--replicaof", &target]);
    let _child = Proc(child);
    let (port, mut log) = early_port(&rx);
    let mut c = client(port);
    wait_for(30, "INFO to name the peer", || {
        info(&mut c)
            .get("primary_link_error")
            .is_some_and(|e| e.contains("is not a replidb node"))
    });
    let e = &info(&mut c)["primary_link_error"];
    assert!(e.contains(&target) && e.contains("-ERR"), "{e}");
    log.extend(wait_log(&rx, "is not a replidb node", 10));
    // Whatever it logs a little later, it does not say it again before its slow retry.
    let more = Instant::now() + Duration::from_millis(1500);
    while let Ok(l) = rx.recv_timeout(more.saturating_duration_since(Instant::now())) {
        log.push(l);
    }
    // (Counted at info and above: a RUST_LOG=debug run adds debug lines with the text.)
    let named = log
        .iter()
        .filter(|l| l.contains("is not a replidb node") && !l.contains("DEBUG"));
    assert_eq!(named.count(), 1, "{}", log.join("\n"));
    assert!(
        !log.iter().any(|l| l.contains("exceeds the limit")),
        "{}",
        log.join("\n")
    );
    // A running primary told to follow it refuses and stays a primary.
    let p = Node::start(&root.path().join("p"), &[]);
    let mut pc = p.client();
    let err = cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(redis_port)
        .query::<()>(&mut pc)
        .unwrap_err();
    assert!(format!("{err}").contains("is not a replidb node"), "{err}");
    assert_eq!(info(&mut pc)["role"], "primary");
}

fn streaming(c: &mut redis::Connection) -> bool {
    let i = info(c);
    i.get("primary_link").map(String::as_str) == Some("up")
        && i.get("loading").map(String::as_str) == Some("0")
}

/// a ← b ← c (b follows a, c follows b). `REPLICAOF` on a to b or to c, and on b to c,
/// would close a cycle: each is refused naming it, and every node keeps its role; writes
/// on a still reach c.
#[test]
fn replicaof_that_would_close_a_cycle_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let a = Node::start(&root.path().join("a"), &["--name", "a"]);
    let a_addr = format!("127.0.0.1:{}", a.port);
    let b = Node::start(
        &root.path().join("b"),
        &["--name", "b", "--replicaof", &a_addr],
    );
    let b_addr = format!("127.0.0.1:{}", b.port);
    let c = Node::start(
        &root.path().join("c"),
        &["--name", "c", "--replicaof", &b_addr],
    );
    let (mut ac, mut bc, mut cc) = (a.client(), b.client(), c.client());
    // c learns b's upstream once b streams from a (b ends c's link when its chain changes).
    wait_for(60, "b and c to stream, c knowing the whole chain", || {
        streaming(&mut bc)
            && streaming(&mut cc)
            && info(&mut cc).get("upstream_chain").map(String::as_str) == Some("b,a")
    });
    for (on_b, target, cycle) in [
        (false, b.port, "a → b → a"),
        (false, c.port, "a → c → b → a"),
        (true, c.port, "b → c → b"),
    ] {
        let conn = if on_b { &mut bc } else { &mut ac };
        let err = cmd("REPLICAOF")
            .arg("127.0.0.1")
            .arg(target)
            .query::<()>(conn)
            .unwrap_err();
        let text = format!("{err}");
        assert!(text.contains("would close a replication cycle"), "{text}");
        assert!(text.contains(cycle), "{text}");
    }
    assert_eq!(info(&mut ac)["role"], "primary");
    assert_eq!(info(&mut bc)["primary_addr"], a_addr);
    let _: () = ac.set("after", "refusals").unwrap();
    wait_for(30, "the write to reach c", || {
        cmd("GET")
            .arg("after")
            .query::<Option<String>>(&mut cc)
            .ok()
            .flatten()
            == Some("refusals".into())
    });
}

/// A node speaking another replication protocol version is answered with an error frame
/// naming the versions (what the connecting side reports as "another protocol version"),
/// not streamed to.
#[test]
fn a_node_of_another_protocol_version_is_told_so() {
    use replication::frame::{decode, Frame};
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let n = Node::start(dir.path(), &[]);
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", n.port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut out = b"*1\r\n$10\r\nREPLSTREAM\r\n".to_vec();
    Frame::Hello {
        version: replication::frame::MIN_VERSION - 1,
        epoch: 1,
        node_id: 42,
        flush_lsn: storage::Lsn(0),
        name: "old".into(),
        epochs: Vec::new(),
    }
    .encode(&mut out);
    sock.write_all(&out).unwrap();
    let mut buf = Vec::new();
    let frame = loop {
        if let Some((f, _)) = decode(&buf).unwrap() {
            break f;
        }
        let mut chunk = [0u8; 4096];
        let got = sock.read(&mut chunk).unwrap();
        assert!(got > 0, "closed without an answer");
        buf.extend_from_slice(&chunk[..got]);
    };
    match frame {
        Frame::Error { code, message } => {
            assert_eq!(code, replication::identity::VERSION_MISMATCH);
            assert!(message.contains("protocol version"), "{message}");
        }
        other => panic!("expected an error frame, got {other:?}"),
    }
    // The server goes on serving.
    let pong: String = cmd("PING").query(&mut n.client()).unwrap();
    assert_eq!(pong, "PONG");
}
