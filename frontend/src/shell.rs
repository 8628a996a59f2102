//! Dockerfile shell-word expansion, behaving like BuildKit's
//! `frontend/dockerfile/shell/lex.go`.
//!
//! Dockerfile instruction arguments are expanded the way a very small POSIX
//! shell would expand one word: quotes are removed, the escape character
//! (`\` by default, or `` ` `` when an `# escape=` parser directive says so)
//! quotes the next character, and parameter expansions are replaced by values taken from an
//! [`Env`]. Nothing is executed: there is no command substitution,
//! arithmetic, tilde or pathname expansion.
//!
//! | form | result |
//! | --- | --- |
//! | `$V`, `${V}` | value of `V`, empty when unset |
//! | `${V:-w}` / `${V-w}` | `w` when `V` is unset or empty / unset |
//! | `${V:+w}` / `${V+w}` | `w` when `V` is set and non-empty / set |
//! | `${V:?m}` / `${V?m}` | error `V: m` when `V` is unset or empty / unset |
//! | `${V#p}` / `${V##p}` | remove the shortest / longest prefix matching `p` |
//! | `${V%p}` / `${V%%p}` | remove the shortest / longest suffix matching `p` |
//! | `${V/p/r}` / `${V//p/r}` | replace the first / every match of `p` by `r` |
//! | `$0`..`$9`, `$123`, `$@`, `$*`, `$#`, `$?`, `$-`, `$$`, `$!` | looked up like any name; normally unset, so empty |
//!
//! Words `w`, `m`, `p` and `r` are themselves expanded, so expansions nest.
//!
//! Compatibility notes (BuildKit's behaviour, kept on purpose):
//! - Patterns know `*`, `?` and `\*`, `\?`, `\\` (and `\}`, `\/` to keep a
//!   brace or slash in the pattern); `[...]` is *not* a bracket expression,
//!   brackets match themselves. Any other `\x` in a pattern is an error.
//! - Quotes inside a pattern are removed, so a quoted `*` is still a wildcard.
//! - In `${V//p/r}` (replace all) a `$0` or `${0}` in the *expanded*
//!   replacement stands for the matched text and `$$` for `$` (Go's
//!   `Regexp.ReplaceAllString`); `${V/p/r}` inserts `r` literally.
//! - `${V:#p}` and `${V:%p}` are errors, as are `${V:=w}`, `${V=w}`,
//!   `${V:offset}` and `${#V}`.
//! - Word splitting ([`Lex::process_words`]) splits unquoted white space,
//!   including white space that comes out of a parameter expansion, even one
//!   whose default word was quoted (`${V:-"a b"}` gives two words).
//! - A byte-order mark at the very start of the word is dropped (Go's
//!   `text/scanner` does that).

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasher, Hash};
use std::sync::LazyLock;

use regex::Regex;

/// The escape character a Dockerfile uses unless a `# escape=` directive
/// says otherwise.
pub const DEFAULT_ESCAPE: char = '\\';

/// How deeply `$` expansions may nest inside one another (as in
/// `${A:-${B:-${C}}}`) before expansion fails with
/// [`ShellError::TooDeeplyNested`]. BuildKit has no such limit; this one
/// only keeps absurd input from exhausting the stack (100 levels take well
/// under 1 MiB of stack, even in a debug build).
pub const MAX_NESTING: usize = 100;

/// How long (in bytes) the result of expanding one word may grow before
/// expansion fails with [`ShellError::TooLong`]: 1 MiB, or the length of the
/// word as written when that is longer (a long literal never fails). BuildKit
/// has no such limit; without it `ENV A=$A$A` repeated 26 times takes 1.2 GB,
/// and one `${A//?/$A}` squares the length of `A`.
pub const MAX_EXPANSION: usize = 1 << 20;

/// Looks up variables for expansion.
///
/// `None` means the variable is unset; `Some(String::new())` means it is set
/// to the empty string (the two differ for `${V-w}`, `${V+w}` and `${V?m}`).
pub trait Env {
    /// Returns the value of the variable `name`, or `None` when it is unset.
    fn get(&self, name: &str) -> Option<String>;
}

impl<T: Env + ?Sized> Env for &T {
    fn get(&self, name: &str) -> Option<String> {
        (**self).get(name)
    }
}

impl<K, V> Env for BTreeMap<K, V>
where
    K: Borrow<str> + Ord,
    V: AsRef<str>,
{
    fn get(&self, name: &str) -> Option<String> {
        BTreeMap::get(self, name).map(|v| v.as_ref().to_owned())
    }
}

impl<K, V, S> Env for HashMap<K, V, S>
where
    K: Borrow<str> + Hash + Eq,
    V: AsRef<str>,
    S: BuildHasher,
{
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).map(|v| v.as_ref().to_owned())
    }
}

/// A list of `(name, value)` pairs; when a name occurs more than once the
/// last occurrence wins (as with a list of `NAME=value` strings in BuildKit).
impl<K, V> Env for [(K, V)]
where
    K: AsRef<str>,
    V: AsRef<str>,
{
    fn get(&self, name: &str) -> Option<String> {
        self.iter()
            .rev()
            .find(|(k, _)| k.as_ref() == name)
            .map(|(_, v)| v.as_ref().to_owned())
    }
}

/// Same as the slice implementation: the last occurrence of a name wins.
impl<K, V> Env for Vec<(K, V)>
where
    K: AsRef<str>,
    V: AsRef<str>,
{
    fn get(&self, name: &str) -> Option<String> {
        Env::get(self.as_slice(), name)
    }
}

/// Adapts a closure `Fn(&str) -> Option<String>` into an [`Env`], e.g. to
/// layer build arguments over the environment without building a map.
#[derive(Debug, Clone, Copy)]
pub struct EnvFn<F>(pub F);

impl<F> Env for EnvFn<F>
where
    F: Fn(&str) -> Option<String>,
{
    fn get(&self, name: &str) -> Option<String> {
        (self.0)(name)
    }
}

