//! Progress events of pulls and pushes, typed. Library code reports; only the CLI draws.

use kiln_cache::Digest;

/// What is being done with a blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobKind {
    /// Fetched from a registry into the store.
    Download,
    /// Sent from the store to a registry.
    Upload,
}

/// How work on a blob ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobDone {
    /// Fetched from the registry.
    Downloaded,
    /// Already in the store: nothing fetched.
    Cached,
    /// Sent to the registry.
    Uploaded,
    /// Already in the target repository: nothing sent.
    Exists,
    /// Mounted from another repository of the same registry.
    Mounted,
    /// Failed (the error is returned by the call).
    Failed,
}

impl BlobDone {
    /// The word progress displays show (`downloaded`, `exists`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            BlobDone::Downloaded => "downloaded",
            BlobDone::Cached => "cached",
            BlobDone::Uploaded => "uploaded",
            BlobDone::Exists => "exists",
            BlobDone::Mounted => "mounted",
            BlobDone::Failed => "failed",
        }
    }
}

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
}

/// A [`Progress`] that ignores everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn blob(&self, _: &BlobEvent<'_>) {}
}
