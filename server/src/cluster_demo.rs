//! `replidb demo --etcd`: a three-member etcd and a three-member replidb cluster on
//! 127.0.0.1, each a process of its own so that killing the primary is real. Prints how to
//! kill it and watch a replica take over; Ctrl-C stops everything (the data stays).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The cluster's name (what Sentinel clients ask for).
const CLUSTER: &str = "demo";

struct Children(Vec<(String, Child)>);

impl Drop for Children {
    fn drop(&mut self) {
        // replidb members first (SIGTERM: a clean stop), then etcd.
        for (_, c) in self.0.iter_mut().rev() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
        }
        for (name, c) in self.0.iter_mut().rev() {
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if let Ok(None) = c.try_wait() {
                eprintln!("{name} did not stop in 10 s: killing it");
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn log_file(dir: &Path, name: &str) -> Result<std::fs::File> {
    let p = dir.join(format!("{name}.log"));
    std::fs::File::create(&p).with_context(|| format!("creating {}", p.display()))
}

fn answers(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

fn wait_until(what: &str, secs: u64, mut cond: impl FnMut() -> bool) -> Result<()> {
    let t = Instant::now();
    while !cond() {
        if t.elapsed() > Duration::from_secs(secs) {
            bail!("timed out after {secs} s waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Runs the demo until Ctrl-C. `port`: the first member's client port (the others take the
/// next two); etcd listens on `etcd_port`, +2, +4 (peers one above each).
pub fn run(dir: PathBuf, port: u16, etcd_port: u16) -> Result<()> {
    if Command::new("etcd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        bail!("`replidb demo --etcd` needs etcd on the PATH (Debian: apt-get install etcd-server)");
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let exe = std::env::current_exe().context("finding the replidb binary")?;
    let clients: Vec<u16> = (0..3).map(|i| etcd_port + 2 * i).collect();
    let initial: Vec<String> = (0..3)
        .map(|i| format!("e{i}=http://127.0.0.1:{}", clients[i] + 1))
        .collect();
    let mut children = Children(Vec::new());
    for (i, &c) in clients.iter().enumerate() {
        let data = dir.join(format!("etcd{i}"));
        let fresh = !data.exists();
        let child = Command::new("etcd")
            .arg("--name")
            .arg(format!("e{i}"))
            .arg("--data-dir")
            .arg(&data)
            .arg("--listen-client-urls")
            .arg(format!("http://127.0.0.1:{c}"))
            .arg("--advertise-client-urls")
            .arg(format!("http://127.0.0.1:{c}"))
            .arg("--listen-peer-urls")
            .arg(format!("http://127.0.0.1:{}", c + 1))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://127.0.0.1:{}", c + 1))
            .arg("--initial-cluster")
            .arg(initial.join(","))
            .arg("--initial-cluster-state")
            .arg(if fresh { "new" } else { "existing" })
            .stdout(Stdio::null())
            .stderr(log_file(&dir, &format!("etcd{i}"))?)
            .spawn()
            .context("starting etcd")?;
        children.0.push((format!("etcd e{i}"), child));
    }
    wait_until("etcd to listen", 30, || clients.iter().all(|&c| answers(c)))?;
    let endpoints: Vec<String> = clients.iter().map(|c| format!("127.0.0.1:{c}")).collect();
    let endpoints = endpoints.join(",");
    let mut lines = Vec::new();
    for i in 0..3u16 {
        let name = format!("n{}", i + 1);
        let p = port + i;
        let args: Vec<String> = [
            "serve",
            "--dir",
            &dir.join(&name).display().to_string(),
            "--port",
            &p.to_string(),
            "--name",
            &name,
            "--etcd",
            &endpoints,
            "--cluster",
            CLUSTER,
            "--failover-ttl-ms",
            "2000",
            "--sync-standbys",
            "ANY 1 (*)",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let child = Command::new(&exe)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(log_file(&dir, &name)?)
            .spawn()
            .with_context(|| format!("starting member {name}"))?;
        lines.push(format!(
            "  {name}  127.0.0.1:{p}  pid {:<7}  log {}",
            child.id(),
            dir.join(format!("{name}.log")).display()
        ));
        children.0.push((name.clone(), child));
        // The first member leads an empty cluster; the others then seed from it.
        wait_until(&format!("{name} to listen"), 60, || answers(p))?;
    }
    println!(
        "\nreplidb demo --etcd: a three-member etcd ({endpoints}) and a cluster '{CLUSTER}' of three members\n  (sync-standbys 'ANY 1 (*)', failover TTL 2 s; data and logs under {})\n\n{}\n\n  redis-cli -p {port} SENTINEL get-master-addr-by-name {CLUSTER}   # who is primary (any member answers)\n  redis-cli -p {port} INFO cluster                                  # leader, lease, failovers, failover_blocked\n\nKill the primary and watch a replica take over within about 3 s:\n  kill -9 <its pid above>\n  redis-cli -p {} SENTINEL get-master-addr-by-name {CLUSTER}\nA killed member rejoins as a replica when started again with the same command line (see `ps`).\nCtrl-C stops everything; the data stays for next time.\n",
        dir.display(),
        lines.join("\n"),
        port + 1,
    );
    let (tx, rx) = std::sync::mpsc::channel();
    ctrlc_channel(tx)?;
    let _ = rx.recv();
    eprintln!("stopping the demo");
    drop(children);
    Ok(())
}

/// Sends on `tx` at SIGINT or SIGTERM.
fn ctrlc_channel(tx: std::sync::mpsc::Sender<()>) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    std::thread::spawn(move || {
        rt.block_on(async move {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => {
                        let _ = tokio::signal::ctrl_c().await;
                        let _ = tx.send(());
                        return;
                    }
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            let _ = tx.send(());
        });
    });
    Ok(())
}
