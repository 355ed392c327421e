//! The commands, one file per family, as Redis keeps them (t_string.c, t_hash.c, ...):
//! `strings`, `keys`, `transactions`, `connection`, `admin` (server commands) and
//! `replication`, `sentinel`, `pubsub`. A new family is a new file and rows in [`COMMANDS`]: the session dispatches
//! by the row's family, and takes a command down the read or the write path by its access.

pub(crate) mod admin;
pub(crate) mod collection;
pub(crate) mod connection;
pub(crate) mod expiry;
pub(crate) mod hash;
pub(crate) mod keys;
pub(crate) mod list;
pub(crate) mod pubsub;
pub(crate) mod replication;
pub(crate) mod sentinel;
pub(crate) mod set;
pub(crate) mod strings;
pub(crate) mod transactions;
pub(crate) mod zset;

use bytes::Bytes;

use crate::model::layout::{MAX_USER_KEY as MAX_KEY, MAX_USER_VALUE as MAX_VALUE};
pub(crate) use crate::model::Store;
use crate::model::{self, Writer};
use crate::reply::Reply;
pub(crate) use expiry::expire_at_arg;

/// Which file a command lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Strings,
    Keys,
    /// TTLs (`expiry`).
    Expiry,
    Hash,
    Set,
    ZSet,
    List,
    Transactions,
    Connection,
    Server,
    Replication,
    /// Discovery for Sentinel clients (`sentinel`).
    Sentinel,
    /// Subscriptions (`pubsub`).
    PubSub,
}

/// How a command touches the data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Reads the data: refused while a seeded replica is not consistent yet (`-LOADING`) and
    /// past this connection's `MAXLAG` (`-STALE`).
    Read,
    /// Writes the data: refused by the node's role, queued for the group commit, and run
    /// against the write transaction by its family's `apply`.
    Write,
    /// Neither.
    Other,
}

/// One command: name, Redis-style arity (negative: at least that many arguments), family,
/// access, and whether MULTI may queue it (it then runs inside the transaction at EXEC).
pub struct Spec {
    pub name: &'static str,
    pub arity: i64,
    pub family: Family,
    pub access: Access,
    pub in_multi: bool,
}

const fn spec(
    name: &'static str,
    arity: i64,
    family: Family,
    access: Access,
    in_multi: bool,
) -> Spec {
    Spec {
        name,
        arity,
        family,
        access,
        in_multi,
    }
}

