//! COPY/ADD/WORKDIR/heredoc file actions, applied into an empty "upper" directory that
//! becomes the step's layer. The base image is only read (through a [`SourceFs`]): new
//! parent directories are created in the upper dir, existing ones are copied up with
//! their metadata, as overlayfs would.

use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use kiln_frontend::dockerignore::PatternMatcher;
use kiln_ops::Chown;

use crate::error::{FsError, IoContext, Result};
use crate::glob;
use crate::name::{for_matching, to_path};
use crate::view::{SourceFs, Stat, join, resolve};

use filetime::FileTime;
use tree::{DiskTree, MemTree, Tree};
pub use tree::{Node, NodeKind};

mod tree;

/// A uid and gid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// Resolves `--chown` names through the base image's `/etc/passwd` and `/etc/group`.
/// A lone numeric user gets the same gid, a lone name gets the user's primary group.
pub fn resolve_chown(chown: &Chown, base: &dyn SourceFs) -> Result<Ids> {
    let read = |file: &str| -> String {
        base.stat(&resolve(base, file, true).unwrap_or_default())
            .and_then(|e| e.read().ok())
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_default()
    };
    let lookup = |db: &str, name: &str, field: usize| -> Option<(u32, Option<u32>)> {
        db.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.first() == Some(&name) && f.len() > field)
                .then(|| (f[field].parse().ok(), f.get(3).and_then(|g| g.parse().ok())))
                .and_then(|(id, g)| id.map(|id| (id, g)))
        })
    };
    let (uid, primary) = match chown.user.parse::<u32>() {
        Ok(uid) => (uid, Some(uid)),
        Err(_) => {
            let passwd = read("etc/passwd");
            lookup(&passwd, &chown.user, 2)
                .ok_or_else(|| FsError::UnknownUser(chown.user.clone()))?
        }
    };
    let gid = match &chown.group {
        None => primary.unwrap_or(uid),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let group = read("etc/group");
                lookup(&group, g, 2)
                    .map(|(gid, _)| gid)
                    .ok_or_else(|| FsError::UnknownGroup(g.clone()))?
            }
        },
    };
    Ok(Ids { uid, gid })
}

/// Applies a `--chmod` value (octal or symbolic) to a mode.
pub fn apply_chmod(spec: &str, mode: u32, is_dir: bool) -> Result<u32> {
    if spec.bytes().all(|b| b.is_ascii_digit()) {
        return u32::from_str_radix(spec, 8).map_err(|_| FsError::InvalidChmod(spec.to_string()));
    }
    let mut m = mode & 0o7777;
    for clause in spec.split(',') {
        let op_at = clause
            .find(['+', '-', '='])
            .ok_or_else(|| FsError::InvalidChmod(spec.to_string()))?;
        let who = &clause[..op_at];
        let op = clause.as_bytes()[op_at];
        let perms = &clause[op_at + 1..];
        let who_mask = if who.is_empty() || who.contains('a') {
            0o7777
        } else {
            let mut w = 0;
            for c in who.chars() {
                w |= match c {
                    'u' => 0o4700,
                    'g' => 0o2070,
                    'o' => 0o1007,
                    _ => return Err(FsError::InvalidChmod(spec.to_string())),
                };
            }
            w
        };
        let mut bits = 0;
        for c in perms.chars() {
            bits |= match c {
                'r' => 0o444,
                'w' => 0o222,
                'x' => 0o111,
                'X' if is_dir || mode & 0o111 != 0 => 0o111,
                'X' => 0,
                's' => 0o6000,
                't' => 0o1000,
                _ => return Err(FsError::InvalidChmod(spec.to_string())),
            };
        }
        let bits = bits & who_mask;
        m = match op {
            b'+' => m | bits,
            b'-' => m & !bits,
            _ => (m & !(who_mask & 0o7777)) | bits,
        };
    }
    Ok(m)
}

/// How copied entries are owned and moded.
#[derive(Debug, Clone, Default)]
pub struct CopyOptions {
    /// `--chown`, resolved.
    pub owner: Option<Ids>,
    /// `--chmod`.
    pub chmod: Option<String>,
    /// `--exclude` patterns (relative to each copied source).
    pub exclude: Vec<String>,
    /// `--parents`.
    pub parents: bool,
}

/// Writes file actions into an upper directory, or into a list of entries in memory
/// ([`Upper::in_memory`]) that the layer writer reads the files' bytes from.
pub struct Upper<'a> {
    /// The tree the actions apply on top of (empty for `--link` and scratch).
    pub base: &'a dyn SourceFs,
    tree: Box<dyn Tree + 'a>,
}

