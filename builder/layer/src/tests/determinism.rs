//! The same tree content gives byte-identical layers.

use std::fs;
use std::io::Write;
use std::path::Path;

use tempfile::tempdir;

use super::super::compression::Encoder;
use super::*;
use kiln_oci::digest::sha256_digest as digest_bytes;

const COMPRESSIONS: [Compression; 3] = [
    Compression::Gzip { level: 6 },
    Compression::Zstd { level: 3 },
    Compression::Uncompressed,
];

/// A tree built in an order given by `reverse` (so directory listing order
/// differs between two copies), with mtimes from `mtime_base`.
fn build_tree(dir: &Path, reverse: bool, mtime_base: i64) {
    let mut files: Vec<(String, Vec<u8>)> = (0..40)
        .map(|i| {
            (
                format!("d{}/sub{}/file-{i:02}", i % 3, i % 2),
                pseudo_random(1000 + i * 37, i as u64),
            )
        })
        .collect();
    files.push(("top".into(), b"top".to_vec()));
    files.push(("a-b".into(), b"dash".to_vec()));
    files.push(("a/b".into(), b"slash".to_vec()));
    if reverse {
        files.reverse();
    }
    for (name, data) in &files {
        write_file(&dir.join(name), data);
    }
    std::os::unix::fs::symlink("top", dir.join("link")).unwrap();
    fs::hard_link(dir.join("top"), dir.join("top-hard")).unwrap();
    xattr::set(dir.join("top"), "user.k", b"v").unwrap();
    set_all_mtimes(dir, mtime_base);
}

#[test]
fn same_tree_same_bytes_for_every_compression() {
    let one = tempdir().unwrap();
    let two = tempdir().unwrap();
    build_tree(one.path(), false, 1_700_000_000);
    build_tree(two.path(), true, 1_800_000_000);
    let epoch = Some(1_000_000_000);
    let mut diff_ids = Vec::new();
    for compression in COMPRESSIONS {
        let (a, blob_a) = write_vec(one.path(), &opts(compression, epoch));
        let (again, blob_again) = write_vec(one.path(), &opts(compression, epoch));
        let (b, blob_b) = write_vec(two.path(), &opts(compression, epoch));
        assert_eq!(a, again, "{compression:?}: same tree twice");
        assert_eq!(a, b, "{compression:?}: copy with other mtimes and order");
        assert_eq!(blob_a, blob_again);
        assert_eq!(blob_a, blob_b);
        // The digests describe the bytes actually written.
        assert_eq!(a.digest, digest_bytes(&blob_a));
        assert_eq!(a.size, blob_a.len() as u64);
        let tar = decompress(&blob_a);
        assert_eq!(a.diff_id, digest_bytes(&tar));
        assert_eq!(a.uncompressed_size, tar.len() as u64);
        diff_ids.push(a.diff_id);
    }
    assert!(diff_ids.windows(2).all(|w| w[0] == w[1]), "{diff_ids:?}");
    // Uncompressed: the blob is the tar.
    let (plain, _) = write_vec(one.path(), &opts(Compression::Uncompressed, epoch));
    assert_eq!(plain.digest, plain.diff_id);
}

#[test]
fn different_mtimes_without_epoch_differ() {
    let one = tempdir().unwrap();
    let two = tempdir().unwrap();
    build_tree(one.path(), false, 1_700_000_000);
    build_tree(two.path(), false, 1_800_000_000);
    let (a, _) = write_vec(one.path(), &opts(Compression::Uncompressed, None));
    let (b, _) = write_vec(two.path(), &opts(Compression::Uncompressed, None));
    assert_ne!(a.diff_id, b.diff_id);
}

#[test]
fn gzip_header_is_deterministic() {
    let src = tempdir().unwrap();
    write_file(&src.path().join("f"), b"f");
    let (_, blob) = write_vec(src.path(), &opts(Compression::default(), None));
    assert_eq!(&blob[..3], &[0x1f, 0x8b, 8], "gzip, deflate");
    assert_eq!(blob[3], 0, "no flags: no file name, comment or extra");
    assert_eq!(&blob[4..8], &[0, 0, 0, 0], "no mtime");
    assert_eq!(blob[9], 255, "OS unknown");
}

#[test]
fn zstd_output_does_not_depend_on_worker_count() {
    // Large enough for several zstd jobs at level 1.
    let data = pseudo_random(12 << 20, 99);
    let compress = |workers| {
        let mut enc =
            Encoder::with_workers(Compression::Zstd { level: 1 }, Vec::new(), workers).unwrap();
        for chunk in data.chunks(100_000) {
            enc.write_all(chunk).unwrap();
        }
        enc.finish().unwrap()
    };
    let one = compress(1);
    assert_eq!(one, compress(2));
    assert_eq!(one, compress(3));
    assert_eq!(decompress(&one), data);
}

#[test]
fn compression_levels_change_blob_not_diff_id() {
    let src = tempdir().unwrap();
    build_tree(src.path(), false, 1_700_000_000);
    let (fast, _) = write_vec(src.path(), &opts(Compression::Gzip { level: 1 }, Some(0)));
    let (best, _) = write_vec(src.path(), &opts(Compression::Gzip { level: 9 }, Some(0)));
    assert_ne!(fast.digest, best.digest);
    assert_eq!(fast.diff_id, best.diff_id);
}
