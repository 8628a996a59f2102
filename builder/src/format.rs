//! `--format TEMPLATE` for listings (`kiln ps`, `kiln images`): the subset of Go's
//! `text/template` that Docker's CLI templates use, and Docker's table layout.
//!
//! A template is text with actions `{{ PIPELINE }}` (`{{-` and `-}}` trim the spaces
//! next to them). A pipeline is commands joined by `|`; a command is an operand (`.`,
//! `.Field`, `.Label "key"`) or a function (`json`, `upper`, `lower`, `title`) applied to
//! an operand, or to what the previous command produced. As in Docker's CLI:
//!
//! - `table TEMPLATE` prints a header row (the same template over the fields' header
//!   names) and aligns the tab-separated cells with Go's `tabwriter` (minimum width 10,
//!   padding 3, spaces; the last cell of a line is not padded);
//! - a literal `\t` or `\n` in the template is a tab or a newline;
//! - `table` alone is the listing's default table, `json` is `{{json .}}`;
//! - an unknown field fails before anything is listed, with Go's message
//!   (`template: :1:2: executing "" at <.Foo>: can't evaluate field Foo in type ...`).
//!
//! Values are strings already formatted by the listing (a [`Record`]); this module only
//! lays them out.

use std::collections::BTreeMap;

/// Why a template cannot be used: Docker's messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The text is not a template (an unclosed action, an unknown function, ...).
    #[error("failed to parse template: template: :{line}: {reason}")]
    Parse {
        /// 1-based line of the template.
        line: usize,
        /// Go's reason.
        reason: String,
    },
    /// A field the listing does not have.
    #[error(
        "failed to execute template: template: :{line}:{col}: executing \"\" at <.{field}>: can't evaluate field {field} in type {type_name}"
    )]
    UnknownField {
        /// The field as written.
        field: String,
        /// 1-based line.
        line: usize,
        /// 0-based byte column of the `.Field` node (Go's).
        col: usize,
        /// Docker's Go type for the listing.
        type_name: &'static str,
    },
}

/// What a listing can show: its fields and their table headers.
#[derive(Debug)]
pub struct Kind {
    /// Docker's Go type, for error messages (`*formatter.ContainerContext`).
    pub type_name: &'static str,
    /// `(field, header)`, e.g. `("ID", "CONTAINER ID")`.
    pub fields: &'static [(&'static str, &'static str)],
    /// The listing's `table` template.
    pub default_table: &'static str,
    /// Whether `.Label "key"` works.
    pub labels: bool,
}

impl Kind {
    fn header(&self, field: &str) -> Option<&'static str> {
        self.fields
            .iter()
            .find(|(f, _)| *f == field)
            .map(|(_, h)| *h)
    }
}

/// `docker ps`'s fields (Docker's `ContainerContext`).
pub static CONTAINERS: Kind = Kind {
    type_name: "*formatter.ContainerContext",
    fields: &[
        ("Command", "COMMAND"),
        ("CreatedAt", "CREATED AT"),
        ("ID", "CONTAINER ID"),
        ("Image", "IMAGE"),
        ("Labels", "LABELS"),
        ("LocalVolumes", "LOCAL VOLUMES"),
        ("Mounts", "MOUNTS"),
        ("Names", "NAMES"),
        ("Networks", "NETWORKS"),
        ("Ports", "PORTS"),
        ("RunningFor", "CREATED"),
        ("Size", "SIZE"),
        ("State", "STATE"),
        ("Status", "STATUS"),
    ],
    default_table: "table {{.ID}}\\t{{.Image}}\\t{{.Command}}\\t{{.RunningFor}}\\t{{.Status}}\\t{{.Ports}}\\t{{.Names}}",
    labels: true,
};

/// `docker images`'s fields (Docker's `ImageContext`).
pub static IMAGES: Kind = Kind {
    type_name: "*formatter.ImageContext",
    fields: &[
        ("CreatedAt", "CREATED AT"),
        ("CreatedSince", "CREATED"),
        ("Digest", "DIGEST"),
        ("ID", "IMAGE ID"),
        ("Repository", "REPOSITORY"),
        ("Size", "SIZE"),
        ("Tag", "TAG"),
    ],
    default_table: "table {{.Repository}}\\t{{.Tag}}\\t{{.ID}}\\t{{.CreatedSince}}\\t{{.Size}}",
    labels: false,
};

/// One row of a listing: each field's text, and the labels for `.Label "key"`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// Field name -> its text.
    pub fields: BTreeMap<&'static str, String>,
    /// Label key -> value.
    pub labels: BTreeMap<String, String>,
}

