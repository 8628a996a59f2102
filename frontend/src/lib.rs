//! The kiln Dockerfile frontend: Dockerfile text in, a typed, validated build graph out.
//!
//! The pipeline follows BuildKit's: [`parser`] (syntax tree with line ranges) ->
//! [`instructions`] (typed, validated commands) -> [`shell`] (word expansion, used by
//! [`convert`]) -> [`convert`] (stages -> a `kiln_ops::BuildGraph`, the ops graph the
//! solver runs, which knows nothing of Dockerfiles). It does no I/O beyond reading
//! files it is pointed at.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod config;
pub mod convert;
pub mod dockerignore;
pub mod error;
pub mod instructions;
pub mod parser;
pub mod shell;

pub use error::{Diagnostic, Position, Range};

/// Parses and type-checks a Dockerfile.
pub fn load(source: &str) -> Result<(parser::Ast, instructions::Dockerfile), Diagnostic> {
    let ast = parser::parse(source)?;
    let df = instructions::parse(&ast)?;
    Ok((ast, df))
}
