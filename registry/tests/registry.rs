//! kiln-registry against a real registry (CNCF distribution 2.8), checked
//! with skopeo. Needs `docker-registry`, `skopeo`, `apache2-utils` and
//! `openssl` installed: each test checks first, and skips with a message
//! (or, when `CI` is set, fails) if one is missing.

mod support;

use std::path::Path;
use std::time::Duration;

use kiln_cache::{Digest, Store};
use kiln_registry::{
    Client, ClientOptions, NoProgress, Platform, PushOptions, RegistryError, credentials,
    media_types,
};
use support::*;

/// Returns from the test unless `docker-registry` and `skopeo` are installed (fails
/// instead when `CI` is set).
macro_rules! require_registry {
    ($($extra:literal),*) => {
        require_tool!("docker-registry");
        require_tool!("skopeo");
        $(require_tool!($extra);)*
    };
}

fn client(docker_config: &Path) -> Client {
    Client::new(ClientOptions {
        docker_config_dir: Some(docker_config.to_path_buf()),
        retries: 1,
        retry_delay: Duration::from_millis(50),
        ..Default::default()
    })
    .unwrap()
}

struct Env {
    _dir: tempfile::TempDir,
    store: Store,
    docker_config: std::path::PathBuf,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let docker_config = dir.path().join("docker");
    Env {
        _dir: dir,
        store,
        docker_config,
    }
}

fn small_layers(seed: u64, n: usize) -> Vec<(Vec<u8>, Digest)> {
    (0..n)
        .map(|i| {
            layer(
                &format!("file{i}"),
                &noise(seed * 100 + i as u64, 100_000 + i * 1000),
            )
        })
        .collect()
}

#[test]
fn push_skip_and_mount() {
    require_registry!();
    let reg = Registry::start(&Auth::None);
    let e = env();
    let c = client(&e.docker_config);
    let shared = small_layers(1, 3);
    let img = image(&e.store, &shared, "amd64", "one");
    let target = reg.reference("team/app:v1");

    let r = c
        .push(
            &e.store,
            &img.manifest,
            &target,
            &PushOptions::default(),
            &NoProgress,
        )
        .unwrap();
    assert_eq!(r.digest, img.manifest);
    assert_eq!(
        (r.blobs_uploaded, r.blobs_skipped, r.blobs_mounted),
        (4, 0, 0)
    );
    let total: u64 =
        img.layers.iter().map(|l| l.1.len() as u64).sum::<u64>() + img.config_bytes.len() as u64;
    assert_eq!(r.bytes_uploaded, total);
    let info = inspect(&format!("{}/team/app:v1", reg.host()), false, None);
    assert_eq!(info["Digest"], img.manifest.as_str());
    let layer_digests: Vec<&str> = img.layers.iter().map(|l| l.0.as_str()).collect();
    assert_eq!(info["Layers"], serde_json::json!(layer_digests));

    // Again: everything is there already.
    let r = c
        .push(
            &e.store,
            &img.manifest,
            &target,
            &PushOptions::default(),
            &NoProgress,
        )
        .unwrap();
    assert_eq!(
        (r.bytes_uploaded, r.blobs_uploaded, r.blobs_skipped),
        (0, 0, 4)
    );

    // A second image sharing the layers, into another repository, with a
    // fresh client (the mount source comes from the store's cache index).
    let mut layers2 = shared.clone();
    layers2.push(layer("extra", b"extra"));
    let img2 = image(&e.store, &layers2, "amd64", "two");
    let rec = Recorder::default();
    let r = client(&e.docker_config)
        .push(
            &e.store,
            &img2.manifest,
            &reg.reference("other/app:v2"),
            &PushOptions::default(),
            &rec,
        )
        .unwrap();
    assert_eq!(
        (r.blobs_mounted, r.blobs_uploaded, r.blobs_skipped),
        (3, 2, 0),
        "{r:?}"
    );
    assert_eq!(
        r.bytes_uploaded,
        (img2.config_bytes.len() + img2.layers[3].1.len()) as u64
    );
    assert_eq!(
        rec.done.lock().unwrap()[img.layers[0].0.as_str()],
        "mounted"
    );
    let info = inspect(&format!("{}/other/app:v2", reg.host()), false, None);
    assert_eq!(info["Digest"], img2.manifest.as_str());

    // Pull it back into an empty store: same bytes, same digests.
    let e2 = env();
    let p = c
        .pull(
            &reg.reference("other/app:v2"),
            &Platform::default(),
            &e2.store,
            &NoProgress,
        )
        .unwrap();
    assert_eq!(p.manifest_digest, img2.manifest);
    assert_eq!(p.config.digest, img2.config);
    assert_eq!(p.index_digest, None);
    assert_eq!(
        e2.store.read_blob(&p.manifest_digest).unwrap(),
        img2.manifest_bytes
    );
    for (d, bytes) in &img2.layers {
        assert_eq!(&e2.store.read_blob(d).unwrap(), bytes);
    }
    // Pulling again downloads nothing.
    let p = c
        .pull(
            &reg.reference("other/app:v2"),
            &Platform::default(),
            &e2.store,
            &NoProgress,
        )
        .unwrap();
    assert_eq!(p.bytes_downloaded, 0);
}

