//! `replidb restore --backup DIR --wal ARCH --out DIR2 [--until-time T | --until-lsn N]`:
//! point-in-time restore from a backup (`replidb backup`) and a WAL archive
//! (`replidb archive`).
//!
//! A backup is a primary of its own epoch that began at its consistent LSN B, with nothing
//! after it but that epoch's start and checkpoints (checked: a backup that has been served is
//! refused). Its pages are the source's state at B. The restore lays them down in DIR2 as a
//! replica at B on the shared history (the backup's history less its own epoch), replays the
//! archive from B to the last commit at or before the target — commit records carry their
//! time — with the same redo as a replica, and promotes DIR2 to an epoch newer than any
//! either has seen.

use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use replication::archive::ArchiveReader;
use storage::internals::record::{self, Body};
use storage::{Lsn, Options, Seeder, PAGE_SIZE};

#[derive(clap::Args, Debug)]
pub struct RestoreArgs {
    /// A backup taken by `replidb backup` (it is read, never changed).
    #[arg(long, value_name = "DIR")]
    pub backup: PathBuf,
    /// The WAL archive (`replidb archive`) that began before the backup was taken.
    #[arg(long, value_name = "ARCH")]
    pub wal: PathBuf,
    /// The directory to create; it must not exist, or be empty.
    #[arg(long, value_name = "DIR2")]
    pub out: PathBuf,
    /// Replay up to the last commit made at or before this time, in UTC, RFC 3339
    /// (2026-12-04T20:31:07Z, fractions of a second allowed). [default: the archive's end]
    #[arg(long, value_name = "RFC3339", conflicts_with = "until_lsn")]
    pub until_time: Option<String>,
    /// Replay up to the last commit that ends at or before this LSN.
    #[arg(long, value_name = "N")]
    pub until_lsn: Option<u64>,
}

/// Where the replay stops.
#[derive(Clone, Copy, Debug)]
enum Target {
    End,
    Lsn(u64),
    /// Microseconds since the Unix epoch.
    Time(u64),
}

/// Bytes read from the archive (or the backup's log) at a time.
const CHUNK: usize = 4 << 20;

fn rfc3339(us: u64) -> String {
    humantime::format_rfc3339_micros(UNIX_EPOCH + Duration::from_micros(us)).to_string()
}

pub fn run(args: RestoreArgs) -> Result<()> {
    let target = match (&args.until_time, args.until_lsn) {
        (Some(t), _) => {
            let at = humantime::parse_rfc3339(t).with_context(|| {
                format!("--until-time {t}: not a UTC time in RFC 3339 (like 2026-12-04T20:31:07Z)")
            })?;
            let us = at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64);
            Target::Time(us)
        }
        (None, Some(n)) => Target::Lsn(n),
        (None, None) => Target::End,
    };
    if !crate::backup::is_new(&args.out)? {
        bail!(
            "{} is not empty: a restore goes into a new (or empty) directory",
            args.out.display()
        );
    }
    // Built beside it and renamed into place at the end: an interrupted restore leaves no
    // directory that `serve` would open at some point short of the target.
    let work = PathBuf::from(format!("{}.restoring", args.out.display()));
    if work.exists() {
        std::fs::remove_dir_all(&work)
            .with_context(|| format!("removing an interrupted restore's {}", work.display()))?;
    }
    let r = restore(&args, target, &work).and_then(|line| {
        std::fs::rename(&work, &args.out)
            .with_context(|| format!("moving {} to {}", work.display(), args.out.display()))?;
        println!("{line}");
        Ok(())
    });
    if r.is_err() {
        let _ = std::fs::remove_dir_all(&work);
    }
    r
}

/// A backup as found: its consistent point, its own epoch, the history it shares with its
/// source, and its control file's contents.
struct Base {
    point: Lsn,
    own_epoch: u32,
    shared: Vec<(u32, Lsn)>,
    info: storage::DirInfo,
}

/// The backup's consistent point and the history it shares with its source.
fn backup_point(dir: &Path) -> Result<Base> {
    let info = storage::inspect(dir)
        .with_context(|| format!("reading the backup {}", dir.display()))?
        .with_context(|| format!("{} holds no replidb database", dir.display()))?;
    let Some((&(own, point), shared)) = info.epochs.split_last() else {
        bail!(
            "{} began no epoch of its own: not a backup made by `replidb backup` (a node's data directory is copied with it)",
            dir.display()
        );
    };
    // Its own log after the point: its epoch's start and checkpoints, nothing else, all the
    // way to its last checkpoint (a log cut short there is one that was served and
    // checkpointed past the point: its pages are no longer the point's).
    let served = |from: u64| {
        anyhow::anyhow!(
            "{} has been served since it was taken (its log from LSN {from} is not just the start of its own epoch {own}): a restore needs the backup as it was taken",
            dir.display()
        )
    };
    let tail = storage::read_wal_at(dir, &info, point, 1 << 20)?;
    let mut at = 0usize;
    loop {
        let lsn = point.0 + at as u64;
        let Ok((rec, n)) = record::decode(&tail[at.min(tail.len())..], Lsn(lsn)) else {
            if lsn > info.checkpoint_lsn.0 {
                break;
            }
            return Err(served(lsn));
        };
        match rec.body {
            Body::EpochChange { .. } | Body::Checkpoint { .. } => at += n,
            _ => return Err(served(lsn)),
        }
    }
    Ok(Base {
        point,
        own_epoch: own,
        shared: shared.to_vec(),
        info,
    })
}

