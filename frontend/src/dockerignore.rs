//! `.dockerignore` handling with Docker / BuildKit semantics.
//!
//! This module reproduces how Docker decides which files of a local build
//! context are left out:
//!
//! * [`parse_ignore_file`] reads an ignore file the way
//!   `github.com/moby/patternmatcher/ignorefile.ReadAll` does (UTF-8 BOM on the
//!   first line, `#` comments only in column one, whitespace trimming, `!`
//!   exceptions, Go `filepath.Clean`, leading `/` dropped).
//! * [`PatternMatcher`] reproduces `github.com/moby/patternmatcher`: every
//!   pattern is a Go `filepath.Match` glob anchored at the context root, plus
//!   `**`, translated to a regular expression exactly the way moby builds it
//!   (including its quirks, e.g. `[^a]` may match `/`, `\d` is a digit class,
//!   `**foo` is a plain suffix test).  The last matching pattern wins and a
//!   pattern also matches everything below a directory it matches.
//! * [`PatternMatcher::can_skip_dir`] tells a context walker whether it may
//!   prune a whole excluded directory without missing a path that a later
//!   `!` exception takes back in.
//! * [`load_for`] finds the ignore file BuildKit uses for a given Dockerfile.
//!
//! Two matching flavours exist upstream and both are provided:
//! [`PatternMatcher::matches`] is moby's stateless `MatchesOrParentMatches`,
//! while [`PatternMatcher::matches_with_parent`] / [`PatternMatcher::matches_walk`]
//! reproduce `MatchesUsingParentResults`, which is what BuildKit's context
//! walker (`tonistiigi/fsutil`) actually uses while sending a context.  They
//! only differ for unusual orderings: with `a/b` then `!a`, `a/b` is kept by
//! `matches` but excluded by the walk; with `a`, `!a/b/c`, `a/b` it is the
//! other way round for `a/b/c`.  A context walker that wants BuildKit's exact
//! result should carry a [`MatchInfo`] per directory and call
//! [`PatternMatcher::matches_with_parent`], pruning directories for which
//! [`PatternMatcher::can_skip_dir`] is true.
//!
//! Paths handed to the matching functions are relative to the context root,
//! use `/` as separator and are expected to be clean (no empty, `.` or `..`
//! components), like the paths a directory walker produces.

use std::fmt;
use std::path::{Path, PathBuf};

use regex::Regex;

/// Name of the context-wide ignore file.
pub const DOCKERIGNORE_FILE: &str = ".dockerignore";

/// Errors produced while loading or compiling ignore patterns.
#[derive(thiserror::Error, Debug)]
pub enum IgnoreError {
    /// A pattern is malformed (Docker would fail the build on it).
    #[error("invalid .dockerignore pattern {pattern:?}: {reason}")]
    BadPattern {
        /// The pattern as it was handed to [`PatternMatcher::new`].
        pattern: String,
        /// Why the pattern was rejected.
        reason: String,
    },
    /// An ignore file exists but could not be read.
    #[error("failed to read {}: {source}", path.display())]
    Io {
        /// The file that could not be read.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
}

// ---------------------------------------------------------------------------
// Reading ignore files
// ---------------------------------------------------------------------------

/// Parses the content of an ignore file into patterns, like moby's
/// `ignorefile.ReadAll`.
///
/// Per line: a UTF-8 BOM is stripped from the first line; a line whose first
/// character is `#` is a comment (a `#` after leading blanks is not); the line
/// is trimmed and skipped when empty; a leading `!` marks an exception and the
/// rest is trimmed again; the pattern is cleaned with Go's `filepath.Clean`
/// and a leading `/` is dropped (unless the pattern is just `/`).  Exceptions
/// are returned with their `!` prefix.  A lone `!` is kept as `"!"`; it is
/// rejected later by [`PatternMatcher::new`], as Docker does.
pub fn parse_ignore_file(content: &str) -> Vec<String> {
    let content = content.strip_prefix('\u{feff}').unwrap_or(content);
    let mut out = Vec::new();
    for raw in content.split('\n') {
        // bufio.ScanLines drops one trailing carriage return.
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.starts_with('#') {
            continue;
        }
        let mut pattern = line.trim();
        if pattern.is_empty() {
            continue;
        }
        let invert = pattern.starts_with('!');
        if invert {
            pattern = pattern[1..].trim();
        }
        let mut cleaned = String::new();
        if !pattern.is_empty() {
            cleaned = go_clean(pattern);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
        }
        if invert {
            cleaned.insert(0, '!');
        }
        out.push(cleaned);
    }
    out
}

/// Finds and parses the ignore file that applies to a build, the way
/// BuildKit's Dockerfile frontend does.
///
/// BuildKit first reads `<Dockerfile file name>.dockerignore` from the
/// directory that holds the Dockerfile (e.g. `build/app.Dockerfile` uses
/// `build/app.Dockerfile.dockerignore`); if that file exists it wins, even when
/// it is empty.  Otherwise `<context_dir>/.dockerignore` is used.  `Ok(None)`
/// means neither exists.  `dockerfile` is used as given (a relative path is
/// resolved against the current directory, like `docker build -f`).
///
/// A candidate that is missing, or is a directory, counts as absent; any other
/// read error is reported (BuildKit silently ignores those).  Non-UTF-8 bytes
/// are replaced with U+FFFD.  The ignore files (and the Dockerfile) are not
/// protected from their own patterns: listing them excludes them from the
/// context, which is what BuildKit does too.
pub fn load_for(
    context_dir: &Path,
    dockerfile: &Path,
) -> Result<Option<(PathBuf, Vec<String>)>, IgnoreError> {
    if let Some(name) = dockerfile.file_name() {
        let mut ignore_name = name.to_os_string();
        ignore_name.push(DOCKERIGNORE_FILE);
        let candidate = dockerfile.with_file_name(ignore_name);
        if let Some(content) = read_optional(&candidate)? {
            let patterns = parse_ignore_file(&content);
            return Ok(Some((candidate, patterns)));
        }
    }
    let candidate = context_dir.join(DOCKERIGNORE_FILE);
    Ok(read_optional(&candidate)?.map(|content| {
        let patterns = parse_ignore_file(&content);
        (candidate, patterns)
    }))
}

/// The patterns of `dir/.dockerignore` alone (`None`: there is none): what a named
/// local context (`--build-context NAME=DIR`) leaves out, as BuildKit reads it.
pub fn load_in(dir: &Path) -> Result<Option<Vec<String>>, IgnoreError> {
    Ok(read_optional(&dir.join(DOCKERIGNORE_FILE))?.map(|c| parse_ignore_file(&c)))
}

fn read_optional(path: &Path) -> Result<Option<String>, IgnoreError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(err)
            if matches!(
                err.kind(),
                std::io::ErrorKind::NotFound
                    | std::io::ErrorKind::IsADirectory
                    | std::io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(None)
        }
        Err(source) => Err(IgnoreError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

// ---------------------------------------------------------------------------
// Go path helpers
// ---------------------------------------------------------------------------

/// Go's `path.Clean` (which is `filepath.Clean` on Unix).
fn go_clean(path: &str) -> String {
    if path.is_empty() {
        return ".".to_string();
    }
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for elem in path.split('/') {
        match elem {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|last| *last != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            _ => parts.push(elem),
        }
    }
    let joined = parts.join("/");
    if rooted {
        format!("/{joined}")
    } else if joined.is_empty() {
        ".".to_string()
    } else {
        joined
    }
}

/// Go's `filepath.Dir` on Unix.
fn go_dir(path: &str) -> String {
    let end = path.rfind('/').map_or(0, |i| i + 1);
    go_clean(&path[..end])
}

/// The parent directories of `file` checked by moby's parent matching:
/// `filepath.Dir(file)` split on `/`, as cumulative prefixes.
fn parent_prefixes(file: &str) -> Vec<String> {
    let parent = go_dir(file);
    if parent == "." {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut acc = String::new();
    for (i, seg) in parent.split('/').enumerate() {
        if i > 0 {
            acc.push('/');
        }
        acc.push_str(seg);
        out.push(acc.clone());
    }
    out
}

// ---------------------------------------------------------------------------
// Go filepath.Match syntax validation
// ---------------------------------------------------------------------------

/// Reports the error Go's `filepath.Match(pattern, ".")` would return.  Go
/// checks every chunk of the pattern regardless of the name, so this only has
/// to validate the chunks.
fn validate_glob(pattern: &str) -> Result<(), String> {
    let mut rest = pattern;
    while !rest.is_empty() {
        let (chunk, after) = scan_chunk(rest);
        validate_chunk(chunk)?;
        rest = after;
    }
    Ok(())
}

/// Go's `scanChunk`: skips leading stars and returns the next chunk (up to an
/// unbracketed `*`) and the remainder.
fn scan_chunk(pattern: &str) -> (&str, &str) {
    let pattern = pattern.trim_start_matches('*');
    let bytes = pattern.as_bytes();
    let mut in_range = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if i + 1 < bytes.len() => i += 1,
            b'[' => in_range = true,
            b']' => in_range = false,
            b'*' if !in_range => break,
            _ => {}
        }
        i += 1;
    }
    // `i` stops on an ASCII `*` or at the end, both char boundaries.
    pattern.split_at(i)
}

/// The syntax checks of Go's `matchChunk`.
fn validate_chunk(chunk: &str) -> Result<(), String> {
    let mut rest = chunk;
    while let Some(c) = rest.chars().next() {
        match c {
            '[' => {
                rest = &rest[1..];
                if rest.starts_with('^') {
                    rest = &rest[1..];
                }
                let mut ranges = 0;
                loop {
                    if ranges > 0 && rest.starts_with(']') {
                        rest = &rest[1..];
                        break;
                    }
                    rest = glob_class_char(rest)?;
                    if let Some(after_dash) = rest.strip_prefix('-') {
                        rest = glob_class_char(after_dash)?;
                    }
                    ranges += 1;
                }
            }
            '\\' => {
                rest = &rest[1..];
                let Some(escaped) = rest.chars().next() else {
                    return Err("trailing backslash".to_string());
                };
                rest = &rest[escaped.len_utf8()..];
            }
            _ => rest = &rest[c.len_utf8()..],
        }
    }
    Ok(())
}

/// Go's `getEsc`: one (possibly escaped) class character; the class must
/// continue after it.
fn glob_class_char(chunk: &str) -> Result<&str, String> {
    let mut rest = chunk;
    match rest.chars().next() {
        None => return Err("unterminated character class".to_string()),
        Some('-') | Some(']') => {
            return Err("character class has an empty range or an unexpected `-`/`]`".to_string());
        }
        Some('\\') => {
            rest = &rest[1..];
            if rest.is_empty() {
                return Err("unterminated character class".to_string());
            }
        }
        Some(_) => {}
    }
    let c = rest.chars().next().unwrap_or('\0');
    rest = &rest[c.len_utf8()..];
    if rest.is_empty() {
        return Err("unterminated character class".to_string());
    }
    Ok(rest)
}

// ---------------------------------------------------------------------------
// moby's glob -> regexp translation
// ---------------------------------------------------------------------------

/// How a pattern is matched, as classified by moby's `compile`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchKind {
    /// No wildcards: the path must equal the pattern.
    Exact,
    /// A literal followed by a final `**`: the path must start with the literal.
    Prefix,
    /// A leading `**` followed by literal text: the path must end with that
    /// text (`**/foo` also matches `foo`).  Note that `**foo` thus matches
    /// `xfoo`, as in Docker.
    Suffix,
    /// Anything else: matched with the translated regular expression.
    Regex,
}