#[test]
fn chunked_push_and_docker_format() {
    require_registry!();
    let reg = Registry::start(&Auth::None);
    let e = env();
    let c = Client::new(ClientOptions {
        docker_config_dir: Some(e.docker_config.clone()),
        monolithic_threshold: 256 << 10,
        chunk_size: 100 << 10,
        ..Default::default()
    })
    .unwrap();
    let layers = vec![layer("big", &noise(7, 1 << 20)), layer("small", b"hi")];
    let img = image(&e.store, &layers, "amd64", "chunked");
    let r = c
        .push(
            &e.store,
            &img.manifest,
            &reg.reference("chunked:1"),
            &PushOptions::default(),
            &NoProgress,
        )
        .unwrap();
    assert_eq!(r.digest, img.manifest);
    let info = inspect(&format!("{}/chunked:1", reg.host()), false, None);
    assert_eq!(info["Layers"][0], img.layers[0].0.as_str());

    // Docker schema 2: rewritten media types, new digest, same blobs.
    let opts = PushOptions {
        docker_format: true,
        ..PushOptions::default()
    };
    let r = c
        .push(
            &e.store,
            &img.manifest,
            &reg.reference("chunked:docker"),
            &opts,
            &NoProgress,
        )
        .unwrap();
    assert_ne!(r.digest, img.manifest);
    assert_eq!(r.bytes_uploaded, 0);
    let raw = inspect(&format!("{}/chunked:docker", reg.host()), true, None);
    assert_eq!(raw["mediaType"], media_types::DOCKER_MANIFEST);
    assert_eq!(raw["config"]["mediaType"], media_types::DOCKER_CONFIG);
    assert_eq!(
        raw["layers"][1]["mediaType"],
        media_types::DOCKER_LAYER_GZIP
    );
    let info = inspect(&format!("{}/chunked:docker", reg.host()), false, None);
    assert_eq!(info["Digest"], r.digest.as_str());
}

