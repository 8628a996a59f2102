//! The media types kiln reads and writes, in one place. The OCI ones are the strings
//! of oci-spec's `MediaType` (a test holds them equal); Docker's schema 2 types are
//! not in oci-spec.

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI uncompressed layer.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI gzip layer.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI zstd layer.
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// OCI uncompressed non-distributable layer.
pub const OCI_ND_LAYER_TAR: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar";
/// OCI gzip non-distributable layer.
pub const OCI_ND_LAYER_GZIP: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
/// OCI zstd non-distributable layer.
pub const OCI_ND_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";
/// Docker schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker gzip layer.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker uncompressed layer (accepted by registries, rarely seen).
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
/// Docker foreign (non-distributable) gzip layer.
pub const DOCKER_FOREIGN_LAYER_GZIP: &str =
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
/// Docker foreign (non-distributable) uncompressed layer.
pub const DOCKER_FOREIGN_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar";

/// Whether `mt` is an index / manifest list.
pub fn is_index(mt: &str) -> bool {
    mt == OCI_INDEX || mt == DOCKER_MANIFEST_LIST
}

/// Whether `mt` is a single-image manifest.
pub fn is_manifest(mt: &str) -> bool {
    mt == OCI_MANIFEST || mt == DOCKER_MANIFEST
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::image::MediaType;

    #[test]
    fn oci_types_are_oci_specs() {
        for (ours, theirs) in [
            (OCI_MANIFEST, MediaType::ImageManifest),
            (OCI_INDEX, MediaType::ImageIndex),
            (OCI_CONFIG, MediaType::ImageConfig),
            (OCI_LAYER_TAR, MediaType::ImageLayer),
            (OCI_LAYER_GZIP, MediaType::ImageLayerGzip),
            (OCI_LAYER_ZSTD, MediaType::ImageLayerZstd),
            (OCI_ND_LAYER_TAR, MediaType::ImageLayerNonDistributable),
            (OCI_ND_LAYER_GZIP, MediaType::ImageLayerNonDistributableGzip),
            (OCI_ND_LAYER_ZSTD, MediaType::ImageLayerNonDistributableZstd),
        ] {
            assert_eq!(ours, theirs.to_string());
            assert_eq!(MediaType::from(ours), theirs);
        }
        assert!(is_index(DOCKER_MANIFEST_LIST) && is_index(OCI_INDEX));
        assert!(is_manifest(DOCKER_MANIFEST) && !is_manifest(OCI_INDEX));
    }
}
