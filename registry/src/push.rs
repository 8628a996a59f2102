//! Push: upload an image from the store, skipping blobs the registry has,
//! mounting ones it holds in another repository, manifest last.

use std::io::{Read, Seek, SeekFrom};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use kiln_cache::{Digest, Store, sha256_of};
use oci_spec::image::ImageManifest;
use reqwest::StatusCode;
use reqwest::blocking::{Body, Response};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use serde_json::Value;

use crate::client::{Client, Ctx, pull_scope, push_scope};
use crate::error::{RegistryError, Result};
use crate::media_types::{self as mt, is_index, is_manifest};
use crate::progress::{BlobDone, BlobEvent, BlobKind, Progress};
use crate::pull::PulledBlob;
use crate::pull::media_type_of;
use crate::reference::Reference;
use crate::{MAX_MANIFEST_SIZE, sources};

/// Options for [`Client::push`].
#[derive(Clone, Default)]
pub struct PushOptions {
    /// Push Docker schema 2 media types instead of OCI ones (for registries
    /// that refuse OCI manifests). The manifest is rewritten, so its digest
    /// changes; zstd layers are refused.
    pub docker_format: bool,
    /// Blobs the store lacks but can make again without the network; asked before
    /// such a blob is fetched from a registry known to hold it.
    pub local: Option<std::sync::Arc<dyn LocalBlobs>>,
}

impl std::fmt::Debug for PushOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushOptions")
            .field("docker_format", &self.docker_format)
            .field("local", &self.local.as_ref().map(|_| "<local blobs>"))
            .finish()
    }
}

/// Blobs a store lacks that its owner can write again without the network (the
/// builder's layers kept only unpacked: written again from the directory, digest
/// checked).
pub trait LocalBlobs: Send + Sync {
    /// Whether `digest` can be made present in `store`.
    fn can_make(&self, store: &Store, digest: &Digest) -> bool;
    /// Makes `digest` present in `store`; an error says why it could not.
    fn make(&self, store: &Store, digest: &Digest) -> std::result::Result<(), String>;
}

/// What [`Client::push`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushReport {
    /// Digest of the manifest as pushed.
    pub digest: Digest,
    /// Blob bytes sent.
    pub bytes_uploaded: u64,
    /// Blobs uploaded.
    pub blobs_uploaded: usize,
    /// Blobs the repository already had.
    pub blobs_skipped: usize,
    /// Blobs mounted from another repository of the same registry.
    pub blobs_mounted: usize,
}

#[derive(Default)]
struct Stats {
    bytes: AtomicU64,
    uploaded: AtomicUsize,
    skipped: AtomicUsize,
    mounted: AtomicUsize,
}

struct Blob {
    digest: Digest,
    size: u64,
}

impl Client {
    /// Push the image (manifest or index) `manifest_digest` from `store` to
    /// `target` (its tag; `latest` if none). Blobs go first, several at
    /// once, then the manifest. Returns the pushed manifest's digest and
    /// transfer counts.
    pub fn push(
        &self,
        store: &Store,
        manifest_digest: &Digest,
        target: &Reference,
        opts: &PushOptions,
        progress: &dyn Progress,
    ) -> Result<PushReport> {
        let stats = Stats::default();
        let bytes = read_manifest(store, manifest_digest, target)?;
        let media_type = media_type_of(&bytes, None).map_err(|reason| invalid(target, reason))?;
        let tag = target.tag.as_deref().unwrap_or("latest");
        let digest = if is_index(&media_type) {
            if opts.docker_format {
                return Err(invalid(
                    target,
                    "an index cannot be converted to Docker schema 2; push it in OCI format".into(),
                ));
            }
            let index: Value =
                serde_json::from_slice(&bytes).map_err(|e| invalid(target, e.to_string()))?;
            let children = index["manifests"].as_array().cloned().unwrap_or_default();
            for child in children {
                let d = child["digest"].as_str().unwrap_or_default();
                let d = Digest::parse(d).map_err(|e| invalid(target, e.to_string()))?;
                if !store.has_blob(&d) {
                    return Err(invalid(
                        target,
                        format!(
                            "index entry {d} is not in the local store (only its platform was pulled?)"
                        ),
                    ));
                }
                let child_bytes = read_manifest(store, &d, target)?;
                self.push_image(
                    store,
                    child_bytes,
                    target,
                    d.as_str(),
                    opts,
                    progress,
                    &stats,
                )?;
            }
            self.put_manifest(target, tag, &media_type, bytes)?
        } else {
            self.push_image(store, bytes, target, tag, opts, progress, &stats)?
        };
        if let Some(pinned) = &target.digest
            && pinned != digest.as_str()
        {
            return Err(invalid(
                target,
                format!("pushed manifest has digest {digest}, not the pinned {pinned}"),
            ));
        }
        Ok(PushReport {
            digest,
            bytes_uploaded: stats.bytes.into_inner(),
            blobs_uploaded: stats.uploaded.into_inner(),
            blobs_skipped: stats.skipped.into_inner(),
            blobs_mounted: stats.mounted.into_inner(),
        })
    }

