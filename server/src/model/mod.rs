//! The Redis data model on the one B+tree, as Apache Kvrocks lays it on RocksDB: one
//! metadata entry per key (type, expiry, and for a collection its version and size) and one
//! entry per member under the key's current version. Deleting or expiring a collection
//! removes its metadata only — O(1) — and leaves a marker from which `collect_garbage`
//! removes the members in bounded steps. WAL, replication, DIGEST, base backups, rewind and
//! recovery see engine keys and pages only, so they cover every type unchanged.
//!
//! [`layout`] places the entries; this module reads and writes metadata; the commands in
//! `commands/` build each type on it.

mod cache;
pub mod layout;
pub mod number;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::ops::Bound;

use storage::{ReadTxn, WriteTxn};

use layout::{garbage_key, meta_key, COUNT_KEY, EXPIRES_KEY, FORMAT, FORMAT_KEY, VERSION_KEY};

/// A key's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    String = 0,
    Hash = 1,
    Set = 2,
    ZSet = 3,
    List = 4,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            0 => Kind::String,
            1 => Kind::Hash,
            2 => Kind::Set,
            3 => Kind::ZSet,
            4 => Kind::List,
            _ => return None,
        })
    }

    /// The name `TYPE` answers.
    pub fn name(self) -> &'static str {
        match self {
            Kind::String => "string",
            Kind::Hash => "hash",
            Kind::Set => "set",
            Kind::ZSet => "zset",
            Kind::List => "list",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "STRING" => Kind::String,
            "HASH" => Kind::Hash,
            "SET" => Kind::Set,
            "ZSET" => Kind::ZSet,
            "LIST" => Kind::List,
            _ => return None,
        })
    }
}

/// Where a list's first item sits when it is created: items are pushed at both ends.
pub const LIST_MIDDLE: u64 = 1 << 63;

/// A key's metadata.
///
/// ```text
/// byte 0: kind (bits 0-6) | has-expiry (bit 7)
/// [u64 LE: expiry, ms since the Unix epoch]   if has-expiry
/// string:      the value
/// collections: version u64 LE, size u64 LE    (list: + head u64 LE; items at head..head+size)
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    pub kind: Kind,
    pub expire_at: Option<u64>,
    pub version: u64,
    pub size: u64,
    pub head: u64,
}

