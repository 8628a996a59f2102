//! The build flags CI pipelines use, with Docker's and buildx's meaning: `-q`,
//! `--iidfile`, `--metadata-file`, `--label`, `--add-host`, `--shm-size`, `--network`;
//! and the image exporter's lines. Real builds over a busybox base made from the host's
//! busybox-static, in a store of the test's own: root and busybox (`needs!`).

use std::fs;

use kiln_test_support::{KilnStore, needs};
use serde_json::Value;

const BASE: &str = kiln_test_support::BUSYBOX;

kiln_test_support::store_env! {
    /// A store with the busybox base in it; no build records.
    struct Env;
}

impl Env {
    fn new() -> Env {
        Env(KilnStore::new()
            .env("KILN_NO_RECORD", "1")
            .with_busybox(BASE))
    }

    /// Builds `dockerfile` with `args` and `--output type=local`; the file `file` of the
    /// result.
    fn run_file(&self, name: &str, dockerfile: &str, args: &[&str], file: &str) -> String {
        let ctx = self.ws.context(name, dockerfile);
        let dest = self.ws.path(&format!("{name}-out"));
        let mut all = vec!["build", "--progress", "plain"];
        all.extend_from_slice(args);
        let output = format!("type=local,dest={}", dest.display());
        all.extend(["-o", &output, ctx.to_str().unwrap()]);
        self.ok(&all);
        fs::read_to_string(dest.join(file)).unwrap()
    }

    fn inspect(&self, name: &str) -> Value {
        let v: Value = serde_json::from_str(&self.ok(&["inspect", name])).unwrap();
        v[0].clone()
    }
}

fn is_image_id(s: &str) -> bool {
    s.len() == 71
        && s.starts_with("sha256:")
        && s[7..]
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
}

/// `-q`: nothing but the image ID (the config digest, as `kiln images` and `inspect`
/// show it) on stdout, and nothing on stderr; `--iidfile` holds the same ID, and the
/// metadata file has buildx's keys and kiln's cache summary.
#[test]
fn quiet_iidfile_and_metadata_file() {
    needs!("busybox");
    let env = Env::new();
    let ctx = env.ws.context(
        "app",
        &format!("FROM {BASE}\nCOPY a /a\nRUN echo hi > /hi\n"),
    );
    fs::write(ctx.join("a"), "a\n").unwrap();
    let iid = env.ws.path("iid");
    let meta = env.ws.path("meta.json");
    let build = |quiet: bool| {
        let mut args = vec!["build", "-t", "app:1", "-t", "app:2"];
        if quiet {
            args.push("-q");
        } else {
            args.extend(["--progress", "plain"]);
        }
        let (iid, meta) = (iid.to_str().unwrap(), meta.to_str().unwrap());
        args.extend(["--iidfile", iid, "--metadata-file", meta]);
        args.push(ctx.to_str().unwrap());
        // A fixed creation time: the second build makes the same image.
        env.kiln()
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .args(&args)
            .output()
            .unwrap()
    };
    let o = build(true);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8(o.stdout).unwrap();
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let id = stdout.strip_suffix('\n').expect("one line");
    assert!(is_image_id(id), "{stdout:?}");
    let image = env.inspect("app:1");
    assert_eq!(image["Id"], id);
    assert_eq!(fs::read_to_string(&iid).unwrap(), id);
    let images = env.ok(&["images", "--no-trunc", "--format", "{{.ID}}"]);
    assert!(images.lines().any(|l| l == id), "{images}");

    let m: Value = serde_json::from_slice(&fs::read(&meta).unwrap()).unwrap();
    assert_eq!(m["containerimage.config.digest"], id);
    assert_eq!(m["containerimage.digest"], image["Digest"]);
    assert_eq!(m["image.name"], "app:1,app:2");
    let desc = &m["containerimage.descriptor"];
    assert_eq!(desc["digest"], image["Digest"]);
    assert_eq!(
        desc["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let manifest = env.ws.path("store/blobs/sha256").join(
        image["Digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:"),
    );
    assert_eq!(
        desc["size"].as_u64().unwrap(),
        fs::metadata(&manifest).unwrap().len()
    );
    // COPY and RUN (the report's steps: the Dockerfile's instructions after FROM).
    assert_eq!(m["kiln.cache"]["steps"], 2, "{m}");
    assert_eq!(m["kiln.cache"]["missed"], 2, "{m}");
    assert_eq!(m["kiln.cache"]["cached"], 0, "{m}");

    // Again, not quiet: every step is cached, the image ID and the manifest digest are
    // printed as BuildKit's exporter names them.
    let o = build(false);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8(o.stdout).unwrap(), stdout);
    let err = String::from_utf8(o.stderr).unwrap();
    let digest = image["Digest"].as_str().unwrap();
    assert!(
        err.contains(&format!("exporting manifest {digest} done\n")),
        "{err}"
    );
    assert!(
        err.contains(&format!("exporting config {id} done\n")),
        "{err}"
    );
    assert!(err.contains(&format!("writing image {id} done\n")), "{err}");
    let m: Value = serde_json::from_slice(&fs::read(&meta).unwrap()).unwrap();
    assert_eq!(m["kiln.cache"]["cached"], 2, "{m}");
    assert_eq!(m["kiln.cache"]["missed"], 0, "{m}");
}

