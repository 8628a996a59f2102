//! Read-only views of file trees that COPY reads from: the build context (filtered by
//! `.dockerignore`) and a stack of unpacked layers merged the way overlayfs merges them
//! (whiteouts and opaque directories in overlay or OCI form).

use std::collections::{BTreeMap, HashMap};
use std::fs::Metadata;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_frontend::dockerignore::PatternMatcher;

use crate::copy::{Entries, Node, NodeKind};
use crate::error::{FsError, IoContext, Result};
use crate::name::{encode, for_matching, to_path};

/// An entry found in a view: where its bytes are on disk and its metadata.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The real path on disk.
    pub path: PathBuf,
    /// `symlink_metadata` of that path.
    pub meta: Metadata,
}

/// An entry as a file op sees it: one on disk, or one of a layer this build wrote from
/// its sources and kept in memory (see [`LayeredFs::push_entries`]), whose attributes
/// are the node's (after `--chown`/`--chmod`), not those of the file its bytes are in.
#[derive(Debug, Clone)]
pub enum Stat {
    /// An entry on disk.
    Disk(Entry),
    /// An entry of an in-memory layer.
    Mem(Node),
}

impl Stat {
    /// Whether it is a directory.
    pub fn is_dir(&self) -> bool {
        match self {
            Stat::Disk(e) => e.meta.is_dir(),
            Stat::Mem(n) => n.kind == NodeKind::Dir,
        }
    }

    /// Whether it is a symlink.
    pub fn is_symlink(&self) -> bool {
        match self {
            Stat::Disk(e) => e.meta.file_type().is_symlink(),
            Stat::Mem(n) => matches!(n.kind, NodeKind::Symlink(_)),
        }
    }

    /// A symlink's target.
    pub fn link_target(&self) -> std::io::Result<PathBuf> {
        match self {
            Stat::Disk(e) => std::fs::read_link(&e.path),
            Stat::Mem(Node {
                kind: NodeKind::Symlink(t),
                ..
            }) => Ok(t.clone()),
            Stat::Mem(_) => Err(std::io::Error::from(std::io::ErrorKind::InvalidInput)),
        }
    }

    /// A regular file's bytes.
    pub fn read(&self) -> std::io::Result<Vec<u8>> {
        match self {
            Stat::Disk(e) => std::fs::read(&e.path),
            Stat::Mem(n) => match &n.kind {
                NodeKind::File { from, .. } => std::fs::read(from),
                NodeKind::Data(d) => Ok(d.clone()),
                NodeKind::Member {
                    archive,
                    offset,
                    len,
                    ..
                } => {
                    let mut out = Vec::new();
                    std::io::Read::read_to_end(
                        &mut crate::copy::read_member(archive, *offset, *len)?,
                        &mut out,
                    )?;
                    Ok(out)
                }
                _ => Err(std::io::Error::from(std::io::ErrorKind::InvalidInput)),
            },
        }
    }

    /// The file on disk whose bytes (a regular file's) or extended attributes it has.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Stat::Disk(e) => Some(&e.path),
            Stat::Mem(n) => match &n.kind {
                NodeKind::File { from, .. } => Some(from),
                _ => n.xattrs_from.as_deref(),
            },
        }
    }
}

/// A tree COPY can read from. Paths are relative, `/`-separated, without leading `/`;
/// `""` is the root.
pub trait SourceFs: Sync {
    /// The entry at `rel` (not following a final symlink), when it is on disk: an entry
    /// of an in-memory layer is seen only through [`SourceFs::stat`].
    fn lstat(&self, rel: &str) -> Option<Entry>;
    /// The entry at `rel` (not following a final symlink), wherever it is kept.
    fn stat(&self, rel: &str) -> Option<Stat> {
        self.lstat(rel).map(Stat::Disk)
    }
    /// The names in directory `rel`, sorted.
    fn list(&self, rel: &str) -> Vec<String>;
    /// Whether paths are owned by the image (keep uid/gid) rather than the user's context
    /// (copied as 0:0).
    fn keeps_owners(&self) -> bool;
    /// A name for error messages ("the build context", "stage builder").
    fn describe(&self) -> String;
}