/// Why a word could not be expanded. The messages are BuildKit's, without
/// the `failed to process "<word>": ` prefix BuildKit puts in front of them.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum ShellError {
    /// A `'` was never closed.
    #[error("unexpected end of statement while looking for matching single-quote")]
    UnterminatedSingleQuote,
    /// A `"` was never closed.
    #[error("unexpected end of statement while looking for matching double-quote")]
    UnterminatedDoubleQuote,
    /// A `${` was never closed.
    #[error("syntax error: missing '}}'")]
    MissingBrace,
    /// `${V/pattern` ended before the `/` that starts the replacement.
    #[error("syntax error: missing '/' in ${{}}")]
    MissingSlash,
    /// `${}`, `${{...}`, `${:...}`: no parameter name where one is needed.
    #[error("syntax error: bad substitution")]
    BadSubstitution,
    /// An operator this expander does not know, such as `=` in `${V:=w}`,
    /// `:Y` in `${V:Y}` or `.` in `${.}`; the field is the operator as
    /// written.
    #[error("unsupported modifier ({0}) in substitution")]
    UnsupportedModifier(String),
    /// `${V?m}` with `V` unset, or `${V:?m}` with `V` unset or empty. The
    /// message is the expanded `m`, or `is not allowed to be unset` /
    /// `is not allowed to be empty` when `m` is empty.
    #[error("{name}: {message}")]
    Required {
        /// The parameter's name.
        name: String,
        /// The message shown after the name.
        message: String,
    },
    /// A `#`, `%` or `/` pattern that cannot be used.
    #[error("invalid pattern ({pattern}) in substitution: {reason}")]
    InvalidPattern {
        /// The pattern after expansion.
        pattern: String,
        /// What is wrong with it, e.g. `invalid escape '\x'`.
        reason: String,
    },
    /// Expansions nested more than [`MAX_NESTING`] deep.
    #[error("syntax error: substitutions nested more than {0} deep")]
    TooDeeplyNested(usize),
    /// The result grew past its limit (see [`MAX_EXPANSION`]); the field is
    /// the limit in bytes.
    #[error("the expanded word is longer than {0} bytes; expansions are limited to 1 MiB per word")]
    TooLong(usize),
}

/// The result of [`Lex::process_word_with_matches`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expansion {
    /// The expanded word, as [`Lex::process_word`] returns it.
    pub result: String,
    /// The word split into words, as [`Lex::process_words`] returns it.
    pub words: Vec<String>,
    /// Names that were looked up and found (set, possibly empty).
    pub matched: BTreeSet<String>,
    /// Names that were looked up and not found (unset).
    pub unmatched: BTreeSet<String>,
}

/// Shell word expander (BuildKit's `shell.Lex`).
///
/// Build one with [`Lex::new`] and adjust the public flags as needed; the
/// flags other than `escape` are `false` by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lex {
    /// The escape character: `\` by default, or `` ` `` when the Dockerfile
    /// has an `# escape=` parser directive saying so.
    pub escape: char,
    /// Keep quote characters in the output instead of removing them.
    pub raw_quotes: bool,
    /// Keep escape characters in the output instead of removing them.
    pub raw_escapes: bool,
    /// Leave references to unset variables as written (`$V`, `${V}`,
    /// `${V:-w}` ...) instead of expanding them; `${V?m}` then does not fail.
    pub skip_unset_env: bool,
    /// Treat `'` and `"` as ordinary characters (used for heredoc bodies).
    pub skip_process_quotes: bool,
}

impl Default for Lex {
    fn default() -> Self {
        Lex::new(DEFAULT_ESCAPE)
    }
}

impl Lex {
    /// A lexer with the given escape character and every flag off.
    pub fn new(escape: char) -> Lex {
        Lex {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_unset_env: false,
            skip_process_quotes: false,
        }
    }

    /// Expand one word (quotes removed, variables substituted), as BuildKit
    /// `ProcessWord`. White space is kept as it is.
    pub fn process_word(&self, word: &str, env: &dyn Env) -> Result<String, ShellError> {
        self.expand(word, env).map(|e| e.result)
    }

    /// Like [`Lex::process_word`], but also reports which variable names were
    /// looked up and found (`matched`) or not found (`unmatched`), as
    /// BuildKit `ProcessWordWithMatches`. As in BuildKit, every nested word
    /// is expanded before its operator is applied, so its names are reported
    /// even when the operator then discards it (`${A:-$B}` reports `B` when
    /// `A` is set).
    pub fn process_word_with_matches(
        &self,
        word: &str,
        env: &dyn Env,
    ) -> Result<Expansion, ShellError> {
        self.expand(word, env)
    }

    /// Expand and split into words, as BuildKit `ProcessWords`: unquoted
    /// white space (including white space that comes out of a variable's
    /// value) separates words, quoted or escaped white space does not, and
    /// empty words are dropped.
    pub fn process_words(&self, word: &str, env: &dyn Env) -> Result<Vec<String>, ShellError> {
        self.expand(word, env).map(|e| e.words)
    }

    fn expand(&self, word: &str, env: &dyn Env) -> Result<Expansion, ShellError> {
        let mut expander = Expander {
            lex: self,
            env,
            rest: skip_bom(word),
            raw_escapes: self.raw_escapes,
            depth: 0,
            limit: MAX_EXPANSION.max(word.len()),
            matched: BTreeSet::new(),
            unmatched: BTreeSet::new(),
        };
        let (result, words) = expander.process_until(None, self.raw_escapes)?;
        expander.check_len(result.len())?;
        Ok(Expansion {
            result,
            words,
            matched: expander.matched,
            unmatched: expander.unmatched,
        })
    }
}

/// Go's `text/scanner` silently drops a byte-order mark at the very start.
fn skip_bom(s: &str) -> &str {
    s.strip_prefix('\u{FEFF}').unwrap_or(s)
}

/// The error for reaching the end of the input while looking for `stop`.
fn missing(stop: char) -> ShellError {
    if stop == '/' {
        ShellError::MissingSlash
    } else {
        ShellError::MissingBrace
    }
}

/// Collects the words of [`Lex::process_words`]. (BuildKit also tracks an
/// `inWord` flag, but it only matters when the current word is empty, where
/// it changes nothing.)
#[derive(Default)]
struct Words {
    current: String,
    words: Vec<String>,
}

impl Words {
    /// An unquoted character: white space ends the current word.
    fn add_char(&mut self, ch: char) {
        if ch.is_whitespace() {
            if !self.current.is_empty() {
                self.words.push(std::mem::take(&mut self.current));
            }
        } else {
            self.current.push(ch);
        }
    }

    /// A quoted or escaped character: always part of the word.
    fn add_raw_char(&mut self, ch: char) {
        self.current.push(ch);
    }

    /// The value of an expansion: split like unquoted text.
    fn add_str(&mut self, s: &str) {
        s.chars().for_each(|c| self.add_char(c));
    }

    /// The contents of quotes: never split.
    fn add_raw_str(&mut self, s: &str) {
        self.current.push_str(s);
    }

    fn finish(mut self) -> Vec<String> {
        if !self.current.is_empty() {
            self.words.push(self.current);
        }
        self.words
    }
}

/// The state of one expansion (BuildKit's `shellWord`).
struct Expander<'a> {
    lex: &'a Lex,
    env: &'a dyn Env,
    /// The input not consumed yet.
    rest: &'a str,
    /// Whether escape characters are kept; set per nested word.
    raw_escapes: bool,
    depth: usize,
    /// The longest any (partial) result may get, in bytes.
    limit: usize,
    matched: BTreeSet<String>,
    unmatched: BTreeSet<String>,
}

