//! `replidb bench`: the commit-latency benchmark. Starts a primary and replicas of its own
//! (child processes of this binary on 127.0.0.1, the primary with `ANY 1` of the replicas as
//! its sync-standbys) or drives a running node (`--target`), and for every durability mode
//! and client count runs single-key SETs of `--value-size` bytes, each client one connection
//! with one request in flight, for `--seconds`. Prints a table (or `--json`) of commits/s and
//! latency percentiles, with the server configuration each mode ran against.
//!
//! `--link-delay-ms N` puts a relay between the primary and its replicas that holds every
//! byte N/2 ms in each direction — a round trip N ms longer, as to another region — so one
//! run shows what a synchronous replica far away costs and that asynchronous commits do not
//! pay it.

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::client::Conn;
use storage::Durability;

#[derive(Args, Clone, Debug)]
pub struct BenchArgs {
    /// Replicas of the benchmark's own cluster (named r1, r2, ...; the primary waits for
    /// ANY 1 of them at the remote levels).
    #[arg(long, default_value_t = 2)]
    pub replicas: usize,

    /// Client counts to run, comma-separated; each client is one connection with one SET in
    /// flight.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub clients: Vec<usize>,

    /// Seconds each (mode, clients) pair is measured, after a warm-up of a fifth of that
    /// (at least a second).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,

    /// Durability modes, comma-separated: off, local, remote_write, remote_flush,
    /// remote_apply; `async` means local, `sync` remote_flush.
    #[arg(long, value_delimiter = ',', default_value = "local,remote_flush")]
    pub modes: Vec<String>,

    /// Drive a running node at HOST:PORT instead of starting a cluster (its own
    /// sync-standbys setting then decides what the remote modes wait for).
    #[arg(long, value_name = "HOST:PORT")]
    pub target: Option<String>,

    /// Password for --target.
    #[arg(long)]
    pub password: Option<String>,

    /// Own cluster: delay every byte between the primary and its replicas by N/2 ms each
    /// way (N ms more per round trip).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub link_delay_ms: u64,

    /// Size of each SET's value in bytes.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,

    /// Own cluster: where the nodes keep their data (default: a temporary directory,
    /// removed afterwards).
    #[arg(long)]
    pub dir: Option<PathBuf>,

    /// Print one JSON array of rows instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// One result row.
#[derive(Clone, Debug)]
pub struct Row {
    pub mode: &'static str,
    pub clients: usize,
    pub commits_per_s: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub errors: u64,
}

pub fn parse_mode(s: &str) -> Result<Durability> {
    match s.trim().to_ascii_lowercase().as_str() {
        "async" => Ok(Durability::Local),
        "sync" => Ok(Durability::RemoteFlush),
        m => Durability::parse(m).ok_or_else(|| {
            anyhow!("unknown mode {s:?}: expected off, local, remote_write, remote_flush, remote_apply, async or sync")
        }),
    }
}

pub fn run(args: BenchArgs) -> Result<()> {
    let modes: Vec<Durability> = args
        .modes
        .iter()
        .map(|m| parse_mode(m))
        .collect::<Result<_>>()?;
    if modes.is_empty() || args.clients.is_empty() || args.clients.contains(&0) {
        bail!("--modes and --clients need at least one entry, and client counts must be > 0");
    }
    if args.seconds == 0 {
        bail!("--seconds must be at least 1");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        let mut cluster = None;
        let target = match &args.target {
            Some(t) => t.clone(),
            None => {
                let c = Cluster::start(&args).await?;
                let t = format!("127.0.0.1:{}", c.primary_port);
                cluster = Some(c);
                t
            }
        };
        let setup = describe(&target, args.password.as_deref(), &args).await?;
        eprintln!("{setup}");
        let mut rows = Vec::new();
        for &mode in &modes {
            for &clients in &args.clients {
                let row = measure(&target, &args, mode, clients).await?;
                rows.push(row);
            }
        }
        if let Some(c) = cluster {
            c.stop();
        }
        if args.json {
            println!("{}", to_json(&rows));
        } else {
            print!("{}", table(&rows, &setup));
        }
        Ok(())
    })
}

/// What the modes ran against, from the primary's own INFO.
async fn describe(target: &str, password: Option<&str>, args: &BenchArgs) -> Result<String> {
    let mut c = Conn::connect(target, password).await?;
    let text = c.call(&["INFO", "replication"]).await?;
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}:")))
            .unwrap_or("")
            .trim()
            .to_string()
    };
    let server = c.call(&["INFO", "persistence"]).await.unwrap_or_default();
    let wal_io = server
        .lines()
        .find_map(|l| l.strip_prefix("wal_io:"))
        .unwrap_or("?")
        .trim()
        .to_string();
    Ok(format!(
        "server: {target} ({}), sync-standbys '{}', {} connected replicas, WAL I/O {wal_io}, link delay {} ms; each mode is a connection's DURABILITY level; SETs of {} bytes, {} s per row",
        if args.target.is_some() { "--target" } else { "own cluster" },
        field("sync_standbys"),
        field("connected_replicas"),
        if args.target.is_some() { 0 } else { args.link_delay_ms },
        args.value_size,
        args.seconds,
    ))
}

