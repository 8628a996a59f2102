//! `kiln save` and `kiln load`: images of the store to and from one archive file, a
//! Docker archive (`docker save`'s format, the default) or an OCI archive (an OCI image
//! layout as a tar), several images in one file.
//!
//! Saving reuses the exporters ([`crate::exporter`]). Loading reads the tar as a stream
//! (a file or standard input): every regular file goes into the store as a blob as it
//! is read, so nothing is unpacked to a directory (no path in the archive can point
//! outside it) and a layer is copied once; the archive's JSON files are then read back
//! from the store, with caps, and every digest they name is checked against the content.
//! Blobs of an archive that turn out unused are left to the store's garbage collection.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use kiln_cache::{Digest, Store, TagRecord};
use kiln_layer::Compression;
use kiln_oci::digest::Hashing;
use kiln_oci::media_types::{
    OCI_CONFIG, OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_LAYER_ZSTD, OCI_MANIFEST,
};
use kiln_ops::Platform;
use serde::Deserialize;

use crate::exporter::{self, ExportError};
use crate::image::{BuiltImage, LayerDesc, canonical_json};
use crate::images::{ImageStore, ImageStoreError, normalize_tag};

/// The largest JSON file of an archive kiln reads (manifest.json, index.json, configs,
/// manifests).
const MAX_JSON: u64 = 4 << 20;

/// `containerd`'s annotation for an image's full name (what `docker load` reads).
const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";

