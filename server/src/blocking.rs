//! Blocking pops (BLPOP, BRPOP, BLMOVE): a connection waits on its own task, so the server
//! answers everyone else meanwhile.
//!
//! On a primary the pop is tried whenever one of its keys may hold an item: at once, then
//! after every applied write that changed keys. On a replica it waits for a replicated push
//! the same way (after every applied record), and then takes the item on its primary — the
//! same command with a short timeout over a client connection — so that an item leaves the
//! list once for all the clients of every node. If another client took it first, the wait
//! goes on. A replica promoted meanwhile pops locally from then on.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::client::Conn;
use crate::reply::Reply;
use crate::session::{Out, Session, Shared};

/// How long the primary may block a pop a replica forwards once it saw the item replicated:
/// long enough to ride out a push still in flight, short enough that a pop another client
/// won costs little before the replica waits again.
const FORWARD_TIMEOUT: &str = "0.05";

/// How long a replica waits for its primary to answer a forwarded pop (connecting
/// included) before it answers `-TRYAGAIN`.
const FORWARD_LIMIT: Duration = Duration::from_secs(5);

/// How often a waiting pop looks at the node's role, for a replica promoted meanwhile (a
/// promotion changes no key, so nothing else wakes it).
const ROLE_CHECK: Duration = Duration::from_secs(1);

/// Runs a blocking pop to its end: the reply of the first try that pops, an error, or nil at
/// the deadline.
pub(crate) async fn block(
    sh: &Shared,
    session: &mut Session,
    args: Vec<Bytes>,
    deadline: Option<Instant>,
) -> BytesMut {
    let name = crate::commands::command_name(&args[0]).unwrap_or("");
    let mut changed = sh.changed.subscribe();
    let mut applied = sh.node.applied.subscribe();
    let mut stop = sh.node.shutdown.subscribe();
    let mut null = BytesMut::new();
    crate::commands::blocking_nil(name).encode(&session.enc, &mut null);
    struct Blocked<'a>(&'a Shared);
    impl Drop for Blocked<'_> {
        fn drop(&mut self) {
            self.0.stats.blocked_clients.fetch_sub(1, Ordering::Relaxed);
        }
    }
    sh.stats.blocked_clients.fetch_add(1, Ordering::Relaxed);
    let _blocked = Blocked(sh);
    let mut upstream: Option<(String, Conn)> = None;
    loop {
        changed.mark_unchanged();
        applied.mark_unchanged();
        let ready = {
            let db = session.db();
            let snap = db.read();
            crate::commands::list::block_ready(&snap, crate::shared::now_ms(), name, &args)
        };
        if ready {
            let got = match sh.node.replicaof() {
                Some(primary) => {
                    let enc = session.enc;
                    take_on_primary(sh, &enc, &primary, &args, &mut upstream).await
                }
                None => {
                    let mut out = Out::default();
                    session.write_commands(vec![args.clone()], &mut out, false);
                    Box::pin(crate::server::finish_batch(sh, session, &mut out)).await
                }
            };
            // Nil: another client popped it first; keep waiting.
            if got != null {
                return got;
            }
        }
        // A primary wakes on groups that changed keys; a replica on applied records (a
        // primary's `applied` moves with every WAL write, too often to re-read on).
        let replica = sh.node.is_replica_role();
        let woke = async {
            tokio::select! {
                r = changed.changed() => r.is_ok(),
                r = applied.changed(), if replica => r.is_ok(),
                _ = tokio::time::sleep(ROLE_CHECK) => true,
                _ = stop.changed() => false,
            }
        };
        let woke = match deadline {
            Some(d) => tokio::time::timeout_at(d.into(), woke)
                .await
                .unwrap_or(false),
            None => woke.await,
        };
        if !woke {
            return null;
        }
    }
}

/// A replica's try: the pop, with a short timeout, on the primary it follows (which may
/// itself be a replica that forwards it in turn). The reply comes back re-encoded for this
/// client's protocol; a primary that cannot be reached is an error, not a silent wait.
async fn take_on_primary(
    sh: &Shared,
    enc: &crate::resp::Encoder,
    primary: &str,
    args: &[Bytes],
    upstream: &mut Option<(String, Conn)>,
) -> BytesMut {
    let mut forwarded: Vec<&[u8]> = args[..args.len() - 1].iter().map(|a| &a[..]).collect();
    forwarded.push(FORWARD_TIMEOUT.as_bytes());
    let reply = tokio::time::timeout(FORWARD_LIMIT, async {
        if upstream.as_ref().is_none_or(|(addr, _)| addr != primary) {
            let conn = Conn::connect(primary, sh.config.primary_password.as_deref()).await?;
            *upstream = Some((primary.to_string(), conn));
        }
        let Some((_, conn)) = upstream.as_mut() else {
            anyhow::bail!("no connection");
        };
        conn.call_reply(&forwarded, crate::model::layout::MAX_USER_VALUE + 64)
            .await
    })
    .await
    .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {FORWARD_LIMIT:?}")));
    let reply = reply.unwrap_or_else(|e| {
        *upstream = None;
        Reply::Error(format!(
            "TRYAGAIN this replica saw an item to pop but could not take it on its primary {primary}: {e:#}"
        ))
    });
    let mut out = BytesMut::new();
    reply.encode(enc, &mut out);
    out
}
