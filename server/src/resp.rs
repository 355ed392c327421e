//! RESP (the Redis serialization protocol): a request parser that never trusts a length it
//! has not bounded, and reply encoders for RESP2 and RESP3.
//!
//! Requests are arrays of bulk strings (`*<n>\r\n` then `$<len>\r\n<bytes>\r\n` × n), or
//! inline commands (a line of space-separated words) as telnet and some tools send.

use std::ops::Range;

use bytes::{BufMut, BytesMut};

/// Most arguments one command may have (MSET of half a million pairs).
pub const MAX_ARGS: usize = 1 << 20;
/// Longest bulk string accepted as a frame. Values up to 64 MiB are legal; anything up to
/// this length is read and refused by the command ("value too large") with the connection
/// kept; beyond it the frame is absurd and the connection is closed after an error reply.
pub const MAX_BULK: usize = 128 << 20;
/// Longest inline command line.
pub const MAX_INLINE: usize = 64 << 10;
/// Most bytes one request may occupy in total.
pub const MAX_REQUEST: usize = 256 << 20;
/// Longest `*<n>` or `$<len>` header line we look for before calling it garbage.
const MAX_HEADER: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("Protocol error: {0}")]
    Invalid(String),
}

fn invalid(s: impl Into<String>) -> ProtocolError {
    ProtocolError::Invalid(s.into())
}

/// Result of looking at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole request: argument byte ranges into the buffer, and its total length.
    Request { args: Vec<Range<usize>>, len: usize },
    /// Not enough bytes yet; at least `need` bytes in total are required.
    Incomplete { need: usize },
}

/// Parses one request from the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProtocolError> {
    if buf.is_empty() {
        return Ok(Parsed::Incomplete { need: 1 });
    }
    if buf[0] != b'*' {
        return parse_inline(buf);
    }
    let Some((n, mut pos)) = header(buf, 0, b'*', "multibulk length")? else {
        return Ok(Parsed::Incomplete {
            need: buf.len() + 1,
        });
    };
    if n <= 0 {
        // `*0` and `*-1` are empty requests: nothing to run.
        return Ok(Parsed::Request {
            args: Vec::new(),
            len: pos,
        });
    }
    if n as usize > MAX_ARGS {
        return Err(invalid(format!(
            "invalid multibulk length {n} (at most {MAX_ARGS})"
        )));
    }
    let n = n as usize;
    let mut args = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        if pos >= buf.len() {
            return Ok(Parsed::Incomplete { need: pos + 1 });
        }
        if buf[pos] != b'$' {
            return Err(invalid(format!(
                "expected '$', got '{}'",
                char::from(buf[pos]).escape_default()
            )));
        }
        let Some((len, data)) = header(buf, pos, b'$', "bulk length")? else {
            return Ok(Parsed::Incomplete {
                need: buf.len() + 1,
            });
        };
        if len < 0 || len as usize > MAX_BULK {
            return Err(invalid(format!(
                "invalid bulk length {len} (at most {MAX_BULK})"
            )));
        }
        let end = data + len as usize;
        if end + 2 > MAX_REQUEST {
            return Err(invalid(format!("request larger than {MAX_REQUEST} bytes")));
        }
        if buf.len() < end + 2 {
            return Ok(Parsed::Incomplete { need: end + 2 });
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(invalid("bulk string not followed by CRLF"));
        }
        args.push(data..end);
        pos = end + 2;
    }
    Ok(Parsed::Request { args, len: pos })
}

/// Reads `<tag><integer>\r\n` at `at`; `None` if the line is not complete yet.
fn header(
    buf: &[u8],
    at: usize,
    tag: u8,
    what: &str,
) -> Result<Option<(i64, usize)>, ProtocolError> {
    debug_assert_eq!(buf[at], tag);
    let window = &buf[at + 1..buf.len().min(at + 1 + MAX_HEADER)];
    let Some(cr) = window.iter().position(|&b| b == b'\r') else {
        if window.len() >= MAX_HEADER {
            return Err(invalid(format!("{what} line too long")));
        }
        return Ok(None);
    };
    if at + 1 + cr + 1 >= buf.len() {
        return Ok(None);
    }
    if buf[at + 1 + cr + 1] != b'\n' {
        return Err(invalid(format!("{what} not followed by CRLF")));
    }
    let digits = &window[..cr];
    let s = std::str::from_utf8(digits).map_err(|_| invalid(format!("invalid {what}")))?;
    let n: i64 = s
        .parse()
        .map_err(|_| invalid(format!("invalid {what} '{}'", s.escape_default())))?;
    Ok(Some((n, at + 1 + cr + 2)))
}