impl Expander<'_> {
    fn peek(&self) -> Option<char> {
        self.rest.chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let mut chars = self.rest.chars();
        let ch = chars.next();
        self.rest = chars.as_str();
        ch
    }

    fn at_end(&self) -> bool {
        self.rest.is_empty()
    }

    /// Fails once a result being built is longer than the limit. Called after every
    /// append of expanded text, so no result gets much past the limit.
    fn check_len(&self, len: usize) -> Result<(), ShellError> {
        if len > self.limit {
            Err(ShellError::TooLong(self.limit))
        } else {
            Ok(())
        }
    }

    fn get_env(&mut self, name: &str) -> Option<String> {
        let value = self.env.get(name);
        let seen = if value.is_some() {
            &mut self.matched
        } else {
            &mut self.unmatched
        };
        if !seen.contains(name) {
            seen.insert(name.to_owned());
        }
        value
    }

    /// Expand up to the end of the input, or up to and including `stop`,
    /// with escape characters kept or not as `raw_escapes` says.
    fn process_until(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
    ) -> Result<(String, Vec<String>), ShellError> {
        let saved = std::mem::replace(&mut self.raw_escapes, raw_escapes);
        let out = self.scan_until(stop);
        self.raw_escapes = saved;
        out
    }

    fn scan_until(&mut self, stop: Option<char>) -> Result<(String, Vec<String>), ShellError> {
        let mut result = String::new();
        let mut words = Words::default();
        let quotes = !self.lex.skip_process_quotes;
        while let Some(ch) = self.peek() {
            if stop == Some(ch) {
                self.bump();
                return Ok((result, words.finish()));
            }
            match ch {
                '$' => {
                    let value = self.process_dollar()?;
                    self.check_len(result.len() + value.len())?;
                    words.add_str(&value);
                    result.push_str(&value);
                }
                '\'' if quotes => {
                    let value = self.process_single_quote()?;
                    words.add_raw_str(&value);
                    result.push_str(&value);
                }
                '"' if quotes => {
                    let value = self.process_double_quote()?;
                    self.check_len(result.len() + value.len())?;
                    words.add_raw_str(&value);
                    result.push_str(&value);
                }
                _ => {
                    self.bump();
                    if ch == self.lex.escape {
                        if self.raw_escapes {
                            words.add_raw_char(ch);
                            result.push(ch);
                        }
                        // An escape character at the very end is dropped.
                        let Some(escaped) = self.bump() else { break };
                        words.add_raw_char(escaped);
                        result.push(escaped);
                    } else {
                        words.add_char(ch);
                        result.push(ch);
                    }
                }
            }
        }
        match stop {
            None => Ok((result, words.finish())),
            Some(stop) => Err(missing(stop)),
        }
    }

    /// A nested word ending at `stop`; an error that leaves the input
    /// exhausted is reported as the missing `stop`, like BuildKit does.
    fn nested_word(&mut self, stop: char, raw_escapes: bool) -> Result<String, ShellError> {
        match self.process_until(Some(stop), raw_escapes) {
            Ok((word, _)) => Ok(word),
            Err(_) if self.at_end() => Err(missing(stop)),
            Err(err) => Err(err),
        }
    }

    /// `'...'`: everything literal up to the next `'`.
    fn process_single_quote(&mut self) -> Result<String, ShellError> {
        let mut out = String::new();
        let open = self.bump();
        if self.lex.raw_quotes {
            out.extend(open);
        }
        loop {
            match self.bump() {
                None => return Err(ShellError::UnterminatedSingleQuote),
                Some('\'') => {
                    if self.lex.raw_quotes {
                        out.push('\'');
                    }
                    return Ok(out);
                }
                Some(ch) => out.push(ch),
            }
        }
    }

    /// `"..."`: `$` expands; the escape character escapes only `"`, `$` and
    /// itself and is kept before anything else.
    fn process_double_quote(&mut self) -> Result<String, ShellError> {
        let mut out = String::new();
        let open = self.bump();
        if self.lex.raw_quotes {
            out.extend(open);
        }
        loop {
            match self.peek() {
                None => return Err(ShellError::UnterminatedDoubleQuote),
                Some('"') => {
                    self.bump();
                    if self.lex.raw_quotes {
                        out.push('"');
                    }
                    return Ok(out);
                }
                Some('$') => {
                    let value = self.process_dollar()?;
                    self.check_len(out.len() + value.len())?;
                    out.push_str(&value);
                }
                Some(ch) => {
                    self.bump();
                    let escape = self.lex.escape;
                    let mut literal = ch;
                    if ch == escape {
                        if self.raw_escapes {
                            out.push(ch);
                        }
                        match self.peek() {
                            // Dropped; the loop then reports the open quote.
                            None => continue,
                            Some(next) if next == '"' || next == '$' || next == escape => {
                                self.bump();
                                literal = next;
                            }
                            Some(_) => {}
                        }
                    }
                    out.push(literal);
                }
            }
        }
    }

    fn process_dollar(&mut self) -> Result<String, ShellError> {
        if self.depth >= MAX_NESTING {
            return Err(ShellError::TooDeeplyNested(MAX_NESTING));
        }
        self.depth += 1;
        let out = self.dollar();
        self.depth -= 1;
        out
    }

    fn dollar(&mut self) -> Result<String, ShellError> {
        self.bump(); // '$'

        if self.peek() != Some('{') {
            let name = self.process_name();
            if name.is_empty() {
                return Ok("$".to_owned());
            }
            return Ok(match self.get_env(&name) {
                Some(value) => value,
                None if self.lex.skip_unset_env => format!("${name}"),
                None => String::new(),
            });
        }

        self.bump(); // '{'
        match self.peek() {
            None => return Err(ShellError::MissingBrace),
            Some('{' | '}' | ':') => return Err(ShellError::BadSubstitution),
            Some(_) => {}
        }
        let name = self.process_name();
        match self.bump() {
            Some('}') => Ok(match self.get_env(&name) {
                Some(value) => value,
                None if self.lex.skip_unset_env => format!("${{{name}}}"),
                None => String::new(),
            }),
            Some(':') => match self.bump() {
                Some(op) => self.modifier(name, op, true),
                None => Err(ShellError::MissingBrace),
            },
            Some(op @ ('+' | '-' | '?' | '#' | '%')) => self.modifier(name, op, false),
            Some('/') => self.substitute(name),
            Some(op) => Err(ShellError::UnsupportedModifier(op.to_string())),
            // BuildKit says "unsupported modifier (\u{FFFD})" here.
            None => Err(ShellError::MissingBrace),
        }
    }

    /// `${name op word}` and `${name:op word}` (`colon`).
    fn modifier(&mut self, name: String, op: char, colon: bool) -> Result<String, ShellError> {
        let spelled = if colon {
            format!(":{op}")
        } else {
            op.to_string()
        };
        let pattern_op = op == '#' || op == '%';
        if colon && pattern_op {
            return Err(ShellError::UnsupportedModifier(spelled));
        }
        // Patterns keep their escapes: the pattern syntax needs them.
        let word = self.nested_word('}', pattern_op)?;

        let value = self.get_env(&name);
        if value.is_none() && self.lex.skip_unset_env {
            return Ok(format!("${{{name}{spelled}{word}}}"));
        }
        let set = value.is_some();
        let value = value.unwrap_or_default();
        // Whether the parameter counts as unset for this operator.
        let null = !set || (colon && value.is_empty());

        match op {
            '-' => Ok(if null { word } else { value }),
            '+' => Ok(if null { String::new() } else { word }),
            '?' if !null => Ok(value),
            '?' => {
                let message = if !word.is_empty() {
                    word
                } else if set {
                    "is not allowed to be empty".to_owned()
                } else {
                    "is not allowed to be unset".to_owned()
                };
                Err(ShellError::Required { name, message })
            }
            '#' | '%' => {
                // `#`/`%` remove the shortest match, `##`/`%%` the longest.
                let (greedy, pattern) = match word.strip_prefix(op) {
                    Some(pattern) => (true, pattern),
                    None => (false, word.as_str()),
                };
                if op == '#' {
                    trim_prefix(pattern, &value, greedy)
                } else {
                    trim_suffix(pattern, &value, greedy)
                }
            }
            _ => Err(ShellError::UnsupportedModifier(spelled)),
        }
    }

    /// `${name/pattern/replacement}` and `${name//pattern/replacement}`.
    fn substitute(&mut self, name: String) -> Result<String, ShellError> {
        let replace_all = self.peek() == Some('/');
        if replace_all {
            self.bump();
        }
        let pattern = self.nested_word('/', true)?;
        let replacement = self.nested_word('}', true)?;

        let value = self.get_env(&name);
        if value.is_none() && self.lex.skip_unset_env {
            return Ok(format!("${{{name}/{pattern}/{replacement}}}"));
        }
        let value = value.unwrap_or_default();
        let re =
            pattern_regex(&pattern, true, false).map_err(|reason| ShellError::InvalidPattern {
                pattern: pattern.clone(),
                reason,
            })?;
        if replace_all {
            return replace_all_go(&re, &value, &replacement, self.limit)
                .ok_or(ShellError::TooLong(self.limit));
        }
        Ok(match re.find(&value) {
            Some(m) => {
                self.check_len(value.len() - m.len() + replacement.len())?;
                let mut out = String::with_capacity(value.len() + replacement.len());
                out.push_str(&value[..m.start()]);
                out.push_str(&replacement);
                out.push_str(&value[m.end()..]);
                out
            }
            None => value,
        })
    }

    /// A parameter name: a run of digits (positional parameter), one special
    /// parameter character, or letters, digits and `_`.
    fn process_name(&mut self) -> String {
        let mut name = String::new();
        while let Some(ch) = self.peek() {
            if name.is_empty() && is_go_digit(ch) {
                while let Some(digit) = self.peek().filter(|&c| is_go_digit(c)) {
                    self.bump();
                    name.push(digit);
                }
                return name;
            }
            if name.is_empty() && is_special_param(ch) {
                self.bump();
                name.push(ch);
                return name;
            }
            if !is_name_char(ch) {
                break;
            }
            self.bump();
            name.push(ch);
        }
        name
    }
}

