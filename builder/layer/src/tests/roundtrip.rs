//! write_layer -> unpack_layer round trips, and the shape of written tars.

use std::fs;
use std::path::Path;

use tar::EntryType;
use tempfile::tempdir;

use super::super::{
    Compression, LayerOptions, MEDIA_TYPE_LAYER_TAR, MEDIA_TYPE_LAYER_TAR_GZIP,
    MEDIA_TYPE_LAYER_TAR_ZSTD, UnpackOptions, WhiteoutMode, is_empty_dir, unpack_layer,
};
use super::*;

fn unpack_opts() -> UnpackOptions {
    UnpackOptions {
        whiteouts: WhiteoutMode::Oci,
        allow_devices: is_root(),
        expected_diff_id: None,
    }
}

fn round_trip(compression: Compression, media_type: &str) {
    let src = tempdir().unwrap();
    build_rich_tree(src.path());
    let (info, blob) = write_vec(src.path(), &opts(compression, None));
    assert_eq!(info.media_type, media_type);
    assert_eq!(info.size, blob.len() as u64);

    let dst = tempdir().unwrap();
    let un = unpack_layer(blob.as_slice(), dst.path(), &unpack_opts()).unwrap();
    assert_eq!(un.diff_id, info.diff_id);
    assert_eq!(un.bytes, info.uncompressed_size);
    assert_eq!(un.entries, info.entries);

    let before = snapshot(src.path());
    let after = snapshot(dst.path());
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    for (path, node) in &before {
        assert_eq!(
            Some(node),
            after.get(path),
            "{path} differs after the round trip"
        );
    }
    // Spot checks, so a broken snapshot cannot make this pass vacuously.
    let tool = &after["usr/bin/tool"];
    assert_eq!(tool.mode, 0o4755);
    assert_eq!(tool.hardlink_of.as_deref(), Some("usr/bin/tool"));
    assert_eq!(
        after["usr/bin/tool2"].hardlink_of.as_deref(),
        Some("usr/bin/tool")
    );
    assert_eq!(after["etc/hostname"].xattrs["user.test"], b"hello");
    assert_eq!(after["pipe"].kind, "fifo");
    assert_eq!(after["tmp"].mode, 0o1777);
    assert_eq!(after["shared"].mode, 0o2775);
    assert_eq!(after["empty-dir"].kind, "dir");
    assert_eq!(
        after["etc/alias"].link.as_deref(),
        Some(Path::new("hostname"))
    );
    assert!(after.contains_key(&format!("{LONG_DIR}/{LONG_FILE}")));
    if is_root() {
        assert_eq!(
            (after["etc/hosts"].uid, after["etc/hosts"].gid),
            (1234, 5678)
        );
        assert_eq!((after["etc/alias"].uid, after["etc/alias"].gid), (42, 43));
        assert_eq!(after["dev-null"].kind, "char");
        assert_eq!(after["dev-null"].rdev, rustix::fs::makedev(1, 3));
        assert_eq!(after["usr/bin/tool"].xattrs["trusted.kiln"], b"t");
        let big = &after["etc/big-ids"];
        assert_eq!((big.uid, big.gid), (3_000_000, 4_000_000));
    }
}

#[test]
fn round_trip_gzip() {
    round_trip(Compression::default(), MEDIA_TYPE_LAYER_TAR_GZIP);
}

#[test]
fn round_trip_zstd() {
    round_trip(Compression::Zstd { level: 3 }, MEDIA_TYPE_LAYER_TAR_ZSTD);
}

#[test]
fn round_trip_uncompressed() {
    round_trip(Compression::Uncompressed, MEDIA_TYPE_LAYER_TAR);
}

