//! Chunked layers: the tar stream cut into chunks chosen from its content alone, each
//! compressed on its own (a gzip member, a zstd frame), so that a rebuild after a small
//! edit can copy the compressed bytes of every unchanged chunk from an earlier blob.
//!
//! The blob is the concatenation of the compressed chunks: a valid multi-member gzip
//! or multi-frame zstd stream whose uncompressed bytes are exactly the tar, so the
//! diff_id does not depend on the chunking. Where the cuts fall:
//!
//! - After an entry, when the chunk holds at least [`CHUNK_MIN`] bytes and a hash of the
//!   entry's name has its low bits zero (one name in [`CUT_ODDS`]), or when it holds
//!   [`CHUNK_MAX`] bytes or more. Names, not positions, decide: an edited file changes
//!   its own chunk, and the cuts after it fall where they fell before.
//! - Around a file of [`BIG_FILE`] bytes or more: it starts a chunk, is split every
//!   [`BIG_SPLIT`] bytes from its header on, and its last piece ends a chunk.
//!
//! A layer that makes one chunk (under [`CHUNK_MIN`] of tar and no big file) is
//! compressed exactly as an unchunked stream would be. Chunks are compressed in
//! parallel on the rayon pool and written in order; every chunk's compressed bytes
//! depend only on its uncompressed bytes and the [`Compression`], never on the number
//! of threads or on whether they came from a [`ChunkCache`].

use std::io::{self, Write};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;

use kiln_oci::Digest;
use kiln_oci::digest::Hashing;

use super::compression::{Compression, gzip_member};

/// A chunk ends after the entry that brings it to this size if the entry's name
/// hash allows it.
pub const CHUNK_MIN: u64 = 1 << 20;
/// A chunk ends after the entry that brings it to this size, whatever its name.
pub const CHUNK_MAX: u64 = 8 << 20;
/// Files at least this big get chunks of their own.
pub const BIG_FILE: u64 = 4 << 20;
/// Pieces of a big file's entry (header included) are this big, the last one aside.
pub const BIG_SPLIT: u64 = 4 << 20;
/// One entry name in this many ends a chunk (past [`CHUNK_MIN`]).
pub const CUT_ODDS: u64 = 256;
/// Uncompressed bytes gathered before a batch of chunks is compressed in parallel.
const BATCH_BYTES: u64 = 16 << 20;
/// Bytes of chunk buffers kept between layers at most ([`SPARE_BUFFERS`]).
const SPARE_BYTES: usize = 64 << 20;
/// Version of the chunking and per-chunk encoding. Part of [`chunk_codec`]: a kiln
/// that cuts or compresses chunks differently must not reuse an older one's chunks.
const CHUNK_FORMAT: u32 = 1;

/// The identity of a chunk: the BLAKE3 hash of its uncompressed bytes.
pub type ChunkKey = [u8; 32];

/// Compressed chunks of earlier blobs, by key. The builder implements it over the
/// store's chunk index.
pub trait ChunkCache: Send + Sync {
    /// The compressed bytes of a chunk of `uncompressed_len` bytes whose key is `key`,
    /// compressed as `codec` says ([`chunk_codec`]), if some stored blob still holds
    /// them, checked against the BLAKE3 of the compressed bytes recorded with them. Any
    /// failure (blob gone, short read, other bytes) is a miss: `None`.
    fn find(&self, codec: &str, key: &ChunkKey, uncompressed_len: u64) -> Option<CachedChunk>;

    /// Learns the chunks of a blob just stored as `source` (the name [`ChunkOrigin`]
    /// gives it), so that the next layers can reuse them: a `COPY --from` of a big file
    /// a stage of the same build made. Does nothing by default.
    fn learn(&self, _codec: &str, _source: &str, _chunks: &[ChunkInfo]) {}

    /// Whether [`ChunkCache::resume`] may find anything for `codec` (when not, a layer
    /// writer does not stat its entries' sources to fingerprint them for a lookup).
    fn can_resume(&self, _codec: &str) -> bool {
        false
    }

