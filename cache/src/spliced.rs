//! Spliced blobs: a blob kept as ranges of files the store holds already plus bytes of
//! its own, so that a layer repeating most of an earlier one (the rebuild of a big
//! COPY after a small edit) is not written out a second time.
//!
//! `blobs/spliced/<hex>/` holds `recipe.json` (the blob's digest and size, and its
//! extents in order: a file of the directory, an offset, a length), `own` (the bytes it
//! shares with nothing) and hard links to the files whose ranges it uses: `blob-<hex>`,
//! a stored blob's file, and `own-<hex>`, another spliced blob's own bytes. The links
//! keep those bytes for as long as the directory is there, whatever becomes of the
//! blobs they came from: a spliced blob depends on nothing outside its directory, so
//! removing it, or any other blob, needs no bookkeeping, and the collector sees one
//! more blob (sized by what only it keeps, see [`Store::spliced_blobs`]).
//!
//! [`Store::open_blob`] reads through the extents ([`BlobReader`]);
//! [`Store::blob_file`] writes a spliced blob out as an ordinary blob file where a
//! consumer needs a path (an export's hard link), checking its digest on the way. Store
//! files are never modified in place, so a range, once linked, keeps its bytes.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{CacheError, IoContext, Result};
use crate::store::{SPLICED_DIR, Store};

/// A blob referencing fewer bytes than this is written out whole: a few MiB are
/// cheaper to copy than to keep as a directory of links.
pub const MIN_SPLICE: u64 = 16 << 20;
const RECIPE: &str = "recipe.json";
const OWN: &str = "own";
/// A recipe lists a few extents per reused run of chunks: far below this.
const MAX_RECIPE: u64 = 4 << 20;

/// One range of a spliced blob: `len` bytes at `offset` of the directory's file `name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Extent {
    pub(crate) name: String,
    pub(crate) offset: u64,
    pub(crate) len: u64,
}

/// `recipe.json`.
#[derive(Serialize, Deserialize)]
struct RecipeFile {
    digest: String,
    size: u64,
    /// `[file, offset, length]` per extent, in blob order.
    extents: Vec<(String, u64, u64)>,
}

/// Whether `name` may be a file of a spliced blob's directory: `own`, `blob-<hex>` or
/// `own-<hex>` (never a path).
fn valid_name(name: &str) -> bool {
    let hex = |h: &str| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    name == OWN
        || name.strip_prefix("blob-").is_some_and(hex)
        || name.strip_prefix("own-").is_some_and(hex)
}

/// Appends an extent, merged with the last one when it continues it.
pub(crate) fn push_extent(extents: &mut Vec<Extent>, e: Extent) {
    if e.len == 0 {
        return;
    }
    if let Some(last) = extents.last_mut()
        && last.name == e.name
        && last.offset + last.len == e.offset
    {
        last.len += e.len;
        return;
    }
    extents.push(e);
}

/// Reads a stored blob, ordinary or spliced, as one stream. `Send`: it owns its files.
#[derive(Debug)]
pub struct BlobReader {
    files: Vec<File>,
    /// `(file index, offset in the file, length, offset in the blob)`, in blob order.
    extents: Vec<(usize, u64, u64, u64)>,
    len: u64,
    pos: u64,
    path: PathBuf,
    spliced: bool,
}

impl BlobReader {
    fn whole(file: File, len: u64, path: PathBuf) -> Self {
        BlobReader {
            files: vec![file],
            extents: vec![(0, 0, len, 0)],
            len,
            pos: 0,
            path,
            spliced: false,
        }
    }

    /// A reader over `extents`, each a file of `dir` but `own`'s bytes, which are in
    /// the file `own`; `Ok(None)` if one of the files is not there.
    pub(crate) fn of_extents(dir: &Path, own: &Path, extents: &[Extent]) -> Result<Option<Self>> {
        let mut files = Vec::new();
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut spans = Vec::with_capacity(extents.len());
        let mut start = 0u64;
        for e in extents {
            let i = match index.get(e.name.as_str()) {
                Some(i) => *i,
                None => {
                    let p = if e.name == OWN {
                        own.to_owned()
                    } else {
                        dir.join(&e.name)
                    };
                    let f = match File::open(&p) {
                        Ok(f) => f,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                        Err(e) => return Err(CacheError::io("open", &p, e)),
                    };
                    files.push(f);
                    index.insert(&e.name, files.len() - 1);
                    files.len() - 1
                }
            };
            spans.push((i, e.offset, e.len, start));
            start += e.len;
        }
        Ok(Some(BlobReader {
            files,
            extents: spans,
            len: start,
            pos: 0,
            path: dir.to_owned(),
            spliced: true,
        }))
    }

