//! Small units: compression parsing, path normalisation, diff_id checks,
//! stream handling.

use std::io::{self, Read};

use tempfile::tempdir;

use super::super::safe_fs::normalize;
use super::super::{
    LayerError, MEDIA_TYPE_LAYER_TAR, MEDIA_TYPE_LAYER_TAR_GZIP, MEDIA_TYPE_LAYER_TAR_ZSTD,
    UnpackOptions, unpack_layer,
};
use super::*;
use kiln_oci::digest::sha256_digest as digest_bytes;

#[test]
fn compression_parse() {
    assert_eq!(
        Compression::parse("gzip", None).unwrap(),
        Compression::Gzip { level: 6 }
    );
    assert_eq!(
        Compression::parse("gzip", Some(9)).unwrap(),
        Compression::Gzip { level: 9 }
    );
    assert_eq!(
        Compression::parse("zstd", None).unwrap(),
        Compression::Zstd { level: 3 }
    );
    assert_eq!(
        Compression::parse("zstd", Some(19)).unwrap(),
        Compression::Zstd { level: 19 }
    );
    assert_eq!(
        Compression::parse("uncompressed", Some(5)).unwrap(),
        Compression::Uncompressed
    );
    assert_eq!(Compression::default(), Compression::Gzip { level: 6 });
    for (name, level) in [
        ("gzip", Some(10)),
        ("gzip", Some(-1)),
        ("zstd", Some(23)),
        ("lz4", None),
        ("", None),
    ] {
        let err = Compression::parse(name, level).unwrap_err();
        assert!(
            matches!(err, LayerError::InvalidCompression { .. }),
            "{err}"
        );
    }
    assert_eq!(
        Compression::default().media_type(),
        MEDIA_TYPE_LAYER_TAR_GZIP
    );
    assert_eq!(
        Compression::Zstd { level: 1 }.media_type(),
        MEDIA_TYPE_LAYER_TAR_ZSTD
    );
    assert_eq!(Compression::Uncompressed.media_type(), MEDIA_TYPE_LAYER_TAR);
    assert_eq!(
        MEDIA_TYPE_LAYER_TAR_GZIP,
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    for c in [
        Compression::default(),
        Compression::Zstd { level: 1 },
        Compression::Uncompressed,
    ] {
        assert_eq!(Compression::parse(c.name(), None).unwrap().name(), c.name());
    }
}

#[test]
fn normalize_paths() {
    let ok = |raw: &str, want: &str| {
        assert_eq!(normalize(raw.as_bytes()).unwrap(), want.as_bytes(), "{raw}");
    };
    ok("a/b", "a/b");
    ok("./a//b/", "a/b");
    ok("a/../b", "b");
    ok("a/b/../../c", "c");
    ok(".", "");
    ok("./", "");
    for bad in ["/etc", "..", "../x", "a/../../x", "a/./../..", "a\0b"] {
        assert!(normalize(bad.as_bytes()).is_err(), "{bad:?}");
    }
}

fn sample_tar() -> Vec<u8> {
    raw_tar(&[raw_dir("d/"), raw_file("d/f", b"data")])
}

#[test]
fn diff_id_mismatch_is_an_error() {
    let tar = sample_tar();
    let right = digest_bytes(&tar);
    let wrong = digest_bytes(b"something else");
    let dest = tempdir().unwrap();
    let opts = UnpackOptions {
        expected_diff_id: Some(wrong.clone()),
        ..UnpackOptions::default()
    };
    let err = unpack_layer(tar.as_slice(), dest.path(), &opts).unwrap_err();
    assert!(matches!(err, LayerError::DiffIdMismatch { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(right.as_str()) && msg.contains(wrong.as_str()),
        "{msg}"
    );

    let dest = tempdir().unwrap();
    let opts = UnpackOptions {
        expected_diff_id: Some(right.clone()),
        ..UnpackOptions::default()
    };
    let info = unpack_layer(tar.as_slice(), dest.path(), &opts).unwrap();
    assert_eq!(info.diff_id, right);
    assert_eq!((info.entries, info.bytes), (2, tar.len() as u64));
}

#[test]
fn diff_id_covers_bytes_after_the_end_marker() {
    let mut tar = sample_tar();
    tar.extend_from_slice(&[0; 512]);
    tar.extend_from_slice(b"trailing bytes that a tar reader would never look at");
    let dest = tempdir().unwrap();
    let info = unpack_layer(tar.as_slice(), dest.path(), &UnpackOptions::default()).unwrap();
    assert_eq!(info.diff_id, digest_bytes(&tar));
    assert_eq!(info.bytes, tar.len() as u64);
}

/// A reader handing out one byte per call, to exercise magic detection.
struct Trickle<'a>(&'a [u8]);

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match (self.0.split_first(), buf.is_empty()) {
            (Some((b, rest)), false) => {
                buf[0] = *b;
                self.0 = rest;
                Ok(1)
            }
            _ => Ok(0),
        }
    }
}