    /// The head of a stored blob compressed as `codec` that ends with the resume point
    /// `fingerprint`, if any.
    fn resume(&self, _codec: &str, _fingerprint: &Fingerprint) -> Option<Resume> {
        None
    }

    /// Appends the compressed bytes of `resume`'s chunks to `out`, each one checked
    /// against its `packed_key` first.
    fn copy_head(&self, resume: &Resume, _out: &mut dyn BlobSink) -> io::Result<()> {
        Err(io::Error::other(format!(
            "this chunk cache cannot copy the head of {}",
            resume.source
        )))
    }
}

/// A rolling fingerprint of a layer's entries: of everything that decides the tar
/// bytes of the entries so far (names, metadata, the identity and stat of the files
/// their bytes come from) and of the options. Equal fingerprints, equal tar.
pub type Fingerprint = [u8; 32];

/// Where writing a layer can resume: at the end of a chunk that ended exactly after
/// an entry. A later layer whose entries have the same fingerprint up to that entry
/// has the same tar and blob up to there: it copies the earlier blob's compressed
/// bytes and carries on from the saved hash states, without reading or hashing the
/// head again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumePoint {
    /// The fingerprint of the entries up to the chunk's end.
    pub fingerprint: Fingerprint,
    /// Tar entries written up to there.
    pub entries: u64,
    /// The sha256 state of the tar up to there (see `Hashing::state`).
    pub tar_state: Vec<u8>,
    /// The sha256 state of the blob up to there.
    pub out_state: Vec<u8>,
}

/// The head of an earlier blob that a layer can resume from: its chunks from the
/// start up to one with a [`ResumePoint`], which is the last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// Which blob the chunks are in, in the cache's terms.
    pub source: String,
    /// The chunks, in order, starting at offset 0.
    pub chunks: Vec<ChunkInfo>,
}

impl Resume {
    /// The resume point at the end of the head.
    pub fn point(&self) -> Option<&ResumePoint> {
        self.chunks.last()?.resume.as_ref()
    }
}

/// A chunk's compressed bytes as a [`ChunkCache`] found them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedChunk {
    /// The compressed bytes.
    pub bytes: Vec<u8>,
    /// Their BLAKE3 hash (already checked by the cache: not computed again).
    pub packed_key: ChunkKey,
    /// Where they are stored, for a [`BlobSink`] that can reference them there.
    pub origin: Option<ChunkOrigin>,
}

/// Where compressed bytes a [`ChunkCache`] found are stored, in the cache's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkOrigin {
    /// The blob holding them.
    pub source: String,
    /// Their offset in it.
    pub offset: u64,
}

/// Where a layer blob is written: a byte stream that may also take bytes a
/// [`ChunkCache`] found by reference to where they are stored, instead of a copy
/// (the store keeps a blob that repeats most of an earlier one as ranges of it).
pub trait BlobSink: Write {
    /// Appends `bytes`, which are stored at `origin` already. The default writes them.
    fn append_found(&mut self, bytes: &[u8], origin: &ChunkOrigin) -> io::Result<()> {
        let _ = origin;
        self.write_all(bytes)
    }
}

impl BlobSink for Vec<u8> {}
impl BlobSink for std::fs::File {}
impl BlobSink for io::Sink {}
impl<W: Write> BlobSink for io::BufWriter<W> {}

impl<S: BlobSink + ?Sized> BlobSink for &mut S {
    fn append_found(&mut self, bytes: &[u8], origin: &ChunkOrigin) -> io::Result<()> {
        (**self).append_found(bytes, origin)
    }
}

impl<S: BlobSink + ?Sized> BlobSink for Box<S> {
    fn append_found(&mut self, bytes: &[u8], origin: &ChunkOrigin) -> io::Result<()> {
        (**self).append_found(bytes, origin)
    }
}

/// One chunk of a written layer blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkInfo {
    /// BLAKE3 of the chunk's uncompressed bytes.
    pub key: ChunkKey,
    /// Where its compressed bytes start in the blob.
    pub offset: u64,
    /// Length of its compressed bytes.
    pub len: u64,
    /// Length of its uncompressed bytes (a slice of the tar).
    pub uncompressed_len: u64,
    /// BLAKE3 of its compressed bytes (for a cache to check them when it reads
    /// them back).
    pub packed_key: ChunkKey,
    /// Whether its compressed bytes came from a [`ChunkCache`].
    pub reused: bool,
    /// Where a later layer can resume after this chunk, when it ended right after an
    /// entry whose fingerprint the writer knew.
    pub resume: Option<ResumePoint>,
}

