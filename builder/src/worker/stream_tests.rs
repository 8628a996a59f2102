//! A file op written from memory ([`Upper::in_memory`] + [`write_layer_entries`]) gives
//! the same layer bytes as the same op applied to a directory and written from there.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use kiln_fs::NodeKind;
use kiln_fs::{ContextFs, CopyOptions, Ids, LayeredFs, SourceFs, Upper};
use kiln_layer::{Compression, LayerOptions, write_layer, write_layer_entries_with};

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
    let (entries, chunks) = compare(epoch, compression, context, apply);
    assert!(entries.is_empty() || chunks > 1 || compression == Compression::Uncompressed);
}

/// Applies `apply` to a directory and to memory over the context `setup` makes, and
/// checks that both give the same layer; returns the in-memory entries.
fn compare(
    epoch: Option<i64>,
    compression: Compression,
    setup: fn(&Path),
    apply: fn(&mut Upper<'_>, &dyn SourceFs),
) -> (kiln_fs::Entries, usize) {
    if !kiln_test_support::require::check_root() {
        return Default::default();
    }
    let dir = tempfile::tempdir().unwrap();
    let (c, b, u) = (
        dir.path().join("ctx"),
        dir.path().join("base"),
        dir.path().join("upper"),
    );
    setup(&c);
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
    let kept = mem.finish_entries().unwrap().expect("in memory");
    let entries = kept
        .clone()
        .into_iter()
        .map(|(rel, node)| layer_entry(&rel, node))
        .collect();
    let mut streamed = Vec::new();
    let b = write_layer_entries_with(entries, &opts, &mut streamed, &super::open_archive).unwrap();

    assert!(a.entries > 10, "{a:?}");
    assert_eq!(a.diff_id, b.diff_id, "same tar");
    assert_eq!(a.digest, b.digest, "same blob");
    assert_eq!(a.entries, b.entries);
    assert!(from_disk == streamed);
    (kept, a.chunks.len())
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

/// A tar member with raw header fields (the `tar` crate refuses to write some names
/// this test needs, such as `../x`).
struct Member<'a> {
    name: &'a str,
    kind: tar::EntryType,
    mode: u32,
    ids: (u64, u64),
    mtime: u64,
    link: &'a str,
    data: &'a [u8],
}

fn member<'a>(name: &'a str, data: &'a [u8]) -> Member<'a> {
    Member {
        name,
        kind: tar::EntryType::Regular,
        mode: 0o644,
        ids: (0, 0),
        mtime: 1_400_000_000,
        link: "",
        data,
    }
}

fn tar_bytes(members: &[Member<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for m in members {
        let mut h = tar::Header::new_ustar();
        let name = &mut h.as_old_mut().name;
        name[..m.name.len()].copy_from_slice(m.name.as_bytes());
        let link = &mut h.as_old_mut().linkname;
        link[..m.link.len()].copy_from_slice(m.link.as_bytes());
        h.set_entry_type(m.kind);
        h.set_mode(m.mode);
        h.set_uid(m.ids.0);
        h.set_gid(m.ids.1);
        h.set_mtime(m.mtime);
        h.set_size(m.data.len() as u64);
        h.set_cksum();
        b.append(&h, m.data).unwrap();
    }
    b.into_inner().unwrap()
}

static BIG_A: std::sync::LazyLock<Vec<u8>> =
    std::sync::LazyLock::new(|| (0..(600u32 << 10)).map(|i| (i * 13 % 251) as u8).collect());
static BIG_Z: std::sync::LazyLock<Vec<u8>> =
    std::sync::LazyLock::new(|| (0..(700u32 << 10)).map(|i| (i * 7 % 241) as u8).collect());

/// An archive with what ADD has to keep: the destination itself (`./`), directories
/// with their modes and owners, setuid/setgid files, members without their parents,
/// an absolute name, symlinks, hardlinks (to a small and to a big member, and one
/// whose first name a later member replaces), members replacing earlier ones, and big
/// members out of path order (read from the archive again when the layer is written).
fn archive_context(root: &Path) {
    use tar::EntryType as T;
    let dir = |name, mode, ids| Member {
        kind: T::Directory,
        mode,
        ids,
        ..member(name, b"")
    };
    let link = |name, kind, to| Member {
        kind,
        link: to,
        ..member(name, b"")
    };
    let members = [
        dir("./", 0o755, (0, 0)),
        member("zz/big.bin", &BIG_Z),
        dir("app/", 0o750, (7, 8)),
        Member {
            mode: 0o4755,
            ids: (7, 8),
            mtime: 1_300_000_000,
            ..member("app/tool", b"#!/bin/sh\n")
        },
        Member {
            mode: 0o2750,
            ..member("app/sgid", b"g\n")
        },
        member("app/old.txt", b"old\n"),
        link("app/old-link", T::Link, "app/old.txt"),
        member("app/old.txt", b"new, longer\n"),
        link("app/tool-link", T::Link, "app/tool"),
        link("app/sym", T::Symlink, "tool"),
        link("app/dangling", T::Symlink, "/nowhere/at/all"),
        member("deep/er/x.txt", b"x\n"),
        member("/abs/file.txt", b"abs\n"),
        Member {
            mtime: 0,
            ..member("zero-time.txt", b"0\n")
        },
        member("aa/big.bin", &BIG_A),
        link("aa/big-link", T::Link, "aa/big.bin"),
        member("conf.d-file", b"c\n"),
    ];
    let bytes = tar_bytes(&members);
    fs::create_dir_all(root).unwrap();
    fs::write(root.join("app.tar"), &bytes).unwrap();
    let mut gz = flate2::write::GzEncoder::new(
        fs::File::create(root.join("app.tar.gz")).unwrap(),
        flate2::Compression::fast(),
    );
    std::io::Write::write_all(&mut gz, &bytes).unwrap();
    gz.finish().unwrap();
    write(&root.join("lonely.txt"), b"l\n", 0o644);
}

fn add_archives(up: &mut Upper<'_>, ctx: &dyn SourceFs) {
    let all = CopyOptions::default();
    // Something of the op's own for the archive to replace and merge with.
    up.copy(ctx, "lonely.txt", "/opt/app/old.txt", &all, false)
        .unwrap();
    up.copy(ctx, "app.tar.gz", "/opt/", &all, true).unwrap();
    // Into a directory of the base, which keeps its metadata (`./` only chowns it).
    up.copy(ctx, "app.tar", "/etc/conf.d/", &all, true).unwrap();
    let chowned = CopyOptions {
        owner: Some(Ids {
            uid: 1000,
            gid: 1001,
        }),
        ..CopyOptions::default()
    };
    up.copy(ctx, "app.tar", "/srv/", &chowned, true).unwrap();
}

#[test]
fn streamed_add_of_an_archive_gives_the_layer_of_the_staged_one() {
    for compression in [Compression::default(), Compression::Uncompressed] {
        // New directories get the time they are made: the epoch makes both agree.
        let (entries, _) = compare(
            Some(1_650_000_000),
            compression,
            archive_context,
            add_archives,
        );
        if entries.is_empty() {
            return; // skipped: not root
        }
        // Streamed for real: the big and the hardlinked members (six of each archive)
        // are read from the archives, the small ones were read with the headers.
        let members = entries
            .values()
            .filter(|n| matches!(n.kind, NodeKind::Member { .. }))
            .count();
        assert_eq!(members, 3 * 6, "{entries:#?}");
        let tool = &entries["srv/app/tool"];
        assert_eq!(
            (tool.mode, tool.owner.uid),
            (0o755, 1000),
            "chown drops setuid"
        );
        assert_eq!(entries["opt/app/tool"].mode, 0o4755);
        assert_eq!(
            entries["etc/conf.d/abs/file.txt"].kind,
            NodeKind::Data(b"abs\n".to_vec())
        );
        assert_eq!(
            entries["opt/app/old.txt"].kind,
            NodeKind::Data(b"new, longer\n".to_vec())
        );
        // The first name of a hardlink pair replaced: the other keeps the old bytes.
        assert!(
            matches!(
                entries["opt/app/old-link"].kind,
                NodeKind::Member {
                    len: 4,
                    link: Some(_),
                    ..
                }
            ),
            "{:?}",
            entries["opt/app/old-link"]
        );
    }
}

#[test]
fn an_archive_climbing_out_of_the_destination_is_refused_streamed_or_staged() {
    kiln_test_support::require_root!();
    use tar::EntryType as T;
    let cases: [(&str, Vec<Member<'_>>, &str); 3] = [
        (
            "dotdot",
            vec![member("a/../../evil", b"x")],
            "\"a/../../evil\"",
        ),
        (
            "abs-link",
            vec![Member {
                kind: T::Link,
                link: "/etc/passwd",
                ..member("pw", b"")
            }],
            "\"pw (a hardlink to /etc/passwd)\"",
        ),
        (
            "up-link",
            vec![
                member("ok.txt", b"ok"),
                Member {
                    kind: T::Link,
                    link: "sub/../../ok.txt",
                    ..member("up", b"")
                },
            ],
            "\"up (a hardlink to sub/../../ok.txt)\"",
        ),
    ];
    for (name, members, shown) in cases {
        let dir = tempfile::tempdir().unwrap();
        let (c, u) = (dir.path().join("ctx"), dir.path().join("upper"));
        fs::create_dir_all(&c).unwrap();
        fs::create_dir(&u).unwrap();
        fs::write(c.join("evil.tar"), tar_bytes(&members)).unwrap();
        let ctx = ContextFs::new(&c, &[]).unwrap();
        let base = LayeredFs::default();
        let all = CopyOptions::default();
        let mut disk = Upper::new(&u, &base);
        let staged = disk
            .copy(&ctx, "evil.tar", "/dest/", &all, true)
            .unwrap_err();
        let mut mem = Upper::in_memory(&base);
        let streamed = mem
            .copy(&ctx, "evil.tar", "/dest/", &all, true)
            .unwrap_err();
        let want = format!(
            "refusing archive entry {shown} outside the destination in {}",
            c.join("evil.tar").display()
        );
        assert_eq!(staged.to_string(), want, "{name}");
        assert_eq!(streamed.to_string(), want, "{name}");
        assert!(!dir.path().join("evil").exists());
    }
}