/// POSIX special parameters (`$@`, `$*`, `$#`, `$?`, `$-`, `$$`, `$!`, `$0`).
fn is_special_param(ch: char) -> bool {
    matches!(ch, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0')
}

static UNICODE_DIGIT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\A\p{Nd}\z").expect("constant regex is valid"));
static UNICODE_LETTER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\A\p{L}\z").expect("constant regex is valid"));

fn char_is(class: &Regex, ch: char) -> bool {
    class.is_match(ch.encode_utf8(&mut [0; 4]))
}

/// Go's `unicode.IsDigit`: general category Nd.
fn is_go_digit(ch: char) -> bool {
    if ch.is_ascii() {
        ch.is_ascii_digit()
    } else {
        char_is(&UNICODE_DIGIT, ch)
    }
}

/// Go's `unicode.IsLetter`: general category L.
fn is_go_letter(ch: char) -> bool {
    if ch.is_ascii() {
        ch.is_ascii_alphabetic()
    } else {
        char_is(&UNICODE_LETTER, ch)
    }
}

fn is_name_char(ch: char) -> bool {
    ch == '_' || is_go_letter(ch) || is_go_digit(ch)
}

/// Translate a shell pattern into a regular expression: `*` is any string
/// (shortest or longest), `?` any character, `\*`, `\?`, `\\` literal; a `\`
/// before `}` or `/` is dropped; everything else is literal.
fn pattern_regex(pattern: &str, greedy: bool, anchored: bool) -> Result<Regex, String> {
    let mut out = String::with_capacity(pattern.len() + 4);
    if anchored {
        out.push('^');
    }
    let star = if greedy { ".*" } else { ".*?" };
    let mut chars = skip_bom(pattern).chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '*' => out.push_str(star),
            '?' => out.push('.'),
            '\\' => {
                if matches!(chars.peek(), Some('}' | '/')) {
                    continue;
                }
                match chars.next() {
                    Some(esc @ ('*' | '?' | '\\')) => {
                        out.push('\\');
                        out.push(esc);
                    }
                    other => {
                        let shown = other.unwrap_or(char::REPLACEMENT_CHARACTER);
                        return Err(format!("invalid escape '\\{shown}'"));
                    }
                }
            }
            '[' | ']' | '{' | '}' | '.' | '+' | '(' | ')' | '|' | '^' | '$' => {
                out.push('\\');
                out.push(ch);
            }
            _ => out.push(ch),
        }
    }
    Regex::new(&out).map_err(|e| e.to_string())
}

fn trim_prefix(pattern: &str, value: &str, greedy: bool) -> Result<String, ShellError> {
    let re = pattern_regex(pattern, greedy, true).map_err(|reason| ShellError::InvalidPattern {
        pattern: pattern.to_owned(),
        reason,
    })?;
    Ok(match re.find(value) {
        Some(m) => value[m.end()..].to_owned(),
        None => value.to_owned(),
    })
}

/// Regular expressions find leftmost matches, so the shortest or longest
/// suffix is found as a prefix of the reversed value with the reversed
/// pattern.
fn trim_suffix(pattern: &str, value: &str, greedy: bool) -> Result<String, ShellError> {
    let trimmed = trim_prefix(&reverse_pattern(pattern), &reverse(value), greedy).map_err(
        |err| match err {
            ShellError::InvalidPattern { reason, .. } => ShellError::InvalidPattern {
                pattern: pattern.to_owned(),
                reason,
            },
            other => other,
        },
    )?;
    Ok(reverse(&trimmed))
}

fn reverse(s: &str) -> String {
    s.chars().rev().collect()
}

/// Reverse a pattern but keep each `\x` escape in front of its character:
/// `a\*c` becomes `c\*a`.
fn reverse_pattern(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    // Pair each escape with the character after it, from the left, then
    // emit the pieces in reverse order.
    let mut pieces: Vec<&[char]> = Vec::with_capacity(chars.len());
    let mut rest = chars.as_slice();
    while !rest.is_empty() {
        let width = if rest[0] == '\\' && rest.len() > 1 {
            2
        } else {
            1
        };
        let (piece, tail) = rest.split_at(width);
        pieces.push(piece);
        rest = tail;
    }
    pieces.iter().rev().flat_map(|piece| piece.iter()).collect()
}

