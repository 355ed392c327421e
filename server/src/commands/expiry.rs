//! Expiry: EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT (NX XX GT LT), PERSIST; TTL, PTTL,
//! EXPIRETIME, PEXPIRETIME. A deadline is absolute (ms since the Unix epoch) in the key's
//! metadata, with an entry in the expiry index that the background sweep walks.

use bytes::Bytes;

use super::{parse_i64, upper, Store};
use crate::model::{self, Writer};
use crate::reply::{Reply, NOT_INT, SYNTAX};

pub(crate) fn read<S: Store + ?Sized>(
    s: &S,
    now: u64,
    name: &str,
    args: &[Bytes],
) -> model::Result<Reply> {
    let Some(f) = model::lookup(s, &args[1], now)? else {
        return Ok(Reply::Int(-2));
    };
    let Some(at) = f.meta.expire_at else {
        return Ok(Reply::Int(-1));
    };
    let left = at.saturating_sub(now);
    Ok(Reply::Int(match name {
        // Rounded to the nearest second, as Redis does.
        "TTL" => (left.saturating_add(500) / 1000).min(i64::MAX as u64) as i64,
        "PTTL" => left as i64,
        "EXPIRETIME" => (at / 1000) as i64,
        "PEXPIRETIME" => at as i64,
        _ => return Ok(super::cannot_run_here(name)),
    }))
}

pub(crate) fn write(w: &mut Writer<'_, '_>, name: &str, args: &[Bytes]) -> model::Result<Reply> {
    let key = &args[1][..];
    if name == "PERSIST" {
        return Ok(match w.lookup(key)? {
            Some((m, v)) if m.expire_at.is_some() => {
                let mut n = m.clone();
                n.expire_at = None;
                w.put(key, Some(&m), &n, &v)?;
                Reply::Int(1)
            }
            _ => Reply::Int(0),
        });
    }
    let Some(n) = parse_i64(&args[2]) else {
        return Ok(Reply::err(NOT_INT));
    };
    // The deadline in ms, checked for overflow as Redis does.
    let at = match name {
        "EXPIRE" => n
            .checked_mul(1000)
            .and_then(|ms| ms.checked_add(w.now_ms as i64)),
        "PEXPIRE" => n.checked_add(w.now_ms as i64),
        "EXPIREAT" => n.checked_mul(1000),
        "PEXPIREAT" => Some(n),
        _ => return Ok(super::cannot_run_here(name)),
    };
    let Some(at) = at else {
        return Ok(Reply::err(&format!(
            "ERR invalid expire time in '{}' command",
            name.to_ascii_lowercase()
        )));
    };
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for o in &args[3..] {
        match upper(o).as_str() {
            "NX" => nx = true,
            "XX" => xx = true,
            "GT" => gt = true,
            "LT" => lt = true,
            _ => {
                return Ok(Reply::err(&format!(
                    "ERR Unsupported option {}",
                    String::from_utf8_lossy(o)
                )))
            }
        }
    }
    if nx && (xx || gt || lt) {
        return Ok(Reply::err(
            "ERR NX and XX, GT or LT options at the same time are not compatible",
        ));
    }
    if gt && lt {
        return Ok(Reply::err(
            "ERR GT and LT options at the same time are not compatible",
        ));
    }
    let Some((m, v)) = w.lookup(key)? else {
        return Ok(Reply::Int(0));
    };
    // No expiry counts as an infinite TTL for GT and LT.
    let allowed = match m.expire_at {
        None => !xx && !gt,
        Some(cur) => !nx && (!gt || at > cur as i64) && (!lt || at < cur as i64),
    };
    if !allowed {
        return Ok(Reply::Int(0));
    }
    if at <= w.now_ms as i64 {
        w.delete(key, &m)?;
    } else {
        let mut n = m.clone();
        n.expire_at = Some(at as u64);
        w.put(key, Some(&m), &n, &v)?;
    }
    Ok(Reply::Int(1))
}

/// The deadline of `SET`/`GETEX`/`SETEX`'s `EX s | PX ms | EXAT t | PXAT t`, or the error
/// Redis gives for a bad one.
pub(crate) fn expire_at_arg(unit: &str, n: &[u8], now: u64, cmd: &str) -> Result<u64, Reply> {
    let Some(n) = parse_i64(n) else {
        return Err(Reply::err(NOT_INT));
    };
    let invalid = || Reply::err(&format!("ERR invalid expire time in '{cmd}' command"));
    if n <= 0 {
        return Err(invalid());
    }
    let at = match unit {
        "EX" => n
            .checked_mul(1000)
            .and_then(|ms| ms.checked_add(now as i64)),
        "PX" => n.checked_add(now as i64),
        "EXAT" => n.checked_mul(1000),
        "PXAT" => Some(n),
        _ => return Err(Reply::err(SYNTAX)),
    };
    at.map(|a| a as u64).ok_or_else(invalid)
}
