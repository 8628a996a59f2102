//! End-to-end builds: real images written to a temporary store, checked with skopeo, umoci
//! and oci-image-tool, and by reading back what kiln wrote. They need root (file owners,
//! namespaces) and the tools `.ci/install.sh` installs: each test says what it needs
//! first (`needs!`), which skips it with a message on a developer's machine and fails it
//! when `CI` is set (CI always has both).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command as Proc;

use kiln_test_support::registry::{Auth, Registry};
use kiln_test_support::{
    BUSYBOX, FileServer, KilnStore, busybox_context, copy_dir, needs, repo_root, require, run_ok,
    tree, wait,
};
use predicates::prelude::*;
use serde_json::Value;

kiln_test_support::store_env! {
    /// A test's workspace and store, and the kiln binary pointed at it.
    struct Env;
}

impl Env {
    fn new() -> Env {
        Env(KilnStore::new())
    }
    /// `kiln build ARGS CONTEXT`, which must succeed and write its report: (stdout
    /// trimmed, report).
    fn build_checked(&self, args: &[&str], context: &Path) -> (String, Value) {
        let b = self.build_ok(context, args);
        assert!(!b.report.is_null(), "kiln build {args:?} wrote no report");
        (b.stdout.trim().to_string(), b.report)
    }
    /// Builds the busybox base as `busybox:kiln-test` with this `SOURCE_DATE_EPOCH`.
    fn busybox_at(&self, epoch: &str) {
        let mut kiln = self.kiln();
        kiln.env("SOURCE_DATE_EPOCH", epoch);
        self.busybox_with(kiln, BUSYBOX);
    }
    /// A context for app1 or app2 of the seed scenario.
    fn app(&self, name: &str) -> PathBuf {
        let ctx = self.path(name);
        let apps = repo_root().join("testdata/apps");
        fs::create_dir_all(&ctx).unwrap();
        fs::copy(apps.join("Dockerfile"), ctx.join("Dockerfile")).unwrap();
        copy_dir(&apps.join("shared"), &ctx.join("shared"));
        copy_dir(&apps.join(name).join("src"), &ctx.join("src"));
        ctx
    }
}

