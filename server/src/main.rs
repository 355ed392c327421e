//! `replidb`: the server binary. For now it carries the commands that work on the embedded
//! engine (a demo, an offline integrity check, statistics); `serve` and the replicated
//! cluster demo arrive with the server and replication work.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use rand::{Rng, SeedableRng};
use storage::{Db, Durability, Options, WriteBatch};

#[derive(Parser)]
#[command(
    name = "replidb",
    version,
    about = "replidb: a B+tree storage engine with built-in physical replication",
    long_about = "replidb: a B+tree storage engine with built-in physical replication.\n\n\
                  This build carries the embedded storage engine; the network server \
                  (`serve`) and replication arrive next."
)]
struct Cli {
    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the embedded engine at work: load keys, read them back, scan, reopen, verify.
    Demo {
        /// Database directory (default: a fresh directory under the system temp dir).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Number of keys to load.
        #[arg(long, default_value_t = 200_000)]
        keys: u64,
    },
    /// Check every invariant of a database directory (offline; the database must not be
    /// open elsewhere). Exits non-zero and names the damaged page if anything is wrong.
    Check {
        /// Database directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Print counters of a database directory (offline).
    Stats {
        /// Database directory.
        #[arg(long)]
        dir: PathBuf,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cli.log_level))
        .context("bad --log-level")?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Demo { dir, keys } => demo(dir, keys),
        Command::Check { dir } => check(dir),
        Command::Stats { dir } => stats(dir),
    }
}

fn open_existing(dir: &PathBuf) -> Result<Db> {
    if !dir.join(storage::PAGE_FILE).exists() {
        bail!(
            "{} holds no replidb database ({} is missing)",
            dir.display(),
            storage::PAGE_FILE
        );
    }
    Db::open(dir, Options::default()).with_context(|| format!("opening {}", dir.display()))
}

fn check(dir: PathBuf) -> Result<()> {
    let db = open_existing(&dir)?;
    let r = db.check_integrity().context("integrity check failed")?;
    println!(
        "ok: {} entries, depth {}, {} pages ({} branch, {} leaf, {} overflow, {} free)",
        r.entries,
        r.depth,
        r.page_count,
        r.branch_pages,
        r.leaf_pages,
        r.overflow_pages,
        r.free_pages
    );
    Ok(())
}

fn stats(dir: PathBuf) -> Result<()> {
    let db = open_existing(&dir)?;
    let s = db.stats();
    println!("entries:{}", s.entries);
    println!("page_count:{}", s.page_count);
    println!("free_pages:{}", s.free_pages);
    println!("file_bytes:{}", s.file_bytes);
    println!("last_lsn:{}", s.last_lsn);
    Ok(())
}

fn demo(dir: Option<PathBuf>, keys: u64) -> Result<()> {
    let dir = dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("replidb-demo-{}", std::process::id()))
    });
    println!("replidb embedded demo in {}", dir.display());
    let db = Db::open(&dir, Options::default())?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let key = |i: u64| {
        format!(
            "user:{:010}",
            i.wrapping_mul(2_654_435_761) % 10_000_000_000
        )
    };

    let t = Instant::now();
    for chunk in (0..keys).collect::<Vec<_>>().chunks(1000) {
        let mut b = WriteBatch::new();
        for &i in chunk {
            let v: Vec<u8> = (0..rng.gen_range(20..200))
                .map(|_| rng.gen_range(b'a'..=b'z'))
                .collect();
            b.put(key(i), v);
        }
        db.commit(&b, Durability::Local)?;
    }
    let el = t.elapsed();
    println!(
        "loaded {keys} keys in durable batches of 1000: {:.0} keys/s",
        keys as f64 / el.as_secs_f64()
    );

    let t = Instant::now();
    let snap = db.read();
    let mut hits = 0u64;
    for i in 0..keys {
        hits += u64::from(snap.get(key(i).as_bytes())?.is_some());
    }
    drop(snap);
    println!(
        "read them back: {hits} found, {:.0} gets/s",
        keys as f64 / t.elapsed().as_secs_f64()
    );
    if hits != keys {
        bail!("{} keys missing", keys - hits);
    }

    let t = Instant::now();
    let first: Vec<_> = db
        .range(&b"user:5"[..]..)
        .take(3)
        .collect::<storage::Result<_>>()?;
    for (k, v) in &first {
        println!(
            "  {} = {}",
            String::from_utf8_lossy(k),
            String::from_utf8_lossy(&v[..v.len().min(24)])
        );
    }
    let n = db.read().range(..)?.count();
    println!("full ordered scan: {n} entries in {:?}", t.elapsed());

    let mut b = WriteBatch::new();
    for i in (0..keys).step_by(2) {
        b.delete(key(i));
    }
    db.commit(&b, Durability::Local)?;
    println!("deleted every other key: {} left", db.len());
    db.close()?;

    let db = Db::open(&dir, Options::default())?;
    let r = db.check_integrity()?;
    println!(
        "reopened: {} entries, tree depth {}, {} pages ({} free for reuse); integrity ok",
        r.entries, r.depth, r.page_count, r.free_pages
    );
    println!(
        "try: replidb check --dir {}   |   replidb stats --dir {}",
        dir.display(),
        dir.display()
    );
    Ok(())
}
