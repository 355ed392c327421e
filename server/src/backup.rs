//! `replidb backup --from HOST:PORT --out DIR`: an online base backup over the replication
//! protocol, while writes go on.
//!
//! The backup is a replica for a moment, run in this process: it is seeded from the source's
//! page file (copied while writes continue), streams the WAL from the checkpoint the copy
//! started at until its pages are consistent (the same gate a new replica waits at before it
//! serves reads), and is then promoted: DIR holds a standalone primary of a new epoch, at a
//! consistent LSN the last line names. The source is then asked to forget the backup
//! (`FORGETREPLICA`), so it does not keep WAL for it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use crate::client::{info_field, Conn};
use crate::config::{Config, ServeArgs};
use crate::reply::Reply;
use crate::server::Server;

#[derive(clap::Args, Debug)]
pub struct BackupArgs {
    /// The node to copy, HOST:PORT: a primary, or a replica (its copy then ends where its
    /// replay stands).
    #[arg(long, value_name = "HOST:PORT")]
    pub from: String,
    /// The directory to create; it must not exist, or be empty.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// The name the backup streams under while it runs (in the source's INFO replication).
    /// [default: backup-<milliseconds since the epoch>]
    #[arg(long)]
    pub name: Option<String>,
    /// The source's --requirepass, if it has one.
    #[arg(long)]
    pub password: Option<String>,
}

/// Whether `dir` is absent or an empty directory (where a new data directory may go).
pub(crate) fn is_new(dir: &Path) -> Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e).with_context(|| format!("reading {}", dir.display())),
    }
}

fn bytes_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar
}

