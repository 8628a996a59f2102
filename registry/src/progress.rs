//! Progress events of pulls and pushes, typed. Library code reports; only the CLI draws.

use kiln_cache::Digest;

// The blob kinds and outcomes live in kiln-oci: the solver's events carry them too, and
// the solver must not depend on the registry client.
pub use kiln_oci::transfer::{BlobDone, BlobKind};

/// One step of the work on a blob, in this order for each blob: `Started`, any number
/// of `Progress`, `Done` (blobs that need no transfer get only `Done`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlobEvent<'a> {
    /// A transfer started.
    Started {
        /// The blob.
        digest: &'a Digest,
        /// Its size in bytes.
        size: u64,
        /// Download or upload.
        kind: BlobKind,
    },
    /// `done` of `total` bytes are transferred (cumulative).
    Progress {
        /// The blob.
        digest: &'a Digest,
        /// Bytes done so far.
        done: u64,
        /// The blob's size.
        total: u64,
    },
    /// The blob is finished.
    Done {
        /// The blob.
        digest: &'a Digest,
        /// Its size in bytes.
        size: u64,
        /// How it ended.
        how: BlobDone,
    },
}

/// Receives per-blob progress from pulls and pushes. Called from several
/// worker threads at once.
pub trait Progress: Sync {
    /// Something happened to a blob.
    fn blob(&self, event: &BlobEvent<'_>);

    /// Whether the transfer is no longer wanted: a download checks between reads and
    /// stops with [`crate::RegistryError::Cancelled`] (nothing lands in the store).
    fn cancelled(&self) -> bool {
        false
    }
}

/// A [`Progress`] that ignores everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn blob(&self, _: &BlobEvent<'_>) {}
}
