//! Stat memo: remembers content hashes of build-context files keyed by their
//! stat data, so an unchanged file is never re-read on the next build.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, Metadata};
use std::hash::BuildHasher;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::digest::sha256_of;
use crate::error::{CacheError, IoContext, Result};
use crate::store::{STATMEMO_DIR, Store};

/// A file content hash (BLAKE3, 32 bytes).
pub type ContentHash = blake3::Hash;

const MEMO_VERSION: u32 = 2;
const SHARDS: usize = 16;
/// Files whose ctime is this close to the memo's load time are not memoized
/// (see [`StatMemo::insert`]). Covers the kernel's coarse timestamp clock.
const RACY_MARGIN_NS: i64 = 50_000_000;
/// Margin for filesystems with whole-second timestamps.
const RACY_MARGIN_COARSE_NS: i64 = 2_000_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    ino: u64,
    mode: u32,
    hash: [u8; 32],
}

impl Entry {
    fn from_meta(meta: &Metadata, hash: [u8; 32]) -> Self {
        Entry {
            size: meta.size(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
            ino: meta.ino(),
            mode: meta.mode(),
            hash,
        }
    }

    fn matches(&self, meta: &Metadata) -> bool {
        self.size == meta.size()
            && self.mtime_ns == ns(meta.mtime(), meta.mtime_nsec())
            && self.ctime_ns == ns(meta.ctime(), meta.ctime_nsec())
            && self.ino == meta.ino()
    }
}

fn ns(sec: i64, nsec: i64) -> i64 {
    sec.saturating_mul(1_000_000_000).saturating_add(nsec)
}

/// Magic and version of the binary memo file.
const MAGIC: &[u8; 8] = b"kilnmemo";

/// The memo file: `MAGIC`, `MEMO_VERSION` (u32 LE), the context path (u32 LE length +
/// bytes), the entry count (u64 LE), then per entry: path length (u32 LE), path bytes,
/// size, mtime ns, ctime ns, inode (8 bytes LE each), mode (u32 LE), hash (32 bytes).
/// A binary file parses in a few milliseconds where JSON took tens for a large context,
/// and a no-op build reads it every time.
fn encode(context: &Path, entries: &BTreeMap<String, Entry>) -> Vec<u8> {
    let ctx = context.as_os_str().as_bytes();
    let mut out = Vec::with_capacity(32 + ctx.len() + entries.len() * 96);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&MEMO_VERSION.to_le_bytes());
    out.extend_from_slice(&(ctx.len() as u32).to_le_bytes());
    out.extend_from_slice(ctx);
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for (rel, e) in entries {
        out.extend_from_slice(&(rel.len() as u32).to_le_bytes());
        out.extend_from_slice(rel.as_bytes());
        out.extend_from_slice(&e.size.to_le_bytes());
        out.extend_from_slice(&e.mtime_ns.to_le_bytes());
        out.extend_from_slice(&e.ctime_ns.to_le_bytes());
        out.extend_from_slice(&e.ino.to_le_bytes());
        out.extend_from_slice(&e.mode.to_le_bytes());
        out.extend_from_slice(&e.hash);
    }
    out
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

/// Decodes a memo file written for `context`; `None` when it is not one.
fn decode(bytes: &[u8], context: &Path) -> Option<Vec<(String, Entry)>> {
    let mut r = Reader(bytes);
    if r.take(MAGIC.len())? != MAGIC || r.u32()? != MEMO_VERSION {
        return None;
    }
    let n = r.u32()? as usize;
    if r.take(n)? != context.as_os_str().as_bytes() {
        return None;
    }
    let count = r.u64()?;
    let mut out = Vec::with_capacity(count.min(1 << 24) as usize);
    for _ in 0..count {
        let n = r.u32()? as usize;
        let rel = std::str::from_utf8(r.take(n)?).ok()?.to_owned();
        let entry = Entry {
            size: r.u64()?,
            mtime_ns: r.u64()? as i64,
            ctime_ns: r.u64()? as i64,
            ino: r.u64()?,
            mode: r.u32()?,
            hash: r.take(32)?.try_into().ok()?,
        };
        out.push((rel, entry));
    }
    r.0.is_empty().then_some(out)
}

/// Per-build-context memo of `relative path → (stat data, content hash)`,
/// stored at `statmemo/<sha256 hex of the canonical context path>.memo`.
///
/// Meant to live for one build: [`StatMemo::load`] at the start, share it
/// (it is `Sync`; lookups from many rayon threads take only a read lock on
/// one of 16 shards), [`StatMemo::save`] at the end. A missing, corrupt or
/// foreign memo file loads as an empty memo.
#[derive(Debug)]
pub struct StatMemo {
    store: Store,
    path: PathBuf,
    context: PathBuf,
    loaded_at_ns: i64,
    hasher: RandomState,
    shards: Vec<RwLock<HashMap<String, Entry>>>,
    dirty: AtomicBool,
}

impl StatMemo {
    /// Load the memo for `context_dir` (canonicalized, so the same directory
    /// reached by different paths shares one memo).
    pub fn load(store: &Store, context_dir: impl AsRef<Path>) -> Result<StatMemo> {
        StatMemo::load_at(store, context_dir, SystemTime::now())
    }