pub const COMMANDS: &[Spec] = &[
    spec("GET", 2, Family::Strings, Access::Read, true),
    spec("SET", -3, Family::Strings, Access::Write, true),
    spec("MGET", -2, Family::Strings, Access::Read, true),
    spec("MSET", -3, Family::Strings, Access::Write, true),
    spec("MSETNX", -3, Family::Strings, Access::Write, true),
    spec("INCR", 2, Family::Strings, Access::Write, true),
    spec("INCRBY", 3, Family::Strings, Access::Write, true),
    spec("DECR", 2, Family::Strings, Access::Write, true),
    spec("DECRBY", 3, Family::Strings, Access::Write, true),
    spec("INCRBYFLOAT", 3, Family::Strings, Access::Write, true),
    spec("SETNX", 3, Family::Strings, Access::Write, true),
    spec("SETEX", 4, Family::Strings, Access::Write, true),
    spec("PSETEX", 4, Family::Strings, Access::Write, true),
    spec("GETSET", 3, Family::Strings, Access::Write, true),
    spec("GETDEL", 2, Family::Strings, Access::Write, true),
    spec("GETEX", -2, Family::Strings, Access::Write, true),
    spec("APPEND", 3, Family::Strings, Access::Write, true),
    spec("STRLEN", 2, Family::Strings, Access::Read, true),
    spec("GETRANGE", 4, Family::Strings, Access::Read, true),
    spec("SUBSTR", 4, Family::Strings, Access::Read, true),
    spec("SETRANGE", 4, Family::Strings, Access::Write, true),
    spec("DEL", -2, Family::Keys, Access::Write, true),
    spec("UNLINK", -2, Family::Keys, Access::Write, true),
    spec("EXISTS", -2, Family::Keys, Access::Read, true),
    spec("DBSIZE", 1, Family::Keys, Access::Read, true),
    spec("SCAN", -2, Family::Keys, Access::Read, false),
    spec("RANGE", -3, Family::Keys, Access::Read, false),
    spec("KEYS", 2, Family::Keys, Access::Read, true),
    spec("TYPE", 2, Family::Keys, Access::Read, true),
    spec("RENAME", 3, Family::Keys, Access::Write, true),
    spec("RENAMENX", 3, Family::Keys, Access::Write, true),
    spec("FLUSHDB", -1, Family::Keys, Access::Write, true),
    spec("FLUSHALL", -1, Family::Keys, Access::Write, true),
    spec("EXPIRE", -3, Family::Expiry, Access::Write, true),
    spec("PEXPIRE", -3, Family::Expiry, Access::Write, true),
    spec("EXPIREAT", -3, Family::Expiry, Access::Write, true),
    spec("PEXPIREAT", -3, Family::Expiry, Access::Write, true),
    spec("PERSIST", 2, Family::Expiry, Access::Write, true),
    spec("TTL", 2, Family::Expiry, Access::Read, true),
    spec("PTTL", 2, Family::Expiry, Access::Read, true),
    spec("EXPIRETIME", 2, Family::Expiry, Access::Read, true),
    spec("PEXPIRETIME", 2, Family::Expiry, Access::Read, true),
    spec("HSET", -4, Family::Hash, Access::Write, true),
    spec("HMSET", -4, Family::Hash, Access::Write, true),
    spec("HSETNX", 4, Family::Hash, Access::Write, true),
    spec("HGET", 3, Family::Hash, Access::Read, true),
    spec("HMGET", -3, Family::Hash, Access::Read, true),
    spec("HGETALL", 2, Family::Hash, Access::Read, true),
    spec("HKEYS", 2, Family::Hash, Access::Read, true),
    spec("HVALS", 2, Family::Hash, Access::Read, true),
    spec("HLEN", 2, Family::Hash, Access::Read, true),
    spec("HEXISTS", 3, Family::Hash, Access::Read, true),
    spec("HSTRLEN", 3, Family::Hash, Access::Read, true),
    spec("HDEL", -3, Family::Hash, Access::Write, true),
    spec("HINCRBY", 4, Family::Hash, Access::Write, true),
    spec("HINCRBYFLOAT", 4, Family::Hash, Access::Write, true),
    spec("HSCAN", -3, Family::Hash, Access::Read, false),
    spec("SADD", -3, Family::Set, Access::Write, true),
    spec("SREM", -3, Family::Set, Access::Write, true),
    spec("SISMEMBER", 3, Family::Set, Access::Read, true),
    spec("SMISMEMBER", -3, Family::Set, Access::Read, true),
    spec("SMEMBERS", 2, Family::Set, Access::Read, true),
    spec("SCARD", 2, Family::Set, Access::Read, true),
    spec("SPOP", -2, Family::Set, Access::Write, true),
    spec("SRANDMEMBER", -2, Family::Set, Access::Read, true),
    spec("SMOVE", 4, Family::Set, Access::Write, true),
    spec("SINTER", -2, Family::Set, Access::Read, true),
    spec("SUNION", -2, Family::Set, Access::Read, true),
    spec("SDIFF", -2, Family::Set, Access::Read, true),
    spec("SINTERSTORE", -3, Family::Set, Access::Write, true),
    spec("SUNIONSTORE", -3, Family::Set, Access::Write, true),
    spec("SDIFFSTORE", -3, Family::Set, Access::Write, true),
    spec("SSCAN", -3, Family::Set, Access::Read, false),
    spec("ZADD", -4, Family::ZSet, Access::Write, true),
    spec("ZINCRBY", 4, Family::ZSet, Access::Write, true),
    spec("ZREM", -3, Family::ZSet, Access::Write, true),
    spec("ZSCORE", 3, Family::ZSet, Access::Read, true),
    spec("ZMSCORE", -3, Family::ZSet, Access::Read, true),
    spec("ZCARD", 2, Family::ZSet, Access::Read, true),
    spec("ZCOUNT", 4, Family::ZSet, Access::Read, true),
    spec("ZLEXCOUNT", 4, Family::ZSet, Access::Read, true),
    spec("ZRANK", 3, Family::ZSet, Access::Read, true),
    spec("ZREVRANK", 3, Family::ZSet, Access::Read, true),
    spec("ZRANGE", -4, Family::ZSet, Access::Read, true),
    spec("ZRANGEBYSCORE", -4, Family::ZSet, Access::Read, true),
    spec("ZREVRANGE", -4, Family::ZSet, Access::Read, true),
    spec("ZREVRANGEBYSCORE", -4, Family::ZSet, Access::Read, true),
    spec("ZRANGEBYLEX", -4, Family::ZSet, Access::Read, true),
    spec("ZREVRANGEBYLEX", -4, Family::ZSet, Access::Read, true),
    spec("ZREMRANGEBYSCORE", 4, Family::ZSet, Access::Write, true),
    spec("ZREMRANGEBYRANK", 4, Family::ZSet, Access::Write, true),
    spec("ZREMRANGEBYLEX", 4, Family::ZSet, Access::Write, true),
    spec("ZPOPMIN", -2, Family::ZSet, Access::Write, true),
    spec("ZPOPMAX", -2, Family::ZSet, Access::Write, true),
    spec("ZSCAN", -3, Family::ZSet, Access::Read, false),
    spec("LPUSH", -3, Family::List, Access::Write, true),
    spec("RPUSH", -3, Family::List, Access::Write, true),
    spec("LPUSHX", -3, Family::List, Access::Write, true),
    spec("RPUSHX", -3, Family::List, Access::Write, true),
    spec("LPOP", -2, Family::List, Access::Write, true),
    spec("RPOP", -2, Family::List, Access::Write, true),
    spec("LLEN", 2, Family::List, Access::Read, true),
    spec("LRANGE", 4, Family::List, Access::Read, true),
    spec("LINDEX", 3, Family::List, Access::Read, true),
    spec("LSET", 4, Family::List, Access::Write, true),
    spec("LREM", 4, Family::List, Access::Write, true),
    spec("LTRIM", 4, Family::List, Access::Write, true),
    spec("LINSERT", 5, Family::List, Access::Write, true),
    spec("LMOVE", 5, Family::List, Access::Write, true),
    spec("RPOPLPUSH", 3, Family::List, Access::Write, true),
    spec("BLPOP", -3, Family::List, Access::Write, true),
    spec("BRPOP", -3, Family::List, Access::Write, true),
    spec("BLMOVE", 6, Family::List, Access::Write, true),
    spec("MULTI", 1, Family::Transactions, Access::Other, false),
    spec("EXEC", 1, Family::Transactions, Access::Other, false),
    spec("DISCARD", 1, Family::Transactions, Access::Other, false),
    spec("WATCH", -2, Family::Transactions, Access::Other, false),
    spec("UNWATCH", 1, Family::Transactions, Access::Other, false),
    spec("PING", -1, Family::Connection, Access::Other, true),
    spec("ECHO", 2, Family::Connection, Access::Other, true),
    spec("HELLO", -1, Family::Connection, Access::Other, false),
    spec("AUTH", -2, Family::Connection, Access::Other, false),
    spec("CLIENT", -2, Family::Connection, Access::Other, false),
    spec("SELECT", 2, Family::Connection, Access::Other, false),
    spec("COMMAND", -1, Family::Connection, Access::Other, false),
    spec("INFO", -1, Family::Server, Access::Other, false),
    spec("CONFIG", -2, Family::Server, Access::Other, false),
    spec("CHECKPOINT", 1, Family::Server, Access::Other, false),
    spec("DURABILITY", -1, Family::Server, Access::Other, false),
    spec("LSN", 1, Family::Server, Access::Other, false),
    spec("WAIT", 3, Family::Replication, Access::Other, false),
    spec("REPLICAOF", 3, Family::Replication, Access::Other, false),
    spec("SLAVEOF", 3, Family::Replication, Access::Other, false),
    spec("FAILOVER", -4, Family::Replication, Access::Other, false),
    spec("WAITLSN", 3, Family::Replication, Access::Other, false),
    spec("MAXLAG", -1, Family::Replication, Access::Other, false),
    spec("ROLE", 1, Family::Replication, Access::Other, false),
    spec(
        "FORGETREPLICA",
        2,
        Family::Replication,
        Access::Other,
        false,
    ),
    spec("QUIT", 1, Family::Connection, Access::Other, false),
    spec("SHUTDOWN", -1, Family::Server, Access::Other, false),
    spec("REPLSTREAM", 1, Family::Replication, Access::Other, false),
    spec("REPLSNAPSHOT", 1, Family::Replication, Access::Other, false),
    spec("REPLREWIND", 1, Family::Replication, Access::Other, false),
    spec("REPLCONTROL", 1, Family::Replication, Access::Other, false),
    spec("REPLPAGES", 1, Family::Replication, Access::Other, false),
    spec("REPLVERIFY", 1, Family::Replication, Access::Other, false),
    spec("DIGEST", 1, Family::Server, Access::Other, false),
    spec("SCRUB", 1, Family::Server, Access::Other, false),
    spec("COMPACT", 1, Family::Server, Access::Other, false),
    spec("SENTINEL", -2, Family::Sentinel, Access::Other, false),
    spec("SUBSCRIBE", -2, Family::PubSub, Access::Other, false),
    spec("PSUBSCRIBE", -2, Family::PubSub, Access::Other, false),
    spec("UNSUBSCRIBE", -1, Family::PubSub, Access::Other, false),
    spec("PUNSUBSCRIBE", -1, Family::PubSub, Access::Other, false),
    spec("PUBLISH", 3, Family::PubSub, Access::Other, false),
];

