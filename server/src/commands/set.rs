//! Sets: SADD, SREM, SISMEMBER, SMISMEMBER, SMEMBERS, SCARD, SPOP, SRANDMEMBER, SMOVE,
//! SINTER, SUNION, SDIFF and their *STORE forms, SSCAN. One entry per member:
//! `sub_key(key, version, member)` → ∅.

use std::collections::BTreeSet;

use bytes::Bytes;

use super::collection::{self as coll, typed};
use super::{parse_i64, Store};
use crate::model::layout;
use crate::model::{self, visit, Kind, Meta, Writer};
use crate::reply::{Reply, NOT_INT};

/// A small random generator for SPOP and SRANDMEMBER (replicas copy the pages, so the choice
/// needs no determinism).
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new() -> Rng {
        use std::sync::atomic::{AtomicU64, Ordering};
        static SEQ: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);
        let t = crate::shared::now_us();
        Rng(t ^ SEQ.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed) | 1)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A member picked at random: the first at or after a random position in the member space
/// (wrapping around). Members after large gaps in that space come up more often.
fn random_member<S: Store + ?Sized>(
    s: &S,
    key: &[u8],
    meta: &Meta,
    rng: &mut Rng,
) -> storage::Result<Option<Vec<u8>>> {
    let p = layout::prefix(layout::SUB, key, meta.version);
    let mut at = p.clone();
    at.extend_from_slice(&rng.next().to_be_bytes());
    let (lo, hi) = layout::prefix_bounds(&p);
    let mut found = None;
    for from in [std::ops::Bound::Included(at), lo] {
        visit(s, &(from, hi.clone()), false, &mut |k, _| {
            found = Some(k[p.len()..].to_vec());
            false
        })?;
        if found.is_some() {
            break;
        }
    }
    Ok(found)
}

/// The members of the set under `key` (empty when absent).
fn members_of<S: Store + ?Sized>(
    s: &S,
    key: &[u8],
    now: u64,
) -> model::Result<Result<BTreeSet<Vec<u8>>, Reply>> {
    Ok(match coll::get(s, key, now, Kind::Set)? {
        Err(r) => Err(r),
        Ok(None) => Ok(BTreeSet::new()),
        Ok(Some(m)) => Ok(coll::all(s, key, &m)?.into_iter().map(|(k, _)| k).collect()),
    })
}

/// SINTER, SUNION or SDIFF of `keys`.
fn combine<S: Store + ?Sized>(
    s: &S,
    now: u64,
    op: &str,
    keys: &[Bytes],
) -> model::Result<Result<BTreeSet<Vec<u8>>, Reply>> {
    let mut acc = match members_of(s, &keys[0], now)? {
        Ok(a) => a,
        Err(r) => return Ok(Err(r)),
    };
    for k in &keys[1..] {
        if op == "INTER" && acc.is_empty() {
            // Redis still checks every key's type.
            if let Err(r) = coll::get(s, k, now, Kind::Set)? {
                return Ok(Err(r));
            }
            continue;
        }
        let next = match members_of(s, k, now)? {
            Ok(n) => n,
            Err(r) => return Ok(Err(r)),
        };
        match op {
            "INTER" => acc.retain(|m| next.contains(m)),
            "UNION" => acc.extend(next),
            _ => acc.retain(|m| !next.contains(m)),
        }
    }
    Ok(Ok(acc))
}

