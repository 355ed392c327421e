//! Real etcd processes on loopback for the cluster tests, and cluster members around them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{wait_for, Node};

/// A free TCP port on 127.0.0.1 (bound and released: another process may take it in
/// between, which a test then sees as a failed start).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// An etcd cluster of `n` members on 127.0.0.1, each with its own data directory.
pub struct Etcd {
    pub clients: Vec<u16>,
    peers: Vec<u16>,
    dirs: Vec<PathBuf>,
    procs: Vec<Option<Child>>,
}

impl Etcd {
    /// Starts `n` members and waits until the cluster answers.
    pub fn start(root: &Path, n: usize) -> Etcd {
        let clients: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let peers: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let dirs = (0..n).map(|i| root.join(format!("etcd{i}"))).collect();
        let mut e = Etcd {
            clients,
            peers,
            dirs,
            procs: (0..n).map(|_| None).collect(),
        };
        for i in 0..n {
            e.spawn(i);
        }
        e.wait_healthy();
        e
    }

    fn spawn(&mut self, i: usize) {
        let initial: Vec<String> = self
            .peers
            .iter()
            .enumerate()
            .map(|(j, p)| format!("e{j}=http://127.0.0.1:{p}"))
            .collect();
        let log = std::fs::File::create(self.dirs[i].with_extension("log")).expect("etcd log");
        let child = Command::new("etcd")
            .arg("--name")
            .arg(format!("e{i}"))
            .arg("--data-dir")
            .arg(&self.dirs[i])
            .arg("--listen-client-urls")
            .arg(format!("http://127.0.0.1:{}", self.clients[i]))
            .arg("--advertise-client-urls")
            .arg(format!("http://127.0.0.1:{}", self.clients[i]))
            .arg("--listen-peer-urls")
            .arg(format!("http://127.0.0.1:{}", self.peers[i]))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://127.0.0.1:{}", self.peers[i]))
            .arg("--initial-cluster")
            .arg(initial.join(","))
            .arg("--initial-cluster-state")
            .arg("new")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd (apt-get install etcd-server)");
        self.procs[i] = Some(child);
    }

    fn wait_healthy(&self) {
        let eps = self.endpoints();
        wait_for(30, "etcd to answer", || {
            Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &eps, "endpoint", "health"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
    }

    /// `127.0.0.1:P1,127.0.0.1:P2,...` for `--etcd`.
    pub fn endpoints(&self) -> String {
        self.clients
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// SIGKILLs member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.procs[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its data directory.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        self.wait_healthy();
    }

    /// etcd's current revision (every write moves it).
    pub fn revision(&self) -> u64 {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoints(), "get", "/", "-w", "json"])
            .output()
            .expect("etcdctl");
        let text = String::from_utf8_lossy(&out.stdout);
        let i = text
            .find("\"revision\":")
            .expect("a revision in etcdctl's answer")
            + 11;
        text[i..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .expect("a revision")
    }

    /// `etcdctl get --prefix KEY` output, for failure messages.
    pub fn dump(&self, prefix: &str) -> String {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoints(), "get", "--prefix", prefix])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.procs.len() {
            self.kill(i);
        }
    }
}

/// A cluster member's fixed settings (so it can be restarted as itself).
#[derive(Clone)]
pub struct MemberSpec {
    pub name: String,
    pub port: u16,
    pub dir: PathBuf,
    pub args: Vec<String>,
}

impl MemberSpec {
    pub fn new(root: &Path, name: &str, etcd: &str, cluster: &str, extra: &[&str]) -> MemberSpec {
        let port = free_port();
        let mut args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--name",
            name,
            "--etcd",
            etcd,
            "--cluster",
            cluster,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        MemberSpec {
            name: name.into(),
            port,
            dir: root.join(name),
            args,
        }
    }

    pub fn start(&self) -> Node {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        Node::start(&self.dir, &args)
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// What `SENTINEL GET-MASTER-ADDR-BY-NAME` says on member `port`, if it answers.
pub fn master_addr(port: u16, cluster: &str) -> Option<String> {
    let c = redis::Client::open(format!("redis://127.0.0.1:{port}/")).ok()?;
    let mut c = c
        .get_connection_with_timeout(Duration::from_millis(500))
        .ok()?;
    c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let v: Option<Vec<String>> = redis::cmd("SENTINEL")
        .arg("GET-MASTER-ADDR-BY-NAME")
        .arg(cluster)
        .query(&mut c)
        .ok()?;
    v.map(|v| v.join(":"))
}
