//! `--cache-to`: after the build (and its push), the records of the chosen steps are
//! merged with what is at the destination already (the union by key, newest wins,
//! bounded) and written back: for a registry, blobs first (HEAD first, mounted from a
//! repository known to hold them, the rest uploaded several at once: the push
//! machinery), then the config, then the manifest under the ref's tag; for a
//! directory, an OCI layout written blob by blob and its `index.json` last, each file
//! through a temporary file and a rename.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::Path;

use kiln_cache::atomic::{self, AtomicError};
use kiln_cache::{BuildRecord, Digest, Store};
use kiln_frontend::convert::Plan;
use kiln_ops::VertexId;
use kiln_registry::Reference;
use kiln_solver::Solved;

use super::RemoteCacheError;
use super::format::{
    CONFIG_MEDIA_TYPE, CacheConfig, CacheLayer, Entry, MAX_BUILDS, MAX_CONFIG, merge, merge_builds,
};
use super::spec::{CacheLocation, CacheMode, CacheToSpec};
use crate::remote::Remote;
use crate::snapshots::LayerRef;
use crate::worker::Output;

/// A step result to export, before its layers are placed.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The result's layers.
    pub layers: Vec<LayerRef>,
    /// Whether it added the last one.
    pub added: bool,
    /// `[stage] INSTRUCTION`.
    pub description: Option<String>,
}

/// The records `mode` exports: `max`, every step with a cache key; `min`, the steps of
/// the target stage's chain, those whose result is a bottom part of the final image.
pub fn candidates(
    plan: &Plan,
    results: &HashMap<VertexId, Solved<Output>>,
    mode: CacheMode,
) -> BTreeMap<String, Candidate> {
    let final_layers: &[LayerRef] = plan
        .target_stage()
        .root
        .and_then(|r| results.get(&r))
        .map(|s| s.output.layers())
        .unwrap_or(&[]);
    let mut chosen: HashSet<VertexId> = HashSet::new();
    match mode {
        CacheMode::Max => chosen.extend(results.keys().copied()),
        CacheMode::Min => {
            let mut todo: Vec<VertexId> = plan.target_stage().root.into_iter().collect();
            while let Some(id) = todo.pop() {
                let Some(s) = results.get(&id) else { continue };
                if !final_layers.starts_with(s.output.layers()) || !chosen.insert(id) {
                    continue;
                }
                todo.extend(plan.graph.vertex(id).inputs.iter().copied());
            }
        }
    }
    let mut out = BTreeMap::new();
    for id in chosen {
        let s = &results[&id];
        let Output::Fs { layers, added } = &s.output else {
            continue;
        };
        out.insert(
            s.key.to_string(),
            Candidate {
                layers: layers.clone(),
                added: *added,
                description: crate::worker::describe(plan.graph.vertex(id)),
            },
        );
    }
    out
}

/// What an export did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExportReport {
    /// Records in the cache afterwards.
    pub records: usize,
    /// Records this build added or replaced.
    pub exported: usize,
    /// Blobs uploaded (or copied into a directory).
    pub uploaded: usize,
    /// Blobs the destination had.
    pub skipped: usize,
    /// Blobs mounted from another repository.
    pub mounted: usize,
    /// Bytes sent.
    pub bytes: u64,
    /// The destination already held every result of this build: nothing was written.
    pub up_to_date: bool,
}

