//! Volumes of `kiln run`, as Docker's `local` driver keeps them: data that outlives the
//! containers that mount it.
//!
//! Each volume is a directory of the store's volume area ([`Store::volumes_dir`]):
//!
//! ```text
//! volumes/NAME/_data              what containers see at the mount point
//! volumes/NAME/kiln-volume.json   created time, labels, anonymous, populated
//! ```
//!
//! A volume appears atomically: it is assembled in the store's `tmp/` and renamed into
//! place, and goes the same way (renamed into `tmp/`, then deleted), so a kiln killed at
//! any point leaves either a whole volume or none (what it left in `tmp/` is removed by
//! the next kiln). Its metadata file is replaced by rename too.
//!
//! Anonymous volumes (`-v /path`, an image's `VOLUME`) get a random 64-hex name, as in
//! Docker. A volume mounted for the first time onto a directory that has content in the
//! image is filled with that content ([`Volumes::populate_once`], Docker's copy-up), and
//! never again afterwards.
//!
//! This module does not know containers: callers say which containers use a volume
//! ([`Volumes::remove`], [`Volumes::prune`]).

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use kiln_cache::Store;
use kiln_fs::{LayeredFs, SourceFs};
use serde::{Deserialize, Serialize};

/// The directory of a volume that containers see.
const DATA_DIR: &str = "_data";
/// The metadata file beside [`DATA_DIR`].
const META_FILE: &str = "kiln-volume.json";

/// Why a volume operation failed: one line naming the volume.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The name is outside Docker's volume name pattern.
    #[error(
        "create {name}: \"{name}\" includes invalid characters for a local volume name, only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed. If you intended to pass a host directory, use absolute path"
    )]
    InvalidName {
        /// The name as given.
        name: String,
    },
    /// No volume has this name.
    #[error("get {name}: no such volume")]
    NotFound {
        /// The name as given.
        name: String,
    },
    /// Containers use the volume (Docker's message).
    #[error("remove {name}: volume is in use - [{}]", .containers.join(" "))]
    InUse {
        /// The volume.
        name: String,
        /// Ids of the containers that use it.
        containers: Vec<String>,
    },
    /// The metadata file is unreadable.
    #[error("volume {name}: corrupt metadata {}: {reason}", .path.display())]
    Corrupt {
        /// The volume.
        name: String,
        /// The metadata file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Filling the volume from the image failed.
    #[error("volume {name}: copying {dir} from the image")]
    CopyUp {
        /// The volume.
        name: String,
        /// The image directory.
        dir: String,
        /// Why.
        #[source]
        source: kiln_sandbox::SandboxError,
    },
    /// The store refused (locks).
    #[error(transparent)]
    Store(#[from] kiln_cache::CacheError),
    /// A filesystem operation failed.
    #[error("{what} {}: {source}", .path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// Result of this module.
pub type Result<T, E = VolumeError> = std::result::Result<T, E>;

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> VolumeError + use<> {
    let path = path.to_path_buf();
    move |source| VolumeError::Io { what, path, source }
}

/// What the metadata file holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    /// RFC 3339.
    created: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    anonymous: bool,
    #[serde(default)]
    populated: bool,
}

/// A volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// Its name (64 hex digits for an anonymous volume).
    pub name: String,
    /// Where its data is on the host (`.../volumes/NAME/_data`).
    pub mountpoint: PathBuf,
    /// When it was created.
    pub created: DateTime<Utc>,
    /// `--label`s.
    pub labels: BTreeMap<String, String>,
    /// Made for `-v /path` or an image's `VOLUME`, not named by the user.
    pub anonymous: bool,
    /// Whether it has been mounted once (copy-up done or not needed).
    pub populated: bool,
}

impl Volume {
    /// `docker volume inspect`'s object for this volume.
    pub fn inspect_json(&self) -> serde_json::Value {
        serde_json::json!({
            "CreatedAt": self.created.to_rfc3339_opts(SecondsFormat::Secs, true),
            "Driver": "local",
            "Labels": self.labels,
            "Mountpoint": self.mountpoint,
            "Name": self.name,
            "Options": null,
            "Scope": "local",
        })
    }
}