/// Command names are at most this long.
const MAX_NAME: usize = 24;

/// The table by (name length, first letter): a lookup compares a handful of names, not the
/// whole table (it ran on every command several times and showed in profiles).
fn index() -> &'static Vec<Vec<&'static Spec>> {
    static INDEX: std::sync::OnceLock<Vec<Vec<&'static Spec>>> = std::sync::OnceLock::new();
    INDEX.get_or_init(|| {
        let mut v = vec![Vec::new(); (MAX_NAME + 1) * 26];
        for s in COMMANDS {
            let b = s.name.as_bytes();
            assert!(
                b.len() <= MAX_NAME && b[0].is_ascii_uppercase(),
                "{}",
                s.name
            );
            v[b.len() * 26 + usize::from(b[0] - b'A')].push(s);
        }
        v
    })
}

/// The command named by `b` (case-insensitive), without allocating.
pub fn lookup(b: &[u8]) -> Option<&'static Spec> {
    let first = b.first()?.to_ascii_uppercase();
    if b.len() > MAX_NAME || !first.is_ascii_uppercase() {
        return None;
    }
    index()[b.len() * 26 + usize::from(first - b'A')]
        .iter()
        .copied()
        .find(|s| s.name.as_bytes().eq_ignore_ascii_case(b))
}

