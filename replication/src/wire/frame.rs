//! Replication frames: what a primary and a replica say to each other on a replication
//! connection. Framed, checksummed and bounded: every length is checked against a limit
//! before anything is allocated, and the decoder is total (fuzzed).
//!
//! ```text
//! frame
//! +0  len      u32  payload bytes (at most MAX_PAYLOAD)
//! +4  crc      u32  crc32c of bytes 8..12+len (kind, flags, reserved and payload)
//! +8  kind     u8   1 hello, 2 welcome, 3 wal, 4 feedback, 5 keepalive, 6 error,
//!                   7 snapshot_begin, 8 snapshot_pages, 9 snapshot_end, 10 diverged,
//!                   11 page_list, 12 catch_up, 13 promote, 14 role_query, 15 role_report,
//!                   16 page_versions
//! +9  flags    u8   wal frames: bit 0 = sync, bit 1 = eager (below); 0 in every other kind
//! +10 reserved [u8; 2]  0
//! +12 payload
//!
//! hello     (replica -> primary)  version u32 | epoch u32 | node_id u64 | flush_lsn u64 |
//!                                 name_len u16 | name (UTF-8, at most 64 bytes)
//! welcome   (primary -> replica)  epoch u32 | reserved u32 | node_id u64 | start_lsn u64 |
//!                                 primary_flush_lsn u64 | chain
//! wal       (primary -> replica)  start_lsn u64 | WAL bytes (at most MAX_WAL_CHUNK), exactly as
//!                                 they lie in the primary's log from start_lsn
//! feedback  (replica -> primary)  write_lsn u64 | flush_lsn u64 | apply_lsn u64 | time_us u64
//! keepalive (primary -> replica)  primary_flush_lsn u64 | time_us u64
//! error     (either way)          code u16 | message (UTF-8, at most 1024 bytes)
//! snapshot_begin (primary -> new replica)  redo_lsn u64 | page_count u64
//! snapshot_pages (primary -> new replica)  first_page u64 | whole pages (at most 1 MiB)
//! snapshot_end   (primary -> new replica)  (empty)
//! diverged       (primary -> replica)      fork_lsn u64 | message (UTF-8)
//! page_list      (rewinding node -> primary)  count u32 | page ids u64 ...
//! catch_up       (switching primary -> target)  until_lsn u64 | timeout_ms u64
//! promote        (switching primary -> target)  (empty)
//! role_query     (switching primary -> target)  (empty)
//! role_report    (target -> switching primary)  primary u8 | reserved [u8; 3] | epoch u32 |
//!                                               apply_lsn u64 | node_id u64 | chain |
//!                                               message (UTF-8)
//! page_versions  (replica -> primary)  first_page u64 | count u32 | (page_lsn u64 | crc u32) ...
//!
//! chain: the sender and the nodes it replicates from, nearest first (at most MAX_CHAIN)
//!   count u8 | (node_id u64 | name_len u8 | name (UTF-8, at most MAX_NAME bytes)) ...
//! ```
//! All integers little-endian. A node id is random per process (never 0); a hello's says
//! who connects, a welcome's and a role report's who answers, so a node that reaches itself
//! or would close a cycle of replicas finds out in the handshake.
//!
//! A wal frame with the sync flag carries (or follows) a commit that waits for replicas to
//! sync it (`remote_flush`, `remote_apply`): the replica syncs before it acknowledges.
//! Without it the replica writes, replays and acknowledges at once, and syncs within a few
//! milliseconds — so replicas sync once per commit only when a commit waits for it.
//!
//! The eager flag says that one or two commits at a remote level (`remote_write` and up) wait:
//! the next one usually follows within a client's round trip, and the replica looks for its
//! frame for a moment before it sleeps on the socket. It changes only when the replica
//! sleeps, never what it does with the bytes.

use storage::Lsn;

