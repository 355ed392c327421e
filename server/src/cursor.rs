//! SCAN-family cursors as clients expect them: decimal numbers (redis-py and the `redis`
//! crate parse the cursor as an integer). A cursor names a position the server keeps: the
//! last key or member a page examined, so the next page starts right after it and every key
//! present for the whole scan comes exactly once. The newest `MAX_CURSORS` positions are
//! kept; an older cursor, or one from before a restart, is refused with a clear error.

use std::collections::{HashMap, VecDeque};

use parking_lot::Mutex;

/// Positions kept (each at most a key or member, 8 KiB).
pub const MAX_CURSORS: usize = 65_536;

pub struct Cursors {
    inner: Mutex<Inner>,
}

struct Inner {
    next: u64,
    map: HashMap<u64, Vec<u8>>,
    order: VecDeque<u64>,
}

impl Default for Cursors {
    fn default() -> Self {
        // Ids of another run of the server do not resolve here by chance.
        let base = (crate::shared::now_us() % 1_000_000_000) * 1_000_000 + 1;
        Cursors {
            inner: Mutex::new(Inner {
                next: base,
                map: HashMap::new(),
                order: VecDeque::new(),
            }),
        }
    }
}

impl Cursors {
    /// A new cursor for `pos` (an internal cursor: `k`/`m` + hex of the last key examined).
    pub fn put(&self, pos: Vec<u8>) -> u64 {
        let mut g = self.inner.lock();
        let id = g.next;
        g.next += 1;
        g.map.insert(id, pos);
        g.order.push_back(id);
        while g.order.len() > MAX_CURSORS {
            if let Some(old) = g.order.pop_front() {
                g.map.remove(&old);
            }
        }
        id
    }

    pub fn get(&self, id: u64) -> Option<Vec<u8>> {
        self.inner.lock().map.get(&id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_resolve_until_evicted() {
        let c = Cursors::default();
        let first = c.put(b"ka1".to_vec());
        assert_eq!(c.get(first).as_deref(), Some(&b"ka1"[..]));
        for i in 0..MAX_CURSORS {
            c.put(format!("k{i}").into_bytes());
        }
        assert_eq!(c.get(first), None);
        assert!(c.get(first + MAX_CURSORS as u64).is_some());
    }
}
