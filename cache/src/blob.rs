//! Content-addressed blobs under `blobs/sha256/<hex>`.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use kiln_oci::digest::Hashing;

use crate::digest::{Digest, sha256_of};
use crate::error::{CacheError, IoContext, Result};
use crate::spliced::{BlobReader, Extent, FileIdent, MIN_SPLICE, Source, ident, push_extent};
use crate::store::{BLOBS_DIR, Store, TempPath, fsync_parent};

/// Streams a new blob into the store. Obtained from [`Store::blob_writer`].
///
/// Bytes go to a temp file in `tmp/` and are sha256-hashed on the way;
/// [`BlobWriter::commit`] makes the blob visible under `blobs/`. Dropping an
/// uncommitted writer removes its temp file; if the process dies instead, the
/// temp file is reclaimed by a later [`Store::open`] and nothing partial ever
/// appears under `blobs/`.
#[derive(Debug)]
pub struct BlobWriter {
    store: Store,
    inner: Hashing<BufWriter<File>>,
    /// Whether the bytes are hashed here ([`Store::blob_writer`]) or by the caller,
    /// who names the digest ([`Store::prehashed_blob_writer`]).
    hashed: bool,
    tmp: TempPath,
    splice: Splice,
}

/// What a [`BlobWriter`] keeps of the ranges it references instead of writing them
/// ([`BlobWriter::append_stored`]).
#[derive(Debug, Default)]
struct Splice {
    /// `tmp/<temp file>.d/`, the links to the files the ranges are in; made on the
    /// first range.
    dir: Option<TempTree>,
    /// The files linked, by name, with the identity of a spliced blob's file.
    linked: HashMap<String, Option<FileIdent>>,
    /// The blob so far, up to the own bytes written since the last range.
    extents: Vec<Extent>,
    /// Own bytes (written to the temp file) already in `extents`.
    own_mark: u64,
    /// Bytes referenced.
    referenced: u64,
}

/// A temp directory removed (with what it holds) on drop unless kept.
#[derive(Debug)]
struct TempTree(Option<PathBuf>);

impl TempTree {
    fn path(&self) -> &Path {
        self.0.as_deref().expect("TempTree used after keep")
    }

    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for TempTree {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = crate::remove::remove_tree(&p);
        }
    }
}

impl BlobWriter {
    /// Appends `bytes`, which the store holds at `offset` of blob `source` (a chunk an
    /// earlier layer wrote): the blob references them there instead of holding a copy,
    /// when the store still has them; written like any bytes otherwise. A blob that
    /// references at least [`MIN_SPLICE`] bytes is committed spliced (see the
    /// `spliced` module); one that references less is written out whole at commit.
    pub fn append_stored(&mut self, source: &Digest, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let len = bytes.len() as u64;
        let Some(parts) = self.link_sources(source, offset, len) else {
            return self.write_all(bytes);
        };
        self.close_own();
        for e in parts {
            push_extent(&mut self.splice.extents, e);
        }
        self.splice.referenced += len;
        if self.hashed {
            self.inner.update(bytes);
        } else {
            self.inner.add_count(len);
        }
        Ok(())
    }

    /// Links the files holding `len` bytes at `offset` of `source` into the writer's
    /// directory and returns the extents; `None` if they cannot be (gone meanwhile).
    fn link_sources(&mut self, source: &Digest, offset: u64, len: u64) -> Option<Vec<Extent>> {
        let sources = self.store.sources(source, offset, len)?;
        self.link(sources)
    }

