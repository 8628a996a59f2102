//! Whiteouts: overlayfs-style on disk <-> OCI `.wh.` entries in layers.

use std::fs;
use std::path::Path;

use rustix::fs::FileType;
use tar::EntryType;
use tempfile::tempdir;

use super::super::{UnpackOptions, WhiteoutMode, unpack_layer};
use super::*;

fn unpack(blob: &[u8], dest: &Path, whiteouts: WhiteoutMode) {
    let opts = UnpackOptions {
        whiteouts,
        ..UnpackOptions::default()
    };
    unpack_layer(blob, dest, &opts).unwrap();
}

/// A diff as an overlayfs upper dir holds it: deleted `gone`, `sub/gone2`
/// and `sub/gone3` (a hardlink of `gone`'s whiteout, as overlayfs shares one
/// whiteout inode), an opaque `opq/` (trusted xattr) and `uopq/` (user xattr).
fn overlay_diff(dir: &Path) {
    mknod(&dir.join("gone"), FileType::CharacterDevice, 0o644, 0, 0);
    fs::create_dir(dir.join("sub")).unwrap();
    mknod(
        &dir.join("sub/gone2"),
        FileType::CharacterDevice,
        0o644,
        0,
        0,
    );
    fs::hard_link(dir.join("gone"), dir.join("sub/gone3")).unwrap();
    write_file(&dir.join("opq/keep"), b"keep");
    xattr::set(dir.join("opq"), "trusted.overlay.opaque", b"y").unwrap();
    write_file(&dir.join("uopq/new"), b"new");
    xattr::set(dir.join("uopq"), "user.overlay.opaque", b"y").unwrap();
    xattr::set(dir.join("uopq"), "user.kept", b"1").unwrap();
    set_all_mtimes(dir, 1_600_000_000);
}

#[test]
fn overlay_whiteouts_become_wh_entries() {
    // mknod and trusted.* xattrs need root.
    kiln_test_support::require_root!();
    let src = tempdir().unwrap();
    overlay_diff(src.path());
    let (info, blob) = write_vec(src.path(), &opts(Compression::Uncompressed, None));
    let entries = tar_entries(&blob);
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            ".wh.gone",
            "opq/",
            "opq/.wh..wh..opq",
            "opq/keep",
            "sub/",
            "sub/.wh.gone2",
            "sub/.wh.gone3",
            "uopq/",
            "uopq/.wh..wh..opq",
            "uopq/new",
        ]
    );
    assert_eq!(info.entries, names.len() as u64);
    for e in entries.iter().filter(|e| e.name.contains(".wh.")) {
        assert_eq!(e.kind, EntryType::Regular, "{}", e.name);
        assert_eq!((e.mode, e.uid, e.gid, e.size), (0, 0, 0, 0), "{}", e.name);
    }
    for e in &entries {
        assert!(
            e.pax.keys().all(|k| !k.contains("overlay")),
            "{}: {:?}",
            e.name,
            e.pax
        );
    }
    let uopq = entries.iter().find(|e| e.name == "uopq/").unwrap();
    assert_eq!(uopq.pax["SCHILY.xattr.user.kept"], b"1");
}

#[test]
fn overlay_mode_recreates_whiteouts() {
    // mknod and trusted.* xattrs need root.
    kiln_test_support::require_root!();
    let src = tempdir().unwrap();
    overlay_diff(src.path());
    let epoch = Some(1_500_000_000);
    let (info, blob) = write_vec(src.path(), &opts(Compression::default(), epoch));
    let dest = tempdir().unwrap();
    unpack(&blob, dest.path(), WhiteoutMode::Overlay);
    let snap = snapshot(dest.path());
    for wh in ["gone", "sub/gone2", "sub/gone3"] {
        assert_eq!((snap[wh].kind, snap[wh].rdev), ("char", 0), "{wh}");
    }
    assert_eq!(snap["opq"].xattrs["trusted.overlay.opaque"], b"y");
    assert_eq!(snap["uopq"].xattrs["trusted.overlay.opaque"], b"y");
    assert_eq!(snap["opq/keep"].data.as_deref(), Some(&b"keep"[..]));
    assert!(
        snap.keys().all(|k| !k.contains(".wh.")),
        "{:?}",
        snap.keys()
    );
    // And back: the unpacked dir is the same diff.
    let (again, _) = write_vec(dest.path(), &opts(Compression::default(), epoch));
    assert_eq!(again.diff_id, info.diff_id);
}

