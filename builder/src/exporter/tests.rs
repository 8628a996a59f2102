//! Exporter tests: a tiny image written out and read back by real tools (skopeo,
//! umoci, oci-image-tool; `.ci/install.sh` installs them).

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;
use crate::image::{
    BuiltImage, HistoryItem, ImageConfig, ImageSpec, LayerDesc, MediaTypes, build_image,
    sha256_digest,
};

const OCI_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const OCI_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// A temporary content store holding layer blobs at `blobs/sha256/<hex>`.
struct Store {
    dir: tempfile::TempDir,
}

impl Store {
    fn new() -> Self {
        Store {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.path().join("blobs/sha256").join(digest.hex())
    }

    /// Stores a layer made of `files` (path, mode, content), compressed as
    /// `media_type` says.
    fn add_layer(&self, files: &[(&str, u32, &str)], media_type: &str) -> LayerDesc {
        let mut tar = tar::Builder::new(Vec::new());
        for (path, mode, content) in files {
            let mut h = tar::Header::new_ustar();
            h.set_size(content.len() as u64);
            h.set_mode(*mode);
            h.set_mtime(1_700_000_000);
            h.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut h, path, content.as_bytes()).unwrap();
        }
        let raw = tar.into_inner().unwrap();
        let blob = match media_type {
            OCI_GZIP => {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                gz.write_all(&raw).unwrap();
                gz.finish().unwrap()
            }
            OCI_ZSTD => zstd::encode_all(&raw[..], 3).unwrap(),
            _ => raw.clone(),
        };
        let layer = LayerDesc {
            media_type: media_type.to_string(),
            digest: sha256_digest(&blob),
            size: blob.len() as u64,
            diff_id: sha256_digest(&raw),
        };
        let path = self.path(&layer.digest);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, blob).unwrap();
        layer
    }
}

fn spec_with(layers: Vec<LayerDesc>, env: &str) -> ImageSpec {
    let history = layers
        .iter()
        .enumerate()
        .map(|(i, _)| HistoryItem {
            created: None,
            created_by: format!("COPY layer{i} / # buildkit"),
            comment: Some("buildkit.dockerfile.v0".into()),
            empty_layer: false,
        })
        .chain(std::iter::once(HistoryItem {
            created: None,
            created_by: "CMD [\"/app/run.sh\"]".into(),
            comment: None,
            empty_layer: true,
        }))
        .collect();
    ImageSpec {
        platform_os: "linux".into(),
        platform_arch: "amd64".into(),
        platform_variant: None,
        created: Some(chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap()),
        author: None,
        config: ImageConfig {
            env: vec!["PATH=/usr/bin:/bin".into(), env.to_string()],
            cmd: Some(vec!["/app/run.sh".into()]),
            working_dir: "/app".into(),
            labels: [("org.example.team".to_string(), "kiln".to_string())].into(),
            ..Default::default()
        },
        history,
        layers,
        annotations: BTreeMap::new(),
    }
}

/// Two gzip layers: `/etc/hello.txt`, then `/app/run.sh`.
fn tiny_image(store: &Store, env: &str) -> BuiltImage {
    let l1 = store.add_layer(
        &[("etc/hello.txt", 0o644, "hello from layer 1\n")],
        OCI_GZIP,
    );
    let l2 = store.add_layer(
        &[
            ("app/run.sh", 0o755, "#!/bin/sh\necho hi\n"),
            ("etc/motd", 0o644, "layer 2\n"),
        ],
        OCI_GZIP,
    );
    build_image(&spec_with(vec![l1, l2], env), MediaTypes::Oci).unwrap()
}

fn tags(t: &[&str]) -> Vec<String> {
    t.iter().map(|s| s.to_string()).collect()
}