/// Go's `Regexp.ReplaceAllString`: every match is replaced by `template`
/// with `$0`/`${0}` standing for the match and `$$` for `$`; an empty match
/// right after the previous match is not replaced. `None` once the result is longer
/// than `limit` bytes (`${V//?/$V}` would square `V`'s length).
fn replace_all_go(re: &Regex, src: &str, template: &str, limit: usize) -> Option<String> {
    let mut out = String::with_capacity(src.len());
    let mut last_end = 0;
    let mut pos = 0;
    while pos <= src.len() {
        let Some(m) = re.find_at(src, pos) else { break };
        out.push_str(src.get(last_end..m.start()).unwrap_or_default());
        if m.end() > last_end || m.start() == 0 {
            expand_go_template(&mut out, template, m.as_str());
            if out.len() > limit {
                return None;
            }
        }
        last_end = m.end();
        // Advance past this match, always by at least one character.
        let width = src
            .get(pos..)
            .and_then(|s| s.chars().next())
            .map_or(0, char::len_utf8);
        if pos + width > m.end() {
            pos += width;
        } else if pos + 1 > m.end() {
            pos += 1;
        } else {
            pos = m.end();
        }
    }
    out.push_str(src.get(last_end..).unwrap_or_default());
    (out.len() <= limit).then_some(out)
}

/// Go's `Regexp.Expand` for a regex without capture groups.
fn expand_go_template(out: &mut String, template: &str, matched: &str) {
    let mut rest = template;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        rest = &rest[dollar + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            out.push('$');
            rest = after;
            continue;
        }
        match template_reference(rest) {
            Some((name, after)) => {
                rest = after;
                // Only group 0 exists; other names and numbers expand to "".
                if name == "0" {
                    out.push_str(matched);
                }
            }
            // Malformed: the `$` is literal.
            None => out.push('$'),
        }
    }
    out.push_str(rest);
}