    /// Links `sources` into the writer's directory; `None` if one is gone, or is not
    /// the file its offsets are about (see [`Source::ident`]).
    pub(crate) fn link(&mut self, sources: Vec<Source>) -> Option<Vec<Extent>> {
        if self.splice.dir.is_none() {
            let mut name = self.tmp.path().as_os_str().to_owned();
            name.push(".d");
            let dir = PathBuf::from(name);
            fs::create_dir(&dir).ok()?;
            self.splice.dir = Some(TempTree(Some(dir)));
        }
        let dir = self.splice.dir.as_ref()?.path().to_owned();
        for s in &sources {
            if let Some(linked) = self.splice.linked.get(&s.name) {
                if s.ident.is_some() && *linked != s.ident {
                    return None;
                }
                continue;
            }
            let link = dir.join(&s.name);
            if fs::hard_link(&s.path, &link).is_err() {
                return None;
            }
            if s.ident.is_some() && ident(&link) != s.ident {
                let _ = fs::remove_file(&link);
                return None;
            }
            self.splice.linked.insert(s.name.clone(), s.ident);
        }
        Some(
            sources
                .into_iter()
                .map(|s| Extent {
                    name: s.name,
                    offset: s.offset,
                    len: s.len,
                })
                .collect(),
        )
    }

    /// Ends the run of own bytes written since the last referenced range.
    fn close_own(&mut self) {
        let own = self.inner.count() - self.splice.referenced;
        let mark = self.splice.own_mark;
        push_extent(
            &mut self.splice.extents,
            Extent {
                name: "own".to_owned(),
                offset: mark,
                len: own - mark,
            },
        );
        self.splice.own_mark = own;
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.inner.count()
    }

    /// Finish the blob: flush and fsync it, check it against `expected` (if
    /// given), then rename it into `blobs/sha256/` and fsync that directory.
    /// If the blob is already stored, the temp file is simply dropped.
    ///
    /// On a digest mismatch the temp file is removed and
    /// [`CacheError::DigestMismatch`] names both digests.
    pub fn commit(mut self, expected: Option<&Digest>) -> Result<(Digest, u64)> {
        if self.splice.referenced > 0 {
            self.close_own();
        }
        let BlobWriter {
            store,
            inner,
            hashed,
            tmp,
            splice,
        } = self;
        let (buf, digest, size) = inner.finish();
        // The caller hashed what it wrote: its digest is the blob's name.
        let digest = match (hashed, expected) {
            (true, _) => digest,
            (false, Some(d)) => d.clone(),
            (false, None) => {
                return Err(CacheError::InvalidArgument {
                    what: "blob digest",
                    value: String::new(),
                    reason: "a prehashed blob is committed with its digest",
                });
            }
        };
        let file = buf
            .into_inner()
            .map_err(|e| CacheError::io("write", tmp.path(), e.into_error()))?;
        if let Some(expected) = expected.filter(|e| **e != digest) {
            return Err(CacheError::DigestMismatch {
                expected: expected.clone(),
                actual: digest,
            });
        }
        let dest = store.blob_path(&digest);
        // Marked used so that a running collector keeps it (see `lease`); gone since
        // the check, it is written anew.
        if fs::metadata(&dest).is_ok_and(|m| m.is_file() && m.len() == size)
            && store.mark_used(&dest)?
        {
            return Ok((digest, size)); // `tmp` removes the temp file
        }
        if splice.referenced > 0 {
            let spliced = store.spliced_path(&digest);
            if store.blob_size(&digest).ok() == Some(size) && store.mark_used(&spliced)? {
                return Ok((digest, size));
            }
            let dir = splice.dir.expect("a referenced range made the directory");
            if splice.referenced < MIN_SPLICE {
                drop(file);
                write_out(&store, &tmp, dir.path(), &splice.extents, &dest)?;
                return Ok((digest, size));
            }
            file.sync_all().ctx("fsync", tmp.path())?;
            drop(file);
            tmp.rename_to(&dir.path().join("own"))?;
            store.commit_spliced(dir.path(), &digest, size, &splice.extents)?;
            dir.keep();
            return Ok((digest, size));
        }
        file.sync_all().ctx("fsync", tmp.path())?;
        drop(file);
        tmp.persist(&dest)?;
        Ok((digest, size))
    }
}

