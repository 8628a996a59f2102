//! The layer module's error type.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while writing or unpacking a layer. Every
/// variant names the path, entry or digest concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayerError {
    /// An I/O operation on a path failed.
    #[error("failed to {op} {}: {source}", path.display())]
    Io {
        /// What was being done ("read", "create", "write layer", ...).
        op: &'static str,
        /// The path concerned (a tar entry's name while unpacking).
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A layer entry was refused because unpacking it could write outside the
    /// destination, or is not allowed (device nodes, whiteout devices, ...).
    #[error("refusing layer entry {entry:?}: {reason}")]
    UnsafeEntry {
        /// The entry's name as it appears in the tar.
        entry: String,
        /// Why it was refused.
        reason: String,
    },

    /// A layer entry (or a tar extension record before it) is over one of the unpacker's
    /// limits: name length or depth, extension record or xattr size.
    #[error("refusing layer entry {entry:?}: {reason}")]
    TooLarge {
        /// The entry's name as it appears in the tar (shortened if very long).
        entry: String,
        /// Which limit, and the size found.
        reason: String,
    },

    /// A layer entry cannot be represented (writing) or understood (unpacking).
    #[error("unsupported layer entry {entry:?}: {reason}")]
    Unsupported {
        /// The entry's path or name.
        entry: String,
        /// What is unsupported about it.
        reason: String,
    },

    /// The layer stream is not a valid (compressed) tar archive.
    #[error("malformed layer: {reason}: {source}")]
    Malformed {
        /// What was being read.
        reason: String,
        /// The underlying decoding error.
        #[source]
        source: io::Error,
    },

    /// The uncompressed layer did not hash to the expected diff_id.
    #[error(
        "layer diff_id mismatch: expected {expected}, but the uncompressed layer hashes to {actual}"
    )]
    DiffIdMismatch {
        /// The diff_id the caller expected (from the image config).
        expected: kiln_oci::Digest,
        /// The sha256 of the uncompressed stream actually read.
        actual: kiln_oci::Digest,
    },

    /// An unknown compression name or an out-of-range level.
    #[error("invalid layer compression {value:?}: {reason}")]
    InvalidCompression {
        /// The rejected name or level.
        value: String,
        /// Why it was rejected.
        reason: String,
    },
}

impl LayerError {
    /// An [`LayerError::Io`] for `op` on `path`.
    pub(super) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        LayerError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// An [`LayerError::UnsafeEntry`] for `entry`.
    pub(super) fn unsafe_entry(entry: &str, reason: impl Into<String>) -> Self {
        LayerError::UnsafeEntry {
            entry: entry.to_owned(),
            reason: reason.into(),
        }
    }
}
