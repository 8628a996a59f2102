//! Typed instructions: the syntax tree checked and turned into one Rust type per
//! Dockerfile instruction (BuildKit's `instructions` package). Nothing is expanded yet:
//! variables are substituted in [`crate::convert`], where the stage's environment is known.

mod flags;
mod runmount;

pub use flags::{FlagKind, Flags};
pub use runmount::{Mount, MountType, Sharing, parse_mount};

use std::sync::LazyLock;
use std::time::Duration;

use kiln_oci::config::Healthcheck;
use regex::Regex;

use crate::error::{Diagnostic, Range};
use crate::parser::{Ast, Heredoc, Node};

/// Every instruction keyword kiln knows, upper case.
pub const KEYWORDS: &[&str] = &[
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// A `key=value` pair (ENV, LABEL), value unexpanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key, unexpanded.
    pub key: String,
    /// The value, unexpanded (quotes still in place).
    pub value: String,
}

/// One `ARG name[=default]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgDecl {
    /// Name.
    pub key: String,
    /// Default, unexpanded.
    pub value: Option<String>,
}

/// A command that is either exec form (JSON) or shell form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdLine {
    /// Exec form: the argv; shell form: one element, the command line.
    pub args: Vec<String>,
    /// Shell form: the stage's SHELL is prepended.
    pub prepend_shell: bool,
}

/// Sources and destination of ADD and COPY.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcesAndDest {
    /// Source paths or URLs, unexpanded.
    pub sources: Vec<String>,
    /// Inline sources from heredocs (`COPY <<EOF /dst`).
    pub source_contents: Vec<Heredoc>,
    /// Destination, unexpanded.
    pub dest: String,
}

/// `COPY`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyCmd {
    /// What and where.
    pub paths: SourcesAndDest,
    /// `--from=stage|index|image`.
    pub from: Option<String>,
    /// `--chown=user[:group]`.
    pub chown: Option<String>,
    /// `--chmod=` (octal or symbolic).
    pub chmod: Option<String>,
    /// `--link`.
    pub link: bool,
    /// `--parents`.
    pub parents: bool,
    /// `--exclude=` patterns.
    pub exclude: Vec<String>,
}

/// `ADD`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddCmd {
    /// What and where.
    pub paths: SourcesAndDest,
    /// `--chown=user[:group]`.
    pub chown: Option<String>,
    /// `--chmod=`.
    pub chmod: Option<String>,
    /// `--link`.
    pub link: bool,
    /// `--keep-git-dir`.
    pub keep_git_dir: bool,
    /// `--checksum=sha256:...` for URL sources.
    pub checksum: Option<String>,
    /// `--unpack` (`None`: the default, extract local archives only).
    pub unpack: Option<bool>,
    /// `--exclude=` patterns.
    pub exclude: Vec<String>,
}

/// `RUN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunCmd {
    /// The command.
    pub cmd: CmdLine,
    /// Heredoc files attached to the command (`RUN <<EOF`).
    pub files: Vec<Heredoc>,
    /// `--mount=` specs, unexpanded.
    pub mounts: Vec<String>,
    /// `--network=default|none|host`.
    pub network: Option<String>,
    /// `--security=sandbox|insecure`.
    pub security: Option<String>,
}

/// One typed instruction inside a stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instruction {
    /// `ADD`.
    Add(AddCmd),
    /// `ARG` inside a stage.
    Arg(Vec<ArgDecl>),
    /// `CMD`.
    Cmd(CmdLine),
    /// `COPY`.
    Copy(CopyCmd),
    /// `ENTRYPOINT`.
    Entrypoint(CmdLine),
    /// `ENV`.
    Env(Vec<KeyValue>),
    /// `EXPOSE`.
    Expose(Vec<String>),
    /// `HEALTHCHECK`.
    Healthcheck(Healthcheck),
    /// `LABEL`.
    Label(Vec<KeyValue>),
    /// `MAINTAINER`.
    Maintainer(String),
    /// `ONBUILD`: the trigger's text, kept for the image config.
    Onbuild(String),
    /// `RUN`.
    Run(RunCmd),
    /// `SHELL`.
    Shell(Vec<String>),
    /// `STOPSIGNAL`.
    StopSignal(String),
    /// `USER`.
    User(String),
    /// `VOLUME`.
    Volume(Vec<String>),
    /// `WORKDIR`.
    Workdir(String),
}

