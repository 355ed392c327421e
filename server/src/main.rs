//! `replidb`: run a node (`serve`), a ready-to-use local instance (`demo`), or check a data
//! directory offline (`check`, `stats`).

#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use replidb_server::config::{Config, ServeArgs};
use replidb_server::server::Server;
use storage::{Db, Options};

#[derive(Parser)]
#[command(
    name = "replidb",
    version,
    about = "replidb: a B+tree storage engine with built-in physical replication, spoken to over RESP",
    long_about = "replidb: a key-value storage engine with built-in physical replication. \
                  Every change goes to a write-ahead log first; clients speak RESP, so redis-cli \
                  and any Redis client library work.\n\n\
                  Start with `replidb demo`, then `redis-cli -p 6380`."
)]
struct Cli {
    /// Log level (error, warn, info, debug, trace) or a tracing filter; RUST_LOG overrides it.
    /// [default: info; warn for backup, whose progress bars it would break up]
    #[arg(long, global = true)]
    log_level: Option<String>,

    #[command(subcommand)]
    command: Command,
}

// Parsed once at start-up: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run a node — a primary, or a replica with --replicaof — serving RESP clients on
    /// --bind:--port with its data in --dir.
    Serve(ServeArgs),
    /// Run a ready-to-use local cluster: a primary on 127.0.0.1:6380 and two replicas (r1,
    /// r2) on 6381 and 6382, data under ./replidb-demo unless --dir says otherwise; prints how
    /// to connect once both replicas serve reads. Ctrl-C stops them cleanly.
    Demo {
        /// Data directory for the demo.
        #[arg(long, default_value = "replidb-demo")]
        dir: PathBuf,
        /// The primary's port (the replicas take the next two).
        #[arg(long, default_value_t = 6380)]
        port: u16,
        /// Instead: a three-member etcd (needs etcd on the PATH) and a three-member cluster
        /// with automatic failover, each member its own process on PORT, PORT+1, PORT+2;
        /// prints how to kill the primary and watch a replica take over.
        #[arg(long)]
        etcd: bool,
        /// With --etcd: the first etcd member's client port (the others take +2 and +4; each
        /// peer port is one above its client port).
        #[arg(long, default_value_t = 2379, requires = "etcd")]
        etcd_port: u16,
    },
    /// The commit-latency benchmark: starts a primary and replicas (or drives --target) and
    /// measures commits/s and latency percentiles per durability mode and client count.
    Bench(replidb_server::bench::BenchArgs),
    /// Check a stopped node's data directory: its WAL (damage, not only a torn tail), every
    /// page's checksum and every invariant of the tree. Exits non-zero naming each damaged
    /// WAL record and page.
    Check {
        /// Data directory.
        #[arg(long)]
        dir: PathBuf,
        /// Cut the WAL at damage and keep what precedes it, losing every commit after it —
        /// for when no replica or backup holds the log (with one, start this node as its
        /// replica instead: it then takes the rest from it).
        #[arg(long)]
        cut_wal_at_damage: bool,
    },
    /// Copy a running node into a new data directory while it takes writes (an online base
    /// backup over the replication protocol), with progress; the copy is consistent at the
    /// LSN the last line names, and `replidb serve --dir DIR` serves it as a standalone
    /// primary of a new epoch.
    Backup(replidb_server::backup::BackupArgs),
    /// Keep a primary's WAL in a directory, streaming like a replica that stores only the
    /// log (it can be a named sync standby); resumes where it stopped; runs until SIGINT or
    /// SIGTERM. With a backup taken after it began, the archive restores to any point.
    Archive(replidb_server::archive::ArchiveArgs),
    /// Point-in-time restore: a backup rolled forward through a WAL archive to the last
    /// commit at or before --until-time or --until-lsn (default: the archive's end), into a
    /// new directory that serves as a standalone primary of a new epoch.
    Restore(replidb_server::restore::RestoreArgs),
    /// Print counters of a stopped node's data directory.
    Stats {
        /// Data directory.
        #[arg(long)]
        dir: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The error and its causes, one line: an expected failure (a damaged log, a port
            // in use, a bad flag) is not a crash, and gets no backtrace.
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| {
            let quiet = matches!(cli.command, Command::Backup(_) | Command::Restore(_));
            let default = if quiet { "warn" } else { "info" };
            tracing_subscriber::EnvFilter::try_new(cli.log_level.as_deref().unwrap_or(default))
        })
        .context("bad --log-level")?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Serve(args) => serve(Config::resolve(args)?, None),
        Command::Demo {
            dir,
            port,
            etcd: true,
            etcd_port,
        } => replidb_server::cluster_demo::run(dir, port, etcd_port),
        Command::Demo { dir, port, .. } => demo(dir, port),
        Command::Bench(args) => replidb_server::bench::run(args),
        Command::Check {
            dir,
            cut_wal_at_damage,
        } => check(dir, cut_wal_at_damage),
        Command::Stats { dir } => stats(dir),
        Command::Backup(args) => replidb_server::backup::run(args),
        Command::Archive(args) => replidb_server::archive::run(args),
        Command::Restore(args) => replidb_server::restore::run(args),
    }
}

