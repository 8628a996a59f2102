//! Disk accounting and garbage collection for real: `kiln du` against `du -sb`, the
//! collection after each build keeping a store under a small cap, `kiln prune` while a
//! build runs and while a container runs, and kill -9 at random points of a prune. They
//! need root and busybox-static (`require_root!`, `require_tool!`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command as Proc, Stdio};
use std::time::Duration;

use kiln_cache::Store;
use kiln_test_support::{KilnStore, needs, run_ok, wait};

kiln_test_support::store_env! {
    /// A workspace whose store holds `busybox:kiln-test`.
    struct Env;
}

impl Env {
    fn new() -> Env {
        Env(KilnStore::new().with_busybox(kiln_test_support::BUSYBOX))
    }

    /// A context with `Dockerfile` and `files`.
    fn context(&self, name: &str, dockerfile: &str, files: &[(&str, &[u8])]) -> PathBuf {
        let ctx = self.ws.path(name);
        fs::create_dir_all(&ctx).unwrap();
        fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
        for (f, bytes) in files {
            fs::write(ctx.join(f), bytes).unwrap();
        }
        ctx
    }

    /// `du -sb` of the store.
    fn du_sb(&self) -> u64 {
        let out = run_ok(Proc::new("du").arg("-sb").arg(self.root()));
        out.split_whitespace().next().unwrap().parse().unwrap()
    }
}

fn random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Every cache record's blobs are in the store, or can be written again from their
/// snapshot (a record is never left dangling).
fn assert_records_whole(root: &Path) {
    let store = Store::open(root).unwrap();
    for key in store.cache_keys().unwrap() {
        let Some(v) = store.cache_get(&key).unwrap() else {
            continue;
        };
        for l in v["output"]["Fs"]["layers"].as_array().into_iter().flatten() {
            let d = kiln_cache::Digest::parse(l["digest"].as_str().unwrap()).unwrap();
            assert!(
                store.has_blob(&d) || kiln_builder::recreate::can_recreate(&store, &d),
                "record {key} references missing blob {d}"
            );
        }
    }
}

const APP: &str = "FROM busybox:kiln-test\nCOPY big /big\nARG N=0\nRUN echo $N > /n && head -c 100000 /big > /part\n";

#[test]
fn du_counts_the_whole_store_like_du_sb() {
    needs!("busybox");
    let env = Env::new();
    for i in 0..3 {
        let ctx = env.context(&format!("app{i}"), APP, &[("big", &random(300_000, i))]);
        env.build_ok(&ctx, &["--build-arg", &format!("N={i}")]);
    }
    let store = Store::open(env.root()).unwrap();
    let df = kiln_builder::usage::system_df(&store).unwrap();
    drop(store);
    let du = env.du_sb();
    let ours = df.total();
    let diff = ours.abs_diff(du) as f64 / du as f64;
    assert!(diff < 0.01, "system df total {ours} vs du -sb {du}");
    let areas: u64 = df.build_cache_areas.iter().map(|(_, b)| b).sum();
    assert_eq!(areas, df.build_cache.size, "{:?}", df.build_cache_areas);

    let out = env.ok(&["du"]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("ID")
            && lines[0].contains("RECLAIMABLE")
            && lines[0].contains("LAST ACCESSED"),
        "{out}"
    );
    // Three apps: COPY big and RUN each (the base's records besides).
    let runs = lines
        .iter()
        .filter(|l| l.contains("[0] RUN echo $N"))
        .count();
    assert_eq!(runs, 3, "{out}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("true") && l.contains("[0] COPY big /big")),
        "{out}"
    );
    for want in [
        "Shared:",
        "Private:",
        "Reclaimable:",
        "Total:",
        "Blobs:",
        "Snapshots:",
        "Cache records:",
        "Stat memos:",
        "Temp files:",
    ] {
        assert!(out.contains(want), "no {want} in\n{out}");
    }
    let df = env.ok(&["system", "df", "-v"]);
    assert!(
        df.contains("Build cache usage:") && df.contains("  Build records:"),
        "{df}"
    );
    let verbose = env.ok(&["du", "--verbose"]);
    assert!(
        verbose.contains("Description:\t[0] RUN echo $N"),
        "{verbose}"
    );
}

