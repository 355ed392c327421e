//! Strings: GET, MGET, STRLEN, GETRANGE; SET (NX XX EX PX EXAT PXAT KEEPTTL GET), SETNX,
//! SETEX, PSETEX, GETSET, GETDEL, GETEX, APPEND, SETRANGE, MSET, MSETNX, INCR, INCRBY, DECR,
//! DECRBY, INCRBYFLOAT. A string is its metadata entry with the value after it.

use bytes::Bytes;

use super::{expire_at_arg, parse_i64, upper, Store};
use crate::model::number::{fmt_human, parse_f64};
use crate::model::{self, Kind, Meta, Writer};
use crate::reply::{Reply, NOT_FLOAT, NOT_INT, SYNTAX};

/// The longest string SETRANGE and APPEND may make (the engine's value limit).
const MAX_STRING: usize = crate::model::layout::MAX_USER_VALUE;

/// A string read, from a snapshot or inside a transaction.
pub(crate) fn read<S: Store + ?Sized>(
    s: &S,
    now: u64,
    name: &str,
    args: &[Bytes],
) -> model::Result<Reply> {
    Ok(match name {
        "GET" => match model::lookup(s, &args[1], now)? {
            None => Reply::Null,
            Some(f) if f.meta.kind == Kind::String => Reply::bulk(f.value()),
            Some(_) => Reply::wrong_type(),
        },
        "MGET" => {
            let mut v = Vec::with_capacity(args.len() - 1);
            for k in &args[1..] {
                v.push(match model::lookup(s, k, now)? {
                    Some(f) if f.meta.kind == Kind::String => Reply::bulk(f.value()),
                    _ => Reply::Null,
                });
            }
            Reply::Array(v)
        }
        "STRLEN" => match model::lookup(s, &args[1], now)? {
            None => Reply::Int(0),
            Some(f) if f.meta.kind == Kind::String => Reply::Int(f.value().len() as i64),
            Some(_) => Reply::wrong_type(),
        },
        "GETRANGE" | "SUBSTR" => {
            let (Some(a), Some(b)) = (parse_i64(&args[2]), parse_i64(&args[3])) else {
                return Ok(Reply::err(NOT_INT));
            };
            match model::lookup(s, &args[1], now)? {
                None => Reply::bulk(b""),
                Some(f) if f.meta.kind == Kind::String => Reply::bulk(getrange(f.value(), a, b)),
                Some(_) => Reply::wrong_type(),
            }
        }
        _ => super::cannot_run_here(name),
    })
}

/// GETRANGE's slice, by Redis 7's rule: negative indices count from the end, both clamp to
/// the string (an end before the start clamps to 0), both negative with start past end is
/// empty.
fn getrange(v: &[u8], a: i64, b: i64) -> &[u8] {
    let n = v.len() as i64;
    if n == 0 || (a < 0 && b < 0 && a > b) {
        return b"";
    }
    let a = if a < 0 { (n + a).max(0) } else { a };
    let b = if b < 0 { (n + b).max(0) } else { b.min(n - 1) };
    if a > b {
        return b"";
    }
    &v[a as usize..=b as usize]
}

/// The string under `key` for a write: `Ok(None)` when absent, `Err(WRONGTYPE)` when another
/// type.
/// A live string: its metadata and value.
type StringValue = Option<(Meta, Vec<u8>)>;

fn string_of(w: &mut Writer<'_, '_>, key: &[u8]) -> model::Result<Result<StringValue, Reply>> {
    Ok(match w.lookup(key)? {
        Some((m, v)) if m.kind == Kind::String => Ok(Some((m, v))),
        Some(_) => Err(Reply::wrong_type()),
        None => Ok(None),
    })
}

/// INCR's common cases in one descent (`WriteTxn::modify`): no key, or a live string that
/// holds an integer the increment does not overflow; its expiry stays. Anything else —
/// expired, another type, not an integer, an overflow — changes nothing here (None) and
/// takes the general path, which answers it.
fn incr_in_place(w: &mut Writer<'_, '_>, key: &[u8], by: i64) -> model::Result<Option<i64>> {
    let mk = crate::model::layout::meta_key(key);
    // The transaction's entry is what counts (a pending one in the group's cache first).
    w.touched.metas.take(w.tx, &mk)?;
    let now = w.now_ms;
    let mut result = None;
    let changed = w.tx.modify(&mk, |old| {
        let (meta, n) = match old {
            None => (Meta::new(Kind::String, 0), by),
            Some(raw) => {
                let (m, at) = Meta::decode(raw).ok()?;
                if m.kind != Kind::String || m.expired(now) {
                    return None;
                }
                let n = parse_i64(&raw[at..])?.checked_add(by)?;
                (m, n)
            }
        };
        result = Some(n);
        Some(meta.encode(itoa::Buffer::new().format(n).as_bytes()))
    })?;
    match changed {
        None => Ok(None),
        Some(new_key) => {
            if new_key {
                w.touched.keys_delta += 1;
            }
            w.touch(key);
            Ok(result)
        }
    }
}

