//! Synchronous standbys: PostgreSQL's `synchronous_standby_names` syntax, and the rule that
//! turns the replicas' reported positions into "how far has the quorum got".
//!
//! ```text
//! ''                      asynchronous: no commit waits for a replica
//! 'ANY n (a, b, c)'       any n of the named replicas
//! 'FIRST n (a, b, c)'     the first n connected replicas in list order (priority)
//! 'n (a, b, c)'           same as FIRST n
//! 'a, b, c'               same as FIRST 1
//! '*' in a list           any name
//! ```
//! Sans-IO: the tracker takes reports and answers questions; the server moves the bytes and
//! holds the lock (the concurrent wrapper is `tracker`, modelled with loom).

use std::fmt;

use storage::Lsn;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Any,
    First,
}

/// A parsed `--sync-standbys` setting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncStandbys {
    pub method: Method,
    pub num: usize,
    pub names: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad sync-standbys {input:?}: {reason} (expected e.g. 'ANY 1 (r1, r2)', 'FIRST 2 (r1, r2, r3)', 'ANY 1 (*)' or '' for asynchronous)")]
pub struct ParseError {
    pub input: String,
    pub reason: String,
}

impl SyncStandbys {
    /// Parses the setting; `Ok(None)` for the empty string (asynchronous).
    pub fn parse(s: &str) -> Result<Option<SyncStandbys>, ParseError> {
        let err = |reason: &str| ParseError {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        let t = s.trim();
        if t.is_empty() {
            return Ok(None);
        }
        if t.eq_ignore_ascii_case("ANY") || t.eq_ignore_ascii_case("FIRST") {
            return Err(err("ANY/FIRST need a count and a list in parentheses"));
        }
        let (method, rest) = match t.split_once(char::is_whitespace) {
            Some((w, rest)) if w.eq_ignore_ascii_case("ANY") => (Some(Method::Any), rest.trim()),
            Some((w, rest)) if w.eq_ignore_ascii_case("FIRST") => {
                (Some(Method::First), rest.trim())
            }
            _ => (None, t),
        };
        let (num, list) = match rest.find('(') {
            Some(open) => {
                let head = rest[..open].trim();
                if !rest.ends_with(')') {
                    return Err(err("missing ')'"));
                }
                let num: usize = head
                    .parse()
                    .map_err(|_| err(&format!("{head:?} is not a number of standbys")))?;
                (num, &rest[open + 1..rest.len() - 1])
            }
            None if method.is_some() => {
                return Err(err("ANY/FIRST need a count and a list in parentheses"))
            }
            None => (1, rest),
        };
        let mut names = Vec::new();
        for n in list.split(',') {
            let n = n.trim().trim_matches('"');
            if n.is_empty() {
                return Err(err("empty name in the list"));
            }
            if n.len() > 64
                || !n
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '*'))
            {
                return Err(err(&format!("bad replica name {n:?}")));
            }
            if names.iter().any(|x| x == n) {
                return Err(err(&format!("{n} named twice")));
            }
            names.push(n.to_string());
        }
        if num == 0 {
            return Err(err("the number of standbys must be at least 1"));
        }
        if !names.iter().any(|n| n == "*") && num > names.len() {
            return Err(err(&format!(
                "{num} standbys required but only {} named",
                names.len()
            )));
        }
        Ok(Some(SyncStandbys {
            method: method.unwrap_or(Method::First),
            num,
            names,
        }))
    }

    fn priority(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name || n == "*")
    }
}

impl fmt::Display for SyncStandbys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = match self.method {
            Method::Any => "ANY",
            Method::First => "FIRST",
        };
        write!(f, "{m} {} ({})", self.num, self.names.join(", "))
    }
}

/// What a replica has reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaPos {
    pub name: String,
    pub connected: bool,
    pub write_lsn: Lsn,
    pub flush_lsn: Lsn,
    pub apply_lsn: Lsn,
}

