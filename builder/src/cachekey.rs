//! Cache keys: the one place that decides what a build step's cache key covers.
//!
//! A vertex's key is [`cache_key`] (the solver applies it; it lives in `kiln_solver`,
//! which must not depend on the store or the file views this module reads): sha256 over
//! * its **definition digest** (`kiln_ops`): the op as canonical JSON and its
//!   inputs' definition digests. Two things are deliberately not in it: proxy build args
//!   (`ExecOp::proxy_env`, as BuildKit leaves `ProxyEnv` out of the exec key) and stage
//!   names (an `ExecMount` names its source only by input index);
//! * its **inputs' keys**, in order, so a step is rebuilt when anything under it changed;
//! * its **content key** ([`content_key`]), what the op reads that its definition does not
//!   show: an image's ChainID; the [`context_checksum`] of the context files a COPY or ADD
//!   selects or a `RUN --mount=type=bind` (without `from`) shows; an `ADD <url>`'s
//!   `--checksum`, or else the downloaded file's digest; a git source's commit (what its
//!   reference names when the build runs, see [`crate::git`]).
//!
//! The context checksum is a [`TreeDigest`] of one [`TreeEntry`] per selected path: its
//! type, permission bits, size, link target, xattrs and content, and its owner when the
//! source keeps owners. Never a timestamp (mtime, atime, ctime), so a fresh checkout or a
//! `touch` keeps the cache. The build context does not keep owners: COPY from it gives
//! 0:0 (or `--chown`), and BuildKit's file sync resets its uid and gid to 0 the same way,
//! so a checkout by another user hits the same cache. `.dockerignore`d paths are not part
//! of the context ([`ContextFs`](kiln_fs::ContextFs)) and count for nothing.

use std::collections::BTreeMap;
use std::fs::Metadata;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;

use kiln_cache::{CacheError, ContentHash, StatMemo, hash_file};
use kiln_fs::{Entry, FsError, SourceFs, expand_source};
use kiln_oci::Digest;
use kiln_oci::digest::Hashing;
use kiln_ops::{FileAction, GitSource, MountKind, Op, Platform};
use rayon::prelude::*;

use crate::download::DownloadError;
use crate::images::ImageStoreError;
use crate::worker::Output;

