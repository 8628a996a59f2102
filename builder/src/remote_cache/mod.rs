//! The registry cache (`--cache-to` / `--cache-from`): a build's cache records shared
//! through an OCI registry (or an OCI layout directory), so one CI machine's build
//! hits on the next machine. [`spec`] parses the flags, [`format`] is what is stored,
//! [`export`] writes it after a build (merging with what is there), [`import`] reads
//! it before one (the worker looks keys up in it when its store has no record).

pub mod export;
pub mod format;
pub mod import;
pub mod spec;

pub use export::{ExportReport, export};
pub use import::{Imported, ImportedCache};
pub use spec::{CacheLocation, CacheMode, CacheToSpec, parse_cache_from};

/// Why a cache could not be read or written: one line naming the reference or
/// directory, with its cause.
#[derive(Debug, thiserror::Error)]
pub enum RemoteCacheError {
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] kiln_registry::RegistryError),
    /// No registry client.
    #[error(transparent)]
    Remote(#[from] crate::remote::RemoteError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] kiln_cache::CacheError),
    /// A layer kept as its snapshot only could not be written again.
    #[error(transparent)]
    Recreate(#[from] Box<crate::recreate::RecreateError>),
    /// The config is not a kiln cache kiln can read.
    #[error(transparent)]
    Format(#[from] format::FormatError),
    /// A directory cache could not be read or written.
    #[error("{what}")]
    Layout {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A directory cache is not one.
    #[error("{what}: {reason}")]
    Invalid {
        /// The directory or file.
        what: String,
        /// What is wrong.
        reason: String,
    },
}
