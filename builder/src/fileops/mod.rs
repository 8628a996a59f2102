//! File operations of the build graph (COPY, ADD, WORKDIR, heredoc files) and the views
//! of source trees they read from.

pub mod copy;
pub mod glob;
pub mod name;
pub mod view;

pub use copy::{CopyOptions, Ids, Source, Upper, apply_chmod, expand_source, resolve_chown};
pub use view::{ContextFs, Entry, LayeredFs, SourceFs, resolve};
