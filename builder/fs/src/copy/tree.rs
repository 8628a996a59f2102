//! Where file actions put their result: a directory on disk ([`DiskTree`], which becomes
//! a snapshot) or a list of entries kept in memory ([`MemTree`]) whose file data is read
//! from the sources only when the layer is written.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use filetime::FileTime;

use super::{Ids, copy_xattrs, lchown};
use crate::error::{IoContext, Result};
use crate::name::to_path;

/// What an entry of the result is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    /// A directory.
    Dir,
    /// A regular file whose bytes are those of `from` (`len` of them).
    File {
        /// The source file.
        from: PathBuf,
        /// Its length when it was listed.
        len: u64,
        /// The source's `(dev, ino)` when it has several links: the paths of one
        /// inode copied by the same op are hardlinks of each other.
        link: Option<(u64, u64)>,
    },
    /// A regular file with these bytes (heredocs, small members of an `ADD` archive).
    Data(Vec<u8>),
    /// A regular file whose bytes are a member of a local archive (`ADD`): `len` bytes
    /// at `offset` in the archive's tar stream (after decompression), read through
    /// [`super::read_member`] when they are needed.
    Member {
        /// The archive file.
        archive: PathBuf,
        /// Where the member's data starts in the decompressed tar stream.
        offset: u64,
        /// Its length.
        len: u64,
        /// The paths with the same key are hardlinks of each other (a key of
        /// [`super::ARCHIVE_LINK_DEV`], which no device has).
        link: Option<(u64, u64)>,
    },
    /// A symlink to this target.
    Symlink(PathBuf),
}

impl NodeKind {
    /// The inode key of a regular file whose paths are hardlinks of each other.
    pub fn link(&self) -> Option<(u64, u64)> {
        match self {
            NodeKind::File { link, .. } | NodeKind::Member { link, .. } => *link,
            _ => None,
        }
    }
}

/// One entry of a file op's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// What it is.
    pub kind: NodeKind,
    /// Permission bits (with setuid, setgid, sticky); ignored for symlinks.
    pub mode: u32,
    /// Owner.
    pub owner: Ids,
    /// Modification time; `None`: the time it is made.
    pub mtime: Option<FileTime>,
    /// A file whose extended attributes it gets (overlayfs' own left out).
    pub xattrs_from: Option<PathBuf>,
}

/// The result of a file op as it is built.
pub(super) trait Tree {
    /// Whether `rel` exists and is a directory (`Some(true)`), or something else.
    fn kind(&self, rel: &str) -> Option<bool>;
    /// Removes `rel` (with its subtree).
    fn remove(&mut self, rel: &str) -> Result<()>;
    /// Puts `node` at `rel` (whose parent exists). A directory put on a directory keeps
    /// its entries and takes the new metadata.
    fn put(&mut self, rel: &str, node: Node) -> Result<()>;
    /// The directory on disk, when the tree is one (archives are extracted there).
    fn disk_dir(&self) -> Option<&Path>;
    /// The node at `rel`, for a tree kept in memory (`None` on disk).
    fn node(&self, rel: &str) -> Option<&Node>;
    /// Called once every action has been applied.
    fn finish(&mut self) -> Result<()>;
    /// The entries, for a tree kept in memory.
    fn into_entries(self: Box<Self>) -> Option<BTreeMap<String, Node>>;
}

/// A tree written to a directory on disk.
pub(super) struct DiskTree<'a> {
    pub(super) dir: &'a Path,
    links: HashMap<(u64, u64), PathBuf>,
    dir_times: Vec<(PathBuf, FileTime)>,
}

impl<'a> DiskTree<'a> {
    pub(super) fn new(dir: &'a Path) -> Self {
        DiskTree {
            dir,
            links: HashMap::new(),
            dir_times: Vec::new(),
        }
    }
}

