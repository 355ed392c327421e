//! The node's role: one state machine. Every decision to refuse a write reads it alone, and
//! every role change goes through [`RoleCell::become_`], which checks the transition against
//! the table below (also in docs/replication.md). The changes themselves — promotion,
//! following, switchover — are in this folder's files.
//!
//! | from ↓ / to →   | Primary              | Fenced               | SwitchingOver   | Replica                  |
//! |-----------------|----------------------|----------------------|-----------------|--------------------------|
//! | Primary         | —                    | a newer epoch seen   | `FAILOVER TO`   | `REPLICAOF host port`    |
//! | Fenced          | no (follow instead)  | a newer reason       | no              | `REPLICAOF host port`    |
//! | SwitchingOver   | switchover abandoned, or `REPLICAOF NO ONE` | a newer epoch seen | — | switchover done, or `REPLICAOF` |
//! | Replica         | `REPLICAOF NO ONE`   | no                   | no              | `REPLICAOF` another, or its log verified |

mod follow;
mod promote;
mod switchover;

pub use follow::{follow, follow_checked};
pub use promote::{promote, promote_at_least};
pub use switchover::{failover, serve_control};

use parking_lot::{RwLock, RwLockReadGuard};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Takes writes.
    Primary,
    /// A primary that learned of a newer epoch than its own: another node was promoted. It
    /// refuses writes until it follows a primary.
    Fenced { why: String },
    /// A primary that stopped taking writes to hand over to `target` (`FAILOVER TO`); it has
    /// demoted its database, so nothing more is written here.
    SwitchingOver { target: String },
    /// Follows `primary`. `verified`: the primary accepted this node's log (or it was rewound
    /// or reseeded to match). Until then the apply LSN may count WAL the primary does not
    /// share, so `WAITLSN` does not trust it.
    Replica { primary: String, verified: bool },
}

/// Why the role refuses a write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteRefusal {
    /// This node is a replica.
    ReadOnly,
    /// A newer epoch exists: this node is not the primary any more.
    Fenced(String),
    /// Writes are paused for a switchover.
    SwitchingOver,
    /// A cluster's primary whose leader lease is not known alive (`cluster::lease`).
    NoLease,
}

impl Role {
    /// Why a write cannot be taken in this role, if it cannot.
    pub fn write_refusal(&self) -> Option<WriteRefusal> {
        match self {
            Role::Primary => None,
            Role::Fenced { why } => Some(WriteRefusal::Fenced(why.clone())),
            Role::SwitchingOver { .. } => Some(WriteRefusal::SwitchingOver),
            Role::Replica { .. } => Some(WriteRefusal::ReadOnly),
        }
    }

    pub fn is_replica(&self) -> bool {
        matches!(self, Role::Replica { .. })
    }

    /// The primary a replica follows.
    pub fn primary_addr(&self) -> Option<&str> {
        match self {
            Role::Replica { primary, .. } => Some(primary),
            _ => None,
        }
    }

    /// Whether this node's apply LSN counts only WAL its primary shares (always, but on a
    /// replica whose log the primary has not accepted yet).
    pub fn verified(&self) -> bool {
        !matches!(
            self,
            Role::Replica {
                verified: false,
                ..
            }
        )
    }

    /// The state's name, as INFO and the logs show it.
    pub fn name(&self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Fenced { .. } => "fenced",
            Role::SwitchingOver { .. } => "switching_over",
            Role::Replica { .. } => "replica",
        }
    }

    /// The transition table (module docs).
    pub fn may_become(&self, next: &Role) -> bool {
        use Role::*;
        match (self, next) {
            (Primary, Primary) => false,
            (Primary, _) => true,
            (Fenced { .. }, Fenced { .. } | Replica { .. }) => true,
            (Fenced { .. }, _) => false,
            (SwitchingOver { .. }, Primary | Fenced { .. } | Replica { .. }) => true,
            (SwitchingOver { .. }, SwitchingOver { .. }) => false,
            (Replica { .. }, Primary | Replica { .. }) => true,
            (Replica { .. }, _) => false,
        }
    }
}

/// The node's role, behind a lock.
pub struct RoleCell(RwLock<Role>);