/// Why a content key could not be formed: a lookup of its [`KeySource`] failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A base image could not be resolved.
    #[error(transparent)]
    Image(#[from] Box<ImageStoreError>),
    /// An `ADD <url>` could not be fetched.
    #[error(transparent)]
    Download(#[from] Box<DownloadError>),
    /// A COPY source does not match or could not be read.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// A git reference could not be resolved, or its `--checksum` does not match.
    #[error(transparent)]
    Git(#[from] Box<crate::git::GitError>),
    /// A named context the graph reads was not given to the build.
    #[error("named context {0:?} was not given (--build-context {0}=DIR)")]
    NoNamedContext(String),
    /// A file could not be hashed.
    #[error(transparent)]
    Hash(#[from] CacheError),
}

impl From<ImageStoreError> for KeyError {
    fn from(e: ImageStoreError) -> KeyError {
        KeyError::Image(Box::new(e))
    }
}

impl From<DownloadError> for KeyError {
    fn from(e: DownloadError) -> KeyError {
        KeyError::Download(Box::new(e))
    }
}

type Result<T, E = KeyError> = std::result::Result<T, E>;

/// The formula that combines the parts below, applied by the solver to every vertex.
pub use kiln_solver::cache_key;

/// What [`content_key`] asks of the build: the lookups that need the store, the network
/// or the context.
pub trait KeySource {
    /// The ChainID of a base image.
    fn chain_id(&self, reference: &str, platform: &Platform) -> Result<Digest>;
    /// The digest of what `url` serves (an `ADD <url>` without `--checksum`).
    fn download_digest(&self, url: &str) -> Result<Digest>;
    /// The [`context_checksum`] of `sources` in the local context named `context` (the
    /// build context, [`MAIN_CONTEXT`](crate::worker::MAIN_CONTEXT), or a named one).
    fn context_checksum(&self, context: &str, sources: &[&str]) -> Result<Digest>;
    /// The commit a git source's reference names now (its `--checksum` checked).
    fn git_commit(&self, source: &GitSource) -> Result<String>;
}

/// The part of an op's cache key its definition does not show (see the module docs);
/// `None` when the definition and the inputs' keys say everything.
pub fn content_key(op: &Op, inputs: &[Output], source: &dyn KeySource) -> Result<Option<String>> {
    // The local context (the build's, or a named one) input `i` is, if it is one.
    let context_of = |i: usize| match inputs.get(i) {
        Some(Output::Context(name)) => Some(name.as_str()),
        _ => None,
    };
    match op {
        Op::Image {
            reference,
            platform,
            ..
        } => Ok(Some(source.chain_id(reference, platform)?.into())),
        // The commit (BuildKit's git cache key); the subdir and `.git` are in the
        // definition. `+submodules`: a store of a kiln that checked out no submodules
        // keeps its results under another key (its records miss once).
        Op::Git(g) => Ok(Some(format!("git+submodules:{}", source.git_commit(g)?))),
        Op::File(f) => {
            let offset = usize::from(f.has_base);
            let srcs = by_context(f.actions.iter().filter_map(|a| match a {
                FileAction::Copy { input, src, .. } if *input >= offset => {
                    Some((context_of(*input)?, src.as_str()))
                }
                _ => None,
            }));
            let mut parts = context_parts(&srcs, source)?;
            for a in &f.actions {
                if let FileAction::Download { url, checksum, .. } = a {
                    // With --checksum the content is known without fetching; otherwise
                    // the download's own digest is the key (and the step reuses it).
                    parts.push(match checksum {
                        Some(c) => c.clone(),
                        None => source.download_digest(url)?.into(),
                    });
                }
            }
            Ok((!parts.is_empty()).then(|| parts.join(",")))
        }
        Op::Exec(e) => {
            // What a bind mount of a local context shows is part of the step's input.
            let srcs = by_context(e.mounts.iter().filter_map(|m| match &m.kind {
                MountKind::Bind { source, .. } => {
                    Some((context_of(m.input?)?, source.as_deref().unwrap_or(".")))
                }
                _ => None,
            }));
            let parts = context_parts(&srcs, source)?;
            Ok((!parts.is_empty()).then(|| parts.join(",")))
        }
        Op::Context { .. } | Op::Merge => Ok(None),
    }
}

/// Sources grouped by the local context they are read from, in order of name.
fn by_context<'a>(
    pairs: impl Iterator<Item = (&'a str, &'a str)>,
) -> BTreeMap<&'a str, Vec<&'a str>> {
    let mut out: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (context, src) in pairs {
        out.entry(context).or_default().push(src);
    }
    out
}

/// One [`context_checksum`] per local context read. Which context a checksum belongs
/// to is in the definition already (the context vertex's name is an input's digest).
fn context_parts(srcs: &BTreeMap<&str, Vec<&str>>, source: &dyn KeySource) -> Result<Vec<String>> {
    srcs.iter()
        .map(|(context, s)| Ok(source.context_checksum(context, s)?.into()))
        .collect()
}

/// Checksum of what `sources` (COPY sources, wildcards allowed) select in `fs`: one
/// [`TreeEntry`] per path, directories with everything under them. With a `memo` (the
/// build context's), an unchanged file costs one stat: its hash is remembered.
pub fn context_checksum(
    fs: &dyn SourceFs,
    memo: Option<&StatMemo>,
    sources: &[&str],
) -> Result<Digest> {
    Ok(TreeDigest::of(&context_tree(fs, memo, sources)?))
}

/// The [`TreeEntry`]s whose [`TreeDigest`] is the [`context_checksum`]: what a build
/// record keeps of a COPY's files, taken from the one walk the cache key needs.
pub fn context_tree(
    fs: &dyn SourceFs,
    memo: Option<&StatMemo>,
    sources: &[&str],
) -> Result<Vec<TreeEntry>> {
    let mut entries: Vec<(String, Entry)> = Vec::new();
    for src in sources {
        for m in expand_source(fs, src)? {
            // A context's entries are all on disk.
            if let kiln_fs::Stat::Disk(entry) = m.entry {
                walk(fs, &m.rel, entry, &mut entries);
            }
        }
    }
    let owners = fs.keeps_owners();
    let tree: Vec<TreeEntry> = entries
        .par_iter()
        .map(|(rel, e)| tree_entry(rel, e, owners, memo))
        .collect::<Result<_>>()?;
    Ok(tree)
}

/// The [`TreeEntry`] of one selected path.
fn tree_entry(rel: &str, e: &Entry, owners: bool, memo: Option<&StatMemo>) -> Result<TreeEntry> {
    let kind = FileKind::of(&e.meta);
    let read_xattrs = || -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut x: Vec<(Vec<u8>, Vec<u8>)> = xattr::list(&e.path)
            .into_iter()
            .flatten()
            .filter_map(|n| {
                let v = xattr::get(&e.path, &n).ok()??;
                Some((n.as_encoded_bytes().to_vec(), v))
            })
            .collect();
        x.sort();
        x
    };
    // A file's memoized hash covers its bytes and its xattrs (an xattr change moves the
    // ctime, so the memo never returns a stale one): an unchanged file costs one stat.
    let (content, xattrs) = if kind == FileKind::File {
        let h = match memo.and_then(|m| m.get(rel, &e.meta)) {
            Some(h) => h,
            None => {
                let h = fold_xattrs(hash_file(&e.path)?, &read_xattrs());
                if let Some(m) = memo {
                    m.insert(rel, &e.meta, h);
                }
                h
            }
        };
        (Some(h), Vec::new())
    } else {
        (None, read_xattrs())
    };
    Ok(TreeEntry {
        path: kiln_fs::name::to_path(rel).into_owned(),
        kind,
        mode: e.meta.mode() & 0o7777,
        uid: if owners { e.meta.uid() } else { 0 },
        gid: if owners { e.meta.gid() } else { 0 },
        size: if kind == FileKind::File {
            e.meta.len()
        } else {
            0
        },
        link_target: if kind == FileKind::Symlink {
            std::fs::read_link(&e.path).ok()
        } else {
            None
        },
        xattrs,
        content,
    })
}

/// Adds `entry` and everything under it (for directories) to `out`.
fn walk(fs: &dyn SourceFs, rel: &str, entry: Entry, out: &mut Vec<(String, Entry)>) {
    let is_dir = entry.meta.is_dir();
    out.push((rel.to_string(), entry));
    if is_dir {
        for name in fs.list(rel) {
            let child = kiln_fs::view::join(rel, &name);
            if let Some(e) = fs.lstat(&child) {
                walk(fs, &child, e, out);
            }
        }
    }
}

/// A file's content hash with its xattrs folded in (the plain hash when it has none).
fn fold_xattrs(content: ContentHash, xattrs: &[(Vec<u8>, Vec<u8>)]) -> ContentHash {
    if xattrs.is_empty() {
        return content;
    }
    let mut h = blake3::Hasher::new();
    h.update(b"kiln-xattrs\0");
    h.update(content.as_bytes());
    for (n, v) in xattrs {
        h.update(&(n.len() as u64).to_le_bytes());
        h.update(n);
        h.update(&(v.len() as u64).to_le_bytes());
        h.update(v);
    }
    h.finalize()
}

/// Type of a tree entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link (never followed).
    Symlink,
    /// Named pipe.
    Fifo,
    /// Character device.
    CharDevice,
    /// Block device.
    BlockDevice,
    /// Unix socket.
    Socket,
}