    /// The blob's size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the blob is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the blob is spliced (read through a recipe).
    pub fn is_spliced(&self) -> bool {
        self.spliced
    }

    /// Where the blob is stored (its file, or its spliced directory), for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Fills `buf` with the bytes at `offset`; an error if the blob ends first.
    pub fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            let n = self.read_at(buf, offset)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{} ends before offset {offset}", self.path.display()),
                ));
            }
            buf = &mut buf[n..];
            offset += n as u64;
        }
        Ok(())
    }

    /// Reads at `offset` into `buf`, from one extent at most; 0 at the end.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if offset >= self.len || buf.is_empty() {
            return Ok(0);
        }
        let i = self
            .extents
            .partition_point(|&(_, _, len, start)| start + len <= offset);
        let Some(&(file, at, len, start)) = self.extents.get(i) else {
            return Ok(0);
        };
        let skip = offset - start;
        let want = usize::try_from(len - skip)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = self.files[file].read_at(&mut buf[..want], at + skip)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{}: a file of the blob is shorter than its recipe says",
                    self.path.display()
                ),
            ));
        }
        Ok(n)
    }
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for BlobReader {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        let new = new.ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "seek before the blob's start")
        })?;
        self.pos = new;
        Ok(new)
    }
}

/// A spliced blob's recipe, checked.
#[derive(Clone, Debug)]
pub(crate) struct Recipe {
    pub(crate) size: u64,
    pub(crate) extents: Vec<Extent>,
}

impl Recipe {
    /// The extents covering `len` bytes at `offset` of the blob, each cut to fit.
    fn slice(&self, offset: u64, len: u64) -> Option<Vec<Extent>> {
        let end = offset.checked_add(len)?;
        if end > self.size {
            return None;
        }
        let mut out = Vec::new();
        let mut start = 0u64;
        for e in &self.extents {
            let (lo, hi) = (start.max(offset), (start + e.len).min(end));
            if lo < hi {
                out.push(Extent {
                    name: e.name.clone(),
                    offset: e.offset + (lo - start),
                    len: hi - lo,
                });
            }
            start += e.len;
            if start >= end {
                break;
            }
        }
        Some(out)
    }
}

/// Where a range of a stored blob lies in files a new spliced blob can link.
pub(crate) struct Source {
    /// The name the file gets in the new blob's directory.
    pub(crate) name: String,
    /// The file to link.
    pub(crate) path: PathBuf,
    pub(crate) offset: u64,
    pub(crate) len: u64,
    /// For a spliced blob's file: which file the recipe's offsets are about. A spliced
    /// blob written out and spliced again by another build (the same digest, other
    /// extents) has other files under the same names; a link that is not this file is
    /// not used.
    pub(crate) ident: Option<FileIdent>,
}

/// A file's identity: device, inode and size (not its change time: every link made to
/// it changes that).
pub(crate) type FileIdent = (u64, u64, u64);

pub(crate) fn ident(path: &Path) -> Option<FileIdent> {
    let m = fs::symlink_metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.len()))
}

/// A spliced blob directory's identity: device, inode and change time (the inode of a
/// directory removed may be reused by the next one, not with the same change time).
fn dir_ident(path: &Path) -> Option<(u64, u64, i64, i64)> {
    let m = fs::symlink_metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.ctime(), m.ctime_nsec()))
}

impl Store {
    /// `blobs/spliced/`: the spliced blobs' directories.
    pub fn spliced_dir(&self) -> PathBuf {
        self.dir(SPLICED_DIR)
    }

    pub(crate) fn spliced_path(&self, digest: &Digest) -> PathBuf {
        self.spliced_dir().join(digest.hex())
    }

    /// Where the blob `digest` is kept: its file, or its spliced directory when it has
    /// no file (for usage accounting by path).
    pub fn blob_location(&self, digest: &Digest) -> PathBuf {
        let path = self.blob_path(digest);
        let spliced = self.spliced_path(digest);
        if !path.exists() && spliced.is_dir() {
            spliced
        } else {
            path
        }
    }