impl RoleCell {
    pub fn new(role: Role) -> RoleCell {
        RoleCell(RwLock::new(role))
    }

    pub fn read(&self) -> RwLockReadGuard<'_, Role> {
        self.0.read()
    }

    pub fn get(&self) -> Role {
        self.0.read().clone()
    }

    /// Moves to `next`, returning the old role. A transition the table forbids is a bug in
    /// the caller: it is refused with the reason, and the role stays.
    pub fn become_(&self, next: Role) -> Result<Role, String> {
        let mut g = self.0.write();
        if !g.may_become(&next) {
            return Err(format!(
                "a node that is {} cannot become {}",
                g.name(),
                next.name()
            ));
        }
        tracing::debug!(from = g.name(), to = next.name(), "role change");
        Ok(std::mem::replace(&mut *g, next))
    }

    /// A newer epoch exists: a primary (or one switching over) refuses writes from now on.
    /// A replica is left alone (it follows whoever it follows). Returns whether it fenced.
    pub fn fence(&self, why: String) -> bool {
        let mut g = self.0.write();
        match &*g {
            Role::Replica { .. } => false,
            Role::Fenced { .. } => {
                *g = Role::Fenced { why };
                true
            }
            _ => {
                tracing::error!(reason = %why, "fenced: this node no longer takes writes");
                *g = Role::Fenced { why };
                true
            }
        }
    }

    /// `primary` accepted this replica's log. A stream of an earlier role (another primary,
    /// finishing its handshake while the node is told to follow a new one) verifies nothing.
    pub fn verify(&self, primary: &str) {
        if let Role::Replica {
            primary: p,
            verified,
        } = &mut *self.0.write()
        {
            if p == primary {
                *verified = true;
            }
        }
    }

    /// Puts back the role a change left from, after the change failed half-way (the undo of
    /// a transition, so not checked against the table).
    pub fn restore(&self, old: Role) {
        tracing::debug!(to = old.name(), "role change undone");
        *self.0.write() = old;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> [Role; 4] {
        [
            Role::Primary,
            Role::Fenced { why: "e2".into() },
            Role::SwitchingOver { target: "b".into() },
            Role::Replica {
                primary: "a".into(),
                verified: true,
            },
        ]
    }

    #[test]
    fn the_transition_table_row_by_row() {
        // Rows: from; columns: to (Primary, Fenced, SwitchingOver, Replica).
        let table = [
            [false, true, true, true],
            [false, true, false, true],
            [true, true, false, true],
            [true, false, false, true],
        ];
        for (from, row) in all().iter().zip(table) {
            for (to, allowed) in all().iter().zip(row) {
                assert_eq!(
                    from.may_become(to),
                    allowed,
                    "{} -> {}",
                    from.name(),
                    to.name()
                );
                let cell = RoleCell::new(from.clone());
                assert_eq!(cell.become_(to.clone()).is_ok(), allowed);
                assert_eq!(cell.get(), if allowed { to } else { from }.clone());
            }
        }
    }

    #[test]
    fn only_a_primary_takes_writes_and_each_refusal_says_why() {
        let refusals: Vec<_> = all().iter().map(Role::write_refusal).collect();
        assert_eq!(
            refusals,
            [
                None,
                Some(WriteRefusal::Fenced("e2".into())),
                Some(WriteRefusal::SwitchingOver),
                Some(WriteRefusal::ReadOnly)
            ]
        );
    }

    #[test]
    fn fencing_leaves_a_replica_alone_and_verification_only_touches_a_replica() {
        let cell = RoleCell::new(Role::Replica {
            primary: "a".into(),
            verified: false,
        });
        assert!(!cell.fence("newer".into()));
        assert!(!cell.read().verified());
        cell.verify("b");
        assert!(
            !cell.read().verified(),
            "another primary's stream verifies nothing"
        );
        cell.verify("a");
        assert!(cell.read().verified());
        let cell = RoleCell::new(Role::SwitchingOver { target: "b".into() });
        assert!(cell.fence("newer".into()));
        assert_eq!(
            cell.get(),
            Role::Fenced {
                why: "newer".into()
            }
        );
        cell.verify("a");
        assert_eq!(
            cell.get(),
            Role::Fenced {
                why: "newer".into()
            }
        );
    }
}
