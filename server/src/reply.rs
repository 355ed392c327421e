//! Replies built inside write transactions (encoded once the transaction is done), and the
//! mapping of engine errors to RESP error lines.

use bytes::BytesMut;

use crate::resp::Encoder;

/// A reply value. Reads encode straight into the output buffer; writes and transactions
/// produce these first, because their replies depend on the transaction's outcome.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    Ok,
    Null,
    /// A null array (`*-1` in RESP2): BLPOP's timeout, an aborted EXEC, LPOP n of nothing.
    NullArray,
    Int(i64),
    Bulk(Vec<u8>),
    Error(String),
    Array(Vec<Reply>),
    /// A status line (`+hash`).
    Status(String),
    /// A double: `,` in RESP3, a bulk string as Redis 7 prints it in RESP2.
    Double(f64),
    /// Field-value pairs, flat: a map in RESP3, an array in RESP2 (HGETALL).
    Map(Vec<Reply>),
    /// A set in RESP3, an array in RESP2 (SMEMBERS).
    Set(Vec<Reply>),
    /// Members with scores: `[[m, s], ...]` in RESP3, `[m, s, ...]` in RESP2 (WITHSCORES).
    Scored(Vec<(Vec<u8>, f64)>),
}

impl Reply {
    pub fn bulk(b: &[u8]) -> Reply {
        Reply::Bulk(b.to_vec())
    }

    pub fn wrong_type() -> Reply {
        Reply::Error(WRONGTYPE.into())
    }

    pub fn err(msg: &str) -> Reply {
        Reply::Error(msg.into())
    }
}

pub const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";
pub const NOT_INT: &str = "ERR value is not an integer or out of range";
pub const NOT_FLOAT: &str = "ERR value is not a valid float";
pub const SYNTAX: &str = "ERR syntax error";

impl Reply {
    pub fn encode(&self, enc: &Encoder, out: &mut BytesMut) {
        match self {
            Reply::Ok => enc.simple(out, "OK"),
            Reply::Null => enc.null(out),
            Reply::NullArray => enc.null_array(out),
            Reply::Int(n) => enc.int(out, *n),
            Reply::Bulk(b) => enc.bulk(out, b),
            Reply::Error(e) => enc.error(out, e),
            Reply::Array(v) => {
                enc.array(out, v.len());
                for r in v {
                    r.encode(enc, out);
                }
            }
            Reply::Status(s) => enc.simple(out, s),
            Reply::Double(d) => enc.double(out, *d),
            Reply::Map(v) => {
                enc.map(out, v.len() / 2);
                for r in v {
                    r.encode(enc, out);
                }
            }
            Reply::Set(v) => {
                enc.set(out, v.len());
                for r in v {
                    r.encode(enc, out);
                }
            }
            Reply::Scored(v) => {
                if enc.resp3 {
                    enc.array(out, v.len());
                    for (m, s) in v {
                        enc.array(out, 2);
                        enc.bulk(out, m);
                        enc.double(out, *s);
                    }
                } else {
                    enc.array(out, 2 * v.len());
                    for (m, s) in v {
                        enc.bulk(out, m);
                        enc.double(out, *s);
                    }
                }
            }
        }
    }
}

/// The error line for an engine error, with a code a client can act on.
pub fn storage_error(e: &storage::Error) -> String {
    use storage::Error as E;
    match e {
        E::KeyTooLarge { len, max } => {
            format!("ERR key too large ({len} bytes; the limit is {max})")
        }
        E::ValueTooLarge { len, max } => {
            format!("ERR value too large ({len} bytes; the limit is {max})")
        }
        E::BatchTooLarge { pages, max } => format!(
            "ERR transaction too large: it changes {pages} pages, the limit is {max} pages per commit"
        ),
        E::DiskFull(why) => format!("DISKFULL {why}; the write is not acknowledged"),
        E::PreviousIo(why) => format!("IOERR writes are refused until restart: {why}"),
        E::Corrupt { .. } | E::CorruptWal { .. } => format!("CORRUPT {e}"),
        other => format!("ERR {other}"),
    }
}