/// A metadata entry that does not decode: a bug or damage, reported, never a panic.
#[derive(Debug, thiserror::Error)]
#[error("the metadata of a key does not decode ({0}); run `replidb check`")]
pub struct BadMeta(&'static str);

impl Meta {
    pub fn new(kind: Kind, version: u64) -> Meta {
        Meta {
            kind,
            expire_at: None,
            version,
            size: 0,
            head: LIST_MIDDLE,
        }
    }

    /// Decodes a metadata value: the metadata and, for a string, where its value starts.
    pub fn decode(b: &[u8]) -> std::result::Result<(Meta, usize), BadMeta> {
        let first = *b.first().ok_or(BadMeta("empty"))?;
        let kind = Kind::from_u8(first & 0x7f).ok_or(BadMeta("unknown type"))?;
        let mut at = 1;
        let u64_at = |at: usize| -> std::result::Result<u64, BadMeta> {
            b.get(at..at + 8)
                .and_then(|s| s.try_into().ok())
                .map(u64::from_le_bytes)
                .ok_or(BadMeta("short"))
        };
        let expire_at = if first & 0x80 != 0 {
            at += 8;
            Some(u64_at(1)?)
        } else {
            None
        };
        let mut m = Meta::new(kind, 0);
        m.expire_at = expire_at;
        if kind != Kind::String {
            m.version = u64_at(at)?;
            m.size = u64_at(at + 8)?;
            at += 16;
            if kind == Kind::List {
                m.head = u64_at(at)?;
                at += 8;
            }
        }
        Ok((m, at))
    }

    /// The encoded metadata; a string's value follows.
    pub fn encode(&self, value: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(1 + 8 + 24 + value.len());
        v.push(self.kind as u8 | if self.expire_at.is_some() { 0x80 } else { 0 });
        if let Some(at) = self.expire_at {
            v.extend_from_slice(&at.to_le_bytes());
        }
        if self.kind != Kind::String {
            v.extend_from_slice(&self.version.to_le_bytes());
            v.extend_from_slice(&self.size.to_le_bytes());
            if self.kind == Kind::List {
                v.extend_from_slice(&self.head.to_le_bytes());
            }
        }
        v.extend_from_slice(value);
        v
    }

    pub fn expired(&self, now_ms: u64) -> bool {
        self.expire_at.is_some_and(|at| at <= now_ms)
    }
}

/// An engine error, or metadata that does not decode.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Storage(#[from] storage::Error),
    #[error(transparent)]
    BadMeta(#[from] BadMeta),
}

pub type Result<T> = std::result::Result<T, Error>;

/// What reads need of the tree: a snapshot (`ReadTxn`) or a write transaction.
pub trait Store {
    fn get_raw(&self, k: &[u8]) -> storage::Result<Option<Cow<'_, [u8]>>>;
    fn visit_raw(
        &self,
        lo: Bound<&[u8]>,
        hi: Bound<&[u8]>,
        reverse: bool,
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> storage::Result<()>;
}

impl Store for ReadTxn<'_> {
    fn get_raw(&self, k: &[u8]) -> storage::Result<Option<Cow<'_, [u8]>>> {
        self.get(k)
    }
    fn visit_raw(
        &self,
        lo: Bound<&[u8]>,
        hi: Bound<&[u8]>,
        reverse: bool,
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> storage::Result<()> {
        self.visit(lo, hi, reverse, f)
    }
}

impl Store for WriteTxn<'_> {
    fn get_raw(&self, k: &[u8]) -> storage::Result<Option<Cow<'_, [u8]>>> {
        Ok(self.get(k)?.map(Cow::Owned))
    }
    fn visit_raw(
        &self,
        lo: Bound<&[u8]>,
        hi: Bound<&[u8]>,
        reverse: bool,
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> storage::Result<()> {
        self.visit(lo, hi, reverse, f)
    }
}

fn as_ref(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(k) => Bound::Included(k.as_slice()),
        Bound::Excluded(k) => Bound::Excluded(k.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// Visits owned bounds (see [`Store::visit_raw`]).
pub fn visit<S: Store + ?Sized>(
    s: &S,
    (lo, hi): &(Bound<Vec<u8>>, Bound<Vec<u8>>),
    reverse: bool,
    f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
) -> storage::Result<()> {
    s.visit_raw(as_ref(lo), as_ref(hi), reverse, f)
}

/// `visit_keys`'s callback: (user key, metadata, a string's value) → go on?
pub type KeyVisitor<'a> = dyn FnMut(&[u8], &Meta, &[u8]) -> bool + 'a;

/// Walks the metadata entries inside `bounds` in key order: `f` gets each user key, its
/// metadata (expired or not) and, for a string, its value, and says whether to go on. An
/// entry that does not decode ends the walk with its error.
pub fn visit_keys<S: Store + ?Sized>(
    s: &S,
    bounds: &(Bound<Vec<u8>>, Bound<Vec<u8>>),
    f: &mut KeyVisitor<'_>,
) -> Result<()> {
    let mut bad = None;
    visit(s, bounds, false, &mut |k, v| match Meta::decode(v) {
        Ok((m, at)) => f(layout::user_key(k), &m, &v[at..]),
        Err(e) => {
            bad = Some(e);
            false
        }
    })?;
    match bad {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// A live key: its metadata and raw metadata value (a string's value at `.2..`).
pub struct Found<'a> {
    pub meta: Meta,
    pub raw: Cow<'a, [u8]>,
    pub value_at: usize,
}

impl Found<'_> {
    /// A string's value.
    pub fn value(&self) -> &[u8] {
        &self.raw[self.value_at..]
    }
}

/// The key's metadata if it exists and has not expired by `now_ms` (expired keys are absent
/// to every reader, on a primary and on a replica, whether or not their delete has come).
pub fn lookup<'s, S: Store + ?Sized>(
    s: &'s S,
    key: &[u8],
    now_ms: u64,
) -> Result<Option<Found<'s>>> {
    let Some(raw) = s.get_raw(&meta_key(key))? else {
        return Ok(None);
    };
    let (meta, value_at) = Meta::decode(&raw)?;
    if meta.expired(now_ms) {
        return Ok(None);
    }
    Ok(Some(Found {
        meta,
        raw,
        value_at,
    }))
}