fn parse_inline(buf: &[u8]) -> Result<Parsed, ProtocolError> {
    let window = &buf[..buf.len().min(MAX_INLINE)];
    let Some(nl) = window.iter().position(|&b| b == b'\n') else {
        if buf.len() >= MAX_INLINE {
            return Err(invalid("too big inline request"));
        }
        return Ok(Parsed::Incomplete {
            need: buf.len() + 1,
        });
    };
    let line_end = if nl > 0 && buf[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    };
    let mut args = Vec::new();
    let mut i = 0;
    while i < line_end {
        while i < line_end && buf[i].is_ascii_whitespace() {
            i += 1;
        }
        let s = i;
        while i < line_end && !buf[i].is_ascii_whitespace() {
            i += 1;
        }
        if i > s {
            args.push(s..i);
        }
    }
    Ok(Parsed::Request { args, len: nl + 1 })
}

/// Reply encoding for one connection (RESP2, or RESP3 after `HELLO 3`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Encoder {
    pub resp3: bool,
}

impl Encoder {
    pub fn simple(&self, out: &mut BytesMut, s: &str) {
        out.put_u8(b'+');
        out.put_slice(s.as_bytes());
        out.put_slice(b"\r\n");
    }

    /// An error reply; `msg` starts with its code (`ERR ...`, `WRONGTYPE ...`).
    pub fn error(&self, out: &mut BytesMut, msg: &str) {
        count_error(msg);
        out.put_u8(b'-');
        // An error line cannot hold CR or LF.
        for &b in msg.as_bytes() {
            out.put_u8(if b == b'\r' || b == b'\n' { b' ' } else { b });
        }
        out.put_slice(b"\r\n");
    }

    pub fn int(&self, out: &mut BytesMut, n: i64) {
        out.put_u8(b':');
        out.put_slice(itoa::Buffer::new().format(n).as_bytes());
        out.put_slice(b"\r\n");
    }

    pub fn bulk(&self, out: &mut BytesMut, b: &[u8]) {
        out.reserve(b.len() + 16);
        out.put_u8(b'$');
        out.put_slice(itoa::Buffer::new().format(b.len()).as_bytes());
        out.put_slice(b"\r\n");
        out.put_slice(b);
        out.put_slice(b"\r\n");
    }

    pub fn null(&self, out: &mut BytesMut) {
        if self.resp3 {
            out.put_slice(b"_\r\n");
        } else {
            out.put_slice(b"$-1\r\n");
        }
    }

    /// A null array: `*-1` in RESP2, `_` in RESP3.
    pub fn null_array(&self, out: &mut BytesMut) {
        if self.resp3 {
            out.put_slice(b"_\r\n");
        } else {
            out.put_slice(b"*-1\r\n");
        }
    }

    pub fn array(&self, out: &mut BytesMut, n: usize) {
        out.put_u8(b'*');
        out.put_slice(itoa::Buffer::new().format(n).as_bytes());
        out.put_slice(b"\r\n");
    }

    /// An out-of-band push of `n` elements (pub/sub messages): `>` in RESP3, an array in
    /// RESP2.
    pub fn push(&self, out: &mut BytesMut, n: usize) {
        out.put_u8(if self.resp3 { b'>' } else { b'*' });
        out.put_slice(itoa::Buffer::new().format(n).as_bytes());
        out.put_slice(b"\r\n");
    }

    /// A map of `n` pairs (a flat array of 2n elements in RESP2).
    pub fn map(&self, out: &mut BytesMut, n: usize) {
        if self.resp3 {
            out.put_u8(b'%');
            out.put_slice(itoa::Buffer::new().format(n).as_bytes());
            out.put_slice(b"\r\n");
        } else {
            self.array(out, 2 * n);
        }
    }

    /// A set of `n` elements (an array in RESP2).
    pub fn set(&self, out: &mut BytesMut, n: usize) {
        if self.resp3 {
            out.put_u8(b'~');
            out.put_slice(itoa::Buffer::new().format(n).as_bytes());
            out.put_slice(b"\r\n");
        } else {
            self.array(out, n);
        }
    }

    /// A double (a bulk string in RESP2), printed as Redis 7 prints scores.
    pub fn double(&self, out: &mut BytesMut, v: f64) {
        crate::model::number::with_score_text(v, |s| {
            if self.resp3 {
                out.put_u8(b',');
                out.put_slice(s.as_bytes());
                out.put_slice(b"\r\n");
            } else {
                self.bulk(out, s.as_bytes());
            }
        })
    }

    pub fn opt_bulk(&self, out: &mut BytesMut, b: Option<&[u8]>) {
        match b {
            Some(b) => self.bulk(out, b),
            None => self.null(out),
        }
    }
}

