//! A COPY or ADD no later step reads is written from its sources with no staging tree:
//! the layer is the one the same step gives when a later step needs its snapshot (and is
//! staged), for plain COPYs and for an `ADD` of a local archive (whose members are read
//! from the archive). Needs root (`require_root!`: owners are kept).

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use kiln_test_support::{Workspace, require_root};
use serde_json::Value;

const MTIME: i64 = 1_700_000_000;

/// Builds `ctx` (its Dockerfile, `--target target`) in a store of its own; returns the
/// layer digests of the result.
fn build(ws: &Workspace, name: &str, ctx: &Path, target: &str) -> Vec<String> {
    build_in(ws, name, name, ctx, target)
}

/// [`build`] in the store `store-{store}`, into the layout `out-{out}`.
fn build_in(ws: &Workspace, store: &str, out: &str, ctx: &Path, target: &str) -> Vec<String> {
    let root = ws.path(&format!("store-{store}"));
    fs::create_dir_all(&root).unwrap();
    fs::write(root.join("config.toml"), "[gc]\nmin-free-space = \"0\"\n").unwrap();
    let layout = ws.path(&format!("out-{out}"));
    let o = Command::cargo_bin("kiln")
        .unwrap()
        .env("KILN_ROOT", &root)
        .env("SOURCE_DATE_EPOCH", MTIME.to_string())
        .args(["build", "--progress", "plain", "--target", target])
        .arg("-o")
        .arg(format!("type=oci,dest={}", layout.display()))
        .arg(ctx)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "kiln build failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let blob = |d: &str| -> Value {
        let hex = d.strip_prefix("sha256:").unwrap();
        serde_json::from_slice(&fs::read(layout.join("blobs/sha256").join(hex)).unwrap()).unwrap()
    };
    let index: Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest = blob(index["manifests"][0]["digest"].as_str().unwrap());
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect()
}

fn write(path: &Path, data: &[u8], mode: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, data).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A context of files, modes, owners, a symlink and hardlinks, all at [`MTIME`].
fn context(ws: &Workspace, dockerfile: &str) -> PathBuf {
    let ctx = ws.path("ctx");
    write(&ctx.join("app/a.txt"), b"a\n", 0o644);
    write(&ctx.join("app/bin/tool"), b"#!/bin/sh\n", 0o4755);
    write(&ctx.join("app/deep/er/b.txt"), &vec![7u8; 3 << 20], 0o600);
    std::os::unix::fs::lchown(ctx.join("app/deep"), Some(12), Some(34)).unwrap();
    symlink("a.txt", ctx.join("app/link")).unwrap();
    fs::hard_link(ctx.join("app/a.txt"), ctx.join("app/a2.txt")).unwrap();
    {
        let mut b = tar::Builder::new(fs::File::create(ctx.join("app.tar")).unwrap());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o640);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(MTIME as u64);
        h.set_cksum();
        b.append_data(&mut h, "inner/file.txt", &b"hello"[..])
            .unwrap();
        b.into_inner().unwrap();
    }
    fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
    for e in walkdir::WalkDir::new(&ctx) {
        let t = filetime::FileTime::from_unix_time(MTIME, 0);
        filetime::set_symlink_file_times(e.unwrap().path(), t, t).unwrap();
    }
    ctx
}

/// Stage `s`'s layer, streamed (`--target s`: its step is the last) and staged (stage
/// `after` builds on it, so the step's snapshot is needed), must be the same.
fn same_layer_streamed_and_staged(dockerfile: &str) {
    let ws = Workspace::new();
    let ctx = context(&ws, dockerfile);
    let streamed = build(&ws, "streamed", &ctx, "s");
    let staged = build(&ws, "staged", &ctx, "after");
    assert_eq!(streamed.len(), 1, "{streamed:?}");
    assert_eq!(staged.len(), 2, "{staged:?}");
    assert_eq!(
        streamed[0], staged[0],
        "the streamed layer is the staged one"
    );
}