pub(crate) fn read<S: Store + ?Sized>(
    s: &S,
    now: u64,
    name: &str,
    args: &[Bytes],
) -> model::Result<Reply> {
    if let Some(op) = name
        .strip_prefix('S')
        .filter(|o| matches!(*o, "INTER" | "UNION" | "DIFF"))
    {
        return Ok(match combine(s, now, op, &args[1..])? {
            Ok(set) => Reply::Set(set.into_iter().map(Reply::Bulk).collect()),
            Err(r) => r,
        });
    }
    let key = &args[1][..];
    let meta = typed!(coll::get(s, key, now, Kind::Set));
    let has = |m: &Meta, x: &[u8]| -> storage::Result<bool> {
        Ok(x.len() <= layout::MAX_MEMBER && s.get_raw(&coll::member(key, m, x))?.is_some())
    };
    Ok(match name {
        "SCARD" => Reply::Int(meta.map_or(0, |m| m.size as i64)),
        "SISMEMBER" => Reply::Int(match &meta {
            Some(m) => i64::from(has(m, &args[2])?),
            None => 0,
        }),
        "SMISMEMBER" => {
            let mut v = Vec::new();
            for x in &args[2..] {
                v.push(Reply::Int(match &meta {
                    Some(m) => i64::from(has(m, x)?),
                    None => 0,
                }));
            }
            Reply::Array(v)
        }
        "SMEMBERS" => match &meta {
            Some(m) => Reply::Set(
                coll::all(s, key, m)?
                    .into_iter()
                    .map(|(k, _)| Reply::Bulk(k))
                    .collect(),
            ),
            None => Reply::Set(Vec::new()),
        },
        "SRANDMEMBER" => {
            let count = match args.get(2) {
                None => None,
                Some(c) => match parse_i64(c) {
                    Some(n) => Some(n),
                    None => return Ok(Reply::err(NOT_INT)),
                },
            };
            let Some(m) = meta else {
                return Ok(if count.is_some() {
                    Reply::Array(Vec::new())
                } else {
                    Reply::Null
                });
            };
            let mut rng = Rng::new();
            match count {
                None => random_member(s, key, &m, &mut rng)?.map_or(Reply::Null, Reply::Bulk),
                Some(n) if n >= 0 => Reply::Array(
                    pick_distinct(s, key, &m, n as u64, &mut rng)?
                        .into_iter()
                        .map(Reply::Bulk)
                        .collect(),
                ),
                Some(n) => {
                    let mut v = Vec::new();
                    for _ in 0..n.unsigned_abs().min(1 << 24) {
                        if let Some(x) = random_member(s, key, &m, &mut rng)? {
                            v.push(Reply::Bulk(x));
                        }
                    }
                    Reply::Array(v)
                }
            }
        }
        "SSCAN" => coll::scan(s, key, meta.as_ref(), args, false, |_, got| {
            got.into_iter().map(|(k, _)| Reply::Bulk(k)).collect()
        })?,
        _ => super::cannot_run_here(name),
    })
}

/// Up to `n` distinct members at random (all of them when `n` reaches the size).
fn pick_distinct<S: Store + ?Sized>(
    s: &S,
    key: &[u8],
    m: &Meta,
    n: u64,
    rng: &mut Rng,
) -> storage::Result<Vec<Vec<u8>>> {
    if n >= m.size {
        return Ok(coll::all(s, key, m)?.into_iter().map(|(k, _)| k).collect());
    }
    let mut got = BTreeSet::new();
    let mut tries = 0u64;
    while (got.len() as u64) < n && tries < 8 * n + 64 {
        if let Some(x) = random_member(s, key, m, rng)? {
            got.insert(x);
        }
        tries += 1;
    }
    // Biased picks that keep landing on the same members: fill up in order.
    if (got.len() as u64) < n {
        for (k, _) in coll::all(s, key, m)? {
            if got.len() as u64 >= n {
                break;
            }
            got.insert(k);
        }
    }
    Ok(got.into_iter().collect())
}

