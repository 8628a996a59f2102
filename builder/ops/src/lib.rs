//! kiln's ops graph: the build steps the solver runs, as a graph of operations (image
//! source, local context, exec, file, merge) with content-derived definition digests.
//!
//! It knows nothing of Dockerfiles: the frontend's `convert` produces a [`BuildGraph`]
//! (mapping each instruction, `RUN --mount`s included, onto these types), and the
//! builder's solver and worker consume it. An [`Origin`] only says where in the source a
//! vertex came from, for progress and errors.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod graph;
mod mount;
mod source;

pub use graph::{
    BuildGraph, Chown, ExecOp, ExtraHost, FileAction, FileOp, GitSource, Network, Op, Origin,
    Platform, Vertex, VertexId, describe, sha256_digest,
};
pub use mount::{ExecMount, MountKind, Sharing};
pub use source::{Position, Range};

#[cfg(test)]
mod tests;
