//! Per-instruction argument shapes, as BuildKit's `line_parsers.go` defines them.

use std::sync::LazyLock;

use regex::Regex;

use super::{Directives, Node};

/// BuildKit's `reWhitespace`: ASCII blanks but not newline.
static WHITESPACE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[\t\x0b\x0c\r ]+").expect("static regex"));

/// What a line parser produces: arguments, a nested node (ONBUILD) and the JSON flag.
#[derive(Default)]
struct Parsed {
    args: Vec<String>,
    sub: Option<Box<Node>>,
    json: bool,
}

/// Builds a node from one logical line (continuations already joined).
pub(super) fn node_from_line(line: &str, d: &Directives) -> Result<Node, String> {
    let (cmd, flags, rest) = split_command(line)?;
    let parsed = match cmd.to_ascii_lowercase().as_str() {
        "add" | "copy" | "volume" => parse_maybe_json_to_list(&rest)?,
        "arg" => Parsed {
            args: parse_words(&rest, d.escape),
            ..Parsed::default()
        },
        "cmd" | "entrypoint" | "run" | "shell" => parse_maybe_json(&rest)?,
        "env" => parse_name_val(&rest, "ENV", d)?,
        "label" => parse_name_val(&rest, "LABEL", d)?,
        "expose" | "from" => parse_whitespace_list(&rest),
        "healthcheck" => parse_health_config(&rest)?,
        "maintainer" | "stopsignal" | "user" | "workdir" => parse_string(&rest),
        "onbuild" => parse_sub_command(&rest, d)?,
        // Unknown instructions parse (the typed step rejects them) with one empty argument,
        // as BuildKit's parseIgnore does.
        _ => Parsed {
            args: vec![String::new()],
            ..Parsed::default()
        },
    };
    Ok(Node {
        value: cmd,
        flags,
        args: parsed.args,
        sub: parsed.sub,
        json: parsed.json,
        original: line.to_string(),
        ..Node::default()
    })
}

/// Splits a line into the keyword, the builder flags and the rest.
fn split_command(line: &str) -> Result<(String, Vec<String>, String), String> {
    let mut parts = WHITESPACE.splitn(line.trim(), 2);
    let cmd = parts.next().unwrap_or_default().to_string();
    match parts.next() {
        Some(rest) => {
            let (args, flags) = extract_builder_flags(rest);
            Ok((cmd, flags, args.trim().to_string()))
        }
        None => Ok((cmd, Vec::new(), String::new())),
    }
}

/// Takes leading `--flag[=value]` words off a line; `--` ends the flags.
/// Returns the rest of the line and the flags.
fn extract_builder_flags(line: &str) -> (&str, Vec<String>) {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote(u8),
    }
    let bytes = line.as_bytes();
    let mut words = Vec::new();
    let mut word: Vec<u8> = Vec::new();
    let mut blank_ok = false;
    let mut phase = Phase::Spaces;
    let mut pos = 0;
    let push = |words: &mut Vec<String>, word: &mut Vec<u8>| {
        words.push(String::from_utf8_lossy(word).into_owned());
        word.clear();
    };
    while pos <= bytes.len() {
        let at_end = pos == bytes.len();
        let ch = if at_end { 0 } else { bytes[pos] };
        if phase == Phase::Spaces {
            if at_end {
                break;
            }
            if ch.is_ascii_whitespace() || ch == 0x0b {
                pos += 1;
                continue;
            }
            if ch != b'-' || bytes.get(pos + 1) != Some(&b'-') {
                return (&line[pos..], words);
            }
            phase = Phase::Word;
        }
        if at_end {
            if word != b"--" && (blank_ok || !word.is_empty()) {
                push(&mut words, &mut word);
            }
            break;
        }
        match phase {
            Phase::Word => {
                if ch.is_ascii_whitespace() || ch == 0x0b {
                    phase = Phase::Spaces;
                    if word == b"--" {
                        return (&line[pos..], words);
                    }
                    if blank_ok || !word.is_empty() {
                        push(&mut words, &mut word);
                    }
                    word.clear();
                    blank_ok = false;
                } else if ch == b'\'' || ch == b'"' {
                    phase = Phase::Quote(ch);
                    blank_ok = true;
                } else if ch == b'\\' {
                    if pos + 1 < bytes.len() {
                        pos += 1;
                        word.push(bytes[pos]);
                    }
                } else {
                    word.push(ch);
                }
            }
            Phase::Quote(q) => {
                if ch == q {
                    phase = Phase::Word;
                } else if ch == b'\\' {
                    if pos + 1 == bytes.len() {
                        phase = Phase::Word;
                    } else {
                        pos += 1;
                        word.push(bytes[pos]);
                    }
                } else {
                    word.push(ch);
                }
            }
            Phase::Spaces => unreachable!("handled above"),
        }
        pos += 1;
    }
    ("", words)
}