/// Fuzz entry point (`resp_decode`, and the corpus replay test): parses requests one after
/// another as a connection would, checking that every step consumes input or stops.
pub fn fuzz_parse_all(mut data: &[u8]) {
    loop {
        match parse(data) {
            Ok(Parsed::Request { args, len }) => {
                assert!(len > 0 && len <= data.len(), "a request consumes input");
                for r in &args {
                    assert!(r.end <= len, "arguments lie inside the request");
                }
                data = &data[len..];
            }
            Ok(Parsed::Incomplete { need }) => {
                assert!(need > data.len(), "incomplete means more bytes are needed");
                return;
            }
            Err(_) => return,
        }
    }
}

/// The kinds of error reply counted for `/metrics` (`replidb_errors_total{kind}`): the first
/// word of the error line; anything else is `OTHER`.
pub const ERROR_KINDS: [&str; 16] = [
    "ERR",
    "WRONGTYPE",
    "NOQUORUM",
    "NOREPLICAS",
    "READONLY",
    "FENCED",
    "TRYAGAIN",
    "LOADING",
    "STALE",
    "TIMEOUT",
    "NOAUTH",
    "CORRUPT",
    "EXECABORT",
    "BUSY",
    "UNBLOCKED",
    "OTHER",
];

/// Error replies sent by this process, by `ERROR_KINDS` index.
pub static ERRORS: [std::sync::atomic::AtomicU64; ERROR_KINDS.len()] =
    [const { std::sync::atomic::AtomicU64::new(0) }; ERROR_KINDS.len()];

fn count_error(msg: &str) {
    let word = msg.split(' ').next().unwrap_or("");
    let i = ERROR_KINDS
        .iter()
        .position(|k| *k == word)
        .unwrap_or(ERROR_KINDS.len() - 1);
    ERRORS[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(buf: &[u8]) -> Vec<Vec<u8>> {
        match parse(buf).unwrap() {
            Parsed::Request { args, .. } => args.into_iter().map(|r| buf[r].to_vec()).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn arrays_inline_and_partial_input() {
        assert_eq!(
            args(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"),
            vec![b"GET".to_vec(), b"k".to_vec()]
        );
        assert_eq!(args(b"PING\r\n"), vec![b"PING".to_vec()]);
        assert_eq!(
            args(b"  set  a   b\n"),
            vec![b"set".to_vec(), b"a".to_vec(), b"b".to_vec()]
        );
        assert_eq!(args(b"$\xff\x00\r\n").len(), 1, "inline takes any bytes");
        let full = b"*2\r\n$3\r\nGET\r\n$5\r\nhello\r\n";
        for cut in 0..full.len() {
            assert!(
                matches!(parse(&full[..cut]).unwrap(), Parsed::Incomplete { .. }),
                "cut at {cut}"
            );
        }
        // The length hint lets a reader wait for the whole bulk before parsing again.
        assert_eq!(
            parse(b"*1\r\n$10\r\nab").unwrap(),
            Parsed::Incomplete { need: 21 }
        );
        // Binary data with CRLF inside is fine.
        assert_eq!(args(b"*1\r\n$4\r\na\r\nb\r\n"), vec![b"a\r\nb".to_vec()]);
        assert_eq!(args(b"*0\r\n"), Vec::<Vec<u8>>::new());
    }

    #[test]
    fn absurd_and_malformed_frames_are_errors() {
        for bad in [
            &b"*99999999999\r\n"[..],
            b"*2\r\n$99999999999\r\n",
            b"*1\r\n$-5\r\n",
            b"*1\r\n:5\r\n",
            b"*1\r\n$3\r\nabcXY",
            b"*abc\r\n",
            b"*123456789012345678901234567890123456789\r\n",
            b"*1\x00\r\n",
        ] {
            assert!(
                parse(bad).is_err(),
                "{:?} should be refused",
                String::from_utf8_lossy(bad)
            );
        }
        let long = vec![b'a'; MAX_INLINE + 1];
        assert!(parse(&long).is_err());
    }

    #[test]
    fn replies_in_both_protocols() {
        let mut b = BytesMut::new();
        let e2 = Encoder { resp3: false };
        e2.null(&mut b);
        e2.map(&mut b, 1);
        e2.error(&mut b, "ERR bad\r\nthing");
        assert_eq!(&b[..], b"$-1\r\n*2\r\n-ERR bad  thing\r\n");
        let mut b = BytesMut::new();
        let e3 = Encoder { resp3: true };
        e3.null(&mut b);
        e3.map(&mut b, 1);
        e3.int(&mut b, -7);
        e3.bulk(&mut b, b"hi");
        assert_eq!(&b[..], b"_\r\n%1\r\n:-7\r\n$2\r\nhi\r\n");
    }
}
