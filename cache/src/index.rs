//! The cache index: small JSON records keyed by a sha256 cache key.

use std::fs;
use std::io;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{CacheError, Result};
use crate::store::{CACHE_DIR, Store, fsync_parent};

/// On-disk envelope. Carrying the key lets a misplaced or truncated record
/// be told apart from a good one.
#[derive(Serialize)]
struct RecordOut<'a, T: ?Sized> {
    key: &'a str,
    value: &'a T,
}

#[derive(Deserialize)]
struct RecordIn<T> {
    key: String,
    value: T,
}

impl Store {
    fn cache_path(&self, key: &str) -> Result<(Digest, PathBuf)> {
        let key = Digest::parse(key)?;
        let path = self.dir(CACHE_DIR).join(format!("{}.json", key.hex()));
        Ok((key, path))
    }

    /// Look up a cache record. `key` must be a `sha256:<hex>` string.
    ///
    /// A record that is corrupt or truncated reads as a miss and is removed,
    /// so a damaged cache never fails a build. I/O errors other than "not
    /// found" (e.g. permissions) are still reported.
    pub fn cache_get(&self, key: &str) -> Result<Option<serde_json::Value>> {
        self.cache_get_as(key)
    }

    /// Typed [`Store::cache_get`]: a record that does not deserialize as `T`
    /// (e.g. written by an older kiln) is treated as corrupt: a miss.
    pub fn cache_get_as<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let (key, path) = self.cache_path(key)?;
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CacheError::io("read cache record", &path, e)),
        };
        match serde_json::from_slice::<RecordIn<T>>(&bytes) {
            Ok(rec) if rec.key == key.as_str() => Ok(Some(rec.value)),
            _ => {
                // Best effort: a concurrent writer may already have replaced it.
                let _ = fs::remove_file(&path);
                Ok(None)
            }
        }
    }

    /// Store a cache record atomically (last writer wins). No lock needed.
    pub fn cache_put(&self, key: &str, value: &serde_json::Value) -> Result<()> {
        self.cache_put_as(key, value)
    }

    /// Typed [`Store::cache_put`].
    pub fn cache_put_as<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<()> {
        let (key, path) = self.cache_path(key)?;
        let rec = RecordOut {
            key: key.as_str(),
            value,
        };
        let bytes = serde_json::to_vec(&rec).map_err(|source| CacheError::Serialize {
            what: format!("cache record {key}"),
            source,
        })?;
        self.write_atomic(&path, &bytes)
    }

    /// The keys of every cache record (`sha256:<hex>`), in no particular order: what
    /// `system df`, `rmi` and garbage collection walk to learn which blobs and snapshots
    /// the build cache still references.
    pub fn cache_keys(&self) -> Result<Vec<String>> {
        let dir = self.dir(CACHE_DIR);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(CacheError::io("read directory", &dir, e)),
        };
        let mut keys = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| CacheError::io("read directory", &dir, e))?;
            let name = entry.file_name();
            let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if let Ok(d) = Digest::parse(&format!("sha256:{hex}")) {
                keys.push(d.to_string());
            }
        }
        Ok(keys)
    }

    /// Remove a cache record; returns whether it existed.
    pub fn cache_remove(&self, key: &str) -> Result<bool> {
        let (_, path) = self.cache_path(key)?;
        match fs::remove_file(&path) {
            Ok(()) => {
                fsync_parent(&path)?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(CacheError::io("remove cache record", &path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::sha256_of;
    use serde_json::json;

    #[test]
    fn cache_keys_lists_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.cache_keys().unwrap().is_empty());
        let k1 = sha256_of(b"one").to_string();
        let k2 = sha256_of(b"two").to_string();
        store.cache_put(&k1, &json!({"a": 1})).unwrap();
        store.cache_put(&k2, &json!({"b": 2})).unwrap();
        fs::write(store.dir(CACHE_DIR).join("junk.txt"), b"x").unwrap();
        let mut keys = store.cache_keys().unwrap();
        keys.sort();
        let mut want = vec![k1, k2];
        want.sort();
        assert_eq!(keys, want);
    }

    #[test]
    fn put_get_remove() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = sha256_of(b"k").to_string();
        assert_eq!(store.cache_get(&key).unwrap(), None);
        let v = json!({"layer": sha256_of(b"l").to_string(), "n": 3});
        store.cache_put(&key, &v).unwrap();
        assert_eq!(store.cache_get(&key).unwrap(), Some(v.clone()));
        let path = store
            .root()
            .join(CACHE_DIR)
            .join(format!("{}.json", &key[7..]));
        assert!(path.is_file());
        store.cache_put(&key, &json!(1)).unwrap();
        assert_eq!(store.cache_get(&key).unwrap(), Some(json!(1)));
        assert!(store.cache_remove(&key).unwrap());
        assert!(!store.cache_remove(&key).unwrap());
        assert_eq!(store.cache_get(&key).unwrap(), None);
    }

    #[test]
    fn typed_helpers() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Rec {
            layer: Digest,
            size: u64,
        }
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = sha256_of(b"k").to_string();
        let rec = Rec {
            layer: sha256_of(b"x"),
            size: 9,
        };
        store.cache_put_as(&key, &rec).unwrap();
        assert_eq!(store.cache_get_as::<Rec>(&key).unwrap(), Some(rec));
        // A record of another shape is a miss, and is dropped.
        store.cache_put_as(&key, "just a string").unwrap();
        assert_eq!(store.cache_get_as::<Rec>(&key).unwrap(), None);
        assert_eq!(store.cache_get(&key).unwrap(), None);
    }

    #[test]
    fn corrupt_records_read_as_misses_and_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = sha256_of(b"k").to_string();
        let other = sha256_of(b"other").to_string();
        let path = store.cache_path(&key).unwrap().1;
        store.cache_put(&key, &json!({"a": [1, 2, 3]})).unwrap();
        let good = fs::read(&path).unwrap();
        let misplaced = serde_json::to_vec(&json!({"key": other, "value": 1})).unwrap();
        for bad in [
            &good[..good.len() / 2], // truncated
            &good[..good.len() - 1], // missing final brace
            b"",
            b"\0\0\0\0garbage",
            b"{\"value\": 1}", // no key
            &misplaced[..],    // record for another key
        ] {
            fs::write(&path, bad).unwrap();
            assert_eq!(store.cache_get(&key).unwrap(), None, "{bad:?}");
            assert!(!path.exists(), "corrupt record removed");
        }
    }

    #[test]
    fn invalid_key_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let err = store.cache_get("../../etc/passwd").unwrap_err();
        assert!(matches!(err, CacheError::InvalidDigest(_)), "{err}");
    }
}