/// The name chunks compressed as `compression` are remembered under: the algorithm,
/// the level and [`CHUNK_FORMAT`] (`gzip-6-c1`). `None` for an uncompressed layer,
/// which is not chunked.
pub fn chunk_codec(compression: Compression) -> Option<String> {
    match compression {
        Compression::Gzip { level } => Some(format!("gzip-{level}-c{CHUNK_FORMAT}")),
        Compression::Zstd { level } => Some(format!("zstd-{level}-c{CHUNK_FORMAT}")),
        Compression::Uncompressed => None,
    }
}

/// Compresses one chunk on its own: one gzip member (the same bytes as the unchunked
/// parallel gzip writer gives for this input) or one zstd frame with a checksum.
pub(super) fn compress_chunk(compression: Compression, data: &[u8]) -> io::Result<Vec<u8>> {
    match compression {
        Compression::Gzip { level } => gzip_member(level, data),
        Compression::Zstd { level } => {
            let mut enc = zstd::stream::write::Encoder::new(Vec::new(), level)?;
            enc.include_checksum(true)?;
            // One worker: zstd's multi-threaded output is the same for any worker count
            // >= 1, and the chunks themselves run in parallel.
            enc.multithread(1)?;
            enc.write_all(data)?;
            enc.finish()
        }
        Compression::Uncompressed => Ok(data.to_vec()),
    }
}

/// Whether a chunk may end after the entry named `name`: its hash is one in
/// [`CUT_ODDS`].
fn name_allows_cut(name: &[u8]) -> bool {
    let h = blake3::hash(name);
    let mut low = [0u8; 8];
    low.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_le_bytes(low) % CUT_ODDS == 0
}

/// Chunk buffers of the layers written so far, for the next layers' chunks (up to
/// [`SPARE_BYTES`] of them). A new buffer costs a page fault each 4 KiB as it fills and
/// a copy each time it grows: on a cold build of a few small layers that was a third of
/// the layer writer's time. Empty, with the capacity they grew to.
static SPARE_BUFFERS: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// A chunk buffer: a spare one or a new one that holds most chunks without growing
/// (capacity untouched costs no memory).
fn chunk_buffer() -> Vec<u8> {
    let spare = SPARE_BUFFERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .pop();
    spare.unwrap_or_else(|| Vec::with_capacity(CHUNK_MAX as usize))
}

/// Keeps `buffers` for later layers, as far as [`SPARE_BYTES`] allows.
fn keep_buffers(buffers: impl IntoIterator<Item = Vec<u8>>) {
    let mut spare = SPARE_BUFFERS.lock().unwrap_or_else(|e| e.into_inner());
    let mut kept: usize = spare.iter().map(Vec::capacity).sum();
    for mut b in buffers {
        if b.capacity() == 0 || kept + b.capacity() > SPARE_BYTES {
            continue;
        }
        b.clear();
        kept += b.capacity();
        spare.push(b);
    }
}

/// One chunk ready to be written: compressed, or found in the cache.
struct Packed {
    key: ChunkKey,
    /// Shared with the thread that hashes the blob.
    bytes: Arc<Vec<u8>>,
    reused: bool,
    packed_key: ChunkKey,
    origin: Option<ChunkOrigin>,
}

/// A hash of the layer so far: of the tar (its diff_id) or of the blob (its digest).
/// Both live in the thread that packs the batches (from its start to the layer's end),
/// so that hashing overlaps with producing the next batches and writing earlier ones.
type StreamHash = Hashing<io::Sink>;

/// The tar's and the blob's hashes, as far as the batches written.
struct Hashes {
    tar: StreamHash,
    blob: StreamHash,
}

impl Hashes {
    fn new() -> Self {
        Hashes {
            tar: Hashing::new(io::sink()),
            blob: Hashing::new(io::sink()),
        }
    }
}

