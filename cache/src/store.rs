//! The store root: layout, versioning, temp files and atomic writes.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::error::{CacheError, IoContext, Result};

/// Newest on-disk layout version this crate reads and writes.
pub const LAYOUT_VERSION: u32 = 1;

/// How old a temp entry must be before [`Store::open`] removes it when its name does not
/// say which process wrote it (a dead writer's entries go whatever their age).
pub const STALE_TMP_AGE: Duration = Duration::from_secs(60 * 60);

/// Prefix of the lock file each process holds in `locks/` while it may write to `tmp/`.
const WRITER_LOCK_PREFIX: &str = "writer-";

pub(crate) const BLOBS_DIR: &str = "blobs/sha256";
/// Made on first use (by a spliced blob's commit), not by [`Store::open`].
pub(crate) const SPLICED_DIR: &str = "blobs/spliced";
pub(crate) const CACHE_DIR: &str = "cache";
pub(crate) const IMAGES_DIR: &str = "images";
pub(crate) const SNAPSHOTS_DIR: &str = "snapshots";
pub(crate) const STATMEMO_DIR: &str = "statmemo";
pub(crate) const TMP_DIR: &str = "tmp";
pub(crate) const CONTAINERS_DIR: &str = "containers";
pub(crate) const VOLUMES_DIR: &str = "volumes";
pub(crate) const LOCKS_DIR: &str = "locks";
/// Made on first use (by [`Store::record_chunks`]), not by [`Store::open`].
pub(crate) const CHUNKS_DIR: &str = "chunks";
/// Made by the builder on first use, not by [`Store::open`].
pub(crate) const CACHE_MOUNTS_DIR: &str = "cache-mounts";
const STORE_JSON: &str = "store.json";

const LAYOUT_DIRS: &[&str] = &[
    BLOBS_DIR,
    CACHE_DIR,
    IMAGES_DIR,
    SNAPSHOTS_DIR,
    STATMEMO_DIR,
    TMP_DIR,
    CONTAINERS_DIR,
    VOLUMES_DIR,
    LOCKS_DIR,
];

/// Areas whose every subdirectory is a tree of its own (a RUN's upper directory or an
/// unpack in `tmp/`, a snapshot, a container's layer, a volume): see [`spread_subdirs`].
const SPREAD_DIRS: &[&str] = &[TMP_DIR, SNAPSHOTS_DIR, CONTAINERS_DIR, VOLUMES_DIR];

#[derive(Serialize, Deserialize)]
struct StoreMeta {
    layout_version: u32,
}

/// kiln's on-disk store rooted at one directory.
///
/// Layout (version [`LAYOUT_VERSION`]):
///
/// ```text
/// <root>/store.json          {"layout_version": 1}
/// <root>/lock                store-wide flock (see Store::lock_shared)
/// <root>/blobs/sha256/<hex>  content-addressed blobs (layers, manifests, configs)
/// <root>/blobs/spliced/<hex>/ a layer blob kept as ranges of other stored files plus
///                            its own bytes (see the `spliced` module; made on first use)
/// <root>/cache/<hex>.json    cache index records, keyed by a sha256 cache key
/// <root>/images/tags.json    tag -> {manifest, config, created}
/// <root>/snapshots/          unpacked filesystem snapshots (owned by the builder)
/// <root>/statmemo/<hex>.json per-build-context stat memo
/// <root>/tmp/                temp entries named <writer>.<...>, renamed into place
///                            (<writer> = <pid>-<start time>, see Store::writer)
/// <root>/containers/         per-RUN container state (owned by the builder)
/// <root>/volumes/            volumes of `kiln run`: NAME/_data and NAME's metadata
///                            (owned by the builder)
/// <root>/chunks/<codec>/<hex>.json  where the compressed chunks of blob <hex> are
///                            (Store::record_chunks; made on first use; keeps no blob)
/// <root>/cache-mounts/       RUN --mount=type=cache directories and their locks
///                            (owned by the builder, made on first use)
/// <root>/locks/              per-name locks (Store::lock_named), one
///                            writer-<writer>.lock per live process (flocked),
///                            gc.lock (Store::lock_gc) and leases/ (Store::lease)
/// <root>/config.toml         settings: [gc] max-used-space, min-free-space
/// ```
///
/// Other crates ask for the areas they own by name ([`Store::snapshots_dir`],
/// [`Store::tmp_dir`], [`Store::cache_mounts_dir`]), never by joining paths on the root.
///
/// Every file this crate writes goes temp file → fsync → rename → fsync of
/// the directory, so a crash at any point leaves either the old or the new
/// file, never a partial one.
///
/// # Locking
///
/// Several kiln processes may share a store. Which lock each operation needs:
///
/// * Blob, cache-record and stat-memo writes need **no** lock beyond a shared
///   one: they are content-addressed or last-writer-wins and land by atomic
///   rename.
/// * Tag updates ([`Store::tag_set`], [`Store::tag_remove`]) are
///   read-modify-write and serialize themselves on an internal tags lock;
///   callers need nothing more.
/// * [`Store::delete_blob`] (`rmi`) must hold [`Store::lock_exclusive`], while
///   builds, pulls and pushes hold [`Store::lock_shared`] for their whole run so
///   nothing they reference disappears under them.
/// * Garbage collection (`kiln prune`, and the collection after a build) does not
///   wait for builds: it holds [`Store::lock_gc`] exclusively for the moment it reads
///   the leases ([`crate::Lease`]) and moves what it deletes out of place, and keeps
///   what a lease names or what is newer than the oldest live lease.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

