//! A file op written from memory ([`Upper::in_memory`] + [`write_layer_entries`]) gives
//! the same layer bytes as the same op applied to a directory and written from there.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use kiln_fs::{ContextFs, CopyOptions, Ids, LayeredFs, SourceFs, Upper};
use kiln_layer::{Compression, LayerOptions, write_layer, write_layer_entries};

use super::layer_entry;

fn write(path: &Path, data: &[u8], mode: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, data).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A context with the cases COPY has to keep: nested dirs, modes (setuid), symlinks,
/// hardlinks (two names copied, and one copied alone), a non-UTF-8 name, an xattr, a
/// file big enough for chunks of its own.
fn context(root: &Path) {
    write(&root.join("src/a.txt"), b"a\n", 0o644);
    write(&root.join("src/deep/er/b.txt"), b"b\n", 0o600);
    write(&root.join("src/tool"), b"#!/bin/sh\n", 0o4755);
    symlink("a.txt", root.join("src/link")).unwrap();
    symlink("../nowhere", root.join("src/dangling")).unwrap();
    fs::hard_link(root.join("src/a.txt"), root.join("src/a-again.txt")).unwrap();
    write(&root.join("lonely.txt"), b"l\n", 0o644);
    fs::hard_link(root.join("lonely.txt"), root.join("other-name.txt")).unwrap();
    write(
        &root.join(std::ffi::OsStr::from_bytes(b"src/caf\xe9.txt")),
        b"latin-1\n",
        0o644,
    );
    let _ = xattr::set(root.join("src/a.txt"), "user.kiln", b"1");
    let big: Vec<u8> = (0..(9u32 << 20)).map(|i| (i * 7 % 251) as u8).collect();
    write(&root.join("big/blob.bin"), &big, 0o644);
    write(&root.join("src/overwritten/x"), b"x\n", 0o644);
    for (i, name) in ["src", "src/deep", "big", "lonely.txt"].iter().enumerate() {
        let t = filetime::FileTime::from_unix_time(1_600_000_000 + i as i64, 0);
        filetime::set_symlink_file_times(root.join(name), t, t).unwrap();
    }
}

/// A base with an existing directory of its own owner, mode and mtime.
fn base(root: &Path) {
    fs::create_dir_all(root.join("etc/conf.d")).unwrap();
    fs::set_permissions(root.join("etc/conf.d"), fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::lchown(root.join("etc/conf.d"), Some(3), Some(4)).unwrap();
    write(
        &root.join("etc/passwd"),
        b"app:x:1000:1001::/:/bin/sh\n",
        0o644,
    );
    let t = filetime::FileTime::from_unix_time(1_500_000_000, 0);
    filetime::set_symlink_file_times(root.join("etc/conf.d"), t, t).unwrap();
}

fn apply(up: &mut Upper<'_>, ctx: &dyn SourceFs) {
    let all = CopyOptions::default();
    up.copy(ctx, ".", "/data/", &all, false).unwrap();
    up.copy(ctx, "src/*.txt", "/etc/conf.d/", &all, false)
        .unwrap();
    let chowned = CopyOptions {
        owner: Some(Ids {
            uid: 1000,
            gid: 1001,
        }),
        chmod: Some("u+s,g=rx".into()),
        exclude: vec!["deep".into()],
        parents: false,
    };
    up.copy(ctx, "src", "/opt/app", &chowned, false).unwrap();
    // A file over a directory the op made: the directory's subtree goes.
    up.copy(ctx, "lonely.txt", "/data/src/overwritten", &all, false)
        .unwrap();
    up.mkfile("/etc/conf.d/motd", b"hi\n", 0o644, None).unwrap();
    up.mkdir("/srv/www", Some(Ids { uid: 5, gid: 6 })).unwrap();
}

fn digests(epoch: Option<i64>, compression: Compression, apply: fn(&mut Upper<'_>, &dyn SourceFs)) {
    kiln_test_support::require_root!();
    let dir = tempfile::tempdir().unwrap();
    let (c, b, u) = (
        dir.path().join("ctx"),
        dir.path().join("base"),
        dir.path().join("upper"),
    );
    context(&c);
    base(&b);
    fs::create_dir(&u).unwrap();
    let ctx = ContextFs::new(&c, &[]).unwrap();
    let base_fs = LayeredFs::new(vec![b.clone()], "base");
    let opts = LayerOptions {
        compression,
        source_date_epoch: epoch,
        ..Default::default()
    };

    let mut disk = Upper::new(&u, &base_fs);
    apply(&mut disk, &ctx);
    disk.finish().unwrap();
    let mut from_disk = Vec::new();
    let a = write_layer(&u, &opts, &mut from_disk).unwrap();

    let mut mem = Upper::in_memory(&base_fs);
    apply(&mut mem, &ctx);
    let entries = mem.finish_entries().unwrap().expect("in memory");
    let entries = entries
        .into_iter()
        .map(|(rel, node)| layer_entry(&rel, node))
        .collect();
    let mut streamed = Vec::new();
    let b = write_layer_entries(entries, &opts, &mut streamed).unwrap();

    assert!(a.entries > 10, "{a:?}");
    assert!(a.chunks.len() > 1 || compression == Compression::Uncompressed);
    assert_eq!(a.diff_id, b.diff_id, "same tar");
    assert_eq!(a.digest, b.digest, "same blob");
    assert_eq!(a.entries, b.entries);
    assert!(from_disk == streamed);
}

#[test]
fn streamed_copy_gives_the_layer_of_the_staged_one() {
    // New directories get the time they are made: the epoch makes both runs agree.
    digests(Some(1_650_000_000), Compression::default(), apply);
    digests(Some(1_650_000_000), Compression::Uncompressed, apply);
    digests(Some(1_650_000_000), Compression::Zstd { level: 3 }, apply);
}

#[test]
fn streamed_copy_keeps_source_times() {
    // Only into a directory of the base: every entry's time is a source's.
    digests(None, Compression::default(), |up, ctx| {
        let all = CopyOptions::default();
        up.copy(ctx, ".", "/etc/conf.d/", &all, false).unwrap();
    });
}
