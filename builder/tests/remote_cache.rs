//! The registry cache (`--cache-to` / `--cache-from`) end to end, against a real
//! `docker-registry` whose access log counts requests. Two stores on one machine play
//! two CI machines (A exports, B imports); the base is the busybox base, pushed to the
//! test registry by A. Needs root (RUN steps), busybox-static, docker-registry and
//! skopeo.

use std::fs;
use std::path::{Path, PathBuf};

use kiln_test_support::registry::{Auth, Registry, free_port};
use kiln_test_support::{Built, KilnStore, busybox_context, needs, run_ok};
use serde_json::Value;

kiln_test_support::store_env! {
    /// One CI machine: its own store and workspace.
    struct Machine;
}

/// What these tests read in a build's report and output.
trait Reported {
    /// The `WARNING:` lines kiln printed.
    fn warnings(&self) -> Vec<&str>;
}

impl Reported for Built {
    fn warnings(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.contains("WARNING:"))
            .collect()
    }
}

impl Machine {
    /// A machine with an empty store; images dated 1700000000, build records on.
    fn new() -> Machine {
        Machine(KilnStore::new().env("SOURCE_DATE_EPOCH", "1700000000"))
    }

    /// The newest build record of this store, exported.
    fn last_record(&self) -> Value {
        let out = self.kiln().args(["builds", "ls", "-q"]).output().unwrap();
        let ids = String::from_utf8_lossy(&out.stdout).into_owned();
        let id = ids.lines().next().expect("a build record");
        let out = self
            .kiln()
            .args(["builds", "inspect", "--format", "json", id])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

/// A registry with the busybox base pushed as `base/busybox:1`; returns it, machine A
/// and the base's name.
fn setup() -> (Registry, Machine, String) {
    let reg = Registry::start_logged(&Auth::None);
    let a = Machine::new();
    let ctx = a.ws.path("busybox");
    busybox_context(&ctx);
    a.kiln()
        .args(["build", "--progress", "quiet", "-t", "busybox:kiln-test"])
        .arg(&ctx)
        .assert()
        .success();
    let base = format!("{}:1", reg.name("base/busybox"));
    a.kiln()
        .args(["tag", "busybox:kiln-test", &base])
        .assert()
        .success();
    a.kiln().args(["push", &base]).assert().success();
    (reg, a, base)
}

/// Two stages: `build` makes /out.txt from src/, the final stage copies it beside conf.
fn app(m: &Machine, base: &str, files: &[(&str, &str)]) -> PathBuf {
    let dockerfile = format!(
        "FROM {base} AS build\nCOPY src/ /src/\nRUN cat /src/* > /out.txt && echo built >> /out.txt\n\
         FROM {base}\nCOPY conf /conf\nCOPY --from=build /out.txt /out.txt\nRUN echo final > /final\n"
    );
    let ctx = m.ws.context("app", &dockerfile);
    for (p, c) in files {
        let path = ctx.join(p);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, c).unwrap();
    }
    ctx
}

const FILES: &[(&str, &str)] = &[("src/a.txt", "a"), ("src/b.txt", "b"), ("conf", "c=1")];

/// `skopeo inspect --raw` (the manifest) or `--config --raw` of `reference`.
fn skopeo_raw(reference: &str, config: bool) -> Value {
    let mut cmd = std::process::Command::new("skopeo");
    cmd.args(["inspect", "--tls-verify=false", "--raw"]);
    if config {
        cmd.arg("--config");
    }
    cmd.arg(format!("docker://{reference}"));
    serde_json::from_str(&run_ok(&mut cmd)).unwrap()
}

/// The cache config of the OCI layout `dir`.
fn layout_config(dir: &Path) -> Value {
    let read = |rel: String| -> Value {
        serde_json::from_slice(&fs::read(dir.join(rel)).unwrap()).unwrap()
    };
    let blob = |d: &Value| format!("blobs/sha256/{}", &d.as_str().unwrap()[7..]);
    let index = read("index.json".into());
    let manifest = read(blob(&index["manifests"][0]["digest"]));
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.kiln.cache.config.v1+json"
    );
    read(blob(&manifest["config"]["digest"]))
}

/// Digests of the blobs fetched (GET) among `requests`.
fn blob_gets(requests: &[(String, String, u16)]) -> Vec<String> {
    requests
        .iter()
        .filter(|(m, p, _)| m == "GET" && p.contains("/blobs/sha256:"))
        .map(|(_, p, _)| p.rsplit('/').next().unwrap().to_string())
        .collect()
}

