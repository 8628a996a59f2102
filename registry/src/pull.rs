//! Pull: resolve a reference to a manifest (through an index if need be) and
//! stream its config and layers into the store; or resolve only (manifest and
//! config) and fetch the layers later, when they are needed.

use std::io::{Read, Write};

use kiln_cache::{CacheError, Digest, Store, sha256_of};
use kiln_oci::Platform;
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use reqwest::StatusCode;
use reqwest::blocking::Response;
use reqwest::header::{ACCEPT, CONTENT_TYPE};

use crate::client::{Client, Ctx, pull_scope};
use crate::error::{RegistryError, Result};
use crate::media_types::{self, is_index, is_manifest};
use crate::progress::{BlobDone, BlobEvent, BlobKind, Progress};
use crate::reference::Reference;
use crate::{MAX_CONFIG_SIZE, MAX_MANIFEST_SIZE, sources};

/// A blob of a pulled image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PulledBlob {
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Its media type as the manifest gives it.
    pub media_type: String,
}

/// What [`Client::pull`] stored.
#[derive(Clone, Debug)]
pub struct Pulled {
    /// Digest of the platform image manifest, stored byte for byte as
    /// served.
    pub manifest_digest: Digest,
    /// The manifest's media type (OCI or Docker schema 2).
    pub media_type: String,
    /// The image config blob.
    pub config: PulledBlob,
    /// Layers, bottom first.
    pub layers: Vec<PulledBlob>,
    /// Digest of the index / manifest list the reference pointed at, if it
    /// did (also stored).
    pub index_digest: Option<Digest>,
    /// Bytes downloaded (blobs already in the store are not fetched).
    pub bytes_downloaded: u64,
}

/// An artifact read by [`Client::fetch_artifact`]: one image manifest and its config.
#[derive(Clone, Debug)]
pub struct Artifact {
    /// Digest of the manifest.
    pub manifest_digest: Digest,
    /// The manifest.
    pub manifest: ImageManifest,
    /// The config blob's bytes (digest-checked).
    pub config: Vec<u8>,
}

/// Every manifest type kiln understands, for the `Accept` header.
const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// A manifest as fetched: exact bytes, media type and verified digest.
pub(crate) struct Fetched {
    pub bytes: Vec<u8>,
    pub media_type: String,
    pub digest: Digest,
}

/// A platform manifest found for a reference, not stored yet.
struct Found {
    /// The index the reference pointed at, if it did.
    index: Option<Fetched>,
    manifest: Fetched,
    config: PulledBlob,
    layers: Vec<PulledBlob>,
}

impl Client {
    /// Pull `reference` for `platform` into `store`: the manifest (and the
    /// index, if the reference names one) byte for byte, the config and
    /// the layers, several at once. Every blob is digest-checked before it
    /// lands in the store; the manifest is stored last, so a failed pull
    /// leaves no manifest referring to blobs that cannot be fetched.
    pub fn pull(
        &self,
        reference: &Reference,
        platform: &Platform,
        store: &Store,
        progress: &dyn Progress,
    ) -> Result<Pulled> {
        let found = self.find(reference, platform)?;
        let mut todo: Vec<PulledBlob> = Vec::new();
        for b in std::iter::once(&found.config).chain(&found.layers) {
            if !todo.iter().any(|t| t.digest == b.digest) {
                todo.push(b.clone());
            }
        }
        let fetched = self.fetch_blobs(reference, &todo, store, progress)?;
        self.store_found(reference, found, store, fetched)
    }

    /// Resolve `reference` for `platform` into `store` without its layers: the
    /// manifest (and index) byte for byte and the config. The store remembers
    /// where the layers can be fetched from, and [`Client::fetch_missing`]
    /// fetches them when they are needed (BuildKit's lazy blobs).
    pub fn resolve(
        &self,
        reference: &Reference,
        platform: &Platform,
        store: &Store,
        progress: &dyn Progress,
    ) -> Result<Pulled> {
        self.resolve_then(reference, platform, store, progress, &|_| {})
    }

