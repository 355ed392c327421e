//! `replidb archive --from HOST:PORT --dir ARCH [--name NAME]`: keeps a primary's WAL in a
//! directory, streaming like a replica that stores only the log
//! (`replication::archive`). Runs until SIGINT or SIGTERM; resumes where it stopped.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use replication::archive::{self, Archive};
use storage::Lsn;

use crate::client::{info_field, Conn};

#[derive(clap::Args, Debug)]
pub struct ArchiveArgs {
    /// The primary to archive, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub from: String,
    /// The archive directory (created if new; an archive resumes where it ended).
    #[arg(long, value_name = "ARCH")]
    pub dir: PathBuf,
    /// The name it streams under: the primary's INFO replication shows its position and
    /// lag under it, and `sync-standbys` can name it (then no acknowledged write is missing
    /// from the archive).
    #[arg(long, default_value = "archive")]
    pub name: String,
    /// The primary's --requirepass, if it has one.
    #[arg(long)]
    pub password: Option<String>,
}

/// A new archive begins where the primary's durable log ends now, on its history.
async fn begin(args: &ArchiveArgs, archive: &mut Archive) -> Result<()> {
    let from = args.from.as_str();
    let mut c = Conn::connect(from, args.password.as_deref())
        .await
        .with_context(|| format!("the primary {from}"))?;
    let info = c
        .call(&["INFO", "replication"])
        .await
        .with_context(|| format!("asking {from} where its log ends"))?;
    match info_field(&info, "role").as_deref() {
        Some("primary") => {}
        Some(role) => bail!("{from} is a {role}: a new archive starts from a primary"),
        None => bail!("{from} is not a replidb node (its INFO has no role)"),
    }
    let flush: u64 = info_field(&info, "flush_lsn")
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("{from}'s INFO has no flush_lsn"))?;
    let mut epochs = Vec::new();
    for e in info_field(&info, "epoch_history")
        .unwrap_or_default()
        .split(',')
        .filter(|e| !e.is_empty())
    {
        let parsed = e
            .split_once('@')
            .and_then(|(a, b)| Some((a.parse().ok()?, Lsn(b.parse().ok()?))));
        match parsed {
            Some(p) => epochs.push(p),
            None => bail!("{from}'s epoch_history has a bad entry {e:?}"),
        }
    }
    archive.begin(Lsn(flush), epochs)?;
    Ok(())
}

pub fn run(args: ArchiveArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        let mut archive = Archive::open(&args.dir)?;
        if archive.start().is_none() {
            begin(&args, &mut archive).await?;
        }
        tracing::info!(
            dir = %args.dir.display(),
            from = archive.start().unwrap_or(archive.end()).0,
            end = archive.end().0,
            "archive open"
        );
        let (stop_tx, mut stop) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            else {
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            let _ = stop_tx.send(true);
        });
        let config = replication::NodeConfig {
            dir: args.dir.clone(),
            name: args.name.clone(),
            primary_password: args.password.clone(),
            max_retained_wal: 0,
            storage: storage::Options::default(),
            transport: replication::wire::transport::Transport::Tcp,
            node_id: replication::identity::new_node_id(),
        };
        let mut backoff = Duration::from_millis(50);
        loop {
            let r = archive::stream(&config, &args.from, &mut archive, &mut stop).await;
            if *stop.borrow() {
                break;
            }
            match r {
                Ok(()) => backoff = Duration::from_millis(50),
                Err(e) if archive::is_fatal(&e) => {
                    return Err(anyhow::Error::new(e).context("archiving stopped"))
                }
                Err(e) => {
                    tracing::warn!(primary = %args.from, error = %format!("{e:#}"), retry_in_ms = backoff.as_millis() as u64, "archive link down")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => break,
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        let end = archive.sync()?;
        println!(
            "archive in {}: WAL from LSN {} to LSN {}",
            args.dir.display(),
            archive.start().map_or(end.0, |s| s.0),
            end.0
        );
        Ok(())
    })
}