#[test]
fn machine_b_hits_everything_from_the_registry_and_pushes_without_downloading() {
    needs!("busybox", "docker-registry", "skopeo");
    let (reg, a, base) = setup();
    let cache = format!("{}:buildcache", reg.name("cache/app"));
    let ctx_a = app(&a, &base, FILES);
    let first = a.build_ok(
        &ctx_a,
        &["--cache-to", &format!("type=registry,ref={cache},mode=max")],
    );
    assert!(
        first
            .stderr
            .contains(&format!("exported cache to {cache}: ")),
        "{}",
        first.stderr
    );
    // Any distribution registry stores it, as a plain image manifest.
    let manifest = skopeo_raw(&cache, false);
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.kiln.cache.config.v1+json"
    );
    let config = skopeo_raw(&cache, true);
    for s in first.steps() {
        let key = s["key"].as_str().unwrap();
        assert!(
            config["records"].get(key).is_some(),
            "mode=max exports every step, {} is missing",
            s["instruction"]
        );
    }

    // Machine B: an empty store, the same sources elsewhere.
    let b = Machine::new();
    let ctx_b = app(&b, &base, FILES);
    let before = reg.requests().len();
    let hit = b.build_ok(
        &ctx_b,
        &["--cache-from", &format!("type=registry,ref={cache}")],
    );
    assert!(hit.warnings().is_empty(), "{}", hit.stderr);
    for s in hit.steps() {
        assert_eq!(s["cached"], true, "{s} ran on B:\n{}", hit.stderr);
    }
    assert_eq!(
        hit.report["image"]["digest"],
        first.report["image"]["digest"]
    );
    // Every step's hit came from the registry cache, none executed.
    let rec = b.last_record();
    for s in rec["steps"].as_array().unwrap() {
        assert_eq!(s["status"], "cached", "{s}");
        assert_eq!(
            s["source"],
            serde_json::json!({"kind": "registry", "reference": cache}),
            "{s}"
        );
    }
    // No layer was fetched: the only blobs B read are configs (the base's, the cache's).
    let base_config = skopeo_raw(&base, false)["config"]["digest"].clone();
    let configs = [manifest["config"]["digest"].clone(), base_config];
    let reqs = reg.requests()[before..].to_vec();
    assert!(
        reqs.iter()
            .any(|(m, p, _)| m == "GET" && p == "/v2/cache/app/manifests/buildcache"),
        "the access log shows the cache read: {reqs:?}"
    );
    let gets = blob_gets(&reqs);
    assert!(
        gets.contains(&manifest["config"]["digest"].as_str().unwrap().to_string()),
        "{gets:?}"
    );
    for d in gets {
        assert!(
            configs.contains(&Value::from(d.clone())),
            "B fetched blob {d}"
        );
    }

    // Pushing the result to the same registry downloads nothing: every layer is
    // mounted from the cache's repository (or was there).
    let image = format!("{}:1", reg.name("apps/app"));
    let before = reg.requests().len();
    let pushed = b.build_ok(
        &ctx_b,
        &[
            "--cache-from",
            &format!("type=registry,ref={cache}"),
            "--push",
            "-t",
            &image,
        ],
    );
    let reqs = reg.requests()[before..].to_vec();
    assert_eq!(blob_gets(&reqs), Vec::<String>::new(), "{}", pushed.stderr);
    assert!(pushed.stderr.contains("mounted"), "{}", pushed.stderr);
    // What B pushed runs on A's result: same layers.
    let pushed_layers = skopeo_raw(&image, false)["layers"].clone();
    let final_layers: Vec<Value> = first
        .steps()
        .iter()
        .filter_map(|s| s["layer"]["digest"].as_str().map(Value::from))
        .collect();
    for l in &final_layers[final_layers.len() - 3..] {
        assert!(
            pushed_layers
                .as_array()
                .unwrap()
                .iter()
                .any(|p| &p["digest"] == l),
            "{l} not pushed"
        );
    }
}