impl Record {
    /// Sets a field.
    pub fn set(&mut self, field: &'static str, value: impl Into<String>) -> &mut Self {
        self.fields.insert(field, value.into());
        self
    }

    /// `{{json .}}`: the fields as one JSON object, keys sorted, HTML escaped as Go's
    /// `json.Marshal` does.
    fn json(&self) -> String {
        go_json(&serde_json::to_string(&self.fields).unwrap_or_default())
    }
}

/// Go's `json.Marshal` escapes `<`, `>` and `&`.
fn go_json(s: &str) -> String {
    s.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

#[derive(Debug, Clone, PartialEq)]
enum Operand {
    Dot,
    Field(String),
    Label(String),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Func {
    Json,
    Upper,
    Lower,
    Title,
}

#[derive(Debug, Clone, PartialEq)]
struct Command {
    func: Option<Func>,
    operand: Option<Operand>,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Text(String),
    Action(Vec<Command>),
}

/// A parsed `--format` template for one [`Kind`] of listing.
#[derive(Debug)]
pub struct Template {
    table: bool,
    nodes: Vec<Node>,
}

enum Value<'a> {
    Str(String),
    Record(&'a Record),
}

impl Template {
    /// Parses `source` (`table`, `json` or a template) and checks every field against
    /// `kind`, as Docker does before listing anything.
    pub fn parse(source: &str, kind: &Kind) -> Result<Template, FormatError> {
        let source = match source {
            "table" => kind.default_table,
            "json" => "{{json .}}",
            s => s,
        };
        let nodes = parse_nodes(source, kind)?;
        Ok(Template {
            table: source.starts_with("table"),
            nodes,
        })
    }

    /// Whether the template reads `field` (`{{json .}}` reads all), so that a listing
    /// computes costly fields (sizes) only when shown.
    pub fn uses(&self, field: &str) -> bool {
        self.nodes.iter().any(|n| match n {
            Node::Text(_) => false,
            Node::Action(cmds) => cmds.iter().any(|c| match &c.operand {
                Some(Operand::Field(f)) => f == field,
                Some(Operand::Dot) => true,
                _ => false,
            }),
        })
    }

    /// The listing: one line per record (a header first for `table`), laid out.
    pub fn render(&self, kind: &Kind, records: &[Record]) -> String {
        let mut out = String::new();
        if self.table {
            out.push_str(&self.execute(Err(kind)));
            out.push('\n');
        }
        for r in records {
            out.push_str(&self.execute(Ok(r)));
            out.push('\n');
        }
        if self.table {
            tabwrite(&out, 10, 3)
        } else {
            out
        }
    }

    /// Runs the template on a record, or on the headers (`Err(kind)`), where functions
    /// return the header unchanged as Docker's header functions do.
    fn execute(&self, on: Result<&Record, &Kind>) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            match n {
                Node::Text(t) => out.push_str(t),
                Node::Action(cmds) => out.push_str(&run_pipeline(cmds, on)),
            }
        }
        out
    }
}

fn run_pipeline(cmds: &[Command], on: Result<&Record, &Kind>) -> String {
    let mut value: Option<Value> = None;
    for c in cmds {
        let arg = match &c.operand {
            Some(op) => Some(operand(op, on)),
            None => value.take(),
        };
        value = match (c.func, arg) {
            (_, None) => None,
            (None, v) => v,
            (Some(_), Some(v)) if on.is_err() => Some(v),
            (Some(f), Some(v)) => Some(Value::Str(apply(f, v))),
        };
    }
    match value {
        None => String::new(),
        Some(Value::Str(s)) => s,
        Some(Value::Record(r)) => r.json(),
    }
}

fn operand<'a>(op: &Operand, on: Result<&'a Record, &Kind>) -> Value<'a> {
    match (op, on) {
        (Operand::Dot, Ok(r)) => Value::Record(r),
        (Operand::Dot, Err(_)) => Value::Str(String::new()),
        (Operand::Field(f), Ok(r)) => {
            Value::Str(r.fields.get(f.as_str()).cloned().unwrap_or_default())
        }
        (Operand::Field(f), Err(kind)) => Value::Str(kind.header(f).unwrap_or_default().into()),
        (Operand::Label(k), Ok(r)) => Value::Str(r.labels.get(k).cloned().unwrap_or_default()),
        (Operand::Label(_), Err(_)) => Value::Str("LABEL".into()),
    }
}

