//! The copy snapshotter's two halves, for machines without overlayfs: materialising a
//! chain of snapshot layers as one plain tree, and diffing a tree a step changed against
//! those layers into an overlay-style diff directory (0/0 character devices for
//! deletions) that the layer writer turns into an OCI layer.

use std::collections::HashMap;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use kiln_fs::name::{encode, to_path};
use kiln_fs::{LayeredFs, SourceFs};
use kiln_layer::is_overlay_xattr;
use rustix::fs::{AtFlags, CWD, FileType, Gid, Mode, Uid};

use crate::error::{IoContext, Result};

fn join(rel: &str, name: &str) -> String {
    if rel.is_empty() {
        name.to_string()
    } else {
        format!("{rel}/{name}")
    }
}

/// Copies owner, mode, xattrs and times of `meta` (of `src`) onto `dest`.
fn copy_meta(src: &Path, meta: &Metadata, dest: &Path) -> io::Result<()> {
    rustix::fs::chownat(
        CWD,
        dest,
        Some(Uid::from_raw(meta.uid())),
        Some(Gid::from_raw(meta.gid())),
        AtFlags::SYMLINK_NOFOLLOW,
    )?;
    if !meta.file_type().is_symlink() {
        fs::set_permissions(dest, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        if let Ok(names) = xattr::list(src) {
            for n in names {
                if is_overlay_xattr(n.as_encoded_bytes()) {
                    continue;
                }
                if let Ok(Some(v)) = xattr::get(src, &n) {
                    let _ = xattr::set(dest, &n, &v);
                }
            }
        }
    }
    let mtime = filetime::FileTime::from_last_modification_time(meta);
    filetime::set_symlink_file_times(dest, mtime, mtime)
}

/// Creates `dest` as a copy of the non-directory entry `src` (content, type, metadata).
fn copy_entry(src: &Path, meta: &Metadata, dest: &Path) -> io::Result<()> {
    let ft = meta.file_type();
    if ft.is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(src)?, dest)?;
    } else if ft.is_file() {
        fs::copy(src, dest)?;
    } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
        let kind = if ft.is_char_device() {
            FileType::CharacterDevice
        } else if ft.is_block_device() {
            FileType::BlockDevice
        } else {
            FileType::Fifo
        };
        rustix::fs::mknodat(CWD, dest, kind, Mode::from_raw_mode(0o600), meta.rdev())?;
    } else {
        // Sockets cannot be copied (nor put in a layer).
        return Ok(());
    }
    copy_meta(src, meta, dest)
}

/// Writes the tree `view` shows into `dest` (an empty directory), keeping owners, modes,
/// xattrs and mtimes. Hardlinks between files of the layers become separate copies, as
/// overlayfs' copy-up makes them: a step that writes to one name of a lower layer's
/// hardlinked file changes only that name, whichever snapshotter runs it.
pub fn materialize(view: &LayeredFs, dest: &Path) -> Result<()> {
    materialize_dir(view, "", dest)
        .with_context(|| format!("copying the base tree into {}", dest.display()))?;
    if let Some(root) = view.lstat("") {
        let _ = fs::set_permissions(dest, fs::Permissions::from_mode(root.meta.mode() & 0o7777));
    }
    Ok(())
}

/// Like [`materialize`], for the directory `rel` of the view only: its entries go into
/// `dest` (an empty directory).
pub fn materialize_subtree(view: &LayeredFs, rel: &str, dest: &Path) -> Result<()> {
    materialize_dir(view, rel, dest)
        .with_context(|| format!("copying {rel} into {}", dest.display()))
}

fn materialize_dir(view: &LayeredFs, rel: &str, dest: &Path) -> io::Result<()> {
    for name in view.list(rel) {
        let r = join(rel, &name);
        let Some(e) = view.lstat(&r) else { continue };
        let d = dest.join(to_path(&name));
        if e.meta.is_dir() {
            fs::create_dir(&d)?;
            materialize_dir(view, &r, &d)?;
            copy_meta(&e.path, &e.meta, &d)?;
        } else {
            copy_entry(&e.path, &e.meta, &d)?;
        }
    }
    Ok(())
}

