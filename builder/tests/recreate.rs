//! A layer a RUN wrote is kept once, unpacked: its blob goes at the end of the build and
//! is written again from the snapshot, digest checked, when a push, a save or an export
//! needs it (a build that exports keeps it). A cached rebuild, `kiln run`, `prune -a`
//! and `rmi` keep working on such a layer, and a snapshot that no longer gives the blob
//! is refused, never stored. A base layer a build fetched is fetched again. They need
//! root (`require_root!`, RUN) and the tools they name (`require_tool!`).

use std::fs;
use std::path::PathBuf;

use kiln_builder::snapshots::LayerRef;
use kiln_cache::Store;
use kiln_ops::Platform;
use kiln_test_support::{KilnStore, require_root, require_tool};

const DOCKERFILE: &str = "FROM busybox:rc
RUN mkdir -p /d/sub && for i in $(seq 1 300); do echo line $i > /d/f$i; done && head -c 2000000 /dev/urandom > /d/big && echo old > /d/sub/old
RUN rm /d/f1 && rm -rf /d/sub && mkdir /d/sub && echo new > /d/sub/new && ln -s f2 /d/link && ln /d/f3 /d/hard
RUN echo two > /two
";

/// The layers of the stored image `tag`, bottom first.
fn layers(root: &std::path::Path, tag: &str) -> Vec<LayerRef> {
    let store = Store::open(root).unwrap();
    let rec = store
        .tag_get(&kiln_builder::images::normalize_tag(tag))
        .unwrap()
        .expect("tagged");
    kiln_builder::images::ImageStore::new(&store)
        .load(rec.manifest.as_str(), &Platform::host())
        .unwrap()
        .layers
}

fn diff_ids(layers: &[LayerRef]) -> Vec<String> {
    layers.iter().map(|l| l.diff_id.to_string()).collect()
}

fn has_blob(root: &std::path::Path, l: &LayerRef) -> bool {
    Store::open(root).unwrap().has_blob(&l.digest)
}

fn snapshot(root: &std::path::Path, l: &LayerRef) -> PathBuf {
    root.join("snapshots").join(l.diff_id.hex())
}

