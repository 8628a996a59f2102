//! File operations of the build graph (COPY, ADD, WORKDIR, heredoc files) and the views
//! of source trees they read from: the build context filtered by `.dockerignore`
//! ([`ContextFs`]) and stacks of unpacked layers merged as overlayfs merges them
//! ([`LayeredFs`]).
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod copy;
mod error;
pub mod glob;
pub mod name;
pub mod view;

pub use copy::{
    ARCHIVE_LINK_DEV, CopyOptions, Entries, Ids, Node, NodeKind, Source, Upper, apply_chmod,
    expand_source, open_archive_at, read_member, resolve_chown,
};
pub use error::{FsError, Result};
pub use view::{ContextFs, Entry, LayeredFs, SourceFs, Stat, resolve};
