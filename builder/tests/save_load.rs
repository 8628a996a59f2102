//! `kiln save` and `kiln load`: several images in one Docker or OCI archive, loaded
//! into a fresh store and run. Real builds over a busybox base made from the host's
//! busybox-static: root and busybox (`needs!`).

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::Output;

use assert_cmd::Command;
use kiln_test_support::{Workspace, busybox_context, require_root, require_tool};
use serde_json::Value;

macro_rules! needs {
    () => {
        require_root!();
        require_tool!("busybox");
    };
}

const BASE: &str = "busybox:kiln-test";

fn kiln(store: &Path) -> Command {
    let mut c = Command::cargo_bin("kiln").unwrap();
    c.env("KILN_ROOT", store)
        .env("KILN_NO_RECORD", "1")
        .env_remove("SOURCE_DATE_EPOCH");
    c
}

fn ok(o: Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what} failed ({}):\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// A store with the base and two images built on it: `app:1` (COPY) and `other:2`
/// (RUN), which share the base's layer.
fn two_images(ws: &Workspace) -> std::path::PathBuf {
    let store = ws.path("store");
    let ctx = ws.path("busybox");
    busybox_context(&ctx);
    kiln(&store)
        .args(["build", "--progress", "quiet", "-t", BASE])
        .arg(&ctx)
        .assert()
        .success();
    let app = ws.context("app", &format!("FROM {BASE}\nCOPY a /a\n"));
    fs::write(app.join("a"), "from app\n").unwrap();
    kiln(&store)
        .args(["build", "--progress", "quiet", "-t", "app:1"])
        .arg(&app)
        .assert()
        .success();
    let other = ws.context("other", &format!("FROM {BASE}\nRUN echo two > /two\n"));
    kiln(&store)
        .args(["build", "--progress", "quiet", "-t", "other:2"])
        .arg(&other)
        .assert()
        .success();
    store
}

/// The archive's files: path -> content.
fn tar_files(archive: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut tar = tar::Archive::new(archive);
    for e in tar.entries().unwrap() {
        let mut e = e.unwrap();
        if e.header().entry_type().is_file() {
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            out.insert(path, data);
        }
    }
    out
}

fn run_cat(store: &Path, image: &str, file: &str) -> String {
    let o = kiln(store)
        .args(["run", "--rm", "--pull", "never", image, "cat", file])
        .output()
        .unwrap();
    ok(o, &format!("run {image}"))
}

/// Two images in one docker-archive (`-o FILE`): one manifest.json entry each, the
/// shared base layer once; `load -i` into a fresh store prints Docker's lines and
/// both run.
#[test]
fn docker_archive_of_two_images_loads_into_a_fresh_store() {
    needs!();
    let ws = Workspace::new();
    let store = two_images(&ws);
    let file = ws.path("images.tar");
    ok(
        kiln(&store)
            .args(["save", "-o", file.to_str().unwrap(), "app:1", "other:2"])
            .output()
            .unwrap(),
        "save",
    );
    let files = tar_files(&fs::read(&file).unwrap());
    let manifest: Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
    let entries = manifest.as_array().unwrap();
    assert_eq!(entries.len(), 2, "{manifest}");
    assert_eq!(entries[0]["RepoTags"], serde_json::json!(["app:1"]));
    assert_eq!(entries[1]["RepoTags"], serde_json::json!(["other:2"]));
    // Both start with the base's layer, stored once.
    assert_eq!(entries[0]["Layers"][0], entries[1]["Layers"][0]);
    let layer_files = files
        .keys()
        .filter(|k| k.starts_with("blobs/sha256/"))
        .count();
    // Base + app's COPY + other's RUN, and two configs.
    assert_eq!(layer_files, 5, "{:?}", files.keys().collect::<Vec<_>>());

    let fresh = ws.path("fresh");
    let out = ok(
        kiln(&fresh)
            .args(["load", "-i", file.to_str().unwrap()])
            .output()
            .unwrap(),
        "load",
    );
    assert_eq!(out, "Loaded image: app:1\nLoaded image: other:2\n");
    assert_eq!(run_cat(&fresh, "app:1", "/a"), "from app\n");
    assert_eq!(run_cat(&fresh, "other:2", "/two"), "two\n");
    // The image IDs (config digests) survive the round trip.
    let ids = |s: &Path| {
        ok(
            kiln(s)
                .args(["images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"])
                .output()
                .unwrap(),
            "images",
        )
    };
    let before: Vec<String> = ids(&store)
        .lines()
        .filter(|l| !l.starts_with("busybox"))
        .map(str::to_string)
        .collect();
    assert_eq!(ids(&fresh).lines().collect::<Vec<_>>(), before);
}

