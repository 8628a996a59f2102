//! Multi-platform builds (`--platform linux/amd64,linux/arm64`): an OCI image index in
//! the store and in the outputs, per-platform `TARGETARCH`, `type=local` per platform,
//! `type=docker` refused; a `RUN` for a foreign architecture fails before anything runs
//! without an emulator, and runs through qemu-user-static when binfmt_misc has it (an
//! arm64 busybox base from Debian's busybox-static:arm64, see .ci/install.sh).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;
use kiln_test_support::{
    Workspace, busybox_context, repo_root, require, require_root, require_tool,
};
use serde_json::Value;

const ARM64_BUSYBOX: &str = "/opt/kiln-test/arm64/busybox";
const BINFMT: &str = "/proc/sys/fs/binfmt_misc";

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

/// A blob of an OCI layout, as JSON.
fn layout_json(dir: &Path, digest: &str) -> Value {
    let hex = digest.trim_start_matches("sha256:");
    serde_json::from_slice(&fs::read(dir.join("blobs/sha256").join(hex)).unwrap()).unwrap()
}

/// COPY-only platforms need no emulation: each gets its own TARGETARCH; the tag names
/// an index (shown by `kiln images`), the OCI layout holds it, `type=local` writes a
/// directory per platform, and `type=docker` is refused before anything is built.
#[test]
fn copy_only_platforms_make_an_index() {
    require_root!();
    let ws = Workspace::new();
    let store = ws.path("store");
    let ctx = ws.context(
        "multi",
        "FROM scratch\nARG TARGETARCH\nARG TARGETPLATFORM\nCOPY ${TARGETARCH}.txt /arch.txt\n",
    );
    fs::write(ctx.join("amd64.txt"), "amd64\n").unwrap();
    fs::write(ctx.join("arm64.txt"), "arm64\n").unwrap();
    let oci = ws.path("oci");
    let local = ws.path("local");
    let out = ok(
        kiln(&store)
            .args([
                "build",
                "--progress",
                "plain",
                "--platform",
                "linux/amd64,linux/arm64",
            ])
            .args(["-t", "multi:1", "--iidfile"])
            .arg(ws.path("iid"))
            .arg("--metadata-file")
            .arg(ws.path("meta.json"))
            .arg("--trace")
            .arg(ws.path("trace.json"))
            .arg("-o")
            .arg(format!("type=oci,dest={}", oci.display()))
            .arg("-o")
            .arg(format!("type=local,dest={}", local.display()))
            .arg(&ctx)
            .output()
            .unwrap(),
        "build",
    );
    let index_digest = out.trim().to_string();
    assert!(index_digest.starts_with("sha256:"), "{out}");
    // The image ID of a multi-platform image is its index's digest (buildx's
    // containerimage.digest).
    assert_eq!(fs::read_to_string(ws.path("iid")).unwrap(), index_digest);
    let meta: Value = serde_json::from_slice(&fs::read(ws.path("meta.json")).unwrap()).unwrap();
    assert_eq!(meta["containerimage.digest"], index_digest.as_str());
    assert_eq!(
        meta["containerimage.descriptor"]["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    assert_eq!(meta["image.name"], "multi:1");
    for p in ["linux_amd64", "linux_arm64"] {
        let t: Value =
            serde_json::from_slice(&fs::read(ws.path(&format!("trace.{p}.json"))).unwrap())
                .unwrap();
        assert!(t.is_array() || t["traceEvents"].is_array(), "{t}");
    }
    assert_eq!(meta["kiln.cache"]["steps"], 2);
    assert_eq!(
        fs::read_to_string(local.join("linux_amd64/arch.txt")).unwrap(),
        "amd64\n"
    );
    assert_eq!(
        fs::read_to_string(local.join("linux_arm64/arch.txt")).unwrap(),
        "arm64\n"
    );

    // The layout: index.json names the image index, which lists both platforms.
    let top: Value = serde_json::from_slice(&fs::read(oci.join("index.json")).unwrap()).unwrap();
    let entry = &top["manifests"][0];
    assert_eq!(
        entry["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    assert_eq!(entry["digest"], index_digest.as_str());
    assert_eq!(
        entry["annotations"]["org.opencontainers.image.ref.name"],
        "1"
    );
    let index = layout_json(&oci, &index_digest);
    let platforms: Vec<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["platform"]["os"].as_str().unwrap(),
                m["platform"]["architecture"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);
    for m in index["manifests"].as_array().unwrap() {
        let manifest = layout_json(&oci, m["digest"].as_str().unwrap());
        let config = layout_json(&oci, manifest["config"]["digest"].as_str().unwrap());
        assert_eq!(config["architecture"], m["platform"]["architecture"]);
    }
    if let Some(skopeo) = kiln_test_support::require::find_tool("skopeo") {
        let o = std::process::Command::new(skopeo)
            .args(["inspect", "--raw"])
            .arg(format!("oci:{}:1", oci.display()))
            .output()
            .unwrap();
        let raw: Value = serde_json::from_str(&ok(o, "skopeo inspect")).unwrap();
        assert_eq!(raw["manifests"].as_array().unwrap().len(), 2);
    }

    // The store: the tag names the index; `kiln images` lists it.
    let images = ok(kiln(&store).args(["images"]).output().unwrap(), "images");
    assert!(
        images
            .lines()
            .any(|l| l.starts_with("multi ") && l.contains(" 1 ")),
        "{images}"
    );
    let o = kiln(&store)
        .args(["images", "--format", "{{.Digest}}"])
        .output()
        .unwrap();
    assert_eq!(ok(o, "images").trim(), index_digest);

    // `kiln save --format oci` keeps the index whole; `kiln load` brings it back.
    let saved = ws.path("multi.tar");
    ok(
        kiln(&store)
            .args([
                "save",
                "--format",
                "oci",
                "-o",
                saved.to_str().unwrap(),
                "multi:1",
            ])
            .output()
            .unwrap(),
        "save",
    );
    let fresh = ws.path("fresh");
    let out = ok(
        kiln(&fresh)
            .args(["load", "-i", saved.to_str().unwrap()])
            .output()
            .unwrap(),
        "load",
    );
    assert_eq!(out, "Loaded image: multi:1\n");
    let o = kiln(&fresh)
        .args(["images", "--format", "{{.Digest}}"])
        .output()
        .unwrap();
    assert_eq!(ok(o, "images").trim(), index_digest);
    // A Docker archive holds the host's platform only.
    let docker = ws.path("multi-docker.tar");
    ok(
        kiln(&store)
            .args(["save", "-o", docker.to_str().unwrap(), "multi:1"])
            .output()
            .unwrap(),
        "save",
    );
    let fresh2 = ws.path("fresh2");
    ok(
        kiln(&fresh2)
            .args(["load", "-i", docker.to_str().unwrap()])
            .output()
            .unwrap(),
        "load",
    );
    let v: Value = serde_json::from_str(&ok(
        kiln(&fresh2).args(["inspect", "multi:1"]).output().unwrap(),
        "inspect",
    ))
    .unwrap();
    assert_eq!(
        v[0]["Architecture"],
        kiln_ops::Platform::host().architecture()
    );

    // A Docker archive cannot hold an index.
    let o = kiln(&store)
        .args(["build", "--platform", "linux/amd64,linux/arm64", "-o"])
        .arg(format!("type=docker,dest={}", ws.path("d.tar").display()))
        .arg(&ctx)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("type=docker cannot hold a multi-platform image"),
        "{err}"
    );
}

/// Without an emulator registered, a RUN for a foreign architecture fails before any
/// step runs, naming what to install. (The first architecture without a qemu entry:
/// .ci/install.sh registers aarch64 only, but a machine may have them all.)
#[test]
fn foreign_run_without_emulator_fails_early() {
    require_root!();
    require_tool!("busybox");
    let unregistered = [
        ("s390x", "s390x"),
        ("riscv64", "riscv64"),
        ("ppc64le", "ppc64le"),
        ("mips64le", "mips64el"),
        ("loong64", "loongarch64"),
    ]
    .into_iter()
    .find(|(_, q)| !Path::new(BINFMT).join(format!("qemu-{q}")).exists());
    require!(
        unregistered.is_some(),
        "every architecture tried has a qemu entry in binfmt_misc here"
    );
    let (arch, qemu) = unregistered.unwrap();
    let platform = format!("linux/{arch}");
    let ws = Workspace::new();
    let store = ws.path("store");
    let base = ws.path("busybox");
    busybox_context(&base);
    kiln(&store)
        .args(["build", "-q", "-t", "busybox:kiln-test"])
        .arg(&base)
        .assert()
        .success();
    let ctx = ws.context(
        "app",
        "FROM busybox:kiln-test\nCOPY a /a\nRUN echo ran > /ran\n",
    );
    fs::write(ctx.join("a"), "a").unwrap();
    let o = kiln(&store)
        .args(["build", "--progress", "plain", "--platform", &platform])
        .arg(&ctx)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&format!("RUN for {platform}")), "{err}");
    assert!(
        err.contains(&format!("no qemu-{qemu} is registered in binfmt_misc")),
        "{err}"
    );
    assert!(
        err.contains("apt-get install qemu-user-static binfmt-support"),
        "{err}"
    );
    // Early: not even the COPY before it ran.
    assert!(!err.contains("DONE"), "a step ran before the check:\n{err}");
}

/// The arm64 busybox base's context (Debian's busybox-static:arm64).
fn arm64_context(dest: &Path) {
    let script = repo_root().join("testdata/bases/busybox-arm64/make-rootfs.sh");
    kiln_test_support::copy_dir(&repo_root().join("testdata/bases/busybox-arm64"), dest);
    let st = std::process::Command::new("bash")
        .arg(script)
        .arg(dest.join("rootfs"))
        .status()
        .unwrap();
    assert!(st.success(), "make-rootfs.sh for arm64 failed");
}

/// A base for both platforms (an index built here: each platform's rootfs chosen by
/// TARGETARCH), then an app whose RUN runs natively for amd64 and through qemu for
/// arm64: each platform's output says its machine.
#[test]
fn run_under_arm64_through_qemu() {
    require_root!();
    require_tool!("busybox");
    require!(
        Path::new(ARM64_BUSYBOX).is_file(),
        "no arm64 busybox at /opt/kiln-test/arm64/busybox (run .ci/install.sh as root)"
    );
    require!(
        fs::read_to_string(Path::new(BINFMT).join("qemu-aarch64"))
            .is_ok_and(|s| s.starts_with("enabled")),
        "qemu-aarch64 is not registered in binfmt_misc (apt-get install qemu-user-static; see .ci/install.sh)"
    );
    require!(
        kiln_ops::Platform::host().architecture() == "amd64",
        "this test builds amd64 natively"
    );
    let ws = Workspace::new();
    let store = ws.path("store");
    let base: PathBuf = ws.path("base");
    fs::create_dir_all(&base).unwrap();
    busybox_context(&ws.path("amd64"));
    fs::rename(ws.path("amd64/rootfs"), base.join("rootfs-amd64")).unwrap();
    arm64_context(&ws.path("arm64"));
    fs::rename(ws.path("arm64/rootfs"), base.join("rootfs-arm64")).unwrap();
    fs::write(
        base.join("Dockerfile"),
        "FROM scratch\nARG TARGETARCH\nCOPY rootfs-${TARGETARCH}/ /\nENV PATH=/bin\n",
    )
    .unwrap();
    ok(
        kiln(&store)
            .args([
                "build",
                "-q",
                "--platform",
                "linux/amd64,linux/arm64",
                "-t",
                "bb:multi",
            ])
            .arg(&base)
            .output()
            .unwrap(),
        "base build",
    );
    let app = ws.context(
        "app",
        "FROM bb:multi\nARG TARGETPLATFORM\nRUN echo \"$TARGETPLATFORM $(uname -m)\" > /m\n",
    );
    let local = ws.path("out");
    ok(
        kiln(&store)
            .args([
                "build",
                "--progress",
                "plain",
                "--platform",
                "linux/amd64,linux/arm64",
                "-o",
            ])
            .arg(format!("type=local,dest={}", local.display()))
            .arg(&app)
            .output()
            .unwrap(),
        "app build",
    );
    assert_eq!(
        fs::read_to_string(local.join("linux_amd64/m")).unwrap(),
        "linux/amd64 x86_64\n"
    );
    assert_eq!(
        fs::read_to_string(local.join("linux_arm64/m")).unwrap(),
        "linux/arm64 aarch64\n"
    );
}

/// `--push` pushes the index and each platform's manifest; a fresh store pulls each
/// platform from it.
#[test]
fn push_sends_the_index() {
    require_root!();
    require_tool!("docker-registry");
    let reg = kiln_test_support::Registry::start(&kiln_test_support::Auth::None);
    let ws = Workspace::new();
    let store = ws.path("store");
    let ctx = ws.context(
        "multi",
        "FROM scratch\nARG TARGETARCH\nCOPY ${TARGETARCH}.txt /arch.txt\n",
    );
    fs::write(ctx.join("amd64.txt"), "amd64\n").unwrap();
    fs::write(ctx.join("arm64.txt"), "arm64\n").unwrap();
    let name = format!("{}:1", reg.name("multi/app"));
    let index = ok(
        kiln(&store)
            .args([
                "build",
                "-q",
                "--platform",
                "linux/amd64,linux/arm64",
                "--push",
                "-t",
                &name,
            ])
            .arg(&ctx)
            .output()
            .unwrap(),
        "build --push",
    );
    let fresh = ws.path("fresh");
    for (platform, arch) in [("linux/arm64", "arm64"), ("linux/amd64", "amd64")] {
        ok(
            kiln(&fresh)
                .args(["pull", "-q", "--platform", platform, &name])
                .output()
                .unwrap(),
            "pull",
        );
        let v: Value = serde_json::from_str(&ok(
            kiln(&fresh).args(["inspect", &name]).output().unwrap(),
            "inspect",
        ))
        .unwrap();
        assert_eq!(v[0]["Architecture"], arch);
    }
    // The registry serves the very index kiln built.
    let skopeo = require_tool!("skopeo");
    let o = std::process::Command::new(skopeo)
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{name}"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(kiln_cache::sha256_of(&o.stdout).to_string(), index.trim());
    let raw: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(raw["manifests"].as_array().unwrap().len(), 2);
}

/// The names of a trace file's complete spans (`ph: X`).
fn span_names(trace: &Path) -> Vec<String> {
    let t: Value = serde_json::from_slice(&fs::read(trace).unwrap()).unwrap();
    let events = if t.is_array() {
        t.as_array().unwrap().clone()
    } else {
        t["traceEvents"].as_array().unwrap().clone()
    };
    events
        .iter()
        .filter_map(|e| e["name"].as_str().map(str::to_string))
        .collect()
}

/// In a multi-platform build each step's label names its platform, as BuildKit's
/// (`[linux/arm64 stage-1 1/1] COPY ...`, a cross stage `[linux/amd64->arm64 build 1/1]`),
/// in the plain progress and in the trace's span names; a single-platform build's
/// labels name none. A base image of one platform used for another warns
/// (InvalidBaseImagePlatform) once per base and platform, and the build goes on.
#[test]
fn multi_platform_labels_and_base_platform_warning() {
    require_root!();
    require_tool!("busybox");
    require!(
        kiln_ops::Platform::host().architecture() == "amd64",
        "the base built here is amd64"
    );
    let ws = Workspace::new();
    let store = ws.path("store");
    let base = ws.path("busybox");
    busybox_context(&base);
    ok(
        kiln(&store)
            .args(["build", "-q", "-t", "busybox:kiln-test"])
            .arg(&base)
            .output()
            .unwrap(),
        "base build",
    );
    let ctx = ws.context(
        "app",
        "FROM --platform=$BUILDPLATFORM busybox:kiln-test AS build\nCOPY a /a\n\
         FROM busybox:kiln-test\nCOPY --from=build /a /b\n",
    );
    fs::write(ctx.join("a"), "a").unwrap();
    let o = kiln(&store)
        .args([
            "build",
            "--progress",
            "plain",
            "--platform",
            "linux/amd64,linux/arm64",
            "--trace",
        ])
        .arg(ws.path("t.json"))
        .arg(&ctx)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    for label in [
        "[linux/amd64 internal] FROM busybox:kiln-test",
        "[linux/amd64 build 1/1] COPY a /a",
        "[linux/amd64 stage-1 1/1] COPY --from=build /a /b",
        "[linux/arm64 internal] FROM busybox:kiln-test",
        "[linux/amd64->arm64 build 1/1] COPY a /a",
        "[linux/arm64 stage-1 1/1] COPY --from=build /a /b",
    ] {
        assert!(
            err.contains(&format!(" {label}\n")),
            "no {label:?} in:\n{err}"
        );
    }
    let spans = span_names(&ws.path("t.linux_arm64.json"));
    assert!(
        spans
            .iter()
            .any(|s| s == "[linux/arm64 stage-1 1/1] COPY --from=build /a /b"),
        "{spans:?}"
    );
    // The amd64 base used for arm64 (line 3; the cross stage asks for amd64): one
    // warning, not an error.
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("WARNING")).collect();
    assert_eq!(
        warnings,
        [
            "WARNING: InvalidBaseImagePlatform: Base image busybox:kiln-test was pulled with platform \"linux/amd64\", expected \"linux/arm64\" for current build (line 3)"
        ],
        "{err}"
    );

    // A step failing for one platform names it (there is no arm64.txt).
    fs::write(ctx.join("amd64.txt"), "amd64").unwrap();
    fs::write(
        ctx.join("Dockerfile"),
        "FROM busybox:kiln-test\nARG TARGETARCH\nCOPY ${TARGETARCH}.txt /arch.txt\n",
    )
    .unwrap();
    let o = kiln(&store)
        .args([
            "build",
            "--progress",
            "plain",
            "--platform",
            "linux/amd64,linux/arm64",
        ])
        .arg(&ctx)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        err.contains(
            "error: linux/arm64: stage 0, Dockerfile:3: COPY ${TARGETARCH}.txt /arch.txt: "
        ),
        "{err}"
    );
    fs::write(
        ctx.join("Dockerfile"),
        "FROM --platform=$BUILDPLATFORM busybox:kiln-test AS build\nCOPY a /a\n\
         FROM busybox:kiln-test\nCOPY --from=build /a /b\n",
    )
    .unwrap();

    // One platform: no platform in the labels, no warning for the host's own base.
    let o = kiln(&store)
        .args(["build", "--progress", "plain"])
        .arg(&ctx)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(" [stage-1 1/1] COPY --from=build /a /b\n"),
        "{err}"
    );
    assert!(!err.contains("linux/"), "{err}");
    assert!(!err.contains("WARNING"), "{err}");
}

