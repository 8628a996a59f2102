//! Unpacked layers ("snapshots") in the store, one directory per diff_id, shared by every
//! build and image that uses the layer. A snapshot appears atomically: it is unpacked or
//! built in a temporary directory and renamed into place.

use std::fs;
use std::path::{Path, PathBuf};

use kiln_cache::{CacheError, Digest, Store};
use kiln_layer::{LayerError, UnpackOptions, WhiteoutMode};
use serde::{Deserialize, Serialize};

/// Why a snapshot could not be made or found.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The store's temp area refused a new directory.
    #[error("creating a temporary directory in the store")]
    TempDir(#[source] std::io::Error),
    /// A finished snapshot could not be renamed into place.
    #[error("moving snapshot to {}", dest.display())]
    Move {
        /// Where it was going.
        dest: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The layer's blob is not in the store.
    #[error("layer {digest} is not in the store")]
    MissingBlob {
        /// The blob.
        digest: Digest,
        /// Why it could not be opened.
        #[source]
        source: CacheError,
    },
    /// The layer's blob did not unpack.
    #[error("unpacking layer {digest}")]
    Unpack {
        /// The blob.
        digest: Digest,
        /// Why.
        #[source]
        source: LayerError,
    },
    /// The store refused (marking a snapshot used).
    #[error(transparent)]
    Store(#[from] CacheError),
    /// An I/O error without more to say than itself.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

type Result<T, E = SnapshotError> = std::result::Result<T, E>;

/// A layer of an image or a build result.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LayerRef {
    /// Digest of the blob (compressed).
    pub digest: Digest,
    /// Digest of the uncompressed tar.
    pub diff_id: Digest,
    /// Blob size.
    pub size: u64,
    /// Blob media type.
    pub media_type: String,
}

impl From<kiln_layer::LayerInfo> for LayerRef {
    /// The layer a layer writer wrote.
    fn from(info: kiln_layer::LayerInfo) -> LayerRef {
        LayerRef {
            digest: info.digest,
            diff_id: info.diff_id,
            size: info.size,
            media_type: info.media_type.to_string(),
        }
    }
}

/// The snapshot area of a store.
#[derive(Debug, Clone)]
pub struct Snapshots {
    store: Store,
    dir: PathBuf,
    tmp: PathBuf,
}

impl Snapshots {
    /// The snapshots of `store`.
    pub fn new(store: &Store) -> Snapshots {
        Snapshots {
            store: store.clone(),
            dir: store.snapshots_dir(),
            tmp: store.tmp_dir(),
        }
    }

    /// Where the snapshot of a diff_id lives.
    pub fn path(&self, diff_id: &Digest) -> PathBuf {
        self.dir.join(diff_id.hex())
    }

    /// A fresh temporary directory in the store's temp area (same filesystem, so it can
    /// be renamed into place).
    pub fn temp_dir(&self, prefix: &str) -> Result<tempfile::TempDir> {
        fs::create_dir_all(&self.tmp)?;
        tempfile::Builder::new()
            // `<writer>.` so the store's temp cleaner knows the owner (Store::writer).
            .prefix(&format!("{}.{prefix}-", Store::writer()))
            .tempdir_in(&self.tmp)
            .map_err(SnapshotError::TempDir)
    }

    /// Moves a finished directory into place as the snapshot of `diff_id`. If another
    /// build got there first, ours is dropped.
    pub fn commit(&self, dir: tempfile::TempDir, diff_id: &Digest) -> Result<PathBuf> {
        let dest = self.path(diff_id);
        // Reused: marked used so that a running collector keeps it (gone since: ours
        // takes its place).
        if dest.exists() && self.store.mark_used(&dest)? {
            return Ok(dest);
        }
        fs::create_dir_all(&self.dir)?;
        let src = dir.keep();
        match fs::rename(&src, &dest) {
            Ok(()) => Ok(dest),
            Err(_) if dest.exists() => {
                let _ = fs::remove_dir_all(&src);
                Ok(dest)
            }
            Err(source) => Err(SnapshotError::Move { dest, source }),
        }
    }

    /// Makes sure the layer is unpacked, from its blob if need be; returns its directory.
    /// Steps of one build that need the same layer at the same time (stages on one base)
    /// wait for one unpack instead of each making its own.
    pub fn ensure(&self, store: &Store, layer_ref: &LayerRef) -> Result<PathBuf> {
        let dest = self.path(&layer_ref.diff_id);
        if dest.is_dir() {
            return Ok(dest);
        }
        let lock = unpack_lock(&dest);
        let _held = lock.lock().unwrap_or_else(|e| e.into_inner());
        if dest.is_dir() {
            return Ok(dest);
        }
        let blob =
            store
                .open_blob(&layer_ref.digest)
                .map_err(|source| SnapshotError::MissingBlob {
                    digest: layer_ref.digest.clone(),
                    source,
                })?;
        #[cfg(test)]
        tests::UNPACKED
            .lock()
            .expect("unpacked lock")
            .push(layer_ref.diff_id.clone());
        let tmp = self.temp_dir("unpack")?;
        let opts = UnpackOptions {
            expected_diff_id: Some(layer_ref.diff_id.clone()),
            whiteouts: if is_root() {
                WhiteoutMode::Overlay
            } else {
                WhiteoutMode::Oci
            },
            allow_devices: is_root(),
        };
        kiln_layer::unpack_layer(std::io::BufReader::new(blob), tmp.path(), &opts).map_err(
            |source| SnapshotError::Unpack {
                digest: layer_ref.digest.clone(),
                source,
            },
        )?;
        self.commit(tmp, &layer_ref.diff_id)
    }

    /// The snapshot directories of a chain of layers, bottom first.
    pub fn chain(&self, store: &Store, layers: &[LayerRef]) -> Result<Vec<PathBuf>> {
        layers.iter().map(|l| self.ensure(store, l)).collect()
    }
}

/// The lock of the unpacking of snapshot `dest` in this process (one per snapshot).
fn unpack_lock(dest: &Path) -> std::sync::Arc<std::sync::Mutex<()>> {
    static LOCKS: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<PathBuf, std::sync::Arc<std::sync::Mutex<()>>>>,
    > = std::sync::OnceLock::new();
    LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(dest.to_owned())
        .or_default()
        .clone()
}

/// Whether kiln runs as root (chown, device nodes and overlay whiteouts need it).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Whether `dir` has no entries.
pub fn is_empty_dir(dir: &Path) -> bool {
    fs::read_dir(dir)
        .map(|mut d| d.next().is_none())
        .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The diff_ids [`Snapshots::ensure`] unpacked, in order.
    pub(super) static UNPACKED: std::sync::Mutex<Vec<Digest>> = std::sync::Mutex::new(Vec::new());

    #[test]
    fn steps_needing_one_layer_at_once_unpack_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let src = tempfile::tempdir().unwrap();
        for i in 0..200 {
            std::fs::write(src.path().join(format!("f{i}")), format!("{i}\n")).unwrap();
        }
        let opts = kiln_layer::LayerOptions::default();
        let layer = crate::worker::write_layer_blob(&store, &opts, None, |out| {
            kiln_layer::write_layer(src.path(), &opts, out)
        })
        .unwrap();
        let snapshots = Snapshots::new(&store);
        let start = std::sync::Barrier::new(4);
        let dirs: Vec<PathBuf> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        start.wait();
                        snapshots.ensure(&store, &layer).unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(dirs.iter().all(|d| *d == snapshots.path(&layer.diff_id)));
        assert_eq!(std::fs::read_dir(&dirs[0]).unwrap().count(), 200);
        let unpacked = UNPACKED.lock().unwrap();
        assert_eq!(
            unpacked.iter().filter(|d| **d == layer.diff_id).count(),
            1,
            "unpacked once"
        );
    }
}