/// What an in-memory [`Upper`] made: entries by view path (see [`crate::name`]).
pub type Entries = std::collections::BTreeMap<String, Node>;

fn lchown(path: &Path, ids: Ids) -> Result<()> {
    std::os::unix::fs::lchown(path, Some(ids.uid), Some(ids.gid))
        .with_context(|| format!("chown {}:{} {}", ids.uid, ids.gid, path.display()))
}

fn copy_xattrs(from: &Path, to: &Path) {
    if let Ok(names) = xattr::list(from) {
        for name in names {
            let n = name.to_string_lossy();
            if n.starts_with("trusted.overlay.") || n.starts_with("user.overlay.") {
                continue;
            }
            if let Ok(Some(v)) = xattr::get(from, &name) {
                let _ = xattr::set(to, &name, &v);
            }
        }
    }
}

impl<'a> Upper<'a> {
    /// An upper directory `dir` (initially empty, it becomes the layer) over `base`.
    pub fn new(dir: &'a Path, base: &'a dyn SourceFs) -> Upper<'a> {
        Upper {
            base,
            tree: Box::new(DiskTree::new(dir)),
        }
    }

    /// An upper kept in memory over `base`: [`Upper::finish_entries`] gives its entries,
    /// whose files are read from their sources when the layer is written. An action that
    /// needs a directory fails with [`FsError::NeedsDisk`].
    pub fn in_memory(base: &'a dyn SourceFs) -> Upper<'a> {
        Upper {
            base,
            tree: Box::new(MemTree::default()),
        }
    }

    fn new_dir(mode: u32, owner: Ids, mtime: Option<FileTime>, xattrs: Option<PathBuf>) -> Node {
        Node {
            kind: NodeKind::Dir,
            mode,
            owner,
            mtime,
            xattrs_from: xattrs,
        }
    }

    /// Creates the directories of `rel` (all of it) in the upper dir: existing ones are
    /// copied up with their metadata, new ones get 0755 and `owner`.
    pub fn ensure_dir(&mut self, rel: &str, owner: Option<Ids>) -> Result<()> {
        let mut cur = String::new();
        for comp in rel.split('/').filter(|c| !c.is_empty()) {
            cur = join(&cur, comp);
            match self.tree.kind(&cur) {
                Some(true) => continue,
                Some(false) => self.tree.remove(&cur)?,
                None => {}
            }
            let node = match self.base.stat(&cur).filter(Stat::is_dir) {
                Some(Stat::Mem(n)) => Self::new_dir(n.mode, n.owner, n.mtime, n.xattrs_from),
                Some(Stat::Disk(e)) => Self::new_dir(
                    e.meta.mode() & 0o7777,
                    Ids {
                        uid: e.meta.uid(),
                        gid: e.meta.gid(),
                    },
                    Some(FileTime::from_last_modification_time(&e.meta)),
                    Some(e.path.clone()),
                ),
                None => Self::new_dir(0o755, owner.unwrap_or(Ids { uid: 0, gid: 0 }), None, None),
            };
            self.tree.put(&cur, node)?;
        }
        Ok(())
    }

    fn parent_of(rel: &str) -> &str {
        rel.rsplit_once('/').map(|(p, _)| p).unwrap_or("")
    }

    /// Whether `rel` is a directory in the upper dir or the base.
    fn is_dir(&self, rel: &str) -> bool {
        self.tree.kind(rel) == Some(true) || self.base.stat(rel).is_some_and(|e| e.is_dir())
    }

    /// Resolves a destination path through the base's symlinks.
    fn resolve_dest(&self, dest: &str) -> Result<String> {
        let rel = dest.trim_start_matches('/');
        let follow = dest.ends_with('/');
        let parent = Self::parent_of(rel.trim_end_matches('/'));
        let name = rel.trim_end_matches('/').rsplit('/').next().unwrap_or("");
        let parent = resolve(self.base, parent, true)?;
        let joined = join(&parent, name);
        if follow {
            resolve(self.base, &joined, true)
        } else {
            Ok(joined)
        }
    }

    /// `COPY`/`ADD` of `src` (a path or wildcard, relative to the source root) to `dest`.
    ///
    /// As in BuildKit, each match is copied on its own: into `dest` when `dest` ends
    /// with `/` or is an existing directory, to the name `dest` otherwise (several files
    /// to a new name leave the last one there). A directory's contents go into `dest`,
    /// which keeps its own metadata when it exists and is created 0755 (owned by
    /// `--chown`, or root) when it does not; the entries inside keep theirs.
    pub fn copy(
        &mut self,
        source: &dyn SourceFs,
        src: &str,
        dest: &str,
        opts: &CopyOptions,
        unpack: bool,
    ) -> Result<()> {
        let matches = expand_source(source, src)?;
        let dest_rel = self.resolve_dest(dest)?;
        let into_dir = dest.ends_with('/') || opts.parents;
        let exclude = PatternMatcher::new(&opts.exclude)?;
        for Source { rel, entry, name } in matches {
            let pivot = parents_path(src, &rel);
            if entry.is_dir() {
                let target = if opts.parents {
                    join(&dest_rel, &pivot)
                } else {
                    dest_rel.clone()
                };
                self.ensure_dir(&target, opts.owner)?;
                self.copy_children(source, &rel, &target, opts, &exclude, "")?;
                continue;
            }
            if unpack && is_archive_entry(&entry)? {
                let Some(dir) = self.tree.disk_dir().map(Path::to_path_buf) else {
                    return Err(FsError::NeedsDisk);
                };
                self.ensure_dir(&dest_rel, opts.owner)?;
                let path = entry.path().unwrap_or(Path::new("")).to_path_buf();
                extract_archive(&path, &dir.join(to_path(&dest_rel)), opts.owner)?;
                continue;
            }
            let target = if opts.parents {
                join(&dest_rel, &pivot)
            } else if into_dir {
                join(&dest_rel, &name)
            } else {
                // An existing directory (through symlinks, as fsutil's os.Stat) takes
                // the file inside it, under the name the source was given by.
                let followed = resolve(self.base, &dest_rel, true)?;
                if self.is_dir(&followed) {
                    join(&followed, &name)
                } else {
                    dest_rel.clone()
                }
            };
            self.ensure_dir(Self::parent_of(&target), opts.owner)?;
            self.copy_entry(source, &entry, &target, opts)?;
        }
        Ok(())
    }

    /// Copies the entries of directory `rel` (recursively) into `target`; `inner` is
    /// `rel` relative to the copied source, for `--exclude`.
    #[allow(clippy::too_many_arguments)]
    fn copy_children(
        &mut self,
        source: &dyn SourceFs,
        rel: &str,
        target: &str,
        opts: &CopyOptions,
        exclude: &PatternMatcher,
        inner: &str,
    ) -> Result<()> {
        for name in source.list(rel) {
            let child_rel = join(rel, &name);
            let Some(child) = source.stat(&child_rel) else {
                continue;
            };
            let child_inner = join(inner, &name);
            if exclude.matches(&for_matching(&child_inner)) {
                continue;
            }
            let child_target = join(target, &name);
            self.copy_entry(source, &child, &child_target, opts)?;
            if child.is_dir() {
                self.copy_children(
                    source,
                    &child_rel,
                    &child_target,
                    opts,
                    exclude,
                    &child_inner,
                )?;
            }
        }
        Ok(())
    }

    /// Copies one entry (not its children) to `target` in the upper dir.
    fn copy_entry(
        &mut self,
        source: &dyn SourceFs,
        entry: &Stat,
        target: &str,
        opts: &CopyOptions,
    ) -> Result<()> {
        let is_dir = entry.is_dir();
        match self.tree.kind(target) {
            Some(true) if is_dir => {}
            Some(_) => self.tree.remove(target)?,
            None => {}
        }
        let node = match entry {
            Stat::Disk(e) => Self::disk_node(e)?,
            Stat::Mem(n) => n.clone(),
        };
        let owner = opts.owner.unwrap_or(if source.keeps_owners() {
            node.owner
        } else {
            Ids { uid: 0, gid: 0 }
        });
        let symlink = matches!(node.kind, NodeKind::Symlink(_));
        let mode = match (&opts.chmod, symlink) {
            (_, true) => 0o777,
            (Some(spec), false) => apply_chmod(spec, node.mode, is_dir)?,
            (None, false) => node.mode,
        };
        self.tree.put(
            target,
            Node {
                mode,
                owner,
                ..node
            },
        )
    }

    /// An entry on disk as the node a copy of it starts from.
    fn disk_node(entry: &crate::view::Entry) -> Result<Node> {
        let meta = &entry.meta;
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            NodeKind::Dir
        } else if ft.is_symlink() {
            NodeKind::Symlink(fs::read_link(&entry.path)?)
        } else if ft.is_file() {
            NodeKind::File {
                from: entry.path.clone(),
                len: meta.len(),
                link: (meta.nlink() > 1).then(|| (meta.dev(), meta.ino())),
            }
        } else {
            return Err(FsError::UnsupportedFileType(entry.path.clone()));
        };
        let symlink = ft.is_symlink();
        Ok(Node {
            kind,
            mode: meta.mode() & 0o7777,
            owner: Ids {
                uid: meta.uid(),
                gid: meta.gid(),
            },
            mtime: Some(FileTime::from_last_modification_time(meta)),
            xattrs_from: (!symlink).then(|| entry.path.clone()),
        })
    }

    /// Makes room for a file at `rel`: an error naming `shown` when a directory is there.
    fn clear_file(&mut self, rel: &str, shown: &str) -> Result<()> {
        match self.tree.kind(rel) {
            Some(true) => Err(FsError::IsADirectory(shown.to_string())),
            Some(false) => self.tree.remove(rel),
            None => Ok(()),
        }
    }

    /// Creates a file with `data` (heredoc COPY).
    pub fn mkfile(&mut self, path: &str, data: &[u8], mode: u32, owner: Option<Ids>) -> Result<()> {
        let rel = self.resolve_dest(path)?;
        self.ensure_dir(Self::parent_of(&rel), owner)?;
        self.clear_file(&rel, path)?;
        self.tree.put(
            &rel,
            Node {
                kind: NodeKind::Data(data.to_vec()),
                mode,
                owner: owner.unwrap_or(Ids { uid: 0, gid: 0 }),
                mtime: None,
                xattrs_from: None,
            },
        )
    }

    /// Writes a downloaded file (`ADD <url>`) to `dest` (into it when it ends with `/`).
    pub fn put_file(
        &mut self,
        from: &Path,
        dest: &str,
        name: &str,
        mode: u32,
        owner: Option<Ids>,
        mtime: Option<std::time::SystemTime>,
    ) -> Result<()> {
        let rel = self.resolve_dest(dest)?;
        let rel = if dest.ends_with('/') || self.is_dir(&rel) {
            join(&rel, name)
        } else {
            rel
        };
        self.ensure_dir(Self::parent_of(&rel), owner)?;
        self.clear_file(&rel, dest)?;
        let len = fs::metadata(from)
            .with_context(|| format!("reading {}", from.display()))?
            .len();
        self.tree.put(
            &rel,
            Node {
                kind: NodeKind::File {
                    from: from.to_path_buf(),
                    len,
                    link: None,
                },
                mode,
                owner: owner.unwrap_or(Ids { uid: 0, gid: 0 }),
                mtime: mtime.map(FileTime::from_system_time),
                xattrs_from: None,
            },
        )
    }

    /// Creates a directory and its parents (WORKDIR); an existing one is left alone.
    pub fn mkdir(&mut self, path: &str, owner: Option<Ids>) -> Result<()> {
        let rel = resolve(self.base, path.trim_start_matches('/'), true)?;
        if self.is_dir(&rel) {
            return Ok(());
        }
        self.ensure_dir(&rel, owner)
    }

    /// Sets directory times last (writing into a directory changes its mtime).
    pub fn finish(mut self) -> Result<()> {
        self.tree.finish()
    }

    /// The entries of an in-memory upper (`None` for one on disk, which [`Upper::finish`]
    /// completes).
    pub fn finish_entries(mut self) -> Result<Option<Entries>> {
        self.tree.finish()?;
        Ok(self.tree.into_entries())
    }
}

