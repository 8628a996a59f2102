//! Leases: what a running build or container uses, so that garbage collection leaves it.
//!
//! A lease is a pair of files in `locks/leases/`: `<id>.lock`, which its holder keeps
//! flocked for as long as it lives (so a holder killed with `kill -9` releases it with
//! its last file descriptor), and `<id>.json`, the lease's content: when it was taken and
//! the references it protects (cache keys, blob digests, snapshot diff_ids), replaced
//! atomically each time the holder adds to it.
//!
//! The protocol with the collector ([`Store::lock_gc`]):
//!
//! * a holder adds references under the GC lock held *shared*, and checks that what it
//!   is about to use is still there only *after* the lease names it;
//! * the collector reads the leases and moves what it deletes out of place under the GC
//!   lock held *exclusively*.
//!
//! So a reference is either in a lease the collector reads, or the holder's check runs
//! after the collector's move and sees it missing (a cache miss, not an error). What a
//! holder *writes* is protected by its age instead: the collector keeps every blob,
//! snapshot and cache record modified since the oldest live lease was taken
//! ([`LeaseInfo::started`]), and the store marks reused content as fresh
//! ([`Store::mark_used`]).

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use rustix::fs::{FlockOperation, flock};
use serde::{Deserialize, Serialize};

use crate::error::{CacheError, IoContext, Result};
use crate::lock::{LockKind, StoreLock, acquire};
use crate::store::{LOCKS_DIR, Store};

const LEASES_DIR: &str = "leases";
static LEASE_SEQ: AtomicU64 = AtomicU64::new(0);

/// What a lease file holds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeaseInfo {
    /// Who holds it (`build`, `container <id>`, ...), for `kiln prune --verbose`.
    pub holder: String,
    /// When it was taken (nanoseconds since the epoch): as [`Store::leases`] returns it,
    /// the time of its lock file, so that what the holder wrote since is newer.
    pub started_ns: u64,
    /// The references it protects.
    pub refs: BTreeSet<String>,
}

impl LeaseInfo {
    /// When it was taken.
    pub fn started_at(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_nanos(self.started_ns)
    }
}

/// A held lease; released (and its files removed) when dropped, or when its process dies.
#[derive(Debug)]
pub struct Lease {
    store: Store,
    lock_path: PathBuf,
    json_path: PathBuf,
    _file: File,
    info: Mutex<LeaseInfo>,
}

impl Lease {
    /// Adds references to the lease. Returns once the lease file names them, so that a
    /// collector starting from now on keeps them; check that they still exist after
    /// this returns, not before.
    pub fn add<I, S>(&self, refs: I) -> Result<()>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut info = self.info.lock().unwrap_or_else(|e| e.into_inner());
        let before = info.refs.len();
        info.refs.extend(refs.into_iter().map(Into::into));
        if info.refs.len() == before {
            return Ok(());
        }
        let _gc = self.store.lock_gc(LockKind::Shared)?;
        write_info(&self.store, &self.json_path, &info)
    }

    /// Whether the lease names `reference`.
    pub fn contains(&self, reference: &str) -> bool {
        let info = self.info.lock().unwrap_or_else(|e| e.into_inner());
        info.refs.contains(reference)
    }

    /// The lock file (its name is the lease's id).
    pub fn path(&self) -> &Path {
        &self.lock_path
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // The json first: a lock file without json is a lease that protects nothing.
        let _ = fs::remove_file(&self.json_path);
        let _ = fs::remove_file(&self.lock_path);
    }
}