/// Joins a relative path and a name.
pub fn join(rel: &str, name: &str) -> String {
    if rel.is_empty() {
        name.to_string()
    } else {
        format!("{rel}/{name}")
    }
}

/// Resolves symlinks in `rel` inside the view, never leaving its root (like a chroot).
/// With `follow_last` false the final component is not resolved.
pub fn resolve(fs: &dyn SourceFs, rel: &str, follow_last: bool) -> Result<String> {
    let mut todo: Vec<String> = rel
        .split('/')
        .filter(|c| !c.is_empty())
        .rev()
        .map(str::to_string)
        .collect();
    let mut done: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        match c.as_str() {
            "." => continue,
            ".." => {
                done.pop();
                continue;
            }
            _ => {}
        }
        let candidate = join(&done.join("/"), &c);
        let is_last = todo.is_empty();
        match fs.stat(&candidate) {
            Some(e) if e.is_symlink() && (follow_last || !is_last) => {
                hops += 1;
                if hops > 40 {
                    return Err(FsError::SymlinkLoop(rel.to_string()));
                }
                let target = e.link_target()?;
                let target = encode(target.as_os_str()).into_owned();
                if target.starts_with('/') {
                    done.clear();
                }
                for part in target.split('/').filter(|p| !p.is_empty()).rev() {
                    todo.push(part.to_string());
                }
            }
            _ => done.push(c),
        }
    }
    Ok(done.join("/"))
}

/// The build context directory, with `.dockerignore` applied: excluded paths do not exist.
pub struct ContextFs {
    root: PathBuf,
    ignore: PatternMatcher,
}

impl ContextFs {
    /// A context at `root` with ignore patterns.
    pub fn new(root: &Path, patterns: &[String]) -> Result<ContextFs> {
        Ok(ContextFs {
            root: root.to_path_buf(),
            ignore: PatternMatcher::new(patterns)?,
        })
    }

    /// The context directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether `.dockerignore` leaves `rel` out of the context.
    pub fn excluded(&self, rel: &str) -> bool {
        !rel.is_empty() && self.ignore.matches_walk(&for_matching(rel))
    }

    /// Whether `rel` is not part of the context. An excluded directory stays visible when
    /// an exception (`!pattern`) may re-include something inside it.
    pub fn hidden(&self, rel: &str, is_dir: bool) -> bool {
        self.excluded(rel) && (!is_dir || self.can_skip_dir(rel))
    }

    /// Whether a walker may skip the whole directory `rel`.
    pub fn can_skip_dir(&self, rel: &str) -> bool {
        !rel.is_empty() && self.ignore.can_skip_dir(&for_matching(rel))
    }
}

impl ContextFs {
    /// Writes into `out` (an empty directory) a layer of whiteouts (0/0 character
    /// devices) for what `.dockerignore` leaves out of the context, so that `out` over
    /// the context directory (an overlay, or a [`LayeredFs`]) shows exactly what COPY
    /// sees. Only a walk of names (no file is read or copied), and only the directories
    /// on the way to a hidden entry are created, with the context's own metadata (the
    /// top layer's directory is the one an overlay shows).
    pub fn write_whiteouts(&self, out: &Path) -> Result<()> {
        copy_dir_meta(&self.root, out)?;
        self.whiteouts_in(Path::new(""), "", out)
    }

