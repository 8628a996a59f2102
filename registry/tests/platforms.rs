//! Picking a platform out of an index served by a real registry (CNCF distribution),
//! with kiln's one platform type. Needs `docker-registry` (see `support::require`).

mod support;

use kiln_cache::Store;
use kiln_registry::{Client, ClientOptions, NoProgress, Platform, PushOptions, media_types};
use support::*;

/// Regression: `kiln build --platform linux/arm64/v8` and `kiln pull --platform
/// linux/arm64/v8` did not find the `arm64` entry of an index whose entries carry no
/// variant (as buildx writes them), because the builder handed the registry a platform
/// that kept the `v8`. Now there is one `Platform`, normalised on construction.
#[test]
fn pull_arm64_v8_from_index_without_variants() {
    let reg = Registry::start(&Auth::None);
    let dir = tempfile::tempdir().unwrap();
    let src = Store::open(dir.path().join("src")).unwrap();
    let c = Client::new(ClientOptions::default()).unwrap();

    // Three single-platform images, pushed by digest-less tags of their own.
    let amd = image(&src, &[layer("amd", b"amd64 bits")], "amd64", "amd");
    let arm64 = image(&src, &[layer("arm64", b"arm64 bits")], "arm64", "arm64");
    let armv7 = image(&src, &[layer("armv7", b"armv7 bits")], "arm", "armv7");
    for (img, tag) in [(&amd, "amd64"), (&arm64, "arm64"), (&armv7, "armv7")] {
        c.push(
            &src,
            &img.manifest,
            &reg.reference(&format!("multi:{tag}")),
            &PushOptions::default(),
            &NoProgress,
        )
        .unwrap();
    }

    // The index, by hand: `arm64` without a variant, `arm` with `v7`.
    let entry = |i: &Image, platform: serde_json::Value| {
        serde_json::json!({"mediaType": media_types::OCI_MANIFEST,
            "digest": i.manifest.to_string(), "size": i.manifest_bytes.len(),
            "platform": platform})
    };
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_types::OCI_INDEX,
        "manifests": [
            entry(&amd, serde_json::json!({"os": "linux", "architecture": "amd64"})),
            entry(&arm64, serde_json::json!({"os": "linux", "architecture": "arm64"})),
            entry(&armv7, serde_json::json!({"os": "linux", "architecture": "arm", "variant": "v7"})),
        ],
    }))
    .unwrap();
    let resp = reqwest::blocking::Client::new()
        .put(format!("http://{}/v2/multi/manifests/1", reg.host()))
        .header("Content-Type", media_types::OCI_INDEX)
        .body(index)
        .send()
        .unwrap();
    assert!(resp.status().is_success(), "PUT index: {}", resp.status());

    let r = reg.reference("multi:1");
    let pull = |platform: &str| {
        let store = Store::open(dir.path().join(platform.replace('/', "-"))).unwrap();
        c.pull(&r, &Platform::parse(platform).unwrap(), &store, &NoProgress)
    };
    for (platform, want) in [
        ("linux/arm64/v8", &arm64),
        ("linux/arm64", &arm64),
        ("linux/aarch64", &arm64),
        ("linux/amd64", &amd),
        ("linux/x86_64", &amd),
        ("linux/arm", &armv7),
        ("linux/armhf", &armv7),
        ("linux/arm/v7", &armv7),
    ] {
        let got = pull(platform).unwrap_or_else(|e| panic!("{platform}: {e}"));
        assert_eq!(got.manifest_digest, want.manifest, "{platform}");
    }
    // arm/v6 cannot run the arm/v7 image: one line naming what the index has.
    let err = pull("linux/arm/v6").unwrap_err().to_string();
    assert!(
        err.contains("no image for platform linux/arm/v6")
            && err.contains("linux/amd64, linux/arm64, linux/arm/v7")
            && !err.contains('\n'),
        "{err}"
    );
}
