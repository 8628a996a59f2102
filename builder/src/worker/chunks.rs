//! The store's chunk index as the layer writer's [`ChunkCache`]: a rebuild copies the
//! compressed chunks an earlier blob already holds instead of compressing them again.

use std::collections::HashMap;
use std::sync::Mutex;

use std::io::{self, Write};

use kiln_cache::{BlobWriter, ChunkEntry, ChunkIndex, ChunkResume, Digest, Store};
use kiln_layer::{
    BlobSink, CachedChunk, ChunkCache, ChunkInfo, ChunkKey, ChunkOrigin, Fingerprint, Resume,
    ResumePoint,
};

/// Chunks of the blobs stored when the build started, per codec (each codec's index
/// is read on first use), and of those the build wrote since ([`ChunkCache::learn`]).
pub(super) struct StoreChunks {
    store: Store,
    indexes: Mutex<HashMap<String, ChunkIndex>>,
}

impl StoreChunks {
    pub(super) fn new(store: &Store) -> Self {
        StoreChunks {
            store: store.clone(),
            indexes: Mutex::default(),
        }
    }

    /// Runs `f` on the index of `codec`, read first if it was not.
    fn with_index<T>(&self, codec: &str, f: impl FnOnce(&mut ChunkIndex) -> T) -> T {
        let mut indexes = self.indexes.lock().unwrap_or_else(|e| e.into_inner());
        let index = indexes
            .entry(codec.to_owned())
            // An index that cannot be read is an empty one: every chunk is compressed.
            .or_insert_with(|| self.store.chunk_index(codec).unwrap_or_default());
        f(index)
    }
}

impl ChunkCache for StoreChunks {
    fn find(&self, codec: &str, key: &ChunkKey, uncompressed_len: u64) -> Option<CachedChunk> {
        let loc = self.with_index(codec, |i| i.get(key, uncompressed_len).cloned())?;
        // A blob collected since the index was read is a miss; `read_chunk` checks
        // the bytes against `packed_hash`.
        let bytes = self.store.read_chunk(&loc)?;
        Some(CachedChunk {
            bytes,
            packed_key: loc.packed_hash,
            origin: Some(ChunkOrigin {
                source: loc.blob.to_string(),
                offset: loc.offset,
            }),
        })
    }

    fn learn(&self, codec: &str, source: &str, chunks: &[ChunkInfo]) {
        if let Ok(blob) = Digest::parse(source) {
            self.with_index(codec, |i| i.learn(&blob, &entries(chunks)));
        }
    }

    fn can_resume(&self, codec: &str) -> bool {
        self.with_index(codec, |i| i.has_resume_points())
    }

    fn resume(&self, codec: &str, fingerprint: &Fingerprint) -> Option<Resume> {
        let (blob, chunks) = self.with_index(codec, |i| {
            let (blob, head) = i.resume(fingerprint)?;
            Some((blob.clone(), head.iter().map(info).collect()))
        })?;
        // A blob collected since the index was read cannot be resumed from.
        if !self.store.has_blob(&blob) {
            return None;
        }
        Some(Resume {
            source: blob.to_string(),
            chunks,
        })
    }

    fn copy_head(&self, resume: &Resume, out: &mut dyn BlobSink) -> io::Result<()> {
        let blob = Digest::parse(&resume.source)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        self.store
            .copy_chunks(&blob, &entries(&resume.chunks), &mut |bytes, offset| {
                let origin = ChunkOrigin {
                    source: resume.source.clone(),
                    offset,
                };
                out.append_found(bytes, &origin)
            })
    }
}

/// A store blob writer as the layer writer's sink: chunks found in stored blobs are
/// referenced where they are ([`BlobWriter::append_stored`]).
pub(super) struct StoreSink<'a>(pub(super) &'a mut BlobWriter);

impl Write for StoreSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl BlobSink for StoreSink<'_> {
    fn append_found(&mut self, bytes: &[u8], origin: &ChunkOrigin) -> io::Result<()> {
        match Digest::parse(&origin.source) {
            Ok(d) => self.0.append_stored(&d, origin.offset, bytes),
            Err(_) => self.0.write_all(bytes),
        }
    }
}

/// A recorded chunk as the layer writer knows it.
fn info(c: &ChunkEntry) -> ChunkInfo {
    ChunkInfo {
        key: c.hash,
        offset: c.offset,
        len: c.len,
        uncompressed_len: c.size,
        packed_key: c.packed_hash,
        reused: true,
        resume: c.resume.as_ref().map(|r| ResumePoint {
            fingerprint: r.fingerprint,
            entries: r.entries,
            tar_state: r.tar_state.clone(),
            out_state: r.out_state.clone(),
        }),
    }
}

/// What the store records of a blob's chunks.
pub(super) fn entries(chunks: &[ChunkInfo]) -> Vec<ChunkEntry> {
    chunks
        .iter()
        .map(|c| ChunkEntry {
            hash: c.key,
            size: c.uncompressed_len,
            offset: c.offset,
            len: c.len,
            packed_hash: c.packed_key,
            resume: c.resume.as_ref().map(|r| ChunkResume {
                fingerprint: r.fingerprint,
                entries: r.entries,
                tar_state: r.tar_state.clone(),
                out_state: r.out_state.clone(),
            }),
        })
        .collect()
}
