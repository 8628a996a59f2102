//! Content hashing of files and file-tree selections (COPY/ADD cache keys).

use std::fs::{self, File, Metadata};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;
use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::error::{CacheError, IoContext, Result};
use crate::statmemo::{ContentHash, StatMemo};

/// Files at least this big are hashed through a memory map with BLAKE3's
/// multi-threaded `update_mmap_rayon`; smaller ones with plain reads.
pub const MMAP_THRESHOLD: u64 = 1 << 20;

/// BLAKE3 hash of a file's content.
///
/// Big files are memory-mapped. As with any mmap, a file truncated by
/// another process while it is being hashed can kill the process with
/// SIGBUS; build contexts are assumed not to be rewritten mid-build.
pub fn hash_file(path: impl AsRef<Path>) -> Result<ContentHash> {
    let path = path.as_ref();
    let size = fs::metadata(path).ctx("stat", path)?.len();
    hash_file_sized(path, size)
}

fn hash_file_sized(path: &Path, size: u64) -> Result<ContentHash> {
    let mut hasher = blake3::Hasher::new();
    if size >= MMAP_THRESHOLD {
        hasher.update_mmap_rayon(path).ctx("hash", path)?;
    } else {
        let file = File::open(path).ctx("open", path)?;
        hasher.update_reader(file).ctx("read", path)?;
    }
    Ok(hasher.finalize())
}

/// What a tree-walk filter decides for one path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    /// Hash this entry (and descend if it is a directory).
    Include,
    /// Leave this entry out, but still descend into it if it is a directory
    /// (so `.dockerignore` exceptions like `!dir/keep` can re-include
    /// children).
    Exclude,
    /// Leave this entry out and do not descend (same as `Exclude` for
    /// non-directories).
    SkipDir,
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
    fn of(meta: &Metadata) -> FileKind {
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

/// One entry of a file tree, as it enters a [`TreeDigest`]. There is
/// deliberately no timestamp: mtimes never affect a tree digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeEntry {
    /// Path relative to the tree root, `/`-separated, no leading `./`.
    pub path: PathBuf,
    /// Entry type.
    pub kind: FileKind,
    /// Permission bits including setuid/setgid/sticky (`mode & 0o7777`).
    pub mode: u32,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Size in bytes for regular files; 0 for everything else.
    pub size: u64,
    /// Target of a symlink.
    pub link_target: Option<PathBuf>,
    /// Extended attributes as (name, value), sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// BLAKE3 of the content, for regular files.
    pub content: Option<ContentHash>,
}

/// Folds a set of [`TreeEntry`]s into one [`Digest`].
///
/// The result is `sha256:<hex>` of a kiln-specific, length-prefixed
/// encoding of the entries sorted by path bytes (format tag
/// `kiln-tree-v1`), so it composes with other sha256 cache keys. It is a
/// cache-key input, not the digest of any blob. The order entries are
/// added in does not matter.
#[derive(Clone, Debug, Default)]
pub struct TreeDigest {
    entries: Vec<TreeEntry>,
}

impl TreeDigest {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add one entry.
    pub fn add(&mut self, entry: TreeEntry) {
        self.entries.push(entry);
    }

    /// The digest of everything added.
    pub fn finish(self) -> Digest {
        Self::of(&self.entries)
    }

    /// The digest of `entries` (in any order).
    pub fn of(entries: &[TreeEntry]) -> Digest {
        let mut sorted: Vec<&TreeEntry> = entries.iter().collect();
        sorted.sort_by(|a, b| {
            a.path
                .as_os_str()
                .as_bytes()
                .cmp(b.path.as_os_str().as_bytes())
        });
        let mut h = Sha256::new();
        h.update(b"kiln-tree-v1\0");
        let bytes = |h: &mut Sha256, b: &[u8]| {
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        };
        for e in &sorted {
            bytes(&mut h, e.path.as_os_str().as_bytes());
            h.update([e.kind.tag()]);
            h.update((e.mode & 0o7777).to_le_bytes());
            h.update(e.uid.to_le_bytes());
            h.update(e.gid.to_le_bytes());
            h.update(e.size.to_le_bytes());
            match &e.link_target {
                Some(t) => {
                    h.update([1]);
                    bytes(&mut h, t.as_os_str().as_bytes());
                }
                None => h.update([0]),
            }
            h.update((e.xattrs.len() as u64).to_le_bytes());
            for (name, value) in &e.xattrs {
                bytes(&mut h, name);
                bytes(&mut h, value);
            }
            match &e.content {
                Some(c) => {
                    h.update([1]);
                    h.update(c.as_bytes());
                }
                None => h.update([0]),
            }
        }
        h.update((sorted.len() as u64).to_le_bytes());
        let out = h.finalize();
        let mut raw = [0u8; 32];
        raw.copy_from_slice(&out);
        Digest::from_sha256_bytes(&raw)
    }
}

