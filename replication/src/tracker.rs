//! The primary's view of its replicas and the commits waiting for them: the concurrency core
//! of synchronous commit.
//!
//! Replica links report positions ([`Tracker::update`]), connect and disconnect; the
//! configuration (`sync-standbys`) may change at any time; committers wait for their LSN to
//! reach a quorum at a level ([`Tracker::wait`]), `WAIT` waits for a count of replicas. Every
//! change re-evaluates the waiters under the one lock and wakes, in LSN order, exactly those
//! whose condition now holds; the wake-ups happen after the lock is released. A waiter
//! registers its waker under the same lock its condition is checked under, so a report that
//! lands between the check and the registration cannot be missed. `tests/loom.rs` (run with
//! `--cfg loom`) explores the interleavings of committers, reports, disconnects and
//! configuration changes.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use storage::Lsn;

use crate::quorum::{
    flush_wanted, pos_of, quorum_lsn, sync_states, Level, ReplicaPos, SyncStandbys, SyncState,
};
use crate::sync::{Arc, Mutex, MutexGuard};

/// What a waiter waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The configured quorum has reached `lsn` at `level` (met at once when no quorum is
    /// configured: asynchronous replication, as PostgreSQL does with empty
    /// `synchronous_standby_names`).
    Quorum(Level, Lsn),
    /// At least `n` connected replicas have flushed `lsn` (`WAIT n`).
    Count(Lsn, usize),
}

/// One link of a replica: its slot (the same for every link of the same name) and which
/// link it is. Reports of a link that was replaced by a newer one are ignored, so an old
/// link's late disconnect cannot mark a reconnected replica gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkId {
    pub slot: usize,
    pub id: u64,
}

/// One replica as the primary sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaEntry {
    pub pos: ReplicaPos,
    /// The peer address of its current (or last) link.
    pub addr: String,
    /// Its link has sent everything the primary had durable at least once (else: catching up).
    pub streaming: bool,
    /// It is being seeded from a base backup.
    pub seeding: bool,
    /// When its last report arrived (ms on the caller's clock; 0: none yet).
    pub heard_ms: u64,
    /// Its current link (`LinkId::id`).
    pub link: u64,
}

struct Waiter {
    id: u64,
    target: Target,
    waker: Option<Waker>,
    /// Set when the condition held at some evaluation (the future then completes).
    met: bool,
}

#[derive(Default)]
struct Inner {
    cfg: Option<SyncStandbys>,
    replicas: Vec<ReplicaEntry>,
    waiters: Vec<Waiter>,
    next_id: u64,
    next_link: u64,
}

impl Inner {
    /// The replica of `link`, if that link is still its current one.
    fn entry(&mut self, link: LinkId) -> Option<&mut ReplicaEntry> {
        self.replicas
            .get_mut(link.slot)
            .filter(|r| r.link == link.id)
    }

    fn positions(&self) -> Vec<&ReplicaPos> {
        self.replicas.iter().map(|r| &r.pos).collect()
    }

    /// Whether `target` holds now (without copying the positions: committers spinning for
    /// their quorum ask this in a loop).
    fn holds(&self, target: Target) -> bool {
        let positions = self.replicas.iter().map(|r| &r.pos);
        match target {
            Target::Quorum(level, lsn) => match &self.cfg {
                None => true,
                Some(cfg) => quorum_lsn(cfg, positions, level).is_some_and(|q| q >= lsn),
            },
            Target::Count(lsn, n) => count_at(positions, Level::Flush, lsn) >= n,
        }
    }

    /// The slots whose flush the quorum needs now, as a bit mask (slot 63 stands for every
    /// slot from 63 on): see [`flush_wanted`].
    fn wanted_mask(&self) -> u64 {
        flush_wanted(self.cfg.as_ref(), &self.positions())
            .into_iter()
            .enumerate()
            .filter(|(_, w)| *w)
            .fold(0, |m, (i, _)| m | 1 << i.min(63))
    }