/// A primary and two replicas (r1, r2) in one process, on PORT, PORT+1, PORT+2.
fn demo(dir: PathBuf, port: u16) -> Result<()> {
    let node = |sub: &str, p: u16, replicaof: Option<String>, name: &str| {
        // The primary waits for either replica at remote_flush (SPEC's demo).
        let sync_standbys = replicaof.is_none().then(|| "ANY 1 (r1, r2)".to_string());
        Config::resolve(ServeArgs {
            dir: Some(dir.join(sub)),
            port: Some(p),
            replicaof,
            name: Some(name.into()),
            sync_standbys,
            ..Default::default()
        })
    };
    let primary = node("primary", port, None, "primary")?;
    let r1 = node("r1", port + 1, Some(format!("127.0.0.1:{port}")), "r1")?;
    let r2 = node("r2", port + 2, Some(format!("127.0.0.1:{port}")), "r2")?;
    // Three nodes in one process: two workers unless told otherwise.
    let rt = runtime_builder(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        // The primary serves before the replicas start: new ones seed themselves from it.
        let p = Server::start(primary).await?;
        let p_stop = p.shutdown_handle();
        let p_run = tokio::spawn(p.run());
        let a = Server::start(r1).await?;
        let b = Server::start(r2).await?;
        // The banner says the replicas are ready for reads: wait until both have replayed
        // to a consistent point (a GET before that gets LOADING).
        let (a_ready, b_ready) = (a.ready(), b.ready());
        let stopping = p_stop.subscribe();
        let stops = [a.shutdown_handle(), b.shutdown_handle(), p_stop];
        let a_run = tokio::spawn(a.run());
        let b_run = tokio::spawn(b.run());
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("SIGINT: shutting down the demo");
            for s in &stops {
                let _ = s.send(true);
            }
        });
        let both = async { tokio::join!(a_ready, b_ready) };
        tokio::pin!(both);
        while tokio::time::timeout(std::time::Duration::from_secs(5), &mut both)
            .await
            .is_err()
        {
            tracing::warn!("still waiting for the replicas to connect and catch up (see their log lines above)");
        }
        if !*stopping.borrow() {
            println!(
            "\nreplidb demo: a primary and two replicas, data under {}\n  (sync-standbys 'ANY 1 (r1, r2)': a write is acknowledged once one replica has it on disk)\n\n  primary  127.0.0.1:{port}   redis-cli -p {port}\n  r1       127.0.0.1:{}   redis-cli -p {}   (read-only)\n  r2       127.0.0.1:{}   redis-cli -p {}   (read-only)\n\n  redis-cli -p {port} SET greeting hello\n  redis-cli -p {} GET greeting\n  redis-cli -p {port} INFO replication\n\nCtrl-C stops all three; the data stays for next time.\n",
            dir.display(),
            port + 1,
            port + 1,
            port + 2,
            port + 2,
            port + 1
        );
        }
        // Every node is awaited (and so closed cleanly) before any error is returned.
        let y = a_run.await.context("r1's task");
        let z = b_run.await.context("r2's task");
        let x = p_run.await.context("the primary's task");
        x.and_then(|r| r).and(y.and_then(|r| r)).and(z.and_then(|r| r))
    })
}

fn serve(config: Config, banner: Option<String>) -> Result<()> {
    let rt = runtime_builder(1)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        let server = Server::start(config).await?;
        if let Some(b) = banner {
            println!("{b}");
        }
        let stop = server.shutdown_handle();
        tokio::spawn(async move {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot watch SIGTERM");
                        return;
                    }
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            }
            let _ = stop.send(true);
        });
        server.run().await
    })
}

