//! Local images: tags in the store and OCI layout directories (`oci-layout://DIR[:TAG]`),
//! resolved for `FROM` and `COPY --from`. A registry image is resolved (manifest and
//! config) when the Dockerfile is converted; its layers are fetched by
//! [`ImageStore::ensure_layers`] when a step, an exporter or a push needs their bytes.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use kiln_cache::{Digest, Store};
use kiln_frontend::convert::{ImageResolver, ResolvedImage};
use kiln_frontend::instructions::levenshtein;
use kiln_oci::chain_id;
use kiln_ops::Platform;
use oci_spec::image::ImageIndex;

use crate::image::{self, ParsedConfig};
use crate::remote::{BlobReporter, Remote, RemoteError};
use crate::snapshots::LayerRef;
use crate::untrusted::{Layout, MAX_LAYOUT_JSON};
use kiln_ops::VertexId;
use kiln_registry::PulledBlob;
use kiln_solver::{Event, NoReporter, Reporter, error_chain as chain};

/// The largest manifest or config kiln reads (they are small JSON documents).
const MAX_JSON: u64 = 4 << 20;

/// Why an image could not be found, resolved, loaded or imported: one line (with its
/// causes) naming the image, blob or layout concerned.
#[derive(Debug, thiserror::Error)]
pub enum ImageStoreError {
    /// A digest in a manifest, index or record is malformed.
    #[error(transparent)]
    Digest(#[from] kiln_oci::DigestError),
    /// The name is outside Docker's reference grammar.
    #[error("image {reference:?}: {reason}")]
    Reference {
        /// The name as written.
        reference: String,
        /// Docker's message.
        reason: String,
    },
    /// Neither in the store nor resolvable (no registry access).
    #[error("image {reference:?} not found in the local store ({})", .root.display())]
    NotFound {
        /// The name as written.
        reference: String,
        /// The store.
        root: std::path::PathBuf,
    },
    /// Resolving in the registry failed.
    #[error("pulling {reference}")]
    Pull {
        /// The name as written.
        reference: String,
        /// Why.
        #[source]
        source: Box<RemoteError>,
    },
    /// The stored image is unreadable.
    #[error("loading image {reference}")]
    Load {
        /// The name as written.
        reference: String,
        /// Why.
        #[source]
        source: Box<ImageStoreError>,
    },
    /// A manifest or config the image needs is not in the store.
    #[error("blob {digest} is not in the store")]
    MissingBlob {
        /// Its digest.
        digest: String,
        /// The store's error.
        #[source]
        source: kiln_cache::CacheError,
    },
    /// A layer kept as its snapshot only could not be written again.
    #[error(transparent)]
    Recreate(#[from] Box<crate::recreate::RecreateError>),
    /// A layer blob is missing and no registry is set to fetch it from.
    #[error("layer {digest} is not in the store")]
    MissingLayer {
        /// Its digest.
        digest: Digest,
    },
    /// A manifest or config above [`MAX_JSON`] (or the layout cap).
    #[error("{prefix}{digest} is {size} bytes: too large for a manifest or config")]
    TooLarge {
        /// `DIR: ` for a layout, else empty.
        prefix: String,
        /// Its digest.
        digest: String,
        /// Its size.
        size: u64,
    },
    /// A JSON document of the image does not parse as what it should be.
    #[error("{what}")]
    Json {
        /// What it is and what it should be (`manifest sha256:... is not JSON`).
        what: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// The image is not consistent (no config, no manifest for the platform, ...).
    #[error("{0}")]
    Invalid(String),
    /// The config does not parse.
    #[error("config {digest}")]
    Config {
        /// Its digest.
        digest: String,
        /// Why.
        #[source]
        source: image::ImageError,
    },
    /// Reading an OCI layout failed.
    #[error("{what}")]
    Layout {
        /// What was being read.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Copying a layout's blob into the store failed.
    #[error("{what}")]
    Import {
        /// Which blob of which layout.
        what: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] kiln_cache::CacheError),
    /// Fetching layers failed.
    #[error(transparent)]
    Remote(Box<RemoteError>),
    /// An I/O error without more to say than itself.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

type Result<T, E = ImageStoreError> = std::result::Result<T, E>;

impl From<RemoteError> for ImageStoreError {
    fn from(e: RemoteError) -> ImageStoreError {
        ImageStoreError::Remote(Box::new(e))
    }
}

/// `Invalid` with a message.
fn invalid(message: String) -> ImageStoreError {
    ImageStoreError::Invalid(message)
}

/// An image known locally.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    /// Manifest digest.
    pub manifest_digest: Digest,
    /// Config digest.
    pub config_digest: Digest,
    /// Layers, bottom first.
    pub layers: Vec<LayerRef>,
    /// ChainID of the layers' diff_ids: the image's cache identity.
    pub chain_id: Digest,
    /// Parsed config.
    pub config: ParsedConfig,
}

/// Resolves references to local images (pulling from registries when a remote is set),
/// caching what it found for the build.
pub struct ImageStore {
    store: Store,
    resolved: Mutex<HashMap<String, Arc<ImageInfo>>>,
    /// What resolving a reference (for a platform) failed with, as a build's conversion
    /// reports it: a base that failed when the bases were resolved at once is not asked
    /// for again (and its registry's retries not waited for twice).
    failed: Mutex<HashMap<String, String>>,
    remote: Option<Arc<Remote>>,
    reporter: Arc<dyn Reporter + Send + Sync>,
    /// One lock per blob being fetched, so that two steps needing the same base layer
    /// at the same time download it once.
    fetching: Arc<Mutex<HashMap<Digest, Arc<Mutex<()>>>>>,
    /// The layer blobs fetched from registries through this store.
    fetched: Arc<Mutex<std::collections::HashSet<Digest>>>,
    /// Whether a resolved image's new layers are fetched beside its config (see
    /// [`ImageStore::with_prefetch`]).
    prefetch: bool,
    /// Those fetches, stopped and joined when the store is dropped (the build is over:
    /// a step that needed a layer waited for its fetch).
    prefetching: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// Set when the store is dropped: the fetches ahead stop.
    stop: Arc<std::sync::atomic::AtomicBool>,
    /// The blob events of the layers fetched ahead, by digest: shown when a step (or an
    /// export) asks for the layer, under its step, as if it had fetched it.
    prefetched: Arc<Mutex<HashMap<Digest, Vec<HeldEvent>>>>,
}

/// An event kept to be told later, and when it happened.
type HeldEvent = (std::time::Instant, Event);

/// Keeps the blob events of a fetch ahead (not its byte counts), and when they
/// happened, to be told later.
#[derive(Default)]
struct Held(Mutex<Vec<HeldEvent>>);

impl Reporter for Held {
    fn event(&self, event: &Event) {
        if let Event::Blob { state, .. } = event
            && *state != kiln_solver::BlobState::Transferring
        {
            let at = std::time::Instant::now();
            self.0.lock().expect("held lock").push((at, event.clone()));
        }
    }
}

/// The progress of a fetch ahead: its blob events kept, cancelled when the build is over
/// or interrupted.
struct Ahead<'a> {
    events: BlobReporter<'a>,
    stop: &'a std::sync::atomic::AtomicBool,
}

impl kiln_registry::Progress for Ahead<'_> {
    fn blob(&self, event: &kiln_registry::BlobEvent<'_>) {
        self.events.blob(event);
    }

    fn cancelled(&self) -> bool {
        self.stop.load(std::sync::atomic::Ordering::Relaxed) || crate::interrupt::interrupted()
    }
}

impl Drop for ImageStore {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.join_prefetches();
    }
}

