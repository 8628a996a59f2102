//! Removing directory trees of any depth.
//!
//! `std::fs::remove_dir_all` keeps one open directory per level of the tree, so a tree
//! deeper than the open-file limit (a hostile layer can nest directories by the hundred
//! thousand) cannot be removed with it: it fails with "Too many open files" and leaves the
//! tree behind. [`remove_all_at`] keeps a single directory open at a time and climbs back
//! through `..`, checking that it lands on the directory it came from.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags};
use rustix::io::Errno;

/// Removes `path` (recursively if it is a directory) without following symlinks; a
/// missing `path` is not an error. Works whatever the depth of the tree.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let (parent, name) = match (path.parent(), path.file_name()) {
        (Some(p), Some(n)) => (
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            },
            n,
        ),
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cannot remove {}: not a removable path", path.display()),
            ));
        }
    };
    let dir = match rustix::fs::open(
        parent,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    remove_all_at(&dir, name)
}

/// One directory on the way down: its identity, its name in its parent and the
/// subdirectories still to remove.
struct Level {
    dev: u64,
    ino: u64,
    name: OsString,
    pending: Vec<OsString>,
}

/// Removes `name` in the directory `dir` (recursively if it is a directory), never
/// following a symlink; a missing `name` is not an error. One directory is open at a time
/// whatever the depth; memory grows with the subdirectories along the current path only.
pub fn remove_all_at(dir: &impl AsFd, name: &OsStr) -> io::Result<()> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
        Ok(st) if FileType::from_raw_mode(st.st_mode) != FileType::Directory => {
            return ignore_missing(rustix::fs::unlinkat(dir, name, AtFlags::empty()));
        }
        Ok(_) => {}
    }
    let mut cur = open_subdir(dir, name)?;
    let mut stack = vec![Level::enter(&cur, name.to_owned())?];
    loop {
        let top = stack
            .last_mut()
            .expect("the stack holds the current directory");
        if let Some(sub) = top.pending.pop() {
            match open_subdir(&cur, &sub) {
                Ok(fd) => {
                    let level = Level::enter(&fd, sub)?;
                    cur = fd;
                    stack.push(level);
                }
                Err(e) if e.raw_os_error() == Some(Errno::NOENT.raw_os_error()) => {}
                // Replaced by something else since it was listed.
                Err(e) if e.raw_os_error() == Some(Errno::NOTDIR.raw_os_error()) => {
                    ignore_missing(rustix::fs::unlinkat(&cur, &sub, AtFlags::empty()))?;
                }
                Err(e) => return Err(e),
            }
            continue;
        }
        // Every entry of the current directory is gone: climb and remove it.
        let done = stack.pop().expect("the stack holds the current directory");
        let Some(parent) = stack.last() else {
            return ignore_missing(rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR));
        };
        let up = rustix::fs::openat(
            &cur,
            "..",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let st = rustix::fs::fstat(&up)?;
        if (st.st_dev, st.st_ino) != (parent.dev, parent.ino) {
            return Err(io::Error::other(format!(
                "directory {:?} was moved while it was being removed",
                done.name
            )));
        }
        ignore_missing(rustix::fs::unlinkat(&up, &done.name, AtFlags::REMOVEDIR))?;
        cur = up;
    }
}

impl Level {
    /// Lists `fd`: removes its non-directories at once and remembers its subdirectories.
    fn enter(fd: &OwnedFd, name: OsString) -> io::Result<Level> {
        let st = rustix::fs::fstat(fd)?;
        let mut names = Vec::new();
        for entry in Dir::read_from(fd)? {
            let entry = entry?;
            let n = entry.file_name().to_bytes();
            if n == b"." || n == b".." {
                continue;
            }
            names.push((OsStr::from_bytes(n).to_owned(), entry.file_type()));
        }
        let mut pending = Vec::new();
        for (n, ft) in names {
            let ft = if ft == FileType::Unknown {
                match rustix::fs::statat(fd, &n, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) => FileType::from_raw_mode(st.st_mode),
                    Err(Errno::NOENT) => continue,
                    Err(e) => return Err(e.into()),
                }
            } else {
                ft
            };
            if ft == FileType::Directory {
                pending.push(n);
            } else {
                ignore_missing(rustix::fs::unlinkat(fd, &n, AtFlags::empty()))?;
            }
        }
        Ok(Level {
            dev: st.st_dev,
            ino: st.st_ino,
            name,
            pending,
        })
    }
}

fn open_subdir(dir: &impl AsFd, name: &OsStr) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

fn ignore_missing(res: rustix::io::Result<()>) -> io::Result<()> {
    match res {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// Creates `depth` nested directories `d/d/d/...` under `top`, with a file at the
    /// bottom, without ever using a path longer than one component.
    fn nest(top: &Path, depth: usize) {
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let mut fd = rustix::fs::open(top, flags, Mode::empty()).unwrap();
        for _ in 0..depth {
            rustix::fs::mkdirat(&fd, "d", Mode::from_raw_mode(0o755)).unwrap();
            fd = rustix::fs::openat(&fd, "d", flags, Mode::empty()).unwrap();
        }
        let f = rustix::fs::openat(
            &fd,
            "f",
            OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .unwrap();
        drop(f);
    }

    // Regression (issue 9, finding 4): a hostile layer left 154k nested directories that
    // the temp cleanup (std's remove_dir_all) could not remove.
    #[test]
    fn removes_a_tree_deeper_than_the_open_file_limit() {
        let tmp = tempfile::tempdir().unwrap();
        let top = tmp.path().join("deep");
        fs::create_dir(&top).unwrap();
        // Deeper than the usual open-file limits (1024, or 20000 on this project's CI
        // machines), which is what broke std's remove_dir_all.
        let depth = 25_000;
        nest(&top, depth);
        remove_tree(&top).unwrap();
        assert!(!top.exists());
        // A missing path is not an error.
        remove_tree(&top).unwrap();
    }

    #[test]
    fn removes_wide_trees_and_never_follows_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        fs::create_dir(&victim).unwrap();
        fs::write(victim.join("keep"), b"x").unwrap();
        let top = tmp.path().join("top");
        for i in 0..50 {
            let d = top.join(format!("d{i}")).join("sub");
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("f"), b"x").unwrap();
            std::os::unix::fs::symlink(&victim, d.join("link")).unwrap();
        }
        std::os::unix::fs::symlink(&victim, top.join("link")).unwrap();
        remove_tree(&top).unwrap();
        assert!(!top.exists());
        assert!(victim.join("keep").exists());
        // A symlink itself is removed, not its target.
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        remove_tree(&link).unwrap();
        assert!(!link.exists());
        assert!(victim.join("keep").exists());
    }
}