/// Stores `value` as the string under `key`, replacing whatever is there (a collection's
/// members go to the garbage collector). `expire_at`: the new expiry; a past one deletes.
pub(crate) fn set_string(
    w: &mut Writer<'_, '_>,
    key: &[u8],
    old: Option<&Meta>,
    value: &[u8],
    expire_at: Option<u64>,
) -> model::Result<()> {
    let old = match old {
        Some(m) if m.kind != Kind::String => {
            w.delete(key, m)?;
            None
        }
        other => other,
    };
    if expire_at.is_some_and(|at| at <= w.now_ms) {
        if let Some(m) = old {
            w.delete(key, m)?;
        }
        return Ok(());
    }
    let mut meta = Meta::new(Kind::String, 0);
    meta.expire_at = expire_at;
    w.put(key, old, &meta, value)
}

/// A string write.
pub(crate) fn write(w: &mut Writer<'_, '_>, name: &str, args: &[Bytes]) -> model::Result<Reply> {
    let key = args.get(1).map_or(&b""[..], |k| &k[..]);
    Ok(match name {
        "SET" => return set(w, args),
        "SETNX" => match w.lookup(key)? {
            Some(_) => Reply::Int(0),
            None => {
                set_string(w, key, None, &args[2], None)?;
                Reply::Int(1)
            }
        },
        "SETEX" | "PSETEX" => {
            let unit = if name == "SETEX" { "EX" } else { "PX" };
            let at = match expire_at_arg(unit, &args[2], w.now_ms, &name.to_ascii_lowercase()) {
                Ok(at) => at,
                Err(r) => return Ok(r),
            };
            let old = w.lookup(key)?.map(|(m, _)| m);
            set_string(w, key, old.as_ref(), &args[3], Some(at))?;
            Reply::Ok
        }
        "GETSET" => match string_of(w, key)? {
            Err(r) => r,
            Ok(old) => {
                set_string(w, key, old.as_ref().map(|(m, _)| m), &args[2], None)?;
                old.map_or(Reply::Null, |(_, v)| Reply::Bulk(v))
            }
        },
        "GETDEL" => match string_of(w, key)? {
            Err(r) => r,
            Ok(None) => Reply::Null,
            Ok(Some((m, v))) => {
                w.delete(key, &m)?;
                Reply::Bulk(v)
            }
        },
        "GETEX" => {
            // GETEX key [EX s | PX ms | EXAT t | PXAT t | PERSIST]
            let change = match &args[2..] {
                [] => None,
                [p] if upper(p) == "PERSIST" => Some(None),
                [u, n] => match expire_at_arg(&upper(u), n, w.now_ms, "getex") {
                    Ok(at) => Some(Some(at)),
                    Err(r) => return Ok(r),
                },
                _ => return Ok(Reply::err(SYNTAX)),
            };
            match string_of(w, key)? {
                Err(r) => r,
                Ok(None) => Reply::Null,
                Ok(Some((m, v))) => {
                    if let Some(at) = change {
                        set_string(w, key, Some(&m), &v, at)?;
                    }
                    Reply::Bulk(v)
                }
            }
        }
        "APPEND" => match string_of(w, key)? {
            Err(r) => r,
            Ok(old) => {
                let (meta, mut v) = old.map_or((None, Vec::new()), |(m, v)| (Some(m), v));
                if v.len() + args[2].len() > MAX_STRING {
                    return Ok(Reply::err("ERR string exceeds maximum allowed size"));
                }
                v.extend_from_slice(&args[2]);
                let at = meta.as_ref().and_then(|m| m.expire_at);
                set_string(w, key, meta.as_ref(), &v, at)?;
                Reply::Int(v.len() as i64)
            }
        },
        "SETRANGE" => {
            let Some(off) = parse_i64(&args[2]).filter(|&o| o >= 0) else {
                return Ok(Reply::err("ERR offset is out of range"));
            };
            let off = off as usize;
            if off + args[3].len() > MAX_STRING {
                return Ok(Reply::err("ERR string exceeds maximum allowed size"));
            }
            match string_of(w, key)? {
                Err(r) => r,
                Ok(old) => {
                    let (meta, mut v) = old.map_or((None, Vec::new()), |(m, v)| (Some(m), v));
                    if args[3].is_empty() {
                        return Ok(Reply::Int(v.len() as i64));
                    }
                    if v.len() < off + args[3].len() {
                        v.resize(off + args[3].len(), 0);
                    }
                    v[off..off + args[3].len()].copy_from_slice(&args[3]);
                    let at = meta.as_ref().and_then(|m| m.expire_at);
                    set_string(w, key, meta.as_ref(), &v, at)?;
                    Reply::Int(v.len() as i64)
                }
            }
        }
        "MSET" => {
            for kv in args[1..].chunks(2) {
                w.set_plain(&kv[0], &kv[1])?;
            }
            Reply::Ok
        }
        "MSETNX" => {
            for kv in args[1..].chunks(2) {
                if w.lookup(&kv[0])?.is_some() {
                    return Ok(Reply::Int(0));
                }
            }
            // A key named twice is created by its first pair and overwritten by its last.
            for kv in args[1..].chunks(2) {
                let old = w.lookup(&kv[0])?.map(|(m, _)| m);
                set_string(w, &kv[0], old.as_ref(), &kv[1], None)?;
            }
            Reply::Int(1)
        }
        "INCR" | "DECR" | "INCRBY" | "DECRBY" => {
            let by = match name {
                "INCR" => 1,
                "DECR" => -1,
                _ => match parse_i64(&args[2]) {
                    Some(n) if name == "INCRBY" => n,
                    Some(n) => match n.checked_neg() {
                        Some(n) => n,
                        None => return Ok(Reply::err("ERR decrement would overflow")),
                    },
                    None => return Ok(Reply::err(NOT_INT)),
                },
            };
            if let Some(n) = incr_in_place(w, key, by)? {
                return Ok(Reply::Int(n));
            }
            let old = match string_of(w, key)? {
                Err(r) => return Ok(r),
                Ok(o) => o,
            };
            let cur = match &old {
                None => 0,
                Some((_, v)) => match parse_i64(v) {
                    Some(n) => n,
                    None => return Ok(Reply::err(NOT_INT)),
                },
            };
            match cur.checked_add(by) {
                Some(n) => {
                    let m = old.map(|(m, _)| m);
                    let at = m.as_ref().and_then(|m| m.expire_at);
                    set_string(w, key, m.as_ref(), n.to_string().as_bytes(), at)?;
                    Reply::Int(n)
                }
                None => Reply::err("ERR increment or decrement would overflow"),
            }
        }
        "INCRBYFLOAT" => {
            let Some(by) = parse_f64(&args[2]) else {
                return Ok(Reply::err(NOT_FLOAT));
            };
            let old = match string_of(w, key)? {
                Err(r) => return Ok(r),
                Ok(o) => o,
            };
            let cur = match &old {
                None => 0.0,
                Some((_, v)) => match parse_f64(v) {
                    Some(n) => n,
                    None => return Ok(Reply::err(NOT_FLOAT)),
                },
            };
            let n = cur + by;
            if !n.is_finite() {
                return Ok(Reply::err("ERR increment would produce NaN or Infinity"));
            }
            let text = fmt_human(n);
            let m = old.map(|(m, _)| m);
            let at = m.as_ref().and_then(|m| m.expire_at);
            set_string(w, key, m.as_ref(), text.as_bytes(), at)?;
            Reply::Bulk(text.into_bytes())
        }
        _ => super::cannot_run_here(name),
    })
}

