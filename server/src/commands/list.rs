//! Lists: LPUSH, RPUSH, LPUSHX, RPUSHX, LPOP, RPOP, LLEN, LRANGE, LINDEX, LSET, LREM, LTRIM,
//! LINSERT, LMOVE, RPOPLPUSH, and the blocking BLPOP, BRPOP, BLMOVE (which wait in the
//! connection, `server.rs`, and run here as their non-blocking forms). Items sit at
//! consecutive positions `head .. head + size` (`sub_key(key, version, position u64 BE)`),
//! so pushes and pops at either end and LINDEX are one entry each.

use bytes::Bytes;

use super::collection::{self as coll, typed};
use super::{parse_i64, upper, Store};
use crate::model::layout;
use crate::model::number::index_range;
use crate::model::{self, visit, Kind, Meta, Writer};
use crate::reply::{Reply, NOT_INT, SYNTAX};

fn item_key(key: &[u8], m: &Meta, pos: u64) -> Vec<u8> {
    layout::sub_key(key, m.version, &pos.to_be_bytes())
}

/// Items `from ..= to` (offsets from the head), in order.
fn items<S: Store + ?Sized>(
    s: &S,
    key: &[u8],
    m: &Meta,
    from: u64,
    to: u64,
) -> storage::Result<Vec<Vec<u8>>> {
    let lo = item_key(key, m, m.head + from);
    let hi = item_key(key, m, m.head + to);
    let mut v = Vec::with_capacity((to - from + 1).min(1 << 20) as usize);
    visit(
        s,
        &(std::ops::Bound::Included(lo), std::ops::Bound::Included(hi)),
        false,
        &mut |_, val| {
            v.push(val.to_vec());
            true
        },
    )?;
    Ok(v)
}

/// A list index (negative from the end) as an offset from the head, if inside.
fn offset(i: i64, size: u64) -> Option<u64> {
    let o = if i < 0 { size as i64 + i } else { i };
    (o >= 0 && (o as u64) < size).then_some(o as u64)
}

pub(crate) fn read<S: Store + ?Sized>(
    s: &S,
    now: u64,
    name: &str,
    args: &[Bytes],
) -> model::Result<Reply> {
    let key = &args[1][..];
    let meta = typed!(coll::get(s, key, now, Kind::List));
    Ok(match name {
        "LLEN" => Reply::Int(meta.map_or(0, |m| m.size as i64)),
        "LINDEX" => {
            let Some(i) = parse_i64(&args[2]) else {
                return Ok(Reply::err(NOT_INT));
            };
            match meta
                .as_ref()
                .and_then(|m| offset(i, m.size).map(|o| (m, o)))
            {
                Some((m, o)) => s
                    .get_raw(&item_key(key, m, m.head + o))?
                    .map_or(Reply::Null, |v| Reply::bulk(&v)),
                None => Reply::Null,
            }
        }
        "LRANGE" => {
            let (Some(a), Some(b)) = (parse_i64(&args[2]), parse_i64(&args[3])) else {
                return Ok(Reply::err(NOT_INT));
            };
            match meta
                .as_ref()
                .and_then(|m| index_range(a, b, m.size).map(|r| (m, r)))
            {
                Some((m, (x, y))) => Reply::Array(
                    items(s, key, m, x, y)?
                        .into_iter()
                        .map(Reply::Bulk)
                        .collect(),
                ),
                None => Reply::Array(Vec::new()),
            }
        }
        _ => super::cannot_run_here(name),
    })
}

/// Pushes `vals` at the left (or right) end; returns the new length.
fn push(
    w: &mut Writer<'_, '_>,
    key: &[u8],
    old: Option<&Meta>,
    mut m: Meta,
    left: bool,
    vals: &[impl AsRef<[u8]>],
) -> model::Result<u64> {
    for v in vals {
        let pos = if left {
            m.head -= 1;
            m.head
        } else {
            m.head + m.size
        };
        w.tx.put(&item_key(key, &m, pos), v.as_ref())?;
        m.size += 1;
    }
    coll::save(w, key, old, &m)?;
    Ok(m.size)
}

/// Pops up to `n` items from the left (or right) end.
fn pop(
    w: &mut Writer<'_, '_>,
    key: &[u8],
    m: &Meta,
    left: bool,
    n: u64,
) -> model::Result<Vec<Vec<u8>>> {
    let n = n.min(m.size);
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut got = Vec::with_capacity(n as usize);
    let mut new = m.clone();
    for _ in 0..n {
        let pos = if left {
            new.head += 1;
            new.head - 1
        } else {
            new.head + new.size - 1
        };
        // The item is read and deleted in one descent.
        got.extend(w.tx.take(&item_key(key, m, pos))?);
        new.size -= 1;
    }
    coll::save(w, key, Some(m), &new)?;
    Ok(got)
}