/// Splits on unquoted white space, keeping quotes and escapes in the words (BuildKit's
/// `parseWords`, used for ENV, LABEL and ARG).
pub(crate) fn parse_words(rest: &str, escape: char) -> Vec<String> {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote(char),
    }
    let chars: Vec<char> = rest.chars().collect();
    let mut words = Vec::new();
    let mut word = String::new();
    let mut blank_ok = false;
    let mut phase = Phase::Spaces;
    let mut pos = 0;
    while pos <= chars.len() {
        let at_end = pos == chars.len();
        let ch = if at_end { '\0' } else { chars[pos] };
        if phase == Phase::Spaces {
            if at_end {
                break;
            }
            if ch.is_whitespace() {
                pos += 1;
                continue;
            }
            phase = Phase::Word;
        }
        if at_end {
            if blank_ok || !word.is_empty() {
                words.push(std::mem::take(&mut word));
            }
            break;
        }
        match phase {
            Phase::Word => {
                if ch.is_whitespace() {
                    phase = Phase::Spaces;
                    if blank_ok || !word.is_empty() {
                        words.push(std::mem::take(&mut word));
                    }
                    blank_ok = false;
                    pos += 1;
                    continue;
                }
                if ch == '\'' || ch == '"' {
                    phase = Phase::Quote(ch);
                    blank_ok = true;
                }
                if ch == escape {
                    if pos + 1 == chars.len() {
                        pos += 1;
                        continue;
                    }
                    word.push(ch);
                    pos += 1;
                    word.push(chars[pos]);
                } else {
                    word.push(ch);
                }
            }
            Phase::Quote(q) => {
                if ch == q {
                    phase = Phase::Word;
                }
                if ch == escape && q != '\'' {
                    if pos + 1 == chars.len() {
                        phase = Phase::Word;
                        pos += 1;
                        continue;
                    }
                    word.push(ch);
                    pos += 1;
                    word.push(chars[pos]);
                } else {
                    word.push(ch);
                }
            }
            Phase::Spaces => unreachable!("handled above"),
        }
        pos += 1;
    }
    words
}

/// ENV and LABEL: `KEY value` (old form) or `k=v k2=v2`.
fn parse_name_val(rest: &str, key: &str, d: &Directives) -> Result<Parsed, String> {
    let words = parse_words(rest, d.escape);
    let Some(first) = words.first() else {
        return Ok(Parsed::default());
    };
    let mut args = Vec::new();
    if !first.contains('=') {
        let mut parts = WHITESPACE.splitn(rest, 2);
        let k = parts.next().unwrap_or_default();
        let Some(v) = parts.next() else {
            return Err(format!("{key} must have two arguments"));
        };
        args.extend([k.to_string(), v.to_string(), String::new()]);
    } else {
        for word in &words {
            let Some((k, v)) = word.split_once('=') else {
                return Err(format!(
                    "Syntax error - can't find = in {}. Must be of the form: name=value",
                    super::go_quote(word)
                ));
            };
            args.extend([k.to_string(), v.to_string(), "=".to_string()]);
        }
    }
    Ok(Parsed {
        args,
        ..Parsed::default()
    })
}

fn parse_whitespace_list(rest: &str) -> Parsed {
    if rest.is_empty() {
        return Parsed::default();
    }
    Parsed {
        args: WHITESPACE.split(rest).map(str::to_string).collect(),
        ..Parsed::default()
    }
}

