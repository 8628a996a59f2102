//! The chunk index: where the compressed chunks of chunked layer blobs are, so that a
//! rebuild can copy an unchanged chunk instead of compressing it again.
//!
//! One file per blob and codec, `chunks/<codec>/<blob hex>.json`, written once after the
//! blob is committed (temp file + rename). A chunk is known by a hash of its uncompressed
//! bytes and its length; the codec (`gzip-6-c1`: algorithm, level, chunk format) names
//! how it was compressed.
//!
//! The index references nothing as far as garbage collection goes: it keeps no blob
//! alive. A location whose blob is gone, or too short, is a miss
//! ([`Store::read_chunk`]); [`Store::delete_blob`] drops the blob's index files and
//! [`Store::prune_chunk_index`] those of blobs the collector moved away.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{CacheError, IoContext, Result};
use crate::hex::{decode32 as unhex, encode as hex};
use crate::spliced::BlobReader;
use crate::store::{CHUNKS_DIR, Store};

/// A chunk's identity: a 32-byte hash of its uncompressed bytes.
pub type ChunkHash = [u8; 32];

/// One chunk of a blob, as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkEntry {
    /// Hash of its uncompressed bytes.
    pub hash: ChunkHash,
    /// Length of its uncompressed bytes.
    pub size: u64,
    /// Where its compressed bytes start in the blob.
    pub offset: u64,
    /// Length of its compressed bytes.
    pub len: u64,
    /// BLAKE3 of its compressed bytes, checked when they are read back.
    pub packed_hash: ChunkHash,
    /// Where writing a later layer can resume after this chunk (see
    /// [`ChunkResume`]), if anywhere.
    pub resume: Option<ChunkResume>,
}

/// A resume point at the end of a chunk: a layer whose entries have this fingerprint
/// up to there has the blob's bytes up to there, and its hashes carry on from these
/// states. Opaque to the store, which only keeps and finds them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkResume {
    /// The fingerprint of the layer's entries up to the chunk's end.
    pub fingerprint: ChunkHash,
    /// Tar entries up to there.
    pub entries: u64,
    /// Saved state of the tar's hash.
    pub tar_state: Vec<u8>,
    /// Saved state of the blob's hash.
    pub out_state: Vec<u8>,
}

/// Where a chunk's compressed bytes are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkLocation {
    /// The blob holding them.
    pub blob: Digest,
    /// Offset in the blob.
    pub offset: u64,
    /// Length.
    pub len: u64,
    /// BLAKE3 of the bytes.
    pub packed_hash: ChunkHash,
}

/// The chunks of one codec, from every index file of the store
/// ([`Store::chunk_index`]).
#[derive(Clone, Debug, Default)]
pub struct ChunkIndex {
    map: HashMap<(ChunkHash, u64), ChunkLocation>,
    /// Every indexed blob's chunks, in order.
    blobs: HashMap<Digest, Arc<Vec<ChunkEntry>>>,
    /// Resume fingerprint -> the blob and the index of the chunk it ends.
    resumes: HashMap<ChunkHash, (Digest, usize)>,
}

impl ChunkIndex {
    /// Where the chunk with `hash` and `size` uncompressed bytes is, if recorded.
    pub fn get(&self, hash: &ChunkHash, size: u64) -> Option<&ChunkLocation> {
        self.map.get(&(*hash, size))
    }

    /// The head of a blob ending with the resume point `fingerprint`: the blob and
    /// its chunks from the first to the one that carries the point.
    pub fn resume(&self, fingerprint: &ChunkHash) -> Option<(&Digest, &[ChunkEntry])> {
        let (blob, last) = self.resumes.get(fingerprint)?;
        let chunks = self.blobs.get(blob)?;
        Some((blob, chunks.get(..=*last)?))
    }

    /// Whether any resume point is known.
    pub fn has_resume_points(&self) -> bool {
        !self.resumes.is_empty()
    }

