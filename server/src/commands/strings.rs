//! Strings: GET, MGET, SET, MSET, INCR, INCRBY, DECR, DECRBY.

use bytes::{Bytes, BytesMut};
use storage::WriteTxn;

use super::{parse_i64, upper};
use crate::reply::Reply;
use crate::session::{Out, Session};

impl Session {
    /// GET or MGET, from one snapshot.
    pub(crate) fn string_read(&mut self, name: &str, args: &[Bytes], out: &mut Out) {
        let db = &self.db;
        match name {
            "GET" => {
                let snap = db.read();
                match snap.get(&args[1]) {
                    Ok(v) => self.enc.opt_bulk(&mut out.buf, v.as_deref()),
                    Err(e) => self.storage_err(&mut out.buf, &e),
                }
            }
            "MGET" => {
                let snap = db.read();
                let mut tmp = BytesMut::new();
                for k in &args[1..] {
                    match snap.get(k) {
                        Ok(v) => self.enc.opt_bulk(&mut tmp, v.as_deref()),
                        Err(e) => {
                            drop(snap);
                            self.storage_err(&mut out.buf, &e);
                            return;
                        }
                    }
                }
                self.enc.array(&mut out.buf, args.len() - 1);
                out.buf.extend_from_slice(&tmp);
            }
            _ => super::unreachable_command(name),
        }
    }
}

/// A string command against a write transaction (a write, or a read inside EXEC). Command
/// errors are replies (the rest of an EXEC still runs, as in Redis); only engine errors abort
/// the transaction.
pub(crate) fn apply(tx: &mut WriteTxn<'_>, name: &str, args: &[Bytes]) -> storage::Result<Reply> {
    Ok(match name {
        "GET" => tx.get(&args[1])?.map_or(Reply::Null, Reply::Bulk),
        "MGET" => {
            let mut v = Vec::with_capacity(args.len() - 1);
            for k in &args[1..] {
                v.push(tx.get(k)?.map_or(Reply::Null, Reply::Bulk));
            }
            Reply::Array(v)
        }
        "SET" => {
            let (mut nx, mut xx) = (false, false);
            for opt in &args[3..] {
                match upper(opt).as_str() {
                    "NX" => nx = true,
                    "XX" => xx = true,
                    "EX" | "PX" | "EXAT" | "PXAT" | "KEEPTTL" | "GET" => {
                        return Ok(Reply::Error(format!(
                            "ERR SET option {} is not supported by replidb (no expiry)",
                            upper(opt)
                        )))
                    }
                    _ => return Ok(Reply::Error("ERR syntax error".into())),
                }
            }
            if nx && xx {
                return Ok(Reply::Error("ERR syntax error".into()));
            }
            if nx || xx {
                let exists = tx.get(&args[1])?.is_some();
                if (nx && exists) || (xx && !exists) {
                    return Ok(Reply::Null);
                }
            }
            tx.put(&args[1], &args[2])?;
            Reply::Ok
        }
        "MSET" => {
            for kv in args[1..].chunks(2) {
                tx.put(&kv[0], &kv[1])?;
            }
            Reply::Ok
        }
        "INCR" | "DECR" | "INCRBY" | "DECRBY" => {
            let by = match name {
                "INCR" => 1,
                "DECR" => -1,
                _ => match parse_i64(&args[2]) {
                    Some(n) if name == "INCRBY" => n,
                    Some(n) => match n.checked_neg() {
                        Some(n) => n,
                        None => return Ok(Reply::Error("ERR decrement would overflow".into())),
                    },
                    None => {
                        return Ok(Reply::Error(
                            "ERR value is not an integer or out of range".into(),
                        ))
                    }
                },
            };
            let cur = match tx.get(&args[1])? {
                None => 0,
                Some(v) => match parse_i64(&v) {
                    Some(n) => n,
                    None => {
                        return Ok(Reply::Error(
                            "ERR value is not an integer or out of range".into(),
                        ))
                    }
                },
            };
            match cur.checked_add(by) {
                Some(n) => {
                    tx.put(&args[1], n.to_string().as_bytes())?;
                    Reply::Int(n)
                }
                None => Reply::Error("ERR increment or decrement would overflow".into()),
            }
        }
        other => Reply::Error(format!(
            "ERR command '{}' cannot run here",
            other.to_ascii_lowercase()
        )),
    })
}