/// What the writer knows at the end of an entry: its fingerprint and the number of
/// tar entries so far. A chunk that ends there keeps it as a resume point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Mark {
    pub(super) fingerprint: Fingerprint,
    pub(super) entries: u64,
}

/// A batch of chunks handed to the packing thread, with the mark each one ends at.
struct Job {
    chunks: Vec<Vec<u8>>,
    marks: Vec<Option<Mark>>,
}

/// A packed batch: the chunks' buffers (for reuse), each chunk's compressed bytes, and
/// the tar's hash state after each marked chunk.
struct Done {
    chunks: Vec<Vec<u8>>,
    marks: Vec<Option<Mark>>,
    tar_states: Vec<Option<Vec<u8>>>,
    packed: Vec<Packed>,
}

/// The blob's hash state after each marked chunk of a batch.
type BlobStates = Vec<Option<Vec<u8>>>;

/// What hashing a packed batch into the blob's digest takes: each chunk's compressed
/// bytes (shared) and whether a state is kept after it.
struct ToDigest {
    bytes: Vec<Arc<Vec<u8>>>,
    marked: Vec<bool>,
}

impl Done {
    fn to_digest(&self) -> ToDigest {
        ToDigest {
            bytes: self.packed.iter().map(|p| p.bytes.clone()).collect(),
            marked: self.marks.iter().map(Option::is_some).collect(),
        }
    }
}

/// Hashes a packed batch into the blob's digest, in order.
fn hash_blob(blob: &mut StreamHash, batch: &ToDigest) -> io::Result<BlobStates> {
    let mut states = Vec::with_capacity(batch.bytes.len());
    for (b, marked) in batch.bytes.iter().zip(&batch.marked) {
        blob.write_all(b)?;
        states.push(marked.then(|| blob.state()));
    }
    Ok(states)
}

/// Batches handed to the packing thread and not yet written: while the thread hashes
/// the big files at a layer's start, the writer goes on reading the small ones.
const MAX_IN_FLIGHT: usize = 2;

/// What a batch is packed with.
#[derive(Clone)]
struct Packer {
    compression: Compression,
    codec: Arc<str>,
    cache: Option<Arc<dyn ChunkCache>>,
}

impl Packer {
    /// Hashes the batch into the diff_id and, at the same time, finds or compresses its
    /// chunks in parallel on the rayon pool.
    fn pack(&self, job: Job, tar: &mut StreamHash) -> io::Result<Done> {
        use rayon::prelude::*;
        let Job { chunks, marks } = job;
        // The chunks are packed on the rayon pool while this thread hashes the tar:
        // not both on the pool, where the step writing the layer holds a worker (the
        // solver runs steps there) and would leave the two to take turns.
        let (tar_states, packed) = thread::scope(|scope| {
            let packing = scope.spawn(|| {
                chunks
                    .par_iter()
                    .map(|data| self.pack_one(data))
                    .collect::<io::Result<Vec<_>>>()
            });
            let hashed = (|| -> io::Result<_> {
                let mut states = Vec::with_capacity(chunks.len());
                for (c, mark) in chunks.iter().zip(&marks) {
                    tar.write_all(c)?;
                    states.push(mark.is_some().then(|| tar.state()));
                }
                Ok(states)
            })();
            let packed = packing
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("a chunk packing thread panicked")));
            (hashed, packed)
        });
        Ok(Done {
            chunks,
            marks,
            tar_states: tar_states?,
            packed: packed?,
        })
    }

    fn pack_one(&self, data: &[u8]) -> io::Result<Packed> {
        let key = *blake3::hash(data).as_bytes();
        let found = self
            .cache
            .as_deref()
            .and_then(|c| c.find(&self.codec, &key, data.len() as u64));
        Ok(match found {
            Some(CachedChunk {
                bytes,
                packed_key,
                origin,
            }) => Packed {
                key,
                bytes: Arc::new(bytes),
                reused: true,
                packed_key,
                origin,
            },
            None => {
                let bytes = compress_chunk(self.compression, data)?;
                let packed_key = *blake3::hash(&bytes).as_bytes();
                Packed {
                    key,
                    bytes: Arc::new(bytes),
                    reused: false,
                    packed_key,
                    origin: None,
                }
            }
        })
    }
}