/// Builds the Go regular expression moby's `Pattern.compile` builds for a
/// cleaned pattern, and the match kind it detects.
fn moby_regex(text: &str) -> (MatchKind, String) {
    let chars: Vec<char> = text.chars().collect();
    let mut re = String::from("^");
    let mut kind = MatchKind::Exact;
    let mut idx = 0;
    let mut iteration = 0usize;
    while idx < chars.len() {
        let ch = chars[idx];
        idx += 1;
        match ch {
            '*' if chars.get(idx) == Some(&'*') => {
                idx += 1;
                // `**/` is treated as `**`.
                if chars.get(idx) == Some(&'/') {
                    idx += 1;
                }
                if idx == chars.len() {
                    if kind == MatchKind::Exact {
                        kind = MatchKind::Prefix;
                    } else {
                        re.push_str(".*");
                        kind = MatchKind::Regex;
                    }
                } else {
                    re.push_str("(.*/)?");
                    kind = MatchKind::Regex;
                }
                if iteration == 0 {
                    kind = MatchKind::Suffix;
                }
            }
            '*' => {
                re.push_str("[^/]*");
                kind = MatchKind::Regex;
            }
            '?' => {
                re.push_str("[^/]");
                kind = MatchKind::Regex;
            }
            '.' | '+' | '(' | ')' | '|' | '{' | '}' | '$' => {
                re.push('\\');
                re.push(ch);
            }
            '\\' => {
                if let Some(&next) = chars.get(idx) {
                    idx += 1;
                    re.push('\\');
                    re.push(next);
                    kind = MatchKind::Regex;
                } else {
                    re.push('\\');
                }
            }
            '[' | ']' => {
                re.push(ch);
                kind = MatchKind::Regex;
            }
            _ => re.push(ch),
        }
        iteration += 1;
    }
    if kind == MatchKind::Regex {
        re.push('$');
    }
    (kind, re)
}

// ---------------------------------------------------------------------------
// A parser for the subset of Go (RE2, `syntax.Perl` flags) regexp syntax that
// moby's translation can produce.  The parsed tree is re-emitted as an
// unambiguous Rust regex and also compiled to a tiny NFA used for directory
// pruning analysis.
// ---------------------------------------------------------------------------

const DIGIT: &[(char, char)] = &[('0', '9')];
const WORD: &[(char, char)] = &[('0', '9'), ('A', 'Z'), ('_', '_'), ('a', 'z')];
const PERL_SPACE: &[(char, char)] = &[('\t', '\n'), ('\x0c', '\r'), (' ', ' ')];
const ALNUM: &[(char, char)] = &[('0', '9'), ('A', 'Z'), ('a', 'z')];
const ALPHA: &[(char, char)] = &[('A', 'Z'), ('a', 'z')];
const ASCII: &[(char, char)] = &[('\0', '\x7f')];
const BLANK: &[(char, char)] = &[('\t', '\t'), (' ', ' ')];
const CNTRL: &[(char, char)] = &[('\0', '\x1f'), ('\x7f', '\x7f')];
const GRAPH: &[(char, char)] = &[('!', '~')];
const LOWER: &[(char, char)] = &[('a', 'z')];
const PRINT: &[(char, char)] = &[(' ', '~')];
const PUNCT: &[(char, char)] = &[('!', '/'), (':', '@'), ('[', '`'), ('{', '~')];
const POSIX_SPACE: &[(char, char)] = &[('\t', '\r'), (' ', ' ')];
const UPPER: &[(char, char)] = &[('A', 'Z')];
const XDIGIT: &[(char, char)] = &[('0', '9'), ('A', 'F'), ('a', 'f')];

/// One member of a character class.
#[derive(Clone, Debug)]
enum ClassItem {
    /// An inclusive range of characters.
    Range(char, char),
    /// A fixed ASCII set (`\d`, `[:alpha:]`, ...), possibly negated.
    Set {
        ranges: &'static [(char, char)],
        negated: bool,
    },
    /// A one-letter Unicode general category (`\pL`) or `Any`.
    Unicode { name: &'static str, negated: bool },
}

/// A set of characters matching exactly one character.
#[derive(Clone, Debug)]
struct CharClass {
    negated: bool,
    items: Vec<ClassItem>,
}

/// Three-valued membership, `Maybe` for Unicode categories.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tri {
    Yes,
    No,
    Maybe,
}

impl CharClass {
    fn literal(c: char) -> Self {
        CharClass {
            negated: false,
            items: vec![ClassItem::Range(c, c)],
        }
    }

    fn any_but_newline() -> Self {
        CharClass {
            negated: true,
            items: vec![ClassItem::Range('\n', '\n')],
        }
    }

    fn single(item: ClassItem) -> Self {
        CharClass {
            negated: false,
            items: vec![item],
        }
    }