/// Bytes and file count of one area of the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AreaUsage {
    /// Apparent size in bytes (hard-linked files counted once).
    pub bytes: u64,
    /// Number of non-directory entries.
    pub files: u64,
}

/// Disk usage of the store, per area. See [`Store::disk_usage`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiskUsage {
    /// `blobs/`
    pub blobs: AreaUsage,
    /// `cache/`
    pub cache: AreaUsage,
    /// `images/`
    pub images: AreaUsage,
    /// `snapshots/`
    pub snapshots: AreaUsage,
    /// `statmemo/`
    pub statmemo: AreaUsage,
    /// `tmp/`
    pub tmp: AreaUsage,
    /// `containers/`
    pub containers: AreaUsage,
    /// `volumes/`
    pub volumes: AreaUsage,
    /// `chunks/` (the chunk index)
    pub chunks: AreaUsage,
    /// Everything else (`store.json`, locks, unknown entries).
    pub other: AreaUsage,
}

impl DiskUsage {
    /// Each area with its directory name, in a fixed order.
    pub fn areas(&self) -> [(&'static str, AreaUsage); 10] {
        [
            ("blobs", self.blobs),
            ("cache", self.cache),
            ("images", self.images),
            ("snapshots", self.snapshots),
            ("statmemo", self.statmemo),
            ("tmp", self.tmp),
            ("containers", self.containers),
            ("volumes", self.volumes),
            ("chunks", self.chunks),
            ("other", self.other),
        ]
    }

    /// Sum over all areas.
    pub fn total(&self) -> AreaUsage {
        self.areas()
            .iter()
            .fold(AreaUsage::default(), |acc, (_, a)| AreaUsage {
                bytes: acc.bytes + a.bytes,
                files: acc.files + a.files,
            })
    }

    fn area_mut(&mut self, name: &str) -> &mut AreaUsage {
        match name {
            "blobs" => &mut self.blobs,
            "cache" => &mut self.cache,
            "images" => &mut self.images,
            "snapshots" => &mut self.snapshots,
            "statmemo" => &mut self.statmemo,
            "tmp" => &mut self.tmp,
            "containers" => &mut self.containers,
            "volumes" => &mut self.volumes,
            "chunks" => &mut self.chunks,
            _ => &mut self.other,
        }
    }
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl Store {
    /// The default store root: `$KILN_ROOT` if set; else `/var/lib/kiln`
    /// when running as root (euid 0); else `$XDG_DATA_HOME/kiln` (if set and
    /// absolute) or `~/.local/share/kiln`.
    pub fn default_root() -> Result<PathBuf> {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        if let Some(root) = var("KILN_ROOT") {
            return Ok(PathBuf::from(root));
        }
        if rustix::process::geteuid().is_root() {
            return Ok(PathBuf::from("/var/lib/kiln"));
        }
        let xdg = var("XDG_DATA_HOME").map(PathBuf::from);
        if let Some(xdg) = xdg.filter(|p| p.is_absolute()) {
            return Ok(xdg.join("kiln"));
        }
        match var("HOME") {
            Some(home) => Ok(PathBuf::from(home).join(".local/share/kiln")),
            None => Err(CacheError::NoDefaultRoot),
        }
    }

    /// Open (creating if needed) the store at `root`.
    ///
    /// Refuses a store whose `store.json` announces a layout newer than
    /// [`LAYOUT_VERSION`]. Takes this process's writer lock (see [`Store::writer`]),
    /// then removes what dead writers left in `tmp/`.
    pub fn open(root: impl AsRef<Path>) -> Result<Store> {
        let root = root.as_ref();
        let root = std::path::absolute(root).ctx("resolve store root", root)?;
        fs::create_dir_all(&root).ctx("create store root", &root)?;
        owner_only(&root)?;
        let store = Store { root };

        let meta_path = store.root.join(STORE_JSON);
        let existing = match fs::read(&meta_path) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(CacheError::io("read", &meta_path, e)),
        };
        if let Some(bytes) = &existing {
            let meta: StoreMeta =
                serde_json::from_slice(bytes).map_err(|e| CacheError::CorruptFile {
                    path: meta_path.clone(),
                    reason: format!("not a kiln store.json ({e})"),
                })?;
            if meta.layout_version > LAYOUT_VERSION {
                return Err(CacheError::NewerLayout {
                    path: store.root.clone(),
                    found: meta.layout_version,
                    supported: LAYOUT_VERSION,
                });
            }
        }
        for dir in LAYOUT_DIRS {
            let path = store.root.join(dir);
            fs::create_dir_all(&path).ctx("create directory", &path)?;
            owner_only(&path)?;
        }
        for dir in SPREAD_DIRS {
            spread_subdirs(&store.root.join(dir));
        }
        if existing.is_none() {
            let meta = StoreMeta {
                layout_version: LAYOUT_VERSION,
            };
            let bytes = serde_json::to_vec_pretty(&meta).expect("StoreMeta serializes");
            store.write_atomic(&meta_path, &bytes)?;
        }
        store.hold_writer_lock()?;
        // Housekeeping only: a temp file we may not remove (another user's)
        // must not make the store unusable.
        let _ = store.clean_tmp(STALE_TMP_AGE);
        let _ = store.clean_spliced();
        Ok(store)
    }

    /// The store root (absolute).
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn dir(&self, area: &str) -> PathBuf {
        self.root.join(area)
    }

    /// `snapshots/`: unpacked layers, one directory per diff_id (the builder's).
    pub fn snapshots_dir(&self) -> PathBuf {
        self.dir(SNAPSHOTS_DIR)
    }

    /// `tmp/`: temporary files and directories, on the store's filesystem so that they
    /// can be renamed into place. Entries must be named `<writer>.<anything>` (see
    /// [`Store::writer`]) for [`Store::clean_tmp`] to know whose they are.
    pub fn tmp_dir(&self) -> PathBuf {
        self.dir(TMP_DIR)
    }

    /// `containers/`: one directory per container (`containers/<64-hex id>/`: its
    /// config, state, writable layer and log; the builder's).
    pub fn containers_dir(&self) -> PathBuf {
        self.dir(CONTAINERS_DIR)
    }

    /// `cache-mounts/`: the directories of `RUN --mount=type=cache` and their lock files
    /// (the builder's). Not made by [`Store::open`]: the builder creates it on first use.
    pub fn cache_mounts_dir(&self) -> PathBuf {
        self.dir(CACHE_MOUNTS_DIR)
    }

    /// `images/`: the tag file and its lock (this crate's; for tools that account for
    /// the store's space, e.g. `system df`).
    pub fn images_dir(&self) -> PathBuf {
        self.dir(IMAGES_DIR)
    }

    /// `volumes/`: the volumes of `kiln run`, one directory per volume name (the
    /// builder's).
    pub fn volumes_dir(&self) -> PathBuf {
        self.dir(VOLUMES_DIR)
    }

    /// This process's writer name, `<pid>-<start time>`: every entry it creates in `tmp/`
    /// is named `<writer>.<anything>`. While the process lives it holds an flock on
    /// `locks/writer-<writer>.lock` (taken by [`Store::open`]), which is how
    /// [`Store::clean_tmp`] tells a live writer from a dead one: unlike a pid check, this
    /// cannot be fooled by a reused pid or a writer in another pid namespace.
    pub fn writer() -> &'static str {
        static WRITER: OnceLock<String> = OnceLock::new();
        WRITER.get_or_init(|| format!("{}-{}", std::process::id(), process_start_time()))
    }

