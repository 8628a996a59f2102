//! Command-line interface: Docker's and BuildKit's flags where they make sense.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use kiln_frontend::convert::{self, ConvertOptions, NoResolver};
use kiln_frontend::graph::Platform;
use kiln_frontend::{Diagnostic, dockerignore, parser};

/// kiln: build OCI images from Dockerfiles.
#[derive(Parser, Debug)]
#[command(name = "kiln", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Parse a Dockerfile and print its syntax tree.
    Parse {
        /// Print BuildKit's dump format (the only format so far).
        #[arg(long)]
        dump: bool,
        /// The Dockerfile (`-` for standard input).
        file: PathBuf,
    },
    /// Build an image from a Dockerfile and a context directory.
    Build(BuildArgs),
}

#[derive(clap::Args, Debug)]
struct BuildArgs {
    /// Name of the Dockerfile (default: CONTEXT/Dockerfile).
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Name and optionally a tag (`name:tag`); repeatable.
    #[arg(short = 't', long = "tag")]
    tags: Vec<String>,
    /// Set a build-time variable (`KEY=VALUE`, or `KEY` to take it from the environment).
    #[arg(long = "build-arg")]
    build_args: Vec<String>,
    /// Build this stage and the stages it needs.
    #[arg(long)]
    target: Option<String>,
    /// Target platform (`linux/amd64`).
    #[arg(long)]
    platform: Option<String>,
    /// Do not use the cache.
    #[arg(long)]
    no_cache: bool,
    /// Run the frontend only (parse, check, expand, plan) and print the plan.
    #[arg(long)]
    dry_run: bool,
    /// Format of the --dry-run plan.
    #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
    format: PlanFormat,
    /// The build context directory.
    context: PathBuf,
}

/// How `--dry-run` prints the plan.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum PlanFormat {
    /// Stages, vertices, dependencies and parallel levels.
    Text,
    /// A Graphviz graph.
    Dot,
}

/// Runs the CLI.
pub fn run() -> Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Parse { dump: _, file } => parse_cmd(&file),
        Command::Build(args) => build_cmd(&args),
    }
}

fn read_source(file: &Path) -> Result<String> {
    let bytes = if file == Path::new("-") {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
        buf
    } else {
        std::fs::read(file).with_context(|| format!("reading {}", file.display()))?
    };
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Prints a Dockerfile error as `FILE:LINE:COL: message` with the source excerpt.
fn report(file: &Path, source: &str, err: &Diagnostic) -> ExitCode {
    eprintln!("{}", err.render(&file.display().to_string(), source));
    ExitCode::FAILURE
}

fn parse_cmd(file: &Path) -> Result<ExitCode> {
    let source = read_source(file)?;
    match parser::parse(&source) {
        Ok(ast) => {
            for w in &ast.warnings {
                eprintln!(
                    "warning: {}:{}: {}",
                    file.display(),
                    w.range.start.line,
                    w.message
                );
            }
            println!("{}", ast.dump());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(report(file, &source, &e)),
    }
}

fn parse_build_args(raw: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for a in raw {
        match a.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                out.insert(k.to_string(), v.to_string());
            }
            Some(_) => bail!("invalid --build-arg {a:?}: the name is empty"),
            None => {
                // Docker: `--build-arg NAME` takes the value from the environment, and is
                // ignored when the variable is not set.
                if let Ok(v) = std::env::var(a) {
                    out.insert(a.clone(), v);
                }
            }
        }
    }
    Ok(out)
}

fn build_cmd(args: &BuildArgs) -> Result<ExitCode> {
    let context = &args.context;
    if !context.is_dir() {
        bail!("build context {} is not a directory", context.display());
    }
    let file = args
        .file
        .clone()
        .unwrap_or_else(|| context.join("Dockerfile"));
    let shown = args
        .file
        .clone()
        .unwrap_or_else(|| PathBuf::from("Dockerfile"));
    let source = read_source(&file)?;
    let (ast, df) = match kiln_frontend::load(&source) {
        Ok(v) => v,
        Err(e) => return Ok(report(&shown, &source, &e)),
    };
    for w in &ast.warnings {
        eprintln!(
            "warning: {}:{}: {}",
            shown.display(),
            w.range.start.line,
            w.message
        );
    }
    let excludes = match dockerignore::load_for(context, &file)
        .with_context(|| format!("reading .dockerignore for {}", context.display()))?
    {
        Some((_, patterns)) => patterns,
        None => Vec::new(),
    };
    let target_platform = match &args.platform {
        Some(p) => Platform::parse(p).map_err(anyhow::Error::msg)?,
        None => Platform::host(),
    };
    let opts = ConvertOptions {
        build_args: parse_build_args(&args.build_args)?,
        target: args.target.clone(),
        target_platform,
        build_platform: Platform::host(),
        context_excludes: excludes,
    };
    if !args.dry_run {
        bail!(
            "kiln can only plan builds so far: pass --dry-run (executing builds is not implemented yet)"
        );
    }
    let plan = match convert::convert(&df, &opts, &NoResolver) {
        Ok(p) => p,
        Err(e) => return Ok(report(&shown, &source, &e)),
    };
    for w in &plan.warnings {
        eprintln!("warning: {w}");
    }
    match args.format {
        PlanFormat::Text => print!(
            "{}",
            crate::plan::render(&plan, &df, &shown.display().to_string())
        ),
        PlanFormat::Dot => print!("{}", plan.graph.to_dot()),
    }
    Ok(ExitCode::SUCCESS)
}