/// The Debian tier (`KILN_TEST_DEBIAN=1`, as e2e's): an amd64 and an arm64 Debian
/// bookworm minbase made with mmdebstrap (the arm64 one through qemu-user-static; both
/// cached by testdata/bases/debian/make-rootfs.sh under /var/cache/kiln-test, by day),
/// imported by kiln as one two-platform base (`ADD rootfs-${TARGETARCH}.tar /`), then a
/// two-platform build whose RUN asks dpkg for its architecture: each platform's image
/// says its own, the arm64 one having run under emulation.
#[test]
fn debian_minbase_for_amd64_and_arm64() {
    require!(
        std::env::var_os("KILN_TEST_DEBIAN").is_some(),
        "the Debian tier runs with KILN_TEST_DEBIAN=1 (needs mmdebstrap and a Debian mirror; .ci/run sets it)"
    );
    require_root!();
    require_tool!("mmdebstrap");
    require_tool!("arch-test");
    require!(
        fs::read_to_string(Path::new(BINFMT).join("qemu-aarch64"))
            .is_ok_and(|s| s.starts_with("enabled")),
        "qemu-aarch64 is not registered in binfmt_misc (apt-get install qemu-user-static; see .ci/install.sh)"
    );
    require!(
        kiln_ops::Platform::host().architecture() == "amd64",
        "this test builds amd64 natively"
    );
    let ws = Workspace::new();
    let store = ws.path("store");
    let base = ws.path("debian");
    fs::create_dir_all(&base).unwrap();
    for arch in ["amd64", "arm64"] {
        let started = std::time::Instant::now();
        kiln_test_support::run_ok(
            std::process::Command::new("bash")
                .arg(repo_root().join("testdata/bases/debian/make-rootfs.sh"))
                .arg(base.join(format!("rootfs-{arch}.tar")))
                .arg("")
                .arg(arch),
        );
        eprintln!(
            "debian minbase for {arch}: {:.1}s",
            started.elapsed().as_secs_f64()
        );
    }
    fs::write(
        base.join("Dockerfile"),
        "FROM scratch\nARG TARGETARCH\nADD rootfs-${TARGETARCH}.tar /\n\
         ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nCMD [\"bash\"]\n",
    )
    .unwrap();
    let started = std::time::Instant::now();
    ok(
        kiln(&store)
            .args([
                "build",
                "-q",
                "--platform",
                "linux/amd64,linux/arm64",
                "-t",
                "debian:multi",
            ])
            .arg(&base)
            .output()
            .unwrap(),
        "base build",
    );
    eprintln!("base build: {:.1}s", started.elapsed().as_secs_f64());
    let app = ws.context(
        "app",
        "FROM debian:multi\nRUN dpkg --print-architecture > /arch && uname -m >> /arch\n",
    );
    let local = ws.path("out");
    let started = std::time::Instant::now();
    let o = kiln(&store)
        .args([
            "build",
            "--progress",
            "plain",
            "--platform",
            "linux/amd64,linux/arm64",
            "-o",
        ])
        .arg(format!("type=local,dest={}", local.display()))
        .arg(&app)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    eprintln!("app build: {:.1}s", started.elapsed().as_secs_f64());
    // An index base gives each platform its own image: no platform warning.
    assert!(!err.contains("InvalidBaseImagePlatform"), "{err}");
    assert_eq!(
        fs::read_to_string(local.join("linux_amd64/arch")).unwrap(),
        "amd64\nx86_64\n"
    );
    assert_eq!(
        fs::read_to_string(local.join("linux_arm64/arch")).unwrap(),
        "arm64\naarch64\n"
    );
}
