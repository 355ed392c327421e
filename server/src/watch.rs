//! WATCH: which connections watch which keys, and flagging them when a key changes (Redis's
//! `touchWatchedKey`). A write marks the keys it changed (`model::Writer::touched`); the
//! group that applied it flags every connection watching one of them, and an EXEC whose flag
//! is set when its turn comes in the group answers nil.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

#[derive(Default)]
pub struct Watches {
    /// Keys watched by some connection: writes skip the lock when there are none.
    count: AtomicUsize,
    map: Mutex<HashMap<Vec<u8>, Vec<Weak<AtomicBool>>>>,
}

/// A connection's watch: its flag, its keys, and the earliest expiry among them (a watched
/// key that expires before EXEC counts as changed, as in Redis 6.0.9 and later).
pub struct Watch {
    pub dirty: Arc<AtomicBool>,
    pub keys: Vec<Vec<u8>>,
    pub deadline: Option<u64>,
}

impl Watch {
    /// Whether EXEC must abort at `now_ms`.
    pub fn broken(&self, now_ms: u64) -> bool {
        self.dirty.load(Ordering::Acquire) || self.deadline.is_some_and(|d| d <= now_ms)
    }
}

impl Watches {
    pub fn watch(&self, w: &mut Watch, key: &[u8]) {
        if w.keys.iter().any(|k| k == key) {
            return;
        }
        w.keys.push(key.to_vec());
        let mut map = self.map.lock();
        map.entry(key.to_vec())
            .or_default()
            .push(Arc::downgrade(&w.dirty));
        self.count.store(map.len(), Ordering::Release);
    }

    pub fn unwatch(&self, w: &Watch) {
        let mut map = self.map.lock();
        for k in &w.keys {
            if let Some(v) = map.get_mut(k) {
                v.retain(|f| f.upgrade().is_some_and(|f| !Arc::ptr_eq(&f, &w.dirty)));
                if v.is_empty() {
                    map.remove(k);
                }
            }
        }
        self.count.store(map.len(), Ordering::Release);
    }

    /// Whether any connection watches a key (writes keep the keys they change only then).
    pub fn active(&self) -> bool {
        self.count.load(Ordering::Acquire) > 0
    }

    /// Flags every connection watching one of `keys` (and drops watches nobody holds).
    pub fn touch(&self, keys: &[Vec<u8>]) {
        if keys.is_empty() || self.count.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut map = self.map.lock();
        for k in keys {
            if let Some(v) = map.get_mut(k) {
                v.retain(|f| match f.upgrade() {
                    Some(f) => {
                        f.store(true, Ordering::Release);
                        true
                    }
                    None => false,
                });
                if v.is_empty() {
                    map.remove(k);
                }
            }
        }
        self.count.store(map.len(), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_touch_flags_only_the_watchers_of_that_key() {
        let ws = Watches::default();
        let mut a = Watch {
            dirty: Arc::default(),
            keys: Vec::new(),
            deadline: None,
        };
        let mut b = Watch {
            dirty: Arc::default(),
            keys: Vec::new(),
            deadline: Some(100),
        };
        ws.watch(&mut a, b"x");
        ws.watch(&mut b, b"y");
        ws.touch(&[b"x".to_vec()]);
        assert!(a.broken(0));
        assert!(!b.broken(99));
        assert!(b.broken(100));
        ws.unwatch(&b);
        ws.touch(&[b"y".to_vec()]);
        assert!(!b.dirty.load(Ordering::Acquire));
        ws.unwatch(&a);
        assert_eq!(ws.count.load(Ordering::Acquire), 0);
    }
}
