//! What hashes, sets, sorted sets and lists share: finding a live collection of the right
//! type, creating and saving its metadata, walking its members, and `*SCAN` cursors.

use bytes::Bytes;

use super::{hex, parse_i64, unhex, upper, Store};
use crate::glob;
use crate::model::layout::{self, MAX_MEMBER};
use crate::model::{self, visit, Kind, Meta, Writer};
use crate::reply::{Reply, NOT_INT, SYNTAX};

/// The collection under `key` for a read: `Ok(None)` when absent or expired, `Err` with
/// WRONGTYPE when another type.
pub(crate) fn get<S: Store + ?Sized>(
    s: &S,
    key: &[u8],
    now: u64,
    kind: Kind,
) -> model::Result<Result<Option<Meta>, Reply>> {
    Ok(match model::lookup(s, key, now)? {
        None => Ok(None),
        Some(f) if f.meta.kind == kind => Ok(Some(f.meta)),
        Some(_) => Err(Reply::wrong_type()),
    })
}

/// As [`get`], for a write (an expired key is deleted on the way).
pub(crate) fn get_w(
    w: &mut Writer<'_, '_>,
    key: &[u8],
    kind: Kind,
) -> model::Result<Result<Option<Meta>, Reply>> {
    Ok(match w.lookup(key)? {
        None => Ok(None),
        Some((m, _)) if m.kind == kind => Ok(Some(m)),
        Some(_) => Err(Reply::wrong_type()),
    })
}

/// The collection to add to: the live one, or a new empty one with a fresh version.
pub(crate) fn get_or_new(
    w: &mut Writer<'_, '_>,
    key: &[u8],
    kind: Kind,
) -> model::Result<Result<(Option<Meta>, Meta), Reply>> {
    Ok(match get_w(w, key, kind)? {
        Err(r) => Err(r),
        Ok(Some(m)) => Ok((Some(m.clone()), m)),
        Ok(None) => Ok((None, Meta::new(kind, w.new_version()?))),
    })
}

/// Writes a collection's metadata after its members changed; an empty collection is deleted,
/// as Redis deletes empty collections.
pub(crate) fn save(
    w: &mut Writer<'_, '_>,
    key: &[u8],
    old: Option<&Meta>,
    meta: &Meta,
) -> model::Result<()> {
    if meta.size == 0 {
        if old.is_some() {
            w.delete(key, meta)?;
        }
        Ok(())
    } else if old == Some(meta) {
        // Members changed, the metadata did not (an overwrite): nothing to rewrite.
        w.touch(key);
        Ok(())
    } else {
        w.put(key, old, meta, b"")
    }
}

/// Unwraps a `Result<_, Reply>` from a helper above, answering with the reply.
macro_rules! typed {
    ($e:expr) => {
        match $e? {
            Ok(v) => v,
            Err(reply) => return Ok(reply),
        }
    };
}
pub(crate) use typed;

/// The optional count of SPOP, LPOP, RPOP, ZPOPMIN and ZPOPMAX: absent, or a number >= 0.
pub(crate) fn count_arg(arg: Option<&Bytes>) -> Result<Option<u64>, Reply> {
    match arg {
        None => Ok(None),
        Some(c) => match parse_i64(c) {
            Some(n) if n >= 0 => Ok(Some(n as u64)),
            _ => Err(Reply::err("ERR value is out of range, must be positive")),
        },
    }
}

/// The engine key of member `m` of a collection version.
pub(crate) fn member(key: &[u8], meta: &Meta, m: &[u8]) -> Vec<u8> {
    layout::sub_key(key, meta.version, m)
}

/// Members (or fields) longer than a composite key can hold.
pub(crate) fn too_long<'a>(ms: impl IntoIterator<Item = &'a Bytes>) -> Option<Reply> {
    ms.into_iter().find(|m| m.len() > MAX_MEMBER).map(|m| {
        Reply::err(&format!(
            "ERR member too large ({} bytes; the limit is {MAX_MEMBER})",
            m.len()
        ))
    })
}

