//! The registry cache's format: one plain OCI image manifest whose config has kiln's
//! own media type ([`CONFIG_MEDIA_TYPE`]) and whose layers are ordinary layer
//! descriptors of every blob the records use. Any distribution-spec registry stores
//! it (`skopeo inspect --raw` shows it); an OCI layout holds it as well.
//!
//! The config ([`CacheConfig`]) holds a table of layers (each a full descriptor plus
//! its diff id), the records (cache key -> indexes into that table), and the records
//! of the builds that exported it (self-contained, with their file sets), so a miss
//! against a remote cache can be explained. A layer of a base image that lives in
//! another registry is not in the manifest: the table keeps where it can be fetched
//! from (`sources`), so a cache never re-uploads a base image's layers.

use std::collections::BTreeMap;

use kiln_cache::{BuildRecord, Digest};
use serde::{Deserialize, Serialize};

use crate::snapshots::LayerRef;

/// The config's media type.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.kiln.cache.config.v1+json";
/// The format's version.
pub const CACHE_VERSION: u32 = 1;
/// The largest config read (BuildKit's 1 MiB cap is what makes a large `mode=max`
/// cache unimportable there, moby/buildkit#3719).
pub const MAX_CONFIG: u64 = 128 << 20;
/// Records kept by default (`max-records=`).
pub const DEFAULT_MAX_RECORDS: usize = 10_000;
/// Build records kept in a cache.
pub const MAX_BUILDS: usize = 20;

/// One layer of the table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheLayer {
    /// The blob.
    pub digest: Digest,
    /// The uncompressed tar's digest.
    pub diff_id: Digest,
    /// Blob size.
    pub size: u64,
    /// Blob media type.
    pub media_type: String,
    /// `(registry, repository)`s that hold it when it is not in the manifest (a base
    /// image's layer from another registry); empty: it is one of the manifest's layers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<(String, String)>,
}

impl CacheLayer {
    /// The layer as the worker knows it.
    pub fn layer_ref(&self) -> LayerRef {
        LayerRef {
            digest: self.digest.clone(),
            diff_id: self.diff_id.clone(),
            size: self.size,
            media_type: self.media_type.clone(),
        }
    }
}

/// What a cache key maps to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheRecord {
    /// The result's layers, bottom first, as indexes into [`CacheConfig::layers`].
    pub layers: Vec<usize>,
    /// Whether the step added the last layer.
    pub added: bool,
    /// The step (`[stage] INSTRUCTION`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The build record id of the build that made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<String>,
    /// When it was exported, Unix milliseconds (newest wins in a merge).
    pub created_ms: u64,
}

/// A record with its layers resolved: what export and merge work on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The layers.
    pub layers: Vec<CacheLayer>,
    /// See [`CacheRecord`].
    pub added: bool,
    /// See [`CacheRecord`].
    pub description: Option<String>,
    /// See [`CacheRecord`].
    pub build: Option<String>,
    /// See [`CacheRecord`].
    pub created_ms: u64,
}

/// The config blob.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CacheConfig {
    /// [`CACHE_VERSION`].
    pub version: u32,
    /// The layer table.
    pub layers: Vec<CacheLayer>,
    /// Cache key -> result.
    pub records: BTreeMap<String, CacheRecord>,
    /// The exporting builds' records, newest first, file sets inline.
    #[serde(default)]
    pub builds: Vec<BuildRecord>,
}

/// Why a cache config is unusable.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// Not JSON of the expected shape.
    #[error("the cache config is not valid: {0}")]
    Json(#[from] serde_json::Error),
    /// A version kiln does not read.
    #[error("cache format version {0} (this kiln reads {CACHE_VERSION})")]
    Version(u32),
    /// A record names a layer the table does not have.
    #[error("record {key} refers to layer {index}, but the cache has {len}")]
    BadIndex {
        /// The key.
        key: String,
        /// The index.
        index: usize,
        /// The table's length.
        len: usize,
    },
}

