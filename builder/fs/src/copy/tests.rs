use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::*;
use crate::view::{ContextFs, LayeredFs};

struct Fixture {
    _t: tempfile::TempDir,
    ctx: PathBuf,
    base: PathBuf,
    upper: PathBuf,
}

fn write(root: &Path, rel: &str, content: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, content).unwrap();
}

fn fixture() -> Fixture {
    let t = tempfile::tempdir().unwrap();
    let ctx = t.path().join("ctx");
    let base = t.path().join("base");
    let upper = t.path().join("upper");
    for d in [&ctx, &base, &upper] {
        fs::create_dir_all(d).unwrap();
    }
    write(&ctx, "a.txt", "A");
    write(&ctx, "b.txt", "B");
    write(&ctx, "src/main.rs", "fn main() {}");
    write(&ctx, "src/lib/mod.rs", "mod x;");
    write(&ctx, "src/skip.log", "log");
    write(
        &base,
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
    );
    write(&base, "etc/group", "root:x:0:\nstaff:x:50:\n");
    fs::create_dir_all(base.join("usr/bin")).unwrap();
    fs::set_permissions(base.join("usr"), fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::symlink("usr/bin", base.join("bin")).unwrap();
    Fixture {
        _t: t,
        ctx,
        base,
        upper,
    }
}

fn run(f: &Fixture, src: &str, dest: &str, opts: CopyOptions) -> Result<()> {
    let ctx = ContextFs::new(&f.ctx, &[]).unwrap();
    let base = LayeredFs::new(vec![f.base.clone()], "base");
    let mut up = Upper::new(&f.upper, &base);
    up.copy(&ctx, src, dest, &opts, false)?;
    up.finish()
}

fn tree(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = walkdir::WalkDir::new(root)
        .min_depth(1)
        .into_iter()
        .map(|e| {
            e.unwrap()
                .path()
                .strip_prefix(root)
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    v.sort();
    v
}

#[test]
fn file_to_dir_and_to_name() {
    let f = fixture();
    run(&f, "a.txt", "/x/", CopyOptions::default()).unwrap();
    run(&f, "b.txt", "/y/renamed", CopyOptions::default()).unwrap();
    assert_eq!(tree(&f.upper), ["x", "x/a.txt", "y", "y/renamed"]);
    let m = fs::metadata(f.upper.join("x")).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid()), (0o755, 0));
}

#[test]
fn directory_contents_not_the_directory() {
    let f = fixture();
    run(&f, "src", "/app", CopyOptions::default()).unwrap();
    assert_eq!(
        tree(&f.upper),
        [
            "app",
            "app/lib",
            "app/lib/mod.rs",
            "app/main.rs",
            "app/skip.log"
        ]
    );
}

#[test]
fn wildcards_and_missing_sources() {
    let f = fixture();
    run(&f, "*.txt", "/w/", CopyOptions::default()).unwrap();
    assert_eq!(tree(&f.upper), ["w", "w/a.txt", "w/b.txt"]);
    let e = run(&f, "nope.txt", "/n", CopyOptions::default()).unwrap_err();
    assert!(
        e.to_string()
            .contains("\"nope.txt\" not found in the build context"),
        "{e}"
    );
    let e = run(&f, "*.none", "/n/", CopyOptions::default()).unwrap_err();
    assert!(e.to_string().contains("matches nothing"), "{e}");
    let e = run(&f, "../outside", "/n", CopyOptions::default()).unwrap_err();
    assert!(e.to_string().contains("outside the build context"), "{e}");
}

#[test]
fn chown_by_name_and_id_and_chmod() {
    let f = fixture();
    let base = LayeredFs::new(vec![f.base.clone()], "base");
    let ids = resolve_chown(
        &kiln_ops::Chown {
            user: "app".into(),
            group: Some("staff".into()),
        },
        &base,
    )
    .unwrap();
    assert_eq!(ids, Ids { uid: 1000, gid: 50 });
    let ids2 = resolve_chown(
        &kiln_ops::Chown {
            user: "app".into(),
            group: None,
        },
        &base,
    )
    .unwrap();
    assert_eq!(
        ids2,
        Ids {
            uid: 1000,
            gid: 1001
        }
    );
    let ids3 = resolve_chown(
        &kiln_ops::Chown {
            user: "42".into(),
            group: None,
        },
        &base,
    )
    .unwrap();
    assert_eq!(ids3, Ids { uid: 42, gid: 42 });
    assert!(
        resolve_chown(
            &kiln_ops::Chown {
                user: "ghost".into(),
                group: None
            },
            &base
        )
        .is_err()
    );
    run(
        &f,
        "a.txt",
        "/o/new/a.txt",
        CopyOptions {
            owner: Some(ids),
            chmod: Some("0640".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let m = fs::metadata(f.upper.join("o/new/a.txt")).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o640, 1000, 50));
    // New parents get the --chown owner.
    assert_eq!(fs::metadata(f.upper.join("o/new")).unwrap().uid(), 1000);
    assert_eq!(apply_chmod("u+x,go-w", 0o666, false).unwrap(), 0o744);
    assert_eq!(apply_chmod("a=rX", 0o700, true).unwrap(), 0o555);
}

#[test]
fn existing_parents_keep_base_metadata_and_symlinks_resolve() {
    let f = fixture();
    run(&f, "a.txt", "/bin/", CopyOptions::default()).unwrap();
    // /bin -> usr/bin in the base: the file lands in usr/bin, usr keeps mode 0750.
    assert_eq!(tree(&f.upper), ["usr", "usr/bin", "usr/bin/a.txt"]);
    assert_eq!(
        fs::metadata(f.upper.join("usr")).unwrap().mode() & 0o7777,
        0o750
    );
}

#[test]
fn parents_and_exclude() {
    let f = fixture();
    run(
        &f,
        "src/lib/mod.rs",
        "/p/",
        CopyOptions {
            parents: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(f.upper.join("p/src/lib/mod.rs").is_file());
    let f = fixture();
    run(
        &f,
        "src",
        "/e",
        CopyOptions {
            exclude: vec!["*.log".into(), "lib".into()],
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(tree(&f.upper), ["e", "e/main.rs"]);
}

#[test]
fn dockerignored_files_are_not_there() {
    let f = fixture();
    let ctx = ContextFs::new(&f.ctx, &["src/*.log".into()]).unwrap();
    let base = LayeredFs::new(vec![f.base.clone()], "base");
    let mut up = Upper::new(&f.upper, &base);
    up.copy(&ctx, ".", "/app/", &CopyOptions::default(), false)
        .unwrap();
    assert!(!f.upper.join("app/src/skip.log").exists());
    assert!(f.upper.join("app/src/main.rs").exists());
    assert!(
        up.copy(&ctx, "src/skip.log", "/x", &CopyOptions::default(), false)
            .is_err()
    );
}

#[test]
fn mkfile_mkdir_and_hardlinks() {
    let f = fixture();
    fs::hard_link(f.ctx.join("a.txt"), f.ctx.join("a2.txt")).unwrap();
    let ctx = ContextFs::new(&f.ctx, &[]).unwrap();
    let base = LayeredFs::new(vec![f.base.clone()], "base");
    let mut up = Upper::new(&f.upper, &base);
    up.mkdir("/usr/bin", None).unwrap();
    assert!(tree(&f.upper).is_empty(), "an existing dir makes no change");
    up.mkdir("/srv/app", Some(Ids { uid: 7, gid: 8 })).unwrap();
    up.mkfile("/etc/motd", b"hi\n", 0o644, None).unwrap();
    up.copy(&ctx, "a*.txt", "/h/", &CopyOptions::default(), false)
        .unwrap();
    up.finish().unwrap();
    assert_eq!(fs::metadata(f.upper.join("srv/app")).unwrap().uid(), 7);
    assert_eq!(
        fs::read_to_string(f.upper.join("etc/motd")).unwrap(),
        "hi\n"
    );
    let a = fs::metadata(f.upper.join("h/a.txt")).unwrap();
    let a2 = fs::metadata(f.upper.join("h/a2.txt")).unwrap();
    assert_eq!(a.ino(), a2.ino(), "hardlinks stay hardlinks");
}

#[test]
fn add_extracts_local_archives() {
    let f = fixture();
    let tgz = f.ctx.join("app.tar.gz");
    {
        let gz = flate2::write::GzEncoder::new(
            fs::File::create(&tgz).unwrap(),
            flate2::Compression::default(),
        );
        let mut b = tar::Builder::new(gz);
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o600);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, "inner/file.txt", &b"hello"[..])
            .unwrap();
        b.into_inner().unwrap().finish().unwrap();
    }
    let ctx = ContextFs::new(&f.ctx, &[]).unwrap();
    let base = LayeredFs::new(vec![f.base.clone()], "base");
    let mut up = Upper::new(&f.upper, &base);
    up.copy(&ctx, "app.tar.gz", "/opt/", &CopyOptions::default(), true)
        .unwrap();
    assert_eq!(
        fs::read_to_string(f.upper.join("opt/inner/file.txt")).unwrap(),
        "hello"
    );
    // COPY does not extract.
    up.copy(&ctx, "app.tar.gz", "/raw/", &CopyOptions::default(), false)
        .unwrap();
    assert!(f.upper.join("raw/app.tar.gz").is_file());
}

// ---- issue 9: COPY semantics ----

/// Finding 11: a directory COPY leaves an existing target's mode and owner alone and
/// creates a missing one 0755 (owned by --chown or root); what is inside keeps its modes.
#[test]
fn directory_copy_keeps_the_target_metadata() {
    let f = fixture();
    fs::create_dir_all(f.ctx.join("d/sub")).unwrap();
    write(&f.ctx, "d/sub/x", "x");
    fs::set_permissions(f.ctx.join("d"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::set_permissions(f.ctx.join("d/sub"), fs::Permissions::from_mode(0o750)).unwrap();
    fs::create_dir_all(f.base.join("tmp")).unwrap();
    fs::set_permissions(f.base.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    let mode = |rel: &str| fs::metadata(f.upper.join(rel)).unwrap().mode() & 0o7777;

    run(&f, "d", "/tmp", CopyOptions::default()).unwrap();
    assert_eq!(mode("tmp"), 0o1777, "an existing target keeps its mode");
    assert_eq!(
        mode("tmp/sub"),
        0o750,
        "a copied subdirectory keeps its own mode"
    );
    assert!(f.upper.join("tmp/sub/x").is_file());

    run(&f, "d", "/new", CopyOptions::default()).unwrap();
    assert_eq!(mode("new"), 0o755, "a new target is created 0755");
    assert_eq!(mode("new/sub"), 0o750);

    let owner = Some(Ids { uid: 7, gid: 8 });
    run(
        &f,
        "d",
        "/owned",
        CopyOptions {
            owner,
            ..Default::default()
        },
    )
    .unwrap();
    let m = fs::metadata(f.upper.join("owned")).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o755, 7, 8));
    assert_eq!(fs::metadata(f.upper.join("owned/sub")).unwrap().uid(), 7);
}

/// Finding 12: a symlink source is copied under its own name, with its target's content.
#[test]
fn symlink_source_keeps_its_name() {
    let f = fixture();
    let stage = f.base.join("../stage");
    write(&stage, "bin/busybox", "busybox binary");
    std::os::unix::fs::symlink("busybox", stage.join("bin/sh")).unwrap();
    let source = LayeredFs::new(vec![stage], "stage base");
    let base = LayeredFs::new(vec![f.base.clone()], "base");
    let mut up = Upper::new(&f.upper, &base);
    let opts = CopyOptions::default();
    up.copy(&source, "/bin/sh", "/bin2/", &opts, false).unwrap();
    up.copy(&source, "/bin/s?", "/bin3/", &opts, false).unwrap();
    up.copy(&source, "/bin/sh", "/bin4", &opts, false).unwrap();
    up.finish().unwrap();
    assert_eq!(
        tree(&f.upper),
        ["bin2", "bin2/sh", "bin3", "bin3/sh", "bin4"]
    );
    for p in ["bin2/sh", "bin3/sh", "bin4"] {
        let m = fs::symlink_metadata(f.upper.join(p)).unwrap();
        assert!(m.is_file(), "{p} is the followed content");
        assert_eq!(
            fs::read_to_string(f.upper.join(p)).unwrap(),
            "busybox binary"
        );
    }
}

/// Several sources to a destination without a trailing `/`: as in BuildKit, literal
/// sources and wildcard matches alike go into an existing directory, and to the name
/// itself otherwise (the last one stays), never an error nor a new directory.
#[test]
fn several_sources_without_trailing_slash_follow_buildkit() {
    let f = fixture();
    let ctx = ContextFs::new(&f.ctx, &[]).unwrap();
    let base = LayeredFs::new(vec![f.base.clone()], "base");
    let mut up = Upper::new(&f.upper, &base);
    let opts = CopyOptions::default();
    // COPY a.txt b.txt /lit
    up.copy(&ctx, "a.txt", "/lit", &opts, false).unwrap();
    up.copy(&ctx, "b.txt", "/lit", &opts, false).unwrap();
    // COPY *.txt /glob
    up.copy(&ctx, "*.txt", "/glob", &opts, false).unwrap();
    // COPY *.txt /usr (an existing directory) and through the /bin -> usr/bin symlink
    up.copy(&ctx, "*.txt", "/usr", &opts, false).unwrap();
    up.copy(&ctx, "a.txt", "/bin", &opts, false).unwrap();
    up.finish().unwrap();
    assert_eq!(fs::read_to_string(f.upper.join("lit")).unwrap(), "B");
    assert_eq!(fs::read_to_string(f.upper.join("glob")).unwrap(), "B");
    assert!(f.upper.join("usr/a.txt").is_file() && f.upper.join("usr/b.txt").is_file());
    assert!(f.upper.join("usr/bin/a.txt").is_file());
}

/// Finding 7: names that are not valid UTF-8 are copied byte-exact, from the context
/// and from a stage, never dropped or renamed.
#[test]
fn non_utf8_names_are_copied_byte_exact() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let f = fixture();
    let latin1 = OsStr::from_bytes(b"caf\xe9");
    fs::write(f.ctx.join(latin1), "latin-1").unwrap();
    fs::create_dir_all(f.ctx.join("sub")).unwrap();
    fs::write(f.ctx.join("sub").join(latin1), "in a subdir").unwrap();
    fs::write(f.ctx.join("caf\u{e9}"), "utf-8").unwrap();
    let ctx = ContextFs::new(&f.ctx, &[]).unwrap();
    let base = LayeredFs::new(vec![f.base.clone()], "base");
    let mut up = Upper::new(&f.upper, &base);
    up.copy(&ctx, ".", "/dst/", &CopyOptions::default(), false)
        .unwrap();
    up.copy(&ctx, "caf*", "/glob/", &CopyOptions::default(), false)
        .unwrap();
    up.finish().unwrap();
    let read = |p: &Path| fs::read_to_string(p).unwrap();
    assert_eq!(read(&f.upper.join("dst").join(latin1)), "latin-1");
    assert_eq!(read(&f.upper.join("dst/sub").join(latin1)), "in a subdir");
    assert_eq!(read(&f.upper.join("dst/caf\u{e9}")), "utf-8");
    assert_eq!(read(&f.upper.join("glob").join(latin1)), "latin-1");
    assert_eq!(read(&f.upper.join("glob/caf\u{e9}")), "utf-8");
    // COPY --from: the upper dir as a stage.
    let stage = LayeredFs::new(vec![f.upper.clone()], "stage");
    let again = f.upper.join("../again");
    fs::create_dir_all(&again).unwrap();
    let mut up = Upper::new(&again, &base);
    up.copy(&stage, "/dst", "/out/", &CopyOptions::default(), false)
        .unwrap();
    up.finish().unwrap();
    assert_eq!(read(&again.join("out").join(latin1)), "latin-1");
    assert_eq!(read(&again.join("out/sub").join(latin1)), "in a subdir");
}

/// An archive extracted in memory keeps its big members in the archive; copied on from
/// there into a directory (a later staged step), their bytes and hardlinks are the
/// archive's, and they read back through [`Stat::read`].
#[test]
fn archive_members_kept_in_memory_are_read_from_the_archive() {
    let f = fixture();
    let big: Vec<u8> = (0..(INLINE_MAX as u32 + 10)).map(|i| i as u8).collect();
    {
        let gz = flate2::write::GzEncoder::new(
            fs::File::create(f.ctx.join("big.tgz")).unwrap(),
            flate2::Compression::fast(),
        );
        let mut b = tar::Builder::new(gz);
        let mut h = tar::Header::new_gnu();
        h.set_size(big.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1);
        h.set_cksum();
        b.append_data(&mut h, "d/big.bin", big.as_slice()).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Link);
        h.set_size(0);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_link(&mut h, "d/again.bin", "d/big.bin").unwrap();
        b.into_inner().unwrap().finish().unwrap();
    }
    let ctx = ContextFs::new(&f.ctx, &[]).unwrap();
    let empty = LayeredFs::default();
    let mut mem = Upper::in_memory(&empty);
    let own = CopyOptions {
        owner: Some(Ids { uid: 0, gid: 0 }),
        ..CopyOptions::default()
    };
    mem.copy(&ctx, "big.tgz", "/x/", &own, true).unwrap();
    let entries = mem.finish_entries().unwrap().unwrap();
    assert!(matches!(
        entries["x/d/big.bin"].kind,
        NodeKind::Member { link: Some(_), .. }
    ));
    let mut stage = LayeredFs::default();
    stage.push_entries(std::sync::Arc::new(entries));
    assert_eq!(stage.stat("x/d/again.bin").unwrap().read().unwrap(), big);
    let mut up = Upper::new(&f.upper, &empty);
    up.copy(&stage, "x", "/y/", &own, false).unwrap();
    up.finish().unwrap();
    assert_eq!(fs::read(f.upper.join("y/d/big.bin")).unwrap(), big);
    let (a, b) = (
        fs::metadata(f.upper.join("y/d/big.bin")).unwrap(),
        fs::metadata(f.upper.join("y/d/again.bin")).unwrap(),
    );
    assert_eq!(a.ino(), b.ino(), "hardlinks stay hardlinks");
}