    /// Whether `c` may belong to the class (over-approximated for Unicode
    /// categories).
    fn may_contain(&self, c: char) -> bool {
        let mut found = Tri::No;
        for item in &self.items {
            let t = match item {
                ClassItem::Range(lo, hi) => {
                    if (*lo..=*hi).contains(&c) {
                        Tri::Yes
                    } else {
                        Tri::No
                    }
                }
                ClassItem::Set { ranges, negated } => {
                    let inside = ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c));
                    if inside != *negated {
                        Tri::Yes
                    } else {
                        Tri::No
                    }
                }
                ClassItem::Unicode {
                    name: "Any",
                    negated,
                } => {
                    if *negated {
                        Tri::No
                    } else {
                        Tri::Yes
                    }
                }
                ClassItem::Unicode { .. } => Tri::Maybe,
            };
            match t {
                Tri::Yes => {
                    found = Tri::Yes;
                    break;
                }
                Tri::Maybe => found = Tri::Maybe,
                Tri::No => {}
            }
        }
        match (found, self.negated) {
            (Tri::Maybe, _) => true,
            (Tri::Yes, negated) => !negated,
            (Tri::No, negated) => negated,
        }
    }

    fn emit(&self, out: &mut String) {
        if !self.negated
            && let [ClassItem::Range(lo, hi)] = self.items.as_slice()
            && lo == hi
        {
            let mut buf = [0u8; 4];
            out.push_str(&regex::escape(lo.encode_utf8(&mut buf)));
            return;
        }
        out.push('[');
        if self.negated {
            out.push('^');
        }
        for item in &self.items {
            match item {
                ClassItem::Range(lo, hi) => push_range(out, *lo, *hi),
                ClassItem::Set { ranges, negated } => {
                    if *negated {
                        out.push_str("[^");
                    }
                    for (lo, hi) in ranges.iter() {
                        push_range(out, *lo, *hi);
                    }
                    if *negated {
                        out.push(']');
                    }
                }
                ClassItem::Unicode { name, negated } => {
                    let body = match *name {
                        "Any" => r"\x{0}-\x{10FFFF}".to_string(),
                        // Go's `C` is Cc|Cf|Co|Cs; Rust's also has Cn.
                        "C" => r"\p{Cc}\p{Cf}\p{Co}".to_string(),
                        other => format!(r"\p{{{other}}}"),
                    };
                    if *negated {
                        out.push_str("[^");
                        out.push_str(&body);
                        out.push(']');
                    } else {
                        out.push_str(&body);
                    }
                }
            }
        }
        out.push(']');
    }
}

fn push_range(out: &mut String, lo: char, hi: char) {
    out.push_str(&format!(r"\x{{{:X}}}", lo as u32));
    if hi != lo {
        out.push_str(&format!(r"-\x{{{:X}}}", hi as u32));
    }
}

#[derive(Clone, Copy, Debug)]
enum Look {
    BeginText,
    EndText,
    WordBoundary,
    NotWordBoundary,
}

#[derive(Clone, Copy, Debug)]
enum RepeatOp {
    Star,
    Plus,
    Quest,
}

#[derive(Clone, Debug)]
enum Node {
    Class(CharClass),
    Look(Look),
    Concat(Vec<Node>),
    Alt(Vec<Node>),
    Group(Box<Node>),
    Repeat(Box<Node>, RepeatOp),
}

impl Node {
    fn emit(&self, out: &mut String) {
        match self {
            Node::Class(class) => class.emit(out),
            Node::Look(look) => out.push_str(match look {
                Look::BeginText => r"\A",
                Look::EndText => r"\z",
                Look::WordBoundary => r"(?-u:\b)",
                Look::NotWordBoundary => r"(?-u:\B)",
            }),
            Node::Concat(items) => items.iter().for_each(|n| n.emit(out)),
            Node::Alt(branches) => {
                out.push_str("(?:");
                for (i, branch) in branches.iter().enumerate() {
                    if i > 0 {
                        out.push('|');
                    }
                    branch.emit(out);
                }
                out.push(')');
            }
            Node::Group(inner) => {
                out.push_str("(?:");
                inner.emit(out);
                out.push(')');
            }
            Node::Repeat(inner, op) => {
                out.push_str("(?:");
                inner.emit(out);
                out.push(')');
                out.push(match op {
                    RepeatOp::Star => '*',
                    RepeatOp::Plus => '+',
                    RepeatOp::Quest => '?',
                });
            }
        }
    }
}

struct GoRegexParser<'a> {
    src: &'a str,
    pos: usize,
}

impl<'a> GoRegexParser<'a> {
    fn parse(src: &'a str) -> Result<Node, String> {
        let mut parser = GoRegexParser { src, pos: 0 };
        let node = parser.parse_alternation(0)?;
        if parser.pos < src.len() {
            return Err("unexpected )".to_string());
        }
        Ok(node)
    }

    fn rest(&self) -> &'a str {
        &self.src[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn parse_alternation(&mut self, depth: usize) -> Result<Node, String> {
        let mut branches = Vec::new();
        let mut current: Vec<Node> = Vec::new();
        let mut last_was_repeat = false;
        while let Some(c) = self.peek() {
            let mut is_repeat = false;
            match c {
                '|' => {
                    self.bump();
                    branches.push(Node::Concat(std::mem::take(&mut current)));
                }
                ')' => {
                    if depth == 0 {
                        return Err("unexpected )".to_string());
                    }
                    break;
                }
                '(' => {
                    self.bump();
                    if self.peek() == Some('?') {
                        return Err("unsupported group syntax `(?`".to_string());
                    }
                    let inner = self.parse_alternation(depth + 1)?;
                    if self.bump() != Some(')') {
                        return Err("missing closing )".to_string());
                    }
                    current.push(Node::Group(Box::new(inner)));
                }
                '*' | '+' | '?' => {
                    self.bump();
                    // A trailing `?` only makes the repetition non-greedy.
                    if self.peek() == Some('?') {
                        self.bump();
                    }
                    if last_was_repeat {
                        return Err("invalid nested repetition operator".to_string());
                    }
                    let Some(prev) = current.pop() else {
                        return Err("missing argument to repetition operator".to_string());
                    };
                    let op = match c {
                        '*' => RepeatOp::Star,
                        '+' => RepeatOp::Plus,
                        _ => RepeatOp::Quest,
                    };
                    current.push(Node::Repeat(Box::new(prev), op));
                    is_repeat = true;
                }
                '^' => {
                    self.bump();
                    current.push(Node::Look(Look::BeginText));
                }
                '$' => {
                    self.bump();
                    current.push(Node::Look(Look::EndText));
                }
                '.' => {
                    self.bump();
                    current.push(Node::Class(CharClass::any_but_newline()));
                }
                '[' => current.push(Node::Class(self.parse_class()?)),
                '\\' => self.parse_backslash(&mut current)?,
                _ => {
                    self.bump();
                    current.push(Node::Class(CharClass::literal(c)));
                }
            }
            last_was_repeat = is_repeat;
        }
        branches.push(Node::Concat(current));
        if branches.len() == 1 {
            Ok(branches.pop().unwrap_or(Node::Concat(Vec::new())))
        } else {
            Ok(Node::Alt(branches))
        }
    }

    /// A backslash outside a character class.
    fn parse_backslash(&mut self, current: &mut Vec<Node>) -> Result<(), String> {
        let after = &self.rest()[1..];
        match after.chars().next() {
            Some('A') => {
                self.pos += 2;
                current.push(Node::Look(Look::BeginText));
            }
            Some('z') => {
                self.pos += 2;
                current.push(Node::Look(Look::EndText));
            }
            Some('b') => {
                self.pos += 2;
                current.push(Node::Look(Look::WordBoundary));
            }
            Some('B') => {
                self.pos += 2;
                current.push(Node::Look(Look::NotWordBoundary));
            }
            Some('C') => return Err(r"invalid escape sequence `\C`".to_string()),
            Some('Q') => {
                self.pos += 2;
                let rest = self.rest();
                let (literal, consumed) = match rest.find(r"\E") {
                    Some(i) => (&rest[..i], i + 2),
                    None => (rest, rest.len()),
                };
                current.extend(literal.chars().map(|c| Node::Class(CharClass::literal(c))));
                self.pos += consumed;
            }
            Some('p') | Some('P') => {
                let item = self.parse_unicode_class()?;
                current.push(Node::Class(CharClass::single(item)));
            }
            _ => {
                if let Some(item) = perl_class(self.rest()) {
                    self.pos += 2;
                    current.push(Node::Class(CharClass::single(item)));
                } else {
                    let c = self.parse_escape()?;
                    current.push(Node::Class(CharClass::literal(c)));
                }
            }
        }
        Ok(())
    }

    /// Go's `parseEscape`: a single escaped character.
    fn parse_escape(&mut self) -> Result<char, String> {
        self.bump(); // the backslash
        let Some(c) = self.bump() else {
            return Err("trailing backslash at end of expression".to_string());
        };
        let invalid = || Err(format!(r"invalid escape sequence `\{c}`"));
        match c {
            '1'..='7' | '0' => {
                if c != '0' && !self.peek().is_some_and(|d| ('0'..='7').contains(&d)) {
                    // A single non-zero digit would be a backreference.
                    return invalid();
                }
                let mut value = c as u32 - '0' as u32;
                for _ in 1..3 {
                    match self.peek() {
                        Some(d @ '0'..='7') => {
                            self.bump();
                            value = value * 8 + (d as u32 - '0' as u32);
                        }
                        _ => break,
                    }
                }
                char::from_u32(value).map_or_else(invalid, Ok)
            }
            'x' => {
                let Some(first) = self.bump() else {
                    return invalid();
                };
                if first == '{' {
                    let mut value: u32 = 0;
                    let mut digits = 0;
                    loop {
                        let Some(d) = self.bump() else {
                            return invalid();
                        };
                        if d == '}' {
                            break;
                        }
                        let Some(v) = d.to_digit(16) else {
                            return invalid();
                        };
                        value = value * 16 + v;
                        if value > 0x10_FFFF {
                            return invalid();
                        }
                        digits += 1;
                    }
                    if digits == 0 {
                        return invalid();
                    }
                    return char::from_u32(value).map_or_else(invalid, Ok);
                }
                let second = self.bump();
                match (first.to_digit(16), second.and_then(|s| s.to_digit(16))) {
                    (Some(x), Some(y)) => char::from_u32(x * 16 + y).map_or_else(invalid, Ok),
                    _ => invalid(),
                }
            }
            'a' => Ok('\x07'),
            'f' => Ok('\x0c'),
            'n' => Ok('\n'),
            'r' => Ok('\r'),
            't' => Ok('\t'),
            'v' => Ok('\x0b'),
            c if c.is_ascii() && !c.is_ascii_alphanumeric() => Ok(c),
            _ => invalid(),
        }
    }

    /// Go's `parseUnicodeClass` for `\pX` / `\PX` (the braced form can not be
    /// produced by moby, which escapes `{`).
    fn parse_unicode_class(&mut self) -> Result<ClassItem, String> {
        let start = self.pos;
        self.bump(); // backslash
        let mut negated = self.bump() == Some('P');
        let name: String = match self.bump() {
            None => String::new(),
            Some('{') => {
                let rest = self.rest();
                let Some(end) = rest.find('}') else {
                    return Err("invalid character class range".to_string());
                };
                self.pos += end + 1;
                rest[..end].to_string()
            }
            Some(c) => c.to_string(),
        };
        let name = match name.strip_prefix('^') {
            Some(stripped) => {
                negated = !negated;
                stripped.to_string()
            }
            None => name,
        };
        let name: &'static str = match name.as_str() {
            "C" => "C",
            "L" => "L",
            "M" => "M",
            "N" => "N",
            "P" => "P",
            "S" => "S",
            "Z" => "Z",
            "Any" => "Any",
            _ => {
                return Err(format!(
                    "invalid character class range `{}`",
                    &self.src[start..self.pos]
                ));
            }
        };
        Ok(ClassItem::Unicode { name, negated })
    }

