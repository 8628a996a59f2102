//! Atomic file writes: a temporary file in the destination's directory is filled,
//! fsynced, renamed over the destination, and the directory fsynced. A crash at any
//! point leaves either the old file or the new one, never a partial one; a failed
//! write removes its temporary file. Every file kiln writes whole (store metadata,
//! exporter outputs, container state, cache exports) goes through here.
//!
//! ```
//! use std::io::Write;
//! let dir = tempfile::tempdir().unwrap();
//! let dest = dir.path().join("state.json");
//! kiln_cache::atomic::write_with(&dest, |f| f.write_all(b"{}")).unwrap();
//! assert_eq!(std::fs::read(&dest).unwrap(), b"{}");
//! ```

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The mode of the files written (as `File::create` gives under umask 022).
pub const FILE_MODE: u32 = 0o644;

/// Why an atomic write failed: the caller's writer returned an error, or the file
/// system refused a step (which, and on which path).
#[derive(Debug, thiserror::Error)]
pub enum AtomicError<E> {
    /// The writer's own error.
    #[error(transparent)]
    Write(E),
    /// Creating, syncing or renaming the temporary file, or syncing the directory.
    #[error("{op} {}", path.display())]
    Io {
        /// The step (`creating a temporary file in`, `renaming a temporary file to`, ...).
        op: &'static str,
        /// The path it was done on.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

impl AtomicError<io::Error> {
    /// The `io::Error`, for callers that report any failure as one I/O error on the
    /// destination.
    pub fn into_io(self) -> io::Error {
        match self {
            AtomicError::Write(e) | AtomicError::Io { source: e, .. } => e,
        }
    }
}

/// Writes `dest` atomically with what `write` puts in the file (mode [`FILE_MODE`]);
/// `write`'s value is returned. The temporary file is `.NAME.PID.SEQ.tmp` beside `dest`.
pub fn write_with<T, E>(
    dest: &Path,
    write: impl FnOnce(&mut File) -> Result<T, E>,
) -> Result<T, AtomicError<E>> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = parent_dir(dest);
    let name = dest
        .file_name()
        .map_or_else(|| "kiln".into(), |n| n.to_string_lossy());
    let (file, tmp) = loop {
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(".{name}.{}.{seq}.tmp", std::process::id()));
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(f) => break (f, RemoveOnDrop(path)),
            // Left by a crashed process that had this pid.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_err("creating a temporary file in", dir)(e)),
        }
    };
    // `tmp` removes the temporary file when dropped; after the rename there is none.
    finish(file, &tmp.0, dest, write)
}

/// Removes a path when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// [`write_with`] of `bytes`.
pub fn write(dest: &Path, bytes: &[u8]) -> Result<(), AtomicError<io::Error>> {
    write_with(dest, |f| f.write_all(bytes))
}

/// The steps after the temporary file `tmp` (open as `file`) exists: `write`, mode,
/// fsync, rename to `dest`, fsync of `dest`'s directory. The caller removes `tmp` when
/// this fails (the store keeps its temporary files in its own `tmp/`, named after the
/// writing process, so that a crashed writer's are found; see `Store::create_temp`).
pub(crate) fn finish<T, E>(
    mut file: File,
    tmp: &Path,
    dest: &Path,
    write: impl FnOnce(&mut File) -> Result<T, E>,
) -> Result<T, AtomicError<E>> {
    let value = write(&mut file).map_err(AtomicError::Write)?;
    file.flush()
        .and_then(|()| file.set_permissions(fs::Permissions::from_mode(FILE_MODE)))
        .and_then(|()| file.sync_all())
        .map_err(io_err("writing", tmp))?;
    drop(file);
    fs::rename(tmp, dest).map_err(io_err("renaming a temporary file to", dest))?;
    let dir = parent_dir(dest);
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing directory", dir))?;
    Ok(value)
}

fn io_err<E>(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> AtomicError<E> {
    let path = path.to_path_buf();
    move |source| AtomicError::Io { op, path, source }
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn replaces_the_file_whole_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("a.json");
        write(&dest, b"one").unwrap();
        let n = write_with(&dest, |f| f.write_all(b"two").map(|()| 3)).unwrap();
        assert_eq!(n, 3);
        assert_eq!(fs::read(&dest).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
            FILE_MODE
        );
        assert_eq!(names(dir.path()), ["a.json"]);
    }

    #[test]
    fn a_failed_writer_keeps_the_old_file_and_its_error() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("a.json");
        write(&dest, b"old").unwrap();
        let err = write_with(&dest, |f| {
            f.write_all(b"partial")?;
            Err::<(), _>(io::Error::other("writer gave up"))
        })
        .unwrap_err();
        assert!(matches!(&err, AtomicError::Write(e) if e.to_string() == "writer gave up"));
        assert_eq!(fs::read(&dest).unwrap(), b"old");
        assert_eq!(names(dir.path()), ["a.json"]);
    }

    #[test]
    fn file_system_errors_name_the_step_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("missing/a.json");
        let err = write(&dest, b"x").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("creating a temporary file in") && msg.contains("missing"),
            "{msg}"
        );
        assert_eq!(err.into_io().kind(), io::ErrorKind::NotFound);
    }
}
