//! The Docker archive exporter: a tar that `docker load` takes and that
//! `skopeo inspect docker-archive:FILE` reads.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::util::{Source, write_archive};
use super::{BlobPath, ExportError, Result, blob_rel_path, parse_tags};
use crate::image::BuiltImage;

/// One entry of `manifest.json`, in Docker's field order.
#[derive(Serialize)]
struct ManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags")]
    repo_tags: Vec<String>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// Writes the image as a Docker archive (`docker save`'s format) at `dest_file`:
/// `manifest.json` (`Config`, `RepoTags` with Docker's short names such as `app:1`,
/// `Layers`), `repositories`, the config at `blobs/sha256/<config hex>` and each layer
/// as an uncompressed tar at `blobs/sha256/<diff_id hex>` (gzip and zstd blobs are
/// decompressed on the way and checked against their diff_ids). The tar has sorted
/// entries, mtime 0, owner 0:0 and modes 0644/0755, and is written to a temporary file
/// renamed to `dest_file`.
pub fn write_docker_archive(
    image: &BuiltImage,
    blob_path: BlobPath<'_>,
    dest_file: &Path,
    tags: &[String],
) -> Result<()> {
    write_docker_archive_multi(&[(image, tags)], blob_path, dest_file)
}

/// Writes several images as one Docker archive, as `docker save A B` does: one
/// `manifest.json` entry per image (in the order given), each config and each layer
/// stored once however many images share it, and one `repositories` file for all the
/// tags. Otherwise as [`write_docker_archive`].
pub fn write_docker_archive_multi(
    images: &[(&BuiltImage, &[String])],
    blob_path: BlobPath<'_>,
    dest_file: &Path,
) -> Result<()> {
    let mut entries: BTreeMap<String, Source<'_>> = BTreeMap::new();
    entries.insert("blobs/".into(), Source::Dir);
    entries.insert("blobs/sha256/".into(), Source::Dir);
    let mut manifest = Vec::with_capacity(images.len());
    // The legacy `repositories` file: repository -> tag -> top layer.
    let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (image, tags) in images {
        let refs = parse_tags(tags)?;
        let config_path = blob_rel_path(&image.config_digest);
        entries.insert(
            config_path.clone(),
            Source::Bytes(image.config_json.clone()),
        );
        let mut layer_paths = Vec::with_capacity(image.layers.len());
        for layer in &image.layers {
            let path = blob_rel_path(&layer.diff_id);
            entries
                .entry(path.clone())
                .or_insert(Source::Uncompressed(layer));
            layer_paths.push(path);
        }
        manifest.push(ManifestEntry {
            config: config_path,
            repo_tags: refs.iter().map(|r| r.familiar()).collect(),
            layers: layer_paths,
        });
        if let Some(top) = image.layers.last() {
            let top = top.diff_id.hex();
            for r in &refs {
                repositories
                    .entry(r.familiar_repository())
                    .or_default()
                    .insert(super::tag_of(r).to_string(), top.to_string());
            }
        }
    }
    let json_err = |source| ExportError::Json {
        path: dest_file.to_path_buf(),
        source,
    };
    entries.insert(
        "manifest.json".into(),
        Source::Bytes(serde_json::to_vec(&manifest).map_err(json_err)?),
    );
    if !repositories.is_empty() {
        entries.insert(
            "repositories".into(),
            Source::Bytes(serde_json::to_vec(&repositories).map_err(json_err)?),
        );
    }
    write_archive(dest_file, &entries, blob_path)
}
