//! Sorted sets: ZADD (NX XX GT LT CH INCR), ZINCRBY, ZREM, ZSCORE, ZMSCORE, ZCARD, ZCOUNT,
//! ZLEXCOUNT, ZRANK, ZREVRANK, ZRANGE (BYSCORE BYLEX REV LIMIT WITHSCORES), ZRANGEBYSCORE,
//! ZREVRANGE, ZREVRANGEBYSCORE, ZRANGEBYLEX, ZREVRANGEBYLEX, ZREMRANGEBYSCORE,
//! ZREMRANGEBYRANK, ZREMRANGEBYLEX, ZPOPMIN, ZPOPMAX, ZSCAN. Two entries per member:
//! `sub_key(key, version, member)` → score, and `score_key(key, version, score, member)` → ∅,
//! which orders members by (score, member).

use std::ops::Bound;

use bytes::Bytes;

use super::collection::{self as coll, typed};
use super::{parse_i64, upper, Store};
use crate::model::layout::{self, score_bytes, score_from};
use crate::model::number::{fmt_score, index_range, parse_f64, LexBound, ScoreBound};
use crate::model::{self, visit, Kind, Meta, Writer};
use crate::reply::{Reply, NOT_FLOAT, NOT_INT, SYNTAX};

const NOT_FLOAT_RANGE: &str = "ERR min or max is not a float";
const NOT_LEX_RANGE: &str = "ERR min or max not valid string range item";

/// Which members a range takes.
#[derive(Clone, Debug)]
enum Sel {
    Rank(i64, i64),
    Score(ScoreBound, ScoreBound),
    Lex(LexBound, LexBound),
}

/// A parsed range request.
struct RangeReq {
    sel: Sel,
    rev: bool,
    offset: usize,
    count: Option<usize>,
    withscores: bool,
}

fn score_of<S: Store + ?Sized>(
    s: &S,
    key: &[u8],
    m: &Meta,
    member: &[u8],
) -> storage::Result<Option<f64>> {
    if member.len() > layout::MAX_MEMBER {
        return Ok(None);
    }
    Ok(s.get_raw(&coll::member(key, m, member))?
        .and_then(|v| score_from(&v)))
}

/// The members of `sel`, in order (descending if `rev`), after `offset`, at most `count`.
fn select<S: Store + ?Sized>(
    s: &S,
    key: &[u8],
    m: &Meta,
    sel: &Sel,
    rev: bool,
    offset: usize,
    count: Option<usize>,
) -> storage::Result<Vec<(Vec<u8>, f64)>> {
    let p = layout::prefix(layout::SCORE, key, m.version);
    let (mut lo, mut hi) = layout::prefix_bounds(&p);
    let (mut skip, mut take) = (offset, count.unwrap_or(usize::MAX));
    match sel {
        Sel::Rank(a, b) => {
            let Some((x, y)) = index_range(*a, *b, m.size) else {
                return Ok(Vec::new());
            };
            // Ranks near the far end are reached from that end: walk the other way and
            // turn the result around.
            let from_end = m.size - 1 - y;
            if from_end < x {
                let mut v = select(
                    s,
                    key,
                    m,
                    &Sel::Rank(from_end as i64, (m.size - 1 - x) as i64),
                    !rev,
                    0,
                    None,
                )?;
                v.reverse();
                return Ok(v);
            }
            skip = x as usize;
            take = (y - x + 1) as usize;
        }
        Sel::Score(min, max) => {
            if !rev {
                let mut k = p.clone();
                k.extend_from_slice(&score_bytes(min.value));
                lo = Bound::Included(k);
            } else {
                let mut k = p.clone();
                k.extend_from_slice(&score_bytes(max.value));
                hi = layout::prefix_end(&k);
            }
        }
        Sel::Lex(..) => {}
    }
    let mut out = Vec::new();
    if take == 0 {
        return Ok(out);
    }
    visit(s, &(lo, hi), rev, &mut |k, _| {
        let rest = &k[p.len()..];
        let Some(score) = score_from(rest) else {
            return true;
        };
        let member = &rest[8..];
        let (inside, past) = match sel {
            Sel::Rank(..) => (true, false),
            Sel::Score(min, max) => {
                let inside = min.below(score) && max.above(score);
                let past = if rev {
                    !min.below(score)
                } else {
                    !max.above(score)
                };
                (inside, past)
            }
            Sel::Lex(min, max) => {
                let inside = min.below(member) && max.above(member);
                let past = if rev {
                    !min.below(member)
                } else {
                    !max.above(member)
                };
                (inside, past)
            }
        };
        if past {
            return false;
        }
        if !inside {
            return true;
        }
        if skip > 0 {
            skip -= 1;
            return true;
        }
        out.push((member.to_vec(), score));
        out.len() < take
    })?;
    Ok(out)
}