/// Parse `name` or `{name}` after a `$` in a Go replacement template.
fn template_reference(s: &str) -> Option<(&str, &str)> {
    let (braced, body) = match s.strip_prefix('{') {
        Some(body) => (true, body),
        None => (false, s),
    };
    let end = body
        .char_indices()
        .find(|&(_, c)| !is_name_char(c))
        .map_or(body.len(), |(i, _)| i);
    if end == 0 {
        return None;
    }
    let (name, mut rest) = body.split_at(end);
    if braced {
        rest = rest.strip_prefix('}')?;
    }
    Some((name, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn lex() -> Lex {
        Lex::new('\\')
    }

    fn word(input: &str, env: &[(&str, &str)]) -> Result<String, ShellError> {
        lex().process_word(input, &env.to_vec())
    }

    fn ok(input: &str, env: &[(&str, &str)]) -> String {
        word(input, env).unwrap_or_else(|e| panic!("{input:?} failed: {e}"))
    }

    fn err(input: &str, env: &[(&str, &str)]) -> ShellError {
        match word(input, env) {
            Ok(w) => panic!("{input:?} should fail, got {w:?}"),
            Err(e) => e,
        }
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn positional_and_special_parameters_are_names() {
        assert_eq!(ok("$1x", &[]), "x");
        assert_eq!(ok("$001x", &[]), "x");
        assert_eq!(ok("${001}x", &[]), "x");
        assert_eq!(ok("$@@@", &[]), "@@");
        assert_eq!(ok("$0a", &[]), "a");
        assert_eq!(ok("${#:-d}", &[]), "d");
        assert_eq!(ok("${$:+d}", &[]), "");
        // Found like any other name when the environment has them.
        assert_eq!(
            ok("$1$@${#}", &[("1", "one"), ("@", "at"), ("#", "h")]),
            "oneath"
        );
        assert_eq!(ok("$12", &[("1", "one")]), "");
        // Non-ASCII digits start a positional parameter as in Go.
        assert_eq!(ok("$\u{663}abc", &[]), "abc");
        assert_eq!(ok("$\u{663}\u{664}", &[("\u{663}\u{664}", "ar")]), "ar");
        let e = lex()
            .process_word_with_matches("$1 ${@} $$", &Vec::<(String, String)>::new())
            .unwrap();
        assert_eq!(e.unmatched, set(&["$", "1", "@"]));
    }

    /// BuildKit's TestShellParserMandatoryEnvVars.
    #[test]
    fn buildkit_mandatory_env_vars() {
        let set_envs = vec![("VAR", "plain"), ("ARG", "x")];
        let empty_envs = vec![("VAR", ""), ("ARG", "x")];
        let unset_envs = vec![("ARG", "x")];
        let no_empty = "${VAR:?message here$ARG}";
        let no_unset = "${VAR?message here$ARG}";
        let l = lex();
        assert_eq!(l.process_word(no_empty, &set_envs).unwrap(), "plain");
        let e = l.process_word(no_empty, &empty_envs).unwrap_err();
        assert!(e.to_string().contains("message herex"), "{e}");
        let e = l.process_word(no_empty, &unset_envs).unwrap_err();
        assert!(e.to_string().contains("message herex"), "{e}");
        assert_eq!(l.process_word(no_unset, &set_envs).unwrap(), "plain");
        assert_eq!(l.process_word(no_unset, &empty_envs).unwrap(), "");
        let e = l.process_word(no_unset, &unset_envs).unwrap_err();
        assert!(e.to_string().contains("message herex"), "{e}");
    }

    #[test]
    fn pattern_translation() {
        let cases = [
            ("*", "^.*"),
            ("?", "^."),
            ("\\*", "^\\*"),
            (
                "(()[]{\\}^$.\\*\\?|\\\\",
                "^\\(\\(\\)\\[\\]\\{\\}\\^\\$\\.\\*\\?\\|\\\\",
            ),
        ];
        for (pattern, expected) in cases {
            assert_eq!(
                pattern_regex(pattern, true, true).unwrap().as_str(),
                expected
            );
        }
        assert_eq!(
            pattern_regex("a*b", false, false).unwrap().as_str(),
            "a.*?b"
        );
        for invalid in ["\\", "\\x", "\\\\\\"] {
            assert!(pattern_regex(invalid, true, true).is_err(), "{invalid:?}");
        }
    }

    #[test]
    fn pattern_reversal() {
        assert_eq!(reverse("54321"), "12345");
        assert_eq!(reverse("🖖🚀👽"), "👽🚀🖖");
        let cases = [
            ("a\\*c", "c\\*a"),
            ("\\\\\\ab", "b\\a\\\\"),
            ("ab\\", "\\ba"),
            ("👽\\🚀🖖", "🖖\\🚀👽"),
            ("\\\\b", "b\\\\"),
            ("", ""),
            ("\\", "\\"),
        ];
        for (pattern, expected) in cases {
            assert_eq!(reverse_pattern(pattern), expected, "{pattern:?}");
        }
    }

    /// BuildKit's TestProcessWithMatchesPlatform (TestProcessWithMatches is in
    /// `tests/data/expansion.txt`).
    #[test]
    fn buildkit_process_with_matches_platform() {
        let release = "something-${VERSION}.${TARGETOS}-${TARGETARCH}${TARGETVARIANT:+-${TARGETVARIANT}}.tar.gz";
        let mut env = BTreeMap::from([
            ("VERSION", "v1.2.3"),
            ("TARGETOS", "linux"),
            ("TARGETARCH", "arm"),
            ("TARGETVARIANT", "v7"),
        ]);
        let expand = |env: &BTreeMap<&str, &str>| lex().process_word(release, env).unwrap();
        assert_eq!(expand(&env), "something-v1.2.3.linux-arm-v7.tar.gz");
        env.insert("TARGETARCH", "arm64");
        env.insert("TARGETVARIANT", "");
        assert_eq!(expand(&env), "something-v1.2.3.linux-arm64.tar.gz");
        env.remove("TARGETVARIANT");
        assert_eq!(expand(&env), "something-v1.2.3.linux-arm64.tar.gz");
    }

    #[test]
    fn matches_include_nested_lookups() {
        let env = vec![("A", "a"), ("E", "")];
        let e = lex()
            .process_word_with_matches("$A ${U:-$E} ${A:+$W} ${X#$Y}", &env)
            .unwrap();
        assert_eq!(e.result, "a   ");
        assert_eq!(e.matched, set(&["A", "E"]));
        assert_eq!(e.unmatched, set(&["U", "W", "X", "Y"]));
        assert_eq!(e.words, vec!["a".to_string()]);
    }

    #[test]
    fn backtick_escape() {
        let l = Lex::new('`');
        let env = vec![("V", "v")];
        let w = |s: &str| l.process_word(s, &env).unwrap();
        assert_eq!(w("C:\\dir\\$V"), "C:\\dir\\v");
        assert_eq!(w("a`$V`` `'"), "a$V` '");
        assert_eq!(w("\"x`\"y`$V``z`a\\\""), "x\"y$V`z`a\\");
        assert_eq!(w("a`"), "a");
        assert_eq!(l.process_words("a` b c", &env).unwrap(), ["a b", "c"]);
        // The pattern syntax always uses `\`: a backtick is kept in the
        // pattern as a literal character and does not escape the `*`.
        let p = vec![("P", "`*x*")];
        assert_eq!(l.process_word("${P#`*}", &p).unwrap(), "*x*");
        assert_eq!(l.process_word("${P#`\\*}", &p).unwrap(), "x*");
    }

    #[test]
    fn raw_quotes_and_raw_escapes() {
        let env = vec![("V", "v")];
        let mut l = lex();
        l.raw_quotes = true;
        assert_eq!(
            l.process_word("'a $V'\"b $V\"c", &env).unwrap(),
            "'a $V'\"b v\"c"
        );
        assert_eq!(
            l.process_words("'a b' \"c d\"", &env).unwrap(),
            ["'a b'", "\"c d\""]
        );
        let mut l = lex();
        l.raw_escapes = true;
        assert_eq!(l.process_word("a\\$V\\ b", &env).unwrap(), "a\\$V\\ b");
        assert_eq!(
            l.process_word("\"\\$V\\x\\\"\"", &env).unwrap(),
            "\\$V\\\\x\\\""
        );
        // Nested words of `-` never keep escapes; patterns always do.
        assert_eq!(l.process_word("${U:-\\$V}", &env).unwrap(), "$V");
        let l = lex();
        assert_eq!(l.process_word("${U:-\\$V}", &env).unwrap(), "$V");
    }

    #[test]
    fn skip_unset_env() {
        let env = vec![("S", "s"), ("E", "")];
        let mut l = lex();
        l.skip_unset_env = true;
        let w = |s: &str| l.process_word(s, &env).unwrap();
        assert_eq!(w("$U ${U} $S ${S} $E."), "$U ${U} s s .");
        assert_eq!(
            w("${U:-x} ${U-$S} ${U:+y} ${U?m} ${U:?}"),
            "${U:-x} ${U-s} ${U:+y} ${U?m} ${U:?}"
        );
        assert_eq!(
            w("${U#*x} ${U%%y} ${U/a/b} ${U//a/b}"),
            "${U#*x} ${U%%y} ${U/a/b} ${U/a/b}"
        );
        assert_eq!(w("${S:-x} ${E:-x} ${E?m}"), "s x ");
        assert_eq!(
            l.process_word("${E:?m}", &env).unwrap_err().to_string(),
            "E: m"
        );
        assert_eq!(
            l.process_words("$U ${U:-a b}", &env).unwrap(),
            ["$U", "${U:-a", "b}"]
        );
    }

    #[test]
    fn skip_process_quotes() {
        let env = vec![("V", "v w")];
        let mut l = lex();
        l.skip_process_quotes = true;
        assert_eq!(
            l.process_word("'$V' \"$V\"", &env).unwrap(),
            "'v w' \"v w\""
        );
        assert_eq!(l.process_word("'", &env).unwrap(), "'");
        assert_eq!(l.process_words("'$V'", &env).unwrap(), ["'v", "w'"]);
    }

    #[test]
    fn env_implementations() {
        let list = vec![
            ("A".to_string(), "1".to_string()),
            ("A".to_string(), "2".to_string()),
        ];
        assert_eq!(Env::get(&list, "A").as_deref(), Some("2"));
        assert_eq!(Env::get(list.as_slice(), "A").as_deref(), Some("2"));
        assert_eq!(Env::get(&list, "B"), None);
        let btree: BTreeMap<String, String> = list.iter().cloned().collect();
        assert_eq!(Env::get(&btree, "A").as_deref(), Some("2"));
        let hash: HashMap<String, String> = list.iter().cloned().collect();
        assert_eq!(Env::get(&hash, "A").as_deref(), Some("2"));
        let f = EnvFn(|name: &str| (name == "F").then(|| "f".to_string()));
        assert_eq!(lex().process_word("$F$A", &f).unwrap(), "f");
        let by_ref: &dyn Env = &btree;
        assert_eq!(lex().process_word("$A", &by_ref).unwrap(), "2");
        assert_eq!(Lex::default(), Lex::new(DEFAULT_ESCAPE));
    }

    fn nested(depth: usize) -> String {
        format!("{}x{}", "${A:-".repeat(depth), "}".repeat(depth))
    }

    #[test]
    fn nesting_limit() {
        let env = [("B", "b")];
        assert_eq!(ok(&nested(MAX_NESTING), &env), "x");
        assert_eq!(
            err(&nested(MAX_NESTING + 1), &env),
            ShellError::TooDeeplyNested(MAX_NESTING)
        );
        // Deep input fails cleanly even on a small stack.
        let deep = nested(100_000);
        let quoted = "\"${A:-".repeat(50_000);
        let handle = std::thread::Builder::new()
            .stack_size(1024 * 1024)
            .spawn(move || {
                let l = Lex::new('\\');
                let env: Vec<(String, String)> = Vec::new();
                let a = l.process_word(&nested(MAX_NESTING), &env);
                let b = l.process_word(&deep, &env);
                let c = l.process_word(&quoted, &env);
                (a, b, c)
            })
            .unwrap();
        let (a, b, c) = handle.join().unwrap();
        assert_eq!(a, Ok("x".to_string()));
        assert_eq!(b, Err(ShellError::TooDeeplyNested(MAX_NESTING)));
        assert_eq!(c, Err(ShellError::TooDeeplyNested(MAX_NESTING)));
    }

    #[test]
    fn expansion_size_is_capped() {
        // Regression (issue 9): `ENV A=$A$A` 26 times took 1.2 GB. Each doubling is
        // fine until the result passes 1 MiB, then expansion fails.
        let mut value = "x".to_string();
        let mut doublings = 0;
        let error = loop {
            match word("$A$A", &[("A", &value)]) {
                Ok(v) => {
                    value = v;
                    doublings += 1;
                }
                Err(e) => break e,
            }
        };
        assert_eq!(doublings, 20);
        assert_eq!(value.len(), MAX_EXPANSION);
        assert_eq!(error, ShellError::TooLong(MAX_EXPANSION));
        assert!(error.to_string().contains("1 MiB"), "{error}");
        // Inside quotes, nested words and replacements too.
        let big = "y".repeat(MAX_EXPANSION / 2 + 1);
        let env = [("A", big.as_str())];
        for input in [
            "\"$A$A\"",
            "${B:-$A$A}",
            "${A:+$A$A}",
            "${A/y/$A}",
            "${A//y/$A}",
            "${A//?/yy}",
        ] {
            assert_eq!(
                err(input, &env),
                ShellError::TooLong(MAX_EXPANSION),
                "{input}"
            );
        }
        // Up to the limit is fine, and a literal longer than the limit stays as it is.
        assert_eq!(ok("${A//y/z}", &env).len(), big.len());
        let literal = "z".repeat(MAX_EXPANSION * 2);
        assert_eq!(ok(&literal, &[]), literal);
        let longer = format!("{literal}$A");
        assert_eq!(err(&longer, &env), ShellError::TooLong(longer.len()));
    }

    #[test]
    fn long_input() {
        let input = "a$V b".repeat(50_000);
        let out = ok(&input, &[("V", "x")]);
        assert_eq!(out.len(), "ax b".len() * 50_000);
    }

    /// `tests/data/expansion.txt`: kiln's table of expansion cases (its header says the
    /// format). Every failing line is reported, with its line number.
    #[test]
    fn expansion_data_file() {
        use serde_json::Value;
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/expansion.txt");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let string = |v: &Value| v.as_str().map(str::to_owned);
        let strings =
            |v: &Value| -> Option<BTreeSet<String>> { v.as_array()?.iter().map(string).collect() };
        let mut env: Vec<(String, String)> = Vec::new();
        let (mut checked, mut failures) = (0, Vec::new());
        for (index, line) in text.lines().enumerate() {
            let n = index + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (kind, rest) = line.split_once(' ').unwrap_or((line, ""));
            let fields: Result<Vec<Value>, _> = serde_json::Deserializer::from_str(rest)
                .into_iter()
                .collect();
            let fields = match fields {
                Ok(f) => f,
                Err(e) => {
                    failures.push(format!("line {n}: {e}: {line}"));
                    continue;
                }
            };
            let input = fields.first().and_then(string).unwrap_or_default();
            let l = lex();
            let failure = match (kind, fields.as_slice()) {
                ("env", [Value::Object(m)]) => {
                    env = m
                        .iter()
                        .filter_map(|(k, v)| Some((k.clone(), string(v)?)))
                        .collect();
                    continue;
                }
                ("word", [_, Value::String(want)]) => match l.process_word(&input, &env) {
                    Ok(got) if got == *want => None,
                    got => Some(format!("expected {want:?}, got {got:?}")),
                },
                ("error", [_, Value::String(want)]) => match l.process_word(&input, &env) {
                    Err(e) if e.to_string() == *want => None,
                    got => Some(format!("expected the error {want:?}, got {got:?}")),
                },
                ("words", [_, want @ Value::Array(_)]) => {
                    let want: Vec<String> =
                        serde_json::from_value(want.clone()).unwrap_or_default();
                    match l.process_words(&input, &env) {
                        Ok(got) if got == want => None,
                        got => Some(format!("expected {want:?}, got {got:?}")),
                    }
                }
                ("matches", [_, want, matched, unmatched]) => {
                    let got = l.process_word_with_matches(&input, &env);
                    match (string(want), strings(matched), strings(unmatched), got) {
                        (None, _, _, Err(_)) => None,
                        (Some(w), Some(m), Some(u), Ok(e))
                            if e.result == w && e.matched == m && e.unmatched == u =>
                        {
                            None
                        }
                        (w, m, u, got) => Some(format!(
                            "expected {w:?} matched {m:?} unmatched {u:?}, got {got:?}"
                        )),
                    }
                }
                _ => Some("not a case: see the format at the top of the file".to_string()),
            };
            checked += 1;
            if let Some(f) = failure {
                failures.push(format!("line {n}: {input:?}: {f}"));
            }
        }
        assert!(checked >= 230, "only {checked} cases in {}", path.display());
        assert!(
            failures.is_empty(),
            "{} failure(s) in {}:\n{}",
            failures.len(),
            path.display(),
            failures.join("\n")
        );
    }

    // ---- BuildKit's data files ------------------------------------------

    /// The project's `shared` folder: `$KILN_SHARED_DIR`, or the first
    /// ancestor of the crate directory that has `shared/testdata/buildkit`.
    fn shared_dir() -> PathBuf {
        if let Some(dir) = std::env::var_os("KILN_SHARED_DIR") {
            let dir = PathBuf::from(dir);
            assert!(
                dir.join("testdata/buildkit").is_dir(),
                "KILN_SHARED_DIR={} has no testdata/buildkit folder",
                dir.display()
            );
            return dir;
        }
        let start = Path::new(env!("CARGO_MANIFEST_DIR"));
        start
            .ancestors()
            .map(|dir| dir.join("shared"))
            .find(|shared| shared.join("testdata/buildkit").is_dir())
            .unwrap_or_else(|| {
                panic!(
                    "no shared/testdata/buildkit folder in {} or any of its ancestors; \
                     set KILN_SHARED_DIR to the shared folder",
                    start.display()
                )
            })
    }

    fn buildkit_data(name: &str) -> (PathBuf, String) {
        let path = shared_dir().join("testdata/buildkit").join(name);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        (path, text)
    }

    /// `shell-envVarTest`, parsed like BuildKit's TestShellParser4EnvVars:
    /// lines starting with `#` are skipped before trimming, blank lines
    /// after; three `|`-separated fields, each trimmed; `A` and `U` lines
    /// run (not Windows).
    #[test]
    fn buildkit_env_var_test_file() {
        let (path, text) = buildkit_data("shell-envVarTest");
        let pairs = [
            ("PWD", "/home"),
            ("SHELL", "bash"),
            ("KOREAN", "한국어"),
            ("NULL", ""),
        ];
        let list: Vec<(String, String)> = pairs
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let map: BTreeMap<String, String> = list.iter().cloned().collect();
        let envs: [(&str, &dyn Env); 2] = [("list", &list), ("map", &map)];
        let l = Lex::new('\\');
        let mut checked = 0;
        let mut failures = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let n = index + 1;
            if raw.starts_with('#') {
                continue;
            }
            let line = raw.trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split('|').collect();
            if fields.len() != 3 {
                failures.push(format!("line {n}: need 3 '|'-separated fields: {line:?}"));
                continue;
            }
            let (platform, source, expected) =
                (fields[0].trim(), fields[1].trim(), fields[2].trim());
            match platform {
                "A" | "U" => {}
                "W" => continue,
                other => {
                    failures.push(format!("line {n}: invalid platform tag {other:?}"));
                    continue;
                }
            }
            checked += 1;
            for (label, env) in envs {
                match (l.process_word(source, env), expected) {
                    (Err(_), "error") => {}
                    (Ok(got), "error") => failures.push(format!(
                        "line {n} ({label}): {source:?} should fail, got {got:?}"
                    )),
                    (Ok(got), _) if got == expected => {}
                    (got, _) => failures.push(format!(
                        "line {n} ({label}): {source:?} expected {expected:?}, got {got:?}"
                    )),
                }
            }
        }
        eprintln!("{}: {checked} lines checked", path.display());
        assert!(checked > 0, "no test lines found in {}", path.display());
        assert!(
            failures.is_empty(),
            "{} failure(s) in {} ({checked} lines checked):\n{}",
            failures.len(),
            path.display(),
            failures.join("\n")
        );
    }

    /// `shell-wordsTest`, parsed like BuildKit's TestShellParser4Words:
    /// `#` lines skipped; `ENV ` lines add `NAME=VALUE` (leading spaces
    /// trimmed, trailing kept); other lines are `input | w1,w2` with the
    /// input trimmed and the expected list only left-trimmed of spaces
    /// before splitting on `,`; a failure is the single word `error`.
    #[test]
    fn buildkit_words_test_file() {
        let (path, text) = buildkit_data("shell-wordsTest");
        let l = Lex::new('\\');
        let mut env: Vec<(String, String)> = Vec::new();
        let mut checked = 0;
        let mut failures = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let n = index + 1;
            if line.starts_with('#') {
                continue;
            }
            if let Some(entry) = line.strip_prefix("ENV ") {
                let entry = entry.trim_start_matches(' ');
                let (name, value) = entry.split_once('=').unwrap_or((entry, ""));
                env.push((name.to_owned(), value.to_owned()));
                continue;
            }
            let fields: Vec<&str> = line.split('|').collect();
            if fields.len() != 2 {
                failures.push(format!("line {n}: need exactly one '|': {line:?}"));
                continue;
            }
            let input = fields[0].trim();
            let expected: Vec<&str> = fields[1].trim_start_matches(' ').split(',').collect();
            checked += 1;
            let map: HashMap<String, String> = env.iter().cloned().collect();
            let envs: [(&str, &dyn Env); 2] = [("list", &env), ("map", &map)];
            for (label, e) in envs {
                let got = l
                    .process_words(input, e)
                    .unwrap_or_else(|_| vec!["error".to_owned()]);
                if got != expected {
                    failures.push(format!(
                        "line {n} ({label}): {input:?} expected {expected:?}, got {got:?}"
                    ));
                }
            }
        }
        eprintln!("{}: {checked} lines checked", path.display());
        assert!(checked > 0, "no test lines found in {}", path.display());
        assert!(
            failures.is_empty(),
            "{} failure(s) in {} ({checked} lines checked):\n{}",
            failures.len(),
            path.display(),
            failures.join("\n")
        );
    }

    // ---- properties -------------------------------------------------------

    mod props {
        use super::super::*;
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};

        const PIECES: &[&str] = &[
            "$", "{", "}", ":", "-", "+", "?", "#", "%", "/", "//", "\\", "`", "'", "\"", "*", "[",
            "]", "(", ")", "^", "|", ".", "=", "@", "!", "0", "1", "a", "B", "_", " ", "\t", "\n",
            "한", "é", "\u{663}", "\u{feff}", "\0", "${", "${A", "${A:-", "${B#", "${A%%", "${B/",
            "${A//", "$A", "$0", "\\}", "\\/", "\\*", "\\x",
        ];

        fn shellish() -> impl Strategy<Value = String> {
            prop::collection::vec(prop::sample::select(PIECES), 0..48).prop_map(|v| v.concat())
        }

        fn text() -> impl Strategy<Value = String> {
            prop_oneof![shellish(), any::<String>()]
        }

        fn env() -> impl Strategy<Value = Vec<(String, String)>> {
            let name = prop_oneof![
                prop::sample::select(&["A", "B", "a", "_", "0", "1", "@", "#", "한"][..])
                    .prop_map(str::to_owned),
                "[A-Za-z_][A-Za-z0-9_]{0,3}",
            ];
            prop::collection::vec((name, text()), 0..5)
        }

        fn lexer() -> impl Strategy<Value = Lex> {
            (
                prop::sample::select(&['\\', '`', '$', '\'', '}', '/'][..]),
                any::<[bool; 4]>(),
            )
                .prop_map(|(escape, flags)| Lex {
                    escape,
                    raw_quotes: flags[0],
                    raw_escapes: flags[1],
                    skip_unset_env: flags[2],
                    skip_process_quotes: flags[3],
                })
        }

        fn runner() -> TestRunner {
            TestRunner::new(Config {
                cases: 3000,
                failure_persistence: None,
                ..Config::default()
            })
        }

        #[test]
        fn process_word_never_panics() {
            runner()
                .run(&(lexer(), text(), env()), |(l, input, env)| {
                    let word = l.process_word(&input, &env);
                    let full = l.process_word_with_matches(&input, &env);
                    prop_assert_eq!(word.is_ok(), full.is_ok());
                    if let (Ok(word), Ok(full)) = (word, full) {
                        prop_assert_eq!(word, full.result);
                    }
                    Ok(())
                })
                .unwrap();
        }

        #[test]
        fn process_words_never_panics() {
            runner()
                .run(&(lexer(), text(), env()), |(l, input, env)| {
                    if let Ok(words) = l.process_words(&input, &env) {
                        prop_assert!(words.iter().all(|w| !w.is_empty()));
                    }
                    Ok(())
                })
                .unwrap();
        }

        #[test]
        fn plain_text_is_unchanged_and_split_on_white_space() {
            runner()
                .run(&"[A-Za-z0-9 .,:/_\t-]{0,40}", |input| {
                    let l = Lex::new('\\');
                    let env: Vec<(String, String)> = Vec::new();
                    prop_assert_eq!(l.process_word(&input, &env).unwrap(), input.clone());
                    let expected: Vec<&str> = input.split_whitespace().collect();
                    prop_assert_eq!(l.process_words(&input, &env).unwrap(), expected);
                    Ok(())
                })
                .unwrap();
        }
    }
}