#[test]
fn compression_is_detected_from_magic_bytes() {
    let src = tempdir().unwrap();
    write_file(&src.path().join("d/f"), b"data");
    for compression in [
        Compression::default(),
        Compression::Zstd { level: 3 },
        Compression::Uncompressed,
    ] {
        let (info, blob) = write_vec(src.path(), &opts(compression, None));
        let dest = tempdir().unwrap();
        let un = unpack_layer(Trickle(&blob), dest.path(), &UnpackOptions::default()).unwrap();
        assert_eq!(un.diff_id, info.diff_id, "{compression:?}");
        assert_eq!(std::fs::read(dest.path().join("d/f")).unwrap(), b"data");
    }
}

#[test]
fn corrupt_streams_are_errors() {
    let src = tempdir().unwrap();
    write_file(&src.path().join("f"), &pseudo_random(100_000, 3));
    for compression in [Compression::default(), Compression::Zstd { level: 3 }] {
        let (_, blob) = write_vec(src.path(), &opts(compression, None));
        // Truncated.
        let dest = tempdir().unwrap();
        let err = unpack_layer(
            &blob[..blob.len() / 2],
            dest.path(),
            &UnpackOptions::default(),
        )
        .unwrap_err();
        assert!(
            matches!(err, LayerError::Malformed { .. }),
            "{compression:?}: {err}"
        );
        // Flipped byte in the middle.
        let mut bad = blob.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0xff;
        let dest = tempdir().unwrap();
        assert!(
            unpack_layer(bad.as_slice(), dest.path(), &UnpackOptions::default()).is_err(),
            "{compression:?}"
        );
    }
    // A tar header with a bad checksum.
    let mut tar = sample_tar();
    tar[0] ^= 1;
    let dest = tempdir().unwrap();
    assert!(unpack_layer(tar.as_slice(), dest.path(), &UnpackOptions::default()).is_err());
}

#[test]
fn pax_mtime_with_fraction_is_honoured() {
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([("mtime", &b"1600000000.25"[..])])
        .unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_size(1);
    h.set_mode(0o644);
    h.set_mtime(1);
    b.append_data(&mut h, "f", &b"x"[..]).unwrap();
    let tar = b.into_inner().unwrap();
    let dest = tempdir().unwrap();
    unpack_layer(tar.as_slice(), dest.path(), &UnpackOptions::default()).unwrap();
    let meta = std::fs::metadata(dest.path().join("f")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (meta.mtime(), meta.mtime_nsec()),
        (1_600_000_000, 250_000_000)
    );
}

#[test]
fn root_entry_applies_to_dest() {
    let dest = tempdir().unwrap();
    let mut d = raw_dir("./");
    d.mode = 0o750;
    let tar = raw_tar(&[d, raw_file("./f", b"f")]);
    let info = unpack_layer(tar.as_slice(), dest.path(), &UnpackOptions::default()).unwrap();
    assert_eq!(info.entries, 2);
    let meta = std::fs::metadata(dest.path()).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(meta.permissions().mode() & 0o7777, 0o750);
    assert_eq!(meta.mtime(), 1_600_000_000);
    // A non-directory cannot be the root.
    let tar = raw_tar(&[raw_file(".", b"")]);
    let dest = tempdir().unwrap();
    assert!(unpack_layer(tar.as_slice(), dest.path(), &UnpackOptions::default()).is_err());
}