fn reply_of(items: Vec<(Vec<u8>, f64)>, withscores: bool) -> Reply {
    if withscores {
        Reply::Scored(items)
    } else {
        Reply::Array(items.into_iter().map(|(m, _)| Reply::Bulk(m)).collect())
    }
}

fn parse_sel(kind: &str, a: &[u8], b: &[u8], rev: bool) -> Result<Sel, Reply> {
    // Reversed score and lex ranges name the upper end first.
    let (a, b) = if rev && kind != "RANK" {
        (b, a)
    } else {
        (a, b)
    };
    match kind {
        "SCORE" => match (ScoreBound::parse(a), ScoreBound::parse(b)) {
            (Some(x), Some(y)) => Ok(Sel::Score(x, y)),
            _ => Err(Reply::err(NOT_FLOAT_RANGE)),
        },
        "LEX" => match (LexBound::parse(a), LexBound::parse(b)) {
            (Some(x), Some(y)) => Ok(Sel::Lex(x, y)),
            _ => Err(Reply::err(NOT_LEX_RANGE)),
        },
        _ => match (parse_i64(a), parse_i64(b)) {
            (Some(x), Some(y)) => Ok(Sel::Rank(x, y)),
            _ => Err(Reply::err(NOT_INT)),
        },
    }
}

/// The range commands' arguments, ZRANGE's and its older forms'.
fn parse_range(name: &str, args: &[Bytes]) -> Result<RangeReq, Reply> {
    let (mut kind, mut rev) = match name {
        "ZRANGE" => ("RANK", false),
        "ZREVRANGE" => ("RANK", true),
        "ZRANGEBYSCORE" => ("SCORE", false),
        "ZREVRANGEBYSCORE" => ("SCORE", true),
        "ZRANGEBYLEX" => ("LEX", false),
        _ => ("LEX", true),
    };
    let (mut limit, mut withscores) = (None, false);
    let mut i = 4;
    while i < args.len() {
        match upper(&args[i]).as_str() {
            "WITHSCORES" if name != "ZRANGEBYLEX" && name != "ZREVRANGEBYLEX" => withscores = true,
            "BYSCORE" if name == "ZRANGE" => kind = "SCORE",
            "BYLEX" if name == "ZRANGE" => kind = "LEX",
            "REV" if name == "ZRANGE" => rev = true,
            "LIMIT" if name != "ZREVRANGE" && i + 2 < args.len() => {
                match (parse_i64(&args[i + 1]), parse_i64(&args[i + 2])) {
                    (Some(o), Some(c)) => limit = Some((o, c)),
                    _ => return Err(Reply::err(NOT_INT)),
                }
                i += 2;
            }
            _ => return Err(Reply::err(SYNTAX)),
        }
        i += 1;
    }
    if limit.is_some() && kind == "RANK" {
        return Err(Reply::err(
            "ERR syntax error, LIMIT is only supported in combination with either BYSCORE or BYLEX",
        ));
    }
    if withscores && kind == "LEX" {
        return Err(Reply::err(
            "ERR syntax error, WITHSCORES not supported in combination with BYLEX",
        ));
    }
    let sel = parse_sel(kind, &args[2], &args[3], rev)?;
    // A negative offset gives nothing; a negative count, everything from the offset.
    let (offset, count) = match limit {
        None => (0, None),
        Some((o, _)) if o < 0 => (0, Some(0)),
        Some((o, c)) => (o as usize, (c >= 0).then_some(c as usize)),
    };
    Ok(RangeReq {
        sel,
        rev,
        offset,
        count,
        withscores,
    })
}

