//! Content hashing of files: the BLAKE3 hashes the stat memo remembers. What a cache
//! key covers (the tree checksum of a COPY's sources) is the builder's `cachekey` module.

use std::fs::{self, File};
use std::path::Path;

use crate::error::{IoContext, Result};
use crate::statmemo::ContentHash;

/// Files at least this big are hashed through a memory map with BLAKE3's
/// multi-threaded `update_mmap_rayon`; smaller ones with plain reads.
pub const MMAP_THRESHOLD: u64 = 1 << 20;

/// BLAKE3 hash of a file's content.
///
/// Big files are memory-mapped. As with any mmap, a file truncated by
/// another process while it is being hashed can kill the process with
/// SIGBUS; build contexts are assumed not to be rewritten mid-build.
pub fn hash_file(path: impl AsRef<Path>) -> Result<ContentHash> {
    let path = path.as_ref();
    let size = fs::metadata(path).ctx("stat", path)?.len();
    let mut hasher = blake3::Hasher::new();
    if size >= MMAP_THRESHOLD {
        hasher.update_mmap_rayon(path).ctx("hash", path)?;
    } else {
        let file = File::open(path).ctx("open", path)?;
        hasher.update_reader(file).ctx("read", path)?;
    }
    Ok(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_file_small_and_big() {
        let dir = tempfile::tempdir().unwrap();
        for size in [0usize, 10, MMAP_THRESHOLD as usize + 1] {
            let p = dir.path().join(size.to_string());
            let data = vec![5u8; size];
            fs::write(&p, &data).unwrap();
            assert_eq!(hash_file(&p).unwrap(), blake3::hash(&data));
        }
        let err = hash_file(dir.path().join("missing")).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