    /// Go's `parseClass` (with Perl flags: `-` allowed anywhere, negated
    /// classes match newlines).
    fn parse_class(&mut self) -> Result<CharClass, String> {
        self.bump(); // '['
        let mut negated = false;
        if self.peek() == Some('^') {
            self.bump();
            negated = true;
        }
        let mut items = Vec::new();
        let mut first = true;
        loop {
            let rest = self.rest();
            if rest.is_empty() {
                return Err("missing closing ]".to_string());
            }
            if !first && rest.starts_with(']') {
                self.bump();
                break;
            }
            first = false;
            if rest.len() > 2
                && rest.starts_with("[:")
                && let Some(i) = rest[2..].find(":]")
            {
                let name = &rest[..i + 4];
                let Some(item) = posix_class(name) else {
                    return Err(format!("invalid character class range `{name}`"));
                };
                self.pos += name.len();
                items.push(item);
                continue;
            }
            if rest.starts_with(r"\p") || rest.starts_with(r"\P") {
                items.push(self.parse_unicode_class()?);
                continue;
            }
            if let Some(item) = perl_class(rest) {
                self.pos += 2;
                items.push(item);
                continue;
            }
            let lo = self.parse_class_char()?;
            let mut hi = lo;
            let rest = self.rest();
            if rest.len() >= 2 && rest.starts_with('-') && !rest[1..].starts_with(']') {
                self.bump();
                hi = self.parse_class_char()?;
                if hi < lo {
                    return Err(format!("invalid character class range `{lo}-{hi}`"));
                }
            }
            items.push(ClassItem::Range(lo, hi));
        }
        Ok(CharClass { negated, items })
    }

    fn parse_class_char(&mut self) -> Result<char, String> {
        match self.peek() {
            None => Err("missing closing ]".to_string()),
            Some('\\') => self.parse_escape(),
            Some(c) => {
                self.bump();
                Ok(c)
            }
        }
    }
}

fn perl_class(s: &str) -> Option<ClassItem> {
    let mut chars = s.chars();
    if chars.next() != Some('\\') {
        return None;
    }
    let (ranges, negated) = match chars.next()? {
        'd' => (DIGIT, false),
        'D' => (DIGIT, true),
        's' => (PERL_SPACE, false),
        'S' => (PERL_SPACE, true),
        'w' => (WORD, false),
        'W' => (WORD, true),
        _ => return None,
    };
    Some(ClassItem::Set { ranges, negated })
}

fn posix_class(name: &str) -> Option<ClassItem> {
    let inner = name.strip_prefix("[:")?.strip_suffix(":]")?;
    let (inner, negated) = match inner.strip_prefix('^') {
        Some(stripped) => (stripped, true),
        None => (inner, false),
    };
    let ranges = match inner {
        "alnum" => ALNUM,
        "alpha" => ALPHA,
        "ascii" => ASCII,
        "blank" => BLANK,
        "cntrl" => CNTRL,
        "digit" => DIGIT,
        "graph" => GRAPH,
        "lower" => LOWER,
        "print" => PRINT,
        "punct" => PUNCT,
        "space" => POSIX_SPACE,
        "upper" => UPPER,
        "word" => WORD,
        "xdigit" => XDIGIT,
        _ => return None,
    };
    Some(ClassItem::Set { ranges, negated })
}

// ---------------------------------------------------------------------------
// A small Thompson NFA over the parsed tree, used to decide (conservatively)
// whether a pattern could match some path below a directory.
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum NfaState {
    Char(CharClass, usize),
    Split(Vec<usize>),
    Match,
}

#[derive(Clone, Debug)]
struct Nfa {
    states: Vec<NfaState>,
    start: usize,
}

impl Nfa {
    fn build(node: &Node) -> Nfa {
        let mut states = vec![NfaState::Match];
        let start = Self::add(&mut states, node, 0);
        Nfa { states, start }
    }

    fn push(states: &mut Vec<NfaState>, state: NfaState) -> usize {
        states.push(state);
        states.len() - 1
    }

    /// Adds the states for `node`, continuing at `next`; returns the entry.
    /// Assertions are treated as always satisfiable (over-approximation).
    fn add(states: &mut Vec<NfaState>, node: &Node, next: usize) -> usize {
        match node {
            Node::Class(class) => Self::push(states, NfaState::Char(class.clone(), next)),
            Node::Look(_) => next,
            Node::Concat(items) => items
                .iter()
                .rev()
                .fold(next, |to, item| Self::add(states, item, to)),
            Node::Alt(branches) => {
                let entries = branches
                    .iter()
                    .map(|branch| Self::add(states, branch, next))
                    .collect();
                Self::push(states, NfaState::Split(entries))
            }
            Node::Group(inner) => Self::add(states, inner, next),
            Node::Repeat(inner, RepeatOp::Quest) => {
                let body = Self::add(states, inner, next);
                Self::push(states, NfaState::Split(vec![body, next]))
            }
            Node::Repeat(inner, op) => {
                let lp = Self::push(states, NfaState::Split(Vec::new()));
                let body = Self::add(states, inner, lp);
                states[lp] = NfaState::Split(vec![body, next]);
                match op {
                    RepeatOp::Plus => body,
                    _ => lp,
                }
            }
        }
    }

    fn close(&self, from: usize, set: &mut [bool]) {
        let mut stack = vec![from];
        while let Some(s) = stack.pop() {
            if set[s] {
                continue;
            }
            set[s] = true;
            if let NfaState::Split(targets) = &self.states[s] {
                stack.extend(targets.iter().copied());
            }
        }
    }