/// The rank of `member` (from the top if `rev`), counting the members before it.
fn rank<S: Store + ?Sized>(
    s: &S,
    key: &[u8],
    m: &Meta,
    member: &[u8],
    rev: bool,
) -> storage::Result<Option<i64>> {
    let Some(score) = score_of(s, key, m, member)? else {
        return Ok(None);
    };
    let p = layout::prefix(layout::SCORE, key, m.version);
    let mut n = 0i64;
    visit(s, &layout::prefix_bounds(&p), false, &mut |k, _| {
        let rest = &k[p.len()..];
        if score_from(rest) == Some(score) && &rest[8..] == member {
            return false;
        }
        n += 1;
        true
    })?;
    Ok(Some(if rev { m.size as i64 - 1 - n } else { n }))
}

pub(crate) fn read<S: Store + ?Sized>(
    s: &S,
    now: u64,
    name: &str,
    args: &[Bytes],
) -> model::Result<Reply> {
    let key = &args[1][..];
    let meta = typed!(coll::get(s, key, now, Kind::ZSet));
    Ok(match name {
        "ZCARD" => Reply::Int(meta.map_or(0, |m| m.size as i64)),
        "ZSCORE" => match &meta {
            Some(m) => score_of(s, key, m, &args[2])?.map_or(Reply::Null, Reply::Double),
            None => Reply::Null,
        },
        "ZMSCORE" => {
            let mut v = Vec::new();
            for x in &args[2..] {
                v.push(match &meta {
                    Some(m) => score_of(s, key, m, x)?.map_or(Reply::Null, Reply::Double),
                    None => Reply::Null,
                });
            }
            Reply::Array(v)
        }
        "ZCOUNT" | "ZLEXCOUNT" => {
            let kind = if name == "ZCOUNT" { "SCORE" } else { "LEX" };
            let sel = match parse_sel(kind, &args[2], &args[3], false) {
                Ok(s) => s,
                Err(r) => return Ok(r),
            };
            match &meta {
                Some(m) => Reply::Int(select(s, key, m, &sel, false, 0, None)?.len() as i64),
                None => Reply::Int(0),
            }
        }
        "ZRANK" | "ZREVRANK" => match &meta {
            Some(m) => {
                rank(s, key, m, &args[2], name == "ZREVRANK")?.map_or(Reply::Null, Reply::Int)
            }
            None => Reply::Null,
        },
        "ZRANGE" | "ZREVRANGE" | "ZRANGEBYSCORE" | "ZREVRANGEBYSCORE" | "ZRANGEBYLEX"
        | "ZREVRANGEBYLEX" => {
            let r = match parse_range(name, args) {
                Ok(r) => r,
                Err(e) => return Ok(e),
            };
            match &meta {
                Some(m) => reply_of(
                    select(s, key, m, &r.sel, r.rev, r.offset, r.count)?,
                    r.withscores,
                ),
                None => reply_of(Vec::new(), r.withscores),
            }
        }
        "ZSCAN" => coll::scan(s, key, meta.as_ref(), args, false, |_, got| {
            got.into_iter()
                .flat_map(|(x, v)| {
                    let score = score_from(&v).unwrap_or(f64::NAN);
                    [Reply::Bulk(x), Reply::Bulk(fmt_score(score).into_bytes())]
                })
                .collect()
        })?,
        _ => super::cannot_run_here(name),
    })
}

/// Sets `member`'s score (adding it if new); returns whether it was new.
fn put_member(
    w: &mut Writer<'_, '_>,
    key: &[u8],
    m: &Meta,
    member: &[u8],
    old: Option<f64>,
    score: f64,
) -> model::Result<bool> {
    if let Some(o) = old {
        if score_bytes(o) == score_bytes(score) {
            return Ok(false);
        }
        w.tx.delete(&layout::score_key(key, m.version, o, member))?;
    }
    w.tx.put(&coll::member(key, m, member), &score_bytes(score))?;
    w.tx.put(&layout::score_key(key, m.version, score, member), b"")?;
    Ok(old.is_none())
}