impl ExportReport {
    /// The progress line.
    pub fn line(&self, to: &CacheLocation) -> String {
        if self.up_to_date {
            return format!(
                "cache at {to} is up to date: {} records, {} from this build",
                self.records, self.exported
            );
        }
        format!(
            "exported cache to {to}: {} records ({} from this build), {} blobs uploaded, {} skipped, {} mounted, {} bytes",
            self.records, self.exported, self.uploaded, self.skipped, self.mounted, self.bytes
        )
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// Places each layer of this build's records: in the cache (`sources` empty) when the
/// store has it or `registry` (the cache's, if it is one) is known to; else where a
/// base came from (another registry); a record with a layer that is nowhere is left out.
fn place(
    store: &Store,
    cands: BTreeMap<String, Candidate>,
    registry: Option<&str>,
    build: Option<&str>,
) -> BTreeMap<String, Entry> {
    let created_ms = now_ms();
    let mut out = BTreeMap::new();
    'records: for (key, c) in cands {
        let mut layers = Vec::new();
        for l in &c.layers {
            let known = kiln_registry::known_sources(store, &l.digest);
            // A layer kept as its snapshot only is written again when uploaded.
            let local = store.blob_size(&l.digest).ok() == Some(l.size)
                || crate::recreate::can_recreate(store, &l.digest);
            let sources = match registry {
                // The registry has it (a base of the same registry, a pushed image):
                // the push finds it (HEAD) or mounts it.
                Some(r) if known.iter().any(|(reg, _)| reg == r) => Vec::new(),
                // A base image's layer from another registry: fetched from there, never
                // uploaded with the cache (containers/buildah#5449).
                Some(_) if !known.is_empty() => known,
                None if !local && !known.is_empty() => known,
                _ if local => Vec::new(),
                _ => continue 'records,
            };
            layers.push(CacheLayer {
                digest: l.digest.clone(),
                diff_id: l.diff_id.clone(),
                size: l.size,
                media_type: l.media_type.clone(),
                sources,
            });
        }
        out.insert(
            key,
            Entry {
                layers,
                added: c.added,
                description: c.description,
                build: build.map(str::to_owned),
                created_ms,
            },
        );
    }
    out
}

/// Whether `old` already holds every record of `new` with the same result: a no-op
/// build then writes nothing (its build record adds nothing to explain against either).
fn up_to_date(old: &BTreeMap<String, Entry>, new: &BTreeMap<String, Entry>) -> bool {
    new.iter().all(|(k, e)| {
        old.get(k).is_some_and(|o| {
            o.added == e.added
                && o.layers.len() == e.layers.len()
                && o.layers
                    .iter()
                    .zip(&e.layers)
                    .all(|(a, b)| a.digest == b.digest)
        })
    })
}

/// Exports `cands` and `build` (a self-contained build record) to `spec`'s location.
pub fn export(
    store: &Store,
    remote: &Remote,
    spec: &CacheToSpec,
    cands: BTreeMap<String, Candidate>,
    build: Option<BuildRecord>,
    progress: &dyn kiln_registry::Progress,
) -> Result<ExportReport, RemoteCacheError> {
    let build_id = build.as_ref().map(|b| b.id.clone());
    match &spec.location {
        CacheLocation::Registry(r) => {
            let mut target = Reference::parse(r)?;
            if target.tag.is_none() && target.digest.is_none() {
                target = target.with_tag("latest");
            }
            let client = remote.client()?;
            let (old, old_builds) =
                match client.fetch_artifact(&target, CONFIG_MEDIA_TYPE, MAX_CONFIG, store)? {
                    Some(a) => {
                        let c = CacheConfig::parse(&a.config)?;
                        // What the old manifest lists is in the target repository: the push
                        // finds it there (HEAD) instead of needing it in the store.
                        for l in c.layers.iter().filter(|l| l.sources.is_empty()) {
                            kiln_registry::remember_source(
                                store,
                                &l.digest,
                                &target.registry,
                                &target.repository,
                            );
                        }
                        (c.entries(), c.builds)
                    }
                    None => Default::default(),
                };
            let new = place(store, cands, Some(&target.registry), build_id.as_deref());
            let exported = new.len();
            if !old.is_empty() && up_to_date(&old, &new) {
                return Ok(ExportReport {
                    records: old.len(),
                    exported,
                    up_to_date: true,
                    ..ExportReport::default()
                });
            }
            let merged = merge(old, new, spec.max_records);
            let builds = merge_builds(old_builds, build.into_iter().collect(), MAX_BUILDS);
            let config = CacheConfig::from_entries(&merged, builds);
            let config_bytes = config.to_bytes();
            let config_digest = store.put_blob(&config_bytes)?;
            let manifest = config.manifest(&config_digest, config_bytes.len() as u64);
            let manifest_digest = store.put_blob(&manifest)?;
            let pushed = client.push(
                store,
                &manifest_digest,
                &target,
                &crate::recreate::push_options(false),
                progress,
            )?;
            Ok(ExportReport {
                records: merged.len(),
                exported,
                uploaded: pushed.blobs_uploaded,
                skipped: pushed.blobs_skipped,
                mounted: pushed.blobs_mounted,
                bytes: pushed.bytes_uploaded,
                up_to_date: false,
            })
        }
        CacheLocation::Local(dir) => {
            let (old, old_builds) = if dir.join("index.json").exists() {
                let (_, bytes) = super::import::read_layout(store, dir)?;
                let c = CacheConfig::parse(&bytes)?;
                (c.entries(), c.builds)
            } else {
                Default::default()
            };
            let new = place(store, cands, None, build_id.as_deref());
            let exported = new.len();
            if !old.is_empty() && up_to_date(&old, &new) {
                return Ok(ExportReport {
                    records: old.len(),
                    exported,
                    up_to_date: true,
                    ..ExportReport::default()
                });
            }
            let merged = merge(old, new, spec.max_records);
            let builds = merge_builds(old_builds, build.into_iter().collect(), MAX_BUILDS);
            let config = CacheConfig::from_entries(&merged, builds);
            let mut report = write_layout(store, dir, &config)?;
            report.records = merged.len();
            report.exported = exported;
            Ok(report)
        }
    }
}

/// Writes the cache as an OCI layout in `dir`: the blobs it lacks, the config, the
/// manifest, then `index.json` (the switch to the new cache).
fn write_layout(
    store: &Store,
    dir: &Path,
    config: &CacheConfig,
) -> Result<ExportReport, RemoteCacheError> {
    let io = |what: String| move |source: std::io::Error| RemoteCacheError::Layout { what, source };
    // A file of the layout, written atomically; any failure is the file's.
    let write_file =
        |path: &Path, write: &mut dyn FnMut(&mut std::fs::File) -> std::io::Result<()>| {
            atomic::write_with(path, write)
                .map_err(AtomicError::into_io)
                .map_err(io(format!("writing {}", path.display())))
        };
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(io(format!("creating {}", blobs.display())))?;
    let mut report = ExportReport::default();
    let blob_path = |d: &Digest| blobs.join(d.hex());
    let put_bytes = |d: &Digest, bytes: &[u8]| -> Result<(), RemoteCacheError> {
        let p = blob_path(d);
        if !p.exists() {
            write_file(&p, &mut |f| f.write_all(bytes))?;
        }
        Ok(())
    };
    for l in config.layers.iter().filter(|l| l.sources.is_empty()) {
        let p = blob_path(&l.digest);
        if std::fs::metadata(&p).is_ok_and(|m| m.len() == l.size) {
            report.skipped += 1;
            continue;
        }
        if !store.has_blob(&l.digest) {
            crate::recreate::recreate(store, &l.digest).map_err(Box::new)?;
        }
        let mut from = store.open_blob(&l.digest)?;
        write_file(&p, &mut |f| std::io::copy(&mut from, f).map(|_| ()))?;
        report.uploaded += 1;
        report.bytes += l.size;
    }
    let config_bytes = config.to_bytes();
    let config_digest = kiln_cache::sha256_of(&config_bytes);
    put_bytes(&config_digest, &config_bytes)?;
    let manifest = config.manifest(&config_digest, config_bytes.len() as u64);
    let manifest_digest = kiln_cache::sha256_of(&manifest);
    put_bytes(&manifest_digest, &manifest)?;
    let layout = dir.join("oci-layout");
    if !layout.exists() {
        write_file(&layout, &mut |f| {
            f.write_all(br#"{"imageLayoutVersion":"1.0.0"}"#)
        })?;
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": kiln_registry::media_types::OCI_INDEX,
        "manifests": [{
            "mediaType": kiln_registry::media_types::OCI_MANIFEST,
            "digest": manifest_digest.as_str(),
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": "kiln-cache"},
        }],
    });
    let index_path = dir.join("index.json");
    write_file(&index_path, &mut |f| {
        f.write_all(&serde_json::to_vec(&index).expect("index serializes"))
    })?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(store: &Store, name: &[u8], local: bool) -> LayerRef {
        let digest = if local {
            store.put_blob(name).unwrap()
        } else {
            kiln_cache::sha256_of(name)
        };
        LayerRef {
            digest,
            diff_id: kiln_cache::sha256_of(&[name, b"-diff"].concat()),
            size: name.len() as u64,
            media_type: kiln_registry::media_types::OCI_LAYER_GZIP.into(),
        }
    }

    fn cand(layers: Vec<LayerRef>) -> Candidate {
        Candidate {
            layers,
            added: true,
            description: None,
        }
    }

    /// Where each layer of an exported record goes: in the cache when the store or the
    /// cache's registry has it, left where a base came from when another registry has
    /// it, and a record with a layer that is nowhere is dropped.
    #[test]
    fn layers_are_placed_by_where_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let built = layer(&store, b"built here", true);
        let same = layer(&store, b"in the cache registry", false);
        kiln_registry::remember_source(&store, &same.digest, "reg:5000", "apps/app");
        let base = layer(&store, b"a docker.io base", true);
        kiln_registry::remember_source(&store, &base.digest, "docker.io", "library/debian");
        let nowhere = layer(&store, b"gone", false);
        let mut cands = BTreeMap::new();
        cands.insert(
            "k1".to_string(),
            cand(vec![base.clone(), same.clone(), built.clone()]),
        );
        cands.insert("k2".to_string(), cand(vec![built.clone(), nowhere.clone()]));
        let placed = place(&store, cands.clone(), Some("reg:5000"), Some("b1"));
        assert_eq!(placed.keys().collect::<Vec<_>>(), ["k1"], "k2 is dropped");
        let sources: Vec<&Vec<(String, String)>> =
            placed["k1"].layers.iter().map(|l| &l.sources).collect();
        assert_eq!(
            sources,
            [
                &vec![("docker.io".to_string(), "library/debian".to_string())],
                &vec![],
                &vec![],
            ]
        );
        assert_eq!(placed["k1"].build.as_deref(), Some("b1"));
        // A directory cache copies what the store has, and keeps the rest's sources.
        let placed = place(&store, cands, None, None);
        assert_eq!(placed.keys().collect::<Vec<_>>(), ["k1"]);
        let in_dir: Vec<bool> = placed["k1"]
            .layers
            .iter()
            .map(|l| l.sources.is_empty())
            .collect();
        assert_eq!(in_dir, [true, false, true]);
    }
}
