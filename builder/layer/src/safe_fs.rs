//! Filesystem helpers for unpacking untrusted layers: lexical path
//! normalisation, and directory walking relative to a root fd that never
//! follows a symlink.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags};
use rustix::io::Errno;

/// Normalises a tar entry name to a relative path of plain components joined
/// by `/` (no `.`, no `..`, no empty components). The empty result means the
/// root itself. Refuses absolute names, names whose `..` would climb above
/// the root (even transiently, as in `a/../../x`), and NUL bytes.
pub(super) fn normalize(raw: &[u8]) -> Result<Vec<u8>, &'static str> {
    if raw.first() == Some(&b'/') {
        return Err("absolute path");
    }
    if raw.contains(&0) {
        return Err("NUL byte in path");
    }
    let mut parts: Vec<&[u8]> = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                if parts.pop().is_none() {
                    return Err("path escapes the destination through `..`");
                }
            }
            c => parts.push(c),
        }
    }
    Ok(parts.join(&b'/'))
}

/// Splits a normalised path into its parent path and last component.
pub(super) fn split_last(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|b| *b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

/// Joins a normalised parent path and a component.
pub(super) fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parent.len() + 1 + name.len());
    out.extend_from_slice(parent);
    if !parent.is_empty() {
        out.push(b'/');
    }
    out.extend_from_slice(name);
    out
}

/// Views path bytes as an `OsStr` (for rustix and std).
pub(super) fn os(bytes: &[u8]) -> &OsStr {
    OsStr::from_bytes(bytes)
}

/// Why a directory could not be opened.
pub(super) enum OpenDirError {
    /// A component does not exist (only when not creating).
    Missing,
    /// A component (given, normalised) is a symlink or not a directory.
    NotDir(Vec<u8>),
    /// Any other failure.
    Io(io::Error),
}

/// Opens the directory `path` (normalised, relative to `root`) as an
/// `O_PATH` fd, one component at a time with `O_NOFOLLOW`, so no symlink is
/// ever followed. With `create`, missing components are created (mode 0755)
/// and reported to `on_create`.
pub(super) fn open_dir(
    root: &OwnedFd,
    path: &[u8],
    create: bool,
    mut on_create: impl FnMut(&[u8]),
) -> Result<OwnedFd, OpenDirError> {
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut fd = rustix::fs::openat(root, ".", flags, Mode::empty())
        .map_err(|e| OpenDirError::Io(e.into()))?;
    if path.is_empty() {
        return Ok(fd);
    }
    let mut so_far = 0usize;
    for comp in path.split(|b| *b == b'/') {
        so_far += comp.len() + usize::from(so_far != 0);
        let here = &path[..so_far];
        let next = match rustix::fs::openat(&fd, os(comp), flags, Mode::empty()) {
            Ok(next) => next,
            Err(Errno::NOENT) if create => {
                match rustix::fs::mkdirat(&fd, os(comp), Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(OpenDirError::Io(e.into())),
                }
                // mkdir's mode is filtered by the umask: make it exact.
                rustix::fs::chmodat(&fd, os(comp), Mode::from_raw_mode(0o755), AtFlags::empty())
                    .map_err(|e| OpenDirError::Io(e.into()))?;
                on_create(here);
                match rustix::fs::openat(&fd, os(comp), flags, Mode::empty()) {
                    Ok(next) => next,
                    Err(Errno::NOTDIR | Errno::LOOP) => {
                        return Err(OpenDirError::NotDir(here.to_vec()));
                    }
                    Err(e) => return Err(OpenDirError::Io(e.into())),
                }
            }
            Err(Errno::NOENT) => return Err(OpenDirError::Missing),
            Err(Errno::NOTDIR | Errno::LOOP) => return Err(OpenDirError::NotDir(here.to_vec())),
            Err(e) => return Err(OpenDirError::Io(e.into())),
        };
        fd = next;
    }
    Ok(fd)
}

/// `lstat`s `name` in `dir`; `None` if it does not exist.
pub(super) fn file_type_at(dir: &impl AsFd, name: &[u8]) -> io::Result<Option<FileType>> {
    match rustix::fs::statat(dir, os(name), AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Lists the names in the directory `dir` (an fd opened with `O_PATH`).
pub(super) fn list_dir(dir: &OwnedFd) -> io::Result<Vec<(Vec<u8>, FileType)>> {
    let fd = rustix::fs::openat(
        dir,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut out = Vec::new();
    for entry in Dir::new(fd)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        out.push((name.to_vec(), entry.file_type()));
    }
    Ok(out)
}

/// Removes `name` from `dir` if it exists, recursively for directories,
/// never following symlinks, whatever the depth of the tree.
pub(super) fn remove_all_at(dir: &OwnedFd, name: &[u8]) -> io::Result<()> {
    kiln_cache::remove_all_at(dir, os(name))
}