    /// [`Client::resolve`], showing `layers` the image's layers as soon as the
    /// manifest is read, before the config is fetched: a caller that will need
    /// them can start fetching them ([`Client::fetch_blobs`]) beside the config.
    pub fn resolve_then(
        &self,
        reference: &Reference,
        platform: &Platform,
        store: &Store,
        progress: &dyn Progress,
        layers: &dyn Fn(&[PulledBlob]),
    ) -> Result<Pulled> {
        let found = self.find(reference, platform)?;
        layers(&found.layers);
        let fetched = self.fetch_blob(reference, &found.config, store, progress)?;
        self.store_found(reference, found, store, fetched)
    }

    /// Make `blobs` of the image at `reference` present in `store`: those missing
    /// are fetched from its repository, several at once and digest- and
    /// size-checked. Returns the bytes downloaded.
    pub fn fetch_blobs(
        &self,
        reference: &Reference,
        blobs: &[PulledBlob],
        store: &Store,
        progress: &dyn Progress,
    ) -> Result<u64> {
        let fetched = crate::client::run_parallel(self.opts.max_concurrent, blobs, |b| {
            self.fetch_blob(reference, b, store, progress)
        })?;
        Ok(fetched.iter().sum())
    }

    /// Make `blobs` present in `store`: those missing are fetched, several at
    /// once and digest- and size-checked, from a repository known to hold them
    /// (recorded by [`Client::resolve`], [`Client::pull`] and pushes). Returns
    /// the bytes downloaded; nothing touches the network when all are present.
    pub fn fetch_missing(
        &self,
        store: &Store,
        blobs: &[PulledBlob],
        progress: &dyn Progress,
    ) -> Result<u64> {
        let mut todo: Vec<&PulledBlob> = Vec::new();
        for b in blobs {
            if store.blob_size(&b.digest).ok() != Some(b.size)
                && !todo.iter().any(|t| t.digest == b.digest)
            {
                todo.push(b);
            }
        }
        let fetched = crate::client::run_parallel(self.opts.max_concurrent, &todo, |b| {
            let mut last = None;
            for (registry, repository) in sources::all(store, &b.digest) {
                let from = Reference {
                    registry,
                    repository,
                    tag: None,
                    digest: Some(b.digest.to_string()),
                };
                match self.fetch_blob(&from, b, store, progress) {
                    Ok(n) => return Ok(n),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| RegistryError::BlobUnavailable {
                digest: b.digest.to_string(),
            }))
        })?;
        Ok(fetched.iter().sum())
    }

    /// Reads the artifact at `reference` (a registry cache): its image manifest, whose
    /// config must have the media type `config_media_type` and be at most
    /// `max_config` bytes, and that config, streamed into `store` (a temporary file,
    /// digest-checked when committed) before it is read back. `Ok(None)` when the
    /// registry has nothing at `reference` (404). Layers are not fetched, and the
    /// store is not told where they are (a caller does that for the ones it uses).
    pub fn fetch_artifact(
        &self,
        reference: &Reference,
        config_media_type: &str,
        max_config: u64,
        store: &Store,
    ) -> Result<Option<Artifact>> {
        let m = match self.fetch_manifest(reference, reference.manifest_ref()) {
            Ok(m) => m,
            Err(e) if e.status() == Some(404) => return Ok(None),
            Err(e) => return Err(e),
        };
        if !is_manifest(&m.media_type) || is_index(&m.media_type) {
            return Err(RegistryError::InvalidManifest {
                reference: reference.to_string(),
                reason: format!("expected an image manifest, found a {}", m.media_type),
            });
        }
        let manifest: ImageManifest =
            serde_json::from_slice(&m.bytes).map_err(|e| invalid(reference, e))?;
        let config = blob_of(reference, manifest.config())?;
        if config.media_type != config_media_type {
            return Err(RegistryError::InvalidManifest {
                reference: reference.to_string(),
                reason: format!(
                    "its config has media type {}, not {config_media_type}",
                    config.media_type
                ),
            });
        }
        if config.size > max_config {
            return Err(RegistryError::TooLarge {
                reference: reference.to_string(),
                what: format!("config {}", config.digest),
                limit: max_config,
            });
        }
        self.fetch_blob(reference, &config, store, &crate::progress::NoProgress)?;
        let bytes = store.read_blob(&config.digest)?;
        Ok(Some(Artifact {
            manifest_digest: m.digest,
            manifest,
            config: bytes,
        }))
    }