/// Writes the blob made of `extents` (own bytes in `own`, the others in `dir`) out
/// whole as `dest`.
fn write_out(
    store: &Store,
    own: &TempPath,
    dir: &Path,
    extents: &[Extent],
    dest: &Path,
) -> Result<()> {
    let mut src = BlobReader::of_extents(dir, own.path(), extents)?
        .ok_or_else(|| CacheError::io("open", dir, io::Error::from(io::ErrorKind::NotFound)))?;
    let (mut out, tmp) = store.create_temp()?;
    io::copy(&mut src, &mut out).ctx("copy from", dir)?;
    out.sync_all().ctx("fsync", tmp.path())?;
    drop(out);
    tmp.persist(dest)
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.hashed {
            self.inner.write(buf)
        } else {
            let n = self.inner.get_mut().write(buf)?;
            self.inner.add_count(n as u64);
            Ok(n)
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl Store {
    /// Where the blob `digest` is (or would be) stored.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir(BLOBS_DIR).join(digest.hex())
    }

    /// Whether the blob is stored (as a file, or spliced).
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file() || self.recipe(digest).is_some()
    }

    /// Read a whole stored blob into memory.
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        let path = self.blob_path(digest);
        match fs::read(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mut r = self.open_blob(digest)?;
                let mut out = Vec::new();
                r.read_to_end(&mut out).ctx("read blob", r.path())?;
                Ok(out)
            }
            res => res.map_err(|e| self.blob_err(digest, path, e)),
        }
    }

    /// Size in bytes of a stored blob.
    pub fn blob_size(&self, digest: &Digest) -> Result<u64> {
        let path = self.blob_path(digest);
        match fs::metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => match self.recipe(digest) {
                Some(r) => Ok(r.size),
                None => Err(self.blob_err(digest, path, e)),
            },
            res => res
                .map(|m| m.len())
                .map_err(|e| self.blob_err(digest, path, e)),
        }
    }

    /// Store `bytes` as a blob and return its digest. A no-op if it is
    /// already stored.
    pub fn put_blob(&self, bytes: &[u8]) -> Result<Digest> {
        let digest = sha256_of(bytes);
        if self.blob_size(&digest).ok() == Some(bytes.len() as u64)
            && self.mark_used(&self.blob_path(&digest))?
        {
            return Ok(digest);
        }
        let mut w = self.blob_writer()?;
        w.write_all(bytes).ctx("write", w.tmp.path())?;
        let (digest, _) = w.commit(Some(&digest))?;
        Ok(digest)
    }

    /// Copy the file at `path` into the store as a blob.
    pub fn put_blob_from_file(&self, path: impl AsRef<Path>) -> Result<(Digest, u64)> {
        let path = path.as_ref();
        let mut src = File::open(path).ctx("open", path)?;
        let mut w = self.blob_writer()?;
        copy_into(&mut src, &mut w, path)?;
        w.commit(None)
    }

    /// Start streaming a new blob. No lock is needed (see [`Store`]).
    pub fn blob_writer(&self) -> Result<BlobWriter> {
        let (file, tmp) = self.create_temp()?;
        Ok(BlobWriter {
            store: self.clone(),
            inner: Hashing::new(BufWriter::with_capacity(256 * 1024, file)),
            hashed: true,
            tmp,
            splice: Splice::default(),
        })
    }

    /// A writer for a blob whose writer hashes the bytes itself (a layer writer computes
    /// the digest as it compresses): the bytes are not hashed a second time here, and
    /// [`BlobWriter::commit`] takes the caller's digest as the blob's name. For bytes
    /// kiln produces only; anything read from outside goes through
    /// [`Store::blob_writer`].
    pub fn prehashed_blob_writer(&self) -> Result<BlobWriter> {
        let mut w = self.blob_writer()?;
        w.hashed = false;
        Ok(w)
    }

    /// Re-hash a stored blob; [`CacheError::CorruptBlob`] if its content no
    /// longer matches its name.
    pub fn verify_blob(&self, digest: &Digest) -> Result<()> {
        let mut file = self.open_blob(digest)?;
        let path = file.path().to_owned();
        let mut hasher = Hashing::new(io::sink());
        copy_into(&mut file, &mut hasher, &path)?;
        let (_, actual, _) = hasher.finish();
        if actual != *digest {
            return Err(CacheError::CorruptBlob {
                digest: digest.clone(),
                actual,
                path,
            });
        }
        Ok(())
    }

    /// Delete a stored blob (and its chunk index files); returns whether it existed.
    /// Callers must hold [`Store::lock_exclusive`] so no concurrent build still needs it.
    pub fn delete_blob(&self, digest: &Digest) -> Result<bool> {
        self.forget_chunks(digest);
        let spliced = self.remove_spliced(digest)?;
        let path = self.blob_path(digest);
        match fs::remove_file(&path) {
            Ok(()) => {
                fsync_parent(&path)?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(spliced),
            Err(e) => Err(CacheError::io("delete blob", &path, e)),
        }
    }

    fn blob_err(&self, digest: &Digest, path: PathBuf, e: io::Error) -> CacheError {
        if e.kind() == io::ErrorKind::NotFound {
            CacheError::BlobNotFound {
                digest: digest.clone(),
                path,
            }
        } else {
            CacheError::io("read blob", path, e)
        }
    }
}