    /// Marks every waiter whose condition holds now; returns their wakers in LSN order.
    fn evaluate(&mut self) -> Vec<Waker> {
        if self.waiters.is_empty() {
            return Vec::new();
        }
        let mut woken: Vec<(Lsn, Waker)> = Vec::new();
        for i in 0..self.waiters.len() {
            let t = self.waiters[i].target;
            if !self.waiters[i].met && self.holds(t) {
                let w = &mut self.waiters[i];
                w.met = true;
                if let Some(k) = w.waker.take() {
                    woken.push((target_lsn(t), k));
                }
            }
        }
        woken.sort_by_key(|(l, _)| *l);
        woken.into_iter().map(|(_, w)| w).collect()
    }
}

/// Whether `slot` is set in a [`Tracker::wanted_mask`] (slot 63 stands for every slot from 63
/// on).
pub fn wanted_in(mask: u64, slot: usize) -> bool {
    mask & 1 << slot.min(63) != 0
}

fn target_lsn(t: Target) -> Lsn {
    match t {
        Target::Quorum(_, l) | Target::Count(l, _) => l,
    }
}

fn count_at<'a>(
    positions: impl IntoIterator<Item = &'a ReplicaPos>,
    level: Level,
    lsn: Lsn,
) -> usize {
    positions
        .into_iter()
        .filter(|r| r.connected)
        .filter(|r| pos_of(r, level) >= lsn)
        .count()
}

/// Shared by the replica links, the committers and the admin commands.
#[derive(Clone, Default)]
pub struct Tracker {
    inner: Arc<Mutex<Inner>>,
    /// `Inner::wanted_mask` as of the last change, readable without the lock by the code
    /// that sends WAL (a hint for how soon replicas sync: no waiter depends on it, so it
    /// is not part of the loom model).
    wanted: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// How far a quorum got, for a `-NOQUORUM` reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acks {
    /// Replicas counting towards the quorum that reached the LSN at the level.
    pub acked: usize,
    /// Acknowledgements the quorum needs.
    pub needed: usize,
}

impl Tracker {
    pub fn new(cfg: Option<SyncStandbys>) -> Tracker {
        let t = Tracker::default();
        t.lock().cfg = cfg;
        t
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every change is one
        // assignment), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the state, then wakes the waiters whose condition now holds.
    fn change<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let (r, wake) = {
            let mut g = self.lock();
            let r = f(&mut g);
            self.wanted
                .store(g.wanted_mask(), std::sync::atomic::Ordering::Relaxed);
            (r, g.evaluate())
        };
        for w in wake {
            w.wake();
        }
        r
    }

    /// A replica (re)connects at `flush`; returns its link (the same slot for the same name).
    pub fn connect(&self, name: &str, addr: &str, flush: Lsn, seeding: bool) -> LinkId {
        self.change(|g| {
            g.next_link += 1;
            let link = g.next_link;
            let entry = ReplicaEntry {
                pos: ReplicaPos {
                    name: name.to_string(),
                    connected: !seeding,
                    write_lsn: flush,
                    flush_lsn: flush,
                    apply_lsn: flush,
                },
                addr: addr.to_string(),
                streaming: false,
                seeding,
                heard_ms: 0,
                link,
            };
            let slot = match g.replicas.iter().position(|r| r.pos.name == name) {
                Some(i) => {
                    g.replicas[i] = entry;
                    i
                }
                None => {
                    g.replicas.push(entry);
                    g.replicas.len() - 1
                }
            };
            LinkId { slot, id: link }
        })
    }

    /// A replica reports its positions. Positions never move backwards within a link.
    pub fn update(&self, link: LinkId, write: Lsn, flush: Lsn, apply: Lsn) {
        self.change(|g| {
            if let Some(r) = g.entry(link) {
                r.pos.write_lsn = r.pos.write_lsn.max(write);
                r.pos.flush_lsn = r.pos.flush_lsn.max(flush);
                r.pos.apply_lsn = r.pos.apply_lsn.max(apply);
            }
        })
    }

    /// A report arrived from the replica at `now_ms`.
    pub fn heard(&self, link: LinkId, now_ms: u64) {
        if let Some(r) = self.lock().entry(link) {
            r.heard_ms = now_ms;
        }
    }