impl CacheConfig {
    /// Parses and checks a config.
    pub fn parse(bytes: &[u8]) -> Result<CacheConfig, FormatError> {
        let c: CacheConfig = serde_json::from_slice(bytes)?;
        if c.version != CACHE_VERSION {
            return Err(FormatError::Version(c.version));
        }
        for (key, r) in &c.records {
            if let Some(&index) = r.layers.iter().find(|&&i| i >= c.layers.len()) {
                return Err(FormatError::BadIndex {
                    key: key.clone(),
                    index,
                    len: c.layers.len(),
                });
            }
        }
        Ok(c)
    }

    /// The records with their layers resolved.
    pub fn entries(&self) -> BTreeMap<String, Entry> {
        self.records
            .iter()
            .map(|(k, r)| {
                (
                    k.clone(),
                    Entry {
                        layers: r.layers.iter().map(|&i| self.layers[i].clone()).collect(),
                        added: r.added,
                        description: r.description.clone(),
                        build: r.build.clone(),
                        created_ms: r.created_ms,
                    },
                )
            })
            .collect()
    }

    /// A config holding `entries` (each layer once in the table) and `builds`.
    pub fn from_entries(entries: &BTreeMap<String, Entry>, builds: Vec<BuildRecord>) -> Self {
        let mut layers: Vec<CacheLayer> = Vec::new();
        let mut index: BTreeMap<Digest, usize> = BTreeMap::new();
        let mut records = BTreeMap::new();
        for (k, e) in entries {
            let idx = e
                .layers
                .iter()
                .map(|l| {
                    *index.entry(l.digest.clone()).or_insert_with(|| {
                        layers.push(l.clone());
                        layers.len() - 1
                    })
                })
                .collect();
            records.insert(
                k.clone(),
                CacheRecord {
                    layers: idx,
                    added: e.added,
                    description: e.description.clone(),
                    build: e.build.clone(),
                    created_ms: e.created_ms,
                },
            );
        }
        CacheConfig {
            version: CACHE_VERSION,
            layers,
            records,
            builds,
        }
    }

    /// The config as stored.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a cache config serializes")
    }

    /// The image manifest of this config (stored as `config`): its layers are the
    /// table's layers that have no other source.
    pub fn manifest(&self, config: &Digest, config_size: u64) -> Vec<u8> {
        let layers: Vec<serde_json::Value> = self
            .layers
            .iter()
            .filter(|l| l.sources.is_empty())
            .map(|l| {
                serde_json::json!({
                    "mediaType": l.media_type,
                    "digest": l.digest.as_str(),
                    "size": l.size,
                })
            })
            .collect();
        let m = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": kiln_registry::media_types::OCI_MANIFEST,
            "config": {
                "mediaType": CONFIG_MEDIA_TYPE,
                "digest": config.as_str(),
                "size": config_size,
            },
            "layers": layers,
            "annotations": {"org.opencontainers.image.title": "kiln build cache"},
        });
        serde_json::to_vec(&m).expect("a manifest serializes")
    }
}

/// The union of `old` and `new` by key, the newer of two records of one key winning,
/// at most `max` (the oldest dropped).
pub fn merge(
    old: BTreeMap<String, Entry>,
    new: BTreeMap<String, Entry>,
    max: usize,
) -> BTreeMap<String, Entry> {
    let mut all = old;
    for (k, e) in new {
        match all.get(&k) {
            Some(o) if o.created_ms > e.created_ms => {}
            _ => {
                all.insert(k, e);
            }
        }
    }
    if all.len() > max {
        let mut by_age: Vec<(u64, String)> =
            all.iter().map(|(k, e)| (e.created_ms, k.clone())).collect();
        by_age.sort();
        for (_, k) in by_age.into_iter().take(all.len() - max) {
            all.remove(&k);
        }
    }
    all
}