/// Errors of `save` and `load`; each names the image, archive path or digest concerned.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// An image of the store could not be read.
    #[error(transparent)]
    Image(#[from] ImageStoreError),
    /// Writing the archive failed.
    #[error(transparent)]
    Export(#[from] ExportError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] kiln_cache::CacheError),
    /// Reading the archive failed.
    #[error("reading the archive: {0}")]
    Read(#[source] io::Error),
    /// The archive is not a Docker or OCI archive, or is inconsistent.
    #[error("invalid archive: {0}")]
    Invalid(String),
}

/// Result type of this module.
pub type Result<T, E = ArchiveError> = std::result::Result<T, E>;

fn invalid(message: impl Into<String>) -> ArchiveError {
    ArchiveError::Invalid(message.into())
}

/// The two archive formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// `docker save`'s format (`manifest.json`, uncompressed layers).
    Docker,
    /// An OCI image layout as a tar (`oci-layout`, `index.json`, blobs as stored).
    Oci,
}

/// One image to save: its manifest (or index) digest in the store and the names to
/// give it in the archive (none for an image named by id, as Docker does).
#[derive(Debug, Clone)]
pub struct SaveItem {
    /// The manifest or index digest.
    pub manifest: Digest,
    /// `name:tag`s.
    pub tags: Vec<String>,
}

/// An image of the store as the exporters take it: its manifest (for an index, the
/// host's platform's), config and layers.
pub fn stored_image(store: &Store, manifest: &Digest) -> Result<BuiltImage> {
    let info = ImageStore::new(store).load(manifest.as_str(), &Platform::host())?;
    let manifest_json = store.read_blob(&info.manifest_digest)?;
    let config_json = store.read_blob(&info.config_digest)?;
    let media_type = serde_json::from_slice::<serde_json::Value>(&manifest_json)
        .ok()
        .and_then(|v| v["mediaType"].as_str().map(str::to_string))
        .unwrap_or_else(|| OCI_MANIFEST.to_string());
    let mut descriptor = oci_spec::image::Descriptor::new(
        oci_spec::image::MediaType::from(media_type.as_str()),
        manifest_json.len() as u64,
        &info.manifest_digest,
    );
    if let Ok(p) = oci_spec::image::PlatformBuilder::default()
        .os(oci_spec::image::Os::from(info.config.os.as_str()))
        .architecture(oci_spec::image::Arch::from(
            info.config.architecture.as_str(),
        ))
        .build()
    {
        descriptor.set_platform(Some(p));
    }
    Ok(BuiltImage {
        config_json,
        config_digest: info.config_digest.clone(),
        manifest_json,
        manifest_digest: info.manifest_digest.clone(),
        manifest_descriptor: descriptor,
        layers: info.layers.iter().map(LayerDesc::from).collect(),
    })
}

/// Makes every layer of `items` (every platform of an index the store has whole) present
/// in the store, fetching those of registry bases that builds left lazy through
/// `remote`.
pub fn fetch_layers(
    store: &Store,
    items: &[SaveItem],
    remote: std::sync::Arc<crate::remote::Remote>,
) -> Result<()> {
    let images =
        ImageStore::new(store).with_remote(remote, std::sync::Arc::new(kiln_solver::NoReporter));
    for item in items {
        let prepared = prepare_oci(store, &item.manifest)?;
        let layers: Vec<crate::snapshots::LayerRef> = prepared
            .images
            .iter()
            .flat_map(|i| &i.layers)
            .map(crate::snapshots::LayerRef::from)
            .collect();
        images.ensure_layers(&layers, None)?;
    }
    Ok(())
}

/// An item ready for the OCI exporter: a multi-platform image's index JSON and every
/// platform's image, or one image.
struct Prepared {
    index_json: Option<Vec<u8>>,
    images: Vec<BuiltImage>,
}

/// For an OCI archive: a tag naming an index whose platforms are all in the store is
/// saved whole (index and every platform); otherwise the host's image only (a pulled
/// index usually has only the host's platform locally).
fn prepare_oci(store: &Store, manifest: &Digest) -> Result<Prepared> {
    let whole = || -> Option<Prepared> {
        if store.blob_size(manifest).ok()? > MAX_JSON {
            return None;
        }
        let json = store.read_blob(manifest).ok()?;
        let v: serde_json::Value = serde_json::from_slice(&json).ok()?;
        let mut images = Vec::new();
        for m in v["manifests"].as_array()? {
            let d = Digest::parse(m["digest"].as_str()?).ok()?;
            images.push(stored_image(store, &d).ok()?);
        }
        Some(Prepared {
            index_json: Some(json),
            images,
        })
    };
    match whole() {
        Some(p) => Ok(p),
        None => Ok(Prepared {
            index_json: None,
            images: vec![stored_image(store, manifest)?],
        }),
    }
}

/// Writes `items` as one archive at `dest` (through a temporary file and a rename). A
/// Docker archive holds no index: a multi-platform image is saved as its host
/// platform's image there; an OCI archive holds it whole.
pub fn save(store: &Store, items: &[SaveItem], format: ArchiveFormat, dest: &Path) -> Result<()> {
    let blob_path = |d: &Digest| store.blob_file(d).map_err(std::io::Error::other);
    if format == ArchiveFormat::Oci {
        let prepared = items
            .iter()
            .map(|i| prepare_oci(store, &i.manifest))
            .collect::<Result<Vec<_>>>()?;
        let list: Vec<(exporter::ArchiveImage<'_>, &[String])> = prepared
            .iter()
            .zip(items)
            .map(|(p, i)| {
                let item = match &p.index_json {
                    Some(json) => exporter::ArchiveImage::Index {
                        digest: &i.manifest,
                        json,
                        images: &p.images,
                    },
                    None => exporter::ArchiveImage::Image(&p.images[0]),
                };
                (item, i.tags.as_slice())
            })
            .collect();
        exporter::write_oci_archive_items(&list, &blob_path, dest)?;
        return Ok(());
    }
    let images = items
        .iter()
        .map(|i| stored_image(store, &i.manifest))
        .collect::<Result<Vec<_>>>()?;
    let pairs: Vec<(&BuiltImage, &[String])> = images
        .iter()
        .zip(items)
        .map(|(img, item)| (img, item.tags.as_slice()))
        .collect();
    exporter::write_docker_archive_multi(&pairs, &blob_path, dest)?;
    Ok(())
}

/// One image an archive held, as loaded into the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedImage {
    /// The names it was tagged with (`app:1`), none for an unnamed image.
    pub tags: Vec<String>,
    /// Its manifest (or index) digest in the store.
    pub manifest: Digest,
    /// Its config digest: the image ID.
    pub config: Digest,
}

/// What the tar held: each file's blob, and links to resolve afterwards.
#[derive(Default)]
struct Contents {
    files: HashMap<String, (Digest, u64)>,
    links: HashMap<String, String>,
}

impl Contents {
    /// The blob at `path`, following links (a legacy `docker save` links a layer shared
    /// by two images).
    fn get(&self, path: &str) -> Option<&(Digest, u64)> {
        let mut path = clean(path);
        for _ in 0..16 {
            if let Some(f) = self.files.get(&path) {
                return Some(f);
            }
            path = self.links.get(&path)?.clone();
        }
        None
    }

    fn need(&self, path: &str) -> Result<&(Digest, u64)> {
        self.get(path)
            .ok_or_else(|| invalid(format!("{path} is missing from the archive")))
    }
}

/// `./a/../b` -> `b`: an archive path made canonical (never above the root).
fn clean(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            p => out.push(p),
        }
    }
    out.join("/")
}

