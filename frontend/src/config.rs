//! The image configuration a stage builds up: the runtime config (kiln's one type,
//! `kiln_oci::config::ImageConfig`, re-exported here) and the history entries.

pub use kiln_oci::config::{Healthcheck, ImageConfig};

use kiln_ops::VertexId;

/// One history entry, as BuildKit writes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// `RUN /bin/sh -c ... # buildkit`, `ENV A=b`, ...
    pub created_by: String,
    /// `buildkit.dockerfile.v0`.
    pub comment: String,
    /// The vertex whose result (diffed against its parent) is this entry's layer; `None`
    /// for metadata-only steps.
    pub vertex: Option<VertexId>,
}