/// The canonical name of a known command.
pub fn command_name(b: &[u8]) -> Option<&'static str> {
    lookup(b).map(|s| s.name)
}

/// A command routed to a family that does not know it: a bug in the table, not input.
pub(crate) fn unreachable_command(name: &str) {
    unreachable!("command {name} routed to the wrong family")
}

/// The engine's name for the background sweep's step (`model::sweep`): not a command a
/// client can send (lookup fails on it), only one the server queues.
pub const SWEEP: &[u8] = b"\x00sweep";
/// Keys the sweep deletes or members it collects per step.
pub const SWEEP_BUDGET: usize = 256;

/// A data command's read, against a snapshot or a write transaction.
pub(crate) fn read<S: Store + ?Sized>(
    s: &S,
    now: u64,
    spec: &Spec,
    args: &[Bytes],
) -> model::Result<Reply> {
    let name = spec.name;
    match spec.family {
        Family::Strings => strings::read(s, now, name, args),
        Family::Keys => keys::read(s, now, name, args),
        Family::Expiry => expiry::read(s, now, name, args),
        Family::Hash => hash::read(s, now, name, args),
        Family::Set => set::read(s, now, name, args),
        Family::ZSet => zset::read(s, now, name, args),
        Family::List => list::read(s, now, name, args),
        _ => Ok(cannot_run_here(name)),
    }
}

