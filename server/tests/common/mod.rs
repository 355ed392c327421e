//! Starting real `replidb` processes for tests, and talking to them.
#![allow(dead_code)]

pub mod etcd;
pub mod faults;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A `replidb serve` child process on a free port.
pub struct Node {
    pub child: Child,
    pub port: u16,
    pub dir: PathBuf,
    log: mpsc::Receiver<String>,
    /// The log lines before it was ready.
    pub early_log: Vec<String>,
}

impl Node {
    /// Starts `replidb serve --dir DIR --port 0 EXTRA...` and waits until it listens.
    pub fn start(dir: &Path, extra: &[&str]) -> Node {
        match Node::try_start(dir, extra) {
            Ok(n) => n,
            Err(log) => panic!("replidb did not become ready:\n{log}"),
        }
    }

    /// As `start`, but a node that exits instead of listening is an `Err` with its log.
    pub fn try_start(dir: &Path, extra: &[&str]) -> Result<Node, String> {
        let (mut child, rx) = Node::spawn_raw(dir, extra);
        // The server logs its bound address once it accepts connections.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        let port = loop {
            match rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
                Ok(line) => {
                    if let Some(i) = line.find("addr=") {
                        let addr: String = line[i + 5..]
                            .chars()
                            .take_while(|c| !c.is_whitespace())
                            .collect();
                        if line.contains("ready to accept connections") {
                            break addr
                                .rsplit(':')
                                .next()
                                .and_then(|p| p.parse().ok())
                                .expect("port in the log");
                        }
                    }
                    seen.push(line);
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    seen.push(format!("({e})"));
                    return Err(seen.join("\n"));
                }
            }
        };
        Ok(Node {
            child,
            port,
            dir: dir.to_path_buf(),
            log: rx,
            early_log: seen,
        })
    }

    /// Starts `replidb serve` without waiting for it to listen (for nodes that must not get
    /// that far); returns the child and its log lines.
    pub fn spawn_raw(dir: &Path, extra: &[&str]) -> (Child, mpsc::Receiver<String>) {
        // A free port unless the caller names one (cluster members advertise theirs).
        let port: &[&str] = if extra.contains(&"--port") {
            &[]
        } else {
            &["--port", "0"]
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_replidb"))
            .args(["serve", "--dir"])
            .arg(dir)
            .args(port)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn replidb");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        (child, rx)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn client(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    /// Log lines printed so far (drains them).
    pub fn log_lines(&self) -> Vec<String> {
        self.log.try_iter().collect()
    }

    /// The lines printed before it was ready, then those printed since (drained): for what
    /// may happen on either side of "ready" (a replica can start seeding before it listens).
    pub fn log_since_start(&self) -> Vec<String> {
        let mut lines = self.early_log.clone();
        lines.extend(self.log_lines());
        lines
    }

    /// Waits for the process to exit on its own (after SHUTDOWN or a signal).
    pub fn wait_exit(mut self) -> ExitStatus {
        for _ in 0..600 {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("replidb did not exit within 30 s");
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        if sig == "STOP" {
            // kill(1) returns once the signal is sent, not once every thread has stopped:
            // wait for the stopped state, or the node may still forward a frame or two.
            let tasks = format!("/proc/{}/task", self.child.id());
            let stopped = |stat: std::path::PathBuf| {
                std::fs::read_to_string(stat)
                    .ok()
                    .and_then(|s| {
                        s.rsplit_once(')')
                            .map(|(_, r)| r.trim_start().starts_with('T'))
                    })
                    .unwrap_or(true) // a thread that exited meanwhile
            };
            wait_for(10, "every thread of the process to stop", || {
                std::fs::read_dir(&tasks)
                    .map(|d| {
                        d.filter_map(Result::ok)
                            .all(|t| stopped(t.path().join("stat")))
                    })
                    .unwrap_or(false)
            });
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `replica` has applied and synced everything `primary` has synced.
pub fn caught_up(primary: &mut redis::Connection, replica: &mut redis::Connection) -> bool {
    let p = info(primary);
    let r = info(replica);
    r["apply_lsn"] == p["flush_lsn"] && r["flush_lsn"] == p["flush_lsn"]
}

/// Every key and value (`RANGE - +`), in key order.
pub fn everything(c: &mut redis::Connection) -> Vec<Vec<u8>> {
    redis::cmd("RANGE").arg("-").arg("+").query(c).unwrap()
}

/// `INFO replication` as a map.
pub fn info(c: &mut redis::Connection) -> std::collections::HashMap<String, String> {
    info_section(c, "replication")
}

/// `INFO section` as a map.
pub fn info_section(
    c: &mut redis::Connection,
    section: &str,
) -> std::collections::HashMap<String, String> {
    let text: String = redis::cmd("INFO").arg(section).query(c).unwrap();
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// Polls `cond` until it holds (or fails the test after `secs`).
pub fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let t = std::time::Instant::now();
    while !cond() {
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The newest WAL segment of a stopped node and the end of what was written in it (the
/// segments are preallocated with zeros).
pub fn last_segment(dir: &std::path::Path) -> (std::path::PathBuf, usize) {
    let mut segs: Vec<_> = std::fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    segs.sort();
    let seg = segs.pop().expect("a WAL segment");
    let bytes = std::fs::read(&seg).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).expect("written log") + 1;
    (seg, end)
}

/// Starts `replidb archive --from FROM --dir DIR --name arch` (stdout and stderr piped).
pub fn start_archive(from: &str, dir: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_replidb"))
        .args(["archive", "--from", from, "--dir"])
        .arg(dir)
        .args(["--name", "arch"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn replidb archive")
}

/// The flush position of the archive named `arch` as its primary sees it (`INFO
/// replication`); `None` until it has connected.
pub fn archived(c: &mut redis::Connection) -> Option<u64> {
    let text: String = redis::cmd("INFO").arg("replication").query(c).unwrap();
    text.lines()
        .find(|l| l.contains("name=arch,"))
        .and_then(|l| {
            l.split(',')
                .find_map(|kv| kv.strip_prefix("flush_lsn="))
                .and_then(|v| v.parse().ok())
        })
}

/// The node's `flush_lsn` (INFO).
pub fn flush_lsn(c: &mut redis::Connection) -> u64 {
    info(c)["flush_lsn"].parse().unwrap()
}
