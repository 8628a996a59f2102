//! kiln's shared OCI and domain types.
//!
//! The frontend (which must stay free of network and store code) and the registry
//! client (which must not know Dockerfiles) both need the same platform type: the
//! frontend to expand `TARGETPLATFORM` and key `FROM --platform`, the registry to pick
//! an image out of an index, the builder to pick one out of a stored index or layout.
//! Two copies normalised differently once (`linux/arm64/v8` did not find an `arm64`
//! entry), so the type lives here, below all three, over oci-spec's own descriptors.
//!
//! * [`Platform`]: `os/arch[/variant]`, normalised as containerd does, and
//!   [`Platform::pick`], containerd's `platforms.Only` matcher over an index.
//! * [`config`]: the image's runtime config ([`config::ImageConfig`], with Docker's
//!   extensions), one type for the frontend that builds it and the builder that writes
//!   and reads it.
//! * [`media_types`]: every OCI and Docker media type kiln reads or writes.
//! * [`Digest`]: kiln's one digest type (validated `sha256:<hex>`, converting to and
//!   from oci-spec's), and in [`digest`] kiln's one sha256, for bytes and for streams.
//! * [`transfer`]: how a blob transfer between a registry and the store stands
//!   ([`transfer::BlobKind`], [`transfer::BlobDone`]).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod config;
pub mod digest;
pub mod media_types;
mod platform;
pub mod transfer;

pub use digest::{Digest, DigestError, chain_id};
pub use platform::{Platform, PlatformError};