/// An instruction with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The typed instruction.
    pub instruction: Instruction,
    /// The instruction as written (continuations joined), for history and reports.
    pub original: String,
    /// Its lines in the Dockerfile.
    pub range: Range,
}

/// One `FROM` and the instructions up to the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    /// `AS name`, lower-cased.
    pub name: Option<String>,
    /// The base: an image reference, `scratch` or an earlier stage's name, unexpanded.
    pub base: String,
    /// `--platform=`, unexpanded.
    pub platform: Option<String>,
    /// The instructions, in order.
    pub commands: Vec<Command>,
    /// The FROM line.
    pub range: Range,
    /// The FROM instruction as written.
    pub original: String,
    /// Position among the stages (0-based).
    pub index: usize,
}

/// A typed Dockerfile: global ARGs and stages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    /// `ARG`s before the first `FROM`.
    pub meta_args: Vec<(ArgDecl, Range)>,
    /// The stages, in order.
    pub stages: Vec<Stage>,
    /// The escape character.
    pub escape: char,
}

static STAGE_NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z][a-z0-9\-_.]*$").expect("static regex"));
static CHMOD_SYMBOLIC: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^([ugoa]*[-+=]([rwxXst]*|[ugo]))+(,[ugoa]*[-+=]([rwxXst]*|[ugo]))*$")
        .expect("static regex")
});

/// Checks an `ADD`/`COPY --chmod` value: octal (`755`, `0644`) up to `7777`, or symbolic
/// (`u+x,go-w`).
pub fn validate_chmod(value: &str) -> Result<(), String> {
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return match u32::from_str_radix(value, 8) {
            Ok(m) if m <= 0o7777 => Ok(()),
            _ => Err(format!(
                "invalid chmod parameter: {value:?}: not an octal mode up to 7777"
            )),
        };
    }
    if CHMOD_SYMBOLIC.is_match(value) {
        Ok(())
    } else {
        Err(format!("invalid chmod parameter: {value:?}"))
    }
}

/// The closest keyword to a misspelt one, if it is close enough to suggest.
fn suggest_keyword(word: &str) -> Option<&'static str> {
    let upper = word.to_ascii_uppercase();
    KEYWORDS
        .iter()
        .map(|k| (levenshtein(&upper, k), *k))
        .filter(|(d, k)| *d <= 2.min(k.len() / 2).max(1))
        .min()
        .map(|(_, k)| k)
}

/// Levenshtein distance (insertions, deletions, substitutions), by characters: the
/// frontend's "did you mean" for instructions, and the builder's for image names.
pub fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Turns a syntax tree into typed stages, checking every instruction.
pub fn parse(ast: &Ast) -> Result<Dockerfile, Diagnostic> {
    let mut meta_args = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    for node in &ast.children {
        let keyword = node.keyword();
        if keyword == "from" {
            let stage = parse_from(ast, node, stages.len())?;
            stages.push(stage);
            continue;
        }
        let command = parse_command(ast, node)?;
        match stages.last_mut() {
            Some(stage) => stage.commands.push(command),
            None => match command.instruction {
                Instruction::Arg(decls) => {
                    meta_args.extend(decls.into_iter().map(|d| (d, command.range)));
                }
                _ => {
                    return Err(Diagnostic::at(
                        ast.locate(node, &node.value),
                        format!(
                            "{} instruction before the first FROM: only ARG may come before FROM",
                            node.value.to_ascii_uppercase()
                        ),
                    ));
                }
            },
        }
    }
    if stages.is_empty() {
        let range = ast.children.last().map(|n| n.range()).unwrap_or_default();
        return Err(Diagnostic::at(
            range,
            "no build stage in current context: a Dockerfile needs a FROM",
        ));
    }
    Ok(Dockerfile {
        meta_args,
        stages,
        escape: ast.escape(),
    })
}

