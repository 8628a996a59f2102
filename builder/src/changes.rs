//! What a container changed: `kiln diff` and the SIZE column of `kiln ps -s`, read from
//! its writable layer (an overlayfs upper dir) as Docker's overlay2 driver reads it.
//!
//! In an upper dir a deleted path is a 0/0 character device (a whiteout) and a directory
//! whose lower contents are hidden carries `trusted.overlay.opaque=y` (or `user.`, for a
//! `userxattr` mount). Both are reported as `D`, as `docker diff` does; any other entry
//! is `A` when the image (its lower snapshots, seen through [`LayeredFs`]) has nothing at
//! its path and `C` otherwise, and the parents of an added or deleted path are `C`.
//! A directory copied up only because something below it changed, with the same size,
//! mode and mtime as in the image, is not reported itself (Docker's rule).

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use kiln_fs::{LayeredFs, SourceFs};

/// Why the changes of a writable layer could not be read.
#[derive(Debug, thiserror::Error)]
#[error("reading the writable layer {}: {source}", .path.display())]
pub struct ChangesError {
    /// The entry that could not be read.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: io::Error,
}

/// Result of this module.
pub type Result<T, E = ChangesError> = std::result::Result<T, E>;

/// How a path changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// `A`: not in the image.
    Added,
    /// `C`: in the image, changed (or a parent of a change).
    Changed,
    /// `D`: deleted (a whiteout) or replaced wholesale (an opaque directory).
    Deleted,
}

impl ChangeKind {
    /// `A`, `C` or `D`.
    pub fn letter(self) -> char {
        match self {
            ChangeKind::Added => 'A',
            ChangeKind::Changed => 'C',
            ChangeKind::Deleted => 'D',
        }
    }
}

/// One line of `docker diff`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// What happened.
    pub kind: ChangeKind,
    /// The absolute path in the container, e.g. `/etc/passwd`.
    pub path: String,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind.letter(), self.path)
    }
}