/// Which position a durability level waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Write,
    Flush,
    Apply,
}

impl Level {
    /// The replica position a commit at `durability` waits for (`None`: a local level).
    pub fn of(durability: storage::Durability) -> Option<Level> {
        match durability {
            storage::Durability::Off | storage::Durability::Local => None,
            storage::Durability::RemoteWrite => Some(Level::Write),
            storage::Durability::RemoteFlush => Some(Level::Flush),
            storage::Durability::RemoteApply => Some(Level::Apply),
        }
    }
}

/// `sync_state` of a replica, as PostgreSQL's `pg_stat_replication` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncState {
    /// Counts towards a FIRST quorum now.
    Sync,
    /// Named in a FIRST list, would count if a higher-priority one went away.
    Potential,
    /// Named in an ANY list.
    Quorum,
    /// Not named.
    Async,
}

impl SyncState {
    pub fn name(self) -> &'static str {
        match self {
            SyncState::Sync => "sync",
            SyncState::Potential => "potential",
            SyncState::Quorum => "quorum",
            SyncState::Async => "async",
        }
    }
}

/// How far a replica has got at `level`. Replay counts only as far as the replica has also
/// synced (a replica replays WAL it has only written when no commit waits for its sync), so
/// `remote_apply` implies `remote_flush`, as in PostgreSQL.
pub fn pos_of(r: &ReplicaPos, level: Level) -> Lsn {
    match level {
        Level::Write => r.write_lsn,
        Level::Flush => r.flush_lsn,
        Level::Apply => r.apply_lsn.min(r.flush_lsn),
    }
}

/// The highest LSN that the configured quorum has reached at `level` (`None` if the quorum
/// cannot be met by the connected replicas).
pub fn quorum_lsn<'a>(
    cfg: &SyncStandbys,
    replicas: impl IntoIterator<Item = &'a ReplicaPos>,
    level: Level,
) -> Option<Lsn> {
    let mut eligible: Vec<(usize, Lsn)> = replicas
        .into_iter()
        .filter(|r| r.connected)
        .filter_map(|r| cfg.priority(&r.name).map(|p| (p, pos_of(r, level))))
        .collect();
    if eligible.len() < cfg.num {
        return None;
    }
    match cfg.method {
        // The n-th highest position among all eligible replicas.
        Method::Any => {
            eligible.sort_by_key(|e| std::cmp::Reverse(e.1));
            Some(eligible[cfg.num - 1].1)
        }
        // The lowest position among the n highest-priority connected replicas.
        Method::First => {
            eligible.sort_by_key(|(p, _)| *p);
            eligible[..cfg.num].iter().map(|(_, l)| *l).min()
        }
    }
}

/// Which replicas the quorum needs to sync what they receive now (in the order given): the
/// primary asks only these to sync each frame, the others sync lazily (their flush still
/// counts once reported). Under FIRST n, the `sync` ones: a `potential` replica's flush never
/// counts. Under ANY n, the n eligible connected replicas that have flushed furthest (ties:
/// list order, then the order given): one that stalls falls behind the others' lazy syncs
/// and is replaced by them. Every replica that may count gets the same frames; this only
/// decides which of them sync at once.
pub fn flush_wanted(cfg: Option<&SyncStandbys>, replicas: &[&ReplicaPos]) -> Vec<bool> {
    let Some(cfg) = cfg.filter(|c| c.method == Method::Any) else {
        return sync_states(cfg, replicas)
            .into_iter()
            .map(|s| s == SyncState::Sync)
            .collect();
    };
    let mut eligible: Vec<(std::cmp::Reverse<Lsn>, usize, usize)> = replicas
        .iter()
        .enumerate()
        .filter(|(_, r)| r.connected)
        .filter_map(|(i, r)| {
            cfg.priority(&r.name)
                .map(|p| (std::cmp::Reverse(r.flush_lsn), p, i))
        })
        .collect();
    eligible.sort();
    let mut wanted = vec![false; replicas.len()];
    for (_, _, i) in eligible.into_iter().take(cfg.num) {
        wanted[i] = true;
    }
    wanted
}

