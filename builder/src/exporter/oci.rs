//! OCI image layout exporters: a layout directory (merged into an existing one) and an
//! OCI archive (the layout as a tar).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io;
use std::path::Path;

use kiln_registry::Reference;
use oci_spec::image::{ANNOTATION_REF_NAME, Descriptor, ImageIndex, ImageIndexBuilder, MediaType};

use super::util::{Source, atomic_write, io_err, link_or_copy_layer, write_archive, write_blob};

use super::{BlobPath, ExportError, Result, blob_rel_path, parse_tags, tag_of};
use crate::image::{BuiltImage, canonical_json};
use crate::untrusted::{Layout, MAX_LAYOUT_JSON};

/// containerd's annotation for an image's full name.
pub(crate) const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";

/// The `oci-layout` file's content.
const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// The index entries for the image: one per tag, annotated with the tag as
/// `org.opencontainers.image.ref.name` and the full name as `io.containerd.image.name`,
/// or a single unannotated one when there are no tags.
fn tagged_descriptors(image: &BuiltImage, refs: &[Reference]) -> Vec<Descriptor> {
    if refs.is_empty() {
        return vec![image.manifest_descriptor.clone()];
    }
    refs.iter()
        .map(|r| {
            let mut d = image.manifest_descriptor.clone();
            let mut annotations = d.annotations().clone().unwrap_or_default();
            annotations.insert(ANNOTATION_REF_NAME.to_string(), tag_of(r).to_string());
            annotations.insert(ANNOTATION_CONTAINERD_NAME.to_string(), r.to_string());
            d.set_annotations(Some(annotations));
            d
        })
        .collect()
}

fn ref_name(d: &Descriptor) -> Option<&str> {
    d.annotations()
        .as_ref()?
        .get(ANNOTATION_REF_NAME)
        .map(String::as_str)
}

/// Keeps the existing entries except those whose ref name one of the new entries
/// takes over, then appends the new entries not already present.
fn merge(existing: Vec<Descriptor>, new: Vec<Descriptor>) -> Vec<Descriptor> {
    let taken: HashSet<&str> = new.iter().filter_map(ref_name).collect();
    let mut out: Vec<Descriptor> = existing
        .into_iter()
        .filter(|d| ref_name(d).is_none_or(|r| !taken.contains(r)))
        .collect();
    for d in new {
        if !out.contains(&d) {
            out.push(d);
        }
    }
    out
}