    fn whiteouts_in(&self, rel: &Path, rel_str: &str, out: &Path) -> Result<()> {
        let dir = self.root.join(rel);
        let rd = std::fs::read_dir(&dir)
            .with_context(|| format!("reading the build context at {}", dir.display()))?;
        for dent in rd {
            let dent = dent.with_context(|| format!("reading {}", dir.display()))?;
            let name = dent.file_name();
            let child = rel.join(&name);
            // Patterns match a lossy form of a non-UTF-8 name; paths stay byte-exact.
            let child_str = join(rel_str, &encode(&name));
            let is_dir = dent.file_type().is_ok_and(|t| t.is_dir());
            if self.hidden(&child_str, is_dir) {
                self.make_parents(rel, out)?;
                let wh = out.join(&child);
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &wh,
                    rustix::fs::FileType::CharacterDevice,
                    rustix::fs::Mode::empty(),
                    0,
                )
                .map_err(std::io::Error::from)
                .with_context(|| format!("creating the whiteout {}", wh.display()))?;
            } else if is_dir {
                self.whiteouts_in(&child, &child_str, out)?;
            }
        }
        Ok(())
    }

    /// Creates `out/rel` and its missing parents with the context directories' metadata.
    fn make_parents(&self, rel: &Path, out: &Path) -> Result<()> {
        let mut cur = PathBuf::new();
        for comp in rel.components() {
            cur.push(comp);
            let o = out.join(&cur);
            if std::fs::symlink_metadata(&o).is_err() {
                std::fs::create_dir(&o).with_context(|| format!("mkdir {}", o.display()))?;
                copy_dir_meta(&self.root.join(&cur), &o)?;
            }
        }
        Ok(())
    }
}

/// Gives directory `to` the mode, owner and times of directory `from`.
fn copy_dir_meta(from: &Path, to: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let m = std::fs::metadata(from).with_context(|| format!("stat {}", from.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(m.mode() & 0o7777))?;
    std::os::unix::fs::lchown(to, Some(m.uid()), Some(m.gid()))?;
    let t = filetime::FileTime::from_last_modification_time(&m);
    filetime::set_file_times(to, t, t)?;
    Ok(())
}

impl SourceFs for ContextFs {
    fn lstat(&self, rel: &str) -> Option<Entry> {
        let path = if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(to_path(rel))
        };
        let meta = std::fs::symlink_metadata(&path).ok()?;
        if self.hidden(rel, meta.is_dir()) {
            return None;
        }
        Some(Entry { path, meta })
    }

    fn list(&self, rel: &str) -> Vec<String> {
        let dir = if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(to_path(rel))
        };
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                let name = encode(&e.file_name()).into_owned();
                let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
                !self.hidden(&join(rel, &name), is_dir)
            })
            .map(|e| encode(&e.file_name()).into_owned())
            .collect();
        names.sort();
        names
    }

    fn keeps_owners(&self) -> bool {
        false
    }

    fn describe(&self) -> String {
        "the build context".to_string()
    }
}

/// Layers (unpacked diffs, bottom first) seen as one tree, as overlayfs would show them.
/// The top layers may be entry lists kept in memory ([`LayeredFs::push_entries`]): the
/// results of file ops of this build written straight from their sources.
#[derive(Debug, Clone, Default)]
pub struct LayeredFs {
    layers: Vec<PathBuf>,
    /// Over `layers`, bottom first.
    mem: Vec<Arc<Entries>>,
    name: String,
    /// What each directory path is in each layer, as lookups found it: a COPY of a
    /// tree looks up every file, and each file's parents were a whiteout, an opaque
    /// marker (two xattrs and a stat) and a stat each time. Layers on disk are
    /// snapshots, which nothing changes while a view of them is used.
    dirs: Arc<std::sync::Mutex<HashMap<(usize, String), DirWalk>>>,
}

/// A directory path in one layer, from its root down.
#[derive(Debug, Clone, Copy)]
enum DirWalk {
    /// A whiteout or a non-directory hides it and what lower layers have below it.
    Hidden,
    /// Not in this layer; `opaque`: an opaque directory above it hides lower layers.
    Gone { opaque: bool },
    /// A directory of this layer; `opaque`: it or a directory above it is opaque.
    Dir { opaque: bool },
}

