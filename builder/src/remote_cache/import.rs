//! `--cache-from`: each cache is read once per build, before solving (manifest and
//! config; never a layer). The worker looks a key up here when the store has no
//! record of it; on a hit ([`ImportedCache::materialize`]) a registry cache's layers
//! become known to be in the cache's repository, so the store fetches one only when a
//! later step, an exporter or a push needs its bytes (and a push to the same registry
//! mounts it); a local cache's blobs are copied into the store (digest-checked).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use kiln_cache::{BuildRecord, Digest, Store};
use kiln_registry::Reference;

use super::RemoteCacheError;
use super::format::{CONFIG_MEDIA_TYPE, CacheConfig, Entry, MAX_CONFIG};
use super::spec::CacheLocation;
use crate::remote::Remote;
use crate::untrusted::{Layout, MAX_LAYOUT_JSON};

/// Where an imported cache's blobs are.
#[derive(Debug)]
enum Blobs {
    /// In this registry's repository.
    Registry {
        registry: String,
        repository: String,
    },
    /// In this OCI layout.
    Local(PathBuf),
}

/// One cache read by `--cache-from`.
#[derive(Debug)]
pub struct ImportedCache {
    /// The reference or directory as given (what the records say hits came from).
    pub name: String,
    blobs: Blobs,
    entries: BTreeMap<String, Entry>,
    builds: Vec<BuildRecord>,
}

/// Every `--cache-from` of a build, in the order given.
#[derive(Debug, Default)]
pub struct Imported {
    caches: Vec<ImportedCache>,
}

impl Imported {
    /// Reads every cache of `from`; one that is missing or unreadable is reported to
    /// `warn` (one line) and left out: the build goes on without it.
    pub fn load(
        store: &Store,
        remote: &Remote,
        from: &[CacheLocation],
        warn: &dyn Fn(String),
    ) -> Imported {
        let mut caches = Vec::new();
        for loc in from {
            match read(store, remote, loc) {
                Ok(Some(c)) => caches.push(c),
                Ok(None) => warn(format!(
                    "WARNING: cache import from {loc}: not found (no cache exported there yet)"
                )),
                Err(e) => warn(format!(
                    "WARNING: cache import from {loc}: {}",
                    kiln_solver::error_chain(&e)
                )),
            }
        }
        Imported { caches }
    }

    /// Whether no cache was read.
    pub fn is_empty(&self) -> bool {
        self.caches.is_empty()
    }

    /// The first cache (in `--cache-from` order) that has `key`, and its record.
    pub fn lookup(&self, key: &str) -> Option<(&ImportedCache, &Entry)> {
        self.caches
            .iter()
            .find_map(|c| c.entries.get(key).map(|e| (c, e)))
    }

    /// The build records of every cache, newest first (for miss explanations).
    pub fn builds(&self) -> Vec<BuildRecord> {
        let mut all: Vec<BuildRecord> = self
            .caches
            .iter()
            .flat_map(|c| c.builds.iter().cloned())
            .collect();
        all.sort_by_key(|b| std::cmp::Reverse(b.started_ms));
        all
    }
}

impl ImportedCache {
    /// Makes the layers of `entry` available to the store: remembered as being in the
    /// cache's repository (or a base's, for layers the cache does not hold), or copied
    /// from a local cache.
    pub fn materialize(&self, store: &Store, entry: &Entry) -> Result<(), RemoteCacheError> {
        for l in &entry.layers {
            for (registry, repository) in &l.sources {
                kiln_registry::remember_source(store, &l.digest, registry, repository);
            }
            if !l.sources.is_empty() {
                continue;
            }
            match &self.blobs {
                Blobs::Registry {
                    registry,
                    repository,
                } => kiln_registry::remember_source(store, &l.digest, registry, repository),
                Blobs::Local(dir) => {
                    if store.blob_size(&l.digest).ok() == Some(l.size) {
                        continue;
                    }
                    let layout = open_layout(dir)?;
                    let f = layout
                        .blob(l.digest.algorithm(), l.digest.hex(), l.size)
                        .map_err(|source| RemoteCacheError::Layout {
                            what: format!("{}: reading blob {}", dir.display(), l.digest),
                            source,
                        })?;
                    copy_into_store(store, f, &l.digest, dir)?;
                }
            }
        }
        Ok(())
    }
}

