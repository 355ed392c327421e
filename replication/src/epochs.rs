//! Epoch histories (PostgreSQL's timelines) and the decision a primary makes when a node
//! asks to stream from it: go on, refuse because the asking node knows a newer epoch (this
//! primary is stale and must be fenced), or refuse because the asking node's log ran past
//! the point where the two histories fork (it is diverged and must be rewound or reseeded —
//! never mixed).
//!
//! A history lists, for every epoch after the first, the LSN at which it started (epoch 1
//! starts at 0). Sans-IO: docs/replication.md has the case table, each case is a test here
//! and a process-level test in `server/tests/failover.rs`.

use storage::Lsn;

/// What a primary answers a node that asks to stream from `flush_lsn`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Same history up to the node's position: stream from its flush LSN.
    Stream,
    /// The node knows a newer epoch than the primary: the primary is stale.
    PrimaryStale { node_epoch: u32, primary_epoch: u32 },
    /// The node's log runs past `fork`, the last LSN the two histories share.
    Diverged { fork: Lsn },
}

/// `[(1, 0)] + history`: every epoch with its start.
fn full(history: &[(u32, Lsn)]) -> Vec<(u32, Lsn)> {
    let mut v = vec![(1, Lsn(0))];
    v.extend_from_slice(history);
    v
}

/// The decision for a node at `node_epoch` with `node_history`, whose log ends at
/// `node_end`, asking a primary at `primary_epoch` with `primary_history` whose log ends at
/// `primary_end`.
pub fn check(
    primary_epoch: u32,
    primary_history: &[(u32, Lsn)],
    primary_end: Lsn,
    node_epoch: u32,
    node_history: &[(u32, Lsn)],
    node_end: Lsn,
) -> Verdict {
    if node_epoch > primary_epoch {
        return Verdict::PrimaryStale {
            node_epoch,
            primary_epoch,
        };
    }
    let (p, n) = (full(primary_history), full(node_history));
    // The first epoch the two disagree on (a different start, or one has it and the other
    // does not): the histories share the log only up to where it starts.
    let mut fork = None;
    for i in 0..p.len().max(n.len()) {
        match (p.get(i), n.get(i)) {
            (Some(a), Some(b)) if a == b => continue,
            (Some(a), Some(b)) => fork = Some(a.1.min(b.1)),
            (Some(a), None) => fork = Some(a.1),
            (None, Some(b)) => fork = Some(b.1),
            (None, None) => {}
        }
        break;
    }
    // A node ahead of the primary on the same history (the primary's machine lost what it
    // had shipped but not synced) holds log the primary does not: diverged too.
    let fork = fork.unwrap_or(primary_end).min(primary_end);
    if node_end > fork {
        Verdict::Diverged { fork }
    } else {
        Verdict::Stream
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H2: &[(u32, Lsn)] = &[(2, Lsn(1000))];

    #[test]
    fn the_case_table() {
        // 1. Same epoch, same history, behind or level: stream.
        assert_eq!(check(1, &[], Lsn(500), 1, &[], Lsn(400)), Verdict::Stream);
        assert_eq!(check(2, H2, Lsn(1500), 2, H2, Lsn(1500)), Verdict::Stream);
        // 2. Same history, node ahead of the primary: diverged at the primary's end.
        assert_eq!(
            check(1, &[], Lsn(500), 1, &[], Lsn(600)),
            Verdict::Diverged { fork: Lsn(500) }
        );
        // 3. Node on an older epoch, stopped before the fork: stream (it receives the epoch
        //    record and follows).
        assert_eq!(check(2, H2, Lsn(1500), 1, &[], Lsn(900)), Verdict::Stream);
        assert_eq!(check(2, H2, Lsn(1500), 1, &[], Lsn(1000)), Verdict::Stream);
        // 4. Node on an older epoch whose log runs past the fork (the old primary kept
        //    writing): diverged at the fork.
        assert_eq!(
            check(2, H2, Lsn(1500), 1, &[], Lsn(1200)),
            Verdict::Diverged { fork: Lsn(1000) }
        );
        // 5. Node knows a newer epoch: the primary is stale (fence it).
        assert_eq!(
            check(1, &[], Lsn(1500), 2, H2, Lsn(1100)),
            Verdict::PrimaryStale {
                node_epoch: 2,
                primary_epoch: 1
            }
        );
        // 6. Two promotions to the same epoch number at different LSNs (split brain): the
        //    histories disagree, diverged at the earlier start.
        assert_eq!(
            check(2, H2, Lsn(1500), 2, &[(2, Lsn(1200))], Lsn(1300)),
            Verdict::Diverged { fork: Lsn(1000) }
        );
        // 7. Several epochs: node from epoch 2 asking an epoch-3 primary, stopped before 3
        //    began: stream; past it: diverged there.
        let h3 = &[(2, Lsn(1000)), (3, Lsn(2000))];
        assert_eq!(check(3, h3, Lsn(2500), 2, H2, Lsn(1900)), Verdict::Stream);
        assert_eq!(
            check(3, h3, Lsn(2500), 2, H2, Lsn(2100)),
            Verdict::Diverged { fork: Lsn(2000) }
        );
        // 8. The primary restarted after an unclean stop and resumed epoch 2 at 1400, the
        //    end it recovered (it may have lost log past it that a replica received): a
        //    node without the resume that stopped at or before 1400 streams (it receives the
        //    resume record); one past 1400 holds log the primary lost and is diverged there,
        //    even when the primary has since written past the node's end.
        let resumed = &[(2, Lsn(1000)), (2, Lsn(1400))];
        assert_eq!(
            check(2, resumed, Lsn(3000), 2, H2, Lsn(1400)),
            Verdict::Stream
        );
        assert_eq!(
            check(2, resumed, Lsn(3000), 2, H2, Lsn(1450)),
            Verdict::Diverged { fork: Lsn(1400) }
        );
        // 9. A node that has the resume too streams.
        assert_eq!(
            check(2, resumed, Lsn(3000), 2, resumed, Lsn(2000)),
            Verdict::Stream
        );
        // 10. Resumes do not raise the epoch: a node promoted to 3 elsewhere still fences a
        //     primary of epoch 2, however often it restarted.
        let many = &[(2, Lsn(1000)), (2, Lsn(1400)), (2, Lsn(1800))];
        assert_eq!(
            check(
                2,
                many,
                Lsn(3000),
                3,
                &[(2, Lsn(1000)), (3, Lsn(1300))],
                Lsn(1350)
            ),
            Verdict::PrimaryStale {
                node_epoch: 3,
                primary_epoch: 2
            }
        );
        // 11. Epoch 1 resumed (no promotion yet): the same rule.
        assert_eq!(
            check(1, &[(1, Lsn(700))], Lsn(900), 1, &[], Lsn(800)),
            Verdict::Diverged { fork: Lsn(700) }
        );
        assert_eq!(
            check(1, &[(1, Lsn(700))], Lsn(900), 1, &[], Lsn(650)),
            Verdict::Stream
        );
    }
}
