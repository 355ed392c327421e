//! The commands, one file per family, as Redis keeps them (t_string.c, t_hash.c, ...):
//! `strings`, `keys`, `transactions`, `connection`, `admin` (server commands) and
//! `replication`, `sentinel`, `pubsub`. A new family is a new file and rows in [`COMMANDS`]: the session dispatches
//! by the row's family, and takes a command down the read or the write path by its access.

pub(crate) mod admin;
pub(crate) mod connection;
pub(crate) mod keys;
pub(crate) mod pubsub;
pub(crate) mod replication;
pub(crate) mod sentinel;
pub(crate) mod strings;
pub(crate) mod transactions;

use bytes::Bytes;
use storage::{WriteTxn, MAX_KEY, MAX_VALUE};

use crate::reply::Reply;

/// Which file a command lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Strings,
    Keys,
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
    spec("DEL", -2, Family::Keys, Access::Write, true),
    spec("EXISTS", -2, Family::Keys, Access::Read, true),
    spec("MGET", -2, Family::Strings, Access::Read, true),
    spec("MSET", -3, Family::Strings, Access::Write, true),
    spec("INCR", 2, Family::Strings, Access::Write, true),
    spec("INCRBY", 3, Family::Strings, Access::Write, true),
    spec("DECR", 2, Family::Strings, Access::Write, true),
    spec("DECRBY", 3, Family::Strings, Access::Write, true),
    spec("DBSIZE", 1, Family::Keys, Access::Read, true),
    spec("SCAN", -2, Family::Keys, Access::Read, false),
    spec("RANGE", -3, Family::Keys, Access::Read, false),
    spec("MULTI", 1, Family::Transactions, Access::Other, false),
    spec("EXEC", 1, Family::Transactions, Access::Other, false),
    spec("DISCARD", 1, Family::Transactions, Access::Other, false),
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
    spec("SENTINEL", -2, Family::Sentinel, Access::Other, false),
    spec("SUBSCRIBE", -2, Family::PubSub, Access::Other, false),
    spec("PSUBSCRIBE", -2, Family::PubSub, Access::Other, false),
    spec("UNSUBSCRIBE", -1, Family::PubSub, Access::Other, false),
    spec("PUNSUBSCRIBE", -1, Family::PubSub, Access::Other, false),
];

/// The command named by `b` (case-insensitive), without allocating.
pub fn lookup(b: &[u8]) -> Option<&'static Spec> {
    COMMANDS
        .iter()
        .find(|s| s.name.len() == b.len() && s.name.as_bytes().eq_ignore_ascii_case(b))
}

/// The canonical name of a known command.
pub fn command_name(b: &[u8]) -> Option<&'static str> {
    lookup(b).map(|s| s.name)
}

/// A command routed to a family that does not know it: a bug in the table, not input.
pub(crate) fn unreachable_command(name: &str) {
    unreachable!("command {name} routed to the wrong family")
}

/// One data command against a write transaction (a write, or any command queued in MULTI):
/// its family's `apply`.
pub(crate) fn apply(tx: &mut WriteTxn<'_>, args: &[Bytes]) -> storage::Result<Reply> {
    let Some(spec) = lookup(&args[0]) else {
        return Ok(Reply::Error("ERR unknown command".into()));
    };
    match spec.family {
        Family::Strings => strings::apply(tx, spec.name, args),
        Family::Keys => keys::apply(tx, spec.name, args),
        Family::Connection => Ok(connection::apply(spec.name, args)),
        _ => Ok(Reply::Error(format!(
            "ERR command '{}' cannot run here",
            spec.name.to_ascii_lowercase()
        ))),
    }
}

pub(crate) fn arity_error(name: &str, argc: usize) -> Option<String> {
    let arity = COMMANDS.iter().find(|s| s.name == name)?.arity;
    let ok = if arity >= 0 {
        argc as i64 == arity
    } else {
        argc as i64 >= -arity
    };
    let extra = match name {
        "MSET" => argc.is_multiple_of(2),
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
    // Which arguments are keys and which values: SET k v [opts], MSET k v k v ..., INCRBY k n;
    // everything else takes only keys.
    for (i, a) in args.iter().enumerate().skip(1) {
        let is_value = match name {
            "SET" | "INCRBY" | "DECRBY" => i >= 2,
            "MSET" => i % 2 == 0,
            "PING" | "ECHO" => true,
            _ => false,
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
