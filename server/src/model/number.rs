//! Numbers as Redis reads and writes them: doubles (scores, INCRBYFLOAT) and range bounds.

/// A double as Redis parses one (`strtod`, whole string): `inf`, `-inf`, `1e3`, `.5`; no
/// spaces, no NaN.
pub fn parse_f64(b: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(b).ok()?;
    if s.is_empty() || s.len() > 64 || s.starts_with(|c: char| c.is_whitespace()) {
        return None;
    }
    let v: f64 = s.parse().ok()?;
    (!v.is_nan()).then_some(v)
}

/// A score in a reply, as Redis 7 prints doubles: the shortest text that reads back as the
/// same number, `%.17g`-style (an exponent below 1e-4 and from 1e17), `inf` / `-inf`.
pub fn fmt_score(v: f64) -> String {
    with_score_text(v, str::to_owned)
}

/// Below this an integral double's digits are exactly its integer's, and `%.17g` prints no
/// exponent for them.
const EXACT_INT: f64 = 9_007_199_254_740_992.0;

/// Calls `f` with `fmt_score(v)`'s text; an integral score (what most applications store)
/// is printed as its integer, without the float formatting or an allocation.
pub fn with_score_text<R>(v: f64, f: impl FnOnce(&str) -> R) -> R {
    if v.fract() == 0.0 && v.abs() < EXACT_INT {
        return f(itoa::Buffer::new().format(v as i64));
    }
    f(&fmt_score_slow(v))
}

fn fmt_score_slow(v: f64) -> String {
    if v.is_infinite() {
        return if v > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if v == 0.0 {
        return "0".into();
    }
    // Shortest round-trip digits and the decimal exponent.
    let e = format!("{v:e}");
    let (mantissa, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..17).contains(&exp) {
        format!("{v}")
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

/// INCRBYFLOAT's and HINCRBYFLOAT's result: plain decimal, no exponent.
pub fn fmt_human(v: f64) -> String {
    format!("{v}")
}

/// One end of a score range: `1.5`, `(1.5` (exclusive), `-inf`, `+inf`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScoreBound {
    pub value: f64,
    pub exclusive: bool,
}

impl ScoreBound {
    pub fn parse(b: &[u8]) -> Option<ScoreBound> {
        let (exclusive, rest) = match b.strip_prefix(b"(") {
            Some(r) => (true, r),
            None => (false, b),
        };
        Some(ScoreBound {
            value: parse_f64(rest)?,
            exclusive,
        })
    }

    /// `s` is at or above this lower bound.
    pub fn below(&self, s: f64) -> bool {
        if self.exclusive {
            s > self.value
        } else {
            s >= self.value
        }
    }

    /// `s` is at or under this upper bound.
    pub fn above(&self, s: f64) -> bool {
        if self.exclusive {
            s < self.value
        } else {
            s <= self.value
        }
    }
}

/// One end of a lexicographic range: `-`, `+`, `[a` (inclusive), `(a` (exclusive).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LexBound {
    Min,
    Max,
    Incl(Vec<u8>),
    Excl(Vec<u8>),
}

impl LexBound {
    pub fn parse(b: &[u8]) -> Option<LexBound> {
        match b.first()? {
            b'-' if b.len() == 1 => Some(LexBound::Min),
            b'+' if b.len() == 1 => Some(LexBound::Max),
            b'[' => Some(LexBound::Incl(b[1..].to_vec())),
            b'(' => Some(LexBound::Excl(b[1..].to_vec())),
            _ => None,
        }
    }

    /// `m` is at or above this lower bound.
    pub fn below(&self, m: &[u8]) -> bool {
        match self {
            LexBound::Min => true,
            LexBound::Max => false,
            LexBound::Incl(x) => m >= x.as_slice(),
            LexBound::Excl(x) => m > x.as_slice(),
        }
    }

    /// `m` is at or under this upper bound.
    pub fn above(&self, m: &[u8]) -> bool {
        match self {
            LexBound::Min => false,
            LexBound::Max => true,
            LexBound::Incl(x) => m <= x.as_slice(),
            LexBound::Excl(x) => m < x.as_slice(),
        }
    }
}

/// Redis's index range: negative counts from the end; the result is clamped, and `None`
/// when empty.
pub fn index_range(start: i64, stop: i64, len: u64) -> Option<(u64, u64)> {
    let len = len as i64;
    let s = if start < 0 {
        (len + start).max(0)
    } else {
        start
    };
    let e = if stop < 0 {
        len + stop
    } else {
        stop.min(len - 1)
    };
    (s <= e && s < len && e >= 0).then_some((s as u64, e as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_read_like_strtod() {
        assert_eq!(parse_f64(b"1.5"), Some(1.5));
        assert_eq!(parse_f64(b"-inf"), Some(f64::NEG_INFINITY));
        assert_eq!(parse_f64(b"+inf"), Some(f64::INFINITY));
        assert_eq!(parse_f64(b"1e3"), Some(1000.0));
        assert_eq!(parse_f64(b".5"), Some(0.5));
        for bad in [&b""[..], b"nan", b" 1", b"1 ", b"abc", b"1.5x"] {
            assert_eq!(parse_f64(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn scores_print_like_redis_7() {
        assert_eq!(fmt_score(1.0), "1");
        assert_eq!(fmt_score(-2.5), "-2.5");
        assert_eq!(fmt_score(1.1), "1.1");
        assert_eq!(fmt_score(0.1 + 0.2), "0.30000000000000004");
        assert_eq!(fmt_score(1e20), "1e+20");
        assert_eq!(fmt_score(1.5e-7), "1.5e-07");
        assert_eq!(fmt_score(0.0001), "0.0001");
        assert_eq!(fmt_score(f64::INFINITY), "inf");
        assert_eq!(fmt_score(f64::NEG_INFINITY), "-inf");
        // The integral fast path prints what the general one does.
        for v in [
            0.0,
            -0.0,
            7.0,
            -7.0,
            58_327.0,
            1e15,
            -1e15,
            EXACT_INT - 1.0,
            -(EXACT_INT - 1.0),
        ] {
            assert_eq!(fmt_score(v), fmt_score_slow(v), "{v}");
        }
        assert_eq!(fmt_score(1e17), "1e+17");
        assert_eq!(fmt_score(123456789.0), "123456789");
    }

    #[test]
    fn bounds_parse_and_compare() {
        let b = ScoreBound::parse(b"(1").unwrap();
        assert!(!b.below(1.0) && b.below(1.5) && !b.above(1.0) && b.above(0.5));
        let b = ScoreBound::parse(b"1").unwrap();
        assert!(b.below(1.0) && b.above(1.0));
        assert!(ScoreBound::parse(b"(").is_none());
        assert_eq!(LexBound::parse(b"a"), None);
        assert!(LexBound::parse(b"[b").unwrap().below(b"b"));
        assert!(!LexBound::parse(b"(b").unwrap().below(b"b"));
        assert!(LexBound::parse(b"+").unwrap().above(b"zzz"));
    }

    #[test]
    fn index_ranges_clamp_like_redis() {
        assert_eq!(index_range(0, -1, 5), Some((0, 4)));
        assert_eq!(index_range(-2, -1, 5), Some((3, 4)));
        assert_eq!(index_range(-100, 2, 5), Some((0, 2)));
        assert_eq!(index_range(3, 100, 5), Some((3, 4)));
        assert_eq!(index_range(5, 10, 5), None);
        assert_eq!(index_range(2, 1, 5), None);
        assert_eq!(index_range(0, -1, 0), None);
        assert_eq!(index_range(0, -6, 5), None);
    }
}