    /// [`StatMemo::load`] with the load time given: the clock against which
    /// [`StatMemo::insert`] judges a file too freshly changed to memoize.
    ///
    /// For tests, which would otherwise sleep to let the files they just wrote age
    /// past that window: a load time a few seconds ahead says they are old enough.
    /// Anywhere else, pass the real time (or call [`StatMemo::load`]): a later one
    /// lets a file rewritten within one timestamp tick keep a stale hash.
    pub fn load_at(
        store: &Store,
        context_dir: impl AsRef<Path>,
        loaded_at: SystemTime,
    ) -> Result<StatMemo> {
        let context_dir = context_dir.as_ref();
        let context = fs::canonicalize(context_dir).ctx("resolve build context", context_dir)?;
        let key = sha256_of(context.as_os_str().as_bytes());
        let path = store.dir(STATMEMO_DIR).join(format!("{}.memo", key.hex()));
        let loaded_at_ns = loaded_at
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let mut memo = StatMemo {
            store: store.clone(),
            path,
            context,
            loaded_at_ns,
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            dirty: AtomicBool::new(false),
        };
        let bytes = match fs::read(&memo.path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(memo),
            Err(e) => return Err(CacheError::io("read stat memo", &memo.path, e)),
        };
        // A corrupt, truncated or foreign memo loads as empty: files are hashed again.
        if let Some(entries) = decode(&bytes, &memo.context) {
            for (rel, entry) in entries {
                let idx = memo.shard_index(&rel);
                let shard = memo.shards[idx].get_mut();
                shard.unwrap_or_else(|e| e.into_inner()).insert(rel, entry);
            }
        }
        Ok(memo)
    }

    fn shard_index(&self, rel: &str) -> usize {
        self.hasher.hash_one(rel) as usize % SHARDS
    }

    fn shard(&self, rel: &str) -> &RwLock<HashMap<String, Entry>> {
        &self.shards[self.shard_index(rel)]
    }

    /// The canonical context directory this memo belongs to.
    pub fn context(&self) -> &Path {
        &self.context
    }

    /// The remembered content hash of `rel`, if its size, mtime, ctime and
    /// inode all still match `meta` (an `lstat` of the file).
    pub fn get(&self, rel: &str, meta: &Metadata) -> Option<ContentHash> {
        let shard = self.shard(rel).read().unwrap_or_else(|e| e.into_inner());
        let entry = shard.get(rel)?;
        entry
            .matches(meta)
            .then(|| ContentHash::from_bytes(entry.hash))
    }

    /// Remember that `rel`, with stat data `meta` taken *before* its content
    /// was read, hashes to `hash`. Returns whether it was memoized.
    ///
    /// Files changed at or just before the moment this memo was loaded are
    /// not memoized: a second write within the same timestamp tick would
    /// leave the stat data unchanged, and the memo must never return a stale
    /// hash. They are simply hashed again (and memoized) on the next build.
    pub fn insert(&self, rel: &str, meta: &Metadata, hash: ContentHash) -> bool {
        let ctime_ns = ns(meta.ctime(), meta.ctime_nsec());
        let margin = if meta.ctime_nsec() == 0 && meta.mtime_nsec() == 0 {
            RACY_MARGIN_COARSE_NS
        } else {
            RACY_MARGIN_NS
        };
        if ctime_ns >= self.loaded_at_ns.saturating_sub(margin) {
            return false;
        }
        let entry = Entry::from_meta(meta, *hash.as_bytes());
        let mut shard = self.shard(rel).write().unwrap_or_else(|e| e.into_inner());
        if shard.get(rel) != Some(&entry) {
            shard.insert(rel.to_owned(), entry);
            self.dirty.store(true, Ordering::Relaxed);
        }
        true
    }

