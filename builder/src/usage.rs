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

use kiln_cache::{Digest, Store};
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
            .map(|d| store.blob_path(d))
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
            Area::Container(usize::MAX) | Area::Volume(usize::MAX) => other += n,
            Area::Container(i) => container_bytes[i] += n,
            Area::Volume(i) => volume_bytes[i] += n,
            Area::Other => other += n,
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
    };
    Ok(df)
}
