//! How a blob transfer between a registry and the store stands: shared by the registry
//! client, which reports transfers, and the solver's events, which carry them to the
//! progress display (the solver must not depend on the registry client).

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