    /// Takes (once per store and process) the flock that marks this process's temp
    /// entries as live. The lock is held until the process exits.
    fn hold_writer_lock(&self) -> Result<()> {
        static HELD: Mutex<Vec<(PathBuf, File)>> = Mutex::new(Vec::new());
        let path = self
            .dir(LOCKS_DIR)
            .join(format!("{WRITER_LOCK_PREFIX}{}.lock", Store::writer()));
        let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
        if held.iter().any(|(p, _)| *p == path) {
            return Ok(());
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .ctx("create writer lock", &path)?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .map_err(|e| CacheError::io("lock", &path, e.into()))?;
        held.push((path, file));
        Ok(())
    }

    /// Remove the entries of `tmp/` (files or whole trees) whose writer is dead,
    /// whatever their age, and the lock files dead writers left in `locks/`. A writer is
    /// alive while it holds its lock (see [`Store::writer`]). Entries named by an older
    /// kiln (`<pid>.<...>`) go when that pid is gone; entries whose name names no writer
    /// go once older than `min_age`. Returns the number of `tmp/` entries removed.
    /// [`Store::open`] calls this with [`STALE_TMP_AGE`].
    pub fn clean_tmp(&self, min_age: Duration) -> Result<u64> {
        let tmp = self.dir(TMP_DIR);
        let entries = match fs::read_dir(&tmp) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(CacheError::io("read directory", &tmp, e)),
        };
        let now = SystemTime::now();
        let mut removed = 0;
        // Writer name -> whether it is alive (a dead one's lock is held until the end).
        let mut writers: HashMap<String, Writer> = HashMap::new();
        for entry in entries {
            let entry = entry.ctx("read directory", &tmp)?;
            let path = entry.path();
            let name = entry.file_name();
            let owner = name
                .to_str()
                .and_then(|n| n.split('.').next())
                .unwrap_or("");
            let is_dead = if let Some((pid, _)) = owner.split_once('-') {
                if pid.parse::<u32>().is_err() {
                    None
                } else {
                    if !writers.contains_key(owner) {
                        let w = self.try_writer_lock(owner)?;
                        writers.insert(owner.to_owned(), w);
                    }
                    Some(matches!(writers[owner], Writer::Dead(_)))
                }
            } else {
                owner.parse::<i32>().ok().map(|pid| !pid_alive(pid))
            };
            let remove = match is_dead {
                Some(is_dead) => is_dead,
                None => {
                    let Ok(meta) = fs::symlink_metadata(&path) else {
                        continue; // raced with its owner's rename
                    };
                    meta.modified()
                        .ok()
                        .and_then(|m| now.duration_since(m).ok())
                        .unwrap_or(Duration::ZERO)
                        >= min_age
                }
            };
            if !remove {
                continue;
            }
            // Not std's remove_dir_all: a tree a hostile layer nested deeper than the
            // open-file limit must go too.
            match crate::remove::remove_tree(&path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(CacheError::io("remove stale temp entry", &path, e)),
            }
        }
        // Lock files of dead writers, including those that left nothing in tmp/.
        let locks = self.dir(LOCKS_DIR);
        if let Ok(entries) = fs::read_dir(&locks) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(owner) = name
                    .to_str()
                    .and_then(|n| n.strip_prefix(WRITER_LOCK_PREFIX))
                    .and_then(|n| n.strip_suffix(".lock"))
                else {
                    continue;
                };
                if !writers.contains_key(owner) {
                    let w = self.try_writer_lock(owner)?;
                    writers.insert(owner.to_owned(), w);
                }
                if let Writer::Dead(Some(_)) = writers[owner] {
                    // Unlinked while we hold its flock: no live writer can be using it.
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        Ok(removed)
    }

    /// Tries to take writer `owner`'s lock to learn whether it is alive. A writer
    /// without a lock file is dead (it takes its lock before it writes anything).
    fn try_writer_lock(&self, owner: &str) -> Result<Writer> {
        let path = self
            .dir(LOCKS_DIR)
            .join(format!("{WRITER_LOCK_PREFIX}{owner}.lock"));
        if owner == Store::writer() {
            return Ok(Writer::Alive);
        }
        let file = match OpenOptions::new().write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Writer::Dead(None)),
            Err(e) => return Err(CacheError::io("open writer lock", &path, e)),
        };
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Writer::Dead(Some(file))),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(Writer::Alive),
            Err(e) => Err(CacheError::io("lock", &path, e.into())),
        }
    }

    /// Create a new, empty temp file in `tmp/` named `<writer>.<seq>.tmp`.
    pub(crate) fn create_temp(&self) -> Result<(File, TempPath)> {
        let writer = Store::writer();
        loop {
            let seq = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
            let path = self.dir(TMP_DIR).join(format!("{writer}.{seq}.tmp"));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(f) => return Ok((f, TempPath(Some(path)))),
                // A stale file from an earlier process that had our pid.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(CacheError::io("create temp file", &path, e)),
            }
        }
    }

    /// Write `bytes` to `dest` atomically ([`crate::atomic`]), the temporary file in the
    /// store's `tmp/` (named after this process, so a crashed writer's is found).
    pub(crate) fn write_atomic(&self, dest: &Path, bytes: &[u8]) -> Result<()> {
        let (file, tmp) = self.create_temp()?;
        crate::atomic::finish(file, tmp.path(), dest, |f| f.write_all(bytes)).map_err(|e| match e {
            crate::atomic::AtomicError::Write(e) => CacheError::io("write", tmp.path(), e),
            crate::atomic::AtomicError::Io { op, path, source } => {
                CacheError::io(op, &path, source)
            }
        })
        // `tmp` (dropped) removes the temporary file if it was not renamed.
    }

    /// Summarise bytes per area. Unreadable entries are skipped; hard-linked
    /// files are counted once.
    pub fn disk_usage(&self) -> Result<DiskUsage> {
        let mut usage = DiskUsage::default();
        let mut seen_links = HashSet::new();
        let walk = walkdir::WalkDir::new(&self.root).follow_links(false);
        for entry in walk.into_iter().filter_map(|e| e.ok()) {
            if entry.file_type().is_dir() {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if meta.nlink() > 1 && !seen_links.insert((meta.dev(), meta.ino())) {
                continue;
            }
            let rel = entry
                .path()
                .strip_prefix(&self.root)
                .unwrap_or(entry.path());
            let area = rel
                .components()
                .next()
                .and_then(|c| c.as_os_str().to_str())
                .unwrap_or("");
            // A top-level file (store.json, lock) is "other", not an area.
            let area = if rel.components().count() > 1 {
                area
            } else {
                ""
            };
            let a = usage.area_mut(area);
            a.bytes += meta.len();
            a.files += 1;
        }
        Ok(usage)
    }
}