fn apply(f: Func, v: Value) -> String {
    match (f, v) {
        (Func::Json, Value::Record(r)) => r.json(),
        (Func::Json, Value::Str(s)) => go_json(&serde_json::to_string(&s).unwrap_or_default()),
        (f, Value::Record(r)) => apply(f, Value::Str(r.json())),
        (Func::Upper, Value::Str(s)) => s.to_uppercase(),
        (Func::Lower, Value::Str(s)) => s.to_lowercase(),
        (Func::Title, Value::Str(s)) => {
            let mut out = String::new();
            let mut start = true;
            for c in s.chars() {
                if start {
                    out.extend(c.to_uppercase());
                } else {
                    out.push(c);
                }
                start = !c.is_alphanumeric();
            }
            out
        }
    }
}

/// Splits the template into text and actions, and checks the actions.
fn parse_nodes(src: &str, kind: &Kind) -> Result<Vec<Node>, FormatError> {
    let line_of = |at: usize| src[..at].matches('\n').count() + 1;
    let col_of = |at: usize| at - src[..at].rfind('\n').map_or(0, |n| n + 1);
    let mut nodes = Vec::new();
    let mut rest = 0;
    while let Some(open) = src[rest..].find("{{").map(|i| rest + i) {
        let mut text = &src[rest..open];
        let mut inner_start = open + 2;
        if src[inner_start..].starts_with("- ")
            || src[inner_start..].starts_with("-\t")
            || src[inner_start..].starts_with("-\n")
        {
            text = text.trim_end();
            inner_start += 1;
        }
        push_text(&mut nodes, text);
        let Some(close) = src[inner_start..].find("}}").map(|i| inner_start + i) else {
            return Err(FormatError::Parse {
                line: line_of(open),
                reason: "unclosed action".into(),
            });
        };
        let mut inner_end = close;
        let mut trim_after = false;
        if src[..close].ends_with(" -") || src[..close].ends_with("\t-") {
            inner_end -= 1;
            trim_after = true;
        }
        let cmds = parse_pipeline(&src[inner_start..inner_end], inner_start, kind, |at| {
            (line_of(at), col_of(at))
        })?;
        nodes.push(Node::Action(cmds));
        rest = close + 2;
        if trim_after {
            rest += src[rest..].len() - src[rest..].trim_start().len();
        }
    }
    push_text(&mut nodes, &src[rest..]);
    // `table` is a word of the text, not of the output.
    if let Some(Node::Text(t)) = nodes.first_mut()
        && let Some(after) = t.strip_prefix("table")
    {
        *t = after.trim_start_matches(' ').to_string();
    }
    Ok(nodes)
}

fn push_text(nodes: &mut Vec<Node>, text: &str) {
    if !text.is_empty() {
        nodes.push(Node::Text(text.replace("\\t", "\t").replace("\\n", "\n")));
    }
}

/// One action's pipeline; `base` is its offset in the template, for error positions.
fn parse_pipeline(
    inner: &str,
    base: usize,
    kind: &Kind,
    pos: impl Fn(usize) -> (usize, usize),
) -> Result<Vec<Command>, FormatError> {
    let parse_err = |at: usize, reason: String| FormatError::Parse {
        line: pos(at).0,
        reason,
    };
    let words = tokenize(inner).map_err(|reason| parse_err(base, reason))?;
    if words.is_empty() {
        return Err(parse_err(base, "missing value for command".into()));
    }
    let mut cmds = Vec::new();
    for (i, cmd) in words.split(|(_, w)| w == "|").enumerate() {
        let mut it = cmd.iter();
        let Some((first_at, first)) = it.next() else {
            return Err(parse_err(base, "missing command".into()));
        };
        let func = match first.as_str() {
            "json" => Some(Func::Json),
            "upper" => Some(Func::Upper),
            "lower" => Some(Func::Lower),
            "title" => Some(Func::Title),
            w if w.starts_with('.') || w.starts_with('"') => None,
            w => {
                return Err(parse_err(
                    base + first_at,
                    format!("function {w:?} not defined"),
                ));
            }
        };
        let operand_words: Vec<&(usize, String)> = if func.is_some() {
            it.collect()
        } else {
            cmd.iter().collect()
        };
        let operand = match operand_words.as_slice() {
            [] if i > 0 => None,
            [] => return Err(parse_err(base, "missing argument for function".into())),
            [(_, w)] if w == "." => Some(Operand::Dot),
            [(_, w), (_, key)] if w == ".Label" && kind.labels && key.starts_with('"') => {
                Some(Operand::Label(
                    serde_json::from_str(key).unwrap_or_else(|_| key.trim_matches('"').into()),
                ))
            }
            [(at, w)] if w.starts_with('.') => {
                let field = &w[1..];
                if kind.header(field).is_none() {
                    let (line, col) = pos(base + at);
                    return Err(FormatError::UnknownField {
                        field: field.to_string(),
                        line,
                        col,
                        type_name: kind.type_name,
                    });
                }
                Some(Operand::Field(field.to_string()))
            }
            [(at, w), ..] => {
                return Err(parse_err(base + at, format!("unexpected {w:?} in command")));
            }
        };
        if i > 0 && operand.is_some() && func.is_some() {
            // Go appends the previous value as a last argument: one argument too many
            // for these functions.
            return Err(parse_err(
                base,
                "wrong number of args for function: want 1".into(),
            ));
        }
        cmds.push(Command { func, operand });
    }
    Ok(cmds)
}

