//! Path operations on a tree a step has had its hands on (an upper dir, a copied tree),
//! made from the host without ever following the step's symlinks.
//!
//! A step can replace any directory of its tree with a symlink to a host path (`/a ->
//! /etc`). `tree.join("a/b/x")` would then name the host's `/etc/b/x`, so every lookup
//! here goes through `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` from a descriptor
//! of the tree's root: a symlink anywhere on the way, or a `..` leaving the tree, fails
//! the lookup instead.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat};

/// Opens `rel` below the directory `dir` with `oflags`, following no symlink (nor magic
/// link) anywhere on the way and never leaving `dir`: a symlink gives `ELOOP`, a `..` or
/// an absolute path that would leave gives `EXDEV`.
pub fn open_beneath(
    dir: impl AsFd,
    rel: impl AsRef<Path>,
    oflags: OFlags,
) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat2(
        dir,
        rel.as_ref(),
        oflags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
}

/// Opens the directory `rel` (relative; empty for `root` itself) below `root`.
pub fn open_dir(root: &Path, rel: &Path) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    let root_fd = rustix::fs::open(root, flags, Mode::empty())?;
    if rel.as_os_str().is_empty() {
        return Ok(root_fd);
    }
    Ok(open_beneath(&root_fd, rel, flags)?)
}

/// An entry of a tree, held as its parent directory's descriptor and its name, so that
/// what is checked is what is removed.
pub struct At {
    parent: OwnedFd,
    name: std::ffi::OsString,
}

impl At {
    /// The entry `rel` below `root`; `None` when `rel` has no name or a component of its
    /// parent is missing, not a directory, or a symlink.
    pub fn find(root: &Path, rel: &Path) -> Option<At> {
        let name = rel.file_name()?.to_os_string();
        let parent = open_dir(root, rel.parent().unwrap_or(Path::new(""))).ok()?;
        Some(At { parent, name })
    }

    /// `lstat` of the entry.
    pub fn stat(&self) -> io::Result<Stat> {
        Ok(rustix::fs::statat(
            &self.parent,
            self.name.as_os_str(),
            AtFlags::SYMLINK_NOFOLLOW,
        )?)
    }

    /// Opens the entry, which must be a directory (not a symlink to one).
    pub fn open_dir(&self) -> io::Result<OwnedFd> {
        Ok(open_beneath(
            &self.parent,
            &self.name,
            OFlags::RDONLY | OFlags::DIRECTORY,
        )?)
    }

    /// Removes the entry: an empty directory with `dir`, anything else (a symlink itself,
    /// never its target) without.
    pub fn remove(&self, dir: bool) -> io::Result<()> {
        let flags = if dir {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        Ok(rustix::fs::unlinkat(
            &self.parent,
            self.name.as_os_str(),
            flags,
        )?)
    }
}

/// Whether a `Stat` is of a directory.
pub fn is_dir(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::Directory
}

/// Whether a `Stat` is of a regular file.
pub fn is_file(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
}

/// Whether the directory behind `fd` carries overlayfs' opaque marker.
pub fn is_opaque(fd: &OwnedFd) -> bool {
    rustix::fs::fgetxattr_query(fd, "trusted.overlay.opaque").is_ok()
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn lookups_never_follow_a_symlink_out_of_the_tree() {
        let t = tempfile::tempdir().unwrap();
        let tree = t.path().join("tree");
        let victim = t.path().join("victim");
        fs::create_dir_all(victim.join("b")).unwrap();
        fs::write(victim.join("b/x"), "").unwrap();
        fs::create_dir_all(tree.join("real/b")).unwrap();
        symlink(&victim, tree.join("a")).unwrap();
        symlink("../victim", tree.join("rel")).unwrap();

        for rel in ["a/b/x", "rel/b/x", "../victim/b/x"] {
            assert!(At::find(&tree, Path::new(rel)).is_none(), "{rel}");
        }
        assert!(open_dir(&tree, Path::new("a")).is_err());
        // The symlink itself can be looked at and removed, never its target.
        let link = At::find(&tree, Path::new("a")).unwrap();
        assert!(!is_dir(&link.stat().unwrap()));
        assert!(link.open_dir().is_err());
        link.remove(false).unwrap();
        assert!(victim.join("b/x").exists());
        // Real directories work.
        let b = At::find(&tree, Path::new("real/b")).unwrap();
        assert!(is_dir(&b.stat().unwrap()));
        assert!(!is_opaque(&b.open_dir().unwrap()));
        b.remove(true).unwrap();
        assert!(!tree.join("real/b").exists());
    }
}