/// The key's metadata as stored, expired or not.
pub fn lookup_any<S: Store + ?Sized>(s: &S, key: &[u8]) -> Result<Option<Meta>> {
    match s.get_raw(&meta_key(key))? {
        Some(raw) => Ok(Some(Meta::decode(&raw)?.0)),
        None => Ok(None),
    }
}

/// The number of keys (expired ones whose delete has not come yet included, as Redis's
/// DBSIZE counts them).
pub fn key_count<S: Store + ?Sized>(s: &S) -> Result<u64> {
    Ok(read_u64(s, COUNT_KEY)?)
}

/// The number of keys with an expiry (INFO keyspace's `expires`).
pub fn expires_count<S: Store + ?Sized>(s: &S) -> Result<u64> {
    Ok(read_u64(s, EXPIRES_KEY)?)
}

fn read_u64<S: Store + ?Sized>(s: &S, k: &[u8]) -> storage::Result<u64> {
    Ok(s.get_raw(k)?
        .and_then(|v| v.get(..8).and_then(|b| b.try_into().ok()))
        .map_or(0, u64::from_le_bytes))
}

/// Whether the tree holds data of another layout: keys outside this layout's internal
/// records but no format marker (a directory written before the data model had one). Such a
/// directory is refused, not misread.
pub fn foreign_layout<S: Store + ?Sized>(s: &S) -> storage::Result<bool> {
    let mut any = false;
    s.visit_raw(Bound::Unbounded, Bound::Unbounded, false, &mut |k, _| {
        any = !matches!(k, COUNT_KEY | EXPIRES_KEY | VERSION_KEY | FORMAT_KEY);
        !any
    })?;
    Ok(any && s.get_raw(FORMAT_KEY)?.as_deref() != Some(FORMAT))
}

/// Collections with at most this many members are deleted at once; larger ones leave a
/// marker for `collect_garbage`.
pub const DELETE_INLINE: u64 = 64;

/// What a group of writes changed: how many key changes, which keys while someone WATCHes
/// (otherwise the keys are not kept: no allocation per write), and the changes to the key
/// counts not written yet (`flush_counts`: once per group, not once per key).
#[derive(Default)]
pub struct Touched {
    /// Collections' metadata read or written by the group's commands (`cache`).
    pub metas: cache::MetaCache,
    pub count: usize,
    pub keep: bool,
    pub keys: Vec<Vec<u8>>,
    pub keys_delta: i64,
    pub expires_delta: i64,
}

/// Writes the key counts' pending changes (at the end of a group's transaction, and before
/// DBSIZE reads them inside one).
pub fn flush_counts(tx: &mut WriteTxn<'_>, t: &mut Touched) -> Result<()> {
    t.metas.flush(tx)?;
    for (counter, d) in [
        (COUNT_KEY, std::mem::take(&mut t.keys_delta)),
        (EXPIRES_KEY, std::mem::take(&mut t.expires_delta)),
    ] {
        if d == 0 {
            continue;
        }
        let n = read_u64(&*tx, counter)?;
        if counter == COUNT_KEY && n == 0 && d > 0 && tx.get(FORMAT_KEY)?.is_none() {
            // The first key of a new keyspace marks its layout.
            tx.put(FORMAT_KEY, FORMAT)?;
        }
        let n = n.saturating_add_signed(d);
        if n == 0 {
            tx.delete(counter)?;
        } else {
            tx.put(counter, &n.to_le_bytes())?;
        }
    }
    Ok(())
}

/// Write-side operations: the metadata of keys, their count and expiry index, and the
/// deletion of collections.
pub struct Writer<'t, 'a> {
    pub tx: &'t mut WriteTxn<'a>,
    pub now_ms: u64,
    /// What the writes changed (for WATCH and blocked pops).
    pub touched: &'t mut Touched,
}

