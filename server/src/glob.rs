//! Redis glob patterns for `SCAN ... MATCH`: `*`, `?`, `[abc]`, `[^a-z]`, `\x` escapes.

/// Whether `s` matches `pat`, byte-wise. Iterative with one backtrack point for `*`, so the
/// cost is O(len(pat) × len(s)) at worst — no exponential blow-up on hostile patterns.
pub fn matches(pat: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pat.len() {
            match pat[p] {
                b'*' => {
                    while p < pat.len() && pat[p] == b'*' {
                        p += 1;
                    }
                    if p == pat.len() {
                        return true;
                    }
                    star = Some((p, i));
                    continue;
                }
                b'?' => {
                    p += 1;
                    i += 1;
                    continue;
                }
                b'[' => {
                    if let Some((ok, next)) = class(pat, p, s[i]) {
                        if ok {
                            p = next;
                            i += 1;
                            continue;
                        }
                    }
                }
                b'\\' if p + 1 < pat.len() => {
                    if pat[p + 1] == s[i] {
                        p += 2;
                        i += 1;
                        continue;
                    }
                }
                c => {
                    if c == s[i] {
                        p += 1;
                        i += 1;
                        continue;
                    }
                }
            }
        }
        // Mismatch: let the last `*` swallow one more byte, or fail.
        match star {
            Some((sp, si)) => {
                p = sp;
                i = si + 1;
                star = Some((sp, si + 1));
            }
            None => return false,
        }
    }
    while p < pat.len() && pat[p] == b'*' {
        p += 1;
    }
    p == pat.len()
}

/// Matches byte `c` against the class starting at `pat[p] == b'['`; returns (matched,
/// index after the class), or `None` if the class is unterminated (then `[` is literal).
fn class(pat: &[u8], p: usize, c: u8) -> Option<(bool, usize)> {
    let mut j = p + 1;
    let negate = j < pat.len() && pat[j] == b'^';
    if negate {
        j += 1;
    }
    let mut hit = false;
    let mut first = true;
    while j < pat.len() && (pat[j] != b']' || first) {
        first = false;
        if pat[j] == b'\\' && j + 1 < pat.len() {
            hit |= pat[j + 1] == c;
            j += 2;
        } else if j + 2 < pat.len() && pat[j + 1] == b'-' && pat[j + 2] != b']' {
            let (lo, hi) = if pat[j] <= pat[j + 2] {
                (pat[j], pat[j + 2])
            } else {
                (pat[j + 2], pat[j])
            };
            hit |= lo <= c && c <= hi;
            j += 3;
        } else {
            hit |= pat[j] == c;
            j += 1;
        }
    }
    if j >= pat.len() {
        return None;
    }
    Some((hit != negate, j + 1))
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn redis_glob_cases() {
        let yes = [
            ("*", "anything"),
            ("user:*", "user:42"),
            ("h?llo", "hello"),
            ("h[ae]llo", "hallo"),
            ("h[^e]llo", "hallo"),
            ("h[a-b]llo", "hbllo"),
            ("a*b*c", "aXXbYYc"),
            ("\\*x", "*x"),
            ("", ""),
            ("*a", "aaa"),
        ];
        for (p, s) in yes {
            assert!(matches(p.as_bytes(), s.as_bytes()), "{p} ~ {s}");
        }
        let no = [
            ("user:*", "usr:1"),
            ("h?llo", "hllo"),
            ("h[^e]llo", "hello"),
            ("a*b*c", "aXXbYY"),
            ("x", ""),
        ];
        for (p, s) in no {
            assert!(!matches(p.as_bytes(), s.as_bytes()), "{p} !~ {s}");
        }
        // Hostile pattern: stays fast.
        let s = vec![b'a'; 5000];
        assert!(!matches(b"*a*a*a*a*a*a*a*a*b", &s));
    }
}