/// One data command against a write transaction (a write, or any command queued in MULTI):
/// its family's `write`, or its `read` for a read inside EXEC. Command errors are replies
/// (the rest of an EXEC still runs, as in Redis); only engine errors abort the transaction.
pub(crate) fn apply(w: &mut Writer<'_, '_>, args: &[Bytes]) -> storage::Result<Reply> {
    let r = if &args[0][..] == SWEEP {
        w.cache_metas(false)?;
        model::sweep(w, SWEEP_BUDGET)
            .map(|(e, c)| Reply::Array(vec![Reply::Int(e as i64), Reply::Int(c as i64)]))
    } else {
        let Some(spec) = lookup(&args[0]) else {
            return Ok(Reply::Error("ERR unknown command".into()));
        };
        let name = spec.name;
        w.cache_metas(caches_meta(name))?;
        if name == "DBSIZE" {
            // The group's pending count changes first (they are written once per group).
            if let Err(e) = model::flush_counts(w.tx, w.touched) {
                return match e {
                    model::Error::Storage(e) => Err(e),
                    model::Error::BadMeta(e) => Ok(Reply::Error(format!("CORRUPT {e}"))),
                };
            }
        }
        match (spec.family, spec.access) {
            (Family::Connection, _) => return Ok(connection::apply(name, args)),
            (_, Access::Read) => read(&*w.tx, w.now_ms, spec, args),
            (Family::Strings, _) => strings::write(w, name, args),
            (Family::Keys, _) => keys::write(w, name, args),
            (Family::Expiry, _) => expiry::write(w, name, args),
            (Family::Hash, _) => hash::write(w, name, args),
            (Family::Set, _) => set::write(w, name, args),
            (Family::ZSet, _) => zset::write(w, name, args),
            // Inside EXEC a blocking pop does not block: nil when there is nothing to pop.
            (Family::List, _) if name.starts_with('B') => {
                list::try_blocking(w, name, args).map(|r| r.unwrap_or(blocking_nil(name)))
            }
            (Family::List, _) => list::write(w, name, args),
            _ => Ok(cannot_run_here(name)),
        }
    };
    match r {
        Ok(r) => Ok(r),
        Err(model::Error::Storage(e)) => Err(e),
        Err(model::Error::BadMeta(e)) => Ok(Reply::Error(format!("CORRUPT {e}"))),
    }
}

/// Whether a write reaches metadata entries only through `Writer`'s methods (`lookup`, `put`,
/// `delete`, `set_plain`; collections through `collection::get_w`/`get_or_new`/`save`), so
/// that a group's commands may keep collections' metadata in the write-back cache
/// (`model::cache`). Every other command — reads, which read the transaction, and writes
/// that walk or write metadata entries themselves (FLUSHDB, the *STORE commands) — flushes
/// the cache first. `model::tests::grouped_commands_match_one_by_one` checks the listed ones.
fn caches_meta(name: &str) -> bool {
    matches!(
        name,
        "SET"
            | "SETNX"
            | "SETEX"
            | "PSETEX"
            | "GETSET"
            | "GETDEL"
            | "GETEX"
            | "APPEND"
            | "SETRANGE"
            | "MSET"
            | "MSETNX"
            | "INCR"
            | "DECR"
            | "INCRBY"
            | "DECRBY"
            | "INCRBYFLOAT"
            | "DEL"
            | "UNLINK"
            | "RENAME"
            | "RENAMENX"
            | "EXPIRE"
            | "PEXPIRE"
            | "EXPIREAT"
            | "PEXPIREAT"
            | "PERSIST"
            | "HSET"
            | "HMSET"
            | "HSETNX"
            | "HDEL"
            | "HINCRBY"
            | "HINCRBYFLOAT"
            | "SADD"
            | "SREM"
            | "SPOP"
            | "SMOVE"
            | "ZADD"
            | "ZINCRBY"
            | "ZREM"
            | "ZPOPMIN"
            | "ZPOPMAX"
            | "LPUSH"
            | "RPUSH"
            | "LPUSHX"
            | "RPUSHX"
            | "LPOP"
            | "RPOP"
    )
}

/// The reply of a command routed to a transaction that cannot run it.
pub(crate) fn cannot_run_here(name: &str) -> Reply {
    Reply::Error(format!(
        "ERR command '{}' cannot run here",
        name.to_ascii_lowercase()
    ))
}

/// What a blocking pop answers when there is nothing: BLMOVE a null bulk, BLPOP and BRPOP a
/// null array.
pub fn blocking_nil(name: &str) -> Reply {
    if name == "BLMOVE" {
        Reply::Null
    } else {
        Reply::NullArray
    }
}

