//! Content hashing of files: the BLAKE3 hashes the stat memo remembers. What a cache
//! key covers (the tree checksum of a COPY's sources) is the builder's `cachekey` module.

use std::fs::File;
use std::path::Path;

use crate::error::{IoContext, Result};
use crate::statmemo::ContentHash;

/// Files at least this big are hashed with BLAKE3's multi-threaded `update_rayon`, a
/// window of [`HASH_WINDOW`] bytes at a time; smaller ones with plain reads.
pub const MMAP_THRESHOLD: u64 = 1 << 20;

/// Bytes of a big file read (and hashed in parallel) at once. A whole-file memory map
/// would count every page of the file in the process' resident set: hashing a
/// context of big files would take as much memory as the files.
pub const HASH_WINDOW: usize = 8 << 20;

/// BLAKE3 hash of a file's content, in memory bounded by [`HASH_WINDOW`] whatever
/// the file's size.
pub fn hash_file(path: impl AsRef<Path>) -> Result<ContentHash> {
    use std::io::Read;
    let path = path.as_ref();
    let mut file = File::open(path).ctx("open", path)?;
    let size = file.metadata().ctx("stat", path)?.len();
    let mut hasher = blake3::Hasher::new();
    if size >= MMAP_THRESHOLD {
        let cap = usize::try_from(size)
            .unwrap_or(HASH_WINDOW)
            .min(HASH_WINDOW);
        let mut buf = vec![0u8; cap];
        loop {
            // Fill the window (short reads aside), then hash it in parallel.
            let mut n = 0;
            while n < buf.len() {
                match file.read(&mut buf[n..]) {
                    Ok(0) => break,
                    Ok(r) => n += r,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e).ctx("read", path),
                }
            }
            if n == 0 {
                break;
            }
            hasher.update_rayon(&buf[..n]);
        }
    } else {
        hasher.update_reader(file).ctx("read", path)?;
    }
    Ok(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn hash_file_small_and_big() {
        let dir = tempfile::tempdir().unwrap();
        for size in [
            0usize,
            10,
            MMAP_THRESHOLD as usize + 1,
            2 * HASH_WINDOW + 12_345,
        ] {
            let p = dir.path().join(size.to_string());
            let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            fs::write(&p, &data).unwrap();
            assert_eq!(hash_file(&p).unwrap(), blake3::hash(&data));
        }
        let err = hash_file(dir.path().join("missing")).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