pub(crate) fn write(w: &mut Writer<'_, '_>, name: &str, args: &[Bytes]) -> model::Result<Reply> {
    let key = &args[1][..];
    match name {
        "SADD" => {
            if let Some(r) = coll::too_long(&args[2..]) {
                return Ok(r);
            }
            let (old, mut m) = typed!(coll::get_or_new(w, key, Kind::Set));
            let mut added = 0u64;
            for x in &args[2..] {
                if w.tx.put(&coll::member(key, &m, x), b"")? {
                    added += 1;
                }
            }
            m.size += added;
            coll::save(w, key, old.as_ref(), &m)?;
            Ok(Reply::Int(added as i64))
        }
        "SREM" => {
            let Some(mut m) = typed!(coll::get_w(w, key, Kind::Set)) else {
                return Ok(Reply::Int(0));
            };
            let old = m.clone();
            let mut n = 0u64;
            for x in &args[2..] {
                if x.len() <= layout::MAX_MEMBER && w.tx.delete(&coll::member(key, &m, x))? {
                    n += 1;
                }
            }
            m.size -= n;
            if n > 0 {
                coll::save(w, key, Some(&old), &m)?;
            }
            Ok(Reply::Int(n as i64))
        }
        "SPOP" => {
            let count = match coll::count_arg(args.get(2)) {
                Ok(c) => c,
                Err(r) => return Ok(r),
            };
            let Some(mut m) = typed!(coll::get_w(w, key, Kind::Set)) else {
                return Ok(if count.is_some() {
                    Reply::Set(Vec::new())
                } else {
                    Reply::Null
                });
            };
            let old = m.clone();
            let mut rng = Rng::new();
            let picked = pick_distinct(&*w.tx, key, &m, count.unwrap_or(1), &mut rng)?;
            for x in &picked {
                w.tx.delete(&coll::member(key, &m, x))?;
            }
            m.size -= picked.len() as u64;
            coll::save(w, key, Some(&old), &m)?;
            Ok(match count {
                None => picked.into_iter().next().map_or(Reply::Null, Reply::Bulk),
                Some(_) => Reply::Set(picked.into_iter().map(Reply::Bulk).collect()),
            })
        }
        "SMOVE" => {
            let (dst, x) = (&args[2][..], &args[3]);
            if let Some(r) = coll::too_long([x]) {
                return Ok(r);
            }
            let Some(mut sm) = typed!(coll::get_w(w, key, Kind::Set)) else {
                return Ok(Reply::Int(0));
            };
            // The destination's type is checked before anything moves.
            typed!(coll::get_w(w, dst, Kind::Set));
            if w.tx.get(&coll::member(key, &sm, x))?.is_none() {
                return Ok(Reply::Int(0));
            }
            if key == dst {
                return Ok(Reply::Int(1));
            }
            let old = sm.clone();
            w.tx.delete(&coll::member(key, &sm, x))?;
            sm.size -= 1;
            coll::save(w, key, Some(&old), &sm)?;
            let (dold, mut dm) = typed!(coll::get_or_new(w, dst, Kind::Set));
            if w.tx.put(&coll::member(dst, &dm, x), b"")? {
                dm.size += 1;
            }
            coll::save(w, dst, dold.as_ref(), &dm)?;
            Ok(Reply::Int(1))
        }
        "SINTERSTORE" | "SUNIONSTORE" | "SDIFFSTORE" => {
            let op = &name[1..name.len() - 5];
            let set = match combine(&*w.tx, w.now_ms, op, &args[2..])? {
                Ok(s) => s,
                Err(r) => return Ok(r),
            };
            store(w, key, Kind::Set, set.into_iter().map(|m| (m, Vec::new())))
        }
        _ => Ok(super::cannot_run_here(name)),
    }
}

/// Replaces whatever is under `key` with a new collection of `kind` holding `members`
/// (deleting the key when there are none); answers with the new size.
pub(crate) fn store(
    w: &mut Writer<'_, '_>,
    key: &[u8],
    kind: Kind,
    members: impl Iterator<Item = (Vec<u8>, Vec<u8>)>,
) -> model::Result<Reply> {
    if let Some((m, _)) = w.lookup(key)? {
        w.delete(key, &m)?;
    }
    let mut m = Meta::new(kind, w.new_version()?);
    for (x, v) in members {
        w.tx.put(&coll::member(key, &m, &x), &v)?;
        m.size += 1;
    }
    coll::save(w, key, None, &m)?;
    Ok(Reply::Int(m.size as i64))
}
