//! The crate's single error type.

use std::io;
use std::path::{Path, PathBuf};

use crate::digest::Digest;

/// Result alias used throughout `kiln-cache`.
pub type Result<T, E = CacheError> = std::result::Result<T, E>;

/// Everything that can go wrong in the store. Every variant names the path,
/// digest or input concerned so messages are actionable on their own.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// A string is not a valid `sha256:<64 lowercase hex>` digest.
    #[error(transparent)]
    InvalidDigest(#[from] kiln_oci::DigestError),

    /// An I/O operation on a path failed.
    #[error("failed to {op} {}: {source}", path.display())]
    Io {
        /// What was being done ("open", "rename", "fsync", ...).
        op: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// Written content did not hash to the digest the caller expected.
    #[error("digest mismatch: expected {expected}, but the content hashes to {actual}")]
    DigestMismatch {
        /// The digest the caller announced.
        expected: Digest,
        /// The digest of the bytes actually written.
        actual: Digest,
    },

    /// A stored blob no longer hashes to its name.
    #[error("blob {digest} at {} is corrupt: its content hashes to {actual}", path.display())]
    CorruptBlob {
        /// The blob's name.
        digest: Digest,
        /// What its content hashes to now.
        actual: Digest,
        /// Where it is stored.
        path: PathBuf,
    },

    /// The requested blob is not in the store.
    #[error("blob {digest} not found in the store (expected at {})", path.display())]
    BlobNotFound {
        /// The missing blob.
        digest: Digest,
        /// Where it would be stored.
        path: PathBuf,
    },

    /// The store was created by a newer kiln with an incompatible layout.
    #[error(
        "store at {} has layout version {found}, but this kiln only understands up to version \
         {supported}; upgrade kiln or point it at another store root (KILN_ROOT)",
        path.display()
    )]
    NewerLayout {
        /// The store root.
        path: PathBuf,
        /// The version found in `store.json`.
        found: u32,
        /// The newest version this build supports.
        supported: u32,
    },

    /// A store metadata file (`store.json`, `images/tags.json`) is unreadable
    /// garbage. Unlike cache records these are not silently discarded.
    #[error("{} is corrupt: {reason}", path.display())]
    CorruptFile {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A value could not be serialized to JSON.
    #[error("cannot serialize {what} to JSON: {source}")]
    Serialize {
        /// What was being serialized.
        what: String,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },

    /// An argument was rejected (empty tag name, ...).
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidArgument {
        /// What kind of argument.
        what: &'static str,
        /// The rejected value.
        value: String,
        /// Why.
        reason: &'static str,
    },

    /// The store's `config.toml` does not parse.
    #[error("invalid {}: {reason}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong, with its line.
        reason: String,
    },

    /// No store root could be derived from the environment.
    #[error(
        "cannot determine kiln's store root: none of KILN_ROOT, XDG_DATA_HOME or HOME is set; \
         set KILN_ROOT"
    )]
    NoDefaultRoot,
}

impl CacheError {
    /// Build an [`CacheError::Io`] for `path`.
    pub(crate) fn io(op: &'static str, path: impl AsRef<Path>, source: io::Error) -> Self {
        CacheError::Io {
            op,
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
}

/// Extension to attach an operation and a path to `io::Result`s.
pub(crate) trait IoContext<T> {
    /// Wrap the error as [`CacheError::Io`].
    fn ctx(self, op: &'static str, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, op: &'static str, path: &Path) -> Result<T> {
        self.map_err(|e| CacheError::io(op, path, e))
    }
}