/// Whether an entry changed between the base (`old`) and the tree (`new`): type, mode,
/// owner, size, mtime, device number, link target or xattrs.
fn changed(old: &Path, om: &Metadata, new: &Path, nm: &Metadata) -> bool {
    if om.file_type() != nm.file_type()
        || om.mode() != nm.mode()
        || om.uid() != nm.uid()
        || om.gid() != nm.gid()
        || om.rdev() != nm.rdev()
        || (!nm.is_dir() && (om.size() != nm.size() || om.mtime() != nm.mtime()))
        || (!nm.is_dir() && om.mtime_nsec() != nm.mtime_nsec())
    {
        return true;
    }
    if nm.file_type().is_symlink() {
        return fs::read_link(old).ok() != fs::read_link(new).ok();
    }
    let attrs = |p: &Path| -> Vec<(std::ffi::OsString, Option<Vec<u8>>)> {
        let mut v: Vec<_> = xattr::list(p)
            .map(|it| {
                it.filter(|n| !is_overlay_xattr(n.as_encoded_bytes()))
                    .map(|n| {
                        let val = xattr::get(p, &n).ok().flatten();
                        (n, val)
                    })
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    attrs(old) != attrs(new)
}

/// What [`diff`] found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DiffStats {
    /// Entries added or changed.
    pub changed: u64,
    /// Entries deleted.
    pub deleted: u64,
}

/// Writes the changes from `base` to `tree` into `out` (an empty directory) as an
/// overlay-style diff: added and changed entries (hardlinked from `tree`, which must be
/// on the same filesystem and is discarded afterwards), deletions as 0/0 character
/// devices, and the directories on the way with their metadata from `tree`.
pub fn diff(base: &LayeredFs, tree: &Path, out: &Path) -> Result<DiffStats> {
    let mut d = Differ {
        base,
        tree,
        out,
        stats: DiffStats::default(),
        links: HashMap::new(),
    };
    d.dir("")
        .with_context(|| "diffing the step's tree".into())?;
    Ok(d.stats)
}

struct Differ<'a> {
    base: &'a LayeredFs,
    tree: &'a Path,
    out: &'a Path,
    stats: DiffStats,
    links: HashMap<(u64, u64), PathBuf>,
}

impl Differ<'_> {
    /// Creates the parents of `rel` in `out`, with the tree's metadata.
    fn parents(&self, rel: &str) -> io::Result<()> {
        let mut cur = String::new();
        let comps: Vec<&str> = rel.split('/').collect();
        for c in &comps[..comps.len() - 1] {
            cur = join(&cur, c);
            let o = self.out.join(to_path(&cur));
            if fs::symlink_metadata(&o).is_err() {
                let t = self.tree.join(to_path(&cur));
                let m = fs::symlink_metadata(&t)?;
                fs::create_dir(&o)?;
                copy_meta(&t, &m, &o)?;
            }
        }
        Ok(())
    }

    fn dir(&mut self, rel: &str) -> io::Result<()> {
        let tdir = if rel.is_empty() {
            self.tree.to_path_buf()
        } else {
            self.tree.join(to_path(rel))
        };
        let mut new_names: Vec<String> = fs::read_dir(&tdir)?
            .map(|e| e.map(|e| encode(&e.file_name()).into_owned()))
            .collect::<io::Result<_>>()?;
        new_names.sort();
        let old_is_dir = self.base.lstat(rel).is_some_and(|e| e.meta.is_dir());
        if old_is_dir {
            for old in self.base.list(rel) {
                if new_names.binary_search(&old).is_err() {
                    let r = join(rel, &old);
                    self.parents(&r)?;
                    rustix::fs::mknodat(
                        CWD,
                        self.out.join(to_path(&r)),
                        FileType::CharacterDevice,
                        Mode::empty(),
                        0,
                    )?;
                    self.stats.deleted += 1;
                }
            }
        }
        for name in new_names {
            let r = join(rel, &name);
            let np = self.tree.join(to_path(&r));
            let nm = fs::symlink_metadata(&np)?;
            let old = if old_is_dir {
                self.base.lstat(&r)
            } else {
                None
            };
            let differs = match &old {
                Some(o) => changed(&o.path, &o.meta, &np, &nm),
                None => true,
            };
            if nm.is_dir() {
                if differs {
                    self.parents(&r)?;
                    let o = self.out.join(to_path(&r));
                    if fs::symlink_metadata(&o).is_err() {
                        fs::create_dir(&o)?;
                    }
                    copy_meta(&np, &nm, &o)?;
                    self.stats.changed += 1;
                }
                self.dir(&r)?;
                // Children may have changed the directory's own mtime in `out`.
                let o = self.out.join(to_path(&r));
                if fs::symlink_metadata(&o).is_ok() {
                    copy_meta(&np, &nm, &o)?;
                }
            } else if differs {
                self.parents(&r)?;
                let o = self.out.join(to_path(&r));
                if nm.file_type().is_socket() {
                    continue;
                }
                let id = (nm.dev(), nm.ino());
                match self.links.get(&id) {
                    Some(first) => fs::hard_link(first, &o)?,
                    None => {
                        fs::hard_link(&np, &o)?;
                        if nm.nlink() > 1 {
                            self.links.insert(id, o.clone());
                        }
                    }
                }
                self.stats.changed += 1;
            }
        }
        Ok(())
    }
}

/// Removes from an upper dir the directories in `candidates` (relative, deepest first)
/// that are empty, not opaque, and the same as in `base` but for times: overlayfs copied
/// them up only because the sandbox created a mount point in them. Lookups never follow
/// a symlink the step planted ([`super::beneath`]).
pub fn prune_copied_up(upper: &Path, candidates: &[PathBuf], base: &LayeredFs) {
    for rel in candidates {
        let Some(at) = super::beneath::At::find(upper, rel) else {
            continue;
        };
        let Ok(st) = at.stat() else { continue };
        if !super::beneath::is_dir(&st) {
            continue;
        }
        let Ok(fd) = at.open_dir() else { continue };
        if super::beneath::is_opaque(&fd) {
            continue;
        }
        let Some(old) = base.lstat(&encode(rel.as_os_str())) else {
            continue;
        };
        if old.meta.is_dir()
            && old.meta.mode() == st.st_mode
            && old.meta.uid() == st.st_uid
            && old.meta.gid() == st.st_gid
        {
            // Fails, as it should, when the directory is not empty.
            let _ = at.remove(true);
        }
    }
}