/// Whether `name` matches Docker's volume name pattern `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    first.is_ascii_alphanumeric()
        && name.len() >= 2
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// A fresh anonymous volume name: 64 random hex digits, as Docker's.
fn random_name() -> Result<String> {
    let mut bytes = [0u8; 32];
    let path = Path::new("/dev/urandom");
    fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(io_err("read", path))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The volumes of a store.
#[derive(Debug, Clone)]
pub struct Volumes {
    store: Store,
    dir: PathBuf,
}

impl Volumes {
    /// The volumes of `store`.
    pub fn open(store: &Store) -> Volumes {
        Volumes {
            store: store.clone(),
            dir: store.volumes_dir(),
        }
    }

    fn check_name(name: &str) -> Result<()> {
        if valid_name(name) {
            Ok(())
        } else {
            Err(VolumeError::InvalidName {
                name: name.to_string(),
            })
        }
    }

    /// The lock serialising changes to one volume (create, populate, remove).
    fn lock(&self, name: &str) -> Result<kiln_cache::StoreLock> {
        Ok(self.store.lock_named(&format!("volume-{name}"))?)
    }

    /// Creates a volume: named (an existing volume of that name is returned as it is, as
    /// `docker volume create` does) or, with `None`, anonymous.
    pub fn create(&self, name: Option<&str>) -> Result<Volume> {
        self.create_with(name, BTreeMap::new())
    }

    /// [`Volumes::create`] with labels.
    pub fn create_with(
        &self,
        name: Option<&str>,
        labels: BTreeMap<String, String>,
    ) -> Result<Volume> {
        let (name, anonymous) = match name {
            Some(n) => {
                Self::check_name(n)?;
                (n.to_string(), false)
            }
            None => (random_name()?, true),
        };
        let _lock = self.lock(&name)?;
        let dest = self.dir.join(&name);
        if dest.exists() {
            return self.get(&name);
        }
        let tmp = self.temp_dir("volume")?;
        let data = tmp.path().join(DATA_DIR);
        fs::create_dir(&data).map_err(io_err("create", &data))?;
        // Docker's local driver: _data is 0755 root-owned (the volume area itself is
        // private, so this exposes nothing).
        fs::set_permissions(&data, fs::Permissions::from_mode(0o755))
            .map_err(io_err("chmod", &data))?;
        let meta = Meta {
            created: Utc::now().to_rfc3339_opts(SecondsFormat::Nanos, true),
            labels,
            anonymous,
            populated: false,
        };
        write_meta_file(&tmp.path().join(META_FILE), &meta)?;
        fs::create_dir_all(&self.dir).map_err(io_err("create", &self.dir))?;
        let src = tmp.keep();
        if let Err(e) = fs::rename(&src, &dest) {
            let _ = fs::remove_dir_all(&src);
            return Err(VolumeError::Io {
                what: "create volume",
                path: dest,
                source: e,
            });
        }
        sync_dir(&self.dir)?;
        self.get(&name)
    }

    /// The volume called `name`.
    pub fn get(&self, name: &str) -> Result<Volume> {
        if !valid_name(name) {
            return Err(VolumeError::NotFound {
                name: name.to_string(),
            });
        }
        let dir = self.dir.join(name);
        let path = dir.join(META_FILE);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(VolumeError::NotFound {
                    name: name.to_string(),
                });
            }
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        let meta: Meta = serde_json::from_slice(&bytes).map_err(|e| VolumeError::Corrupt {
            name: name.to_string(),
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let created = DateTime::parse_from_rfc3339(&meta.created)
            .map_err(|e| VolumeError::Corrupt {
                name: name.to_string(),
                path: path.clone(),
                reason: format!("created {:?}: {e}", meta.created),
            })?
            .with_timezone(&Utc);
        Ok(Volume {
            name: name.to_string(),
            mountpoint: dir.join(DATA_DIR),
            created,
            labels: meta.labels,
            anonymous: meta.anonymous,
            populated: meta.populated,
        })
    }

    /// Every volume, by name.
    pub fn list(&self) -> Result<Vec<Volume>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("read directory", &self.dir)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err("read directory", &self.dir))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            match self.get(&name) {
                Ok(v) => out.push(v),
                // Not a volume (or removed meanwhile).
                Err(VolumeError::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Where the data of volume `name` is (checking that it exists).
    pub fn data_dir(&self, name: &str) -> Result<PathBuf> {
        Ok(self.get(name)?.mountpoint)
    }

    /// Docker's copy-up: the first time volume `name` is mounted, if it is empty and the
    /// image (`image`, the container's lower layers) has content in directory `dir`
    /// (relative to the image root, e.g. `var/lib/app`), that content is copied into the
    /// volume, keeping modes, owners, xattrs and symlinks, and the volume's root takes the
    /// directory's owner and mode. Later mounts never copy again (even if the volume was
    /// emptied since). Callers skip this for `volume-nocopy`. Returns whether anything
    /// was copied.
    pub fn populate_once(&self, name: &str, image: &LayeredFs, dir: &str) -> Result<bool> {
        let dir = dir.trim_matches('/');
        let _lock = self.lock(name)?;
        let vol = self.get(name)?;
        if vol.populated {
            return Ok(false);
        }
        let data = vol.mountpoint.clone();
        let empty = fs::read_dir(&data)
            .map_err(io_err("read directory", &data))?
            .next()
            .is_none();
        let source = image.lstat(dir).filter(|e| e.meta.is_dir());
        let copied = match source {
            Some(src) if empty && !image.list(dir).is_empty() => {
                // Copied beside the volume, then renamed over the empty _data: a kill
                // leaves either the empty volume or the full one.
                let tmp = self.temp_dir("copyup")?;
                let tree = tmp.path().join(DATA_DIR);
                fs::create_dir(&tree).map_err(io_err("create", &tree))?;
                kiln_sandbox::copy::materialize_subtree(image, dir, &tree).map_err(|source| {
                    VolumeError::CopyUp {
                        name: name.to_string(),
                        dir: format!("/{dir}"),
                        source,
                    }
                })?;
                copy_owner_mode(&src.meta, &tree)?;
                fs::rename(&tree, &data).map_err(io_err("fill volume", &data))?;
                true
            }
            Some(src) if empty => {
                // Nothing to copy: the volume still takes the mount point's owner and
                // mode, as Docker's does.
                copy_owner_mode(&src.meta, &data)?;
                false
            }
            _ => false,
        };
        self.update_meta(name, |m| m.populated = true)?;
        Ok(copied)
    }

    /// Removes volume `name`, refused while containers (`in_use_by`, their ids) use it.
    pub fn remove(&self, name: &str, in_use_by: &[String]) -> Result<()> {
        if !in_use_by.is_empty() {
            // Checked first so that the message is Docker's even for a volume that is
            // being removed by someone else.
            self.get(name)?;
            return Err(VolumeError::InUse {
                name: name.to_string(),
                containers: in_use_by.to_vec(),
            });
        }
        let _lock = self.lock(name)?;
        self.get(name)?;
        let dir = self.dir.join(name);
        // Renamed into tmp/ first: gone from the volume list at once, and a kill during
        // the deletion leaves a dead writer's temp entry, which the next kiln removes.
        let trash = self
            .store
            .tmp_dir()
            .join(format!("{}.rmvolume-{name}", Store::writer()));
        fs::rename(&dir, &trash).map_err(io_err("remove volume", &dir))?;
        sync_dir(&self.dir)?;
        kiln_cache::remove_tree(&trash).map_err(io_err("remove", &trash))?;
        Ok(())
    }

    /// Removes the unused volumes (those not in `in_use`): anonymous ones only, or all
    /// with `all` (Docker 23+'s `volume prune [-a]`). Returns the names removed and the
    /// bytes reclaimed.
    pub fn prune(&self, all: bool, in_use: &HashSet<String>) -> Result<(Vec<String>, u64)> {
        let mut removed = Vec::new();
        let mut bytes = 0;
        for v in self.list()? {
            if in_use.contains(&v.name) || !(all || v.anonymous) {
                continue;
            }
            let size = self.size(&v.name).unwrap_or(0);
            match self.remove(&v.name, &[]) {
                Ok(()) => {
                    removed.push(v.name);
                    bytes += size;
                }
                Err(VolumeError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok((removed, bytes))
    }

    /// Bytes volume `name` holds on disk (as `du -sb` counts its directory).
    pub fn size(&self, name: &str) -> Result<u64> {
        self.get(name)?;
        let dir = self.dir.join(name);
        Ok(tree_bytes(&dir, &mut HashSet::new()))
    }

    fn update_meta(&self, name: &str, f: impl FnOnce(&mut Meta)) -> Result<()> {
        let path = self.dir.join(name).join(META_FILE);
        let bytes = fs::read(&path).map_err(io_err("read", &path))?;
        let mut meta: Meta = serde_json::from_slice(&bytes).map_err(|e| VolumeError::Corrupt {
            name: name.to_string(),
            path: path.clone(),
            reason: e.to_string(),
        })?;
        f(&mut meta);
        let tmp = self
            .store
            .tmp_dir()
            .join(format!("{}.volmeta-{name}", Store::writer()));
        write_meta_file(&tmp, &meta)?;
        fs::rename(&tmp, &path).map_err(io_err("replace", &path))?;
        sync_dir(&self.dir.join(name))
    }

    fn temp_dir(&self, prefix: &str) -> Result<tempfile::TempDir> {
        let tmp = self.store.tmp_dir();
        tempfile::Builder::new()
            .prefix(&format!("{}.{prefix}-", Store::writer()))
            .tempdir_in(&tmp)
            .map_err(io_err("create a temporary directory in", &tmp))
    }
}

/// Bytes of a tree as `du -sb` counts them: the apparent size of every entry (directories
/// and symlinks included), each hard-linked inode once (`seen` carries inodes across
/// calls, so trees that share inodes are counted once together). Unreadable entries are
/// skipped.
pub fn tree_bytes(root: &Path, seen: &mut HashSet<(u64, u64)>) -> u64 {
    let mut total = 0;
    for entry in walkdir::WalkDir::new(root).follow_links(false) {
        let Ok(entry) = entry else { continue };
        let Ok(meta) = entry.metadata() else { continue };
        if !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        total += meta.len();
    }
    total
}

fn copy_owner_mode(meta: &fs::Metadata, dest: &Path) -> Result<()> {
    rustix::fs::chown(
        dest,
        Some(rustix::fs::Uid::from_raw(meta.uid())),
        Some(rustix::fs::Gid::from_raw(meta.gid())),
    )
    .map_err(|e| io_err("chown", dest)(e.into()))?;
    fs::set_permissions(dest, fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(io_err("chmod", dest))
}

fn write_meta_file(path: &Path, meta: &Meta) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(meta).expect("volume metadata serializes");
    let mut f = fs::File::create(path).map_err(io_err("create", path))?;
    f.write_all(&bytes).map_err(io_err("write", path))?;
    f.sync_all().map_err(io_err("fsync", path))
}

fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    #[test]
    fn names_follow_dockers_pattern() {
        for ok in ["ab", "data", "my_vol.1-x", "0a"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "a", "_ab", ".ab", "a/b", "a b", "ü1", "/data"] {
            assert!(!valid_name(bad), "{bad}");
        }
        let (_d, store) = store();
        let err = Volumes::open(&store).create(Some("/data")).unwrap_err();
        assert!(err.to_string().starts_with(
            "create /data: \"/data\" includes invalid characters for a local volume name"
        ));
        assert!(Volumes::open(&store).list().unwrap().is_empty());
    }

    #[test]
    fn create_get_list_remove() {
        let (_d, store) = store();
        let vols = Volumes::open(&store);
        let v = vols.create(Some("data")).unwrap();
        assert_eq!(v.mountpoint, store.volumes_dir().join("data/_data"));
        assert!(v.mountpoint.is_dir());
        assert!(!v.anonymous && !v.populated);
        fs::write(v.mountpoint.join("f"), b"kept").unwrap();
        // Creating it again is not an error and keeps its data, as in Docker.
        let again = vols.create(Some("data")).unwrap();
        assert_eq!(again, v);
        assert_eq!(fs::read(v.mountpoint.join("f")).unwrap(), b"kept");

        let anon = vols.create(None).unwrap();
        assert_eq!(anon.name.len(), 64);
        assert!(anon.name.chars().all(|c| c.is_ascii_hexdigit()));
        assert!(anon.anonymous);
        let names: Vec<_> = vols.list().unwrap().into_iter().map(|v| v.name).collect();
        let mut want = vec!["data".to_string(), anon.name.clone()];
        want.sort();
        assert_eq!(names, want);

        let j = v.inspect_json();
        assert_eq!(j["Name"], "data");
        assert_eq!(j["Driver"], "local");
        assert_eq!(j["Scope"], "local");
        assert!(j["CreatedAt"].as_str().unwrap().ends_with('Z'));

        let err = vols.remove("data", &["abc123".into(), "def".into()]);
        assert_eq!(
            err.unwrap_err().to_string(),
            "remove data: volume is in use - [abc123 def]"
        );
        assert!(v.mountpoint.join("f").exists());
        vols.remove("data", &[]).unwrap();
        assert!(!store.volumes_dir().join("data").exists());
        assert_eq!(
            vols.remove("data", &[]).unwrap_err().to_string(),
            "get data: no such volume"
        );
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn prune_takes_anonymous_unused_volumes_unless_all() {
        let (_d, store) = store();
        let vols = Volumes::open(&store);
        vols.create(Some("named")).unwrap();
        let a = vols.create(None).unwrap();
        let b = vols.create(None).unwrap();
        fs::write(a.mountpoint.join("f"), vec![0u8; 1000]).unwrap();
        let in_use: HashSet<String> = [b.name.clone()].into();
        let (removed, bytes) = vols.prune(false, &in_use).unwrap();
        assert_eq!(removed, vec![a.name.clone()]);
        assert!(bytes >= 1000, "{bytes}");
        let (removed, _) = vols.prune(true, &in_use).unwrap();
        assert_eq!(removed, vec!["named".to_string()]);
        let left: Vec<_> = vols.list().unwrap().into_iter().map(|v| v.name).collect();
        assert_eq!(left, vec![b.name]);
    }

    #[test]
    fn copy_up_fills_an_empty_volume_once() {
        let (_d, store) = store();
        let vols = Volumes::open(&store);
        let layer = tempfile::tempdir().unwrap();
        let app = layer.path().join("srv/app");
        fs::create_dir_all(app.join("sub")).unwrap();
        fs::write(app.join("conf"), b"image content").unwrap();
        fs::set_permissions(app.join("conf"), fs::Permissions::from_mode(0o640)).unwrap();
        std::os::unix::fs::symlink("conf", app.join("link")).unwrap();
        fs::write(app.join("sub/x"), b"x").unwrap();
        fs::set_permissions(&app, fs::Permissions::from_mode(0o750)).unwrap();
        let image = LayeredFs::new(vec![layer.path().to_path_buf()], "image");

        let v = vols.create(Some("appdata")).unwrap();
        assert!(vols.populate_once("appdata", &image, "/srv/app").unwrap());
        let data = &v.mountpoint;
        assert_eq!(fs::read(data.join("conf")).unwrap(), b"image content");
        let mode = |p: &Path| fs::symlink_metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&data.join("conf")), 0o640);
        assert_eq!(mode(data), 0o750, "the volume takes the directory's mode");
        assert_eq!(fs::read_link(data.join("link")).unwrap(), Path::new("conf"));
        assert_eq!(fs::read(data.join("sub/x")).unwrap(), b"x");
        assert!(vols.get("appdata").unwrap().populated);

        // Never again: not even into the emptied volume.
        fs::remove_dir_all(data.join("sub")).unwrap();
        for f in ["conf", "link"] {
            fs::remove_file(data.join(f)).unwrap();
        }
        assert!(!vols.populate_once("appdata", &image, "srv/app").unwrap());
        assert_eq!(fs::read_dir(data).unwrap().count(), 0);

        // A volume that already holds data is not filled.
        let w = vols.create(Some("full")).unwrap();
        fs::write(w.mountpoint.join("mine"), b"m").unwrap();
        assert!(!vols.populate_once("full", &image, "srv/app").unwrap());
        assert!(!w.mountpoint.join("conf").exists());
        // Nor from a directory the image does not have.
        vols.create(Some("none")).unwrap();
        assert!(!vols.populate_once("none", &image, "nowhere").unwrap());
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    }
}
