//! Who may take over when the leader key is vacant: the rule, sans-IO. The cluster loop
//! (`run.rs`) gathers what etcd says and acts on the decision; this file only decides, so
//! every row of the table in docs/replication.md ("Election with proof") is a unit test.
//!
//! The argument. A write the old primary acknowledged under `ANY k` of the N standbys S was
//! on disk on at least k members of S. Any N−k+1 members of S include at least one of those
//! k (k + (N−k+1) > N), so the most advanced position among N−k+1 of them covers every
//! acknowledged write. Under `FIRST k` the sync standbys are k of the listed ones, so the
//! same count works. The old primary's own position, if it reports one, covers everything
//! on its own. A position counts only if it was read after the vacancy began (`fresh`): a
//! report made while the old primary was still acknowledging could be older than a write
//! it acknowledged. Ranking is by (epoch, where that epoch began, flush LSN) — a primary
//! that resumed its epoch after an unclean stop starts a later branch of the same number,
//! and a member still on the abandoned branch must not outrank it — ties broken by the
//! smallest name.

use crate::quorum::{Method, SyncStandbys};

/// What one member reported in its status record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub name: String,
    pub epoch: u32,
    /// Where its epoch began in its history (see `records::Status::epoch_start`).
    pub epoch_start: u64,
    pub flush_lsn: u64,
    /// Read after the current vacancy began (see the module docs).
    pub fresh: bool,
    /// It can take over now (it holds data, is consistent, no repair pending).
    pub can_promote: bool,
}

/// What the last primary was, as its term record says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OldPrimary {
    pub name: String,
    /// Its `--sync-standbys` while it was primary (`None`: asynchronous).
    pub quorum: Option<SyncStandbys>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// This member holds the proof and is the most advanced: it claims the leader key.
    TakeOver,
    /// Another member is the one to take over.
    Defer { to: String },
    /// Nobody may take over yet; why (INFO cluster `failover_blocked:`).
    Blocked(String),
}

/// The members whose positions prove the old primary's acknowledged writes, and how many of
/// them must report: `(standbys, needed)`.
pub fn proof_set(old: &OldPrimary, members: &[String]) -> (Vec<String>, usize) {
    let others = || {
        members
            .iter()
            .filter(|m| **m != old.name)
            .cloned()
            .collect::<Vec<_>>()
    };
    match &old.quorum {
        // Asynchronous: nothing was waited for. Every other member, as many as answer.
        None => (others(), 0),
        Some(q) => {
            let standbys: Vec<String> = if q.names.iter().any(|n| n == "*") {
                others()
            } else {
                let mut v: Vec<String> = q
                    .names
                    .iter()
                    .filter(|n| **n != old.name)
                    .cloned()
                    .collect();
                v.sort();
                v.dedup();
                v
            };
            let n = standbys.len();
            let k = q.num.clamp(1, n.max(1));
            // FIRST k: the sync standbys are k of the listed ones; ANY k: any k of them.
            let needed = match q.method {
                Method::Any | Method::First => n + 1 - k.min(n + 1),
            };
            (standbys, needed.max(usize::from(n > 0)))
        }
    }
}

