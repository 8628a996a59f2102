use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, symlink};
use std::path::{Path, PathBuf};

use kiln_fs::LayeredFs;

use super::copy::{diff, materialize, prune_copied_up};
use super::*;

fn tree() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn resolve_in_root_never_leaves_the_root() {
    let t = tree();
    let r = t.path();
    fs::create_dir_all(r.join("etc")).unwrap();
    fs::create_dir_all(r.join("run/systemd")).unwrap();
    symlink("/run/systemd/stub.conf", r.join("etc/resolv.conf")).unwrap();
    symlink("../../../../..", r.join("up")).unwrap();
    symlink("/", r.join("abs")).unwrap();
    assert_eq!(
        resolve_in_root(r, "/etc/resolv.conf").unwrap(),
        PathBuf::from("run/systemd/stub.conf")
    );
    assert_eq!(resolve_in_root(r, "up/etc").unwrap(), PathBuf::from("etc"));
    assert_eq!(resolve_in_root(r, "abs/abs/x").unwrap(), PathBuf::from("x"));
    assert_eq!(
        resolve_in_root(r, "../../a/./b/..").unwrap(),
        PathBuf::from("a")
    );
    symlink("loop2", r.join("loop1")).unwrap();
    symlink("loop1", r.join("loop2")).unwrap();
    assert!(resolve_in_root(r, "loop1").is_err());
}

#[test]
fn stubs_are_created_recorded_and_removed() {
    let t = tree();
    let r = t.path();
    fs::create_dir(r.join("etc")).unwrap();
    let mut s = Stubs::default();
    s.ensure(r, Path::new("run/secrets/token"), false).unwrap();
    s.ensure(r, Path::new("proc"), true).unwrap();
    s.ensure(r, Path::new("etc"), true).unwrap();
    assert_eq!(
        s.created,
        vec![
            (PathBuf::from("run"), true),
            (PathBuf::from("run/secrets"), true),
            (PathBuf::from("run/secrets/token"), false),
            (PathBuf::from("proc"), true),
        ]
    );
    assert_eq!(
        s.parents(),
        vec![PathBuf::from("run/secrets"), PathBuf::from("run")]
    );
    // A stub the step wrote into is kept.
    fs::write(r.join("run/secrets/token"), "x").unwrap();
    s.remove_from(r);
    assert!(r.join("run/secrets/token").exists());
    assert!(!r.join("proc").exists());
    fs::write(r.join("run/secrets/token"), "").unwrap();
    s.remove_from(r);
    assert!(!r.join("run").exists());
    assert!(r.join("etc").exists());
}

