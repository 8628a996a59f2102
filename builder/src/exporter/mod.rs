//! Exporters: write a [`BuiltImage`](crate::image::BuiltImage) out as an OCI image
//! layout directory, an OCI archive (the layout as a tar) or a `docker load`-able
//! Docker archive.
//!
//! Every writer takes a `blob_path` function that gives the path of a layer blob in
//! kiln's store from its digest (`<root>/blobs/sha256/<hex>`; a spliced blob is written
//! out there first, see `kiln_cache::Store::blob_file`), the image, a
//! destination and a list of tags (`name:tag`, e.g. `docker.io/library/app:1` or
//! `app:1`; a name without a tag means `:latest`). Files are written to a temporary
//! name and renamed into place, so a failed export leaves no half-written output.

mod docker;
mod oci;
mod util;

#[cfg(test)]
mod tests;

use std::io;
use std::path::{Path, PathBuf};

use kiln_oci::Digest;
use kiln_registry::Reference;

pub use docker::{write_docker_archive, write_docker_archive_multi};
pub use oci::{
    ArchiveImage, write_oci_archive, write_oci_archive_items, write_oci_archive_multi,
    write_oci_index, write_oci_layout,
};

/// Gives the path of a blob in the store from its digest, as a file of its own (which
/// the store may have to write out first).
pub type BlobPath<'a> = &'a dyn Fn(&Digest) -> io::Result<PathBuf>;

/// Errors from the exporters; each names the path, digest or reference concerned.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A tag is not a valid `name[:tag]` reference (Docker's grammar, as everywhere).
    #[error("invalid tag for the export: {0}")]
    InvalidReference(#[from] kiln_registry::RegistryError),
    /// A tag names a digest (`name@sha256:...`): an export needs a tag.
    #[error("invalid tag for the export {0:?}: a digest reference cannot name an export")]
    DigestReference(String),
    /// A filesystem operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done (`writing`, `creating directory`, ...).
        op: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A layer blob could not be had as a file of the store.
    #[error("layer {digest}: {source}")]
    BlobFile {
        /// The layer's digest.
        digest: Digest,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Reading a layer blob from the store failed.
    #[error("layer {digest} at {}: {source}", path.display())]
    Blob {
        /// The layer's digest.
        digest: Digest,
        /// Its path in the store.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A layer blob's size differs from its descriptor's.
    #[error("layer {digest} at {}: size is {actual} bytes, descriptor says {expected}", path.display())]
    BlobSize {
        /// The layer's digest.
        digest: Digest,
        /// Its path in the store.
        path: PathBuf,
        /// Size from the descriptor.
        expected: u64,
        /// Size on disk.
        actual: u64,
    },
    /// A layer blob's content does not hash to its digest.
    #[error("layer {digest} at {}: content hashes to {actual}", path.display())]
    DigestMismatch {
        /// The layer's digest.
        digest: Digest,
        /// Its path in the store.
        path: PathBuf,
        /// The digest of what was read.
        actual: Digest,
    },
    /// A layer's uncompressed content does not hash to its diff_id.
    #[error("layer {digest}: uncompressed content is {actual}, expected diff_id {diff_id}")]
    DiffIdMismatch {
        /// The layer's digest.
        digest: Digest,
        /// The expected diff_id.
        diff_id: Digest,
        /// The digest of what was read.
        actual: Digest,
    },
    /// The destination holds something that is not a usable OCI layout.
    #[error("{} is not a usable OCI image layout: {reason}", path.display())]
    NotALayout {
        /// The file that could not be used.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Serializing JSON failed.
    #[error("serializing {}: {source}", path.display())]
    Json {
        /// The file being written.
        path: PathBuf,
        /// The error.
        #[source]
        source: serde_json::Error,
    },
}

/// Result type of the exporters.
pub type Result<T, E = ExportError> = std::result::Result<T, E>;

/// `blobs/sha256/<hex>` for a digest (a [`Digest`] is validated, so this cannot escape
/// `blobs/sha256/`).
fn blob_rel_path(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

/// Parses all tags up front, so that a bad one fails the export before anything is
/// written; duplicates (after normalisation) are dropped.
fn parse_tags(tags: &[String]) -> Result<Vec<Reference>> {
    let mut refs: Vec<Reference> = Vec::with_capacity(tags.len());
    for tag in tags {
        let r = Reference::parse(tag)?;
        if r.digest.is_some() {
            return Err(ExportError::DigestReference(tag.clone()));
        }
        if !refs.contains(&r) {
            refs.push(r);
        }
    }
    Ok(refs)
}

/// The tag of a reference [`parse_tags`] accepted (`latest` if it had none).
fn tag_of(r: &Reference) -> &str {
    r.tag.as_deref().unwrap_or("latest")
}

/// The directory a destination file lives in (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}