/// SET key value [NX | XX] [GET] [EX s | PX ms | EXAT t | PXAT t | KEEPTTL]
fn set(w: &mut Writer<'_, '_>, args: &[Bytes]) -> model::Result<Reply> {
    let key = &args[1][..];
    if args.len() == 3 {
        w.set_plain(key, &args[2])?;
        return Ok(Reply::Ok);
    }
    let (mut nx, mut xx, mut get, mut keep) = (false, false, false, false);
    let mut at: Option<u64> = None;
    let mut expiry_opts = 0;
    let mut i = 3;
    while i < args.len() {
        match upper(&args[i]).as_str() {
            "NX" => nx = true,
            "XX" => xx = true,
            "GET" => get = true,
            "KEEPTTL" => {
                keep = true;
                expiry_opts += 1;
            }
            u @ ("EX" | "PX" | "EXAT" | "PXAT") => {
                let Some(n) = args.get(i + 1) else {
                    return Ok(Reply::err(SYNTAX));
                };
                match expire_at_arg(u, n, w.now_ms, "set") {
                    Ok(t) => at = Some(t),
                    Err(r) => return Ok(r),
                }
                expiry_opts += 1;
                i += 1;
            }
            _ => return Ok(Reply::err(SYNTAX)),
        }
        i += 1;
    }
    if (nx && xx) || expiry_opts > 1 {
        return Ok(Reply::err(SYNTAX));
    }
    let old = match w.lookup(key)? {
        Some((m, _)) if get && m.kind != Kind::String => return Ok(Reply::wrong_type()),
        o => o,
    };
    let exists = old.is_some();
    let previous = || match &old {
        Some((_, v)) => Reply::Bulk(v.clone()),
        None => Reply::Null,
    };
    if (nx && exists) || (xx && !exists) {
        return Ok(if get { previous() } else { Reply::Null });
    }
    let meta = old.as_ref().map(|(m, _)| m.clone());
    if keep {
        at = meta.as_ref().and_then(|m| m.expire_at);
    }
    set_string(w, key, meta.as_ref(), &args[2], at)?;
    Ok(if get { previous() } else { Reply::Ok })
}
