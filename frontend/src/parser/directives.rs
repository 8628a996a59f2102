//! Parser directives (`# syntax=`, `# escape=`, `# check=`), recognised only in the
//! comment block at the very top of a Dockerfile.

use std::sync::LazyLock;

use regex::Regex;

static DIRECTIVE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^#[\t\n\x0c\r ]*([a-zA-Z][a-zA-Z0-9]*)[\t\n\x0c\r ]*=[\t\n\x0c\r ]*(.+?)[\t\n\x0c\r ]*$",
    )
    .expect("static regex")
});

/// One directive as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    /// Lower-cased name.
    pub name: String,
    /// Value, trimmed.
    pub value: String,
    /// 1-based line.
    pub line: usize,
}

/// The directive parser's state and what it found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directives {
    /// The escape character (`\` unless `# escape=` says otherwise).
    pub escape: char,
    /// `# syntax=` value, if any.
    pub syntax: Option<String>,
    /// `# check=` value, if any.
    pub check: Option<String>,
    /// All recognised directives in order.
    pub parsed: Vec<Directive>,
    line: usize,
    done: bool,
}

impl Default for Directives {
    fn default() -> Self {
        Directives {
            escape: '\\',
            syntax: None,
            check: None,
            parsed: Vec::new(),
            line: 0,
            done: false,
        }
    }
}

impl Directives {
    /// Feeds one line (newline stripped); records a directive if this is one.
    pub(super) fn possible_directive(&mut self, line: &str) -> Result<(), String> {
        self.line += 1;
        if self.done {
            return Ok(());
        }
        if self.line > 1 && !line.starts_with('#') {
            self.done = true;
            return Ok(());
        }
        let Some(caps) = DIRECTIVE.captures(line) else {
            self.done = true;
            return Ok(());
        };
        let name = caps[1].to_ascii_lowercase();
        if !matches!(name.as_str(), "escape" | "syntax" | "check") {
            return Ok(());
        }
        if self.parsed.iter().any(|d| d.name == name) {
            return Err(format!("only one {name} parser directive can be used"));
        }
        let value = caps[2].to_string();
        match name.as_str() {
            "escape" => {
                self.escape = match value.as_str() {
                    "\\" => '\\',
                    "`" => '`',
                    _ => {
                        return Err(format!(
                            "invalid escape token '{value}' does not match ` or \\"
                        ));
                    }
                }
            }
            "syntax" => self.syntax = Some(value.clone()),
            _ => self.check = Some(value.clone()),
        }
        self.parsed.push(Directive {
            name,
            value,
            line: self.line,
        });
        Ok(())
    }

    /// Removes a trailing line-continuation (escape char plus optional blanks); returns the
    /// rest and whether the logical line ends here. As in BuildKit, a doubled escape char at
    /// the end (`\\`) is a literal, not a continuation.
    pub(super) fn trim_continuation<'a>(&self, line: &'a str) -> (&'a str, bool) {
        let trimmed = line.trim_end_matches([' ', '\t']);
        match trimmed.strip_suffix(self.escape) {
            Some(rest) if !rest.ends_with(self.escape) => (rest, false),
            _ => (line, true),
        }
    }
}