fn remove_member(
    w: &mut Writer<'_, '_>,
    key: &[u8],
    m: &Meta,
    member: &[u8],
    score: f64,
) -> model::Result<()> {
    w.tx.delete(&coll::member(key, m, member))?;
    w.tx.delete(&layout::score_key(key, m.version, score, member))?;
    Ok(())
}

pub(crate) fn write(w: &mut Writer<'_, '_>, name: &str, args: &[Bytes]) -> model::Result<Reply> {
    let key = &args[1][..];
    match name {
        "ZADD" => zadd(w, args),
        "ZINCRBY" => {
            let Some(by) = parse_f64(&args[2]) else {
                return Ok(Reply::err(NOT_FLOAT));
            };
            if let Some(r) = coll::too_long([&args[3]]) {
                return Ok(r);
            }
            let (old, mut m) = typed!(coll::get_or_new(w, key, Kind::ZSet));
            let cur = score_of(&*w.tx, key, &m, &args[3])?;
            let score = cur.unwrap_or(0.0) + by;
            if score.is_nan() {
                return Ok(Reply::err("ERR resulting score is not a number (NaN)"));
            }
            if put_member(w, key, &m, &args[3], cur, score)? {
                m.size += 1;
            }
            coll::save(w, key, old.as_ref(), &m)?;
            Ok(Reply::Double(score))
        }
        "ZREM" => {
            let Some(mut m) = typed!(coll::get_w(w, key, Kind::ZSet)) else {
                return Ok(Reply::Int(0));
            };
            let old = m.clone();
            let mut n = 0;
            for x in &args[2..] {
                if let Some(sc) = score_of(&*w.tx, key, &m, x)? {
                    remove_member(w, key, &m, x, sc)?;
                    n += 1;
                }
            }
            m.size -= n;
            if n > 0 {
                coll::save(w, key, Some(&old), &m)?;
            }
            Ok(Reply::Int(n as i64))
        }
        "ZREMRANGEBYSCORE" | "ZREMRANGEBYRANK" | "ZREMRANGEBYLEX" => {
            let kind = match name {
                "ZREMRANGEBYSCORE" => "SCORE",
                "ZREMRANGEBYLEX" => "LEX",
                _ => "RANK",
            };
            let sel = match parse_sel(kind, &args[2], &args[3], false) {
                Ok(s) => s,
                Err(r) => return Ok(r),
            };
            let Some(mut m) = typed!(coll::get_w(w, key, Kind::ZSet)) else {
                return Ok(Reply::Int(0));
            };
            let old = m.clone();
            let doomed = select(&*w.tx, key, &m, &sel, false, 0, None)?;
            for (x, sc) in &doomed {
                remove_member(w, key, &m, x, *sc)?;
            }
            m.size -= doomed.len() as u64;
            if !doomed.is_empty() {
                coll::save(w, key, Some(&old), &m)?;
            }
            Ok(Reply::Int(doomed.len() as i64))
        }
        "ZPOPMIN" | "ZPOPMAX" => {
            let count = match coll::count_arg(args.get(2)) {
                Ok(c) => c,
                Err(r) => return Ok(r),
            };
            let Some(mut m) = typed!(coll::get_w(w, key, Kind::ZSet)) else {
                return Ok(Reply::Array(Vec::new()));
            };
            let old = m.clone();
            let n = count.unwrap_or(1).min(m.size) as usize;
            // The first n by rank from the chosen end: n entries read, not the whole set.
            let popped = if n == 0 {
                Vec::new()
            } else {
                select(
                    &*w.tx,
                    key,
                    &m,
                    &Sel::Rank(0, n as i64 - 1),
                    name == "ZPOPMAX",
                    0,
                    None,
                )?
            };
            for (x, sc) in &popped {
                remove_member(w, key, &m, x, *sc)?;
            }
            m.size -= popped.len() as u64;
            coll::save(w, key, Some(&old), &m)?;
            Ok(match count {
                Some(_) => Reply::Scored(popped),
                None => Reply::Array(
                    popped
                        .into_iter()
                        .flat_map(|(x, s)| [Reply::Bulk(x), Reply::Double(s)])
                        .collect(),
                ),
            })
        }
        _ => Ok(super::cannot_run_here(name)),
    }
}