fn open_layout(dir: &std::path::Path) -> Result<Layout, RemoteCacheError> {
    Layout::open(dir).map_err(|source| RemoteCacheError::Layout {
        what: format!("{} is not a readable directory", dir.display()),
        source,
    })
}

/// Streams a blob into the store, digest-checked.
fn copy_into_store(
    store: &Store,
    mut from: impl Read,
    digest: &Digest,
    dir: &std::path::Path,
) -> Result<(), RemoteCacheError> {
    let mut w = store.blob_writer()?;
    std::io::copy(&mut from, &mut w).map_err(|source| RemoteCacheError::Layout {
        what: format!("{}: copying blob {digest}", dir.display()),
        source,
    })?;
    w.commit(Some(digest))?;
    Ok(())
}

fn read(
    store: &Store,
    remote: &Remote,
    loc: &CacheLocation,
) -> Result<Option<ImportedCache>, RemoteCacheError> {
    let (blobs, bytes) = match loc {
        CacheLocation::Registry(r) => {
            let reference = Reference::parse(r)?;
            let Some(a) = remote.client()?.fetch_artifact(
                &reference,
                CONFIG_MEDIA_TYPE,
                MAX_CONFIG,
                store,
            )?
            else {
                return Ok(None);
            };
            (
                Blobs::Registry {
                    registry: reference.registry.clone(),
                    repository: reference.repository.clone(),
                },
                a.config,
            )
        }
        CacheLocation::Local(dir) => {
            if !dir.join("index.json").exists() {
                return Ok(None);
            }
            let (_, bytes) = read_layout(store, dir)?;
            (Blobs::Local(dir.clone()), bytes)
        }
    };
    let config = CacheConfig::parse(&bytes)?;
    Ok(Some(ImportedCache {
        name: loc.to_string(),
        blobs,
        entries: config.entries(),
        builds: config.builds,
    }))
}

/// The cache manifest in the OCI layout `dir` and its config's bytes (copied into the
/// store, digest-checked, before they are read).
pub(super) fn read_layout(
    store: &Store,
    dir: &std::path::Path,
) -> Result<(serde_json::Value, Vec<u8>), RemoteCacheError> {
    let layout = open_layout(dir)?;
    let json = |rel: &str| -> Result<serde_json::Value, RemoteCacheError> {
        let bytes = layout.read_capped(rel, MAX_LAYOUT_JSON).map_err(|source| {
            RemoteCacheError::Layout {
                what: format!("{}: reading {rel}", dir.display()),
                source,
            }
        })?;
        serde_json::from_slice(&bytes).map_err(|e| RemoteCacheError::Invalid {
            what: format!("{}/{rel}", dir.display()),
            reason: e.to_string(),
        })
    };
    let invalid = |reason: String| RemoteCacheError::Invalid {
        what: dir.display().to_string(),
        reason,
    };
    let index = json("index.json")?;
    let desc = index["manifests"]
        .as_array()
        .and_then(|m| m.first())
        .ok_or_else(|| invalid("index.json lists no manifest".into()))?;
    let digest = |d: &serde_json::Value| -> Result<Digest, RemoteCacheError> {
        Digest::parse(d["digest"].as_str().unwrap_or_default())
            .map_err(|e| invalid(format!("a bad digest: {e}")))
    };
    let md = digest(desc)?;
    let manifest = json(&format!("blobs/{}/{}", md.algorithm(), md.hex()))?;
    let cfg = &manifest["config"];
    if cfg["mediaType"].as_str() != Some(CONFIG_MEDIA_TYPE) {
        return Err(invalid(format!(
            "its manifest's config has media type {}, not {CONFIG_MEDIA_TYPE}",
            cfg["mediaType"]
        )));
    }
    let cd = digest(cfg)?;
    let size = cfg["size"].as_u64().unwrap_or(0);
    if size > MAX_CONFIG {
        return Err(invalid(format!(
            "config {cd} is {size} bytes, above the {MAX_CONFIG}-byte limit"
        )));
    }
    let f = layout
        .blob(cd.algorithm(), cd.hex(), size)
        .map_err(|source| RemoteCacheError::Layout {
            what: format!("{}: reading config {cd}", dir.display()),
            source,
        })?;
    copy_into_store(store, f, &cd, dir)?;
    Ok((manifest, store.read_blob(&cd)?))
}