/// Runs a tool, returning stdout; fails the test (with stderr) if it fails.
fn run(tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool).args(args).output().unwrap_or_else(|e| {
        panic!("running {tool}: {e} (install it: apt-get install -y skopeo umoci oci-image-tool)")
    });
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `oci-image-tool validate` of the image `tag` in a layout directory.
fn validate_layout(dir: &Path, tag: &str) {
    let name = format!("name={tag}");
    run(
        "oci-image-tool",
        &["validate", "--type", "image", "--ref", &name, s(dir)],
    );
}

fn run_json(tool: &str, args: &[&str]) -> serde_json::Value {
    let out = run(tool, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{tool} {args:?}: {e}: {out}"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn layer_digests(image: &BuiltImage) -> Vec<serde_json::Value> {
    image
        .layers
        .iter()
        .map(|l| serde_json::Value::from(l.digest.as_str()))
        .collect()
}

fn read_index(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap()
}

/// Reads every entry of a tar: name -> (header, content).
fn tar_entries(path: &Path) -> Vec<(String, tar::Header, Vec<u8>)> {
    let mut archive = tar::Archive::new(fs::File::open(path).unwrap());
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = String::from_utf8(e.path_bytes().into_owned()).unwrap();
            let header = e.header().clone();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            (name, header, data)
        })
        .collect()
}

#[test]
fn oci_layout_is_read_by_skopeo() {
    let store = Store::new();
    let image = tiny_image(&store, "GREETING=hello");
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("layout");
    write_oci_layout(
        &image,
        &|d| Ok(store.path(d)),
        &dir,
        &tags(&["docker.io/library/app:1"]),
    )
    .unwrap();

    assert_eq!(
        fs::read_to_string(dir.join("oci-layout")).unwrap(),
        r#"{"imageLayoutVersion":"1.0.0"}"#
    );
    let index = read_index(&dir);
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let m = &index["manifests"][0];
    assert_eq!(m["digest"], image.manifest_digest.as_str());
    assert_eq!(m["annotations"]["org.opencontainers.image.ref.name"], "1");
    assert_eq!(
        m["annotations"]["io.containerd.image.name"],
        "docker.io/library/app:1"
    );
    assert_eq!(m["platform"]["architecture"], "amd64");
    assert_eq!(m["platform"]["os"], "linux");
    // Layers are hard links into the store (same filesystem here).
    let blob = dir.join(blob_rel_path(&image.layers[0].digest));
    assert_eq!(
        fs::metadata(&blob).unwrap().ino(),
        fs::metadata(store.path(&image.layers[0].digest))
            .unwrap()
            .ino()
    );

    let reference = format!("oci:{}:1", s(&dir));
    let inspect = run_json("skopeo", &["inspect", &reference]);
    assert_eq!(inspect["Digest"], image.manifest_digest.as_str());
    assert_eq!(
        inspect["Layers"],
        serde_json::Value::from(layer_digests(&image))
    );
    assert_eq!(inspect["Architecture"], "amd64");
    assert_eq!(inspect["Os"], "linux");

    let config = run_json("skopeo", &["inspect", "--config", &reference]);
    assert_eq!(
        config["config"]["Env"],
        serde_json::json!(["PATH=/usr/bin:/bin", "GREETING=hello"])
    );
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["/app/run.sh"]));
    assert_eq!(config["config"]["Labels"]["org.example.team"], "kiln");
    assert_eq!(config["config"]["WorkingDir"], "/app");
    let raw_config = run("skopeo", &["inspect", "--config", "--raw", &reference]);
    assert_eq!(raw_config.as_bytes(), &image.config_json[..]);

    let copied = out.path().join("copied.tar");
    run(
        "skopeo",
        &[
            "--insecure-policy",
            "copy",
            "--quiet",
            &reference,
            &format!("oci-archive:{}", s(&copied)),
        ],
    );
    let inspect = run_json(
        "skopeo",
        &["inspect", &format!("oci-archive:{}", s(&copied))],
    );
    assert_eq!(inspect["Digest"], image.manifest_digest.as_str());
}