#[test]
fn a_run_layer_is_kept_as_its_snapshot_and_written_again_when_needed() {
    require_root!();
    require_tool!("docker-registry");
    let env = KilnStore::new().with_busybox("busybox:rc");
    let root = env.root();
    let ctx = env.ws.context("app", DOCKERFILE);
    env.build_ok(&ctx, &["-t", "rc:1"]);
    let all = layers(&root, "rc:1");
    assert_eq!(all.len(), 4);
    // The second RUN's layer has a whiteout, an opaque directory, a symlink and a hard
    // link: written again from an overlay upper directory all the same.
    let (base, runs, leaf) = (&all[0], &all[1..3], &all[3]);
    // The last RUN's tree is no step's input: only its blob is kept, as before.
    assert!(has_blob(&root, leaf) && !snapshot(&root, leaf).exists());
    for l in runs {
        assert!(
            !has_blob(&root, l),
            "the RUN layer's blob went: {}",
            l.digest
        );
        assert!(snapshot(&root, l).is_dir(), "its snapshot stays");
        let store = Store::open(&root).unwrap();
        assert!(kiln_builder::recreate::can_recreate(&store, &l.digest));
    }
    // A local base is nowhere else: its blob stays.
    assert!(has_blob(&root, base));

    // A cached rebuild needs no blob: every step is a hit.
    let again = env.build_ok(&ctx, &["-t", "rc:1"]);
    assert!(again.cached().iter().all(|c| *c), "{}", again.report);
    // `kiln run` runs on the snapshots and writes no blob.
    let out = env.ok(&[
        "run",
        "--rm",
        "rc:1",
        "sh",
        "-c",
        "cat /two /d/sub/* /d/link; ls /d/f1 /d/sub/old 2>&1; true",
    ]);
    assert!(out.starts_with("two\nnew\nline 2\n"), "{out}");
    assert!(out.contains("/d/f1: No such file"), "{out}");
    assert!(out.contains("/d/sub/old: No such file"), "{out}");
    assert!(runs.iter().all(|l| !has_blob(&root, l)));

    // Pushed: written again, and the registry checks each blob's digest on upload.
    let reg = kiln_test_support::Registry::start(&kiln_test_support::Auth::None);
    let remote = reg.name("recreate/app:1");
    env.ok(&["tag", "rc:1", &remote]);
    env.ok(&["push", "-q", &remote]);
    for l in runs {
        assert!(
            reg.blob_data(l.digest.hex()).is_file(),
            "{} pushed",
            l.digest
        );
        assert!(!has_blob(&root, l), "dropped again after the push");
    }

    // An OCI layout from a build whose steps all hit: written again for the export.
    let layout = env.ws.path("layout");
    env.build_ok(
        &ctx,
        &[
            "-t",
            "rc:1",
            "-o",
            &format!("type=oci,dest={}", layout.display()),
        ],
    );
    for l in runs {
        let blob = layout.join("blobs/sha256").join(l.digest.hex());
        assert_eq!(kiln_cache::sha256_of(&fs::read(&blob).unwrap()), l.digest);
        // Kept by a build that exports: the next export reads it again.
        assert!(has_blob(&root, l));
    }
    // A build that exports nothing drops it again.
    env.build_ok(&ctx, &["-t", "rc:1"]);
    assert!(runs.iter().all(|l| !has_blob(&root, l)));

    // `prune -a` drops the snapshots of tagged images, but not the only copy of a
    // layer; saved and loaded elsewhere after it, the image is the same.
    env.ok(&["prune", "-a", "-f"]);
    assert!(runs.iter().all(|l| snapshot(&root, l).is_dir()));
    let tar = env.ws.path("rc.tar");
    env.ok(&["save", "-o", tar.to_str().unwrap(), "rc:1"]);
    assert!(runs.iter().all(|l| !has_blob(&root, l)));
    let other = KilnStore::new();
    other.ok(&["load", "-i", tar.to_str().unwrap()]);
    let id = |s: &KilnStore| -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_str(&s.ok(&["inspect", "rc:1"])).unwrap();
        v[0]["Id"].clone()
    };
    assert_eq!(id(&other), id(&env));
    assert_eq!(diff_ids(&layers(&other.root(), "rc:1")), diff_ids(&all));

    // A snapshot changed behind kiln's back no longer gives the blob: refused, and
    // nothing is stored under the digest.
    let top = &runs[0];
    fs::write(snapshot(&root, top).join("d/f1"), "changed\n").unwrap();
    let failed = env.out(&["save", "-o", tar.to_str().unwrap(), "rc:1"]);
    assert!(!failed.status.success());
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        stderr.contains(&format!(
            "layer {} written again from its snapshot came out as",
            top.digest
        )),
        "{stderr}"
    );
    assert!(!has_blob(&root, top));

    // Removed with its image: the snapshots go, and so do the records.
    env.ok(&["rmi", "rc:1", &remote]);
    env.ok(&["prune", "-a", "-f"]);
    assert!(runs.iter().all(|l| !snapshot(&root, l).exists()));
    let records: Vec<_> = fs::read_dir(root.join("snapshots/written"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(records.is_empty(), "{records:?}");
}

#[test]
fn a_base_layer_a_registry_holds_is_fetched_again_for_a_save() {
    require_root!();
    require_tool!("docker-registry");
    let reg = kiln_test_support::Registry::start_logged(&kiln_test_support::Auth::None);
    let base = reg.name("recreate/busybox:1");
    let env = KilnStore::new().with_busybox("busybox:rc");
    env.ok(&["tag", "busybox:rc", &base]);
    env.ok(&["push", "-q", &base]);
    // A fresh store that knows the base from the registry only.
    let user = KilnStore::new();
    let root = user.root();
    let ctx = user
        .ws
        .context("app", &format!("FROM {base}\nRUN echo hi > /hi\n"));
    user.build_ok(&ctx, &["-t", "rb:1"]);
    let all = layers(&root, "rb:1");
    // Unpacked for the RUN, the base's layer is kept once: its snapshot.
    assert!(snapshot(&root, &all[0]).is_dir());
    assert!(!has_blob(&root, &all[0]), "the base layer's blob went");
    // Where it is fetched from stays known through a collection.
    user.ok(&["prune", "-a", "-f"]);
    let tar = user.ws.path("rb.tar");
    user.ok(&["save", "-o", tar.to_str().unwrap(), "rb:1"]);
    // Fetched again for the archive (the registry logs the blob GET).
    let hex = all[0].digest.hex().to_owned();
    assert!(
        reg.requests()
            .iter()
            .filter(|(m, p, s)| m == "GET" && p.ends_with(&hex) && *s == 200)
            .count()
            >= 2,
        "{:?}",
        reg.requests()
    );
    let other = KilnStore::new();
    other.ok(&["load", "-i", tar.to_str().unwrap()]);
    assert_eq!(diff_ids(&layers(&other.root(), "rb:1")), diff_ids(&all));
}

const STAGES: &str = "FROM busybox:rc AS builder
RUN mkdir /out && head -c 3000000 /dev/urandom > /out/bin && echo built > /out/note
FROM busybox:rc
COPY --from=builder /out /app
RUN cat /app/note > /seen
";

/// The layer digest the report gives the step at Dockerfile line `line`.
fn step_layer(b: &kiln_test_support::Built, line: u64) -> kiln_cache::Digest {
    let step = b
        .steps()
        .iter()
        .find(|s| s["line"].as_u64() == Some(line))
        .unwrap_or_else(|| panic!("no step at line {line}: {}", b.report));
    kiln_cache::Digest::parse(step["layer"]["digest"].as_str().unwrap()).unwrap()
}

#[test]
fn a_builder_stage_layer_is_compressed_only_when_an_image_holds_it() {
    require_root!();
    let env = KilnStore::new().with_busybox("busybox:rc");
    let root = env.root();
    let ctx = env.ws.context("stages", STAGES);
    let built = env.build_ok(&ctx, &["-t", "st:1"]);
    let gzip = "application/vnd.oci.image.layer.v1.tar+gzip";
    for l in &layers(&root, "st:1")[1..] {
        assert_eq!(l.media_type, gzip, "{}", l.digest);
    }
    // The builder stage's RUN: an uncompressed layer (its digest is its diff_id) kept
    // as its snapshot, with no blob, and written again when needed.
    let run = step_layer(&built, 2);
    let store = Store::open(&root).unwrap();
    assert!(!store.has_blob(&run), "no blob for {run}");
    assert!(root.join("snapshots").join(run.hex()).is_dir());
    assert!(kiln_builder::recreate::can_recreate(&store, &run));

    // An image that holds it (`--target builder`, all hits): compressed for the image,
    // and the image runs.
    let target = env.build_ok(&ctx, &["--target", "builder", "-t", "b:1"]);
    assert!(target.cached().iter().all(|c| *c), "{}", target.report);
    let held = layers(&root, "b:1");
    let top = held.last().unwrap();
    assert_eq!(top.media_type, gzip);
    assert_eq!(top.diff_id, run);
    let blob = fs::read(Store::open(&root).unwrap().blob_path(&top.digest)).unwrap();
    assert_eq!(kiln_cache::sha256_of(&blob), top.digest);
    assert_eq!(
        env.ok(&["run", "--rm", "b:1", "cat", "/out/note"]),
        "built\n"
    );

    // A `mode=max` cache export wants every step's layer: compressed as it is made.
    let fresh = KilnStore::new().with_busybox("busybox:rc");
    let ctx = fresh.ws.context("stages", STAGES);
    let cache = fresh.ws.path("cache");
    let to = format!("type=local,dest={},mode=max", cache.display());
    let built = fresh.build_ok(&ctx, &["--cache-to", &to]);
    let run = step_layer(&built, 2);
    let blob = fs::read(cache.join("blobs/sha256").join(run.hex())).unwrap();
    assert_eq!(&blob[..2], &[0x1f, 0x8b], "a gzip layer in the cache");
}