pub const HEADER: usize = 12;
/// Largest WAL chunk in one frame.
pub const MAX_WAL_CHUNK: usize = 1 << 20;
/// Largest payload of any frame.
pub const MAX_PAYLOAD: usize = 8 + MAX_WAL_CHUNK;
pub const MAX_NAME: usize = 64;
pub const MAX_MESSAGE: usize = 1024;
/// Protocol version a hello names; both ends must speak the same one. 4: wal frames may
/// carry the eager flag (bit 1), which version 3 replicas refuse. 5: a switchover asks its
/// target over the replication protocol (catch_up, promote, role_query, role_report).
/// 6: pages of format 2 (long values in the value heap): a node of format 1 cannot replay
/// them, nor this one its pages, so older nodes are refused. 7: hellos carry the node id,
/// welcomes and role reports the chain of upstream nodes (self and cycle checks).
pub const VERSION: u32 = 7;
/// The oldest version whose hello is accepted. Pages and WAL page records are replayed as
/// they are, so both ends must share the page format: the version that changed it.
pub const MIN_VERSION: u32 = 7;
/// The version a hello names on a stream, seed or rewind connection — the oldest that speaks
/// them (every version accepted today speaks them alike); a control connection names
/// `VERSION`.
pub const STREAM_VERSION: u32 = 7;
/// Page ids in one `page_list` frame.
pub const MAX_PAGE_LIST: usize = MAX_WAL_CHUNK / 8;
/// Entries in one `page_versions` frame.
pub const MAX_PAGE_VERSIONS: usize = 4096;
/// Nodes in one chain (a node and its upstreams); a longer cascade is cut to this.
pub const MAX_CHAIN: usize = 16;
/// Entries of an epoch history a frame may carry.
pub const MAX_EPOCHS: usize = storage::MAX_EPOCHS;

/// One node of a chain of replicas: its id and name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainLink {
    pub node_id: u64,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Hello {
        version: u32,
        epoch: u32,
        node_id: u64,
        flush_lsn: Lsn,
        name: String,
        /// The replica's epoch history: (epoch, start LSN) for every epoch after the first.
        epochs: Vec<(u32, Lsn)>,
    },
    Welcome {
        epoch: u32,
        node_id: u64,
        start_lsn: Lsn,
        primary_flush_lsn: Lsn,
        /// The primary and its own upstreams, nearest first.
        chain: Vec<ChainLink>,
    },
    Wal {
        start_lsn: Lsn,
        bytes: Vec<u8>,
        /// Sync before acknowledging.
        sync: bool,
        /// Few commits at a remote level wait: look for the next frame before sleeping.
        eager: bool,
    },
    Feedback {
        write_lsn: Lsn,
        flush_lsn: Lsn,
        apply_lsn: Lsn,
        time_us: u64,
    },
    Keepalive {
        primary_flush_lsn: Lsn,
        time_us: u64,
    },
    Error {
        code: u16,
        message: String,
    },
    SnapshotBegin {
        redo_lsn: Lsn,
        page_count: u64,
        /// The primary's epoch history, for the new replica's epochs file.
        epochs: Vec<(u32, Lsn)>,
    },
    SnapshotPages {
        first_page: u64,
        bytes: Vec<u8>,
    },
    SnapshotEnd,
    /// A rewinding node's list of pages its divergent log changed (`REPLREWIND`); an empty
    /// list ends it.
    PageList {
        pages: Vec<u64>,
    },
    /// The primary's answer to a hello whose log has diverged from its own: the last LSN the
    /// two logs share, and why.
    Diverged {
        fork_lsn: Lsn,
        message: String,
    },
    /// A switchover asks its target to apply everything up to `until_lsn` (the switching
    /// primary's end), waiting at most `timeout_ms`; answered by a role report (or an error).
    CatchUp {
        until_lsn: Lsn,
        timeout_ms: u64,
    },
    /// A switchover asks its (caught-up) target to promote itself; answered by a role report.
    Promote,
    /// What are you now? Answered by a role report.
    RoleQuery,
    /// A node's role, epoch and apply LSN, and what it did.
    RoleReport {
        primary: bool,
        epoch: u32,
        apply_lsn: Lsn,
        node_id: u64,
        /// The reporting node and its upstreams, nearest first.
        chain: Vec<ChainLink>,
        message: String,
    },
    /// A replica's pages `first_page ..` as it has them: each page's LSN and the crc32c of
    /// its bytes after the checksum field (`REPLVERIFY`); answered by a `page_list` of the
    /// pages that differ from the primary's copy of the same version.
    PageVersions {
        first_page: u64,
        versions: Vec<(u64, u32)>,
    },
}