#[test]
fn oci_layout_is_unpacked_by_umoci_and_validated() {
    let store = Store::new();
    let image = tiny_image(&store, "GREETING=hello");
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("layout");
    write_oci_layout(&image, &|d| Ok(store.path(d)), &dir, &tags(&["app:1"])).unwrap();

    validate_layout(&dir, "1");

    let bundle = out.path().join("bundle");
    let mut args = vec!["unpack", "--image"];
    let image_arg = format!("{}:1", s(&dir));
    args.push(&image_arg);
    let rootless = run("id", &["-u"]).trim() != "0";
    if rootless {
        args.push("--rootless");
    }
    args.push(s(&bundle));
    run("umoci", &args);
    let rootfs = bundle.join("rootfs");
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/hello.txt")).unwrap(),
        "hello from layer 1\n"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/motd")).unwrap(),
        "layer 2\n"
    );
    let run_sh = fs::metadata(rootfs.join("app/run.sh")).unwrap();
    assert_eq!(run_sh.mode() & 0o777, 0o755);
    let runtime: serde_json::Value =
        serde_json::from_slice(&fs::read(bundle.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        runtime["process"]["args"],
        serde_json::json!(["/app/run.sh"])
    );
    assert_eq!(runtime["process"]["cwd"], "/app");
}

