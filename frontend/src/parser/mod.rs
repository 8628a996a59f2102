//! The Dockerfile parser: source text -> an untyped syntax tree with line ranges.
//!
//! This mirrors BuildKit's `parser` package: it knows the shape of each instruction's
//! arguments (JSON or shell form, key/value pairs, whitespace lists) but does not validate
//! flags or argument counts; that happens in [`crate::instructions`].

mod directives;
mod dump;
mod heredoc;
mod line_parsers;

pub use directives::{Directive, Directives};
pub use dump::go_quote;
pub use heredoc::{Heredoc, chomp_heredoc_content, parse_heredoc};

use crate::error::{Diagnostic, Range};

/// One instruction of a Dockerfile (or the inner instruction of an `ONBUILD`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Node {
    /// The instruction keyword as written (`run`, `RUN`, `Copy`...).
    pub value: String,
    /// Builder flags (`--from=x`), in order, as written.
    pub flags: Vec<String>,
    /// The arguments: one per JSON element in exec form, the whole command line in
    /// shell form, `key value sep` triples for ENV and LABEL.
    pub args: Vec<String>,
    /// The inner instruction of an `ONBUILD`.
    pub sub: Option<Box<Node>>,
    /// Whether the arguments were written in JSON (exec) form.
    pub json: bool,
    /// The instruction line(s) with continuations joined, as the parser saw it.
    pub original: String,
    /// Heredoc bodies attached to this instruction, in order.
    pub heredocs: Vec<Heredoc>,
    /// First line of the instruction (1-based).
    pub start_line: usize,
    /// Last line of the instruction, heredoc bodies included (1-based).
    pub end_line: usize,
    /// Comment lines directly above the instruction.
    pub prev_comment: Vec<String>,
}

impl Node {
    /// The keyword in lower case.
    pub fn keyword(&self) -> String {
        self.value.to_ascii_lowercase()
    }

    /// The instruction's line range.
    pub fn range(&self) -> Range {
        Range::lines(self.start_line, self.end_line)
    }

    /// Whether this instruction (or the inner one of an `ONBUILD`) may carry heredocs.
    fn can_contain_heredoc(&self) -> bool {
        let node = match (&self.sub, self.keyword().as_str()) {
            (Some(sub), "onbuild") => sub,
            _ => self,
        };
        matches!(node.keyword().as_str(), "add" | "copy" | "run") && !node.json
    }
}

/// A warning found while parsing (the parse still succeeded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// One-line description.
    pub message: String,
    /// Where it applies.
    pub range: Range,
}

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ast {
    /// The instructions, in order.
    pub children: Vec<Node>,
    /// Parser directives found before the first instruction.
    pub directives: Directives,
    /// Non-fatal findings, such as empty continuation lines.
    pub warnings: Vec<Warning>,
    /// The source text, kept to point at columns in error messages.
    pub source: String,
}

impl Ast {
    /// The escape character in force (`\` or `` ` ``).
    pub fn escape(&self) -> char {
        self.directives.escape
    }

    /// A range inside `node` pointing at the first occurrence of `needle` on its lines
    /// (the first non-blank column when not found).
    pub fn locate(&self, node: &Node, needle: &str) -> Range {
        let lines: Vec<&str> = self.source.lines().collect();
        let range = node.range();
        for n in range.start.line..=range.end.line {
            let Some(text) = lines.get(n.wrapping_sub(1)) else {
                break;
            };
            if !needle.is_empty() {
                if let Some(byte) = text.find(needle) {
                    let column = text[..byte].chars().count() + 1;
                    return Range::lines(n, range.end.line).with_column(column);
                }
            }
        }
        let first = lines
            .get(range.start.line.wrapping_sub(1))
            .copied()
            .unwrap_or("");
        let column = first.chars().take_while(|c| c.is_whitespace()).count() + 1;
        range.with_column(column)
    }
}

/// Splits `src` into lines that keep their trailing `\n`, like BuildKit's scanner.
fn split_lines(src: &str) -> impl Iterator<Item = &str> {
    src.split_inclusive('\n')
}

fn trim_newline(s: &str) -> &str {
    s.trim_end_matches(['\r', '\n'])
}

