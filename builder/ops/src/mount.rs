//! The mounts of an exec op: the graph's own types, not the Dockerfile's `--mount`
//! syntax. The frontend's `convert` maps each parsed `RUN --mount` onto an [`ExecMount`],
//! resolving its defaults (cache ids, modes) there, so the worker runs exactly what the
//! definition digest covers.

use serde::Serialize;

/// A mount of an exec, with its source (if any) resolved to a vertex input index.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct ExecMount {
    /// Where it appears in the container. Empty only for a secret exposed as an
    /// environment variable alone.
    pub target: String,
    /// Index into the vertex's inputs of the tree a bind or cache mount takes its source
    /// from (a stage, an image or the context). Never a stage's name: the input's digest
    /// already covers it, so renaming a stage does not change the definition digest (as
    /// BuildKit, whose mounts refer to inputs by index).
    pub input: Option<usize>,
    /// What is mounted.
    pub kind: MountKind,
}

/// What an [`ExecMount`] mounts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum MountKind {
    /// A path of the input tree (a stage, an image or the context).
    Bind {
        /// Path inside the input; `None` for its root.
        source: Option<String>,
        /// Writes are refused; otherwise they go to a throw-away layer.
        readonly: bool,
    },
    /// A persistent directory kept in the store by `id`.
    Cache {
        /// The cache's id (the target when the Dockerfile gave none).
        id: String,
        /// How concurrent steps share it.
        sharing: Sharing,
        /// Mounted read-only.
        readonly: bool,
        /// Path inside the input that seeds a new cache; `None` for its root.
        source: Option<String>,
        /// Permission bits of a new cache directory.
        mode: u32,
        /// Owner uid of a new cache directory.
        uid: u32,
        /// Owner gid of a new cache directory.
        gid: u32,
    },
    /// An empty tmpfs.
    Tmpfs {
        /// Size limit in bytes (`None`: the kernel's default).
        size: Option<u64>,
    },
    /// A secret file given to the build (`kiln build --secret id=...`).
    Secret {
        /// The secret's id.
        id: String,
        /// Also (or only, when `target` is empty) exposed as this environment variable.
        env: Option<String>,
        /// The step fails when the secret is not given; otherwise the mount is skipped.
        required: bool,
        /// Permission bits of the file.
        mode: u32,
        /// Owner uid of the file.
        uid: u32,
        /// Owner gid of the file.
        gid: u32,
    },
    /// An SSH agent socket forwarded from the client.
    Ssh {
        /// Which forwarded agent (`default` when not named).
        id: String,
        /// The step fails when the agent is not forwarded.
        required: bool,
        /// Permission bits of the socket.
        mode: u32,
        /// Owner uid of the socket.
        uid: u32,
        /// Owner gid of the socket.
        gid: u32,
    },
}

/// How concurrent steps share a cache mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sharing {
    /// Used by all writers at once.
    Shared,
    /// A new copy for each concurrent writer.
    Private,
    /// One writer at a time.
    Locked,
}