    /// The platform manifest of `reference` (through an index if need be), its
    /// config and layers, checked but not stored.
    fn find(&self, reference: &Reference, platform: &Platform) -> Result<Found> {
        let mut m = self.fetch_manifest(reference, reference.manifest_ref())?;
        let mut index = None;
        if is_index(&m.media_type) {
            let idx: ImageIndex =
                serde_json::from_slice(&m.bytes).map_err(|e| invalid(reference, e))?;
            let Some(desc) = platform.pick(idx.manifests()) else {
                let available: Vec<String> = idx
                    .manifests()
                    .iter()
                    .filter_map(Platform::of)
                    .map(|p| p.to_string())
                    .collect();
                return Err(RegistryError::NoMatchingPlatform {
                    reference: reference.to_string(),
                    platform: platform.to_string(),
                    available: if available.is_empty() {
                        "none".into()
                    } else {
                        available.join(", ")
                    },
                });
            };
            let child = self.fetch_manifest(reference, desc.digest().as_ref())?;
            if is_index(&child.media_type) {
                return Err(RegistryError::InvalidManifest {
                    reference: reference.to_string(),
                    reason: format!("index entry {} is itself an index", child.digest),
                });
            }
            index = Some(std::mem::replace(&mut m, child));
        }
        if !is_manifest(&m.media_type) {
            return Err(RegistryError::InvalidManifest {
                reference: reference.to_string(),
                reason: format!("unsupported manifest media type {}", m.media_type),
            });
        }
        let manifest: ImageManifest =
            serde_json::from_slice(&m.bytes).map_err(|e| invalid(reference, e))?;
        let config = blob_of(reference, manifest.config())?;
        if config.size > MAX_CONFIG_SIZE {
            return Err(RegistryError::TooLarge {
                reference: reference.to_string(),
                what: format!("image config {}", config.digest),
                limit: MAX_CONFIG_SIZE,
            });
        }
        let layers = manifest
            .layers()
            .iter()
            .map(|d| blob_of(reference, d))
            .collect::<Result<Vec<_>>>()?;
        Ok(Found {
            index,
            manifest: m,
            config,
            layers,
        })
    }

    /// Stores the index and manifest of `found` (its config is stored already)
    /// and remembers that `reference`'s repository holds its blobs.
    fn store_found(
        &self,
        reference: &Reference,
        found: Found,
        store: &Store,
        bytes_downloaded: u64,
    ) -> Result<Pulled> {
        let Found {
            index,
            manifest: m,
            config,
            layers,
        } = found;
        if let Some(idx) = &index {
            store.put_blob(&idx.bytes)?;
        }
        let stored = store.put_blob(&m.bytes)?;
        debug_assert_eq!(stored, m.digest);
        for b in std::iter::once(&config).chain(&layers) {
            sources::add(store, &b.digest, &reference.registry, &reference.repository);
        }
        Ok(Pulled {
            manifest_digest: m.digest,
            media_type: m.media_type,
            config,
            layers,
            index_digest: index.map(|i| i.digest),
            bytes_downloaded,
        })
    }

