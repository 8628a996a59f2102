//! The sandbox's errors. Their messages are what users see: one line naming what failed.

use std::io;
use std::path::PathBuf;

/// Running a sandbox, or preparing its tree, failed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A system call failed while doing `what` ("starting the sandbox (/usr/bin/kiln)").
    #[error("{what}")]
    Io {
        /// What was being done, naming the path.
        what: String,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// A system call failed (the step around it names the path).
    #[error(transparent)]
    Os(#[from] io::Error),
    /// The spec could not be written for the init process.
    #[error("writing the sandbox spec: {0}")]
    Spec(#[from] serde_json::Error),
    /// The init process could not read its spec.
    #[error("reading {}: {reason}", .path.display())]
    ReadSpec {
        /// The spec file.
        path: PathBuf,
        /// Why it could not be read or parsed.
        reason: String,
    },
    /// kiln does not run as root.
    #[error("RUN needs root (kiln uses mount and pid namespaces and overlayfs); run kiln as root")]
    NeedsRoot,
    /// The run was cancelled (Ctrl-C, or another step failed).
    #[error("cancelled")]
    Cancelled,
    /// `USER` names a user the image's `/etc/passwd` does not have.
    #[error("unable to find user {0}: no matching entries in passwd file")]
    UnknownUser(String),
    /// `USER` names a group the image's `/etc/group` does not have.
    #[error("unable to find group {0}: no matching entries in group file")]
    UnknownGroup(String),
    /// A container's (or exec'd) command did not start: `exec: "nope": executable file
    /// not found in $PATH` (127), cannot be executed (126), or the runtime failed (125).
    #[error("{message}")]
    Start {
        /// Docker's exit code for it.
        code: i32,
        /// What failed, one line.
        message: String,
    },
    /// An error a runtime gives as a message only (the recording fake's answer).
    #[error("{0}")]
    Message(String),
}

impl SandboxError {
    /// The exit status `kiln run` gives for this error, as Docker and podman do: 126 or
    /// 127 for a command that cannot be executed or is not found, else 125.
    pub fn exit_code(&self) -> i32 {
        match self {
            SandboxError::Start { code, .. } => *code,
            _ => 125,
        }
    }
}

/// A result with [`SandboxError`].
pub type Result<T, E = SandboxError> = std::result::Result<T, E>;

/// Adds what was being done to an I/O error.
pub(crate) trait IoContext<T> {
    /// The error becomes [`SandboxError::Io`] with `what()` as its message.
    fn with_context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn with_context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| SandboxError::Io {
            what: what(),
            source,
        })
    }
}