#[test]
fn written_entries_are_sorted_pax_and_without_owner_names() {
    let src = tempdir().unwrap();
    build_rich_tree(src.path());
    let (info, blob) = write_vec(src.path(), &opts(Compression::Uncompressed, None));
    let entries = tar_entries(&blob);
    assert_eq!(entries.len() as u64, info.entries);

    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    assert_eq!(names, sorted, "entries are in byte order");
    assert!(
        names
            .iter()
            .all(|n| !n.starts_with('/') && !n.starts_with("./"))
    );
    assert!(names.contains(&"etc/") && names.contains(&"empty-dir/"));
    let etc = names.iter().position(|n| *n == "etc/").unwrap();
    let hosts = names.iter().position(|n| *n == "etc/hosts").unwrap();
    assert!(etc < hosts, "parents before children");

    for e in &entries {
        assert!(
            e.uname.is_empty() && e.gname.is_empty(),
            "{}: uname/gname",
            e.name
        );
        assert!(!e.pax.contains_key("atime") && !e.pax.contains_key("ctime"));
        assert!(!e.pax.contains_key("mtime"));
        assert!(e.pax.keys().all(|k| !k.contains("overlay")));
        assert_eq!(e.kind == EntryType::Directory, e.name.ends_with('/'));
    }
    let by_name = |n: &str| entries.iter().find(|e| e.name == n).unwrap();

    let tool2 = by_name("usr/bin/tool2");
    assert_eq!(tool2.kind, EntryType::Link);
    assert_eq!(tool2.link.as_deref(), Some("usr/bin/tool"));
    assert_eq!(tool2.size, 0);
    assert_eq!(by_name("usr/bin/tool").kind, EntryType::Regular);
    assert_eq!(by_name("usr/bin/tool").mode, 0o4755);
    assert_eq!(by_name("z-hosts-link").link.as_deref(), Some("etc/hosts"));

    let long_name = format!("{LONG_DIR}/{LONG_FILE}");
    let long = by_name(&long_name);
    assert_eq!(
        long.pax.get("path").map(Vec::as_slice),
        Some(long_name.as_bytes())
    );
    assert_eq!(long.data, b"long\n");
    let link = by_name("link-to-long");
    assert_eq!(link.link.as_deref(), Some(long_name.as_str()));
    assert!(link.pax.contains_key("linkpath"));

    let hostname = by_name("etc/hostname");
    assert_eq!(hostname.pax["SCHILY.xattr.user.test"], b"hello");
    assert_eq!(
        by_name("etc/").pax["SCHILY.xattr.user.dir-attr"],
        b"\x00binary\xff"
    );
    assert_eq!(by_name("abs-link").link.as_deref(), Some("/etc/hosts"));
    assert_eq!(by_name("pipe").kind, EntryType::Fifo);
    assert_eq!(by_name("shared/").mode, 0o2775);
    let hostname_mtime = std::os::unix::fs::MetadataExt::mtime(
        &fs::symlink_metadata(src.path().join("etc/hostname")).unwrap(),
    );
    assert_eq!(by_name("etc/hostname").mtime as i64, hostname_mtime);
    if is_root() {
        let dev = by_name("dev-null");
        assert_eq!((dev.kind, dev.dev), (EntryType::Char, (1, 3)));
        assert_eq!(
            (by_name("etc/hosts").uid, by_name("etc/hosts").gid),
            (1234, 5678)
        );
    }
}

#[test]
fn mtimes_are_clamped_to_source_date_epoch() {
    let src = tempdir().unwrap();
    write_file(&src.path().join("old"), b"old");
    write_file(&src.path().join("new"), b"new");
    let set = |name: &str, t: i64| {
        let t = filetime::FileTime::from_unix_time(t, 0);
        filetime::set_file_mtime(src.path().join(name), t).unwrap();
    };
    set("old", 1_000);
    set("new", 5_000);
    let (_, blob) = write_vec(src.path(), &opts(Compression::Uncompressed, Some(2_000)));
    let entries = tar_entries(&blob);
    let mtime = |n: &str| entries.iter().find(|e| e.name == n).unwrap().mtime;
    assert_eq!(mtime("old"), 1_000);
    assert_eq!(mtime("new"), 2_000);
}

#[test]
fn empty_diff_is_a_valid_empty_layer() {
    let src = tempdir().unwrap();
    assert!(is_empty_dir(src.path()).unwrap());
    for compression in [
        Compression::default(),
        Compression::Zstd { level: 3 },
        Compression::Uncompressed,
    ] {
        let (info, blob) = write_vec(src.path(), &opts(compression, Some(0)));
        // The well-known diff_id of an empty layer (1024 zero bytes).
        assert_eq!(
            info.diff_id,
            "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"
        );
        assert_eq!((info.entries, info.uncompressed_size), (0, 1024));
        let dst = tempdir().unwrap();
        let un = unpack_layer(blob.as_slice(), dst.path(), &unpack_opts()).unwrap();
        assert_eq!((un.entries, un.bytes), (0, 1024));
        assert!(is_empty_dir(dst.path()).unwrap());
    }
    write_file(&src.path().join("f"), b"");
    assert!(!is_empty_dir(src.path()).unwrap());
    assert!(is_empty_dir(&src.path().join("missing")).is_err());
}

