//! Which repositories of which registries a blob is known to exist in, so a
//! push can mount it from there instead of uploading it again.
//!
//! Kept in the store's cache index under a key derived from the blob digest.
//! Updates are read-modify-write without a lock: a lost update only costs a
//! missed mount (the blob is then uploaded), never correctness.

use std::collections::{BTreeMap, BTreeSet};

use kiln_cache::{Digest, Store, sha256_of};

/// At most this many repositories are remembered per registry and blob.
const MAX_REPOS: usize = 16;

type Sources = BTreeMap<String, BTreeSet<String>>;

/// The key of `blob`'s record in the store's cache index (for a collector to keep it
/// while an image needs the blob fetched from there).
pub fn key(blob: &Digest) -> String {
    sha256_of(format!("kiln-registry/blob-sources/v1\n{blob}").as_bytes()).to_string()
}

/// Repositories of `registry` known to hold `blob`.
pub(crate) fn get(store: &Store, blob: &Digest, registry: &str) -> Vec<String> {
    match store.cache_get_as::<Sources>(&key(blob)) {
        Ok(Some(s)) => s
            .get(registry)
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// Every `(registry, repository)` known to hold `blob`, to fetch it from.
pub(crate) fn all(store: &Store, blob: &Digest) -> Vec<(String, String)> {
    match store.cache_get_as::<Sources>(&key(blob)) {
        Ok(Some(s)) => s
            .into_iter()
            .flat_map(|(reg, repos)| repos.into_iter().map(move |r| (reg.clone(), r)))
            .collect(),
        _ => Vec::new(),
    }
}

/// Whether some registry is known to hold `blob`, so that
/// [`crate::Client::fetch_missing`] can fetch it when the store lacks it.
pub fn fetchable(store: &Store, blob: &Digest) -> bool {
    !all(store, blob).is_empty()
}

/// Every `(registry, repository)` known to hold `blob` (what a push mounts from and
/// [`crate::Client::fetch_missing`] fetches from).
pub fn known(store: &Store, blob: &Digest) -> Vec<(String, String)> {
    all(store, blob)
}

/// Remember that `registry/repository` holds `blob` (e.g. a registry cache's layer on
/// a hit), so that a later fetch or push finds it there. Failures are ignored: this is
/// only a hint.
pub fn remember(store: &Store, blob: &Digest, registry: &str, repository: &str) {
    add(store, blob, registry, repository)
}

/// Remember that `registry/repository` holds `blob`. Failures are ignored:
/// this is only a hint.
pub(crate) fn add(store: &Store, blob: &Digest, registry: &str, repository: &str) {
    let k = key(blob);
    let mut s: Sources = store.cache_get_as(&k).ok().flatten().unwrap_or_default();
    let repos = s.entry(registry.to_owned()).or_default();
    if repos.contains(repository) {
        return;
    }
    if repos.len() >= MAX_REPOS {
        let first = repos.iter().next().cloned();
        if let Some(first) = first {
            repos.remove(&first);
        }
    }
    repos.insert(repository.to_owned());
    let _ = store.cache_put_as(&k, &s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_per_registry() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let b = sha256_of(b"blob");
        assert!(get(&store, &b, "r:1").is_empty());
        add(&store, &b, "r:1", "a/x");
        add(&store, &b, "r:1", "b/y");
        add(&store, &b, "r:1", "a/x");
        add(&store, &b, "q", "z");
        assert_eq!(get(&store, &b, "r:1"), ["a/x", "b/y"]);
        assert_eq!(get(&store, &b, "q"), ["z"]);
        assert!(get(&store, &sha256_of(b"other"), "q").is_empty());
        assert_eq!(
            all(&store, &b),
            [
                ("q".to_owned(), "z".to_owned()),
                ("r:1".to_owned(), "a/x".to_owned()),
                ("r:1".to_owned(), "b/y".to_owned())
            ]
        );
        assert!(fetchable(&store, &b));
        assert!(!fetchable(&store, &sha256_of(b"other")));
    }
}