/// Reads the tar: regular files into the store, links remembered.
fn read_tar(store: &Store, reader: impl Read) -> Result<Contents> {
    let mut contents = Contents::default();
    let mut tar = tar::Archive::new(reader);
    for entry in tar.entries().map_err(ArchiveError::Read)? {
        let mut entry = entry.map_err(ArchiveError::Read)?;
        let path = clean(&String::from_utf8_lossy(&entry.path_bytes()));
        let kind = entry.header().entry_type();
        if kind.is_file() {
            let mut w = store.blob_writer()?;
            io::copy(&mut entry, &mut w).map_err(ArchiveError::Read)?;
            let (digest, size) = w.commit(None)?;
            // A file named by a digest must hold it.
            if let Some(hex) = path.strip_prefix("blobs/sha256/")
                && hex != digest.hex()
            {
                return Err(invalid(format!("{path} holds content hashing to {digest}")));
            }
            contents.files.insert(path, (digest, size));
        } else if kind.is_symlink() || kind.is_hard_link() {
            let target = entry
                .link_name_bytes()
                .map(|t| String::from_utf8_lossy(&t).into_owned())
                .unwrap_or_default();
            let target = if kind.is_symlink() {
                let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
                clean(&format!("{dir}/{target}"))
            } else {
                clean(&target)
            };
            contents.links.insert(path, target);
        }
    }
    Ok(contents)
}

fn read_json<T: serde::de::DeserializeOwned>(
    store: &Store,
    (digest, size): &(Digest, u64),
    what: &str,
) -> Result<T> {
    if *size > MAX_JSON {
        return Err(invalid(format!("{what} is {size} bytes, over {MAX_JSON}")));
    }
    serde_json::from_slice(&store.read_blob(digest)?)
        .map_err(|e| invalid(format!("{what} is not valid: {e}")))
}

/// Loads every image of a Docker or OCI archive read from `reader` into the store and
/// tags it with the names the archive gives it.
pub fn load(store: &Store, reader: impl Read) -> Result<Vec<LoadedImage>> {
    let contents = read_tar(store, reader)?;
    let loaded = if contents.get("manifest.json").is_some() {
        load_docker(store, &contents)?
    } else if contents.get("index.json").is_some() {
        load_oci(store, &contents)?
    } else {
        return Err(invalid(
            "neither a Docker archive (no manifest.json) nor an OCI archive (no index.json)",
        ));
    };
    for image in &loaded {
        for tag in &image.tags {
            store.tag_set(
                tag,
                &TagRecord::new(image.manifest.clone(), image.config.clone()),
            )?;
        }
    }
    Ok(loaded)
}

#[derive(Deserialize)]
struct DockerEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// The digest of a layer blob's uncompressed content, and the blob's media type.
fn layer_diff_id(store: &Store, digest: &Digest) -> Result<(Digest, &'static str)> {
    let file = store.open_blob(digest)?;
    let mut reader = BufReader::new(file);
    let head = reader.fill_buf().map_err(ArchiveError::Read)?;
    let compression = Compression::sniff(head);
    if compression == Compression::Uncompressed {
        return Ok((digest.clone(), OCI_LAYER_TAR));
    }
    let mut out = Hashing::new(io::sink());
    let media = match compression {
        Compression::Gzip { .. } => {
            io::copy(&mut flate2::bufread::MultiGzDecoder::new(reader), &mut out)
                .map_err(ArchiveError::Read)?;
            OCI_LAYER_GZIP
        }
        _ => {
            let mut d =
                zstd::stream::read::Decoder::with_buffer(reader).map_err(ArchiveError::Read)?;
            io::copy(&mut d, &mut out).map_err(ArchiveError::Read)?;
            OCI_LAYER_ZSTD
        }
    };
    let (_, diff_id, _) = out.finish();
    Ok((diff_id, media))
}

