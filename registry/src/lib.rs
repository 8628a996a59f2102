//! kiln's OCI distribution client: resolve, pull, push, auth.
//!
//! * [`Reference`]: image references with Docker's normalisation
//!   (`busybox` → `docker.io/library/busybox:latest`).
//! * [`Platform`]: `os/arch[/variant]`, used to pick an image out of an OCI
//!   index or a Docker manifest list (kiln's one platform type, from `kiln-oci`).
//! * [`Client`]: a blocking client. [`Client::pull`] streams an image into a
//!   [`kiln_cache::Store`]; [`Client::resolve`] stores only its manifest and
//!   config, and [`Client::fetch_missing`] fetches the layers later from the
//!   repository recorded for each blob; [`Client::push`] pushes one from the
//!   store (mounting or fetching the layers it lacks); [`Client::check_login`]
//!   verifies credentials.
//! * [`credentials`]: `~/.docker/config.json` (`auths`, `credsStore`,
//!   `credHelpers`), as read by `docker login` and written by `kiln login`.
//! * [`Progress`]: typed per-blob progress events ([`BlobEvent`]); only the
//!   CLI draws them.
//! * [`net`]: the connect, no-progress and minimum-rate timeouts of every
//!   request (shared with the builder's `ADD <url>` downloads).
//!
//! The client speaks the distribution API directly over `reqwest`'s blocking
//! client (which owns its tokio runtime); see `client.rs` for why this does
//! not go through `oci-client`. Everything fetched is untrusted: blobs are
//! digest-checked by the store on commit, manifests against the digest they
//! were requested by, and manifests and configs are size-limited.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod auth;
mod client;
pub mod credentials;
mod error;
pub mod net;
mod progress;
mod pull;
mod push;
mod reference;
mod sources;
mod tls;

pub use auth::Challenge;
pub use client::{Client, ClientOptions};
pub use error::{RegistryError, Result};
pub use kiln_oci::Platform;
pub use progress::{BlobDone, BlobEvent, BlobKind, NoProgress, Progress};
pub use pull::Artifact;
pub use pull::{Pulled, PulledBlob};
pub use push::{LocalBlobs, PushOptions, PushReport};
pub use reference::Reference;
pub use sources::{
    fetchable, key as sources_key, known as known_sources, remember as remember_source,
};

/// Media types kiln reads and writes (kiln's one list, from `kiln-oci`).
pub use kiln_oci::media_types;

/// Largest manifest or index accepted from a registry (or read from the
/// store to push). Docker and containerd use the same 4 MiB limit.
pub const MAX_MANIFEST_SIZE: u64 = 4 << 20;
/// Largest image config accepted from a registry.
pub const MAX_CONFIG_SIZE: u64 = 4 << 20;