#[test]
fn gc_keeps_the_store_under_a_small_cap_and_the_last_build_cached() {
    needs!("busybox");
    let env = Env::new();
    // The base as builds use it (its snapshot unpacked), without build cache.
    let first = env.context("first", APP, &[("big", &random(300_000, 100))]);
    env.build_ok(&first, &[]);
    env.ok(&["prune", "-f"]);
    let base = env.du_sb();
    // Each build adds about 700 kB (blob and snapshot of a 300 kB file, and a RUN layer).
    let cap = base + 2_500_000;
    fs::write(
        env.root().join("config.toml"),
        format!("[gc]\nmax-used-space = \"{cap}\"\nmin-free-space = \"0\"\n"),
    )
    .unwrap();
    let mut last = PathBuf::new();
    for i in 0..10u64 {
        last = env.context(&format!("app{i}"), APP, &[("big", &random(300_000, i))]);
        let cached = env
            .build_ok(&last, &["--build-arg", &format!("N={i}")])
            .cached();
        assert!(cached.iter().skip(1).all(|c| !c), "build {i}: {cached:?}");
    }
    let used = env.du_sb();
    assert!(used <= cap, "store {used} bytes over its cap {cap}");
    let cached = env.build_ok(&last, &["--build-arg", "N=9"]).cached();
    assert!(
        cached.iter().all(|c| *c),
        "last build not fully cached: {cached:?}"
    );
    assert_records_whole(&env.root());
    // The base image is whole: a build from it works.
    let again = env.context("again", APP, &[("big", &random(300_000, 77))]);
    env.build_ok(&again, &[]);
}