/// Words of an action with their offsets: names, `.Fields`, `"strings"` and `|`.
fn tokenize(s: &str) -> Result<Vec<(usize, String)>, String> {
    let mut words = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'|' {
            words.push((i, "|".into()));
            i += 1;
        } else if c == b'"' {
            let start = i;
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            if i >= b.len() {
                return Err("unterminated quoted string".into());
            }
            i += 1;
            words.push((start, s[start..i].to_string()));
        } else {
            let start = i;
            while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'|' && b[i] != b'"' {
                i += 1;
            }
            words.push((start, s[start..i].to_string()));
        }
    }
    Ok(words)
}

/// Go's `text/tabwriter` with flags 0 and padding by spaces: cells end at tabs; a
/// column is as wide as its widest cell plus `padding`, at least `minwidth`, over each
/// block of consecutive lines that have that column; a line's last cell is not part of
/// a column (so it is never padded).
pub fn tabwrite(text: &str, minwidth: usize, padding: usize) -> String {
    let lines: Vec<Vec<&str>> = text
        .split_terminator('\n')
        .map(|l| l.split('\t').collect())
        .collect();
    let mut out = String::new();
    let mut widths = Vec::new();
    format_block(
        &lines,
        &mut widths,
        0,
        lines.len(),
        minwidth,
        padding,
        &mut out,
    );
    out
}

fn format_block(
    lines: &[Vec<&str>],
    widths: &mut Vec<usize>,
    mut line0: usize,
    line1: usize,
    minwidth: usize,
    padding: usize,
    out: &mut String,
) {
    let column = widths.len();
    let mut this = line0;
    while this < line1 {
        if column + 1 >= lines[this].len() {
            this += 1;
            continue;
        }
        write_lines(lines, widths, line0, this, out);
        line0 = this;
        let mut width = minwidth;
        while this < line1 && column + 1 < lines[this].len() {
            width = width.max(lines[this][column].chars().count() + padding);
            this += 1;
        }
        widths.push(width);
        format_block(lines, widths, line0, this, minwidth, padding, out);
        widths.pop();
        line0 = this;
    }
    write_lines(lines, widths, line0, line1, out);
}