/// What [`Store::clean_tmp`] learnt of a writer.
enum Writer {
    /// It holds its lock.
    Alive,
    /// It is gone; its lock file (if it left one) is held by us until cleaning ends.
    Dead(Option<File>),
}

/// A temp file path that is removed on drop unless persisted.
#[derive(Debug)]
pub(crate) struct TempPath(Option<PathBuf>);

impl TempPath {
    pub(crate) fn path(&self) -> &Path {
        self.0.as_deref().expect("TempPath used after persist")
    }

    /// Rename into `dest`, without fsync.
    pub(crate) fn rename_to(mut self, dest: &Path) -> Result<()> {
        let tmp = self.0.take().expect("TempPath persisted twice");
        fs::rename(&tmp, dest).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            CacheError::io("rename temp file into", dest, e)
        })
    }

    /// Rename into `dest` and fsync `dest`'s directory.
    pub(crate) fn persist(mut self, dest: &Path) -> Result<()> {
        let tmp = self.0.take().expect("TempPath persisted twice");
        if let Err(e) = fs::rename(&tmp, dest) {
            let _ = fs::remove_file(&tmp);
            return Err(CacheError::io("rename temp file into", dest, e));
        }
        fsync_parent(dest)
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}

/// fsync the directory containing `path`, making a rename or unlink durable.
/// Takes group and other permissions off the directory `dir` (a store created or opened by
/// an older kiln may be 0755). The store holds unpacked layers, whose setuid binaries and
/// device nodes must be out of reach of other local users (CVE-2021-41091's class): the
/// root and every area are 0700, so nothing below them can even be looked up.
fn owner_only(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(dir).ctx("stat", dir)?.mode() & 0o7777;
    if mode & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode & 0o700 | 0o700))
            .ctx("restrict permissions of", dir)?;
    }
    Ok(())
}

