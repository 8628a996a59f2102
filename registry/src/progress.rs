//! Progress callbacks. Library code reports; only the CLI draws.

/// Receives per-blob progress from pulls and pushes. Called from several
/// worker threads at once.
pub trait Progress: Sync {
    /// Work on a blob started. `action` is `"download"` or `"upload"`.
    fn blob_started(&self, digest: &str, size: u64, action: &str);
    /// `bytes` of the blob are done so far (cumulative).
    fn blob_progress(&self, digest: &str, bytes: u64);
    /// The blob is finished. `how` is one of `"downloaded"`, `"cached"`
    /// (already in the store), `"uploaded"`, `"exists"` (already in the
    /// registry), `"mounted"` (cross-repository mount), `"failed"`.
    fn blob_done(&self, digest: &str, how: &str);
}

/// A [`Progress`] that ignores everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn blob_started(&self, _: &str, _: u64, _: &str) {}
    fn blob_progress(&self, _: &str, _: u64) {}
    fn blob_done(&self, _: &str, _: &str) {}
}