/// The local tag of a reference: Docker's familiar name with `:latest` unless a tag or
/// digest is given (`docker.io/library/busybox` -> `busybox:latest`).
pub fn normalize_tag(reference: &str) -> String {
    if let Some(n) = crate::remote::local_name(reference) {
        return n;
    }
    if reference.contains('@') {
        return reference.to_string();
    }
    let last = reference.rsplit('/').next().unwrap_or(reference);
    if last.contains(':') {
        reference.to_string()
    } else {
        format!("{reference}:latest")
    }
}

/// The tag among `tags` closest to `name` (after [`normalize_tag`]), when it is close
/// enough to be a slip of the keyboard: at most 3 edits, and fewer than a third of the
/// name's length (`demo:lates` -> `demo:latest`, `dmeo` -> `demo:latest`).
pub fn closest_tag<'a>(name: &str, tags: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let wanted = normalize_tag(name);
    let limit = (wanted.chars().count() / 3).clamp(1, 3);
    tags.into_iter()
        .map(|t| (levenshtein(&wanted, t), t))
        .filter(|(d, _)| *d > 0 && *d <= limit)
        .min()
        .map(|(_, t)| t)
}

fn read_json_blob(store: &Store, digest: &str) -> Result<Vec<u8>> {
    let d = Digest::parse(digest)?;
    let size = store
        .blob_size(&d)
        .map_err(|source| ImageStoreError::MissingBlob {
            digest: digest.to_owned(),
            source,
        })?;
    if size > MAX_JSON {
        return Err(ImageStoreError::TooLarge {
            prefix: String::new(),
            digest: digest.to_owned(),
            size,
        });
    }
    Ok(store.read_blob(&d)?)
}