/// ZADD key [NX | XX] [GT | LT] [CH] [INCR] score member [score member ...]
fn zadd(w: &mut Writer<'_, '_>, args: &[Bytes]) -> model::Result<Reply> {
    let key = &args[1][..];
    let (mut nx, mut xx, mut gt, mut lt, mut ch, mut incr) =
        (false, false, false, false, false, false);
    let mut i = 2;
    while i < args.len() {
        match upper(&args[i]).as_str() {
            "NX" => nx = true,
            "XX" => xx = true,
            "GT" => gt = true,
            "LT" => lt = true,
            "CH" => ch = true,
            "INCR" => incr = true,
            _ => break,
        }
        i += 1;
    }
    let pairs = &args[i..];
    if pairs.is_empty() || !pairs.len().is_multiple_of(2) {
        return Ok(Reply::err(SYNTAX));
    }
    if nx && xx {
        return Ok(Reply::err(
            "ERR XX and NX options at the same time are not compatible",
        ));
    }
    if (nx && (gt || lt)) || (gt && lt) {
        return Ok(Reply::err(
            "ERR GT, LT, and/or NX options at the same time are not compatible",
        ));
    }
    if incr && pairs.len() != 2 {
        return Ok(Reply::err(
            "ERR INCR option supports a single increment-element pair",
        ));
    }
    let mut parsed = Vec::with_capacity(pairs.len() / 2);
    for p in pairs.chunks(2) {
        let Some(sc) = parse_f64(&p[0]) else {
            return Ok(Reply::err(NOT_FLOAT));
        };
        parsed.push((sc, &p[1]));
    }
    if let Some(r) = coll::too_long(pairs.iter().skip(1).step_by(2)) {
        return Ok(r);
    }
    let found = typed!(coll::get_w(w, key, Kind::ZSet));
    if found.is_none() && xx {
        return Ok(if incr { Reply::Null } else { Reply::Int(0) });
    }
    let (old, mut m) = match found {
        Some(m) => (Some(m.clone()), m),
        None => (None, Meta::new(Kind::ZSet, w.new_version()?)),
    };
    let (mut added, mut changed) = (0i64, 0i64);
    let mut result = None;
    for (sc, member) in parsed {
        if !(nx || xx || gt || lt || incr) {
            // The plain form sets the score whatever it was: the member's entry is written
            // first and hands back the old score (one descent instead of a get and a put).
            let old =
                w.tx.replace(&coll::member(key, &m, member), &score_bytes(sc))?;
            match old.as_deref().and_then(score_from) {
                Some(o) if score_bytes(o) == score_bytes(sc) => {}
                Some(o) => {
                    w.tx.delete(&layout::score_key(key, m.version, o, member))?;
                    w.tx.put(&layout::score_key(key, m.version, sc, member), b"")?;
                    changed += 1;
                }
                None => {
                    w.tx.put(&layout::score_key(key, m.version, sc, member), b"")?;
                    added += 1;
                    m.size += 1;
                }
            }
            continue;
        }
        let cur = score_of(&*w.tx, key, &m, member)?;
        if (nx && cur.is_some()) || (xx && cur.is_none()) {
            continue;
        }
        let new = if incr { cur.unwrap_or(0.0) + sc } else { sc };
        if new.is_nan() {
            return Ok(Reply::err("ERR resulting score is not a number (NaN)"));
        }
        if let Some(c) = cur {
            if (gt && new <= c) || (lt && new >= c) {
                continue;
            }
        }
        if put_member(w, key, &m, member, cur, new)? {
            added += 1;
            m.size += 1;
        } else if cur.is_some_and(|c| score_bytes(c) != score_bytes(new)) {
            changed += 1;
        }
        result = Some(new);
    }
    coll::save(w, key, old.as_ref(), &m)?;
    Ok(if incr {
        result.map_or(Reply::Null, Reply::Double)
    } else {
        Reply::Int(if ch { added + changed } else { added })
    })
}
