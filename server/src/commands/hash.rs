//! Hashes: HSET (HMSET), HSETNX, HGET, HMGET, HGETALL, HKEYS, HVALS, HLEN, HEXISTS, HSTRLEN,
//! HDEL, HINCRBY, HINCRBYFLOAT, HSCAN. One entry per field: `sub_key(key, version, field)` →
//! value.

use bytes::Bytes;

use super::collection::{self as coll, typed};
use super::{parse_i64, Store};
use crate::model::number::{fmt_human, parse_f64};
use crate::model::{self, Kind, Writer};
use crate::reply::{Reply, NOT_FLOAT, NOT_INT};

pub(crate) fn read<S: Store + ?Sized>(
    s: &S,
    now: u64,
    name: &str,
    args: &[Bytes],
) -> model::Result<Reply> {
    let key = &args[1][..];
    let meta = typed!(coll::get(s, key, now, Kind::Hash));
    let field = |m: &model::Meta, f: &[u8]| -> storage::Result<Option<Vec<u8>>> {
        Ok(s.get_raw(&coll::member(key, m, f))?.map(|v| v.into_owned()))
    };
    let Some(m) = meta else {
        return Ok(match name {
            "HGET" => Reply::Null,
            "HMGET" => Reply::Array(vec![Reply::Null; args.len() - 2]),
            "HGETALL" => Reply::Map(Vec::new()),
            "HKEYS" | "HVALS" => Reply::Array(Vec::new()),
            "HSCAN" => return coll::scan(s, key, None, args, true, |_, _| Vec::new()),
            _ => Reply::Int(0),
        });
    };
    Ok(match name {
        "HGET" => field(&m, &args[2])?.map_or(Reply::Null, Reply::Bulk),
        "HMGET" => {
            let mut v = Vec::with_capacity(args.len() - 2);
            for f in &args[2..] {
                v.push(field(&m, f)?.map_or(Reply::Null, Reply::Bulk));
            }
            Reply::Array(v)
        }
        "HEXISTS" => Reply::Int(i64::from(field(&m, &args[2])?.is_some())),
        "HSTRLEN" => Reply::Int(field(&m, &args[2])?.map_or(0, |v| v.len() as i64)),
        "HLEN" => Reply::Int(m.size as i64),
        "HGETALL" | "HKEYS" | "HVALS" => {
            let all = coll::all(s, key, &m)?;
            match name {
                "HGETALL" => Reply::Map(
                    all.into_iter()
                        .flat_map(|(f, v)| [Reply::Bulk(f), Reply::Bulk(v)])
                        .collect(),
                ),
                "HKEYS" => Reply::Array(all.into_iter().map(|(f, _)| Reply::Bulk(f)).collect()),
                _ => Reply::Array(all.into_iter().map(|(_, v)| Reply::Bulk(v)).collect()),
            }
        }
        "HSCAN" => coll::scan(s, key, Some(&m), args, true, |a, got| {
            if a.novalues {
                got.into_iter().map(|(f, _)| Reply::Bulk(f)).collect()
            } else {
                got.into_iter()
                    .flat_map(|(f, v)| [Reply::Bulk(f), Reply::Bulk(v)])
                    .collect()
            }
        })?,
        _ => super::cannot_run_here(name),
    })
}

pub(crate) fn write(w: &mut Writer<'_, '_>, name: &str, args: &[Bytes]) -> model::Result<Reply> {
    let key = &args[1][..];
    match name {
        "HSET" | "HMSET" => {
            if !args.len().is_multiple_of(2) {
                return Ok(Reply::err(&super::wrong_arity(&name.to_ascii_lowercase())));
            }
            if let Some(r) = coll::too_long(args[2..].iter().step_by(2)) {
                return Ok(r);
            }
            let (old, mut m) = typed!(coll::get_or_new(w, key, Kind::Hash));
            let mut added = 0;
            for fv in args[2..].chunks(2) {
                if w.tx.put(&coll::member(key, &m, &fv[0]), &fv[1])? {
                    added += 1;
                }
            }
            m.size += added;
            coll::save(w, key, old.as_ref(), &m)?;
            Ok(if name == "HSET" {
                Reply::Int(added as i64)
            } else {
                Reply::Ok
            })
        }
        "HSETNX" => {
            if let Some(r) = coll::too_long([&args[2]]) {
                return Ok(r);
            }
            let (old, mut m) = typed!(coll::get_or_new(w, key, Kind::Hash));
            let k = coll::member(key, &m, &args[2]);
            if w.tx.get(&k)?.is_some() {
                return Ok(Reply::Int(0));
            }
            w.tx.put(&k, &args[3])?;
            m.size += 1;
            coll::save(w, key, old.as_ref(), &m)?;
            Ok(Reply::Int(1))
        }
        "HDEL" => {
            let Some(mut m) = typed!(coll::get_w(w, key, Kind::Hash)) else {
                return Ok(Reply::Int(0));
            };
            let old = m.clone();
            let mut n = 0;
            for f in &args[2..] {
                if f.len() <= crate::model::layout::MAX_MEMBER
                    && w.tx.delete(&coll::member(key, &m, f))?
                {
                    n += 1;
                }
            }
            m.size -= n;
            if n > 0 {
                coll::save(w, key, Some(&old), &m)?;
            }
            Ok(Reply::Int(n as i64))
        }
        "HINCRBY" | "HINCRBYFLOAT" => {
            if let Some(r) = coll::too_long([&args[2]]) {
                return Ok(r);
            }
            let (old, mut m) = typed!(coll::get_or_new(w, key, Kind::Hash));
            let k = coll::member(key, &m, &args[2]);
            let cur = w.tx.get(&k)?;
            let text = if name == "HINCRBY" {
                let Some(by) = parse_i64(&args[3]) else {
                    return Ok(Reply::err(NOT_INT));
                };
                let n = match &cur {
                    None => 0,
                    Some(v) => match parse_i64(v) {
                        Some(n) => n,
                        None => return Ok(Reply::err("ERR hash value is not an integer")),
                    },
                };
                match n.checked_add(by) {
                    Some(n) => n.to_string(),
                    None => return Ok(Reply::err("ERR increment or decrement would overflow")),
                }
            } else {
                let Some(by) = parse_f64(&args[3]) else {
                    return Ok(Reply::err(NOT_FLOAT));
                };
                let n = match &cur {
                    None => 0.0,
                    Some(v) => match parse_f64(v) {
                        Some(n) => n,
                        None => return Ok(Reply::err("ERR hash value is not a float")),
                    },
                };
                let r = n + by;
                if !r.is_finite() {
                    return Ok(Reply::err("ERR increment would produce NaN or Infinity"));
                }
                fmt_human(r)
            };
            w.tx.put(&k, text.as_bytes())?;
            if cur.is_none() {
                m.size += 1;
            }
            coll::save(w, key, old.as_ref(), &m)?;
            Ok(if name == "HINCRBY" {
                Reply::Int(text.parse().unwrap_or(0))
            } else {
                Reply::Bulk(text.into_bytes())
            })
        }
        _ => Ok(super::cannot_run_here(name)),
    }
}