fn trim_leading_whitespace(s: &str) -> &str {
    s.trim_start()
}

fn is_comment(line: &str) -> bool {
    trim_leading_whitespace(trim_newline(line)).starts_with('#')
}

fn is_empty_continuation_line(line: &str) -> bool {
    trim_leading_whitespace(trim_newline(line)).is_empty()
}

/// Parses a Dockerfile.
///
/// ```
/// let ast = kiln_frontend::parser::parse("FROM busybox\nRUN echo hi\n").unwrap();
/// assert_eq!(ast.dump(), "(from \"busybox\")\n(run \"echo hi\")");
/// ```
pub fn parse(src: &str) -> Result<Ast, Diagnostic> {
    let mut d = Directives::default();
    let mut current_line = 0usize;
    let mut children: Vec<Node> = Vec::new();
    let mut warnings = Vec::new();
    let mut comments: Vec<String> = Vec::new();
    let mut lines = split_lines(src).peekable();

    while let Some(raw) = lines.next() {
        let raw = if current_line == 0 {
            raw.strip_prefix('\u{feff}').unwrap_or(raw)
        } else {
            raw
        };
        if is_comment(raw) {
            let comment = trim_leading_whitespace(trim_newline(raw))[1..].trim();
            if comment.is_empty() {
                comments.clear();
            } else {
                comments.push(comment.to_string());
            }
        }
        let processed = process_line(&mut d, raw, true)
            .map_err(|m| Diagnostic::at(Range::lines(current_line + 1, current_line + 1), m))?;
        current_line += 1;
        let start_line = current_line;

        let (first, mut end_of_line) = d.trim_continuation(processed);
        if end_of_line && first.is_empty() {
            continue;
        }
        let mut buf = first.to_string();
        let mut has_empty_continuation = false;
        while !end_of_line {
            let Some(raw) = lines.next() else { break };
            let processed = process_line(&mut d, raw, false)
                .map_err(|m| Diagnostic::at(Range::lines(current_line + 1, current_line + 1), m))?;
            current_line += 1;
            if is_comment(raw) {
                continue;
            }
            if is_empty_continuation_line(processed) {
                has_empty_continuation = true;
                continue;
            }
            let (part, eol) = d.trim_continuation(processed);
            end_of_line = eol;
            buf.push_str(part);
        }

        if has_empty_continuation {
            warnings.push(Warning {
                message: format!("Empty continuation line found in: {buf}"),
                range: Range::lines(current_line, current_line),
            });
        }

        let mut child = line_parsers::node_from_line(&buf, &d)
            .map_err(|m| Diagnostic::at(Range::lines(start_line, current_line), m))?;
        child.prev_comment = std::mem::take(&mut comments);

        if child.can_contain_heredoc() && buf.contains("<<") {
            let heredocs = heredoc::heredocs_from_line(&buf)
                .map_err(|m| Diagnostic::at(Range::lines(start_line, current_line), m))?;
            for mut doc in heredocs {
                let mut terminated = false;
                for raw in lines.by_ref() {
                    current_line += 1;
                    let mut candidate = trim_newline(raw);
                    if doc.chomp {
                        candidate = candidate.trim_start_matches('\t');
                    }
                    if candidate == doc.name {
                        terminated = true;
                        break;
                    }
                    doc.content.push_str(raw);
                }
                if !terminated {
                    return Err(Diagnostic::at(
                        Range::lines(start_line, current_line),
                        format!("unterminated heredoc {:?}", doc.name),
                    ));
                }
                child.heredocs.push(doc);
            }
        }

        child.start_line = start_line;
        child.end_line = current_line;
        if let Some(sub) = child.sub.as_mut() {
            sub.start_line = start_line;
            sub.end_line = current_line;
        }
        children.push(child);
    }

    if children.is_empty() {
        return Err(Diagnostic::at(
            Range::lines(current_line.max(1), current_line.max(1)),
            "file with no instructions",
        ));
    }
    Ok(Ast {
        children,
        directives: d,
        warnings,
        source: src.to_string(),
    })
}

