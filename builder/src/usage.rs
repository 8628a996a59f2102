//! What the store holds, as `kiln system df` shows it, and what `kiln rmi` may delete.
//!
//! Every file under the store is counted exactly once (hard links once, directories by
//! their own size, as `du -sb` counts), in one of Docker's four rows:
//!
//! - **Images**: the blobs (manifests, configs, layers) and unpacked snapshots of tagged
//!   images, and the tag file; a layer two images share is counted once.
//! - **Containers**: each container's directory (writable layer, state, log).
//! - **Local Volumes**: the volume area.
//! - **Build Cache**: everything else: cache records, blobs and snapshots that only
//!   the build cache references, `RUN --mount=type=cache` directories, stat memos,
//!   temporary files, locks.
//!
//! So the four sizes add up to what the store takes on disk.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use kiln_cache::{Budget, Digest, GcPlan, GcPolicy, GcRecord, GcRef, GcUniverse, SizeSpec, Store};
use kiln_ops::Platform;

use crate::containers::{Container, Containers, MountKind};
use crate::images::ImageStore;
use crate::volumes::Volumes;

/// Why the store's usage could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// The store refused.
    #[error(transparent)]
    Store(#[from] kiln_cache::CacheError),
    /// Containers could not be listed.
    #[error(transparent)]
    Containers(#[from] crate::containers::ContainerError),
    /// Volumes could not be listed.
    #[error(transparent)]
    Volumes(#[from] crate::volumes::VolumeError),
}

/// Result of this module.
pub type Result<T, E = UsageError> = std::result::Result<T, E>;

/// A tagged image, with what it references.
#[derive(Debug, Clone)]
pub struct ImageUsage {
    /// Its tags.
    pub tags: Vec<String>,
    /// Its id (config digest).
    pub id: Digest,
    /// Blobs it references (manifest or index, config, layers).
    pub blobs: Vec<Digest>,
    /// Its layers' diff_ids (their snapshots).
    pub diff_ids: Vec<Digest>,
    /// Bytes of its blobs and snapshots (shared ones included).
    pub size: u64,
    /// Bytes of those it shares with another image.
    pub shared: u64,
    /// How many containers were made from it.
    pub containers: usize,
}

/// One row of `system df`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Row {
    /// TOTAL.
    pub total: usize,
    /// ACTIVE.
    pub active: usize,
    /// SIZE in bytes.
    pub size: u64,
    /// RECLAIMABLE in bytes.
    pub reclaimable: u64,
}

/// What `kiln system df` reports.
#[derive(Debug, Clone, Default)]
pub struct SystemDf {
    /// Images.
    pub images: Row,
    /// Containers.
    pub containers: Row,
    /// Local Volumes.
    pub volumes: Row,
    /// Build Cache.
    pub build_cache: Row,
    /// Per image (for `-v`).
    pub image_list: Vec<ImageUsage>,
    /// Per container: the container, its directory's size (for `-v`).
    pub container_list: Vec<(Container, u64)>,
    /// Per volume: name, containers using it, size (for `-v`).
    pub volume_list: Vec<(String, usize, u64)>,
    /// The Build Cache row by kind: blobs, snapshots, cache records, cache mounts,
    /// build records, stat memos, temp files, other (locks, store.json, leases).
    pub build_cache_areas: Vec<(&'static str, u64)>,
}

impl SystemDf {
    /// The sum of the four rows' sizes: the store's size on disk.
    pub fn total(&self) -> u64 {
        self.images.size + self.containers.size + self.volumes.size + self.build_cache.size
    }
}

/// Tagged images with the blobs and snapshots they reference, by manifest digest.
pub fn tagged_images(store: &Store) -> Result<Vec<ImageUsage>> {
    let images = ImageStore::new(store);
    let mut by_manifest: BTreeMap<Digest, ImageUsage> = BTreeMap::new();
    for (tag, rec) in store.tags()? {
        if let Some(u) = by_manifest.get_mut(&rec.manifest) {
            u.tags.push(tag);
            continue;
        }
        let mut blobs = vec![rec.manifest.clone(), rec.config.clone()];
        let mut diff_ids = Vec::new();
        // An image whose manifest cannot be read still pins what its tag names.
        if let Ok(info) = images.load(rec.manifest.as_str(), &Platform::host()) {
            blobs.push(info.manifest_digest.clone());
            blobs.push(info.config_digest.clone());
            blobs.extend(info.layers.iter().map(|l| l.digest.clone()));
            diff_ids.extend(info.layers.iter().map(|l| l.diff_id.clone()));
        }
        blobs.sort();
        blobs.dedup();
        by_manifest.insert(
            rec.manifest.clone(),
            ImageUsage {
                tags: vec![tag],
                id: rec.config.clone(),
                blobs,
                diff_ids,
                size: 0,
                shared: 0,
                containers: 0,
            },
        );
    }
    Ok(by_manifest.into_values().collect())
}

/// Every `sha256:` digest the build cache's records mention (layers, blobs, snapshots).
pub fn cache_references(store: &Store) -> Result<HashSet<String>> {
    fn collect(v: &serde_json::Value, out: &mut HashSet<String>) {
        match v {
            serde_json::Value::String(s) if s.starts_with("sha256:") => {
                out.insert(s.clone());
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| collect(v, out)),
            serde_json::Value::Object(o) => o.values().for_each(|v| collect(v, out)),
            _ => {}
        }
    }
    let mut out = HashSet::new();
    for key in store.cache_keys()? {
        if let Some(v) = store.cache_get(&key)? {
            collect(&v, &mut out);
        }
    }
    Ok(out)
}

/// The kinds of the Build Cache row: the store directory (first path component) and
/// its label; the last is everything else.
const BUILD_CACHE_AREAS: &[(&str, &str)] = &[
    ("blobs", "Blobs"),
    ("snapshots", "Snapshots"),
    ("cache", "Cache records"),
    ("cache-mounts", "Cache mounts"),
    ("records", "Build records"),
    ("statmemo", "Stat memos"),
    ("tmp", "Temp files"),
    ("chunks", "Chunk index"),
    ("", "Other"),
];

/// Which row a path of the store belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Area {
    Image(usize),
    Container(usize),
    Volume(usize),
    Other,
}

/// Measures the store.
pub fn system_df(store: &Store) -> Result<SystemDf> {
    let mut images = tagged_images(store)?;
    let containers = Containers::open(store)?.list()?;
    let volumes = Volumes::open(store).list()?;

    // Who uses what.
    let mut image_containers: HashMap<String, usize> = HashMap::new();
    let mut volume_users: HashMap<String, usize> = HashMap::new();
    for c in &containers {
        *image_containers.entry(c.image_id.clone()).or_default() += 1;
        for m in &c.config.mounts {
            if m.kind == MountKind::Volume {
                *volume_users.entry(m.source.clone()).or_default() += 1;
            }
        }
    }
    for img in &mut images {
        img.containers = image_containers.get(img.id.as_str()).copied().unwrap_or(0);
    }

    // Paths owned by each image (blob files, snapshot dirs); a path several images
    // reference is "shared".
    let mut owners: HashMap<PathBuf, Vec<usize>> = HashMap::new();
    let snapshots = crate::snapshots::Snapshots::new(store);
    for (i, img) in images.iter().enumerate() {
        let paths = img
            .blobs
            .iter()
            .map(|d| store.blob_location(d))
            .chain(img.diff_ids.iter().map(|d| snapshots.path(d)));
        for p in paths {
            let owners = owners.entry(p).or_default();
            if !owners.contains(&i) {
                owners.push(i);
            }
        }
    }
    let containers_dir = store.containers_dir();
    let images_dir = store.images_dir();
    let volumes_dir = store.volumes_dir();
    let container_index: HashMap<&str, usize> = containers
        .iter()
        .enumerate()
        .map(|(i, c)| (c.id.as_str(), i))
        .collect();
    let volume_index: HashMap<&str, usize> = volumes
        .iter()
        .enumerate()
        .map(|(i, v)| (v.name.as_str(), i))
        .collect();
    let first_component = |p: &Path, base: &Path| -> Option<String> {
        p.strip_prefix(base)
            .ok()?
            .components()
            .next()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
    };

    let mut image_bytes = vec![0u64; images.len()];
    let mut image_shared = vec![0u64; images.len()];
    let mut image_row = 0u64; // each path of any image once
    let mut unique_to_unused = 0u64; // reclaimable images bytes
    let mut container_bytes = vec![0u64; containers.len()];
    let mut volume_bytes = vec![0u64; volumes.len()];
    let mut other = 0u64;
    let mut other_areas: Vec<(&'static str, u64)> = BUILD_CACHE_AREAS
        .iter()
        .map(|(_, label)| (*label, 0))
        .collect();
    let mut images_area = 0u64;

    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let walk = walkdir::WalkDir::new(store.root()).follow_links(false);
    // The owner of the tree being walked: entries below an owned path inherit it.
    let mut stack: Vec<(PathBuf, Area, Vec<usize>)> = Vec::new();
    for entry in walk {
        let Ok(entry) = entry else { continue };
        let path = entry.path();
        while stack.last().is_some_and(|(p, _, _)| !path.starts_with(p)) {
            stack.pop();
        }
        let (area, owners_here) = if let Some((_, a, o)) = stack.last() {
            (*a, o.clone())
        } else if let Some(o) = owners.get(path) {
            let a = Area::Image(o[0]);
            stack.push((path.to_path_buf(), a, o.clone()));
            (a, o.clone())
        } else if let Some(i) = first_component(path, &containers_dir)
            .and_then(|n| container_index.get(n.as_str()).copied())
        {
            let a = Area::Container(i);
            stack.push((containers_dir.join(&containers[i].id), a, Vec::new()));
            (a, Vec::new())
        } else if let Some(i) =
            first_component(path, &volumes_dir).and_then(|n| volume_index.get(n.as_str()).copied())
        {
            let a = Area::Volume(i);
            stack.push((volumes_dir.join(&volumes[i].name), a, Vec::new()));
            (a, Vec::new())
        } else if path.starts_with(&containers_dir) && path != containers_dir {
            // A container directory that is no container (half made): its row anyway.
            (Area::Container(usize::MAX), Vec::new())
        } else if path.starts_with(&volumes_dir) && path != volumes_dir {
            (Area::Volume(usize::MAX), Vec::new())
        } else if path.starts_with(&images_dir) {
            // The tags file.
            (Area::Image(usize::MAX), Vec::new())
        } else {
            (Area::Other, Vec::new())
        };
        let Ok(meta) = entry.metadata() else { continue };
        if !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        let n = meta.len();
        match area {
            Area::Image(usize::MAX) => images_area += n,
            Area::Image(_) => {
                for &i in &owners_here {
                    image_bytes[i] += n;
                    if owners_here.len() > 1 {
                        image_shared[i] += n;
                    }
                }
                image_row += n;
                if owners_here.iter().all(|&i| images[i].containers == 0) {
                    unique_to_unused += n;
                }
            }
            Area::Container(usize::MAX) | Area::Volume(usize::MAX) => {
                other += n;
                other_areas.last_mut().expect("other").1 += n;
            }
            Area::Container(i) => container_bytes[i] += n,
            Area::Volume(i) => volume_bytes[i] += n,
            Area::Other => {
                other += n;
                let first = first_component(path, store.root()).unwrap_or_default();
                let i = BUILD_CACHE_AREAS
                    .iter()
                    .position(|(dir, _)| *dir == first)
                    .unwrap_or(BUILD_CACHE_AREAS.len() - 1);
                other_areas[i].1 += n;
            }
        }
    }
    for (i, img) in images.iter_mut().enumerate() {
        img.size = image_bytes[i];
        img.shared = image_shared[i];
    }
    let image_total = image_row + images_area;

    let cache_records = store.cache_keys()?.len();
    let df = SystemDf {
        images: Row {
            total: images.len(),
            active: images.iter().filter(|i| i.containers > 0).count(),
            size: image_total,
            reclaimable: unique_to_unused,
        },
        containers: Row {
            total: containers.len(),
            active: containers.iter().filter(|c| c.state.running()).count(),
            size: container_bytes.iter().sum::<u64>(),
            reclaimable: containers
                .iter()
                .zip(&container_bytes)
                .filter(|(c, _)| !c.state.running())
                .map(|(_, b)| *b)
                .sum(),
        },
        volumes: Row {
            total: volumes.len(),
            active: volumes
                .iter()
                .filter(|v| volume_users.contains_key(&v.name))
                .count(),
            size: volume_bytes.iter().sum::<u64>(),
            reclaimable: volumes
                .iter()
                .zip(&volume_bytes)
                .filter(|(v, _)| !volume_users.contains_key(&v.name))
                .map(|(_, b)| *b)
                .sum(),
        },
        build_cache: Row {
            total: cache_records,
            active: 0,
            size: other,
            reclaimable: other,
        },
        image_list: images,
        container_list: containers.into_iter().zip(container_bytes).collect(),
        volume_list: volumes
            .iter()
            .zip(&volume_bytes)
            .map(|(v, b)| {
                (
                    v.name.clone(),
                    volume_users.get(&v.name).copied().unwrap_or(0),
                    *b,
                )
            })
            .collect(),
        build_cache_areas: other_areas,
    };
    Ok(df)
}

// ---------------------------------------------------------------------------------------
// Build cache: per-record usage (`kiln du`) and garbage collection (`kiln prune`, and
// the collection after a build when the store is over budget).

/// One cache record, as `kiln du` shows it.
#[derive(Debug, Clone)]
pub struct CacheRecordUsage {
    /// Its key.
    pub key: String,
    /// Whether `kiln prune` may remove it now (no build uses it).
    pub reclaimable: bool,
    /// Whether it shares content with another record or an image.
    pub shared: bool,
    /// Bytes only it holds: its record file and what no other record or image uses.
    pub size: u64,
    /// When it was last used (written, or hit by a build).
    pub last_used: SystemTime,
    /// The step that made it, if known.
    pub description: Option<String>,
    /// Why it is kept, if it is ("leased by build ...").
    pub in_use: Option<String>,
}

/// What `kiln du` reports.
#[derive(Debug, Clone, Default)]
pub struct BuildCacheUsage {
    /// Per cache record, most recently used first.
    pub records: Vec<CacheRecordUsage>,
    /// Bytes of blobs and snapshots records share (with each other or with images),
    /// counted once.
    pub shared: u64,
    /// Bytes records hold alone.
    pub private: u64,
    /// Bytes `kiln prune` would free now.
    pub reclaimable: u64,
    /// The Build Cache row of `system df`, by kind.
    pub areas: Vec<(&'static str, u64)>,
    /// The Build Cache row's size (the sum of `areas`).
    pub total: u64,
}

/// The references of a cache record's value: each layer's blob (`digest`) and
/// snapshot (`diff_id`).
fn record_refs(v: &serde_json::Value, out: &mut Vec<GcRef>) {
    match v {
        serde_json::Value::Object(o) => {
            for (k, v) in o {
                match (k.as_str(), v.as_str()) {
                    ("digest", Some(d)) if d.starts_with("sha256:") => {
                        out.push(GcRef::Blob(d.to_owned()))
                    }
                    ("diff_id", Some(d)) if d.starts_with("sha256:") => {
                        out.push(GcRef::Snapshot(d.to_owned()))
                    }
                    _ => record_refs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| record_refs(v, out)),
        _ => {}
    }
}

/// Bytes of a tree as `du -sb` counts them (directories included, hard links once).
fn tree_size(path: &Path) -> u64 {
    tree_size_but(path, |_| false)
}

/// [`tree_size`] without the subtrees at the paths `skip` names.
fn tree_size_but(path: &Path, skip: impl Fn(&Path) -> bool) -> u64 {
    let mut seen = HashSet::new();
    walkdir::WalkDir::new(path)
        .follow_links(false)
        .into_iter()
        .filter_entry(|e| !skip(e.path()))
        .filter_map(|e| e.ok())
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.nlink() <= 1 || m.is_dir() || seen.insert((m.dev(), m.ino())))
        .map(|m| m.len())
        .sum()
}

/// The entries of a store area named `<64 hex>`, as digests, with their paths.
fn digest_entries(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let d = Digest::parse(&format!("sha256:{name}")).ok()?;
            Some((d.to_string(), e.path()))
        })
        .collect()
}

/// Where [`snapshot_sizes`] keeps the sizes it walked, in the snapshots' area.
const SNAPSHOT_SIZES: &str = "sizes.json";

/// The most of [`SNAPSHOT_SIZES`] read (about 100 bytes a snapshot): a bigger file is
/// ignored, and the snapshots walked.
const SNAPSHOT_SIZES_MAX: u64 = 64 << 20;

/// A snapshot's size as walked, and the directory walked (its inode and change time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Walked {
    ino: u64,
    ctime: i64,
    ctime_nsec: i64,
    size: u64,
}

/// Sizes of the snapshots, by digest, as `du -sb` counts each tree. A tree is walked
/// once in its life: a snapshot never changes once made, so its size is kept in
/// `snapshots/sizes.json` with the inode and change time of the directory walked, and
/// walked again only when the directory is another one (made again after a
/// collection). Called outside the GC lock (the walks are the slow part). The file is
/// a cache: a write that fails, or that another build's replaces, costs a walk later.
pub fn snapshot_sizes(store: &Store) -> HashMap<String, u64> {
    use std::io::Read;
    let file = store.snapshots_dir().join(SNAPSHOT_SIZES);
    let mut bytes = Vec::new();
    let known: HashMap<String, Walked> = std::fs::File::open(&file)
        .and_then(|f| f.take(SNAPSHOT_SIZES_MAX + 1).read_to_end(&mut bytes))
        .ok()
        .filter(|n| (*n as u64) <= SNAPSHOT_SIZES_MAX)
        .and_then(|_| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    let mut now = HashMap::new();
    let mut walked = false;
    for (d, p) in digest_entries(&store.snapshots_dir()) {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        let this = |size| Walked {
            ino: meta.ino(),
            ctime: meta.ctime(),
            ctime_nsec: meta.ctime_nsec(),
            size,
        };
        let w = match known.get(&d) {
            Some(k) if *k == this(k.size) => *k,
            _ => {
                walked = true;
                this(tree_size(&p))
            }
        };
        now.insert(d, w);
    }
    if walked || now.len() != known.len() {
        if let Ok(bytes) = serde_json::to_vec(&now) {
            let _ = kiln_cache::atomic::write(&file, &bytes);
        }
    }
    now.into_iter().map(|(d, w)| (d, w.size)).collect()
}

/// What the store takes on disk in all, as [`system_df`] counts it (each entry's
/// length, a hard-linked file once), with the snapshots' trees counted as `sizes`
/// ([`snapshot_sizes`]) keeps them: the budget check after every build, which otherwise
/// walked every snapshot each time (whenever the filesystem's use is over the store's
/// budget, as on a big shared disk), so that a no-op build took longer the more images
/// the store had.
pub fn store_used(store: &Store, sizes: &HashMap<String, u64>) -> u64 {
    let snapshots = store.snapshots_dir();
    let is_snapshot = |p: &Path| {
        p.parent() == Some(snapshots.as_path())
            && p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| sizes.contains_key(&format!("sha256:{n}")))
    };
    tree_size_but(store.root(), is_snapshot) + sizes.values().sum::<u64>()
}

/// The collector's view of the store, and where each blob and snapshot is.
pub struct Collected {
    /// What [`kiln_cache::plan`] decides on.
    pub universe: GcUniverse,
    /// Path of each blob and snapshot.
    pub paths: HashMap<GcRef, PathBuf>,
    /// The live leases.
    pub leases: Vec<kiln_cache::LeaseInfo>,
}

/// Reads the store for the collector: records, blobs, snapshots and what pins them.
/// `all`: tagged images' snapshots are not pinned (their blobs always are). Call under
/// the GC lock (exclusive) when acting on the answer.
pub fn collect(
    store: &Store,
    snapshot_sizes: &HashMap<String, u64>,
    all: bool,
) -> Result<Collected> {
    let mut u = GcUniverse::default();
    let mut paths = HashMap::new();
    let mtime = |p: &Path| kiln_cache::modified(p);
    let leases = store.leases()?;
    // Content newer than the oldest live lease may be a running build's: kept. (Lease
    // times are their lock files' times: the clock of the other files' times.)
    let fresh_from = leases.iter().map(|l| l.started_at()).min();
    let is_fresh = |t: Option<SystemTime>| match (t, fresh_from) {
        (Some(t), Some(from)) => t >= from,
        _ => false,
    };
    for (d, p) in digest_entries(&store.blobs_dir()) {
        let r = GcRef::Blob(d);
        let meta = std::fs::symlink_metadata(&p).ok();
        if is_fresh(meta.as_ref().and_then(|m| m.modified().ok())) {
            u.pinned.insert(r.clone(), "made by a running build".into());
        }
        u.sizes.insert(r.clone(), meta.map_or(0, |m| m.len()));
        paths.insert(r, p);
    }
    // Spliced blobs: sized by the bytes only they keep (their links to other blobs'
    // files cost nothing while those are stored).
    for (d, p, size) in store.spliced_blobs() {
        let r = GcRef::Blob(d.to_string());
        if is_fresh(mtime(&p)?) {
            u.pinned.insert(r.clone(), "made by a running build".into());
        }
        u.sizes.insert(r.clone(), size);
        paths.insert(r, p);
    }
    for (d, p) in digest_entries(&store.snapshots_dir()) {
        let size = match snapshot_sizes.get(&d) {
            Some(s) => *s,
            None => tree_size(&p),
        };
        let r = GcRef::Snapshot(d);
        if is_fresh(mtime(&p)?) {
            u.pinned.insert(r.clone(), "made by a running build".into());
        }
        u.sizes.insert(r.clone(), size);
        paths.insert(r, p);
    }
    for key in store.cache_keys()? {
        let path = store.cache_record_path(&key)?;
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let Some(value) = store.cache_get(&key)? else {
            continue;
        };
        let mut refs = Vec::new();
        record_refs(&value, &mut refs);
        let last_used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        if is_fresh(Some(last_used)) {
            u.pinned_records
                .insert(key.clone(), "used by a running build".into());
        }
        u.records.push(GcRecord {
            key,
            last_used,
            size: meta.len(),
            refs,
            description: value
                .get("description")
                .and_then(|d| d.as_str())
                .map(str::to_owned),
        });
    }
    for img in tagged_images(store)? {
        let why = format!("tagged image {}", img.tags.join(", "));
        for b in &img.blobs {
            u.pinned.insert(GcRef::Blob(b.to_string()), why.clone());
            if store.has_blob(b) {
                continue;
            }
            // Where the blob can be fetched from (a base layer kept unpacked only, a
            // resolved base's layer never fetched): kept with the image.
            u.pinned_records
                .insert(kiln_registry::sources_key(b), why.clone());
            // A layer kept only as its snapshot (its blob is written again from it) is
            // the image's: its snapshot stays with it, even with `all`.
            if all && let Some(d) = crate::recreate::snapshot_of(store, b) {
                u.pinned.insert(
                    GcRef::Snapshot(d.to_string()),
                    format!("{why} (the only copy of layer {b})"),
                );
            }
        }
        if !all {
            for d in &img.diff_ids {
                u.pinned.insert(GcRef::Snapshot(d.to_string()), why.clone());
            }
        }
    }
    for c in Containers::open(store)?.list()? {
        let why = format!("container {}", c.name);
        for d in [&c.config.manifest_digest, &c.image_id] {
            u.pinned.insert(GcRef::Blob(d.clone()), why.clone());
        }
        for l in &c.config.layers {
            u.pinned
                .insert(GcRef::Blob(l.digest.to_string()), why.clone());
            u.pinned
                .insert(GcRef::Snapshot(l.diff_id.to_string()), why.clone());
        }
    }
    for l in &leases {
        let why = format!("leased by {}", l.holder);
        for r in &l.refs {
            u.pinned.insert(GcRef::Blob(r.clone()), why.clone());
            u.pinned.insert(GcRef::Snapshot(r.clone()), why.clone());
            u.pinned_records.insert(r.clone(), why.clone());
        }
    }
    Ok(Collected {
        universe: u,
        paths,
        leases,
    })
}

/// `kiln du`: the build cache per record, and the Build Cache row by kind.
pub fn build_cache_usage(store: &Store) -> Result<BuildCacheUsage> {
    let sizes = snapshot_sizes(store);
    let c = collect(store, &sizes, false)?;
    let u = &c.universe;
    let mut owners: HashMap<&GcRef, usize> = HashMap::new();
    for r in &u.records {
        let mut mine: Vec<&GcRef> = r.refs.iter().collect();
        mine.sort();
        mine.dedup();
        for x in mine {
            *owners.entry(x).or_default() += 1;
        }
    }
    let size_of = |x: &GcRef| u.sizes.get(x).copied().unwrap_or(0);
    let alone = |x: &GcRef| owners.get(x) == Some(&1) && !u.pinned.contains_key(x);
    let mut out = BuildCacheUsage::default();
    let mut shared_refs: HashSet<&GcRef> = HashSet::new();
    for r in &u.records {
        let mut mine: Vec<&GcRef> = r.refs.iter().filter(|x| u.sizes.contains_key(*x)).collect();
        mine.sort();
        mine.dedup();
        let size = r.size
            + mine
                .iter()
                .filter(|x| alone(x))
                .map(|x| size_of(x))
                .sum::<u64>();
        let shared: Vec<&GcRef> = mine.into_iter().filter(|x| !alone(x)).collect();
        out.private += size;
        let in_use = u.pinned_records.get(&r.key).cloned();
        out.records.push(CacheRecordUsage {
            key: r.key.clone(),
            reclaimable: in_use.is_none(),
            shared: !shared.is_empty(),
            size,
            last_used: r.last_used,
            description: r.description.clone(),
            in_use,
        });
        shared_refs.extend(shared);
    }
    out.shared = shared_refs.iter().map(|x| size_of(x)).sum();
    out.reclaimable = kiln_cache::plan(u, &GcPolicy::default(), SystemTime::now()).freed;
    out.records
        .sort_by(|a, b| b.last_used.cmp(&a.last_used).then(a.key.cmp(&b.key)));
    let df = system_df(store)?;
    out.areas = df.build_cache_areas.clone();
    out.total = df.build_cache.size;
    Ok(out)
}

/// What `kiln prune` is asked to do.
#[derive(Debug, Clone, Default)]
pub struct PruneOptions {
    /// `--all`: tagged images' snapshots go too (their blobs stay: the image needs them).
    pub all: bool,
    /// `--filter until=DURATION`.
    pub until: Option<Duration>,
    /// `--max-used-space`: prune only down to this (least recently used first).
    pub max_used_space: Option<SizeSpec>,
    /// `--min-free-space`: prune only until this much of the disk is free.
    pub min_free_space: Option<SizeSpec>,
    /// `--reserved-space`: pruning for free space keeps at least this much.
    pub reserved_space: Option<SizeSpec>,
    /// `--dry-run`: say what would go, remove nothing.
    pub dry_run: bool,
    /// Use `config.toml`'s budget ([`gc_if_over_budget`]).
    pub budget_from_config: bool,
}

/// What a prune did (or, dry, would do).
#[derive(Debug, Clone, Default)]
pub struct PruneReport {
    /// What went (or would go), in order.
    pub plan: GcPlan,
    /// The budget, the store's size before, and the bytes over it, when pruning to a
    /// budget.
    pub budget: Option<(Budget, u64, u64)>,
    /// Records kept because a build uses them, with why.
    pub kept_in_use: Vec<(String, String)>,
    /// How long the GC lock was held.
    pub lock_held: Duration,
}

/// Prunes the build cache: under the GC lock, reads what pins what and moves the
/// chosen records, then what only they used, out of place (renames into `tmp/`); then,
/// the lock released, deletes them. A kill at any point leaves every remaining record
/// whole, and `tmp/` is cleaned by the next [`Store::open`].
pub fn prune(store: &Store, opts: &PruneOptions) -> Result<PruneReport> {
    let mut report = PruneReport::default();
    let flagged = opts.max_used_space.is_some() || opts.min_free_space.is_some();
    let budgeted = opts.budget_from_config || flagged;
    // Known once the budget needs them (the collection below uses the same).
    let mut sizes = None;
    let mut policy = GcPolicy {
        until: opts.until,
        free_at_least: None,
    };
    if budgeted {
        let mut cfg = store.gc_config()?;
        if flagged {
            cfg.max_used_space = opts.max_used_space.or(cfg.max_used_space);
            cfg.min_free_space = opts.min_free_space.or(cfg.min_free_space);
        }
        cfg.reserved_space = opts.reserved_space.or(cfg.reserved_space);
        let disk = store.disk_space()?;
        let budget = Budget::new(&cfg, disk);
        // The filesystem's use bounds the store's: when even that is within budget, the
        // store need not be walked (this runs after every build).
        let fs_used = disk.total.saturating_sub(disk.available);
        if budget.excess(fs_used, disk) == 0 {
            report.budget = Some((budget, fs_used, 0));
            return Ok(report);
        }
        // As `du -sb` counts (directories too), like `system df`.
        let used = store_used(store, sizes.insert(snapshot_sizes(store)));
        let excess = budget.excess(used, disk);
        report.budget = Some((budget, used, excess));
        if excess == 0 {
            return Ok(report);
        }
        policy.free_at_least = Some(excess);
    }
    let sizes = sizes.unwrap_or_else(|| snapshot_sizes(store));
    let mut trash = Vec::new();
    {
        let locked = std::time::Instant::now();
        let _gc = store.lock_gc(kiln_cache::LockKind::Exclusive)?;
        let c = collect(store, &sizes, opts.all)?;
        report.plan = kiln_cache::plan(&c.universe, &policy, SystemTime::now());
        report.kept_in_use = c
            .universe
            .pinned_records
            .iter()
            .filter(|(k, _)| c.universe.records.iter().any(|r| &r.key == *k))
            .map(|(k, w)| (k.clone(), w.clone()))
            .collect();
        report.kept_in_use.sort();
        if !opts.dry_run {
            // Test hook: a pause after each step, so that the kill -9 campaign
            // (builder/tests/gc.rs) lands between any two of them.
            let pause = std::env::var("KILN_TEST_GC_PAUSE_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .map(Duration::from_millis);
            let step = || {
                if let Some(p) = pause {
                    std::thread::sleep(p);
                }
            };
            // Records first: a kill after this leaves blobs nothing references, never
            // a record whose blobs are gone.
            // (Durable in that order too: the records' directory is synced before any
            // blob or snapshot moves.)
            let mut cache_dir = None;
            for (r, _, _) in &report.plan.records {
                let path = store.cache_record_path(&r.key)?;
                trash.extend(store.trash(&path)?);
                cache_dir = path.parent().map(Path::to_path_buf);
                step();
            }
            if let Some(d) = &cache_dir {
                store.sync_dirs(&[d])?;
            }
            for (x, _, _) in &report.plan.refs {
                if let Some(p) = c.paths.get(x) {
                    trash.extend(store.trash(p)?);
                    step();
                }
            }
            if !report.plan.refs.is_empty() {
                store.sync_dirs(&[
                    &store.blobs_dir(),
                    &store.spliced_dir(),
                    &store.snapshots_dir(),
                ])?;
                // The chunk index keeps no blob: the entries of those that went go too.
                store.prune_chunk_index()?;
            }
            // Records of how to write a blob again from a snapshot that went (here or
            // with an `rmi`) go too.
            crate::recreate::clean(store);
        }
        report.lock_held = locked.elapsed();
    }
    for t in trash {
        kiln_cache::remove_tree(&t).map_err(|e| {
            UsageError::Store(kiln_cache::CacheError::Io {
                op: "remove",
                path: t.clone(),
                source: e,
            })
        })?;
    }
    Ok(report)
}

/// The collection after a build: prunes least recently used records while the store is
/// over the budget of `config.toml` (or its defaults). `None` when within budget.
pub fn gc_if_over_budget(store: &Store) -> Result<Option<PruneReport>> {
    let report = prune(
        store,
        &PruneOptions {
            budget_from_config: true,
            ..Default::default()
        },
    )?;
    Ok(report.budget.filter(|b| b.2 > 0).map(|_| report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn put(dir: &Path, files: &[(&str, usize)]) {
        for (rel, len) in files {
            let p = dir.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, vec![7u8; *len]).unwrap();
        }
    }

    fn total(store: &Store) -> u64 {
        system_df(store).unwrap().total()
    }

    #[test]
    fn the_budget_check_counts_what_system_df_counts_walking_each_snapshot_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let snapshot = |c: char| store.snapshots_dir().join(c.to_string().repeat(64));
        let (a, b) = (snapshot('a'), snapshot('b'));
        put(&a, &[("etc/passwd", 100), ("usr/bin/tool", 5000)]);
        fs::hard_link(a.join("usr/bin/tool"), a.join("usr/bin/again")).unwrap();
        put(&b, &[("data", 20_000)]);
        put(&store.root().join("cache"), &[("record.json", 300)]);

        // Left first: the first call writes the sizes file, which both count.
        let used = |store: &Store| store_used(store, &snapshot_sizes(store));
        assert_eq!(used(&store), total(&store));
        assert!(store.snapshots_dir().join(SNAPSHOT_SIZES).is_file());

        // Kept, not walked again: a file put into a snapshot after its walk (kiln never
        // changes one) is not seen.
        put(&a, &[("usr/bin/later", 7000)]);
        assert_eq!(used(&store) + 7000, total(&store));

        // A snapshot made again under the same name is another directory: walked again.
        fs::remove_dir_all(&b).unwrap();
        put(&b, &[("data", 30_000), ("more", 1)]);
        assert_eq!(used(&store) + 7000, total(&store));
        let sizes = snapshot_sizes(&store);
        assert_eq!(sizes.len(), 2);

        // A snapshot collected leaves the file with it.
        fs::remove_dir_all(&b).unwrap();
        assert_eq!(snapshot_sizes(&store).len(), 1);
        let kept: HashMap<String, Walked> =
            serde_json::from_slice(&fs::read(store.snapshots_dir().join(SNAPSHOT_SIZES)).unwrap())
                .unwrap();
        assert_eq!(kept.len(), 1);
    }
}