    /// Whether some non-empty `suffix` could make `prefix + suffix` match.
    /// May answer `true` when the real regex can not match (never the
    /// reverse).
    fn may_match_extension(&self, prefix: &str) -> bool {
        let n = self.states.len();
        let mut current = vec![false; n];
        self.close(self.start, &mut current);
        for c in prefix.chars() {
            let mut next = vec![false; n];
            let mut any = false;
            for (s, active) in current.iter().enumerate() {
                if let (true, NfaState::Char(class, to)) = (*active, &self.states[s])
                    && class.may_contain(c)
                {
                    self.close(*to, &mut next);
                    any = true;
                }
            }
            if !any {
                return false;
            }
            current = next;
        }
        // Consume at least one more character, then look for Match.
        let mut seen = vec![false; n];
        let mut stack: Vec<usize> = current
            .iter()
            .enumerate()
            .filter_map(|(s, active)| match (*active, &self.states[s]) {
                (true, NfaState::Char(_, to)) => Some(*to),
                _ => None,
            })
            .collect();
        while let Some(s) = stack.pop() {
            if seen[s] {
                continue;
            }
            seen[s] = true;
            match &self.states[s] {
                NfaState::Match => return true,
                NfaState::Char(_, to) => stack.push(*to),
                NfaState::Split(targets) => stack.extend(targets.iter().copied()),
            }
        }
        false
    }
}

// ---------------------------------------------------------------------------
// Patterns and the matcher
// ---------------------------------------------------------------------------

/// One compiled ignore pattern.
#[derive(Clone, Debug)]
pub struct Pattern {
    text: String,
    exclusion: bool,
    kind: MatchKind,
    regex: Option<Regex>,
    nfa: Option<Nfa>,
}

impl Pattern {
    fn compile(text: String, exclusion: bool) -> Result<Pattern, String> {
        let (kind, go_regex) = moby_regex(&text);
        let (regex, nfa) = if kind == MatchKind::Regex {
            let tree = GoRegexParser::parse(&go_regex)
                .map_err(|e| format!("translated regexp `{go_regex}` is invalid: {e}"))?;
            let mut rust = String::new();
            tree.emit(&mut rust);
            let regex = Regex::new(&rust)
                .map_err(|e| format!("translated regexp `{go_regex}` is invalid: {e}"))?;
            (Some(regex), Some(Nfa::build(&tree)))
        } else {
            (None, None)
        };
        Ok(Pattern {
            text,
            exclusion,
            kind,
            regex,
            nfa,
        })
    }

    /// The cleaned pattern text, without the `!` of an exception.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether this is a `!` exception (it re-includes what it matches).
    pub fn is_exclusion(&self) -> bool {
        self.exclusion
    }

    /// How this pattern is matched.
    pub fn kind(&self) -> MatchKind {
        self.kind
    }

    /// The compiled regular expression, for [`MatchKind::Regex`] patterns.
    /// The other kinds are matched with plain string comparisons, as in moby.
    pub fn regex(&self) -> Option<&Regex> {
        self.regex.as_ref()
    }

    /// Whether this pattern alone matches exactly `path` (no parent
    /// directory matching, no exception handling).
    pub fn matches_path(&self, path: &str) -> bool {
        match self.kind {
            MatchKind::Exact => path == self.text,
            MatchKind::Prefix => path.starts_with(&self.text[..self.text.len() - 2]),
            MatchKind::Suffix => {
                let suffix = &self.text[2..];
                path.ends_with(suffix) || suffix.strip_prefix('/').is_some_and(|rest| path == rest)
            }
            MatchKind::Regex => self.regex.as_ref().is_some_and(|re| re.is_match(path)),
        }
    }

    /// Whether this pattern matches `path` or one of its parent directories.
    fn matches_path_or_parent(&self, path: &str, parents: &[String]) -> bool {
        self.matches_path(path) || parents.iter().any(|dir| self.matches_path(dir))
    }

    /// Conservative: whether this pattern could match some path strictly
    /// below the directory whose path plus `/` is `dir_slash`.
    fn may_match_below(&self, dir_slash: &str) -> bool {
        match self.kind {
            MatchKind::Exact => {
                self.text.len() > dir_slash.len() && self.text.starts_with(dir_slash)
            }
            MatchKind::Prefix => {
                let literal = &self.text[..self.text.len() - 2];
                dir_slash.starts_with(literal) || literal.starts_with(dir_slash)
            }
            MatchKind::Suffix => true,
            MatchKind::Regex => self
                .nfa
                .as_ref()
                .is_none_or(|nfa| nfa.may_match_extension(dir_slash)),
        }
    }
}

impl fmt::Display for Pattern {
    /// Formats the pattern as it would appear in an ignore file.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.exclusion {
            f.write_str("!")?;
        }
        f.write_str(&self.text)
    }
}

/// Per-pattern match results for a directory, carried from a directory to
/// its children by [`PatternMatcher::matches_with_parent`] (moby's
/// `MatchInfo`).  `MatchInfo::default()` means "no information" and is what
/// entries at the context root use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MatchInfo {
    parent_matched: Vec<bool>,
}

/// An ordered list of ignore patterns (moby's `PatternMatcher`).
#[derive(Clone, Debug, Default)]
pub struct PatternMatcher {
    patterns: Vec<Pattern>,
    exclusions: bool,
}

