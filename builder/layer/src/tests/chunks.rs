//! Chunked layers: where the cuts fall, that every chunk stands alone, that chunks from
//! a cache give the same bytes, and that the thread count changes nothing.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tempfile::tempdir;

use super::super::chunk::compress_chunk;
use super::super::compression::Encoder;
use super::super::{
    BIG_FILE, BIG_SPLIT, CHUNK_MAX, CachedChunk, ChunkCache, ChunkInfo, ChunkKey, Fingerprint,
    Resume, chunk_codec,
};
use super::*;
use kiln_oci::digest::sha256_digest;
use kiln_test_support::noise;

const CHUNKED: [Compression; 2] = [
    Compression::Gzip { level: 6 },
    Compression::Zstd { level: 3 },
];

/// A context like the anchors' bigcopy, scaled down: 3,000 small text files in 30
/// directories (about 6 MiB of tar), a 9 MiB random file and a 6 MiB file of zeros.
fn build_big_tree(dir: &Path) {
    for d in 0..30 {
        for f in 0..100 {
            let data = pseudo_random(500 + (d * 7 + f * 13) % 8 * 400, (d * 100 + f) as u64);
            write_file(&dir.join(format!("small/d{d:03}/f{f:03}.txt")), &data);
        }
    }
    write_file(&dir.join("big/blob.bin"), &noise(7, 9 << 20));
    write_file(&dir.join("big/zeros.bin"), &vec![0u8; 6 << 20]);
    set_all_mtimes(dir, 1_700_000_000);
}

/// A [`ChunkCache`] in memory, filled from written blobs.
#[derive(Default)]
struct MemCache {
    chunks: Mutex<HashMap<(String, ChunkKey), Vec<u8>>>,
    hits: AtomicUsize,
    /// Remembered blobs by number, and their resume points.
    blobs: Mutex<Vec<(Vec<ChunkInfo>, Vec<u8>)>>,
    resumes: Mutex<HashMap<(String, Fingerprint), (usize, usize)>>,
    resumed: AtomicUsize,
}

impl MemCache {
    fn remember(&self, compression: Compression, info: &LayerInfo, blob: &[u8]) {
        let codec = chunk_codec(compression).unwrap();
        let mut map = self.chunks.lock().unwrap();
        for c in &info.chunks {
            let bytes = blob[c.offset as usize..(c.offset + c.len) as usize].to_vec();
            map.insert((codec.clone(), c.key), bytes);
        }
        let mut blobs = self.blobs.lock().unwrap();
        let mut resumes = self.resumes.lock().unwrap();
        for (i, c) in info.chunks.iter().enumerate() {
            if let Some(point) = &c.resume {
                resumes.insert((codec.clone(), point.fingerprint), (blobs.len(), i));
            }
        }
        blobs.push((info.chunks.clone(), blob.to_vec()));
    }
}