/// The union of build records by id, newest first, at most `max`.
pub fn merge_builds(old: Vec<BuildRecord>, new: Vec<BuildRecord>, max: usize) -> Vec<BuildRecord> {
    let mut all: Vec<BuildRecord> = new;
    for r in old {
        if !all.iter().any(|n| n.id == r.id) {
            all.push(r);
        }
    }
    all.sort_by(|a, b| b.started_ms.cmp(&a.started_ms).then(b.id.cmp(&a.id)));
    all.truncate(max);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(n: u8) -> CacheLayer {
        CacheLayer {
            digest: kiln_cache::sha256_of(&[n]),
            diff_id: kiln_cache::sha256_of(&[n, n]),
            size: n as u64,
            media_type: kiln_registry::media_types::OCI_LAYER_GZIP.into(),
            sources: Vec::new(),
        }
    }

    fn entry(layers: &[u8], created_ms: u64) -> Entry {
        Entry {
            layers: layers.iter().map(|&n| layer(n)).collect(),
            added: true,
            description: Some(format!("step {created_ms}")),
            build: None,
            created_ms,
        }
    }

    #[test]
    fn round_trip_shares_layers_and_checks_indexes() {
        let mut entries = BTreeMap::new();
        entries.insert("k1".to_string(), entry(&[1], 10));
        entries.insert("k2".to_string(), entry(&[1, 2], 20));
        let mut base = layer(3);
        base.sources = vec![("docker.io".into(), "library/debian".into())];
        entries.insert(
            "k3".to_string(),
            Entry {
                layers: vec![base.clone(), layer(2)],
                ..entry(&[], 30)
            },
        );
        let build = BuildRecord {
            id: "b1".into(),
            ..BuildRecord::default()
        };
        let c = CacheConfig::from_entries(&entries, vec![build.clone()]);
        assert_eq!(c.layers.len(), 3, "each layer once");
        let back = CacheConfig::parse(&c.to_bytes()).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.entries(), entries);
        assert_eq!(back.builds, [build]);
        // The manifest lists the layers without another source.
        let d = kiln_cache::sha256_of(b"cfg");
        let m: serde_json::Value = serde_json::from_slice(&c.manifest(&d, 3)).unwrap();
        assert_eq!(m["config"]["mediaType"], CONFIG_MEDIA_TYPE);
        let listed: Vec<&str> = m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap())
            .collect();
        assert_eq!(listed, [layer(1).digest.as_str(), layer(2).digest.as_str()]);
        // A bad index and an unknown version are refused.
        let mut bad = c.clone();
        bad.records.get_mut("k1").unwrap().layers = vec![7];
        let e = CacheConfig::parse(&bad.to_bytes()).unwrap_err().to_string();
        assert_eq!(e, "record k1 refers to layer 7, but the cache has 3");
        let mut v2 = c;
        v2.version = 2;
        assert!(
            CacheConfig::parse(&v2.to_bytes())
                .unwrap_err()
                .to_string()
                .contains("version 2")
        );
    }

    #[test]
    fn merge_is_a_union_newest_wins_bounded() {
        let mut old = BTreeMap::new();
        old.insert("a".to_string(), entry(&[1], 10));
        old.insert("b".to_string(), entry(&[2], 50));
        old.insert("c".to_string(), entry(&[3], 5));
        let mut new = BTreeMap::new();
        new.insert("a".to_string(), entry(&[4], 20));
        new.insert("b".to_string(), entry(&[5], 40));
        new.insert("d".to_string(), entry(&[6], 30));
        let m = merge(old.clone(), new.clone(), 100);
        assert_eq!(m.len(), 4);
        assert_eq!(m["a"].created_ms, 20, "the newer record of a key wins");
        assert_eq!(m["b"].created_ms, 50, "an older one does not replace it");
        // Bounded: the oldest go (c at 5, then a at 20).
        let m = merge(old, new, 2);
        assert_eq!(m.keys().collect::<Vec<_>>(), ["b", "d"]);
    }

    #[test]
    fn builds_merge_by_id_newest_first_bounded() {
        let b = |id: &str, t: u64| BuildRecord {
            id: id.into(),
            started_ms: t,
            ..BuildRecord::default()
        };
        let m = merge_builds(vec![b("x", 1), b("y", 3)], vec![b("z", 2), b("y", 3)], 2);
        let ids: Vec<&str> = m.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["y", "z"]);
    }
}
