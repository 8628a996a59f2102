//! The errors of file operations. Their messages are what users see (some are compared
//! by the end-to-end tests): change them only with those tests.

use std::io;
use std::path::PathBuf;

use kiln_frontend::dockerignore::IgnoreError;

/// A file operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// A system call failed while doing `what` ("mkdir /x", "reading /y").
    #[error("{what}")]
    Io {
        /// What was being done, naming the path.
        what: String,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// A system call failed (the path is in the message of the step around it).
    #[error(transparent)]
    Os(#[from] io::Error),
    /// `--exclude` or `.dockerignore` patterns that do not compile.
    #[error(transparent)]
    Ignore(#[from] IgnoreError),
    /// `--chown` names a user the image's `/etc/passwd` does not have.
    #[error("unable to find user {0}: no matching entries in passwd file")]
    UnknownUser(String),
    /// `--chown` names a group the image's `/etc/group` does not have.
    #[error("unable to find group {0}: no matching entries in group file")]
    UnknownGroup(String),
    /// A `--chmod` value that is neither octal nor symbolic.
    #[error("invalid chmod {0:?}")]
    InvalidChmod(String),
    /// A source that is a device, socket or fifo.
    #[error("cannot copy {}: unsupported file type (device, socket or fifo)", .0.display())]
    UnsupportedFileType(PathBuf),
    /// A file would replace a directory.
    #[error("cannot write file {0}: it is a directory")]
    IsADirectory(String),
    /// A source path that climbs out of its root with `..`.
    #[error("forbidden path outside the build context: {0}")]
    OutsideContext(String),
    /// A source path that does not exist.
    #[error("{src:?} not found in {within}")]
    NotFound {
        /// The source as written.
        src: String,
        /// The tree searched ("the build context", "stage builder").
        within: String,
    },
    /// A wildcard source that matches nothing.
    #[error("no source files were specified: {src:?} matches nothing in {within}")]
    NoMatch {
        /// The source as written.
        src: String,
        /// The tree searched.
        within: String,
    },
    /// A malformed wildcard.
    #[error("{0}")]
    BadPattern(String),
    /// A symlink cycle (or a chain over 40 links).
    #[error("too many levels of symbolic links resolving /{0}")]
    SymlinkLoop(String),
    /// An in-memory upper met an action that needs a directory on disk (an archive
    /// to extract): the op is done again over a directory.
    #[error("this file action needs a directory on disk")]
    NeedsDisk,
    /// An `ADD` archive entry that would land outside the destination.
    #[error("refusing archive entry {member:?} outside the destination in {}", .archive.display())]
    ArchiveEscape {
        /// The member's name in the archive.
        member: String,
        /// The archive.
        archive: PathBuf,
    },
}

/// A result with [`FsError`].
pub type Result<T, E = FsError> = std::result::Result<T, E>;

/// Adds what was being done to an I/O error; the error's source keeps the system's.
pub(crate) trait IoContext<T> {
    /// The error becomes [`FsError::Io`] with `what()` as its message.
    fn with_context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn with_context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| FsError::Io {
            what: what(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error;

    use super::*;

    /// The messages users saw before these were typed errors: the context first, the
    /// system's error as its source (what `{:#}` in the binary prints after a colon).
    #[test]
    fn messages_are_unchanged() {
        let e = Err::<(), _>(io::Error::from(io::ErrorKind::NotFound))
            .with_context(|| "mkdir /x".into())
            .unwrap_err();
        assert_eq!(e.to_string(), "mkdir /x");
        assert_eq!(e.source().unwrap().to_string(), "entity not found");
        let e = FsError::NotFound {
            src: "a.txt".into(),
            within: "the build context".into(),
        };
        assert_eq!(e.to_string(), "\"a.txt\" not found in the build context");
        let e = FsError::NoMatch {
            src: "*.c".into(),
            within: "stage builder".into(),
        };
        assert_eq!(
            e.to_string(),
            "no source files were specified: \"*.c\" matches nothing in stage builder"
        );
        assert_eq!(
            FsError::InvalidChmod("u+q".into()).to_string(),
            "invalid chmod \"u+q\""
        );
    }
}