/// Whether a command is a blocking pop (BLPOP, BRPOP, BLMOVE).
pub fn is_blocking(name: &str) -> bool {
    matches!(name, "BLPOP" | "BRPOP" | "BLMOVE")
}

/// Whether argument `i` of a data command is a key (at most 8 KiB; the rest are values, at
/// most 64 MiB, or members, which their command checks).
fn is_key(name: &str, i: usize, argc: usize) -> bool {
    match name {
        "DEL" | "UNLINK" | "EXISTS" | "MGET" | "WATCH" | "SINTER" | "SUNION" | "SDIFF"
        | "SINTERSTORE" | "SUNIONSTORE" | "SDIFFSTORE" => true,
        "BLPOP" | "BRPOP" => i < argc - 1,
        "RENAME" | "RENAMENX" | "SMOVE" | "LMOVE" | "RPOPLPUSH" | "BLMOVE" => i <= 2,
        "MSET" | "MSETNX" => i % 2 == 1,
        _ => i == 1,
    }
}

pub(crate) fn arity_error(name: &str, argc: usize) -> Option<String> {
    let arity = lookup(name.as_bytes())?.arity;
    let ok = if arity >= 0 {
        argc as i64 == arity
    } else {
        argc as i64 >= -arity
    };
    let extra = match name {
        "MSET" | "MSETNX" => argc.is_multiple_of(2),
        _ => false,
    };
    if !ok || extra {
        Some(wrong_arity(&name.to_ascii_lowercase()))
    } else {
        None
    }
}

pub(crate) fn wrong_arity(name: &str) -> String {
    format!("ERR wrong number of arguments for '{name}' command")
}

/// Key and value limits of a data command, checked before anything runs.
pub(crate) fn size_error(name: &str, args: &[Bytes]) -> Option<String> {
    let data = lookup(name.as_bytes()).is_some_and(|s| {
        matches!(
            s.family,
            Family::Strings
                | Family::Keys
                | Family::Expiry
                | Family::Hash
                | Family::Set
                | Family::ZSet
                | Family::List
        ) || s.name == "WATCH"
    });
    for (i, a) in args.iter().enumerate().skip(1) {
        // Outside the data commands every argument is held to the key limit, but PING's and
        // ECHO's and PUBLISH's message.
        let is_value = if data {
            !is_key(name, i, args.len())
        } else {
            matches!(name, "PING" | "ECHO") || (name == "PUBLISH" && i == 2)
        };
        if !is_value && a.len() > MAX_KEY {
            return Some(format!(
                "ERR key too large ({} bytes; the limit is {MAX_KEY})",
                a.len()
            ));
        }
        if is_value && a.len() > MAX_VALUE {
            return Some(format!(
                "ERR value too large ({} bytes; the limit is {MAX_VALUE})",
                a.len()
            ));
        }
    }
    None
}

/// ASCII upper-case of a command word (lossy for non-UTF-8, which matches nothing anyway).
pub fn upper(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len());
    for &c in b.iter().take(64) {
        s.push(char::from(c.to_ascii_uppercase()));
    }
    s
}

/// Strict decimal i64, as Redis parses numbers: no spaces, no plus sign, no leading zeros.
pub fn parse_i64(b: &[u8]) -> Option<i64> {
    if b.is_empty()
        || b.len() > 20
        || b[0] == b'+'
        || (b.len() > 1 && b[0] == b'0')
        || b.starts_with(b"-0")
    {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub(crate) fn unhex(s: &[u8]) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 2 * MAX_KEY {
        return None;
    }
    s.chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok())
        .collect()
}

pub(crate) fn preview(args: &[Bytes]) -> String {
    args.iter()
        .take(3)
        .map(|a| format!("'{}'", String::from_utf8_lossy(&a[..a.len().min(32)])))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_parse_like_redis() {
        assert_eq!(parse_i64(b"42"), Some(42));
        assert_eq!(parse_i64(b"-7"), Some(-7));
        assert_eq!(parse_i64(b"0"), Some(0));
        for bad in [
            &b""[..],
            b"+1",
            b"01",
            b"-0",
            b" 1",
            b"1.5",
            b"99999999999999999999",
            b"abc",
        ] {
            assert_eq!(parse_i64(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
