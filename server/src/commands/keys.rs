//! The keyspace: EXISTS, DBSIZE, TYPE, KEYS, SCAN (cursor over keys, `TYPE t`), RANGE (an
//! ordered range of strings); DEL, UNLINK, RENAME, RENAMENX, FLUSHDB, FLUSHALL.

use std::ops::Bound;

use bytes::Bytes;

use super::{hex, parse_i64, unhex, upper, Store};
use crate::glob;
use crate::model::layout::{self, meta_bounds, user_key, COUNT_KEY, FORMAT_KEY, VERSION_KEY};
use crate::model::{self, visit, Kind, Meta, Writer};
use crate::reply::{Reply, NOT_INT, SYNTAX};

/// Redis's error for SCAN's and friends' bad cursor.
const BAD_CURSOR: &str = "ERR invalid cursor";

pub(crate) fn read<S: Store + ?Sized>(
    s: &S,
    now: u64,
    name: &str,
    args: &[Bytes],
) -> model::Result<Reply> {
    Ok(match name {
        "EXISTS" => {
            let mut n = 0;
            for k in &args[1..] {
                n += i64::from(model::lookup(s, k, now)?.is_some());
            }
            Reply::Int(n)
        }
        "DBSIZE" => Reply::Int(model::key_count(s)? as i64),
        "TYPE" => Reply::Status(
            model::lookup(s, &args[1], now)?
                .map_or("none", |f| f.meta.kind.name())
                .into(),
        ),
        "KEYS" => {
            let mut keys = Vec::new();
            model::visit_keys(s, &meta_bounds(None), &mut |key, m, _| {
                if !m.expired(now) && glob::matches(&args[1], key) {
                    keys.push(Reply::bulk(key));
                }
                true
            })?;
            Reply::Array(keys)
        }
        "SCAN" => scan(s, now, args)?,
        "RANGE" => range(s, now, args)?,
        _ => super::cannot_run_here(name),
    })
}

/// SCAN cursor [MATCH p] [COUNT n] [TYPE t]: the cursor is `k` + the hex of the last key
/// examined, so every key present for the whole scan comes exactly once, in key order.
fn scan<S: Store + ?Sized>(s: &S, now: u64, args: &[Bytes]) -> model::Result<Reply> {
    if !args.len().is_multiple_of(2) {
        return Ok(Reply::err(&super::wrong_arity("scan")));
    }
    let after = match &args[1][..] {
        b"0" => None,
        c => match c.strip_prefix(b"k").and_then(unhex) {
            Some(k) => Some(k),
            None => return Ok(Reply::err(BAD_CURSOR)),
        },
    };
    let mut pattern: Option<&[u8]> = None;
    let mut count = 10usize;
    let mut kind = None;
    for opt in args[2..].chunks(2) {
        match upper(&opt[0]).as_str() {
            "MATCH" => pattern = Some(&opt[1]),
            "COUNT" => match parse_i64(&opt[1]) {
                Some(n) if n >= 1 => count = (n as usize).min(100_000),
                _ => return Ok(Reply::err(NOT_INT)),
            },
            // An unknown type matches nothing, as in Redis.
            "TYPE" => kind = Some(Kind::parse(&upper(&opt[1]))),
            _ => return Ok(Reply::err(SYNTAX)),
        }
    }
    let mut keys = Vec::new();
    let mut last: Option<Vec<u8>> = None;
    let mut examined = 0;
    let mut done = true;
    model::visit_keys(s, &meta_bounds(after.as_deref()), &mut |key, meta, _| {
        if examined == count {
            done = false;
            return false;
        }
        examined += 1;
        last = Some(key.to_vec());
        if !meta.expired(now)
            && kind.is_none_or(|t| t == Some(meta.kind))
            && pattern.is_none_or(|p| glob::matches(p, key))
        {
            keys.push(Reply::bulk(key));
        }
        true
    })?;
    let cursor = match (done, last) {
        (false, Some(k)) => format!("k{}", hex(&k)),
        _ => "0".to_string(),
    };
    Ok(Reply::Array(vec![
        Reply::Bulk(cursor.into_bytes()),
        Reply::Array(keys),
    ]))
}