#[test]
fn oci_mode_keeps_wh_files() {
    let dest = tempdir().unwrap();
    let tar = raw_tar(&[
        raw_file(".wh.gone", b""),
        raw_dir("opq/"),
        raw_file("opq/.wh..wh..opq", b""),
    ]);
    unpack(&tar, dest.path(), WhiteoutMode::Oci);
    let snap = snapshot(dest.path());
    assert_eq!(snap[".wh.gone"].kind, "file");
    assert_eq!(snap["opq/.wh..wh..opq"].kind, "file");
}

/// A merged rootfs as earlier layers left it.
fn prepared_rootfs(dir: &Path) {
    for f in [
        "a",
        "b/c",
        "b/keep",
        "d/e/f",
        "opq/old1",
        "opq/sub/old2",
        "keep.txt",
        "x",
    ] {
        write_file(&dir.join(f), f.as_bytes());
    }
}

#[test]
fn apply_mode_deletes_whiteouts_and_empties_opaque_dirs() {
    let rootfs = tempdir().unwrap();
    prepared_rootfs(rootfs.path());
    let tar = raw_tar(&[
        raw_file(".wh.a", b""),
        raw_file("b/.wh.c", b""),
        raw_file(".wh.d", b""),
        raw_file(".wh.missing", b""),
        raw_dir("opq/"),
        raw_file("opq/.wh..wh..opq", b""),
        raw_file("opq/new", b"new"),
        raw_file("opq/sub/new2", b"new2"),
    ]);
    unpack(&tar, rootfs.path(), WhiteoutMode::Apply);
    let snap = snapshot(rootfs.path());
    let keys: Vec<&str> = snap.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "b",
            "b/keep",
            "keep.txt",
            "opq",
            "opq/new",
            "opq/sub",
            "opq/sub/new2",
            "x"
        ]
    );
}

#[test]
fn apply_mode_opaque_marker_after_same_layer_entries_keeps_them() {
    // Per the OCI spec whiteouts only hide lower layers, whatever the order.
    let rootfs = tempdir().unwrap();
    prepared_rootfs(rootfs.path());
    let tar = raw_tar(&[
        raw_file("opq/new", b"new"),
        raw_file("opq/sub/new2", b"new2"),
        raw_file("opq/.wh..wh..opq", b""),
        // Same-layer whiteouts do not delete this layer's own entries...
        raw_file("x2", b"x2"),
        raw_file(".wh.x2", b""),
        // ...but a whiteout then a new entry of the same name replaces it.
        raw_file(".wh.x", b""),
        raw_file("x", b"new x"),
    ]);
    write_file(&rootfs.path().join("x2"), b"lower x2");
    unpack(&tar, rootfs.path(), WhiteoutMode::Apply);
    let snap = snapshot(rootfs.path());
    let opq: Vec<&str> = snap
        .keys()
        .map(String::as_str)
        .filter(|k| k.starts_with("opq"))
        .collect();
    assert_eq!(opq, ["opq", "opq/new", "opq/sub", "opq/sub/new2"]);
    assert_eq!(snap["x2"].data.as_deref(), Some(&b"x2"[..]));
    assert_eq!(snap["x"].data.as_deref(), Some(&b"new x"[..]));
    assert!(snap.contains_key("a") && snap.contains_key("d/e/f"));
}

#[test]
fn apply_mode_written_layer_on_prepared_rootfs() {
    // mknod and trusted.* xattrs need root.
    kiln_test_support::require_root!();
    // A diff with overlay whiteouts, written with write_layer, applied.
    let diff = tempdir().unwrap();
    mknod(&diff.path().join("a"), FileType::CharacterDevice, 0, 0, 0);
    fs::create_dir(diff.path().join("d")).unwrap();
    mknod(&diff.path().join("d/e"), FileType::CharacterDevice, 0, 0, 0);
    write_file(&diff.path().join("opq/sub/new2"), b"n");
    xattr::set(diff.path().join("opq"), "trusted.overlay.opaque", b"y").unwrap();
    let (_, blob) = write_vec(diff.path(), &opts(Compression::Zstd { level: 3 }, None));
    let rootfs = tempdir().unwrap();
    prepared_rootfs(rootfs.path());
    unpack(&blob, rootfs.path(), WhiteoutMode::Apply);
    let snap = snapshot(rootfs.path());
    assert!(!snap.contains_key("a"));
    assert!(snap.contains_key("d") && !snap.contains_key("d/e"));
    assert!(!snap.contains_key("opq/old1") && !snap.contains_key("opq/sub/old2"));
    assert!(snap.contains_key("opq/sub/new2") && snap.contains_key("b/c"));
    assert!(snap.values().all(|n| n.kind != "char"));
    assert!(
        snap.values()
            .all(|n| n.xattrs.keys().all(|k| !k.contains("overlay")))
    );
}

