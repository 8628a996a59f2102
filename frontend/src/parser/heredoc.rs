//! Heredocs (`RUN <<EOF`, `COPY <<-"EOT" /dst`): detection on the instruction line and
//! the attributes of each (name, whether to expand variables, tab chomping).

use std::collections::BTreeMap;
use std::sync::LazyLock;

use regex::Regex;

use crate::shell::Lex;

static HEREDOC: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(\d*)<<(-?)([^<]*)$").expect("static regex"));

/// One heredoc attached to an instruction.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Heredoc {
    /// The delimiter word, quotes removed.
    pub name: String,
    /// The body as written (newlines kept, terminator excluded, tabs not yet chomped).
    pub content: String,
    /// `false` when any part of the delimiter was quoted: the body is taken literally.
    pub expand: bool,
    /// `<<-`: leading tabs are stripped from body lines.
    pub chomp: bool,
    /// A file descriptor written before `<<` (`3<<EOF`), 0 when absent.
    pub file_descriptor: u32,
}

impl Heredoc {
    /// The body with tab chomping applied when `<<-` was used.
    pub fn body(&self) -> String {
        if self.chomp {
            chomp_heredoc_content(&self.content)
        } else {
            self.content.clone()
        }
    }
}

/// Strips leading tabs from every line.
pub fn chomp_heredoc_content(src: &str) -> String {
    src.split_inclusive('\n')
        .map(|l| l.trim_start_matches('\t'))
        .collect()
}

/// Parses one word of an instruction line as a heredoc opener, if it is one.
pub fn parse_heredoc(word: &str) -> Result<Option<Heredoc>, String> {
    let Some(caps) = HEREDOC.captures(word) else {
        return Ok(None);
    };
    let fd = caps[1].parse::<u32>().unwrap_or(0);
    let chomp = &caps[2] == "-";
    let rest = &caps[3];
    if rest.is_empty() {
        return Ok(None);
    }
    let env: BTreeMap<String, String> = BTreeMap::new();
    let mut lex = Lex::new('\\');
    lex.skip_unset_env = true;
    lex.raw_quotes = false;
    let words = lex.process_words(rest, &env).map_err(|e| e.to_string())?;
    if words.len() != 1 {
        return Ok(None);
    }
    lex.raw_quotes = true;
    let raw = lex.process_words(rest, &env).map_err(|e| e.to_string())?;
    if raw.len() != words.len() {
        return Err(format!(
            "internal lexing of heredoc produced inconsistent results: {rest}"
        ));
    }
    let quotes = |s: &str| s.matches(['\'', '"']).count();
    // If quote removal changed the word, part of the delimiter was quoted.
    let expand = quotes(&words[0]) == quotes(&raw[0]);
    Ok(Some(Heredoc {
        name: words[0].clone(),
        content: String::new(),
        expand,
        chomp,
        file_descriptor: fd,
    }))
}

/// Finds the heredoc openers on an instruction line, in order.
pub(super) fn heredocs_from_line(line: &str) -> Result<Vec<Heredoc>, String> {
    let env: BTreeMap<String, String> = BTreeMap::new();
    let mut lex = Lex::new('\\');
    lex.raw_quotes = true;
    lex.raw_escapes = true;
    let words = lex.process_words(line, &env).unwrap_or_default();
    let mut docs = Vec::new();
    for word in words {
        if let Some(doc) = parse_heredoc(&word)? {
            docs.push(doc);
        }
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openers() {
        let h = parse_heredoc("<<EOF").unwrap().unwrap();
        assert_eq!((h.name.as_str(), h.expand, h.chomp), ("EOF", true, false));
        let h = parse_heredoc("<<-'EOF'").unwrap().unwrap();
        assert_eq!((h.name.as_str(), h.expand, h.chomp), ("EOF", false, true));
        let h = parse_heredoc("3<<E\"O\"F").unwrap().unwrap();
        assert_eq!(
            (h.name.as_str(), h.expand, h.file_descriptor),
            ("EOF", false, 3)
        );
        assert!(parse_heredoc("<<").unwrap().is_none());
        assert!(parse_heredoc("a<<EOF").unwrap().is_none());
    }

    #[test]
    fn chomp() {
        assert_eq!(chomp_heredoc_content("\t\ta\n\tb\nc\t\n"), "a\nb\nc\t\n");
    }
}