/// Serializes an index holding `manifests`, with the annotations of `previous` if any.
fn index_json(
    manifests: Vec<Descriptor>,
    annotations: Option<HashMap<String, String>>,
    path: &Path,
) -> Result<Vec<u8>> {
    let mut builder = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(manifests);
    if let Some(a) = annotations.filter(|a| !a.is_empty()) {
        builder = builder.annotations(a);
    }
    let index = builder.build().map_err(|e| ExportError::NotALayout {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    canonical_json(&index).map_err(|source| ExportError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads the index of an existing layout at `dir`: `None` when `dir` is no layout yet.
fn existing_index(dir: &Path) -> Result<Option<ImageIndex>> {
    let layout_path = dir.join("oci-layout");
    let index_path = dir.join("index.json");
    let not_layout = |path: &Path, reason: String| ExportError::NotALayout {
        path: path.to_path_buf(),
        reason,
    };
    // Whatever is at `dir` was not necessarily written by kiln: read it with a cap,
    // regular files only (see `untrusted`).
    let untrusted = match Layout::open(dir) {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("opening", dir)(e)),
    };
    let layout = match untrusted.read_capped("oci-layout", MAX_LAYOUT_JSON) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if index_path.exists() {
                return Err(not_layout(
                    &index_path,
                    "index.json exists but oci-layout does not; refusing to overwrite it"
                        .to_string(),
                ));
            }
            return Ok(None);
        }
        Err(e) => return Err(io_err("reading", &layout_path)(e)),
    };
    let version = serde_json::from_slice::<serde_json::Value>(&layout)
        .ok()
        .and_then(|v| v.get("imageLayoutVersion")?.as_str().map(str::to_string));
    match version {
        Some(v) if v.starts_with("1.") => {}
        Some(v) => return Err(not_layout(&layout_path, format!("unsupported version {v}"))),
        None => {
            return Err(not_layout(
                &layout_path,
                "no imageLayoutVersion".to_string(),
            ));
        }
    }
    match untrusted.read_capped("index.json", MAX_LAYOUT_JSON) {
        Ok(bytes) => serde_json::from_slice::<ImageIndex>(&bytes)
            .map(Some)
            .map_err(|e| not_layout(&index_path, e.to_string())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("reading", &index_path)(e)),
    }
}

/// Writes the image as an OCI image layout in `dest_dir` (created if needed):
/// `oci-layout`, `index.json` and `blobs/sha256/` with the config, the manifest and the
/// layers (hard-linked from the store when on the same filesystem, else copied).
///
/// Each tag gets an `index.json` entry annotated with
/// `org.opencontainers.image.ref.name` = the tag (what `oci:DIR:TAG` looks up) and
/// `io.containerd.image.name` = the full name; with no tags there is one entry without
/// annotations. If `dest_dir` already is a layout, its other entries and blobs are
/// kept and entries with the same ref name are replaced. Blobs are written first and
/// `index.json` last, atomically.
pub fn write_oci_layout(
    image: &BuiltImage,
    blob_path: BlobPath<'_>,
    dest_dir: &Path,
    tags: &[String],
) -> Result<()> {
    let refs = parse_tags(tags)?;
    let existing = existing_index(dest_dir)?;

    let blobs = dest_dir.join("blobs").join("sha256");
    fs::create_dir_all(&blobs).map_err(io_err("creating directory", &blobs))?;
    for layer in &image.layers {
        let dest = dest_dir.join(blob_rel_path(&layer.digest));
        link_or_copy_layer(layer, blob_path, &dest)?;
    }
    write_blob(
        &dest_dir.join(blob_rel_path(&image.config_digest)),
        &image.config_json,
    )?;
    write_blob(
        &dest_dir.join(blob_rel_path(&image.manifest_digest)),
        &image.manifest_json,
    )?;

    let layout_path = dest_dir.join("oci-layout");
    let index_path = dest_dir.join("index.json");
    let (manifests, annotations) = match existing {
        Some(index) => (
            merge(index.manifests().clone(), tagged_descriptors(image, &refs)),
            index.annotations().clone(),
        ),
        None => (tagged_descriptors(image, &refs), None),
    };
    if !layout_path.exists() {
        atomic_write(&layout_path, OCI_LAYOUT)?;
    }
    let index = index_json(manifests, annotations, &index_path)?;
    atomic_write(&index_path, &index)
}

/// Writes the image as an OCI archive: the layout [`write_oci_layout`] would write to
/// an empty directory, as a tar with sorted entries, mtime 0, owner 0:0 and modes
/// 0644/0755, written to a temporary file and renamed to `dest_file`. Layer blobs are
/// checked against their digests as they are copied.
pub fn write_oci_archive(
    image: &BuiltImage,
    blob_path: BlobPath<'_>,
    dest_file: &Path,
    tags: &[String],
) -> Result<()> {
    write_oci_archive_multi(&[(image, tags)], blob_path, dest_file)
}

/// Writes several images as one OCI archive: `index.json` lists each image's tagged
/// entries (as [`write_oci_layout`] does for one), blobs shared by several images are
/// stored once. Otherwise as [`write_oci_archive`].
pub fn write_oci_archive_multi(
    images: &[(&BuiltImage, &[String])],
    blob_path: BlobPath<'_>,
    dest_file: &Path,
) -> Result<()> {
    let items: Vec<(ArchiveImage<'_>, &[String])> = images
        .iter()
        .map(|(i, t)| (ArchiveImage::Image(i), *t))
        .collect();
    write_oci_archive_items(&items, blob_path, dest_file)
}

/// One image of an OCI archive: a single-platform image, or a multi-platform one (an
/// image index over its platforms' images).
pub enum ArchiveImage<'a> {
    /// A single image.
    Image(&'a BuiltImage),
    /// An image index.
    Index {
        /// The index's digest.
        digest: &'a kiln_oci::Digest,
        /// Its JSON.
        json: &'a [u8],
        /// The images it lists.
        images: &'a [BuiltImage],
    },
}

/// The descriptor of an index, annotated with each tag as an image's would be.
fn tagged_index(digest: &kiln_oci::Digest, size: u64, refs: &[Reference]) -> Vec<Descriptor> {
    let desc = Descriptor::new(MediaType::ImageIndex, size, digest);
    if refs.is_empty() {
        return vec![desc];
    }
    refs.iter()
        .map(|r| {
            let mut d = desc.clone();
            let mut a = HashMap::new();
            a.insert(ANNOTATION_REF_NAME.to_string(), tag_of(r).to_string());
            a.insert(ANNOTATION_CONTAINERD_NAME.to_string(), r.to_string());
            d.set_annotations(Some(a));
            d
        })
        .collect()
}

/// Writes single- and multi-platform images as one OCI archive (see
/// [`write_oci_archive_multi`]).
pub fn write_oci_archive_items(
    items: &[(ArchiveImage<'_>, &[String])],
    blob_path: BlobPath<'_>,
    dest_file: &Path,
) -> Result<()> {
    let mut manifests = Vec::new();
    let mut entries: BTreeMap<String, Source<'_>> = BTreeMap::new();
    entries.insert("blobs/".into(), Source::Dir);
    entries.insert("blobs/sha256/".into(), Source::Dir);
    entries.insert("oci-layout".into(), Source::Bytes(OCI_LAYOUT.to_vec()));
    for (item, tags) in items {
        let refs = parse_tags(tags)?;
        let (descriptors, images): (Vec<Descriptor>, &[BuiltImage]) = match item {
            ArchiveImage::Image(image) => (
                tagged_descriptors(image, &refs),
                std::slice::from_ref(*image),
            ),
            ArchiveImage::Index {
                digest,
                json,
                images,
            } => {
                entries.insert(blob_rel_path(digest), Source::Bytes(json.to_vec()));
                (tagged_index(digest, json.len() as u64, &refs), images)
            }
        };
        // Not `merge`: `app:1` and `other:1` share the ref name `1` and both stay
        // (`io.containerd.image.name` tells them apart).
        for d in descriptors {
            if !manifests.contains(&d) {
                manifests.push(d);
            }
        }
        for image in images {
            for layer in &image.layers {
                entries.insert(blob_rel_path(&layer.digest), Source::Blob(layer));
            }
            entries.insert(
                blob_rel_path(&image.config_digest),
                Source::Bytes(image.config_json.clone()),
            );
            entries.insert(
                blob_rel_path(&image.manifest_digest),
                Source::Bytes(image.manifest_json.clone()),
            );
        }
    }
    let index = index_json(manifests, None, dest_file)?;
    entries.insert("index.json".into(), Source::Bytes(index));
    write_archive(dest_file, &entries, blob_path)
}

/// Writes a multi-platform image: the index `index_json` (digest `index_digest`) over
/// `images`, with all their blobs, as an OCI layout directory (`as_dir`, merged into an
/// existing one as [`write_oci_layout`] does) or an OCI archive. `index.json` has one
/// entry per tag for the index, annotated as for one image.
pub fn write_oci_index(
    images: &[BuiltImage],
    index_digest: &kiln_oci::Digest,
    index_json_bytes: &[u8],
    blob_path: BlobPath<'_>,
    dest: &Path,
    tags: &[String],
    as_dir: bool,
) -> Result<()> {
    let refs = parse_tags(tags)?;
    let entries_for =
        |refs: &[Reference]| tagged_index(index_digest, index_json_bytes.len() as u64, refs);
    if as_dir {
        let existing = existing_index(dest)?;
        let blobs = dest.join("blobs").join("sha256");
        fs::create_dir_all(&blobs).map_err(io_err("creating directory", &blobs))?;
        for image in images {
            for layer in &image.layers {
                link_or_copy_layer(layer, blob_path, &dest.join(blob_rel_path(&layer.digest)))?;
            }
            write_blob(
                &dest.join(blob_rel_path(&image.config_digest)),
                &image.config_json,
            )?;
            write_blob(
                &dest.join(blob_rel_path(&image.manifest_digest)),
                &image.manifest_json,
            )?;
        }
        write_blob(&dest.join(blob_rel_path(index_digest)), index_json_bytes)?;
        let layout_path = dest.join("oci-layout");
        let index_path = dest.join("index.json");
        let (manifests, annotations) = match existing {
            Some(index) => (
                merge(index.manifests().clone(), entries_for(&refs)),
                index.annotations().clone(),
            ),
            None => (entries_for(&refs), None),
        };
        if !layout_path.exists() {
            atomic_write(&layout_path, OCI_LAYOUT)?;
        }
        let index = index_json(manifests, annotations, &index_path)?;
        return atomic_write(&index_path, &index);
    }
    let item = ArchiveImage::Index {
        digest: index_digest,
        json: index_json_bytes,
        images,
    };
    write_oci_archive_items(&[(item, tags)], blob_path, dest)
}
