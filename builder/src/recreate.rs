//! Layer blobs kept as their snapshot only, written again when they are needed.
//!
//! A layer a step writes from a directory (a RUN's diff, a git checkout) is kept
//! unpacked, as the snapshot later steps run on. Its compressed blob is read only to
//! push or export the layer. So at the end of a build ([`compact`]) the blob is
//! dropped. When a push, an export or a cache export needs it, it is written again from
//! the snapshot ([`recreate`]), through the same writer with the same options. That
//! gives the same bytes for the same tree, and the new blob is checked against the
//! digest the image names before it is stored.
//!
//! buildah and Docker's image store keep only the unpacked form too, and compress
//! again at push. kiln keeps the digests.
//!
//! A base image's layer that a step unpacked is dropped the same way when a registry is
//! known to hold it: it is fetched again from there (BuildKit's lazy blobs, which
//! `save` and `push` already fetch).
//!
//! Each blob that can be written again has a record,
//! `snapshots/written/<blob hex>.json`: the diff_id, the writer's options, and the
//! identity of the snapshot directory it was written from (device, inode and birth
//! time). A snapshot unpacked again later, whose tar the writer need not give back byte
//! for byte, is not that directory, so the record no longer holds and the blob is kept.

use std::collections::HashSet;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use kiln_cache::{CacheError, Digest, Lease, LockKind, Store};
use kiln_layer::{Compression, LayerOptions};
use serde::{Deserialize, Serialize};

use crate::snapshots::{LayerRef, Snapshots};

/// Records live in this directory of the snapshot area (not a digest: the collector
/// and `system df` pass it by).
const RECORDS_DIR: &str = "written";

/// The layer writer's output format. Bump it when the writer or a compressor gives other
/// bytes for the same tree and options: a blob recorded under another format is
/// neither dropped nor written again.
const FORMAT: u32 = 1;

/// A record is a few hundred bytes; one bigger than this is not read.
const MAX_RECORD: u64 = 4096;

/// Why a blob could not be written again.
#[derive(Debug, thiserror::Error)]
#[error("writing layer {digest} again from its snapshot {}", snapshot.display())]
pub struct RecreateError {
    /// The blob.
    pub digest: Digest,
    /// The directory it was written from.
    pub snapshot: PathBuf,
    /// Why.
    #[source]
    pub source: Box<crate::worker::WorkerError>,
}

/// A directory's identity: the same device, inode and birth time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    dev: u64,
    ino: u64,
    born_ns: u128,
}

impl Identity {
    /// The identity of directory `path`; `None` when it is no directory or the
    /// filesystem keeps no birth time (an inode number alone may be reused).
    pub fn of(path: &Path) -> Option<Identity> {
        let meta = std::fs::symlink_metadata(path).ok()?;
        if !meta.is_dir() {
            return None;
        }
        let born = meta.created().ok()?;
        Some(Identity {
            dev: meta.dev(),
            ino: meta.ino(),
            born_ns: born.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos(),
        })
    }
}

/// What the writer was given, and the directory it read.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    format: u32,
    diff_id: Digest,
    compression: String,
    level: Option<i32>,
    source_date_epoch: Option<i64>,
    snapshot: Identity,
}

fn records_dir(store: &Store) -> PathBuf {
    store.snapshots_dir().join(RECORDS_DIR)
}

fn record_path(store: &Store, blob: &Digest) -> PathBuf {
    records_dir(store).join(format!("{}.json", blob.hex()))
}

/// Records that `layer`'s blob was written with `opts` from the directory now at its
/// snapshot, whose identity is `snapshot`.
pub fn record(
    store: &Store,
    layer: &LayerRef,
    opts: &LayerOptions,
    snapshot: Identity,
) -> io::Result<()> {
    let level = match opts.compression {
        Compression::Gzip { level } => Some(level as i32),
        Compression::Zstd { level } => Some(level),
        Compression::Uncompressed => None,
    };
    let record = Record {
        format: FORMAT,
        diff_id: layer.diff_id.clone(),
        compression: opts.compression.name().to_owned(),
        level,
        source_date_epoch: opts.source_date_epoch,
        snapshot,
    };
    let json = serde_json::to_vec(&record).map_err(io::Error::other)?;
    std::fs::create_dir_all(records_dir(store))?;
    kiln_cache::atomic::write(&record_path(store, &layer.digest), &json)
        .map_err(kiln_cache::atomic::AtomicError::into_io)
}

/// The record of `blob` and its snapshot directory, if that still is the directory
/// the blob was written from.
fn source(store: &Store, blob: &Digest) -> Option<(Record, PathBuf)> {
    let path = record_path(store, blob);
    if std::fs::metadata(&path).ok()?.len() > MAX_RECORD {
        return None;
    }
    let record: Record = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    let dir = Snapshots::new(store).path(&record.diff_id);
    (record.format == FORMAT && Identity::of(&dir) == Some(record.snapshot))
        .then_some((record, dir))
}

/// Whether `blob` can be written again from its snapshot.
pub fn can_recreate(store: &Store, blob: &Digest) -> bool {
    source(store, blob).is_some()
}