/// Marks `dir` as the top of unrelated trees for ext4's Orlov allocator (`chattr +T`,
/// what the flag is for): each directory made in it goes to a block group with free
/// inodes of its own choosing rather than near `dir`, and its files with it. On an
/// ext4 without a journal, allocating an inode steps over every inode of its group
/// deleted in the last minutes (`recently_deleted`): a cold build right after a prune
/// or an `rm -rf` of the store spent 0.7 s of system time there, in its RUNs' shells as
/// much as in kiln, against 0.15 s with the flag (a multi-stage build of 2.6 s). A
/// hint only: a filesystem without such flags refuses it, which is ignored.
fn spread_subdirs(dir: &Path) {
    use rustix::fs::{IFlags, ioctl_getflags, ioctl_setflags};
    let Ok(d) = File::open(dir) else {
        return;
    };
    if let Ok(flags) = ioctl_getflags(&d)
        && !flags.contains(IFlags::TOPDIR)
    {
        let _ = ioctl_setflags(&d, flags | IFlags::TOPDIR);
    }
}

pub(crate) fn fsync_parent(path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx("fsync directory", dir)
}

/// This process's start time in clock ticks after boot (field 22 of `/proc/self/stat`),
/// which with the pid names the process uniquely; the current time in nanoseconds if
/// `/proc` cannot be read.
fn process_start_time() -> u64 {
    let from_proc = fs::read_to_string("/proc/self/stat").ok().and_then(|stat| {
        // The command name (field 2) may hold spaces and parentheses: count after it.
        let rest = &stat[stat.rfind(')')? + 1..];
        rest.split_whitespace().nth(19)?.parse().ok()
    });
    from_proc.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    })
}

