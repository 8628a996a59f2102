//! Garbage collection: the store's budget (`config.toml`), which cache records go first,
//! and a deletion order that a kill at any point cannot turn into a broken store.
//!
//! The collector works on a [`GcUniverse`]: the cache records with the blobs and
//! snapshots they reference ([`GcRef`]), the size of each of those, and what is pinned
//! (tagged images, containers, leases, anything newer than the oldest live lease). It is
//! built by the builder, which knows what records and images hold; [`plan`] decides, and
//! [`Store::trash`] carries the plan out: every record first, then what no remaining
//! record needs, each renamed into `tmp/` (one atomic step; a dead collector's `tmp/`
//! entries are removed by the next [`Store::open`]), all under [`Store::lock_gc`], and
//! deleted for good once the lock is released.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crate::error::{CacheError, IoContext, Result};
use crate::store::{CACHE_DIR, Store};

/// `max-used-space`'s ceiling when not configured: 100 GB.
pub const DEFAULT_MAX_USED_CAP: u64 = 100 * GB;
/// The default reserve: 10% of the disk, at most this.
pub const DEFAULT_RESERVED_CAP: u64 = 10 * GB;
const GB: u64 = 1 << 30;
static TRASH_SEQ: AtomicU64 = AtomicU64::new(0);

/// A size as given in flags and `config.toml`: bytes (`10GB`, `512MB`, `1024`) or a
/// share of the disk (`20%`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SizeSpec {
    /// So many bytes.
    Bytes(u64),
    /// A percentage of the store's filesystem.
    Percent(f64),
}

impl SizeSpec {
    /// Parses `10GB`, `1.5G`, `512MiB`, `100k`, `1024`, `20%`. Units are binary, as in
    /// Docker's flags (`1KB` = 1024 bytes).
    pub fn parse(s: &str) -> Result<SizeSpec> {
        let bad = |reason| CacheError::InvalidArgument {
            what: "size",
            value: s.to_owned(),
            reason,
        };
        let t = s.trim();
        if let Some(p) = t.strip_suffix('%') {
            let v: f64 = p.trim().parse().map_err(|_| bad("not a percentage"))?;
            if !(0.0..=100.0).contains(&v) {
                return Err(bad("a percentage is between 0 and 100"));
            }
            return Ok(SizeSpec::Percent(v));
        }
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let v: f64 = num
            .parse()
            .map_err(|_| bad("expected a number with an optional unit (10GB, 512MB) or 20%"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            "t" | "tb" | "tib" => 1 << 40,
            _ => return Err(bad("unknown unit (use B, KB, MB, GB, TB or %)")),
        };
        Ok(SizeSpec::Bytes((v * mult as f64) as u64))
    }

    /// In bytes, for a filesystem of `disk_total` bytes.
    pub fn bytes(&self, disk_total: u64) -> u64 {
        match *self {
            SizeSpec::Bytes(b) => b,
            SizeSpec::Percent(p) => (disk_total as f64 * p / 100.0) as u64,
        }
    }
}

impl fmt::Display for SizeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SizeSpec::Bytes(b) => write!(f, "{b}B"),
            SizeSpec::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// The `[gc]` table of `$KILN_ROOT/config.toml`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GcConfig {
    /// `max-used-space`: the store's size above which a build ends with a collection.
    pub max_used_space: Option<SizeSpec>,
    /// `min-free-space`: the free space below which a build ends with a collection.
    pub min_free_space: Option<SizeSpec>,
    /// `reserved-space`: the build cache a shortage of free space never shrinks the
    /// store below (BuildKit's `reservedSpace`): other files filling the disk do not
    /// wipe the cache at every build.
    pub reserved_space: Option<SizeSpec>,
}

/// The store's filesystem: its size and the space left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskSpace {
    /// Bytes of the filesystem.
    pub total: u64,
    /// Bytes an unprivileged process could still write.
    pub available: u64,
}

