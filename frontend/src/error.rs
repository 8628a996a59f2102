//! Errors with source locations, rendered the way BuildKit prints them:
//! `Dockerfile:12:5: message`, then the offending line and a caret.

use std::borrow::Cow;

/// How many characters of a source line or of a quoted word an error shows; the rest is
/// cut (a 16 MiB instruction must not be echoed whole, let alone several times).
pub const SHOWN_CHARS: usize = 200;

/// A message longer than this many characters keeps its start and its end (where the
/// reason is) and loses its middle.
const MAX_MESSAGE_CHARS: usize = 4 * SHOWN_CHARS;

/// `text` as an error shows it: whole when it has at most [`SHOWN_CHARS`] characters,
/// else its first [`SHOWN_CHARS`] characters, `...` and its full length.
pub fn shorten(text: &str) -> Cow<'_, str> {
    match text.char_indices().nth(SHOWN_CHARS) {
        None => Cow::Borrowed(text),
        Some((cut, _)) => Cow::Owned(format!("{}... ({} bytes)", &text[..cut], text.len())),
    }
}

/// `text` quoted for a message (as `{:?}` quotes it), cut like [`shorten`] with the
/// `...` and length outside the quotes.
pub fn quoted(text: &str) -> String {
    match text.char_indices().nth(SHOWN_CHARS) {
        None => format!("{text:?}"),
        Some((cut, _)) => format!("{:?}... ({} bytes)", &text[..cut], text.len()),
    }
}

/// A one-line message with its middle cut out when it is very long; both ends stay,
/// since messages start with what failed and end with why.
fn elide_middle(message: String) -> String {
    let chars = message.chars().count();
    if chars <= MAX_MESSAGE_CHARS {
        return message;
    }
    let head_chars = MAX_MESSAGE_CHARS / 2;
    let tail_chars = MAX_MESSAGE_CHARS / 4;
    let head_end = message
        .char_indices()
        .nth(head_chars)
        .map_or(message.len(), |(i, _)| i);
    let tail_start = message
        .char_indices()
        .nth(chars - tail_chars)
        .map_or(message.len(), |(i, _)| i);
    format!(
        "{} ... ({} bytes cut) ... {}",
        &message[..head_end],
        tail_start - head_end,
        &message[tail_start..]
    )
}

/// Source locations live with the ops graph (an op's `Origin` carries one); the
/// frontend's errors use the same type.
pub use kiln_ops::{Position, Range};

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
            message: elide_middle(message.into()),
            range: Some(range),
        }
    }

    /// A diagnostic without a location.
    pub fn new(message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            message: elide_middle(message.into()),
            range: None,
        }
    }

    /// Renders `FILE:LINE:COL: message` followed by the offending source lines and a caret
    /// under the start column, as BuildKit prints Dockerfile errors. Each source line is
    /// shown once, cut to [`SHOWN_CHARS`] characters.
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
                let text = shorten(text);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_shown_whole() {
        assert_eq!(shorten("RUN echo hi"), "RUN echo hi");
        let exact = "é".repeat(SHOWN_CHARS);
        assert_eq!(shorten(&exact), exact);
    }

    #[test]
    fn quoted_text_keeps_the_cut_outside_the_quotes() {
        assert_eq!(quoted("a\"b"), "\"a\\\"b\"");
        let long = "y".repeat(SHOWN_CHARS * 2);
        assert_eq!(
            quoted(&long),
            format!("\"{}\"... ({} bytes)", "y".repeat(SHOWN_CHARS), long.len())
        );
    }

    #[test]
    fn long_text_is_cut_at_a_character_boundary() {
        let long = "é".repeat(SHOWN_CHARS + 1);
        let shown = shorten(&long);
        assert_eq!(
            shown,
            format!("{}... ({} bytes)", "é".repeat(SHOWN_CHARS), long.len())
        );
    }

    /// Regression (issue 9): a 16 MiB instruction with an error was echoed four times.
    #[test]
    fn a_huge_instruction_is_shown_once_and_cut() {
        let huge = format!("ENV A={}", "x".repeat(16 << 20));
        let source = format!("FROM scratch\n{huge}\n");
        let message = format!("failed to expand {:?}: B: oops", huge);
        let d = Diagnostic::at(Range::lines(2, 2).with_column(1), message);
        assert!(d.message.len() < 1000, "{}", d.message.len());
        assert!(d.message.starts_with("failed to expand \"ENV A=xxx"));
        assert!(d.message.ends_with("\": B: oops"), "{}", d.message);
        let out = d.render("Dockerfile", &source);
        assert!(out.len() < 2000, "{}", out.len());
        assert_eq!(out.lines().count(), 3, "{out}");
        assert!(out.starts_with("Dockerfile:2:1: failed to expand"), "{out}");
        let shown = out.lines().nth(1).unwrap();
        assert_eq!(shown, format!(" 2 | {}", shorten(&huge)));
        assert!(shown.ends_with(&format!("... ({} bytes)", huge.len())));
    }
}