fn write_lines(lines: &[Vec<&str>], widths: &[usize], from: usize, to: usize, out: &mut String) {
    for line in &lines[from..to] {
        for (j, cell) in line.iter().enumerate() {
            out.push_str(cell);
            if j < widths.len() && j + 1 < line.len() {
                let w = cell.chars().count();
                out.extend(std::iter::repeat_n(' ', widths[j].saturating_sub(w)));
            }
        }
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(pairs: &[(&'static str, &str)]) -> Record {
        let mut r = Record::default();
        for (k, v) in pairs {
            r.set(k, *v);
        }
        r
    }

    fn ps(src: &str, rows: &[Record]) -> String {
        Template::parse(src, &CONTAINERS)
            .unwrap()
            .render(&CONTAINERS, rows)
    }

    #[test]
    fn plain_templates_print_each_row_with_tabs_and_newlines_expanded() {
        let rows = [
            rec(&[("ID", "abc"), ("Names", "web")]),
            rec(&[("ID", "def"), ("Names", "db")]),
        ];
        assert_eq!(ps("{{.ID}}: {{.Names}}", &rows), "abc: web\ndef: db\n");
        assert_eq!(ps("{{.ID}}\\t{{.Names}}", &rows), "abc\tweb\ndef\tdb\n");
        assert_eq!(ps("{{.ID}}\\n{{ .Names }}", &rows[..1]), "abc\nweb\n");
    }

    #[test]
    fn table_prints_dockers_headers_aligned_as_tabwriter_10_1_3() {
        let rows = [
            rec(&[
                ("ID", "4bed76d3ad42"),
                ("Image", "nginx:alpine"),
                ("Names", "test"),
            ]),
            rec(&[
                ("ID", "b0318bca5aef"),
                ("Image", "busybox:latest"),
                ("Names", "x"),
            ]),
        ];
        assert_eq!(
            ps("table {{.ID}}\\t{{.Image}}\\t{{.Names}}", &rows),
            "CONTAINER ID   IMAGE            NAMES\n\
             4bed76d3ad42   nginx:alpine     test\n\
             b0318bca5aef   busybox:latest   x\n"
        );
        // Minimum width 10; the header alone when there are no rows.
        assert_eq!(
            ps("table {{.State}}\\t{{.Ports}}\\t{{.RunningFor}}", &[]),
            "STATE     PORTS     CREATED\n"
        );
        assert_eq!(
            ps("table", &[]),
            "CONTAINER ID   IMAGE     COMMAND   CREATED   STATUS    PORTS     NAMES\n"
        );
    }

    #[test]
    fn json_prints_the_row_as_an_object_with_sorted_keys() {
        let rows = [rec(&[("Names", "a<b"), ("ID", "abc")])];
        assert_eq!(
            ps("{{json .}}", &rows),
            "{\"ID\":\"abc\",\"Names\":\"a\\u003cb\"}\n"
        );
        assert_eq!(ps("json", &rows), ps("{{json .}}", &rows));
        assert_eq!(ps("{{json .ID}}", &rows), "\"abc\"\n");
        assert_eq!(ps("{{.Names | upper}}", &rows), "A<B\n");
        // Header functions leave the header as is.
        assert_eq!(ps("table {{lower .ID}}", &[]), "CONTAINER ID\n");
    }

    #[test]
    fn labels_and_trim_markers() {
        let mut r = rec(&[("ID", "abc")]);
        r.labels.insert("app".into(), "web".into());
        assert_eq!(
            ps("{{.Label \"app\"}}|{{.Label \"no\"}}|", &[r.clone()]),
            "web||\n"
        );
        assert_eq!(ps("a  {{- .ID -}}  b", &[r]), "aabcb\n");
    }

    #[test]
    fn unknown_fields_and_functions_fail_with_gos_messages() {
        let e = Template::parse("{{.Foo}}", &CONTAINERS).unwrap_err();
        assert_eq!(
            e.to_string(),
            "failed to execute template: template: :1:2: executing \"\" at <.Foo>: can't evaluate field Foo in type *formatter.ContainerContext"
        );
        let e = Template::parse("table {{.ID}}\\t{{json .Nope}}", &CONTAINERS).unwrap_err();
        assert!(
            matches!(e, FormatError::UnknownField { ref field, col: 22, .. } if field == "Nope"),
            "{e}"
        );
        let e = Template::parse("{{.Repository}}", &CONTAINERS).unwrap_err();
        assert!(e.to_string().contains("can't evaluate field Repository"));
        assert!(Template::parse("{{.Repository}}", &IMAGES).is_ok());
        let e = Template::parse("{{nope .ID}}", &CONTAINERS).unwrap_err();
        assert_eq!(
            e.to_string(),
            "failed to parse template: template: :1: function \"nope\" not defined"
        );
        let e = Template::parse("{{.ID", &CONTAINERS).unwrap_err();
        assert_eq!(
            e.to_string(),
            "failed to parse template: template: :1: unclosed action"
        );
    }

    #[test]
    fn uses_tells_whether_sizes_are_needed() {
        let t = Template::parse("{{.ID}} {{.Size}}", &CONTAINERS).unwrap();
        assert!(t.uses("Size"));
        let t = Template::parse("{{.ID}}", &CONTAINERS).unwrap();
        assert!(!t.uses("Size"));
        let t = Template::parse("{{json .}}", &CONTAINERS).unwrap();
        assert!(t.uses("Size"));
    }

    #[test]
    fn tabwriter_blocks_and_last_cells_as_go() {
        // The last cell is never padded; a column spans only consecutive lines that
        // have it.
        assert_eq!(tabwrite("a\tb\nccc\n", 0, 1), "a b\nccc\n");
        assert_eq!(
            tabwrite("a\tb\tc\nlonger\tx\n", 0, 1),
            "a      b c\nlonger x\n"
        );
        assert_eq!(tabwrite("x\t\n", 4, 1), "x   \n");
    }
}
