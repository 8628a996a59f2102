use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::*;
use crate::fileops::view::{ContextFs, LayeredFs};

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

fn run(f: &Fixture, src: &str, dest: &str, opts: CopyOptions) -> anyhow::Result<()> {
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
        &kiln_frontend::graph::Chown {
            user: "app".into(),
            group: Some("staff".into()),
        },
        &base,
    )
    .unwrap();
    assert_eq!(ids, Ids { uid: 1000, gid: 50 });
    let ids2 = resolve_chown(
        &kiln_frontend::graph::Chown {
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
        &kiln_frontend::graph::Chown {
            user: "42".into(),
            group: None,
        },
        &base,
    )
    .unwrap();
    assert_eq!(ids3, Ids { uid: 42, gid: 42 });
    assert!(
        resolve_chown(
            &kiln_frontend::graph::Chown {
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