    /// Push one image manifest's blobs, then the manifest under `tag_or_digest`.
    #[allow(clippy::too_many_arguments)]
    fn push_image(
        &self,
        store: &Store,
        bytes: Vec<u8>,
        target: &Reference,
        tag_or_digest: &str,
        opts: &PushOptions,
        progress: &dyn Progress,
        stats: &Stats,
    ) -> Result<Digest> {
        let media_type = media_type_of(&bytes, None).map_err(|reason| invalid(target, reason))?;
        if !is_manifest(&media_type) {
            return Err(invalid(target, format!("cannot push a {media_type}")));
        }
        let manifest: ImageManifest =
            serde_json::from_slice(&bytes).map_err(|e| invalid(target, e.to_string()))?;
        let (bytes, media_type) = if opts.docker_format {
            (to_docker(&bytes, target)?, mt::DOCKER_MANIFEST.to_owned())
        } else {
            (bytes, media_type)
        };
        let mut blobs: Vec<Blob> = Vec::new();
        for d in std::iter::once(manifest.config()).chain(manifest.layers()) {
            let digest =
                Digest::parse(d.digest().as_ref()).map_err(|e| invalid(target, e.to_string()))?;
            // A layer of a resolved (not pulled) base may be missing: it is mounted
            // from the repository it came from, or fetched before it is uploaded.
            let size = match store.blob_size(&digest) {
                Err(_)
                    if sources::fetchable(store, &digest)
                        || opts
                            .local
                            .as_ref()
                            .is_some_and(|l| l.can_make(store, &digest)) =>
                {
                    d.size()
                }
                size => size?,
            };
            if size != d.size() {
                return Err(invalid(
                    target,
                    format!(
                        "blob {digest} is {size} bytes in the store, but the manifest says {}",
                        d.size()
                    ),
                ));
            }
            if !blobs.iter().any(|b| b.digest == digest) {
                blobs.push(Blob { digest, size });
            }
        }
        crate::client::run_parallel(self.opts.max_concurrent, &blobs, |b| {
            self.push_blob(store, b, target, opts, progress, stats)
        })?;
        let digest = self.put_manifest(target, tag_or_digest, &media_type, bytes)?;
        Ok(digest)
    }

    fn put_manifest(
        &self,
        target: &Reference,
        tag_or_digest: &str,
        media_type: &str,
        bytes: Vec<u8>,
    ) -> Result<Digest> {
        let digest = sha256_of(&bytes);
        let ctx = self.push_ctx(target, Vec::new());
        let url = format!(
            "{}/v2/{}/manifests/{tag_or_digest}",
            self.base_url(&target.registry),
            target.repository
        );
        let resp = self.with_retries(|| {
            self.send_expect(&ctx, &[StatusCode::CREATED, StatusCode::OK], &|h| {
                h.put(&url)
                    .timeout(ctx.timeouts.upload_deadline(bytes.len() as u64))
                    .header(CONTENT_TYPE, media_type)
                    .body(bytes.clone())
            })
        })?;
        if let Some(d) = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            && d.starts_with("sha256:")
            && d != digest.as_str()
        {
            return Err(RegistryError::DigestMismatch {
                reference: target.to_string(),
                what: "pushed manifest",
                expected: digest.to_string(),
                actual: d.to_owned(),
            });
        }
        Ok(digest)
    }

