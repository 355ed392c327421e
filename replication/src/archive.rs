//! A WAL archive: a named stream from a primary (a replica that applies nothing) that keeps
//! the WAL bytes in a directory, for point-in-time restore.
//!
//! ```text
//! ARCH/<first LSN, 16 hex digits>.wal   WAL records exactly as the primary wrote them, whole
//!                                       records only, contiguous from file to file; a new
//!                                       file begins once one holds 16 MiB
//! ARCH/epochs                           the history the records belong to: `epoch start_lsn`
//!                                       per epoch after the first (as DIR/epochs)
//! ARCH/lock                             `flock`ed while an archiver runs on the directory
//! ```
//!
//! Every record is checked (checksum, LSN) as it arrives; a record cut by the link's end is
//! kept in memory only, so the files end on a record boundary — except after a crash in the
//! middle of a write, whose torn tail the next start cuts off. Synced when the primary asks
//! (a commit waits for this archive: it may be a named sync standby) and at least every
//! `LAZY_SYNC`; acknowledged with its synced position as both flush and apply (it has no
//! readers; `remote_apply` counts it at its flush).
//!
//! The archive never discards what it holds: a primary whose history forks from it before
//! its end, or that no longer has the WAL from its end, is an error naming the LSN — start a
//! new archive directory (and take a new backup) for that history.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use storage::internals::record::{self, Body};
use storage::Lsn;

use crate::error::{bail, Error, Result};
use crate::frame::{self, Frame};
use crate::node::{now_us, NodeConfig};
use crate::wire::handshake::{connect_as_replica, WalGone, WAL_GONE};
use crate::wire::io::{read_frame, write_frame};

/// A file is closed and a new one begun once it holds this much.
const FILE_BYTES: u64 = 16 << 20;

/// WAL that no commit waits for is synced within this long.
const LAZY_SYNC: Duration = Duration::from_millis(100);

/// A primary silent for this long is taken as gone.
const SILENCE: Duration = Duration::from_secs(10);

/// The archive's files, as found and as written.
pub struct Archive {
    dir: PathBuf,
    _lock: File,
    /// (first LSN, length) of every file, in order.
    files: Vec<(Lsn, u64)>,
    current: Option<File>,
    /// The history: (epoch, start) of every epoch after the first.
    epochs: Vec<(u32, Lsn)>,
    /// Where the whole records written so far end, and how far they are synced.
    end: Lsn,
    synced: Lsn,
    /// The start of a record received only in part (kept until it is whole).
    partial: Vec<u8>,
    /// The directory's entries changed (a new file): sync it with the data.
    dir_dirty: bool,
}

fn file_name(start: Lsn) -> String {
    format!("{:016x}.wal", start.0)
}

fn parse_name(name: &str) -> Option<Lsn> {
    let hex = name.strip_suffix(".wal")?;
    (hex.len() == 16)
        .then(|| u64::from_str_radix(hex, 16).ok())
        .flatten()
        .map(Lsn)
}

/// A local failure the archiver must not retry past (its files would be wrong).
fn fatal(what: String) -> Error {
    Error::State(format!("the archive cannot go on: {what}"))
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::from(e).context(what)
}