/// Whether `meta` is an overlayfs whiteout (a 0/0 character device).
pub fn is_whiteout(meta: &std::fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// Whether directory `dir` of an upper dir is opaque.
pub fn is_opaque_dir(dir: &Path) -> bool {
    ["trusted.overlay.opaque", "user.overlay.opaque"]
        .iter()
        .any(|a| matches!(xattr::get(dir, a), Ok(Some(v)) if v == b"y"))
}

fn walk_err(upper: &Path, e: walkdir::Error) -> ChangesError {
    let path = e.path().unwrap_or(upper).to_path_buf();
    let source = e
        .into_io_error()
        .unwrap_or_else(|| io::Error::other("filesystem loop"));
    ChangesError { path, source }
}

/// Whether container path `path` (absolute) is `excluded` or below one of them.
fn is_excluded(path: &Path, excluded: &[PathBuf]) -> bool {
    excluded.iter().any(|e| path.starts_with(e))
}

/// The changes of writable layer `upper` over the image `lower`, in `docker diff`'s
/// order (the upper dir walked in name order, a parent before its children). Paths in
/// `exclude` (absolute container paths, e.g. the mount points the runtime had to create)
/// and below them are left out; paths in `hide` (directories the runtime made or copied
/// up only to hold such mount points) are not reported themselves, but what is below
/// them is.
pub fn diff(
    upper: &Path,
    lower: &LayeredFs,
    exclude: &[PathBuf],
    hide: &[PathBuf],
) -> Result<Vec<Change>> {
    let mut changes = Vec::new();
    let mut changed_dirs: HashSet<PathBuf> = HashSet::new();
    let walk = walkdir::WalkDir::new(upper)
        .min_depth(1)
        .follow_links(false)
        .sort_by_file_name();
    let mut it = walk.into_iter();
    while let Some(entry) = it.next() {
        let entry = entry.map_err(|e| walk_err(upper, e))?;
        let rel = entry.path().strip_prefix(upper).unwrap_or(entry.path());
        let path = Path::new("/").join(rel);
        if is_excluded(&path, exclude) {
            if entry.file_type().is_dir() {
                it.skip_current_dir();
            }
            continue;
        }
        let meta = entry.metadata().map_err(|e| walk_err(upper, e))?;
        if meta.is_dir() && hide.contains(&path) {
            continue;
        }
        let deleted = is_whiteout(&meta) || (meta.is_dir() && is_opaque_dir(entry.path()));
        let kind = if deleted {
            ChangeKind::Deleted
        } else {
            match lower.lstat(&rel.to_string_lossy()) {
                None => ChangeKind::Added,
                Some(old) => {
                    let same_dir = old.meta.is_dir()
                        && meta.is_dir()
                        && old.meta.len() == meta.len()
                        && old.meta.mode() == meta.mode()
                        && old.meta.mtime() == meta.mtime()
                        && old.meta.mtime_nsec() == meta.mtime_nsec();
                    if same_dir {
                        // Only there because something below changed.
                        continue;
                    }
                    ChangeKind::Changed
                }
            }
        };
        if meta.is_dir() {
            changed_dirs.insert(path.clone());
        }
        if kind != ChangeKind::Changed {
            if let Some(parent) = path.parent().filter(|p| *p != Path::new("/")) {
                if changed_dirs.insert(parent.to_path_buf()) {
                    changes.push(Change {
                        kind: ChangeKind::Changed,
                        path: parent.to_string_lossy().into_owned(),
                    });
                }
            }
        }
        changes.push(Change {
            kind,
            path: path.to_string_lossy().into_owned(),
        });
    }
    Ok(changes)
}

/// Bytes a tree holds as Docker counts a container's size: every non-directory entry's
/// size (a symlink's is its target's length), each hard-linked inode once.
pub fn size(dir: &Path) -> Result<u64> {
    let mut seen = HashSet::new();
    size_into(dir, &mut seen)
}

/// [`size`] over several trees, an inode shared between them counted once.
fn size_into(dir: &Path, seen: &mut HashSet<(u64, u64)>) -> Result<u64> {
    let mut total = 0;
    for entry in walkdir::WalkDir::new(dir).follow_links(false) {
        let entry = entry.map_err(|e| walk_err(dir, e))?;
        if entry.file_type().is_dir() {
            continue;
        }
        let meta = entry.metadata().map_err(|e| walk_err(dir, e))?;
        if meta.len() == 0 || !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        total += meta.len();
    }
    Ok(total)
}

/// An image's unpacked size as Docker reports it (its layers' contents, each layer
/// counted on its own): what `ps -s` adds to a container's size for its virtual size.
pub fn image_size(snapshots: &[PathBuf]) -> Result<u64> {
    snapshots.iter().map(|s| size(s)).sum()
}

/// A container's size and virtual size, as `ps -s` shows them: the bytes of its writable
/// layer `upper`, and those plus its image's unpacked size (the snapshots of `layers`,
/// those not unpacked counted as empty).
pub fn container_size(
    store: &kiln_cache::Store,
    upper: &Path,
    layers: &[crate::snapshots::LayerRef],
) -> Result<(u64, u64)> {
    let size = size(upper)?;
    let snapshots = crate::snapshots::Snapshots::new(store);
    let dirs: Vec<PathBuf> = layers
        .iter()
        .map(|l| snapshots.path(&l.diff_id))
        .filter(|p| p.is_dir())
        .collect();
    Ok((size, size + image_size(&dirs)?))
}

/// `3MB (virtual 55MB)`: the SIZE column of `docker ps -s`.
pub fn ps_size(size: u64, virtual_size: u64) -> String {
    format!(
        "{} (virtual {})",
        human_size(size),
        human_size(virtual_size)
    )
}

/// A size as Docker prints it (go-units' `HumanSize`): decimal units (`B`, `kB`, `MB`,
/// `GB`, ...), four significant digits, no space: `0B`, `512B`, `1.5kB`, `55.23MB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 9] = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    format!("{}{}", format_g4(v), UNITS[unit])
}

