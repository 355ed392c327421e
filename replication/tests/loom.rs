//! Model checks of the commit-waiter core under every interleaving loom can find:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test -p replidb-replication --test loom --release
//! ```
//! (`scripts/test` runs them with their own target directory.) Each model ends with every
//! waiter's condition true; a waiter that is never woken makes loom report a deadlock, a
//! waiter woken early fails the assertion made right after its wait returns.
#![cfg(loom)]

use loom::future::block_on;
use loom::thread;
use replication::quorum::{quorum_lsn, Level, SyncStandbys};
use replication::tracker::{Target, Tracker};
use storage::Lsn;

/// Explores interleavings with at most three preemptions per execution (loom's advice: most
/// bugs need two or three; unbounded, the two-committer model runs for many minutes).
/// `LOOM_MAX_PREEMPTIONS` overrides the bound.
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(3);
    }
    b.check(f);
}

fn cfg(s: &str) -> Option<SyncStandbys> {
    SyncStandbys::parse(s).expect("valid sync-standbys")
}

/// The quorum's position at `level` right now, from the tracker's own snapshot.
fn reached(t: &Tracker, level: Level) -> Option<Lsn> {
    let c = t.config()?;
    let pos: Vec<_> = t.snapshot().into_iter().map(|(e, _)| e.pos).collect();
    quorum_lsn(&c, &pos, level)
}

#[test]
fn committer_is_woken_by_the_report_that_meets_its_quorum_and_not_earlier() {
    model(|| {
        let t = Tracker::new(cfg("ANY 1 (r1, r2)"));
        let r1 = t.connect("r1", "a", Lsn(0), false);
        let r2 = t.connect("r2", "b", Lsn(0), false);
        let t1 = t.clone();
        // r1 reports in two steps, the first one short of the commit.
        let a = thread::spawn(move || {
            t1.update(r1, Lsn(5), Lsn(5), Lsn(0));
            t1.update(r1, Lsn(10), Lsn(10), Lsn(0));
        });
        let t2 = t.clone();
        // r2 goes away meanwhile.
        let b = thread::spawn(move || t2.disconnect(r2));
        block_on(t.wait(Target::Quorum(Level::Flush, Lsn(10))));
        assert!(
            reached(&t, Level::Flush).is_some_and(|l| l >= Lsn(10)),
            "woken before the quorum flushed LSN 10"
        );
        a.join().unwrap();
        b.join().unwrap();
    });
}

#[test]
fn two_committers_at_different_levels_both_wake() {
    model(|| {
        let t = Tracker::new(cfg("ANY 1 (r1)"));
        let r1 = t.connect("r1", "a", Lsn(0), false);
        let t1 = t.clone();
        let w = thread::spawn(move || {
            block_on(t1.wait(Target::Quorum(Level::Apply, Lsn(7))));
            assert!(reached(&t1, Level::Apply).is_some_and(|l| l >= Lsn(7)));
        });
        let t2 = t.clone();
        let reporter = thread::spawn(move || {
            t2.update(r1, Lsn(7), Lsn(7), Lsn(3));
            t2.update(r1, Lsn(7), Lsn(7), Lsn(7));
        });
        block_on(t.wait(Target::Quorum(Level::Write, Lsn(7))));
        assert!(reached(&t, Level::Write).is_some_and(|l| l >= Lsn(7)));
        w.join().unwrap();
        reporter.join().unwrap();
    });
}

#[test]
fn a_configuration_change_mid_wait_is_seen() {
    model(|| {
        // r1 has priority but is behind; r2 has the commit. Swapping the priority meets it.
        let t = Tracker::new(cfg("FIRST 1 (r1, r2)"));
        let _r1 = t.connect("r1", "a", Lsn(0), false);
        let r2 = t.connect("r2", "b", Lsn(0), false);
        let t1 = t.clone();
        let reporter = thread::spawn(move || t1.update(r2, Lsn(4), Lsn(4), Lsn(4)));
        let t2 = t.clone();
        let admin = thread::spawn(move || t2.set_config(cfg("FIRST 1 (r2, r1)")));
        block_on(t.wait(Target::Quorum(Level::Flush, Lsn(4))));
        assert!(reached(&t, Level::Flush).is_some_and(|l| l >= Lsn(4)));
        reporter.join().unwrap();
        admin.join().unwrap();
    });
}

#[test]
fn wait_for_a_count_survives_a_reconnect() {
    model(|| {
        // WAIT 1: r1 drops and comes back at the LSN; no wake-up may be lost on the way.
        let t = Tracker::new(None);
        let r1 = t.connect("r1", "a", Lsn(0), false);
        let t1 = t.clone();
        let link = thread::spawn(move || {
            t1.disconnect(r1);
            t1.connect("r1", "a2", Lsn(6), false);
        });
        block_on(t.wait(Target::Count(Lsn(6), 1)));
        assert!(t.count_flushed(Lsn(6)) >= 1);
        link.join().unwrap();
    });
}