fn write_info(store: &Store, path: &Path, info: &LeaseInfo) -> Result<()> {
    let bytes = serde_json::to_vec(info).map_err(|source| CacheError::Serialize {
        what: format!("lease {}", path.display()),
        source,
    })?;
    // Atomic but not fsynced: a lease does not outlive its holder, so a crash that
    // loses it loses nothing (and builds add to theirs at every cache hit).
    let (mut file, tmp) = store.create_temp()?;
    io::Write::write_all(&mut file, &bytes).ctx("write", tmp.path())?;
    drop(file);
    tmp.rename_to(path)
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl Store {
    /// The GC lock, `locks/gc.lock`: shared by lease holders for the moment they add to
    /// their lease ([`Lease::add`], [`Store::mark_used`]), exclusive for the collector
    /// while it reads leases and moves what it deletes out of place. Nobody holds it for
    /// long: a collector deletes what it moved after releasing it.
    pub fn lock_gc(&self, kind: LockKind) -> Result<StoreLock> {
        let path = self.dir(LOCKS_DIR).join("gc.lock");
        acquire(path, kind, true).map(|l| l.expect("blocking"))
    }

    /// Takes a lease for `holder` (a name shown by `kiln prune --verbose`), protecting
    /// `refs` from now on.
    pub fn lease(&self, holder: &str, refs: &[String]) -> Result<Lease> {
        let dir = self.leases_dir();
        fs::create_dir_all(&dir).ctx("create directory", &dir)?;
        let seq = LEASE_SEQ.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{seq}", Store::writer());
        let lock_path = dir.join(format!("{id}.lock"));
        let json_path = dir.join(format!("{id}.json"));
        // Made and locked in tmp/ (cleaned there if we die), then renamed into place:
        // a collector never sees it unlocked, which would read as a dead holder's.
        let (file, tmp) = self.create_temp()?;
        flock(&file, FlockOperation::NonBlockingLockExclusive)
            .map_err(|e| CacheError::io("lock", tmp.path(), e.into()))?;
        tmp.rename_to(&lock_path)?;
        let info = LeaseInfo {
            holder: holder.to_owned(),
            started_ns: now_ns(),
            refs: refs.iter().cloned().collect(),
        };
        {
            let _gc = self.lock_gc(LockKind::Shared)?;
            write_info(self, &json_path, &info)?;
        }
        Ok(Lease {
            store: self.clone(),
            lock_path,
            json_path,
            _file: file,
            info: Mutex::new(info),
        })
    }

    /// The live leases. Those whose holder died are removed. Call with the GC lock held
    /// exclusively for the answer to stay true while you act on it.
    pub fn leases(&self) -> Result<Vec<LeaseInfo>> {
        self.leases_but(None)
    }

    /// The live leases other than `mine` (what other processes and builds protect).
    pub fn other_leases(&self, mine: &Lease) -> Result<Vec<LeaseInfo>> {
        self.leases_but(Some(&mine.json_path))
    }

    fn leases_but(&self, mine: Option<&Path>) -> Result<Vec<LeaseInfo>> {
        let mut out = Vec::new();
        self.scan_leases(&mut |file, json_path| {
            if mine == Some(json_path) {
                return;
            }
            // A lease being taken has its lock before its json: it protects
            // nothing yet, and what it adds is checked after.
            if let Ok(bytes) = fs::read(json_path)
                && let Ok(mut info) = serde_json::from_slice::<LeaseInfo>(&bytes)
            {
                // The lock file's time, from the same (coarse) kernel clock as
                // the times of the files the holder writes after it.
                if let Ok(t) = file.metadata().and_then(|m| m.modified())
                    && let Ok(d) = t.duration_since(SystemTime::UNIX_EPOCH)
                {
                    info.started_ns = info.started_ns.min(d.as_nanos() as u64);
                }
                out.push(info);
            }
        })?;
        Ok(out)
    }

    /// Removes the leases whose holder died (killed with -9: its flock went with it)
    /// without reading the live ones: one readdir, and an open and a flock attempt per
    /// lease. Returns how many went.
    pub fn drop_dead_leases(&self) -> Result<usize> {
        self.scan_leases(&mut |_, _| {})
    }

    /// The lease directory, for tests that plant a dead holder's lease.
    pub fn leases_dir(&self) -> PathBuf {
        self.dir(LOCKS_DIR).join(LEASES_DIR)
    }

    /// Walks the leases: removes those of dead holders (their lock file is not flocked:
    /// the holder's last file descriptor took the lock with it, whatever became of its
    /// pid) and calls `live` with the lock file and json path of the others. Returns how
    /// many were removed.
    fn scan_leases(&self, live: &mut dyn FnMut(&File, &Path)) -> Result<usize> {
        let dir = self.leases_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(CacheError::io("read directory", &dir, e)),
        };
        let mut dead = 0;
        for entry in entries {
            let entry = entry.map_err(|e| CacheError::io("read directory", &dir, e))?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".lock")) else {
                continue;
            };
            let lock_path = entry.path();
            let json_path = dir.join(format!("{id}.json"));
            let file = match OpenOptions::new().write(true).open(&lock_path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(CacheError::io("open lease", &lock_path, e)),
            };
            match flock(&file, FlockOperation::NonBlockingLockShared) {
                Ok(()) => {
                    // Dead holder: unlinked while we hold its lock.
                    let _ = fs::remove_file(&json_path);
                    let _ = fs::remove_file(&lock_path);
                    dead += 1;
                }
                Err(rustix::io::Errno::WOULDBLOCK) => live(&file, &json_path),
                Err(e) => return Err(CacheError::io("lock", &lock_path, e.into())),
            }
        }
        Ok(dead)
    }

    /// Marks `path` (a blob, snapshot or cache record about to be reused) as used now:
    /// its modification time is set to now, under the GC lock, so a collector that has
    /// not moved it yet sees it fresh and keeps it. Returns whether it still exists (if
    /// not, write it anew).
    pub fn mark_used(&self, path: &Path) -> Result<bool> {
        let _gc = self.lock_gc(LockKind::Shared)?;
        touch(path)
    }
}

