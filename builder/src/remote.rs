//! Registries from the builder's side: pulling bases into the store (and tagging them),
//! fetching the layers of resolved images when they are needed, pushing local images,
//! `kiln login`/`logout`. Progress goes to the solver's [`Reporter`] as typed events.

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::images::normalize_tag;
use kiln_cache::{Digest, Store, TagRecord};
use kiln_ops::{Platform, VertexId};
use kiln_registry::{
    BlobEvent, Client, ClientOptions, Progress, PulledBlob, PushReport, Reference, RegistryError,
};

use kiln_solver::{BlobState, Event, Reporter};

/// Why a registry operation failed; each renders as the one line the CLI prints.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The registry client could not be made (bad `--registry-ca`, ...).
    #[error("{0}")]
    Client(String),
    /// The registry or the transfer failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] kiln_cache::CacheError),
    /// A digest recorded in the store is malformed.
    #[error(transparent)]
    Digest(#[from] kiln_oci::DigestError),
    /// `kiln push` of a name the store has no image for.
    #[error("image {name:?} not found in the local store")]
    NotFound {
        /// The name given.
        name: String,
    },
    /// A push failed.
    #[error("pushing {name}")]
    Push {
        /// The name given.
        name: String,
        /// Why.
        #[source]
        source: RegistryError,
    },
}

type Result<T, E = RemoteError> = std::result::Result<T, E>;

/// How kiln talks to registries (global flags).
#[derive(Debug, Clone, Default)]
pub struct RegistrySettings {
    /// `--insecure-registry`.
    pub insecure: Vec<String>,
    /// `--registry-ca`.
    pub ca_file: Option<PathBuf>,
    /// `--pull`: look in the registry even when the store has the tag.
    pub always_pull: bool,
    /// `--network-timeout`: connect and no-progress timeouts of registry requests and
    /// `ADD <url>` downloads.
    pub timeouts: kiln_registry::net::Timeouts,
}

/// A lazily created client: nothing touches the network until an image must be pulled.
pub struct Remote {
    settings: RegistrySettings,
    client: OnceLock<std::result::Result<Client, String>>,
}

/// Carries a registry's blob progress into the solver's reporter, as typed
/// [`Event::Blob`]s of `vertex`.
pub struct BlobReporter<'a> {
    reporter: &'a dyn Reporter,
    vertex: Option<VertexId>,
}

impl<'a> BlobReporter<'a> {
    /// Blob events of `vertex` (none: outside a build step) to `reporter`.
    pub fn new(reporter: &'a dyn Reporter, vertex: Option<VertexId>) -> BlobReporter<'a> {
        BlobReporter { reporter, vertex }
    }
}

impl Progress for BlobReporter<'_> {
    fn blob(&self, event: &BlobEvent<'_>) {
        let (digest, done, total, state) = match *event {
            BlobEvent::Started { digest, size, kind } => {
                (digest, 0, size, BlobState::Started(kind))
            }
            BlobEvent::Progress {
                digest,
                done,
                total,
            } => (digest, done, total, BlobState::Transferring),
            BlobEvent::Done { digest, size, how } => (digest, size, size, BlobState::Done(how)),
        };
        self.reporter.event(&Event::Blob {
            vertex: self.vertex,
            digest: digest.to_string(),
            done,
            total,
            state,
        });
    }
}

/// Parses an image name given by the user (`-t`, `tag`, `FROM`, `push`, `pull`) with
/// the one reference grammar, Docker's; the error is Docker's own message
/// (`invalid reference format: repository name (library/Bad) must be lowercase`).
pub fn parse_name(name: &str) -> std::result::Result<Reference, String> {
    Reference::parse(name).map_err(|e| match e {
        RegistryError::InvalidReference { reason, .. } => reason,
        e => e.to_string(),
    })
}

/// The name a reference is tagged under in the store: Docker's familiar form
/// (`busybox:latest`, `127.0.0.1:5000/app:1`).
pub fn local_name(reference: &str) -> Option<String> {
    Reference::parse(reference).ok().map(|r| {
        let r = if r.tag.is_none() && r.digest.is_none() {
            r.with_tag("latest")
        } else {
            r
        };
        r.familiar()
    })
}

impl Remote {
    /// A client to be made on first use.
    pub fn new(settings: RegistrySettings) -> Remote {
        Remote {
            settings,
            client: OnceLock::new(),
        }
    }

    /// `--pull`.
    pub fn always_pull(&self) -> bool {
        self.settings.always_pull
    }