/// Bit of a wal frame's flags byte: sync before acknowledging.
const WAL_SYNC: u8 = 1;
/// Bit of a wal frame's flags byte: few commits wait, the next frame is due soon.
const WAL_EAGER: u8 = 2;

/// Why bytes are not a frame. After one, the connection is closed and re-established.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame payload of {0} bytes exceeds the limit of {MAX_PAYLOAD}")]
    TooLong(u64),
    #[error("frame checksum mismatch")]
    Checksum,
    #[error("unknown frame kind {0}")]
    Kind(u8),
    #[error("malformed {kind} frame: {reason}")]
    Malformed { kind: &'static str, reason: String },
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

impl Frame {
    fn kind(&self) -> u8 {
        match self {
            Frame::Hello { .. } => 1,
            Frame::Welcome { .. } => 2,
            Frame::Wal { .. } => 3,
            Frame::Feedback { .. } => 4,
            Frame::Keepalive { .. } => 5,
            Frame::Error { .. } => 6,
            Frame::SnapshotBegin { .. } => 7,
            Frame::SnapshotPages { .. } => 8,
            Frame::SnapshotEnd => 9,
            Frame::Diverged { .. } => 10,
            Frame::PageList { .. } => 11,
            Frame::CatchUp { .. } => 12,
            Frame::Promote => 13,
            Frame::RoleQuery => 14,
            Frame::RoleReport { .. } => 15,
            Frame::PageVersions { .. } => 16,
        }
    }

    /// Appends the encoded frame to `out`. Panics on a frame that breaks the limits (a bug
    /// in the sender, never input).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0u8; HEADER]);
        match self {
            Frame::Hello {
                version,
                epoch,
                node_id,
                flush_lsn,
                name,
                epochs,
            } => {
                assert!(name.len() <= MAX_NAME, "replica name too long");
                out.extend_from_slice(&version.to_le_bytes());
                out.extend_from_slice(&epoch.to_le_bytes());
                out.extend_from_slice(&node_id.to_le_bytes());
                out.extend_from_slice(&flush_lsn.0.to_le_bytes());
                out.extend_from_slice(&(name.len() as u16).to_le_bytes());
                out.extend_from_slice(name.as_bytes());
                put_epochs(out, epochs);
            }
            Frame::Welcome {
                epoch,
                node_id,
                start_lsn,
                primary_flush_lsn,
                chain,
            } => {
                out.extend_from_slice(&epoch.to_le_bytes());
                out.extend_from_slice(&0u32.to_le_bytes());
                out.extend_from_slice(&node_id.to_le_bytes());
                out.extend_from_slice(&start_lsn.0.to_le_bytes());
                out.extend_from_slice(&primary_flush_lsn.0.to_le_bytes());
                put_chain(out, chain);
            }
            Frame::Wal {
                start_lsn,
                bytes,
                sync,
                eager,
            } => {
                out.truncate(start);
                return encode_wal(*start_lsn, bytes, *sync, *eager, out);
            }
            Frame::Feedback {
                write_lsn,
                flush_lsn,
                apply_lsn,
                time_us,
            } => {
                for v in [write_lsn.0, flush_lsn.0, apply_lsn.0, *time_us] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
            Frame::Keepalive {
                primary_flush_lsn,
                time_us,
            } => {
                out.extend_from_slice(&primary_flush_lsn.0.to_le_bytes());
                out.extend_from_slice(&time_us.to_le_bytes());
            }
            Frame::Error { code, message } => {
                out.extend_from_slice(&code.to_le_bytes());
                put_message(out, message);
            }
            Frame::SnapshotBegin {
                redo_lsn,
                page_count,
                epochs,
            } => {
                out.extend_from_slice(&redo_lsn.0.to_le_bytes());
                out.extend_from_slice(&page_count.to_le_bytes());
                put_epochs(out, epochs);
            }
            Frame::SnapshotPages { first_page, bytes } => {
                assert!(bytes.len() <= MAX_WAL_CHUNK, "snapshot chunk too long");
                out.extend_from_slice(&first_page.to_le_bytes());
                out.extend_from_slice(bytes);
            }
            Frame::SnapshotEnd => {}
            Frame::PageList { pages } => {
                assert!(pages.len() <= MAX_PAGE_LIST, "page list too long");
                out.extend_from_slice(&(pages.len() as u32).to_le_bytes());
                for p in pages {
                    out.extend_from_slice(&p.to_le_bytes());
                }
            }
            Frame::Diverged { fork_lsn, message } => {
                out.extend_from_slice(&fork_lsn.0.to_le_bytes());
                put_message(out, message);
            }
            Frame::CatchUp {
                until_lsn,
                timeout_ms,
            } => {
                out.extend_from_slice(&until_lsn.0.to_le_bytes());
                out.extend_from_slice(&timeout_ms.to_le_bytes());
            }
            Frame::Promote | Frame::RoleQuery => {}
            Frame::RoleReport {
                primary,
                epoch,
                apply_lsn,
                node_id,
                chain,
                message,
            } => {
                out.extend_from_slice(&[u8::from(*primary), 0, 0, 0]);
                out.extend_from_slice(&epoch.to_le_bytes());
                out.extend_from_slice(&apply_lsn.0.to_le_bytes());
                out.extend_from_slice(&node_id.to_le_bytes());
                put_chain(out, chain);
                put_message(out, message);
            }
            Frame::PageVersions {
                first_page,
                versions,
            } => {
                assert!(
                    versions.len() <= MAX_PAGE_VERSIONS,
                    "too many page versions"
                );
                out.extend_from_slice(&first_page.to_le_bytes());
                out.extend_from_slice(&(versions.len() as u32).to_le_bytes());
                for (lsn, crc) in versions {
                    out.extend_from_slice(&lsn.to_le_bytes());
                    out.extend_from_slice(&crc.to_le_bytes());
                }
            }
        }
        seal(out, start, self.kind());
    }
}

/// Appends a WAL frame carrying `bytes` from `start` on — `Frame::Wal` without copying the
/// bytes into a frame value first (the primary's hot path). Panics past `MAX_WAL_CHUNK`.
pub fn encode_wal(start: Lsn, bytes: &[u8], sync: bool, eager: bool, out: &mut Vec<u8>) {
    assert!(bytes.len() <= MAX_WAL_CHUNK, "WAL chunk too long");
    let at = out.len();
    out.extend_from_slice(&[0u8; HEADER]);
    if sync {
        out[at + 9] |= WAL_SYNC;
    }
    if eager {
        out[at + 9] |= WAL_EAGER;
    }
    out.extend_from_slice(&start.0.to_le_bytes());
    out.extend_from_slice(bytes);
    seal(out, at, 3);
}

/// Appends an epoch history: count u16, then (epoch u32, start LSN u64) per entry.
/// A message ending a frame, cut to `MAX_MESSAGE` bytes at a character boundary.
fn put_message(out: &mut Vec<u8>, message: &str) {
    let mut n = message.len().min(MAX_MESSAGE);
    while !message.is_char_boundary(n) {
        n -= 1;
    }
    out.extend_from_slice(&message.as_bytes()[..n]);
}

/// The message that ends a frame's payload at `from`, if it is within `MAX_MESSAGE` bytes.
fn get_message(p: &[u8], from: usize, kind: &'static str) -> Result<String, FrameError> {
    match p.get(from..) {
        Some(m) if m.len() <= MAX_MESSAGE => Ok(String::from_utf8_lossy(m).into_owned()),
        _ => Err(FrameError::Malformed {
            kind,
            reason: "bad message length".into(),
        }),
    }
}

fn malformed(kind: &'static str, reason: &str) -> FrameError {
    FrameError::Malformed {
        kind,
        reason: reason.into(),
    }
}

fn put_chain(out: &mut Vec<u8>, chain: &[ChainLink]) {
    assert!(chain.len() <= MAX_CHAIN, "chain too long");
    out.push(chain.len() as u8);
    for l in chain {
        assert!(l.name.len() <= MAX_NAME, "node name too long");
        out.extend_from_slice(&l.node_id.to_le_bytes());
        out.push(l.name.len() as u8);
        out.extend_from_slice(l.name.as_bytes());
    }
}

/// A chain at `p[at..]`, and where it ends.
fn get_chain(
    p: &[u8],
    at: usize,
    kind: &'static str,
) -> Result<(Vec<ChainLink>, usize), FrameError> {
    let n = *p.get(at).ok_or_else(|| malformed(kind, "chain missing"))? as usize;
    if n > MAX_CHAIN {
        return Err(malformed(kind, "chain too long"));
    }
    let mut at = at + 1;
    let mut chain = Vec::with_capacity(n);
    for _ in 0..n {
        let len = *p
            .get(at + 8)
            .ok_or_else(|| malformed(kind, "chain cut short"))? as usize;
        if len > MAX_NAME {
            return Err(malformed(kind, "chain name too long"));
        }
        let name = p
            .get(at + 9..at + 9 + len)
            .ok_or_else(|| malformed(kind, "chain cut short"))?;
        let name =
            std::str::from_utf8(name).map_err(|_| malformed(kind, "chain name is not UTF-8"))?;
        chain.push(ChainLink {
            node_id: u64_at(p, at),
            name: name.to_string(),
        });
        at += 9 + len;
    }
    Ok((chain, at))
}

fn put_epochs(out: &mut Vec<u8>, epochs: &[(u32, Lsn)]) {
    assert!(epochs.len() <= MAX_EPOCHS, "epoch history too long");
    out.extend_from_slice(&(epochs.len() as u16).to_le_bytes());
    for (e, l) in epochs {
        out.extend_from_slice(&e.to_le_bytes());
        out.extend_from_slice(&l.0.to_le_bytes());
    }
}

/// Reads the epoch history that makes up all of `p`.
fn get_epochs(p: &[u8], kind: &'static str) -> Result<Vec<(u32, Lsn)>, FrameError> {
    let bad = |reason: &str| FrameError::Malformed {
        kind,
        reason: reason.into(),
    };
    if p.len() < 2 {
        return Err(bad("epoch history cut short"));
    }
    let n = u16_at(p, 0) as usize;
    if n > MAX_EPOCHS || p.len() != 2 + 12 * n {
        return Err(bad("bad epoch history length"));
    }
    Ok((0..n)
        .map(|i| (u32_at(p, 2 + 12 * i), Lsn(u64_at(p, 6 + 12 * i))))
        .collect())
}

/// Fills in the header of the frame that starts at `out[start]`: length, kind, checksum.
fn seal(out: &mut [u8], start: usize, kind: u8) {
    let len = out.len() - start - HEADER;
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    out[start + 8] = kind;
    let crc = crc32c::crc32c(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes the frame at the start of `buf`: `Ok(None)` if more bytes are needed, else the
/// frame and its length. Total: never panics, never allocates more than the frame's own
/// (bounded) payload.
pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
    if buf.len() < HEADER {
        return Ok(None);
    }
    let len = u32_at(buf, 0) as usize;
    if len > MAX_PAYLOAD {
        return Err(FrameError::TooLong(len as u64));
    }
    if buf.len() < HEADER + len {
        return Ok(None);
    }
    if crc32c::crc32c(&buf[8..HEADER + len]) != u32_at(buf, 4) {
        return Err(FrameError::Checksum);
    }
    let p = &buf[HEADER..HEADER + len];
    let bad = |kind: &'static str, reason: &str| FrameError::Malformed {
        kind,
        reason: reason.into(),
    };
    let exact = |kind: &'static str, n: usize| {
        if p.len() == n {
            Ok(())
        } else {
            Err(bad(
                kind,
                &format!("payload of {} bytes, expected {n}", p.len()),
            ))
        }
    };
    let frame = match buf[8] {
        1 => {
            if p.len() < 26 {
                return Err(bad("hello", "payload cut short"));
            }
            let n = u16_at(p, 24) as usize;
            if n > MAX_NAME || p.len() < 26 + n {
                return Err(bad("hello", "bad name length"));
            }
            let name = std::str::from_utf8(&p[26..26 + n])
                .map_err(|_| bad("hello", "name is not UTF-8"))?;
            Frame::Hello {
                version: u32_at(p, 0),
                epoch: u32_at(p, 4),
                node_id: u64_at(p, 8),
                flush_lsn: Lsn(u64_at(p, 16)),
                name: name.to_string(),
                epochs: get_epochs(&p[26 + n..], "hello")?,
            }
        }
        2 => {
            if p.len() < 32 {
                return Err(bad("welcome", "payload cut short"));
            }
            let (chain, end) = get_chain(p, 32, "welcome")?;
            if end != p.len() {
                return Err(bad("welcome", "bytes after the chain"));
            }
            Frame::Welcome {
                epoch: u32_at(p, 0),
                node_id: u64_at(p, 8),
                start_lsn: Lsn(u64_at(p, 16)),
                primary_flush_lsn: Lsn(u64_at(p, 24)),
                chain,
            }
        }
        3 => {
            if p.len() < 8 {
                return Err(bad("wal", "payload cut short"));
            }
            if buf[9] & !(WAL_SYNC | WAL_EAGER) != 0 {
                return Err(bad("wal", &format!("unknown flags {:#x}", buf[9])));
            }
            Frame::Wal {
                start_lsn: Lsn(u64_at(p, 0)),
                bytes: p[8..].to_vec(),
                sync: buf[9] & WAL_SYNC != 0,
                eager: buf[9] & WAL_EAGER != 0,
            }
        }
        4 => {
            exact("feedback", 32)?;
            Frame::Feedback {
                write_lsn: Lsn(u64_at(p, 0)),
                flush_lsn: Lsn(u64_at(p, 8)),
                apply_lsn: Lsn(u64_at(p, 16)),
                time_us: u64_at(p, 24),
            }
        }
        5 => {
            exact("keepalive", 16)?;
            Frame::Keepalive {
                primary_flush_lsn: Lsn(u64_at(p, 0)),
                time_us: u64_at(p, 8),
            }
        }
        6 => {
            let message = get_message(p, 2, "error")?;
            Frame::Error {
                code: u16_at(p, 0),
                message,
            }
        }
        7 => {
            if p.len() < 16 {
                return Err(bad("snapshot_begin", "payload cut short"));
            }
            Frame::SnapshotBegin {
                redo_lsn: Lsn(u64_at(p, 0)),
                page_count: u64_at(p, 8),
                epochs: get_epochs(&p[16..], "snapshot_begin")?,
            }
        }
        8 => {
            if p.len() < 8 || !(p.len() - 8).is_multiple_of(storage::PAGE_SIZE) {
                return Err(bad("snapshot_pages", "not whole pages"));
            }
            Frame::SnapshotPages {
                first_page: u64_at(p, 0),
                bytes: p[8..].to_vec(),
            }
        }
        9 => {
            exact("snapshot_end", 0)?;
            Frame::SnapshotEnd
        }
        11 => {
            if p.len() < 4 {
                return Err(bad("page_list", "payload cut short"));
            }
            let n = u32_at(p, 0) as usize;
            if n > MAX_PAGE_LIST || p.len() != 4 + 8 * n {
                return Err(bad("page_list", "bad length"));
            }
            Frame::PageList {
                pages: (0..n).map(|i| u64_at(p, 4 + 8 * i)).collect(),
            }
        }
        10 => {
            let message = get_message(p, 8, "diverged")?;
            Frame::Diverged {
                fork_lsn: Lsn(u64_at(p, 0)),
                message,
            }
        }
        12 => {
            exact("catch_up", 16)?;
            Frame::CatchUp {
                until_lsn: Lsn(u64_at(p, 0)),
                timeout_ms: u64_at(p, 8),
            }
        }
        13 => {
            exact("promote", 0)?;
            Frame::Promote
        }
        14 => {
            exact("role_query", 0)?;
            Frame::RoleQuery
        }
        15 => {
            if p.len() < 24 {
                return Err(bad("role_report", "payload cut short"));
            }
            if p[0] > 1 || p[1..4] != [0, 0, 0] {
                return Err(bad("role_report", "bad role byte"));
            }
            let (chain, end) = get_chain(p, 24, "role_report")?;
            let message = get_message(p, end, "role_report")?;
            Frame::RoleReport {
                primary: p[0] == 1,
                epoch: u32_at(p, 4),
                apply_lsn: Lsn(u64_at(p, 8)),
                node_id: u64_at(p, 16),
                chain,
                message,
            }
        }
        16 => {
            if p.len() < 12 {
                return Err(bad("page_versions", "payload cut short"));
            }
            let n = u32_at(p, 8) as usize;
            if n > MAX_PAGE_VERSIONS || p.len() != 12 + 12 * n {
                return Err(bad("page_versions", "bad length"));
            }
            Frame::PageVersions {
                first_page: u64_at(p, 0),
                versions: (0..n)
                    .map(|i| (u64_at(p, 12 + 12 * i), u32_at(p, 20 + 12 * i)))
                    .collect(),
            }
        }
        k => return Err(FrameError::Kind(k)),
    };
    Ok(Some((frame, HEADER + len)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_chain() -> impl Strategy<Value = Vec<ChainLink>> {
        prop::collection::vec(
            (any::<u64>(), "[a-z0-9_-]{0,64}")
                .prop_map(|(node_id, name)| ChainLink { node_id, name }),
            0..=MAX_CHAIN,
        )
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        prop_oneof![
            (
                any::<u32>(),
                any::<u32>(),
                any::<u64>(),
                any::<u64>(),
                "[a-z0-9_-]{0,64}",
                prop::collection::vec((any::<u32>(), any::<u64>()), 0..4),
            )
                .prop_map(|(version, epoch, node_id, f, name, e)| Frame::Hello {
                    version,
                    epoch,
                    node_id,
                    flush_lsn: Lsn(f),
                    name,
                    epochs: e.into_iter().map(|(e, l)| (e, Lsn(l))).collect(),
                }),
            (
                any::<u32>(),
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                arb_chain()
            )
                .prop_map(|(epoch, node_id, s, f, chain)| Frame::Welcome {
                    epoch,
                    node_id,
                    start_lsn: Lsn(s),
                    primary_flush_lsn: Lsn(f),
                    chain,
                }),
            (
                any::<u64>(),
                prop::collection::vec(any::<u8>(), 0..3000),
                any::<bool>(),
                any::<bool>()
            )
                .prop_map(|(s, bytes, sync, eager)| Frame::Wal {
                    start_lsn: Lsn(s),
                    bytes,
                    sync,
                    eager,
                }),
            (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(w, f, a, t)| {
                Frame::Feedback {
                    write_lsn: Lsn(w),
                    flush_lsn: Lsn(f),
                    apply_lsn: Lsn(a),
                    time_us: t,
                }
            }),
            (any::<u64>(), any::<u64>()).prop_map(|(f, t)| Frame::Keepalive {
                primary_flush_lsn: Lsn(f),
                time_us: t
            }),
            (any::<u16>(), "[ -~]{0,200}")
                .prop_map(|(code, message)| Frame::Error { code, message }),
            (any::<u64>(), any::<u64>()).prop_map(|(u, t)| Frame::CatchUp {
                until_lsn: Lsn(u),
                timeout_ms: t
            }),
            Just(Frame::Promote),
            Just(Frame::RoleQuery),
            (
                any::<bool>(),
                any::<u32>(),
                any::<u64>(),
                any::<u64>(),
                arb_chain(),
                "[ -~]{0,200}"
            )
                .prop_map(|(primary, epoch, a, node_id, chain, message)| {
                    Frame::RoleReport {
                        primary,
                        epoch,
                        apply_lsn: Lsn(a),
                        node_id,
                        chain,
                        message,
                    }
                }),
            (
                any::<u64>(),
                prop::collection::vec((any::<u64>(), any::<u32>()), 0..50)
            )
                .prop_map(|(first_page, versions)| Frame::PageVersions {
                    first_page,
                    versions
                }),
        ]
    }

    #[test]
    fn a_long_message_is_cut_at_a_character_boundary() {
        let message = "é".repeat(MAX_MESSAGE); // 2 bytes each: the cut falls inside one
        let mut buf = Vec::new();
        Frame::Error { code: 3, message }.encode(&mut buf);
        let (f, _) = decode(&buf).unwrap().unwrap();
        let Frame::Error { message, .. } = f else {
            panic!("{f:?}")
        };
        assert_eq!(message, "é".repeat(MAX_MESSAGE / 2));
    }

    proptest! {
        #[test]
        fn frames_round_trip_and_cuts_are_incomplete(frames in prop::collection::vec(arb_frame(), 1..10)) {
            let mut buf = Vec::new();
            for f in &frames {
                f.encode(&mut buf);
            }
            let mut at = 0;
            for f in &frames {
                let (got, len) = decode(&buf[at..]).unwrap().unwrap();
                prop_assert_eq!(&got, f);
                // Every strict prefix of a frame is "need more", never an error.
                for cut in [0, 1, HEADER - 1, HEADER, len - 1] {
                    if cut < len {
                        prop_assert_eq!(decode(&buf[at..at + cut]).unwrap(), None);
                    }
                }
                at += len;
            }
            prop_assert_eq!(at, buf.len());
        }

        #[test]
        fn a_flipped_bit_is_caught(frame in arb_frame(), bit in 0usize..64) {
            let mut buf = Vec::new();
            frame.encode(&mut buf);
            let i = 4 + (bit / 8) % (buf.len() - 4);
            buf[i] ^= 1 << (bit % 8);
            // Either the checksum catches it, or (a flipped length) it reads as incomplete or
            // too long; never as a different valid frame.
            if let Ok(Some((f, _))) = decode(&buf) {
                prop_assert_eq!(f, frame);
            }
        }
    }

    #[test]
    fn absurd_lengths_are_refused_before_allocation() {
        let mut b = vec![0u8; HEADER];
        b[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&b), Err(FrameError::TooLong(u32::MAX as u64)));
        let mut ok = Vec::new();
        Frame::Keepalive {
            primary_flush_lsn: Lsn(1),
            time_us: 2,
        }
        .encode(&mut ok);
        ok[8] = 99;
        let crc = crc32c::crc32c(&ok[8..]);
        ok[4..8].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&ok), Err(FrameError::Kind(99)));
    }

    #[test]
    fn wal_flags_decode_bit_by_bit_and_unknown_bits_are_refused() {
        for flags in 0u8..8 {
            let mut b = Vec::new();
            encode_wal(Lsn(5), b"xy", false, false, &mut b);
            b[9] = flags;
            let crc = crc32c::crc32c(&b[8..]);
            b[4..8].copy_from_slice(&crc.to_le_bytes());
            match decode(&b) {
                Ok(Some((Frame::Wal { sync, eager, .. }, _))) => {
                    assert!(flags < 4, "flags {flags:#x} accepted");
                    assert_eq!((sync, eager), (flags & 1 != 0, flags & 2 != 0));
                }
                Err(FrameError::Malformed { .. }) => assert!(flags >= 4, "flags {flags:#x}"),
                other => panic!("flags {flags:#x}: {other:?}"),
            }
        }
    }
}