/// With `--parents`, the part of the matched path that is kept under the destination:
/// everything after a `/./` pivot in the source, or the whole path.
fn parents_path(src: &str, matched: &str) -> String {
    match src.find("/./") {
        Some(i) => {
            let depth = src[..i]
                .trim_start_matches('/')
                .split('/')
                .filter(|c| !c.is_empty())
                .count();
            matched.split('/').skip(depth).collect::<Vec<_>>().join("/")
        }
        None => matched.to_string(),
    }
}

/// One entry a COPY source selects.
#[derive(Debug)]
pub struct Source {
    /// Its path in the source tree, symlinks resolved.
    pub rel: String,
    /// The entry at `rel`.
    pub entry: Stat,
    /// The name it is copied under: the last component of the path as written or
    /// matched, before a final symlink is followed (`/bin/sh` is copied as `sh` even
    /// when it links to `busybox`).
    pub name: String,
}

/// Expands a COPY source into the matching entries, following symlinks in the path
/// itself. No match is an error naming the source.
pub fn expand_source(source: &dyn SourceFs, src: &str) -> Result<Vec<Source>> {
    let cleaned = clean_rel(src).ok_or_else(|| FsError::OutsideContext(src.to_string()))?;
    let last_name = |p: &str| p.rsplit('/').next().unwrap_or(p).to_string();
    if !glob::has_wildcard(&cleaned) {
        let rel = resolve(source, &cleaned, true)?;
        return match source.stat(&rel) {
            Some(entry) => Ok(vec![Source {
                name: last_name(&cleaned),
                rel,
                entry,
            }]),
            None => Err(FsError::NotFound {
                src: src.to_string(),
                within: source.describe(),
            }),
        };
    }
    let mut current = vec![String::new()];
    for comp in cleaned.split('/').filter(|c| !c.is_empty()) {
        let mut next = Vec::new();
        for dir in &current {
            if glob::has_wildcard(comp) {
                for name in source.list(dir) {
                    if glob::matches(comp, &for_matching(&name)).map_err(FsError::BadPattern)? {
                        next.push(join(dir, &name));
                    }
                }
            } else {
                let unescaped: String = comp.replace('\\', "");
                let p = join(dir, &unescaped);
                if source.stat(&p).is_some() {
                    next.push(p);
                }
            }
        }
        current = next;
    }
    let out: Vec<Source> = current
        .into_iter()
        .filter_map(|matched| {
            let rel = resolve(source, &matched, true).ok()?;
            let entry = source.stat(&rel)?;
            Some(Source {
                name: last_name(&matched),
                rel,
                entry,
            })
        })
        .collect();
    if out.is_empty() {
        return Err(FsError::NoMatch {
            src: src.to_string(),
            within: source.describe(),
        });
    }
    Ok(out)
}