impl ImageStore {
    /// Images of `store`.
    pub fn new(store: &Store) -> ImageStore {
        ImageStore {
            store: store.clone(),
            resolved: Mutex::new(HashMap::new()),
            failed: Mutex::default(),
            remote: None,
            reporter: Arc::new(NoReporter),
            fetching: Arc::default(),
            fetched: Arc::default(),
            prefetch: false,
            prefetching: Mutex::default(),
            stop: Arc::default(),
            prefetched: Arc::default(),
        }
    }

    /// Fetches the layers of each image resolved from a registry that the store has
    /// never seen (no blob, no registry known to hold it, no snapshot to write it from)
    /// beside its config, instead of when a step first needs them: for a build that will
    /// read its bases' filesystems, so that the layers arrive during the config's round
    /// trip and the conversion. A step that needs one waits for its fetch to end; one
    /// that failed is fetched again by the step, which reports the error.
    pub fn with_prefetch(mut self, prefetch: bool) -> ImageStore {
        self.prefetch = prefetch;
        self
    }

    /// Waits for the fetches ahead started so far to end (to be told nothing more of
    /// them: [`ImageStore::ensure_layers`] waits for the ones it needs by itself).
    pub fn join_prefetches(&self) {
        let handles =
            std::mem::take(&mut *self.prefetching.lock().unwrap_or_else(|e| e.into_inner()));
        for h in handles {
            let _ = h.join();
        }
    }

    /// Starts fetching the layers of `reference` the store has never seen (see
    /// [`ImageStore::with_prefetch`]) on a thread of their own; returns once that thread
    /// holds their fetch locks, so that a step needing one waits for it.
    fn prefetch_layers(&self, remote: &Arc<Remote>, reference: &str, layers: &[PulledBlob]) {
        let mut new: Vec<PulledBlob> = layers
            .iter()
            .filter(|l| {
                !self.store.has_blob(&l.digest)
                    && !kiln_registry::fetchable(&self.store, &l.digest)
                    && !crate::recreate::can_recreate(&self.store, &l.digest)
            })
            .cloned()
            .collect();
        // In digest order, as `ensure_layers` locks them: no deadlock between the two.
        new.sort_by(|a, b| a.digest.cmp(&b.digest));
        new.dedup_by(|a, b| a.digest == b.digest);
        if new.is_empty() {
            return;
        }
        let locks = self.fetch_locks(new.iter().map(|b| &b.digest), |_| false);
        let (store, remote) = (self.store.clone(), remote.clone());
        let (fetched, prefetched) = (self.fetched.clone(), self.prefetched.clone());
        let stop = self.stop.clone();
        let reference = reference.to_owned();
        let (locked, ready) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("kiln-prefetch".into())
            .spawn(move || {
                // A layer another thread is fetching (a base sharing it) is left to it.
                let mut held = Vec::new();
                let mut i = 0;
                new.retain(|_| {
                    let lock = &locks[i];
                    i += 1;
                    match lock.try_lock() {
                        Ok(g) => {
                            held.push(g);
                            true
                        }
                        Err(std::sync::TryLockError::Poisoned(e)) => {
                            held.push(e.into_inner());
                            true
                        }
                        Err(std::sync::TryLockError::WouldBlock) => false,
                    }
                });
                let _ = locked.send(());
                // An error is the step's to report, when it fetches the layer again.
                let events = Held::default();
                let progress = Ahead {
                    events: BlobReporter::new(&events, None),
                    stop: &stop,
                };
                let _ = remote.fetch_blobs(&store, &reference, &new, &progress);
                let mut events = events.0.into_inner().expect("held lock");
                // Before the locks go: a step waiting for one finds its events.
                let mut shown = prefetched.lock().expect("prefetched lock");
                let mut fetched = fetched.lock().expect("fetched lock");
                for b in new {
                    if store.blob_size(&b.digest).ok() == Some(b.size) {
                        let (its, rest) = events.into_iter().partition(
                            |(_, e)| matches!(e, Event::Blob { digest, .. } if *digest == b.digest.as_str()),
                        );
                        events = rest;
                        shown.insert(b.digest.clone(), its);
                        fetched.insert(b.digest);
                    }
                }
            });
        // Without a thread, the steps fetch the layers when they need them.
        if let Ok(handle) = spawned {
            let _ = ready.recv();
            self.prefetching.lock().expect("prefetch lock").push(handle);
        }
    }