#[test]
fn a_changed_file_rebuilds_only_what_depends_on_it_and_is_named() {
    needs!("busybox", "docker-registry", "skopeo");
    let (reg, a, base) = setup();
    let cache = format!("{}:buildcache", reg.name("cache/app"));
    let ctx_a = app(&a, &base, FILES);
    a.build_ok(
        &ctx_a,
        &["--cache-to", &format!("type=registry,ref={cache},mode=max")],
    );
    let b = Machine::new();
    let ctx_b = app(&b, &base, FILES);
    fs::write(ctx_b.join("src/a.txt"), "changed on B").unwrap();
    let built = b.build_ok(
        &ctx_b,
        &["--cache-from", &format!("type=registry,ref={cache}")],
    );
    let copy = built.step("COPY src/ /src/");
    assert_eq!(copy["cached"], false);
    assert_eq!(
        copy["miss"],
        serde_json::json!({"kind": "files", "details": "1 file changed: src/a.txt (content)"}),
        "{}",
        built.stderr
    );
    assert_eq!(built.step("COPY conf /conf")["cached"], true);
    for s in [
        "RUN cat /src/* > /out.txt && echo built >> /out.txt",
        "COPY --from=build /out.txt /out.txt",
        "RUN echo final > /final",
    ] {
        assert_eq!(built.step(s)["cached"], false, "{s}");
    }
}

#[test]
fn reexport_uploads_no_layer_and_branches_merge() {
    needs!("busybox", "docker-registry", "skopeo");
    let (reg, a, base) = setup();
    let cache = format!("{}:buildcache", reg.name("cache/app"));
    let to = format!("type=registry,ref={cache},mode=max");
    let ctx = app(&a, &base, FILES);
    let main = a.build_ok(&ctx, &["--cache-to", &to]);
    // A no-op rebuild finds every result at the ref already: nothing is written.
    let before = reg.requests().len();
    let again = a.build_ok(&ctx, &["--cache-to", &to]);
    let reqs = reg.requests()[before..].to_vec();
    let uploads = reqs
        .iter()
        .filter(|(m, p, _)| m == "POST" && p.contains("/blobs/uploads/") || m == "PUT")
        .count();
    assert_eq!(
        uploads, 0,
        "no upload, no manifest: {reqs:?}\n{}",
        again.stderr
    );
    assert!(
        again
            .stderr
            .contains(&format!("cache at {cache} is up to date")),
        "{}",
        again.stderr
    );

    // Another branch (conf differs) exports to the same ref: both are in it.
    fs::write(ctx.join("conf"), "c=2").unwrap();
    let branch = a.build_ok(&ctx, &["--cache-to", &to]);
    let config = skopeo_raw(&cache, true);
    for b in [&main, &branch] {
        let key = b.step("COPY conf /conf")["key"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            config["records"].get(&key).is_some(),
            "{key} lost in the merge"
        );
    }
    assert!(
        config["builds"].as_array().unwrap().len() == 2,
        "both branches' build records are kept (the no-op build's adds nothing): {}",
        config["builds"]
    );
}

#[test]
fn a_cache_config_over_one_mib_round_trips() {
    needs!("busybox", "docker-registry", "skopeo");
    let (reg, a, base) = setup();
    let cache = format!("{}:big", reg.name("cache/app"));
    let ctx = a.ws.context(
        "big",
        &format!("FROM {base}\nCOPY files /files\nRUN ls /files | wc -l > /count\n"),
    );
    let dir = ctx.join("files");
    fs::create_dir_all(&dir).unwrap();
    for i in 0..12_000 {
        fs::write(
            dir.join(format!(
                "a-rather-long-file-name-to-make-the-set-big-{i:05}.txt"
            )),
            i.to_string(),
        )
        .unwrap();
    }
    a.build_ok(
        &ctx,
        &["--cache-to", &format!("type=registry,ref={cache},mode=max")],
    );
    let size = skopeo_raw(&cache, false)["config"]["size"]
        .as_u64()
        .unwrap();
    assert!(size > 1 << 20, "config is only {size} bytes");
    let b = Machine::new();
    let ctx_b = b.ws.path("big");
    kiln_test_support::copy_dir(&ctx, &ctx_b);
    let hit = b.build_ok(
        &ctx_b,
        &["--cache-from", &format!("type=registry,ref={cache}")],
    );
    assert!(hit.warnings().is_empty(), "{}", hit.stderr);
    for s in hit.steps() {
        assert_eq!(s["cached"], true, "{s}");
    }
}