impl ChunkCache for MemCache {
    fn find(&self, codec: &str, key: &ChunkKey, _len: u64) -> Option<CachedChunk> {
        let got = self
            .chunks
            .lock()
            .unwrap()
            .get(&(codec.to_owned(), *key))
            .cloned();
        if got.is_some() {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        got.map(|bytes| CachedChunk {
            packed_key: *blake3::hash(&bytes).as_bytes(),
            bytes,
            origin: None,
        })
    }

    fn can_resume(&self, _codec: &str) -> bool {
        !self.resumes.lock().unwrap().is_empty()
    }

    fn resume(&self, codec: &str, fingerprint: &Fingerprint) -> Option<Resume> {
        let (blob, last) = *self
            .resumes
            .lock()
            .unwrap()
            .get(&(codec.to_owned(), *fingerprint))?;
        let chunks = self.blobs.lock().unwrap()[blob].0[..=last].to_vec();
        Some(Resume {
            source: blob.to_string(),
            chunks,
        })
    }

    fn copy_head(&self, resume: &Resume, out: &mut dyn crate::BlobSink) -> io::Result<()> {
        self.resumed.fetch_add(1, Ordering::Relaxed);
        let blobs = self.blobs.lock().unwrap();
        let bytes = &blobs[resume.source.parse::<usize>().unwrap()].1;
        let end = resume.chunks.last().map_or(0, |c| c.offset + c.len) as usize;
        out.write_all(&bytes[..end])
    }
}

fn with_cache(compression: Compression, cache: &Arc<MemCache>) -> LayerOptions {
    LayerOptions {
        chunk_cache: Some(cache.clone() as Arc<dyn ChunkCache>),
        ..opts(compression, Some(1_000_000_000))
    }
}

/// Decompresses one chunk on its own.
fn decompress_one(compression: Compression, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match compression {
        Compression::Gzip { .. } => {
            // A single member: GzDecoder stops at its end.
            flate2::read::GzDecoder::new(bytes)
                .read_to_end(&mut out)
                .unwrap();
        }
        _ => {
            zstd::stream::read::Decoder::new(bytes)
                .unwrap()
                .single_frame()
                .read_to_end(&mut out)
                .unwrap();
        }
    }
    out
}

#[test]
fn big_layers_are_cut_into_chunks_that_each_stand_alone() {
    let src = tempdir().unwrap();
    build_big_tree(src.path());
    for compression in CHUNKED {
        let (info, blob) = write_vec(src.path(), &opts(compression, Some(0)));
        let tar = decompress(&blob);
        assert_eq!(info.diff_id, sha256_digest(&tar), "{compression:?}");
        assert_eq!(info.digest, sha256_digest(&blob));
        // Small files (~6 MiB) make at least one chunk; the 9 MiB file three
        // (4 + 4 + 1 MiB), the 6 MiB one two.
        assert!(info.chunks.len() >= 6, "{:?}", info.chunks.len());
        let mut offset = 0;
        let mut tar_offset = 0usize;
        for c in &info.chunks {
            assert_eq!(c.offset, offset, "chunks are contiguous");
            assert!(!c.reused);
            assert!(c.uncompressed_len <= CHUNK_MAX + BIG_FILE, "{c:?}");
            let bytes = &blob[c.offset as usize..(c.offset + c.len) as usize];
            let plain = decompress_one(compression, bytes);
            assert_eq!(plain.len() as u64, c.uncompressed_len);
            assert_eq!(plain, tar[tar_offset..tar_offset + plain.len()]);
            assert_eq!(&c.key, blake3::hash(&plain).as_bytes());
            offset += c.len;
            tar_offset += plain.len();
        }
        assert_eq!(offset, info.size);
        assert_eq!(tar_offset, tar.len());
        // The random file is split at BIG_SPLIT from its header on: one chunk of
        // exactly BIG_SPLIT bytes at least.
        assert!(
            info.chunks
                .iter()
                .filter(|c| c.uncompressed_len == BIG_SPLIT)
                .count()
                >= 3,
            "{:?}",
            info.chunks
                .iter()
                .map(|c| c.uncompressed_len)
                .collect::<Vec<_>>()
        );
    }
}

#[test]
fn a_layer_of_one_chunk_is_the_unchunked_stream() {
    // Small layers (most of them) are compressed exactly as before chunking: the
    // pinned digests of small images do not move.
    let src = tempdir().unwrap();
    build_rich_tree(src.path());
    for compression in CHUNKED {
        let (info, blob) = write_vec(src.path(), &opts(compression, Some(0)));
        assert_eq!(info.chunks.len(), 1);
        let tar = decompress(&blob);
        let mut enc = Encoder::new(compression, Vec::new()).unwrap();
        enc.write_all(&tar).unwrap();
        assert_eq!(enc.finish().unwrap(), blob, "{compression:?}");
    }
}

#[test]
fn chunking_costs_little_against_one_stream() {
    let src = tempdir().unwrap();
    build_big_tree(src.path());
    for compression in CHUNKED {
        let (info, blob) = write_vec(src.path(), &opts(compression, Some(0)));
        let tar = decompress(&blob);
        let mut enc = Encoder::new(compression, Vec::new()).unwrap();
        enc.write_all(&tar).unwrap();
        let single = enc.finish().unwrap();
        let cost = blob.len() as f64 / single.len() as f64 - 1.0;
        eprintln!(
            "{compression:?}: {} chunks, {} bytes vs {} in one stream ({:+.3}%)",
            info.chunks.len(),
            blob.len(),
            single.len(),
            cost * 100.0
        );
        assert!(cost < 0.03, "{compression:?}: {:.3}%", cost * 100.0);
    }
}

#[test]
fn an_edit_recompresses_one_chunk_and_reused_chunks_give_the_same_bytes() {
    let src = tempdir().unwrap();
    build_big_tree(src.path());
    let edited = src.path().join("small/d013/f042.txt");
    let original = fs::read(&edited).unwrap();
    for compression in CHUNKED {
        let cache = Arc::new(MemCache::default());
        let (cold, cold_blob) = write_vec(src.path(), &with_cache(compression, &cache));
        assert_eq!(cache.hits.load(Ordering::Relaxed), 0);
        cache.remember(compression, &cold, &cold_blob);

        // The same tree again: every chunk from the cache, the same bytes.
        let (again, again_blob) = write_vec(src.path(), &with_cache(compression, &cache));
        assert!(again.chunks.iter().all(|c| c.reused));
        assert_eq!(again_blob, cold_blob, "{compression:?}");
        assert_eq!(
            again,
            LayerInfo {
                chunks: again.chunks.clone(),
                ..cold.clone()
            }
        );

        // One small file edited: one chunk changes, the others are copied.
        let mut data = original.clone();
        data.extend_from_slice(b"one more line\n");
        fs::write(&edited, &data).unwrap();
        set_all_mtimes(src.path(), 1_700_000_000);
        let (edit, edit_blob) = write_vec(src.path(), &with_cache(compression, &cache));
        let fresh = write_vec(src.path(), &opts(compression, Some(1_000_000_000)));
        assert_eq!(
            edit_blob, fresh.1,
            "{compression:?}: reused chunks, same bytes"
        );
        let recompressed: Vec<_> = edit.chunks.iter().filter(|c| !c.reused).collect();
        assert_eq!(recompressed.len(), 1, "{compression:?}: {recompressed:?}");
        assert_eq!(edit.chunks.len(), cold.chunks.len());
        cache.remember(compression, &edit, &edit_blob);

        // Reverted: the cold build's blob, from cached chunks only.
        fs::write(&edited, &original).unwrap();
        set_all_mtimes(src.path(), 1_700_000_000);
        let (revert, revert_blob) = write_vec(src.path(), &with_cache(compression, &cache));
        assert!(revert.chunks.iter().all(|c| c.reused));
        assert_eq!(revert_blob, cold_blob);
        assert_eq!(revert.digest, cold.digest);
    }
}

#[test]
fn chunked_output_does_not_depend_on_the_thread_count() {
    let src = tempdir().unwrap();
    build_big_tree(src.path());
    for compression in CHUNKED {
        let (info, blob) = write_vec(src.path(), &opts(compression, Some(0)));
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let (one, one_blob) = pool.install(|| write_vec(src.path(), &opts(compression, Some(0))));
        assert_eq!(one, info, "{compression:?}");
        assert!(one_blob == blob, "{compression:?}: one thread, other bytes");
    }
}

#[test]
fn a_hardlink_to_a_big_file_does_not_make_a_chunk_of_its_own() {
    let src = tempdir().unwrap();
    write_file(&src.path().join("a/big.bin"), &noise(11, 5 << 20));
    fs::hard_link(src.path().join("a/big.bin"), src.path().join("b-link.bin")).unwrap();
    write_file(&src.path().join("c.txt"), b"after the link\n");
    let (info, _) = write_vec(src.path(), &opts(Compression::default(), Some(0)));
    // "a/", the big file's first piece and its rest, then the link (a header, no
    // data) and c.txt together.
    let sizes: Vec<u64> = info.chunks.iter().map(|c| c.uncompressed_len).collect();
    assert_eq!(sizes, [512, BIG_SPLIT, (1 << 20) + 512, 512 + 1024 + 1024]);
}

#[test]
fn a_layer_of_several_batches_is_packed_in_order_on_the_packing_thread() {
    // More than two batches (16 MiB each) of tar, so that batches are packed on the
    // packing thread while the next is produced: the blob must still be the chunks'
    // compressed bytes in order, and the diff_id the uncompressed tar's.
    let src = tempdir().unwrap();
    for i in 0..5u8 {
        let mut data = vec![i; 7 << 20];
        data[..4096].copy_from_slice(&noise(u64::from(i) + 1, 4096));
        write_file(&src.path().join(format!("big/f{i}.bin")), &data);
        for f in 0..200 {
            let name = format!("small/d{i}/f{f:03}.txt");
            write_file(&src.path().join(name), format!("{i} {f}\n").as_bytes());
        }
    }
    set_all_mtimes(src.path(), 1_700_000_000);
    let (plain, tar) = write_vec(
        src.path(),
        &opts(Compression::Uncompressed, Some(1_000_000_000)),
    );
    assert!(plain.uncompressed_size > 32 << 20);
    assert_eq!(sha256_digest(&tar), plain.diff_id);
    for compression in CHUNKED {
        let cache = Arc::new(MemCache::default());
        let (info, blob) = write_vec(src.path(), &with_cache(compression, &cache));
        assert_eq!(info.uncompressed_size, plain.uncompressed_size);
        assert!(decompress(&blob) == tar, "{compression:?}");
        assert_eq!(info.diff_id, plain.diff_id, "{compression:?}");
        let mut start = 0usize;
        let mut expected = Vec::new();
        for c in &info.chunks {
            let end = start + c.uncompressed_len as usize;
            let packed = compress_chunk(compression, &tar[start..end]).unwrap();
            assert_eq!(c.offset as usize, expected.len());
            assert_eq!(c.key, *blake3::hash(&tar[start..end]).as_bytes());
            assert_eq!(c.packed_key, *blake3::hash(&packed).as_bytes());
            expected.extend_from_slice(&packed);
            start = end;
        }
        assert_eq!(start, tar.len());
        assert!(blob == expected, "{compression:?}: chunks out of order");

        cache.remember(compression, &info, &blob);
        let (again, again_blob) = write_vec(src.path(), &with_cache(compression, &cache));
        assert!(again.chunks.iter().all(|c| c.reused));
        assert!(
            again_blob == blob,
            "{compression:?}: reused chunks, other bytes"
        );
        assert_eq!(again.digest, info.digest);
    }
}

#[test]
fn a_layer_with_the_same_head_resumes_from_the_earlier_blob() {
    // The anchors' bigcopy in small: big files first, then many small ones. An edit
    // late in the order resumes after the big files: their compressed bytes are
    // copied and the hashes carry on from the saved states; the blob is the one a
    // fresh write gives.
    let src = tempdir().unwrap();
    build_big_tree(src.path());
    let late = src.path().join("small/d029/f099.txt");
    // The first entry: "big/".
    let early = src.path().join("big");
    for compression in CHUNKED {
        let cache = Arc::new(MemCache::default());
        let (cold, cold_blob) = write_vec(src.path(), &with_cache(compression, &cache));
        assert!(cold.chunks.iter().any(|c| c.resume.is_some()));
        cache.remember(compression, &cold, &cold_blob);

        let mut data = fs::read(&late).unwrap();
        data.extend_from_slice(b"edited\n");
        fs::write(&late, &data).unwrap();
        let (edit, edit_blob) = write_vec(src.path(), &with_cache(compression, &cache));
        assert_eq!(cache.resumed.load(Ordering::Relaxed), 1, "{compression:?}");
        let (fresh, fresh_blob) = write_vec(src.path(), &opts(compression, Some(1_000_000_000)));
        assert!(
            edit_blob == fresh_blob,
            "{compression:?}: resumed, other bytes"
        );
        assert_eq!(
            edit,
            LayerInfo {
                chunks: edit.chunks.clone(),
                ..fresh.clone()
            }
        );
        // The head came from the earlier blob, the rest was written.
        let resumed_head = edit.chunks.iter().take_while(|c| c.reused).count();
        assert!(resumed_head > 2, "{compression:?}: {resumed_head}");
        let strip =
            |cs: &[ChunkInfo]| -> Vec<_> { cs.iter().map(|c| (c.key, c.offset, c.len)).collect() };
        assert_eq!(strip(&edit.chunks), strip(&fresh.chunks));
        cache.remember(compression, &edit, &edit_blob);

        // The first entry touched (mtime, and ctime with it): no resume point
        // matches, and the bytes are still the fresh ones.
        let t = filetime::FileTime::from_unix_time(1_600_000_000, 0);
        filetime::set_file_mtime(&early, t).unwrap();
        let (_, again_blob) = write_vec(src.path(), &with_cache(compression, &cache));
        let (_, fresh_blob) = write_vec(src.path(), &opts(compression, Some(1_000_000_000)));
        assert_eq!(cache.resumed.load(Ordering::Relaxed), 1, "{compression:?}");
        assert!(again_blob == fresh_blob, "{compression:?}");
        set_all_mtimes(src.path(), 1_700_000_000);
    }
}

#[test]
fn a_converted_layer_is_the_one_written_in_that_compression() {
    let src = tempdir().unwrap();
    build_big_tree(src.path());
    // Entries that take more than one header or change the chunker's view: an opaque
    // directory (its marker follows it), a hardlink, a long name (PAX), a symlink.
    fs::create_dir_all(src.path().join("uopq/inner")).unwrap();
    write_file(&src.path().join("uopq/inner/f.txt"), b"kept\n");
    xattr::set(src.path().join("uopq"), "user.overlay.opaque", b"y").unwrap();
    fs::hard_link(
        src.path().join("small/d003/f004.txt"),
        src.path().join("small/d029/link.txt"),
    )
    .unwrap();
    let long = format!("small/d010/{}.txt", "n".repeat(150));
    write_file(&src.path().join(long), b"a long name\n");
    std::os::unix::fs::symlink("../big/blob.bin", src.path().join("small/to-blob")).unwrap();
    set_all_mtimes(src.path(), 1_700_000_000);
    let all = [
        Compression::Gzip { level: 6 },
        Compression::Zstd { level: 3 },
        Compression::Uncompressed,
    ];
    let fresh: Vec<_> = all
        .iter()
        .map(|&c| write_vec(src.path(), &opts(c, Some(1_000_000_000))))
        .collect();
    for (i, from) in all.iter().enumerate() {
        for (j, to) in all.iter().enumerate() {
            let mut out = Vec::new();
            let info = crate::recompress_layer(
                fresh[i].1.as_slice(),
                &opts(*to, Some(1_000_000_000)),
                &mut out,
                "test layer",
            )
            .unwrap();
            assert!(out == fresh[j].1, "{from:?} -> {to:?}: other bytes");
            assert_eq!(info.digest, fresh[j].0.digest, "{from:?} -> {to:?}");
            assert_eq!(info.diff_id, fresh[j].0.diff_id);
            assert_eq!(info.entries, fresh[j].0.entries);
            assert_eq!(info.chunks, fresh[j].0.chunks);
        }
    }
    // Not a tar: an error naming the layer.
    let err = crate::recompress_layer(
        &b"not a tar at all"[..],
        &opts(Compression::default(), None),
        Vec::new(),
        "sha256:abc",
    )
    .unwrap_err();
    assert!(err.to_string().contains("sha256:abc"), "{err}");
}
