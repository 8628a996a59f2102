//! End-to-end builds: real images written to a temporary store, checked with skopeo, umoci
//! and oci-image-tool, and by reading back what kiln wrote. They need root (file owners)
//! and the tools `.ci/install.sh` installs; CI always has both.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command as Proc;

use assert_cmd::Command;
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

struct Env {
    tmp: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            tmp: tempfile::tempdir().unwrap(),
        }
    }
    fn root(&self) -> PathBuf {
        self.tmp.path().join("store")
    }
    fn path(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }
    fn kiln(&self) -> Command {
        let mut c = Command::cargo_bin("kiln").unwrap();
        c.env("KILN_ROOT", self.root())
            .env_remove("SOURCE_DATE_EPOCH");
        c
    }
    /// Builds and returns (stdout, report).
    fn build(&self, args: &[&str], context: &Path) -> (String, Value) {
        let report = self.path("report.json");
        let out = self
            .kiln()
            .args(["build", "--progress", "plain", "--report"])
            .arg(&report)
            .args(args)
            .arg(context)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kiln build {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: Value = serde_json::from_slice(&fs::read(&report).unwrap()).unwrap();
        (
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            report,
        )
    }
    /// Builds the busybox base as `busybox:kiln-test`.
    fn busybox(&self) {
        self.busybox_at(None)
    }
    /// Builds the busybox base, with `SOURCE_DATE_EPOCH` when given.
    fn busybox_at(&self, epoch: Option<&str>) {
        let ctx = self.path("busybox");
        copy_dir(&repo().join("testdata/bases/busybox"), &ctx);
        let st = Proc::new("bash")
            .arg(repo().join("testdata/bases/busybox/make-rootfs.sh"))
            .arg(ctx.join("rootfs"))
            .status()
            .unwrap();
        assert!(
            st.success(),
            "make-rootfs.sh failed (is busybox-static installed?)"
        );
        let mut cmd = self.kiln();
        if let Some(e) = epoch {
            cmd.env("SOURCE_DATE_EPOCH", e);
        }
        cmd.args(["build", "--progress", "quiet", "-t", "busybox:kiln-test"])
            .arg(&ctx)
            .assert()
            .success();
    }
    /// A context for app1 or app2 of the seed scenario.
    fn app(&self, name: &str) -> PathBuf {
        let ctx = self.path(name);
        let apps = repo().join("testdata/apps");
        fs::create_dir_all(&ctx).unwrap();
        fs::copy(apps.join("Dockerfile"), ctx.join("Dockerfile")).unwrap();
        copy_dir(&apps.join("shared"), &ctx.join("shared"));
        copy_dir(&apps.join(name).join("src"), &ctx.join("src"));
        ctx
    }
}

fn copy_dir(from: &Path, to: &Path) {
    let st = Proc::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

fn run_ok(cmd: &mut Proc) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
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
    let env = Env::new();
    env.busybox();
    let (_, r1) = env.build(&["-t", "app1:latest"], &env.app("app1"));
    assert!(steps(&r1).iter().all(|(_, cached)| !cached), "{r1}");
    let (_, r2) = env.build(&["-t", "app2:latest"], &env.app("app2"));
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
    // busybox (1 layer) + shared layers + 2 app layers + 3 configs + 3 manifests.
    let shared = l1.len() - 1;
    assert_eq!(
        blobs,
        1 + (shared - 1) + 2 + 3 + 3,
        "every layer blob is stored once"
    );
}

#[test]
fn rebuilds_hit_the_cache_until_content_changes() {
    let env = Env::new();
    env.busybox();
    let ctx = env.app("app1");
    let (d1, _) = env.build(&["-t", "a:1"], &ctx);
    let (d2, r2) = env.build(&["-t", "a:1"], &ctx);
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
    let (_, r3) = env.build(&["-t", "a:1"], &ctx);
    assert!(
        steps(&r3).iter().all(|(_, c)| *c),
        "touch keeps the cache: {r3}"
    );
    // Changing one byte rebuilds the COPY of src/ only.
    fs::write(&f, "changed\n").unwrap();
    let (_, r4) = env.build(&["-t", "a:1"], &ctx);
    let rebuilt: Vec<String> = steps(&r4)
        .into_iter()
        .filter(|(_, c)| !c)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(rebuilt, ["COPY src/ ./src/"]);
    // --no-cache rebuilds everything, COPY included.
    let (_, r5) = env.build(&["--no-cache", "-t", "a:1"], &ctx);
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
    let env = Env::new();
    env.busybox();
    let ctx = env.app("app1");
    let layout = env.path("layout");
    let archive = env.path("image.tar");
    let docker = env.path("docker.tar");
    let local = env.path("local");
    env.build(
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
    assert_eq!(inspect["Layers"].as_array().unwrap().len(), 5);
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
    let a = Env::new();
    let b = Env::new();
    let mut digests = Vec::new();
    for env in [&a, &b] {
        env.busybox_at(Some("1700000000"));
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
    let env = Env::new();
    env.busybox();
    env.build(&["-t", "app1:latest"], &env.app("app1"));
    let images = String::from_utf8(env.kiln().arg("images").output().unwrap().stdout).unwrap();
    assert!(images.lines().next().unwrap().starts_with("REPOSITORY"));
    assert!(
        images.contains("app1") && images.contains("busybox"),
        "{images}"
    );
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
    let env = Env::new();
    let ctx = env.path("bad");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch AS first\nCOPY missing.txt /x\n",
    )
    .unwrap();
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
    let env = Env::new();
    env.busybox();
    let layout = env.path("base-layout");
    env.build(
        &[
            "--output",
            &format!("type=oci,dest={}", layout.display()),
            "-t",
            "base:1",
        ],
        &env.app("app1"),
    );
    let ctx = env.path("multi");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM oci-layout://{}:1 AS base\nFROM scratch\nCOPY --from=base /opt/app/src/main.txt /main.txt\nCOPY --from=base /bin/busybox /bin/\n",
            layout.display()
        ),
    )
    .unwrap();
    let local = env.path("out");
    env.build(
        &["--output", &format!("type=local,dest={}", local.display())],
        &ctx,
    );
    assert_eq!(
        fs::read_to_string(local.join("main.txt")).unwrap(),
        "this is app1\n"
    );
    assert!(local.join("bin/busybox").is_file());
}

/// A static file server on 127.0.0.1 (python3's http.server), stopped on drop.
struct FileServer {
    child: std::process::Child,
    port: u16,
}

impl FileServer {
    fn start(dir: &Path) -> FileServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Proc::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        FileServer { child, port }
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn add_url_with_checksum() {
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
    let ctx = env.path("ctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM scratch\nADD --checksum={sum} {url} /opt/\nADD --chmod=755 {url} /bin/tool\n"
        ),
    )
    .unwrap();
    let local = env.path("out");
    let (_, r1) = env.build(
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
    let (_, r2) = env.build(&[], &ctx);
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
    let (_, r3) = env.build(&[], &ctx);
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
        let mut child = Proc::new(assert_cmd::cargo::cargo_bin("kiln"))
            .env("KILN_ROOT", env.root())
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
    let (_, r) = env.build(&["-t", "big:1"], &ctx);
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
