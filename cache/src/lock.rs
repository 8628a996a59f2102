//! flock-based locks so several kiln processes can share one store.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, flock};

use crate::digest::sha256_of;
use crate::error::{CacheError, IoContext, Result};
use crate::store::{IMAGES_DIR, LOCKS_DIR, Store};

/// Whether a lock is shared or exclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockKind {
    /// Many holders at once (`LOCK_SH`).
    Shared,
    /// One holder, no shared holders (`LOCK_EX`).
    Exclusive,
}

/// A held flock; released when dropped.
///
/// Locks belong to the open file, not the thread or process: two guards
/// taken in the same process exclude each other just as they would across
/// processes, so do not take an exclusive lock while holding a shared one
/// on the same file (it would wait forever).
#[derive(Debug)]
#[must_use = "the lock is released when the guard is dropped"]
pub struct StoreLock {
    _file: File,
    path: PathBuf,
    kind: LockKind,
}

impl StoreLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Shared or exclusive.
    pub fn kind(&self) -> LockKind {
        self.kind
    }
}

pub(crate) fn acquire(path: PathBuf, kind: LockKind, block: bool) -> Result<Option<StoreLock>> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .ctx("open lock file", &path)?;
    let op = match (kind, block) {
        (LockKind::Shared, true) => FlockOperation::LockShared,
        (LockKind::Exclusive, true) => FlockOperation::LockExclusive,
        (LockKind::Shared, false) => FlockOperation::NonBlockingLockShared,
        (LockKind::Exclusive, false) => FlockOperation::NonBlockingLockExclusive,
    };
    loop {
        match flock(&file, op) {
            Ok(()) => {
                return Ok(Some(StoreLock {
                    _file: file,
                    path,
                    kind,
                }));
            }
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::WOULDBLOCK) if !block => return Ok(None),
            Err(e) => return Err(CacheError::io("lock", &path, io::Error::from(e))),
        }
    }
}

impl Store {
    fn store_lock_path(&self) -> PathBuf {
        self.root().join("lock")
    }

    /// Take the store-wide lock in shared mode, waiting as long as needed.
    /// Builds, pulls and pushes hold this for their whole run; see [`Store`]
    /// for what needs which lock.
    pub fn lock_shared(&self) -> Result<StoreLock> {
        acquire(self.store_lock_path(), LockKind::Shared, true).map(|l| l.expect("blocking"))
    }

    /// Take the store-wide lock exclusively, waiting until every shared
    /// holder is gone. Needed to delete shared data (GC, prune,
    /// [`Store::delete_blob`]).
    pub fn lock_exclusive(&self) -> Result<StoreLock> {
        acquire(self.store_lock_path(), LockKind::Exclusive, true).map(|l| l.expect("blocking"))
    }

    /// Like [`Store::lock_exclusive`] but returns `None` instead of waiting
    /// (e.g. to print "waiting for other kiln processes" before blocking).
    pub fn try_lock_exclusive(&self) -> Result<Option<StoreLock>> {
        acquire(self.store_lock_path(), LockKind::Exclusive, false)
    }

    /// Take an exclusive lock on an arbitrary name (e.g. a cache mount id
    /// for `sharing=locked`), waiting as long as needed. The lock file is
    /// `locks/<sanitised name>-<hash of name>.lock`, so distinct names never
    /// share a lock.
    pub fn lock_named(&self, name: &str) -> Result<StoreLock> {
        let path = self.dir(LOCKS_DIR).join(named_lock_file(name));
        acquire(path, LockKind::Exclusive, true).map(|l| l.expect("blocking"))
    }

    /// The lock serialising read-modify-write of `images/tags.json`.
    pub(crate) fn lock_tags(&self) -> Result<StoreLock> {
        let path = self.dir(IMAGES_DIR).join("tags.lock");
        acquire(path, LockKind::Exclusive, true).map(|l| l.expect("blocking"))
    }
}

fn named_lock_file(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    out.push('-');
    out.push_str(&sha256_of(name.as_bytes()).hex()[..16]);
    out.push_str(".lock");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::thread;
    use std::time::Duration;

    /// Spawn a thread that takes a lock with `take` and reports on `tx`
    /// once it holds it, then holds it until `release` fires.
    fn contender(
        store: &Store,
        take: fn(&Store) -> Result<StoreLock>,
    ) -> (mpsc::Receiver<()>, mpsc::Sender<()>, thread::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let store = store.clone();
        let h = thread::spawn(move || {
            let _g = take(&store).unwrap();
            tx.send(()).unwrap();
            let _ = release_rx.recv();
        });
        (rx, release_tx, h)
    }

    const SHORT: Duration = Duration::from_millis(200);
    const LONG: Duration = Duration::from_secs(10);

    #[test]
    fn shared_locks_coexist() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (a, a_rel, ha) = contender(&store, Store::lock_shared);
        a.recv_timeout(LONG).unwrap();
        let (b, b_rel, hb) = contender(&store, Store::lock_shared);
        b.recv_timeout(LONG)
            .expect("second shared lock while first is held");
        assert!(store.try_lock_exclusive().unwrap().is_none());
        a_rel.send(()).unwrap();
        b_rel.send(()).unwrap();
        ha.join().unwrap();
        hb.join().unwrap();
        let g = store.try_lock_exclusive().unwrap().expect("free again");
        assert_eq!(g.kind(), LockKind::Exclusive);
    }

    #[test]
    fn exclusive_excludes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let ex = store.lock_exclusive().unwrap();
        let (shared, s_rel, hs) = contender(&store, Store::lock_shared);
        let (excl, e_rel, he) = contender(&store, Store::lock_exclusive);
        assert!(shared.recv_timeout(SHORT).is_err(), "shared got in");
        assert!(excl.recv_timeout(SHORT).is_err(), "exclusive got in");
        drop(ex);
        // One of the two waiters gets it first; releasing lets the other in.
        let first_shared = loop {
            if shared.recv_timeout(Duration::from_millis(10)).is_ok() {
                break true;
            }
            if excl.recv_timeout(Duration::from_millis(10)).is_ok() {
                break false;
            }
        };
        if first_shared {
            assert!(excl.recv_timeout(SHORT).is_err());
            s_rel.send(()).unwrap();
            excl.recv_timeout(LONG).unwrap();
            e_rel.send(()).unwrap();
        } else {
            assert!(shared.recv_timeout(SHORT).is_err());
            e_rel.send(()).unwrap();
            shared.recv_timeout(LONG).unwrap();
            s_rel.send(()).unwrap();
        }
        hs.join().unwrap();
        he.join().unwrap();
    }

    #[test]
    fn named_locks_are_independent_and_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = store.lock_named("cache-mount/a b").unwrap();
        let _b = store.lock_named("cache-mount/a_b").unwrap(); // different name, different file
        assert_ne!(a.path(), _b.path());
        assert!(a.path().starts_with(store.root().join(LOCKS_DIR)));
        let name = a.path().file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with("cache-mount_a_b-") && name.ends_with(".lock"),
            "{name}"
        );
        let (got, rel, h) = contender(&store, |s| s.lock_named("cache-mount/a b"));
        assert!(got.recv_timeout(SHORT).is_err());
        drop(a);
        got.recv_timeout(LONG).unwrap();
        rel.send(()).unwrap();
        h.join().unwrap();
        // The store lock is unaffected by named locks.
        let _s = store.try_lock_exclusive().unwrap().unwrap();
        assert!(named_lock_file(&"x".repeat(500)).len() < 100);
    }
}