impl FileKind {
    /// The type of `meta` (an `lstat`).
    pub fn of(meta: &Metadata) -> FileKind {
        let t = meta.file_type();
        if t.is_file() {
            FileKind::File
        } else if t.is_dir() {
            FileKind::Dir
        } else if t.is_symlink() {
            FileKind::Symlink
        } else if t.is_fifo() {
            FileKind::Fifo
        } else if t.is_char_device() {
            FileKind::CharDevice
        } else if t.is_block_device() {
            FileKind::BlockDevice
        } else {
            FileKind::Socket
        }
    }

    fn tag(self) -> u8 {
        match self {
            FileKind::File => 1,
            FileKind::Dir => 2,
            FileKind::Symlink => 3,
            FileKind::Fifo => 4,
            FileKind::CharDevice => 5,
            FileKind::BlockDevice => 6,
            FileKind::Socket => 7,
        }
    }
}

/// One entry of a file tree, as it enters a [`TreeDigest`]. There is deliberately no
/// timestamp: times never affect a cache key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeEntry {
    /// Path relative to the tree root, `/`-separated, no leading `./`.
    pub path: PathBuf,
    /// Entry type.
    pub kind: FileKind,
    /// Permission bits including setuid/setgid/sticky (`mode & 0o7777`).
    pub mode: u32,
    /// Owner uid (0 for a source whose owners are not kept).
    pub uid: u32,
    /// Owner gid (0 for a source whose owners are not kept).
    pub gid: u32,
    /// Size in bytes for regular files; 0 for everything else.
    pub size: u64,
    /// Target of a symlink.
    pub link_target: Option<PathBuf>,
    /// Extended attributes as (name, value), sorted by name. Empty for a regular file,
    /// whose `content` has them folded in.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// BLAKE3 of the content (and xattrs), for regular files.
    pub content: Option<ContentHash>,
}