/// Sets the modification time of `path` (file or directory) to now; `false` if missing.
pub(crate) fn touch(path: &Path) -> Result<bool> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(CacheError::io("open", path, e)),
    };
    match file.set_modified(SystemTime::now()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(CacheError::io("set the modification time of", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_leases_are_listed_and_dropped_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.leases().unwrap().is_empty());
        let a = store.lease("build", &["sha256:aa".into()]).unwrap();
        a.add(["sha256:bb"]).unwrap();
        assert!(a.contains("sha256:bb"));
        let b = store.lease("container x", &[]).unwrap();
        let mut got = store.leases().unwrap();
        got.sort_by(|x, y| x.holder.cmp(&y.holder));
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].holder, "build");
        assert_eq!(
            got[0].refs.iter().collect::<Vec<_>>(),
            ["sha256:aa", "sha256:bb"]
        );
        assert_eq!(got[1].holder, "container x");
        drop(a);
        assert_eq!(store.leases().unwrap().len(), 1);
        drop(b);
        assert!(store.leases().unwrap().is_empty());
        assert_eq!(fs::read_dir(store.leases_dir()).unwrap().count(), 0);
    }

    /// A holder killed with -9 leaves its files but not its flock: the lease is dead.
    #[test]
    fn a_dead_holders_lease_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let leases = store.leases_dir();
        fs::create_dir_all(&leases).unwrap();
        let lock = leases.join("1-2-0.lock");
        let json = leases.join("1-2-0.json");
        fs::write(&lock, b"").unwrap();
        fs::write(
            &json,
            br#"{"holder":"build","started_ns":1,"refs":["sha256:cc"]}"#,
        )
        .unwrap();
        assert!(lock.exists() && json.exists());
        assert!(store.leases().unwrap().is_empty());
        assert!(!lock.exists() && !json.exists());
    }

    /// `drop_dead_leases` removes a dead holder's lease and leaves a live one.
    #[test]
    fn dead_leases_are_dropped_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.drop_dead_leases().unwrap(), 0);
        let live = store.lease("build", &["sha256:aa".into()]).unwrap();
        let leases = store.leases_dir();
        let lock = leases.join("1-2-0.lock");
        let json = leases.join("1-2-0.json");
        fs::write(&lock, b"").unwrap();
        fs::write(&json, br#"{"holder":"build","started_ns":1,"refs":[]}"#).unwrap();
        assert_eq!(store.drop_dead_leases().unwrap(), 1);
        assert!(!lock.exists() && !json.exists());
        assert!(live.path().exists());
        assert_eq!(store.leases().unwrap().len(), 1);
    }

    #[test]
    fn mark_used_refreshes_mtime_and_says_if_missing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let p = dir.path().join("f");
        fs::write(&p, b"x").unwrap();
        let old = SystemTime::now() - Duration::from_secs(3600);
        File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert!(store.mark_used(&p).unwrap());
        let m = fs::metadata(&p).unwrap().modified().unwrap();
        assert!(m > old + Duration::from_secs(3000));
        assert!(!store.mark_used(&dir.path().join("missing")).unwrap());
    }
}