/// Strips the newline (and, for the first line of an instruction, leading white space),
/// feeds the line to the directive parser and blanks out comment lines.
fn process_line<'a>(d: &mut Directives, raw: &'a str, strip_left: bool) -> Result<&'a str, String> {
    let mut token = trim_newline(raw);
    if strip_left {
        token = trim_leading_whitespace(token);
    }
    d.possible_directive(token)?;
    if is_comment(token) { Ok("") } else { Ok(token) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_line_ranges() {
        let ast = parse("FROM a\n\nRUN x \\\n  y\nCOPY <<EOF /f\nhello\nEOF\nCMD z\n").unwrap();
        let ranges: Vec<_> = ast
            .children
            .iter()
            .map(|n| (n.start_line, n.end_line))
            .collect();
        assert_eq!(ranges, vec![(1, 1), (3, 4), (5, 7), (8, 8)]);
        assert_eq!(ast.children[2].heredocs[0].content, "hello\n");
    }

    #[test]
    fn heredoc_chomp_and_quoting() {
        let src = "FROM a\nRUN <<-EOT cat\n\techo $x\n\tEOT\nCOPY <<'A' <<\"B\" /d/\na\nA\nb\nB\n";
        let ast = parse(src).unwrap();
        let run = &ast.children[1];
        assert_eq!(run.heredocs.len(), 1);
        assert!(run.heredocs[0].chomp);
        assert!(run.heredocs[0].expand);
        assert_eq!(run.heredocs[0].content, "\techo $x\n");
        let copy = &ast.children[2];
        let names: Vec<_> = copy.heredocs.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["A", "B"]);
        assert!(copy.heredocs.iter().all(|h| !h.expand));
    }

    #[test]
    fn unterminated_heredoc_is_an_error() {
        let err = parse("FROM a\nRUN <<EOF\necho\n").unwrap_err();
        assert!(err.message.contains("unterminated heredoc"), "{err:?}");
        assert_eq!(err.range.unwrap().start.line, 2);
    }

    #[test]
    fn heredoc_not_in_json_form() {
        let ast = parse("FROM a\nRUN [\"cat\", \"<<EOF\"]\nCMD x\n").unwrap();
        assert!(ast.children[1].heredocs.is_empty());
        assert_eq!(ast.children.len(), 3);
    }

    #[test]
    fn onbuild_heredoc() {
        let ast = parse("FROM a\nONBUILD RUN <<EOF\necho\nEOF\n").unwrap();
        assert_eq!(ast.children[1].heredocs.len(), 1);
        assert_eq!(ast.dump(), "(from \"a\")\n(onbuild (run \"<<EOF\"))");
    }

    #[test]
    fn directives_only_before_first_instruction() {
        let ast =
            parse("# escape=`\n# syntax=foo/bar\nFROM a\n# escape=\\\nRUN x `\n y\n").unwrap();
        assert_eq!(ast.escape(), '`');
        assert_eq!(ast.directives.syntax.as_deref(), Some("foo/bar"));
        assert_eq!(ast.children[1].args, ["x  y"]);
    }

    #[test]
    fn duplicate_directive_is_an_error() {
        let err = parse("# escape=`\n# escape=`\nFROM a\n").unwrap_err();
        assert!(err.message.contains("only one escape"), "{err:?}");
    }

    #[test]
    fn bad_escape_directive() {
        let err = parse("# escape=x\nFROM a\n").unwrap_err();
        assert!(err.message.contains("invalid escape token"), "{err:?}");
    }

    #[test]
    fn empty_continuation_warns() {
        let ast = parse("FROM a\nRUN a \\\n\n b\n").unwrap();
        assert_eq!(ast.warnings.len(), 1);
        assert_eq!(ast.children[1].args, ["a  b"]);
    }

    #[test]
    fn comments_are_kept_for_the_next_instruction() {
        let ast = parse("# hello\n# world\nFROM a\n#\n# about run\nRUN x\n").unwrap();
        assert_eq!(ast.children[0].prev_comment, ["hello", "world"]);
        assert_eq!(ast.children[1].prev_comment, ["about run"]);
    }

    #[test]
    fn bom_and_crlf() {
        let ast = parse("\u{feff}FROM a\r\nRUN b \\\r\n c\r\n").unwrap();
        assert_eq!(ast.dump(), "(from \"a\")\n(run \"b  c\")");
    }
}