#[test]
fn pull_what_skopeo_pushed_oci_and_v2s2() {
    require_registry!();
    let reg = Registry::start(&Auth::None);
    let src = env();
    let img = image(&src.store, &small_layers(3, 2), "amd64", "sk");
    let layout = src._dir.path().join("layout");
    let mut blobs: Vec<&[u8]> = vec![&img.manifest_bytes, &img.config_bytes];
    blobs.extend(img.layers.iter().map(|l| l.1.as_slice()));
    oci_layout(
        &layout,
        &blobs,
        (
            &img.manifest,
            img.manifest_bytes.len() as u64,
            media_types::OCI_MANIFEST,
        ),
        "t",
    );
    let oci_src = format!("oci:{}:t", layout.display());
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &oci_src,
        &format!("docker://{}/sk/oci:1", reg.host()),
    ]);
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--format",
        "v2s2",
        &oci_src,
        &format!("docker://{}/sk/v2s2:1", reg.host()),
    ]);

    let e = env();
    let c = client(&e.docker_config);
    let p = c
        .pull(
            &reg.reference("sk/oci:1"),
            &Platform::default(),
            &e.store,
            &NoProgress,
        )
        .unwrap();
    let want = inspect(&format!("{}/sk/oci:1", reg.host()), false, None);
    assert_eq!(p.manifest_digest.as_str(), want["Digest"]);
    assert_eq!(p.media_type, media_types::OCI_MANIFEST);
    assert_eq!(p.layers.len(), 2);

    let p = c
        .pull(
            &reg.reference("sk/v2s2:1"),
            &Platform::default(),
            &e.store,
            &NoProgress,
        )
        .unwrap();
    let want = inspect(&format!("{}/sk/v2s2:1", reg.host()), false, None);
    assert_eq!(p.manifest_digest.as_str(), want["Digest"]);
    assert_eq!(p.media_type, media_types::DOCKER_MANIFEST);
    assert_eq!(p.config.media_type, media_types::DOCKER_CONFIG);
    // Stored byte for byte as served, and everything it names is there.
    let raw = e.store.read_blob(&p.manifest_digest).unwrap();
    assert_eq!(kiln_cache::sha256_of(&raw), p.manifest_digest);
    for b in p.layers.iter().chain([&p.config]) {
        e.store.verify_blob(&b.digest).unwrap();
    }

    // Pinned by digest.
    let pinned = reg.reference(&format!("sk/v2s2@{}", p.manifest_digest));
    let p2 = c
        .pull(&pinned, &Platform::default(), &e.store, &NoProgress)
        .unwrap();
    assert_eq!(p2.manifest_digest, p.manifest_digest);

    // Missing tag: one clear line with the status and the registry's message.
    let err = c
        .pull(
            &reg.reference("sk/v2s2:nope"),
            &Platform::default(),
            &e.store,
            &NoProgress,
        )
        .unwrap_err();
    let msg = err.to_string();
    eprintln!("error shown to the user: {msg}");
    assert_eq!(err.status(), Some(404), "{msg}");
    assert!(
        msg.contains("sk/v2s2:nope") && msg.contains("404") && msg.contains("MANIFEST_UNKNOWN"),
        "{msg}"
    );
    assert!(!msg.contains('\n'));
}

#[test]
fn index_picks_platform() {
    require_registry!();
    let reg = Registry::start(&Auth::None);
    let src = env();
    let amd = image(&src.store, &small_layers(4, 1), "amd64", "amd");
    let arm = image(&src.store, &small_layers(5, 1), "arm64", "arm");
    let desc = |i: &Image, arch: &str| {
        serde_json::json!({"mediaType": media_types::OCI_MANIFEST, "digest": i.manifest.to_string(),
            "size": i.manifest_bytes.len(), "platform": {"os": "linux", "architecture": arch}})
    };
    let index_bytes = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": media_types::OCI_INDEX,
        "manifests": [desc(&amd, "amd64"), desc(&arm, "arm64")],
    }))
    .unwrap();
    let index = src.store.put_blob(&index_bytes).unwrap();
    let layout = src._dir.path().join("layout");
    let mut blobs: Vec<&[u8]> = vec![&index_bytes];
    for i in [&amd, &arm] {
        blobs.extend([i.manifest_bytes.as_slice(), i.config_bytes.as_slice()]);
        blobs.extend(i.layers.iter().map(|l| l.1.as_slice()));
    }
    oci_layout(
        &layout,
        &blobs,
        (&index, index_bytes.len() as u64, media_types::OCI_INDEX),
        "multi",
    );
    skopeo(&[
        "copy",
        "--all",
        "--dest-tls-verify=false",
        &format!("oci:{}:multi", layout.display()),
        &format!("docker://{}/multi:1", reg.host()),
    ]);

    let e = env();
    let c = client(&e.docker_config);
    let r = reg.reference("multi:1");
    let p = c
        .pull(
            &r,
            &Platform::parse("linux/arm64/v8").unwrap(),
            &e.store,
            &NoProgress,
        )
        .unwrap();
    assert_eq!(p.manifest_digest, arm.manifest);
    assert_eq!(p.index_digest, Some(index.clone()));
    assert!(e.store.has_blob(&index));
    assert!(!e.store.has_blob(&amd.layers[0].0));
    let p = c
        .pull(&r, &Platform::default(), &e.store, &NoProgress)
        .unwrap();
    assert_eq!(p.manifest_digest, amd.manifest);

    let err = c
        .pull(
            &r,
            &Platform::parse("linux/s390x").unwrap(),
            &e.store,
            &NoProgress,
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("linux/s390x") && err.contains("linux/amd64, linux/arm64"),
        "{err}"
    );

    // The stored index can be pushed back (both platforms are in `src`).
    let rep = c
        .push(
            &src.store,
            &index,
            &reg.reference("copy/multi:1"),
            &PushOptions::default(),
            &NoProgress,
        )
        .unwrap();
    assert_eq!(rep.digest, index);
    assert_eq!(rep.blobs_mounted, 0); // `src` never talked to this registry
    let raw = inspect(&format!("{}/copy/multi:1", reg.host()), true, None);
    assert_eq!(raw["manifests"][1]["digest"], arm.manifest.as_str());
}