/// What the collector must keep to: both in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// The store may use at most this much.
    pub max_used: u64,
    /// The filesystem must keep at least this much free.
    pub min_free: u64,
    /// Collecting for free space stops when the store is down to this much.
    pub reserved: u64,
}

impl Budget {
    /// The budget from a config (or flags), with the defaults for what it leaves out:
    /// `max-used-space` min(80% of the disk, 100 GB), `min-free-space` 10% of the disk,
    /// `reserved-space` min(10% of the disk, 10 GB) (BuildKit's default).
    pub fn new(cfg: &GcConfig, disk: DiskSpace) -> Budget {
        Budget {
            max_used: cfg.max_used_space.map_or_else(
                || (disk.total / 10 * 8).min(DEFAULT_MAX_USED_CAP),
                |s| s.bytes(disk.total),
            ),
            min_free: cfg
                .min_free_space
                .map_or(disk.total / 10, |s| s.bytes(disk.total)),
            reserved: cfg.reserved_space.map_or_else(
                || (disk.total / 10).min(DEFAULT_RESERVED_CAP),
                |s| s.bytes(disk.total),
            ),
        }
    }

    /// Bytes to free for a store of `used` bytes on `disk` to be within budget (0: it is):
    /// down to `max_used`, and for free space down to `reserved` at most.
    pub fn excess(&self, used: u64, disk: DiskSpace) -> u64 {
        let for_free_space = self
            .min_free
            .saturating_sub(disk.available)
            .min(used.saturating_sub(self.reserved));
        used.saturating_sub(self.max_used).max(for_free_space)
    }
}

impl Store {
    /// Size and free space of the store's filesystem.
    pub fn disk_space(&self) -> Result<DiskSpace> {
        let st = rustix::fs::statvfs(self.root())
            .map_err(|e| CacheError::io("statvfs", self.root(), e.into()))?;
        Ok(DiskSpace {
            total: st.f_blocks.saturating_mul(st.f_frsize),
            available: st.f_bavail.saturating_mul(st.f_frsize),
        })
    }

    /// Where the cache record of `key` is (for its size and last use).
    pub fn cache_record_path(&self, key: &str) -> Result<PathBuf> {
        let d = crate::Digest::parse(key)?;
        Ok(self.dir(CACHE_DIR).join(format!("{}.json", d.hex())))
    }

    /// `blobs/sha256/`: the blob area, for the collector's listing.
    pub fn blobs_dir(&self) -> PathBuf {
        self.dir(crate::store::BLOBS_DIR)
    }

    /// Moves `path` (a cache record, blob or snapshot) out of place into `tmp/`, in one
    /// rename; `None` if it is already gone. Delete the result with
    /// [`crate::remove_tree`] once the GC lock is released; if the process dies first,
    /// the next [`Store::open`] removes it. Not made durable here (one fsync per entry
    /// would hold the GC lock for seconds per thousand): call [`Store::sync_dirs`] on
    /// the directories concerned after each batch whose order matters.
    pub fn trash(&self, path: &Path) -> Result<Option<PathBuf>> {
        let seq = TRASH_SEQ.fetch_add(1, Ordering::Relaxed);
        let dest = self.tmp_dir().join(format!("{}.gc-{seq}", Store::writer()));
        match fs::rename(path, &dest) {
            Ok(()) => Ok(Some(dest)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CacheError::io("move to the trash", path, e)),
        }
    }

    /// fsyncs directories (after renames out of them), and `tmp/`.
    pub fn sync_dirs(&self, dirs: &[&Path]) -> Result<()> {
        for d in dirs.iter().copied().chain([self.tmp_dir().as_path()]) {
            match fs::File::open(d) {
                // An area made on first use (`blobs/spliced`) that is not there yet.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                f => f.and_then(|f| f.sync_all()).ctx("fsync directory", d)?,
            }
        }
        Ok(())
    }
}

/// The store's modification time of `path`, `None` if it is gone.
pub fn modified(path: &Path) -> Result<Option<SystemTime>> {
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m.modified().ctx("read the time of", path)?)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CacheError::io("stat", path, e)),
    }
}

