//! Small units: compression parsing, path normalisation, diff_id checks,
//! stream handling.

use std::io::{self, Read};

use tempfile::tempdir;

use super::super::safe_fs::normalize;
use super::super::{
    LayerError, MEDIA_TYPE_LAYER_TAR, MEDIA_TYPE_LAYER_TAR_GZIP, MEDIA_TYPE_LAYER_TAR_ZSTD,
    UnpackOptions, WhiteoutMode, unpack_layer,
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
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o7777, 0o750);
    assert_eq!(meta.mtime(), 1_600_000_000);
    // A non-directory cannot be the root.
    let tar = raw_tar(&[raw_file(".", b"")]);
    let dest = tempdir().unwrap();
    assert!(unpack_layer(tar.as_slice(), dest.path(), &UnpackOptions::default()).is_err());
}

/// The uid and gid of `path` itself (a symlink's own).
fn owner_of(path: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(path).unwrap();
    (m.uid(), m.gid())
}

/// Owners as root. An entry of 0:0 is left as created (root creates it 0:0), any other
/// is chowned; a directory listed again takes the later entry's owner, 0:0 included;
/// and a directory replaced by a later entry is entered anew (the unpacker keeps the
/// last directory open between entries).
#[test]
fn owners_are_set_and_replaced_directories_entered_anew() {
    if !is_root() {
        return;
    }
    let entry = |b: &mut tar::Builder<Vec<u8>>, name: &str, kind: EntryType, ids: u64| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(if kind == EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_uid(ids);
        h.set_gid(ids);
        h.set_mtime(1_600_000_000);
        h.set_size(0);
        if kind == EntryType::Symlink {
            b.append_link(&mut h, name, "target").unwrap();
        } else {
            b.append_data(&mut h, name, std::io::empty()).unwrap();
        }
    };
    let mut b = tar::Builder::new(Vec::new());
    entry(&mut b, "d/", EntryType::Directory, 1000);
    entry(&mut b, "d/root", EntryType::Regular, 0);
    entry(&mut b, "d/user", EntryType::Regular, 1000);
    entry(&mut b, "d/link", EntryType::Symlink, 0);
    entry(&mut b, "d/ulink", EntryType::Symlink, 1000);
    entry(&mut b, "d/", EntryType::Directory, 0);
    entry(&mut b, "implied/f", EntryType::Regular, 0);
    // `r` a directory, then a file in it, then a file in its place, then a directory
    // again with a file: the last one must land in the new `r`.
    entry(&mut b, "r/", EntryType::Directory, 0);
    entry(&mut b, "r/old", EntryType::Regular, 0);
    entry(&mut b, "r", EntryType::Regular, 0);
    entry(&mut b, "r/", EntryType::Directory, 1000);
    entry(&mut b, "r/new", EntryType::Regular, 1000);
    let tar = b.into_inner().unwrap();
    let dest = tempdir().unwrap();
    unpack_layer(tar.as_slice(), dest.path(), &UnpackOptions::default()).unwrap();
    let owner = |p: &str| owner_of(&dest.path().join(p));
    assert_eq!(owner("d"), (0, 0), "listed again as 0:0");
    assert_eq!(owner("d/root"), (0, 0));
    assert_eq!(owner("d/user"), (1000, 1000));
    assert_eq!(owner("d/link"), (0, 0));
    assert_eq!(owner("d/ulink"), (1000, 1000));
    assert_eq!(owner("implied"), (0, 0));
    assert_eq!(owner("implied/f"), (0, 0));
    assert_eq!(owner("r"), (1000, 1000));
    assert_eq!(owner("r/new"), (1000, 1000));
    assert!(!dest.path().join("r/old").exists());
}

/// An entry of 0:0 created in a directory with the set-group-ID bit (an earlier layer's,
/// in an export that unpacks several layers into one tree) would take that directory's
/// group: it is chowned.
#[test]
fn an_entry_of_root_in_a_set_group_id_directory_is_chowned() {
    if !is_root() {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dest = tempdir().unwrap();
    let sg = dest.path().join("sg");
    std::fs::create_dir(&sg).unwrap();
    std::os::unix::fs::chown(&sg, Some(0), Some(1234)).unwrap();
    std::fs::set_permissions(&sg, std::fs::Permissions::from_mode(0o2775)).unwrap();
    let tar = raw_tar(&[raw_file("sg/f", b"f"), raw_file("top", b"t")]);
    let opts = UnpackOptions {
        whiteouts: WhiteoutMode::Apply,
        ..UnpackOptions::default()
    };
    unpack_layer(tar.as_slice(), dest.path(), &opts).unwrap();
    let owner = |p: &str| owner_of(&dest.path().join(p));
    assert_eq!(owner("sg/f"), (0, 0));
    assert_eq!(owner("top"), (0, 0));
}