#[test]
fn corrupt_blob_in_registry_leaves_nothing_in_store() {
    require_registry!();
    let reg = Registry::start(&Auth::None);
    let e = env();
    let c = client(&e.docker_config);
    let img = image(&e.store, &small_layers(6, 2), "amd64", "corrupt");
    c.push(
        &e.store,
        &img.manifest,
        &reg.reference("c:1"),
        &PushOptions::default(),
        &NoProgress,
    )
    .unwrap();
    let victim = &img.layers[1];
    let data = reg.blob_data(victim.0.hex());
    let mut bad = std::fs::read(&data).unwrap();
    bad[100] ^= 0xff;
    std::fs::write(&data, bad).unwrap();

    let e2 = env();
    let err = c
        .pull(
            &reg.reference("c:1"),
            &Platform::default(),
            &e2.store,
            &NoProgress,
        )
        .unwrap_err();
    assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains(victim.0.as_str()), "{err}");
    assert!(!e2.store.has_blob(&victim.0));
    assert!(
        !e2.store.has_blob(&img.manifest),
        "no manifest after a failed pull"
    );
    let tmp = e2.store.root().join("tmp");
    assert_eq!(
        std::fs::read_dir(tmp).unwrap().count(),
        0,
        "no temp files left"
    );
}

#[test]
fn htpasswd_basic_auth() {
    require_registry!("htpasswd");
    let reg = Registry::start(&Auth::Htpasswd {
        user: "kiln".into(),
        pass: "s3cret".into(),
    });
    let e = env();
    let img = image(&e.store, &small_layers(8, 1), "amd64", "basic");
    let target = reg.reference("private/app:1");

    // Anonymous: refused with a clear 401.
    let err = client(&e.docker_config)
        .push(
            &e.store,
            &img.manifest,
            &target,
            &PushOptions::default(),
            &NoProgress,
        )
        .unwrap_err();
    let msg = err.to_string();
    eprintln!("error shown to the user: {msg}");
    assert_eq!(err.status(), Some(401), "{msg}");
    assert!(
        msg.contains("private/app:1") && msg.contains("401"),
        "{msg}"
    );

    // Wrong password: the login check fails with 401 and saves nothing.
    let c = client(&e.docker_config);
    let err = c.check_login(&reg.host(), "kiln", "wrong").unwrap_err();
    let msg = err.to_string();
    eprintln!("error shown to the user: {msg}");
    assert!(
        msg.contains("login to") && msg.contains(&reg.host()) && msg.contains("401"),
        "{msg}"
    );
    assert_eq!(
        credentials::load(Some(&e.docker_config), &reg.host()).unwrap(),
        None
    );

    // Right password: login, save, then a fresh client reads the config.
    c.check_login(&reg.host(), "kiln", "s3cret").unwrap();
    credentials::save(Some(&e.docker_config), &reg.host(), "kiln", "s3cret").unwrap();
    let r = client(&e.docker_config)
        .push(
            &e.store,
            &img.manifest,
            &target,
            &PushOptions::default(),
            &NoProgress,
        )
        .unwrap();
    assert_eq!(r.digest, img.manifest);
    let info = inspect(
        &format!("{}/private/app:1", reg.host()),
        false,
        Some("kiln:s3cret"),
    );
    assert_eq!(info["Digest"], img.manifest.as_str());
    let e2 = env();
    let p = client(&e.docker_config)
        .pull(&target, &Platform::default(), &e2.store, &NoProgress)
        .unwrap();
    assert_eq!(p.manifest_digest, img.manifest);

    // Logout: credentials gone, access refused again.
    assert!(credentials::remove(Some(&e.docker_config), &reg.host()).unwrap());
    let err = client(&e.docker_config)
        .pull(&target, &Platform::default(), &env().store, &NoProgress)
        .unwrap_err();
    assert_eq!(err.status(), Some(401), "{err}");
}