    fn push_ctx<'a>(&self, target: &'a Reference, extra_scopes: Vec<String>) -> Ctx<'a> {
        let mut scopes = vec![push_scope(&target.repository)];
        scopes.extend(extra_scopes);
        Ctx {
            action: "push",
            reference: target.to_string(),
            registry: &target.registry,
            scopes,
            timeouts: self.opts.timeouts,
        }
    }

    fn push_blob(
        &self,
        store: &Store,
        blob: &Blob,
        target: &Reference,
        opts: &PushOptions,
        progress: &dyn Progress,
        stats: &Stats,
    ) -> Result<()> {
        let digest = blob.digest.as_str();
        let ctx = self.push_ctx(target, Vec::new());
        let base = self.base_url(&target.registry);
        let blob_url = format!("{base}/v2/{}/blobs/{digest}", target.repository);
        let uploads_url = format!("{base}/v2/{}/blobs/uploads/", target.repository);
        let result = self.with_retries(|| {
            let head = self.send(&ctx, &|h| h.head(&blob_url))?;
            match head.status() {
                StatusCode::OK => return Ok(BlobDone::Exists),
                StatusCode::NOT_FOUND => {}
                // The existence check is only a shortcut. A registry that cannot answer
                // it (a 5xx: e.g. a blob link left half-written when it crashed) is sent
                // the blob again, which also repairs its record of it.
                s if s.is_server_error() => {}
                _ => return Err(self.error_from(&ctx, head)),
            }
            // Cross-repository mount from a repository known to hold it.
            let mut location = None;
            let froms = sources::get(store, &blob.digest, &target.registry);
            for from in froms.iter().filter(|f| **f != target.repository).take(3) {
                let mctx = self.push_ctx(target, vec![pull_scope(from)]);
                let mount_url = reqwest::Url::parse_with_params(
                    &uploads_url,
                    &[("mount", digest), ("from", from.as_str())],
                )
                .map_err(|e| invalid(target, format!("bad mount URL: {e}")))?;
                let resp = self.send(&mctx, &|h| {
                    h.post(mount_url.clone()).header(CONTENT_LENGTH, 0)
                })?;
                match resp.status() {
                    StatusCode::CREATED => return Ok(BlobDone::Mounted),
                    // Not mountable: the registry opened an upload instead.
                    StatusCode::ACCEPTED => {
                        location = Some(self.location(&ctx, &resp)?);
                        break;
                    }
                    _ => {} // e.g. no pull access to `from`: just upload
                }
            }
            if store.blob_size(&blob.digest).ok() != Some(blob.size)
                && let Some(local) = opts
                    .local
                    .as_ref()
                    .filter(|l| l.can_make(store, &blob.digest))
            {
                local
                    .make(store, &blob.digest)
                    .map_err(|reason| RegistryError::LocalBlob {
                        digest: blob.digest.to_string(),
                        reason,
                    })?;
            }
            if store.blob_size(&blob.digest).ok() != Some(blob.size) {
                let missing = PulledBlob {
                    digest: blob.digest.clone(),
                    size: blob.size,
                    media_type: String::new(),
                };
                self.fetch_missing(store, std::slice::from_ref(&missing), progress)?;
            }
            progress.blob(&BlobEvent::Started {
                digest: &blob.digest,
                size: blob.size,
                kind: BlobKind::Upload,
            });
            let mut location = match location {
                Some(l) => l,
                None => {
                    let resp = self.send_expect(&ctx, &[StatusCode::ACCEPTED], &|h| {
                        h.post(&uploads_url).header(CONTENT_LENGTH, 0)
                    })?;
                    self.location(&ctx, &resp)?
                }
            };
            let open = |offset: u64, len: u64| -> Result<Body> {
                // A spliced blob reads through its recipe: nothing is written out.
                let mut f = store.open_blob(&blob.digest)?;
                f.seek(SeekFrom::Start(offset)).map_err(|e| {
                    RegistryError::Store(kiln_cache::CacheError::Io {
                        op: "seek in blob",
                        path: f.path().to_owned(),
                        source: e,
                    })
                })?;
                Ok(Body::sized(f.take(len), len))
            };
            if blob.size <= self.opts.monolithic_threshold {
                let url = with_digest(&location, digest);
                let body = std::sync::Mutex::new(Some(open(0, blob.size)?));
                self.send_expect(&ctx, &[StatusCode::CREATED], &|h| {
                    let b = body.lock().unwrap().take();
                    let req = h
                        .put(&url)
                        .timeout(ctx.timeouts.upload_deadline(blob.size))
                        .header(CONTENT_TYPE, "application/octet-stream")
                        .header(CONTENT_LENGTH, blob.size);
                    match b {
                        Some(b) => req.body(b),
                        // Re-sent after an auth challenge: reopen.
                        None => match open(0, blob.size) {
                            Ok(b) => req.body(b),
                            Err(_) => req.body(Vec::new()),
                        },
                    }
                })?;
            } else {
                let chunk = self.opts.chunk_size.max(1) as u64;
                let mut offset = 0u64;
                while offset < blob.size {
                    let len = chunk.min(blob.size - offset);
                    let range = format!("{}-{}", offset, offset + len - 1);
                    let loc = location.clone();
                    let resp = self.send_expect(&ctx, &[StatusCode::ACCEPTED], &|h| {
                        let req = h
                            .patch(&loc)
                            .timeout(ctx.timeouts.upload_deadline(len))
                            .header(CONTENT_TYPE, "application/octet-stream")
                            .header("Content-Range", &range)
                            .header(CONTENT_LENGTH, len);
                        match open(offset, len) {
                            Ok(b) => req.body(b),
                            Err(_) => req.body(Vec::new()),
                        }
                    })?;
                    location = self.location(&ctx, &resp)?;
                    offset += len;
                    progress.blob(&BlobEvent::Progress {
                        digest: &blob.digest,
                        done: offset,
                        total: blob.size,
                    });
                }
                let url = with_digest(&location, digest);
                self.send_expect(&ctx, &[StatusCode::CREATED], &|h| {
                    h.put(&url).header(CONTENT_LENGTH, 0)
                })?;
            }
            stats.bytes.fetch_add(blob.size, Ordering::Relaxed);
            progress.blob(&BlobEvent::Progress {
                digest: &blob.digest,
                done: blob.size,
                total: blob.size,
            });
            Ok(BlobDone::Uploaded)
        });
        match result {
            Ok(how) => {
                let counter = match how {
                    BlobDone::Exists => &stats.skipped,
                    BlobDone::Mounted => &stats.mounted,
                    _ => &stats.uploaded,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                sources::add(store, &blob.digest, &target.registry, &target.repository);
                progress.blob(&BlobEvent::Done {
                    digest: &blob.digest,
                    size: blob.size,
                    how,
                });
                Ok(())
            }
            Err(e) => {
                progress.blob(&BlobEvent::Done {
                    digest: &blob.digest,
                    size: blob.size,
                    how: BlobDone::Failed,
                });
                Err(e)
            }
        }
    }

    /// The absolute upload URL from a `Location` header.
    fn location(&self, ctx: &Ctx, resp: &Response) -> Result<String> {
        let loc = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| RegistryError::InvalidManifest {
                reference: ctx.reference.clone(),
                reason: format!(
                    "registry answered HTTP {} without a Location header to upload to",
                    resp.status().as_u16()
                ),
            })?;
        resp.url()
            .join(loc)
            .map(|u| u.to_string())
            .map_err(|e| RegistryError::InvalidManifest {
                reference: ctx.reference.clone(),
                reason: format!("registry sent an invalid upload location {loc:?}: {e}"),
            })
    }
}