#[test]
fn prune_while_a_build_runs_leaves_the_build_whole() {
    needs!("busybox");
    let env = Env::new();
    let df = "FROM busybox:kiln-test\nCOPY big /big\nARG N=0\nRUN sleep 3 && echo $N > /n\nCOPY small /small\n";
    let ctx = env.context("app", df, &[("big", &random(500_000, 1)), ("small", b"s")]);
    env.build_ok(&ctx, &["--build-arg", "N=1"]);
    let mut child = env
        .proc()
        .args(["build", "--progress", "plain", "--build-arg", "N=2"])
        .arg(&ctx)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Its RUN runs: it has hit the base's and the COPY's records (leased) by then.
    wait::until(
        Duration::from_secs(30),
        "the build's RUN to start",
        || {
            run_ok(Proc::new("ps").args(["-eo", "args"]))
                .contains("sleep 3 && echo")
                .then_some(())
        },
        String::new,
    );
    let out = env.ok(&["prune", "-f", "--all", "--verbose"]);
    assert!(
        child.try_wait().unwrap().is_none(),
        "prune waited for the build to end:\n{out}"
    );
    assert!(out.contains("leased by build of"), "{out}");
    let status = child.wait_with_output().unwrap();
    assert!(
        status.status.success(),
        "build failed after a concurrent prune:\n{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert_records_whole(&env.root());
    let cached = env.build_ok(&ctx, &["--build-arg", "N=2"]).cached();
    assert!(cached.iter().all(|c| *c), "{cached:?}");
}

#[test]
fn prune_never_removes_a_running_containers_snapshots() {
    needs!("busybox");
    let env = Env::new();
    let ctx = env.context(
        "app",
        "FROM busybox:kiln-test\nCOPY f /f\nCMD [\"sleep\", \"600\"]\n",
        &[("f", b"x")],
    );
    env.ok(&[
        "build",
        "--progress",
        "quiet",
        "-t",
        "app:1",
        ctx.to_str().unwrap(),
    ]);
    let id = env
        .ok(&["run", "-d", "--name", "gcrun", "app:1"])
        .trim()
        .to_string();
    let store = Store::open(env.root()).unwrap();
    let c = kiln_builder::containers::Containers::open(&store)
        .unwrap()
        .get(&id)
        .unwrap();
    let snapshots = kiln_builder::snapshots::Snapshots::new(&store);
    let dirs: Vec<PathBuf> = c
        .config
        .layers
        .iter()
        .map(|l| snapshots.path(&l.diff_id))
        .collect();
    assert!(dirs.iter().all(|d| d.is_dir()));
    // --all removes tagged images' snapshots, but not those a container uses.
    let dry = env.ok(&["prune", "--all", "--dry-run"]);
    assert!(
        dry.starts_with("Would delete build cache objects:"),
        "{dry}"
    );
    env.ok(&["prune", "-f", "--all"]);
    for d in &dirs {
        assert!(
            d.is_dir(),
            "{} removed under a running container",
            d.display()
        );
    }
    env.ok(&["exec", "gcrun", "cat", "/f"]);
    env.ok(&["rm", "-f", "gcrun"]);
    // Without the container, they may go; the image still runs (unpacked again).
    env.ok(&["prune", "-f", "--all"]);
    assert!(dirs.iter().any(|d| !d.exists()));
    assert_eq!(env.ok(&["run", "--rm", "app:1", "cat", "/f"]), "x");
}

#[test]
fn kill9_during_prune_leaves_a_usable_store() {
    needs!("busybox");
    let rounds: u64 = std::env::var("KILN_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("kill -9 during prune: {rounds} rounds, seed {seed}");
    let mut rng = seed;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let env = Env::new();
    let ctx = env.context("app", APP, &[("big", &random(200_000, 3))]);
    for round in 0..rounds {
        for n in 0..3 {
            env.build_ok(&ctx, &["--build-arg", &format!("N={round}-{n}")]);
        }
        let pause = 20;
        let mut child = env
            .proc()
            .env("KILN_TEST_GC_PAUSE_MS", pause.to_string())
            .args(["prune", "-f", "--all"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Some 10 to 20 steps of 20 ms: kills land before, within and after them.
        let delay = next() % 400;
        std::thread::sleep(Duration::from_millis(delay));
        let _ = child.kill();
        let _ = child.wait();
        assert_records_whole(&env.root());
        // The build works whatever the kill left (env.build asserts its success).
        let cached = env
            .build_ok(&ctx, &["--build-arg", &format!("N={round}-2")])
            .cached();
        assert!(
            !cached.is_empty(),
            "round {round} (killed after {delay} ms)"
        );
        env.ok(&["du"]);
    }
    let tmp: Vec<_> = fs::read_dir(env.root().join("tmp")).unwrap().collect();
    assert!(tmp.is_empty(), "trash left in tmp/: {tmp:?}");
}

/// The collection runs after a build that fails too: a store over its budget ends under
/// it, and the build's output says what went.
#[test]
fn gc_runs_after_a_failed_build() {
    needs!("busybox");
    let env = Env::new();
    let first = env.context("first", APP, &[("big", &random(300_000, 200))]);
    env.build_ok(&first, &[]);
    env.ok(&["prune", "-f"]);
    let base = env.du_sb();
    for i in 0..4u64 {
        let ctx = env.context(&format!("app{i}"), APP, &[("big", &random(300_000, i))]);
        env.build_ok(&ctx, &["--build-arg", &format!("N={i}")]);
    }
    // Over a cap set only now: nothing has collected yet.
    let cap = base + 1_000_000;
    assert!(env.du_sb() > cap);
    fs::write(
        env.root().join("config.toml"),
        format!("[gc]\nmax-used-space = \"{cap}\"\nmin-free-space = \"0\"\n"),
    )
    .unwrap();
    let failing = env.context(
        "failing",
        "FROM busybox:kiln-test\nCOPY small /small\nRUN echo failing && false\n",
        &[("small", b"s")],
    );
    let out = env
        .kiln()
        .args(["build", "--progress", "plain"])
        .arg(&failing)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the build should fail:\n{stderr}");
    let said = stderr
        .lines()
        .find(|l| l.starts_with("store over budget ("))
        .unwrap_or_else(|| panic!("no collection after the failed build:\n{stderr}"));
    let removed = said
        .split_once("): removed ")
        .unwrap_or_else(|| panic!("{said}"))
        .1;
    let records: usize = removed.split(' ').next().unwrap().parse().unwrap();
    assert!(
        records > 0 && removed.contains(" cache records, ") && removed.contains(", freed "),
        "{said}"
    );
    let used = env.du_sb();
    assert!(
        used <= cap,
        "store {used} bytes over its cap {cap}:\n{stderr}"
    );
    assert_records_whole(&env.root());
}

/// A lease left by a build killed with -9 (its holder gone, its flock with it) is
/// dropped when the next build starts, not only at the next `du` or `prune`.
#[test]
fn a_dead_builds_lease_is_dropped_when_a_build_starts() {
    needs!("busybox");
    let env = Env::new();
    let leases = Store::open(env.root()).unwrap().leases_dir();
    fs::create_dir_all(&leases).unwrap();
    // A pid that is gone: a child that has exited.
    let mut child = Proc::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    let lock = leases.join(format!("{pid}-1-0.lock"));
    let json = leases.join(format!("{pid}-1-0.json"));
    fs::write(&lock, b"").unwrap();
    fs::write(
        &json,
        br#"{"holder":"build of /gone/Dockerfile","started_ns":1,"refs":["sha256:aa"]}"#,
    )
    .unwrap();
    let ctx = env.context("app", "FROM busybox:kiln-test\nCOPY f /f\n", &[("f", b"f")]);
    env.build_ok(&ctx, &[]);
    assert!(!lock.exists(), "{} left after a build", lock.display());
    assert!(!json.exists(), "{} left after a build", json.display());
}

/// `kiln prune` asks Docker's question unless `-f`, and removes nothing on a no.
#[test]
fn prune_asks_for_confirmation_unless_forced() {
    needs!("busybox");
    let env = Env::new();
    let ctx = env.context("app", "FROM busybox:kiln-test\nCOPY f /f\n", &[("f", b"f")]);
    env.build_ok(&ctx, &[]);
    let records = || Store::open(env.root()).unwrap().cache_keys().unwrap().len();
    let before = records();
    assert!(before > 0);
    for (args, warning) in [
        (
            &["prune"][..],
            "WARNING! This will remove all dangling build cache. Are you sure you want to continue? [y/N] ",
        ),
        (
            &["prune", "--all"][..],
            "WARNING! This will remove all build cache. Are you sure you want to continue? [y/N] ",
        ),
    ] {
        for answer in ["n\n", "", "\n"] {
            let out = env.kiln().args(args).write_stdin(answer).output().unwrap();
            assert!(out.status.success());
            assert_eq!(String::from_utf8_lossy(&out.stderr), warning);
            assert_eq!(String::from_utf8_lossy(&out.stdout), "");
            assert_eq!(records(), before, "{args:?} answered {answer:?}");
        }
    }
    // A dry run removes nothing: no question.
    let dry = env.ok(&["prune", "--dry-run"]);
    assert!(
        dry.starts_with("Would delete build cache objects:"),
        "{dry}"
    );
    let out = env.kiln().arg("prune").write_stdin("y\n").output().unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("Deleted build cache objects:"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(records() < before);
    env.build_ok(&ctx, &[]);
    let out = env.ok(&["prune", "--force"]);
    assert!(out.starts_with("Deleted build cache objects:"), "{out}");
}

/// A disk short of free space because of other files does not wipe the cache: the
/// collection for `min-free-space` stops at `reserved-space`, so earlier builds stay
/// cached; with no reserve, the same shortage removes them.
#[test]
fn a_full_disk_keeps_the_reserved_cache() {
    needs!("busybox");
    let env = Env::new();
    let apps: Vec<PathBuf> = (0..3u64)
        .map(|i| {
            env.context(
                &format!("app{i}"),
                APP,
                &[("big", &random(300_000, 300 + i))],
            )
        })
        .collect();
    // No disk is ever 100% free: every build ends short of free space.
    fs::write(
        env.root().join("config.toml"),
        "[gc]\nmin-free-space = \"100%\"\nreserved-space = \"1GB\"\n",
    )
    .unwrap();
    for ctx in &apps {
        env.build_ok(ctx, &[]);
    }
    for ctx in &apps {
        assert!(
            env.build_ok(ctx, &[]).cached().iter().all(|c| *c),
            "{} should be fully cached within the reserve",
            ctx.display()
        );
    }
    fs::write(
        env.root().join("config.toml"),
        "[gc]\nmin-free-space = \"100%\"\nreserved-space = \"0\"\n",
    )
    .unwrap();
    env.build_ok(&apps[2], &[]);
    assert!(
        !env.build_ok(&apps[0], &[]).cached().iter().all(|c| *c),
        "without a reserve the shortage collects the older builds"
    );
}