fn is_whiteout(meta: &Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

fn is_opaque(dir: &Path) -> bool {
    for attr in ["trusted.overlay.opaque", "user.overlay.opaque"] {
        if let Ok(Some(v)) = xattr::get(dir, attr) {
            if v == b"y" {
                return true;
            }
        }
    }
    dir.join(".wh..wh..opq").exists()
}

enum Found {
    Entry(Stat),
    Hidden,
}

/// A name in one layer's directory: a whiteout (`.wh.NAME` beside it, or a whiteout
/// device in its place), absent, or an entry.
enum Child {
    WhitedOut,
    Absent,
    Here(Entry),
}

impl LayeredFs {
    /// A view of `layers` (bottom first), named for error messages.
    pub fn new(layers: Vec<PathBuf>, name: impl Into<String>) -> LayeredFs {
        LayeredFs {
            layers,
            mem: Vec::new(),
            name: name.into(),
            dirs: Arc::default(),
        }
    }

    /// Adds a layer kept in memory on top: the entries an in-memory [`crate::Upper`]
    /// made (files read from where their bytes are, attributes the nodes'). Such a layer
    /// has no whiteouts or opaque directories (a file op adds and replaces, never
    /// deletes): a non-directory hides what lower layers have below its path.
    pub fn push_entries(&mut self, entries: Arc<Entries>) {
        self.mem.push(entries);
    }

    /// The layer directories on disk, bottom first (the in-memory layers are not in it).
    pub fn layers(&self) -> &[PathBuf] {
        &self.layers
    }

    /// Whether some layers are kept in memory (such a view cannot be mounted).
    pub fn has_entries(&self) -> bool {
        !self.mem.is_empty()
    }

    /// Looks `rel` up in layer `index`: found, hidden for lower layers, or absent
    /// (`None`).
    fn lookup_in(&self, index: usize, comps: &[&str]) -> Option<Found> {
        let (name, parents) = comps.split_last()?;
        let opaque = match self.walk_dir(index, parents) {
            DirWalk::Hidden => return Some(Found::Hidden),
            DirWalk::Gone { opaque } => return opaque.then_some(Found::Hidden),
            DirWalk::Dir { opaque } => opaque,
        };
        match self.child(index, parents, name) {
            Child::WhitedOut => Some(Found::Hidden),
            Child::Absent => opaque.then_some(Found::Hidden),
            Child::Here(entry) => Some(Found::Entry(Stat::Disk(entry))),
        }
    }

    /// What directory path `comps` is in layer `index` (remembered, see `dirs`).
    fn walk_dir(&self, index: usize, comps: &[&str]) -> DirWalk {
        let Some((name, parents)) = comps.split_last() else {
            return DirWalk::Dir { opaque: false };
        };
        let key = (index, comps.join("/"));
        let known = self
            .dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .copied();
        if let Some(w) = known {
            return w;
        }
        let walk = match self.walk_dir(index, parents) {
            DirWalk::Dir { opaque } => match self.child(index, parents, name) {
                Child::WhitedOut => DirWalk::Hidden,
                Child::Absent => DirWalk::Gone { opaque },
                Child::Here(e) if !e.meta.is_dir() => DirWalk::Hidden,
                Child::Here(e) => DirWalk::Dir {
                    opaque: opaque || is_opaque(&e.path),
                },
            },
            above => above,
        };
        self.dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, walk);
        walk
    }

    /// What `name` is in directory `parents` of layer `index` (a directory there).
    fn child(&self, index: usize, parents: &[&str], name: &str) -> Child {
        let dir = self.layers[index].join(to_path(&parents.join("/")));
        if std::fs::symlink_metadata(dir.join(to_path(&format!(".wh.{name}")))).is_ok() {
            return Child::WhitedOut;
        }
        let path = dir.join(to_path(name));
        match std::fs::symlink_metadata(&path) {
            Err(_) => Child::Absent,
            Ok(meta) if is_whiteout(&meta) => Child::WhitedOut,
            Ok(meta) => Child::Here(Entry { path, meta }),
        }
    }

    /// Looks `rel` up in an in-memory layer, as [`LayeredFs::lookup_in`] does.
    fn lookup_mem(entries: &Entries, comps: &[&str]) -> Option<Found> {
        let mut cur = String::new();
        for (i, c) in comps.iter().enumerate() {
            if !cur.is_empty() {
                cur.push('/');
            }
            cur.push_str(c);
            // Every entry's parents are in the list: an absent one is absent below.
            let node = entries.get(&cur)?;
            if i + 1 == comps.len() {
                return Some(Found::Entry(Stat::Mem(node.clone())));
            }
            if node.kind != NodeKind::Dir {
                return Some(Found::Hidden);
            }
        }
        None
    }

    /// The names directly in directory `prefix` (`""`: the root) of an in-memory layer.
    fn mem_children<'e>(entries: &'e Entries, prefix: &str) -> impl Iterator<Item = &'e str> {
        let (from, to) = if prefix.is_empty() {
            (String::new(), None)
        } else {
            (format!("{prefix}/"), Some(format!("{prefix}0")))
        };
        let skip = from.len();
        let range = match to {
            Some(to) => entries.range(from..to),
            None => entries.range(from..),
        };
        range
            .map(move |(k, _)| &k[skip..])
            .filter(|name| !name.is_empty() && !name.contains('/'))
    }
}

