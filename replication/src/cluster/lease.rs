//! Fencing by lease: in a cluster, a primary takes and acknowledges writes only while the
//! etcd lease behind its leader key is known to be alive. The deadline is counted from the
//! moment the last successful keepalive was *sent* (etcd restarts its TTL when it receives
//! it, later), less a margin, on this process's monotonic clock: every acknowledgement here
//! happens before etcd can expire the lease and another member can be elected.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub struct Lease {
    base: Instant,
    /// Off outside a cluster: writes never wait for a lease.
    enabled: AtomicBool,
    /// Writes are taken until this many milliseconds after `base` (0: not at all).
    deadline_ms: AtomicU64,
}

impl Default for Lease {
    fn default() -> Self {
        Lease::new()
    }
}

/// How much earlier than etcd could expire it this node stops trusting its lease.
pub fn margin(ttl: Duration) -> Duration {
    (ttl / 5).max(Duration::from_millis(100))
}

impl Lease {
    pub fn new() -> Lease {
        Lease {
            base: Instant::now(),
            enabled: AtomicBool::new(false),
            deadline_ms: AtomicU64::new(0),
        }
    }

    /// From now on writes need a live lease (a cluster member, from its start).
    pub fn enable(&self) {
        self.enabled.store(true, Ordering::SeqCst);
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// A keepalive sent at `sent` was answered with the lease alive for `ttl`: writes may be
    /// acknowledged until `sent + ttl - margin`.
    pub fn renewed(&self, sent: Instant, ttl: Duration) {
        let valid = ttl.saturating_sub(margin(ttl));
        // Milliseconds after `base`; a keepalive sent before `base` counts from further back.
        let until = match sent.checked_duration_since(self.base) {
            Some(after) => (after + valid).as_millis() as u64,
            None => valid
                .saturating_sub(self.base.duration_since(sent))
                .as_millis() as u64,
        };
        self.deadline_ms.store(until, Ordering::SeqCst);
    }

    /// Not the leader (any more): no writes until `renewed` again.
    pub fn revoke(&self) {
        self.deadline_ms.store(0, Ordering::SeqCst);
    }

    /// Whether a write may be taken or acknowledged now.
    pub fn holds(&self) -> bool {
        if !self.enabled.load(Ordering::Relaxed) {
            return true;
        }
        let now = self.base.elapsed().as_millis() as u64;
        now < self.deadline_ms.load(Ordering::SeqCst)
    }

    /// Milliseconds left on the lease (0 when lapsed or not the leader).
    pub fn remaining_ms(&self) -> u64 {
        let now = self.base.elapsed().as_millis() as u64;
        self.deadline_ms.load(Ordering::SeqCst).saturating_sub(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_holds_until_ttl_less_margin_after_the_keepalive_was_sent() {
        let l = Lease::new();
        assert!(l.holds(), "outside a cluster writes never wait");
        l.enable();
        assert!(!l.holds(), "a member holds no lease until it renews one");
        let ttl = Duration::from_secs(2);
        l.renewed(Instant::now(), ttl);
        assert!(l.holds());
        let left = l.remaining_ms();
        assert!(left <= 1600 && left > 1000, "{left}");
        // A keepalive sent long ago proves nothing now.
        l.renewed(Instant::now() - Duration::from_secs(5), ttl);
        assert!(!l.holds());
        l.renewed(Instant::now(), ttl);
        l.revoke();
        assert!(!l.holds());
    }
}
