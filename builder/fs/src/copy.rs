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
    /// The last hardlink key given to archive members (see [`ARCHIVE_LINK_DEV`]).
    next_link: u64,
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
            next_link: 0,
        }
    }

    /// An upper kept in memory over `base`: [`Upper::finish_entries`] gives its entries,
    /// whose files are read from their sources when the layer is written (an `ADD`
    /// archive's members from the archive). An action that needs a directory fails with
    /// [`FsError::NeedsDisk`] (see `extract_in_memory`).
    pub fn in_memory(base: &'a dyn SourceFs) -> Upper<'a> {
        Upper {
            base,
            tree: Box::new(MemTree::default()),
            next_link: 0,
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
                self.ensure_dir(&dest_rel, opts.owner)?;
                let path = entry.path().unwrap_or(Path::new("")).to_path_buf();
                match self.tree.disk_dir().map(Path::to_path_buf) {
                    Some(dir) => extract_archive(&path, &dir.join(to_path(&dest_rel)), opts.owner)?,
                    None => self.extract_in_memory(&path, &dest_rel, opts.owner)?,
                }
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

/// The decompressed tar stream of a local archive (tar, gzip, bzip2, xz, zstd), read
/// from `offset` on (a plain tar seeks there, a compressed one is decoded up to it).
pub fn open_archive_at(path: &Path, offset: u64) -> std::io::Result<Box<dyn Read + Send>> {
    use std::io::{Seek, SeekFrom};
    let mut f = fs::File::open(path)?;
    let mut head = [0u8; 6];
    let n = f.read(&mut head)?;
    f.seek(SeekFrom::Start(0))?;
    let head = &head[..n];
    let mut reader: Box<dyn Read + Send> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(
            f,
        )))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::new(f)?)
    } else if head.starts_with(b"BZh") {
        Box::new(bzip2::read::MultiBzDecoder::new(std::io::BufReader::new(f)))
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Box::new(xz2_like::decoder(f)?)
    } else {
        f.seek(SeekFrom::Start(offset))?;
        return Ok(Box::new(f));
    };
    let skipped = std::io::copy(&mut (&mut reader).take(offset), &mut std::io::sink())?;
    if skipped != offset {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(reader)
}

/// The bytes of an archive member kept as [`NodeKind::Member`]: `len` bytes at `offset`
/// of the archive's decompressed tar stream.
pub fn read_member(archive: &Path, offset: u64, len: u64) -> std::io::Result<impl Read> {
    Ok(open_archive_at(archive, offset)?.take(len))
}

/// The device of the hardlink keys of archive members kept in memory: no device has
/// it, so they never meet the `(dev, ino)` of a copied file.
pub const ARCHIVE_LINK_DEV: u64 = u64::MAX;

/// Members up to this size are read into memory while an archive's headers are read
/// (their bytes are then at hand when the layer is written in path order, whatever
/// the archive's order), as long as the archive's total stays under
/// [`INLINE_BUDGET`]; larger ones are read from the archive again when the layer is.
const INLINE_MAX: u64 = 256 << 10;
/// See [`INLINE_MAX`].
const INLINE_BUDGET: u64 = 32 << 20;

/// A member's path relative to the destination, as the staged extraction (the `tar`
/// crate's `unpack_in`) places it: leading `/` and `.` components dropped, `None` for
/// the destination itself; a `..` component is refused, naming the member.
fn member_rel(name: &Path, archive: &Path) -> Result<Option<String>> {
    use std::path::Component;
    let mut parts = Vec::new();
    for c in name.components() {
        match c {
            Component::Prefix(_) | Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                return Err(FsError::ArchiveEscape {
                    member: name.display().to_string(),
                    archive: archive.to_path_buf(),
                });
            }
            Component::Normal(p) => parts.push(crate::name::encode(p).into_owned()),
        }
    }
    Ok((!parts.is_empty()).then(|| parts.join("/")))
}

/// A hardlink member's target relative to the destination, as the staged extraction
/// resolves it (relative to the destination, `..` resolved): an absolute target or one
/// that climbs out is refused, naming the member.
fn link_target_rel(target: &Path, member: &Path, archive: &Path) -> Result<String> {
    use std::path::Component;
    let escape = || FsError::ArchiveEscape {
        member: format!("{} (a hardlink to {})", member.display(), target.display()),
        archive: archive.to_path_buf(),
    };
    let mut parts: Vec<String> = Vec::new();
    for c in target.components() {
        match c {
            Component::Prefix(_) | Component::RootDir => return Err(escape()),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop().ok_or_else(escape)?;
            }
            Component::Normal(p) => parts.push(crate::name::encode(p).into_owned()),
        }
    }
    Ok(parts.join("/"))
}