/// Every (member, value) of a collection version, in member order.
pub(crate) fn all<S: Store + ?Sized>(
    s: &S,
    key: &[u8],
    meta: &Meta,
) -> storage::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let p = layout::prefix(layout::SUB, key, meta.version);
    let mut v = Vec::with_capacity(meta.size.min(1 << 20) as usize);
    visit(s, &layout::prefix_bounds(&p), false, &mut |k, val| {
        v.push((k[p.len()..].to_vec(), val.to_vec()));
        true
    })?;
    Ok(v)
}

/// A `*SCAN key cursor [MATCH p] [COUNT n] [NOVALUES]` request: the cursor is `m` + the hex of
/// the last member examined (`0` starts and ends), so every member present for the whole scan
/// comes exactly once.
pub(crate) struct ScanArgs<'a> {
    pub after: Option<Vec<u8>>,
    pub pattern: Option<&'a [u8]>,
    pub count: usize,
    pub novalues: bool,
}

pub(crate) fn scan_args(args: &[Bytes], novalues_ok: bool) -> Result<ScanArgs<'_>, Reply> {
    let after = match &args[2][..] {
        b"0" => None,
        c => Some(
            c.strip_prefix(b"m")
                .and_then(unhex)
                .ok_or_else(|| Reply::err("ERR invalid cursor"))?,
        ),
    };
    let mut a = ScanArgs {
        after,
        pattern: None,
        count: 10,
        novalues: false,
    };
    let mut i = 3;
    while i < args.len() {
        match upper(&args[i]).as_str() {
            "NOVALUES" if novalues_ok => {
                a.novalues = true;
                i += 1;
                continue;
            }
            "MATCH" if i + 1 < args.len() => a.pattern = Some(&args[i + 1]),
            "COUNT" if i + 1 < args.len() => match parse_i64(&args[i + 1]) {
                Some(n) if n >= 1 => a.count = (n as usize).min(100_000),
                _ => return Err(Reply::err(NOT_INT)),
            },
            _ => return Err(Reply::err(SYNTAX)),
        }
        i += 2;
    }
    Ok(a)
}