/// `io::copy` with read errors attributed to `src_path`.
fn copy_into(src: &mut impl Read, dst: &mut impl Write, src_path: &Path) -> Result<u64> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CacheError::io("read", src_path, e)),
        };
        dst.write_all(&buf[..n])
            .map_err(|e| CacheError::io("write blob copied from", src_path, e))?;
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::TMP_DIR;
    use std::time::{Duration, SystemTime};

    fn count(dir: &Path) -> usize {
        fs::read_dir(dir).unwrap().count()
    }

    #[test]
    fn a_prehashed_blob_is_named_by_its_writer() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut w = store.prehashed_blob_writer().unwrap();
        w.write_all(b"layer bytes").unwrap();
        assert_eq!(w.bytes_written(), 11);
        let d = sha256_of(b"layer bytes");
        assert_eq!(w.commit(Some(&d)).unwrap(), (d.clone(), 11));
        assert_eq!(store.read_blob(&d).unwrap(), b"layer bytes");
        store.verify_blob(&d).unwrap();
        // Without the writer's digest there is no name.
        let mut w = store.prehashed_blob_writer().unwrap();
        w.write_all(b"x").unwrap();
        assert!(w.commit(None).is_err());
    }

    #[test]
    fn put_read_verify_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = store.put_blob(b"hello").unwrap();
        assert_eq!(d, sha256_of(b"hello"));
        assert!(store.has_blob(&d));
        assert_eq!(store.read_blob(&d).unwrap(), b"hello");
        assert_eq!(store.blob_size(&d).unwrap(), 5);
        let mut s = String::new();
        store.open_blob(&d).unwrap().read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello");
        store.verify_blob(&d).unwrap();
        assert_eq!(store.put_blob(b"hello").unwrap(), d); // idempotent
        assert!(store.delete_blob(&d).unwrap());
        assert!(!store.delete_blob(&d).unwrap());
        let err = store.read_blob(&d).unwrap_err();
        assert!(matches!(err, CacheError::BlobNotFound { .. }));
        assert!(err.to_string().contains(d.as_str()));
        assert_eq!(count(&store.root().join(TMP_DIR)), 0);
    }

    #[test]
    fn writer_streams_and_checks_expected() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut w = store.blob_writer().unwrap();
        w.write_all(b"ab").unwrap();
        w.write_all(b"c").unwrap();
        assert_eq!(w.bytes_written(), 3);
        let want = sha256_of(b"abc");
        assert_eq!(w.commit(Some(&want)).unwrap(), (want.clone(), 3));
        assert!(store.has_blob(&want));

        // Existing blob: commit just drops the temp file.
        let mut w = store.blob_writer().unwrap();
        w.write_all(b"abc").unwrap();
        assert_eq!(w.commit(None).unwrap().0, want);

        // Mismatch: error names both digests, nothing stored, temp removed.
        let mut w = store.blob_writer().unwrap();
        w.write_all(b"abd").unwrap();
        let err = w.commit(Some(&want)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(want.as_str()), "{msg}");
        assert!(msg.contains(sha256_of(b"abd").as_str()), "{msg}");
        assert!(!store.has_blob(&sha256_of(b"abd")));
        assert_eq!(count(&store.root().join(TMP_DIR)), 0);
        assert_eq!(count(&store.root().join(BLOBS_DIR)), 1);
    }

    #[test]
    fn dropped_writer_removes_temp() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut w = store.blob_writer().unwrap();
        w.write_all(&[1u8; 4096]).unwrap();
        assert_eq!(count(&store.root().join(TMP_DIR)), 1);
        drop(w);
        assert_eq!(count(&store.root().join(TMP_DIR)), 0);
        assert_eq!(count(&store.root().join(BLOBS_DIR)), 0);
    }

    #[test]
    fn put_from_file_and_detect_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let src = dir.path().join("src");
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        fs::write(&src, &data).unwrap();
        let (d, n) = store.put_blob_from_file(&src).unwrap();
        assert_eq!((d.clone(), n), (sha256_of(&data), data.len() as u64));
        store.verify_blob(&d).unwrap();
        fs::write(store.blob_path(&d), b"tampered").unwrap();
        let err = store.verify_blob(&d).unwrap_err();
        assert!(matches!(err, CacheError::CorruptBlob { .. }), "{err}");
        assert!(
            err.to_string()
                .contains(&sha256_of(b"tampered").to_string())
        );
        let err = store
            .put_blob_from_file(dir.path().join("missing"))
            .unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }

    /// A writer that never gets to run Drop (as if the process was killed)
    /// leaves nothing under blobs/, and a later open reclaims its temp file
    /// once its owner is dead and the file is stale.
    #[test]
    fn forgotten_writer_leaves_no_blob_and_is_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut w = store.blob_writer().unwrap();
        w.write_all(&[9u8; 300_000]).unwrap();
        w.flush().unwrap();
        std::mem::forget(w);
        assert_eq!(count(&store.root().join(BLOBS_DIR)), 0);
        let tmp_dir = store.root().join(TMP_DIR);
        let tmp: Vec<_> = fs::read_dir(&tmp_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(tmp.len(), 1);

        // While the owner (this process) lives, the file is left alone.
        backdate(&tmp[0]);
        Store::open(dir.path()).unwrap();
        assert!(tmp[0].exists());

        // Simulate the owner dying: same file, owned by a dead pid.
        let name = tmp[0].file_name().unwrap().to_str().unwrap();
        let (_, rest) = name.split_once('.').unwrap();
        let dead = tmp_dir.join(format!("{}.{rest}", crate::store::tests::dead_pid()));
        fs::rename(&tmp[0], &dead).unwrap();
        backdate(&dead);
        Store::open(dir.path()).unwrap();
        assert_eq!(count(&tmp_dir), 0);
        assert_eq!(count(&store.root().join(BLOBS_DIR)), 0);
    }

    fn backdate(p: &Path) {
        let old = SystemTime::now() - Duration::from_secs(2 * 3600);
        File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }

    const CHILD_ENV: &str = "KILN_CACHE_TEST_CRASH_ROOT";

    /// A real crash: a child process aborts in the middle of writing a blob.
    #[test]
    fn aborted_process_leaves_no_blob() {
        if let Some(root) = std::env::var_os(CHILD_ENV) {
            let store = Store::open(&root).unwrap();
            let mut w = store.blob_writer().unwrap();
            w.write_all(&[3u8; 1 << 20]).unwrap();
            w.flush().unwrap();
            std::process::abort();
        }
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "blob::tests::aborted_process_leaves_no_blob"])
            .args(["--test-threads", "1", "--nocapture"])
            .env(CHILD_ENV, dir.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "child should have aborted");
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(count(&store.root().join(BLOBS_DIR)), 0);
        let tmp_dir = store.root().join(TMP_DIR);
        // Regression (issue 9, finding 10): the next start removes the dead writer's
        // temp file at once, not an hour later.
        assert_eq!(count(&tmp_dir), 0, "the partial temp file is left behind");
    }
}