#[test]
fn bearer_token_flow() {
    require_registry!("openssl");
    let ts = TokenServer::start("tok", "pw");
    let reg = Registry::start(&Auth::Token(ts.clone()));
    let e = env();
    let img = image(&e.store, &small_layers(9, 2), "amd64", "bearer");
    let target = reg.reference("team/tok:1");

    // Without credentials the token only grants pull: push is refused.
    let err = client(&e.docker_config)
        .push(
            &e.store,
            &img.manifest,
            &target,
            &PushOptions::default(),
            &NoProgress,
        )
        .unwrap_err();
    assert_eq!(err.status(), Some(401), "{err}");

    let err = client(&e.docker_config)
        .check_login(&reg.host(), "tok", "bad")
        .unwrap_err();
    let msg = err.to_string();
    eprintln!("error shown to the user: {msg}");
    assert!(
        msg.contains("401") && msg.contains("invalid username or password"),
        "{msg}"
    );

    let c = client(&e.docker_config);
    c.check_login(&reg.host(), "tok", "pw").unwrap();
    let before = ts.requests().len();
    let r = c
        .push(
            &e.store,
            &img.manifest,
            &target,
            &PushOptions::default(),
            &NoProgress,
        )
        .unwrap();
    assert_eq!(r.digest, img.manifest);
    // One token for the push scope, reused by every request of the push.
    let reqs = ts.requests()[before..].to_vec();
    assert_eq!(
        reqs,
        vec!["repository:team/tok:pull,push".to_string()],
        "{reqs:?}"
    );

    // Mount into another repository: needs pull on the source repository in
    // the same token.
    let mut layers2 = small_layers(9, 2);
    layers2.push(layer("x", b"x"));
    let img2 = image(&e.store, &layers2, "amd64", "bearer2");
    let r = c
        .push(
            &e.store,
            &img2.manifest,
            &reg.reference("team/other:1"),
            &PushOptions::default(),
            &NoProgress,
        )
        .unwrap();
    assert_eq!(r.blobs_mounted, 2, "{r:?}");
    assert!(
        ts.requests()
            .contains(&"repository:team/other:pull,push repository:team/tok:pull".to_string())
    );

    // Pull with the saved credentials from a fresh client; tokens reused
    // per scope across the pull's requests.
    credentials::save(Some(&e.docker_config), &reg.host(), "tok", "pw").unwrap();
    let before = ts.requests().len();
    let e2 = env();
    let p = client(&e.docker_config)
        .pull(&target, &Platform::default(), &e2.store, &NoProgress)
        .unwrap();
    assert_eq!(p.manifest_digest, img.manifest);
    assert_eq!(
        ts.requests()[before..],
        ["repository:team/tok:pull".to_string()]
    );
    let info = inspect(&format!("{}/team/tok:1", reg.host()), false, Some("tok:pw"));
    assert_eq!(info["Digest"], img.manifest.as_str());
}

#[test]
fn registry_killed_mid_push_then_retry() {
    require_registry!();
    let reg = Registry::start(&Auth::None);
    let e = env();
    let img = image(
        &e.store,
        &[layer("big", &noise(11, 4 << 20))],
        "amd64",
        "kill",
    );
    let opts = ClientOptions {
        docker_config_dir: Some(e.docker_config.clone()),
        monolithic_threshold: 512 << 10,
        chunk_size: 512 << 10,
        retries: 1,
        retry_delay: Duration::from_millis(50),
        ..Default::default()
    };
    let target = reg.reference("kill/app:1");
    let killed = std::sync::atomic::AtomicBool::new(false);
    let rec = Recorder {
        on_progress: Some(Box::new(|_, bytes| {
            if bytes >= 1 << 20 && !killed.swap(true, std::sync::atomic::Ordering::SeqCst) {
                reg.kill();
            }
        })),
        ..Default::default()
    };
    let err = Client::new(opts.clone())
        .unwrap()
        .push(
            &e.store,
            &img.manifest,
            &target,
            &PushOptions::default(),
            &rec,
        )
        .unwrap_err();
    let msg = err.to_string();
    eprintln!("error shown to the user: {msg}");
    assert!(matches!(err, RegistryError::Transport { .. }), "{msg}");
    assert!(
        msg.contains("kill/app:1") && msg.contains(&reg.host()) && msg.contains("2 attempt"),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "{msg}");

    reg.restart();
    // The retry gets a few attempts: a registry under load may answer 5xx while it comes up.
    let retry_opts = ClientOptions {
        retries: 4,
        retry_delay: Duration::from_millis(200),
        ..opts
    };
    let r = Client::new(retry_opts)
        .unwrap()
        .push(
            &e.store,
            &img.manifest,
            &target,
            &PushOptions::default(),
            &NoProgress,
        )
        .unwrap_or_else(|e| panic!("retry after restart: {e}\nregistry log:\n{}", reg.log()));
    assert_eq!(r.digest, img.manifest);
    let info = inspect(&format!("{}/kill/app:1", reg.host()), false, None);
    assert_eq!(info["Digest"], img.manifest.as_str());
}