/// Whether a process with this pid exists (as far as we can see).
pub(crate) fn pid_alive(pid: i32) -> bool {
    let Some(pid) = rustix::process::Pid::from_raw(pid) else {
        return false;
    };
    match rustix::process::test_kill_process(pid) {
        Ok(()) => true,
        Err(e) => e != rustix::io::Errno::SRCH,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn open_creates_layout_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for d in LAYOUT_DIRS {
            assert!(store.root().join(d).is_dir(), "{d}");
        }
        let meta = fs::read_to_string(store.root().join(STORE_JSON)).unwrap();
        assert!(meta.contains("\"layout_version\": 1"), "{meta}");
        Store::open(dir.path()).unwrap();
        assert!(store.root().is_absolute());
    }

    /// The areas other crates ask for are where earlier kilns put them: the layout is
    /// part of the on-disk format.
    #[test]
    fn areas_other_crates_use_keep_their_paths() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let root = store.root().to_path_buf();
        assert_eq!(store.snapshots_dir(), root.join("snapshots"));
        assert_eq!(store.tmp_dir(), root.join("tmp"));
        assert_eq!(store.cache_mounts_dir(), root.join("cache-mounts"));
        assert_eq!(store.volumes_dir(), root.join("volumes"));
        assert_eq!(store.images_dir(), root.join("images"));
        assert!(store.snapshots_dir().is_dir() && store.tmp_dir().is_dir());
        assert!(
            !store.cache_mounts_dir().exists(),
            "made by the builder on first use"
        );
        // Temp files this crate makes land in tmp_dir, named for their writer.
        let (_, tmp) = store.create_temp().unwrap();
        assert_eq!(tmp.path().parent(), Some(store.tmp_dir().as_path()));
        assert!(
            tmp.path()
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with(&format!("{}.", Store::writer()))
        );
    }

    #[test]
    fn store_is_private_to_its_owner() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o7777;
        Store::open(&root).unwrap();
        assert_eq!(mode(&root), 0o700);
        for area in LAYOUT_DIRS {
            assert_eq!(mode(&root.join(area)), 0o700, "{area}");
        }
        // A store an older kiln left world-readable is tightened when opened.
        for p in [root.clone(), root.join(SNAPSHOTS_DIR)] {
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        }
        Store::open(&root).unwrap();
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&root.join(SNAPSHOTS_DIR)), 0o700);
    }

    /// On a filesystem with inode flags (ext4, this project's CI), the areas of separate
    /// trees spread their subdirectories, also in a store an older kiln made.
    #[test]
    fn tree_areas_spread_their_subdirectories() {
        use rustix::fs::{IFlags, ioctl_getflags, ioctl_setflags};
        let dir = tempfile::tempdir().unwrap();
        let flags = |p: &Path| ioctl_getflags(File::open(p).unwrap());
        if let Err(e) = flags(dir.path()) {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI runs on a filesystem with inode flags: {e}"
            );
            return;
        }
        let store = Store::open(dir.path()).unwrap();
        let topdir = |area: &str| {
            flags(&store.root().join(area))
                .unwrap()
                .contains(IFlags::TOPDIR)
        };
        for area in SPREAD_DIRS {
            assert!(topdir(area), "{area}");
        }
        assert!(!topdir(BLOBS_DIR), "a directory of files is left alone");
        let tmp = File::open(store.tmp_dir()).unwrap();
        let f = ioctl_getflags(&tmp).unwrap();
        ioctl_setflags(&tmp, f - IFlags::TOPDIR).unwrap();
        Store::open(dir.path()).unwrap();
        assert!(topdir(TMP_DIR));
    }

    #[test]
    fn refuses_newer_layout() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(STORE_JSON), r#"{"layout_version": 7}"#).unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(
            err,
            CacheError::NewerLayout {
                found: 7,
                supported: 1,
                ..
            }
        ));
        assert!(
            msg.contains("layout version 7") && msg.contains("upgrade kiln"),
            "{msg}"
        );
        // Nothing of ours was created in the newer store.
        assert!(!dir.path().join(BLOBS_DIR).exists());
    }

    #[test]
    fn refuses_garbage_store_json() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(STORE_JSON), "{").unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        assert!(matches!(err, CacheError::CorruptFile { .. }), "{err}");
        assert!(err.to_string().contains("store.json"));
    }

    #[test]
    fn atomic_write_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let dest = store.root().join("x.json");
        store.write_atomic(&dest, b"one").unwrap();
        store.write_atomic(&dest, b"two").unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"two");
        assert_eq!(fs::read_dir(store.dir(TMP_DIR)).unwrap().count(), 0);
    }

    // Regression (issue 9, finding 10): a kill -9 left gigabytes in tmp/ for an hour.
    #[test]
    fn clean_tmp_removes_dead_writers_entries_whatever_their_age() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tmp = store.dir(TMP_DIR);
        let locks = store.dir(LOCKS_DIR);
        let dead = dead_pid();
        let old = SystemTime::now() - Duration::from_secs(2 * 3600);
        let mk = |name: &str, backdate: bool| {
            let p = tmp.join(name);
            fs::write(&p, b"x").unwrap();
            if backdate {
                File::options()
                    .write(true)
                    .open(&p)
                    .unwrap()
                    .set_modified(old)
                    .unwrap();
            }
            p
        };
        // A dead writer that left its lock file, a file and a directory tree: all fresh.
        let dead_writer = format!("{dead}-4242");
        let dead_lock = locks.join(format!("writer-{dead_writer}.lock"));
        fs::write(&dead_lock, b"").unwrap();
        let dead_file = mk(&format!("{dead_writer}.0.tmp"), false);
        let dead_dir = tmp.join(format!("{dead_writer}.unpack-x"));
        fs::create_dir_all(dead_dir.join("a/b")).unwrap();
        fs::write(dead_dir.join("a/b/f"), b"x").unwrap();
        // Our own pid, but another start time and no lock: a dead process whose pid was
        // reused (by us).
        let reused = mk(&format!("{}-1.0.tmp", std::process::id()), false);
        // A live writer in another process (or pid namespace): holds its lock.
        let live_writer = format!("{dead}-777");
        let live_lock_path = locks.join(format!("writer-{live_writer}.lock"));
        let live_lock = File::create(&live_lock_path).unwrap();
        rustix::fs::flock(&live_lock, rustix::fs::FlockOperation::LockExclusive).unwrap();
        let live_old = mk(&format!("{live_writer}.0.tmp"), true);
        // This process.
        let ours = mk(&format!("{}.0.tmp", Store::writer()), true);
        // Names from an older kiln: `<pid>.<seq>.tmp`.
        let legacy_dead = mk(&format!("{dead}.0.tmp"), false);
        let legacy_live = mk(&format!("{}.0.tmp", std::process::id()), true);
        // No writer in the name: judged by age.
        let junk_old = mk("junk", true);
        let junk_new = mk("junk2", false);

        Store::open(dir.path()).unwrap();
        assert!(!dead_file.exists());
        assert!(!dead_dir.exists());
        assert!(!dead_lock.exists(), "a dead writer's lock file is removed");
        assert!(
            !reused.exists(),
            "a reused pid does not keep a dead writer alive"
        );
        assert!(live_old.exists(), "its writer holds its lock");
        assert!(live_lock_path.exists());
        assert!(ours.exists());
        assert!(
            locks
                .join(format!("writer-{}.lock", Store::writer()))
                .exists()
        );
        assert!(!legacy_dead.exists());
        assert!(legacy_live.exists());
        assert!(!junk_old.exists());
        assert!(junk_new.exists(), "too young to be judged stale");

        drop(live_lock);
        assert_eq!(store.clean_tmp(Duration::ZERO).unwrap(), 2);
        assert!(!live_old.exists(), "its writer died");
        assert!(!live_lock_path.exists());
        assert!(!junk_new.exists());
        assert!(ours.exists());
    }

    #[test]
    fn writer_names_this_process() {
        let w = Store::writer();
        let (pid, start) = w.split_once('-').unwrap();
        assert_eq!(pid, std::process::id().to_string());
        assert!(start.parse::<u64>().unwrap() > 0);
        assert_eq!(w, Store::writer());
    }

    #[test]
    fn disk_usage_per_area() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.put_blob(&[7u8; 1000]).unwrap();
        fs::write(store.dir(SNAPSHOTS_DIR).join("a"), [0u8; 10]).unwrap();
        fs::hard_link(
            store.dir(SNAPSHOTS_DIR).join("a"),
            store.dir(SNAPSHOTS_DIR).join("b"),
        )
        .unwrap();
        let du = store.disk_usage().unwrap();
        assert_eq!(
            du.blobs,
            AreaUsage {
                bytes: 1000,
                files: 1
            }
        );
        assert_eq!(
            du.snapshots,
            AreaUsage {
                bytes: 10,
                files: 1
            }
        );
        assert!(du.other.files >= 1); // store.json
        assert_eq!(du.total().bytes, 1010 + du.other.bytes);
    }

    #[test]
    fn default_root_prefers_kiln_root() {
        // Only the KILN_ROOT branch is deterministic without mutating the
        // process environment (which is unsafe with parallel tests).
        if let Some(v) = std::env::var_os("KILN_ROOT").filter(|v| !v.is_empty()) {
            assert_eq!(Store::default_root().unwrap(), PathBuf::from(v));
        } else if let Ok(root) = Store::default_root() {
            assert!(root.ends_with("kiln"), "{}", root.display());
        }
    }

    /// A pid that belonged to a process that has exited and been reaped.
    pub(crate) fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!pid_alive(pid as i32));
        pid
    }
}
