//! Hand-made hostile tars: each must be refused (naming the entry) without
//! writing anything outside the destination.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use tar::EntryType;
use tempfile::{TempDir, tempdir};

use super::super::{LayerError, UnpackOptions, WhiteoutMode, unpack_layer};
use super::*;

/// `base/dest` (empty, the destination) next to `base/outside/secret`.
struct Sandbox {
    base: TempDir,
    dest: PathBuf,
    outside: PathBuf,
}

fn sandbox() -> Sandbox {
    let base = tempdir().unwrap();
    let dest = base.path().join("dest");
    let outside = base.path().join("outside");
    fs::create_dir(&dest).unwrap();
    write_file(&outside.join("secret"), b"precious");
    Sandbox {
        base,
        dest,
        outside,
    }
}

/// Everything under `base` except the destination.
fn outside_state(sb: &Sandbox) -> BTreeMap<String, Node> {
    snapshot(sb.base.path())
        .into_iter()
        .filter(|(k, _)| k != "dest" && !k.starts_with("dest/"))
        .collect()
}

const MODES: [WhiteoutMode; 3] = [
    WhiteoutMode::Oci,
    WhiteoutMode::Apply,
    WhiteoutMode::Overlay,
];

/// Unpacks `tar` (built by `make` from the sandbox) in every whiteout mode
/// and expects a refusal naming `entry`, with nothing changed outside dest.
fn expect_refused(make: impl Fn(&Sandbox) -> Vec<u8>, entry: &str) -> LayerError {
    let mut last = None;
    for mode in MODES {
        let sb = sandbox();
        let tar = make(&sb);
        let before = outside_state(&sb);
        let opts = UnpackOptions {
            whiteouts: mode,
            ..UnpackOptions::default()
        };
        let err = unpack_layer(tar.as_slice(), &sb.dest, &opts)
            .expect_err(&format!("{entry:?} must be refused in {mode:?} mode"));
        assert!(
            err.to_string().contains(entry),
            "{mode:?}: error should name {entry:?}: {err}"
        );
        assert_eq!(
            before,
            outside_state(&sb),
            "{mode:?}: {entry:?} wrote outside dest"
        );
        assert_eq!(fs::read(sb.outside.join("secret")).unwrap(), b"precious");
        last = Some(err);
    }
    last.unwrap()
}

fn is_unsafe(err: &LayerError) -> bool {
    matches!(err, LayerError::UnsafeEntry { .. })
}

#[test]
fn dotdot_is_refused() {
    let err = expect_refused(|_| raw_tar(&[raw_file("../evil", b"x")]), "../evil");
    assert!(is_unsafe(&err), "{err}");
}

#[test]
fn dotdot_after_a_directory_is_refused() {
    let err = expect_refused(
        |_| raw_tar(&[raw_dir("a/"), raw_file("a/../../evil", b"x")]),
        "a/../../evil",
    );
    assert!(is_unsafe(&err), "{err}");
}