/// `--format oci` to standard output, `load` from standard input: an OCI archive with
/// an index entry per image, named by `io.containerd.image.name`.
#[test]
fn oci_archive_through_pipes() {
    needs!();
    let ws = Workspace::new();
    let store = two_images(&ws);
    let o = kiln(&store)
        .args(["save", "--format", "oci", "app:1", "other:2"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let bytes = o.stdout;
    let files = tar_files(&bytes);
    assert!(files.contains_key("oci-layout"));
    let index: Value = serde_json::from_slice(&files["index.json"]).unwrap();
    let names: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m["annotations"]["io.containerd.image.name"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(
        names,
        ["docker.io/library/app:1", "docker.io/library/other:2"]
    );

    let fresh = ws.path("fresh");
    let out = ok(
        kiln(&fresh)
            .arg("load")
            .write_stdin(bytes)
            .output()
            .unwrap(),
        "load",
    );
    assert_eq!(out, "Loaded image: app:1\nLoaded image: other:2\n");
    assert_eq!(run_cat(&fresh, "other:2", "/two"), "two\n");
}

/// An image named by id is saved without a name and loaded as `Loaded image ID:`;
/// an unknown name fails before anything is written; a tar that is neither format is
/// refused with one line.
#[test]
fn save_by_id_unknown_names_and_bad_archives() {
    needs!();
    let ws = Workspace::new();
    let store = two_images(&ws);
    let inspect: Value = serde_json::from_str(&ok(
        kiln(&store).args(["inspect", "app:1"]).output().unwrap(),
        "inspect",
    ))
    .unwrap();
    let id = inspect[0]["Id"].as_str().unwrap().to_string();
    let file = ws.path("byid.tar");
    ok(
        kiln(&store)
            .args(["save", "-o", file.to_str().unwrap(), &id[7..19]])
            .output()
            .unwrap(),
        "save by id",
    );
    let fresh = ws.path("fresh");
    let out = ok(
        kiln(&fresh)
            .args(["load", "-i", file.to_str().unwrap()])
            .output()
            .unwrap(),
        "load",
    );
    assert!(out.starts_with("Loaded image ID: sha256:"), "{out}");

    let missing = ws.path("missing.tar");
    let o = kiln(&store)
        .args(["save", "-o", missing.to_str().unwrap(), "app:1", "nope:1"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no such image: nope:1"));
    assert!(!missing.exists());

    let mut junk = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(2);
    h.set_cksum();
    junk.append_data(&mut h, "hello", &b"hi"[..]).unwrap();
    let o = kiln(&fresh)
        .arg("load")
        .write_stdin(junk.into_inner().unwrap())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("neither a Docker archive"), "{err}");
}

/// Regression: a build over a registry base keeps the base's layers lazy (a COPY-only
/// build never needs them), so `kiln save` must fetch them first, or the archive
/// cannot be written.
#[test]
fn save_fetches_the_lazy_layers_of_a_registry_base() {
    needs!();
    require_tool!("docker-registry");
    let reg = kiln_test_support::Registry::start(&kiln_test_support::Auth::None);
    let ws = Workspace::new();
    let store = two_images(&ws);
    let base = format!("{}:1", reg.name("base/busybox"));
    ok(
        kiln(&store).args(["tag", BASE, &base]).output().unwrap(),
        "tag",
    );
    ok(
        kiln(&store).args(["push", "-q", &base]).output().unwrap(),
        "push",
    );
    let builder = ws.path("builder");
    // No step needs the base's filesystem: its layers are never fetched by the build.
    let app = ws.context("lazy", &format!("FROM {base}\nLABEL lazy=1\n"));
    ok(
        kiln(&builder)
            .args(["build", "--progress", "quiet", "-t", "lazy:1"])
            .arg(&app)
            .output()
            .unwrap(),
        "build",
    );
    let file = ws.path("lazy.tar");
    ok(
        kiln(&builder)
            .args(["save", "-o", file.to_str().unwrap(), "lazy:1"])
            .output()
            .unwrap(),
        "save",
    );
    let fresh = ws.path("fresh");
    ok(
        kiln(&fresh)
            .args(["load", "-i", file.to_str().unwrap()])
            .output()
            .unwrap(),
        "load",
    );
    assert_eq!(
        run_cat(&fresh, "lazy:1", "/etc/group").lines().next(),
        Some("root:x:0:")
    );
}