/// The thread that packs batches while the tar of the next one is produced (started
/// for a layer of more than one batch).
struct PackThread {
    jobs: mpsc::SyncSender<Job>,
    done: mpsc::Receiver<io::Result<Done>>,
    /// The blob's states of each batch, from the thread hashing it (`kiln-digest`):
    /// the blob's sha256 runs beside the tar's, batch after batch.
    blob_states: mpsc::Receiver<io::Result<BlobStates>>,
    /// Gives the hashes back when the jobs end.
    handle: thread::JoinHandle<io::Result<Hashes>>,
}

impl PackThread {
    fn start(packer: Packer, hashes: Hashes) -> io::Result<Self> {
        let Hashes { mut tar, mut blob } = hashes;
        let (jobs, job_rx) = mpsc::sync_channel::<Job>(MAX_IN_FLIGHT);
        let (done_tx, done) = mpsc::sync_channel::<io::Result<Done>>(MAX_IN_FLIGHT);
        let (packed_tx, packed_rx) = mpsc::sync_channel::<ToDigest>(MAX_IN_FLIGHT);
        let (states_tx, blob_states) = mpsc::sync_channel(MAX_IN_FLIGHT);
        let digest = thread::Builder::new()
            .name("kiln-digest".into())
            .spawn(move || {
                for batch in packed_rx {
                    if states_tx.send(hash_blob(&mut blob, &batch)).is_err() {
                        break;
                    }
                }
                blob
            })?;
        let handle = thread::Builder::new()
            .name("kiln-chunks".into())
            .spawn(move || {
                for job in job_rx {
                    let done = packer.pack(job, &mut tar);
                    if let Ok(d) = &done {
                        if packed_tx.send(d.to_digest()).is_err() {
                            break;
                        }
                    }
                    if done_tx.send(done).is_err() {
                        break;
                    }
                }
                drop(packed_tx);
                let blob = digest.join().map_err(|_| pack_thread_gone())?;
                Ok(Hashes { tar, blob })
            })?;
        Ok(PackThread {
            jobs,
            done,
            blob_states,
            handle,
        })
    }
}

fn pack_thread_gone() -> io::Error {
    io::Error::other("the layer's chunk packing thread stopped")
}

/// A writer of the tar stream that cuts it into chunks (told of entry boundaries by
/// [`Chunker::begin_entry`] and [`Chunker::end_entry`]), hashes it for the diff_id and
/// writes each compressed chunk, or the same bytes from the cache, to `out`.
///
/// Batches of chunks are packed on another thread (and the rayon pool) while the
/// caller produces the next ones; at most [`MAX_IN_FLIGHT`] batches are in flight, and
/// results are written in order, so the output does not depend on the timing.
pub(super) struct Chunker<W: BlobSink> {
    out: W,
    packer: Packer,
    cur: Vec<u8>,
    /// The mark of the entry that just ended, until more bytes are written.
    mark: Option<Mark>,
    pending: Vec<Vec<u8>>,
    pending_marks: Vec<Option<Mark>>,
    pending_bytes: u64,
    /// In a big file's entry: the bytes of it written so far.
    big: Option<u64>,
    offset: u64,
    chunks: Vec<ChunkInfo>,
    /// The tar's and blob's hashes, until the packing thread starts (it keeps them to
    /// the end).
    hashes: Option<Hashes>,
    thread: Option<PackThread>,
    in_flight: usize,
    /// Buffers of written chunks, for the next ones.
    spare: Vec<Vec<u8>>,
}

impl<W: BlobSink> Chunker<W> {
    /// A chunker for a gzip or zstd layer (an uncompressed one is not chunked: its
    /// chunks would be plain copies, which the cache would not spare).
    pub(super) fn new(
        compression: Compression,
        cache: Option<Arc<dyn ChunkCache>>,
        out: W,
    ) -> Self {
        let codec = chunk_codec(compression).unwrap_or_else(|| "tar".to_owned());
        Chunker {
            out,
            packer: Packer {
                compression,
                codec: codec.into(),
                cache,
            },
            cur: chunk_buffer(),
            mark: None,
            pending: Vec::new(),
            pending_marks: Vec::new(),
            pending_bytes: 0,
            big: None,
            offset: 0,
            chunks: Vec::new(),
            hashes: Some(Hashes::new()),
            thread: None,
            in_flight: 0,
            spare: Vec::new(),
        }
    }