fn flags(ast: &Ast, node: &Node, spec: &[(&'static str, FlagKind)]) -> Result<Flags, Diagnostic> {
    Flags::parse(&node.flags, spec).map_err(|(flag, msg)| {
        let name = flag.split('=').next().unwrap_or(&flag).to_string();
        Diagnostic::at(ast.locate(node, &name), msg)
    })
}

fn parse_from(ast: &Ast, node: &Node, index: usize) -> Result<Stage, Diagnostic> {
    let f = flags(ast, node, &[("platform", FlagKind::String)])?;
    let args = &node.args;
    let err = |msg: String| Diagnostic::at(ast.locate(node, &node.value), msg);
    let name = match args.len() {
        1 => None,
        3 if args[1].eq_ignore_ascii_case("as") => {
            let name = args[2].to_ascii_lowercase();
            if !STAGE_NAME.is_match(&name) {
                return Err(Diagnostic::at(
                    ast.locate(node, &args[2]),
                    format!(
                        "invalid name for build stage: {:?}, name can't start with a number or contain symbols",
                        args[2]
                    ),
                ));
            }
            Some(name)
        }
        3 => {
            return Err(err(format!(
                "FROM expects \"AS\" as its second argument, got {:?}",
                args[1]
            )));
        }
        _ => {
            return Err(err(
                "FROM requires either one or three arguments".to_string()
            ));
        }
    };
    Ok(Stage {
        name,
        base: args[0].clone(),
        platform: f.string("platform").map(str::to_string),
        commands: Vec::new(),
        range: node.range(),
        original: node.original.clone(),
        index,
    })
}

/// Parses any instruction except FROM.
pub fn parse_command(ast: &Ast, node: &Node) -> Result<Command, Diagnostic> {
    let keyword = node.keyword();
    let upper = keyword.to_ascii_uppercase();
    let at = |needle: &str| ast.locate(node, needle);
    let err = |msg: String| Diagnostic::at(at(&node.value), msg);
    let no_flags = |node: &Node| flags(ast, node, &[]);
    let args = &node.args;
    let exactly_one = || -> Result<String, Diagnostic> {
        if args.len() == 1 {
            Ok(args[0].clone())
        } else {
            Err(err(format!("{upper} requires exactly one argument")))
        }
    };
    let at_least_one = || -> Result<(), Diagnostic> {
        if args.is_empty() {
            Err(err(format!("{upper} requires at least one argument")))
        } else {
            Ok(())
        }
    };
    let instruction = match keyword.as_str() {
        "env" | "label" => {
            no_flags(node)?;
            at_least_one()?;
            let pairs: Vec<KeyValue> = args
                .chunks(3)
                .map(|c| KeyValue {
                    key: c[0].clone(),
                    value: c.get(1).cloned().unwrap_or_default(),
                })
                .collect();
            if let Some(p) = pairs.iter().find(|p| p.key.is_empty()) {
                return Err(Diagnostic::at(
                    at(&format!("={}", p.value)),
                    format!("{upper} names can not be blank"),
                ));
            }
            if keyword == "env" {
                Instruction::Env(pairs)
            } else {
                Instruction::Label(pairs)
            }
        }
        "maintainer" => {
            no_flags(node)?;
            Instruction::Maintainer(exactly_one()?)
        }
        "add" | "copy" => {
            let is_add = keyword == "add";
            let spec: &[(&'static str, FlagKind)] = if is_add {
                &[
                    ("chown", FlagKind::String),
                    ("chmod", FlagKind::String),
                    ("link", FlagKind::Bool),
                    ("keep-git-dir", FlagKind::Bool),
                    ("checksum", FlagKind::String),
                    ("unpack", FlagKind::Bool),
                    ("exclude", FlagKind::List),
                ]
            } else {
                &[
                    ("from", FlagKind::String),
                    ("chown", FlagKind::String),
                    ("chmod", FlagKind::String),
                    ("link", FlagKind::Bool),
                    ("parents", FlagKind::Bool),
                    ("exclude", FlagKind::List),
                ]
            };
            let f = flags(ast, node, spec)?;
            let paths = sources_and_dest(node, &upper).map_err(err)?;
            if let Some(chmod) = f.string("chmod") {
                validate_chmod(chmod).map_err(|m| Diagnostic::at(at("--chmod"), m))?;
            }
            let exclude = f.list("exclude").to_vec();
            let chown = f.string("chown").map(str::to_string);
            let chmod = f.string("chmod").map(str::to_string);
            if is_add {
                if let Some(sum) = f.string("checksum") {
                    if !paths.sources.iter().all(|s| is_url(s) || is_git(s)) {
                        return Err(Diagnostic::at(
                            at("--checksum"),
                            "checksum can't be specified for non-HTTP(S) sources".to_string(),
                        ));
                    }
                    // For git sources it is a commit id (prefix), as in BuildKit.
                    let all_git = paths.sources.iter().all(|s| is_git(s));
                    if all_git && !crate::convert::git::is_commit_prefix(sum) {
                        return Err(Diagnostic::at(
                            at("--checksum"),
                            format!(
                                "invalid checksum {sum:?} for a git source: expected a commit id"
                            ),
                        ));
                    }
                    if !all_git
                        && !sum.starts_with("sha256:")
                        && !sum.starts_with("sha384:")
                        && !sum.starts_with("sha512:")
                    {
                        return Err(Diagnostic::at(
                            at("--checksum"),
                            format!(
                                "invalid checksum {sum:?}: expected sha256:<hex>, sha384:<hex> or sha512:<hex>"
                            ),
                        ));
                    }
                }
                Instruction::Add(AddCmd {
                    paths,
                    chown,
                    chmod,
                    link: f.bool("link"),
                    keep_git_dir: f.bool("keep-git-dir"),
                    checksum: f.string("checksum").map(str::to_string),
                    unpack: node
                        .flags
                        .iter()
                        .any(|x| x.starts_with("--unpack"))
                        .then(|| f.bool("unpack")),
                    exclude,
                })
            } else {
                Instruction::Copy(CopyCmd {
                    paths,
                    from: f.string("from").map(str::to_string),
                    chown,
                    chmod,
                    link: f.bool("link"),
                    parents: f.bool("parents"),
                    exclude,
                })
            }
        }
        "onbuild" => {
            no_flags(node)?;
            let Some(sub) = &node.sub else {
                return Err(err("ONBUILD requires at least one argument".to_string()));
            };
            match sub.keyword().as_str() {
                "onbuild" => {
                    return Err(err(
                        "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed".to_string()
                    ));
                }
                "from" | "maintainer" => {
                    return Err(err(format!(
                        "{} isn't allowed as an ONBUILD trigger",
                        sub.value.to_ascii_uppercase()
                    )));
                }
                _ => {
                    // Validate the trigger now, so a broken trigger fails here and not in
                    // the build that inherits it.
                    parse_command(ast, sub)?;
                }
            }
            let expr = node.original.trim_start();
            let expr = expr[node.value.len()..].trim();
            Instruction::Onbuild(expr.to_string())
        }
        "workdir" => {
            no_flags(node)?;
            Instruction::Workdir(exactly_one()?)
        }
        "run" => {
            let f = flags(
                ast,
                node,
                &[
                    ("mount", FlagKind::List),
                    ("network", FlagKind::String),
                    ("security", FlagKind::String),
                ],
            )?;
            if args.is_empty() && node.heredocs.is_empty() {
                return Err(err("RUN requires at least one argument".to_string()));
            }
            if let Some(net) = f.string("network") {
                if !matches!(net, "default" | "none" | "host") {
                    return Err(Diagnostic::at(
                        at("--network"),
                        format!("unsupported network mode {net:?}: expected default, none or host"),
                    ));
                }
            }
            if let Some(sec) = f.string("security") {
                if !matches!(sec, "sandbox" | "insecure") {
                    return Err(Diagnostic::at(
                        at("--security"),
                        format!("unsupported security mode {sec:?}: expected sandbox or insecure"),
                    ));
                }
            }
            for m in f.list("mount") {
                // Validate the shape now; values are expanded later.
                parse_mount(m).map_err(|msg| Diagnostic::at(at("--mount"), msg))?;
            }
            Instruction::Run(RunCmd {
                cmd: cmd_line(node),
                files: node.heredocs.clone(),
                mounts: f.list("mount").to_vec(),
                network: f.string("network").map(str::to_string),
                security: f.string("security").map(str::to_string),
            })
        }
        "cmd" | "entrypoint" => {
            no_flags(node)?;
            if keyword == "cmd" {
                Instruction::Cmd(cmd_line(node))
            } else {
                Instruction::Entrypoint(cmd_line(node))
            }
        }
        "healthcheck" => Instruction::Healthcheck(parse_healthcheck(ast, node)?),
        "expose" => {
            no_flags(node)?;
            at_least_one()?;
            Instruction::Expose(args.clone())
        }
        "user" => {
            no_flags(node)?;
            Instruction::User(exactly_one()?)
        }
        "volume" => {
            no_flags(node)?;
            at_least_one()?;
            if args.iter().any(|v| v.trim().is_empty()) {
                return Err(err(
                    "VOLUME specified can not be an empty string".to_string()
                ));
            }
            Instruction::Volume(args.clone())
        }
        "stopsignal" => {
            no_flags(node)?;
            Instruction::StopSignal(exactly_one()?)
        }
        "arg" => {
            no_flags(node)?;
            at_least_one()?;
            let mut decls = Vec::new();
            for word in args {
                let (key, value) = match word.split_once('=') {
                    Some((k, v)) => (k.to_string(), Some(v.to_string())),
                    None => (word.clone(), None),
                };
                if key.is_empty() {
                    return Err(Diagnostic::at(
                        at(word),
                        "ARG names can not be blank".to_string(),
                    ));
                }
                decls.push(ArgDecl { key, value });
            }
            Instruction::Arg(decls)
        }
        "shell" => {
            no_flags(node)?;
            at_least_one()?;
            if !node.json {
                return Err(err(
                    "SHELL requires the arguments to be in JSON form".to_string()
                ));
            }
            Instruction::Shell(args.clone())
        }
        "from" => return Err(err("FROM is not allowed here".to_string())),
        _ => {
            let mut msg = format!("unknown instruction {:?}", node.value);
            if let Some(s) = suggest_keyword(&node.value) {
                msg.push_str(&format!(" (did you mean {s:?}?)"));
            }
            return Err(err(msg));
        }
    };
    Ok(Command {
        instruction,
        original: node.original.clone(),
        range: node.range(),
    })
}

fn cmd_line(node: &Node) -> CmdLine {
    CmdLine {
        args: node.args.clone(),
        prepend_shell: !node.json,
    }
}

/// Whether a source is a remote URL (`http://`, `https://`).
pub fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

/// Whether a source is a git repository reference.
pub fn is_git(s: &str) -> bool {
    s.starts_with("git@")
        || s.starts_with("git://")
        || s.starts_with("ssh://")
        || (is_url(s) && s.split(['?', '#']).next().unwrap_or("").ends_with(".git"))
}

fn sources_and_dest(node: &Node, upper: &str) -> Result<SourcesAndDest, String> {
    let heredoc_names: Vec<&str> = node.heredocs.iter().map(|h| h.name.as_str()).collect();
    let mut sources = Vec::new();
    let mut contents = Vec::new();
    let n = node.args.len();
    if n == 0 || (n == 1 && node.heredocs.is_empty()) {
        return Err(format!(
            "{upper} requires at least two arguments, but only one was provided. Destination could not be determined."
        ));
    }
    let dest = node.args[n - 1].clone();
    let mut heredocs = node.heredocs.iter();
    for src in &node.args[..n - 1] {
        // A `<<NAME` argument stands for the next heredoc body.
        if !node.json && src.contains("<<") {
            if let Ok(Some(doc)) = crate::parser::parse_heredoc(src) {
                if heredoc_names.contains(&doc.name.as_str()) {
                    if let Some(h) = heredocs.next() {
                        contents.push(h.clone());
                        continue;
                    }
                }
            }
        }
        sources.push(src.clone());
    }
    if sources.is_empty() && contents.is_empty() {
        return Err(format!("{upper} requires at least one source"));
    }
    Ok(SourcesAndDest {
        sources,
        source_contents: contents,
        dest,
    })
}

fn parse_duration_flag(
    ast: &Ast,
    node: &Node,
    f: &Flags,
    name: &str,
) -> Result<Option<Duration>, Diagnostic> {
    let Some(v) = f.string(name) else {
        return Ok(None);
    };
    let d = parse_go_duration(v).map_err(|m| {
        Diagnostic::at(
            ast.locate(node, &format!("--{name}")),
            format!("invalid --{name} value {v:?}: {m}"),
        )
    })?;
    if d != Duration::ZERO && d < Duration::from_millis(1) {
        return Err(Diagnostic::at(
            ast.locate(node, &format!("--{name}")),
            format!("--{name} cannot be less than 1ms"),
        ));
    }
    Ok(Some(d))
}

/// Parses a Go-style duration (`30s`, `1m30s`, `1.5h`, `0`).
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.starts_with('-') {
        return Err("durations cannot be negative".to_string());
    }
    static PART: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"([0-9]*\.?[0-9]+)(ns|us|µs|ms|s|m|h)").expect("static regex")
    });
    let mut total = 0f64;
    let mut consumed = 0;
    for caps in PART.captures_iter(s) {
        let m = caps.get(0).expect("whole match");
        if m.start() != consumed {
            return Err("not a duration such as 30s or 1m30s".to_string());
        }
        consumed = m.end();
        let n: f64 = caps[1].parse().map_err(|_| "bad number".to_string())?;
        let unit = match &caps[2] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            _ => 3600.0,
        };
        total += n * unit;
    }
    if consumed != s.len() || consumed == 0 {
        return Err("not a duration such as 30s or 1m30s".to_string());
    }
    Duration::try_from_secs_f64(total).map_err(|e| e.to_string())
}