/// Folds [`TreeEntry`]s into one digest.
///
/// The result is `sha256:<hex>` of a kiln-specific, length-prefixed encoding of the
/// entries sorted by path bytes (format tag `kiln-tree-v1`), so it composes with other
/// sha256 cache keys. It is a cache-key input, not the digest of any blob.
pub struct TreeDigest;

impl TreeDigest {
    /// The digest of `entries` (in any order).
    pub fn of(entries: &[TreeEntry]) -> Digest {
        let mut sorted: Vec<&TreeEntry> = entries.iter().collect();
        sorted.sort_by(|a, b| {
            a.path
                .as_os_str()
                .as_bytes()
                .cmp(b.path.as_os_str().as_bytes())
        });
        let mut h = Hashing::new(std::io::sink());
        let mut put = |b: &[u8]| h.write_all(b).expect("a sink never fails");
        put(b"kiln-tree-v1\0");
        let bytes = |put: &mut dyn FnMut(&[u8]), b: &[u8]| {
            put(&(b.len() as u64).to_le_bytes());
            put(b);
        };
        for e in &sorted {
            bytes(&mut put, e.path.as_os_str().as_bytes());
            put(&[e.kind.tag()]);
            put(&(e.mode & 0o7777).to_le_bytes());
            put(&e.uid.to_le_bytes());
            put(&e.gid.to_le_bytes());
            put(&e.size.to_le_bytes());
            match &e.link_target {
                Some(t) => {
                    put(&[1]);
                    bytes(&mut put, t.as_os_str().as_bytes());
                }
                None => put(&[0]),
            }
            put(&(e.xattrs.len() as u64).to_le_bytes());
            for (name, value) in &e.xattrs {
                bytes(&mut put, name);
                bytes(&mut put, value);
            }
            match &e.content {
                Some(c) => {
                    put(&[1]);
                    put(c.as_bytes());
                }
                None => put(&[0]),
            }
        }
        put(&(sorted.len() as u64).to_le_bytes());
        h.finish().1
    }
}

#[cfg(test)]
mod tests;