/// The diff_id of the snapshot `blob` can be written again from, if it can.
pub fn snapshot_of(store: &Store, blob: &Digest) -> Option<Digest> {
    source(store, blob).map(|(r, _)| r.diff_id)
}

/// Writes `blob` again from its snapshot into the store, checked against its digest.
/// `Ok(false)` when it has no such snapshot.
pub fn recreate(store: &Store, blob: &Digest) -> Result<bool, RecreateError> {
    let Some((record, dir)) = source(store, blob) else {
        return Ok(false);
    };
    let failed = |source: crate::worker::WorkerError| RecreateError {
        digest: blob.clone(),
        snapshot: dir.clone(),
        source: Box::new(source),
    };
    let compression =
        Compression::parse(&record.compression, record.level).map_err(|e| failed(e.into()))?;
    let opts = LayerOptions {
        compression,
        source_date_epoch: record.source_date_epoch,
        skip: None,
        chunk_cache: Some(crate::worker::store_chunks(store)),
    };
    let layer = crate::worker::write_layer_blob(store, &opts, Some(blob), |out| {
        kiln_layer::write_layer(&dir, &opts, out)
    })
    .map_err(failed)?;
    if layer.diff_id != record.diff_id {
        // Same blob digest, so the same tar: only a record naming the wrong diff_id.
        return Err(failed(crate::worker::WorkerError::Layer(
            kiln_layer::LayerError::DiffIdMismatch {
                expected: record.diff_id,
                actual: layer.diff_id,
            },
        )));
    }
    Ok(true)
}

/// Drops the blobs the store can make again, of layers unpacked as a snapshot: of
/// `layers`, those whose snapshot is the directory the blob was written from; of
/// `bases` (base layers a build fetched from a registry) also those a registry is known
/// to hold. A layer kiln built and pushed is not dropped for being in a registry: the
/// registry is the user's, and may drop it. Blobs other builds or processes hold a
/// lease on are kept. Returns the bytes freed.
pub fn compact<'l>(
    store: &Store,
    layers: impl IntoIterator<Item = &'l LayerRef>,
    bases: impl IntoIterator<Item = &'l LayerRef>,
    mine: Option<&Lease>,
) -> Result<u64, CacheError> {
    let snapshots = Snapshots::new(store);
    let mut seen = HashSet::new();
    // Bases first: a base's layer is among the layers of the steps above it too.
    let candidates: Vec<&LayerRef> = bases
        .into_iter()
        .map(|l| (l, true))
        .chain(layers.into_iter().map(|l| (l, false)))
        .filter(|(l, _)| seen.insert(l.digest.clone()))
        .filter(|(l, _)| store.has_blob(&l.digest) && snapshots.path(&l.diff_id).is_dir())
        .filter(|(l, base)| {
            can_recreate(store, &l.digest) || (*base && kiln_registry::fetchable(store, &l.digest))
        })
        .map(|(l, _)| l)
        .collect();
    if candidates.is_empty() {
        return Ok(0);
    }
    // As a collector: a lease added from now on finds the blob gone (and makes it
    // again), one added before keeps it.
    let _gc = store.lock_gc(LockKind::Exclusive)?;
    let leased: HashSet<String> = match mine {
        Some(lease) => store.other_leases(lease)?,
        None => store.leases()?,
    }
    .into_iter()
    .flat_map(|l| l.refs)
    .collect();
    let mut freed = 0;
    for l in candidates {
        if leased.contains(l.digest.as_str()) {
            continue;
        }
        let size = store.blob_size(&l.digest).unwrap_or(0);
        if store.delete_blob(&l.digest)? {
            freed += size;
        }
    }
    Ok(freed)
}

/// The layers of the stored image `manifest` (the host's platform of an index); none
/// when the image does not load.
fn image_layers(store: &Store, manifest: &Digest) -> Vec<LayerRef> {
    crate::images::ImageStore::new(store)
        .load(manifest.as_str(), &kiln_ops::Platform::host())
        .map(|info| info.layers)
        .unwrap_or_default()
}

/// A lease on the layer blobs of the stored image `manifest` (the host's platform of an
/// index) for `holder`, so that a build ending meanwhile does not drop one a push or a
/// save is about to read ([`compact`] keeps leased blobs).
pub fn lease_image(store: &Store, manifest: &Digest, holder: &str) -> Result<Lease, CacheError> {
    let refs: Vec<String> = image_layers(store, manifest)
        .iter()
        .map(|l| l.digest.to_string())
        .collect();
    store.lease(holder, &refs)
}

/// [`compact`] over the layers of the stored image `manifest` (the host's platform of
/// an index), after a push or a save wrote some of them again. Nothing when the image
/// does not load.
pub fn compact_image(store: &Store, manifest: &Digest) -> Result<u64, CacheError> {
    compact(store, &image_layers(store, manifest), [], None)
}