#[test]
fn a_missing_or_unreachable_cache_is_one_warning() {
    needs!("busybox", "docker-registry", "skopeo");
    let (reg, a, base) = setup();
    let ctx = app(&a, &base, FILES);
    let missing = format!("{}:nope", reg.name("cache/none"));
    let b = a.build_ok(
        &ctx,
        &["--cache-from", &format!("type=registry,ref={missing}")],
    );
    assert_eq!(
        b.warnings(),
        [format!(
            "WARNING: cache import from {missing}: not found (no cache exported there yet)"
        )],
        "{}",
        b.stderr
    );
    let nowhere = format!("127.0.0.1:{}/cache/app:x", free_port());
    let b = a.build_ok(
        &ctx,
        &["--cache-from", &format!("type=registry,ref={nowhere}")],
    );
    let w = b.warnings();
    assert_eq!(w.len(), 1, "{}", b.stderr);
    assert!(
        w[0].starts_with(&format!("WARNING: cache import from {nowhere}: ")),
        "{}",
        w[0]
    );
    // kiln compresses layers once, at build time: another compression is refused.
    let zstd = a.build(
        &ctx,
        &[
            "--cache-to",
            &format!("type=registry,ref={missing},compression=zstd"),
        ],
    );
    assert!(!zstd.ok);
    assert!(
        zstd.stderr.contains(
            "error: --cache-to compression=zstd: kiln compresses layers once, when a step \
             writes them, and this build's layers are gzip; pass --compression zstd to the \
             build instead"
        ),
        "{}",
        zstd.stderr
    );
    // A failed export: an error, or with ignore-error=true one warning and success.
    let to = format!("type=registry,ref={nowhere}");
    let failed = a.build(&ctx, &["--cache-to", &to]);
    assert!(!failed.ok);
    assert!(
        failed
            .stderr
            .contains(&format!("error: exporting the cache to {nowhere}")),
        "{}",
        failed.stderr
    );
    let ignored = a.build_ok(&ctx, &["--cache-to", &format!("{to},ignore-error=true")]);
    let w = ignored.warnings();
    assert_eq!(w.len(), 1, "{}", ignored.stderr);
    assert!(
        w[0].starts_with(&format!("WARNING: cache export to {nowhere}: ")),
        "{}",
        w[0]
    );
}

#[test]
fn a_local_cache_directory_is_shared_the_same_way() {
    needs!("busybox", "docker-registry", "skopeo");
    let (_reg, a, base) = setup();
    let dir = a.ws.path("shared-cache");
    let ctx_a = app(&a, &base, FILES);
    a.build_ok(
        &ctx_a,
        &[
            "--cache-to",
            &format!("type=local,dest={},mode=max", dir.display()),
        ],
    );
    assert!(dir.join("index.json").is_file() && dir.join("oci-layout").is_file());
    // mode=min (the default) keeps only the final image's chain: not the build stage.
    let min = a.ws.path("min-cache");
    let again = a.build_ok(
        &ctx_a,
        &["--cache-to", &format!("type=local,dest={}", min.display())],
    );
    let config = layout_config(&min);
    let keys: Vec<&String> = config["records"].as_object().unwrap().keys().collect();
    for s in again.steps() {
        let in_final = !s["instruction"].as_str().unwrap().contains("/src");
        assert_eq!(
            keys.contains(&&s["key"].as_str().unwrap().to_string()),
            in_final,
            "{}",
            s["instruction"]
        );
    }
    let b = Machine::new();
    let ctx_b = app(&b, &base, FILES);
    let hit = b.build_ok(
        &ctx_b,
        &["--cache-from", &format!("type=local,src={}", dir.display())],
    );
    for s in hit.steps() {
        assert_eq!(s["cached"], true, "{s}");
    }
    // B's image is A's, and its layers are in B's store (copied from the directory).
    assert_eq!(
        hit.report["image"]["digest"],
        a.build_ok(&ctx_a, &[]).report["image"]["digest"]
    );
    let out = b.ws.path("out");
    b.kiln()
        .args(["build", "--progress", "quiet", "--cache-from"])
        .arg(format!("type=local,src={}", dir.display()))
        .arg("-o")
        .arg(format!("type=local,dest={}", out.display()))
        .arg(&ctx_b)
        .assert()
        .success();
    assert_eq!(fs::read_to_string(out.join("final")).unwrap(), "final\n");
}