impl SourceFs for LayeredFs {
    fn lstat(&self, rel: &str) -> Option<Entry> {
        match self.stat(rel)? {
            Stat::Disk(e) => Some(e),
            Stat::Mem(_) => None,
        }
    }

    fn stat(&self, rel: &str) -> Option<Stat> {
        let comps: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
        if comps.is_empty() {
            let Some(top) = self.layers.last() else {
                // The root of in-memory layers alone (over scratch): no layer has an
                // entry for it, and only its being a directory matters to COPY.
                return (!self.mem.is_empty()).then_some(Stat::Mem(Node {
                    kind: NodeKind::Dir,
                    mode: 0o755,
                    owner: crate::copy::Ids { uid: 0, gid: 0 },
                    mtime: None,
                    xattrs_from: None,
                }));
            };
            let meta = std::fs::symlink_metadata(top).ok()?;
            return Some(Stat::Disk(Entry {
                path: top.clone(),
                meta,
            }));
        }
        let found = self
            .mem
            .iter()
            .rev()
            .find_map(|m| Self::lookup_mem(m, &comps))
            .or_else(|| {
                (0..self.layers.len())
                    .rev()
                    .find_map(|i| self.lookup_in(i, &comps))
            });
        match found? {
            Found::Entry(e) => Some(e),
            Found::Hidden => None,
        }
    }