fn parse_string(rest: &str) -> Parsed {
    if rest.is_empty() {
        return Parsed::default();
    }
    Parsed {
        args: vec![rest.to_string()],
        ..Parsed::default()
    }
}

fn parse_sub_command(rest: &str, d: &Directives) -> Result<Parsed, String> {
    if rest.is_empty() {
        return Ok(Parsed::default());
    }
    let child = node_from_line(rest, d)?;
    Ok(Parsed {
        sub: Some(Box::new(child)),
        ..Parsed::default()
    })
}

/// Why a JSON parse did not give an exec form.
enum JsonError {
    /// Not JSON (or not an array): fall back to the shell form.
    NotJson,
    /// A JSON array with a non-string element: an error in BuildKit too.
    NotStringArray,
}

/// Parses a JSON array of strings. Like Go's `json.Decoder.Decode`, only the first JSON
/// value is read; anything after it is ignored.
fn parse_json(rest: &str) -> Result<Vec<String>, JsonError> {
    let rest = rest.trim_start();
    if !rest.starts_with('[') {
        return Err(JsonError::NotJson);
    }
    let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<serde_json::Value>();
    let value = match stream.next() {
        Some(Ok(v)) => v,
        _ => return Err(JsonError::NotJson),
    };
    let serde_json::Value::Array(items) = value else {
        return Err(JsonError::NotJson);
    };
    items
        .into_iter()
        .map(|item| match item {
            serde_json::Value::String(s) => Ok(s),
            _ => Err(JsonError::NotStringArray),
        })
        .collect()
}

const NOT_STRING_ARRAY: &str =
    "when using JSON array syntax, arrays must be comprised of strings only";

fn parse_maybe_json(rest: &str) -> Result<Parsed, String> {
    if rest.is_empty() {
        return Ok(Parsed::default());
    }
    match parse_json(rest) {
        Ok(args) => Ok(Parsed {
            args,
            json: true,
            sub: None,
        }),
        Err(JsonError::NotStringArray) => Err(NOT_STRING_ARRAY.to_string()),
        Err(JsonError::NotJson) => Ok(parse_string(rest)),
    }
}

fn parse_maybe_json_to_list(rest: &str) -> Result<Parsed, String> {
    match parse_json(rest) {
        Ok(args) => Ok(Parsed {
            args,
            json: true,
            sub: None,
        }),
        Err(JsonError::NotStringArray) => Err(NOT_STRING_ARRAY.to_string()),
        Err(JsonError::NotJson) => Ok(parse_whitespace_list(rest)),
    }
}

fn parse_health_config(rest: &str) -> Result<Parsed, String> {
    let sep = rest.find(char::is_whitespace).unwrap_or(rest.len());
    if sep == 0 {
        return Ok(Parsed::default());
    }
    let typ = &rest[..sep];
    let cmd = parse_maybe_json(rest[sep..].trim_start())?;
    let mut args = vec![typ.to_string()];
    args.extend(cmd.args);
    Ok(Parsed {
        args,
        json: cmd.json,
        sub: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_stop_at_double_dash_and_non_flag() {
        assert_eq!(
            extract_builder_flags("--a=1 --b -- --c x"),
            (" --c x", vec!["--a=1".to_string(), "--b".to_string()])
        );
        assert_eq!(extract_builder_flags("-x y"), ("-x y", vec![]));
        assert_eq!(
            extract_builder_flags("--chown=\"a b\" src"),
            ("src", vec!["--chown=a b".to_string()])
        );
        assert_eq!(
            extract_builder_flags("--only"),
            ("", vec!["--only".to_string()])
        );
    }

    #[test]
    fn json_errors() {
        assert!(matches!(parse_json("[1]"), Err(JsonError::NotStringArray)));
        assert!(matches!(parse_json("[\"a\""), Err(JsonError::NotJson)));
        assert_eq!(
            parse_json("[\"a\"] trailing").ok(),
            Some(vec!["a".to_string()])
        );
        assert!(parse_maybe_json("[\"a\", [\"b\"]]").is_err());
    }

    #[test]
    fn words_keep_quotes() {
        assert_eq!(
            parse_words("a=\"b c\" d='e\\'f", '\\'),
            vec!["a=\"b c\"".to_string(), "d='e\\'f".to_string()]
        );
    }
}
