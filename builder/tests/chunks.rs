//! Chunked layers for real: a COPY big enough to make several chunks rebuilds to the same
//! digest whether its chunks were compressed or copied from an earlier blob, and on one
//! thread or many; skopeo, umoci and buildah read such layers; the chunk index is
//! counted by `kiln du` and keeps no blob from `kiln prune`. They need root
//! (`require_root!`) and the tools they name (`require_tool!`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command as Proc;

use assert_cmd::Command;
use kiln_cache::Store;
use kiln_test_support::{KilnStore, noise, require_root, require_tool, run_ok};
use serde_json::Value;

kiln_test_support::store_env! {
    /// A workspace whose tests use several stores in it (`warm`, `fresh`, ...).
    struct Env;
}

impl Env {
    fn new() -> Env {
        // The layer's bytes depend on the context alone (the /data directory kiln
        // makes gets this mtime too).
        Env(KilnStore::new().env("SOURCE_DATE_EPOCH", MTIME.to_string()))
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.ws.path(rel)
    }

    /// `kiln` with the store `store` of the workspace.
    fn kiln_in(&self, store: &str) -> Command {
        self.kiln_at(&self.path(store))
    }

    /// Builds `ctx` in store `store` as `tag`, which must succeed.
    fn build_tag(&self, store: &str, ctx: &Path, tag: &str) {
        self.kiln_in(store)
            .args(["build", "--progress", "plain", "-t", tag])
            .arg(ctx)
            .assert()
            .success();
    }