/// Result of [`checksum_tree`].
#[derive(Clone, Debug)]
pub struct TreeChecksum {
    /// [`TreeDigest`] of the selected entries.
    pub digest: Digest,
    /// The selected entries, sorted by path (e.g. to copy exactly what was
    /// hashed).
    pub entries: Vec<TreeEntry>,
    /// Number of regular files selected.
    pub files: u64,
    /// Bytes actually read and hashed (0 on a no-op rebuild with a memo).
    pub bytes_hashed: u64,
    /// Regular files whose hash came from the stat memo.
    pub memo_hits: u64,
}

/// Walk `root` and digest the selection `filter` keeps.
///
/// * `filter(rel_path, is_dir)` is called for every entry below `root`
///   (dotfiles included; `rel_path` is `/`-separated, lossily UTF-8) and
///   decides [`Filter::Include`], [`Filter::Exclude`] or [`Filter::SkipDir`].
/// * Symlinks are recorded, never followed (except `root` itself).
/// * `root` itself is not part of the digest, only what is below it; if
///   `root` is not a directory, the digest covers that single entry, named
///   by its file name.
/// * Regular files are hashed in parallel; with a `memo` (for the context
///   containing `root`) an unchanged file costs one `lstat` and is not read.
///   New hashes are inserted into the memo; call [`StatMemo::save`] after.
/// * Recorded per entry: path, type, permission bits, uid, gid, size
///   (files), symlink target and content hash. Not recorded: timestamps
///   (never), and xattrs (host-specific, e.g. SELinux labels, so they would
///   make keys differ between machines).
pub fn checksum_tree(
    root: &Path,
    filter: &dyn Fn(&str, bool) -> Filter,
    memo: Option<&StatMemo>,
) -> Result<TreeChecksum> {
    let mut entries = Vec::new();
    let mut walk = walkdir::WalkDir::new(root).follow_links(false).into_iter();
    while let Some(next) = walk.next() {
        let dent = next.map_err(|e| {
            let path = e.path().unwrap_or(root).to_path_buf();
            CacheError::io("walk", path, e.into())
        })?;
        let is_dir = dent.file_type().is_dir();
        let is_root = dent.depth() == 0;
        let rel: PathBuf = if is_root {
            if is_dir {
                continue;
            }
            PathBuf::from(dent.file_name())
        } else {
            dent.path()
                .strip_prefix(root)
                .unwrap_or(dent.path())
                .to_path_buf()
        };
        match filter(&rel.to_string_lossy(), is_dir) {
            Filter::Include => {}
            Filter::Exclude => continue,
            Filter::SkipDir => {
                if is_dir {
                    walk.skip_current_dir();
                }
                continue;
            }
        }
        let meta = dent
            .metadata()
            .map_err(|e| CacheError::io("stat", dent.path(), e.into()))?;
        entries.push((dent.into_path(), rel, meta, is_root));
    }

    // Memo keys are relative to the memo's context, so different COPY
    // sources within one context share entries.
    let memo = memo.and_then(|m| {
        let root = fs::canonicalize(root).ok()?;
        let prefix = root.strip_prefix(m.context()).ok()?.to_path_buf();
        Some((m, prefix))
    });
    let memo_hits = AtomicU64::new(0);
    let bytes_hashed = AtomicU64::new(0);
    let mut out: Vec<TreeEntry> = entries
        .into_par_iter()
        .map(|(abs, rel, meta, is_root)| {
            let kind = FileKind::of(&meta);
            let mut content = None;
            if kind == FileKind::File {
                let key = memo.as_ref().map(|(_, prefix)| {
                    let p = if is_root {
                        prefix.clone() // `root` is this file
                    } else if prefix.as_os_str().is_empty() {
                        rel.clone()
                    } else {
                        prefix.join(&rel)
                    };
                    p.to_string_lossy().into_owned()
                });
                let hit = memo
                    .as_ref()
                    .zip(key.as_deref())
                    .and_then(|((m, _), k)| m.get(k, &meta));
                content = Some(match hit {
                    Some(h) => {
                        memo_hits.fetch_add(1, Ordering::Relaxed);
                        h
                    }
                    None => {
                        let h = hash_file_sized(&abs, meta.len())?;
                        bytes_hashed.fetch_add(meta.len(), Ordering::Relaxed);
                        if let (Some((m, _)), Some(k)) = (&memo, &key) {
                            m.insert(k, &meta, h);
                        }
                        h
                    }
                });
            }
            let link_target = if kind == FileKind::Symlink {
                Some(fs::read_link(&abs).ctx("read symlink", &abs)?)
            } else {
                None
            };
            Ok(TreeEntry {
                path: rel,
                kind,
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
                size: if kind == FileKind::File {
                    meta.len()
                } else {
                    0
                },
                link_target,
                xattrs: Vec::new(),
                content,
            })
        })
        .collect::<Result<_>>()?;
    out.sort_by(|a, b| {
        a.path
            .as_os_str()
            .as_bytes()
            .cmp(b.path.as_os_str().as_bytes())
    });
    Ok(TreeChecksum {
        digest: TreeDigest::of(&out),
        files: out.iter().filter(|e| e.kind == FileKind::File).count() as u64,
        entries: out,
        bytes_hashed: bytes_hashed.into_inner(),
        memo_hits: memo_hits.into_inner(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::statmemo::tests::settle;
    use crate::store::Store;
    use std::os::unix::fs::{PermissionsExt, symlink};
    use std::time::{Duration, SystemTime};

    struct Ctx {
        _dir: tempfile::TempDir,
        store: Store,
        ctx: PathBuf,
    }

    fn setup() -> Ctx {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let ctx = dir.path().join("ctx");
        fs::create_dir_all(ctx.join("src/deep")).unwrap();
        fs::create_dir_all(ctx.join("node_modules/pkg")).unwrap();
        fs::create_dir_all(ctx.join("logs")).unwrap();
        fs::write(ctx.join("Dockerfile"), "FROM scratch\n").unwrap();
        fs::write(ctx.join(".hidden"), "dot").unwrap();
        fs::write(ctx.join("src/main.rs"), "fn main() {}\n").unwrap();
        fs::write(ctx.join("src/deep/lib.rs"), "pub fn f() {}\n").unwrap();
        fs::write(ctx.join("node_modules/pkg/index.js"), "x").unwrap();
        fs::write(ctx.join("logs/a.log"), "log").unwrap();
        fs::write(ctx.join("logs/keep.txt"), "keep").unwrap();
        let big: Vec<u8> = (0..3 * MMAP_THRESHOLD as u32)
            .map(|i| (i * 7) as u8)
            .collect();
        fs::write(ctx.join("big.bin"), big).unwrap();
        symlink("src/main.rs", ctx.join("link")).unwrap();
        settle();
        Ctx {
            _dir: dir,
            store,
            ctx,
        }
    }

    /// `.dockerignore`-like: skip node_modules, exclude logs/ but keep
    /// logs/keep.txt.
    fn filter(rel: &str, _is_dir: bool) -> Filter {
        match rel {
            "node_modules" => Filter::SkipDir,
            "logs" | "logs/a.log" => Filter::Exclude,
            _ => Filter::Include,
        }
    }

    /// One "build": load the memo, checksum, save the memo.
    fn build(c: &Ctx) -> TreeChecksum {
        let memo = StatMemo::load(&c.store, &c.ctx).unwrap();
        let sum = checksum_tree(&c.ctx, &filter, Some(&memo)).unwrap();
        memo.save().unwrap();
        sum
    }

    fn paths(sum: &TreeChecksum) -> Vec<String> {
        sum.entries
            .iter()
            .map(|e| e.path.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn hash_file_small_and_big() {
        let dir = tempfile::tempdir().unwrap();
        for size in [0usize, 10, MMAP_THRESHOLD as usize + 1] {
            let p = dir.path().join(size.to_string());
            let data = vec![5u8; size];
            fs::write(&p, &data).unwrap();
            assert_eq!(hash_file(&p).unwrap(), blake3::hash(&data));
        }
        let err = hash_file(dir.path().join("missing")).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn selection_and_counts() {
        let c = setup();
        let sum = build(&c);
        assert_eq!(
            paths(&sum),
            [
                ".hidden",
                "Dockerfile",
                "big.bin",
                "link",
                "logs/keep.txt",
                "src",
                "src/deep",
                "src/deep/lib.rs",
                "src/main.rs",
            ]
        );
        assert_eq!(sum.files, 6);
        assert_eq!(sum.memo_hits, 0);
        let total: u64 = sum.entries.iter().map(|e| e.size).sum();
        assert_eq!(sum.bytes_hashed, total);
        let link = sum
            .entries
            .iter()
            .find(|e| e.path == Path::new("link"))
            .unwrap();
        assert_eq!(link.kind, FileKind::Symlink);
        assert_eq!(link.link_target.as_deref(), Some(Path::new("src/main.rs")));
        assert_eq!(link.content, None);
        let big = sum
            .entries
            .iter()
            .find(|e| e.path == Path::new("big.bin"))
            .unwrap();
        assert_eq!(big.content, Some(hash_file(c.ctx.join("big.bin")).unwrap()));
        // Without a memo the digest is the same.
        assert_eq!(
            checksum_tree(&c.ctx, &filter, None).unwrap().digest,
            sum.digest
        );
    }

    #[test]
    fn noop_rebuild_hashes_nothing() {
        let c = setup();
        let first = build(&c);
        let second = build(&c);
        assert_eq!(second.digest, first.digest);
        assert_eq!(second.bytes_hashed, 0);
        assert_eq!(second.memo_hits, second.files);
    }

    #[test]
    fn changing_a_byte_changes_digest() {
        let c = setup();
        let before = build(&c).digest;
        fs::write(c.ctx.join("src/main.rs"), "fn main() {}\r").unwrap();
        let after = build(&c);
        assert_ne!(after.digest, before);
        assert_eq!(after.bytes_hashed, 13, "only the changed file is re-read");
    }

    #[test]
    fn touching_mtime_keeps_digest_and_rehashes_once() {
        let c = setup();
        let before = build(&c);
        let f = c.ctx.join("Dockerfile");
        let later = SystemTime::now() + Duration::from_secs(3600);
        File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(later)
            .unwrap();
        settle();
        // Miss: stat changed, so the file is read again; digest unchanged.
        let touched = build(&c);
        assert_eq!(touched.digest, before.digest);
        assert_eq!(touched.bytes_hashed, "FROM scratch\n".len() as u64);
        assert_eq!(touched.memo_hits, touched.files - 1);
        // Hit: the new stat data was memoized.
        let again = build(&c);
        assert_eq!(again.digest, before.digest);
        assert_eq!(again.bytes_hashed, 0);
        assert_eq!(again.memo_hits, again.files);
    }

    #[test]
    fn chmod_changes_digest() {
        let c = setup();
        let before = build(&c).digest;
        let f = c.ctx.join("src/main.rs");
        fs::set_permissions(&f, fs::Permissions::from_mode(0o755)).unwrap();
        assert_ne!(build(&c).digest, before);
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
        fs::set_permissions(c.ctx.join("src"), fs::Permissions::from_mode(0o700)).unwrap();
        assert_ne!(build(&c).digest, before, "directory modes count too");
    }

    #[test]
    fn rename_changes_digest() {
        let c = setup();
        let before = build(&c).digest;
        fs::rename(
            c.ctx.join("src/deep/lib.rs"),
            c.ctx.join("src/deep/lib2.rs"),
        )
        .unwrap();
        let after = build(&c);
        assert_ne!(after.digest, before);
        fs::rename(
            c.ctx.join("src/deep/lib2.rs"),
            c.ctx.join("src/deep/lib.rs"),
        )
        .unwrap();
        assert_eq!(
            build(&c).digest,
            before,
            "renaming back restores the digest"
        );
    }

    #[test]
    fn symlink_target_changes_digest() {
        let c = setup();
        let before = build(&c).digest;
        fs::remove_file(c.ctx.join("link")).unwrap();
        symlink("src/deep/lib.rs", c.ctx.join("link")).unwrap();
        assert_ne!(build(&c).digest, before);
    }

    #[test]
    fn dotfiles_count() {
        let c = setup();
        let before = build(&c).digest;
        fs::write(c.ctx.join(".hidden"), "DOT").unwrap();
        assert_ne!(build(&c).digest, before);
    }

    #[test]
    fn excluded_files_do_not_count() {
        let c = setup();
        let before = build(&c);
        fs::write(c.ctx.join("node_modules/pkg/index.js"), "changed").unwrap();
        fs::write(c.ctx.join("node_modules/new.js"), "new").unwrap();
        fs::write(c.ctx.join("logs/a.log"), "more log").unwrap();
        fs::write(c.ctx.join("logs/b.log"), "x").unwrap();
        let f = |rel: &str, d: bool| match rel {
            "logs/b.log" => Filter::Exclude,
            _ => filter(rel, d),
        };
        let memo = StatMemo::load(&c.store, &c.ctx).unwrap();
        let after = checksum_tree(&c.ctx, &f, Some(&memo)).unwrap();
        assert_eq!(after.digest, before.digest);
        assert_eq!(after.files, before.files);
        assert_eq!(after.bytes_hashed, 0);
        // ...while a re-included child of an excluded directory does count.
        fs::write(c.ctx.join("logs/keep.txt"), "KEEP").unwrap();
        assert_ne!(build(&c).digest, before.digest);
    }

    #[test]
    fn subtree_shares_memo_with_context() {
        let c = setup();
        build(&c);
        let memo = StatMemo::load(&c.store, &c.ctx).unwrap();
        let sub = checksum_tree(&c.ctx.join("src"), &|_, _| Filter::Include, Some(&memo)).unwrap();
        assert_eq!(paths(&sub), ["deep", "deep/lib.rs", "main.rs"]);
        assert_eq!(sub.memo_hits, 2);
        assert_eq!(sub.bytes_hashed, 0);
    }

    #[test]
    fn single_file_root() {
        let c = setup();
        build(&c);
        let memo = StatMemo::load(&c.store, &c.ctx).unwrap();
        let one = checksum_tree(&c.ctx.join("Dockerfile"), &filter, Some(&memo)).unwrap();
        assert_eq!(paths(&one), ["Dockerfile"]);
        assert_eq!((one.files, one.memo_hits, one.bytes_hashed), (1, 1, 0));
        let err = checksum_tree(&c.ctx.join("nope"), &filter, None).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn tree_digest_is_order_independent_and_ignores_nothing_else() {
        let e = |p: &str, mode| TreeEntry {
            path: p.into(),
            kind: FileKind::File,
            mode,
            uid: 0,
            gid: 0,
            size: 1,
            link_target: None,
            xattrs: vec![],
            content: Some(blake3::hash(p.as_bytes())),
        };
        let a = vec![e("a", 0o644), e("b", 0o644)];
        let b = vec![e("b", 0o644), e("a", 0o644)];
        assert_eq!(TreeDigest::of(&a), TreeDigest::of(&b));
        let mut t = TreeDigest::new();
        t.add(e("a", 0o644));
        t.add(e("b", 0o644));
        assert_eq!(t.finish(), TreeDigest::of(&a));
        let mut x = a.clone();
        x[0].xattrs = vec![(b"user.k".to_vec(), b"v".to_vec())];
        assert_ne!(TreeDigest::of(&x), TreeDigest::of(&a));
        let mut u = a.clone();
        u[1].uid = 1000;
        assert_ne!(TreeDigest::of(&u), TreeDigest::of(&a));
        assert_ne!(TreeDigest::of(&a[..1]), TreeDigest::of(&a));
        // Length prefixes keep ("ab","") and ("a","b")-style splits apart.
        let mut l1 = e("ab", 0);
        l1.link_target = Some("".into());
        let mut l2 = e("a", 0);
        l2.link_target = Some("b".into());
        l2.content = l1.content;
        assert_ne!(TreeDigest::of(&[l1]), TreeDigest::of(&[l2]));
    }
}