#[test]
fn a_last_copy_gives_the_layer_it_gives_when_staged() {
    require_root!();
    for copy in [
        "COPY app /data/",
        "COPY --chown=5:6 --chmod=u+s app/a.txt app/a2.txt app/link app/deep /other/",
    ] {
        same_layer_streamed_and_staged(&format!(
            "FROM scratch AS s\n{copy}\nFROM s AS after\nCOPY app/a.txt /later.txt\n"
        ));
    }
}

#[test]
fn a_last_add_of_an_archive_gives_the_layer_it_gives_when_staged() {
    require_root!();
    same_layer_streamed_and_staged(
        "FROM scratch AS s\n\
         ADD app.tar app/a.txt /opt/\n\
         FROM s AS after\n\
         COPY app/a.txt /later.txt\n",
    );
}

/// The snapshots a store keeps.
fn snapshots(ws: &Workspace, name: &str) -> usize {
    let store = kiln_cache::Store::open(ws.path(&format!("store-{name}"))).unwrap();
    fs::read_dir(store.snapshots_dir())
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Issue 14, must-have 1: a chain of COPYs only later COPYs read (as their base, or as
/// a `--from` source) is written from the sources with no tree on disk, and gives the
/// layers it gives when each step is staged (a `COPY --link` stage on top reads the
/// chain as a merge, which needs snapshots).
#[test]
fn a_chain_of_copies_gives_the_layers_it_gives_when_staged() {
    require_root!();
    let chain = "FROM scratch AS src\n\
                 COPY app /app/\n\
                 FROM scratch AS s\n\
                 COPY passwd /etc/passwd\n\
                 COPY app /data/\n\
                 # into a directory the COPY before made, and over a file it made\n\
                 COPY app/a.txt /data/bin/\n\
                 COPY --chmod=600 app/bin/tool /data/a.txt\n\
                 # owners by name from the passwd an earlier COPY wrote, into its dirs\n\
                 COPY --chown=app --chmod=u+s,g=rx app/deep /data/deep/\n\
                 COPY --from=src /app/link /app/a.txt /app/deep /from-src/\n\
                 COPY --from=src / /whole/\n\
                 WORKDIR /data/deep/er/new\n";
    let ws = Workspace::new();
    let ctx = context(
        &ws,
        &format!("{chain}FROM s AS after\nCOPY --link app/a.txt /later.txt\n"),
    );
    write(&ctx.join("passwd"), b"app:x:1000:1001::/:/bin/sh\n", 0o644);
    let t = filetime::FileTime::from_unix_time(MTIME, 0);
    filetime::set_file_times(ctx.join("passwd"), t, t).unwrap();
    let streamed = build(&ws, "streamed", &ctx, "s");
    let staged = build(&ws, "staged", &ctx, "after");
    assert_eq!(streamed.len(), 8, "{streamed:?}");
    assert_eq!(staged.len(), 9, "{staged:?}");
    assert_eq!(
        streamed[..],
        staged[..8],
        "the streamed layers are the staged ones"
    );
    assert_eq!(
        snapshots(&ws, "streamed"),
        0,
        "no tree on disk for the chain"
    );
    // Each step of `s` and `src` staged: the merge reads them as directories.
    assert!(
        snapshots(&ws, "staged") >= 8,
        "{}",
        snapshots(&ws, "staged")
    );
}

/// Issue 14, must-have 1: an `ADD` of a local archive in a streamed chain is written
/// from the archive (no snapshot), gives the layer it gives staged, and the steps above
/// it read its members: the bytes of a file (a `COPY --from` of a stage that added an
/// archive) and an `/etc/passwd` that came out of one (`--chown` by name).
#[test]
fn a_chain_with_added_archives_gives_the_layers_it_gives_when_staged() {
    require_root!();
    let chain = "FROM scratch AS src\n\
                 ADD tools.tar.gz /src/\n\
                 FROM scratch AS s\n\
                 ADD tools.tar.gz /\n\
                 ADD --chown=app app.tar /opt/\n\
                 COPY --from=src /src/ /from-src/\n\
                 COPY --chown=app:app app/a.txt /opt/\n";
    let ws = Workspace::new();
    let ctx = context(
        &ws,
        &format!("{chain}FROM s AS after\nCOPY --link app/a.txt /later.txt\n"),
    );
    {
        let gz = flate2::write::GzEncoder::new(
            fs::File::create(ctx.join("tools.tar.gz")).unwrap(),
            flate2::Compression::default(),
        );
        let mut b = tar::Builder::new(gz);
        let mut add = |name: &str, data: &[u8], mode: u32| {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(mode);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(MTIME as u64 - 5);
            h.set_cksum();
            b.append_data(&mut h, name, data).unwrap();
        };
        add("etc/passwd", b"app:x:1000:1001::/:/bin/sh\n", 0o644);
        add("etc/group", b"app:x:1001:\n", 0o644);
        add("usr/bin/tool", &vec![3u8; 2 << 20], 0o755);
        b.into_inner().unwrap().finish().unwrap();
    }
    let t = filetime::FileTime::from_unix_time(MTIME, 0);
    filetime::set_file_times(ctx.join("tools.tar.gz"), t, t).unwrap();
    let streamed = build(&ws, "streamed", &ctx, "s");
    let staged = build(&ws, "staged", &ctx, "after");
    assert_eq!(streamed.len(), 4, "{streamed:?}");
    assert_eq!(staged.len(), 5, "{staged:?}");
    assert_eq!(
        streamed[..],
        staged[..4],
        "the streamed layers are the staged ones"
    );
    assert_eq!(
        snapshots(&ws, "streamed"),
        0,
        "no tree on disk for the chain"
    );
}

/// Issue 14, must-have 1: the first build after an edit, where the chain's cached COPYs
/// have no snapshots, sees their layers through their blobs' listings (a COPY that
/// missed reads the bytes of a cached stage's files from its blobs) and still makes no
/// snapshot; its layers are those of a build of the edited context in a fresh store.
#[test]
fn an_edit_build_of_a_chain_reads_cached_layers_from_their_blobs() {
    require_root!();
    let chain = "FROM scratch AS src\n\
                 COPY app /app/\n\
                 COPY app/a.txt /app/extra.txt\n\
                 FROM scratch AS s\n\
                 COPY app.txt /app.txt\n\
                 COPY --from=src /app/ /from-src/\n\
                 COPY --chown=5:6 app/deep /deep/\n";
    let ws = Workspace::new();
    let ctx = context(
        &ws,
        &format!("{chain}FROM s AS after\nCOPY --link app/a.txt /later.txt\n"),
    );
    let edit = |text: &str| {
        write(&ctx.join("app.txt"), text.as_bytes(), 0o644);
        let t = filetime::FileTime::from_unix_time(MTIME, 0);
        filetime::set_file_times(ctx.join("app.txt"), t, t).unwrap();
    };
    edit("one\n");
    let cold = build_in(&ws, "warm", "cold", &ctx, "s");
    assert_eq!(cold.len(), 3, "{cold:?}");
    edit("one\ntwo\n");
    let edited = build_in(&ws, "warm", "edited", &ctx, "s");
    assert_eq!(snapshots(&ws, "warm"), 0, "nothing unpacked for the edit");
    let fresh = build(&ws, "fresh", &ctx, "s");
    assert_eq!(edited, fresh, "the edit build's layers are a fresh build's");
    assert_ne!(edited[0], cold[0]);
    // And those of the chain staged: a.txt and its hardlink a2.txt are one file, the
    // same a.txt copied by another step (`extra.txt`) is another, as in snapshots.
    let staged = build(&ws, "staged", &ctx, "after");
    assert_eq!(
        staged[..3],
        fresh[..],
        "the staged layers are the streamed ones"
    );
}