impl Archive {
    /// Opens (or creates) the archive in `dir`: checks that its files are contiguous, cuts a
    /// torn record off the last one, and reads its history.
    pub fn open(dir: &Path) -> Result<Archive> {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))
            .map_err(io(format!("opening {}/lock", dir.display())))?;
        if lock.try_lock().is_err() {
            bail!(
                "{} is locked by another process (an archiver already runs on it)",
                dir.display()
            );
        }
        let (files, epochs) = scan(dir)?;
        let mut a = Archive {
            dir: dir.to_path_buf(),
            _lock: lock,
            files,
            current: None,
            epochs,
            end: Lsn(0),
            synced: Lsn(0),
            partial: Vec::new(),
            dir_dirty: false,
        };
        a.cut_torn_tail()?;
        Ok(a)
    }

    /// Whole records from the last file's start (where one always begins); a torn tail
    /// from a crash in the middle of a write is cut off. Sets the end.
    fn cut_torn_tail(&mut self) -> Result<()> {
        let dir = self.dir.clone();
        let a = self;
        if let Some(&(start, len)) = a.files.last() {
            let path = dir.join(file_name(start));
            let bytes = std::fs::read(&path).map_err(io(format!("reading {}", path.display())))?;
            let mut at = 0usize;
            while at < bytes.len() {
                match record::decode(&bytes[at..], Lsn(start.0 + at as u64)) {
                    Ok((_, n)) => at += n,
                    Err(_) => break,
                }
            }
            if (at as u64) < len {
                tracing::warn!(
                    file = %path.display(),
                    kept = at,
                    cut = len - at as u64,
                    "the archive's last file ends in a torn record; cutting it off"
                );
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io(format!("opening {}", path.display())))?;
                f.set_len(at as u64)
                    .and_then(|()| f.sync_all())
                    .map_err(io(format!("cutting {}", path.display())))?;
                if let Some(last) = a.files.last_mut() {
                    last.1 = at as u64;
                }
            }
            a.end = Lsn(start.0 + at as u64);
            a.synced = a.end;
        }
        Ok(())
    }

    /// Where the archive begins (`None`: empty).
    pub fn start(&self) -> Option<Lsn> {
        self.files.first().map(|f| f.0)
    }

    /// Where its whole records end.
    pub fn end(&self) -> Lsn {
        self.end
    }

    /// The history of the records it holds.
    pub fn epochs(&self) -> &[(u32, Lsn)] {
        &self.epochs
    }

    /// The epoch its last record belongs to.
    pub fn epoch(&self) -> u32 {
        self.epochs.last().map_or(1, |e| e.0)
    }

    /// An empty archive begins at `start`, on `epochs` (the primary's history there).
    pub fn begin(&mut self, start: Lsn, epochs: Vec<(u32, Lsn)>) -> Result<()> {
        if !self.files.is_empty() {
            bail!("the archive already holds WAL from LSN {}", self.files[0].0);
        }
        self.end = start;
        self.synced = start;
        self.epochs = epochs;
        write_epochs(&self.dir, &self.epochs)
    }

    /// Appends the stream's bytes from `start` (where the last ones ended): whole records go
    /// to the files, a record received only in part waits for the rest.
    pub fn append(&mut self, start: Lsn, bytes: &[u8]) -> Result<()> {
        let expect = self.end.0 + self.partial.len() as u64;
        if start.0 != expect {
            bail!("the primary sent WAL from LSN {start}, the archive needs LSN {expect}");
        }
        self.partial.extend_from_slice(bytes);
        let mut at = 0usize;
        let mut epochs_changed = false;
        loop {
            match record::decode(&self.partial[at..], Lsn(self.end.0 + at as u64)) {
                Ok((rec, n)) => {
                    if let Body::EpochChange { epoch } = rec.body {
                        if epoch != self.epoch() {
                            self.epochs.push((epoch, Lsn(self.end.0 + at as u64)));
                            epochs_changed = true;
                        }
                    }
                    at += n;
                }
                Err(record::DecodeError::Incomplete { .. }) => break,
                Err(e) => bail!(
                    "the primary sent a bad WAL record at LSN {}: {e:?}",
                    self.end.0 + at as u64
                ),
            }
        }
        if at > 0 {
            let whole: Vec<u8> = self.partial.drain(..at).collect();
            self.write(&whole)?;
        }
        if epochs_changed {
            write_epochs(&self.dir, &self.epochs)?;
        }
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let roll = self.files.last().is_none_or(|&(_, len)| len >= FILE_BYTES);
        if roll || self.current.is_none() {
            if roll {
                // What the file being closed holds is synced before a later sync of the next
                // one can acknowledge past it.
                if let Some(f) = self.current.take() {
                    f.sync_data().map_err(|e| {
                        fatal(format!("syncing the archive file being closed: {e}"))
                    })?;
                }
                self.files.push((self.end, 0));
                self.dir_dirty = true;
            }
            let Some(&(start, _)) = self.files.last() else {
                bail!("no archive file to write");
            };
            let path = self.dir.join(file_name(start));
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io(format!("opening {}", path.display())))?;
            self.current = Some(f);
        }
        if let (Some(f), Some(last)) = (self.current.as_mut(), self.files.last_mut()) {
            if let Err(e) = f.write_all(bytes) {
                // A partial append is cut back off, and the archiver stops: retrying after a
                // full disk would put the bytes after garbage.
                let cut = f.set_len(last.1).and_then(|()| f.sync_data());
                return Err(fatal(format!(
                    "writing {}: {e}{}",
                    file_name(last.0),
                    match cut {
                        Ok(()) => String::new(),
                        Err(c) => format!(" (and cutting the partial write off failed: {c}; the next start cuts it)"),
                    }
                )));
            }
            last.1 += bytes.len() as u64;
        }
        self.end = Lsn(self.end.0 + bytes.len() as u64);
        Ok(())
    }

    /// Syncs what was written (and the directory, after a new file); returns the synced end.
    pub fn sync(&mut self) -> Result<Lsn> {
        if self.synced < self.end {
            // A failed fsync is not retried (the kernel may have dropped the pages): the
            // archiver stops.
            if let Some(f) = &self.current {
                f.sync_data()
                    .map_err(|e| fatal(format!("syncing the archive: {e}")))?;
            }
            if self.dir_dirty {
                File::open(&self.dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| fatal(format!("syncing {}: {e}", self.dir.display())))?;
                self.dir_dirty = false;
            }
            self.synced = self.end;
        }
        Ok(self.synced)
    }
}

