//! COPY/ADD/WORKDIR/heredoc file actions, applied into an empty "upper" directory that
//! becomes the step's layer. The base image is only read (through a [`SourceFs`]): new
//! parent directories are created in the upper dir, existing ones are copied up with
//! their metadata, as overlayfs would.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use kiln_frontend::dockerignore::PatternMatcher;
use kiln_ops::Chown;

use crate::error::{FsError, IoContext, Result};
use crate::glob;
use crate::name::{for_matching, to_path};
use crate::view::{Entry, SourceFs, join, resolve};

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
        base.lstat(&resolve(base, file, true).unwrap_or_default())
            .and_then(|e| fs::read_to_string(e.path).ok())
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

/// Writes file actions into an upper directory.
pub struct Upper<'a> {
    /// The (initially empty) directory that becomes the layer.
    pub dir: &'a Path,
    /// The tree the actions apply on top of (empty for `--link` and scratch).
    pub base: &'a dyn SourceFs,
    links: HashMap<(u64, u64), PathBuf>,
    dir_times: Vec<(PathBuf, filetime::FileTime)>,
}

fn set_times(path: &Path, meta: &fs::Metadata) -> Result<()> {
    let t = filetime::FileTime::from_last_modification_time(meta);
    filetime::set_symlink_file_times(path, t, t)
        .with_context(|| format!("setting times of {}", path.display()))
}

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
    /// An upper directory over `base`.
    pub fn new(dir: &'a Path, base: &'a dyn SourceFs) -> Upper<'a> {
        Upper {
            dir,
            base,
            links: HashMap::new(),
            dir_times: Vec::new(),
        }
    }

    /// Creates the directories of `rel` (all of it) in the upper dir: existing ones are
    /// copied up with their metadata, new ones get 0755 and `owner`.
    pub fn ensure_dir(&mut self, rel: &str, owner: Option<Ids>) -> Result<()> {
        let mut cur = String::new();
        for comp in rel.split('/').filter(|c| !c.is_empty()) {
            cur = join(&cur, comp);
            let up = self.dir.join(to_path(&cur));
            match fs::symlink_metadata(&up) {
                Ok(m) if m.is_dir() => continue,
                Ok(_) => fs::remove_file(&up)?,
                Err(_) => {}
            }
            fs::create_dir(&up).with_context(|| format!("mkdir {}", up.display()))?;
            match self.base.lstat(&cur).filter(|e| e.meta.is_dir()) {
                Some(e) => {
                    fs::set_permissions(&up, fs::Permissions::from_mode(e.meta.mode() & 0o7777))?;
                    lchown(
                        &up,
                        Ids {
                            uid: e.meta.uid(),
                            gid: e.meta.gid(),
                        },
                    )?;
                    copy_xattrs(&e.path, &up);
                    self.dir_times
                        .push((up, filetime::FileTime::from_last_modification_time(&e.meta)));
                }
                None => {
                    fs::set_permissions(&up, fs::Permissions::from_mode(0o755))?;
                    lchown(&up, owner.unwrap_or(Ids { uid: 0, gid: 0 }))?;
                }
            }
        }
        Ok(())
    }

    fn parent_of(rel: &str) -> &str {
        rel.rsplit_once('/').map(|(p, _)| p).unwrap_or("")
    }

    /// Whether `rel` is a directory in the upper dir or the base.
    fn is_dir(&self, rel: &str) -> bool {
        fs::symlink_metadata(self.dir.join(to_path(rel)))
            .map(|m| m.is_dir())
            .unwrap_or(false)
            || self.base.lstat(rel).is_some_and(|e| e.meta.is_dir())
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
            if entry.meta.is_dir() {
                let target = if opts.parents {
                    join(&dest_rel, &pivot)
                } else {
                    dest_rel.clone()
                };
                self.ensure_dir(&target, opts.owner)?;
                self.copy_children(source, &rel, &target, opts, &exclude, "")?;
                continue;
            }
            if unpack && is_archive(&entry.path)? {
                self.ensure_dir(&dest_rel, opts.owner)?;
                extract_archive(&entry.path, &self.dir.join(to_path(&dest_rel)), opts.owner)?;
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
            let Some(child) = source.lstat(&child_rel) else {
                continue;
            };
            let child_inner = join(inner, &name);
            if exclude.matches(&for_matching(&child_inner)) {
                continue;
            }
            let child_target = join(target, &name);
            self.copy_entry(source, &child, &child_target, opts)?;
            if child.meta.is_dir() {
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
        entry: &Entry,
        target: &str,
        opts: &CopyOptions,
    ) -> Result<()> {
        let up = self.dir.join(to_path(target));
        let meta = &entry.meta;
        let ft = meta.file_type();
        if let Ok(old) = fs::symlink_metadata(&up) {
            if !(old.is_dir() && ft.is_dir()) {
                if old.is_dir() {
                    fs::remove_dir_all(&up)?;
                } else {
                    fs::remove_file(&up)?;
                }
            }
        }
        let owner = opts.owner.unwrap_or(if source.keeps_owners() {
            Ids {
                uid: meta.uid(),
                gid: meta.gid(),
            }
        } else {
            Ids { uid: 0, gid: 0 }
        });
        if ft.is_dir() {
            if !up.is_dir() {
                fs::create_dir(&up).with_context(|| format!("mkdir {}", up.display()))?;
            }
        } else if ft.is_symlink() {
            let target = fs::read_link(&entry.path)?;
            std::os::unix::fs::symlink(&target, &up)
                .with_context(|| format!("symlink {}", up.display()))?;
        } else if ft.is_file() {
            let key = (meta.dev(), meta.ino());
            if meta.nlink() > 1 {
                if let Some(first) = self.links.get(&key) {
                    fs::hard_link(first, &up)?;
                    return Ok(());
                }
                self.links.insert(key, up.clone());
            }
            let mut from = fs::File::open(&entry.path)
                .with_context(|| format!("reading {}", entry.path.display()))?;
            let mut to =
                fs::File::create(&up).with_context(|| format!("writing {}", up.display()))?;
            std::io::copy(&mut from, &mut to)?;
        } else {
            return Err(FsError::UnsupportedFileType(entry.path.clone()));
        }
        lchown(&up, owner)?;
        if !ft.is_symlink() {
            let mode = match &opts.chmod {
                Some(spec) => apply_chmod(spec, meta.mode(), ft.is_dir())?,
                None => meta.mode() & 0o7777,
            };
            fs::set_permissions(&up, fs::Permissions::from_mode(mode))?;
            copy_xattrs(&entry.path, &up);
        }
        if ft.is_dir() {
            self.dir_times
                .push((up, filetime::FileTime::from_last_modification_time(meta)));
        } else {
            set_times(&up, meta)?;
        }
        Ok(())
    }

    /// Creates a file with `data` (heredoc COPY).
    pub fn mkfile(&mut self, path: &str, data: &[u8], mode: u32, owner: Option<Ids>) -> Result<()> {
        let rel = self.resolve_dest(path)?;
        self.ensure_dir(Self::parent_of(&rel), owner)?;
        let up = self.dir.join(to_path(&rel));
        if let Ok(m) = fs::symlink_metadata(&up) {
            if m.is_dir() {
                return Err(FsError::IsADirectory(path.to_string()));
            }
            fs::remove_file(&up)?;
        }
        fs::write(&up, data)?;
        fs::set_permissions(&up, fs::Permissions::from_mode(mode))?;
        lchown(&up, owner.unwrap_or(Ids { uid: 0, gid: 0 }))
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
        let up = self.dir.join(to_path(&rel));
        if let Ok(m) = fs::symlink_metadata(&up) {
            if m.is_dir() {
                return Err(FsError::IsADirectory(dest.to_string()));
            }
            fs::remove_file(&up)?;
        }
        fs::copy(from, &up).with_context(|| format!("writing {}", up.display()))?;
        fs::set_permissions(&up, fs::Permissions::from_mode(mode))?;
        lchown(&up, owner.unwrap_or(Ids { uid: 0, gid: 0 }))?;
        if let Some(t) = mtime {
            let t = filetime::FileTime::from_system_time(t);
            filetime::set_file_times(&up, t, t)?;
        }
        Ok(())
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
        self.dir_times.sort_by(|a, b| b.0.cmp(&a.0));
        for (path, t) in self.dir_times.drain(..) {
            filetime::set_symlink_file_times(&path, t, t)?;
        }
        Ok(())
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
    pub entry: Entry,
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
        return match source.lstat(&rel) {
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
                if source.lstat(&p).is_some() {
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
            let entry = source.lstat(&rel)?;
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