    /// Whether the blob of `layer` was fetched from a registry through this store (a
    /// base layer a step needed).
    pub fn was_fetched(&self, layer: &LayerRef) -> bool {
        self.fetched
            .lock()
            .expect("fetched lock")
            .contains(&layer.digest)
    }

    /// Resolves what the store lacks (or everything, with `--pull`) through `remote`,
    /// reporting to `reporter`.
    pub fn with_remote(
        mut self,
        remote: Arc<Remote>,
        reporter: Arc<dyn Reporter + Send + Sync>,
    ) -> ImageStore {
        self.remote = Some(remote);
        self.reporter = reporter;
        self
    }

    /// Whether the blob of `layer` is in the store or can be fetched or written into it.
    pub fn layer_available(&self, layer: &LayerRef) -> Result<bool> {
        let d = &layer.digest;
        Ok(self.store.has_blob(d)
            || kiln_registry::fetchable(&self.store, d)
            || crate::recreate::can_recreate(&self.store, d))
    }

    /// Makes the blobs of `layers` present in the store, fetching those of resolved
    /// images from their registry (several at once), with progress as blob events of
    /// `vertex`.
    pub fn ensure_layers<'l>(
        &self,
        layers: impl IntoIterator<Item = &'l LayerRef>,
        vertex: Option<VertexId>,
    ) -> Result<()> {
        let mut missing = Vec::new();
        let mut wanted = Vec::new();
        for l in layers {
            wanted.push(&l.digest);
            let digest = l.digest.clone();
            if self.store.blob_size(&digest).ok() != Some(l.size) {
                missing.push(PulledBlob {
                    digest,
                    size: l.size,
                    media_type: l.media_type.clone(),
                });
            }
        }
        missing.sort_by(|a, b| a.digest.cmp(&b.digest));
        missing.dedup_by(|a, b| a.digest == b.digest);
        // Locked in digest order (no deadlock between two steps), then checked again:
        // another step may have fetched them meanwhile. A blob fetched ahead is in place
        // a moment before its fetch is over (and known as fetched): waited for too.
        let locks = self.fetch_locks(missing.iter().map(|b| &b.digest), |d| wanted.contains(&d));
        let _held: Vec<_> = locks
            .iter()
            .map(|l| l.lock().unwrap_or_else(|e| e.into_inner()))
            .collect();
        missing.retain(|b| self.store.blob_size(&b.digest).ok() != Some(b.size));
        self.show_prefetched(&wanted, vertex);
        if missing.is_empty() {
            return Ok(());
        }
        // Layers kept only as their snapshot are written again from it.
        for b in &missing {
            crate::recreate::recreate(&self.store, &b.digest).map_err(Box::new)?;
        }
        missing.retain(|b| self.store.blob_size(&b.digest).ok() != Some(b.size));
        let Some(first) = missing.first() else {
            return Ok(());
        };
        let Some(remote) = &self.remote else {
            return Err(ImageStoreError::MissingLayer {
                digest: first.digest.clone(),
            });
        };
        remote.fetch_missing(
            &self.store,
            &missing,
            &BlobReporter::new(&*self.reporter, vertex),
        )?;
        self.fetched
            .lock()
            .expect("fetched lock")
            .extend(missing.into_iter().map(|b| b.digest));
        Ok(())
    }

    /// The fetch locks of `digests`, and of the digests with a lock already that `also`
    /// picks, in digest order (the order every holder takes them in: no deadlock).
    fn fetch_locks<'d>(
        &self,
        digests: impl IntoIterator<Item = &'d Digest>,
        also: impl Fn(&Digest) -> bool,
    ) -> Vec<Arc<Mutex<()>>> {
        let mut f = self.fetching.lock().expect("fetch lock");
        let mut digests: Vec<Digest> = digests.into_iter().cloned().collect();
        digests.extend(f.keys().filter(|d| also(d)).cloned());
        digests.sort();
        digests.dedup();
        digests
            .into_iter()
            .map(|d| f.entry(d).or_default().clone())
            .collect()
    }

    /// Shows the blob events of those of `layers` fetched ahead, as `vertex`'s (once).
    fn show_prefetched(&self, layers: &[&Digest], vertex: Option<VertexId>) {
        let events: Vec<HeldEvent> = {
            let mut held = self.prefetched.lock().expect("prefetched lock");
            layers
                .iter()
                .filter_map(|d| held.remove(*d))
                .flatten()
                .collect()
        };
        for (at, mut e) in events {
            if let Event::Blob { vertex: v, .. } = &mut e {
                *v = vertex;
            }
            self.reporter.event_at(&e, at);
        }
    }

    /// The image a reference names, for a platform.
    pub fn get(&self, reference: &str, platform: &Platform) -> Result<Arc<ImageInfo>> {
        let key = image_key(reference, platform);
        if let Some(i) = self.resolved.lock().expect("image lock").get(&key) {
            return Ok(i.clone());
        }
        let manifest = if let Some(rest) = reference.strip_prefix("oci-layout://") {
            self.import_layout(rest)?
        } else {
            crate::remote::parse_name(reference).map_err(|reason| ImageStoreError::Reference {
                reference: reference.to_owned(),
                reason,
            })?;
            let tag = normalize_tag(reference);
            let pinned = reference
                .rsplit_once('@')
                .and_then(|(_, d)| Digest::parse(d).ok())
                .filter(|d| self.store.has_blob(d));
            let always = self.remote.as_ref().is_some_and(|r| r.always_pull());
            let local = match pinned {
                Some(d) => Some(d.to_string()),
                None if always => None,
                None => self
                    .store
                    .tag_get(&tag)?
                    .map(|rec| rec.manifest.to_string()),
            };
            match (local, &self.remote) {
                (Some(m), _) => m,
                (None, Some(remote)) => {
                    self.reporter.event(&Event::Pull {
                        reference: reference.to_string(),
                    });
                    let resolved = remote.resolve_then(
                        &self.store,
                        reference,
                        platform,
                        &BlobReporter::new(&*self.reporter, None),
                        &|layers| {
                            if self.prefetch {
                                self.prefetch_layers(remote, reference, layers);
                            }
                        },
                    );
                    self.reporter.event(&Event::Resolved {
                        reference: reference.to_string(),
                    });
                    resolved.map_err(|source| ImageStoreError::Pull {
                        reference: reference.to_owned(),
                        source: Box::new(source),
                    })?
                }
                (None, None) => {
                    return Err(ImageStoreError::NotFound {
                        reference: reference.to_owned(),
                        root: self.store.root().to_path_buf(),
                    });
                }
            }
        };
        let info =
            Arc::new(
                self.load(&manifest, platform)
                    .map_err(|source| ImageStoreError::Load {
                        reference: reference.to_owned(),
                        source: Box::new(source),
                    })?,
            );
        self.resolved
            .lock()
            .expect("image lock")
            .insert(key, info.clone());
        Ok(info)
    }

    /// Reads a manifest (or an index, picking `platform`) and its config from the store.
    pub fn load(&self, manifest_digest: &str, platform: &Platform) -> Result<ImageInfo> {
        let bytes = read_json_blob(&self.store, manifest_digest)?;
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|source| ImageStoreError::Json {
                what: format!("manifest {manifest_digest} is not JSON"),
                source,
            })?;
        if v.get("manifests").is_some() {
            let index: ImageIndex =
                serde_json::from_value(v).map_err(|source| ImageStoreError::Json {
                    what: format!("index {manifest_digest} is not an image index"),
                    source,
                })?;
            let entries = index.manifests();
            // An index of one image (as OCI layouts often are) serves any platform.
            let pick = platform
                .pick(entries)
                .or(if entries.len() == 1 {
                    entries.first()
                } else {
                    None
                })
                .ok_or_else(|| {
                    invalid(format!(
                        "index {manifest_digest} has no manifest for {platform}"
                    ))
                })?;
            return self.load(pick.digest().as_ref(), platform);
        }
        let config_digest = v["config"]["digest"]
            .as_str()
            .ok_or_else(|| invalid(format!("manifest {manifest_digest} has no config")))?
            .to_string();
        let config_bytes = read_json_blob(&self.store, &config_digest)?;
        let config =
            image::parse_config(&config_bytes).map_err(|source| ImageStoreError::Config {
                digest: config_digest.clone(),
                source,
            })?;
        let manifest_layers = v["layers"].as_array().cloned().unwrap_or_default();
        if manifest_layers.len() != config.diff_ids.len() {
            return Err(invalid(format!(
                "image {manifest_digest}: the manifest lists {} layers but the config {} diff_ids",
                manifest_layers.len(),
                config.diff_ids.len()
            )));
        }
        let layers = manifest_layers
            .iter()
            .zip(&config.diff_ids)
            .map(|(l, diff_id)| -> Result<LayerRef> {
                Ok(LayerRef {
                    digest: Digest::parse(
                        l["digest"]
                            .as_str()
                            .ok_or_else(|| invalid("layer without digest".into()))?,
                    )
                    .map_err(|e| invalid(e.to_string()))?,
                    diff_id: diff_id.clone(),
                    size: l["size"].as_u64().unwrap_or(0),
                    media_type: l["mediaType"].as_str().unwrap_or("").to_string(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ImageInfo {
            manifest_digest: Digest::parse(manifest_digest)?,
            config_digest: Digest::parse(&config_digest)?,
            chain_id: chain_id(&config.diff_ids),
            layers,
            config,
        })
    }

    /// Copies an OCI layout's image (by tag, or its only image) into the store, verifying
    /// every digest; returns the manifest digest.
    fn import_layout(&self, spec: &str) -> Result<String> {
        let (dir, tag) = match spec.rsplit_once(':') {
            Some((d, t)) if !t.contains('/') && Path::new(d).is_dir() => (d, Some(t)),
            _ => (spec, None),
        };
        let dir = Path::new(dir);
        // Not written by kiln: read with caps, regular files only (see `untrusted`).
        let layout = Layout::open(dir).map_err(|source| ImageStoreError::Layout {
            what: format!("{} is not an OCI layout", dir.display()),
            source,
        })?;
        let index_bytes = match layout.read_capped("index.json", MAX_LAYOUT_JSON) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(invalid(format!(
                    "{} is not an OCI layout: it has no index.json",
                    dir.display()
                )));
            }
            Err(e) => return Err(e.into()),
        };
        let index: serde_json::Value =
            serde_json::from_slice(&index_bytes).map_err(|source| ImageStoreError::Json {
                what: format!("{}/index.json is not JSON", dir.display()),
                source,
            })?;
        let manifests = index["manifests"].as_array().cloned().unwrap_or_default();
        let chosen = match tag {
            Some(t) => manifests
                .iter()
                .find(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str() == Some(t))
                .ok_or_else(|| invalid(format!("no image tagged {t:?} in {}", dir.display())))?,
            None if manifests.len() == 1 => &manifests[0],
            None => {
                return Err(invalid(format!(
                    "{} holds {} images: name one with oci-layout://DIR:TAG",
                    dir.display(),
                    manifests.len()
                )));
            }
        };
        let digest = chosen["digest"]
            .as_str()
            .ok_or_else(|| invalid("index entry without digest".into()))?
            .to_string();
        self.import_blob_tree(&layout, chosen)?;
        Ok(digest)
    }

    /// Copies the blob `desc` (a descriptor) names into the store: exactly its size
    /// (at most `cap` bytes when given), digest-checked.
    fn import_blob(
        &self,
        layout: &Layout,
        desc: &serde_json::Value,
        cap: Option<u64>,
    ) -> Result<()> {
        let dir = layout.path().display();
        let digest = desc["digest"]
            .as_str()
            .ok_or_else(|| invalid(format!("{dir}: a descriptor without digest")))?;
        let size = desc["size"]
            .as_u64()
            .ok_or_else(|| invalid(format!("{dir}: the descriptor of {digest} has no size")))?;
        let d = Digest::parse(digest)?;
        if let Some(cap) = cap
            && size > cap
        {
            return Err(ImageStoreError::TooLarge {
                prefix: format!("{dir}: "),
                digest: digest.to_owned(),
                size,
            });
        }
        if self.store.blob_size(&d).ok() == Some(size) {
            return Ok(());
        }
        let mut f = layout.blob(d.algorithm(), d.hex(), size).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                invalid(format!("{dir}: missing blob {digest}"))
            } else {
                ImageStoreError::Io(e)
            }
        })?;
        let mut w = self.store.blob_writer()?;
        let importing =
            |source: Box<dyn std::error::Error + Send + Sync>| ImageStoreError::Import {
                what: format!("{dir}: importing blob {digest}"),
                source,
            };
        std::io::copy(&mut f, &mut w).map_err(|e| importing(e.into()))?;
        w.commit(Some(&d)).map_err(|e| importing(e.into()))?;
        Ok(())
    }

    fn import_blob_tree(&self, layout: &Layout, desc: &serde_json::Value) -> Result<()> {
        self.import_blob(layout, desc, Some(MAX_LAYOUT_JSON))?;
        let digest = desc["digest"].as_str().unwrap_or_default();
        let v: serde_json::Value = serde_json::from_slice(&read_json_blob(&self.store, digest)?)
            .map_err(|source| ImageStoreError::Json {
                what: format!("{digest} is not JSON"),
                source,
            })?;
        for m in v["manifests"].as_array().into_iter().flatten() {
            // Other platforms' manifests are optional in a layout.
            let _ = self.import_blob_tree(layout, m);
        }
        if v["config"].is_object() {
            self.import_blob(layout, &v["config"], Some(MAX_LAYOUT_JSON))?;
        }
        for l in v["layers"].as_array().into_iter().flatten() {
            self.import_blob(layout, l, None)?;
        }
        Ok(())
    }
}