impl Tree for DiskTree<'_> {
    fn kind(&self, rel: &str) -> Option<bool> {
        fs::symlink_metadata(self.dir.join(to_path(rel)))
            .ok()
            .map(|m| m.is_dir())
    }

    fn remove(&mut self, rel: &str) -> Result<()> {
        let up = self.dir.join(to_path(rel));
        if fs::symlink_metadata(&up)?.is_dir() {
            fs::remove_dir_all(&up)?;
        } else {
            fs::remove_file(&up)?;
        }
        Ok(())
    }

    fn put(&mut self, rel: &str, node: Node) -> Result<()> {
        let up = self.dir.join(to_path(rel));
        match &node.kind {
            NodeKind::Dir => {
                if !up.is_dir() {
                    fs::create_dir(&up).with_context(|| format!("mkdir {}", up.display()))?;
                }
            }
            NodeKind::Symlink(target) => std::os::unix::fs::symlink(target, &up)
                .with_context(|| format!("symlink {}", up.display()))?,
            NodeKind::Data(data) => {
                fs::write(&up, data).with_context(|| format!("writing {}", up.display()))?
            }
            NodeKind::File { from, link, .. } => {
                if let Some(key) = link {
                    if let Some(first) = self.links.get(key) {
                        fs::hard_link(first, &up)?;
                        return Ok(());
                    }
                    self.links.insert(*key, up.clone());
                }
                let mut src =
                    fs::File::open(from).with_context(|| format!("reading {}", from.display()))?;
                let mut to =
                    fs::File::create(&up).with_context(|| format!("writing {}", up.display()))?;
                std::io::copy(&mut src, &mut to)?;
            }
            NodeKind::Member {
                archive,
                offset,
                len,
                link,
            } => {
                if let Some(key) = link {
                    if let Some(first) = self.links.get(key) {
                        fs::hard_link(first, &up)?;
                        return Ok(());
                    }
                    self.links.insert(*key, up.clone());
                }
                let mut src = super::read_member(archive, *offset, *len)
                    .with_context(|| format!("reading {}", archive.display()))?;
                let mut to =
                    fs::File::create(&up).with_context(|| format!("writing {}", up.display()))?;
                let n = std::io::copy(&mut src, &mut to)
                    .with_context(|| format!("reading {}", archive.display()))?;
                if n != *len {
                    return Err(crate::FsError::Io {
                        what: format!("reading {}", archive.display()),
                        source: std::io::ErrorKind::UnexpectedEof.into(),
                    });
                }
            }
        }
        // Owner first: a chown clears setuid and setgid bits the mode then sets.
        lchown(&up, node.owner)?;
        if !matches!(node.kind, NodeKind::Symlink(_)) {
            fs::set_permissions(&up, fs::Permissions::from_mode(node.mode))?;
        }
        if let Some(from) = &node.xattrs_from {
            copy_xattrs(from, &up);
        }
        if let Some(t) = node.mtime {
            if node.kind == NodeKind::Dir {
                // Set last: writing into a directory changes its mtime.
                self.dir_times.push((up, t));
            } else {
                filetime::set_symlink_file_times(&up, t, t)
                    .with_context(|| format!("setting times of {}", up.display()))?;
            }
        }
        Ok(())
    }

    fn disk_dir(&self) -> Option<&Path> {
        Some(self.dir)
    }

    fn node(&self, _: &str) -> Option<&Node> {
        None
    }

    fn finish(&mut self) -> Result<()> {
        self.dir_times.sort_by(|a, b| b.0.cmp(&a.0));
        for (path, t) in self.dir_times.drain(..) {
            filetime::set_symlink_file_times(&path, t, t)?;
        }
        Ok(())
    }

    fn into_entries(self: Box<Self>) -> Option<BTreeMap<String, Node>> {
        None
    }
}

/// A tree kept as a list of entries by path: nothing is written until the layer is.
#[derive(Default)]
pub(super) struct MemTree {
    nodes: BTreeMap<String, Node>,
    /// The first path each multiply-linked source inode was copied to.
    links: HashMap<(u64, u64), String>,
}

impl Tree for MemTree {
    fn kind(&self, rel: &str) -> Option<bool> {
        self.nodes.get(rel).map(|n| n.kind == NodeKind::Dir)
    }

    fn remove(&mut self, rel: &str) -> Result<()> {
        if self
            .nodes
            .remove(rel)
            .is_some_and(|n| n.kind == NodeKind::Dir)
        {
            // The subtree: every key from `rel/` up to (not including) `rel0`.
            let below = self
                .nodes
                .range(format!("{rel}/")..format!("{rel}0"))
                .map(|(k, _)| k.clone())
                .collect::<Vec<_>>();
            for k in below {
                self.nodes.remove(&k);
            }
        }
        Ok(())
    }

    fn put(&mut self, rel: &str, mut node: Node) -> Result<()> {
        if node.mtime.is_none() {
            node.mtime = Some(FileTime::now());
        }
        if let Some(key) = node.kind.link() {
            let first = self.links.get(&key).and_then(|p| self.nodes.get(p));
            match first {
                // A hardlink shares the first path's inode, metadata included (as
                // `DiskTree` links it and leaves it).
                Some(first) if first.kind.link() == Some(key) => node = first.clone(),
                _ => {
                    self.links.insert(key, rel.to_owned());
                }
            }
        }
        self.nodes.insert(rel.to_owned(), node);
        Ok(())
    }

    fn disk_dir(&self) -> Option<&Path> {
        None
    }

    fn node(&self, rel: &str) -> Option<&Node> {
        self.nodes.get(rel)
    }

    fn finish(&mut self) -> Result<()> {
        Ok(())
    }

    fn into_entries(self: Box<Self>) -> Option<BTreeMap<String, Node>> {
        Some(self.nodes)
    }
}