    /// GET a manifest by tag or digest, size-limited and verified: against
    /// `by` when it is a digest, else against `Docker-Content-Digest`.
    pub(crate) fn fetch_manifest(&self, reference: &Reference, by: &str) -> Result<Fetched> {
        let ctx = self.pull_ctx(reference);
        let url = format!(
            "{}/v2/{}/manifests/{by}",
            self.base_url(&reference.registry),
            reference.repository
        );
        let (bytes, header_type, header_digest) = self.with_retries(|| {
            let resp = self.send_expect(&ctx, &[StatusCode::OK], &|h| {
                h.get(&url).header(ACCEPT, ACCEPT_MANIFESTS)
            })?;
            let header = |name: &str| {
                resp.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(|s| s.split(';').next().unwrap_or("").trim().to_owned())
            };
            let ct = header(CONTENT_TYPE.as_str());
            let dcd = header("docker-content-digest");
            let bytes = read_limited(&ctx, resp, MAX_MANIFEST_SIZE, "manifest")?;
            Ok((bytes, ct, dcd))
        })?;
        let digest = sha256_of(&bytes);
        let expected = if by.contains(':') {
            Some(by.to_owned())
        } else {
            header_digest.filter(|d| d.starts_with("sha256:"))
        };
        if let Some(expected) = expected
            && expected != digest.as_str()
        {
            return Err(RegistryError::DigestMismatch {
                reference: reference.to_string(),
                what: "manifest",
                expected,
                actual: digest.to_string(),
            });
        }
        let media_type = media_type_of(&bytes, header_type.as_deref()).map_err(|reason| {
            RegistryError::InvalidManifest {
                reference: reference.to_string(),
                reason,
            }
        })?;
        Ok(Fetched {
            bytes,
            media_type,
            digest,
        })
    }

    /// Stream one blob into the store unless it is there already. Returns
    /// the bytes downloaded.
    fn fetch_blob(
        &self,
        reference: &Reference,
        blob: &PulledBlob,
        store: &Store,
        progress: &dyn Progress,
    ) -> Result<u64> {
        let digest = blob.digest.as_str();
        if store.blob_size(&blob.digest).ok() == Some(blob.size) {
            progress.blob(&BlobEvent::Done {
                digest: &blob.digest,
                size: blob.size,
                how: BlobDone::Cached,
            });
            return Ok(0);
        }
        progress.blob(&BlobEvent::Started {
            digest: &blob.digest,
            size: blob.size,
            kind: BlobKind::Download,
        });
        let ctx = self.pull_ctx(reference);
        let url = format!(
            "{}/v2/{}/blobs/{digest}",
            self.base_url(&reference.registry),
            reference.repository
        );
        let result = self.with_retries(|| {
            let resp = self.send_expect(&ctx, &[StatusCode::OK], &|h| h.get(&url))?;
            let mut resp = ctx.timeouts.watch(resp);
            let mut w = store.blob_writer()?;
            let mut buf = vec![0u8; 256 << 10];
            let mut total = 0u64;
            loop {
                if progress.cancelled() {
                    return Err(RegistryError::Cancelled {
                        digest: digest.to_owned(),
                    });
                }
                let n = match resp.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(ctx.transport(&e)),
                };
                total += n as u64;
                if total > blob.size {
                    return Err(RegistryError::TooLarge {
                        reference: reference.to_string(),
                        what: format!("blob {digest} (its descriptor says {} bytes)", blob.size),
                        limit: blob.size,
                    });
                }
                w.write_all(&buf[..n]).map_err(|e| {
                    RegistryError::Store(CacheError::Io {
                        op: "write blob into",
                        path: store.root().join("tmp"),
                        source: e,
                    })
                })?;
                progress.blob(&BlobEvent::Progress {
                    digest: &blob.digest,
                    done: total,
                    total: blob.size,
                });
            }
            if total != blob.size {
                return Err(RegistryError::InvalidManifest {
                    reference: reference.to_string(),
                    reason: format!(
                        "blob {digest} is {total} bytes, but its descriptor says {}",
                        blob.size
                    ),
                });
            }
            match w.commit(Some(&blob.digest)) {
                Ok(_) => Ok(total),
                Err(CacheError::DigestMismatch { expected, actual }) => {
                    Err(RegistryError::DigestMismatch {
                        reference: reference.to_string(),
                        what: "blob",
                        expected: expected.to_string(),
                        actual: actual.to_string(),
                    })
                }
                Err(e) => Err(e.into()),
            }
        });
        progress.blob(&BlobEvent::Done {
            digest: &blob.digest,
            size: blob.size,
            how: if result.is_ok() {
                BlobDone::Downloaded
            } else {
                BlobDone::Failed
            },
        });
        result
    }
}