    /// Adds the chunks of `blob`, just written, where no location is known yet: a later
    /// layer of the same build can then reuse them (their resume points are not kept:
    /// a build writes a layer once).
    pub fn learn(&mut self, blob: &Digest, chunks: &[ChunkEntry]) {
        for c in chunks {
            self.map
                .entry((c.hash, c.size))
                .or_insert_with(|| ChunkLocation {
                    blob: blob.clone(),
                    offset: c.offset,
                    len: c.len,
                    packed_hash: c.packed_hash,
                });
        }
    }

    /// Number of chunks known.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no chunk is known.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// On-disk form of one index file.
#[derive(Serialize, Deserialize)]
struct IndexFile {
    blob: String,
    codec: String,
    /// `[hash hex, size, offset, len, compressed bytes' hash hex]` per chunk, in blob
    /// order.
    chunks: Vec<(String, u64, u64, u64, String)>,
    /// `[chunk number, fingerprint hex, entries, tar hash state hex, blob hash state
    /// hex]` per resume point (absent in older files).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    resume: Vec<(usize, String, u64, String, String)>,
}

/// A saved hash state is a few dozen bytes; anything much longer is not one.
const MAX_STATE_LEN: usize = 256;

fn unhex_vec(s: &str) -> Option<Vec<u8>> {
    crate::hex::decode(s, MAX_STATE_LEN)
}

/// Codec names become directory names: lowercase letters, digits and dashes only.
fn check_codec(codec: &str) -> Result<()> {
    let ok = !codec.is_empty()
        && codec.len() <= 64
        && codec
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(CacheError::InvalidArgument {
            what: "chunk codec",
            value: codec.to_owned(),
            reason: "expected lowercase letters, digits and dashes",
        })
    }
}

/// Reads `len` bytes at `offset` of `blob` into `buf` (resized) and checks them against
/// `packed_hash`: a damaged blob must not spread into new ones.
fn read_checked(
    blob: &BlobReader,
    offset: u64,
    len: u64,
    packed_hash: &ChunkHash,
    buf: &mut Vec<u8>,
) -> bool {
    let Ok(n) = usize::try_from(len) else {
        return false;
    };
    buf.resize(n, 0);
    offset.checked_add(len).is_some_and(|end| end <= blob.len())
        && blob.read_exact_at(buf, offset).is_ok()
        && blake3::hash(buf).as_bytes() == packed_hash
}

impl Store {
    /// `chunks/`: the chunk index (see [`Store::chunk_index`]).
    pub fn chunks_dir(&self) -> PathBuf {
        self.dir(CHUNKS_DIR)
    }

    fn chunk_file(&self, codec: &str, blob: &Digest) -> PathBuf {
        self.chunks_dir()
            .join(codec)
            .join(format!("{}.json", blob.hex()))
    }

    /// Records the chunks of the stored blob `blob`, compressed as `codec` says.
    /// Call after the blob is committed. Atomic; last writer wins.
    pub fn record_chunks(&self, codec: &str, blob: &Digest, chunks: &[ChunkEntry]) -> Result<()> {
        check_codec(codec)?;
        let dir = self.chunks_dir().join(codec);
        fs::create_dir_all(&dir).ctx("create directory", &dir)?;
        let file = IndexFile {
            blob: blob.to_string(),
            codec: codec.to_owned(),
            chunks: chunks
                .iter()
                .map(|c| (hex(&c.hash), c.size, c.offset, c.len, hex(&c.packed_hash)))
                .collect(),
            resume: chunks
                .iter()
                .enumerate()
                .filter_map(|(i, c)| {
                    let r = c.resume.as_ref()?;
                    Some((
                        i,
                        hex(&r.fingerprint),
                        r.entries,
                        hex(&r.tar_state),
                        hex(&r.out_state),
                    ))
                })
                .collect(),
        };
        let bytes = serde_json::to_vec(&file).map_err(|source| CacheError::Serialize {
            what: format!("chunk index of {blob}"),
            source,
        })?;
        self.write_atomic(&self.chunk_file(codec, blob), &bytes)
    }