/// The mode a regular file keeps after `chown` (what the staged extraction's `lchown`
/// does to it): the kernel drops setuid, and setgid when the group may execute.
fn mode_after_chown(mode: u32) -> u32 {
    let mut m = mode & !0o4000;
    if m & 0o2010 == 0o2010 {
        m &= !0o2000;
    }
    m
}

/// A member's mtime as the staged extraction sets it (0 becomes 1, as the `tar` crate
/// does).
fn member_mtime(h: &tar::Header) -> Option<FileTime> {
    h.mtime()
        .ok()
        .map(|t| FileTime::from_unix_time(t.max(1) as i64, 0))
}

impl Upper<'_> {
    /// Extracts a local archive into `dest` of an in-memory upper, as
    /// [`extract_archive`] extracts it into a directory: the members become entries
    /// (small ones with their bytes, the others as [`NodeKind::Member`], read from the
    /// archive when the layer is written). What only a directory gives exactly (a
    /// member under a symlink, a file over a directory, a hardlink to a file the
    /// archive did not make, sparse files) fails with [`FsError::NeedsDisk`].
    fn extract_in_memory(&mut self, path: &Path, dest: &str, owner: Option<Ids>) -> Result<()> {
        let ctx = || format!("extracting {}", path.display());
        let mut archive = tar::Archive::new(open_archive_at(path, 0).with_context(ctx)?);
        // The paths this archive made regular files at, and their data offsets.
        let mut made: std::collections::HashMap<String, (u64, u64)> = Default::default();
        let mut inline = 0u64;
        for entry in archive.entries().with_context(ctx)? {
            let mut entry = entry.with_context(ctx)?;
            let kind = entry.header().entry_type();
            if kind.is_pax_global_extensions()
                || kind.is_pax_local_extensions()
                || kind.is_gnu_longname()
                || kind.is_gnu_longlink()
            {
                continue;
            }
            let name = entry.path().with_context(ctx)?.into_owned();
            let Some(inner) = member_rel(&name, path)? else {
                // The destination itself: the staged extraction only chowns it.
                if let (Some(ids), false) = (owner, dest.is_empty()) {
                    if let Some(mut node) = self.tree.node(dest).cloned() {
                        node.owner = ids;
                        self.tree.put(dest, node)?;
                    }
                }
                continue;
            };
            let rel = join(dest, &inner);
            self.member_parents(dest, &inner)?;
            let h = entry.header();
            // A mode that does not parse is left to the kernel by the staged extraction.
            let mode = h.mode().map_err(|_| FsError::NeedsDisk)? & 0o7777;
            let ids = match owner {
                Some(ids) => ids,
                None => Ids {
                    uid: u32::try_from(h.uid().with_context(ctx)?).unwrap_or(u32::MAX),
                    gid: u32::try_from(h.gid().with_context(ctx)?).unwrap_or(u32::MAX),
                },
            };
            let existing = self.tree.node(&rel).map(|n| n.kind.clone());
            let is_dir = matches!(existing, Some(NodeKind::Dir));
            if kind.is_dir() {
                let node = match self.tree.node(&rel) {
                    Some(n) if n.kind == NodeKind::Dir => Node {
                        mode,
                        owner: ids,
                        ..n.clone()
                    },
                    Some(_) => return Err(FsError::NeedsDisk),
                    // The staged extraction leaves a new directory's time to the
                    // kernel: the time its last entry was made.
                    None => Self::new_dir(mode, ids, None, None),
                };
                self.tree.put(&rel, node)?;
                made.remove(&rel);
                continue;
            }
            if is_dir || kind == tar::EntryType::GNUSparse {
                return Err(FsError::NeedsDisk);
            }
            let mtime = member_mtime(h);
            if kind.is_symlink() {
                let target = entry
                    .link_name()
                    .with_context(ctx)?
                    .ok_or(FsError::NeedsDisk)?
                    .into_owned();
                if existing.is_some() {
                    self.tree.remove(&rel)?;
                }
                self.tree.put(
                    &rel,
                    Node {
                        kind: NodeKind::Symlink(target),
                        mode: 0o777,
                        owner: ids,
                        mtime,
                        xattrs_from: None,
                    },
                )?;
                made.remove(&rel);
                continue;
            }
            if kind.is_hard_link() {
                let target = entry
                    .link_name()
                    .with_context(ctx)?
                    .ok_or(FsError::NeedsDisk)?
                    .into_owned();
                let to = join(dest, &link_target_rel(&target, &name, path)?);
                // The staged extraction refuses to link over an existing path and
                // follows symlinks in the target's path: both are left to it.
                let Some(&(offset, len)) = made.get(&to) else {
                    return Err(FsError::NeedsDisk);
                };
                if existing.is_some() {
                    return Err(FsError::NeedsDisk);
                }
                let mut first = self.tree.node(&to).cloned().ok_or(FsError::NeedsDisk)?;
                let key = match first.kind.link() {
                    Some(key) => key,
                    None => {
                        self.next_link += 1;
                        let key = (ARCHIVE_LINK_DEV, self.next_link);
                        first.kind = NodeKind::Member {
                            archive: path.to_path_buf(),
                            offset,
                            len,
                            link: Some(key),
                        };
                        self.tree.remove(&to)?;
                        self.tree.put(&to, first.clone())?;
                        key
                    }
                };
                debug_assert_eq!(first.kind.link(), Some(key));
                self.tree.put(&rel, first)?;
                made.insert(rel, (offset, len));
                continue;
            }
            // Anything else is written as a regular file, as the `tar` crate does.
            let offset = entry.raw_file_position();
            let len = entry.size();
            let kind = if len <= INLINE_MAX && inline + len <= INLINE_BUDGET {
                inline += len;
                let mut data = Vec::with_capacity(len as usize);
                entry.read_to_end(&mut data).with_context(ctx)?;
                NodeKind::Data(data)
            } else {
                NodeKind::Member {
                    archive: path.to_path_buf(),
                    offset,
                    len,
                    link: None,
                }
            };
            if existing.is_some() {
                self.tree.remove(&rel)?;
            }
            self.tree.put(
                &rel,
                Node {
                    kind,
                    mode: if owner.is_some() {
                        mode_after_chown(mode)
                    } else {
                        mode
                    },
                    owner: ids,
                    mtime,
                    xattrs_from: None,
                },
            )?;
            made.insert(rel, (offset, len));
        }
        Ok(())
    }

    /// Makes the parents of member `inner` under `dest` as the staged extraction does:
    /// missing ones are new root-owned 0755 directories (not chowned, not copied up).
    fn member_parents(&mut self, dest: &str, inner: &str) -> Result<()> {
        let mut cur = dest.to_string();
        let parts: Vec<&str> = inner.split('/').collect();
        for comp in &parts[..parts.len() - 1] {
            cur = join(&cur, comp);
            match self.tree.node(&cur) {
                Some(n) if n.kind == NodeKind::Dir => {}
                Some(_) => return Err(FsError::NeedsDisk),
                None => self.tree.put(
                    &cur,
                    Self::new_dir(0o755, Ids { uid: 0, gid: 0 }, None, None),
                )?,
            }
        }
        Ok(())
    }
}

/// Extracts a local archive into `dest` (ADD), refusing paths that escape it.
fn extract_archive(path: &Path, dest: &Path, owner: Option<Ids>) -> Result<()> {
    let ctx = || format!("extracting {}", path.display());
    let mut archive = tar::Archive::new(open_archive_at(path, 0).with_context(ctx)?);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(owner.is_none());
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    for entry in archive.entries().with_context(ctx)? {
        let mut entry = entry.with_context(ctx)?;
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            continue;
        }
        let name = entry.path().with_context(ctx)?.into_owned();
        // `unpack_in` skips a member with `..` in its path: it is refused here first.
        let inner = member_rel(&name, path)?;
        if kind.is_hard_link() {
            if let Some(target) = entry.link_name().with_context(ctx)? {
                link_target_rel(&target, &name, path)?;
            }
        }
        let written = entry.unpack_in(dest).with_context(ctx)?;
        if !written {
            return Err(FsError::ArchiveEscape {
                member: name.display().to_string(),
                archive: path.to_path_buf(),
            });
        }
        if let Some(ids) = owner {
            let p = match &inner {
                Some(inner) => dest.join(to_path(inner)),
                None => dest.to_path_buf(),
            };
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