/// A whole `*SCAN` reply: `[cursor, items]`, the items made from the page's (member, value)
/// pairs by `items`; an absent collection is one empty page.
pub(crate) fn scan<S: Store + ?Sized>(
    s: &S,
    key: &[u8],
    meta: Option<&Meta>,
    args: &[Bytes],
    novalues_ok: bool,
    items: impl Fn(&ScanArgs<'_>, Vec<(Vec<u8>, Vec<u8>)>) -> Vec<Reply>,
) -> model::Result<Reply> {
    let a = match scan_args(args, novalues_ok) {
        Ok(a) => a,
        Err(r) => return Ok(r),
    };
    let (cursor, got) = match meta {
        Some(m) => scan_page(s, key, m, &a)?,
        None => (b"0".to_vec(), Vec::new()),
    };
    Ok(Reply::Array(vec![
        Reply::Bulk(cursor),
        Reply::Array(items(&a, got)),
    ]))
}

/// The next cursor and the (member, value) pairs of one `*SCAN` page.
pub(crate) type ScanPage = (Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>);

/// One page of a `*SCAN`: the next cursor and the (member, value) pairs matched.
pub(crate) fn scan_page<S: Store + ?Sized>(
    s: &S,
    key: &[u8],
    meta: &Meta,
    a: &ScanArgs<'_>,
) -> storage::Result<ScanPage> {
    let p = layout::prefix(layout::SUB, key, meta.version);
    let (mut lo, hi) = layout::prefix_bounds(&p);
    if let Some(after) = &a.after {
        let mut k = p.clone();
        k.extend_from_slice(after);
        lo = std::ops::Bound::Excluded(k);
    }
    let mut got = Vec::new();
    let mut examined = 0;
    let mut last = None;
    let mut more = false;
    visit(s, &(lo, hi), false, &mut |k, v| {
        if examined == a.count {
            more = true;
            return false;
        }
        examined += 1;
        let m = &k[p.len()..];
        last = Some(m.to_vec());
        if a.pattern.is_none_or(|pat| glob::matches(pat, m)) {
            got.push((m.to_vec(), v.to_vec()));
        }
        true
    })?;
    let cursor = match (more, last) {
        (true, Some(m)) => format!("m{}", hex(&m)).into_bytes(),
        _ => b"0".to_vec(),
    };
    Ok((cursor, got))
}

/// Whole-collection reads (HGETALL, HKEYS, HVALS, SMEMBERS, LRANGE) encoded straight from
/// the snapshot's pages into the reply: one copy of a million-member reply, not a list of
/// replies and then its encoding. `None` for other commands. The header's count comes from
/// the metadata; a collection whose members disagree with it is reported, never sent
/// malformed.
pub(crate) fn stream<S: Store + ?Sized>(
    s: &S,
    now: u64,
    name: &str,
    args: &[Bytes],
    enc: &crate::resp::Encoder,
    buf: &mut bytes::BytesMut,
) -> Option<model::Result<()>> {
    let kind = match name {
        "HGETALL" | "HKEYS" | "HVALS" => Kind::Hash,
        "SMEMBERS" => Kind::Set,
        "LRANGE" => Kind::List,
        _ => return None,
    };
    Some(stream_inner(s, now, name, kind, args, enc, buf))
}

fn stream_inner<S: Store + ?Sized>(
    s: &S,
    now: u64,
    name: &str,
    kind: Kind,
    args: &[Bytes],
    enc: &crate::resp::Encoder,
    buf: &mut bytes::BytesMut,
) -> model::Result<()> {
    let key = &args[1][..];
    let meta = match get(s, key, now, kind)? {
        Err(r) => {
            r.encode(enc, buf);
            return Ok(());
        }
        Ok(m) => m,
    };
    // The members to send: all of them, or LRANGE's positions.
    let (lo, hi, count) = match (&meta, name) {
        (None, _) => (Vec::new(), Vec::new(), 0),
        (Some(m), "LRANGE") => {
            let (Some(a), Some(b)) = (parse_i64(&args[2]), parse_i64(&args[3])) else {
                Reply::err(NOT_INT).encode(enc, buf);
                return Ok(());
            };
            match crate::model::number::index_range(a, b, m.size) {
                Some((x, y)) => {
                    let at = |o: u64| layout::sub_key(key, m.version, &(m.head + o).to_be_bytes());
                    let mut hi = at(y);
                    hi.push(0);
                    (at(x), hi, y - x + 1)
                }
                None => (Vec::new(), Vec::new(), 0),
            }
        }
        (Some(m), _) => {
            let p = layout::prefix(layout::SUB, key, m.version);
            let hi = match layout::prefix_end(&p) {
                std::ops::Bound::Excluded(e) => e,
                _ => vec![0xff; p.len() + 1],
            };
            (p, hi, m.size)
        }
    };
    let mark = buf.len();
    match name {
        "HGETALL" => enc.map(buf, count as usize),
        "SMEMBERS" => enc.set(buf, count as usize),
        _ => enc.array(buf, count as usize),
    }
    if count == 0 {
        return Ok(());
    }
    let skip = match name {
        "LRANGE" => 0,
        _ => lo.len(),
    };
    let mut n = 0u64;
    let visited = s.visit_raw(
        std::ops::Bound::Included(&lo),
        std::ops::Bound::Excluded(&hi),
        false,
        &mut |k, v| {
            match name {
                "HGETALL" => {
                    enc.bulk(buf, &k[skip..]);
                    enc.bulk(buf, v);
                }
                "HKEYS" | "SMEMBERS" => enc.bulk(buf, &k[skip..]),
                _ => enc.bulk(buf, v),
            }
            n += 1;
            n < count
        },
    );
    if let Err(e) = visited {
        buf.truncate(mark);
        return Err(e.into());
    }
    if n != count {
        buf.truncate(mark);
        enc.error(
            buf,
            &format!("CORRUPT the metadata of this key counts {count} members, its entries {n}; run `replidb check`"),
        );
    }
    Ok(())
}