fn with_digest(location: &str, digest: &str) -> String {
    match reqwest::Url::parse(location) {
        Ok(mut u) => {
            u.query_pairs_mut().append_pair("digest", digest);
            u.to_string()
        }
        Err(_) => location.to_owned(),
    }
}

fn invalid(target: &Reference, reason: String) -> RegistryError {
    RegistryError::InvalidManifest {
        reference: target.to_string(),
        reason,
    }
}

fn read_manifest(store: &Store, digest: &Digest, target: &Reference) -> Result<Vec<u8>> {
    if store.blob_size(digest)? > MAX_MANIFEST_SIZE {
        return Err(RegistryError::TooLarge {
            reference: target.to_string(),
            what: format!("manifest {digest}"),
            limit: MAX_MANIFEST_SIZE,
        });
    }
    Ok(store.read_blob(digest)?)
}

/// Rewrite an image manifest with Docker schema 2 media types.
fn to_docker(bytes: &[u8], target: &Reference) -> Result<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(bytes).map_err(|e| invalid(target, e.to_string()))?;
    let obj = v
        .as_object_mut()
        .ok_or_else(|| invalid(target, "manifest is not a JSON object".into()))?;
    obj.insert("mediaType".into(), mt::DOCKER_MANIFEST.into());
    // Schema 2 has neither.
    obj.remove("artifactType");
    obj.remove("subject");
    let refuse = |d: &Value| RegistryError::UnsupportedInDockerFormat {
        reference: target.to_string(),
        digest: d["digest"].as_str().unwrap_or("?").to_owned(),
        media_type: d["mediaType"].as_str().unwrap_or("(none)").to_owned(),
    };
    let config = obj
        .get_mut("config")
        .ok_or_else(|| invalid(target, "manifest has no config".into()))?;
    match config["mediaType"].as_str() {
        Some(mt::OCI_CONFIG) | Some(mt::DOCKER_CONFIG) => {
            config["mediaType"] = mt::DOCKER_CONFIG.into();
        }
        _ => return Err(refuse(config)),
    }
    if let Some(layers) = obj.get_mut("layers").and_then(Value::as_array_mut) {
        for layer in layers {
            let new = match layer["mediaType"].as_str() {
                Some(mt::OCI_LAYER_GZIP) | Some(mt::DOCKER_LAYER_GZIP) => mt::DOCKER_LAYER_GZIP,
                Some(mt::OCI_LAYER_TAR) | Some(mt::DOCKER_LAYER_TAR) => mt::DOCKER_LAYER_TAR,
                Some("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip")
                | Some(mt::DOCKER_FOREIGN_LAYER_GZIP) => mt::DOCKER_FOREIGN_LAYER_GZIP,
                _ => return Err(refuse(layer)),
            };
            layer["mediaType"] = new.into();
        }
    }
    Ok(serde_json::to_vec(&v).expect("JSON value serializes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(layer_type: &str) -> Vec<u8> {
        let d = format!("sha256:{}", "a".repeat(64));
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{d}","size":2}},"layers":[{{"mediaType":"{layer_type}","digest":"{d}","size":3}}],"annotations":{{"a":"b"}}}}"#,
            mt::OCI_MANIFEST,
            mt::OCI_CONFIG
        )
        .into_bytes()
    }

    #[test]
    fn docker_conversion() {
        let t = Reference::parse("localhost:5000/x:1").unwrap();
        let out = to_docker(&manifest(mt::OCI_LAYER_GZIP), &t).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["mediaType"], mt::DOCKER_MANIFEST);
        assert_eq!(v["config"]["mediaType"], mt::DOCKER_CONFIG);
        assert_eq!(v["layers"][0]["mediaType"], mt::DOCKER_LAYER_GZIP);
        assert_eq!(v["annotations"]["a"], "b");
        let e = to_docker(&manifest(mt::OCI_LAYER_ZSTD), &t)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tar+zstd")
                && e.contains("Docker schema 2")
                && e.contains("localhost:5000/x:1"),
            "{e}"
        );
    }

    #[test]
    fn digest_query_is_appended() {
        assert_eq!(
            with_digest("http://r/v2/x/blobs/uploads/u?_state=abc", "sha256:00"),
            "http://r/v2/x/blobs/uploads/u?_state=abc&digest=sha256%3A00"
        );
    }
}