/// The decision of member `me`, given the registered `members`, the last primary (`None`
/// before the first one) and every member's latest report. `waited`: the vacancy has lasted
/// long enough that members who have not reported are taken as gone (asynchronous only).
pub fn decide(
    me: &str,
    members: &[String],
    old: Option<&OldPrimary>,
    reports: &[Report],
    waited: bool,
) -> Decision {
    let fresh: Vec<&Report> = reports.iter().filter(|r| r.fresh).collect();
    if !fresh.iter().any(|r| r.name == me) {
        return Decision::Blocked(format!(
            "{me} has not reported its own position since the leader key went vacant"
        ));
    }
    if let Some(old) = old {
        let old_reported = fresh.iter().any(|r| r.name == old.name);
        if !old_reported {
            let (standbys, needed) = proof_set(old, members);
            let have: Vec<&str> = standbys
                .iter()
                .filter(|s| fresh.iter().any(|r| r.name == **s))
                .map(String::as_str)
                .collect();
            if old.quorum.is_none() {
                if !waited && have.len() < standbys.len() {
                    let missing: Vec<&str> = standbys
                        .iter()
                        .map(String::as_str)
                        .filter(|s| !have.contains(s))
                        .collect();
                    return Decision::Blocked(format!(
                        "waiting for the positions of {} (asynchronous: the most advanced reachable member takes over)",
                        missing.join(", ")
                    ));
                }
            } else if have.len() < needed {
                let missing: Vec<&str> = standbys
                    .iter()
                    .map(String::as_str)
                    .filter(|s| !have.contains(s))
                    .collect();
                return Decision::Blocked(format!(
                    "no proof that any member has every write {} acknowledged: need the flush positions of {needed} of its {} standbys ({}) under '{}', have {} ({}); waiting for {}",
                    old.name,
                    standbys.len(),
                    standbys.join(", "),
                    old.quorum.as_ref().map(|q| q.to_string()).unwrap_or_default(),
                    have.len(),
                    if have.is_empty() { "none".to_string() } else { have.join(", ") },
                    missing.join(", "),
                ));
            }
        }
    }
    // The most advanced of every fresh report, ties to the smallest name.
    let Some(best) = fresh.iter().max_by(|a, b| {
        (a.epoch, a.epoch_start, a.flush_lsn)
            .cmp(&(b.epoch, b.epoch_start, b.flush_lsn))
            .then_with(|| b.name.cmp(&a.name))
    }) else {
        return Decision::Blocked("no member has reported".into());
    };
    if !best.can_promote {
        return Decision::Blocked(format!(
            "{} is the most advanced (epoch {}, LSN {}) but cannot take over yet (not consistent, or a repair is pending)",
            best.name, best.epoch, best.flush_lsn
        ));
    }
    if best.name == me {
        Decision::TakeOver
    } else {
        Decision::Defer {
            to: best.name.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str, epoch: u32, lsn: u64) -> Report {
        Report {
            name: name.into(),
            epoch,
            epoch_start: 0,
            flush_lsn: lsn,
            fresh: true,
            can_promote: true,
        }
    }

    fn old(quorum: &str) -> OldPrimary {
        OldPrimary {
            name: "a".into(),
            quorum: SyncStandbys::parse(quorum).expect("quorum"),
        }
    }

    fn members(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    /// The table in docs/replication.md, row by row: (case, old primary's quorum, members,
    /// reports, waited, the decision of member "b").
    #[test]
    fn the_election_table_row_by_row() {
        let abc = members(&["a", "b", "c"]);
        let abcd = members(&["a", "b", "c", "d"]);
        let stale = |mut x: Report| {
            x.fresh = false;
            x
        };
        let stuck = |mut x: Report| {
            x.can_promote = false;
            x
        };
        type Row = (
            &'static str,
            &'static str,
            Vec<String>,
            Vec<Report>,
            bool,
            Result<Decision, &'static str>,
        );
        let rows: Vec<Row> = vec![
            (
                "1 ANY 1 of 2: both standbys report, b ahead",
                "ANY 1 (b, c)",
                abc.clone(),
                vec![r("b", 1, 900), r("c", 1, 800)],
                false,
                Ok(Decision::TakeOver),
            ),
            (
                "2 ANY 1 of 2: c ahead, b defers",
                "ANY 1 (b, c)",
                abc.clone(),
                vec![r("b", 1, 800), r("c", 1, 900)],
                false,
                Ok(Decision::Defer { to: "c".into() }),
            ),
            (
                "3 ANY 1 of 2: c silent, no proof",
                "ANY 1 (b, c)",
                abc.clone(),
                vec![r("b", 1, 900)],
                true,
                Err("need the flush positions of 2 of its 2 standbys"),
            ),
            (
                "4 ANY 1 of 2: c's report is from before the vacancy",
                "ANY 1 (b, c)",
                abc.clone(),
                vec![r("b", 1, 900), stale(r("c", 1, 950))],
                false,
                Err("waiting for c"),
            ),
            (
                "5 ANY 2 of 3 (*): two of three standbys suffice",
                "ANY 2 (*)",
                abcd.clone(),
                vec![r("b", 1, 900), r("d", 1, 700)],
                false,
                Ok(Decision::TakeOver),
            ),
            (
                "6 ANY 1 of 3 (*): two of three is not enough",
                "ANY 1 (*)",
                abcd.clone(),
                vec![r("b", 1, 900), r("d", 1, 700)],
                false,
                Err("need the flush positions of 3 of its 3 standbys"),
            ),
            (
                "7 FIRST 1 of 2: both listed standbys needed",
                "FIRST 1 (b, c)",
                abc.clone(),
                vec![r("b", 1, 900)],
                false,
                Err("need the flush positions of 2 of its 2 standbys"),
            ),
            (
                "8 FIRST 2 of 2: either one proves",
                "FIRST 2 (b, c)",
                abc.clone(),
                vec![r("b", 1, 900)],
                false,
                Ok(Decision::TakeOver),
            ),
            (
                "9 the old primary reports: its own position proves",
                "ANY 1 (b, c)",
                abc.clone(),
                vec![r("a", 1, 1000), r("b", 1, 900)],
                false,
                Ok(Decision::Defer { to: "a".into() }),
            ),
            (
                "10 tie: the smallest name wins",
                "ANY 1 (b, c)",
                abc.clone(),
                vec![r("b", 1, 900), r("c", 1, 900)],
                false,
                Ok(Decision::TakeOver),
            ),
            (
                "11 a newer epoch ranks first whatever the LSN",
                "ANY 1 (b, c)",
                abc.clone(),
                vec![r("b", 1, 5000), r("c", 2, 900)],
                false,
                Ok(Decision::Defer { to: "c".into() }),
            ),
            (
                "12 the most advanced cannot promote: blocked, not a lesser one",
                "ANY 1 (b, c)",
                abc.clone(),
                vec![r("b", 1, 800), stuck(r("c", 1, 900))],
                false,
                Err("c is the most advanced"),
            ),
            (
                "13 asynchronous: wait for every member until the grace ends",
                "",
                abc.clone(),
                vec![r("b", 1, 800)],
                false,
                Err("waiting for the positions of c"),
            ),
            (
                "14 asynchronous, grace over: the most advanced reachable",
                "",
                abc.clone(),
                vec![r("b", 1, 800)],
                true,
                Ok(Decision::TakeOver),
            ),
            (
                "15 b has not reported since the vacancy: it waits",
                "ANY 1 (b, c)",
                abc.clone(),
                vec![stale(r("b", 1, 900)), r("c", 1, 800)],
                false,
                Err("b has not reported its own position"),
            ),
            (
                "17 same epoch, later branch (a resumed primary's): ranks first",
                "ANY 1 (b, c)",
                abc.clone(),
                vec![
                    Report {
                        epoch_start: 4000,
                        ..r("b", 1, 4500)
                    },
                    r("c", 1, 9000),
                ],
                false,
                Ok(Decision::TakeOver),
            ),
            (
                "16 an async member ahead of the proof set takes over",
                "ANY 1 (c, d)",
                abcd.clone(),
                vec![r("b", 1, 990), r("c", 1, 900), r("d", 1, 800)],
                false,
                Ok(Decision::TakeOver),
            ),
        ];
        for (case, quorum, members, reports, waited, want) in rows {
            let got = decide("b", &members, Some(&old(quorum)), &reports, waited);
            match (want, &got) {
                (Ok(d), g) => assert_eq!(g, &d, "{case}"),
                (Err(text), Decision::Blocked(why)) => {
                    assert!(why.contains(text), "{case}: {why}")
                }
                (Err(text), g) => panic!("{case}: wanted blocked ({text}), got {g:?}"),
            }
        }
    }

    #[test]
    fn proof_sets_count_n_minus_k_plus_one() {
        let m = members(&["a", "b", "c", "d", "e"]);
        for (q, n, needed) in [
            ("ANY 1 (*)", 4, 4),
            ("ANY 2 (*)", 4, 3),
            ("ANY 4 (*)", 4, 1),
            ("ANY 9 (*)", 4, 1),
            ("FIRST 1 (b, c)", 2, 2),
            ("FIRST 2 (b, c, d)", 3, 2),
            ("ANY 1 (a, b)", 1, 1),
        ] {
            let (set, need) = proof_set(&old(q), &m);
            assert_eq!((set.len(), need), (n, needed), "{q}");
        }
    }
}