/// Each replica's sync state under `cfg` (in the order given).
pub fn sync_states(cfg: Option<&SyncStandbys>, replicas: &[&ReplicaPos]) -> Vec<SyncState> {
    let Some(cfg) = cfg else {
        return vec![SyncState::Async; replicas.len()];
    };
    let mut by_priority: Vec<(usize, usize)> = replicas
        .iter()
        .enumerate()
        .filter(|(_, r)| r.connected)
        .filter_map(|(i, r)| cfg.priority(&r.name).map(|p| (p, i)))
        .collect();
    by_priority.sort();
    replicas
        .iter()
        .enumerate()
        .map(|(i, r)| match (cfg.method, cfg.priority(&r.name)) {
            (_, None) => SyncState::Async,
            (Method::Any, Some(_)) => SyncState::Quorum,
            (Method::First, Some(_)) => {
                if by_priority.iter().take(cfg.num).any(|(_, j)| *j == i) {
                    SyncState::Sync
                } else {
                    SyncState::Potential
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(reps: &[ReplicaPos]) -> Vec<&ReplicaPos> {
        reps.iter().collect()
    }

    fn r(name: &str, connected: bool, w: u64, f: u64, a: u64) -> ReplicaPos {
        ReplicaPos {
            name: name.into(),
            connected,
            write_lsn: Lsn(w),
            flush_lsn: Lsn(f),
            apply_lsn: Lsn(a),
        }
    }

    #[test]
    fn parses_postgres_syntax_with_clear_errors() {
        let p = |s: &str| SyncStandbys::parse(s).unwrap().unwrap();
        assert_eq!(
            p("ANY 1 (r1, r2)"),
            SyncStandbys {
                method: Method::Any,
                num: 1,
                names: vec!["r1".into(), "r2".into()]
            }
        );
        assert_eq!(p("first 2 (a,b,c)").method, Method::First);
        assert_eq!(
            p("2 (a, b)"),
            SyncStandbys {
                method: Method::First,
                num: 2,
                names: vec!["a".into(), "b".into()]
            }
        );
        assert_eq!(p("r1, r2").num, 1);
        assert_eq!(p("ANY 1 (*)").names, vec!["*"]);
        assert_eq!(SyncStandbys::parse("  ").unwrap(), None);
        assert_eq!(p("ANY 1 (r1, r2)").to_string(), "ANY 1 (r1, r2)");
        for bad in [
            "ANY",
            "ANY x (a)",
            "ANY 3 (a, b)",
            "ANY 1 (a, a)",
            "ANY 1 (a",
            "FIRST 0 (a)",
            "ANY 1 (a, )",
            "ANY 1 (a b)",
        ] {
            let e = SyncStandbys::parse(bad).unwrap_err();
            assert!(e.to_string().contains("expected e.g."), "{bad}: {e}");
        }
    }

    #[test]
    fn replay_counts_only_as_far_as_the_replica_has_synced() {
        let any1 = SyncStandbys::parse("ANY 1 (r1)").unwrap().unwrap();
        // Replayed up to 90 but synced only to 60 (WAL no commit waited for).
        let reps = vec![r("r1", true, 90, 60, 90)];
        assert_eq!(quorum_lsn(&any1, &reps, Level::Apply), Some(Lsn(60)));
        assert_eq!(quorum_lsn(&any1, &reps, Level::Write), Some(Lsn(90)));
    }

    #[test]
    fn any_is_the_nth_highest_and_first_follows_priority() {
        let any1 = SyncStandbys::parse("ANY 1 (r1, r2)").unwrap().unwrap();
        let reps = vec![
            r("r1", true, 50, 40, 30),
            r("r2", true, 90, 80, 70),
            r("r3", true, 999, 999, 999),
        ];
        assert_eq!(
            quorum_lsn(&any1, &reps, Level::Flush),
            Some(Lsn(80)),
            "r3 is not named"
        );
        let any2 = SyncStandbys::parse("ANY 2 (r1, r2)").unwrap().unwrap();
        assert_eq!(quorum_lsn(&any2, &reps, Level::Apply), Some(Lsn(30)));
        let first1 = SyncStandbys::parse("FIRST 1 (r1, r2)").unwrap().unwrap();
        assert_eq!(
            quorum_lsn(&first1, &reps, Level::Flush),
            Some(Lsn(40)),
            "r1 has priority"
        );
        let mut gone = reps.clone();
        gone[0].connected = false;
        assert_eq!(
            quorum_lsn(&first1, &gone, Level::Flush),
            Some(Lsn(80)),
            "r2 once r1 is gone"
        );
        assert_eq!(
            quorum_lsn(&any2, &gone, Level::Flush),
            None,
            "two needed, one connected"
        );
        let star = SyncStandbys::parse("ANY 2 (*)").unwrap().unwrap();
        assert_eq!(quorum_lsn(&star, &reps, Level::Write), Some(Lsn(90)));
        assert_eq!(
            sync_states(Some(&first1), &refs(&reps)),
            vec![SyncState::Sync, SyncState::Potential, SyncState::Async]
        );
        assert_eq!(
            sync_states(Some(&any1), &refs(&reps))[..2],
            [SyncState::Quorum, SyncState::Quorum]
        );
        assert_eq!(sync_states(None, &refs(&reps)), vec![SyncState::Async; 3]);
    }

    #[test]
    fn only_the_replicas_a_quorum_can_use_are_asked_to_sync_at_once() {
        let cfg = |s: &str| SyncStandbys::parse(s).unwrap();
        let want =
            |c: &Option<SyncStandbys>, reps: &[ReplicaPos]| flush_wanted(c.as_ref(), &refs(reps));
        let reps = vec![
            r("r1", true, 90, 40, 40),
            r("r2", true, 90, 80, 80),
            r("r3", true, 90, 90, 90),
        ];
        // ANY: the ones that have flushed furthest among the named.
        assert_eq!(
            want(&cfg("ANY 1 (r1, r2)"), &reps),
            [false, true, false],
            "r2 is ahead; r3 is not named"
        );
        assert_eq!(want(&cfg("ANY 2 (r1, r2, r3)"), &reps), [false, true, true]);
        assert_eq!(want(&cfg("ANY 1 (*)"), &reps), [false, false, true]);
        // Ties go by list order, then by the order given.
        let even = vec![r("r1", true, 9, 9, 9), r("r2", true, 9, 9, 9)];
        assert_eq!(want(&cfg("ANY 1 (r2, r1)"), &even), [false, true]);
        assert_eq!(want(&cfg("ANY 1 (*)"), &even), [true, false]);
        // A stalled one is overtaken by the other's lazy sync, and the choice moves.
        let mut moved = even.clone();
        moved[1].flush_lsn = Lsn(20);
        assert_eq!(want(&cfg("ANY 1 (r1, r2)"), &moved), [false, true]);
        // FIRST: the sync ones only, whatever they have flushed.
        assert_eq!(
            want(&cfg("FIRST 1 (r1, r2)"), &reps),
            [true, false, false],
            "r2 is potential"
        );
        let mut gone = reps.clone();
        gone[0].connected = false;
        assert_eq!(want(&cfg("FIRST 1 (r1, r2)"), &gone), [false, true, false]);
        assert_eq!(want(&cfg("ANY 1 (r1, r2)"), &gone), [false, true, false]);
        assert_eq!(
            want(&cfg("FIRST 2 (r1, r2, r3)"), &gone),
            [false, true, true]
        );
        // Asynchronous: nobody.
        assert_eq!(want(&None, &reps), [false, false, false]);
    }
}