/// Removes the records whose snapshot is gone or was made again (they no longer say
/// how to write their blob). Returns how many went.
pub fn clean(store: &Store) -> usize {
    let Ok(entries) = std::fs::read_dir(records_dir(store)) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let blob = e
            .file_name()
            .to_str()
            .and_then(|n| n.strip_suffix(".json"))
            .and_then(|hex| Digest::parse(&format!("sha256:{hex}")).ok());
        let stale = match &blob {
            Some(b) => source(store, b).is_none(),
            // Not a record (a temporary file of one being written is left alone).
            None => false,
        };
        if stale && std::fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// The blobs a registry push can write again from snapshots ([`kiln_registry::LocalBlobs`]).
pub struct SnapshotBlobs;

/// How kiln pushes an image (Docker media types with `docker_format`): blobs kept only
/// as snapshots are written again from them.
pub fn push_options(docker_format: bool) -> kiln_registry::PushOptions {
    kiln_registry::PushOptions {
        docker_format,
        local: Some(std::sync::Arc::new(SnapshotBlobs)),
    }
}

impl kiln_registry::LocalBlobs for SnapshotBlobs {
    fn can_make(&self, store: &Store, digest: &Digest) -> bool {
        can_recreate(store, digest)
    }

    fn make(&self, store: &Store, digest: &Digest) -> Result<(), String> {
        match recreate(store, digest) {
            Ok(true) => Ok(()),
            Ok(false) => Err("its snapshot is gone".into()),
            Err(e) => Err(kiln_solver::error_chain(&e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store with a layer written from a directory kept as its snapshot, recorded as
    /// a build's worker records it; the layer.
    fn written(store: &Store) -> LayerRef {
        let snapshots = Snapshots::new(store);
        let dir = snapshots.temp_dir("test").unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/a"), "alpha\n").unwrap();
        std::fs::write(dir.path().join("big"), vec![7u8; 300_000]).unwrap();
        let opts = LayerOptions {
            source_date_epoch: Some(1_700_000_000),
            ..LayerOptions::default()
        };
        let layer = crate::worker::write_layer_blob(store, &opts, None, |out| {
            kiln_layer::write_layer(dir.path(), &opts, out)
        })
        .unwrap();
        let id = Identity::of(dir.path()).unwrap();
        let at = snapshots.commit(dir, &layer.diff_id).unwrap();
        assert_eq!(Identity::of(&at), Some(id));
        record(store, &layer, &opts, id).unwrap();
        layer
    }

    #[test]
    fn a_dropped_blob_is_written_again_with_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let layer = written(&store);
        let bytes = store.read_blob(&layer.digest).unwrap();
        assert_eq!(compact(&store, [&layer], [], None).unwrap(), layer.size);
        assert!(!store.has_blob(&layer.digest));
        assert!(can_recreate(&store, &layer.digest));
        assert_eq!(
            snapshot_of(&store, &layer.digest),
            Some(layer.diff_id.clone())
        );
        assert!(recreate(&store, &layer.digest).unwrap());
        assert_eq!(store.read_blob(&layer.digest).unwrap(), bytes);
        // Through the way exports, saves and builds make layers present.
        compact(&store, [&layer], [], None).unwrap();
        crate::images::ImageStore::new(&store)
            .ensure_layers([&layer], None)
            .unwrap();
        assert_eq!(store.read_blob(&layer.digest).unwrap(), bytes);
    }

    #[test]
    fn a_leased_blob_or_one_without_a_record_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let layer = written(&store);
        let other = store
            .lease("another build", &[layer.digest.to_string()])
            .unwrap();
        assert_eq!(compact(&store, [&layer], [], None).unwrap(), 0);
        assert!(store.has_blob(&layer.digest));
        // Its own lease does not keep it.
        assert_eq!(
            compact(&store, [&layer], [], Some(&other)).unwrap(),
            layer.size
        );
        drop(other);
        recreate(&store, &layer.digest).unwrap();
        std::fs::remove_file(record_path(&store, &layer.digest)).unwrap();
        assert_eq!(compact(&store, [&layer], [], None).unwrap(), 0);
        assert!(store.has_blob(&layer.digest));
    }

    #[test]
    fn a_snapshot_made_again_or_changed_does_not_stand_for_the_blob() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let layer = written(&store);
        let snapshot = Snapshots::new(&store).path(&layer.diff_id);
        compact(&store, [&layer], [], None).unwrap();

        // Changed in place: written again, it is another blob, which is not stored.
        std::fs::write(snapshot.join("etc/a"), "changed\n").unwrap();
        let err = recreate(&store, &layer.digest).unwrap_err();
        assert!(
            matches!(*err.source, crate::worker::WorkerError::Rewritten { .. }),
            "{err:?}"
        );
        assert!(!store.has_blob(&layer.digest));

        // Another directory in its place (as an unpack would make): no longer the one
        // the blob was written from, and its record is cleaned.
        let copy = dir.path().join("copy");
        std::fs::rename(&snapshot, &copy).unwrap();
        std::fs::create_dir(&snapshot).unwrap();
        assert!(!can_recreate(&store, &layer.digest));
        assert!(!recreate(&store, &layer.digest).unwrap());
        assert_eq!(clean(&store), 1);
        assert!(!record_path(&store, &layer.digest).exists());
    }
}
