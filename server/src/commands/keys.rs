//! The keyspace: DEL, EXISTS, DBSIZE, SCAN (cursor over keys) and RANGE (an ordered range).

use std::ops::Bound;

use bytes::{Bytes, BytesMut};
use storage::WriteTxn;

use super::{hex, parse_i64, unhex, upper, wrong_arity};
use crate::glob;
use crate::reply::Reply;
use crate::session::{Out, Session};

impl Session {
    /// EXISTS, DBSIZE, SCAN or RANGE, each from one snapshot (SCAN and RANGE: one per
    /// chunk).
    pub(crate) fn keys_read(&mut self, name: &str, args: &[Bytes], out: &mut Out) {
        let db = &self.db;
        match name {
            "EXISTS" => {
                let snap = db.read();
                let mut n = 0;
                for k in &args[1..] {
                    match snap.get(k) {
                        Ok(v) => n += i64::from(v.is_some()),
                        Err(e) => {
                            drop(snap);
                            self.storage_err(&mut out.buf, &e);
                            return;
                        }
                    }
                }
                self.enc.int(&mut out.buf, n);
            }
            "DBSIZE" => self.enc.int(&mut out.buf, db.len() as i64),
            "SCAN" => self.scan(args, out),
            "RANGE" => self.range(args, out),
            _ => super::unreachable_command(name),
        }
    }

    fn scan(&mut self, args: &[Bytes], out: &mut Out) {
        if args.len() < 2 || !args.len().is_multiple_of(2) {
            self.err(out, &wrong_arity("scan"));
            return;
        }
        let after = match &args[1][..] {
            b"0" => None,
            c => match c.strip_prefix(b"k").and_then(unhex) {
                Some(k) => Some(k),
                None => {
                    self.err(out, "ERR invalid cursor");
                    return;
                }
            },
        };
        let mut pattern: Option<&[u8]> = None;
        let mut count = 10usize;
        for opt in args[2..].chunks(2) {
            match upper(&opt[0]).as_str() {
                "MATCH" => pattern = Some(&opt[1]),
                "COUNT" => match parse_i64(&opt[1]) {
                    Some(n) if n >= 1 => count = (n as usize).min(100_000),
                    _ => {
                        self.err(out, "ERR value is not an integer or out of range");
                        return;
                    }
                },
                "TYPE" => {}
                _ => {
                    self.err(out, "ERR syntax error");
                    return;
                }
            }
        }
        let lower = match &after {
            Some(k) => Bound::Excluded(k.as_slice()),
            None => Bound::Unbounded,
        };
        let db = self.db();
        let snap = db.read();
        let it = match snap.range::<(Bound<&[u8]>, Bound<&[u8]>)>((lower, Bound::Unbounded)) {
            Ok(it) => it,
            Err(e) => {
                drop(snap);
                self.storage_err(&mut out.buf, &e);
                return;
            }
        };
        let mut keys = Vec::new();
        let mut last: Option<Vec<u8>> = None;
        let mut done = true;
        for (examined, e) in it.enumerate() {
            if examined == count {
                done = false;
                break;
            }
            let (k, _) = match e {
                Ok(e) => e,
                Err(e) => {
                    self.storage_err(&mut out.buf, &e);
                    return;
                }
            };
            if pattern.is_none_or(|p| glob::matches(p, &k)) {
                keys.push(k.to_vec());
            }
            last = Some(k.into_owned());
        }
        drop(snap);
        let cursor = match (done, last) {
            (false, Some(k)) => format!("k{}", hex(&k)),
            _ => "0".to_string(),
        };
        self.enc.array(&mut out.buf, 2);
        self.enc.bulk(&mut out.buf, cursor.as_bytes());
        self.enc.array(&mut out.buf, keys.len());
        for k in &keys {
            self.enc.bulk(&mut out.buf, k);
        }
    }

    fn range(&mut self, args: &[Bytes], out: &mut Out) {
        if args.len() != 3 && args.len() != 5 {
            self.err(out, &wrong_arity("range"));
            return;
        }
        let mut limit = usize::MAX;
        if args.len() == 5 {
            if upper(&args[3]) != "LIMIT" {
                self.err(out, "ERR syntax error");
                return;
            }
            match parse_i64(&args[4]) {
                Some(n) if n >= 0 => limit = n as usize,
                _ => {
                    self.err(out, "ERR value is not an integer or out of range");
                    return;
                }
            }
        }
        let lo: Bound<&[u8]> = if &args[1][..] == b"-" {
            Bound::Unbounded
        } else {
            Bound::Included(&args[1])
        };
        let hi: Bound<&[u8]> = if &args[2][..] == b"+" {
            Bound::Unbounded
        } else {
            Bound::Excluded(&args[2])
        };
        if let (Bound::Included(a), Bound::Excluded(b)) = (lo, hi) {
            if a >= b {
                self.enc.array(&mut out.buf, 0);
                return;
            }
        }
        let mut tmp = BytesMut::new();
        let mut n = 0;
        for e in self.db().range((lo, hi)).take(limit) {
            match e {
                Ok((k, v)) => {
                    self.enc.bulk(&mut tmp, &k);
                    self.enc.bulk(&mut tmp, &v);
                    n += 2;
                }
                Err(e) => {
                    self.storage_err(&mut out.buf, &e);
                    return;
                }
            }
        }
        self.enc.array(&mut out.buf, n);
        out.buf.extend_from_slice(&tmp);
    }
}

/// A keyspace command against a write transaction (DEL, or EXISTS and DBSIZE inside EXEC).
pub(crate) fn apply(tx: &mut WriteTxn<'_>, name: &str, args: &[Bytes]) -> storage::Result<Reply> {
    Ok(match name {
        "DEL" => {
            let mut n = 0;
            for k in &args[1..] {
                n += i64::from(tx.delete(k)?);
            }
            Reply::Int(n)
        }
        "EXISTS" => {
            let mut n = 0;
            for k in &args[1..] {
                n += i64::from(tx.get(k)?.is_some());
            }
            Reply::Int(n)
        }
        "DBSIZE" => Reply::Int(tx.len() as i64),
        other => Reply::Error(format!(
            "ERR command '{}' cannot run here",
            other.to_ascii_lowercase()
        )),
    })
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