    fn list(&self, rel: &str) -> Vec<String> {
        let comps: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
        let mut names: BTreeMap<String, bool> = BTreeMap::new(); // name -> visible
        for m in self.mem.iter().rev() {
            if !comps.is_empty() {
                match Self::lookup_mem(m, &comps) {
                    Some(Found::Entry(e)) if e.is_dir() => {}
                    Some(_) => return visible(names),
                    None => continue,
                }
            }
            for name in Self::mem_children(m, &comps.join("/")) {
                names.entry(name.to_string()).or_insert(true);
            }
        }
        for (i, layer) in self.layers.iter().enumerate().rev() {
            let dir = if comps.is_empty() {
                layer.clone()
            } else {
                match self.lookup_in(i, &comps) {
                    Some(Found::Entry(Stat::Disk(e))) if e.meta.is_dir() => e.path,
                    Some(_) => break,
                    None => continue,
                }
            };
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let name = encode(&entry.file_name()).into_owned();
                if name == ".wh..wh..opq" {
                    continue;
                }
                if let Some(hidden) = name.strip_prefix(".wh.") {
                    names.entry(hidden.to_string()).or_insert(false);
                    continue;
                }
                let visible = entry.metadata().map(|m| !is_whiteout(&m)).unwrap_or(false);
                names.entry(name).or_insert(visible);
            }
            if !comps.is_empty() && is_opaque(&dir) {
                break;
            }
        }
        visible(names)
    }

    fn keeps_owners(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

/// The visible names of a merged listing.
fn visible(names: BTreeMap<String, bool>) -> Vec<String> {
    names
        .into_iter()
        .filter(|(_, visible)| *visible)
        .map(|(n, _)| n)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn layer(root: &Path, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = root.join(name);
        for (path, content) in files {
            let p = dir.join(path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            if path.ends_with('/') {
                fs::create_dir_all(&p).unwrap();
            } else {
                fs::write(&p, content).unwrap();
            }
        }
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn merges_layers_with_oci_whiteouts() {
        let t = tempfile::tempdir().unwrap();
        let l1 = layer(
            t.path(),
            "l1",
            &[
                ("a/x", "1"),
                ("a/y", "1"),
                ("b/z", "1"),
                ("b/q/r", "1"),
                ("c", "1"),
                ("d/e/f", "1"),
                ("d/e/g", "1"),
                ("h/i", "1"),
                ("k/m/n", "1"),
            ],
        );
        let l2 = layer(
            t.path(),
            "l2",
            &[
                ("a/x", "2"),
                ("a/.wh.y", ""),
                ("b/.wh..wh..opq", ""),
                ("b/new", "2"),
                (".wh.h", ""),
                ("k", "file"),
            ],
        );
        let v = LayeredFs::new(vec![l1, l2], "test");
        let read = |rel: &str| fs::read_to_string(v.lstat(rel).unwrap().path).unwrap();
        // Twice: the second time the directories' walks are remembered ones.
        for _ in 0..2 {
            assert_eq!(read("a/x"), "2");
            assert!(v.lstat("a/y").is_none());
            assert!(v.lstat("b/z").is_none());
            assert!(v.lstat("b/q/r").is_none(), "below an opaque directory");
            assert_eq!(read("b/new"), "2");
            assert!(v.lstat("c").is_some());
            assert_eq!((read("d/e/f"), read("d/e/g")), ("1".into(), "1".into()));
            assert!(v.lstat("h/i").is_none(), "a whited-out directory");
            assert!(v.lstat("k/m/n").is_none(), "a file over a directory");
            assert_eq!(read("k"), "file");
            assert_eq!(v.list("a"), ["x"]);
            assert_eq!(v.list("b"), ["new"]);
            assert_eq!(v.list(""), ["a", "b", "c", "d", "k"]);
        }
    }

    /// In-memory layers on top of directories: a node hides what is below its path when
    /// it is not a directory, directories merge, symlinks resolve from the node.
    #[test]
    fn merges_in_memory_layers_over_directories() {
        use crate::copy::{Ids, Node};
        let t = tempfile::tempdir().unwrap();
        let l1 = layer(t.path(), "l1", &[("a/x", "1"), ("b/z", "1"), ("c/d", "1")]);
        let node = |kind: NodeKind, mode: u32| Node {
            kind,
            mode,
            owner: Ids { uid: 7, gid: 8 },
            mtime: None,
            xattrs_from: None,
        };
        let file = |p: &Path| NodeKind::File {
            from: p.to_path_buf(),
            len: 1,
            link: None,
        };
        let mut m1 = Entries::new();
        m1.insert("a".into(), node(NodeKind::Dir, 0o700));
        m1.insert("a/new".into(), node(NodeKind::Data(b"n".to_vec()), 0o600));
        m1.insert("c".into(), node(file(&l1.join("a/x")), 0o644));
        let mut m2 = Entries::new();
        m2.insert("a".into(), node(NodeKind::Dir, 0o755));
        m2.insert(
            "a/to-b".into(),
            node(NodeKind::Symlink("../b".into()), 0o777),
        );
        let mut v = LayeredFs::new(vec![l1], "test");
        v.push_entries(Arc::new(m1));
        v.push_entries(Arc::new(m2));
        assert!(v.has_entries());
        assert_eq!(v.list(""), ["a", "b", "c"]);
        assert_eq!(v.list("a"), ["new", "to-b", "x"]);
        assert!(v.list("c").is_empty(), "a file hides the directory below");
        assert!(v.stat("c/d").is_none());
        match v.stat("a") {
            Some(Stat::Mem(n)) => assert_eq!(n.mode, 0o755, "the top layer's"),
            other => panic!("{other:?}"),
        }
        assert_eq!(v.stat("a/new").unwrap().read().unwrap(), b"n");
        assert_eq!(v.stat("c").unwrap().read().unwrap(), b"1");
        assert!(matches!(v.stat("a/x"), Some(Stat::Disk(_))));
        assert!(
            v.lstat("a/new").is_none(),
            "lstat sees entries on disk only"
        );
        assert_eq!(resolve(&v, "a/to-b/z", true).unwrap(), "b/z");
    }

    #[test]
    fn in_memory_layers_alone_have_a_root() {
        let mut m = Entries::new();
        m.insert(
            "f".into(),
            crate::copy::Node {
                kind: NodeKind::Data(Vec::new()),
                mode: 0o644,
                owner: crate::copy::Ids { uid: 0, gid: 0 },
                mtime: None,
                xattrs_from: None,
            },
        );
        let mut v = LayeredFs::new(Vec::new(), "scratch");
        assert!(v.stat("").is_none());
        v.push_entries(Arc::new(m));
        assert!(v.stat("").unwrap().is_dir());
        assert_eq!(v.list(""), ["f"]);
    }

    #[test]
    fn resolve_stays_inside_the_root() {
        let t = tempfile::tempdir().unwrap();
        let l = layer(t.path(), "l", &[("usr/bin/tool", "x")]);
        std::os::unix::fs::symlink("usr/bin", l.join("bin")).unwrap();
        std::os::unix::fs::symlink("/../../..", l.join("escape")).unwrap();
        let v = LayeredFs::new(vec![l], "t");
        assert_eq!(resolve(&v, "bin/tool", true).unwrap(), "usr/bin/tool");
        assert_eq!(resolve(&v, "escape/usr", true).unwrap(), "usr");
        assert_eq!(resolve(&v, "bin", false).unwrap(), "bin");
    }

    /// Issue 9, finding 6: the whiteout layer over the context hides exactly what COPY
    /// does not see, also inside an excluded directory an exception keeps.
    #[test]
    fn whiteouts_hide_what_dockerignore_excludes() {
        let t = tempfile::tempdir().unwrap();
        let root = layer(
            t.path(),
            "ctx",
            &[
                ("keep", ""),
                (".env", "SECRET=1"),
                (".git/credentials", "token"),
                ("docs/a.md", ""),
                ("docs/keep.md", ""),
                ("src/main.rs", ""),
            ],
        );
        let c = ContextFs::new(
            &root,
            &[
                ".env".into(),
                ".git/".into(),
                "docs".into(),
                "!docs/keep.md".into(),
            ],
        )
        .unwrap();
        let wh = t.path().join("wh");
        fs::create_dir(&wh).unwrap();
        c.write_whiteouts(&wh).unwrap();
        let merged = LayeredFs::new(vec![root.clone(), wh], "ctx");
        fn walk(v: &dyn SourceFs, rel: &str, out: &mut Vec<String>) {
            for n in v.list(rel) {
                let r = join(rel, &n);
                out.push(r.clone());
                if v.lstat(&r).unwrap().meta.is_dir() {
                    walk(v, &r, out);
                }
            }
        }
        let (mut seen, mut want) = (Vec::new(), Vec::new());
        walk(&merged, "", &mut seen);
        walk(&c, "", &mut want);
        // ContextFs is a SourceFs too: same walk, same answer.
        assert_eq!(seen, want);
        assert_eq!(seen, ["docs", "docs/keep.md", "keep", "src", "src/main.rs"]);
        assert!(
            !t.path().join("wh/src").exists(),
            "only dirs on the way to a whiteout"
        );
    }

    #[test]
    fn context_applies_dockerignore() {
        let t = tempfile::tempdir().unwrap();
        let root = layer(
            t.path(),
            "ctx",
            &[
                ("keep.txt", ""),
                ("skip.md", ""),
                ("docs/a.md", ""),
                ("docs/keep.md", ""),
            ],
        );
        let c = ContextFs::new(
            &root,
            &["*.md".into(), "docs".into(), "!docs/keep.md".into()],
        )
        .unwrap();
        assert_eq!(c.list(""), ["docs", "keep.txt"]);
        assert!(c.lstat("skip.md").is_none());
        assert_eq!(c.list("docs"), ["keep.md"]);
    }
}