fn steps(report: &Value) -> Vec<(String, bool)> {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["instruction"].as_str().unwrap().to_string(),
                s["cached"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[test]
fn seed_scenario_shares_prefix_layers_between_apps() {
    needs!("busybox");
    let env = Env::new();
    env.busybox(BUSYBOX);
    let (_, r1) = env.build_checked(&["-t", "app1:latest"], &env.app("app1"));
    assert!(steps(&r1).iter().all(|(_, cached)| !cached), "{r1}");
    let (_, r2) = env.build_checked(&["-t", "app2:latest"], &env.app("app2"));
    let s2 = steps(&r2);
    for (instr, cached) in &s2 {
        let shared = !instr.starts_with("COPY src/");
        assert_eq!(*cached, shared, "{instr}: cached={cached}\n{r2}");
    }
    assert!(r2["totals"]["bytes_reused"].as_u64().unwrap() > 0);
    // Each shared layer is stored once: app1 and app2 differ by exactly one layer blob.
    let layers = |tag: &str| -> Vec<String> {
        let out = env.kiln().args(["inspect", tag]).output().unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v[0]["Layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap().to_string())
            .collect()
    };
    let (l1, l2) = (layers("app1"), layers("app2"));
    assert_eq!(l1.len(), l2.len());
    assert_eq!(l1[..l1.len() - 1], l2[..l2.len() - 1]);
    assert_ne!(l1.last(), l2.last());
    let blobs = fs::read_dir(env.root().join("blobs/sha256"))
        .unwrap()
        .count();
    // The layers kept as their snapshot only (their blob written again when needed).
    let unpacked_only = fs::read_dir(env.root().join("snapshots/written"))
        .map(|d| d.count())
        .unwrap_or(0);
    // busybox (1 layer) + shared layers + 2 app layers + 3 configs + 3 manifests.
    let shared = l1.len() - 1;
    assert_eq!(
        blobs + unpacked_only,
        1 + (shared - 1) + 2 + 3 + 3,
        "every layer is stored once ({blobs} blobs, {unpacked_only} snapshots only)"
    );
}

#[test]
fn rebuilds_hit_the_cache_until_content_changes() {
    needs!("busybox");
    let env = Env::new();
    env.busybox(BUSYBOX);
    let ctx = env.app("app1");
    let (d1, _) = env.build_checked(&["-t", "a:1"], &ctx);
    let (d2, r2) = env.build_checked(&["-t", "a:1"], &ctx);
    assert!(
        steps(&r2).iter().all(|(_, c)| *c),
        "no-op rebuild is all cached: {r2}"
    );
    // Same config, same layers: only `created` may differ, so compare layers.
    assert_eq!(r2["totals"]["built"], 0);
    let _ = (d1, d2);
    // Touching a file (mtime only) keeps the cache.
    let f = ctx.join("src/main.txt");
    let t = filetime_now_plus(60);
    run_ok(Proc::new("touch").arg("-d").arg(&t).arg(&f));
    let (_, r3) = env.build_checked(&["-t", "a:1"], &ctx);
    assert!(
        steps(&r3).iter().all(|(_, c)| *c),
        "touch keeps the cache: {r3}"
    );
    // Changing one byte rebuilds the COPY of src/ only.
    fs::write(&f, "changed\n").unwrap();
    let (_, r4) = env.build_checked(&["-t", "a:1"], &ctx);
    let rebuilt: Vec<String> = steps(&r4)
        .into_iter()
        .filter(|(_, c)| !c)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(rebuilt, ["COPY src/ ./src/"]);
    // An xattr is content too: setting one rebuilds that COPY, even with the file's
    // stat memo in place (the xattr moves its ctime). The memo distrusts a file changed
    // within its racy window (50 ms) of the build's start, and a ctime cannot be set
    // back: wait until `f` is older than that (the last build usually took longer), so
    // this build memoizes it.
    wait::until_ctime_older(&f, std::time::Duration::from_millis(100));
    let (_, r4b) = env.build_checked(&["-t", "a:1"], &ctx);
    assert!(steps(&r4b).iter().all(|(_, c)| *c));
    xattr::set(&f, "user.kiln-test", b"1").unwrap();
    let (_, r4c) = env.build_checked(&["-t", "a:1"], &ctx);
    let rebuilt: Vec<String> = steps(&r4c)
        .into_iter()
        .filter(|(_, c)| !c)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(rebuilt, ["COPY src/ ./src/"], "{r4c}");
    // --no-cache rebuilds everything, COPY included.
    let (_, r5) = env.build_checked(&["--no-cache", "-t", "a:1"], &ctx);
    assert!(steps(&r5).iter().all(|(_, c)| !c));
}

fn filetime_now_plus(secs: i64) -> String {
    format!(
        "@{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
            + secs
    )
}

#[test]
fn outputs_validate_with_skopeo_umoci_and_oci_image_tool() {
    needs!("busybox", "skopeo", "umoci", "oci-image-tool");
    let env = Env::new();
    env.busybox(BUSYBOX);
    let ctx = env.app("app1");
    let layout = env.path("layout");
    let archive = env.path("image.tar");
    let docker = env.path("docker.tar");
    let local = env.path("local");
    env.build_checked(
        &[
            "-t",
            "app1:v1",
            "--output",
            &format!("type=oci,dest={}", layout.display()),
            "--output",
            &format!("type=oci,dest={}", archive.display()),
            "--output",
            &format!("type=docker,dest={}", docker.display()),
            "--output",
            &format!("type=local,dest={}", local.display()),
        ],
        &ctx,
    );
    let inspect: Value = serde_json::from_str(&run_ok(
        Proc::new("skopeo")
            .arg("inspect")
            .arg(format!("oci:{}:v1", layout.display())),
    ))
    .unwrap();
    assert_eq!(inspect["Layers"].as_array().unwrap().len(), 6);
    let config: Value = serde_json::from_str(&run_ok(
        Proc::new("skopeo")
            .args(["inspect", "--config"])
            .arg(format!("oci:{}:v1", layout.display())),
    ))
    .unwrap();
    assert_eq!(config["config"]["User"], "app");
    assert_eq!(config["config"]["WorkingDir"], "/opt/app");
    assert_eq!(
        config["config"]["Cmd"],
        serde_json::json!(["cat", "/opt/app/src/main.txt"])
    );
    assert!(
        config["config"]["Env"]
            .as_array()
            .unwrap()
            .contains(&Value::from("APP_HOME=/opt/app"))
    );
    run_ok(
        Proc::new("skopeo")
            .arg("inspect")
            .arg(format!("oci-archive:{}", archive.display())),
    );
    run_ok(
        Proc::new("skopeo")
            .arg("inspect")
            .arg(format!("docker-archive:{}", docker.display())),
    );
    run_ok(
        Proc::new("skopeo")
            .arg("copy")
            .arg(format!("oci:{}:v1", layout.display()))
            .arg(format!("oci:{}:copy", env.path("copied").display())),
    );
    run_ok(
        Proc::new("oci-image-tool")
            .args(["validate", "--type", "image", "--ref", "name=v1"])
            .arg(&layout),
    );
    let bundle = env.path("bundle");
    run_ok(
        Proc::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:v1", layout.display()))
            .arg(&bundle),
    );
    let rootfs = bundle.join("rootfs");
    assert_eq!(
        fs::read_to_string(rootfs.join("opt/app/src/main.txt")).unwrap(),
        "this is app1\n"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("opt/shared/lib.txt")).unwrap(),
        "shared library v1\n"
    );
    use std::os::unix::fs::MetadataExt;
    let cfg = fs::metadata(rootfs.join("etc/app/config.ini")).unwrap();
    assert_eq!(
        (cfg.uid(), cfg.gid()),
        (1000, 50),
        "--chown=app:staff resolved through /etc/passwd and /etc/group"
    );
    assert!(rootfs.join("bin/sh").exists());
    // The local output is the same tree.
    let diff = Proc::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(&rootfs)
        .arg(&local)
        .output()
        .unwrap();
    assert!(
        diff.status.success(),
        "local output differs from umoci's unpack:\n{}",
        String::from_utf8_lossy(&diff.stdout)
    );
}

#[test]
fn source_date_epoch_makes_builds_reproducible() {
    needs!("busybox");
    let a = Env::new();
    let b = Env::new();
    let mut digests = Vec::new();
    for env in [&a, &b] {
        env.busybox_at("1700000000");
        let ctx = env.app("app2");
        let out = env
            .kiln()
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .args(["build", "--progress", "quiet", "--no-cache", "-t", "r:1"])
            .arg(&ctx)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        digests.push(String::from_utf8_lossy(&out.stdout).trim().to_string());
    }
    assert_eq!(digests[0], digests[1]);
    assert!(digests[0].starts_with("sha256:"));
}

#[test]
fn images_history_and_inspect() {
    needs!("busybox");
    let env = Env::new();
    env.busybox(BUSYBOX);
    env.build_checked(&["-t", "app1:latest"], &env.app("app1"));
    let images = String::from_utf8(env.kiln().arg("images").output().unwrap().stdout).unwrap();
    assert!(images.lines().next().unwrap().starts_with("REPOSITORY"));
    assert!(
        images.contains("app1") && images.contains("busybox"),
        "{images}"
    );
    // `kiln images REPOSITORY[:TAG]`, as Docker's: a name, a name and tag, a pattern.
    let only = |reference: &str| -> Vec<String> {
        env.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}", reference])
            .lines()
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(only("app1"), ["app1:latest"]);
    assert_eq!(only("app1:latest"), ["app1:latest"]);
    assert!(only("app1:other").is_empty());
    assert_eq!(only("app?"), ["app1:latest"]);
    assert!(only("nothing*").is_empty());
    // Docker's `image` subcommands: `image ls` is `images`, `image history` is
    // `history`, `image inspect` looks at images only, `image rm` is `rmi`.
    assert_eq!(
        env.ok(&["image", "ls", "--format", "{{.ID}}", "app1"]),
        env.ok(&["images", "--format", "{{.ID}}", "app1"])
    );
    assert_eq!(
        env.ok(&["image", "history", "-q", "app1"]),
        env.ok(&["history", "-q", "app1"])
    );
    let inspected: Value = serde_json::from_str(&env.ok(&["image", "inspect", "app1"])).unwrap();
    assert!(inspected[0]["Id"].as_str().unwrap().starts_with("sha256:"));
    let missing = env.out(&["image", "inspect", "nope"]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("No such image: nope"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
    env.ok(&["tag", "app1", "app1:copy"]);
    env.ok(&["image", "rm", "app1:copy"]);
    assert!(only("app1:copy").is_empty());
    let hist = String::from_utf8(
        env.kiln()
            .args(["history", "--no-trunc", "app1"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let lines: Vec<&str> = hist.lines().collect();
    assert!(lines[0].starts_with("IMAGE"));
    assert!(
        lines[1].contains("CMD [\"cat\",\"/opt/app/src/main.txt\"]"),
        "{hist}"
    );
    assert!(hist.contains("COPY src/ ./src/ # buildkit"), "{hist}");
    let q = String::from_utf8(
        env.kiln()
            .args(["history", "-q", "app1"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(q.lines().count(), lines.len() - 1);
    let fmt = String::from_utf8(
        env.kiln()
            .args(["history", "--format", "{{.CreatedBy}}|{{.Size}}", "app1"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(fmt.lines().all(|l| l.contains('|')));
    let v: Value = serde_json::from_slice(
        &env.kiln()
            .args(["inspect", "app1:latest"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(
        v[0]["Config"]["Labels"]["org.opencontainers.image.vendor"],
        "kiln tests"
    );
    env.kiln().args(["inspect", "nope"]).assert().failure();
}

#[test]
fn failing_copy_names_stage_and_line() {
    needs!();
    let env = Env::new();
    let ctx = env.context("bad", "FROM scratch AS first\nCOPY missing.txt /x\n");
    env.kiln()
        .args(["build", "--progress", "plain"])
        .arg(&ctx)
        .assert()
        .failure()
        .stderr(predicates::str::contains(
            "stage first, Dockerfile:2: COPY missing.txt /x",
        ))
        .stderr(predicates::str::contains(
            "\"missing.txt\" not found in the build context",
        ));
    // The store is still usable after a failed build.
    fs::write(ctx.join("missing.txt"), "now here").unwrap();
    env.kiln()
        .args(["build", "--progress", "plain"])
        .arg(&ctx)
        .assert()
        .success();
}

#[test]
fn oci_layout_base_and_copy_from_stage() {
    needs!("busybox");
    let env = Env::new();
    env.busybox(BUSYBOX);
    let layout = env.path("base-layout");
    env.build_checked(
        &[
            "--output",
            &format!("type=oci,dest={}", layout.display()),
            "-t",
            "base:1",
        ],
        &env.app("app1"),
    );
    let ctx = env.context("multi", &format!(
            "FROM oci-layout://{}:1 AS base\nFROM scratch\nCOPY --from=base /opt/app/src/main.txt /main.txt\nCOPY --from=base /bin/busybox /bin/\n",
            layout.display()
        ));
    let local = env.path("out");
    env.build_checked(
        &["--output", &format!("type=local,dest={}", local.display())],
        &ctx,
    );
    assert_eq!(
        fs::read_to_string(local.join("main.txt")).unwrap(),
        "this is app1\n"
    );
    assert!(local.join("bin/busybox").is_file());
}

#[test]
fn add_url_with_checksum() {
    needs!("python3");
    let env = Env::new();
    let served = env.path("served");
    fs::create_dir_all(&served).unwrap();
    fs::write(served.join("tool.sh"), "echo tool\n").unwrap();
    let server = FileServer::start(&served);
    let url = format!("http://127.0.0.1:{}/tool.sh", server.port);
    let sum = format!(
        "sha256:{}",
        run_ok(Proc::new("sha256sum").arg(served.join("tool.sh")))
            .split_whitespace()
            .next()
            .unwrap()
    );
    let ctx = env.context(
        "ctx",
        &format!(
            "FROM scratch\nADD --checksum={sum} {url} /opt/\nADD --chmod=755 {url} /bin/tool\n"
        ),
    );
    let local = env.path("out");
    let (_, r1) = env.build_checked(
        &["--output", &format!("type=local,dest={}", local.display())],
        &ctx,
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::read_to_string(local.join("opt/tool.sh")).unwrap(),
        "echo tool\n"
    );
    assert_eq!(
        fs::metadata(local.join("opt/tool.sh"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o600
    );
    assert_eq!(
        fs::metadata(local.join("bin/tool"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o755
    );
    assert!(steps(&r1).iter().all(|(_, c)| !c));
    let (_, r2) = env.build_checked(&[], &ctx);
    assert!(
        steps(&r2).iter().all(|(_, c)| *c),
        "unchanged remote content is cached: {r2}"
    );
    // With --checksum the key is the checksum, so the cached step stands; built afresh,
    // changed content fails the checksum.
    fs::write(served.join("tool.sh"), "echo changed\n").unwrap();
    env.kiln()
        .args(["build", "--no-cache", "--progress", "plain"])
        .arg(&ctx)
        .assert()
        .failure()
        .stderr(predicates::str::contains("checksum mismatch"));
    fs::write(
        ctx.join("Dockerfile"),
        format!("FROM scratch\nADD {url} /opt/\n"),
    )
    .unwrap();
    let (_, r3) = env.build_checked(&[], &ctx);
    assert!(steps(&r3).iter().all(|(_, c)| !c));
    fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM scratch\nADD http://127.0.0.1:{}/missing /x\n",
            server.port
        ),
    )
    .unwrap();
    env.kiln()
        .args(["build", "--progress", "plain"])
        .arg(&ctx)
        .assert()
        .failure()
        .stderr(predicates::str::contains("HTTP 404"));
}

#[test]
fn killed_build_leaves_a_usable_store() {
    needs!();
    let env = Env::new();
    let ctx = env.path("big");
    fs::create_dir_all(&ctx).unwrap();
    run_ok(
        Proc::new("dd")
            .args(["if=/dev/urandom", "bs=1M", "count=60"])
            .arg(format!("of={}", ctx.join("big.bin").display())),
    );
    fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY big.bin /big.bin\nCOPY Dockerfile /\n",
    )
    .unwrap();
    for delay in [100u64, 250, 500] {
        let mut child = env
            .proc()
            .args(["build", "--progress", "quiet", "--no-cache", "-t", "big:1"])
            .arg(&ctx)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay));
        let _ = child.kill(); // SIGKILL: no cleanup code runs
        let _ = child.wait();
    }
    let (_, r) = env.build_checked(&["-t", "big:1"], &ctx);
    assert_eq!(r["steps"].as_array().unwrap().len(), 2);
    // Every blob in the store is whole: its name is its digest.
    for e in fs::read_dir(env.root().join("blobs/sha256")).unwrap() {
        let p = e.unwrap().path();
        let sum = run_ok(Proc::new("sha256sum").arg(&p));
        assert_eq!(
            sum.split_whitespace().next().unwrap(),
            p.file_name().unwrap().to_str().unwrap()
        );
    }
    env.kiln().args(["inspect", "big:1"]).assert().success();
}

// ---------------------------------------------------------------------------------------
// RUN: the sandbox, both snapshotters.

/// Each listed test runs once per snapshotter.
macro_rules! snapshotter_matrix {
    ($($name:ident),* $(,)?) => {
        mod overlay {
            $(#[test] fn $name() { super::$name("overlay") })*
        }
        mod copy {
            $(#[test] fn $name() { super::$name("copy") })*
        }
    };
}

snapshotter_matrix!(
    run_matches_buildah,
    run_failure_names_stage_line_exit_code_and_output,
    run_mounts,
    interrupted_run_leaves_no_mounts_and_a_usable_store,
    sandbox_confines_a_step_as_docker_does,
    cleanup_never_follows_a_steps_symlinks,
);

fn umoci_rootfs(layout: &Path, tag: &str, dest: &Path) -> PathBuf {
    run_ok(
        Proc::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:{tag}", layout.display()))
            .arg(dest),
    );
    dest.join("rootfs")
}

/// What buildah adds to every image it builds for its own mounts: empty `/etc/hosts`,
/// `/etc/resolv.conf`, `/etc/hostname` and an empty `/run`.
fn drop_buildah_artifacts(listing: &mut tree::Listing, kiln: &tree::Listing) {
    for p in ["etc/hosts", "etc/resolv.conf", "etc/hostname", "run"] {
        if !kiln.contains_key(p) {
            if let Some(v) = listing.get(p) {
                if v.starts_with("file ") && v.contains(" 0 ") || v.starts_with("dir ") {
                    listing.remove(p);
                }
            }
        }
    }
}

fn buildah(args: &[&str], storage: &Path) -> Proc {
    let mut c = Proc::new("buildah");
    c.arg("--root")
        .arg(storage.join("root"))
        .arg("--runroot")
        .arg(storage.join("runroot"))
        .args(["--storage-driver", "overlay"])
        .args(args);
    c
}

fn run_matches_buildah(snapshotter: &str) {
    needs!("busybox", "umoci", "buildah");
    let env = Env::new();
    env.busybox(BUSYBOX);
    // buildah wants a lower-case path for an `oci:` reference.
    let lower = PathBuf::from(format!(
        "/tmp/kiln-e2e-{}-{snapshotter}",
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&lower);
    fs::create_dir_all(&lower).unwrap();
    struct Rm(PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    let _rm = Rm(lower.clone());
    let base = lower.join("base-oci");
    env.kiln()
        .args(["build", "--progress", "quiet", "-o"])
        .arg(format!("type=oci,dest={}", base.display()))
        .arg("-t")
        .arg("busybox:kiln-test")
        .arg(env.path("busybox"))
        .assert()
        .success();
    let storage = env.path("buildah");
    let cases = repo_root().join("testdata/run/compare");
    let mut names: Vec<_> = fs::read_dir(&cases)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    assert!(names.len() >= 3);
    for df in names {
        let name = df.file_stem().unwrap().to_str().unwrap().to_string();
        let ctx = env.path(&format!("ctx-{name}"));
        fs::create_dir_all(&ctx).unwrap();
        // kiln
        let k_out = env.path(&format!("kiln-{name}"));
        env.kiln()
            .args(["build", "--progress", "plain", "--snapshotter", snapshotter])
            .args(["--build-arg", "BASE=busybox:kiln-test", "-t", "cmp:k", "-f"])
            .arg(&df)
            .arg("-o")
            .arg(format!("type=oci,dest={}", k_out.display()))
            .arg(&ctx)
            .assert()
            .success();
        // buildah, from the same base
        run_ok(
            buildah(
                &[
                    "bud",
                    "--isolation",
                    "chroot",
                    "--layers",
                    "-q",
                    "--format",
                    "docker",
                ],
                &storage,
            )
            .arg("--build-arg")
            .arg(format!("BASE=oci:{}:kiln-test", base.display()))
            .args(["-t", &format!("cmp-{name}"), "-f"])
            .arg(&df)
            .arg(&ctx),
        );
        let b_out = env.path(&format!("buildah-{name}"));
        run_ok(
            buildah(&["push", &format!("cmp-{name}")], &storage)
                .arg(format!("oci:{}:latest", b_out.display())),
        );
        let k = tree::listing(&umoci_rootfs(&k_out, "k", &env.path(&format!("uk-{name}"))));
        let mut b = tree::listing(&umoci_rootfs(
            &b_out,
            "latest",
            &env.path(&format!("ub-{name}")),
        ));
        drop_buildah_artifacts(&mut b, &k);
        let diff = tree::diff("kiln", &k, "buildah", &b);
        assert!(
            diff.is_empty(),
            "{name}: kiln ({snapshotter}) and buildah differ:\n{}",
            diff.join("\n")
        );
        // Nothing of the sandbox's own mounts reaches a layer.
        for l in layer_names(&k_out, "k").into_iter().skip(1) {
            for bad in [
                "etc/resolv.conf",
                "etc/hosts",
                "proc/",
                "dev/",
                "sys/",
                "run/",
            ] {
                assert!(
                    !l.iter().any(|e| e == bad),
                    "{name}: layer has sandbox entry {bad}: {l:?}"
                );
            }
        }
    }
}

/// Entry names of each layer of an image in an OCI layout.
fn layer_names(layout: &Path, tag: &str) -> Vec<Vec<String>> {
    let index: Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let desc = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap();
    let blob = |d: &str| {
        layout
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let manifest: Value =
        serde_json::from_slice(&fs::read(blob(desc["digest"].as_str().unwrap())).unwrap()).unwrap();
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            run_ok(
                Proc::new("tar")
                    .arg("tzf")
                    .arg(blob(l["digest"].as_str().unwrap())),
            )
            .lines()
            .map(|s| s.trim_start_matches("./").to_string())
            .collect()
        })
        .collect()
}

fn run_failure_names_stage_line_exit_code_and_output(snapshotter: &str) {
    needs!("busybox");
    let env = Env::new();
    env.busybox(BUSYBOX);
    let ctx = env.context("fail", "FROM busybox:kiln-test AS builder\nRUN echo step one\nRUN echo about to fail && echo on stderr >&2 && exit 3\n");
    env.kiln()
        .args(["build", "--progress", "plain", "--snapshotter", snapshotter])
        .arg(&ctx)
        .assert()
        .failure()
        .stderr(predicates::str::contains("stage builder, Dockerfile:3"))
        .stderr(predicates::str::contains("exit code: 3"))
        .stderr(predicates::str::contains("about to fail"))
        .stderr(predicates::str::contains("on stderr"));
    // A missing executable is a clear error too.
    fs::write(
        ctx.join("Dockerfile"),
        "FROM busybox:kiln-test\nRUN [\"/no/such/program\"]\n",
    )
    .unwrap();
    env.kiln()
        .args(["build", "--progress", "plain", "--snapshotter", snapshotter])
        .arg(&ctx)
        .assert()
        .failure()
        .stderr(predicates::str::contains("/no/such/program"));
}

fn run_mounts(snapshotter: &str) {
    needs!("busybox");
    let env = Env::new();
    env.busybox(BUSYBOX);
    let ctx = env.path("mounts");
    fs::create_dir_all(ctx.join("src")).unwrap();
    fs::write(ctx.join("src/input.txt"), "from the context\n").unwrap();
    fs::write(env.path("token"), "s3cr3t-value\n").unwrap();
    fs::write(
        ctx.join("Dockerfile"),
        r#"FROM busybox:kiln-test AS data
RUN mkdir -p /data && echo "from a stage" > /data/stage.txt
FROM busybox:kiln-test
RUN --mount=type=cache,target=/cache,id=counter \
    echo run >> /cache/runs && wc -l < /cache/runs > /runs-seen
RUN --mount=type=bind,source=src,target=/in \
    cp /in/input.txt /copied.txt && ! touch /in/written 2>/dev/null
RUN --mount=type=bind,from=data,source=/data,target=/d,rw \
    cat /d/stage.txt > /stage.txt && touch /d/discarded
RUN --mount=type=tmpfs,target=/scratch \
    touch /scratch/gone && grep -q ' /scratch tmpfs' /proc/mounts && echo ok > /tmpfs-ok
RUN --mount=type=secret,id=token \
    test "$(tr a-z A-Z < /run/secrets/token)" = S3CR3T-VALUE && echo ok > /secret-ok
RUN --mount=type=secret,id=token,env=TOKEN \
    test "$(echo $TOKEN | tr a-z A-Z)" = S3CR3T-VALUE && echo ok > /secret-env-ok
RUN --network=none ls /sys/class/net > /net-none
RUN ls /sys/class/net > /net-host
"#,
    )
    .unwrap();
    let secret = format!("id=token,src={}", env.path("token").display());
    let out = env.path("out");
    for pass in 1..=2 {
        let _ = fs::remove_dir_all(&out);
        env.kiln()
            .args([
                "build",
                "--progress",
                "plain",
                "--no-cache",
                "--snapshotter",
                snapshotter,
            ])
            .args(["--secret", &secret, "-t", "mounts:1", "-o"])
            .arg(format!("type=local,dest={}", out.display()))
            .arg(&ctx)
            .assert()
            .success();
        // The cache mount keeps its content from one build to the next.
        assert_eq!(
            fs::read_to_string(out.join("runs-seen")).unwrap().trim(),
            pass.to_string()
        );
    }
    assert_eq!(
        fs::read_to_string(out.join("copied.txt")).unwrap(),
        "from the context\n"
    );
    assert_eq!(
        fs::read_to_string(out.join("stage.txt")).unwrap(),
        "from a stage\n"
    );
    // --network=none: loopback only; the default: the host's interfaces.
    assert_eq!(fs::read_to_string(out.join("net-none")).unwrap(), "lo\n");
    let host: Vec<String> = fs::read_dir("/sys/class/net")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let seen = fs::read_to_string(out.join("net-host")).unwrap();
    assert_eq!(seen.lines().count(), host.len(), "{seen}");
    for f in ["tmpfs-ok", "secret-ok", "secret-env-ok"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    for gone in [
        "cache",
        "in",
        "d",
        "scratch",
        "run/secrets",
        "written",
        "data",
    ] {
        assert!(!out.join(gone).exists(), "{gone} leaked into the image");
    }
    assert!(!ctx.join("src/written").exists());
    // The secret is nowhere in the store's blobs (layers, configs, history).
    let grep = Proc::new("grep")
        .args(["-r", "-l", "-a", "s3cr3t-value"])
        .arg(env.root().join("blobs"))
        .arg(env.root().join("cache"))
        .output()
        .unwrap();
    assert!(
        grep.stdout.is_empty(),
        "secret found in {}",
        String::from_utf8_lossy(&grep.stdout)
    );
    // A required secret that is missing is an error.
    fs::write(
        ctx.join("Dockerfile"),
        "FROM busybox:kiln-test\nRUN --mount=type=secret,id=nope,required true\n",
    )
    .unwrap();
    env.kiln()
        .args(["build", "--progress", "plain", "--snapshotter", snapshotter])
        .arg(&ctx)
        .assert()
        .failure()
        .stderr(predicates::str::contains("secret nope not provided"));
}

/// Regression test for the hostile-Dockerfile findings (issue 9, finding 1): a plain RUN
/// had every capability, no seccomp filter, a writable /proc/sys, a remountable /sys,
/// usable device nodes of its own making, and could open host files by handle.
fn sandbox_confines_a_step_as_docker_does(snapshotter: &str) {
    needs!("busybox", "gcc", "ip", "setpriv");
    let env = Env::new();
    env.busybox(BUSYBOX);
    let ctx = env.path("confined");
    fs::create_dir_all(&ctx).unwrap();
    let cc = Proc::new("gcc")
        .args(["-static", "-O1", "-o"])
        .arg(ctx.join("shocker"))
        .arg(repo_root().join("testdata/run/escape/shocker.c"))
        .status()
        .expect("gcc is needed to build the escape probe (apt-get install gcc libc6-dev)");
    assert!(cc.success(), "gcc -static failed (is libc6-dev installed?)");
    fs::write(
        ctx.join("Dockerfile"),
        r#"FROM busybox:kiln-test
COPY shocker /shocker
RUN mkdir /r && grep -E '^(Cap|Seccomp|NoNewPrivs)' /proc/self/status > /r/status
RUN /shocker /etc/hosts > /r/shocker
RUN ip addr add 127.0.0.99/32 dev lo 2>/dev/null; echo $? > /r/ip
RUN mount -o remount,rw /sys 2>/dev/null; echo $? > /r/sys-remount
RUN mount -t tmpfs none /mnt 2>/dev/null; echo $? > /r/mount
RUN (echo '|/tmp/x' > /proc/sys/kernel/core_pattern) 2>/dev/null; echo $? > /r/core-pattern
RUN (echo h > /proc/sysrq-trigger) 2>/dev/null; echo $? > /r/sysrq
RUN for f in /proc/kcore /proc/keys /proc/timer_list /proc/sched_debug; do \
      [ -e $f ] && echo "$f $(wc -c < $f)"; done > /r/masked; ls /sys/firmware | wc -l > /r/firmware
RUN mknod /r/null c 1 3 && (echo x > /r/null) 2>/dev/null; echo $? > /r/own-node
RUN mknod /dev/mynull c 1 3 && (echo x > /dev/mynull) 2>/dev/null; echo $? > /r/dev-node
RUN echo x > /dev/null && echo ok > /r/dev-null
USER app
RUN grep -E '^Cap(Eff|Bnd)' /proc/self/status > /tmp/user-status
USER root
RUN cp /tmp/user-status /r/user-status && rm -f /r/null
"#,
    )
    .unwrap();
    let out = env.path("out");
    env.kiln()
        .args(["build", "--progress", "plain", "--snapshotter", snapshotter])
        .arg("-o")
        .arg(format!("type=local,dest={}", out.display()))
        .arg(&ctx)
        .assert()
        .success();
    let read = |name: &str| fs::read_to_string(out.join("r").join(name)).unwrap();
    let status = read("status");
    for line in [
        "CapInh:\t0000000000000000",
        "CapPrm:\t00000000a80425fb",
        "CapEff:\t00000000a80425fb",
        "CapBnd:\t00000000a80425fb",
        "CapAmb:\t0000000000000000",
        "NoNewPrivs:\t0",
        "Seccomp:\t2",
    ] {
        assert!(status.contains(line), "{line:?} not in:\n{status}");
    }
    let user = read("user-status");
    assert!(user.contains("CapEff:\t0000000000000000"), "{user}");
    assert!(user.contains("CapBnd:\t00000000a80425fb"), "{user}");
    assert_eq!(read("shocker"), "refused: Operation not permitted\n");
    for refused in [
        "ip",
        "sys-remount",
        "mount",
        "core-pattern",
        "sysrq",
        "own-node",
        "dev-node",
    ] {
        assert_ne!(read(refused).trim(), "0", "{refused} was allowed");
    }
    // Masked files read as empty; the host has at least one of them.
    let masked = read("masked");
    assert!(
        !masked.is_empty(),
        "none of the masked files exists on this kernel"
    );
    assert!(masked.lines().all(|l| l.ends_with(" 0")), "{masked}");
    assert_eq!(read("firmware").trim(), "0");
    assert_eq!(read("dev-null"), "ok\n");
    let host_lo = run_ok(Proc::new("ip").args(["-o", "addr", "show", "dev", "lo"]));
    assert!(
        !host_lo.contains("127.0.0.99"),
        "the step changed the host's loopback"
    );

    // Finding 2: unpacked layers (setuid binaries, device nodes) are out of other users'
    // reach: the store is 0700 and nobody cannot even look inside.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::metadata(env.root()).unwrap().mode() & 0o777, 0o700);
    let busybox = walkdir_find(&env.root().join("snapshots"), "busybox")
        .expect("an unpacked busybox in the store's snapshots");
    // Through a shell: setpriv itself still holds its capabilities when it executes.
    let as_nobody = Proc::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(["sh", "-c"])
        .arg(format!("{} true", busybox.display()))
        .status()
        .unwrap();
    assert!(
        !as_nobody.success(),
        "another user ran {}",
        busybox.display()
    );

    // --security=insecure is refused without the entitlement, and privileged with it.
    fs::write(
        ctx.join("Dockerfile"),
        "FROM busybox:kiln-test\nRUN --security=insecure grep -E '^(CapEff|Seccomp):' /proc/self/status > /status && mkdir -p /mnt && mount -t tmpfs none /mnt\n",
    )
    .unwrap();
    env.kiln()
        .args(["build", "--progress", "plain", "--snapshotter", snapshotter])
        .arg(&ctx)
        .assert()
        .failure()
        .stderr(predicates::str::contains("Dockerfile:2:1"))
        .stderr(predicates::str::contains("--allow security.insecure"));
    let out = env.path("out-insecure");
    env.kiln()
        .args(["build", "--progress", "plain", "--snapshotter", snapshotter])
        .args(["--allow", "security.insecure", "-o"])
        .arg(format!("type=local,dest={}", out.display()))
        .arg(&ctx)
        .assert()
        .success();
    let status = fs::read_to_string(out.join("status")).unwrap();
    assert!(status.contains("Seccomp:\t0"), "{status}");
    assert!(!status.contains("CapEff:\t00000000a80425fb"), "{status}");
}

/// Regression test (issue 9, finding 3): a step that moves its mount points' parents away
/// and plants symlinks to a host directory in their place made kiln's clean-up delete that
/// host directory's entries.
fn cleanup_never_follows_a_steps_symlinks(snapshotter: &str) {
    needs!("busybox");
    let env = Env::new();
    env.busybox(BUSYBOX);
    let victim = env.path("victim");
    fs::create_dir_all(victim.join("b")).unwrap();
    fs::create_dir_all(victim.join("t/d")).unwrap();
    fs::write(victim.join("b/x"), "").unwrap();
    fs::write(env.path("secret"), "s").unwrap();
    let v = victim.display();
    let ctx = env.context(
        "symlinks",
        &format!(
            "FROM busybox:kiln-test\n\
             RUN --mount=type=secret,id=s,target=/a/b/x --mount=type=tmpfs,target=/c/t/d \\\n\
             mv /a /a.old && mv /c /c.old && ln -s {v} /a && ln -s {v} /c\n"
        ),
    );
    env.kiln()
        .args(["build", "--progress", "plain", "--snapshotter", snapshotter])
        .arg("--secret")
        .arg(format!("id=s,src={}", env.path("secret").display()))
        .arg(&ctx)
        .assert()
        .success();
    assert!(victim.join("b/x").exists(), "kiln deleted a host file");
    assert!(victim.join("t/d").is_dir(), "kiln deleted a host directory");
}

/// Regression test (issue 9, finding 9): a RUN that fills the store's disk said "reading
/// the sandbox's result: EOF while parsing".
#[test]
fn run_that_fills_the_disk_says_so() {
    needs!("busybox");
    let env = Env::new();
    // A 48 MiB tmpfs as the whole store.
    let small = env.path("small");
    fs::create_dir_all(&small).unwrap();
    run_ok(
        Proc::new("mount")
            .args(["-t", "tmpfs", "-o", "size=48m", "tmpfs"])
            .arg(&small),
    );
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Proc::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _guard = Unmount(small.clone());
    let store = small.join("store");
    let bb = env.path("busybox");
    busybox_context(&bb);
    env.kiln_at(&store)
        .args(["build", "--progress", "quiet", "-t", "busybox:kiln-test"])
        .arg(&bb)
        .assert()
        .success();
    let ctx = env.context(
        "fill",
        "FROM busybox:kiln-test\nRUN dd if=/dev/zero of=/big bs=1M count=100\n",
    );
    for snapshotter in ["overlay", "copy"] {
        env.kiln_at(&store)
            .args(["build", "--progress", "plain", "--snapshotter", snapshotter])
            .arg(&ctx)
            .assert()
            .failure()
            .stderr(predicates::str::contains("no space left on device"))
            .stderr(predicates::str::contains("EOF").not());
    }
}

/// The first file named `name` below `dir`.
fn walkdir_find(dir: &Path, name: &str) -> Option<PathBuf> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).ok()?.flatten() {
            let ft = e.file_type().ok()?;
            if ft.is_dir() {
                stack.push(e.path());
            } else if e.file_name() == name {
                return Some(e.path());
            }
        }
    }
    None
}

fn mounts_under(root: &Path) -> Vec<String> {
    let root = root.display().to_string();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&root))
        .map(str::to_string)
        .collect()
}

fn interrupted_run_leaves_no_mounts_and_a_usable_store(snapshotter: &str) {
    needs!("busybox");
    use std::io::BufRead;
    let env = Env::new();
    env.busybox(BUSYBOX);
    let ctx = env.path("sleepy");
    fs::create_dir_all(&ctx).unwrap();
    let marker = format!("{}.5", 40 + std::process::id() % 50);
    fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM busybox:kiln-test\nRUN --mount=type=tmpfs,target=/t echo started && (sleep {marker} &) && sleep {marker}\n"
        ),
    )
    .unwrap();
    for signal in ["INT", "TERM"] {
        let mut child = env
            .proc()
            .args(["build", "--progress", "plain", "--snapshotter", snapshotter])
            .arg(&ctx)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            assert!(err.read_line(&mut line).unwrap() > 0, "build ended early");
            if line.contains("started") {
                break;
            }
        }
        // The sandbox's mounts live in its own mount namespace: the host never sees them.
        assert_eq!(mounts_under(&env.root()), Vec::<String>::new());
        run_ok(
            Proc::new("kill")
                .arg(format!("-{signal}"))
                .arg(child.id().to_string()),
        );
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(130), "exit status after SIG{signal}");
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut rest);
        assert!(rest.contains("interrupted"), "{rest}");
        assert_eq!(mounts_under(&env.root()), Vec::<String>::new());
        let ps = run_ok(Proc::new("ps").args(["-eo", "args"]));
        assert!(
            !ps.lines().any(|l| l.contains(&format!("sleep {marker}"))),
            "sandbox processes survived:\n{ps}"
        );
    }
    // The next build works and uses the store as it is.
    fs::write(
        ctx.join("Dockerfile"),
        "FROM busybox:kiln-test\nRUN echo fine > /fine\n",
    )
    .unwrap();
    env.build_checked(&["--snapshotter", snapshotter], &ctx);
    let leftovers: Vec<_> = fs::read_dir(env.root().join("tmp"))
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
}

#[test]
fn independent_stages_run_at_the_same_time() {
    needs!("busybox");
    // Each stage waits (up to 20 s) for the other's marker in a shared cache mount: they
    // can only both succeed if they run at once.
    let env = Env::new();
    env.busybox(BUSYBOX);
    let ctx = env.path("parallel");
    fs::create_dir_all(&ctx).unwrap();
    let stage = |me: &str, other: &str| {
        format!(
            "FROM busybox:kiln-test AS {me}\nRUN --mount=type=cache,target=/r,id=rendezvous touch /r/{me} && for i in $(seq 200); do [ -f /r/{other} ] && break; sleep 0.1; done && test -f /r/{other} && echo {me} > /{me}\n"
        )
    };
    fs::write(
        ctx.join("Dockerfile"),
        format!(
            "{}{}FROM busybox:kiln-test\nCOPY --from=a /a /a\nCOPY --from=b /b /b\n",
            stage("a", "b"),
            stage("b", "a")
        ),
    )
    .unwrap();
    env.build_checked(&["-t", "parallel:1"], &ctx);
}

#[test]
fn cache_mount_sharing_modes() {
    needs!("busybox");
    // Four stages run at once (see independent_stages_run_at_the_same_time).
    // `locked`: two writers never hold the cache at the same time, so neither finds the
    // other's `busy` directory. `private`: a writer that finds the cache taken gets a
    // fresh one, so neither sees the other's file.
    let env = Env::new();
    env.busybox(BUSYBOX);
    let locked = |me: &str| {
        format!(
            "FROM busybox:kiln-test AS {me}\nRUN --mount=type=cache,target=/c,id=lk,sharing=locked mkdir /c/busy && sleep 1 && rmdir /c/busy && echo ok > /{me}\n"
        )
    };
    let private = |me: &str| {
        format!(
            "FROM busybox:kiln-test AS {me}\nRUN --mount=type=cache,target=/c,id=pv,sharing=private touch /c/{me} && sleep 1 && ls /c > /{me}\n"
        )
    };
    let ctx = env.context(
        "sharing",
        &format!(
            "{}{}{}{}FROM busybox:kiln-test\nCOPY --from=l1 /l1 /l1\nCOPY --from=l2 /l2 /l2\nCOPY --from=p1 /p1 /p1\nCOPY --from=p2 /p2 /p2\n",
            locked("l1"),
            locked("l2"),
            private("p1"),
            private("p2")
        ),
    );
    let out = env.path("out");
    env.build_checked(&["-o", &format!("type=local,dest={}", out.display())], &ctx);
    assert!(out.join("l1").exists() && out.join("l2").exists());
    let p1 = fs::read_to_string(out.join("p1")).unwrap();
    let p2 = fs::read_to_string(out.join("p2")).unwrap();
    assert!(p1.contains("p1") && !p1.contains("p2"), "{p1}");
    assert!(p2.contains("p2") && !p2.contains("p1"), "{p2}");
}

#[test]
fn heredoc_run_and_shell() {
    needs!("busybox");
    let env = Env::new();
    env.busybox(BUSYBOX);
    let ctx = env.context("heredoc", "FROM busybox:kiln-test\nARG GREETING=hi\nRUN <<EOT\n  echo heredoc > /heredoc\n  echo \"$GREETING again\" >> /heredoc\nEOT\nRUN <<-'EOT' cat > /quoted\n\tliteral $GREETING\n\tEOT\nSHELL [\"/bin/sh\", \"-e\", \"-c\"]\nRUN echo \"$0 $-\" > /shell\nRUN <<A cat > /a && <<B cat > /b\nfirst\nA\nsecond\nB\n");
    let out = env.path("out");
    env.build_checked(&["-o", &format!("type=local,dest={}", out.display())], &ctx);
    let read = |f: &str| fs::read_to_string(out.join(f)).unwrap();
    assert_eq!(read("heredoc"), "heredoc\nhi again\n");
    assert_eq!(read("quoted"), "literal $GREETING\n");
    assert!(read("shell").starts_with("/bin/sh "), "{}", read("shell"));
    assert!(read("shell").contains('e'), "{}", read("shell"));
    assert_eq!(read("a"), "first\n");
    assert_eq!(read("b"), "second\n");
}

/// The Debian tier (`KILN_TEST_DEBIAN=1`, set by CI): a Debian base made with mmdebstrap
/// and imported by kiln (`FROM scratch` + `ADD rootfs.tar /`), then `apt-get install`
/// inside RUN over the host network, on both snapshotters.
#[test]
fn debian_base_and_apt_get_install() {
    require!(
        std::env::var_os("KILN_TEST_DEBIAN").is_some(),
        "the Debian tier runs with KILN_TEST_DEBIAN=1 (needs mmdebstrap and a Debian mirror; .ci/run sets it)"
    );
    needs!("mmdebstrap");
    let env = Env::new();
    let base = env.path("debian");
    fs::create_dir_all(&base).unwrap();
    fs::copy(
        repo_root().join("testdata/bases/debian/Dockerfile"),
        base.join("Dockerfile"),
    )
    .unwrap();
    run_ok(
        Proc::new("bash")
            .arg(repo_root().join("testdata/bases/debian/make-rootfs.sh"))
            .arg(base.join("rootfs.tar")),
    );
    env.build_checked(&["-t", "debian:kiln-test"], &base);
    let ctx = env.context(
        "app",
        r#"FROM debian:kiln-test
RUN apt-get update && apt-get install -y --no-install-recommends jq && rm -rf /var/lib/apt/lists/*
RUN echo '{"kiln": "works"}' | jq -r .kiln > /jq.txt && useradd -m builder
USER builder
RUN whoami > /home/builder/me && dpkg -s jq | grep -q 'Status: install ok installed'
"#,
    );
    let out = env.path("out");
    env.build_checked(
        &[
            "-t",
            "app:deb",
            "-o",
            &format!("type=local,dest={}", out.display()),
        ],
        &ctx,
    );
    assert_eq!(fs::read_to_string(out.join("jq.txt")).unwrap(), "works\n");
    assert_eq!(
        fs::read_to_string(out.join("home/builder/me")).unwrap(),
        "builder\n"
    );
    assert!(out.join("usr/bin/jq").exists());
    assert!(!out.join("var/lib/apt/lists/lock").exists());
    // The copy snapshotter runs over the same Debian tree.
    fs::write(
        ctx.join("Dockerfile"),
        "FROM app:deb\nUSER root\nRUN apt-get purge -y jq && rm /jq.txt && test ! -e /usr/bin/jq\n",
    )
    .unwrap();
    let out2 = env.path("out2");
    env.build_checked(
        &[
            "--snapshotter",
            "copy",
            "-o",
            &format!("type=local,dest={}", out2.display()),
        ],
        &ctx,
    );
    assert!(!out2.join("usr/bin/jq").exists());
    assert!(!out2.join("jq.txt").exists());
    assert!(out2.join("home/builder/me").exists());
}

#[test]
fn long_layer_chains_mount() {
    needs!("busybox");
    // 60 layers of ~100-byte snapshot paths: far past the 4 KiB limit of a single
    // `lowerdir=` option string.
    let env = Env::new();
    env.busybox(BUSYBOX);
    let ctx = env.path("chain");
    fs::create_dir_all(&ctx).unwrap();
    let mut df = String::from("FROM busybox:kiln-test\n");
    for i in 0..60 {
        df.push_str(&format!("RUN echo {i} > /layer-{i}\n"));
    }
    df.push_str("RUN cat /layer-* | wc -l > /count\n");
    fs::write(ctx.join("Dockerfile"), df).unwrap();
    let out = env.path("out");
    env.build_checked(&["-o", &format!("type=local,dest={}", out.display())], &ctx);
    assert_eq!(fs::read_to_string(out.join("count")).unwrap().trim(), "60");
}

// ---------------------------------------------------------------------------------------
// Registries: kiln pushes, pulls and builds FROM images in a real docker-registry.

fn skopeo_digest(reference: &str) -> String {
    let v: Value = serde_json::from_str(&run_ok(Proc::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        &format!("docker://{reference}"),
    ])))
    .unwrap();
    v["Digest"].as_str().unwrap().to_string()
}

#[test]
fn push_pull_and_build_from_a_registry() {
    needs!("busybox", "skopeo", "docker-registry");
    let reg = Registry::start(&Auth::None);
    let env = Env::new();
    env.busybox(BUSYBOX);
    // Push the base under a registry name.
    let base = format!("{}:1", reg.name("base/busybox"));
    env.kiln()
        .args(["tag", "busybox:kiln-test", &base])
        .assert()
        .success();
    let out = env.kiln().args(["push", &base]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pushed = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(pushed, skopeo_digest(&base));
    // Pushing again uploads nothing.
    let again = env.kiln().args(["push", &base]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("0 bytes uploaded"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // A fresh store builds FROM the registry image: pulled once, then from the store.
    let env2 = Env::new();
    let ctx = env2.context("app", &format!("FROM {base}\nRUN echo pulled > /pulled\n"));
    let app = format!("{}:1", reg.name("apps/app"));
    let first = env2
        .kiln()
        .args(["build", "--progress", "plain", "--push", "-t", &app])
        .arg(&ctx)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{err}");
    assert!(err.contains(&format!("pulling {base}")), "{err}");
    // stdout is the image ID (the config digest); the registry has the manifest.
    let image_id = String::from_utf8_lossy(&first.stdout).trim().to_string();
    let inspect: Value =
        serde_json::from_slice(&env2.kiln().args(["inspect", &app]).output().unwrap().stdout)
            .unwrap();
    assert_eq!(inspect[0]["Id"], image_id);
    let built = inspect[0]["Digest"].as_str().unwrap().to_string();
    assert!(
        err.contains(&format!("exporting manifest {built} done")),
        "{err}"
    );
    assert_eq!(built, skopeo_digest(&app), "--push pushed the built image");
    assert!(err.contains("mounted") || err.contains("skipped"), "{err}");
    let second = env2
        .kiln()
        .args(["build", "--progress", "plain"])
        .arg(&ctx)
        .output()
        .unwrap();
    assert!(second.status.success());
    assert!(!String::from_utf8_lossy(&second.stderr).contains("pulling"));

    // kiln pulls what skopeo pushed (Docker schema 2), and builds from it.
    let layout = env.path("layout");
    env.kiln()
        .args(["build", "--progress", "quiet", "-o"])
        .arg(format!("type=oci,dest={}", layout.display()))
        .arg(env.path("busybox"))
        .assert()
        .success();
    let v2s2 = format!("{}:v2s2", reg.name("other/busybox"));
    run_ok(Proc::new("skopeo").args([
        "copy",
        "--dest-tls-verify=false",
        "--format",
        "v2s2",
        &format!("oci:{}", layout.display()),
        &format!("docker://{v2s2}"),
    ]));
    let env3 = Env::new();
    let pulled = env3.kiln().args(["pull", &v2s2]).output().unwrap();
    assert!(
        pulled.status.success(),
        "{}",
        String::from_utf8_lossy(&pulled.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&pulled.stdout).trim(),
        skopeo_digest(&v2s2)
    );
    let ctx3 = env3.path("ctx");
    fs::create_dir_all(&ctx3).unwrap();
    fs::write(
        ctx3.join("Dockerfile"),
        format!("FROM {v2s2}\nRUN test -x /bin/busybox\n"),
    )
    .unwrap();
    env3.build_checked(&[], &ctx3);
    // An unknown image names the reference and the registry's answer.
    fs::write(
        ctx3.join("Dockerfile"),
        format!("FROM {}:nope\n", reg.name("missing/image")),
    )
    .unwrap();
    env3.kiln()
        .args(["build", "--progress", "plain"])
        .arg(&ctx3)
        .assert()
        .failure()
        .stderr(predicates::str::contains("missing/image:nope"))
        .stderr(predicates::str::contains("404"));
}

/// A registry over TLS with the self-signed certificate of Docker's guide to running one
/// (`openssl req -x509`, which marks it as a CA): `--registry-ca` makes kiln trust it, as
/// `certs.d` makes Docker trust it, and without it the push is refused at once, saying
/// why. skopeo (Go's TLS, as Docker's) reads what kiln pushed with the same certificate.
#[test]
fn a_registry_with_a_self_signed_certificate_is_trusted_with_registry_ca() {
    needs!("busybox", "docker-registry", "openssl", "skopeo");
    let env = Env::new();
    let certs = env.path("certs");
    fs::create_dir_all(&certs).unwrap();
    let (cert, key) = (certs.join("ca.crt"), env.path("domain.key"));
    run_ok(
        Proc::new(kiln_test_support::tool_path("openssl"))
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=kiln-test-registry"])
            .args(["-addext", "subjectAltName=IP:0.0.0.0"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert),
    );
    let reg = Registry::start_tls(&cert, &key);
    env.busybox(BUSYBOX);
    let name = reg.name("tls/busybox:1");
    env.kiln()
        .args(["tag", "busybox:kiln-test", &name])
        .assert()
        .success();
    // Without it: refused, and not retried (one handshake, which the registry logs).
    let refused = env.out(&["pull", &name]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    let want = format!(
        "pull {name}: TLS handshake with registry {} failed: its certificate is marked as a CA",
        reg.host()
    );
    assert!(stderr.contains(&want), "{stderr}\nwanted: {want}");
    // (Not the start-up's probe, which connects and hangs up: `EOF`.)
    let handshakes = || reg.log().matches("remote error: tls:").count();
    wait::until(
        std::time::Duration::from_secs(5),
        "the registry to log the refused handshake",
        || (handshakes() > 0).then_some(()),
        || reg.log(),
    );
    // Any retry came before kiln exited; its log line, within this.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(handshakes(), 1, "{}", reg.log());
    let ca = cert.to_str().unwrap();
    let pushed = env.ok(&["--registry-ca", ca, "push", &name]);
    let pushed = pushed.trim();
    let inspect: Value = serde_json::from_str(&run_ok(
        Proc::new(kiln_test_support::tool_path("skopeo"))
            .args(["inspect", "--cert-dir"])
            .arg(&certs)
            .arg(format!("docker://{name}")),
    ))
    .unwrap();
    assert_eq!(inspect["Digest"], pushed, "skopeo reads what kiln pushed");
    // A fresh store builds FROM it.
    let other = Env::new();
    let ctx = other.context("tls-app", &format!("FROM {name}\nRUN echo over-tls > /t\n"));
    let mut kiln = other.kiln();
    kiln.args(["--registry-ca", ca]);
    let built = other.build_with(kiln, &ctx, &["-t", "t:1"]);
    assert!(built.ok, "{}", built.stderr);
}

#[test]
fn login_push_and_logout_with_basic_auth() {
    needs!("busybox", "docker-registry", "htpasswd");
    let reg = Registry::start(&Auth::Htpasswd {
        user: "kiln".into(),
        pass: "s3cret".into(),
    });
    let env = Env::new();
    env.busybox(BUSYBOX);
    let host = format!("127.0.0.1:{}", reg.port);
    let docker_config = env.path("docker");
    let name = format!("{}:1", reg.name("private/busybox"));
    let kiln = || {
        let mut c = env.kiln();
        c.env("DOCKER_CONFIG", &docker_config);
        c
    };
    kiln()
        .args(["tag", "busybox:kiln-test", &name])
        .assert()
        .success();
    // Anonymous push: one clear line with the status.
    kiln()
        .args(["push", &name])
        .assert()
        .failure()
        .stderr(predicates::str::contains("401"))
        .stderr(predicates::str::contains("private/busybox"));
    // A wrong password is refused and nothing is saved.
    kiln()
        .args(["login", "-u", "kiln", "--password-stdin", &host])
        .write_stdin("wrong\n")
        .assert()
        .failure()
        .stderr(predicates::str::contains("401"));
    assert!(!docker_config.join("config.json").exists());
    kiln()
        .args(["login", "-u", "kiln", "--password-stdin", &host])
        .write_stdin("s3cret\n")
        .assert()
        .success()
        .stderr(predicates::str::contains("Login Succeeded"));
    let config = fs::read_to_string(docker_config.join("config.json")).unwrap();
    assert!(config.contains(&host), "{config}");
    let out = kiln().args(["push", &name]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    kiln().args(["logout", &host]).assert().success();
    let config = fs::read_to_string(docker_config.join("config.json")).unwrap();
    assert!(!config.contains(&host), "{config}");
}

// ---------------------------------------------------------------------------------------
// Issue 9: a kill -9 campaign. Builds are SIGKILLed at random points (unpacking a base,
// COPY, RUN, gzip, exporting an archive, pushing); each is followed by a rebuild that must
// succeed on the store as the kill left it, with every blob whole, no mount, no sandbox
// process and no dead writer's temp file left behind.

/// A small deterministic generator (xorshift64*), seeded from `KILN_KILL_SEED` or the
/// clock; the seed is printed so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn assert_blobs_whole(root: &Path) {
    for e in fs::read_dir(root.join("blobs/sha256")).unwrap() {
        let p = e.unwrap().path();
        let sum = run_ok(Proc::new("sha256sum").arg(&p));
        assert_eq!(
            sum.split_whitespace().next().unwrap(),
            p.file_name().unwrap().to_str().unwrap(),
            "blob {} is not what its name says",
            p.display()
        );
    }
}

#[test]
fn kill9_campaign_leaves_a_usable_store() {
    needs!("busybox", "skopeo", "docker-registry");
    let rounds: u64 = std::env::var("KILN_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let seed = std::env::var("KILN_KILL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("kill -9 campaign: {rounds} rounds, KILN_KILL_SEED={seed}");
    let mut rng = Rng(seed);
    let env = Env::new();
    env.busybox(BUSYBOX);
    let registry = Registry::start(&Auth::None);
    let ctx = env.path("victim");
    fs::create_dir_all(ctx.join("files")).unwrap();
    run_ok(
        Proc::new("dd")
            .args(["if=/dev/urandom", "bs=1M", "count=16"])
            .arg(format!("of={}", ctx.join("files/big.bin").display())),
    );
    for i in 0..300 {
        fs::write(ctx.join(format!("files/f{i}")), format!("file {i}\n")).unwrap();
    }
    fs::write(
        ctx.join("Dockerfile"),
        "FROM busybox:kiln-test\nCOPY files /files\nRUN head -c 8000000 /files/big.bin > /run.bin && echo done > /done\nCOPY Dockerfile /\n",
    )
    .unwrap();
    let name = registry.name("campaign/victim:1");
    let archive = env.path("out.tar");
    let build = |no_cache: bool| {
        let mut c = env.proc();
        c.args(["build", "--progress", "quiet", "-t", &name, "--push", "-o"])
            .arg(format!("type=oci,dest={}", archive.display()));
        if no_cache {
            c.arg("--no-cache");
        }
        c.arg(&ctx);
        c
    };
    // How long a whole build takes here: kills land anywhere within it.
    let start = std::time::Instant::now();
    run_ok(&mut build(true));
    let span = start.elapsed().as_millis().max(200) as u64;
    for round in 0..rounds {
        if round % 3 == 0 {
            // Start from blobs only, so that the killed build unpacks its base.
            for e in fs::read_dir(env.root().join("snapshots")).unwrap() {
                let p = e.unwrap().path();
                let _ = fs::remove_dir_all(&p).or_else(|_| fs::remove_file(&p));
            }
        }
        let delay = rng.next() % (span + span / 4);
        let mut child = build(round % 2 == 0)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay));
        let _ = child.kill();
        let _ = child.wait();
        // Sandbox processes die with kiln (parent-death signal); give the kernel a moment.
        let sandboxes = || {
            run_ok(Proc::new("ps").args(["-eo", "pid,args"]))
                .lines()
                .filter(|l| {
                    l.contains("__kiln-sandbox-init") && l.contains(&*env.root().to_string_lossy())
                })
                .collect::<Vec<_>>()
                .join("\n")
        };
        wait::until(
            std::time::Duration::from_secs(5),
            &format!("round {round} (killed after {delay} ms): sandbox processes to exit"),
            || sandboxes().is_empty().then_some(()),
            || format!("left:\n{}", sandboxes()),
        );
        assert_eq!(
            mounts_under(&env.root()),
            Vec::<String>::new(),
            "round {round}: mounts left"
        );
        let out = build(false).output().unwrap();
        assert!(
            out.status.success(),
            "round {round} (killed after {delay} ms, seed {seed}): rebuild failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The rebuild's start cleaned what the killed writer left in tmp/.
        let leftovers: Vec<_> = fs::read_dir(env.root().join("tmp"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            leftovers.is_empty(),
            "round {round} (killed after {delay} ms): temp files left: {leftovers:?}"
        );
        if round % 10 == 9 || round + 1 == rounds {
            assert_blobs_whole(&env.root());
        }
    }
    env.kiln().args(["inspect", &name]).assert().success();
    run_ok(Proc::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        &format!("docker://{name}"),
    ]));
    run_ok(
        Proc::new("skopeo")
            .arg("inspect")
            .arg(format!("oci-archive:{}", archive.display())),
    );
}

// ---- issue 9: COPY semantics, non-UTF-8 names, context bind mounts, cache mount from= ----

/// Findings 11 and 12 end to end: `COPY d /tmp` keeps the image's 1777 `/tmp`, `COPY d
/// /new` makes `/new` 0755 while `d/sub` keeps its 0700, and a copied symlink keeps its
/// own name (`/bin2/sh`, not `/bin2/busybox`).
#[test]
fn copy_keeps_target_modes_and_symlink_names() {
    needs!("busybox");
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let env = Env::new();
    env.busybox(BUSYBOX);
    let ctx = env.context(
        "modes",
        "FROM busybox:kiln-test AS base\nRUN mkdir -p /tmp && chmod 1777 /tmp\nFROM base\nCOPY d /tmp\nCOPY d /new\nCOPY --from=base /bin/sh /bin2/\n",
    );
    fs::create_dir_all(ctx.join("d/sub")).unwrap();
    fs::write(ctx.join("d/sub/f"), "f").unwrap();
    fs::set_permissions(ctx.join("d"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::set_permissions(ctx.join("d/sub"), fs::Permissions::from_mode(0o700)).unwrap();
    let out = env.path("out");
    env.build_checked(&["-o", &format!("type=local,dest={}", out.display())], &ctx);
    let mode = |p: &str| fs::symlink_metadata(out.join(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode("tmp"), 0o1777);
    assert_eq!(mode("new"), 0o755);
    assert_eq!(mode("tmp/sub"), 0o700);
    assert_eq!(mode("new/sub"), 0o700);
    assert!(out.join("bin2/sh").is_file(), "/bin2/sh is missing");
    assert!(!out.join("bin2/busybox").exists());
}

/// Finding 13: a cache mount's `from=` is part of its key: a second build with the same
/// id seeded from another stage sees its own seed, not the first build's cache.
#[test]
fn cache_mount_from_is_part_of_the_key() {
    needs!("busybox");
    let env = Env::new();
    env.busybox(BUSYBOX);
    let dockerfile = |seed: &str| {
        format!(
            "FROM busybox:kiln-test AS seed\nRUN mkdir /seed && echo {seed} > /seed/who\nFROM busybox:kiln-test\nRUN --mount=type=cache,id=shared,target=/c,from=seed,source=/seed cat /c/who > /got\n"
        )
    };
    for seed in ["first", "second"] {
        let ctx = env.context(seed, &dockerfile(seed));
        let out = env.path(&format!("out-{seed}"));
        env.build_checked(&["-o", &format!("type=local,dest={}", out.display())], &ctx);
        assert_eq!(
            fs::read_to_string(out.join("got")).unwrap().trim(),
            seed,
            "the cache mount of the {seed} build"
        );
    }
}

/// Finding 6: `RUN --mount=type=bind` of the context shows what COPY sees, not what
/// `.dockerignore` excludes, read-only and rw alike, on both snapshotters.
fn context_bind_mount_honours_dockerignore(snapshotter: &str) {
    needs!("busybox");
    let env = Env::new();
    env.busybox(BUSYBOX);
    let ctx = env.context(
        "ignored",
        "FROM busybox:kiln-test\n\
         RUN --mount=type=bind,target=/ctx test ! -e /ctx/.env && test ! -e /ctx/.git/credentials && test ! -e /ctx/.git && test -e /ctx/keep && test -e /ctx/docs/keep.md && test ! -e /ctx/docs/drop.md && echo ok > /ro-ok\n\
         RUN --mount=type=bind,target=/ctx,rw test ! -e /ctx/.env && test -e /ctx/keep && touch /ctx/new && echo ok > /rw-ok\n\
         RUN --mount=type=bind,source=docs,target=/docs ls /docs > /docs-seen\n",
    );
    fs::write(
        ctx.join(".dockerignore"),
        ".env\n.git/\ndocs/*\n!docs/keep.md\n",
    )
    .unwrap();
    fs::write(ctx.join(".env"), "SECRET=1\n").unwrap();
    fs::create_dir_all(ctx.join(".git")).unwrap();
    fs::write(ctx.join(".git/credentials"), "token\n").unwrap();
    fs::write(ctx.join("keep"), "keep\n").unwrap();
    fs::create_dir_all(ctx.join("docs")).unwrap();
    fs::write(ctx.join("docs/keep.md"), "").unwrap();
    fs::write(ctx.join("docs/drop.md"), "").unwrap();
    let out = env.path("out");
    env.build_checked(
        &[
            "--snapshotter",
            snapshotter,
            "-o",
            &format!("type=local,dest={}", out.display()),
        ],
        &ctx,
    );
    assert!(out.join("ro-ok").exists() && out.join("rw-ok").exists());
    assert_eq!(
        fs::read_to_string(out.join("docs-seen")).unwrap(),
        "keep.md\n"
    );
    assert!(
        !ctx.join("new").exists(),
        "rw writes never reach the context"
    );
    // An excluded source is not there for a bind mount either.
    fs::write(
        ctx.join("Dockerfile"),
        "FROM busybox:kiln-test\nRUN --mount=type=bind,source=.env,target=/e cat /e\n",
    )
    .unwrap();
    env.kiln()
        .args(["build", "--progress", "plain", "--snapshotter", snapshotter])
        .arg(&ctx)
        .assert()
        .failure()
        .stderr(predicates::str::contains(
            "\".env\" not found in the build context",
        ));
}

#[test]
fn context_bind_mount_honours_dockerignore_overlay() {
    context_bind_mount_honours_dockerignore("overlay")
}

#[test]
fn context_bind_mount_honours_dockerignore_copy() {
    context_bind_mount_honours_dockerignore("copy")
}

/// Finding 7: a Latin-1 name (`caf\xe9`), at the top and in a subdirectory, goes
/// byte-exact through `COPY . /dst/` and a later stage's `COPY --from`, into the layers.
#[test]
fn non_utf8_names_round_trip_into_layers() {
    needs!("busybox", "umoci");
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let env = Env::new();
    env.busybox(BUSYBOX);
    let ctx = env.context(
        "latin1",
        "FROM busybox:kiln-test AS src\nCOPY . /dst/\nFROM busybox:kiln-test\nCOPY --from=src /dst /again/\n",
    );
    let name = OsStr::from_bytes(b"caf\xe9");
    fs::write(ctx.join(name), "top").unwrap();
    fs::create_dir_all(ctx.join("sub")).unwrap();
    fs::write(ctx.join("sub").join(name), "nested").unwrap();
    let layout = env.path("layout");
    env.build_checked(
        &[
            "-t",
            "latin1:v1",
            "-o",
            &format!("type=oci,dest={}", layout.display()),
        ],
        &ctx,
    );
    let rootfs = umoci_rootfs(&layout, "v1", &env.path("unpacked"));
    assert_eq!(
        fs::read_to_string(rootfs.join("again").join(name)).unwrap(),
        "top"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("again/sub").join(name)).unwrap(),
        "nested"
    );
}

// ---- issue 9: network and untrusted layouts ----

/// A server on 127.0.0.1 that reads each request's head and hands the connection to
/// `serve` (threads end within 20 s); returns its port.
fn issue9_server(serve: fn(&str, &mut std::net::TcpStream)) -> u16 {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(20) {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut head = [0u8; 8192];
                let n = conn.read(&mut head).unwrap_or(0);
                let head = String::from_utf8_lossy(&head[..n]).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                serve(&path, &mut conn);
            });
        }
    });
    port
}

#[test]
fn issue9_pull_from_a_stalled_registry_ends_with_a_clear_error() {
    needs!();
    let port = issue9_server(|_, _| std::thread::sleep(std::time::Duration::from_secs(20)));
    let env = Env::new();
    let start = std::time::Instant::now();
    let out = env
        .kiln()
        .env("KILN_NETWORK_TIMEOUT", "1s")
        .args(["pull", "-q", &format!("127.0.0.1:{port}/stall/app:1")])
        .output()
        .unwrap();
    let took = start.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let want = format!(
        "pull 127.0.0.1:{port}/stall/app:1: registry 127.0.0.1:{port} stalled: \
         no response for 1s (gave up after 4 attempt(s))"
    );
    assert!(stderr.contains(&want), "{stderr}\nwanted: {want}");
    // Four attempts of a second and 3.5 s of backoff.
    assert!(took < std::time::Duration::from_secs(15), "took {took:?}");
}

/// A base that fails to resolve is asked for once: when the build's bases are resolved
/// at once, and not again by the conversion, which reports that error at its `FROM`.
#[test]
fn a_base_that_fails_to_resolve_is_asked_for_once() {
    needs!();
    static ASKED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let port = issue9_server(|path, conn| {
        use std::io::Write;
        ASKED.lock().unwrap().push(path.to_owned());
        let body = r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#;
        let _ = write!(
            conn,
            "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    });
    let env = Env::new();
    let ctx = env.context(
        "two-bases",
        &format!(
            "FROM 127.0.0.1:{port}/missing/a:1 AS a\nRUN true\n\
             FROM 127.0.0.1:{port}/missing/b:1\nCOPY --from=a /x /x\n"
        ),
    );
    let built = env.build(&ctx, &[]);
    let stderr = built.stderr;
    assert!(!built.ok, "{stderr}");
    let want = format!("Dockerfile:1:1: failed to resolve image \"127.0.0.1:{port}/missing/a:1\"");
    assert!(stderr.contains(&want), "{stderr}\nwanted: {want}");
    assert!(stderr.contains("HTTP 404"), "{stderr}");
    let mut asked = ASKED.lock().unwrap().clone();
    asked.sort();
    assert_eq!(
        asked,
        ["/v2/missing/a/manifests/1", "/v2/missing/b/manifests/1"],
        "{stderr}"
    );
}

#[test]
fn issue9_add_url_from_a_trickling_server_ends_with_a_clear_error() {
    needs!();
    use std::io::Write;
    let port = issue9_server(|_, conn| {
        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n");
        for _ in 0..60 {
            if conn.write_all(b"x").is_err() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
    });
    let env = Env::new();
    let url = format!("http://127.0.0.1:{port}/slow.bin");
    let ctx = env.context("addslow", &format!("FROM scratch\nADD {url} /slow.bin\n"));
    let start = std::time::Instant::now();
    let out = env
        .kiln()
        .args(["--network-timeout", "1s", "build", "--progress", "plain"])
        .arg(&ctx)
        .output()
        .unwrap();
    let took = start.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("ADD {url}: server stalled: only ")),
        "{stderr}"
    );
    assert!(stderr.contains("(gave up after 3 attempts)"), "{stderr}");
    assert!(took < std::time::Duration::from_secs(20), "took {took:?}");
}

/// Writes an OCI layout (FROM scratch + one file) with `kiln build -o type=oci` and
/// returns it with its layer blob's path.
fn issue9_layout(env: &Env) -> (PathBuf, PathBuf) {
    let ctx = env.context("layout-src", "FROM scratch\nCOPY hello.txt /hello.txt\n");
    fs::write(ctx.join("hello.txt"), "hello\n").unwrap();
    let layout = env.path("layout");
    env.build_checked(
        &["--output", &format!("type=oci,dest={}", layout.display())],
        &ctx,
    );
    let index: Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let hex = |d: &Value| d["digest"].as_str().unwrap()[7..].to_string();
    let manifest: Value = serde_json::from_slice(
        &fs::read(
            layout
                .join("blobs/sha256")
                .join(hex(&index["manifests"][0])),
        )
        .unwrap(),
    )
    .unwrap();
    let blob = layout
        .join("blobs/sha256")
        .join(hex(&manifest["layers"][0]));
    (layout, blob)
}

/// Builds `FROM oci-layout://LAYOUT` in a fresh store (so every blob is read from the
/// layout): it must fail in time, with `want` in its error.
fn issue9_build_from_layout_fails(layout: &Path, want: &str) {
    let env = Env::new();
    let ctx = env.context(
        "from-layout",
        &format!("FROM oci-layout://{}\n", layout.display()),
    );
    let start = std::time::Instant::now();
    let out = env
        .kiln()
        .args(["build", "--progress", "plain"])
        .arg(&ctx)
        .output()
        .unwrap();
    let took = start.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(want), "{stderr}\nwanted: {want}");
    // Reading /dev/zero until memory runs out takes far longer than this.
    assert!(took < std::time::Duration::from_secs(10), "took {took:?}");
}

#[test]
fn issue9_layout_index_symlinked_to_dev_zero_is_refused() {
    needs!();
    let env = Env::new();
    let (layout, _) = issue9_layout(&env);
    fs::remove_file(layout.join("index.json")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", layout.join("index.json")).unwrap();
    issue9_build_from_layout_fails(
        &layout,
        &format!(
            "{}/index.json is or goes through a symbolic link",
            layout.display()
        ),
    );
}

#[test]
fn issue9_layout_blob_symlinked_to_dev_zero_is_refused() {
    needs!();
    let env = Env::new();
    let (layout, blob) = issue9_layout(&env);
    fs::remove_file(&blob).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &blob).unwrap();
    issue9_build_from_layout_fails(
        &layout,
        &format!("{} is or goes through a symbolic link", blob.display()),
    );
}

#[test]
fn issue9_layout_blob_larger_than_its_descriptor_is_refused() {
    needs!();
    let env = Env::new();
    let (layout, blob) = issue9_layout(&env);
    let mut f = fs::OpenOptions::new().append(true).open(&blob).unwrap();
    std::io::Write::write_all(&mut f, &[0u8; 1 << 20]).unwrap();
    issue9_build_from_layout_fails(
        &layout,
        &format!("{} is larger than its descriptor's", blob.display()),
    );
}

// ---- issue 9: frontend ----

/// Regression (issue 9, finding 14): a `RUN <<EOF` whose body starts with `#!` ran under
/// `/bin/sh -c`, which fails on an awk program; it is run by the interpreter named, from
/// a file under `/dev/pipes/` that does not end up in the layer. Both snapshotters.
#[test]
fn heredoc_with_shebang_runs_its_interpreter() {
    needs!("busybox");
    let env = Env::new();
    env.busybox(BUSYBOX);
    let ctx = env.context(
        "shebang",
        "FROM busybox:kiln-test\nRUN <<EOF\n#!/bin/awk -f\nBEGIN { print \"hello\" > \"/out\" }\nEOF\n",
    );
    for snapshotter in ["overlay", "copy"] {
        let dest = env.path(&format!("shebang-{snapshotter}"));
        env.build_checked(
            &[
                "--snapshotter",
                snapshotter,
                "--no-cache",
                "-o",
                &format!("type=local,dest={}", dest.display()),
            ],
            &ctx,
        );
        assert_eq!(
            fs::read_to_string(dest.join("out")).unwrap(),
            "hello\n",
            "{snapshotter}"
        );
        assert!(!dest.join("dev/pipes").exists(), "{snapshotter}");
    }
}

/// Issue 10: resolving a `FROM` fetches its manifest and config only. A build whose steps
/// never read the base's bytes (`COPY --link`, output to the store) downloads no layer,
/// neither does the same build all cached; a push, and a RUN, fetch the layers, shown as
/// BuildKit-like blob lines by `--progress plain`.
#[test]
fn issue10_registry_layers_are_fetched_only_when_needed() {
    needs!("busybox", "skopeo", "docker-registry");
    let reg = Registry::start(&Auth::None);
    let env = Env::new();
    env.busybox(BUSYBOX);
    let base = format!("{}:1", reg.name("lazy/busybox"));
    env.kiln()
        .args(["tag", "busybox:kiln-test", &base])
        .assert()
        .success();
    env.kiln().args(["push", &base]).assert().success();
    let manifest: Value = serde_json::from_str(&run_ok(Proc::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{base}"),
    ])))
    .unwrap();
    let digest = |v: &Value| kiln_cache::Digest::parse(v["digest"].as_str().unwrap()).unwrap();
    let layers: Vec<kiln_cache::Digest> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(digest)
        .collect();
    assert!(!layers.is_empty());
    let config = digest(&manifest["config"]);

    let env2 = Env::new();
    let store = || kiln_cache::Store::open(env2.root()).unwrap();
    let ctx = env2.context("lazy", &format!("FROM {base}\nCOPY --link f /f\n"));
    fs::write(ctx.join("f"), "f\n").unwrap();
    let app = format!("{}:1", reg.name("lazy/app"));
    let build = |ctx: &Path| {
        let out = env2
            .kiln()
            .args(["build", "--progress", "plain", "-t", &app])
            .arg(ctx)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{err}");
        err
    };
    let err = build(&ctx);
    assert!(err.contains(&format!("pulling {base}")), "{err}");
    assert!(store().has_blob(&config), "the config is fetched");
    for l in &layers {
        assert!(!store().has_blob(l), "layer {l} was downloaded:\n{err}");
        assert!(!err.contains(l.as_str()), "{err}");
    }
    // The same build again: all cached (a record over the unfetched base is a hit),
    // still no layer.
    let (_, report) = env2.build_checked(&["-t", &app], &ctx);
    let steps = steps(&report);
    assert!(
        !steps.is_empty() && steps.iter().all(|(_, cached)| *cached),
        "{steps:?}"
    );
    for l in &layers {
        assert!(!store().has_blob(l), "layer {l} was downloaded");
    }

    // Pushing the image to the same registry mounts the base's layers from their
    // repository: still not downloaded; the registry serves what kiln computed.
    let out = env2.kiln().args(["push", &app]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        skopeo_digest(&app)
    );
    for l in &layers {
        assert!(!store().has_blob(l), "push downloaded {l}:\n{err}");
        assert!(
            err.contains(&format!("{l} mounted")),
            "no blob line for {l}:\n{err}"
        );
    }
    // Exporting needs the bytes: fetched now.
    let oci = env2.path("app.tar");
    env2.build_checked(&["-o", &format!("type=oci,dest={}", oci.display())], &ctx);
    for l in &layers {
        assert!(store().has_blob(l), "the export did not fetch {l}");
    }

    // A RUN needs the base's bytes: its step fetches them, with blob lines.
    let env3 = Env::new();
    let ctx = env3.context("run", &format!("FROM {base}\nRUN echo ran > /ran\n"));
    let out = env3
        .kiln()
        .args(["build", "--progress", "plain"])
        .arg(&ctx)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let store3 = kiln_cache::Store::open(env3.root()).unwrap();
    for l in &layers {
        // Fetched for the RUN (the blob lines below), unpacked, and its blob dropped
        // at the end of the build: it is fetched again when needed.
        assert!(!store3.has_blob(l), "{l} kept twice");
        assert!(
            err.lines().any(|line| line.starts_with('#')
                && line.contains(l.as_str())
                && line.ends_with(" done")),
            "no blob line for {l}:\n{err}"
        );
    }

    // Two stages on the same base run at the same time: the base is fetched once.
    let env4 = Env::new();
    let ctx = env4.context(
        "twice",
        &format!(
            "FROM {base} AS a\nRUN echo a > /a\nFROM {base} AS b\nRUN echo b > /b\n\
             FROM scratch\nCOPY --from=a /a /a\nCOPY --from=b /b /b\n"
        ),
    );
    let out = env4
        .kiln()
        .args(["build", "--progress", "plain"])
        .arg(&ctx)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    for l in &layers {
        let fetched = err
            .lines()
            .filter(|line| line.contains(l.as_str()) && line.ends_with(" done"))
            .count();
        assert_eq!(fetched, 1, "{l} fetched {fetched} times:\n{err}");
    }

    // Fetched ahead, as a build that reads its bases resolves them: the layers come in
    // beside the config, before any step asks for them. Resolving alone fetches none;
    // and a layer the store already knows where to fetch from is left there.
    let resolve = |root: &Path, prefetch: bool, always: bool| {
        let settings = kiln_builder::remote::RegistrySettings {
            always_pull: always,
            ..Default::default()
        };
        let remote = std::sync::Arc::new(kiln_builder::remote::Remote::new(settings));
        let store = kiln_cache::Store::open(root).unwrap();
        let images = kiln_builder::images::ImageStore::new(&store)
            .with_remote(remote, std::sync::Arc::new(kiln_solver::NoReporter))
            .with_prefetch(prefetch);
        images.get(&base, &kiln_ops::Platform::host()).unwrap();
        images.join_prefetches();
        layers.iter().filter(|l| store.has_blob(l)).count()
    };
    let (lazy, ahead) = (Env::new(), Env::new());
    assert_eq!(
        resolve(&lazy.root(), false, false),
        0,
        "fetched by resolving"
    );
    assert_eq!(
        resolve(&ahead.root(), true, false),
        layers.len(),
        "not fetched ahead"
    );
    assert_eq!(
        resolve(&lazy.root(), true, true),
        0,
        "a known layer fetched ahead"
    );
}