#[test]
fn absolute_path_is_refused() {
    let name = format!(
        "/tmp/kiln-layer-abs-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let err = expect_refused(|_| raw_tar(&[raw_file(&name, b"x")]), &name);
    assert!(is_unsafe(&err), "{err}");
    assert!(!Path::new(&name).exists());
}

#[test]
fn pax_path_with_dotdot_is_refused() {
    // The ustar name is harmless; the PAX `path` record, which wins, is not.
    let make = |_: &Sandbox| {
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([("path", &b"../pax-evil"[..])])
            .unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(1);
        h.set_mode(0o644);
        h.set_entry_type(EntryType::Regular);
        b.append_data(&mut h, "harmless", &b"x"[..]).unwrap();
        b.into_inner().unwrap()
    };
    expect_refused(make, "../pax-evil");
}

#[test]
fn file_through_symlink_to_root_is_refused() {
    // link -> /, then link/<absolute path of the sandbox>/pwned: following
    // the link would write into the sandbox, outside dest.
    let make = |sb: &Sandbox| {
        let name = format!("link{}/pwned", path_str(sb.base.path()));
        raw_tar(&[raw_symlink("link", "/"), raw_file(&name, b"x")])
    };
    let err = expect_refused(make, "pwned");
    assert!(err.to_string().contains("symlink"), "{err}");
}

#[test]
fn file_through_symlink_to_outside_is_refused() {
    let make = |sb: &Sandbox| {
        let target = path_str(&sb.outside);
        raw_tar(&[
            raw_symlink("out", &target),
            raw_file("out/secret", b"pwned"),
        ])
    };
    expect_refused(make, "out/secret");
}

#[test]
fn file_through_symlink_to_parent_is_refused() {
    let make = |_: &Sandbox| raw_tar(&[raw_symlink("l", ".."), raw_file("l/x", b"x")]);
    let err = expect_refused(make, "l/x");
    assert!(is_unsafe(&err), "{err}");
}

#[test]
fn directory_through_symlink_is_refused() {
    let make = |_: &Sandbox| raw_tar(&[raw_symlink("l", ".."), raw_dir("l/newdir/")]);
    expect_refused(make, "l/newdir");
}

#[test]
fn hardlink_escaping_is_refused() {
    let err = expect_refused(
        |_| raw_tar(&[raw_hardlink("passwd", "../../etc/passwd")]),
        "passwd",
    );
    assert!(err.to_string().contains("../../etc/passwd"), "{err}");
    assert!(is_unsafe(&err), "{err}");
}

#[test]
fn hardlink_to_absolute_path_is_refused() {
    expect_refused(
        |sb| {
            let target = path_str(&sb.outside.join("secret"));
            raw_tar(&[raw_hardlink("h", &target)])
        },
        "h",
    );
}

#[test]
fn hardlink_through_symlink_is_refused() {
    // A hardlink to a file outside would let later writes modify it.
    let make = |sb: &Sandbox| {
        let target = path_str(&sb.outside);
        raw_tar(&[raw_symlink("ln", &target), raw_hardlink("h", "ln/secret")])
    };
    let err = expect_refused(make, "h");
    assert!(err.to_string().contains("symlink"), "{err}");
}

#[test]
fn hardlink_to_missing_target_is_refused() {
    let err = expect_refused(|_| raw_tar(&[raw_hardlink("h", "nope")]), "h");
    assert!(err.to_string().contains("does not exist"), "{err}");
}

#[test]
fn hardlink_to_a_directory_is_refused() {
    expect_refused(|_| raw_tar(&[raw_dir("d/"), raw_hardlink("h", "d")]), "h");
}

#[test]
fn devices_are_refused_without_allow_devices() {
    if !is_root() {
        // Not root: devices cannot be created and the unpacker leaves them out. The
        // refusal below needs root (a skip on a developer's machine, a failure in CI).
        let sb = sandbox();
        let tar = raw_tar(&[raw_device("sda", EntryType::Block, 8, 0)]);
        unpack_layer(tar.as_slice(), &sb.dest, &UnpackOptions::default()).unwrap();
        assert!(!sb.dest.join("sda").exists());
    }
    kiln_test_support::require_root!();
    let err = expect_refused(
        |_| raw_tar(&[raw_device("sda", EntryType::Block, 8, 0)]),
        "sda",
    );
    assert!(err.to_string().contains("device"), "{err}");
    expect_refused(
        |_| raw_tar(&[raw_device("mem", EntryType::Char, 1, 1)]),
        "mem",
    );
    // With allow_devices they are created.
    let sb = sandbox();
    let tar = raw_tar(&[raw_device("sda", EntryType::Block, 8, 0)]);
    let opts = UnpackOptions {
        allow_devices: true,
        ..UnpackOptions::default()
    };
    unpack_layer(tar.as_slice(), &sb.dest, &opts).unwrap();
    let snap = snapshot(&sb.dest);
    assert_eq!(
        (snap["sda"].kind, snap["sda"].rdev),
        ("block", rustix::fs::makedev(8, 0))
    );
}

#[test]
fn whiteout_char_device_in_a_tar_is_refused() {
    for allow_devices in [false, true] {
        let sb = sandbox();
        let tar = raw_tar(&[raw_device("hidden", EntryType::Char, 0, 0)]);
        let opts = UnpackOptions {
            allow_devices,
            ..UnpackOptions::default()
        };
        let err = unpack_layer(tar.as_slice(), &sb.dest, &opts).unwrap_err();
        assert!(err.to_string().contains("hidden"), "{err}");
        assert!(!sb.dest.join("hidden").exists());
    }
}

#[test]
fn invalid_whiteout_names_are_refused() {
    for name in [".wh...", ".wh..", ".wh."] {
        let sb = sandbox();
        let tar = raw_tar(&[raw_file(name, b"")]);
        let opts = UnpackOptions {
            whiteouts: WhiteoutMode::Apply,
            ..UnpackOptions::default()
        };
        let err = unpack_layer(tar.as_slice(), &sb.dest, &opts).unwrap_err();
        assert!(err.to_string().contains(name), "{err}");
        assert!(sb.base.path().join("dest").exists());
        assert!(sb.outside.join("secret").exists());
    }
}

#[test]
fn entries_replace_symlinks_instead_of_following_them() {
    // Not refused: a later entry of the same name replaces the symlink (or
    // the hardlink to it) and the target is never written.
    let sb = sandbox();
    let target = path_str(&sb.outside.join("secret"));
    let dir_target = path_str(&sb.outside);
    let tar = raw_tar(&[
        raw_symlink("s", &target),
        raw_hardlink("h", "s"),
        raw_file("h", b"pwned"),
        raw_file("s", b"pwned"),
        raw_symlink("d", &dir_target),
        raw_dir("d/"),
        raw_file("d/x", b"x"),
    ]);
    let before = outside_state(&sb);
    for mode in MODES {
        let opts = UnpackOptions {
            whiteouts: mode,
            ..UnpackOptions::default()
        };
        unpack_layer(tar.as_slice(), &sb.dest, &opts).unwrap();
        assert_eq!(before, outside_state(&sb));
        let snap = snapshot(&sb.dest);
        assert_eq!(snap["s"].kind, "file");
        assert_eq!(snap["h"].kind, "file");
        assert_eq!(snap["d"].kind, "dir");
        assert_eq!(snap["d/x"].data.as_deref(), Some(&b"x"[..]));
    }
}

#[test]
fn absolute_symlink_targets_are_created_verbatim() {
    let sb = sandbox();
    let tar = raw_tar(&[
        raw_symlink("etc-link", "/etc/passwd"),
        raw_symlink("up", "../../.."),
    ]);
    unpack_layer(tar.as_slice(), &sb.dest, &UnpackOptions::default()).unwrap();
    assert_eq!(
        fs::read_link(sb.dest.join("etc-link")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert_eq!(
        fs::read_link(sb.dest.join("up")).unwrap(),
        Path::new("../../..")
    );
}