    /// The recipe of the spliced blob `digest`; `None` if there is none (or it is not
    /// readable as one: such a directory is no blob).
    pub(crate) fn recipe(&self, digest: &Digest) -> Option<Recipe> {
        let path = self.spliced_path(digest).join(RECIPE);
        let file = File::open(&path).ok()?;
        let mut bytes = Vec::new();
        file.take(MAX_RECIPE).read_to_end(&mut bytes).ok()?;
        let r: RecipeFile = serde_json::from_slice(&bytes).ok()?;
        if r.digest != digest.as_str() {
            return None;
        }
        let mut extents = Vec::with_capacity(r.extents.len());
        let mut total = 0u64;
        for (name, offset, len) in r.extents {
            if !valid_name(&name) {
                return None;
            }
            offset.checked_add(len)?;
            total = total.checked_add(len)?;
            extents.push(Extent { name, offset, len });
        }
        (total == r.size).then_some(Recipe {
            size: r.size,
            extents,
        })
    }

    /// Opens a stored blob, ordinary or spliced, for reading.
    pub fn open_blob(&self, digest: &Digest) -> Result<BlobReader> {
        let path = self.blob_path(digest);
        // Regular first; a spliced blob written out between the two looks is found on
        // the second try.
        for _ in 0..2 {
            match File::open(&path) {
                Ok(f) => {
                    let len = f.metadata().ctx("stat", &path)?.len();
                    return Ok(BlobReader::whole(f, len, path));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(CacheError::io("read blob", path, e)),
            }
            if let Some(r) = self.open_spliced(digest)? {
                return Ok(r);
            }
        }
        Err(CacheError::BlobNotFound {
            digest: digest.clone(),
            path,
        })
    }

    fn open_spliced(&self, digest: &Digest) -> Result<Option<BlobReader>> {
        let dir = self.spliced_path(digest);
        let Some(recipe) = self.recipe(digest) else {
            return Ok(None);
        };
        // A file removed since the recipe was read: written out, or collected.
        BlobReader::of_extents(&dir, &dir.join(OWN), &recipe.extents)
    }

    /// Where `len` bytes at `offset` of the stored blob `digest` lie, as files a new
    /// spliced blob can link; `None` if the blob is not stored or is shorter.
    pub(crate) fn sources(&self, digest: &Digest, offset: u64, len: u64) -> Option<Vec<Source>> {
        let end = offset.checked_add(len)?;
        let path = self.blob_path(digest);
        if let Ok(m) = fs::metadata(&path) {
            return (m.is_file() && m.len() >= end).then(|| {
                // A stored blob's file holds its digest's bytes, whichever file it is.
                vec![Source {
                    name: format!("blob-{}", digest.hex()),
                    path,
                    offset,
                    len,
                    ident: None,
                }]
            });
        }
        // The directory the same before and after: its files are the recipe's (a
        // committed directory changes only by going as a whole).
        let dir = self.spliced_path(digest);
        let before = dir_ident(&dir)?;
        let recipe = self.recipe(digest)?;
        let sources = recipe
            .slice(offset, len)?
            .into_iter()
            .map(|e| {
                let path = dir.join(&e.name);
                Some(Source {
                    name: if e.name == OWN {
                        format!("own-{}", digest.hex())
                    } else {
                        e.name.clone()
                    },
                    ident: Some(ident(&path)?),
                    path,
                    offset: e.offset,
                    len: e.len,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        (dir_ident(&dir)? == before).then_some(sources)
    }

    /// Makes the directory `dir` (its files in place: `own` and the links) the spliced
    /// blob `digest` of `size` bytes made of `extents`: writes the recipe, then renames
    /// the directory into `blobs/spliced/`.
    pub(crate) fn commit_spliced(
        &self,
        dir: &Path,
        digest: &Digest,
        size: u64,
        extents: &[Extent],
    ) -> Result<()> {
        let recipe = RecipeFile {
            digest: digest.to_string(),
            size,
            extents: extents
                .iter()
                .map(|e| (e.name.clone(), e.offset, e.len))
                .collect(),
        };
        let bytes = serde_json::to_vec(&recipe).map_err(|source| CacheError::Serialize {
            what: format!("recipe of {digest}"),
            source,
        })?;
        self.write_atomic(&dir.join(RECIPE), &bytes)?;
        let parent = self.spliced_dir();
        fs::create_dir_all(&parent).ctx("create directory", &parent)?;
        let dest = self.spliced_path(digest);
        fs::rename(dir, &dest).ctx("rename spliced blob into", &dest)?;
        crate::store::fsync_parent(&dest)
    }

    /// The spliced blobs, with their directories and the bytes only they keep (their
    /// own bytes, and linked files no other name holds), for the collector.
    pub fn spliced_blobs(&self) -> Vec<(Digest, PathBuf, u64)> {
        let Ok(entries) = fs::read_dir(self.spliced_dir()) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let d = Digest::parse(&format!("sha256:{name}")).ok()?;
                // One that is also stored whole is on its way out (see `blob_file`).
                if self.blob_path(&d).is_file() {
                    return None;
                }
                let size = fs::read_dir(e.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter_map(|f| f.metadata().ok())
                    .filter(|m| m.nlink() == 1)
                    .map(|m| m.len())
                    .sum();
                Some((d, e.path(), size))
            })
            .collect()
    }

    /// The path of the stored blob `digest` as an ordinary file: a spliced blob is
    /// written out first (its digest checked), and its directory removed.
    pub fn blob_file(&self, digest: &Digest) -> Result<PathBuf> {
        let path = self.blob_path(digest);
        if path.is_file() {
            return Ok(path);
        }
        let mut reader = self.open_blob(digest)?;
        if reader.is_spliced() {
            let mut w = self.blob_writer()?;
            io::copy(&mut reader, &mut w).ctx("write out spliced blob", reader.path())?;
            w.commit(Some(digest))?;
            self.remove_spliced(digest)?;
        }
        Ok(path)
    }

    /// Removes the spliced directory of `digest`, if any (renamed into `tmp/` first, so
    /// that a kill leaves no half directory in place). Returns whether there was one.
    pub(crate) fn remove_spliced(&self, digest: &Digest) -> Result<bool> {
        let dir = self.spliced_path(digest);
        match self.trash(&dir)? {
            Some(t) => {
                crate::store::fsync_parent(&dir)?;
                crate::remove::remove_tree(&t).ctx("remove", &t)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Removes the spliced directories of blobs also stored whole (a kill between
    /// [`Store::blob_file`]'s two steps). Housekeeping, from [`Store::open`].
    pub(crate) fn clean_spliced(&self) -> Result<()> {
        let Ok(entries) = fs::read_dir(self.spliced_dir()) else {
            return Ok(());
        };
        for e in entries.flatten() {
            let Some(d) = e
                .file_name()
                .to_str()
                .and_then(|n| Digest::parse(&format!("sha256:{n}")).ok())
            else {
                continue;
            };
            if self.blob_path(&d).is_file() {
                self.remove_spliced(&d)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::io::Write;

    use super::*;
    use crate::digest::sha256_of;

    /// Bytes that do not repeat (BLAKE3's output stream).
    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0; len];
        blake3::Hasher::new()
            .update(&seed.to_le_bytes())
            .finalize_xof()
            .fill(&mut out);
        out
    }

    const BIG: usize = MIN_SPLICE as usize + (1 << 20);

    /// Writes `own1`, the range `range` of `source` (whose bytes are `src`), `own2`.
    fn splice(
        store: &Store,
        own1: &[u8],
        source: &Digest,
        src: &[u8],
        range: std::ops::Range<usize>,
        own2: &[u8],
    ) -> (Digest, Vec<u8>) {
        let mut want = own1.to_vec();
        want.extend_from_slice(&src[range.clone()]);
        want.extend_from_slice(own2);
        let mut w = store.blob_writer().unwrap();
        w.write_all(own1).unwrap();
        w.append_stored(source, range.start as u64, &src[range])
            .unwrap();
        w.write_all(own2).unwrap();
        let (d, n) = w.commit(Some(&sha256_of(&want))).unwrap();
        assert_eq!(n, want.len() as u64);
        (d, want)
    }

    #[test]
    fn a_spliced_blob_reads_as_its_bytes_and_outlives_its_sources() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a_bytes = noise(1, BIG + 4096);
        let a = store.put_blob(&a_bytes).unwrap();
        let (c, c_bytes) = splice(&store, b"head", &a, &a_bytes, 100..BIG, b"tail");
        assert!(!store.blob_path(&c).exists());
        assert!(store.spliced_path(&c).join(RECIPE).is_file());
        assert!(store.has_blob(&c));
        assert_eq!(store.blob_size(&c).unwrap(), c_bytes.len() as u64);
        assert_eq!(store.read_blob(&c).unwrap(), c_bytes);
        store.verify_blob(&c).unwrap();
        // Seek and read in the middle, across extents.
        let mut r = store.open_blob(&c).unwrap();
        assert!(r.is_spliced());
        r.seek(SeekFrom::Start(2)).unwrap();
        let mut buf = vec![0; 10];
        r.read_exact(&mut buf).unwrap();
        assert_eq!(buf, c_bytes[2..12]);
        // Its source deleted, it still reads (the link keeps the bytes).
        assert!(store.delete_blob(&a).unwrap());
        assert_eq!(store.read_blob(&c).unwrap(), c_bytes);
        // A blob spliced from a spliced one links that one's files, not it.
        let (c2, c2_bytes) = splice(&store, b"x", &c, &c_bytes, 1..BIG - 150, b"");
        let names: HashSet<String> = fs::read_dir(store.spliced_path(&c2))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        let want: HashSet<String> = [
            "own".to_owned(),
            RECIPE.to_owned(),
            format!("own-{}", c.hex()),
            format!("blob-{}", a.hex()),
        ]
        .into();
        assert_eq!(names, want);
        // Written out: an ordinary file, the directory gone, the other still reads.
        let path = store.blob_file(&c).unwrap();
        assert_eq!(fs::read(&path).unwrap(), c_bytes);
        assert!(!store.spliced_path(&c).exists());
        assert_eq!(store.read_blob(&c2).unwrap(), c2_bytes);
        // The collector sees it with the bytes only it keeps.
        let listed = store.spliced_blobs();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].0, c2);
        assert!(listed[0].2 >= (BIG as u64) - 100, "{}", listed[0].2);
        assert!(store.delete_blob(&c2).unwrap());
        assert!(!store.has_blob(&c2));
        assert!(store.spliced_blobs().is_empty());
    }

    #[test]
    fn few_referenced_bytes_are_written_out_and_a_gone_source_is_copied() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a_bytes = noise(2, 1 << 20);
        let a = store.put_blob(&a_bytes).unwrap();
        let (c, c_bytes) = splice(&store, b"h", &a, &a_bytes, 10..5000, b"t");
        assert_eq!(fs::read(store.blob_path(&c)).unwrap(), c_bytes);
        assert!(!store.spliced_dir().join(c.hex()).exists());
        // A source that is gone: the bytes given are written.
        let gone = sha256_of(b"not stored");
        let bytes = noise(3, BIG);
        let mut w = store.blob_writer().unwrap();
        w.append_stored(&gone, 0, &bytes).unwrap();
        let (d, _) = w.commit(None).unwrap();
        assert_eq!(fs::read(store.blob_path(&d)).unwrap(), bytes);
        // Nothing left in tmp/.
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn a_recipe_naming_a_path_is_no_blob_and_a_written_out_leftover_goes_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a_bytes = noise(4, BIG);
        let a = store.put_blob(&a_bytes).unwrap();
        let (c, _) = splice(&store, b"", &a, &a_bytes, 0..BIG - 1, b"z");
        let recipe = store.spliced_path(&c).join(RECIPE);
        let good = fs::read(&recipe).unwrap();
        let bad = String::from_utf8(good.clone())
            .unwrap()
            .replace(&format!("blob-{}", a.hex()), "../../sha256/x");
        fs::write(&recipe, bad).unwrap();
        assert!(!store.has_blob(&c));
        assert!(store.open_blob(&c).is_err());
        fs::write(&recipe, good).unwrap();
        assert!(store.has_blob(&c));
        // A kill between writing out and removing the directory: open tidies up.
        let bytes = store.read_blob(&c).unwrap();
        fs::write(store.blob_path(&c), &bytes).unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert!(!store.spliced_path(&c).exists());
        assert_eq!(store.read_blob(&c).unwrap(), bytes);
    }

    #[test]
    fn ranges_of_a_spliced_blob_spliced_again_elsewhere_are_not_linked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a_bytes = noise(6, BIG + 4096);
        let a = store.put_blob(&a_bytes).unwrap();
        let (c, c_bytes) = splice(&store, b"head", &a, &a_bytes, 100..BIG, b"tail");
        // Where C's first bytes are (its own file), as a build about to link them sees.
        let stale = store.sources(&c, 0, 4).unwrap();
        assert_eq!(stale[0].name, format!("own-{}", c.hex()));
        // Meanwhile C is written out and spliced again by another build, with other
        // extents: another `own` under the same name.
        store.blob_file(&c).unwrap();
        assert!(store.delete_blob(&c).unwrap());
        let mut w = store.blob_writer().unwrap();
        w.write_all(&c_bytes[..5000]).unwrap();
        w.append_stored(&a, 100 + 4996, &c_bytes[5000..c_bytes.len() - 4])
            .unwrap();
        w.write_all(b"tail").unwrap();
        assert_eq!(w.commit(Some(&c)).unwrap().0, c);
        assert!(store.spliced_path(&c).join(RECIPE).is_file());
        // The stale offsets are not applied to the new file: no link, the caller
        // writes the bytes.
        let mut w = store.blob_writer().unwrap();
        assert!(w.link(stale).is_none());
        // Fresh ones are.
        let fresh = store.sources(&c, 0, 4).unwrap();
        assert!(w.link(fresh).is_some());
    }
}