    /// The client.
    pub fn client(&self) -> Result<&Client> {
        self.client
            .get_or_init(|| {
                Client::new(ClientOptions {
                    insecure_registries: self.settings.insecure.clone(),
                    ca_file: self.settings.ca_file.clone(),
                    timeouts: self.settings.timeouts,
                    ..ClientOptions::default()
                })
                .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| RemoteError::Client(e.clone()))
    }

    /// Pulls `reference` for `platform` into `store` and tags it under its local name;
    /// returns the manifest digest.
    pub fn pull(
        &self,
        store: &Store,
        reference: &str,
        platform: &Platform,
        progress: &dyn Progress,
    ) -> Result<String> {
        let r = Reference::parse(reference)?;
        let pulled = self.client()?.pull(&r, platform, store, progress)?;
        tag_fetched(
            store,
            reference,
            &r,
            &pulled.manifest_digest,
            &pulled.config.digest,
        )
    }

    /// Resolves `reference` for `platform` into `store` (manifest and config; the layers
    /// are fetched by [`Remote::fetch_missing`] when needed) and tags it under its local
    /// name; returns the manifest digest.
    pub fn resolve(
        &self,
        store: &Store,
        reference: &str,
        platform: &Platform,
        progress: &dyn Progress,
    ) -> Result<String> {
        self.resolve_then(store, reference, platform, progress, &|_| {})
    }

    /// [`Remote::resolve`], showing `layers` the image's layers once its manifest is
    /// read, before its config is fetched (see [`Client::resolve_then`]).
    pub fn resolve_then(
        &self,
        store: &Store,
        reference: &str,
        platform: &Platform,
        progress: &dyn Progress,
        layers: &dyn Fn(&[PulledBlob]),
    ) -> Result<String> {
        let r = Reference::parse(reference)?;
        let resolved = self
            .client()?
            .resolve_then(&r, platform, store, progress, layers)?;
        tag_fetched(
            store,
            reference,
            &r,
            &resolved.manifest_digest,
            &resolved.config.digest,
        )
    }

    /// Makes `blobs` present in `store`, fetching the missing ones from the registries
    /// known to hold them; no client is made when none is missing. The one way a blob
    /// of a resolved image becomes present (the worker, the exporters, pushes).
    pub fn fetch_missing(
        &self,
        store: &Store,
        blobs: &[PulledBlob],
        progress: &dyn Progress,
    ) -> Result<()> {
        if blobs
            .iter()
            .all(|b| store.blob_size(&b.digest).ok() == Some(b.size))
        {
            return Ok(());
        }
        self.client()?.fetch_missing(store, blobs, progress)?;
        Ok(())
    }

    /// Makes `blobs` of the image `reference` names present in `store`, fetched from its
    /// repository (see [`Client::fetch_blobs`]).
    pub fn fetch_blobs(
        &self,
        store: &Store,
        reference: &str,
        blobs: &[PulledBlob],
        progress: &dyn Progress,
    ) -> Result<()> {
        let r = Reference::parse(reference)?;
        self.client()?.fetch_blobs(&r, blobs, store, progress)?;
        Ok(())
    }

    /// Pushes the local image `name` to the registry it names (its tag, `latest` if none).
    pub fn push(
        &self,
        store: &Store,
        name: &str,
        docker_format: bool,
        progress: &dyn Progress,
    ) -> Result<PushReport> {
        let rec = store
            .tag_get(&normalize_tag(name))?
            .ok_or_else(|| RemoteError::NotFound {
                name: name.to_owned(),
            })?;
        let mut target = Reference::parse(name)?;
        if target.tag.is_none() {
            target = target.with_tag("latest");
        }
        // Layers of a resolved base the store lacks are mounted from their repository,
        // or fetched (Client::fetch_missing) before they are uploaded.
        let digest = Digest::parse(rec.manifest.as_str())?;
        self.client()?
            .push(
                store,
                &digest,
                &target,
                &crate::recreate::push_options(docker_format),
                progress,
            )
            .map_err(|source| RemoteError::Push {
                name: name.to_owned(),
                source,
            })
    }
}

/// Tags an image just pulled or resolved under its local name (unless it was named by
/// digest, as Docker leaves those untagged); returns its manifest digest.
fn tag_fetched(
    store: &Store,
    reference: &str,
    r: &Reference,
    manifest: &kiln_cache::Digest,
    config: &kiln_cache::Digest,
) -> Result<String> {
    if r.digest.is_none() {
        store.tag_set(
            &normalize_tag(reference),
            &TagRecord::new(manifest.clone(), config.clone()),
        )?;
    }
    Ok(manifest.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_registry::{BlobDone, BlobKind};
    use std::sync::Mutex;

    #[derive(Default)]
    struct Events(Mutex<Vec<Event>>);

    impl Reporter for Events {
        fn event(&self, e: &Event) {
            self.0.lock().unwrap().push(e.clone());
        }
    }

    /// A registry's typed blob events become the solver's, for the step that asked.
    #[test]
    fn blob_events_reach_the_reporter_typed() {
        let events = Events::default();
        let vertex = Some(VertexId::new(4));
        let p = BlobReporter::new(&events, vertex);
        let digest = kiln_cache::sha256_of(b"layer");
        p.blob(&BlobEvent::Started {
            digest: &digest,
            size: 10,
            kind: BlobKind::Download,
        });
        p.blob(&BlobEvent::Progress {
            digest: &digest,
            done: 4,
            total: 10,
        });
        p.blob(&BlobEvent::Done {
            digest: &digest,
            size: 10,
            how: BlobDone::Downloaded,
        });
        let blob = |done, state| Event::Blob {
            vertex,
            digest: digest.to_string(),
            done,
            total: 10,
            state,
        };
        assert_eq!(
            *events.0.lock().unwrap(),
            [
                blob(0, BlobState::Started(BlobKind::Download)),
                blob(4, BlobState::Transferring),
                blob(10, BlobState::Done(BlobDone::Downloaded)),
            ]
        );
    }
}