/// Something a cache record references: a blob or a snapshot, by digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GcRef {
    /// `blobs/sha256/<hex>`.
    Blob(String),
    /// The unpacked snapshot of a diff_id.
    Snapshot(String),
}

impl fmt::Display for GcRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GcRef::Blob(d) => write!(f, "blob {d}"),
            GcRef::Snapshot(d) => write!(f, "snapshot {d}"),
        }
    }
}

/// A cache record as the collector sees it.
#[derive(Clone, Debug)]
pub struct GcRecord {
    /// Its key (`sha256:...`).
    pub key: String,
    /// When it was last used (written or hit).
    pub last_used: SystemTime,
    /// Bytes of the record file.
    pub size: u64,
    /// What it references.
    pub refs: Vec<GcRef>,
    /// The step that made it, if known.
    pub description: Option<String>,
}

/// What the collector knows of the store.
#[derive(Clone, Debug, Default)]
pub struct GcUniverse {
    /// Every cache record.
    pub records: Vec<GcRecord>,
    /// Every blob and snapshot present, with its size in bytes.
    pub sizes: BTreeMap<GcRef, u64>,
    /// Kept whatever the policy (with why): tagged images' content, containers' layers,
    /// leased or fresh content.
    pub pinned: HashMap<GcRef, String>,
    /// Records kept whatever the policy (leased or used by a running build), with why.
    pub pinned_records: HashMap<String, String>,
}

/// Why something goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GcReason {
    /// Nothing references it.
    Unreferenced,
    /// Its last record went.
    LastReferenceGone,
    /// `kiln prune` without a budget: all build cache goes.
    Pruned,
    /// Last used before the `until` filter's time.
    OlderThan(Duration),
    /// The store is over budget and this was least recently used.
    OverBudget,
}

impl fmt::Display for GcReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GcReason::Unreferenced => f.write_str("not referenced by any cache record or image"),
            GcReason::LastReferenceGone => f.write_str("only pruned cache records used it"),
            GcReason::Pruned => f.write_str("build cache"),
            GcReason::OlderThan(d) => {
                write!(f, "unused for more than {}", humantime::format_duration(*d))
            }
            GcReason::OverBudget => f.write_str("least recently used, over budget"),
        }
    }
}

/// What a collection is asked to do.
#[derive(Clone, Debug, Default)]
pub struct GcPolicy {
    /// Only records unused for longer than this.
    pub until: Option<Duration>,
    /// Stop once this many bytes are freed (a budget); `None`: every eligible record.
    pub free_at_least: Option<u64>,
}

/// What goes, in the order it must go: records first, then what they alone used.
#[derive(Clone, Debug, Default)]
pub struct GcPlan {
    /// Records to remove, with their size (the record and what only it used), why,
    /// and their description.
    pub records: Vec<(GcRecord, u64, GcReason)>,
    /// Blobs and snapshots to remove, with their size and why.
    pub refs: Vec<(GcRef, u64, GcReason)>,
    /// Bytes freed.
    pub freed: u64,
}