    /// The chunks recorded for `codec`, of blobs still stored. Unreadable or malformed
    /// index files are skipped (a miss costs a compression, nothing more).
    pub fn chunk_index(&self, codec: &str) -> Result<ChunkIndex> {
        check_codec(codec)?;
        let dir = self.chunks_dir().join(codec);
        let mut index = ChunkIndex::default();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(index),
            Err(e) => return Err(CacheError::io("read directory", &dir, e)),
        };
        for entry in entries.flatten() {
            let Ok(bytes) = fs::read(entry.path()) else {
                continue;
            };
            let Ok(file) = serde_json::from_slice::<IndexFile>(&bytes) else {
                continue;
            };
            let Ok(blob) = Digest::parse(&file.blob) else {
                continue;
            };
            if file.codec != codec
                || entry.file_name().to_str() != Some(&format!("{}.json", blob.hex()))
                || !self.has_blob(&blob)
            {
                continue;
            }
            let mut chunks = Vec::with_capacity(file.chunks.len());
            for (h, size, offset, len, packed) in file.chunks {
                let (Some(hash), Some(packed_hash)) = (unhex(&h), unhex(&packed)) else {
                    break;
                };
                index.map.entry((hash, size)).or_insert(ChunkLocation {
                    blob: blob.clone(),
                    offset,
                    len,
                    packed_hash,
                });
                chunks.push(ChunkEntry {
                    hash,
                    size,
                    offset,
                    len,
                    packed_hash,
                    resume: None,
                });
            }
            // Resume points only where the chunks before them are all known and
            // contiguous from the blob's start.
            let contiguous = chunks
                .iter()
                .scan(0u64, |end, c| {
                    let ok = c.offset == *end;
                    *end = c.offset.saturating_add(c.len);
                    Some(ok)
                })
                .take_while(|ok| *ok)
                .count();
            for (i, f, entries, tar, out) in file.resume {
                let point = (|| {
                    Some(ChunkResume {
                        fingerprint: unhex(&f)?,
                        entries,
                        tar_state: unhex_vec(&tar)?,
                        out_state: unhex_vec(&out)?,
                    })
                })();
                let Some(point) = point.filter(|_| i < contiguous) else {
                    continue;
                };
                index
                    .resumes
                    .entry(point.fingerprint)
                    .or_insert((blob.clone(), i));
                chunks[i].resume = Some(point);
            }
            index.blobs.insert(blob, Arc::new(chunks));
        }
        Ok(index)
    }

    /// The compressed bytes at `loc`, or `None` if its blob is gone, too short or
    /// does not hold the bytes recorded there (a stale or damaged entry: a miss).
    pub fn read_chunk(&self, loc: &ChunkLocation) -> Option<Vec<u8>> {
        let blob = self.open_blob(&loc.blob).ok()?;
        let mut buf = Vec::new();
        read_checked(&blob, loc.offset, loc.len, &loc.packed_hash, &mut buf).then_some(buf)
    }

    /// Hands the compressed bytes of `chunks`, the head of blob `blob` from its start
    /// on (as [`ChunkIndex::resume`] gives them), to `out` with their offset in the
    /// blob, each chunk checked against its recorded hash first. A blob that does not
    /// hold them loses its index files (the next build compresses again) and is an
    /// error.
    pub fn copy_chunks(
        &self,
        blob: &Digest,
        chunks: &[ChunkEntry],
        out: &mut dyn FnMut(&[u8], u64) -> io::Result<()>,
    ) -> io::Result<()> {
        let reader = self
            .open_blob(blob)
            .map_err(|e| io::Error::new(io::ErrorKind::NotFound, e.to_string()))?;
        let mut buf = Vec::new();
        let mut pos = 0u64;
        for c in chunks {
            let good =
                c.offset == pos && read_checked(&reader, c.offset, c.len, &c.packed_hash, &mut buf);
            if !good {
                self.forget_chunks(blob);
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "blob {blob} does not hold the chunk recorded at offset {} \
                         (its chunk index entries are dropped)",
                        c.offset
                    ),
                ));
            }
            out(&buf, c.offset)?;
            pos += c.len;
        }
        Ok(())
    }

    /// Removes the index files of blob `blob` (every codec). Best effort.
    pub(crate) fn forget_chunks(&self, blob: &Digest) {
        let Ok(codecs) = fs::read_dir(self.chunks_dir()) else {
            return;
        };
        for codec in codecs.flatten() {
            let _ = fs::remove_file(codec.path().join(format!("{}.json", blob.hex())));
        }
    }

    /// Removes the index files whose blob is no longer stored (after a collection) and
    /// any other file in `chunks/` that is not an index file. Returns how many went.
    pub fn prune_chunk_index(&self) -> Result<u64> {
        let root = self.chunks_dir();
        let codecs = match fs::read_dir(&root) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(CacheError::io("read directory", &root, e)),
        };
        let mut removed = 0;
        for codec in codecs.flatten() {
            let Ok(files) = fs::read_dir(codec.path()) else {
                continue;
            };
            for f in files.flatten() {
                let name = f.file_name();
                let live = name
                    .to_str()
                    .and_then(|n| n.strip_suffix(".json"))
                    .and_then(|hex| Digest::parse(&format!("sha256:{hex}")).ok())
                    .is_some_and(|d| self.has_blob(&d));
                if !live {
                    match fs::remove_file(f.path()) {
                        Ok(()) => removed += 1,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(CacheError::io("remove", f.path(), e)),
                    }
                }
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry for `bytes[offset..offset + len]`.
    fn entry(n: u8, bytes: &[u8], offset: u64, len: u64) -> ChunkEntry {
        let packed = &bytes[offset as usize..(offset + len) as usize];
        ChunkEntry {
            hash: [n; 32],
            size: 1000 + u64::from(n),
            offset,
            len,
            packed_hash: *blake3::hash(packed).as_bytes(),
            resume: None,
        }
    }

    #[test]
    fn resume_points_are_kept_found_and_their_heads_copied_checked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let bytes = b"aaaabbbbbbcc";
        let blob = store.put_blob(bytes).unwrap();
        let point = |n: u8| ChunkResume {
            fingerprint: [n; 32],
            entries: u64::from(n),
            tar_state: vec![n; 105],
            out_state: vec![n + 1; 105],
        };
        let mut chunks = vec![
            entry(1, bytes, 0, 4),
            entry(2, bytes, 4, 6),
            entry(3, bytes, 10, 2),
        ];
        chunks[1].resume = Some(point(9));
        store.record_chunks("gzip-6-c1", &blob, &chunks).unwrap();
        let index = store.chunk_index("gzip-6-c1").unwrap();
        assert!(index.has_resume_points());
        assert!(index.resume(&[1; 32]).is_none());
        let (found, head) = index.resume(&[9; 32]).unwrap();
        assert_eq!(found, &blob);
        assert_eq!(head, &chunks[..2]);
        let mut out = Vec::new();
        let mut offsets = Vec::new();
        store
            .copy_chunks(&blob, head, &mut |b, o| {
                out.extend_from_slice(b);
                offsets.push(o);
                Ok(())
            })
            .unwrap();
        assert_eq!(out, b"aaaabbbbbb");
        assert_eq!(offsets, [0, 4]);

        // A damaged blob: an error, and its index entries go.
        let damaged = [entry(1, bytes, 0, 4), entry(2, b"aaaaBBBBBBcc", 4, 6)];
        let err = store
            .copy_chunks(&blob, &damaged, &mut |_, _| Ok(()))
            .unwrap_err();
        assert!(err.to_string().contains("offset 4"), "{err}");
        assert!(!store.chunk_index("gzip-6-c1").unwrap().has_resume_points());

        // A file of an older kiln (no resume points) still reads.
        let old = store.put_blob(b"older").unwrap();
        let path = store.chunk_file("gzip-6-c1", &old);
        let h = hex(blake3::hash(b"older").as_bytes());
        let text = format!(
            r#"{{"blob":"{old}","codec":"gzip-6-c1","chunks":[["{}",5,0,5,"{h}"]]}}"#,
            hex(&[4; 32])
        );
        fs::write(path, text).unwrap();
        let index = store.chunk_index("gzip-6-c1").unwrap();
        assert!(index.get(&[4; 32], 5).is_some());
        assert!(!index.has_resume_points());
    }

    #[test]
    fn chunks_of_stored_blobs_are_found_and_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let blob = store.put_blob(b"aaaabbbbbbcc").unwrap();
        store
            .record_chunks(
                "gzip-6-c1",
                &blob,
                &[
                    entry(1, b"aaaabbbbbbcc", 0, 4),
                    entry(2, b"aaaabbbbbbcc", 4, 6),
                    entry(3, b"aaaabbbbbbcc", 10, 2),
                ],
            )
            .unwrap();
        let index = store.chunk_index("gzip-6-c1").unwrap();
        assert_eq!(index.len(), 3);
        let loc = index.get(&[2; 32], 1002).unwrap();
        assert_eq!(store.read_chunk(loc).unwrap(), b"bbbbbb");
        // Another size, another codec: misses.
        assert!(index.get(&[2; 32], 1003).is_none());
        assert!(store.chunk_index("zstd-3-c1").unwrap().is_empty());
        // A location past the blob's end is a miss, not an error.
        let past = ChunkLocation {
            offset: 10,
            len: 5,
            ..loc.clone()
        };
        assert!(store.read_chunk(&past).is_none());
        // Bytes that are not the ones recorded (a damaged blob): a miss too.
        let other = ChunkLocation {
            offset: 0,
            len: 6,
            ..loc.clone()
        };
        assert!(store.read_chunk(&other).is_none());
        assert!(store.record_chunks("../x", &blob, &[]).is_err());
    }

    #[test]
    fn the_index_keeps_no_blob_and_forgets_deleted_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = store.put_blob(b"first blob").unwrap();
        let b = store.put_blob(b"second blob").unwrap();
        store
            .record_chunks("zstd-3-c1", &a, &[entry(1, b"first blob", 0, 5)])
            .unwrap();
        store
            .record_chunks("zstd-3-c1", &b, &[entry(2, b"second blob", 0, 6)])
            .unwrap();
        let loc = store
            .chunk_index("zstd-3-c1")
            .unwrap()
            .get(&[2; 32], 1002)
            .cloned()
            .unwrap();
        // The collector removes a blob behind the index's back: a stale entry is a
        // miss, and the next load leaves it out.
        fs::remove_file(store.blob_path(&b)).unwrap();
        assert!(store.read_chunk(&loc).is_none());
        let index = store.chunk_index("zstd-3-c1").unwrap();
        assert!(index.get(&[2; 32], 1002).is_none());
        assert!(index.get(&[1; 32], 1001).is_some());
        assert_eq!(store.prune_chunk_index().unwrap(), 1);
        assert!(!store.chunk_file("zstd-3-c1", &b).exists());
        // delete_blob drops the blob's index files with it.
        assert!(store.delete_blob(&a).unwrap());
        assert!(!store.chunk_file("zstd-3-c1", &a).exists());
        assert_eq!(store.prune_chunk_index().unwrap(), 0);
        // Counted by du, in its own area.
        store
            .record_chunks("zstd-3-c1", &store.put_blob(b"x").unwrap(), &[])
            .unwrap();
        let du = store.disk_usage().unwrap();
        assert_eq!(du.chunks.files, 1);
        assert!(du.chunks.bytes > 0);
    }
}