/// Go's `%.4g` for `0 <= v < 1000`: four significant digits, trailing zeros dropped.
fn format_g4(v: f64) -> String {
    if v == 0.0 {
        return "0".to_string();
    }
    let digits_before = (v.log10().floor() as i32 + 1).max(1);
    let decimals = (4 - digits_before).max(0) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn human_size_is_dockers() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(512), "512B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1000), "1kB");
        assert_eq!(human_size(1500), "1.5kB");
        assert_eq!(human_size(3_000_000), "3MB");
        assert_eq!(human_size(55_234_567), "55.23MB");
        assert_eq!(human_size(4_096), "4.096kB");
        assert_eq!(human_size(123_456_789_012), "123.5GB");
        assert_eq!(ps_size(3_000_000, 55_000_000), "3MB (virtual 55MB)");
    }

    #[test]
    fn size_counts_files_and_symlinks_each_inode_once() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("a/b")).unwrap();
        fs::write(d.path().join("a/f"), vec![1u8; 1000]).unwrap();
        fs::hard_link(d.path().join("a/f"), d.path().join("a/b/g")).unwrap();
        fs::write(d.path().join("empty"), b"").unwrap();
        std::os::unix::fs::symlink("a/f", d.path().join("l")).unwrap();
        assert_eq!(size(d.path()).unwrap(), 1000 + 3);
        assert_eq!(
            image_size(&[d.path().join("a"), d.path().join("a")]).unwrap(),
            2000,
            "each layer counted on its own"
        );
    }

    /// Needs root: whiteouts are character devices.
    fn whiteout(path: &Path) -> bool {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            path,
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::empty(),
            0,
        )
        .is_ok()
    }

    #[test]
    fn diff_reports_added_changed_and_deleted_as_docker() {
        let lower = tempfile::tempdir().unwrap();
        let l = lower.path();
        fs::create_dir_all(l.join("etc/app")).unwrap();
        fs::create_dir_all(l.join("usr/bin")).unwrap();
        fs::write(l.join("etc/passwd"), b"root").unwrap();
        fs::write(l.join("etc/app/conf"), b"c").unwrap();
        fs::write(l.join("usr/bin/tool"), b"t").unwrap();
        fs::create_dir_all(l.join("var/cache")).unwrap();
        fs::write(l.join("var/cache/x"), b"x").unwrap();
        let image = LayeredFs::new(vec![l.to_path_buf()], "image");

        let upper = tempfile::tempdir().unwrap();
        let u = upper.path();
        // A new file in a new directory, a changed file, a new file in an image dir.
        fs::create_dir_all(u.join("data/sub")).unwrap();
        fs::write(u.join("data/sub/new"), b"n").unwrap();
        fs::create_dir_all(u.join("etc")).unwrap();
        fs::write(u.join("etc/passwd"), b"root\nx").unwrap();
        fs::create_dir_all(u.join("usr/bin")).unwrap();
        fs::write(u.join("usr/bin/added"), b"a").unwrap();
        // /usr was copied up with the image's metadata: not reported (/usr/bin is, its
        // mtime differs; Docker names only the parents of added and deleted paths).
        let usr_meta = fs::metadata(l.join("usr")).unwrap();
        fs::set_permissions(u.join("usr"), usr_meta.permissions()).unwrap();
        let t = filetime::FileTime::from_last_modification_time(&usr_meta);
        filetime::set_file_mtime(u.join("usr"), t).unwrap();
        // Excluded: a mount point the runtime created.
        fs::create_dir_all(u.join("proc/sys")).unwrap();
        let root = rustix::process::geteuid().is_root();
        if root {
            fs::create_dir_all(u.join("etc/app")).unwrap();
            assert!(whiteout(&u.join("etc/app/conf")));
            fs::create_dir_all(u.join("var/cache")).unwrap();
            xattr::set(u.join("var/cache"), "trusted.overlay.opaque", b"y").unwrap();
            fs::write(u.join("var/cache/fresh"), b"f").unwrap();
        }

        // Directories the container wrote to (their mtimes differ from the image's; set
        // here, as two directories written within a clock tick share their mtime).
        for dir in ["etc", "etc/app", "usr/bin", "var"] {
            if u.join(dir).is_dir() {
                filetime::set_file_mtime(u.join(dir), filetime::FileTime::from_unix_time(1000, 0))
                    .unwrap();
            }
        }
        let got: Vec<String> = diff(u, &image, &[PathBuf::from("/proc")], &[])
            .unwrap()
            .iter()
            .map(|c| c.to_string())
            .collect();
        let mut want = vec!["A /data", "A /data/sub", "A /data/sub/new", "C /etc"];
        if root {
            want.extend(["C /etc/app", "D /etc/app/conf"]);
        }
        want.extend(["C /etc/passwd", "C /usr/bin", "A /usr/bin/added"]);
        if root {
            want.extend(["C /var", "D /var/cache", "A /var/cache/fresh"]);
        }
        assert_eq!(got, want);
    }
}