    /// An entry whose data is `size` bytes starts.
    pub(super) fn begin_entry(&mut self, size: u64) -> io::Result<()> {
        if size >= BIG_FILE {
            self.cut()?;
            self.big = Some(0);
        }
        Ok(())
    }

    /// The name its chunks are remembered under ([`chunk_codec`]).
    pub(super) fn codec(&self) -> &str {
        &self.packer.codec
    }

    /// Starts the layer with the head of an earlier blob (nothing may have been written
    /// yet): its compressed bytes are copied through `cache` (checked there) and the
    /// tar and blob hashes carry on from the saved states. Returns the number of tar
    /// entries in the head.
    pub(super) fn resume(&mut self, cache: &dyn ChunkCache, resume: Resume) -> io::Result<u64> {
        let bad = || {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "bad resume point in chunk cache",
            )
        };
        let point = resume.point().ok_or_else(bad)?.clone();
        let tar_len: u64 = resume.chunks.iter().map(|c| c.uncompressed_len).sum();
        let out_len = resume.chunks.last().map_or(0, |c| c.offset + c.len);
        let mut hashes = Hashes::new();
        if self.offset != 0
            || !self.cur.is_empty()
            || !hashes.tar.restore(&point.tar_state, tar_len)
            || !hashes.blob.restore(&point.out_state, out_len)
        {
            return Err(bad());
        }
        self.hashes = Some(hashes);
        // These bytes are already in the restored hashes.
        cache.copy_head(&resume, &mut self.out)?;
        self.offset = out_len;
        self.chunks = resume.chunks;
        for c in &mut self.chunks {
            c.reused = true;
        }
        Ok(point.entries)
    }

    /// The entry named `name` (its tar name) has been written, padding included;
    /// `mark` is its fingerprint, if the writer has one.
    pub(super) fn end_entry(&mut self, name: &[u8], mark: Option<Mark>) -> io::Result<()> {
        self.mark = mark;
        let len = self.cur.len() as u64;
        if self.big.take().is_some()
            || len >= CHUNK_MAX
            || (len >= CHUNK_MIN && name_allows_cut(name))
        {
            self.cut()?;
        }
        Ok(())
    }

    /// Ends the current chunk (if it has any bytes).
    fn cut(&mut self) -> io::Result<()> {
        if self.cur.is_empty() {
            return Ok(());
        }
        let next = self.spare.pop().unwrap_or_else(chunk_buffer);
        let chunk = std::mem::replace(&mut self.cur, next);
        self.pending_bytes += chunk.len() as u64;
        self.pending.push(chunk);
        self.pending_marks.push(self.mark.take());
        if self.pending_bytes >= BATCH_BYTES {
            self.submit()?;
        }
        Ok(())
    }

    /// Hands the pending chunks to the packing thread, after writing the oldest batch
    /// in flight if there are [`MAX_IN_FLIGHT`] of them.
    fn submit(&mut self) -> io::Result<()> {
        while self.in_flight >= MAX_IN_FLIGHT {
            self.collect_one()?;
        }
        if self.thread.is_none() {
            let hashes = self.hashes.take().ok_or_else(pack_thread_gone)?;
            self.thread = Some(PackThread::start(self.packer.clone(), hashes)?);
        }
        let job = self.take_job();
        let thread = self.thread.as_ref().ok_or_else(pack_thread_gone)?;
        thread.jobs.send(job).map_err(|_| pack_thread_gone())?;
        self.in_flight += 1;
        Ok(())
    }

    fn take_job(&mut self) -> Job {
        self.pending_bytes = 0;
        Job {
            chunks: std::mem::take(&mut self.pending),
            marks: std::mem::take(&mut self.pending_marks),
        }
    }

    /// Waits for the oldest batch in flight and writes it.
    fn collect_one(&mut self) -> io::Result<()> {
        let thread = self.thread.as_ref().ok_or_else(pack_thread_gone)?;
        let done = thread.done.recv().map_err(|_| pack_thread_gone())??;
        let blob_states = thread
            .blob_states
            .recv()
            .map_err(|_| pack_thread_gone())??;
        self.in_flight -= 1;
        self.write_done(done, blob_states)
    }

    /// Writes a packed batch in order and keeps its buffers.
    fn write_done(&mut self, done: Done, blob_states: BlobStates) -> io::Result<()> {
        let Done {
            chunks,
            marks,
            tar_states,
            packed,
        } = done;
        let states = tar_states
            .into_iter()
            .zip(blob_states)
            .map(|(t, b)| t.zip(b));
        let each = chunks.into_iter().zip(marks).zip(states).zip(packed);
        for (((mut data, mark), states), packed) in each {
            let Packed {
                key,
                bytes,
                reused,
                packed_key,
                origin,
            } = packed;
            match &origin {
                Some(o) => self.out.append_found(&bytes, o)?,
                None => self.out.write_all(&bytes)?,
            }
            let resume = mark
                .zip(states)
                .map(|(mark, (tar_state, out_state))| ResumePoint {
                    fingerprint: mark.fingerprint,
                    entries: mark.entries,
                    tar_state,
                    out_state,
                });
            self.chunks.push(ChunkInfo {
                key,
                offset: self.offset,
                len: bytes.len() as u64,
                uncompressed_len: data.len() as u64,
                packed_key,
                reused,
                resume,
            });
            self.offset += bytes.len() as u64;
            data.clear();
            self.spare.push(data);
        }
        Ok(())
    }

    /// Writes the last chunks and returns the output, the list of chunks, and the
    /// diff_id and size of the uncompressed tar.
    pub(super) fn finish(mut self) -> io::Result<Chunked<W>> {
        self.cut()?;
        if self.thread.is_some() {
            if !self.pending.is_empty() {
                self.submit()?;
            }
            while self.in_flight > 0 {
                self.collect_one()?;
            }
        } else if !self.pending.is_empty() {
            // The only batch of a small layer is packed here.
            let job = self.take_job();
            let mut hashes = self.hashes.take().ok_or_else(pack_thread_gone)?;
            let done = self.packer.pack(job, &mut hashes.tar)?;
            let blob_states = hash_blob(&mut hashes.blob, &done.to_digest())?;
            self.hashes = Some(hashes);
            self.write_done(done, blob_states)?;
        }
        if let Some(thread) = self.thread.take() {
            drop(thread.jobs);
            let hashes = thread.handle.join().map_err(|_| pack_thread_gone())??;
            self.hashes = Some(hashes);
        }
        let Hashes { tar, blob } = self.hashes.take().ok_or_else(pack_thread_gone)?;
        keep_buffers(
            std::mem::take(&mut self.spare)
                .into_iter()
                .chain([self.cur]),
        );
        let (_, diff_id, uncompressed_size) = tar.finish();
        let (_, digest, size) = blob.finish();
        Ok(Chunked {
            out: self.out,
            chunks: self.chunks,
            diff_id,
            uncompressed_size,
            digest,
            size,
        })
    }
}

/// What a [`Chunker`] wrote.
pub(super) struct Chunked<W> {
    /// The output.
    pub(super) out: W,
    /// The blob's digest and size.
    pub(super) digest: Digest,
    pub(super) size: u64,
    pub(super) chunks: Vec<ChunkInfo>,
    pub(super) diff_id: Digest,
    pub(super) uncompressed_size: u64,
}

impl<W: BlobSink> Write for Chunker<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = match self.big {
            Some(written) => {
                // Cut lazily at a split point, so that no chunk is empty.
                if written > 0 && written % BIG_SPLIT == 0 {
                    self.cut()?;
                }
                let room = BIG_SPLIT - written % BIG_SPLIT;
                let n = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
                self.big = Some(written + n as u64);
                n
            }
            None => buf.len(),
        };
        if n > 0 {
            self.mark = None;
        }
        self.cur.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