pub fn run(args: BackupArgs) -> Result<()> {
    if !is_new(&args.out)? {
        bail!(
            "{} is not empty: a backup goes into a new (or empty) directory",
            args.out.display()
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let out = args.out.clone();
    let existed = out.exists();
    let r = rt.block_on(backup(args));
    if r.is_err() {
        // Nothing half-made is left to be mistaken for a backup: the directory goes if this
        // made it, else what was put in it.
        if existed {
            for e in std::fs::read_dir(&out).into_iter().flatten().flatten() {
                let p = e.path();
                let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
            }
        } else {
            let _ = std::fs::remove_dir_all(&out);
        }
    }
    r
}

async fn backup(args: BackupArgs) -> Result<()> {
    let from = args.from.as_str();
    let mut source = Conn::connect(from, args.password.as_deref())
        .await
        .with_context(|| format!("the source {from}"))?;
    let info = source
        .call(&["INFO", "everything"])
        .await
        .with_context(|| format!("asking {from} what it is"))?;
    if info_field(&info, "replidb_version").is_none() {
        bail!("{from} is not a replidb node (its INFO has no replidb_version): a backup copies a replidb node over its replication protocol");
    }
    let total: u64 = info_field(&info, "page_file_bytes")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let source_epoch = info_field(&info, "epoch").unwrap_or_default();
    let name = args.name.clone().unwrap_or_else(|| {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        format!("backup-{ms}")
    });
    let config = Config::resolve(ServeArgs {
        dir: Some(args.out.clone()),
        bind: Some("127.0.0.1".into()),
        port: Some(0),
        replicaof: Some(from.to_string()),
        name: Some(name.clone()),
        primary_password: args.password.clone(),
        // The copy is read by nobody while it runs: no background scrub or drift check.
        scrub_interval: Some("0".into()),
        verify_interval: Some("0".into()),
        ..ServeArgs::default()
    })?;
    // Phase 1: the page file, copied while the source takes writes.
    let bar = bytes_bar(total);
    bar.set_message("pages");
    let pages_file = args.out.join("pages.db");
    let start = Server::start(config);
    tokio::pin!(start);
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let server = loop {
        tokio::select! {
            r = &mut start => match r {
                Ok(s) => break s,
                Err(e) => {
                    // The copy may have registered on the source before it failed.
                    forget(&mut source, &name).await;
                    return Err(e.context("copying the source's pages"));
                }
            },
            _ = &mut interrupted => {
                forget(&mut source, &name).await;
                bail!("interrupted");
            }
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                let done = std::fs::metadata(&pages_file).map_or(0, |m| m.len());
                bar.set_length(total.max(done));
                bar.set_position(done);
            }
        }
    };
    let done = std::fs::metadata(&pages_file).map_or(0, |m| m.len());
    bar.set_length(done);
    bar.finish_with_message("pages");
    // Phases 2 and 3; whatever happens, the source forgets the backup afterwards.
    let r = catch_up_and_promote(server, &mut interrupted).await;
    forget(&mut source, &name).await;
    let (begun, epoch) = r?;
    println!(
        "backup of {from} (epoch {source_epoch}) in {}: consistent at LSN {begun}; `replidb serve --dir {}` serves it as a standalone primary of epoch {epoch}",
        args.out.display(),
        args.out.display(),
    );
    Ok(())
}

/// How long the copy may go without a link to the source before it gives up.
const LINK_PATIENCE: Duration = Duration::from_secs(30);

/// Streams the copy to its consistency gate, promotes it and closes it; returns the LSN its
/// own epoch begins at (the consistent point) and that epoch.
async fn catch_up_and_promote(
    server: Server,
    interrupted: &mut std::pin::Pin<&mut impl std::future::Future>,
) -> Result<(u64, u32)> {
    // Phase 2: the WAL from the copy's checkpoint until the pages are consistent.
    let shared = server.shared();
    let wal = ProgressBar::new(0);
    wal.set_style(
        ProgressStyle::with_template("{msg:10} [{bar:30}] {bytes}/{total_bytes} of WAL")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    wal.set_message("wal");
    let ready = server.ready();
    tokio::pin!(ready);
    let mut first: Option<u64> = None;
    let mut linked = std::time::Instant::now();
    loop {
        if shared
            .node
            .link_up
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            linked = std::time::Instant::now();
        } else if linked.elapsed() > LINK_PATIENCE {
            bail!("lost the source for {LINK_PATIENCE:?} before the copy was consistent");
        }
        tokio::select! {
            () = &mut ready => break,
            _ = interrupted.as_mut() => bail!("interrupted"),
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if let Some((at, target)) = shared.loading() {
                    let from = *first.get_or_insert(at);
                    if target != u64::MAX {
                        wal.set_length(target.saturating_sub(from));
                        wal.set_position(at.saturating_sub(from));
                    }
                }
            }
        }
    }
    wal.finish_with_message("wal");
    if shared.loading().is_some() || !shared.node.is_replica_role() {
        bail!("the backup stopped before its pages were consistent");
    }
    // Consistent: promoted, it stops streaming and starts an epoch of its own.
    let node = shared.node.clone();
    replication::role::promote(&node)
        .await
        .context("promoting the backup to a standalone primary")?;
    let db = node.db();
    let (lsn, epoch) = (db.apply_lsn(), db.epoch());
    let begun = db.epoch_history().last().map_or(lsn.0, |&(_, at)| at.0);
    drop(db);
    // Only the server holds the database now, so closing it closes the files.
    drop(node);
    drop(shared);
    let _ = server.shutdown_handle().send(true);
    server.run().await.context("closing the backup")?;
    Ok((begun, epoch))
}

/// Asks the source to forget the backup's replica entry (it keeps WAL for known replicas).
/// The source may not have seen the link close yet: tried for a few seconds.
async fn forget(source: &mut Conn, name: &str) {
    for _ in 0..50 {
        match source
            .call_reply(&[b"FORGETREPLICA", name.as_bytes()], 1024)
            .await
        {
            Ok(Reply::Int(_)) => return,
            Ok(Reply::Error(e)) if e.contains("is connected") => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            other => {
                eprintln!("warning: the source did not forget the backup's entry {name} ({other:?}); it keeps WAL for it up to --max-retained-wal: run FORGETREPLICA {name} on it");
                return;
            }
        }
    }
    eprintln!("warning: the source still shows the backup {name} as connected; run FORGETREPLICA {name} on it once it does not");
}