impl Writer<'_, '_> {
    /// The key's metadata if it exists and has not expired; an expired key is deleted here
    /// (the lazy half of expiry: on a primary, through the WAL like any write).
    pub fn lookup(&mut self, key: &[u8]) -> Result<Option<(Meta, Vec<u8>)>> {
        let mk = meta_key(key);
        let (meta, value) = match self.touched.metas.get(&mk) {
            Some(m) => (m.clone(), Vec::new()),
            None => {
                let Some(raw) = self.tx.get(&mk)? else {
                    return Ok(None);
                };
                let (meta, at) = Meta::decode(&raw)?;
                self.touched.metas.note_clean(self.tx, &mk, &meta)?;
                (meta, raw[at..].to_vec())
            }
        };
        if meta.expired(self.now_ms) {
            self.delete(key, &meta)?;
            return Ok(None);
        }
        Ok(Some((meta, value)))
    }

    /// Writes the group's cached metadata and stops caching until `cache_metas(true)`:
    /// before a command that may read or write metadata entries in the transaction itself.
    pub fn cache_metas(&mut self, on: bool) -> storage::Result<()> {
        if !on && !self.touched.metas.is_empty() {
            self.touched.metas.flush(self.tx)?;
        }
        self.touched.metas.active = on;
        Ok(())
    }

    /// Writes a key's metadata (and a string's value). `old` is what the key had (None: a
    /// new key): the key count and the expiry index follow the change.
    pub fn put(&mut self, key: &[u8], old: Option<&Meta>, meta: &Meta, value: &[u8]) -> Result<()> {
        let mk = meta_key(key);
        if !self.touched.metas.put(&mk, meta) {
            self.touched.metas.forget(&mk);
            self.tx.put(&mk, &meta.encode(value))?;
        }
        if old.is_none() {
            self.touched.keys_delta += 1;
        }
        let before = old.and_then(|m| m.expire_at);
        if before != meta.expire_at {
            if let Some(at) = before {
                self.tx.delete(&layout::expiry_key(at, key))?;
            }
            if let Some(at) = meta.expire_at {
                self.tx.put(&layout::expiry_key(at, key), b"")?;
            }
            match (before, meta.expire_at) {
                (None, Some(_)) => self.touched.expires_delta += 1,
                (Some(_), None) => self.touched.expires_delta -= 1,
                _ => {}
            }
        }
        self.touch(key);
        Ok(())
    }

    pub fn touch(&mut self, key: &[u8]) {
        self.touched.count += 1;
        if self.touched.keep && self.touched.keys.last().map(Vec::as_slice) != Some(key) {
            self.touched.keys.push(key.to_vec());
        }
    }

    /// A version no collection has had: members of a deleted collection that are not
    /// collected yet never show through a new one under the same key.
    pub fn new_version(&mut self) -> Result<u64> {
        let v = read_u64(&*self.tx, VERSION_KEY)? + 1;
        self.tx.put(VERSION_KEY, &v.to_le_bytes())?;
        if v == 1 && self.tx.get(FORMAT_KEY)?.is_none() {
            // The tree's first record of this layout marks it, whatever writes it.
            self.tx.put(FORMAT_KEY, FORMAT)?;
        }
        Ok(v)
    }

    /// Deletes a key: its metadata and expiry entry at once; a collection's members at once
    /// when it is small, in the background (`collect_garbage`) otherwise.
    pub fn delete(&mut self, key: &[u8], meta: &Meta) -> Result<()> {
        let mk = meta_key(key);
        self.touched.metas.forget(&mk);
        self.tx.delete(&mk)?;
        if let Some(at) = meta.expire_at {
            self.tx.delete(&layout::expiry_key(at, key))?;
            self.touched.expires_delta -= 1;
        }
        self.touched.keys_delta -= 1;
        self.touch(key);
        self.drop_members(key, meta)
    }