/// Replaces the whole list with `vals` (LREM, LINSERT): the items are written again from
/// the same head.
fn rewrite(w: &mut Writer<'_, '_>, key: &[u8], m: &Meta, vals: &[Vec<u8>]) -> model::Result<()> {
    for o in vals.len() as u64..m.size {
        w.tx.delete(&item_key(key, m, m.head + o))?;
    }
    for (o, v) in vals.iter().enumerate() {
        w.tx.put(&item_key(key, m, m.head + o as u64), v)?;
    }
    let mut new = m.clone();
    new.size = vals.len() as u64;
    coll::save(w, key, Some(m), &new)
}

fn side(b: &[u8]) -> Option<bool> {
    match upper(b).as_str() {
        "LEFT" => Some(true),
        "RIGHT" => Some(false),
        _ => None,
    }
}

/// LMOVE src dst from to: pops from `src`'s end `from` and pushes at `dst`'s end `to`.
pub(crate) fn lmove(
    w: &mut Writer<'_, '_>,
    src: &[u8],
    dst: &[u8],
    from_left: bool,
    to_left: bool,
) -> model::Result<Reply> {
    let Some(sm) = typed!(coll::get_w(w, src, Kind::List)) else {
        return Ok(Reply::Null);
    };
    if src == dst {
        // A rotation: the list keeps its metadata (and its expiry) throughout.
        let from = if from_left {
            sm.head
        } else {
            sm.head + sm.size - 1
        };
        let Some(v) = w.tx.get(&item_key(src, &sm, from))? else {
            return Ok(Reply::Null);
        };
        w.touch(src);
        if from_left == to_left {
            return Ok(Reply::Bulk(v));
        }
        w.tx.delete(&item_key(src, &sm, from))?;
        let mut m = sm.clone();
        if from_left {
            m.head += 1;
        }
        m.size -= 1;
        let to = if to_left {
            m.head -= 1;
            m.head
        } else {
            m.head + m.size
        };
        m.size += 1;
        w.tx.put(&item_key(src, &m, to), &v)?;
        coll::save(w, src, Some(&sm), &m)?;
        return Ok(Reply::Bulk(v));
    }
    // The destination's type is checked before anything moves.
    typed!(coll::get_w(w, dst, Kind::List));
    let got = pop(w, src, &sm, from_left, 1)?;
    let Some(v) = got.into_iter().next() else {
        return Ok(Reply::Null);
    };
    let (old, m) = typed!(coll::get_or_new(w, dst, Kind::List));
    push(w, dst, old.as_ref(), m, to_left, &[&v])?;
    Ok(Reply::Bulk(v))
}

pub(crate) fn write(w: &mut Writer<'_, '_>, name: &str, args: &[Bytes]) -> model::Result<Reply> {
    let key = &args[1][..];
    match name {
        "LPUSH" | "RPUSH" | "LPUSHX" | "RPUSHX" => {
            let (old, m) = typed!(coll::get_or_new(w, key, Kind::List));
            if old.is_none() && name.ends_with('X') {
                return Ok(Reply::Int(0));
            }
            let n = push(w, key, old.as_ref(), m, name.starts_with('L'), &args[2..])?;
            Ok(Reply::Int(n as i64))
        }
        "LPOP" | "RPOP" => {
            let count = match coll::count_arg(args.get(2)) {
                Ok(c) => c,
                Err(r) => return Ok(r),
            };
            let Some(m) = typed!(coll::get_w(w, key, Kind::List)) else {
                return Ok(if count.is_some() {
                    Reply::NullArray
                } else {
                    Reply::Null
                });
            };
            let got = pop(w, key, &m, name == "LPOP", count.unwrap_or(1))?;
            Ok(match count {
                None => got.into_iter().next().map_or(Reply::Null, Reply::Bulk),
                Some(_) => Reply::Array(got.into_iter().map(Reply::Bulk).collect()),
            })
        }
        "LSET" => {
            let Some(i) = parse_i64(&args[2]) else {
                return Ok(Reply::err(NOT_INT));
            };
            let Some(m) = typed!(coll::get_w(w, key, Kind::List)) else {
                return Ok(Reply::err("ERR no such key"));
            };
            let Some(o) = offset(i, m.size) else {
                return Ok(Reply::err("ERR index out of range"));
            };
            w.tx.put(&item_key(key, &m, m.head + o), &args[3])?;
            w.touch(key);
            Ok(Reply::Ok)
        }
        "LTRIM" => {
            let (Some(a), Some(b)) = (parse_i64(&args[2]), parse_i64(&args[3])) else {
                return Ok(Reply::err(NOT_INT));
            };
            let Some(m) = typed!(coll::get_w(w, key, Kind::List)) else {
                return Ok(Reply::Ok);
            };
            let (x, y) = index_range(a, b, m.size).unwrap_or((m.size, m.size));
            let mut new = m.clone();
            for o in (0..x.min(m.size)).chain((y + 1).min(m.size)..m.size) {
                w.tx.delete(&item_key(key, &m, m.head + o))?;
            }
            if x >= m.size {
                new.size = 0;
            } else {
                new.head = m.head + x;
                new.size = y - x + 1;
            }
            coll::save(w, key, Some(&m), &new)?;
            Ok(Reply::Ok)
        }
        "LREM" => {
            let Some(count) = parse_i64(&args[2]) else {
                return Ok(Reply::err(NOT_INT));
            };
            let Some(m) = typed!(coll::get_w(w, key, Kind::List)) else {
                return Ok(Reply::Int(0));
            };
            let all = items(&*w.tx, key, &m, 0, m.size - 1)?;
            let target = &args[3][..];
            let limit = if count == 0 {
                usize::MAX
            } else {
                count.unsigned_abs() as usize
            };
            let mut removed = 0usize;
            let keep: Vec<Vec<u8>> = if count >= 0 {
                all.into_iter()
                    .filter(|v| {
                        let hit = removed < limit && v.as_slice() == target;
                        removed += usize::from(hit);
                        !hit
                    })
                    .collect()
            } else {
                let mut k: Vec<Vec<u8>> = all
                    .into_iter()
                    .rev()
                    .filter(|v| {
                        let hit = removed < limit && v.as_slice() == target;
                        removed += usize::from(hit);
                        !hit
                    })
                    .collect();
                k.reverse();
                k
            };
            if removed > 0 {
                rewrite(w, key, &m, &keep)?;
            }
            Ok(Reply::Int(removed as i64))
        }
        "LINSERT" => {
            let before = match upper(&args[2]).as_str() {
                "BEFORE" => true,
                "AFTER" => false,
                _ => return Ok(Reply::err(SYNTAX)),
            };
            let Some(m) = typed!(coll::get_w(w, key, Kind::List)) else {
                return Ok(Reply::Int(0));
            };
            let mut all = items(&*w.tx, key, &m, 0, m.size - 1)?;
            let Some(at) = all.iter().position(|v| v.as_slice() == &args[3][..]) else {
                return Ok(Reply::Int(-1));
            };
            all.insert(if before { at } else { at + 1 }, args[4].to_vec());
            rewrite(w, key, &m, &all)?;
            Ok(Reply::Int(all.len() as i64))
        }
        "LMOVE" => {
            let (Some(from), Some(to)) = (side(&args[3]), side(&args[4])) else {
                return Ok(Reply::err(SYNTAX));
            };
            lmove(w, key, &args[2], from, to)
        }
        "RPOPLPUSH" => lmove(w, key, &args[2], false, true),
        _ => Ok(super::cannot_run_here(name)),
    }
}