/// The archive's files — (first LSN, length), in order, checked contiguous — and history.
type Files = Vec<(Lsn, u64)>;

fn scan(dir: &Path) -> Result<(Files, Vec<(u32, Lsn)>)> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io(format!("reading {}", dir.display())))? {
        let e = e.map_err(io(format!("reading {}", dir.display())))?;
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(start) = parse_name(&name) {
            let len = e.metadata().map_err(io(format!("reading {name}")))?.len();
            files.push((start, len));
        }
    }
    files.sort();
    for w in files.windows(2) {
        let (a, b) = (w[0], w[1]);
        if a.0 .0 + a.1 != b.0 .0 {
            bail!(
                "the archive in {} has a gap: {} ends at LSN {}, the next file starts at LSN {}",
                dir.display(),
                file_name(a.0),
                a.0 .0 + a.1,
                b.0 .0
            );
        }
    }
    Ok((files, read_epochs(&dir.join("epochs"))?))
}

/// An archive read, not written (a restore): no lock taken, nothing cut.
pub struct ArchiveReader {
    dir: PathBuf,
    files: Files,
    epochs: Vec<(u32, Lsn)>,
}

impl ArchiveReader {
    pub fn open(dir: &Path) -> Result<ArchiveReader> {
        if !dir.join("epochs").exists() && !dir.is_dir() {
            bail!("{} is not an archive (no such directory)", dir.display());
        }
        let (files, epochs) = scan(dir)?;
        if files.is_empty() {
            bail!("the archive in {} holds no WAL", dir.display());
        }
        Ok(ArchiveReader {
            dir: dir.to_path_buf(),
            files,
            epochs,
        })
    }

    /// Where it begins and ends (a torn record at the very end included: readers stop at
    /// the last whole one).
    pub fn range(&self) -> (Lsn, Lsn) {
        let first = self.files[0].0;
        let last = self.files[self.files.len() - 1];
        (first, Lsn(last.0 .0 + last.1))
    }

    /// The history of its records.
    pub fn epochs(&self) -> &[(u32, Lsn)] {
        &self.epochs
    }

    /// The whole record that ends exactly at `point` (`None` if the archive begins there);
    /// an error if no record of the archive ends there.
    pub fn record_ending_at(&self, point: Lsn) -> Result<Option<(Lsn, Vec<u8>)>> {
        // Every file begins on a record boundary: walk the one that holds the byte before.
        let Some(&(start, len)) = self
            .files
            .iter()
            .find(|&&(s, l)| s < point && point.0 <= s.0 + l)
        else {
            return Ok(None);
        };
        let bytes = self.read(start, len as usize)?;
        let mut at = 0usize;
        while (start.0 + at as u64) < point.0 {
            match record::decode(&bytes[at..], Lsn(start.0 + at as u64)) {
                Ok((_, n)) if start.0 + (at + n) as u64 == point.0 => {
                    return Ok(Some((Lsn(start.0 + at as u64), bytes[at..at + n].to_vec())))
                }
                Ok((_, n)) => at += n,
                Err(e) => bail!(
                    "the archive has no record boundary at LSN {point} (at LSN {}: {e:?})",
                    start.0 + at as u64
                ),
            }
        }
        bail!("the archive has no record boundary at LSN {point}")
    }

    /// Up to `max` bytes of the stream from `from`.
    pub fn read(&self, from: Lsn, max: usize) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut at = from.0;
        for &(start, len) in &self.files {
            if out.len() >= max {
                break;
            }
            if at < start.0 || at >= start.0 + len {
                continue;
            }
            let path = self.dir.join(file_name(start));
            let bytes = std::fs::read(&path).map_err(io(format!("reading {}", path.display())))?;
            let off = (at - start.0) as usize;
            if off > bytes.len() {
                bail!(
                    "{} is shorter than the archive's listing said (an archiver cut it meanwhile?)",
                    path.display()
                );
            }
            let take = (bytes.len() - off).min(max - out.len());
            out.extend_from_slice(&bytes[off..off + take]);
            at += take as u64;
        }
        Ok(out)
    }
}

fn read_epochs(path: &Path) -> Result<Vec<(u32, Lsn)>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(format!("reading {}", path.display()))(e)),
    };
    let mut v = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut it = line.split_whitespace();
        match (
            it.next().and_then(|e| e.parse().ok()),
            it.next().and_then(|l| l.parse().ok()),
        ) {
            (Some(e), Some(l)) => v.push((e, Lsn(l))),
            _ => bail!("{}: a bad line {line:?}", path.display()),
        }
    }
    Ok(v)
}

