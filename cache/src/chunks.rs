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
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{CacheError, IoContext, Result};
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
}

impl ChunkIndex {
    /// Where the chunk with `hash` and `size` uncompressed bytes is, if recorded.
    pub fn get(&self, hash: &ChunkHash, size: u64) -> Option<&ChunkLocation> {
        self.map.get(&(*hash, size))
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
}

fn hex(hash: &ChunkHash) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<ChunkHash> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
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
            for (h, size, offset, len, packed) in file.chunks {
                let (Some(hash), Some(packed_hash)) = (unhex(&h), unhex(&packed)) else {
                    continue;
                };
                index.map.entry((hash, size)).or_insert(ChunkLocation {
                    blob: blob.clone(),
                    offset,
                    len,
                    packed_hash,
                });
            }
        }
        Ok(index)
    }

    /// The compressed bytes at `loc`, or `None` if its blob is gone, too short or
    /// does not hold the bytes recorded there (a stale or damaged entry: a miss).
    pub fn read_chunk(&self, loc: &ChunkLocation) -> Option<Vec<u8>> {
        let file = fs::File::open(self.blob_path(&loc.blob)).ok()?;
        let end = loc.offset.checked_add(loc.len)?;
        if file.metadata().ok()?.len() < end {
            return None;
        }
        let mut buf = Vec::with_capacity(usize::try_from(loc.len).ok()?);
        (&file).seek(SeekFrom::Start(loc.offset)).ok()?;
        (&file).take(loc.len).read_to_end(&mut buf).ok()?;
        if buf.len() as u64 != loc.len {
            return None;
        }
        // A damaged blob must not spread into new ones: the bytes are checked.
        (blake3::hash(&buf).as_bytes() == &loc.packed_hash).then_some(buf)
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
        }
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