/// Decides what a collection removes: unreferenced blobs and snapshots always; then the
/// eligible records (not pinned; older than `until` if given), least recently used
/// first and, among records last used at the same time, larger first, until
/// `free_at_least` bytes are freed (all of them without a budget). A blob or snapshot
/// goes with the last record referencing it, unless pinned.
pub fn plan(u: &GcUniverse, policy: &GcPolicy, now: SystemTime) -> GcPlan {
    let mut count: HashMap<&GcRef, usize> = HashMap::new();
    for r in &u.records {
        for x in dedup(&r.refs) {
            *count.entry(x).or_default() += 1;
        }
    }
    let size_of = |x: &GcRef| u.sizes.get(x).copied().unwrap_or(0);
    let mut out = GcPlan::default();
    let enough = |out: &GcPlan| policy.free_at_least.is_some_and(|n| out.freed >= n);
    for (x, &size) in &u.sizes {
        if !count.contains_key(x) && !u.pinned.contains_key(x) {
            out.refs.push((x.clone(), size, GcReason::Unreferenced));
            out.freed += size;
        }
    }
    if enough(&out) {
        return out;
    }
    let private = |r: &GcRecord, count: &HashMap<&GcRef, usize>| -> u64 {
        dedup(&r.refs)
            .filter(|x| count.get(x) == Some(&1) && !u.pinned.contains_key(*x))
            .map(size_of)
            .sum::<u64>()
            + r.size
    };
    let mut candidates: Vec<(&GcRecord, u64)> = u
        .records
        .iter()
        .filter(|r| !u.pinned_records.contains_key(&r.key))
        .filter(|r| {
            policy
                .until
                .is_none_or(|d| now.duration_since(r.last_used).is_ok_and(|age| age > d))
        })
        .map(|r| (r, private(r, &count)))
        .collect();
    candidates.sort_by(|(a, sa), (b, sb)| {
        a.last_used
            .cmp(&b.last_used)
            .then(sb.cmp(sa))
            .then(a.key.cmp(&b.key))
    });
    let reason = match (policy.free_at_least, policy.until) {
        (Some(_), _) => GcReason::OverBudget,
        (None, Some(d)) => GcReason::OlderThan(d),
        (None, None) => GcReason::Pruned,
    };
    for (r, _) in candidates {
        if enough(&out) {
            break;
        }
        let mut freed = r.size;
        for x in dedup(&r.refs) {
            let c = count.get_mut(x).expect("counted");
            *c -= 1;
            if *c == 0 && !u.pinned.contains_key(x) && u.sizes.contains_key(x) {
                let size = size_of(x);
                freed += size;
                out.refs
                    .push((x.clone(), size, GcReason::LastReferenceGone));
            }
        }
        out.freed += freed;
        out.records.push((r.clone(), freed, reason.clone()));
    }
    out
}

