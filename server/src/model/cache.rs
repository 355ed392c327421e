//! The metadata of collections a group of writes works on, kept between its commands.
//!
//! Every collection command reads its key's metadata entry and writes it back (the size
//! changes with each member). When the writes of many connections are applied together
//! (`Shared::apply_queued`) and they go to the same collection — a feed's list, a
//! leaderboard's sorted set — that entry is looked up and rewritten once per command: two of
//! SADD's three tree operations, two of ZADD's five. The cache keeps the decoded metadata for
//! the group instead and writes what changed once, before the group commits (`flush`): the
//! engine sees the same final entries, so the WAL, replicas and a crash see no difference.
//!
//! It is active only while a command runs that reaches metadata through `Writer`'s methods
//! alone (`commands::caches_meta`); before any other command — and before the group's
//! counts are written — it is flushed and emptied, so nothing ever reads a metadata entry
//! from the transaction that the cache holds newer.

use storage::WriteTxn;

use super::{Kind, Meta};

/// At most this many keys are kept; the next one flushes them all first (a group touching
/// hundreds of keys gains nothing from the cache, and the search stays short).
const CAPACITY: usize = 32;

struct Entry {
    /// The engine key of the metadata entry (`layout::meta_key`).
    key: Vec<u8>,
    /// The collection's metadata as of now.
    meta: Meta,
    /// Newer than the transaction's entry: written at the next flush.
    dirty: bool,
}

/// See the module's documentation.
#[derive(Default)]
pub struct MetaCache {
    entries: Vec<Entry>,
    /// Set by `commands::apply` around a command that may use the cache.
    pub(crate) active: bool,
}

impl MetaCache {
    /// The collection metadata the cache holds under engine key `mk`, if any. (Absent keys
    /// are not kept: a new collection enters with its first `put`.)
    pub fn get(&self, mk: &[u8]) -> Option<&Meta> {
        if !self.active {
            return None;
        }
        self.entries.iter().find(|e| e.key == mk).map(|e| &e.meta)
    }

    /// Remembers what the transaction holds under `mk`: a collection's metadata (strings
    /// are not kept: their value is in the entry).
    pub fn note_clean(
        &mut self,
        tx: &mut WriteTxn<'_>,
        mk: &[u8],
        meta: &Meta,
    ) -> storage::Result<()> {
        if !self.active || meta.kind == Kind::String {
            return Ok(());
        }
        if let Some(e) = self.entries.iter_mut().find(|e| e.key == mk) {
            e.meta = meta.clone();
            e.dirty = false;
            return Ok(());
        }
        if self.entries.len() >= CAPACITY {
            self.flush(tx)?;
        }
        self.entries.push(Entry {
            key: mk.to_vec(),
            meta: meta.clone(),
            dirty: false,
        });
        Ok(())
    }

    /// Takes a collection's new metadata to be written at the next flush; false when the
    /// caller must write it itself (inactive, a string, or no room).
    pub fn put(&mut self, mk: &[u8], meta: &Meta) -> bool {
        if !self.active || meta.kind == Kind::String {
            return false;
        }
        if let Some(e) = self.entries.iter_mut().find(|e| e.key == mk) {
            e.meta = meta.clone();
            e.dirty = true;
            return true;
        }
        if self.entries.len() >= CAPACITY {
            return false;
        }
        self.entries.push(Entry {
            key: mk.to_vec(),
            meta: meta.clone(),
            dirty: true,
        });
        true
    }

    /// Before the caller writes or deletes the entry under `mk` in the transaction itself:
    /// a pending newer version is written first (so a `replace` hands back what the key
    /// really held), and the cache forgets the key.
    pub fn take(&mut self, tx: &mut WriteTxn<'_>, mk: &[u8]) -> storage::Result<()> {
        if let Some(i) = self.entries.iter().position(|e| e.key == mk) {
            let e = self.entries.swap_remove(i);
            if e.dirty {
                write(tx, &e)?;
            }
        }
        Ok(())
    }

    /// Forgets the key, written or not: the caller is about to overwrite or delete its entry
    /// in the transaction, so a pending newer version need not be written first.
    pub fn forget(&mut self, mk: &[u8]) {
        if let Some(i) = self.entries.iter().position(|e| e.key == mk) {
            self.entries.swap_remove(i);
        }
    }

    /// Writes every pending entry to the transaction and empties the cache.
    pub fn flush(&mut self, tx: &mut WriteTxn<'_>) -> storage::Result<()> {
        for e in self.entries.drain(..) {
            if e.dirty {
                write(tx, &e)?;
            }
        }
        Ok(())
    }

    /// Forgets everything, written or not (the group's transaction failed).
    pub fn discard(&mut self) {
        self.entries.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn write(tx: &mut WriteTxn<'_>, e: &Entry) -> storage::Result<()> {
    tx.put(&e.key, &e.meta.encode(b"")).map(|_| ())
}