#[test]
fn oci_archive_is_deterministic_and_read_by_skopeo() {
    let store = Store::new();
    let image = tiny_image(&store, "GREETING=hello");
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("image.tar");
    let t = tags(&["app:1", "ghcr.io/org/app:2"]);
    write_oci_archive(&image, &|d| Ok(store.path(d)), &file, &t).unwrap();

    for suffix in [":1", ":2"] {
        let archive_ref = format!("oci-archive:{}{suffix}", s(&file));
        let inspect = run_json("skopeo", &["inspect", &archive_ref]);
        assert_eq!(
            inspect["Digest"],
            image.manifest_digest.as_str(),
            "{archive_ref}"
        );
        assert_eq!(
            inspect["Layers"],
            serde_json::Value::from(layer_digests(&image))
        );
    }

    // With a single index entry the image needs no tag to be found.
    let untagged = out.path().join("untagged.tar");
    write_oci_archive(&image, &|d| Ok(store.path(d)), &untagged, &[]).unwrap();
    let inspect = run_json(
        "skopeo",
        &["inspect", &format!("oci-archive:{}", s(&untagged))],
    );
    assert_eq!(inspect["Digest"], image.manifest_digest.as_str());

    let entries = tar_entries(&file);
    let names: Vec<&str> = entries.iter().map(|(n, _, _)| n.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert_eq!(names[..2], ["blobs/", "blobs/sha256/"]);
    assert_eq!(names[names.len() - 2..], ["index.json", "oci-layout"]);
    assert_eq!(names.len(), 2 + 4 + 2);
    for (name, h, data) in &entries {
        assert_eq!(h.mtime().unwrap(), 0, "{name}");
        assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0), "{name}");
        let want = if name.ends_with('/') { 0o755 } else { 0o644 };
        assert_eq!(h.mode().unwrap(), want, "{name}");
        if let Some(hex) = name.strip_prefix("blobs/sha256/").filter(|h| !h.is_empty()) {
            assert_eq!(sha256_digest(data).hex(), hex);
        }
    }
    assert_eq!(fs::metadata(&file).unwrap().mode() & 0o777, 0o644);

    // Same inputs, same bytes; no temporary files left behind.
    let again = out.path().join("again.tar");
    write_oci_archive(&image, &|d| Ok(store.path(d)), &again, &t).unwrap();
    assert_eq!(fs::read(&file).unwrap(), fs::read(&again).unwrap());
    let leftovers: Vec<_> = fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn docker_archive_is_read_by_skopeo() {
    let store = Store::new();
    let l1 = store.add_layer(
        &[("etc/hello.txt", 0o644, "hello from layer 1\n")],
        OCI_GZIP,
    );
    let l2 = store.add_layer(&[("app/run.sh", 0o755, "#!/bin/sh\necho hi\n")], OCI_ZSTD);
    let l3 = store.add_layer(
        &[("etc/plain", 0o644, "uncompressed\n")],
        "application/vnd.oci.image.layer.v1.tar",
    );
    // The first layer again on top: stored once in the archive, listed twice.
    let spec = spec_with(vec![l1.clone(), l2, l3, l1], "GREETING=docker");
    let image = build_image(&spec, MediaTypes::Oci).unwrap();
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("docker.tar");
    write_docker_archive(
        &image,
        &|d| Ok(store.path(d)),
        &file,
        &tags(&["docker.io/library/app:1", "app:latest", "ghcr.io/org/app:2"]),
    )
    .unwrap();

    let entries = tar_entries(&file);
    let by_name: BTreeMap<&str, &Vec<u8>> =
        entries.iter().map(|(n, _, d)| (n.as_str(), d)).collect();
    let manifest: serde_json::Value = serde_json::from_slice(by_name["manifest.json"]).unwrap();
    let config_path = format!("blobs/sha256/{}", image.config_digest.hex());
    assert_eq!(manifest[0]["Config"], config_path.as_str());
    assert_eq!(
        manifest[0]["RepoTags"],
        serde_json::json!(["app:1", "app:latest", "ghcr.io/org/app:2"])
    );
    assert_eq!(
        by_name[config_path.as_str()].as_slice(),
        &image.config_json[..]
    );
    let layers = manifest[0]["Layers"].as_array().unwrap();
    assert_eq!(layers.len(), 4);
    for (path, layer) in layers.iter().zip(&image.layers) {
        let data = by_name[path.as_str().unwrap()];
        assert_eq!(sha256_digest(data), layer.diff_id, "{path}");
    }
    let repositories: serde_json::Value = serde_json::from_slice(by_name["repositories"]).unwrap();
    let top = image.layers[3].diff_id.hex();
    assert_eq!(
        repositories,
        serde_json::json!({"app": {"1": top, "latest": top}, "ghcr.io/org/app": {"2": top}})
    );
    assert_eq!(entries.len(), 2 + 1 + 3 + 2);

    let archive = format!("docker-archive:{}", s(&file));
    let inspect = run_json("skopeo", &["inspect", &archive]);
    let diff_ids: Vec<&str> = image.layers.iter().map(|l| l.diff_id.as_str()).collect();
    assert_eq!(inspect["Layers"], serde_json::json!(diff_ids));
    assert_eq!(inspect["Env"][1], "GREETING=docker");
    let tagged = run_json("skopeo", &["inspect", &format!("{archive}:app:1")]);
    assert_eq!(tagged["Layers"], inspect["Layers"]);

    // A full copy reads every layer and checks it against the config's diff_ids.
    let copied = out.path().join("copied");
    run(
        "skopeo",
        &[
            "--insecure-policy",
            "copy",
            "--quiet",
            &archive,
            &format!("oci:{}:x", s(&copied)),
        ],
    );
    validate_layout(&copied, "x");
}

#[test]
fn docker_media_type_image_exports_everywhere() {
    let store = Store::new();
    let l1 = store.add_layer(&[("etc/hello.txt", 0o644, "hi\n")], OCI_GZIP);
    let image = build_image(&spec_with(vec![l1], "A=b"), MediaTypes::Docker).unwrap();
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("layout");
    write_oci_layout(&image, &|d| Ok(store.path(d)), &dir, &tags(&["app:d"])).unwrap();
    // skopeo 1.9's `oci:` transport only looks at OCI manifests, so check by hand.
    let index = read_index(&dir);
    assert_eq!(
        index["manifests"][0]["mediaType"],
        crate::image::DOCKER_MANIFEST
    );
    let manifest = fs::read(dir.join(blob_rel_path(&image.manifest_digest))).unwrap();
    assert_eq!(manifest, image.manifest_json);
    let file = out.path().join("docker.tar");
    write_docker_archive(&image, &|d| Ok(store.path(d)), &file, &tags(&["app:d"])).unwrap();
    run_json(
        "skopeo",
        &["inspect", &format!("docker-archive:{}", s(&file))],
    );
}