/// The key of `reference` for `platform` in [`ImageStore`]'s maps of what it resolved
/// and what failed.
fn image_key(reference: &str, platform: &Platform) -> String {
    format!("{reference}\0{platform}")
}

impl ImageResolver for ImageStore {
    fn resolve(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<Option<ResolvedImage>, String> {
        let key = image_key(reference, platform);
        if let Some(e) = self.failed.lock().expect("image lock").get(&key) {
            return Err(e.clone());
        }
        let info = self.get(reference, platform).map_err(|e| {
            let e = chain(&e);
            self.failed
                .lock()
                .expect("image lock")
                .insert(key, e.clone());
            e
        })?;
        let mut config = info.config.config.clone();
        // Windows-only in Docker: a Linux image kiln builds never inherits it.
        config.args_escaped = false;
        Ok(Some(ResolvedImage {
            digest: Some(info.chain_id.clone()),
            config,
            author: info.config.author.clone(),
            history_len: info.config.history.len(),
            platform: (!info.config.os.is_empty() && !info.config.architecture.is_empty()).then(
                || {
                    Platform::new(
                        &info.config.os,
                        &info.config.architecture,
                        info.config.variant.as_deref(),
                    )
                },
            ),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_tags_are_suggested() {
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("", "abc"), 3);
        assert_eq!(levenshtein("same", "same"), 0);
        let tags = ["demo:latest", "busybox:kiln", "app:1"];
        assert_eq!(closest_tag("demo:lates", tags), Some("demo:latest"));
        assert_eq!(closest_tag("dmeo", tags), Some("demo:latest"));
        assert_eq!(closest_tag("busybox:klin", tags), Some("busybox:kiln"));
        assert_eq!(closest_tag("app:2", tags), Some("app:1"));
        // Too far, or the very name (found, not misspelt).
        assert_eq!(closest_tag("nginx", tags), None);
        assert_eq!(closest_tag("demo", tags), None);
    }

    /// Stores an image with no layers for `os/arch[/variant]`; returns its manifest's
    /// index entry.
    fn image(store: &Store, platform: &str) -> serde_json::Value {
        let parts: Vec<&str> = platform.split('/').collect();
        let mut p = serde_json::json!({"os": parts[0], "architecture": parts[1]});
        if let Some(v) = parts.get(2) {
            p["variant"] = (*v).into();
        }
        let mut config = p.clone();
        config["rootfs"] = serde_json::json!({"type": "layers", "diff_ids": []});
        config["config"] = serde_json::json!({"Env": [format!("PLATFORM={platform}")]});
        let (digest, size) = put_image(store, &config);
        serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest.to_string(), "size": size, "platform": p})
    }

    /// Stores `config` and a manifest with no layers over it; returns the manifest's
    /// digest and size.
    fn put_image(store: &Store, config: &serde_json::Value) -> (Digest, usize) {
        let config = serde_json::to_vec(config).unwrap();
        let config_digest = store.put_blob(&config).unwrap();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest.to_string(), "size": config.len()},
            "layers": [],
        }))
        .unwrap();
        (store.put_blob(&manifest).unwrap(), manifest.len())
    }

    fn index(store: &Store, platforms: &[&str]) -> String {
        let manifests: Vec<_> = platforms.iter().map(|p| image(store, p)).collect();
        let bytes = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        }))
        .unwrap();
        store.put_blob(&bytes).unwrap().to_string()
    }

    /// Which image of the index `load` picked, by the `PLATFORM` its config sets.
    fn picked(images: &ImageStore, index: &str, platform: &str) -> Result<String> {
        let info = images.load(index, &Platform::parse(platform).unwrap())?;
        Ok(info.config.config.env[0].clone())
    }

    /// `FROM` names go through the same grammar as `-t`, `tag`, `push` and `pull`.
    #[test]
    fn from_refuses_what_docker_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let images = ImageStore::new(&Store::open(dir.path()).unwrap());
        let err = images
            .get("UPPER/case", &Platform::host())
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "image \"UPPER/case\": invalid reference format: repository name (UPPER/case) must be lowercase"
        );
        let err = images.get("a:b:c", &Platform::host()).unwrap_err();
        assert!(
            err.to_string().ends_with(": invalid reference format"),
            "{err}"
        );
    }

    /// Present layers need no registry; a missing one without a registry to fetch it
    /// from is named.
    #[test]
    fn ensure_layers_without_a_remote() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let images = ImageStore::new(&store);
        let present = store.put_blob(b"layer").unwrap();
        let layer = |digest: Digest, size| LayerRef {
            digest,
            diff_id: present.clone(),
            size,
            media_type: String::new(),
        };
        let ok = layer(present.clone(), 5);
        images.ensure_layers([&ok], None).unwrap();
        assert!(images.layer_available(&ok).unwrap());
        let gone = layer(kiln_cache::sha256_of(b"gone"), 4);
        assert!(!images.layer_available(&gone).unwrap());
        let err = images.ensure_layers([&ok, &gone], None).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("layer {} is not in the store", gone.digest)
        );
    }

    #[test]
    fn stored_index_pick_is_variant_aware() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let images = ImageStore::new(&store);
        let idx = index(
            &store,
            &["linux/arm/v6", "linux/arm/v7", "linux/amd64", "linux/arm64"],
        );
        // Before one matcher, the variant was ignored and arm/v7 got the arm/v6 image.
        assert_eq!(
            picked(&images, &idx, "linux/arm/v7").unwrap(),
            "PLATFORM=linux/arm/v7"
        );
        assert_eq!(
            picked(&images, &idx, "linux/arm").unwrap(),
            "PLATFORM=linux/arm/v7"
        );
        assert_eq!(
            picked(&images, &idx, "linux/arm/v6").unwrap(),
            "PLATFORM=linux/arm/v6"
        );
        assert_eq!(
            picked(&images, &idx, "linux/arm64/v8").unwrap(),
            "PLATFORM=linux/arm64"
        );
        assert_eq!(
            picked(&images, &idx, "linux/x86_64").unwrap(),
            "PLATFORM=linux/amd64"
        );
        let err = picked(&images, &idx, "linux/s390x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("has no manifest for linux/s390x"), "{err}");

        // An index of one image serves any platform (OCI layouts of one image).
        let one = index(&store, &["linux/arm64/v8"]);
        assert_eq!(
            picked(&images, &one, "linux/arm64").unwrap(),
            "PLATFORM=linux/arm64/v8"
        );
        assert_eq!(
            picked(&images, &one, "linux/amd64").unwrap(),
            "PLATFORM=linux/arm64/v8"
        );
    }

    /// Base images reach the frontend as kiln's one `ImageConfig`, with their author;
    /// the Windows-only `ArgsEscaped` is dropped (kiln never wrote it for a Linux image).
    #[test]
    fn resolve_gives_the_base_config_and_author() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let config = serde_json::json!({
            "os": "linux", "architecture": "amd64", "author": "someone",
            "rootfs": {"type": "layers", "diff_ids": []},
            "config": {"Env": ["A=1"], "ArgsEscaped": true,
                "Healthcheck": {"Test": ["CMD", "true"], "Retries": 2}},
        });
        let (digest, _) = put_image(&store, &config);
        let images = ImageStore::new(&store);
        let platform = Platform::parse("linux/amd64").unwrap();
        let r = images
            .resolve(&format!("base@{digest}"), &platform)
            .unwrap()
            .unwrap();
        assert_eq!(r.author.as_deref(), Some("someone"));
        assert_eq!(r.config.env, ["A=1"]);
        assert_eq!(r.config.healthcheck.unwrap().retries, Some(2));
        assert!(!r.config.args_escaped);
        assert_eq!(r.digest, Some(kiln_oci::chain_id(&[])));
    }
}