async fn measure(target: &str, args: &BenchArgs, mode: Durability, clients: usize) -> Result<Row> {
    let warmup = Duration::from_secs((args.seconds / 5).max(1));
    let measured = Duration::from_secs(args.seconds);
    let recording = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(clients);
    for id in 0..clients {
        let mut c = Conn::connect(target, args.password.as_deref()).await?;
        c.call(&["DURABILITY", mode.name()]).await?;
        let (recording, stop, done, errors) = (
            recording.clone(),
            stop.clone(),
            done.clone(),
            errors.clone(),
        );
        let value = vec![b'x'; args.value_size];
        tasks.push(tokio::spawn(async move {
            let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                .expect("valid histogram bounds");
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("bench:{id}:{}", i % 1024);
                i += 1;
                let t = Instant::now();
                let ok = c.set(key.as_bytes(), &value).await?;
                if recording.load(Ordering::Relaxed) {
                    if ok {
                        let _ = h.record(t.elapsed().as_micros().max(1) as u64);
                        done.fetch_add(1, Ordering::Relaxed);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            anyhow::Ok(h)
        }));
    }
    let label = format!("{} x{clients}", mode.name());
    tokio::time::sleep(warmup).await;
    recording.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut last = 0;
    while t0.elapsed() < measured {
        tokio::time::sleep(Duration::from_secs(1).min(measured.saturating_sub(t0.elapsed()))).await;
        let n = done.load(Ordering::Relaxed);
        let line = format!(
            "[{label}] {:>3.0}/{} s  {:>8.0} commits/s  {} errors",
            t0.elapsed().as_secs_f64(),
            args.seconds,
            (n - last) as f64,
            errors.load(Ordering::Relaxed)
        );
        last = n;
        if tty {
            eprint!("\r{line}   ");
        } else {
            eprintln!("{line}");
        }
    }
    recording.store(false, Ordering::Relaxed);
    let secs = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    if tty {
        eprintln!();
    }
    let mut all = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .expect("valid histogram bounds");
    for t in tasks {
        let h = t.await.context("client task")??;
        all.add(&h)
            .map_err(|e| anyhow!("merging histograms: {e}"))?;
    }
    let q = |p: f64| {
        if all.is_empty() {
            0
        } else {
            all.value_at_quantile(p)
        }
    };
    Ok(Row {
        mode: mode.name(),
        clients,
        commits_per_s: all.len() as f64 / secs,
        p50_us: q(0.5),
        p99_us: q(0.99),
        p999_us: q(0.999),
        errors: errors.load(Ordering::Relaxed),
    })
}

pub fn table(rows: &[Row], setup: &str) -> String {
    let mut o = format!("{setup}\n\n");
    o.push_str(&format!(
        "{:<14}{:>8}{:>13}{:>10}{:>10}{:>10}{:>8}\n",
        "mode", "clients", "commits/s", "p50_us", "p99_us", "p99.9_us", "errors"
    ));
    for r in rows {
        o.push_str(&format!(
            "{:<14}{:>8}{:>13.0}{:>10}{:>10}{:>10}{:>8}\n",
            r.mode, r.clients, r.commits_per_s, r.p50_us, r.p99_us, r.p999_us, r.errors
        ));
    }
    o
}

pub fn to_json(rows: &[Row]) -> String {
    let items: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{{\"mode\":\"{}\",\"clients\":{},\"commits_per_s\":{:.1},\"p50_us\":{},\"p99_us\":{},\"p999_us\":{}}}",
                r.mode, r.clients, r.commits_per_s, r.p50_us, r.p99_us, r.p999_us
            )
        })
        .collect();
    format!("[{}]", items.join(","))
}

/// The benchmark's own primary and replicas: child processes of this binary.
struct Cluster {
    children: Vec<Child>,
    primary_port: u16,
    _tmp: Option<tempfile::TempDir>,
}

impl Cluster {
    async fn start(args: &BenchArgs) -> Result<Cluster> {
        let (tmp, base) = match &args.dir {
            Some(d) => (None, d.clone()),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("replidb-bench-")
                    .tempdir()
                    .context("creating a temporary directory")?;
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        let names: Vec<String> = (1..=args.replicas).map(|i| format!("r{i}")).collect();
        let mut primary_args = vec!["--name".to_string(), "primary".to_string()];
        if !names.is_empty() {
            primary_args.push("--sync-standbys".into());
            primary_args.push(format!("ANY 1 ({})", names.join(", ")));
        }
        let mut cluster = Cluster {
            children: Vec::new(),
            primary_port: 0,
            _tmp: tmp,
        };
        let (child, port) = spawn_node(&base.join("primary"), &primary_args)?;
        cluster.children.push(child);
        cluster.primary_port = port;
        let upstream = format!("127.0.0.1:{port}");
        let link = if args.link_delay_ms > 0 {
            let relay = TcpListener::bind("127.0.0.1:0").await?;
            let addr = relay.local_addr()?.to_string();
            tokio::spawn(delay_relay(
                relay,
                upstream,
                Duration::from_micros(args.link_delay_ms * 500),
            ));
            addr
        } else {
            upstream
        };
        for n in &names {
            let a = vec![
                "--name".to_string(),
                n.clone(),
                "--replicaof".into(),
                link.clone(),
            ];
            let (child, _) = spawn_node(&base.join(n), &a)?;
            cluster.children.push(child);
        }
        // Wait until every replica streams.
        let mut c = Conn::connect(&format!("127.0.0.1:{port}"), None).await?;
        let t = Instant::now();
        loop {
            let text = c.call(&["INFO", "replication"]).await?;
            let streaming = text.matches("state=streaming").count();
            if streaming >= args.replicas {
                break;
            }
            if t.elapsed() > Duration::from_secs(60) {
                bail!("the replicas did not connect within 60 s:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(cluster)
    }

    fn stop(mut self) {
        // Replicas first (the primary is children[0]), so none logs a lost link.
        for c in self.children.iter_mut().rev() {
            // SIGTERM: a clean shutdown.
            let _ = Command::new("kill").arg(c.id().to_string()).status();
        }
        for c in self.children.iter_mut().rev() {
            let _ = c.wait();
        }
        self.children.clear();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts `replidb serve --dir DIR --port 0 ARGS` and returns it with the port it bound.
fn spawn_node(dir: &Path, args: &[String]) -> Result<(Child, u16)> {
    let exe = std::env::current_exe().context("finding this executable")?;
    let mut child = Command::new(exe)
        .arg("serve")
        .arg("--dir")
        .arg(dir)
        .args(["--port", "0"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting a node")?;
    let stderr = child.stderr.take().context("node stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    let label = dir
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent && line.contains("ready to accept connections") {
                if let Some(port) = line
                    .split("addr=")
                    .nth(1)
                    .and_then(|a| a.split_whitespace().next())
                    .and_then(|a| a.rsplit(':').next())
                    .and_then(|p| p.parse::<u16>().ok())
                {
                    let _ = tx.send(port);
                    sent = true;
                }
            } else if line.contains("ERROR") || line.contains("WARN") {
                let _ = writeln!(std::io::stderr(), "{label}: {line}");
            }
        }
    });
    let port = rx
        .recv_timeout(Duration::from_secs(60))
        .map_err(|_| anyhow!("a node in {} did not start within 60 s", dir.display()))?;
    Ok((child, port))
}

/// Accepts connections and forwards each to `upstream`, holding every chunk `delay` in each
/// direction (order kept).
async fn delay_relay(listener: TcpListener, upstream: String, delay: Duration) {
    while let Ok((down, _)) = listener.accept().await {
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let Ok(up) = TcpStream::connect(&upstream).await else {
                return;
            };
            let _ = up.set_nodelay(true);
            let _ = down.set_nodelay(true);
            let (dr, dw) = down.into_split();
            let (ur, uw) = up.into_split();
            tokio::join!(pump(dr, uw, delay), pump(ur, dw, delay));
        });
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let writer = async move {
        while let Some((at, bytes)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx
                        .send((tokio::time::Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_output_formats() {
        assert_eq!(parse_mode("sync").unwrap(), Durability::RemoteFlush);
        assert_eq!(parse_mode("async").unwrap(), Durability::Local);
        assert_eq!(parse_mode("remote_apply").unwrap(), Durability::RemoteApply);
        assert!(parse_mode("eventually").is_err());
        let rows = vec![Row {
            mode: "remote_flush",
            clients: 16,
            commits_per_s: 1234.5,
            p50_us: 400,
            p99_us: 900,
            p999_us: 2000,
            errors: 0,
        }];
        assert_eq!(
            to_json(&rows),
            r#"[{"mode":"remote_flush","clients":16,"commits_per_s":1234.5,"p50_us":400,"p99_us":900,"p999_us":2000}]"#
        );
        let t = table(&rows, "setup");
        assert!(t.contains("remote_flush") && t.contains("1234") && t.contains("p99.9_us"));
    }
}
