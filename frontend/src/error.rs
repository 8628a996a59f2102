//! Errors with source locations, rendered the way BuildKit prints them:
//! `Dockerfile:12:5: message`, then the offending line and a caret.

use std::fmt;

/// A position in a Dockerfile: 1-based line, 1-based column (0 when unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    /// 1-based line number.
    pub line: usize,
    /// 1-based column, or 0 when only the line is known.
    pub column: usize,
}

/// A range of lines (inclusive) in a Dockerfile, with an optional start column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Range {
    /// Where the range begins.
    pub start: Position,
    /// Where the range ends (line inclusive).
    pub end: Position,
}

impl Range {
    /// A range covering whole lines `start..=end`.
    pub fn lines(start: usize, end: usize) -> Range {
        Range {
            start: Position {
                line: start,
                column: 0,
            },
            end: Position {
                line: end.max(start),
                column: 0,
            },
        }
    }

    /// The same range with a start column.
    pub fn with_column(mut self, column: usize) -> Range {
        self.start.column = column;
        self
    }
}

/// An error in a Dockerfile, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Diagnostic {
    /// What is wrong, in one line.
    pub message: String,
    /// Where; `None` for errors about the whole file.
    pub range: Option<Range>,
}

impl Diagnostic {
    /// A diagnostic at a range.
    pub fn at(range: Range, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            message: message.into(),
            range: Some(range),
        }
    }

    /// A diagnostic without a location.
    pub fn new(message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            message: message.into(),
            range: None,
        }
    }

    /// Renders `FILE:LINE:COL: message` followed by the offending source lines and a caret
    /// under the start column, as BuildKit prints Dockerfile errors.
    pub fn render(&self, file: &str, source: &str) -> String {
        let Some(range) = self.range else {
            return format!("{file}: {}", self.message);
        };
        let col = range.start.column.max(1);
        let mut out = format!("{file}:{}:{col}: {}", range.start.line, self.message);
        let lines: Vec<&str> = source.lines().collect();
        let first = range.start.line.max(1);
        // Show at most a few lines of a long instruction.
        let last = range.end.line.max(first).min(first + 4);
        let width = last.to_string().len();
        for n in first..=last {
            if let Some(text) = lines.get(n - 1) {
                out.push_str(&format!("\n {n:>width$} | {text}"));
                if n == first {
                    let pad: String = text
                        .chars()
                        .take(col - 1)
                        .map(|c| if c == '\t' { '\t' } else { ' ' })
                        .collect();
                    out.push_str(&format!("\n {:>width$} | {pad}^", ""));
                }
            }
        }
        out
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.start.line, self.start.column.max(1))
    }
}