#[test]
fn apply_mode_whiteout_through_symlink_is_refused() {
    let base = tempdir().unwrap();
    let outside = base.path().join("outside");
    write_file(&outside.join("secret"), b"s");
    let rootfs = base.path().join("rootfs");
    fs::create_dir(&rootfs).unwrap();
    std::os::unix::fs::symlink(&outside, rootfs.join("ln")).unwrap();
    let tar = raw_tar(&[raw_file("ln/.wh.secret", b"")]);
    let opts = UnpackOptions {
        whiteouts: WhiteoutMode::Apply,
        ..UnpackOptions::default()
    };
    let err = unpack_layer(tar.as_slice(), &rootfs, &opts).unwrap_err();
    assert!(err.to_string().contains("ln/.wh.secret"), "{err}");
    assert!(err.to_string().contains("symlink"), "{err}");
    assert!(outside.join("secret").exists());
    // Opaque markers too.
    let tar = raw_tar(&[raw_file("ln/.wh..wh..opq", b"")]);
    assert!(unpack_layer(tar.as_slice(), &rootfs, &opts).is_err());
    assert!(outside.join("secret").exists());
}

#[test]
fn overlay_xattrs_in_a_layer_are_ignored() {
    // A layer may not forge overlayfs metadata through PAX xattr records.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    h.set_mtime(0);
    b.append_pax_extensions([
        ("SCHILY.xattr.user.overlay.opaque", &b"y"[..]),
        ("SCHILY.xattr.trusted.overlay.opaque", &b"y"[..]),
        ("SCHILY.xattr.user.fine", &b"1"[..]),
    ])
    .unwrap();
    b.append_data(&mut h, "d2/", &b""[..]).unwrap();
    let tar = b.into_inner().unwrap();
    let dest = tempdir().unwrap();
    unpack(&tar, dest.path(), WhiteoutMode::Oci);
    let names: Vec<String> = xattr::list(dest.path().join("d2"))
        .unwrap()
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["user.fine"]);
}

// Regression (issue 9, finding 9): an opaque marker at a layer's root emptied the
// rootfs in Apply mode (`--output type=local`) but overlayfs, which RUN steps and
// BuildKit's default snapshotter see the layer through, ignores opaqueness on a lower
// layer's root. kiln follows overlayfs: the marker at the root has no effect.
#[test]
fn opaque_marker_at_the_root_is_ignored_like_overlayfs() {
    for mode in [
        WhiteoutMode::Oci,
        WhiteoutMode::Overlay,
        WhiteoutMode::Apply,
    ] {
        let rootfs = tempdir().unwrap();
        write_file(&rootfs.path().join("lower"), b"l");
        let tar = raw_tar(&[
            raw_file("a", b"a"),
            raw_file(".wh..wh..opq", b""),
            raw_file("b", b"b"),
            raw_file("sub/c", b"c"),
        ]);
        unpack(&tar, rootfs.path(), mode);
        let snap = snapshot(rootfs.path());
        let mut keys: Vec<&str> = snap.keys().map(String::as_str).collect();
        if mode == WhiteoutMode::Oci {
            // Kept as the plain file it is in the tar.
            assert_eq!(keys.remove(0), ".wh..wh..opq");
        }
        assert_eq!(keys, ["a", "b", "lower", "sub", "sub/c"], "{mode:?}");
        let attrs: Vec<_> = xattr::list(rootfs.path()).unwrap().collect();
        assert!(
            !attrs
                .iter()
                .any(|a| a.to_string_lossy().ends_with("overlay.opaque")),
            "{mode:?}: the root must not be marked opaque: {attrs:?}"
        );
    }
}