    /// Connected replicas whose last report is at most `max_lag_ms` old at `now_ms`
    /// (`--min-replicas-to-write`).
    pub fn fresh(&self, now_ms: u64, max_lag_ms: u64) -> usize {
        self.lock()
            .replicas
            .iter()
            .filter(|r| r.pos.connected && now_ms.saturating_sub(r.heard_ms) <= max_lag_ms)
            .count()
    }

    pub fn set_streaming(&self, link: LinkId, streaming: bool) {
        if let Some(r) = self.lock().entry(link) {
            r.streaming = streaming;
        }
    }

    /// A replica's link is gone: it no longer counts towards any quorum.
    pub fn disconnect(&self, link: LinkId) {
        self.change(|g| {
            if let Some(r) = g.entry(link) {
                r.pos.connected = false;
                r.streaming = false;
                r.seeding = false;
            }
        })
    }

    /// Forgets a replica (its WAL is no longer retained for it).
    pub fn forget(&self, name: &str) {
        self.change(|g| g.replicas.retain(|r| r.pos.name != name))
    }

    pub fn set_config(&self, cfg: Option<SyncStandbys>) {
        self.change(|g| g.cfg = cfg)
    }

    pub fn config(&self) -> Option<SyncStandbys> {
        self.lock().cfg.clone()
    }

    /// Every known replica with its sync state.
    pub fn snapshot(&self) -> Vec<(ReplicaEntry, SyncState)> {
        let g = self.lock();
        let states = sync_states(g.cfg.as_ref(), &g.positions());
        g.replicas.iter().cloned().zip(states).collect()
    }

    /// The lowest flush LSN of all known replicas (connected or not): WAL they still need.
    pub fn min_flush(&self) -> Option<Lsn> {
        self.lock().replicas.iter().map(|r| r.pos.flush_lsn).min()
    }

    pub fn connected(&self) -> usize {
        self.lock()
            .replicas
            .iter()
            .filter(|r| r.pos.connected)
            .count()
    }

    /// Commits waiting now, and the lowest LSN among them.
    pub fn waiting(&self) -> (usize, Option<Lsn>) {
        let g = self.lock();
        let open = g.waiters.iter().filter(|w| !w.met);
        (
            open.clone().count(),
            open.map(|w| target_lsn(w.target)).min(),
        )
    }

    /// Replicas counting towards the quorum now (`sync` or `quorum`, not `potential`) that
    /// have reached `lsn` at `level`.
    pub fn acks(&self, level: Level, lsn: Lsn) -> Acks {
        let g = self.lock();
        let needed = g.cfg.as_ref().map_or(0, |c| c.num);
        let states = sync_states(g.cfg.as_ref(), &g.positions());
        let acked = g
            .replicas
            .iter()
            .zip(states)
            .filter(|(_, s)| matches!(s, SyncState::Sync | SyncState::Quorum))
            .filter(|(r, _)| count_at([&r.pos], level, lsn) == 1)
            .count();
        Acks { acked, needed }
    }

    /// Connected replicas that have flushed `lsn` (what `WAIT` returns).
    pub fn count_flushed(&self, lsn: Lsn) -> usize {
        count_at(
            self.lock().replicas.iter().map(|r| &r.pos),
            Level::Flush,
            lsn,
        )
    }

    /// Whether the quorum needs the replica in `slot` to sync what it receives at once
    /// ([`flush_wanted`]); lock-free, as of the last report, connection or configuration
    /// change.
    pub fn flush_wanted(&self, slot: usize) -> bool {
        wanted_in(self.wanted_mask(), slot)
    }

