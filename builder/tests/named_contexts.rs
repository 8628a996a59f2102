//! `kiln build --build-context NAME=VALUE` (buildx's named contexts) end to end: a local
//! directory, `docker-image://REF`, `oci-layout://DIR[:TAG]` and an `http://` file (git
//! repositories are in `add_git.rs`), used by `FROM`,
//! `COPY --from`, `RUN --mount=from=` and in place of a stage of that name; cache keys
//! of a named directory's files are content-based, and its own `.dockerignore` applies
//! (the build context's does not). Needs root (file owners, RUN) and busybox-static.

use std::fs;
use std::path::{Path, PathBuf};

use kiln_test_support::{
    Built, FileServer, KilnStore, busybox_context, require_root, require_tool, step_cached,
};

/// The test's store: no build records, images dated 1700000000.
fn store() -> KilnStore {
    KilnStore::new()
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .env("KILN_NO_RECORD", "1")
}

fn read(p: PathBuf) -> String {
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn named_contexts_replace_from_copy_from_and_stages() {
    require_root!();
    let env = store();
    let ws = &env.ws;
    // An image in the store (marker:1) and the same kind in an OCI layout.
    let img = ws.context("img", "FROM scratch\nCOPY marker /etc/marker\n");
    ws.write("img/marker", "from the store\n");
    env.build_ok(&img, &["-t", "marker:1"]);
    ws.write("img/marker", "from the layout\n");
    let layout = ws.path("layout");
    env.build_ok(
        &img,
        &[
            "-t",
            "marker:2",
            "-o",
            &format!("type=oci,dest={}", layout.display()),
        ],
    );
    // A named directory with its own .dockerignore; the build context has another
    // a.txt, and a .dockerignore that would hide a.txt (it must not apply to `src`).
    let src = ws.path("src");
    ws.write("src/a.txt", "named a\n");
    ws.write("src/skip.tmp", "ignored by src/.dockerignore\n");
    ws.write("src/.dockerignore", "*.tmp\n");
    ws.write("deps/lib.txt", "deps from a directory\n");
    let df = "FROM scratch AS deps\nCOPY does-not-exist /x\n\
              FROM base\n\
              COPY --from=src . /all/\n\
              COPY --from=deps / /deps/\n\
              COPY --from=layout /etc/marker /layout-marker\n";
    let ctx = ws.context("ctx", df);
    ws.write("ctx/a.txt", "main a\n");
    ws.write("ctx/.dockerignore", "a.txt\n");
    let out = ws.path("out");
    let args = |src: &Path, out: &Path| -> Vec<String> {
        vec![
            "--build-context".into(),
            format!("src={}", src.display()),
            "--build-context".into(),
            format!("deps={}", ws.path("deps").display()),
            "--build-context".into(),
            "base=docker-image://marker:1".into(),
            "--build-context".into(),
            format!("layout=oci-layout://{}:2", layout.display()),
            "-o".into(),
            format!("type=local,dest={}", out.display()),
        ]
    };
    let a = args(&src, &out);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let r = env.build_ok(&ctx, &a).report;
    // FROM base: the store's image; the stage `deps` is the directory (its failing
    // COPY never ran); `layout`: the OCI layout's image.
    assert_eq!(read(out.join("etc/marker")), "from the store\n");
    assert_eq!(read(out.join("all/a.txt")), "named a\n");
    assert!(
        !out.join("all/skip.tmp").exists(),
        "src/.dockerignore applies"
    );
    assert!(out.join("all/.dockerignore").exists());
    assert_eq!(read(out.join("deps/lib.txt")), "deps from a directory\n");
    assert_eq!(read(out.join("layout-marker")), "from the layout\n");
    assert!(!step_cached(&r, "COPY --from=src . /all/"));

    // Again: every step is a hit. A touch (mtime only) and a copy of the directory
    // elsewhere keep the cache (content keys); an ignored file does not count.
    let r = env.build_ok(&ctx, &a).report;
    assert!(step_cached(&r, "COPY --from=src . /all/"), "{r}");
    let moved = ws.path("src-moved");
    fs::create_dir(&moved).unwrap();
    for f in ["a.txt", "skip.tmp", ".dockerignore"] {
        fs::copy(src.join(f), moved.join(f)).unwrap();
    }
    ws.write("src-moved/skip.tmp", "changed, but ignored\n");
    filetime::set_file_mtime(
        moved.join("a.txt"),
        filetime::FileTime::from_unix_time(7, 0),
    )
    .unwrap();
    let a2 = args(&moved, &ws.path("out2"));
    let a2: Vec<&str> = a2.iter().map(String::as_str).collect();
    let r = env.build_ok(&ctx, &a2).report;
    assert!(step_cached(&r, "COPY --from=src . /all/"), "{r}");
    // A changed byte is a miss, and the new content is copied.
    ws.write("src-moved/a.txt", "named b\n");
    let a3 = args(&moved, &ws.path("out3"));
    let a3: Vec<&str> = a3.iter().map(String::as_str).collect();
    let r = env.build_ok(&ctx, &a3).report;
    assert!(!step_cached(&r, "COPY --from=src . /all/"), "{r}");
    assert_eq!(read(ws.path("out3/all/a.txt")), "named b\n");

    // Without the contexts, the names are images: `base` is not one.
    let Built { ok, stderr, .. } = env.build(&ctx, &[]);
    assert!(!ok);
    assert!(stderr.contains("base"), "{stderr}");
}

#[test]
fn run_from_a_named_directory_and_mount_from_it() {
    require_root!();
    require_tool!("busybox");
    let env = store();
    let ws = &env.ws;
    // The busybox root filesystem as a named context: `FROM rootfs` starts from it.
    let bb = ws.path("busybox");
    busybox_context(&bb);
    ws.write("data/msg", "hello from data\n");
    let df = "FROM rootfs\n\
              RUN --mount=from=data,target=/m cat /m/msg > /seen && test ! -e /m/hidden\n";
    let ctx = ws.context("ctx", df);
    ws.write("data/hidden", "x\n");
    ws.write("data/.dockerignore", "hidden\n");
    let out = ws.path("out");
    let args = [
        "--build-context".to_string(),
        format!("rootfs={}", bb.join("rootfs").display()),
        "--build-context".to_string(),
        format!("data={}", ws.path("data").display()),
        "-o".to_string(),
        format!("type=local,dest={}", out.display()),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = env.build_ok(&ctx, &args).report;
    assert_eq!(read(out.join("seen")), "hello from data\n");
    assert!(out.join("bin/busybox").exists());
    let run = "RUN --mount=from=data,target=/m cat /m/msg > /seen && test ! -e /m/hidden";
    assert!(!step_cached(&r, run));
    // The mounted files are in the RUN's key: a change reruns it.
    let r = env.build_ok(&ctx, &args).report;
    assert!(step_cached(&r, run), "{r}");
    ws.write("data/msg", "changed\n");
    let r = env.build_ok(&ctx, &args).report;
    assert!(!step_cached(&r, run), "{r}");
}

#[test]
fn bad_build_context_values_are_one_line_errors() {
    let env = store();
    let ctx = env.ws.context("ctx", "FROM scratch\n");
    for (value, says) in [
        ("nothing", "expected NAME=VALUE"),
        ("x=/does/not/exist", "/does/not/exist is not a directory"),
        (
            "x=ftp://example.com/r.tar",
            "a git repository or an http(s) URL",
        ),
        ("x=https://h/r.git?nope=1", "unknown parameter nope"),
        ("context=.", "the build context itself"),
    ] {
        let Built { ok, stderr, .. } = env.build(&ctx, &["--build-context", value]);
        assert!(!ok, "{value}");
        assert!(
            stderr.contains("invalid --build-context") && stderr.contains(says),
            "{value}: {stderr}"
        );
    }
}

/// `NAME=http://host/file.tar.gz` is the file as `/context` of an otherwise empty tree,
/// not unpacked (BuildKit's `llb.HTTP(url, Filename("context"))` for named contexts);
/// the download's digest is the cache key.
#[test]
fn an_http_named_context_is_one_file_named_context() {
    require_root!();
    require_tool!("python3");
    let env = store();
    let ws = &env.ws;
    let archive = ws.write(
        "files/data.tar.gz",
        b"\x1f\x8b not really gzip, kept whole\n",
    );
    let server = FileServer::start(&ws.path("files"));
    let spec = format!("dl={}", server.url("data.tar.gz"));
    let df = "FROM scratch\nCOPY --from=dl /context /got.tgz\n";
    let ctx = ws.context("ctx", df);
    let out = ws.path("out");
    let dest = format!("type=local,dest={}", out.display());
    let r = env
        .build_ok(&ctx, &["--build-context", &spec, "-o", &dest])
        .report;
    assert_eq!(
        fs::read(out.join("got.tgz")).unwrap(),
        fs::read(&archive).unwrap()
    );
    assert_eq!(fs::read_dir(&out).unwrap().count(), 1);
    assert!(!step_cached(&r, "COPY --from=dl /context /got.tgz"));
    // Unchanged: a hit. Another content at the same URL: a miss, and the new bytes.
    let r = env.build_ok(&ctx, &["--build-context", &spec]).report;
    assert!(step_cached(&r, "COPY --from=dl /context /got.tgz"), "{r}");
    ws.write("files/data.tar.gz", "changed\n");
    let r = env
        .build_ok(&ctx, &["--build-context", &spec, "-o", &dest])
        .report;
    assert!(!step_cached(&r, "COPY --from=dl /context /got.tgz"), "{r}");
    assert_eq!(read(out.join("got.tgz")), "changed\n");
    // FROM it: the tree holds only `/context`.
    let ctx = ws.context("ctx-from", "FROM dl\n");
    let out = ws.path("out-from");
    let dest = format!("type=local,dest={}", out.display());
    env.build_ok(&ctx, &["--build-context", &spec, "-o", &dest]);
    let names: Vec<_> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["context"]);
    // A URL that is not there: one line naming it.
    let missing = format!("dl={}", server.url("missing.tar"));
    let Built { ok, stderr, .. } = env.build(&ctx, &["--build-context", &missing]);
    assert!(!ok);
    assert!(stderr.contains(&server.url("missing.tar")), "{stderr}");
}
