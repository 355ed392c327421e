//! The active half of expiry, and the garbage collector of deleted collections: on a primary,
//! every `TICK` the sweep deletes keys whose deadline has passed (the expiry index gives them
//! in deadline order) and members of deleted collections, `SWEEP_BUDGET` at a time, through
//! the write queue like any write — so the deletes are logged, replicated and counted for
//! WATCH. A replica sweeps nothing (its primary's deletes arrive as WAL; meanwhile its reads
//! hide expired keys) and starts sweeping the moment it is promoted.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::commands::{SWEEP, SWEEP_BUDGET};
use crate::reply::Reply;
use crate::shared::{Queued, Shared};

/// How often the sweep looks for work.
pub const TICK: Duration = Duration::from_millis(100);
/// Steps per tick at most (each deletes up to `SWEEP_BUDGET` keys or members).
const STEPS_PER_TICK: usize = 16;

pub async fn run(sh: Arc<Shared>) {
    let mut stop = sh.node.shutdown.subscribe();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        for _ in 0..STEPS_PER_TICK {
            if sh.node.write_refusal().is_some() {
                break;
            }
            match step(&sh).await {
                Some((e, c)) if e >= SWEEP_BUDGET || c >= SWEEP_BUDGET => continue,
                _ => break,
            }
        }
    }
}

/// One sweep step as a queued write; the work it did (expired keys, collected members),
/// once durable.
async fn step(sh: &Arc<Shared>) -> Option<(usize, usize)> {
    let slot = Arc::new(Mutex::new(None));
    sh.queue.lock().push(Queued {
        cmds: vec![vec![Bytes::from_static(SWEEP)]],
        slot: slot.clone(),
        exec: None,
    });
    // Applied off the event loop: a large step does not hold up connections meanwhile.
    let sh2 = sh.clone();
    tokio::task::spawn_blocking(move || sh2.apply_queued())
        .await
        .ok()?;
    let result = slot.lock().take();
    match result {
        Some(Ok((replies, lsn))) => {
            let (e, c) = match replies.first() {
                Some(Reply::Array(v)) => match v[..] {
                    [Reply::Int(e), Reply::Int(c)] => (e as usize, c as usize),
                    _ => (0, 0),
                },
                Some(Reply::Error(e)) => {
                    tracing::warn!(error = %e, "the expiry sweep failed");
                    return None;
                }
                _ => (0, 0),
            };
            sh.stats.expired_keys.fetch_add(e as u64, Ordering::Relaxed);
            sh.stats
                .collected_members
                .fetch_add(c as u64, Ordering::Relaxed);
            if e + c > 0 {
                if let Err(e) = sh.db().durable(lsn).await {
                    tracing::warn!(error = %e, "the expiry sweep's deletes are not durable");
                    return None;
                }
            }
            Some((e, c))
        }
        Some(Err(e)) => {
            tracing::debug!(error = %e, "the expiry sweep was refused");
            None
        }
        None => None,
    }
}
