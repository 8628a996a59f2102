//! Registry-specific test helpers: hand-built images and layouts, `skopeo` checks and a
//! progress recorder. The registry launcher (`Registry`, `Auth`, `TokenServer`) and the
//! `require_tool!` checks come from kiln-test-support, shared with kiln-builder's tests:
//! a missing tool skips a test on a developer's machine and fails it when `CI` is set.

#![allow(dead_code, unused_imports)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

pub use kiln_test_support::noise;
use std::process::Command;
use std::sync::Mutex;

use kiln_cache::{Digest, Store, sha256_of};
pub use kiln_test_support::registry::{Auth, Registry, TokenServer};
pub use kiln_test_support::{require_tool, tool_path};

/// What only these tests need of a [`Registry`]: kiln-registry's own types.
pub trait RegistryExt {
    /// `127.0.0.1:PORT/<repo_tag>` as a reference.
    fn reference(&self, repo_tag: &str) -> kiln_registry::Reference;
}

impl RegistryExt for Registry {
    fn reference(&self, repo_tag: &str) -> kiln_registry::Reference {
        kiln_registry::Reference::parse(&self.name(repo_tag)).unwrap()
    }
}

/// A gzip tar layer with one file: returns (compressed, diff_id).
pub fn layer(name: &str, content: &[u8]) -> (Vec<u8>, Digest) {
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(content.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_cksum();
    tar.append_data(&mut h, name, content).unwrap();
    let tar = tar.into_inner().unwrap();
    let diff_id = sha256_of(&tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    (gz.finish().unwrap(), diff_id)
}

/// A hand-built image in a store.
pub struct Image {
    pub manifest: Digest,
    pub manifest_bytes: Vec<u8>,
    pub config: Digest,
    pub config_bytes: Vec<u8>,
    /// (digest, bytes) of each layer, bottom first.
    pub layers: Vec<(Digest, Vec<u8>)>,
}

/// Build an OCI image from `layers` (compressed bytes + diff ids) into
/// `store`; `tag` makes the config (hence the manifest) unique.
pub fn image(store: &Store, layers: &[(Vec<u8>, Digest)], arch: &str, tag: &str) -> Image {
    let diff_ids: Vec<String> = layers.iter().map(|(_, d)| d.to_string()).collect();
    let config_bytes = serde_json::to_vec(&serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Env": ["PATH=/usr/bin"], "Labels": {"test": tag}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let config = store.put_blob(&config_bytes).unwrap();
    let mut descs = Vec::new();
    let mut out_layers = Vec::new();
    for (bytes, _) in layers {
        let d = store.put_blob(bytes).unwrap();
        descs.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": d.to_string(), "size": bytes.len(),
        }));
        out_layers.push((d, bytes.clone()));
    }
    let manifest_bytes = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config.to_string(), "size": config_bytes.len()},
        "layers": descs,
    }))
    .unwrap();
    let manifest = store.put_blob(&manifest_bytes).unwrap();
    Image {
        manifest,
        manifest_bytes,
        config,
        config_bytes,
        layers: out_layers,
    }
}

/// Write an OCI layout at `dir` holding `blobs` with `index.json` pointing
/// at `top` (a manifest or index) under the name `tag`.
pub fn oci_layout(dir: &Path, blobs: &[&[u8]], top: (&Digest, u64, &str), tag: &str) {
    let b = dir.join("blobs/sha256");
    std::fs::create_dir_all(&b).unwrap();
    for blob in blobs {
        std::fs::write(b.join(sha256_of(blob).hex()), blob).unwrap();
    }
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": top.2, "digest": top.0.to_string(), "size": top.1,
                       "annotations": {"org.opencontainers.image.ref.name": tag}}],
    });
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
}

/// Run skopeo with `args` (policy checks off); panics with its stderr on
/// failure, returns stdout.
pub fn skopeo(args: &[&str]) -> String {
    let out = Command::new(tool_path("skopeo"))
        .arg("--insecure-policy")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `skopeo inspect` of `docker://<reference>` as JSON.
pub fn inspect(reference: &str, raw: bool, creds: Option<&str>) -> serde_json::Value {
    let target = format!("docker://{reference}");
    let mut args = vec!["inspect", "--tls-verify=false"];
    if raw {
        args.push("--raw");
    }
    if let Some(c) = creds {
        args.extend(["--creds", c]);
    }
    args.push(&target);
    serde_json::from_str(&skopeo(&args)).unwrap()
}

/// Called on every progress event with the digest and bytes done.
pub type OnProgress<'a> = Box<dyn Fn(&str, u64) + Sync + 'a>;

/// A [`kiln_registry::Progress`] that records events.
#[derive(Default)]
pub struct Recorder<'a> {
    pub done: Mutex<BTreeMap<String, String>>,
    pub on_progress: Option<OnProgress<'a>>,
}

impl kiln_registry::Progress for Recorder<'_> {
    fn blob(&self, event: &kiln_registry::BlobEvent<'_>) {
        match event {
            kiln_registry::BlobEvent::Started { .. } => {}
            kiln_registry::BlobEvent::Progress { digest, done, .. } => {
                if let Some(f) = &self.on_progress {
                    f(digest.as_str(), *done);
                }
            }
            kiln_registry::BlobEvent::Done { digest, how, .. } => {
                self.done
                    .lock()
                    .unwrap()
                    .insert(digest.to_string(), how.as_str().to_owned());
            }
        }
    }
}