    /// Sets `key` to `value`, a string with no expiry, whatever it held, expired or not
    /// (`SET` without options, `MSET`): the put hands back the old entry, so this is one
    /// descent where a lookup and a put took two. The counts and the expiry index follow.
    pub fn set_plain(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let meta = Meta::new(Kind::String, 0);
        let mk = meta_key(key);
        self.touched.metas.take(self.tx, &mk)?;
        match self.tx.replace(&mk, &meta.encode(value))? {
            None => self.touched.keys_delta += 1,
            Some(raw) => {
                let (old, _) = Meta::decode(&raw)?;
                if let Some(at) = old.expire_at {
                    self.tx.delete(&layout::expiry_key(at, key))?;
                    self.touched.expires_delta -= 1;
                }
                self.drop_members(key, &old)?;
            }
        }
        self.touch(key);
        Ok(())
    }

    /// The members of a collection whose metadata entry is gone or overwritten: deleted now
    /// if few, else left to the background collection behind a garbage marker.
    fn drop_members(&mut self, key: &[u8], meta: &Meta) -> Result<()> {
        if meta.kind != Kind::String {
            if meta.size <= DELETE_INLINE {
                self.delete_members(meta.kind, key, meta.version, usize::MAX)?;
            } else {
                self.tx
                    .put(&garbage_key(meta.version, meta.kind as u8, key), b"")?;
            }
        }
        Ok(())
    }

    /// Deletes up to `limit` members of one collection version; returns how many it did.
    pub fn delete_members(
        &mut self,
        kind: Kind,
        key: &[u8],
        version: u64,
        limit: usize,
    ) -> Result<usize> {
        let mut n = 0;
        let mut spaces = vec![layout::SUB];
        if kind == Kind::ZSet {
            spaces.push(layout::SCORE);
        }
        for space in spaces {
            let b = layout::prefix_bounds(&layout::prefix(space, key, version));
            let mut doomed = Vec::new();
            visit(&*self.tx, &b, false, &mut |k, _| {
                doomed.push(k.to_vec());
                doomed.len() + n < limit
            })?;
            for k in &doomed {
                self.tx.delete(k)?;
            }
            n += doomed.len();
            if n >= limit {
                break;
            }
        }
        Ok(n)
    }
}

/// One step of the background sweep on a primary: deletes up to `budget` keys whose expiry
/// has passed and up to `budget` members of deleted collections. Returns (expired keys
/// deleted, members collected); (0, 0) is nothing left to do now.
pub fn sweep(w: &mut Writer<'_, '_>, budget: usize) -> Result<(usize, usize)> {
    let mut due = Vec::new();
    let hi = layout::expiry_key(w.now_ms.saturating_add(1), b"");
    w.tx.visit(
        Bound::Included(&[layout::EXPIRY][..]),
        Bound::Excluded(&hi),
        false,
        &mut |k, _| {
            due.push(k.to_vec());
            due.len() < budget
        },
    )?;
    let mut done = 0;
    for entry in &due {
        let Some((at, key)) = layout::parse_expiry_key(entry) else {
            w.tx.delete(entry)?;
            continue;
        };
        match lookup_any(&*w.tx, key)? {
            Some(meta) if meta.expire_at == Some(at) => {
                w.delete(key, &meta)?;
                done += 1;
            }
            // An entry no key points to any more: drop it.
            _ => {
                w.tx.delete(entry)?;
            }
        }
    }
    Ok((done, collect_garbage(w, budget)?))
}

/// Removes up to `budget` members of deleted collections, oldest first.
pub fn collect_garbage(w: &mut Writer<'_, '_>, budget: usize) -> Result<usize> {
    let mut marker = None;
    w.tx.visit(
        Bound::Included(&[layout::GARBAGE][..]),
        Bound::Excluded(&[layout::GARBAGE + 1][..]),
        false,
        &mut |k, _| {
            marker = Some(k.to_vec());
            false
        },
    )?;
    let Some(m) = marker else {
        return Ok(0);
    };
    let Some((version, kind, key)) = layout::parse_garbage_key(&m) else {
        w.tx.delete(&m)?;
        return Ok(1);
    };
    let kind = Kind::from_u8(kind).unwrap_or(Kind::Hash);
    let key = key.to_vec();
    let n = w.delete_members(kind, &key, version, budget)?;
    if n < budget {
        w.tx.delete(&m)?;
    }
    Ok(n.max(1))
}
