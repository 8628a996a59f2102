//! Image tags: `images/tags.json`.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{CacheError, Result};
use crate::store::{IMAGES_DIR, Store};

const TAGS_VERSION: u32 = 1;

/// What a tag points at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagRecord {
    /// Digest of the image manifest blob.
    pub manifest: Digest,
    /// Digest of the image config blob.
    pub config: Digest,
    /// When the tag was set, RFC 3339 (e.g. `2025-01-31T12:00:00Z`).
    pub created: String,
}

impl TagRecord {
    /// A record created now.
    pub fn new(manifest: Digest, config: Digest) -> Self {
        TagRecord {
            manifest,
            config,
            created: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct TagsFile {
    version: u32,
    tags: BTreeMap<String, TagRecord>,
}

impl Store {
    fn read_tags(&self) -> Result<BTreeMap<String, TagRecord>> {
        let path = self.dir(IMAGES_DIR).join("tags.json");
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(CacheError::io("read", &path, e)),
        };
        let file: TagsFile =
            serde_json::from_slice(&bytes).map_err(|e| CacheError::CorruptFile {
                path: path.clone(),
                reason: format!("not a valid tags file ({e}); move it aside to start afresh"),
            })?;
        if file.version > TAGS_VERSION {
            return Err(CacheError::CorruptFile {
                path,
                reason: format!(
                    "written by a newer kiln (version {}, this kiln understands {TAGS_VERSION})",
                    file.version
                ),
            });
        }
        Ok(file.tags)
    }

    /// Read-modify-write `tags.json` under the tags lock.
    fn update_tags<R>(&self, f: impl FnOnce(&mut BTreeMap<String, TagRecord>) -> R) -> Result<R> {
        let _guard = self.lock_tags()?;
        let mut tags = self.read_tags()?;
        let out = f(&mut tags);
        let file = TagsFile {
            version: TAGS_VERSION,
            tags,
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(|source| CacheError::Serialize {
            what: "image tags".into(),
            source,
        })?;
        self.write_atomic(&self.dir(IMAGES_DIR).join("tags.json"), &bytes)?;
        Ok(out)
    }

    /// Point `name` at `record`, returning what it pointed at before. The
    /// name is stored as given (`app:latest`, `docker.io/library/app:1`).
    /// Serialised against concurrent tag updates from any process.
    pub fn tag_set(&self, name: &str, record: &TagRecord) -> Result<Option<TagRecord>> {
        check_tag_name(name)?;
        self.update_tags(|t| t.insert(name.to_owned(), record.clone()))
    }

    /// What `name` points at, if anything.
    pub fn tag_get(&self, name: &str) -> Result<Option<TagRecord>> {
        Ok(self.read_tags()?.remove(name))
    }

    /// Remove a tag, returning what it pointed at.
    pub fn tag_remove(&self, name: &str) -> Result<Option<TagRecord>> {
        if self.tag_get(name)?.is_none() {
            return Ok(None); // don't rewrite the file for nothing
        }
        self.update_tags(|t| t.remove(name))
    }

    /// All tags, sorted by name.
    pub fn tags(&self) -> Result<Vec<(String, TagRecord)>> {
        Ok(self.read_tags()?.into_iter().collect())
    }
}

fn check_tag_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "must not be empty"
    } else if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        "must not contain whitespace or control characters"
    } else {
        return Ok(());
    };
    Err(CacheError::InvalidArgument {
        what: "tag name",
        value: name.to_owned(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::sha256_of;

    fn rec(n: u8) -> TagRecord {
        TagRecord::new(sha256_of(&[n]), sha256_of(&[n, n]))
    }

    #[test]
    fn set_get_list_remove() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.tags().unwrap().is_empty());
        // Each record made once: `created` is the time of making, so two calls a second
        // apart differ.
        let (r1, r2, r3) = (rec(1), rec(2), rec(3));
        assert_eq!(
            store.tag_set("docker.io/library/app:latest", &r1).unwrap(),
            None
        );
        assert_eq!(store.tag_set("app:latest", &r2).unwrap(), None);
        assert_eq!(store.tag_set("app:latest", &r3).unwrap(), Some(r2));
        assert_eq!(store.tag_get("app:latest").unwrap(), Some(r3.clone()));
        let names: Vec<_> = store.tags().unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["app:latest", "docker.io/library/app:latest"]);
        assert_eq!(store.tag_remove("app:latest").unwrap(), Some(r3));
        assert_eq!(store.tag_remove("app:latest").unwrap(), None);
        assert_eq!(store.tag_get("app:latest").unwrap(), None);
        assert!(store.tag_set("", &rec(1)).is_err());
        assert!(store.tag_set("a b", &rec(1)).is_err());
    }

    #[test]
    fn record_format() {
        let r = rec(1);
        assert!(
            r.created.ends_with('Z') && r.created.contains('T'),
            "{}",
            r.created
        );
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["manifest"], r.manifest.as_str());
        assert_eq!(v["config"], r.config.as_str());
    }

    #[test]
    fn concurrent_updates_are_not_lost() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        std::thread::scope(|s| {
            for t in 0..8u8 {
                let store = store.clone();
                s.spawn(move || {
                    for i in 0..10u8 {
                        store.tag_set(&format!("app:{t}-{i}"), &rec(i)).unwrap();
                    }
                });
            }
        });
        assert_eq!(store.tags().unwrap().len(), 80);
    }

    #[test]
    fn corrupt_tags_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        fs::write(store.root().join("images/tags.json"), "{\"version\":1,").unwrap();
        let err = store.tags().unwrap_err();
        assert!(err.to_string().contains("tags.json"), "{err}");
        assert!(store.tag_set("x:1", &rec(1)).is_err());
    }
}