/// `--label` sets config labels, over the Dockerfile's, as `docker build --label`.
#[test]
fn labels_reach_the_image_config() {
    needs!("busybox");
    let env = Env::new();
    let ctx = env
        .ws
        .context("lab", &format!("FROM {BASE}\nLABEL keep=df over=df\n"));
    env.ok(&[
        "build",
        "-q",
        "-t",
        "lab:1",
        "--label",
        "over=cli",
        "--label",
        "org.opencontainers.image.revision=abc123",
        "--label",
        "empty",
        ctx.to_str().unwrap(),
    ]);
    let labels = &env.inspect("lab:1")["Config"]["Labels"];
    assert_eq!(labels["keep"], "df");
    assert_eq!(labels["over"], "cli");
    assert_eq!(labels["org.opencontainers.image.revision"], "abc123");
    assert_eq!(labels["empty"], "");
    let o = env.out(&["build", "--label", "=x", ctx.to_str().unwrap()]);
    assert!(!o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "error: invalid --label \"=x\": the key is empty\n"
    );
}

/// `--add-host` lines are in RUN's `/etc/hosts` (and nowhere in the image); a different
/// host list misses the cache; `host-gateway` and a bad address fail with one line.
#[test]
fn add_host_reaches_run() {
    needs!("busybox");
    let env = Env::new();
    let df = format!("FROM {BASE}\nRUN mkdir /o && cat /etc/hosts > /o/hosts\n");
    let hosts = env.run_file(
        "hosts",
        &df,
        &[
            "--add-host",
            "db.internal:10.1.2.3",
            "--add-host",
            "v6=[fd00::1]",
        ],
        "o/hosts",
    );
    assert!(hosts.contains("10.1.2.3\tdb.internal\n"), "{hosts}");
    assert!(hosts.contains("fd00::1\tv6\n"), "{hosts}");
    let other = env.run_file(
        "hosts",
        &df,
        &["--add-host", "db.internal:10.9.9.9"],
        "o/hosts",
    );
    assert!(other.contains("10.9.9.9\tdb.internal\n"), "{other}");
    assert!(!other.contains("10.1.2.3"), "{other}");
    let plain = env.run_file("hosts", &df, &[], "o/hosts");
    assert!(!plain.contains("db.internal"), "{plain}");

    let ctx = env.ws.context("hosts", &df);
    for (flag, want) in [
        (
            "db:host-gateway",
            "error: invalid --add-host \"db:host-gateway\": kiln has no host gateway (RUN steps use the host's network, where the host is 127.0.0.1): give an IP address\n",
        ),
        (
            "db:10.0.0.300",
            "error: invalid --add-host \"db:10.0.0.300\": \"10.0.0.300\" is not an IP address\n",
        ),
        (
            "nocolon",
            "error: invalid --add-host \"nocolon\": expected HOST:IP\n",
        ),
    ] {
        let o = env.out(&["build", "--add-host", flag, ctx.to_str().unwrap()]);
        assert!(!o.status.success());
        assert_eq!(String::from_utf8_lossy(&o.stderr), want);
    }
}

/// The size of RUN's `/dev/shm` (tmpfs `size=` in `/proc/mounts`, in KiB): 64 MiB by
/// default, as Docker, or `--shm-size`.
#[test]
fn shm_size_sizes_dev_shm() {
    needs!("busybox");
    let env = Env::new();
    let df = format!("FROM {BASE}\nRUN mkdir /o && grep ' /dev/shm ' /proc/mounts > /o/shm\n");
    let shm = env.run_file("shm", &df, &[], "o/shm");
    assert!(shm.contains("size=65536k"), "{shm}");
    let shm = env.run_file("shm", &df, &["--shm-size", "128m"], "o/shm");
    assert!(shm.contains("size=131072k"), "{shm}");
    let shm = env.run_file("shm", &df, &["--shm-size", "1GB"], "o/shm");
    assert!(shm.contains("size=1048576k"), "{shm}");
    let ctx = env.ws.context("shm", &df);
    let o = env.out(&["build", "--shm-size", "lots", ctx.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("invalid size \"lots\": use e.g. 64m, 1g or a number of bytes"),
        "{err}"
    );
}

/// The interfaces a RUN step sees (`/proc/net/dev` of its network namespace).
fn interfaces(dev: &str) -> Vec<String> {
    dev.lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(|s| s.trim().to_string())
        .collect()
}

/// `--network none` gives RUN steps without their own `--network` a namespace with only
/// loopback, while `RUN --network=host` keeps the host's; `--network host` needs the
/// `network.host` entitlement, as with buildx.
#[test]
fn network_flag_sets_the_run_default() {
    needs!("busybox");
    let env = Env::new();
    let df = format!(
        "FROM {BASE}\nRUN mkdir /o && cat /proc/net/dev > /o/default\n\
         RUN --network=host cat /proc/net/dev > /o/host\n"
    );
    let host_ifaces = interfaces(&fs::read_to_string("/proc/net/dev").unwrap());
    let read = |args: &[&str]| {
        let ctx = env.ws.context("net", &df);
        let dest = env.ws.path("net-out");
        let _ = fs::remove_dir_all(&dest);
        let mut all = vec!["build", "--progress", "plain"];
        all.extend_from_slice(args);
        let output = format!("type=local,dest={}", dest.display());
        all.extend(["-o", &output, ctx.to_str().unwrap()]);
        env.ok(&all);
        let f = |n: &str| interfaces(&fs::read_to_string(dest.join("o").join(n)).unwrap());
        (f("default"), f("host"))
    };
    let (default, host) = read(&["--network", "none"]);
    assert_eq!(default, ["lo"]);
    assert_eq!(host, host_ifaces);
    let (default, _) = read(&["--network", "default"]);
    assert_eq!(default, host_ifaces);
    let (default, _) = read(&["--network", "host", "--allow", "network.host"]);
    assert_eq!(default, host_ifaces);

    let ctx = env.ws.context("net", &df);
    let o = env.out(&["build", "--network", "host", ctx.to_str().unwrap()]);
    assert!(!o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "error: --network host needs the network.host entitlement: pass --allow network.host\n"
    );
}