fn invalid(reference: &Reference, e: serde_json::Error) -> RegistryError {
    RegistryError::InvalidManifest {
        reference: reference.to_string(),
        reason: e.to_string(),
    }
}

fn blob_of(reference: &Reference, d: &Descriptor) -> Result<PulledBlob> {
    let digest =
        Digest::parse(d.digest().as_ref()).map_err(|e| RegistryError::InvalidManifest {
            reference: reference.to_string(),
            reason: e.to_string(),
        })?;
    Ok(PulledBlob {
        digest,
        size: d.size(),
        media_type: d.media_type().to_string(),
    })
}

/// Read a whole (small) body, refusing more than `limit` bytes.
pub(crate) fn read_limited(ctx: &Ctx, resp: Response, limit: u64, what: &str) -> Result<Vec<u8>> {
    let too_large = || RegistryError::TooLarge {
        reference: ctx.reference.clone(),
        what: what.to_owned(),
        limit,
    };
    if resp.content_length().is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    ctx.timeouts
        .watch(resp)
        .take(limit + 1)
        .read_to_end(&mut body)
        .map_err(|e| ctx.transport(&e))?;
    if body.len() as u64 > limit {
        return Err(too_large());
    }
    Ok(body)
}

/// The media type of a manifest: its `mediaType` field, else the
/// Content-Type header, else guessed from its shape. Schema 1 is refused.
pub(crate) fn media_type_of(
    bytes: &[u8],
    header: Option<&str>,
) -> std::result::Result<String, String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        #[serde(default)]
        schema_version: Option<u32>,
        #[serde(default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
        #[serde(default)]
        config: Option<serde_json::Value>,
    }
    let p: Probe = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    if p.schema_version == Some(1) {
        return Err(
            "Docker schema 1 manifests are not supported (deprecated since 2017); \
                    re-push the image with a current client"
                .into(),
        );
    }
    let header = header.filter(|h| is_index(h) || is_manifest(h));
    let mt = p
        .media_type
        .filter(|m| !m.is_empty())
        .or(header.map(str::to_owned))
        .unwrap_or_else(|| {
            if p.manifests.is_some() {
                media_types::OCI_INDEX.to_owned()
            } else if p.config.is_some() {
                media_types::OCI_MANIFEST.to_owned()
            } else {
                String::new()
            }
        });
    if mt.is_empty() {
        return Err("neither an image manifest nor an index".into());
    }
    Ok(mt)
}

impl Client {
    /// The request context of a pull from `reference`'s repository.
    fn pull_ctx<'a>(&self, reference: &'a Reference) -> Ctx<'a> {
        Ctx {
            action: "pull",
            reference: reference.to_string(),
            registry: &reference.registry,
            scopes: vec![pull_scope(&reference.repository)],
            timeouts: self.opts.timeouts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_type_detection() {
        let docker = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{}}"#;
        assert_eq!(
            media_type_of(docker, None).unwrap(),
            media_types::DOCKER_MANIFEST
        );
        let bare_index = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert_eq!(
            media_type_of(bare_index, None).unwrap(),
            media_types::OCI_INDEX
        );
        assert_eq!(
            media_type_of(bare_index, Some(media_types::DOCKER_MANIFEST_LIST)).unwrap(),
            media_types::DOCKER_MANIFEST_LIST
        );
        let bare = br#"{"schemaVersion":2,"config":{},"layers":[]}"#;
        assert_eq!(
            media_type_of(bare, Some("application/json")).unwrap(),
            media_types::OCI_MANIFEST
        );
        assert!(
            media_type_of(br#"{"schemaVersion":1,"fsLayers":[]}"#, None)
                .unwrap_err()
                .contains("schema 1")
        );
        assert!(media_type_of(b"{}", None).is_err());
        assert!(media_type_of(b"nope", None).is_err());
    }
}