#[test]
fn skip_leaves_out_paths_and_subtrees() {
    let src = tempdir().unwrap();
    write_file(&src.path().join("keep/a"), b"a");
    write_file(&src.path().join("cache/x/y"), b"y");
    write_file(&src.path().join("keep/skipme"), b"s");
    let opts = LayerOptions {
        compression: Compression::Uncompressed,
        source_date_epoch: None,
        skip: Some(Box::new(|p: &Path| {
            p == Path::new("cache") || p == Path::new("keep/skipme")
        })),
        chunk_cache: None,
    };
    let (info, blob) = write_vec(src.path(), &opts);
    let names: Vec<String> = tar_entries(&blob).into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["keep/", "keep/a"]);
    assert_eq!(info.entries, 2);
}

#[test]
fn sockets_are_skipped() {
    let src = tempdir().unwrap();
    write_file(&src.path().join("f"), b"f");
    let _listener = std::os::unix::net::UnixListener::bind(src.path().join("sock")).unwrap();
    let (_, blob) = write_vec(src.path(), &opts(Compression::Uncompressed, None));
    let names: Vec<String> = tar_entries(&blob).into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["f"]);
}

#[test]
fn write_layer_refuses_a_non_directory() {
    let src = tempdir().unwrap();
    write_file(&src.path().join("f"), b"f");
    let err = write_layer(&src.path().join("f"), &LayerOptions::default(), Vec::new()).unwrap_err();
    assert!(err.to_string().contains("not a directory"), "{err}");
}

#[test]
fn unpack_over_existing_entries_replaces_without_following() {
    // Oci mode into a non-empty dest: a file replaces a symlink (instead of
    // writing through it), a dir entry over an existing dir merges.
    let base = tempdir().unwrap();
    let outside = base.path().join("outside");
    write_file(&outside.join("target"), b"precious");
    let dest = base.path().join("dest");
    fs::create_dir_all(dest.join("d")).unwrap();
    write_file(&dest.join("d/old"), b"old");
    std::os::unix::fs::symlink(outside.join("target"), dest.join("f")).unwrap();
    let tar = raw_tar(&[
        raw_dir("d/"),
        raw_file("d/new", b"new"),
        raw_file("f", b"mine"),
    ]);
    unpack_layer(tar.as_slice(), &dest, &UnpackOptions::default()).unwrap();
    assert_eq!(fs::read(outside.join("target")).unwrap(), b"precious");
    assert_eq!(fs::read(dest.join("f")).unwrap(), b"mine");
    assert!(
        !fs::symlink_metadata(dest.join("f"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(fs::read(dest.join("d/old")).unwrap(), b"old");
    assert_eq!(fs::read(dest.join("d/new")).unwrap(), b"new");
}

#[test]
fn unpack_creates_missing_parents_and_sets_dir_times_last() {
    let dest = tempdir().unwrap();
    // "a/b/" comes after its child, and "a/" is never listed.
    let tar = raw_tar(&[raw_file("a/b/c", b"c"), raw_dir("a/b/")]);
    unpack_layer(tar.as_slice(), dest.path(), &UnpackOptions::default()).unwrap();
    let snap = snapshot(dest.path());
    assert_eq!(snap["a"].kind, "dir");
    assert_eq!(snap["a"].mode, 0o755);
    assert_eq!(snap["a/b"].mtime, 1_600_000_000);
    assert_eq!(snap["a/b/c"].mtime, 1_600_000_000);
}

#[test]
fn hardlink_to_a_file_of_a_lower_layer() {
    let dest = tempdir().unwrap();
    write_file(&dest.path().join("lower/file"), b"lower");
    let tar = raw_tar(&[raw_hardlink("h", "lower/file")]);
    let opts = UnpackOptions {
        whiteouts: WhiteoutMode::Apply,
        ..UnpackOptions::default()
    };
    unpack_layer(tar.as_slice(), dest.path(), &opts).unwrap();
    let snap = snapshot(dest.path());
    assert_eq!(snap["h"].hardlink_of.as_deref(), Some("h"));
    assert_eq!(snap["lower/file"].hardlink_of.as_deref(), Some("h"));
}

#[test]
fn v7_directories_named_with_a_slash() {
    let dest = tempdir().unwrap();
    let mut d = raw_file("olddir/", b"");
    d.mode = 0o700;
    let tar = raw_tar(&[d, raw_file("olddir/f", b"f")]);
    unpack_layer(tar.as_slice(), dest.path(), &UnpackOptions::default()).unwrap();
    let snap = snapshot(dest.path());
    assert_eq!((snap["olddir"].kind, snap["olddir"].mode), ("dir", 0o700));
}
