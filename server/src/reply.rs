//! Replies built inside write transactions (encoded once the transaction is done), and the
//! mapping of engine errors to RESP error lines.

use bytes::BytesMut;

use crate::resp::Encoder;

/// A reply value. Reads encode straight into the output buffer; writes and transactions
/// produce these first, because their replies depend on the transaction's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Ok,
    Null,
    Int(i64),
    Bulk(Vec<u8>),
    Error(String),
    Array(Vec<Reply>),
}

impl Reply {
    pub fn encode(&self, enc: &Encoder, out: &mut BytesMut) {
        match self {
            Reply::Ok => enc.simple(out, "OK"),
            Reply::Null => enc.null(out),
            Reply::Int(n) => enc.int(out, *n),
            Reply::Bulk(b) => enc.bulk(out, b),
            Reply::Error(e) => enc.error(out, e),
            Reply::Array(v) => {
                enc.array(out, v.len());
                for r in v {
                    r.encode(enc, out);
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
