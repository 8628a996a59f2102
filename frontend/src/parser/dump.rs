//! BuildKit's `Node.Dump` format, used by `kiln parse --dump` and the parser tests.

use std::fmt::Write;

use super::{Ast, Node};

impl Node {
    /// Dumps one instruction: `(keyword ["flags"] "arg" ...)` without the parentheses.
    pub fn dump(&self) -> String {
        let mut s = self.value.to_lowercase();
        if !self.flags.is_empty() {
            let flags: Vec<String> = self.flags.iter().map(|f| go_quote(f)).collect();
            let _ = write!(s, " [{}]", flags.join(" "));
        }
        if let Some(sub) = &self.sub {
            let _ = write!(s, " ({})", sub.dump());
        }
        for arg in &self.args {
            s.push(' ');
            s.push_str(&go_quote(arg));
        }
        s.trim().to_string()
    }
}

impl Ast {
    /// Dumps the whole tree, one parenthesised instruction per line.
    pub fn dump(&self) -> String {
        let mut s = String::new();
        for child in &self.children {
            let _ = writeln!(s, "({})", child.dump());
        }
        s.trim().to_string()
    }
}

impl Ast {
    /// Writes the tree back as Dockerfile text: directives, then each instruction on one
    /// line (continuations joined, comments dropped) followed by its heredoc bodies.
    /// Parsing the result gives the same tree.
    pub fn to_dockerfile(&self) -> String {
        let mut s = String::new();
        for d in &self.directives.parsed {
            let _ = writeln!(s, "# {}={}", d.name, d.value);
        }
        for child in &self.children {
            s.push_str(&child.original);
            s.push('\n');
            for doc in &child.heredocs {
                s.push_str(&doc.content);
                if !doc.content.is_empty() && !doc.content.ends_with('\n') {
                    s.push('\n');
                }
                s.push_str(&doc.name);
                s.push('\n');
            }
        }
        s
    }
}

/// Quotes a string as Go's `strconv.Quote` does: `\"`, `\\`, the C escapes, `\xNN` for
/// other ASCII control characters, `\uNNNN`/`\UNNNNNNNN` for non-printable code points.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if !is_go_printable(c) => {
                if (c as u32) < 0x10000 {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                } else {
                    let _ = write!(out, "\\U{:08x}", c as u32);
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// An approximation of Go's `unicode.IsPrint` without Unicode tables: control, format,
/// separator (other than ASCII space), private-use and non-character code points are not
/// printable.
fn is_go_printable(c: char) -> bool {
    let u = c as u32;
    if c == ' ' {
        return true;
    }
    if c.is_control() || c.is_whitespace() {
        return false;
    }
    let format = matches!(u,
        0xad | 0x600..=0x605 | 0x61c | 0x6dd | 0x70f | 0x890..=0x891 | 0x8e2 | 0x180e
        | 0x200b..=0x200f | 0x202a..=0x202e | 0x2060..=0x2064 | 0x2066..=0x206f
        | 0xfeff | 0xfff9..=0xfffb | 0x110bd | 0x110cd | 0x13430..=0x1343f
        | 0x1bca0..=0x1bca3 | 0x1d173..=0x1d17a | 0xe0001 | 0xe0020..=0xe007f);
    let private_or_nonchar =
        matches!(u, 0xe000..=0xf8ff | 0xf0000.. | 0xfdd0..=0xfdef) || (u & 0xfffe) == 0xfffe;
    !(format || private_or_nonchar)
}

#[cfg(test)]
mod tests {
    use super::go_quote;

    #[test]
    fn quotes_like_go() {
        assert_eq!(go_quote("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(go_quote("\u{0}\u{1b}\t\n"), r#""\x00\x1b\t\n""#);
        assert_eq!(go_quote("♥☃한국어"), "\"♥☃한국어\"");
        assert_eq!(
            go_quote("\u{a0}\u{feff}\u{10ffff}"),
            r#""\u00a0\ufeff\U0010ffff""#
        );
    }
}