/// Restores into `work`; returns the line to print once it is in place.
fn restore(args: &RestoreArgs, target: Target, work: &Path) -> Result<String> {
    let Base {
        point,
        own_epoch,
        shared,
        info,
    } = backup_point(&args.backup)?;
    let arch = ArchiveReader::open(&args.wal)
        .with_context(|| format!("reading the archive {}", args.wal.display()))?;
    let (a_start, a_end) = arch.range();
    // One history: the archive's up to the point is the backup's.
    let arch_upto: Vec<(u32, Lsn)> = arch
        .epochs()
        .iter()
        .copied()
        .filter(|&(_, l)| l <= point)
        .collect();
    if arch_upto != shared {
        bail!(
            "the backup and the archive are of different histories (backup: {shared:?} up to LSN {point}; archive: {:?}): a backup of another cluster, or of another timeline",
            arch.epochs()
        );
    }
    if point < a_start {
        bail!(
            "the archive begins at LSN {a_start}, after the backup's point (LSN {point}): the WAL between them is missing; use a backup taken after the archive began"
        );
    }
    if point > a_end {
        bail!("the archive ends at LSN {a_end}, before the backup's point (LSN {point})");
    }
    // The record that ends at the point is the same in both (the backup received it while
    // it caught up): the same source, not a look-alike of another cluster's at the same
    // positions.
    match arch.record_ending_at(point) {
        Err(e @ replication::Error::Io(_)) => {
            return Err(anyhow::Error::new(e).context("reading the archive"))
        }
        Err(e) => bail!(
            "the backup's point (LSN {point}) is not a record boundary of the archive ({e}): they are of different clusters, or the archive is damaged there"
        ),
        Ok(None) => {}
        Ok(Some((at, theirs))) => {
            let mine = storage::read_wal_at(&args.backup, &info, at, theirs.len())?;
            if mine.len() < theirs.len() {
                eprintln!(
                    "warning: the backup no longer holds its log before LSN {point}: that the archive is of the same cluster could not be checked"
                );
            } else if mine != theirs {
                bail!(
                    "the backup's log and the archive hold different records at LSN {at}, just before the backup's point (LSN {point}): they are of different clusters"
                );
            }
        }
    }
    if let Target::Lsn(n) = target {
        if n < point.0 {
            bail!(
                "--until-lsn {n} is before the backup's point (LSN {point}): restore from an older backup"
            );
        }
    }
    // Phase 1: find where to stop — the end of the last commit at or before the target.
    let (stop, stop_time, first_after) = find_stop(&arch, point, a_end, target)?;
    if let Target::Time(t) = target {
        if stop == point {
            // Nothing after the backup is replayed: the backup itself must not be after the
            // target — proven by its last commit's time (in the archive, before the point).
            match last_commit_before(&arch, a_start, point)? {
                Some(before) if before > t => bail!(
                    "--until-time {} is before the backup's point (its last commit was at {}): restore from an older backup",
                    rfc3339(t),
                    rfc3339(before)
                ),
                Some(_) => {}
                None => bail!(
                    "--until-time {}: no commit after the backup's point (LSN {point}) is before it, and the archive holds none before the point to show that the backup is not after it; use --until-lsn {point} to restore the backup as it is",
                    rfc3339(t)
                ),
            }
        }
    }
    // A target past the archive's last commit: the archive may be missing what came after.
    if first_after.is_none() && !matches!(target, Target::End) {
        eprintln!(
            "warning: the archive ends (LSN {a_end}) before reaching the target: restored to its last commit; if the archiver was down, later commits are missing"
        );
    }
    // Phase 2: the backup's pages, laid down as a replica at the point.
    let page_file = args.backup.join(storage::PAGE_FILE);
    let total = std::fs::metadata(&page_file)
        .with_context(|| format!("reading {}", page_file.display()))?
        .len();
    let bar = bar(total, "pages");
    let mut seeder = Seeder::create(work, point, &Options::default())?;
    {
        use std::io::Read;
        let mut f = std::fs::File::open(&page_file)?;
        let mut buf = vec![0u8; 256 * PAGE_SIZE];
        let mut page = 0u64;
        loop {
            let mut got = 0;
            while got < buf.len() {
                let n = f.read(&mut buf[got..])?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            let whole = got - got % PAGE_SIZE;
            if whole == 0 {
                break;
            }
            seeder.write_pages(page, &buf[..whole])?;
            page += (whole / PAGE_SIZE) as u64;
            bar.set_position(page * PAGE_SIZE as u64);
            if got < buf.len() {
                break;
            }
        }
    }
    seeder.finish(&shared)?;
    bar.finish();
    // Phase 3: the archive from the point to the stop, replayed.
    let db = storage::Db::open(
        work,
        Options {
            replica: true,
            ..Options::default()
        },
    )?;
    let bar = bar_wal(stop.0 - point.0);
    let mut at = point;
    while at < stop {
        let want = ((stop.0 - at.0) as usize).min(CHUNK);
        let bytes = arch.read(at, want)?;
        if bytes.is_empty() {
            bail!("the archive ended at LSN {at}, before LSN {stop}");
        }
        db.apply_wal_with(at, &bytes, storage::ReplicaSync::Lazy, &mut |_| {})?;
        at = Lsn(at.0 + bytes.len() as u64);
        bar.set_position(at.0 - point.0);
    }
    db.sync_wal()?;
    bar.finish();
    if db.apply_lsn() != stop {
        bail!(
            "the replay reached LSN {}, not the last commit's end at LSN {stop}",
            db.apply_lsn()
        );
    }
    let newest = own_epoch.max(arch.epochs().last().map_or(1, |e| e.0));
    let (epoch, _) = db.promote_at_least(newest + 1)?;
    db.close()?;
    Ok(format!(
        "restored {} + {} into {}: LSN {stop}{}; `replidb serve --dir {}` serves it as a standalone primary of epoch {epoch}",
        args.backup.display(),
        args.wal.display(),
        args.out.display(),
        match stop_time {
            Some(t) => format!(", last commit at {}", rfc3339(t)),
            None => " (the backup's point: no commit replayed)".into(),
        },
        args.out.display(),
    ))
}

/// Scans the archive from `from` (a record boundary) to `end`: the end of the last commit at
/// or before `target`, its time, and the time of the first commit past it (if any).
fn find_stop(
    arch: &ArchiveReader,
    from: Lsn,
    end: Lsn,
    target: Target,
) -> Result<(Lsn, Option<u64>, Option<u64>)> {
    let mut stop = (from, None);
    let mut at = from.0;
    let mut buf: Vec<u8> = Vec::new();
    let mut buf_at = at;
    while at < end.0 {
        if buf.len() < (at - buf_at) as usize + record::MAX_RECORD {
            let more = arch.read(Lsn(buf_at + buf.len() as u64), CHUNK)?;
            if more.is_empty() && (at - buf_at) as usize >= buf.len() {
                break;
            }
            buf.drain(..(at - buf_at) as usize);
            buf_at = at;
            buf.extend_from_slice(&more);
        }
        let off = (at - buf_at) as usize;
        let (rec, n) = match record::decode(&buf[off..], Lsn(at)) {
            Ok(r) => r,
            // A torn record at the archive's very end: the whole ones before it are all.
            Err(record::DecodeError::Incomplete { .. }) => break,
            Err(record::DecodeError::Invalid(why)) if at == from.0 => bail!(
                "the archive holds no record at LSN {at} ({why}), where the backup's log continues: the backup and the archive are of different clusters"
            ),
            Err(record::DecodeError::Invalid(why)) => {
                bail!("the archive is damaged at LSN {at}: {why}")
            }
        };
        let rec_end = at + n as u64;
        if let Body::Commit { timestamp_us, .. } = rec.body {
            let within = match target {
                Target::End => true,
                Target::Lsn(l) => rec_end <= l,
                Target::Time(t) => timestamp_us <= t,
            };
            if !within {
                return Ok((stop.0, stop.1, Some(timestamp_us)));
            }
            stop = (Lsn(rec_end), Some(timestamp_us));
        }
        at = rec_end;
    }
    Ok((stop.0, stop.1, None))
}

/// The time of the last commit in the archive before `point`, if the archive holds one.
fn last_commit_before(arch: &ArchiveReader, start: Lsn, point: Lsn) -> Result<Option<u64>> {
    let (_, t, _) = find_stop(arch, start, point, Target::End)?;
    Ok(t)
}

fn bar(total: u64, what: &str) -> ProgressBar {
    let b = ProgressBar::new(total);
    b.set_style(
        ProgressStyle::with_template("{msg:6} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    b.set_message(what.to_string());
    b
}

fn bar_wal(total: u64) -> ProgressBar {
    bar(total, "wal")
}