    /// All of `flush_wanted` at once, as a bit mask to test with [`wanted_in`]: one snapshot
    /// for the frames of one write to every link (a report between two loads could move an
    /// `ANY` choice so that neither replica, or both, got the flag).
    pub fn wanted_mask(&self) -> u64 {
        self.wanted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether `target` holds now.
    pub fn holds(&self, target: Target) -> bool {
        let g = self.lock();
        g.holds(target)
    }

    /// Waits until `target` holds. Dropping the future withdraws the wait.
    pub fn wait(&self, target: Target) -> Wait {
        Wait {
            tracker: self.clone(),
            target,
            id: None,
        }
    }
}

/// The future of [`Tracker::wait`].
pub struct Wait {
    tracker: Tracker,
    target: Target,
    id: Option<u64>,
}

impl Future for Wait {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let mut g = this.tracker.lock();
        match this.id {
            None => {
                if g.holds(this.target) {
                    return Poll::Ready(());
                }
                let id = g.next_id;
                g.next_id += 1;
                g.waiters.push(Waiter {
                    id,
                    target: this.target,
                    waker: Some(cx.waker().clone()),
                    met: false,
                });
                this.id = Some(id);
                Poll::Pending
            }
            Some(id) => {
                let Some(i) = g.waiters.iter().position(|w| w.id == id) else {
                    return Poll::Ready(());
                };
                if g.waiters[i].met {
                    g.waiters.swap_remove(i);
                    this.id = None;
                    return Poll::Ready(());
                }
                g.waiters[i].waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Drop for Wait {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.tracker.lock().waiters.retain(|w| w.id != id);
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct Counter(AtomicUsize);
    impl Wake for Counter {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll(w: &mut Wait, c: &std::sync::Arc<Counter>) -> bool {
        let waker = Waker::from(c.clone());
        Pin::new(w)
            .poll(&mut Context::from_waker(&waker))
            .is_ready()
    }

    #[test]
    fn waiters_complete_when_their_quorum_reaches_them_and_not_before() {
        let t = Tracker::new(SyncStandbys::parse("ANY 1 (r1, r2)").unwrap());
        let r1 = t.connect("r1", "a", Lsn(0), false);
        let r2 = t.connect("r2", "b", Lsn(0), false);
        let c = std::sync::Arc::new(Counter(AtomicUsize::new(0)));
        let mut w = t.wait(Target::Quorum(Level::Flush, Lsn(100)));
        assert!(!poll(&mut w, &c));
        assert_eq!(t.waiting(), (1, Some(Lsn(100))));
        t.update(r1, Lsn(100), Lsn(50), Lsn(10));
        assert_eq!(c.0.load(Ordering::SeqCst), 0, "write 100 is not flush 100");
        assert!(!poll(&mut w, &c));
        assert_eq!(
            t.acks(Level::Flush, Lsn(100)),
            Acks {
                acked: 0,
                needed: 1
            }
        );
        t.update(r2, Lsn(100), Lsn(100), Lsn(0));
        assert_eq!(c.0.load(Ordering::SeqCst), 1);
        assert!(poll(&mut w, &c));
        assert_eq!(t.waiting(), (0, None));
        // A level nobody reached, then the only replica that reached it goes away.
        let mut a = t.wait(Target::Quorum(Level::Apply, Lsn(100)));
        assert!(!poll(&mut a, &c));
        t.disconnect(r2);
        t.update(r1, Lsn(100), Lsn(100), Lsn(100));
        assert!(poll(&mut a, &c));
        // Dropping a pending wait withdraws it.
        let mut d = t.wait(Target::Quorum(Level::Flush, Lsn(500)));
        assert!(!poll(&mut d, &c));
        drop(d);
        assert_eq!(t.waiting(), (0, None));
    }

    #[test]
    fn a_replaced_link_cannot_disconnect_the_new_one() {
        let t = Tracker::new(SyncStandbys::parse("ANY 1 (r1)").unwrap());
        let old = t.connect("r1", "a", Lsn(0), false);
        let new = t.connect("r1", "b", Lsn(5), false);
        assert_eq!(old.slot, new.slot);
        t.disconnect(old);
        t.update(old, Lsn(99), Lsn(99), Lsn(99));
        assert_eq!(t.connected(), 1, "the old link's end does not count");
        assert_eq!(t.snapshot()[0].0.pos.flush_lsn, Lsn(5), "nor its reports");
        t.disconnect(new);
        assert_eq!(t.connected(), 0);
    }

    #[test]
    fn no_quorum_configured_means_no_wait_and_config_changes_wake() {
        let t = Tracker::new(None);
        let c = std::sync::Arc::new(Counter(AtomicUsize::new(0)));
        let mut w = t.wait(Target::Quorum(Level::Apply, Lsn(9)));
        assert!(poll(&mut w, &c), "asynchronous: remote levels act as local");
        t.set_config(SyncStandbys::parse("FIRST 1 (r1, r2)").unwrap());
        let r1 = t.connect("r1", "a", Lsn(0), false);
        let r2 = t.connect("r2", "b", Lsn(0), false);
        t.update(r2, Lsn(9), Lsn(9), Lsn(9));
        let mut w = t.wait(Target::Quorum(Level::Flush, Lsn(9)));
        assert!(!poll(&mut w, &c), "r1 has priority and is at 0");
        t.set_config(SyncStandbys::parse("FIRST 1 (r2, r1)").unwrap());
        assert!(poll(&mut w, &c));
        // WAIT semantics: connected replicas that flushed the LSN.
        assert_eq!(t.count_flushed(Lsn(9)), 1);
        let mut n = t.wait(Target::Count(Lsn(9), 2));
        assert!(!poll(&mut n, &c));
        t.update(r1, Lsn(9), Lsn(9), Lsn(0));
        assert!(poll(&mut n, &c));
        let states: Vec<_> = t.snapshot().into_iter().map(|(_, s)| s).collect();
        assert_eq!(states, vec![SyncState::Potential, SyncState::Sync]);
    }

    #[test]
    fn the_replicas_asked_to_sync_follow_reports_connections_and_the_configuration() {
        let t = Tracker::new(SyncStandbys::parse("ANY 1 (r1, r2)").unwrap());
        let wanted = |t: &Tracker| (t.flush_wanted(0), t.flush_wanted(1));
        let r1 = t.connect("r1", "a", Lsn(0), false);
        assert_eq!(wanted(&t), (true, false), "the only one connected");
        let r2 = t.connect("r2", "b", Lsn(0), false);
        assert_eq!(wanted(&t), (true, false), "a tie goes by list order");
        // r1 stalls; r2's lazy sync overtakes it.
        t.update(r2, Lsn(10), Lsn(10), Lsn(10));
        assert_eq!(wanted(&t), (false, true));
        t.disconnect(r2);
        assert_eq!(wanted(&t), (true, false));
        let r2 = t.connect("r2", "b", Lsn(10), false);
        assert_eq!(wanted(&t), (false, true));
        t.update(r1, Lsn(10), Lsn(10), Lsn(10));
        t.set_config(SyncStandbys::parse("FIRST 1 (r2, r1)").unwrap());
        assert_eq!(wanted(&t), (false, true), "r2 has priority");
        t.set_config(SyncStandbys::parse("ANY 2 (r1, r2)").unwrap());
        assert_eq!(wanted(&t), (true, true));
        t.set_config(None);
        assert_eq!(wanted(&t), (false, false), "asynchronous");
        t.set_config(SyncStandbys::parse("FIRST 1 (r1)").unwrap());
        t.disconnect(r1);
        assert_eq!(wanted(&t), (false, false), "r2 is not named");
        t.disconnect(r2);
        // Slots past 63 share one bit: wanted if any of them is.
        let t = Tracker::new(SyncStandbys::parse("ANY 1 (*)").unwrap());
        let links: Vec<_> = (0..72)
            .map(|i| t.connect(&format!("r{i}"), "a", Lsn(0), false))
            .collect();
        assert_eq!(links[70].slot, 70);
        assert!(t.flush_wanted(0) && !t.flush_wanted(63) && !t.flush_wanted(70));
        t.update(links[70], Lsn(5), Lsn(5), Lsn(5));
        assert!(!t.flush_wanted(0) && !t.flush_wanted(62));
        assert!(t.flush_wanted(63) && t.flush_wanted(70) && t.flush_wanted(71));
    }
}