fn dedup(refs: &[GcRef]) -> impl Iterator<Item = &GcRef> {
    let mut seen = HashSet::new();
    refs.iter().filter(move |x| seen.insert(*x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_like_dockers_flags() {
        assert_eq!(SizeSpec::parse("10GB").unwrap(), SizeSpec::Bytes(10 << 30));
        assert_eq!(
            SizeSpec::parse("512mb").unwrap(),
            SizeSpec::Bytes(512 << 20)
        );
        assert_eq!(SizeSpec::parse("1.5G").unwrap(), SizeSpec::Bytes(3 << 29));
        assert_eq!(SizeSpec::parse("1024").unwrap(), SizeSpec::Bytes(1024));
        assert_eq!(SizeSpec::parse("100KiB").unwrap(), SizeSpec::Bytes(102400));
        assert_eq!(SizeSpec::parse("20%").unwrap(), SizeSpec::Percent(20.0));
        assert_eq!(SizeSpec::Percent(20.0).bytes(1000), 200);
        for bad in ["", "GB", "10XB", "120%", "-1", "ten"] {
            let e = SizeSpec::parse(bad).unwrap_err().to_string();
            assert!(e.contains("invalid size"), "{bad}: {e}");
        }
    }

    #[test]
    fn budget_defaults_and_excess() {
        let disk = DiskSpace {
            total: 1000 * GB,
            available: 50 * GB,
        };
        let b = Budget::new(&GcConfig::default(), disk);
        assert_eq!(b.max_used, DEFAULT_MAX_USED_CAP, "80% capped at 100GB");
        assert_eq!(b.min_free, 100 * GB);
        assert_eq!(b.reserved, 10 * GB, "10% capped at 10GB");
        assert_eq!(
            b.excess(100 * GB, disk),
            50 * GB,
            "free space short by 50GB"
        );
        assert_eq!(
            b.excess(30 * GB, disk),
            20 * GB,
            "free space short by 50GB, but the store keeps its reserved 10GB"
        );
        assert_eq!(b.excess(5 * GB, disk), 0, "within the reserve: kept");
        let small = DiskSpace {
            total: 10 * GB,
            available: 5 * GB,
        };
        let b = Budget::new(&GcConfig::default(), small);
        assert_eq!(b.max_used, 8 * GB);
        assert_eq!(b.excess(9 * GB, small), GB);
        assert_eq!(b.excess(GB, small), 0);
        // The reserve bounds only the collection for free space, not max-used-space.
        let cfg = GcConfig {
            max_used_space: Some(SizeSpec::Bytes(GB)),
            reserved_space: Some(SizeSpec::Bytes(4 * GB)),
            ..GcConfig::default()
        };
        let b = Budget::new(&cfg, small);
        assert_eq!(b.excess(3 * GB, small), 2 * GB);
    }

    fn rec(key: &str, age: u64, refs: &[&str]) -> GcRecord {
        GcRecord {
            key: key.into(),
            last_used: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 - age),
            size: 1,
            refs: refs.iter().map(|r| GcRef::Blob((*r).into())).collect(),
            description: None,
        }
    }

    fn universe() -> GcUniverse {
        let mut u = GcUniverse {
            records: vec![
                rec("old", 100, &["base", "a"]),
                rec("older-small", 200, &["base", "s"]),
                rec("older-big", 200, &["base", "b"]),
                rec("new", 1, &["base", "n"]),
            ],
            ..Default::default()
        };
        for (r, s) in [
            ("base", 1000),
            ("a", 10),
            ("s", 5),
            ("b", 50),
            ("n", 7),
            ("orphan", 3),
        ] {
            u.sizes.insert(GcRef::Blob(r.into()), s);
        }
        u.pinned
            .insert(GcRef::Blob("base".into()), "tagged image".into());
        u
    }

    const NOW: Duration = Duration::from_secs(1_000_000);

    #[test]
    fn lru_first_then_larger_until_the_budget_is_met() {
        let u = universe();
        let now = SystemTime::UNIX_EPOCH + NOW;
        let p = plan(
            &u,
            &GcPolicy {
                free_at_least: Some(50),
                ..Default::default()
            },
            now,
        );
        let keys: Vec<&str> = p.records.iter().map(|(r, _, _)| r.key.as_str()).collect();
        assert_eq!(keys, ["older-big"], "orphan 3 + big 51 >= 50");
        assert_eq!(p.freed, 3 + 51);
        assert_eq!(
            p.refs[0],
            (GcRef::Blob("orphan".into()), 3, GcReason::Unreferenced)
        );
        assert!(
            p.refs
                .iter()
                .all(|(r, _, _)| *r != GcRef::Blob("base".into()))
        );
        let p = plan(
            &u,
            &GcPolicy {
                free_at_least: Some(60),
                ..Default::default()
            },
            now,
        );
        let keys: Vec<&str> = p.records.iter().map(|(r, _, _)| r.key.as_str()).collect();
        assert_eq!(keys, ["older-big", "older-small"]);
    }

    #[test]
    fn until_and_pins_limit_what_goes() {
        let mut u = universe();
        u.pinned_records
            .insert("older-small".into(), "leased by a build".into());
        let now = SystemTime::UNIX_EPOCH + NOW;
        let p = plan(
            &u,
            &GcPolicy {
                until: Some(Duration::from_secs(50)),
                ..Default::default()
            },
            now,
        );
        let mut keys: Vec<&str> = p.records.iter().map(|(r, _, _)| r.key.as_str()).collect();
        keys.sort();
        assert_eq!(keys, ["old", "older-big"]);
        assert!(
            p.records
                .iter()
                .all(|(_, _, why)| *why == GcReason::OlderThan(Duration::from_secs(50)))
        );
        // A blob two records share goes only with the second.
        let mut u = universe();
        u.records.push(rec("twin", 1, &["a"]));
        let p = plan(&u, &GcPolicy::default(), now);
        assert_eq!(p.records.len(), 5);
        let a = p
            .refs
            .iter()
            .filter(|(r, _, _)| *r == GcRef::Blob("a".into()))
            .count();
        assert_eq!(a, 1);
        assert_eq!(p.freed, 3 + 10 + 5 + 50 + 7 + 5);
    }
}