#[test]
fn layouts_merge_tags() {
    let store = Store::new();
    let one = tiny_image(&store, "V=1");
    let two = tiny_image(&store, "V=2");
    assert_ne!(one.manifest_digest, two.manifest_digest);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("layout");
    let bp = |d: &Digest| -> std::io::Result<PathBuf> { Ok(store.path(d)) };
    write_oci_layout(&one, &bp, &dir, &tags(&["app:1"])).unwrap();
    write_oci_layout(&two, &bp, &dir, &tags(&["app:2"])).unwrap();

    let index = read_index(&dir);
    assert_eq!(index["manifests"].as_array().unwrap().len(), 2);
    for (tag, image) in [("1", &one), ("2", &two)] {
        let inspect = run_json("skopeo", &["inspect", &format!("oci:{}:{tag}", s(&dir))]);
        assert_eq!(
            inspect["Digest"],
            image.manifest_digest.as_str(),
            "tag {tag}"
        );
    }

    // Re-tagging replaces the entry with the same ref name; blobs of the old image stay.
    write_oci_layout(&two, &bp, &dir, &tags(&["app:1"])).unwrap();
    let index = read_index(&dir);
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 2);
    for m in manifests {
        assert_eq!(m["digest"], two.manifest_digest.as_str());
    }
    assert!(dir.join(blob_rel_path(&one.manifest_digest)).exists());

    // Writing the same thing again changes nothing.
    let before = fs::read(dir.join("index.json")).unwrap();
    write_oci_layout(&two, &bp, &dir, &tags(&["app:1"])).unwrap();
    assert_eq!(fs::read(dir.join("index.json")).unwrap(), before);

    // No tags: one unannotated entry, added once.
    validate_layout(&dir, "2");
    write_oci_layout(&one, &bp, &dir, &[]).unwrap();
    write_oci_layout(&one, &bp, &dir, &[]).unwrap();
    let index = read_index(&dir);
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 3);
    assert_eq!(manifests[2]["digest"], one.manifest_digest.as_str());
    assert!(manifests[2].get("annotations").is_none());
    // (oci-image-tool 1.0.0-rc1 filters refs while skipping the entry after each one it
    // drops, so `name=2` would wrongly see two matches here; `name=1` is unaffected.)
    validate_layout(&dir, "1");
}

#[test]
fn copies_when_links_fail_and_replaces_bad_blobs() {
    let store = Store::new();
    let image = tiny_image(&store, "A=b");
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("layout");
    // A stale, truncated blob in the way is replaced.
    let stale = dir.join(blob_rel_path(&image.layers[1].digest));
    fs::create_dir_all(stale.parent().unwrap()).unwrap();
    fs::write(&stale, b"junk").unwrap();
    // /dev/shm is usually another filesystem than the temp dir: hard links fail there.
    let shm = tempfile::tempdir_in("/dev/shm").ok();
    let shm_store = shm.as_ref().map(|d| d.path().to_path_buf());
    if let Some(root) = &shm_store {
        for l in &image.layers {
            let to = root.join(l.digest.hex());
            fs::copy(store.path(&l.digest), to).unwrap();
        }
    }
    let bp = |d: &Digest| -> std::io::Result<PathBuf> {
        Ok(match &shm_store {
            Some(root) => root.join(d.hex()),
            None => store.path(d),
        })
    };
    write_oci_layout(&image, &bp, &dir, &tags(&["app:1"])).unwrap();
    for l in &image.layers {
        let blob = dir.join(blob_rel_path(&l.digest));
        assert_eq!(sha256_digest(&fs::read(&blob).unwrap()), l.digest);
        assert_eq!(fs::metadata(&blob).unwrap().mode() & 0o777, 0o644);
        if shm_store.is_some() {
            let src = fs::metadata(bp(&l.digest).unwrap()).unwrap();
            assert_ne!(
                fs::metadata(&blob).unwrap().dev(),
                src.dev(),
                "copied, not linked"
            );
        }
    }
    run_json("skopeo", &["inspect", &format!("oci:{}:1", s(&dir))]);
}