#[test]
fn push_repairs_a_blob_the_registry_cannot_stat() {
    require_registry!();
    // A registry killed while writing a blob's link answers HEAD with a 500 for it
    // from then on. The push uploads that blob again, which rewrites the link.
    let reg = Registry::start(&Auth::None);
    let e = env();
    let img = image(&e.store, &small_layers(12, 2), "amd64", "repair");
    let target = reg.reference("repair/app:1");
    let push = || {
        client(&e.docker_config).push(
            &e.store,
            &img.manifest,
            &target,
            &PushOptions::default(),
            &NoProgress,
        )
    };
    push().unwrap();
    let link = reg.blob_link("repair/app", img.layers[0].0.hex());
    assert!(link.exists(), "{}", link.display());
    std::fs::write(&link, b"").unwrap();
    let r = push().unwrap_or_else(|e| panic!("{e}\n{}", reg.log()));
    assert_eq!(r.blobs_uploaded, 1, "{r:?}");
    let info = inspect(&format!("{}/repair/app:1", reg.host()), false, None);
    assert_eq!(info["Digest"], img.manifest.as_str());
}

/// `resolve_then` shows the layers once the manifest is read, before the config is
/// fetched (so that a caller can fetch them beside it); `fetch_blobs` fetches them from
/// the image's repository, and stops, storing nothing, when its progress says cancelled.
#[test]
fn layers_are_shown_before_the_config_and_fetched_or_cancelled() {
    require_registry!();
    let reg = Registry::start(&Auth::None);
    let e = env();
    let c = client(&e.docker_config);
    let img = image(&e.store, &small_layers(7, 2), "amd64", "ahead");
    let reference = reg.reference("ahead/app:1");
    c.push(
        &e.store,
        &img.manifest,
        &reference,
        &PushOptions::default(),
        &NoProgress,
    )
    .unwrap();

    let e2 = env();
    let shown = std::sync::Mutex::new(Vec::new());
    let p = c
        .resolve_then(
            &reference,
            &Platform::default(),
            &e2.store,
            &NoProgress,
            &|layers| {
                let config_in = e2.store.has_blob(&img.config);
                shown.lock().unwrap().push((layers.to_vec(), config_in));
            },
        )
        .unwrap();
    let shown = shown.into_inner().unwrap();
    assert_eq!(shown.len(), 1);
    assert_eq!(shown[0].0, p.layers);
    assert!(
        !shown[0].1,
        "the config was fetched before the layers were shown"
    );
    assert!(e2.store.has_blob(&img.config));

    /// Says cancelled from the start.
    struct Stop;
    impl kiln_registry::Progress for Stop {
        fn blob(&self, _: &kiln_registry::BlobEvent<'_>) {}
        fn cancelled(&self) -> bool {
            true
        }
    }
    let err = c
        .fetch_blobs(&reference, &p.layers, &e2.store, &Stop)
        .unwrap_err();
    assert!(matches!(err, RegistryError::Cancelled { .. }), "{err}");
    for l in &p.layers {
        assert!(
            !e2.store.has_blob(&l.digest),
            "a cancelled fetch stored {}",
            l.digest
        );
    }
    let n = c
        .fetch_blobs(&reference, &p.layers, &e2.store, &NoProgress)
        .unwrap();
    assert_eq!(n, p.layers.iter().map(|l| l.size).sum::<u64>());
    for (d, bytes) in &img.layers {
        assert_eq!(&e2.store.read_blob(d).unwrap(), bytes);
    }
}

/// Resolving fetches the manifest and the config only; `fetch_missing` fetches the
/// layers later, from the repository the resolve recorded, and only once.
#[test]
fn resolve_then_fetch_missing_layers() {
    require_registry!();
    let reg = Registry::start(&Auth::None);
    let e = env();
    let c = client(&e.docker_config);
    let img = image(&e.store, &small_layers(5, 2), "amd64", "lazy");
    c.push(
        &e.store,
        &img.manifest,
        &reg.reference("lazy/app:1"),
        &PushOptions::default(),
        &NoProgress,
    )
    .unwrap();

    let e2 = env();
    let rec = Recorder::default();
    let p = c
        .resolve(
            &reg.reference("lazy/app:1"),
            &Platform::default(),
            &e2.store,
            &rec,
        )
        .unwrap();
    assert_eq!(p.manifest_digest, img.manifest);
    assert!(e2.store.has_blob(&p.manifest_digest));
    assert_eq!(
        e2.store.read_blob(&p.config.digest).unwrap(),
        img.config_bytes
    );
    assert_eq!(
        rec.done.lock().unwrap().keys().collect::<Vec<_>>(),
        [p.config.digest.as_str()],
        "only the config is fetched"
    );
    for (d, _) in &img.layers {
        assert!(!e2.store.has_blob(d), "layer {d} fetched by resolve");
        assert!(kiln_registry::fetchable(&e2.store, d));
    }

    let rec = Recorder::default();
    let n = c.fetch_missing(&e2.store, &p.layers, &rec).unwrap();
    assert_eq!(
        n,
        img.layers.iter().map(|(_, b)| b.len() as u64).sum::<u64>()
    );
    for (d, bytes) in &img.layers {
        assert_eq!(&e2.store.read_blob(d).unwrap(), bytes);
        assert_eq!(rec.done.lock().unwrap()[d.as_str()], "downloaded");
    }
    // Pushing a resolved image: its layers are mounted from the repository they came
    // from (not fetched); to another registry they are fetched, then uploaded.
    let e3 = env();
    let p3 = c
        .resolve(
            &reg.reference("lazy/app:1"),
            &Platform::default(),
            &e3.store,
            &NoProgress,
        )
        .unwrap();
    let r = c
        .push(
            &e3.store,
            &p3.manifest_digest,
            &reg.reference("lazy/copy:1"),
            &PushOptions::default(),
            &NoProgress,
        )
        .unwrap();
    assert_eq!((r.blobs_mounted, r.blobs_uploaded), (3, 0), "{r:?}");
    for (d, _) in &img.layers {
        assert!(!e3.store.has_blob(d), "layer {d} fetched to be mounted");
    }
    let reg2 = Registry::start(&Auth::None);
    let r = c
        .push(
            &e3.store,
            &p3.manifest_digest,
            &reg2.reference("elsewhere/app:1"),
            &PushOptions::default(),
            &NoProgress,
        )
        .unwrap();
    assert_eq!((r.blobs_mounted, r.blobs_uploaded), (0, 3), "{r:?}");
    for (d, bytes) in &img.layers {
        assert_eq!(&e3.store.read_blob(d).unwrap(), bytes);
    }
    let info = inspect(&format!("{}/elsewhere/app:1", reg2.host()), false, None);
    assert_eq!(info["Digest"], img.manifest.as_str());

    // Present now: nothing to fetch, even with the registry gone.
    reg.kill();
    assert_eq!(
        c.fetch_missing(&e2.store, &p.layers, &NoProgress).unwrap(),
        0
    );

    // A blob nobody is known to hold is refused with one clear line.
    let unknown = kiln_registry::PulledBlob {
        digest: kiln_cache::sha256_of(b"nowhere"),
        size: 7,
        media_type: media_types::OCI_LAYER_GZIP.to_owned(),
    };
    let err = c
        .fetch_missing(&e2.store, &[unknown], &NoProgress)
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::BlobUnavailable { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("pull its image again"), "{err}");
}