    /// Number of remembered files.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Persist the memo atomically if anything was inserted since loading.
    /// Returns whether it was written.
    pub fn save(&self) -> Result<bool> {
        if !self.dirty.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let mut entries = BTreeMap::new();
        for shard in &self.shards {
            let shard = shard.read().unwrap_or_else(|e| e.into_inner());
            for (rel, e) in shard.iter() {
                entries.insert(rel.clone(), *e);
            }
        }
        let bytes = encode(&self.context, &entries);
        self.store.write_atomic(&self.path, &bytes)?;
        // The JSON memo of earlier versions is superseded.
        let _ = fs::remove_file(self.path.with_extension("json"));
        self.dirty.store(false, Ordering::Relaxed);
        Ok(true)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::Duration;

    /// A memo loaded as if the files written so far were old enough to be memoized
    /// (past even the whole-second margin), instead of sleeping until they are.
    fn load_later(store: &Store, ctx: impl AsRef<Path>) -> StatMemo {
        StatMemo::load_at(store, ctx, SystemTime::now() + Duration::from_secs(3)).unwrap()
    }

    #[test]
    fn roundtrip_and_matching() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let ctx = dir.path().join("ctx");
        fs::create_dir(&ctx).unwrap();
        let f = ctx.join("a.txt");
        fs::write(&f, b"hello").unwrap();

        let memo = load_later(&store, &ctx);
        assert!(memo.is_empty());
        assert!(!memo.save().unwrap(), "nothing to save");
        let meta = fs::symlink_metadata(&f).unwrap();
        let h = blake3::hash(b"hello");
        assert_eq!(memo.get("a.txt", &meta), None);
        assert!(memo.insert("a.txt", &meta, h));
        assert_eq!(memo.get("a.txt", &meta), Some(h));
        assert!(memo.save().unwrap());
        assert!(!memo.save().unwrap(), "unchanged since last save");

        // Reload through a different spelling of the same directory.
        let memo = load_later(&store, ctx.join("..").join("ctx"));
        assert_eq!(memo.len(), 1);
        assert_eq!(memo.get("a.txt", &meta), Some(h));
        assert!(memo.insert("a.txt", &meta, h));
        assert!(
            !memo.save().unwrap(),
            "re-inserting the same entry is not a change"
        );

        // Same size, new content: mtime/ctime change, so it's a miss.
        fs::write(&f, b"world").unwrap();
        let meta2 = fs::symlink_metadata(&f).unwrap();
        assert_eq!(memo.get("a.txt", &meta2), None);
        // ...and too fresh to be memoized by a memo loaded now.
        let memo = StatMemo::load(&store, &ctx).unwrap();
        assert!(!memo.insert("a.txt", &meta2, blake3::hash(b"world")));
        assert_eq!(memo.get("a.txt", &meta2), None);
    }

    /// The racily-clean window, judged against the memo's clock: a file changed just
    /// before the load is hashed again next time, an older one is remembered.
    #[test]
    fn files_changed_just_before_the_load_are_not_memoized() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let f = dir.path().join("f");
        fs::write(&f, b"x").unwrap();
        let meta = fs::symlink_metadata(&f).unwrap();
        let changed = UNIX_EPOCH + Duration::new(meta.ctime() as u64, meta.ctime_nsec() as u32);
        let h = blake3::hash(b"x");
        for (after, memoized) in [
            (Duration::ZERO, false),
            (Duration::from_millis(10), false),
            (Duration::from_secs(5), true),
        ] {
            let memo = StatMemo::load_at(&store, dir.path(), changed + after).unwrap();
            assert_eq!(
                memo.insert("f", &meta, h),
                memoized,
                "loaded {after:?} later"
            );
            assert_eq!(memo.get("f", &meta), memoized.then_some(h));
        }
    }

    #[test]
    fn corrupt_memo_loads_empty() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let ctx = dir.path();
        fs::write(ctx.join("f"), b"x").unwrap();
        let memo = load_later(&store, ctx);
        let meta = fs::symlink_metadata(ctx.join("f")).unwrap();
        memo.insert("f", &meta, blake3::hash(b"x"));
        memo.save().unwrap();
        let good = fs::read(&memo.path).unwrap();
        for bad in [&good[..good.len() / 2], b"", b"\xff\xfe garbage"] {
            fs::write(&memo.path, bad).unwrap();
            let m = StatMemo::load(&store, ctx).unwrap();
            assert!(m.is_empty());
        }
        // A memo recorded for another context is ignored too.
        let mut entries = BTreeMap::new();
        for (rel, e) in decode(&good, &memo.context).unwrap() {
            entries.insert(rel, e);
        }
        assert_eq!(entries.len(), 1);
        fs::write(&memo.path, encode(Path::new("/elsewhere"), &entries)).unwrap();
        assert!(StatMemo::load(&store, ctx).unwrap().is_empty());
        // A context that doesn't exist is an error naming it.
        let err = StatMemo::load(&store, ctx.join("nope")).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn usable_from_many_threads() {
        use rayon::prelude::*;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let ctx = dir.path().join("ctx");
        fs::create_dir(&ctx).unwrap();
        for i in 0..200 {
            fs::write(ctx.join(i.to_string()), i.to_string()).unwrap();
        }
        let memo = load_later(&store, &ctx);
        (0..200).into_par_iter().for_each(|i| {
            let rel = i.to_string();
            let meta = fs::symlink_metadata(ctx.join(&rel)).unwrap();
            assert!(memo.insert(&rel, &meta, blake3::hash(rel.as_bytes())));
            assert!(memo.get(&rel, &meta).is_some());
        });
        assert_eq!(memo.len(), 200);
        memo.save().unwrap();
        assert_eq!(StatMemo::load(&store, &ctx).unwrap().len(), 200);
    }
}