impl PatternMatcher {
    /// Compiles patterns as read from an ignore file (exceptions keep their
    /// leading `!`), like moby's `patternmatcher.New`: each pattern is
    /// trimmed, empty ones are dropped, the pattern (including any `!`) is
    /// cleaned with Go's `filepath.Clean`, a lone `!` is rejected and the glob
    /// syntax is checked like Go's `filepath.Match`.
    ///
    /// Unlike moby, which compiles the regular expression lazily and fails at
    /// match time, an untranslatable pattern (e.g. `[Local-Only]`, whose range
    /// `l-O` is backwards) is rejected here.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self, IgnoreError> {
        let mut compiled = Vec::with_capacity(patterns.len());
        let mut exclusions = false;
        for raw in patterns {
            let raw = raw.as_ref();
            let trimmed = raw.trim();
            if trimmed.is_empty() {
                continue;
            }
            let cleaned = go_clean(trimmed);
            let bad = |reason: String| IgnoreError::BadPattern {
                pattern: raw.to_string(),
                reason,
            };
            let (exclusion, body) = match cleaned.strip_prefix('!') {
                Some("") => return Err(bad("illegal exclusion pattern: \"!\"".to_string())),
                Some(rest) => (true, rest),
                None => (false, cleaned.as_str()),
            };
            validate_glob(body)
                .map_err(|reason| bad(format!("syntax error in pattern: {reason}")))?;
            let pattern = Pattern::compile(body.to_string(), exclusion).map_err(bad)?;
            exclusions |= exclusion;
            compiled.push(pattern);
        }
        Ok(PatternMatcher {
            patterns: compiled,
            exclusions,
        })
    }

    /// Parses ignore-file content with [`parse_ignore_file`] and compiles it.
    pub fn from_ignore_file(content: &str) -> Result<Self, IgnoreError> {
        Self::new(&parse_ignore_file(content))
    }

    /// Whether there are no patterns at all (nothing is ever excluded).
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether `rel_path` is excluded from the context, following moby's
    /// `MatchesOrParentMatches`: patterns are applied in order, a pattern
    /// matches when it matches the path or any of its parent directories, and
    /// the last matching pattern decides (`!` exceptions re-include).
    ///
    /// `rel_path` is relative to the context root with `/` separators.  The
    /// context root itself is never excluded by Docker; callers should not ask.
    pub fn matches(&self, rel_path: &str) -> bool {
        let parents = parent_prefixes(rel_path);
        let mut matched = false;
        for pattern in &self.patterns {
            // Patterns that can not change the outcome are skipped, as in moby.
            if pattern.exclusion != matched {
                continue;
            }
            if pattern.matches_path_or_parent(rel_path, &parents) {
                matched = !pattern.exclusion;
            }
        }
        matched
    }

    /// Walker-style matching, moby's `MatchesUsingParentResults` as used by
    /// BuildKit's context walker: `parent` is the [`MatchInfo`] returned for
    /// the parent directory (use `MatchInfo::default()` for entries at the
    /// root).  Returns whether `rel_path` is excluded and the info to pass to
    /// its children.
    ///
    /// Patterns that matched the parent are considered matched without being
    /// re-evaluated; other patterns are tested against `rel_path` only.  A
    /// `MatchInfo` from another matcher is treated as "no information".
    pub fn matches_with_parent(&self, rel_path: &str, parent: &MatchInfo) -> (bool, MatchInfo) {
        let have_parent =
            !parent.parent_matched.is_empty() && parent.parent_matched.len() == self.patterns.len();
        let mut info = vec![false; self.patterns.len()];
        let mut matched = false;
        let mut parents: Option<Vec<String>> = None;
        for (i, pattern) in self.patterns.iter().enumerate() {
            let mut hit = have_parent && parent.parent_matched[i];
            if !hit {
                if pattern.exclusion != matched {
                    continue;
                }
                hit = pattern.matches_path(rel_path);
                if !hit && !have_parent {
                    let parents = parents.get_or_insert_with(|| parent_prefixes(rel_path));
                    hit = parents.iter().any(|dir| pattern.matches_path(dir));
                }
            }
            info[i] = hit;
            if hit {
                matched = !pattern.exclusion;
            }
        }
        (
            matched,
            MatchInfo {
                parent_matched: info,
            },
        )
    }

    /// What BuildKit's context walker decides for `rel_path`: evaluates every
    /// ancestor directory from the root down with
    /// [`matches_with_parent`](Self::matches_with_parent), then the path itself.
    pub fn matches_walk(&self, rel_path: &str) -> bool {
        self.walk_state(rel_path).0
    }

    fn walk_state(&self, rel_path: &str) -> (bool, MatchInfo) {
        let mut info = MatchInfo::default();
        for (i, _) in rel_path.match_indices('/') {
            if i == 0 {
                continue;
            }
            info = self.matches_with_parent(&rel_path[..i], &info).1;
        }
        self.matches_with_parent(rel_path, &info)
    }

    /// Whether any pattern is a `!` exception (moby's `Exclusions`).
    pub fn has_exclusions(&self) -> bool {
        self.exclusions
    }

    /// Whether a walker may skip descending into the directory `rel_dir`.
    ///
    /// True only when the directory is excluded (under both
    /// [`matches`](Self::matches) and [`matches_walk`](Self::matches_walk))
    /// and no `!` exception that comes after the pattern excluding it could
    /// match anything below it, so every path below is excluded as well.  The
    /// check is conservative: it may say `false` for a directory whose whole
    /// content is excluded, never `true` for one with a re-included path.
    /// Unlike BuildKit's own prefix test, wildcard exceptions such as
    /// `!*/keep` are analysed rather than assumed harmless or fatal.
    pub fn can_skip_dir(&self, rel_dir: &str) -> bool {
        if rel_dir.is_empty()
            || rel_dir.starts_with('/')
            || go_clean(rel_dir) != rel_dir
            || rel_dir == "."
            || rel_dir == ".."
            || rel_dir.starts_with("../")
        {
            return false;
        }
        // The pattern that decides for the directory under parent matching.
        let parents = parent_prefixes(rel_dir);
        let Some(stateless_decider) = self
            .patterns
            .iter()
            .rposition(|p| p.matches_path_or_parent(rel_dir, &parents))
        else {
            return false;
        };
        if self.patterns[stateless_decider].exclusion {
            return false;
        }
        // The pattern that decides for the directory in a walk.
        let (walk_excluded, info) = self.walk_state(rel_dir);
        if !walk_excluded {
            return false;
        }
        let Some(walk_decider) = info.parent_matched.iter().rposition(|&hit| hit) else {
            return false;
        };
        let first_relevant = stateless_decider.min(walk_decider) + 1;
        let dir_slash = format!("{rel_dir}/");
        !self.patterns[first_relevant..]
            .iter()
            .any(|p| p.exclusion && p.may_match_below(&dir_slash))
    }

    /// The compiled patterns, in order.
    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pm(lines: &[&str]) -> PatternMatcher {
        PatternMatcher::from_ignore_file(&lines.join("\n"))
            .unwrap_or_else(|e| panic!("patterns {lines:?} failed: {e}"))
    }

    /// (ignore-file lines, path, excluded?)
    const TABLE: &[(&[&str], &str, bool)] = &[
        // `*` does not cross `/`, but a matched directory takes its content.
        (&["*"], "fileutils.go", true),
        (&["*"], ".dockerignore", true),
        (&["*.go"], "main.go", true),
        (&["*.go"], "cmd/main.go", false),
        (&["*.go"], "main.go/inner.txt", true),
        (&["a*/b"], "abc/b", true),
        (&["a*/b"], "a/c/b", false),
        (&["*/tmp/*"], "a/tmp/x", true),
        (&["*/tmp/*"], "tmp/x", false),
        (&["*/tmp/*"], "a/b/tmp/x", false),
        (&["dir/*"], "dir/x/y", true),
        (&["a/*.txt"], "a/dir/file.txt", false),
        // `**` at the start, middle and end.
        (&["**/*.go"], "main.go", true),
        (&["**/*.go"], "cmd/x/main.go", true),
        (&["**/foo"], "foo", true),
        (&["**/foo"], "a/b/foo", true),
        (&["**/foo"], "a/foo/bar", true),
        (&["**/foo"], "a/xfoo", false),
        (&["**foo"], "a/xfoo", true),
        (&["foo/**"], "foo", false),
        (&["foo/**"], "foo/bar", true),
        (&["foo/**"], "foo/bar/baz", true),
        (&["foo/**"], "foobar", false),
        (&["a/**/b"], "a/b", true),
        (&["a/**/b"], "a/x/y/b", true),
        (&["a/**/b"], "a/x/b/c", true),
        (&["a/**/b"], "a/xb", false),
        (&["a**b"], "ax/b", true),
        (&["a**b"], "axb", false),
        (&["**"], "any/deep/path", true),
        (&["**/**/*.txt"], "file.txt", true),
        (&["**/dir2/*"], "dir/dir2/file", true),
        (
            &["**/node_modules"],
            "packages/a/node_modules/x/index.js",
            true,
        ),
        // Exceptions, last match wins.
        (&["*.md", "!README.md"], "README.md", false),
        (&["*.md", "!README.md"], "CHANGES.md", true),
        (&["!README.md", "*.md"], "README.md", true),
        (
            &["*.md", "!README*.md", "README-secret.md"],
            "README-secret.md",
            true,
        ),
        (
            &["*.md", "!README*.md", "README-secret.md"],
            "README-public.md",
            false,
        ),
        (&["dir", "!dir/keep"], "dir", true),
        (&["dir", "!dir/keep"], "dir/keep", false),
        (&["dir", "!dir/keep"], "dir/keep/deeper", false),
        (&["dir", "!dir/keep"], "dir/other", true),
        (&["docs/", "!docs/README.md"], "docs/README.md", false),
        (&["*", "!src", "src/*.tmp"], "src/a.tmp", true),
        (&["*", "!src", "src/*.tmp"], "src/a.rs", false),
        (&["*", "!src", "src/*.tmp"], "other", true),
        (&["**", "!util/docker/web"], "util/docker/web/foo", false),
        (
            &["**", "!util/docker/web", "util/docker/web/foo"],
            "util/docker/web/foo",
            true,
        ),
        // Cleaning: leading `/` and `./`, `..`, trailing `/`.
        (&["/foo"], "foo", true),
        (&["/foo"], "a/foo", false),
        (&["./foo"], "foo", true),
        (&["a/b/../c"], "a/c", true),
        (&["a/b/../c"], "a/b/c", false),
        (&["foo//bar/"], "foo/bar/baz", true),
        (&["../foo"], "foo", false),
        (&["."], "anything", false),
        // Character classes, ranges, `?` and escapes.
        (&["[a-c]*.txt"], "b1.txt", true),
        (&["[a-c]*.txt"], "d1.txt", false),
        (&["a[^b-d]e"], "aze", true),
        (&["a[^b-d]e"], "ace", false),
        (&["file[!x]"], "file!", true),
        (&["file[!x]"], "filey", false),
        (&["[\\]a]"], "]", true),
        (&["[x\\-]"], "-", true),
        (&["[[:digit:]]*"], "1abc", true),
        (&["[[:digit:]]*"], "abc", false),
        (&["[a-ζ]*"], "α", true),
        (&["?.txt"], "a.txt", true),
        (&["?.txt"], "ab.txt", false),
        (&["a?b"], "a/b", false),
        (&["a?b"], "a☺b", true),
        (&["\\*.txt"], "*.txt", true),
        (&["\\*.txt"], "a.txt", false),
        (&["a\\?b"], "a?b", true),
        (&["a\\?b"], "axb", false),
        // Regexp metacharacters are literal.
        (&[".*"], ".git", true),
        (&[".*"], ".git/config", true),
        (&[".*"], "x/.git", false),
        (&["abc.def"], "abcxdef", false),
        (&["a(b)c/def"], "a(b)c/def", true),
        (&["a.|)$(}+{bc"], "a.|)$(}+{bc", true),
        (
            &["dist/*.whl"],
            "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
            true,
        ),
        // Docker quirks inherited from the regexp translation.
        (&["\\x41"], "A", true),
        (&["\\x41"], "x41", false),
        (&["[*]"], "]", true),
        (&["[*]"], "*", false),
        (&["a[^b]c"], "a/c", true),
        // The Dockerfile and ignore file are ordinary paths.
        (&["Dockerfile", ".dockerignore"], "Dockerfile", true),
        (&["Dockerfile", ".dockerignore"], ".dockerignore", true),
        (&["Dockerfile", ".dockerignore"], "sub/Dockerfile", false),
        // Comments, blanks and whitespace in the file.
        (&["# *.go", "", "   ", "  *.txt  "], "main.go", false),
        (&["# *.go", "", "   ", "  *.txt  "], "a.txt", true),
        (&[" #notacomment"], "#notacomment", true),
    ];

    #[test]
    fn table() {
        let mut failures = Vec::new();
        for (lines, path, expected) in TABLE {
            let m = pm(lines);
            let got = m.matches(path);
            let walked = m.matches_walk(path);
            if got != *expected || walked != *expected {
                failures.push(format!(
                    "{lines:?} {path:?}: expected {expected}, matches={got}, matches_walk={walked}"
                ));
            }
        }
        assert!(TABLE.len() >= 40);
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn match_kinds_follow_moby() {
        let kind = |p: &str| pm(&[p]).patterns()[0].kind();
        assert_eq!(kind("abc.def"), MatchKind::Exact);
        assert_eq!(kind("dir/**"), MatchKind::Prefix);
        assert_eq!(kind("**"), MatchKind::Suffix);
        assert_eq!(kind("**/dir"), MatchKind::Suffix);
        assert_eq!(kind("**/dir2/*"), MatchKind::Regex);
        assert_eq!(kind("a[b-d]e"), MatchKind::Regex);
        assert!(pm(&["abc"]).patterns()[0].regex().is_none());
        assert!(pm(&["a*"]).patterns()[0].regex().is_some());
    }

    #[test]
    fn moby_regex_strings() {
        assert_eq!(moby_regex("*").1, "^[^/]*$");
        assert_eq!(moby_regex("a*/b").1, "^a[^/]*/b$");
        assert_eq!(moby_regex("**/**").1, "^(.*/)?.*$");
        assert_eq!(moby_regex("**/dir2/**").1, "^(.*/)?dir2/.*$");
        assert_eq!(moby_regex("**/**/*.txt").1, r"^(.*/)?(.*/)?[^/]*\.txt$");
        assert_eq!(moby_regex("abc?def").1, "^abc[^/]def$");
    }

    #[test]
    fn pattern_accessors_and_display() {
        let m = pm(&["/a/b", "!c/../d"]);
        let p = m.patterns();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].as_str(), "a/b");
        assert!(!p[0].is_exclusion());
        assert_eq!(p[1].as_str(), "d");
        assert!(p[1].is_exclusion());
        assert_eq!(p[1].to_string(), "!d");
        assert!(m.has_exclusions());
        assert!(!pm(&["a"]).has_exclusions());
        assert!(PatternMatcher::new::<&str>(&[]).unwrap().is_empty());
    }

    #[test]
    fn new_trims_and_cleans_like_moby() {
        // Empty entries are dropped; whitespace around `!` is trimmed.
        let m = PatternMatcher::new(&["docs", "", "  !docs/README.md  "]).unwrap();
        assert_eq!(m.patterns().len(), 2);
        assert!(m.has_exclusions());
        assert!(!m.matches("docs/README.md"));
        // New does not strip a leading `/` (only the file reader does).
        let m = PatternMatcher::new(&["/foo"]).unwrap();
        assert!(!m.matches("foo"));
    }

    #[test]
    fn bad_patterns() {
        for bad in [
            "[",
            "a[",
            "[^",
            "[^bc",
            "[]a]",
            "[-]",
            "[x-]",
            "[-x]",
            "[a-b-c]",
            "\\",
            "!",
            "!/",
            "[Local-Only]/",
            "\\Z",
            "\\é",
            "\\8",
        ] {
            match PatternMatcher::new(&["ok", bad]) {
                Err(IgnoreError::BadPattern { pattern, reason }) => {
                    assert_eq!(pattern, bad);
                    assert!(!reason.is_empty());
                }
                other => panic!("{bad:?}: expected BadPattern, got {other:?}"),
            }
        }
        let err = PatternMatcher::new(&["[Local-Only]"]).unwrap_err();
        assert!(err.to_string().contains("[Local-Only]"), "{err}");
        // A line `!` in a file survives parsing and fails compilation.
        assert!(PatternMatcher::from_ignore_file("a\n!\n").is_err());
    }

    #[test]
    fn parse_ignore_file_like_readall() {
        let content = "test1\n/test2\n/a/file/here\n\nlastfile\n# this is a comment\n! /inverted/abs/path\n!\n! ";
        assert_eq!(
            parse_ignore_file(content),
            [
                "test1",
                "test2",
                "a/file/here",
                "lastfile",
                "!inverted/abs/path",
                "!",
                "!"
            ]
        );
        assert_eq!(
            parse_ignore_file("\u{feff}#comment\r\nfoo/\r\n ./bar/../baz \r\n  # kept\n/\n!/\n"),
            ["foo", "baz", "# kept", "/", "!/"]
        );
        assert_eq!(
            parse_ignore_file("\u{feff}foo\n\u{feff}bar"),
            ["foo", "\u{feff}bar"]
        );
        assert!(parse_ignore_file("").is_empty());
        assert!(parse_ignore_file("\n \t\n#x\n").is_empty());
        assert_eq!(
            parse_ignore_file("a//b/./c\n../../x\n."),
            ["a/b/c", "../../x", "."]
        );
    }

    #[test]
    fn go_clean_matches_go() {
        for (input, want) in [
            ("", "."),
            (".", "."),
            ("/", "/"),
            ("//", "/"),
            ("a/", "a"),
            ("a//b", "a/b"),
            ("./a", "a"),
            ("a/..", "."),
            ("a/../..", ".."),
            ("../../a", "../../a"),
            ("/../a", "/a"),
            ("a/b/../../../c", "../c"),
            ("!a/../b", "b"),
        ] {
            assert_eq!(go_clean(input), want, "Clean({input:?})");
        }
        assert_eq!(go_dir("a/b/c"), "a/b");
        assert_eq!(go_dir("a"), ".");
        assert_eq!(go_dir("a/b/"), "a/b");
    }

    #[test]
    fn walk_semantics_differ_from_parent_matching() {
        // moby's MatchesOrParentMatches lets `!a` re-include `a/b` via its
        // parent, while BuildKit's walker (MatchesUsingParentResults) never
        // evaluated `!a` for `a` and so keeps `a/b` excluded.
        let m = pm(&["a/b", "!a"]);
        assert!(!m.matches("a/b"));
        assert!(m.matches_walk("a/b"));
        assert!(!m.can_skip_dir("a/b"));
        // Manual walk through the incremental API gives the same answer.
        let (a_excluded, info) = m.matches_with_parent("a", &MatchInfo::default());
        assert!(!a_excluded);
        let (ab_excluded, _) = m.matches_with_parent("a/b", &info);
        assert!(ab_excluded);
        // The other direction: `a/b` re-excludes `a/b/c` through its parent
        // under moby's matching, but the walker never recorded `a/b` as
        // matched (it was skipped while `a` already excluded everything), so
        // `!a/b/c` wins in the walk, as in BuildKit.
        let m2 = pm(&["a", "!a/b/c", "a/b"]);
        assert!(m2.matches("a/b/c"));
        assert!(!m2.matches_walk("a/b/c"));
        assert!(m2.matches("a/b") && m2.matches_walk("a/b"));
        assert!(!m2.can_skip_dir("a/b"));
        assert!(!m2.can_skip_dir("a/b/c"));
        assert!(m2.can_skip_dir("a/x"));
        // A MatchInfo from another matcher means "no information".
        let other = pm(&["x", "y", "z"]);
        let (_, foreign) = other.matches_with_parent("x", &MatchInfo::default());
        assert_eq!(m.matches_with_parent("a/b", &foreign).0, m.matches("a/b"));
    }

    #[test]
    fn can_skip_dir_cases() {
        let skip = |lines: &[&str], dir: &str| pm(lines).can_skip_dir(dir);
        assert!(skip(&["node_modules"], "node_modules"));
        assert!(!skip(&["node_modules"], "src"));
        assert!(!skip(&[], "node_modules"));
        assert!(!skip(
            &["node_modules", "!node_modules/keep.txt"],
            "node_modules"
        ));
        assert!(skip(&["node_modules", "!src/keep"], "node_modules"));
        // Wildcard exceptions that may reach inside block pruning...
        assert!(!skip(&["dir", "!*/keep"], "dir"));
        assert!(!skip(&["dir", "!**/keep"], "dir"));
        assert!(!skip(&["dir", "!d*/**"], "dir"));
        assert!(!skip(&["dir", "![a-z]ir/x"], "dir"));
        // ...but not ones that can not.
        assert!(skip(&["*", "!*.go"], "vendor"));
        assert!(skip(&["dir", "!other/*/keep"], "dir"));
        assert!(skip(&["dir", "![e-z]ir/x"], "dir"));
        // Exceptions before the deciding pattern do not matter.
        assert!(skip(&["!dir/keep", "dir"], "dir"));
        // Not excluded at all.
        assert!(!skip(&["dir", "!dir"], "dir"));
        // Nested directories.
        assert!(!skip(&["a", "!a/b/c"], "a"));
        assert!(!skip(&["a", "!a/b/c"], "a/b"));
        assert!(skip(&["a", "!a/b/c"], "a/x"));
        assert!(skip(&["foo/**", "!foo/bar/**"], "foo/baz"));
        assert!(!skip(&["foo/**", "!foo/bar/**"], "foo/bar"));
        // Unclean or root paths are never skipped.
        assert!(!skip(&["*"], "."));
        assert!(!skip(&["*"], ""));
        assert!(!skip(&["**"], "a/"));
    }

    #[test]
    fn nfa_extension_analysis() {
        let nfa = |p: &str| pm(&[p]).patterns()[0].nfa.clone().unwrap();
        assert!(nfa("*/keep").may_match_extension("dir/"));
        assert!(!nfa("*/keep").may_match_extension("a/b/"));
        assert!(!nfa("*.go").may_match_extension("vendor/"));
        assert!(nfa("a[^b]c").may_match_extension("a/"));
        assert!(nfa("[[:alpha:]]/x?").may_match_extension("q/"));
        assert!(!nfa("[[:digit:]]/x?").may_match_extension("q/"));
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("kiln-dockerignore-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn load_for_prefers_dockerfile_specific_file() {
        let ctx = temp_dir("specific");
        std::fs::create_dir_all(ctx.join("build")).unwrap();
        let dockerfile = ctx.join("build/app.Dockerfile");
        std::fs::write(&dockerfile, "FROM scratch\n").unwrap();
        std::fs::write(ctx.join(".dockerignore"), "context-wide\n").unwrap();

        // Only the context file.
        let (path, patterns) = load_for(&ctx, &dockerfile).unwrap().unwrap();
        assert_eq!(path, ctx.join(".dockerignore"));
        assert_eq!(patterns, ["context-wide"]);

        // The Dockerfile-specific file wins...
        let specific = ctx.join("build/app.Dockerfile.dockerignore");
        std::fs::write(&specific, "\u{feff}/only-this\n").unwrap();
        let (path, patterns) = load_for(&ctx, &dockerfile).unwrap().unwrap();
        assert_eq!(path, specific);
        assert_eq!(patterns, ["only-this"]);

        // ...even when empty.
        std::fs::write(&specific, "").unwrap();
        let (path, patterns) = load_for(&ctx, &dockerfile).unwrap().unwrap();
        assert_eq!(path, specific);
        assert!(patterns.is_empty());

        // A context `.dockerignore` next to the default Dockerfile name is
        // not mistaken for a Dockerfile-specific one.
        let (path, _) = load_for(&ctx, &ctx.join("Dockerfile")).unwrap().unwrap();
        assert_eq!(path, ctx.join(".dockerignore"));
        std::fs::write(ctx.join("Dockerfile.dockerignore"), "x\n").unwrap();
        let (path, _) = load_for(&ctx, &ctx.join("Dockerfile")).unwrap().unwrap();
        assert_eq!(path, ctx.join("Dockerfile.dockerignore"));
        std::fs::remove_dir_all(&ctx).unwrap();
    }

    #[test]
    fn load_for_missing_files() {
        let ctx = temp_dir("missing");
        assert!(load_for(&ctx, &ctx.join("Dockerfile")).unwrap().is_none());
        // A directory where the ignore file would be counts as absent.
        std::fs::create_dir_all(ctx.join("Dockerfile.dockerignore")).unwrap();
        assert!(load_for(&ctx, &ctx.join("Dockerfile")).unwrap().is_none());
        std::fs::write(ctx.join(".dockerignore"), "a\n").unwrap();
        let (path, patterns) = load_for(&ctx, &ctx.join("Dockerfile")).unwrap().unwrap();
        assert_eq!(path, ctx.join(".dockerignore"));
        assert_eq!(patterns, ["a"]);
        std::fs::remove_dir_all(&ctx).unwrap();
    }

    // ---------------------------------------------------------------- proptests

    /// Pattern text drawn from an alphabet rich in metacharacters.
    fn wild_pattern() -> impl Strategy<Value = String> {
        prop_oneof![
            "!?[ab*?/\\[\\]\\\\^!.{}()$+|:\\-xdpPQEzC0-9é ]{0,14}",
            any::<String>(),
        ]
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just("c".to_string()),
            Just("ab".to_string()),
            Just("x.go".to_string()),
        ]
    }

    fn clean_path(max: usize) -> impl Strategy<Value = String> {
        prop::collection::vec(segment(), 1..=max).prop_map(|segs| segs.join("/"))
    }

    /// A valid, clean glob segment.
    fn glob_segment() -> impl Strategy<Value = String> {
        prop_oneof![
            segment(),
            Just("*".to_string()),
            Just("a*".to_string()),
            Just("?".to_string()),
            Just("**".to_string()),
            Just("[ab]".to_string()),
            Just("[^a]*".to_string()),
            Just("*.go".to_string()),
        ]
    }

    fn simple_pattern() -> impl Strategy<Value = String> {
        prop::collection::vec(glob_segment(), 1..=3).prop_map(|segs| segs.join("/"))
    }

    fn pattern_list(with_exceptions: bool) -> impl Strategy<Value = Vec<String>> {
        let item = (simple_pattern(), any::<bool>()).prop_map(move |(p, neg)| {
            if neg && with_exceptions {
                format!("!{p}")
            } else {
                p
            }
        });
        prop::collection::vec(item, 0..6)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn never_panics(patterns in prop::collection::vec(wild_pattern(), 0..4),
                        path in "[ab/.*\\[\\]\\\\é]{0,10}",
                        content in any::<String>()) {
            let _ = parse_ignore_file(&content);
            let _ = PatternMatcher::from_ignore_file(&content);
            if let Ok(m) = PatternMatcher::new(&patterns) {
                let _ = m.matches(&path);
                let _ = m.matches_walk(&path);
                let _ = m.can_skip_dir(&path);
                for p in m.patterns() {
                    let _ = p.matches_path(&path);
                    let _ = p.to_string();
                }
            }
        }

        #[test]
        fn exception_undoes_pattern(p in simple_pattern(), path in clean_path(4)) {
            let plain = PatternMatcher::new(std::slice::from_ref(&p)).unwrap();
            let undone = PatternMatcher::new(&[p.clone(), format!("!{p}")]).unwrap();
            let redone = PatternMatcher::new(&[format!("!{p}"), p.clone()]).unwrap();
            prop_assert!(!undone.matches(&path));
            prop_assert!(!undone.matches_walk(&path));
            prop_assert_eq!(redone.matches(&path), plain.matches(&path));
            prop_assert_eq!(redone.matches_walk(&path), plain.matches_walk(&path));
        }

        #[test]
        fn excluded_dir_excludes_contents(patterns in pattern_list(false),
                                          dir in clean_path(2),
                                          below in clean_path(3)) {
            let m = PatternMatcher::new(&patterns).unwrap();
            let path = format!("{dir}/{below}");
            if m.matches(&dir) {
                prop_assert!(m.matches(&path), "{:?}: {} excluded but not {}", patterns, dir, path);
            }
            if m.matches_walk(&dir) {
                prop_assert!(m.matches_walk(&path));
            }
            if !patterns.is_empty() {
                prop_assert!(m.can_skip_dir(&dir) == m.matches(&dir));
            }
        }
    }

    proptest! {
        // Pruning soundness is the property most worth searching hard for.
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn skipped_dirs_hold_only_excluded_paths(patterns in pattern_list(true),
                                                  dir in clean_path(2),
                                                  below in prop::collection::vec(clean_path(3), 1..8)) {
            let m = PatternMatcher::new(&patterns).unwrap();
            if m.can_skip_dir(&dir) {
                prop_assert!(m.matches(&dir) && m.matches_walk(&dir));
                for b in &below {
                    let path = format!("{dir}/{b}");
                    prop_assert!(m.matches(&path), "{:?}: skipped {} but {} is included", patterns, dir, path);
                    prop_assert!(m.matches_walk(&path), "{:?}: skipped {} but walk includes {}", patterns, dir, path);
                }
            }
        }
    }
}
