//! Go's `filepath.Match` for one path component: `*`, `?`, `[...]` (with `^` negation and
//! ranges) and `\` escapes. COPY and ADD sources use it per component, as Docker does.

/// Whether `s` has wildcard characters.
pub fn has_wildcard(s: &str) -> bool {
    let mut escaped = false;
    for c in s.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '*' | '?' | '[' => return true,
            _ => {}
        }
    }
    false
}

/// Matches one component `name` against `pattern`. A malformed pattern is an error.
pub fn matches(pattern: &str, name: &str) -> Result<bool, String> {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    match_at(&p, &n).map_err(|e| format!("bad pattern {pattern:?}: {e}"))
}

fn match_at(p: &[char], n: &[char]) -> Result<bool, &'static str> {
    if p.is_empty() {
        return Ok(n.is_empty());
    }
    match p[0] {
        '*' => {
            // Validate the rest of the pattern even if we match early.
            for skip in 0..=n.len() {
                if n[..skip].contains(&'/') {
                    break;
                }
                if match_at(&p[1..], &n[skip..])? {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        '?' => Ok(!n.is_empty() && n[0] != '/' && match_at(&p[1..], &n[1..])?),
        '[' => {
            let (set_len, matched) = class(&p[1..], n.first().copied())?;
            Ok(matched && match_at(&p[1 + set_len..], &n[1..])?)
        }
        '\\' => {
            let Some(&c) = p.get(1) else {
                return Err("trailing backslash");
            };
            Ok(n.first() == Some(&c) && match_at(&p[2..], &n[1..])?)
        }
        c => Ok(n.first() == Some(&c) && match_at(&p[1..], &n[1..])?),
    }
}

/// Parses a `[...]` class (after the `[`); returns its length including `]` and whether
/// `c` is in it.
fn class(p: &[char], c: Option<char>) -> Result<(usize, bool), &'static str> {
    let mut i = 0;
    let negate = p.first() == Some(&'^');
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let Some(&lo) = p.get(i) else {
            return Err("unterminated [");
        };
        if lo == ']' && !first {
            i += 1;
            break;
        }
        first = false;
        let (lo, next) = escaped_char(p, i)?;
        i = next;
        let mut hi = lo;
        if p.get(i) == Some(&'-') && p.get(i + 1) != Some(&']') {
            let (h, next) = escaped_char(p, i + 1)?;
            hi = h;
            i = next;
        }
        if let Some(c) = c {
            if lo <= c && c <= hi {
                matched = true;
            }
        }
    }
    let Some(c) = c else { return Ok((i, false)) };
    Ok((i, c != '/' && matched != negate))
}

fn escaped_char(p: &[char], i: usize) -> Result<(char, usize), &'static str> {
    match p.get(i) {
        Some('\\') => p
            .get(i + 1)
            .map(|c| (*c, i + 2))
            .ok_or("trailing backslash"),
        Some(c) => Ok((*c, i + 1)),
        None => Err("unterminated ["),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_match_table() {
        let cases = [
            ("abc", "abc", true),
            ("*", "abc", true),
            ("*c", "abc", true),
            ("a*", "a", true),
            ("a*/b", "abc/b", true),
            ("a*", "ab/c", false),
            ("a?c", "abc", true),
            ("[abc]x", "bx", true),
            ("[^abc]x", "bx", false),
            ("[a-c]x", "dx", false),
            ("[a-c]x", "cx", true),
            ("a\\*b", "a*b", true),
            ("a\\*b", "axb", false),
            ("*.txt", ".hidden.txt", true),
            ("[]a]", "]", true),
        ];
        for (p, n, want) in cases {
            assert_eq!(matches(p, n).unwrap(), want, "{p} vs {n}");
        }
        assert!(matches("[", "a").is_err());
        assert!(matches("a\\", "a").is_err());
        assert!(has_wildcard("*.go") && !has_wildcard("a\\*b") && !has_wildcard("plain"));
    }
}