fn parse_healthcheck(ast: &Ast, node: &Node) -> Result<Healthcheck, Diagnostic> {
    let f = flags(
        ast,
        node,
        &[
            ("interval", FlagKind::String),
            ("timeout", FlagKind::String),
            ("start-period", FlagKind::String),
            ("start-interval", FlagKind::String),
            ("retries", FlagKind::String),
        ],
    )?;
    let err = |msg: &str| Diagnostic::at(ast.locate(node, &node.value), msg.to_string());
    let Some(typ) = node.args.first() else {
        return Err(err("HEALTHCHECK requires an argument"));
    };
    let typ = typ.to_ascii_uppercase();
    if typ == "NONE" {
        if node.args.len() > 1 {
            return Err(err("HEALTHCHECK NONE takes no arguments"));
        }
        if !node.flags.is_empty() {
            return Err(err("HEALTHCHECK NONE does not take options"));
        }
        return Ok(Healthcheck {
            test: vec!["NONE".to_string()],
            interval: None,
            timeout: None,
            start_period: None,
            start_interval: None,
            retries: None,
        });
    }
    if typ != "CMD" {
        return Err(err(&format!(
            "unknown type {typ:?} in HEALTHCHECK (try CMD)"
        )));
    }
    let rest = &node.args[1..];
    if rest.is_empty() || (rest.len() == 1 && rest[0].is_empty() && !node.json) {
        return Err(err("missing command after HEALTHCHECK CMD"));
    }
    let test = if node.json {
        std::iter::once("CMD".to_string())
            .chain(rest.iter().cloned())
            .collect()
    } else {
        vec!["CMD-SHELL".to_string(), rest[0].clone()]
    };
    let retries = match f.string("retries") {
        None => None,
        Some(v) => Some(v.parse::<u32>().map_err(|_| {
            Diagnostic::at(
                ast.locate(node, "--retries"),
                format!("invalid --retries value {v:?}: must be a whole number, not negative"),
            )
        })?),
    };
    Ok(Healthcheck {
        test,
        interval: parse_duration_flag(ast, node, &f, "interval")?,
        timeout: parse_duration_flag(ast, node, &f, "timeout")?,
        start_period: parse_duration_flag(ast, node, &f, "start-period")?,
        start_interval: parse_duration_flag(ast, node, &f, "start-interval")?,
        retries,
    })
}