#[test]
fn errors_name_what_failed() {
    let store = Store::new();
    let image = tiny_image(&store, "A=b");
    let out = tempfile::tempdir().unwrap();
    let bp = |d: &Digest| -> std::io::Result<PathBuf> { Ok(store.path(d)) };

    // A bad tag fails before anything is written.
    let dir = out.path().join("bad-tag");
    let err = write_oci_layout(&image, &bp, &dir, &tags(&["App:1"])).unwrap_err();
    assert!(matches!(err, ExportError::InvalidReference { .. }), "{err}");
    assert!(!dir.exists());

    // A missing blob names its digest and path.
    let missing = &image.layers[0];
    let moved = out.path().join("moved");
    fs::rename(store.path(&missing.digest), &moved).unwrap();
    let file = out.path().join("x.tar");
    let err = write_oci_archive(&image, &bp, &file, &[]).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(missing.digest.as_str()), "{msg}");
    assert!(msg.contains(s(&store.path(&missing.digest))), "{msg}");
    assert!(!file.exists());
    fs::rename(&moved, store.path(&missing.digest)).unwrap();

    // A blob of the wrong size.
    let mut wrong = image.clone();
    wrong.layers[0].size += 1;
    let err = write_oci_layout(&wrong, &bp, &out.path().join("l"), &[]).unwrap_err();
    assert!(matches!(err, ExportError::BlobSize { .. }), "{err}");

    // A wrong diff_id is caught while writing a Docker archive.
    let mut wrong = image.clone();
    wrong.layers[1].diff_id = Digest::from_sha256_bytes(&[7; 32]);
    let err = write_docker_archive(&wrong, &bp, &file, &[]).unwrap_err();
    assert!(matches!(err, ExportError::DiffIdMismatch { .. }), "{err}");
    assert!(err.to_string().contains(wrong.layers[1].digest.as_str()));
    assert!(!file.exists());

    // A blob whose content does not match its digest, in an OCI archive.
    let mut wrong = image.clone();
    let fake = Digest::from_sha256_bytes(&[9; 32]);
    fs::copy(store.path(&image.layers[0].digest), store.path(&fake)).unwrap();
    wrong.layers[0].digest = fake.clone();
    let err = write_oci_archive(&wrong, &bp, &file, &[]).unwrap_err();
    assert!(matches!(err, ExportError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains(fake.as_str()));

    // A digest that would escape blobs/sha256 cannot even be a layer's digest.
    let err = Digest::parse("sha256:../../../etc/passwd").unwrap_err();
    assert!(err.to_string().contains("etc/passwd"), "{err}");

    // An index.json that is not part of a layout is not overwritten.
    let dir = out.path().join("not-layout");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("index.json"), b"{}").unwrap();
    let err = write_oci_layout(&image, &bp, &dir, &[]).unwrap_err();
    assert!(matches!(err, ExportError::NotALayout { .. }), "{err}");
    assert_eq!(fs::read(dir.join("index.json")).unwrap(), b"{}");

    // A corrupt index.json in a layout is reported, not replaced.
    let dir = out.path().join("corrupt");
    write_oci_layout(&image, &bp, &dir, &[]).unwrap();
    fs::write(dir.join("index.json"), b"{not json").unwrap();
    let err = write_oci_layout(&image, &bp, &dir, &tags(&["a:1"])).unwrap_err();
    assert!(err.to_string().contains("index.json"), "{err}");
}