/// The non-blocking step of BLPOP / BRPOP (`[key, item]` from the first non-empty list, or
/// `None` to keep waiting) and of BLMOVE (the item, or `None`).
pub(crate) fn try_blocking(
    w: &mut Writer<'_, '_>,
    name: &str,
    args: &[Bytes],
) -> model::Result<Option<Reply>> {
    match name {
        "BLPOP" | "BRPOP" => {
            for k in &args[1..args.len() - 1] {
                let m = match coll::get_w(w, k, Kind::List)? {
                    Err(r) => return Ok(Some(r)),
                    Ok(None) => continue,
                    Ok(Some(m)) => m,
                };
                let got = pop(w, k, &m, name == "BLPOP", 1)?;
                if let Some(v) = got.into_iter().next() {
                    return Ok(Some(Reply::Array(vec![Reply::bulk(k), Reply::Bulk(v)])));
                }
            }
            Ok(None)
        }
        "BLMOVE" => {
            let (Some(from), Some(to)) = (side(&args[3]), side(&args[4])) else {
                return Ok(Some(Reply::err(SYNTAX)));
            };
            match lmove(w, &args[1], &args[2], from, to)? {
                Reply::Null => Ok(None),
                r => Ok(Some(r)),
            }
        }
        _ => Ok(Some(super::cannot_run_here(name))),
    }
}

/// A blocking pop's timeout (seconds, fractional; 0 waits forever) as a deadline.
pub fn block_deadline(arg: &[u8]) -> Result<Option<std::time::Instant>, &'static str> {
    let Some(secs) = crate::model::number::parse_f64(arg).filter(|s| s.is_finite()) else {
        return Err("ERR timeout is not a float or out of range");
    };
    if secs < 0.0 {
        return Err("ERR timeout is negative");
    }
    if secs == 0.0 {
        return Ok(None);
    }
    let d = std::time::Duration::try_from_secs_f64(secs)
        .map_err(|_| "ERR timeout is not a float or out of range")?;
    Ok(Some(
        std::time::Instant::now() + d.min(std::time::Duration::from_secs(1 << 32)),
    ))
}

/// Whether a blocked pop has something to try: one of its lists holds an item, or a key
/// is of another type (the try then answers WRONGTYPE).
pub fn block_ready<S: Store + ?Sized>(s: &S, now: u64, name: &str, args: &[Bytes]) -> bool {
    let keys = if name == "BLMOVE" {
        &args[1..2]
    } else {
        &args[1..args.len() - 1]
    };
    keys.iter()
        .any(|k| !matches!(model::lookup(s, k, now), Ok(None)))
}