    /// Builds `ctx` in store `store` into the OCI layout `out`; `extra` are more flags
    /// (and `env` variables for kiln). Returns the digests of the image's layers.
    fn build_oci(
        &self,
        store: &str,
        ctx: &Path,
        out: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Vec<String> {
        let layout = self.path(out);
        let mut c = self.kiln_in(store);
        for (k, v) in env {
            c.env(k, v);
        }
        let o = c
            .args(["build", "--progress", "plain", "-t", "chunky:1"])
            .args(extra)
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
        layer_digests(&layout)
    }
}

/// The layer descriptors of the single image in an OCI layout.
fn layers(layout: &Path) -> Vec<Value> {
    let blob = |d: &str| -> Value {
        let hex = d.strip_prefix("sha256:").unwrap();
        serde_json::from_slice(&fs::read(layout.join("blobs/sha256").join(hex)).unwrap()).unwrap()
    };
    let index: Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest = blob(index["manifests"][0]["digest"].as_str().unwrap());
    manifest["layers"].as_array().unwrap().clone()
}

/// The layer digests of the single image in an OCI layout.
fn layer_digests(layout: &Path) -> Vec<String> {
    layers(layout)
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect()
}

const MTIME: i64 = 1_700_000_000;

/// A scaled-down bigcopy: 2,000 small text files (about 4 MiB of tar), a 9 MiB random
/// file and 6 MiB of zeros, every mtime fixed. `FROM scratch`, `COPY . /data`.
fn bigcopy(dir: &Path) {
    let line = "lorem ipsum dolor sit amet consectetur adipiscing elit ".repeat(8);
    for d in 0..20 {
        for f in 0..100 {
            let n = (d * 7 + f * 13) % 8 + 1;
            let text = format!("dir {d} file {f}\n{}", format!("{line}\n").repeat(n));
            let p = dir.join(format!("small/d{d:03}/f{f:03}.txt"));
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
        }
    }
    fs::create_dir_all(dir.join("big")).unwrap();
    fs::write(dir.join("big/blob.bin"), noise(3, 9 << 20)).unwrap();
    fs::write(dir.join("big/zeros.bin"), vec![0u8; 6 << 20]).unwrap();
    fs::write(dir.join("Dockerfile"), "FROM scratch\nCOPY . /data\n").unwrap();
    set_mtimes(dir);
}

fn set_mtimes(dir: &Path) {
    let t = filetime::FileTime::from_unix_time(MTIME, 0);
    for e in walkdir::WalkDir::new(dir) {
        let e = e.unwrap();
        filetime::set_symlink_file_times(e.path(), t, t).unwrap();
    }
}

/// How many chunk index files the store holds.
fn index_files(store: &Path) -> usize {
    let Ok(codecs) = fs::read_dir(store.join("chunks")) else {
        return 0;
    };
    codecs
        .map(|c| fs::read_dir(c.unwrap().path()).unwrap().count())
        .sum()
}

fn rebuilds_give_the_same_digest(compression: &str) {
    require_root!();
    let env = Env::new();
    let ctx = env.path("ctx");
    bigcopy(&ctx);
    let c = ["--compression", compression];
    let cold = env.build_oci("warm", &ctx, "cold", &c, &[]);
    assert_eq!(cold.len(), 1);
    assert_eq!(index_files(&env.path("warm")), 1, "the cold layer's chunks");

    // One small file edited, in the warm store: another layer.
    let edited = ctx.join("small/d007/f042.txt");
    let original = fs::read(&edited).unwrap();
    fs::write(&edited, [original.as_slice(), b"one more line\n"].concat()).unwrap();
    set_mtimes(&ctx);
    let edit = env.build_oci("warm", &ctx, "edit", &c, &[]);
    assert_ne!(edit, cold);
    assert_eq!(index_files(&env.path("warm")), 2);
    // The warm store resumed after the big files (the same head, SOURCE_DATE_EPOCH
    // set): the bytes are those a store that never saw the cold build writes.
    let fresh_edit = env.build_oci("fresh-edit", &ctx, "fresh-edit", &c, &[]);
    assert_eq!(edit, fresh_edit, "edit in a warm store vs a fresh one");

    // Reverted, without the build cache: the layer is written again, its chunks copied
    // from the two blobs before; the bytes are the cold build's.
    fs::write(&edited, &original).unwrap();
    set_mtimes(&ctx);
    let c_nocache = ["--compression", compression, "--no-cache"];
    let revert = env.build_oci("warm", &ctx, "revert", &c_nocache, &[]);
    assert_eq!(revert, cold, "edit then revert in a warm store");

    // A fresh store on one thread: the same bytes again.
    let one = env.build_oci("fresh", &ctx, "one", &c, &[("RAYON_NUM_THREADS", "1")]);
    assert_eq!(one, cold, "one thread, fresh store");
}

#[test]
fn gzip_chunked_rebuilds_give_the_same_digest() {
    rebuilds_give_the_same_digest("gzip");
}

#[test]
fn zstd_chunked_rebuilds_give_the_same_digest() {
    rebuilds_give_the_same_digest("zstd");
}

/// The files of an image unpacked by umoci.
fn umoci_rootfs(layout: &Path, dest: &Path) -> PathBuf {
    run_ok(
        Proc::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:1", layout.display()))
            .arg(dest),
    );
    dest.join("rootfs")
}

/// Whether two trees hold the same files with the same bytes.
fn same_files(a: &Path, b: &Path) {
    let out = Proc::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} and {} differ:\n{}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn skopeo_umoci_and_buildah_read_chunked_layers() {
    require_root!();
    require_tool!("skopeo");
    require_tool!("umoci");
    require_tool!("buildah");
    let env = Env::new();
    let ctx = env.path("ctx");
    bigcopy(&ctx);
    // buildah wants a lower-case path for an `oci:` reference.
    let lower = PathBuf::from(format!("/tmp/kiln-chunks-{}", std::process::id()));
    fs::create_dir_all(&lower).unwrap();
    struct Rm(PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    let _rm = Rm(lower.clone());
    for compression in ["gzip", "zstd"] {
        let layout = lower.join(format!("oci-{compression}"));
        let out = layout.to_str().unwrap();
        // A store each: the build cache does not key layers by compression.
        let store = format!("store-{compression}");
        env.build_oci(&store, &ctx, out, &["--compression", compression], &[]);
        // skopeo: inspect, and copy (which reads and checks every blob).
        let inspect: Value = serde_json::from_str(&run_ok(
            Proc::new("skopeo")
                .arg("inspect")
                .arg(format!("oci:{}:1", layout.display())),
        ))
        .unwrap();
        assert_eq!(inspect["Layers"].as_array().unwrap().len(), 1);
        assert_eq!(
            layers(&layout)[0]["mediaType"],
            format!("application/vnd.oci.image.layer.v1.tar+{compression}")
        );
        run_ok(
            Proc::new("skopeo")
                .arg("copy")
                .arg(format!("oci:{}:1", layout.display()))
                .arg(format!(
                    "dir:{}",
                    env.path(&format!("dir-{compression}")).display()
                )),
        );
        // umoci: every file as in the context. (Debian's umoci 0.4.7 reads no zstd
        // layer at all, chunked or not.)
        if compression == "gzip" {
            let rootfs = umoci_rootfs(&layout, &env.path(&format!("umoci-{compression}")));
            same_files(&ctx, &rootfs.join("data"));
        }
        // buildah: pulls the image and mounts it.
        let storage = env.path(&format!("buildah-{compression}"));
        let buildah = |args: &[&str]| -> String {
            run_ok(
                Proc::new("buildah")
                    .arg("--root")
                    .arg(storage.join("root"))
                    .arg("--runroot")
                    .arg(storage.join("runroot"))
                    .args(["--storage-driver", "vfs"])
                    .args(args),
            )
        };
        let image = format!("oci:{}:1", layout.display());
        let container = buildah(&["from", "--pull-never", &image]);
        let container = container.trim();
        let mount = buildah(&["mount", container]);
        same_files(&ctx, &Path::new(mount.trim()).join("data"));
        buildah(&["umount", container]);
        buildah(&["rm", container]);
    }
}

#[test]
fn the_chunk_index_is_counted_and_keeps_no_blob() {
    require_root!();
    let env = Env::new();
    let ctx = env.path("ctx");
    bigcopy(&ctx);
    env.build_oci("store", &ctx, "a", &[], &[]);
    let root = env.path("store");
    assert_eq!(index_files(&root), 1);
    let out = env.kiln_in("store").arg("du").output().unwrap();
    let du = String::from_utf8_lossy(&out.stdout);
    assert!(du.contains("Chunk index:"), "{du}");
    let store = Store::open(&root).unwrap();
    assert!(store.disk_usage().unwrap().chunks.bytes > 0);
    let df = kiln_builder::usage::system_df(&store).unwrap();
    let chunk_area = df
        .build_cache_areas
        .iter()
        .find(|(l, _)| *l == "Chunk index")
        .unwrap()
        .1;
    assert!(chunk_area > 0);
    // Everything counted, the index included: within 1% of du -sb.
    let out = run_ok(Proc::new("du").arg("-sb").arg(&root));
    let du_sb: u64 = out.split_whitespace().next().unwrap().parse().unwrap();
    let ours = df.total();
    assert!(
        ours.abs_diff(du_sb) as f64 / (du_sb as f64) < 0.01,
        "system df total {ours} vs du -sb {du_sb}"
    );
    drop(store);
    // No tag, no cache: prune takes the layer's blob, and its index entries with it.
    env.kiln_in("store")
        .args(["rmi", "chunky:1"])
        .assert()
        .success();
    env.kiln_in("store")
        .args(["prune", "-f"])
        .assert()
        .success();
    assert_eq!(index_files(&root), 0);
    // A build after that compresses everything again and gives the same layer.
    let again = env.build_oci("store", &ctx, "b", &[], &[]);
    assert_eq!(again, layer_digests(&env.path("a")));
}

#[test]
fn a_cache_hit_in_another_compression_is_converted_not_rebuilt() {
    require_root!();
    let env = Env::new();
    let ctx = env.path("ctx");
    bigcopy(&ctx);
    let gzip = env.build_oci("store", &ctx, "gzip", &["--compression", "gzip"], &[]);
    // The same build in zstd: the step hits the gzip result; the image's layer is
    // zstd, byte for byte what a store that never built it in gzip writes.
    let layout = env.path("zstd");
    let o = env
        .kiln_in("store")
        .args(["build", "--progress", "plain", "--compression", "zstd"])
        .arg("-o")
        .arg(format!("type=oci,dest={}", layout.display()))
        .arg(&ctx)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("1 cached, 0 built"), "{stderr}");
    let zstd = layer_digests(&layout);
    let fresh = env.build_oci("fresh", &ctx, "fresh", &["--compression", "zstd"], &[]);
    assert_eq!(zstd, fresh, "converted vs built in zstd");
    assert_ne!(zstd, gzip);
    for l in layers(&layout) {
        assert_eq!(
            l["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+zstd"
        );
    }
    // And back: gzip from the zstd store is the gzip build's layer.
    let back = env.build_oci("fresh", &ctx, "back", &["--compression", "gzip"], &[]);
    assert_eq!(back, gzip);
}

/// The blobs kept spliced in a store (`blobs/spliced/<hex>`).
fn spliced(store: &Path) -> Vec<String> {
    let Ok(dir) = fs::read_dir(store.join("blobs/spliced")) else {
        return Vec::new();
    };
    dir.map(|e| format!("sha256:{}", e.unwrap().file_name().to_string_lossy()))
        .collect()
}

/// An edit rebuild of a big layer keeps the layer as ranges of the earlier blob (no
/// second copy of the unchanged bytes); the image is the one a fresh store builds, it
/// pushes (the registry checks the digest), saves and loads, and outlives the
/// earlier image: removed and pruned, its blob's bytes stay as long as the spliced
/// blob needs them; `system df` still matches `du`.
#[test]
fn an_edit_rebuild_splices_the_earlier_blob() {
    require_root!();
    require_tool!("docker-registry");
    let env = Env::new();
    let ctx = env.path("ctx");
    bigcopy(&ctx);
    // Past kiln_cache::MIN_SPLICE of unchanged compressed bytes.
    fs::write(ctx.join("big/more.bin"), noise(5, 20 << 20)).unwrap();
    set_mtimes(&ctx);
    let root = env.path("s");
    let build = |tag: &str| env.build_tag("s", &ctx, tag);
    build("sp:1");
    assert!(spliced(&root).is_empty(), "a cold build splices nothing");
    let edited = ctx.join("small/d003/f011.txt");
    let original = fs::read(&edited).unwrap();
    fs::write(&edited, [original.as_slice(), b"edited\n"].concat()).unwrap();
    set_mtimes(&ctx);
    build("sp:2");
    let spliced_now = spliced(&root);
    assert_eq!(spliced_now.len(), 1, "the edit's layer is spliced");
    let layer = &spliced_now[0];

    // The same layer as a store that never saw the cold build writes.
    let fresh = env.build_oci("fresh", &ctx, "fresh", &[], &[]);
    assert_eq!(&fresh, std::slice::from_ref(layer));

    // Pushed from the recipe: the registry checks every blob's digest on upload.
    let reg = kiln_test_support::Registry::start(&kiln_test_support::Auth::None);
    let remote = reg.name("spliced/app:2");
    env.kiln_in("s")
        .args(["tag", "sp:2", &remote])
        .assert()
        .success();
    env.kiln_in("s")
        .args(["push", "-q", &remote])
        .assert()
        .success();
    assert!(
        reg.blob_data(layer.strip_prefix("sha256:").unwrap())
            .is_file()
    );
    assert_eq!(spliced(&root), spliced_now, "a push writes nothing out");

    // The earlier image removed and the cache pruned: the spliced blob keeps the
    // bytes it uses (its links), and reads as before.
    env.kiln_in("s").args(["rmi", "sp:1"]).assert().success();
    env.kiln_in("s")
        .args(["prune", "-a", "-f"])
        .assert()
        .success();
    assert_eq!(spliced(&root), spliced_now, "the tagged image's blob stays");
    let big_files: Vec<_> = fs::read_dir(root.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.metadata().unwrap().len() > 1 << 20)
        .map(|e| e.file_name())
        .collect();
    assert!(
        big_files.is_empty(),
        "the cold layer's blob was collected: {big_files:?}"
    );
    let store = Store::open(&root).unwrap();
    let digest = kiln_cache::Digest::parse(layer).unwrap();
    store.verify_blob(&digest).unwrap();
    // Everything counted once: within 1% of du -sb.
    let df = kiln_builder::usage::system_df(&store).unwrap();
    let out = run_ok(Proc::new("du").arg("-sb").arg(&root));
    let du_sb: u64 = out.split_whitespace().next().unwrap().parse().unwrap();
    assert!(
        df.total().abs_diff(du_sb) as f64 / (du_sb as f64) < 0.01,
        "system df total {} vs du -sb {du_sb}",
        df.total()
    );
    drop(store);

    // Saved (written out on the way: an archive needs files) and loaded elsewhere.
    let tar = env.path("sp.tar");
    env.kiln_in("s")
        .args(["save", "-o", tar.to_str().unwrap(), "sp:2"])
        .assert()
        .success();
    assert!(spliced(&root).is_empty(), "written out for the archive");
    assert!(root.join("blobs/sha256").join(&layer[7..]).is_file());
    env.kiln_in("loaded")
        .args(["load", "-i", tar.to_str().unwrap()])
        .assert()
        .success();
    let inspect = |store: &str| -> Value {
        let run = env
            .kiln_in(store)
            .args(["inspect", "sp:2"])
            .assert()
            .success();
        serde_json::from_slice(&run.get_output().stdout).unwrap()
    };
    assert_eq!(inspect("loaded")[0]["Id"], inspect("s")[0]["Id"]);
}

/// A spliced layer that a later COPY builds on is listed from its blob like any other
/// (written out for it: its files are read from there by path), so that an edit of
/// that COPY alone rebuilds.
#[test]
fn a_spliced_layer_under_a_later_copy_is_read_by_it() {
    require_root!();
    let env = Env::new();
    let ctx = env.path("ctx");
    bigcopy(&ctx);
    fs::write(ctx.join("big/more.bin"), noise(7, 20 << 20)).unwrap();
    fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY big /big\nCOPY small /small\n",
    )
    .unwrap();
    set_mtimes(&ctx);
    let root = env.path("s");
    let build = || env.build_tag("s", &ctx, "sp:1");
    build();
    fs::write(ctx.join("big/edit.txt"), "edited\n").unwrap();
    set_mtimes(&ctx);
    build();
    assert_eq!(spliced(&root).len(), 1, "the first COPY's layer is spliced");
    let edited = ctx.join("small/d003/f011.txt");
    let original = fs::read(&edited).unwrap();
    fs::write(&edited, [original.as_slice(), b"edited\n"].concat()).unwrap();
    set_mtimes(&ctx);
    build();
    // The same image as a store that never saw the earlier builds makes.
    let fresh = env.build_oci("fresh", &ctx, "fresh", &[], &[]);
    let warm = env.build_oci("s", &ctx, "warm", &[], &[]);
    assert_eq!(warm, fresh);
}