/// The runtime: one event-loop thread for a server (Redis's model; the demo's three nodes in
/// one process get two), or `REPLIDB_THREADS=N` workers. The
/// replication links, checkpoints and the syncs of commits that arrive together run on
/// threads of their own (a lone commit's sync runs on the event loop: nothing else waits), so
/// the event loop mostly parses, applies and replies. Measured against two workers after the
/// background flusher took over shared rounds: 53–61k against 46–48k SET/s with 50 clients,
/// 610–700k against 585–740k pipelined GET/s, and in `replidb bench` local × 64 57k against
/// 45k commits/s (docs/benchmarks.md).
fn runtime_builder(default: usize) -> tokio::runtime::Builder {
    let n = std::env::var("REPLIDB_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(default);
    if n <= 1 {
        return tokio::runtime::Builder::new_current_thread();
    }
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.worker_threads(n);
    b
}

fn open_existing(dir: &PathBuf, options: Options) -> Result<Db> {
    if !dir.join(storage::PAGE_FILE).exists() {
        bail!(
            "{} holds no replidb data ({} is missing)",
            dir.display(),
            storage::PAGE_FILE
        );
    }
    // Only to look: nothing is appended to the log (see `Options::inspect`).
    let options = Options {
        inspect: true,
        ..options
    };
    Db::open(dir, options).with_context(|| format!("opening {}", dir.display()))
}

fn check(dir: PathBuf, cut_wal_at_damage: bool) -> Result<()> {
    // The log first, read only: opening the database recovers, and recovery cuts a torn
    // tail (and, on a replica or when told to, damage).
    let mut options = Options::default();
    if dir.join(storage::CONTROL_FILE).exists() {
        let w = storage::check_wal(&dir, &Options::default())
            .with_context(|| format!("reading the WAL in {}", dir.display()))?;
        if let Some(d) = &w.damage {
            eprintln!(
                "damaged WAL record: {} (file {})",
                d,
                dir.join(storage::WAL_DIR).join(&d.segment).display()
            );
            if !cut_wal_at_damage {
                bail!(
                    "the WAL in {} is damaged at LSN {}; starting this node as a primary is \
                     refused. Keep the directory as it is and get the log from a copy: promote \
                     a replica that has it and start this node with --replicaof pointing at it \
                     (it cuts the damaged log and takes the rest from there), or restore from \
                     a backup. With no copy anywhere, `replidb check --dir {} \
                     --cut-wal-at-damage` keeps the log up to LSN {} and loses every commit \
                     after it.",
                    dir.display(),
                    d.lsn,
                    dir.display(),
                    w.end
                );
            }
            options.truncate_damaged_wal = true;
            println!(
                "cutting the WAL at LSN {}: the commits after it are lost",
                w.end
            );
        } else if let Some(next) = w.unproven_after {
            println!(
                "wal: valid records follow the end at LSN {} (from LSN {next}), but none was \
                 written after the log was synced past it: the torn tail of an unsynced flush \
                 (a power loss), discarded at start; nothing in it was acknowledged",
                w.end
            );
        }
        println!(
            "wal: {} records ({} commits) from LSN {} to {}{}",
            w.records,
            w.commits,
            w.redo,
            w.end,
            if w.discarded {
                format!("; a torn tail after it ({}) is discarded at start", w.stop)
            } else {
                String::new()
            }
        );
    }
    let db = open_existing(&dir, options)?;
    // Every damaged page, not only the first a walk of the tree meets.
    let damaged = db.damaged_pages();
    if !damaged.is_empty() {
        for (id, why) in &damaged {
            eprintln!("damaged page {id}: {why}");
        }
        bail!(
            "{} damaged page(s) in {}: copy the data from a replica, or restore from a backup",
            damaged.len(),
            dir.join(storage::PAGE_FILE).display()
        );
    }
    let r = db.check_integrity().context("integrity check failed")?;
    println!(
        "ok: {} entries, depth {}, {} pages ({} branch, {} leaf, {} overflow, {} heap \
         holding {} value bytes, {} free)",
        r.entries,
        r.depth,
        r.page_count,
        r.branch_pages,
        r.leaf_pages,
        r.overflow_pages,
        r.heap_pages,
        r.heap_bytes,
        r.free_pages
    );
    Ok(())
}

fn stats(dir: PathBuf) -> Result<()> {
    let db = open_existing(&dir, Options::default())?;
    let s = db.stats();
    println!("entries:{}", s.entries);
    println!("page_count:{}", s.page_count);
    println!("free_pages:{}", s.free_pages);
    println!("file_bytes:{}", s.file_bytes);
    println!("last_lsn:{}", s.last_lsn);
    println!("redo_lsn:{}", s.redo_lsn);
    Ok(())
}