fn load_docker(store: &Store, contents: &Contents) -> Result<Vec<LoadedImage>> {
    let entries: Vec<DockerEntry> =
        read_json(store, contents.need("manifest.json")?, "manifest.json")?;
    let mut loaded = Vec::with_capacity(entries.len());
    for e in entries {
        let config = contents.need(&e.config)?;
        let config_json: serde_json::Value = read_json(store, config, &e.config)?;
        let diff_ids: Vec<Digest> = config_json["rootfs"]["diff_ids"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| {
                d.as_str()
                    .and_then(|s| Digest::parse(s).ok())
                    .ok_or_else(|| invalid(format!("{}: a diff_id is not a digest", e.config)))
            })
            .collect::<Result<_>>()?;
        if diff_ids.len() != e.layers.len() {
            return Err(invalid(format!(
                "{}: {} diff_ids for {} layers",
                e.config,
                diff_ids.len(),
                e.layers.len()
            )));
        }
        let mut layers = Vec::with_capacity(e.layers.len());
        for (path, want) in e.layers.iter().zip(&diff_ids) {
            let (digest, size) = contents.need(path)?;
            let (diff_id, media) = layer_diff_id(store, digest)?;
            if &diff_id != want {
                return Err(invalid(format!(
                    "layer {path} has content {diff_id}, the config says {want}"
                )));
            }
            layers.push(serde_json::json!({
                "mediaType": media, "digest": digest, "size": size,
            }));
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config.0, "size": config.1},
            "layers": layers,
        });
        let bytes = canonical_json(&manifest)
            .map_err(|e| invalid(format!("serializing a manifest: {e}")))?;
        let manifest = store.put_blob(&bytes)?;
        // Checks what the image store will read back.
        ImageStore::new(store).load(manifest.as_str(), &Platform::host())?;
        loaded.push(LoadedImage {
            tags: e
                .repo_tags
                .unwrap_or_default()
                .iter()
                .map(|t| normalize_tag(t))
                .collect(),
            manifest,
            config: config.0.clone(),
        });
    }
    Ok(loaded)
}

/// Checks that a manifest or index and all it names (for an index, every manifest
/// the archive holds) are in the store.
fn check_tree(store: &Store, digest: &Digest, depth: u8) -> Result<()> {
    if depth > 4 {
        return Err(invalid(format!("{digest}: indexes nested too deep")));
    }
    let size = store
        .blob_size(digest)
        .map_err(|_| invalid(format!("blob {digest} is missing from the archive")))?;
    let v: serde_json::Value = read_json(store, &(digest.clone(), size), digest.as_str())?;
    let named = |d: &serde_json::Value| -> Result<Digest> {
        d["digest"]
            .as_str()
            .and_then(|s| Digest::parse(s).ok())
            .ok_or_else(|| invalid(format!("{digest}: a descriptor without a valid digest")))
    };
    for m in v["manifests"].as_array().into_iter().flatten() {
        check_tree(store, &named(m)?, depth + 1)?;
    }
    let config = v["config"].is_object().then_some(&v["config"]);
    for d in config
        .into_iter()
        .chain(v["layers"].as_array().into_iter().flatten())
    {
        let d = named(d)?;
        if !store.has_blob(&d) {
            return Err(invalid(format!("blob {d} is missing from the archive")));
        }
    }
    Ok(())
}

fn load_oci(store: &Store, contents: &Contents) -> Result<Vec<LoadedImage>> {
    let index: serde_json::Value = read_json(store, contents.need("index.json")?, "index.json")?;
    let mut loaded: Vec<LoadedImage> = Vec::new();
    for m in index["manifests"].as_array().into_iter().flatten() {
        let digest = m["digest"]
            .as_str()
            .and_then(|s| Digest::parse(s).ok())
            .ok_or_else(|| invalid("index.json: an entry without a valid digest"))?;
        check_tree(store, &digest, 0)?;
        let info = ImageStore::new(store).load(digest.as_str(), &Platform::host())?;
        let name = m["annotations"][ANNOTATION_CONTAINERD_NAME]
            .as_str()
            .map(normalize_tag);
        match loaded.iter_mut().find(|l| l.manifest == digest) {
            Some(l) => l.tags.extend(name),
            None => loaded.push(LoadedImage {
                tags: name.into_iter().collect(),
                manifest: digest,
                config: info.config_digest.clone(),
            }),
        }
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_paths_are_cleaned() {
        assert_eq!(clean("./blobs/sha256/ab"), "blobs/sha256/ab");
        assert_eq!(clean("a/../../../etc/passwd"), "etc/passwd");
        assert_eq!(clean("x//y/./z"), "x/y/z");
    }

    #[test]
    fn links_are_followed() {
        let d = kiln_cache::sha256_of(b"x");
        let mut c = Contents::default();
        c.files.insert("a/layer.tar".into(), (d.clone(), 1));
        c.links.insert("b/layer.tar".into(), "a/layer.tar".into());
        c.links.insert("loop".into(), "loop".into());
        assert_eq!(c.get("./b/layer.tar"), Some(&(d, 1)));
        assert!(c.get("loop").is_none());
        assert!(c.need("nothing").is_err());
    }
}