/// RANGE start end [LIMIT n]: strings with start <= key < end, as a flat k v array (`-`,
/// `+`: unbounded). Keys of other types are skipped.
fn range<S: Store + ?Sized>(s: &S, now: u64, args: &[Bytes]) -> model::Result<Reply> {
    if args.len() != 3 && args.len() != 5 {
        return Ok(Reply::err(&super::wrong_arity("range")));
    }
    let mut limit = usize::MAX;
    if args.len() == 5 {
        if upper(&args[3]) != "LIMIT" {
            return Ok(Reply::err(SYNTAX));
        }
        match parse_i64(&args[4]) {
            Some(n) if n >= 0 => limit = n as usize,
            _ => return Ok(Reply::err(NOT_INT)),
        }
    }
    let lo = if &args[1][..] == b"-" {
        Bound::Included(vec![layout::META])
    } else {
        Bound::Included(layout::meta_key(&args[1]))
    };
    let hi = if &args[2][..] == b"+" {
        Bound::Excluded(vec![layout::META + 1])
    } else {
        Bound::Excluded(layout::meta_key(&args[2]))
    };
    if let (Bound::Included(a), Bound::Excluded(b)) = (&lo, &hi) {
        if a >= b {
            return Ok(Reply::Array(Vec::new()));
        }
    }
    let mut v = Vec::new();
    model::visit_keys(s, &(lo, hi), &mut |key, m, value| {
        if v.len() / 2 >= limit {
            return false;
        }
        if m.kind == Kind::String && !m.expired(now) {
            v.push(Reply::bulk(key));
            v.push(Reply::bulk(value));
        }
        true
    })?;
    Ok(Reply::Array(v))
}

pub(crate) fn write(w: &mut Writer<'_, '_>, name: &str, args: &[Bytes]) -> model::Result<Reply> {
    Ok(match name {
        "DEL" | "UNLINK" => {
            let mut n = 0;
            for k in &args[1..] {
                if let Some((m, _)) = w.lookup(k)? {
                    w.delete(k, &m)?;
                    n += 1;
                }
            }
            Reply::Int(n)
        }
        "RENAME" | "RENAMENX" => {
            let (src, dst) = (&args[1][..], &args[2][..]);
            let Some((m, v)) = w.lookup(src)? else {
                return Ok(Reply::err("ERR no such key"));
            };
            let nx = name == "RENAMENX";
            if src == dst {
                return Ok(if nx { Reply::Int(0) } else { Reply::Ok });
            }
            if let Some((d, _)) = w.lookup(dst)? {
                if nx {
                    return Ok(Reply::Int(0));
                }
                w.delete(dst, &d)?;
            }
            rename(w, src, dst, &m, &v)?;
            if nx {
                Reply::Int(1)
            } else {
                Reply::Ok
            }
        }
        "FLUSHDB" | "FLUSHALL" => {
            match args.get(1).map(|a| upper(a)) {
                None => {}
                Some(o) if o == "SYNC" || o == "ASYNC" => {}
                Some(_) => return Ok(Reply::err(SYNTAX)),
            }
            flush(w)?;
            Reply::Ok
        }
        _ => super::cannot_run_here(name),
    })
}

/// Moves a live key to `dst` (free): a string at once; a collection's members copied under a
/// new version, the old ones deleted like any deleted collection's.
fn rename(
    w: &mut Writer<'_, '_>,
    src: &[u8],
    dst: &[u8],
    m: &Meta,
    value: &[u8],
) -> model::Result<()> {
    let mut n = m.clone();
    if m.kind != Kind::String {
        n.version = w.new_version()?;
        let mut spaces = vec![layout::SUB];
        if m.kind == Kind::ZSet {
            spaces.push(layout::SCORE);
        }
        for space in spaces {
            let from = layout::prefix(space, src, m.version);
            let to = layout::prefix(space, dst, n.version);
            let mut moved = Vec::new();
            visit(&*w.tx, &layout::prefix_bounds(&from), false, &mut |k, v| {
                moved.push((k[from.len()..].to_vec(), v.to_vec()));
                true
            })?;
            for (sub, v) in moved {
                let mut k = to.clone();
                k.extend_from_slice(&sub);
                w.tx.put(&k, &v)?;
            }
        }
    }
    w.delete(src, m)?;
    w.put(dst, None, &n, value)
}

/// Deletes every key (and every member, and every index entry) at once.
fn flush(w: &mut Writer<'_, '_>) -> model::Result<()> {
    let mut keys = Vec::new();
    w.tx.visit(Bound::Unbounded, Bound::Unbounded, false, &mut |k, _| {
        if k != VERSION_KEY && k != FORMAT_KEY {
            keys.push(k.to_vec());
        }
        true
    })?;
    for k in &keys {
        if k.first() == Some(&layout::META) {
            w.touch(user_key(k));
        }
        w.tx.delete(k)?;
    }
    // The counters are gone with the rest: changes pending from earlier in the group must
    // not be written on top of zero.
    w.touched.keys_delta = 0;
    w.touched.expires_delta = 0;
    debug_assert!(w.tx.get(COUNT_KEY)?.is_none());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_cursors_round_trip() {
        for k in [&b""[..], b"a", b"\x00\xff"] {
            assert_eq!(unhex(hex(k).as_bytes()).as_deref(), Some(k));
        }
        assert_eq!(unhex(b"zz"), None);
        assert_eq!(unhex(b"abc"), None);
    }
}