/// Regression test (issue 9, finding 3): a step that swaps a stub's parent for a symlink to
/// a host directory must not make kiln delete that directory's entries.
#[test]
fn stub_removal_and_pruning_never_follow_a_planted_symlink() {
    let t = tree();
    let r = t.path().join("upper");
    let victim = t.path().join("victim");
    fs::create_dir_all(victim.join("t/d")).unwrap();
    fs::create_dir_all(victim.join("b")).unwrap();
    fs::write(victim.join("b/x"), "").unwrap();
    fs::create_dir_all(&r).unwrap();
    let mut s = Stubs::default();
    s.ensure(&r, Path::new("a/b/x"), false).unwrap();
    s.ensure(&r, Path::new("c/t/d"), true).unwrap();
    // The step moves the stubs' parents away and plants symlinks in their place.
    fs::rename(r.join("a"), r.join("a.old")).unwrap();
    fs::rename(r.join("c"), r.join("c.old")).unwrap();
    symlink(&victim, r.join("a")).unwrap();
    symlink(&victim, r.join("c")).unwrap();
    s.remove_from(&r);
    prune_copied_up(
        &r,
        &s.parents(),
        &LayeredFs::new(vec![victim.clone()], "base"),
    );
    assert!(victim.join("b/x").exists());
    assert!(victim.join("t/d").is_dir());
    assert!(victim.join("b").is_dir());
    assert!(
        fs::symlink_metadata(r.join("a"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

fn etc(r: &Path) {
    fs::create_dir_all(r.join("etc")).unwrap();
    fs::write(
        r.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
    )
    .unwrap();
    fs::write(
        r.join("etc/group"),
        "root:x:0:\napp:x:1000:\nstaff:x:50:app,other\nwheel:x:10:root\n",
    )
    .unwrap();
}

#[test]
fn users_resolve_through_passwd_and_group() {
    let t = tree();
    etc(t.path());
    let view = LayeredFs::new(vec![t.path().to_path_buf()], "test");
    let u = resolve_user("app", &view).unwrap();
    assert_eq!(
        (u.uid, u.gid, u.groups.clone()),
        (1000, 1000, vec![1000, 50])
    );
    assert_eq!(u.home.as_deref(), Some("/home/app"));
    let u = resolve_user("", &view).unwrap();
    assert_eq!((u.uid, u.gid, u.groups), (0, 0, vec![0, 10]));
    let u = resolve_user("1000:staff", &view).unwrap();
    assert_eq!((u.uid, u.gid, u.groups), (1000, 50, vec![50]));
    let u = resolve_user("4242", &view).unwrap();
    assert_eq!((u.uid, u.gid, u.home), (4242, 0, None));
    let u = resolve_user("4242:7", &view).unwrap();
    assert_eq!((u.uid, u.gid), (4242, 7));
    assert!(
        resolve_user("nobody", &view)
            .unwrap_err()
            .to_string()
            .contains("unable to find user nobody")
    );
    assert!(resolve_user("app:nogroup", &view).is_err());
}

#[test]
fn copy_snapshotter_materializes_and_diffs() {
    // Whiteouts are device nodes: mknod needs root.
    kiln_test_support::require_root!();
    let t = tree();
    let base = t.path().join("base");
    fs::create_dir_all(base.join("a/b")).unwrap();
    fs::write(base.join("a/keep"), "keep").unwrap();
    fs::write(base.join("a/change"), "old").unwrap();
    fs::write(base.join("a/b/gone"), "gone").unwrap();
    fs::write(base.join("top"), "top").unwrap();
    fs::hard_link(base.join("top"), base.join("top-link")).unwrap();
    symlink("a/keep", base.join("ln")).unwrap();
    let view = LayeredFs::new(vec![base.clone()], "base");

    let work = t.path().join("tree");
    fs::create_dir(&work).unwrap();
    materialize(&view, &work).unwrap();
    assert_eq!(fs::read_to_string(work.join("a/keep")).unwrap(), "keep");
    assert_eq!(
        fs::read_link(work.join("ln")).unwrap(),
        PathBuf::from("a/keep")
    );
    // Like overlayfs' copy-up, a lower layer's hardlinks become separate files.
    assert_ne!(
        fs::metadata(work.join("top")).unwrap().ino(),
        fs::metadata(work.join("top-link")).unwrap().ino()
    );

    // Nothing changed: an empty diff.
    let out = t.path().join("diff0");
    fs::create_dir(&out).unwrap();
    let s = diff(&view, &work, &out).unwrap();
    assert_eq!(s, super::copy::DiffStats::default());
    assert_eq!(fs::read_dir(&out).unwrap().count(), 0);

    fs::write(work.join("a/change"), "new!").unwrap();
    fs::remove_file(work.join("a/b/gone")).unwrap();
    fs::create_dir(work.join("new")).unwrap();
    fs::write(work.join("new/file"), "n").unwrap();
    let out = t.path().join("diff1");
    fs::create_dir(&out).unwrap();
    let s = diff(&view, &work, &out).unwrap();
    assert_eq!(s.deleted, 1);
    assert_eq!(fs::read_to_string(out.join("a/change")).unwrap(), "new!");
    let wh = fs::symlink_metadata(out.join("a/b/gone")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    assert_eq!(fs::read_to_string(out.join("new/file")).unwrap(), "n");
    assert!(!out.join("a/keep").exists());
    assert!(!out.join("top").exists());
}

#[test]
fn copied_up_parents_of_stubs_are_pruned() {
    let t = tree();
    let lower = t.path().join("lower");
    fs::create_dir_all(lower.join("etc")).unwrap();
    fs::create_dir_all(lower.join("var")).unwrap();
    let upper = t.path().join("upper");
    fs::create_dir_all(upper.join("etc")).unwrap();
    fs::create_dir_all(upper.join("var")).unwrap();
    fs::write(upper.join("var/log"), "real change").unwrap();
    let view = LayeredFs::new(vec![lower], "lower");
    prune_copied_up(&upper, &[PathBuf::from("etc"), PathBuf::from("var")], &view);
    assert!(!upper.join("etc").exists());
    assert!(upper.join("var/log").exists());
}