/// Cleans a source path relative to its root; `None` when it climbs out.
pub fn clean_rel(src: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in src.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

/// Whether a source entry is a local archive ADD extracts.
fn is_archive_entry(entry: &Stat) -> Result<bool> {
    match entry {
        Stat::Disk(e) => is_archive(&e.path),
        Stat::Mem(Node {
            kind: NodeKind::File { from, .. },
            ..
        }) => is_archive(from),
        Stat::Mem(_) => Ok(false),
    }
}

/// Whether a local file is an archive ADD extracts (tar, gzip, bzip2, xz, zstd).
pub fn is_archive(path: &Path) -> Result<bool> {
    let mut head = [0u8; 262];
    let mut f = fs::File::open(path)?;
    let mut n = 0;
    while n < head.len() {
        let r = f.read(&mut head[n..])?;
        if r == 0 {
            break;
        }
        n += r;
    }
    let h = &head[..n];
    Ok(h.starts_with(&[0x1f, 0x8b])
        || h.starts_with(b"BZh")
        || h.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0])
        || h.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
        || (n >= 262 && &h[257..262] == b"ustar"))
}

/// Extracts a local archive into `dest` (ADD), refusing paths that escape it.
fn extract_archive(path: &Path, dest: &Path, owner: Option<Ids>) -> Result<()> {
    let f = fs::File::open(path)?;
    let mut head = [0u8; 6];
    let n = fs::File::open(path)?.read(&mut head)?;
    let head = &head[..n];
    let reader: Box<dyn Read> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(f))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::new(f)?)
    } else if head.starts_with(b"BZh") {
        Box::new(bzip2::read::MultiBzDecoder::new(f))
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Box::new(xz2_like::decoder(f)?)
    } else {
        Box::new(f)
    };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(owner.is_none());
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    for entry in archive.entries()? {
        let mut entry = entry?;
        // `unpack_in` refuses absolute paths and `..` that escape `dest`.
        let written = entry
            .unpack_in(dest)
            .with_context(|| format!("extracting {}", path.display()))?;
        if !written {
            return Err(FsError::ArchiveEscape(path.to_path_buf()));
        }
        if let Some(ids) = owner {
            let p = dest.join(entry.path()?);
            lchown(&p, ids)?;
        }
    }
    Ok(())
}

/// xz decoding through lzma-rs (pure Rust), buffered: ADD of `.tar.xz` is rare and small.
mod xz2_like {
    use std::io::{Cursor, Read};

    pub fn decoder(mut r: impl Read) -> std::io::Result<Cursor<Vec<u8>>> {
        let mut input = std::io::BufReader::new(&mut r);
        let mut out = Vec::new();
        lzma_rs::xz_decompress(&mut input, &mut out).map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("xz: {e}"))
        })?;
        Ok(Cursor::new(out))
    }
}

#[cfg(test)]
mod tests;