fn write_epochs(dir: &Path, epochs: &[(u32, Lsn)]) -> Result<()> {
    let text: String = epochs
        .iter()
        .map(|(e, l)| format!("{e} {}\n", l.0))
        .collect();
    let tmp = dir.join("epochs.tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| File::open(&tmp).and_then(|f| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, dir.join("epochs")))
        .and_then(|()| File::open(dir).and_then(|d| d.sync_all()))
        .map_err(io(format!("writing {}/epochs", dir.display())))
}

/// What stops an archiver for good: the primary's log forks from the archive, or no longer
/// holds the WAL from its end, or the archive's own files failed a write or a sync (anything
/// else: reconnect and go on).
pub fn is_fatal(e: &Error) -> bool {
    match e {
        Error::WalGone(_) | Error::State(_) => true,
        Error::Context { source, .. } => is_fatal(source),
        _ => false,
    }
}

/// Streams from `primary` into `archive` until the link fails or `stop` is set. `config`
/// gives the name, password and transport.
pub async fn stream(
    config: &NodeConfig,
    primary: &str,
    archive: &mut Archive,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    let (mut rd, mut wr, mut buf) =
        connect_as_replica(config, primary, b"*1\r\n$10\r\nREPLSTREAM\r\n").await?;
    archive.partial.clear();
    write_frame(
        &mut wr,
        &Frame::Hello {
            version: frame::STREAM_VERSION,
            epoch: archive.epoch(),
            node_id: config.node_id,
            flush_lsn: archive.end(),
            name: config.name.clone(),
            epochs: archive.epochs().to_vec(),
        },
    )
    .await?;
    match read_frame(&mut rd, &mut buf).await? {
        Frame::Welcome { .. } => {}
        Frame::Diverged { fork_lsn, message } => {
            return Err(WalGone::Diverged {
                fork: fork_lsn,
                message: format!(
                    "the primary's history forks from the archive's at LSN {fork_lsn}, before its end at LSN {} ({message}): an archive keeps what it holds; archive the new history into a new directory",
                    archive.end()
                ),
            }
            .into())
        }
        Frame::Error { code, message } if code == WAL_GONE => {
            return Err(WalGone::Removed(format!(
                "from LSN {}: {message}; the archive would have a gap: archive into a new directory and take a new backup",
                archive.end()
            ))
            .into())
        }
        Frame::Error { message, .. } => bail!("the primary refused: {message}"),
        other => bail!("expected welcome, got {other:?}"),
    }
    tracing::info!(primary = %primary, from = archive.end().0, "archiving");
    let mut unsynced_since: Option<Instant> = None;
    let mut heard = Instant::now();
    let mut last_log = Instant::now();
    loop {
        let wait = match unsynced_since {
            Some(t) => LAZY_SYNC.saturating_sub(t.elapsed()),
            None => Duration::from_secs(1),
        };
        let got = tokio::select! {
            f = read_frame(&mut rd, &mut buf) => Some(f?),
            _ = tokio::time::sleep(wait) => None,
            _ = stop.changed() => {
                archive.sync()?;
                return Ok(());
            }
        };
        let mut ack = false;
        match got {
            None => {
                if heard.elapsed() > SILENCE {
                    bail!("the primary has been silent for {SILENCE:?}");
                }
            }
            Some(Frame::Wal {
                start_lsn,
                bytes,
                sync,
                ..
            }) => {
                heard = Instant::now();
                archive.append(start_lsn, &bytes)?;
                if sync {
                    archive.sync()?;
                    ack = true;
                } else {
                    unsynced_since.get_or_insert_with(Instant::now);
                }
            }
            Some(Frame::Keepalive { .. }) => {
                heard = Instant::now();
                ack = true;
            }
            Some(Frame::Error { message, .. }) => bail!("the primary says: {message}"),
            Some(other) => bail!("unexpected frame {other:?}"),
        }
        if unsynced_since.is_some_and(|t| t.elapsed() >= LAZY_SYNC) {
            archive.sync()?;
            ack = true;
        }
        if archive.synced >= archive.end {
            unsynced_since = None;
        }
        if ack {
            let synced = archive.synced;
            write_frame(
                &mut wr,
                &Frame::Feedback {
                    write_lsn: archive.end(),
                    flush_lsn: synced,
                    apply_lsn: synced,
                    time_us: now_us(),
                },
            )
            .await?;
        }
        if last_log.elapsed() >= Duration::from_secs(10) {
            tracing::info!(end = archive.end().0, synced = archive.synced.0, "archived");
            last_log = Instant::now();
        }
    }
}
